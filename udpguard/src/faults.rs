//! Fault points for the tests: `UDPGUARD_FAULT_AT=<point>` makes the process kill itself
//! (SIGKILL, which nothing can catch or clean up after) when it reaches that point, so that a
//! test can leave every state an interrupted `attach` or `detach` can leave;
//! `UDPGUARD_PAUSE_AT=<point>` makes it say so on stderr ("paused at <point>") and wait there
//! for two seconds, so that a test can signal it midway, however slow the machine is to get
//! there. Unset, a point costs two environment lookups.

/// Dies (or waits) here if the tests asked for it.
pub fn point(name: &str) {
    if std::env::var_os("UDPGUARD_FAULT_AT").is_some_and(|at| at == name) {
        // SAFETY: raising a signal at ourselves has no preconditions.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    if std::env::var_os("UDPGUARD_PAUSE_AT").is_some_and(|at| at == name) {
        eprintln!("paused at {name}");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// SIGINT, SIGTERM and SIGHUP held off while alive: an attach or detach that has begun
/// finishes (or undoes itself) before a signal can stop it; the signal is delivered after.
pub struct SignalsHeld {
    old: nix::sys::signal::SigSet,
}

impl SignalsHeld {
    pub fn new() -> SignalsHeld {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
        let mut held = SigSet::empty();
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            held.add(signal);
        }
        let mut old = SigSet::empty();
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&held), Some(&mut old));
        SignalsHeld { old }
    }
}

impl Default for SignalsHeld {
    fn default() -> Self {
        SignalsHeld::new()
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        use nix::sys::signal::{SigmaskHow, pthread_sigmask};
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}
