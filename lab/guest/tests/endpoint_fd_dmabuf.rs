//! The fd endpoint on real dma-bufs: the copy worker's CPU windows are
//! bracketed by DMA_BUF_IOCTL_SYNC on udmabuf and system-heap buffers, and
//! the pre-wait polls the kernel's reservation.

use std::time::Duration;

use dmabuf::endpoint::{DataPath, Direction, Endpoint, FdEndpoint, TransferOptions};
use dmabuf::{Allocate, Heap, Udmabuf};
use dmabuf_lab_guest::require_lab;
use rustix::pipe::PipeFlags;

#[test]
fn udmabuf_to_heap_through_a_pipe_is_byte_exact() {
    require_lab();
    let size = 1u64 << 20;
    let src = Udmabuf::open().unwrap().allocate(size, "fd-src").unwrap();
    let dst = Heap::open("system")
        .unwrap()
        .allocate(size, "fd-dst")
        .unwrap();
    let data: Vec<u8> = (0..size as usize)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    src.map().unwrap().write().unwrap().copy_from_slice(&data);
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
    let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
    let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
    assert_eq!(
        rx.data_path(),
        DataPath::Copy("plain file descriptor".into())
    );
    let a = tx.attach(&src).unwrap();
    let b = rx.attach(&dst).unwrap();
    let fr = rx.transfer(&b, size, TransferOptions::default()).unwrap();
    let ft = tx.transfer(&a, size, TransferOptions::default()).unwrap();
    ft.wait(Some(Duration::from_secs(60))).unwrap();
    fr.wait(Some(Duration::from_secs(60))).unwrap();
    let got = dst.map().unwrap().read().unwrap().to_vec();
    assert_eq!(got.iter().zip(&data).position(|(x, y)| x != y), None);
    // Nothing of ours is left in the kernel's reservation of either buffer.
    assert!(src.is_idle(dmabuf::Access::Write).unwrap());
    assert!(dst.is_idle(dmabuf::Access::Write).unwrap());
}
