//! No fd leaks through endpoints. Its own test binary with one test, so
//! no other test opens fds while it counts.

use std::time::Duration;

use dmabuf::endpoint::{Direction, Endpoint, FdEndpoint, TransferOptions};
use dmabuf::{Allocate, Portable, Usage, UserFence};
use rustix::pipe::PipeFlags;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn endpoints_buffers_and_fences_give_back_every_fd() {
    let before = open_fds();
    for round in 0..3 {
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        let mut tx = FdEndpoint::new(w, Direction::ToDevice).unwrap();
        let mut rx = FdEndpoint::new(r, Direction::FromDevice).unwrap();
        let src = Portable.allocate(65536, "leak-src").unwrap();
        let dst = Portable.allocate(65536, "leak-dst").unwrap();
        src.map().unwrap().write().unwrap().fill(round);
        let a = tx.attach(&src).unwrap();
        let b = rx.attach(&dst).unwrap();
        let fr = rx.transfer(&b, 65536, TransferOptions::default()).unwrap();
        let ft = tx.transfer(&a, 65536, TransferOptions::default()).unwrap();
        ft.wait(Some(Duration::from_secs(10))).unwrap();
        fr.wait(Some(Duration::from_secs(10))).unwrap();
        assert!(dst
            .map()
            .unwrap()
            .read()
            .unwrap()
            .bytes()
            .iter()
            .all(|x| x == round));
        // A refused transfer, a failed one and cancelled ones too.
        let blocker = UserFence::new().unwrap();
        src.add_fence(blocker.clone().into(), Usage::Write).unwrap();
        let busy = TransferOptions {
            nonblocking: true,
            ..Default::default()
        };
        assert!(tx.transfer(&a, 1, busy).is_err());
        blocker.signal().unwrap();
        let pending = rx.transfer(&b, 10, TransferOptions::default()).unwrap();
        rx.detach(&b).unwrap();
        assert!(pending.wait(Some(Duration::from_secs(10))).is_err());
        drop((tx, rx, src, dst, blocker, pending, ft, fr));
    }
    assert_eq!(open_fds(), before, "fds leaked");
}
