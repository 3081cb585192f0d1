//! Checks on fences that the kernel's own fences cannot pass safely.

use std::time::Duration;

use dmabuf::{Fence, FenceStatus};

/// What a zero-copy transfer's fence must still tell after its attachment
/// is gone (detach, endpoint closed): that it failed, with an errno.
///
/// On 6.12 the kernel's FunctionFS and IIO DMABUF fences keep their
/// spinlock in the attachment, which DETACH/close frees: `SYNC_IOC_FILE_INFO` on a sync
/// file of it, or closing one that was polled, then spins forever on freed
/// memory (docs/kernel-findings.md). So the kernel's own fence must never
/// reach the caller for this: if the endpoint hands it out, this fails
/// (after closing it unpolled, which is safe) instead of hanging the VM.
/// The fence must not have been waited on before the detach.
pub fn assert_failed_after_detach(f: Fence, what: &str) {
    if let Fence::Kernel(_) = f {
        drop(f);
        panic!(
            "{what}: the endpoint handed out the kernel's DMABUF fence itself; once the \
             attachment is detached its lock is freed memory (6.12 f_fs/IIO use-after-free), so \
             its status cannot be read (SYNC_IOC_FILE_INFO spins forever) and the fence \
             cannot say why it failed"
        );
    }
    let e = f
        .wait(Some(Duration::from_secs(10)))
        .expect_err("a transfer cut by detach signalled success");
    assert!(e.errno().is_some(), "{what}: {e}");
    assert!(
        matches!(f.status(), FenceStatus::Error(_)),
        "{what}: {:?}",
        f.status()
    );
}
