//! Whether a calling thread has a signal waiting for it, read from
//! `/proc/<tid>/status`. fuser answers the kernel's FUSE_INTERRUPT with
//! ENOSYS, so a request that may wait a long time (a blocking lock) asks
//! this instead, and gives up with EINTR when the answer is yes.

/// Signals that stop the caller rather than interrupt it when it has no
/// handler for them (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
const STOP_SIGNALS: u64 = (1 << (19 - 1)) | (1 << (20 - 1)) | (1 << (21 - 1)) | (1 << (22 - 1));

/// True when thread `tid` has a pending signal it does not block (stops
/// without a handler aside), or is gone.
pub fn pending(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => interrupting(&status),
        Err(_) => true,
    }
}

/// The signals a `/proc/<tid>/status` text says would interrupt the thread.
fn interrupting(status: &str) -> bool {
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| u64::from_str_radix(value.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    let stops_without_handler = STOP_SIGNALS & !mask("SigCgt:");
    pending & !mask("SigBlk:") & !stops_without_handler != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pending: u64, shared: u64, blocked: u64, caught: u64) -> String {
        format!(
            "Name:\tx\nSigQ:\t0/1\nSigPnd:\t{pending:016x}\nShdPnd:\t{shared:016x}\n\
             SigBlk:\t{blocked:016x}\nSigIgn:\t0000000000000000\nSigCgt:\t{caught:016x}\n"
        )
    }

    const SIGINT: u64 = 1 << 1;
    const SIGKILL: u64 = 1 << 8;
    const SIGTSTP: u64 = 1 << 19;

    #[test]
    fn a_pending_signal_interrupts_unless_blocked() {
        assert!(!interrupting(&status(0, 0, 0, 0)));
        assert!(interrupting(&status(SIGINT, 0, 0, 0)));
        assert!(interrupting(&status(0, SIGKILL, 0, 0)), "process-wide");
        assert!(!interrupting(&status(SIGINT, 0, SIGINT, 0)), "blocked");
        assert!(interrupting(&status(SIGINT, SIGKILL, SIGINT, 0)));
    }

    #[test]
    fn a_stop_interrupts_only_when_caught() {
        assert!(!interrupting(&status(0, SIGTSTP, 0, 0)));
        assert!(interrupting(&status(0, SIGTSTP, 0, SIGTSTP)));
    }

    #[test]
    fn this_thread_has_nothing_pending_and_a_missing_one_is_gone() {
        assert!(!pending(nix::unistd::gettid().as_raw() as u32));
        assert!(pending(u32::MAX));
    }
}
