//! Buffers, windows, names, heaps, sync files and idle waits against the
//! real kernel (udmabuf, the system heap, and vgem for fences that user
//! space controls).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use dmabuf::{
    Access, Allocate, Allocator, Backend, Buffer, BufferKind, DmaBuf, Errno, ErrorKind, Fence,
    FenceStatus, Heap, Memfd, SyncFile, Udmabuf, Usage,
};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::sys::dma_buf::{
    DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_RW, DMA_BUF_SYNC_WRITE,
};
use dmabuf_lab_guest::vgem::Vgem;

const PAGE: u64 = 4096;

fn udmabuf(pages: u64) -> Buffer {
    require_lab();
    let dev = Udmabuf::open().unwrap();
    let m = Memfd::new("lab", pages * PAGE).unwrap();
    Buffer::from_dma_buf(dev.create(&m, 0, pages * PAGE).unwrap())
}

fn heap(pages: u64) -> Buffer {
    require_lab();
    Heap::open("system")
        .unwrap()
        .allocate(pages * PAGE, "")
        .unwrap()
}

fn each_kind() -> Vec<Buffer> {
    vec![udmabuf(2), heap(2)]
}

#[test]
fn heap_allocations_are_zeroed_and_report_their_kind() {
    let b = heap(16);
    assert_eq!(b.kind(), &BufferKind::Heap("system".into()));
    assert_eq!(b.size(), 16 * PAGE);
    assert_eq!(b.dma_buf().unwrap().exporter().unwrap(), "system");
    let m = b.map().unwrap();
    assert!(m.read().unwrap().bytes().iter().all(|x| x == 0));
}

#[test]
fn heap_sizes_round_up_to_pages() {
    require_lab();
    let h = Heap::open("system").unwrap();
    let d = h.allocate_dma_buf(100, Default::default()).unwrap();
    assert_eq!(d.size(), PAGE);
}

#[test]
fn bad_heap_input_is_refused_clearly() {
    require_lab();
    let h = Heap::open("system").unwrap();
    let e = h
        .allocate_dma_buf(
            PAGE,
            dmabuf::alloc::heap::HeapAllocOptions {
                heap_flags: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("heap flags 0x1 are not supported"),
        "{e}"
    );
    // The kernel refuses heap flags too.
    assert_eq!(
        dmabuf_lab_guest::sys::dma_heap::alloc(&h, PAGE, 0o2000002, 1).map(drop),
        Err(Errno::INVAL)
    );
    let e = h.allocate_dma_buf(0, Default::default()).unwrap_err();
    assert!(e.to_string().contains("at least one byte"), "{e}");
    assert_eq!(
        dmabuf_lab_guest::sys::dma_heap::alloc(&h, 0, 0o2000002, 0).map(drop),
        Err(Errno::INVAL)
    );
    let e = Heap::open("nonexistent").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string()
            .contains("no DMA heap named 'nonexistent' (available: system)"),
        "{e}"
    );
}

#[test]
fn read_only_heap_buffers_map_read_only() {
    require_lab();
    let h = Heap::open("system").unwrap();
    let d = h
        .allocate_dma_buf(
            PAGE,
            dmabuf::alloc::heap::HeapAllocOptions {
                access: Access::Read,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!d.is_writable());
    let b = Buffer::from_dma_buf(d);
    // map() maps as the buffer allows: read-only.
    let m = b.map().unwrap();
    assert!(!m.is_writable());
    assert_eq!(m.write().unwrap_err().kind(), ErrorKind::PermissionDenied);
    let e = b.map_range(0..PAGE, true).unwrap_err();
    assert!(e.to_string().contains("the buffer is read-only"), "{e}");
    assert!(m.read().unwrap().bytes().iter().all(|x| x == 0));
}

#[test]
fn windows_in_every_direction_on_every_kind() {
    for b in each_kind() {
        let m = b.map().unwrap();
        {
            let mut w = m.write().unwrap();
            w.fill(0x5a);
            w.end().unwrap();
        }
        {
            let r = m.read().unwrap();
            assert!(r.bytes().iter().all(|x| x == 0x5a), "{}", b.describe());
            r.end().unwrap();
        }
        {
            let mut rw = m.read_write().unwrap();
            for i in 0..rw.len() {
                let x = rw.get(i).unwrap();
                assert!(rw.set(i, x.wrapping_add(1)));
            }
            rw.end().unwrap();
        }
        assert!(m.read().unwrap().bytes().iter().all(|x| x == 0x5b));
        // A range window of the second page only.
        let half = b.map_range(PAGE..2 * PAGE, true).unwrap();
        half.write().unwrap().fill(1);
        let r = m.read().unwrap();
        let bytes = r.to_vec();
        assert!(bytes[..4096].iter().all(|&x| x == 0x5b));
        assert!(bytes[4096..].iter().all(|&x| x == 1));
    }
}

#[test]
fn end_before_start_is_refused_by_the_kernel_and_impossible_in_the_api() {
    let b = udmabuf(1);
    let d = b.dma_buf().unwrap();
    // The raw ioctl shows what the kernel does: a udmabuf answers EINVAL to
    // an END that no START preceded (6.12: !ubuf->sg).
    assert_eq!(
        dmabuf_lab_guest::sys::dma_buf::sync(d, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ),
        Err(Errno::INVAL)
    );
    // The API issues END only when a window closes, after its START.
    let m = b.map().unwrap();
    m.read().unwrap().end().unwrap();
    // Bad flags are refused by the kernel.
    assert_eq!(
        dmabuf_lab_guest::sys::dma_buf::sync(d, 0),
        Err(Errno::INVAL)
    );
    assert_eq!(
        dmabuf_lab_guest::sys::dma_buf::sync(d, 0x8 | DMA_BUF_SYNC_RW),
        Err(Errno::INVAL)
    );
    let _ = DMA_BUF_SYNC_WRITE;
}

#[test]
fn names_are_set_and_read_back_through_fdinfo() {
    for b in each_kind() {
        b.set_name("lab-frames").unwrap();
        assert_eq!(b.name(), "lab-frames");
        let d = b.dma_buf().unwrap();
        assert_eq!(d.name().unwrap().as_deref(), Some("lab-frames"));
        // maps shows it too once mapped.
        let m = b.map().unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.contains("/dmabuf:lab-frames"), "{maps}");
        drop(m);
        let e = b.set_name(&"x".repeat(32)).unwrap_err();
        assert!(e.to_string().contains("at most 31 fit"), "{e}");
        // The kernel refuses a 32-byte name too.
        assert_eq!(
            dmabuf_lab_guest::sys::dma_buf::set_name(d, &"x".repeat(32)),
            Err(Errno::INVAL)
        );
        // Renaming is allowed any time.
        b.set_name("renamed").unwrap();
        assert_eq!(d.name().unwrap().as_deref(), Some("renamed"));
    }
}

#[test]
fn non_dma_buf_fds_are_refused() {
    require_lab();
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let e = DmaBuf::from_fd(f.into()).unwrap_err();
    assert!(e.to_string().contains("not a dma-buf"), "{e}");
    let m = Memfd::new("not-a-dmabuf", PAGE).unwrap();
    let e = DmaBuf::from_fd(m.into_fd()).unwrap_err();
    assert!(
        e.to_string().contains("not a dma-buf (filesystem magic"),
        "{e}"
    );
}

#[test]
fn sync_files_export_import_merge_info_wait() {
    let b = udmabuf(1);
    let d = b.dma_buf().unwrap();
    // Nothing pending: the kernel hands out a signalled stub fence.
    let s = d.export_sync_file(Access::Read).unwrap();
    assert_eq!(s.status().unwrap(), FenceStatus::Signalled);
    s.wait(Some(Duration::ZERO)).unwrap();
    let info = s.info().unwrap();
    assert_eq!(info.status, FenceStatus::Signalled);
    assert_eq!(info.fences.len(), 1);
    assert!(!info.fences[0].driver.is_empty());
    // Always close-on-exec.
    assert!(rustix::io::fcntl_getfd(&s)
        .unwrap()
        .contains(rustix::io::FdFlags::CLOEXEC));
    let s2 = d.export_sync_file(Access::Write).unwrap();
    let merged = s.merge(&s2, "lab-merge").unwrap();
    assert_eq!(merged.info().unwrap().name, "lab-merge");
    merged.wait(Some(Duration::from_secs(1))).unwrap();
    let e = s.merge(&s2, &"n".repeat(32)).unwrap_err();
    assert!(e.to_string().contains("at most 31 fit"), "{e}");
    // Import into another buffer.
    let other = heap(1);
    other
        .dma_buf()
        .unwrap()
        .import_sync_file(&merged, Usage::Write)
        .unwrap();
    // A deadline is accepted.
    merged
        .set_deadline(Instant::now() + Duration::from_millis(1))
        .unwrap();
    // A non-sync-file fd is refused: by SyncFile::from_fd, and by import.
    let f: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
    let e = SyncFile::from_fd(f).unwrap_err();
    assert!(e.to_string().contains("not a sync file"), "{e}");
    let memfd = Memfd::new("x", PAGE).unwrap();
    assert_eq!(
        dmabuf_lab_guest::sys::dma_buf::import_sync_file(d, 2, &memfd),
        Err(Errno::INVAL),
        "DMA_BUF_IOCTL_IMPORT_SYNC_FILE: a non-sync-file fd gives EINVAL, not EBADF"
    );
    // Merge with a non-sync-file is ENOENT.
    assert_eq!(
        dmabuf_lab_guest::sys::sync_file::merge(&s, &memfd, "x").map(drop),
        Err(Errno::NOENT)
    );
    // Fence::merge of kernel fences goes through the kernel.
    let f = Fence::merge([Fence::from(s), Fence::from(s2)]).unwrap();
    assert!(matches!(f, Fence::Kernel(_)));
    f.wait(Some(Duration::ZERO)).unwrap();
}

#[test]
fn idle_waits_follow_poll_semantics_with_real_kernel_fences() {
    let v = Vgem::new();
    let b = &v.buffer;
    // DRM's PRIME export names the exporter after the drm module, not the
    // driver (found in the lab: exp_name is "drm").
    assert_eq!(
        b.kind(),
        &BufferKind::Imported("drm".into()),
        "{:?}",
        b.kind()
    );
    assert!(b.is_idle(Access::Write).unwrap());

    // A read fence: readers go on, writers wait.
    let rf = v.fence(false);
    assert!(
        b.is_idle(Access::Read).unwrap(),
        "POLLIN ignores read fences"
    );
    assert!(
        !b.is_idle(Access::Write).unwrap(),
        "POLLOUT waits for readers"
    );
    let e = b
        .wait_idle(Access::Write, Some(Duration::from_millis(50)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(e.to_string().contains("still pending"), "{e}");
    let for_write = b.export_fence(Access::Write).unwrap();
    assert_eq!(for_write.status(), FenceStatus::Active);
    let for_read = b.export_fence(Access::Read).unwrap();
    assert_eq!(for_read.status(), FenceStatus::Signalled);
    v.signal(rf);
    for_write.wait(Some(Duration::from_secs(1))).unwrap();
    assert!(b.is_idle(Access::Write).unwrap());

    // A write fence: everyone waits; a read window opened meanwhile blocks
    // in START until the fence signals.
    let wf = v.fence(true);
    assert!(!b.is_idle(Access::Read).unwrap());
    let card = v.card.as_fd().try_clone_to_owned().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        dmabuf_lab_guest::sys::vgem::fence_signal(&card, wf).unwrap();
    });
    let start = Instant::now();
    let m = b.map().unwrap();
    let r = m.read().unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "START|READ waited for the write fence ({:?})",
        start.elapsed()
    );
    drop(r);
    t.join().unwrap();
    b.wait_idle(Access::Write, Some(Duration::ZERO)).unwrap();
}

#[test]
fn kernel_and_user_fences_combine_in_one_reservation() {
    let v = Vgem::new();
    let b = &v.buffer;
    let user = dmabuf::UserFence::new().unwrap();
    b.add_fence(user.clone().into(), Usage::Write).unwrap();
    let kf = v.fence(false);
    let f = b.export_fence(Access::Write).unwrap();
    assert!(matches!(&f, Fence::All(v) if v.len() == 2), "{f:?}");
    user.signal().unwrap();
    assert_eq!(
        f.status(),
        FenceStatus::Active,
        "the kernel fence is pending"
    );
    v.signal(kf);
    f.wait(Some(Duration::from_secs(1))).unwrap();
    // A kernel sync file added to a kernel buffer lands in the kernel's
    // reservation, where poll sees it.
    let kf2 = v.fence(true);
    let pending = b.export_fence(Access::Read).unwrap();
    let other = udmabuf(1);
    other.add_fence(pending, Usage::Write).unwrap();
    assert!(!other.is_idle(Access::Read).unwrap());
    v.signal(kf2);
    other
        .wait_idle(Access::Read, Some(Duration::from_secs(1)))
        .unwrap();
}

#[test]
fn the_automatic_allocator_picks_the_system_heap_here() {
    require_lab();
    let a = Allocator::auto();
    assert_eq!(a.backend(), Backend::Heap("system".into()));
    let b = a.allocate(5000, "auto").unwrap();
    assert_eq!(b.size(), 2 * PAGE);
    assert_eq!(b.name(), "auto");
    let u = Allocator::new(&Backend::Udmabuf).unwrap();
    let b = u.allocate(PAGE, "udma").unwrap();
    assert_eq!(b.kind(), &BufferKind::Udmabuf);
    assert_eq!(
        b.dma_buf().unwrap().name().unwrap().as_deref(),
        Some("udma")
    );
}

/// Minor page faults of this thread so far (`/proc/thread-self/stat`,
/// field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(7).unwrap().parse().unwrap()
}

/// Faults taken while a read window reads one byte of every page.
fn faults_reading_every_page(map: &dmabuf::Mapping) -> u64 {
    let before = minor_faults();
    let r = map.read().unwrap();
    for p in 0..map.len() / PAGE as usize {
        std::hint::black_box(r.get(p * PAGE as usize));
    }
    drop(r);
    minor_faults() - before
}

#[test]
fn exporters_map_their_own_pages_and_the_kernel_does_not_populate_them() {
    const PAGES: u64 = 64;
    // The system heap maps every page at mmap (remap_pfn_range): no fault
    // on first touch. MADV_POPULATE_* is EINVAL on such (VM_PFNMAP)
    // mappings, which populate reports as `false`.
    let h = heap(PAGES).map().unwrap();
    assert!(!h.populate().unwrap());
    let f = faults_reading_every_page(&h);
    assert_eq!(f, 0, "heap: {f} faults reading {PAGES} pages");
    // udmabuf maps one page per fault (vmf_insert_pfn): also VM_PFNMAP,
    // also not populated on request, so every page faults once.
    let u = udmabuf(PAGES).map().unwrap();
    assert!(!u.populate().unwrap());
    let f = faults_reading_every_page(&u);
    assert!(f >= PAGES, "udmabuf: {f} faults reading {PAGES} pages");
}
