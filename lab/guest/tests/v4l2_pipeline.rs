//! Device to device through the same dma-bufs, ordered by fences alone:
//! vivid captures multi-planar NM12 frames (S-Video input, 720x576) into
//! udmabuf frames and the same frames are queued to vivid's multi-planar
//! output (S-Video, 720x576) at once, without waiting. The output queue
//! waits for each frame's capture fence in the reservation, and the next
//! capture into a frame waits until the output is done reading it.

mod vivid;

use dmabuf::endpoint::v4l2::{
    select_input, Format, FormatRequest, FourCc, V4l2Capture, V4l2Output,
};
use dmabuf::endpoint::TransferOptions;
use dmabuf::{Allocator, Backend, Frame};
use vivid::{nodes, read_plane, FRAME_TIMEOUT};

/// vivid's S-Video input (`input_types` default 0xe4: webcam, TV,
/// S-Video, HDMI).
const SVIDEO_INPUT: u32 = 2;

fn frame_for(fmt: &Format, alloc: &Allocator, name: &str) -> Frame {
    let buffers = fmt
        .planes
        .iter()
        .map(|p| alloc.allocate(u64::from(p.sizeimage), name).unwrap())
        .collect();
    Frame::from_layout(fmt.layout().unwrap(), buffers).unwrap()
}

#[test]
fn pipeline_capture_to_output_zero_copy_ordered_by_fences() {
    let n = nodes();
    select_input(&n.capture_mplane, SVIDEO_INPUT).unwrap();
    let req = FormatRequest {
        pixelformat: Some(FourCc::new(b"NM12")),
        ..FormatRequest::default()
    };
    let mut cap = V4l2Capture::open(&n.capture_mplane, &req, 3).unwrap();
    let mut out = V4l2Output::open(&n.output_mplane, &req, 3).unwrap();
    let (cf, of) = (cap.format(), out.format());
    eprintln!("capture {cf}\noutput {of}");
    let layout = cf.layout().unwrap();
    assert_eq!(layout, of.layout().unwrap(), "capture {cf}, output {of}");
    assert_eq!(cf.planes, of.planes);
    let alloc = Allocator::new(&Backend::Udmabuf).unwrap();
    let frames: Vec<Frame> = (0..3)
        .map(|i| frame_for(&cf, &alloc, &format!("pipe-{i}")))
        .collect();
    let catt: Vec<_> = frames
        .iter()
        .map(|f| cap.attach_frame(f).unwrap())
        .collect();
    let oatt: Vec<_> = frames
        .iter()
        .map(|f| out.attach_frame(f).unwrap())
        .collect();
    let opts = TransferOptions {
        timeout: FRAME_TIMEOUT,
        ..TransferOptions::default()
    };
    let mut last = Vec::new();
    for round in 0..2 {
        for i in 0..frames.len() {
            // Capture into the frame: waits until the output is done
            // reading it from the previous round.
            let c = cap.queue_frame(&catt[i], opts).unwrap();
            // Output it at once: the queue waits for the capture fence.
            let o = out.queue_frame(&oatt[i], opts).unwrap();
            assert!(
                c.is_signalled(),
                "round {round}, frame {i}: queued to the output before it was captured"
            );
            let rec = cap.frame_record(&catt[i]).unwrap();
            assert_eq!(rec.fence_seqno, c.seqno());
            last.push((i, c, o));
        }
    }
    // Every frame's planes hold the capture: the colour bars' luma falls
    // left to right in the middle row, the chroma is not flat.
    for (i, f) in frames.iter().enumerate() {
        let (w, h) = (f.width() as usize, f.height() as usize);
        let y = read_plane(&f.map_plane(0, false).unwrap());
        let uv = read_plane(&f.map_plane(1, false).unwrap());
        assert_eq!((y.len(), uv.len()), (w * h, w * h / 2));
        let row = h / 2;
        let luma: Vec<u8> = (0..8).map(|b| y[row * w + (2 * b + 1) * w / 16]).collect();
        assert!(luma.windows(2).all(|p| p[0] > p[1]), "frame {i}: {luma:?}");
        let crow = h / 4;
        let cb: Vec<u8> = (0..8)
            .map(|b| uv[crow * w + (((2 * b + 1) * w / 16) & !1)])
            .collect();
        assert!(cb[6] > 168 && cb[1] < 88, "frame {i}: Cb {cb:?}");
    }
    // The output finished all but the newest frame (vivid keeps showing
    // it until the next one comes).
    for (i, _, o) in &last[..last.len() - 1] {
        o.wait(Some(FRAME_TIMEOUT))
            .unwrap_or_else(|e| panic!("output of frame {i}: {e}"));
    }
    drop(out);
    drop(cap);
    select_input(&n.capture_mplane, 0).unwrap();
}
