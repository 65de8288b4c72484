//! CPU time of the calling thread or of the whole process, to the nanosecond, for the
//! benchmarks. `/proc/thread-self/schedstat` only advances at scheduler ticks (4 ms steps
//! on this kernel), which made 10 ms measurements jump between 8 and 12 ms; the
//! `clock_gettime` CPU clocks are read from the scheduler's exact runtime.

fn read(clock: libc::clockid_t) -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// Seconds of CPU the calling thread has used, or `None` where the clock is missing.
pub fn thread_cpu_seconds() -> Option<f64> {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Seconds of CPU every thread of this process has used together.
pub fn process_cpu_seconds() -> Option<f64> {
    read(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_advances_with_work_at_fine_resolution() {
        let start = thread_cpu_seconds().expect("thread CPU clock");
        let mut x = 0u64;
        // Well under one 4 ms scheduler tick of work.
        for i in 0..200_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let spent = thread_cpu_seconds().expect("thread CPU clock") - start;
        assert!(spent > 0.0, "no CPU time measured for {x}");
        assert!(spent < 0.5);
        assert!(process_cpu_seconds().expect("process CPU clock") >= spent);
    }
}
