//! udmabuf against the real kernel: creation from one range and from a
//! list, every bad input (the library's message, and the kernel's own
//! answer when the library's check is bypassed), shared data.

use std::os::fd::AsFd;

use dmabuf::alloc::udmabuf::{Limits, Range};
use dmabuf::{Buffer, BufferKind, Errno, ErrorKind, Memfd, Udmabuf};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::sys::udmabuf::{UdmabufCreate, UdmabufCreateItem};
use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};

const PAGE: u64 = 4096;

fn dev() -> Udmabuf {
    require_lab();
    Udmabuf::open().expect("the lab kernel has /dev/udmabuf")
}

/// What the kernel answers to UDMABUF_CREATE, with no user-side check.
fn kernel_says(memfd: impl AsFd, offset: u64, size: u64) -> Result<(), Errno> {
    let dev = rustix::fs::open(
        "/dev/udmabuf",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    use std::os::fd::AsRawFd;
    dmabuf_lab_guest::sys::udmabuf::create(
        &dev,
        &UdmabufCreate {
            memfd: memfd.as_fd().as_raw_fd() as u32,
            flags: 1,
            offset,
            size,
        },
    )
    .map(drop)
}

/// Checks that the library refuses with `message` and kind, and that the
/// kernel itself refuses the same input with `kernel_errno`.
fn refused(
    r: dmabuf::Result<dmabuf::DmaBuf>,
    message: &str,
    errno: Errno,
    kernel: Result<(), Errno>,
    kernel_errno: Errno,
) {
    let e = r.expect_err("the library must refuse");
    assert!(e.to_string().contains(message), "message: {e}");
    assert!(
        e.to_string().starts_with("udmabuf: "),
        "names the operation: {e}"
    );
    assert_eq!(e.errno(), Some(errno), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(kernel, Err(kernel_errno), "the real kernel refuses it too");
}

#[test]
fn create_from_one_range_reports_size_inode_exporter() {
    let dev = dev();
    let m = Memfd::new("one-range", 4 * PAGE).unwrap();
    let d = dev.create(&m, PAGE, 2 * PAGE).unwrap();
    assert_eq!(d.size(), 2 * PAGE);
    assert_eq!(d.exporter().unwrap(), "udmabuf");
    assert!(d.inode() > 0);
    let info = d.fdinfo().unwrap();
    assert_eq!(info.size, Some(2 * PAGE));
    assert_eq!(info.ino, Some(d.inode()));
    // Close-on-exec by default.
    let fl = rustix::io::fcntl_getfd(&d).unwrap();
    assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
}

#[test]
fn create_from_a_list_concatenates_ranges_in_order() {
    let dev = dev();
    let a = Memfd::new("list-a", 2 * PAGE).unwrap();
    let b = Memfd::new("list-b", 3 * PAGE).unwrap();
    // Mark each source page through the memfds.
    rustix::io::pwrite(&a, &[0xaa; 4096], PAGE).unwrap();
    rustix::io::pwrite(&b, &[0xbb; 4096], 0).unwrap();
    rustix::io::pwrite(&b, &[0xcc; 4096], 2 * PAGE).unwrap();
    let d = dev
        .create_list(&[
            Range::new(&a, PAGE, PAGE),
            Range::new(&b, 0, PAGE),
            Range::new(&b, 2 * PAGE, PAGE),
        ])
        .unwrap();
    assert_eq!(d.size(), 3 * PAGE);
    let buf = Buffer::from_dma_buf(d);
    assert_eq!(buf.kind(), &BufferKind::Udmabuf);
    let m = buf.map().unwrap();
    let r = m.read().unwrap();
    let r = r.to_vec();
    assert!(r[..4096].iter().all(|&x| x == 0xaa));
    assert!(r[4096..8192].iter().all(|&x| x == 0xbb));
    assert!(r[8192..].iter().all(|&x| x == 0xcc));
}

#[test]
fn data_is_shared_between_mappings_and_the_memfd() {
    let dev = dev();
    let m = Memfd::new("shared-data", 2 * PAGE).unwrap();
    let d = dev.create(&m, 0, 2 * PAGE).unwrap();
    let other = d.try_clone().unwrap();
    let b1 = Buffer::from_dma_buf(d);
    let b2 = Buffer::from_dma_buf(other);
    let m1 = b1.map().unwrap();
    {
        let mut w = m1.write().unwrap();
        w.write_at(0, b"hello").unwrap();
        w.write_at(4096, b"world").unwrap();
        w.end().unwrap();
    }
    let m2 = b2.map().unwrap();
    // Two handles on one dma-buf are one buffer: one mapping.
    assert_eq!(m1.addr(), m2.addr(), "two buffer handles, one mapping");
    let r = m2.read().unwrap();
    let bytes = r.to_vec();
    assert_eq!(&bytes[..5], b"hello");
    assert_eq!(&bytes[4096..4101], b"world");
    let mut via_memfd = [0u8; 5];
    rustix::io::pread(&m, &mut via_memfd, PAGE).unwrap();
    assert_eq!(&via_memfd, b"world");
    // And the other way round: written through the memfd, seen in a window.
    rustix::io::pwrite(&m, b"MEMFD", 100).unwrap();
    drop(r);
    assert_eq!(&m1.read().unwrap().to_vec()[100..105], b"MEMFD");
}

#[test]
fn unaligned_offset_is_refused() {
    let dev = dev();
    let m = Memfd::new("bad-offset", 2 * PAGE).unwrap();
    refused(
        dev.create(&m, 100, PAGE),
        "offset 100 is not a multiple of the page size 4096",
        Errno::INVAL,
        kernel_says(&m, 100, PAGE),
        Errno::INVAL,
    );
}

#[test]
fn unaligned_size_is_refused() {
    let dev = dev();
    let m = Memfd::new("bad-size", 2 * PAGE).unwrap();
    refused(
        dev.create(&m, 0, 1000),
        "size 1000 is not a multiple of the page size 4096",
        Errno::INVAL,
        kernel_says(&m, 0, 1000),
        Errno::INVAL,
    );
}

#[test]
fn zero_size_is_refused() {
    let dev = dev();
    let m = Memfd::new("zero", PAGE).unwrap();
    refused(
        dev.create(&m, 0, 0),
        "size 0: a range needs at least one page",
        Errno::INVAL,
        kernel_says(&m, 0, 0),
        Errno::INVAL,
    );
}

#[test]
fn a_file_that_is_not_a_memfd_is_refused() {
    let dev = dev();
    let f = std::fs::File::open("/proc/self/status").unwrap();
    refused(
        dev.create(&f, 0, PAGE),
        "not a memfd",
        Errno::BADFD,
        kernel_says(&f, 0, PAGE),
        Errno::BADFD,
    );
}

#[test]
fn a_memfd_without_shrink_seal_is_refused() {
    let dev = dev();
    let fd = memfd_create("no-seal", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&fd, PAGE).unwrap();
    refused(
        dev.create(&fd, 0, PAGE),
        "memfd lacks F_SEAL_SHRINK",
        Errno::INVAL,
        kernel_says(&fd, 0, PAGE),
        Errno::INVAL,
    );
    // Without MFD_ALLOW_SEALING it can never get the seal.
    let fd = memfd_create("no-sealing", MemfdFlags::CLOEXEC).unwrap();
    ftruncate(&fd, PAGE).unwrap();
    refused(
        dev.create(&fd, 0, PAGE),
        "memfd lacks F_SEAL_SHRINK",
        Errno::INVAL,
        kernel_says(&fd, 0, PAGE),
        Errno::INVAL,
    );
}

#[test]
fn a_write_sealed_memfd_is_refused() {
    let dev = dev();
    let fd = memfd_create(
        "write-seal",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    ftruncate(&fd, PAGE).unwrap();
    fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::WRITE).unwrap();
    refused(
        dev.create(&fd, 0, PAGE),
        "memfd is sealed with F_SEAL_WRITE",
        Errno::INVAL,
        kernel_says(&fd, 0, PAGE),
        Errno::INVAL,
    );
    // 6.12.7+ also refuses F_SEAL_FUTURE_WRITE (the lab runs 6.12.95).
    let fd = memfd_create(
        "future-seal",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    ftruncate(&fd, PAGE).unwrap();
    fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::FUTURE_WRITE).unwrap();
    refused(
        dev.create(&fd, 0, PAGE),
        "memfd is sealed with F_SEAL_FUTURE_WRITE",
        Errno::INVAL,
        kernel_says(&fd, 0, PAGE),
        Errno::INVAL,
    );
}

#[test]
fn a_range_past_the_end_of_the_memfd_is_refused() {
    let dev = dev();
    let m = Memfd::new("short", 2 * PAGE).unwrap();
    refused(
        dev.create(&m, PAGE, 2 * PAGE),
        "range 4096..12288 goes past the end of the memfd (8192 bytes)",
        Errno::INVAL,
        kernel_says(&m, PAGE, 2 * PAGE),
        Errno::INVAL,
    );
}

#[test]
fn a_size_over_the_limit_is_refused() {
    let dev = dev();
    let limits = dev.limits();
    assert!(limits.from_sysfs, "the lab kernel exposes the parameters");
    let over = limits.size_limit() + PAGE;
    let m = Memfd::new("huge", over).unwrap();
    refused(
        dev.create(&m, 0, over),
        &format!(
            "is over the udmabuf size limit of {} MiB",
            limits.size_limit_mb
        ),
        Errno::INVAL,
        kernel_says(&m, 0, over),
        Errno::INVAL,
    );
}

#[test]
fn more_ranges_than_the_list_limit_are_refused() {
    let dev = dev();
    let limits = dev.limits();
    let m = Memfd::new("many", PAGE).unwrap();
    let n = limits.list_limit as usize + 1;
    let ranges: Vec<Range> = (0..n).map(|_| Range::new(&m, 0, PAGE)).collect();
    let e = dev.create_list(&ranges).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "{n} ranges is over the udmabuf list limit of {}",
            limits.list_limit
        )),
        "{e}"
    );
    // The kernel agrees.
    let raw = rustix::fs::open(
        "/dev/udmabuf",
        rustix::fs::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    use std::os::fd::AsRawFd;
    let items: Vec<UdmabufCreateItem> = (0..n)
        .map(|_| UdmabufCreateItem {
            memfd: m.as_fd().as_raw_fd() as u32,
            pad: 0,
            offset: 0,
            size: PAGE,
        })
        .collect();
    assert_eq!(
        dmabuf_lab_guest::sys::udmabuf::create_list(&raw, 0, &items).map(drop),
        Err(Errno::INVAL)
    );
}

#[test]
fn the_bad_range_of_a_list_is_named() {
    let dev = dev();
    let good = Memfd::new("good", PAGE).unwrap();
    let bad = Memfd::new("bad", PAGE).unwrap();
    let e = dev
        .create_list(&[Range::new(&good, 0, PAGE), Range::new(&bad, 100, PAGE)])
        .unwrap_err();
    assert!(e.to_string().contains("(range 2 of 2)"), "{e}");
    assert!(e.to_string().contains("offset 100"), "{e}");
}

#[test]
fn limits_are_read_from_sysfs() {
    require_lab();
    let l = Limits::read();
    assert!(l.from_sysfs);
    assert_eq!(l.list_limit, 1024);
    assert_eq!(l.size_limit_mb, 64);
}

/// A sealed (shrink and grow) memfd: usable both for udmabuf and as a
/// portable buffer.
fn fixed_memfd(pages: u64) -> std::os::fd::OwnedFd {
    let m = memfd_create("lab-alias", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    ftruncate(&m, pages * PAGE).unwrap();
    fcntl_add_seals(&m, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    m
}

#[test]
fn a_list_repeating_memfd_pages_is_refused_though_the_kernel_accepts_it() {
    let dev = dev();
    let m = Memfd::new("repeat", 4 * PAGE).unwrap();
    let e = dev
        .create_list(&[
            Range::new(&m, 0, PAGE),
            Range::new(&m, 2 * PAGE, PAGE),
            Range::new(&m, 0, 2 * PAGE),
        ])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(e.errno(), Some(Errno::INVAL));
    assert!(
        e.cause()
            .contains("ranges 1 and 3 both cover memfd pages 0..4096"),
        "{e}"
    );
    // The kernel itself takes the same page twice (what the check is for).
    let raw = rustix::fs::open(
        "/dev/udmabuf",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    use std::os::fd::AsRawFd;
    let item = UdmabufCreateItem {
        memfd: m.as_fd().as_raw_fd() as u32,
        pad: 0,
        offset: 0,
        size: PAGE,
    };
    let fd = dmabuf_lab_guest::sys::udmabuf::create_list(&raw, 1, &[item, item]).unwrap();
    let size = rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0)).unwrap();
    assert_eq!(size, 2 * PAGE, "one memfd page shown twice");
    // Disjoint pages of one memfd are fine.
    let d = dev
        .create_list(&[Range::new(&m, PAGE, PAGE), Range::new(&m, 0, PAGE)])
        .unwrap();
    assert_eq!(d.size(), 2 * PAGE);
}

#[test]
fn two_udmabufs_over_the_same_pages_never_hold_overlapping_windows() {
    let dev = dev();
    let m = Memfd::new("two-udmabufs", 4 * PAGE).unwrap();
    // b1 is memfd pages 0..2, b2 memfd pages 1..3: b1's page 1 is b2's page 0.
    // b1 comes back from a bare fd (every handle of it gone meanwhile).
    let b1_fd = dev.create(&m, 0, 2 * PAGE).unwrap().into_fd();
    let b1 = Buffer::from_fd(b1_fd, "").unwrap();
    let b2 = Buffer::from_dma_buf(dev.create(&m, PAGE, 2 * PAGE).unwrap());
    assert!(!b1.same_as(&b2), "two dma-bufs");
    let (m1, m2) = (b1.map().unwrap(), b2.map().unwrap());
    let mut w = m1.write().unwrap();
    w.fill(0x5a);
    let e = m2
        .window::<dmabuf::mapping::ReadOnly>(0..PAGE as usize, None)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(e.errno(), Some(Errno::BUSY));
    assert!(e.cause().contains("same memfd pages"), "{e}");
    assert!(e.cause().contains("bytes 4096..8192 of it"), "{e}");
    let e = m2.write().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // b2's second page is memfd page 2, which b1 does not cover.
    let mut w2 = m2
        .window::<dmabuf::mapping::WriteOnly>(PAGE as usize..2 * PAGE as usize, None)
        .unwrap();
    w2.fill(0xa5);
    drop(w2);
    drop(w);
    // Both see the same memory once the writer is gone.
    let r2 = m2.read().unwrap();
    let r1 = m1.read().unwrap();
    assert!(r2.to_vec()[..PAGE as usize].iter().all(|&x| x == 0x5a));
    assert!(r2.to_vec()[PAGE as usize..].iter().all(|&x| x == 0xa5));
    assert!(r1.to_vec().iter().all(|&x| x == 0x5a));
}

#[test]
fn a_udmabuf_and_its_memfd_as_a_portable_buffer_share_the_registry() {
    let dev = dev();
    let m = fixed_memfd(2);
    let u = Buffer::from_dma_buf(dev.create(&m, PAGE, PAGE).unwrap());
    let p = Buffer::from_memfd(m.try_clone().unwrap(), "alias").unwrap();
    assert_eq!(p.kind(), &BufferKind::Portable);
    let (mu, mp) = (u.map().unwrap(), p.map().unwrap());
    let r = mu.read().unwrap();
    // The memfd's page 1 is the udmabuf's page 0: no writer over it.
    let e = mp.write().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(
        e.cause().contains("same memfd pages") || e.cause().contains("4096..8192"),
        "{e}"
    );
    // Page 0 of the memfd is not part of the udmabuf.
    mp.window::<dmabuf::mapping::WriteOnly>(0..PAGE as usize, None)
        .unwrap()
        .fill(1);
    drop(r);
    mp.write().unwrap().fill(7);
    assert!(mu.read().unwrap().to_vec().iter().all(|&x| x == 7));
}

#[test]
fn a_udmabuf_over_all_of_its_memfd_and_the_memfd_never_hold_overlapping_windows() {
    // The udmabuf allocator's case: one udmabuf over the whole of one
    // memfd. A window on all of the udmabuf then claims the memfd too (no
    // records kept); a window on the memfd must still be refused, and
    // the other way round.
    let dev = dev();
    let m = fixed_memfd(2);
    let u = Buffer::from_dma_buf(dev.create(&m, 0, 2 * PAGE).unwrap());
    let p = Buffer::from_memfd(m.try_clone().unwrap(), "whole-alias").unwrap();
    let (mu, mp) = (u.map().unwrap(), p.map().unwrap());
    for round in 0..3 {
        let w = mu.write().unwrap();
        for e in [
            mp.read().unwrap_err(),
            mp.window::<dmabuf::mapping::ReadOnly>(PAGE as usize..2 * PAGE as usize, None)
                .unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Busy, "round {round}: {e}");
            assert_eq!(e.errno(), Some(Errno::BUSY));
        }
        drop(w);
        let w = mp.write().unwrap();
        let e = mu.read().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "round {round}: {e}");
        assert!(e.cause().contains("same memfd pages"), "{e}");
        drop(w);
        // Readers through both at once.
        let (r1, r2) = (mu.read().unwrap(), mp.read().unwrap());
        drop((r1, r2));
    }
    mu.write().unwrap().fill(9);
    assert!(mp.read().unwrap().to_vec().iter().all(|&x| x == 9));
}

#[test]
fn a_second_handle_on_a_dma_buf_is_the_same_buffer() {
    let dev = dev();
    let m = Memfd::new("second-handle", 2 * PAGE).unwrap();
    let d = dev.create(&m, 0, 2 * PAGE).unwrap();
    let clone = Buffer::from_dma_buf(d.try_clone().unwrap());
    let b = Buffer::from_dma_buf(d);
    let by_fd = Buffer::from_fd(b.try_clone_fd().unwrap(), "").unwrap();
    for (how, h) in [("try_clone", &clone), ("from_fd", &by_fd)] {
        assert!(h.same_as(&b), "{how}");
        let (mb, mh) = (b.map().unwrap(), h.map().unwrap());
        assert_eq!(mb.addr(), mh.addr(), "{how}: one mapping");
        let w = mb.write().unwrap();
        let e = mh.write().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{how}: {e}");
        let e = mh.read().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy, "{how}: {e}");
        drop(w);
        assert!(mh.write().is_ok(), "{how}");
    }
}

#[test]
fn an_allocated_udmabuf_keeps_no_memfd_open_and_guards_its_own_windows() {
    use dmabuf::Allocate;
    let dev = dev();
    let name = "alone-in-its-memfd";
    let b = dev.allocate(3 * PAGE, name).unwrap();
    assert_eq!(b.kind(), &BufferKind::Udmabuf);
    // The memfd the pages came from is closed: nothing in this process
    // names those pages but the buffer (so no record of them is needed).
    let open: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        open.iter()
            .any(|p| p.starts_with("/dmabuf:") && p.contains(name)),
        "the buffer's own fd is listed: {open:?}"
    );
    assert!(
        !open
            .iter()
            .any(|p| p.starts_with("/memfd:") && p.contains(name)),
        "a memfd of the buffer is still open: {open:?}"
    );
    // Its windows are still exclusive through every handle.
    let other = Buffer::from_fd(b.try_clone_fd().unwrap(), "").unwrap();
    let (mb, mo) = (b.map().unwrap(), other.map().unwrap());
    let mut w = mb.write().unwrap();
    w.fill(0x3c);
    let e = mo.read().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let e = mo
        .window::<dmabuf::mapping::ReadOnly>(PAGE as usize..2 * PAGE as usize, None)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    drop(w);
    assert!(mo.read().unwrap().to_vec().iter().all(|&x| x == 0x3c));
}
