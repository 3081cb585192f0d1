//! Sharing kernel fences over a `Channel` against the real kernel: a
//! pending sync file (a vgem fence) passes the receiver's kind check
//! (`/proc/self/fd` names it `anon_inode:sync_file`), travels, and signals
//! on the far side; a dma-buf announced as a sync file is refused by kind.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use dmabuf::share::{Channel, Message};
use dmabuf::{Access, ErrorKind, Fence, FenceStatus, SyncFile};
use dmabuf_lab_guest::vgem::Vgem;

const T: Option<Duration> = Some(Duration::from_secs(5));

#[test]
fn pending_kernel_fences_pass_the_kind_check_and_travel() {
    let v = Vgem::new();
    let buffer = v.buffer.clone();
    let rf = v.fence(false);
    let pending = buffer.export_fence(Access::Write).unwrap();
    let Fence::Kernel(s) = &pending else {
        panic!("not a kernel fence: {pending:?}")
    };
    assert_eq!(s.status().unwrap(), FenceStatus::Active);
    let name = std::fs::read_link(format!("/proc/self/fd/{}", s.as_fd().as_raw_fd())).unwrap();
    assert_eq!(name.to_str(), Some("anon_inode:sync_file"));
    SyncFile::from_fd(s.try_clone().unwrap().into_fd()).unwrap();

    let (a, b) = Channel::pair().unwrap();
    a.send(&Message::Fence {
        tag: 1,
        fence: pending.clone(),
    })
    .unwrap();
    let Message::Fence { fence: got, .. } = b.recv(T).unwrap() else {
        panic!("not a fence")
    };
    assert!(matches!(got, Fence::Kernel(_)), "{got:?}");
    assert_eq!(got.status(), FenceStatus::Active);
    v.signal(rf);
    got.wait(Some(Duration::from_secs(1))).unwrap();

    // The dma-buf itself announced as a sync file: refused by what it is.
    let mut bytes = b"DMBS".to_vec();
    bytes.extend_from_slice(&dmabuf::share::VERSION.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&10u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&7u64.to_le_bytes());
    bytes.extend_from_slice(&[1, 1]);
    a.send_raw(&bytes, &[buffer.fd()]).unwrap();
    let e = b.recv(T).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("not a sync file (it is '"), "{e}");
}
