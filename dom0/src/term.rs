//! The terminal of `dom0 console`: whether standard input is one, and raw mode that is
//! undone on every way out (a drop guard, a panic hook, and handlers for the signals that
//! end the process: SIGTERM, SIGHUP, SIGQUIT and SIGINT).
#![allow(
    unsafe_code,
    reason = "isatty, tcgetattr, tcsetattr, cfmakeraw, signal and raise; each block argues its case"
)]

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

/// Whether `fd` is a terminal.
#[must_use]
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: `isatty` only inspects the descriptor number; any value is allowed (an
    // invalid one makes it return 0 with errno set).
    unsafe { libc::isatty(fd) == 1 }
}

/// The terminal settings to restore from a signal handler: the descriptor and its
/// settings from before raw mode. Set once per process, when raw mode is first enabled.
static SAVED: OnceLock<(RawFd, libc::termios)> = OnceLock::new();

/// Restores `SAVED` (if set). Async-signal-safe: `OnceLock::get` is an atomic load, and
/// `tcsetattr` is on POSIX's list of async-signal-safe functions.
fn restore_saved() {
    if let Some((fd, settings)) = SAVED.get() {
        // SAFETY: `tcsetattr` reads one `termios` through the pointer, which points into
        // the static `SAVED`, initialised and never changed afterwards.
        unsafe { libc::tcsetattr(*fd, libc::TCSANOW, core::ptr::from_ref(settings)) };
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    restore_saved();
    // SAFETY: `signal` is async-signal-safe and takes any signal number; SIG_DFL is a
    // valid disposition.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
    // SAFETY: `raise` is async-signal-safe; with the default disposition back, raising the
    // signal again ends the process as the signal would have.
    unsafe { libc::raise(sig) };
}

/// Raw mode on a terminal until dropped: bytes pass unchanged both ways (no echo, no line
/// editing, no signals from keys: Ctrl-C goes to the guest).
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Switches `fd` (a terminal) to raw mode, saving its settings for the restore, and
    /// installs the panic hook and signal handlers that restore them too.
    ///
    /// # Errors
    /// The error of `tcgetattr` or `tcsetattr` (e.g. `ENOTTY`).
    pub fn enable(fd: RawFd) -> io::Result<Self> {
        // SAFETY: `termios` is plain data (integers and arrays of them), for which all
        // zeroes is a valid value; `tcgetattr` overwrites it.
        let mut saved: libc::termios = unsafe { core::mem::zeroed() };
        // SAFETY: `tcgetattr` writes one `termios` through the pointer, which points to
        // `saved`, live and exclusively borrowed for the call.
        if unsafe { libc::tcgetattr(fd, core::ptr::from_mut(&mut saved)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `cfmakeraw` modifies the `termios` the pointer points to: `raw`, live and
        // exclusively borrowed for the call.
        unsafe { libc::cfmakeraw(core::ptr::from_mut(&mut raw)) };
        let _ = SAVED.set((fd, saved));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_saved();
            previous(info);
        }));
        let handler: extern "C" fn(libc::c_int) = on_signal;
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGINT] {
            // SAFETY: `handler` is an `extern "C" fn(c_int)`, the handler type `signal`
            // expects, and only calls async-signal-safe functions.
            unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
        }
        // SAFETY: `tcsetattr` reads one `termios` through the pointer, which points to
        // `raw`, live for the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, core::ptr::from_ref(&raw)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `tcsetattr` reads one `termios` through the pointer, which points to
        // `self.saved`, live for the call.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, core::ptr::from_ref(&self.saved)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_pipes_are_not_terminals() {
        let file = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        assert!(!is_tty(file.as_raw_fd()));
        assert!(!is_tty(-1));
        assert!(RawMode::enable(file.as_raw_fd()).is_err());
    }
}
