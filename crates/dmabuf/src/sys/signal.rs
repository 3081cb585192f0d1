//! Interrupting a thread blocked in a system call the kernel only ends
//! on completion or on a signal (a FunctionFS `write()` the host never
//! takes): `pthread_kill` with `SIGURG`, whose handler does nothing and
//! is installed without `SA_RESTART`, so the call returns `EINTR`.
//!
//! `SIGURG`'s default action is to ignore it; a do-nothing handler keeps
//! that behaviour for the program except that a blocking call in the
//! thread that receives it returns `EINTR` (which the standard library
//! and this crate restart). The handler is only installed, once, the
//! first time a thread must be interrupted, and only if the signal still
//! has its default disposition: a program's own handler is used as it
//! is, and an explicitly ignored `SIGURG` means no thread is interrupted.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::thread::JoinHandle;

/// The signal sent.
pub const SIGNAL: i32 = libc::SIGURG;

extern "C" fn do_nothing(_: libc::c_int) {}

/// Installs the do-nothing handler if `SIGNAL` has its default
/// disposition; whether a handler (this one or the program's) is there.
fn handler_installed() -> bool {
    static ONCE: Once = Once::new();
    static READY: AtomicBool = AtomicBool::new(false);
    ONCE.call_once(|| {
        // SAFETY: `sigaction` is plain old data; all-zero is a valid value.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the disposition into `old`,
        // a valid, writable `sigaction`.
        if unsafe { libc::sigaction(SIGNAL, std::ptr::null(), &mut old) } != 0 {
            return;
        }
        if old.sa_sigaction == libc::SIG_IGN {
            return;
        }
        if old.sa_sigaction != libc::SIG_DFL {
            READY.store(true, Ordering::SeqCst);
            return;
        }
        // SAFETY: as above.
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        new.sa_flags = 0; // no SA_RESTART: blocking calls return EINTR
                          // SAFETY: `new.sa_mask` is a valid `sigset_t` to initialise.
        unsafe { libc::sigemptyset(&mut new.sa_mask) };
        // SAFETY: `new` is a fully initialised action whose handler is an
        // async-signal-safe function (it does nothing); `old` is not asked.
        if unsafe { libc::sigaction(SIGNAL, &new, std::ptr::null_mut()) } == 0 {
            READY.store(true, Ordering::SeqCst);
        }
    });
    READY.load(Ordering::SeqCst)
}

/// Sends [`SIGNAL`] to the thread of `handle`, so that a blocking system
/// call it is in returns `EINTR`. False if no handler could be installed
/// (the program ignores the signal) or the kernel refused.
pub fn interrupt<T>(handle: &JoinHandle<T>) -> bool {
    if !handler_installed() {
        return false;
    }
    // SAFETY: `handle` is borrowed, so the thread is neither joined nor
    // detached: its `pthread_t` stays valid even if it has exited.
    unsafe { libc::pthread_kill(handle.as_pthread_t() as libc::pthread_t, SIGNAL) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_thread_blocked_in_read_returns_eintr() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            rustix::io::read(&r, &mut b)
        });
        std::thread::sleep(Duration::from_millis(50));
        let until = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < until {
            assert!(interrupt(&t), "the signal was not sent");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(t.is_finished(), "the blocked read was not interrupted");
        assert_eq!(t.join().unwrap(), Err(rustix::io::Errno::INTR));
        drop(w);
    }
}
