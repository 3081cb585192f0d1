//! FunctionFS endpoints against the real kernel: a gadget on dummy_hcd
//! with bulk IN (`ep1`) and OUT (`ep2`) endpoints, read and written from
//! the host side of the same VM through usbfs.

use std::sync::OnceLock;
use std::time::Duration;

use dmabuf::endpoint::functionfs::{FunctionFsEndpoint, UNDECIDED};
use dmabuf::endpoint::{DataPath, Direction, Endpoint, TransferOptions};
use dmabuf::{Allocate, Buffer, Errno, ErrorKind, Fence, FenceStatus, Heap, Portable, Udmabuf};
use dmabuf_lab_guest::require_lab;
use dmabuf_lab_guest::sys;
use dmabuf_lab_guest::usb::{Gadget, FFS_DIR};

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

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> (seed % 24)) as u8 ^ seed)
        .collect()
}

fn fill(buf: &Buffer, seed: u8) {
    let data = pattern(buf.size() as usize, seed);
    buf.map().unwrap().write().unwrap().copy_from_slice(&data);
}

fn udmabuf(size: u64, name: &str) -> Buffer {
    Udmabuf::open().unwrap().allocate(size, name).unwrap()
}

fn heap(size: u64, name: &str) -> Buffer {
    Heap::open("system").unwrap().allocate(size, name).unwrap()
}

fn assert_eperm_copy_path(path: &DataPath) {
    match path {
        DataPath::Copy(why) => {
            assert!(
                why.starts_with("FUNCTIONFS_DMABUF_ATTACH answered EPERM"),
                "{why}"
            );
            assert!(why.contains("scatter-gather"), "{why}");
        }
        p => panic!("dummy_hcd has no scatter-gather, yet the path is {p}"),
    }
}

#[test]
fn kernel_answers_of_the_dmabuf_ioctls_on_dummy_hcd() {
    let _g = gadget();
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
    // No scatter-gather on dummy_hcd: attach is refused.
    assert_eq!(sys::functionfs::attach(&ep, d), Err(Errno::PERM));
    // The kernel's own checks, in its order: length, then attachment.
    assert_eq!(sys::functionfs::transfer(&ep, d, 0, 0), Err(Errno::INVAL));
    assert_eq!(
        sys::functionfs::transfer(&ep, d, 0, 65537),
        Err(Errno::INVAL)
    );
    assert_eq!(sys::functionfs::transfer(&ep, d, 0, 4096), Err(Errno::PERM));
    assert_eq!(
        sys::functionfs::transfer(&ep, d, 1, 4096),
        Err(Errno::INVAL)
    );
    assert_eq!(sys::functionfs::detach(&ep, d), Err(Errno::PERM));
}

#[test]
fn direction_is_checked_against_the_descriptor() {
    let _g = gadget();
    let e = FunctionFsEndpoint::open(format!("{FFS_DIR}/ep1"), Direction::FromDevice).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.cause().contains("is an IN endpoint"), "{e}");
    let e = FunctionFsEndpoint::open(format!("{FFS_DIR}/ep2"), Direction::ToDevice).unwrap_err();
    assert!(e.cause().contains("is an OUT endpoint"), "{e}");
}

#[test]
fn in_endpoint_streams_udmabuf_and_heap_buffers_byte_exact() {
    let g = gadget();
    let mut ep = ep_in();
    assert_eq!(ep.data_path(), DataPath::Copy(UNDECIDED.into()));
    let ubuf = udmabuf(1 << 20, "ffs-in-udmabuf");
    let hbuf = heap(1 << 20, "ffs-in-heap");
    fill(&ubuf, 1);
    fill(&hbuf, 2);
    let a = ep.attach(&ubuf).unwrap();
    assert_eperm_copy_path(&ep.data_path());
    assert_eperm_copy_path(&ep.path_of(&a).unwrap());
    let b = ep.attach(&hbuf).unwrap();
    assert_eperm_copy_path(&ep.path_of(&b).unwrap());

    let lens = [(&a, 1usize << 20), (&b, 300_000), (&a, 4096)];
    let total: usize = lens.iter().map(|(_, l)| l).sum();
    let host = std::thread::spawn(move || g.host_read(total, HOST_TIMEOUT));
    let fences: Vec<Fence> = lens
        .iter()
        .map(|(att, len)| {
            ep.transfer(att, *len as u64, TransferOptions::default())
                .unwrap()
        })
        .collect();
    let got = host.join().unwrap().unwrap();
    for f in &fences {
        f.wait(WAIT).unwrap();
    }
    let stamps: Vec<u64> = fences
        .iter()
        .map(|f| match f {
            Fence::User(u) => u.timestamp_ns().unwrap(),
            f => panic!("copy path gives user fences, got {}", f.describe()),
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    let mut expect = pattern(1 << 20, 1);
    expect.extend_from_slice(&pattern(1 << 20, 2)[..300_000]);
    expect.extend_from_slice(&pattern(1 << 20, 1)[..4096]);
    assert_eq!(got.len(), expect.len());
    let first_bad = got.iter().zip(&expect).position(|(x, y)| x != y);
    assert_eq!(first_bad, None, "stream differs from the buffers");
}

#[test]
fn out_endpoint_fills_buffers_and_a_short_packet_ends_a_transfer() {
    let g = gadget();
    let mut ep = ep_out();
    let buf = udmabuf(65536, "ffs-out");
    let a = ep.attach(&buf).unwrap();
    assert_eperm_copy_path(&ep.data_path());
    let f = ep.transfer(&a, 65536, TransferOptions::default()).unwrap();
    // The CPU may not read while the device writes.
    let e = buf
        .map()
        .unwrap()
        .window::<dmabuf::mapping::Read>(0..16, Some(Duration::from_millis(50)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    let data = pattern(65536, 3);
    assert_eq!(g.host_write(&data, HOST_TIMEOUT).unwrap(), 65536);
    f.wait(WAIT).unwrap();
    assert_eq!(buf.map().unwrap().read().unwrap().to_vec()[..], data[..]);

    // 1000 bytes: a short packet ends the 64 KiB transfer early.
    let f = ep.transfer(&a, 65536, TransferOptions::default()).unwrap();
    let short = pattern(1000, 4);
    assert_eq!(g.host_write(&short, HOST_TIMEOUT).unwrap(), 1000);
    f.wait(WAIT).unwrap();
    let now = buf.map().unwrap().read().unwrap().to_vec();
    assert_eq!(now[..1000], short[..]);
    assert_eq!(
        now[1000..],
        data[1000..],
        "bytes past the short packet stay"
    );
}

#[test]
fn heap_buffer_from_the_host() {
    let g = gadget();
    let mut ep = ep_out();
    let buf = heap(16384, "ffs-out-heap");
    let a = ep.attach(&buf).unwrap();
    let f = ep.transfer(&a, 16384, TransferOptions::default()).unwrap();
    let data = pattern(16384, 5);
    g.host_write(&data, HOST_TIMEOUT).unwrap();
    f.wait(WAIT).unwrap();
    assert_eq!(buf.map().unwrap().read().unwrap().to_vec()[..], data[..]);
}

#[test]
fn portable_buffers_take_the_copy_path_with_their_reason() {
    let g = gadget();
    let mut ep = ep_in();
    let buf = Portable.allocate(8192, "ffs-portable").unwrap();
    fill(&buf, 6);
    let a = ep.attach(&buf).unwrap();
    match ep.path_of(&a).unwrap() {
        DataPath::Copy(why) => assert!(why.contains("portable memory, not a dma-buf"), "{why}"),
        p => panic!("{p}"),
    }
    let host = std::thread::spawn(move || g.host_read(8192, HOST_TIMEOUT));
    ep.transfer(&a, 8192, TransferOptions::default())
        .unwrap()
        .wait(WAIT)
        .unwrap();
    assert_eq!(host.join().unwrap().unwrap(), pattern(8192, 6));
}

#[test]
fn bad_inputs_are_refused_before_the_kernel() {
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
}

#[test]
fn detach_cancels_what_waits_behind_a_transfer_the_host_has_not_read() {
    let g = gadget();
    let mut ep = ep_in();
    let buf = udmabuf(4096, "ffs-cancel");
    fill(&buf, 7);
    let a = ep.attach(&buf).unwrap();
    let fences: Vec<Fence> = (0..3)
        .map(|_| ep.transfer(&a, 4096, TransferOptions::default()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The write to ep1 waits for the host: nothing has completed.
    assert!(fences.iter().all(|f| !f.is_signalled()));
    ep.detach(&a).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The first is inside write(2) and cannot be interrupted; the others
    // are cancelled but signal in queue order, after it.
    assert!(fences.iter().all(|f| !f.is_signalled()));
    assert_eq!(g.host_read(4096, HOST_TIMEOUT).unwrap(), pattern(4096, 7));
    fences[0].wait(WAIT).unwrap();
    for f in &fences[1..] {
        let e = f.wait(WAIT).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }
    assert_eq!(fences[2].status(), FenceStatus::Error(Errno::CANCELED));
    // Nothing else was sent.
    assert_eq!(
        g.host_read_once(4096, Duration::from_millis(300)),
        Err(Errno::TIMEDOUT)
    );
}
