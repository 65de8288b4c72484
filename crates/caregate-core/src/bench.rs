//! What the benchmarks share: timing a closure in the thread's CPU time, and their
//! numeric command-line flags (`-- --runs 40`).

use std::time::Instant;

use crate::cpu_time::thread_cpu_seconds;

/// Seconds of CPU the calling thread spends in `f` (wall-clock seconds where the thread
/// CPU clock is missing). Other load on the machine does not count.
pub fn thread_cpu_of(f: impl FnOnce()) -> f64 {
    let wall = Instant::now();
    let start = thread_cpu_seconds();
    f();
    match (start, thread_cpu_seconds()) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => wall.elapsed().as_secs_f64(),
    }
}

/// The value after `--name` on the command line, or `default` when absent or unparsable.
pub fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The smallest of the timings (the run least disturbed by the rest of the machine).
pub fn best(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_work_and_reads_defaults() {
        let spent = thread_cpu_of(|| {
            let mut x = 0u64;
            for i in 0..200_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        });
        assert!(spent > 0.0 && spent < 1.0);
        assert_eq!(flag("--not-given", 7usize), 7);
        assert_eq!(best(&[3.0, 1.5, 2.0]), 1.5);
    }
}
