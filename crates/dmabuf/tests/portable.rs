//! The portable kind end to end: mapping, windows, names, idle waits,
//! fences and the reservation rules, on a machine with no dma-buf exporter.

use std::time::{Duration, Instant};

use dmabuf::{
    Access, Allocate, Buffer, BufferKind, ErrorKind, Fence, FenceContext, Portable, Usage,
    UserFence,
};

fn buf(size: u64, name: &str) -> Buffer {
    Portable.allocate(size, name).unwrap()
}

fn maps_contain(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .contains(needle)
}

#[test]
fn allocation_rounds_to_pages_names_and_seals() {
    let b = buf(100, "portable-alloc");
    assert_eq!(b.size(), 4096);
    assert_eq!(b.kind(), &BufferKind::Portable);
    assert_eq!(b.name(), "portable-alloc");
    assert!(b.dma_buf().is_none());
    let seals = rustix::fs::fcntl_get_seals(b.fd()).unwrap();
    assert!(seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW));
    assert!(!seals.contains(rustix::fs::SealFlags::WRITE));
    let link = std::fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        b.fd().as_raw_fd()
    }))
    .unwrap();
    assert!(
        link.to_string_lossy()
            .starts_with("/memfd:dmabuf-portable:portable-alloc"),
        "{link:?}"
    );
}

#[test]
fn zero_size_and_long_names_are_refused() {
    let e = Portable.allocate(0, "x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("size 0"), "{e}");
    let b = buf(4096, "");
    let long = "n".repeat(32);
    let e = b.set_name(&long).unwrap_err();
    assert!(e.to_string().contains("is 32 bytes; at most 31 fit"), "{e}");
    b.set_name(&"n".repeat(31)).unwrap();
    assert_eq!(b.name(), "n".repeat(31));
}

#[test]
fn writes_in_one_window_are_seen_in_another_mapping() {
    let b = buf(8192, "portable-rw");
    let m1 = b.map().unwrap();
    let m2 = b.map().unwrap();
    assert_eq!(m1.addr(), m2.addr(), "one shared mapping per buffer");
    {
        let mut w = m1.write().unwrap();
        for i in 0..w.len() {
            assert!(w.set(i, (i % 251) as u8));
        }
        w.end().unwrap();
    }
    let r = m2.read().unwrap();
    assert!(r
        .bytes()
        .iter()
        .enumerate()
        .all(|(i, x)| x == (i % 251) as u8));
}

#[test]
fn the_mapping_is_shared_and_unmapped_with_its_last_user() {
    let b = buf(4096 * 3, "portable-unmap");
    let m = b.map().unwrap();
    let addr = format!("{:x}-", m.addr());
    assert!(maps_contain(&addr));
    let r = b.map_range(4096..8192, false).unwrap();
    assert_eq!(r.addr(), m.addr());
    assert_eq!(b.mapped_at(), Some(m.addr()));
    drop(m);
    assert!(maps_contain(&addr), "range mapping keeps it mapped");
    drop(r);
    assert!(!maps_contain(&addr), "unmapped after the last user");
    assert_eq!(b.mapped_at(), None);
}

#[test]
fn ranges_must_be_page_aligned_inside_and_not_empty() {
    let b = buf(8192, "portable-ranges");
    let e = b.map_range(100..4096, true).unwrap_err();
    assert!(
        e.to_string()
            .contains("offset 100 is not a multiple of the page size 4096"),
        "{e}"
    );
    let e = b.map_range(4096..12288, true).unwrap_err();
    assert!(e.to_string().contains("goes past the end"), "{e}");
    let e = b.map_range(4096..4096, true).unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    let m = b.map_range(4096..8192, true).unwrap();
    m.write().unwrap().fill(9);
    let all = b.map().unwrap();
    let r = all.read().unwrap();
    let bytes = r.to_vec();
    assert!(bytes[..4096].iter().all(|&x| x == 0));
    assert!(bytes[4096..].iter().all(|&x| x == 9));
}

#[test]
fn read_only_mappings_refuse_write_windows() {
    let b = buf(4096, "portable-ro");
    let m = b.map_read_only().unwrap();
    let e = m.write().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("the mapping is read-only"), "{e}");
    assert!(m.read().is_ok());
}

#[test]
fn overlapping_windows_may_share_only_for_reading() {
    let b = buf(8192, "portable-overlap");
    let m = b.map().unwrap();
    let r1 = m.read().unwrap();
    let r2 = m.read().unwrap();
    let e = m.write().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(
        e.to_string()
            .contains("a read window overlapping bytes 0..8192 is already open"),
        "{e}"
    );
    drop((r1, r2));
    let w = m
        .window::<dmabuf::mapping::WriteOnly>(0..4096, None)
        .unwrap();
    let e = m.read().unwrap_err();
    assert!(e.to_string().contains("a write window"), "{e}");
    // Disjoint windows are fine.
    let r = m
        .window::<dmabuf::mapping::ReadOnly>(4096..8192, None)
        .unwrap();
    assert_eq!(b.reservation().cpu_windows(), (1, 1));
    drop((w, r));
    assert_eq!(b.reservation().cpu_windows(), (0, 0));
}

#[test]
fn a_read_window_waits_for_write_fences_but_not_read_fences() {
    let b = buf(4096, "portable-fences");
    let m = b.map().unwrap();
    let reader = UserFence::new().unwrap();
    b.add_fence(reader.clone().into(), Usage::Read).unwrap();
    // A read fence does not hold up readers…
    m.window::<dmabuf::mapping::ReadOnly>(0..4096, Some(Duration::ZERO))
        .unwrap();
    // …but holds up writers.
    let e = m
        .window::<dmabuf::mapping::WriteOnly>(0..4096, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("has not signalled in time"), "{e}");
    assert_eq!(b.reservation().cpu_windows(), (0, 0), "failed open undone");
    reader.signal().unwrap();
    m.write().unwrap();

    let writer = UserFence::new().unwrap();
    b.add_fence(writer.clone().into(), Usage::Write).unwrap();
    let e = m
        .window::<dmabuf::mapping::ReadOnly>(0..4096, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        writer.signal().unwrap();
    });
    let start = Instant::now();
    let r = m.read().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(30));
    drop(r);
    t.join().unwrap();
}

#[test]
fn idle_waits_follow_the_same_rules() {
    let b = buf(4096, "portable-idle");
    assert!(b.is_idle(Access::Write).unwrap());
    let f = UserFence::new().unwrap();
    b.add_fence(f.clone().into(), Usage::Read).unwrap();
    assert!(b.is_idle(Access::Read).unwrap());
    assert!(!b.is_idle(Access::Write).unwrap());
    let e = b
        .wait_idle(Access::Write, Some(Duration::from_millis(10)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    f.signal().unwrap();
    b.wait_idle(Access::Write, Some(Duration::ZERO)).unwrap();
}

#[test]
fn exported_fences_cover_what_the_access_waits_for() {
    let b = buf(4096, "portable-export");
    assert!(matches!(
        b.export_fence(Access::Write).unwrap(),
        Fence::Signalled
    ));
    let ctx = FenceContext::new("test");
    let r = ctx.next_fence().unwrap();
    let w = ctx.next_fence().unwrap();
    b.add_fence(r.clone().into(), Usage::Read).unwrap();
    let for_read = b.export_fence(Access::Read).unwrap();
    assert!(matches!(for_read, Fence::Signalled), "no writer yet");
    b.add_fence(w.clone().into(), Usage::Write).unwrap();
    let for_write = b.export_fence(Access::Write).unwrap();
    // Same timeline: merged down to the latest fence.
    match &for_write {
        Fence::User(u) => assert_eq!(u.seqno(), w.seqno()),
        other => panic!("expected one user fence, got {other:?}"),
    }
    assert!(!for_write.is_signalled());
    w.signal().unwrap();
    assert!(
        r.is_signalled(),
        "a later fence signalling signals earlier ones"
    );
    for_write.wait(Some(Duration::ZERO)).unwrap();
}

#[test]
fn a_buffer_from_an_unsealed_memfd_is_refused() {
    let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    let e = Buffer::from_memfd(fd, "x").unwrap_err();
    assert!(
        e.to_string()
            .contains("memfd lacks F_SEAL_SHRINK and F_SEAL_GROW"),
        "{e}"
    );
}

#[test]
fn a_regular_file_is_neither_dma_buf_nor_memfd() {
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let e = Buffer::from_fd(f.into(), "x").unwrap_err();
    assert!(
        e.to_string()
            .contains("neither a dma-buf nor a sealed memfd"),
        "{e}"
    );
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let e = dmabuf::DmaBuf::from_fd(f.into()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("not a dma-buf (filesystem magic"),
        "{e}"
    );
}

#[test]
fn buffers_and_mappings_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Buffer>();
    check::<dmabuf::Mapping>();
    check::<Fence>();
    check::<UserFence>();
}

/// Minor page faults of this thread so far (`/proc/thread-self/stat`,
/// field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Faults taken while a write window touches one byte of every page of
/// `map`, then a read window reads them back.
fn faults_touching_every_page(map: &dmabuf::Mapping) -> u64 {
    let pages = map.len() / 4096;
    let before = minor_faults();
    if map.is_writable() {
        let mut w = map.write().unwrap();
        for p in 0..pages {
            assert!(w.set(p * 4096, p as u8));
        }
    }
    let r = map.read().unwrap();
    for p in 0..pages {
        std::hint::black_box(r.get(p * 4096));
    }
    minor_faults() - before
}

#[test]
fn a_populated_mapping_takes_no_page_fault_on_first_touch() {
    const PAGES: usize = 256;
    let size = (PAGES * 4096) as u64;
    // Without populate, every page faults on its first touch.
    let plain = buf(size, "populate-plain").map().unwrap();
    assert!(faults_touching_every_page(&plain) >= PAGES as u64);
    // Populated, writable: the pages are allocated and mapped writable.
    let written = buf(size, "populate-write").map().unwrap();
    assert!(written.populate().unwrap());
    let f = faults_touching_every_page(&written);
    assert!(f < 16, "{f} faults after populate");
    // Populated, read-only: mapped for reading.
    let read = buf(size, "populate-read").map_read_only().unwrap();
    assert!(read.populate().unwrap());
    let f = faults_touching_every_page(&read);
    assert!(f < 16, "{f} faults after populate");
    // Only the mapping's own range is populated.
    let b = buf(size, "populate-range");
    let half = b.map_range(size / 2..size, true).unwrap();
    assert!(half.populate().unwrap());
    assert!(faults_touching_every_page(&half) < 16);
    let first = b.map_range(0..size / 2, true).unwrap();
    assert!(faults_touching_every_page(&first) >= PAGES as u64 / 2);
}
