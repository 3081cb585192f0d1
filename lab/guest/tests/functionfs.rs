//! FunctionFS endpoints against the real kernel: a gadget on the lab's
//! scatter-gather `dummy_hcd` (lab/fixtures/dummy_hcd-sg.patch) with bulk
//! IN (`ep1`) and OUT (`ep2`) endpoints, read and written from the host
//! side of the same VM through usbfs. The DMABUF path (`FUNCTIONFS_DMABUF_*`) runs
//! for real here: attach, transfer, fences, implicit sync with CPU
//! windows, detach, drop. Test names start with `ffs_` (a lab filter).

use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dmabuf::endpoint::functionfs::{FunctionFsEndpoint, UNDECIDED};
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{
    Access, Allocate, Buffer, Errno, ErrorKind, Fence, FenceStatus, Heap, Portable, Udmabuf,
};
use dmabuf_lab_guest::bytes::{self, first_difference, pattern};
use dmabuf_lab_guest::fences::assert_failed_after_detach;
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::sys;
use dmabuf_lab_guest::usb::{patched_udc_loaded, Gadget, FFS_DIR};

const WAIT: Option<Duration> = Some(Duration::from_secs(60));
const HOST_TIMEOUT: Duration = Duration::from_secs(60);

static GADGET: OnceLock<Gadget> = OnceLock::new();

fn gadget() -> &'static Gadget {
    require_lab();
    GADGET.get_or_init(|| Gadget::setup().unwrap_or_else(|e| panic!("gadget setup: {e}")))
}

fn ep_in() -> FunctionFsEndpoint {
    FunctionFsEndpoint::open(format!("{FFS_DIR}/ep1"), Direction::ToDevice).unwrap()
}

fn ep_out() -> FunctionFsEndpoint {
    FunctionFsEndpoint::open(format!("{FFS_DIR}/ep2"), Direction::FromDevice).unwrap()
}

fn udmabuf(size: u64, name: &str) -> Buffer {
    Udmabuf::open().unwrap().allocate(size, name).unwrap()
}

fn heap(size: u64, name: &str) -> Buffer {
    Heap::open("system").unwrap().allocate(size, name).unwrap()
}

fn fill(buf: &Buffer, seed: u8) -> Vec<u8> {
    let data = pattern(buf.size() as usize, seed);
    bytes::write(buf, &data).unwrap();
    data
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(
        first_difference(got, want),
        None,
        "{what}: {} bytes, {} expected",
        got.len(),
        want.len()
    );
}

/// A zero-copy transfer's fence is the library's own, never the kernel's
/// (whose lock lives in the attachment: see `assert_failed_after_detach`).
fn assert_library_fence(f: &Fence) {
    assert!(
        matches!(f, Fence::User(u) if u.is_owner()),
        "a zero-copy transfer's fence is a user fence the library owns, got {}",
        f.describe()
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn ffs_kernel_answers_on_the_scatter_gather_udc() {
    let _g = gadget();
    assert!(
        patched_udc_loaded(),
        "dummy_hcd is not the lab's out-of-tree sg build (taint {:?})",
        std::fs::read_to_string("/sys/module/dummy_hcd/taint")
    );
    let ep = ep_in();
    let desc = ep.descriptor().unwrap();
    let (addr, attrs, mps) = (
        desc.b_endpoint_address,
        desc.bm_attributes,
        desc.w_max_packet_size,
    );
    assert_eq!(addr & 0x80, 0x80, "ep1 is IN");
    assert_eq!(attrs & 3, 2, "bulk");
    assert_eq!(u16::from_le(mps), 512, "high speed bulk");
    let buf = udmabuf(65536, "ffs-raw");
    let d = buf.dma_buf().unwrap();
    let other = udmabuf(4096, "ffs-raw-other");
    // Checks before the attachment lookup: flags, length.
    assert_eq!(
        sys::functionfs::transfer(&ep, d, 1, 4096),
        Err(Errno::INVAL)
    );
    assert_eq!(sys::functionfs::transfer(&ep, d, 0, 0), Err(Errno::INVAL));
    assert_eq!(sys::functionfs::transfer(&ep, d, 0, 4096), Err(Errno::PERM));
    assert_eq!(sys::functionfs::detach(&ep, d), Err(Errno::PERM));
    // ATTACH works on this UDC; the kernel has no duplicate check.
    sys::functionfs::attach(&ep, d).unwrap();
    sys::functionfs::attach(&ep, d).unwrap();
    assert_eq!(
        sys::functionfs::transfer(&ep, d, 0, 65537),
        Err(Errno::INVAL)
    );
    assert_eq!(
        sys::functionfs::transfer(&ep, other.dma_buf().unwrap(), 0, 4096),
        Err(Errno::PERM)
    );
    sys::functionfs::detach(&ep, d).unwrap();
    sys::functionfs::detach(&ep, d).unwrap();
    assert_eq!(sys::functionfs::detach(&ep, d), Err(Errno::PERM));
}

#[test]
fn ffs_in_endpoint_zero_copy_udmabuf_and_heap_byte_exact() {
    let g = gadget();
    let mut ep = ep_in();
    assert_eq!(ep.data_path(), DataPath::Copy(UNDECIDED.into()));
    let ubuf = udmabuf(1 << 20, "ffs-in-udmabuf");
    let hbuf = heap(1 << 20, "ffs-in-heap");
    let udata = fill(&ubuf, 1);
    let hdata = fill(&hbuf, 2);
    let a = ep.attach(&ubuf).unwrap();
    assert_eq!(ep.data_path(), DataPath::ZeroCopy);
    assert_eq!(ep.path_of(&a).unwrap(), DataPath::ZeroCopy);
    let b = ep.attach(&hbuf).unwrap();
    assert_eq!(ep.path_of(&b).unwrap(), DataPath::ZeroCopy);

    let lens = [(&a, 1usize << 20), (&b, 300_000), (&a, 4096)];
    let total: usize = lens.iter().map(|(_, l)| l).sum();
    let host = std::thread::spawn(move || g.host_read(total, HOST_TIMEOUT));
    let mut fences = vec![];
    for (att, len) in lens {
        fences.push(
            ep.transfer(att, len as u64, TransferOptions::default())
                .unwrap(),
        );
        // One buffer, one transfer at a time: the kernel queues a second
        // transfer of a buffer behind the first only through the fences.
        fences.last().unwrap().wait(WAIT).unwrap();
    }
    let got = host.join().unwrap().unwrap();
    for f in &fences {
        assert_library_fence(f);
        assert_eq!(f.status(), FenceStatus::Signalled);
    }
    assert_eq!(ep.pending(), 0, "no copy-path work");
    let mut expect = udata.clone();
    expect.extend_from_slice(&hdata[..300_000]);
    expect.extend_from_slice(&udata[..4096]);
    assert_same(&got, &expect, "host stream vs the buffers");
}

fn out_transfer_lands_and_read_window_waits(buf: Buffer, seed: u8) {
    let g = gadget();
    let mut ep = ep_out();
    let len = buf.size() as usize;
    let a = ep.attach(&buf).unwrap();
    assert_eq!(ep.path_of(&a).unwrap(), DataPath::ZeroCopy);
    let f = ep
        .transfer(&a, len as u64, TransferOptions::default())
        .unwrap();
    assert_library_fence(&f);
    assert!(!f.is_signalled(), "nothing was sent yet");
    // The kernel's own fence of the transfer is in the dma-buf's
    // reservation, for other drivers and processes.
    let write_export = buf
        .dma_buf()
        .unwrap()
        .export_sync_file(Access::Write)
        .unwrap();
    assert!(
        !Fence::from(write_export).is_signalled(),
        "the kernel's reservation has no fence of the OUT transfer in flight"
    );
    // The 6.12 direction bug (docs/kernel-findings.md): an OUT transfer writes the
    // buffer, so a *read* export must include its fence, whether the
    // kernel added it as a writer or the library re-added it.
    let read_export = buf
        .dma_buf()
        .unwrap()
        .export_sync_file(Access::Read)
        .unwrap();
    assert!(
        !Fence::from(read_export).is_signalled(),
        "a read export does not wait for the OUT transfer in flight: CPU reads would race the device"
    );
    // A read window waits for the transfer in flight...
    let reader = {
        let buf = buf.clone();
        std::thread::spawn(move || bytes::read(&buf, len, None))
    };
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !reader.is_finished(),
        "a read window opened while the OUT transfer was in flight"
    );
    let data = pattern(len, seed);
    assert_eq!(g.host_write(&data, HOST_TIMEOUT).unwrap(), len);
    f.wait(WAIT).unwrap();
    // ...and sees the bytes the host sent.
    let seen = reader.join().unwrap().unwrap();
    assert_same(&seen, &data, "read window after the OUT transfer");
    // Fences of an attachment go before it (see assert_failed_after_detach).
    drop(f);
    ep.detach(&a).unwrap();
}

#[test]
fn ffs_out_endpoint_zero_copy_udmabuf_read_window_waits_for_host_data() {
    out_transfer_lands_and_read_window_waits(udmabuf(65536, "ffs-out-udmabuf"), 3);
}

#[test]
fn ffs_out_endpoint_zero_copy_heap_read_window_waits_for_host_data() {
    out_transfer_lands_and_read_window_waits(heap(16384, "ffs-out-heap"), 5);
}

#[test]
fn ffs_transfer_waits_for_an_open_write_window() {
    let g = gadget();
    let mut ep = ep_in();
    let buf = udmabuf(65536, "ffs-window");
    fill(&buf, 8);
    let a = ep.attach(&buf).unwrap();
    let map = buf.map().unwrap();
    let mut w = map.write().unwrap();
    let e = ep
        .transfer(
            &a,
            65536,
            TransferOptions {
                nonblocking: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let e = ep
        .transfer(
            &a,
            65536,
            TransferOptions {
                timeout: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // A blocking transfer waits until the window ends, and sends what the
    // window left.
    let sender = std::thread::spawn(move || {
        let f = ep.transfer(&a, 65536, TransferOptions::default());
        (ep, a, f)
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !sender.is_finished(),
        "a transfer was queued while a write window was open"
    );
    let data = pattern(65536, 9);
    w.copy_from_slice(&data);
    w.end().unwrap();
    let (mut ep, a, f) = sender.join().unwrap();
    let f = f.unwrap();
    let got = g.host_read(65536, HOST_TIMEOUT).unwrap();
    f.wait(WAIT).unwrap();
    assert_same(&got, &data, "bytes sent after the window ended");
    drop(f);
    ep.detach(&a).unwrap();
}

#[test]
fn ffs_out_then_in_zero_copy_loopback_is_ordered_by_fences() {
    let g = gadget();
    let mut out = ep_out();
    let mut inn = ep_in();
    let buf = heap(32768, "ffs-loop");
    let ao = out.attach(&buf).unwrap();
    let ai = inn.attach(&buf).unwrap();
    let fo = out
        .transfer(&ao, 32768, TransferOptions::default())
        .unwrap();
    // The IN transfer reads what the OUT transfer writes: it must wait.
    let e = inn
        .transfer(
            &ai,
            32768,
            TransferOptions {
                nonblocking: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let data = pattern(32768, 10);
    g.host_write(&data, HOST_TIMEOUT).unwrap();
    fo.wait(WAIT).unwrap();
    let fi = inn
        .transfer(
            &ai,
            32768,
            TransferOptions {
                nonblocking: true,
                ..Default::default()
            },
        )
        .unwrap();
    let got = g.host_read(32768, HOST_TIMEOUT).unwrap();
    fi.wait(WAIT).unwrap();
    assert_same(&got, &data, "host → OUT → buffer → IN → host");
}

#[test]
fn ffs_detach_fails_the_fence_of_a_pending_transfer() {
    let g = gadget();
    let mut ep = ep_in();
    let buf = udmabuf(65536, "ffs-detach");
    fill(&buf, 11);
    let a = ep.attach(&buf).unwrap();
    let f = ep.transfer(&a, 65536, TransferOptions::default()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!f.is_signalled(), "the host has not read");
    ep.detach(&a).unwrap();
    // The buffer is idle again: a write window opens within a bound.
    bytes::write(&buf, &[0; 16]).unwrap();
    assert_failed_after_detach(f, "transfer cut by detach");
    // Nothing is sent afterwards.
    assert_eq!(
        g.host_read_once(65536, Duration::from_millis(300)),
        Err(Errno::TIMEDOUT)
    );
}

#[test]
fn ffs_dropping_the_endpoint_fails_pending_fences_and_leaks_nothing() {
    let g = gadget();
    let before = open_fds();
    let buf = udmabuf(65536, "ffs-drop");
    fill(&buf, 12);
    let mut ep = ep_in();
    let a = ep.attach(&buf).unwrap();
    let f = ep.transfer(&a, 65536, TransferOptions::default()).unwrap();
    drop(a);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(ep);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("dropping an endpoint with a pending transfer hung");
    assert_failed_after_detach(f, "transfer cut by dropping the endpoint");
    drop(buf);
    assert_eq!(open_fds(), before, "file descriptors leaked");
    assert_eq!(
        g.host_read_once(65536, Duration::from_millis(300)),
        Err(Errno::TIMEDOUT)
    );
}

#[test]
fn ffs_portable_buffers_take_the_copy_path_with_their_reason() {
    let g = gadget();
    let mut ep = ep_in();
    let buf = Portable.allocate(8192, "ffs-portable").unwrap();
    let data = fill(&buf, 6);
    let a = ep.attach(&buf).unwrap();
    match ep.path_of(&a).unwrap() {
        DataPath::Copy(why) => assert!(why.contains("portable memory, not a dma-buf"), "{why}"),
        p => panic!("{p}"),
    }
    assert!(matches!(ep.data_path(), DataPath::Copy(_)));
    let host = std::thread::spawn(move || g.host_read(8192, HOST_TIMEOUT));
    let f = ep.transfer(&a, 8192, TransferOptions::default()).unwrap();
    f.wait(WAIT).unwrap();
    assert!(matches!(f, Fence::User(_)), "copy path: {}", f.describe());
    assert_same(&host.join().unwrap().unwrap(), &data, "copy path");
}

#[test]
fn ffs_bad_inputs_are_refused_before_the_kernel() {
    let _g = gadget();
    let mut ep = ep_in();
    let mut other = ep_out();
    let buf = udmabuf(8192, "ffs-bad");
    let a = ep.attach(&buf).unwrap();
    let e = ep.transfer(&a, 0, TransferOptions::default()).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::INVAL));
    assert!(e.cause().contains("length 0"), "{e}");
    let e = ep
        .transfer(&a, 8193, TransferOptions::default())
        .unwrap_err();
    assert!(e.cause().contains("past the end"), "{e}");
    let e = ep
        .transfer(
            &a,
            1,
            TransferOptions {
                flags: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.cause().contains("unknown transfer flags 0x1"), "{e}");
    let e = ep.attach(&buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    let b = other.attach(&buf).unwrap();
    let e = ep.transfer(&b, 1, TransferOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.errno(), Some(Errno::PERM));
    assert!(e.object().contains(&format!("{FFS_DIR}/ep1")), "{e}");
    ep.detach(&a).unwrap();
    let e = ep.detach(&a).unwrap_err();
    assert_eq!(e.errno(), Some(Errno::PERM));
    assert_eq!(ep.pending(), 0);
    // The endpoint file is still usable by the kernel side.
    let _ = ep.as_fd();
}

#[test]
fn ffs_many_zero_copy_transfers_keep_order_and_timestamps() {
    let g = gadget();
    let mut ep = ep_in();
    let bufs: Vec<Buffer> = (0..4)
        .map(|i| udmabuf(16384, &format!("ffs-many-{i}")))
        .collect();
    let mut expect = vec![];
    let atts: Vec<_> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            expect.extend(fill(b, 20 + i as u8));
            ep.attach(b).unwrap()
        })
        .collect();
    let host = std::thread::spawn(move || g.host_read(4 * 16384, HOST_TIMEOUT));
    let start = Instant::now();
    let fences: Vec<Fence> = atts
        .iter()
        .map(|a| ep.transfer(a, 16384, TransferOptions::default()).unwrap())
        .collect();
    let got = host.join().unwrap().unwrap();
    for f in &fences {
        f.wait(WAIT).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_same(&got, &expect, "four buffers in queue order");
}
