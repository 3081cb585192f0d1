//! One identity per piece of memory per process: every handle on the same
//! memory — a dup'd fd, a reopened `/proc/self/fd` path, a buffer received
//! over a channel in the same process — shares one mapping, one borrow
//! registry and one reservation; writability stays per handle.

use std::os::fd::AsRawFd;
use std::time::Duration;

use dmabuf::share::{Channel, Message};
use dmabuf::{Allocate, Buffer, ErrorKind, Portable};

fn buf(size: u64, name: &str) -> Buffer {
    Portable.allocate(size, name).unwrap()
}

/// Open fds of this process on the portable memfd named `name` (other
/// tests of this binary run in parallel threads and open fds of their own,
/// so only this memory's are counted).
fn fds_of(name: &str) -> usize {
    let needle = format!("/memfd:dmabuf-portable:{name} ");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with(needle.trim_end()))
        .count()
}

/// Lines of /proc/self/maps that map the portable memfd named `name`.
fn mappings_of(name: &str) -> usize {
    let needle = format!("/memfd:dmabuf-portable:{name} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle) || l.ends_with(needle.trim_end()))
        .count()
}

/// A second handle on `b` made each way a program can make one.
fn second_handles(b: &Buffer) -> Vec<(&'static str, Buffer)> {
    let dup = Buffer::from_fd(b.try_clone_fd().unwrap(), "").unwrap();
    let memfd = Buffer::from_memfd(b.try_clone_fd().unwrap(), "").unwrap();
    let path = format!("/proc/self/fd/{}", b.fd().as_raw_fd());
    let reopened = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let reopened = Buffer::from_fd(reopened, "").unwrap();
    let (tx, rx) = Channel::pair().unwrap();
    tx.send(&Message::Buffer {
        id: 7,
        buffer: b.clone(),
    })
    .unwrap();
    let received = match rx.recv(Some(Duration::from_secs(5))).unwrap() {
        Message::Buffer { buffer, .. } => buffer,
        m => panic!("unexpected {m:?}"),
    };
    vec![
        ("dup'd fd", dup),
        ("memfd", memfd),
        ("reopened path", reopened),
        ("received", received),
    ]
}

#[test]
fn every_second_handle_shares_the_borrow_registry() {
    let b = buf(8192, "identity-handles");
    for (how, h) in second_handles(&b) {
        assert!(h.same_as(&b), "{how}");
        assert!(h.is_writable(), "{how}");
        let m1 = b.map().unwrap();
        let m2 = h.map().unwrap();
        assert_eq!(m1.addr(), m2.addr(), "{how}: one mapping");
        let w = m1
            .window::<dmabuf::mapping::WriteOnly>(0..4096, None)
            .unwrap();
        // A second write window over the same bytes, through the other
        // handle, is refused and names the overlap.
        let e = m2
            .window::<dmabuf::mapping::WriteOnly>(4000..4100, None)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{how}: {e}");
        assert_eq!(e.errno(), Some(dmabuf::Errno::BUSY));
        assert!(
            e.cause()
                .contains("a write window overlapping bytes 4000..4100")
                && e.cause().contains("both cover bytes 4000..4096"),
            "{how}: {e}"
        );
        let e = m2.read().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{how}: {e}");
        // Disjoint bytes are free through either handle.
        m2.window::<dmabuf::mapping::WriteOnly>(4096..8192, None)
            .unwrap()
            .end()
            .unwrap();
        drop(w);
        m2.write().unwrap().end().unwrap();
        // One reservation: a window through one handle is counted on both.
        let r = m2.read().unwrap();
        assert_eq!(b.reservation().cpu_windows(), (1, 0), "{how}");
        drop(r);
    }
}

#[test]
fn a_read_only_handle_gets_no_write_window_and_a_later_writer_still_can() {
    let b = buf(4096, "identity-ro");
    let path = format!("/proc/self/fd/{}", b.fd().as_raw_fd());
    let ro = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let ro = Buffer::from_fd(ro, "").unwrap();
    assert!(ro.same_as(&b));
    assert!(!ro.is_writable());
    assert!(b.is_writable(), "writability is per handle");
    let e = ro.map().unwrap().write().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = ro.map_range(0..4096, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    // The read-only handle maps first (a read-only mapping); the writable
    // handle then needs a writable one, and both share the registry.
    let rm = ro.map().unwrap();
    let r = rm.read().unwrap();
    let wm = b.map().unwrap();
    assert!(wm.is_writable());
    let e = wm.write().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    drop(r);
    let mut w = wm.write().unwrap();
    w.fill(5);
    drop(w);
    assert!(rm.read().unwrap().to_vec().iter().all(|&x| x == 5));
}

#[test]
fn handles_cost_one_fd_each_and_one_mapping_in_all() {
    let name = "identity-counts";
    let b = buf(4 * 4096, name);
    let fds = fds_of(name);
    let h1 = Buffer::from_fd(b.try_clone_fd().unwrap(), "").unwrap();
    let h2 = Buffer::from_fd(h1.try_clone_fd().unwrap(), "").unwrap();
    assert_eq!(fds, 1);
    assert_eq!(fds_of(name), fds + 2, "one fd per handle");
    assert_eq!(mappings_of(name), 0);
    let maps = [b.map().unwrap(), h1.map().unwrap(), h2.map().unwrap()];
    assert_eq!(mappings_of(name), 1, "one mapping for every handle");
    assert!(maps.iter().all(|m| m.addr() == maps[0].addr()));
    drop(maps);
    assert_eq!(mappings_of(name), 0, "unmapped with its last user");
    drop((h1, h2));
    assert_eq!(fds_of(name), fds);
}

#[test]
fn a_write_only_reopened_memfd_is_refused_up_front() {
    let b = buf(4096, "identity-wronly");
    let path = format!("/proc/self/fd/{}", b.fd().as_raw_fd());
    let wo = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let e = Buffer::from_fd(wo, "").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.errno(), Some(dmabuf::Errno::ACCESS));
    assert!(e.cause().contains("write-only"), "{e}");
}
