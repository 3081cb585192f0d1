//! The queue state shared with the worker thread, and the worker: it
//! polls the device and dequeues finished buffers (`VIDIOC_DQBUF`),
//! signalling their fences in queue order.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use crate::error::{Errno, Error, Result};
use crate::fence::UserFence;
use crate::sys::v4l2 as sys;

/// One finished frame: what `VIDIOC_DQBUF` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    /// The attachment whose buffers hold the frame.
    pub attachment: u64,
    /// The V4L2 buffer slot.
    pub index: u32,
    /// Sequence number of the fence of this transfer (see
    /// [`UserFence::seqno`]).
    pub fence_seqno: u64,
    /// Bytes of frame data the driver wrote (capture) or took (output),
    /// all memory planes together: each plane's `bytesused` less its
    /// `data_offset`.
    pub bytesused: u32,
    /// Per memory plane: `bytesused` (including `data_offset`).
    pub plane_bytesused: Vec<u32>,
    /// Per memory plane: where the data starts in its buffer.
    pub plane_data_offset: Vec<u32>,
    /// The driver's frame counter (gaps mean dropped frames).
    pub sequence: u32,
    /// Capture time (CLOCK_MONOTONIC for most drivers, see `flags`).
    pub timestamp: Duration,
    /// `V4L2_BUF_FLAG_*` as dequeued.
    pub flags: u32,
}

impl FrameRecord {
    /// Whether the driver flagged the frame as corrupted
    /// (`V4L2_BUF_FLAG_ERROR`); its fence failed with `EIO`.
    pub fn is_error(&self) -> bool {
        self.flags & sys::V4L2_BUF_FLAG_ERROR != 0
    }
}

/// A queued transfer, by fence sequence number.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) index: u32,
    pub(super) attachment: u64,
    pub(super) fence: UserFence,
    /// Set when dequeued, while an earlier transfer is still queued.
    pub(super) done: Option<FrameRecord>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) streaming: bool,
    pub(super) stop: bool,
    pub(super) pending: BTreeMap<u64, Pending>,
    pub(super) last: BTreeMap<u64, FrameRecord>,
    pub(super) last_frame: Option<FrameRecord>,
    pub(super) completed: u64,
    /// Why the worker stopped the stream on its own, if it did.
    pub(super) error: Option<Error>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) dev: OwnedFd,
    pub(super) wake: OwnedFd,
    pub(super) path: String,
    /// `enum v4l2_buf_type` of the queue.
    pub(super) type_: u32,
    pub(super) state: Mutex<State>,
    pub(super) work: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn wake_worker(&self) {
        self.work.notify_all();
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// `VIDIOC_STREAMOFF` (if streaming) and failure of every pending
    /// fence with `errno`, in queue order. Called with the lock held.
    pub(super) fn stop_stream(&self, st: &mut State, errno: Errno) -> Result<()> {
        let mut result = Ok(());
        if st.streaming {
            result = sys::streamoff(&self.dev, self.type_)
                .map_err(|e| Error::os("v4l2 stream off", self.path.clone(), e));
            st.streaming = false;
        }
        for (_, p) in std::mem::take(&mut st.pending) {
            let _ = p.fence.fail(errno);
        }
        result
    }

    /// `VIDIOC_DQBUF` of one buffer, whatever the queue's type.
    fn dequeue(&self) -> rustix::io::Result<(sys::V4l2Buffer, Vec<sys::V4l2Plane>)> {
        let mut buf = sys::V4l2Buffer {
            type_: self.type_,
            memory: sys::V4L2_MEMORY_DMABUF,
            ..Default::default()
        };
        if sys::is_multiplanar(self.type_) {
            let mut planes = [sys::V4l2Plane::default(); sys::VIDEO_MAX_PLANES];
            sys::dqbuf_planes(&self.dev, &mut buf, &mut planes)?;
            let n = (buf.length as usize).min(sys::VIDEO_MAX_PLANES);
            Ok((buf, planes[..n].to_vec()))
        } else {
            sys::dqbuf(&self.dev, &mut buf)?;
            Ok((buf, Vec::new()))
        }
    }

    /// Records a dequeued buffer and signals the fences that may signal.
    fn complete(&self, st: &mut State, buf: &sys::V4l2Buffer, planes: &[sys::V4l2Plane]) {
        let Some((&seq, _)) = st.pending.iter().find(|(_, p)| p.index == buf.index) else {
            return;
        };
        let p = st.pending.get_mut(&seq).expect("found above");
        let (plane_bytesused, plane_data_offset): (Vec<u32>, Vec<u32>) = if planes.is_empty() {
            (vec![buf.bytesused], vec![0])
        } else {
            planes.iter().map(|p| (p.bytesused, p.data_offset)).unzip()
        };
        let frame = FrameRecord {
            attachment: p.attachment,
            index: buf.index,
            fence_seqno: seq,
            bytesused: plane_bytesused
                .iter()
                .zip(&plane_data_offset)
                .fold(0u32, |a, (b, o)| a.saturating_add(b.saturating_sub(*o))),
            plane_bytesused,
            plane_data_offset,
            sequence: buf.sequence,
            timestamp: Duration::new(
                buf.timestamp.tv_sec.max(0) as u64,
                (buf.timestamp.tv_usec.clamp(0, 999_999) * 1000) as u32,
            ),
            flags: buf.flags,
        };
        p.done = Some(frame.clone());
        st.last.insert(frame.attachment, frame.clone());
        st.last_frame = Some(frame);
        st.completed += 1;
        // Signal in queue order: the front while it is done.
        while let Some(entry) = st.pending.first_entry() {
            let Some(error) = entry.get().done.as_ref().map(FrameRecord::is_error) else {
                break;
            };
            let p = entry.remove();
            if error {
                let _ = p.fence.fail(Errno::IO);
            } else {
                let _ = p.fence.signal();
            }
        }
    }
}

/// The worker: waits for queued frames and dequeues them as they finish
/// (`POLLIN` on a capture queue, `POLLOUT` on an output queue).
pub(super) fn worker(shared: Arc<Shared>, ready: PollFlags) {
    loop {
        {
            let mut st = shared.lock();
            while !st.stop && (st.pending.is_empty() || !st.streaming) {
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop {
                return;
            }
        }
        let mut fds = [
            PollFd::new(&shared.dev, ready),
            PollFd::new(&shared.wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let (dev_ev, wake_ev) = (fds[0].revents(), fds[1].revents());
        if !wake_ev.is_empty() {
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&shared.wake, &mut b);
        }
        if dev_ev.is_empty() {
            continue;
        }
        let mut st = shared.lock();
        let mut got_one = false;
        while st.streaming && !st.pending.is_empty() {
            match shared.dequeue() {
                Ok((buf, planes)) => {
                    got_one = true;
                    shared.complete(&mut st, &buf, &planes);
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    // The queue is in error (EIO) or ended (EPIPE): nothing
                    // queued will finish; give the buffers back.
                    let err = Error::kernel(
                        "v4l2 dequeue",
                        shared.path.clone(),
                        e,
                        "the driver stopped delivering frames; the stream was stopped and the queued frames failed",
                    );
                    let _ = shared.stop_stream(&mut st, e);
                    st.error = Some(err);
                    break;
                }
            }
        }
        drop(st);
        if !got_one && dev_ev.intersects(PollFlags::ERR | PollFlags::HUP) {
            // POLLERR with nothing to dequeue (e.g. between a stream-off
            // and the state change): do not spin.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
