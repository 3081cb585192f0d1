//! fork(): a child's copy of an owner fence neither signals nor cancels
//! the parent's fence. One test in its own binary, so that the child is
//! forked from a process with no other test running.

use std::time::Duration;

use dmabuf::{ErrorKind, FenceStatus, UserFence};

#[test]
fn a_forked_child_does_not_cancel_or_signal_the_parents_fence() {
    let f = UserFence::new().unwrap();
    assert!(f.is_owner());
    // SAFETY: the child only calls async-signal-safe-enough code: it checks
    // ownership and signalling (getpid, a lock nobody else holds in the
    // child), drops its copy of the fence (munmap, close) and exits with
    // exit_group, never returning into the test harness.
    // exits with _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    match pid {
        0 => {
            let code = if f.is_owner() {
                10
            } else {
                match f.signal() {
                    Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                        drop(f);
                        0
                    }
                    _ => 11,
                }
            };
            // SAFETY: ends the child at once, running no destructor of the
            // parent's state.
            unsafe { libc::_exit(code) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out
            // pointer.
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child status {status:#x}"
            );
            // The child's drop did not cancel the parent's fence.
            let r = UserFence::from_fds(
                f.state_fd().try_clone_to_owned().unwrap(),
                f.wake_fd().try_clone_to_owned().unwrap(),
            )
            .unwrap();
            assert_eq!(r.status(), FenceStatus::Active);
            assert_eq!(f.status(), FenceStatus::Active);
            f.signal().unwrap();
            r.wait(Some(Duration::from_secs(1))).unwrap();
        }
    }
}
