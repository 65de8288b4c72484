//! Process-wide memory settings shared by the binary and the benchmarks, so a benchmark
//! measures the allocator under the same conditions as the server.

/// Keeps this process's anonymous memory in 4 KiB pages. Where the kernel's transparent huge
/// pages are on (`always`, as on many distributions), each fault in the allocator's fresh or
/// purged memory zeroes a whole 2 MiB page: during a Synthea import over HTTP that zeroing
/// was a third of the server's CPU, and the peak memory about 85 MB higher. Per process, so
/// the machine's setting is left alone. False when the kernel refused (only slower, never
/// wrong: the process keeps the kernel's default).
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        true
    }
}
