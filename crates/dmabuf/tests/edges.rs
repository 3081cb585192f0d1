//! The API at its edges: std and rustix conventions (`AsFd`, `TryFrom`,
//! `Display`), the inherent allocator methods and the one-shot closures.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use dmabuf::{Allocator, Buffer, DmaBuf, ErrorKind};

#[test]
fn buffers_lend_their_fd_and_convert_from_fds() {
    let buf = Allocator::auto().allocate(4096, "edges").unwrap();
    assert_eq!(buf.as_fd().as_raw_fd(), buf.fd().as_raw_fd());
    let again = Buffer::try_from(buf.try_clone_fd().unwrap()).unwrap();
    assert!(again.same_as(&buf), "the same memory, one identity");
    let not_a_buffer: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
    let e = Buffer::try_from(not_a_buffer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string()
            .contains("neither a dma-buf nor a sealed memfd"),
        "{e}"
    );
    let memfd: OwnedFd =
        rustix::fs::memfd_create("edges", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let e = DmaBuf::try_from(memfd).unwrap_err();
    assert!(e.to_string().contains("not a dma-buf"), "{e}");
}

#[test]
fn buffers_display_as_in_messages() {
    let buf = Allocator::auto().allocate(4096, "shown").unwrap();
    assert_eq!(buf.to_string(), buf.describe());
    assert!(buf.to_string().starts_with("buffer 'shown' ("), "{buf}");
}

#[test]
fn one_shot_closures_open_and_close_windows() {
    let alloc = Allocator::auto();
    let buf = alloc.allocate(8192, "closures").unwrap();
    assert_eq!(alloc.backend(), dmabuf::Allocate::backend(&alloc));
    let n = buf
        .write_with(|mut bytes| {
            bytes.fill(0x11);
            bytes.write_at(4096, b"page two").unwrap();
            bytes.len()
        })
        .unwrap();
    assert_eq!(n, 8192);
    let v = buf.read_with(|bytes| bytes.to_vec()).unwrap();
    assert_eq!(&v[4096..4104], b"page two");
    assert!(v[..4096].iter().all(|&b| b == 0x11));
    // The windows are closed again: a write window opens at once.
    let map = buf.map().unwrap();
    assert_eq!(buf.reservation().cpu_windows(), (0, 0));
    map.write().unwrap().end().unwrap();
    // While a write window is open, the closures are refused with Busy
    // rather than aliasing it.
    let _w = map.write().unwrap();
    let e = buf.read_with(|b| b.len()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
}

#[test]
fn fences_and_endpoints_lend_their_fds() {
    use dmabuf::endpoint::fd::FdEndpoint;
    use dmabuf::endpoint::Direction;
    use dmabuf::{SyncFile, UserFence};
    // A user fence lends its eventfd: what an event loop waits on.
    let f = UserFence::new().unwrap();
    assert_eq!(f.as_fd().as_raw_fd(), f.wake_fd().as_raw_fd());
    // A sync file is made from an fd, checked.
    let not_a_sync_file: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
    let e = SyncFile::try_from(not_a_sync_file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("not a sync file"), "{e}");
    // An fd endpoint lends the fd it moves data through.
    let (r, w) = rustix::pipe::pipe().unwrap();
    let raw = w.as_raw_fd();
    let ep = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    assert_eq!(ep.as_fd().as_raw_fd(), raw);
    drop(r);
}

#[test]
fn fences_display_as_in_messages() {
    use dmabuf::{Fence, UserFence};
    assert_eq!(Fence::Signalled.to_string(), "signalled fence");
    let u = UserFence::new().unwrap();
    let f = Fence::from(u.clone());
    assert_eq!(f.to_string(), f.describe());
    assert_eq!(u.to_string(), f.describe());
    assert!(u.to_string().contains("user fence"), "{u}");
}
