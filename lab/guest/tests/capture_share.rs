//! The `capture_share` example (`crates/dmabuf/examples/capture_share.rs`,
//! this file runs its functions) against vivid's multi-planar capture
//! node: NV12 frames captured into dma-bufs, shared over a pool of frames
//! with a second process (this test binary again, with
//! `CAPTURE_SHARE_CHILD` set), every plane of every frame checked there.

#[allow(dead_code)]
#[path = "../../../crates/dmabuf/examples/capture_share.rs"]
mod example;
mod vivid;

use std::process::Command;

use dmabuf::endpoint::v4l2::{select_input, FourCc};
use dmabuf::share::Channel;

const CHILD: &str = "CAPTURE_SHARE_CHILD";
/// vivid's S-Video input: 720x576.
const SVIDEO_INPUT: u32 = 2;

#[test]
fn capture_share_example_streams_vivid_frames_to_a_second_process() {
    if std::env::var(CHILD).is_ok() {
        let n = example::consume(Channel::from_parent().unwrap()).unwrap();
        assert_eq!(n, 6);
        return;
    }
    let n = vivid::nodes();
    select_input(&n.capture_mplane, SVIDEO_INPUT).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "capture_share_example_streams_vivid_frames_to_a_second_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1");
    let r = example::share_capture(n.capture_mplane.as_ref(), FourCc::new(b"NV12"), 6, child);
    select_input(&n.capture_mplane, 0).unwrap();
    let r = r.unwrap_or_else(|e| panic!("capture_share: {e}"));
    assert_eq!(r.frames, 6);
    assert_eq!(r.layout, "NV12 720x576 (LINEAR), 2 planes");
}
