//! V4L2 pixel formats ⇄ DRM formats, and a V4L2 format's frame layout.
//!
//! # DOC: V4L2 formats
//!
//! V4L2 names formats with its own fourccs (`include/uapi/linux/videodev2.h`),
//! which differ from DRM's for RGB (`V4L2_PIX_FMT_XBGR32` `XR24` is DRM's
//! `XRGB8888`, `V4L2_PIX_FMT_RGB565` is `RGBP`) and come in two flavours
//! for multi-planar formats: `NV12` keeps both planes in one buffer
//! (chroma right after luma), `NV12M` (`NM12`) has one buffer per plane.
//! [`from_v4l2`] and [`to_v4l2`] translate with a fixed table (the formats
//! of [`Fourcc::known`] that V4L2 has); [`layout_from_v4l2`] turns what
//! `VIDIOC_G_FMT`/`S_FMT` answers (pixel format, size, `bytesperline` per
//! memory plane) into a [`FrameLayout`], following `v4l2_fill_pixfmt`:
//! for a single-buffer format the chroma planes follow the luma plane, and
//! their stride is `bytesperline × bytes per pixel of the plane / (bytes
//! per pixel of luma × horizontal subsampling)`. The layout is then checked
//! like any frame's against the real buffer sizes.

use super::format::{Fourcc, Modifier};
use super::layout::{FrameError, FrameLayout, PlaneLayout};

const fn v(c: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*c)
}

/// (V4L2 code, DRM format, one buffer per plane?)
const TABLE: &[(u32, Fourcc, bool)] = &[
    (v(b"XR24"), Fourcc::XRGB8888, false), // V4L2_PIX_FMT_XBGR32
    (v(b"AR24"), Fourcc::ARGB8888, false), // V4L2_PIX_FMT_ABGR32
    (v(b"XB24"), Fourcc::XBGR8888, false), // V4L2_PIX_FMT_RGBX32
    (v(b"AB24"), Fourcc::ABGR8888, false), // V4L2_PIX_FMT_RGBA32
    (v(b"BGR3"), Fourcc::RGB888, false),   // V4L2_PIX_FMT_BGR24
    (v(b"RGBP"), Fourcc::RGB565, false),   // V4L2_PIX_FMT_RGB565
    (v(b"GREY"), Fourcc::R8, false),       // V4L2_PIX_FMT_GREY
    (v(b"YUYV"), Fourcc::YUYV, false),     // V4L2_PIX_FMT_YUYV
    (v(b"UYVY"), Fourcc::UYVY, false),     // V4L2_PIX_FMT_UYVY
    (v(b"NV12"), Fourcc::NV12, false),     // V4L2_PIX_FMT_NV12
    (v(b"NV21"), Fourcc::NV21, false),     // V4L2_PIX_FMT_NV21
    (v(b"NV16"), Fourcc::NV16, false),     // V4L2_PIX_FMT_NV16
    (v(b"YU12"), Fourcc::YUV420, false),   // V4L2_PIX_FMT_YUV420
    (v(b"YV12"), Fourcc::YVU420, false),   // V4L2_PIX_FMT_YVU420
    (v(b"P010"), Fourcc::P010, false),     // V4L2_PIX_FMT_P010
    (v(b"NM12"), Fourcc::NV12, true),      // V4L2_PIX_FMT_NV12M
    (v(b"NM21"), Fourcc::NV21, true),      // V4L2_PIX_FMT_NV21M
    (v(b"NM16"), Fourcc::NV16, true),      // V4L2_PIX_FMT_NV16M
    (v(b"YM12"), Fourcc::YUV420, true),    // V4L2_PIX_FMT_YUV420M
    (v(b"YM21"), Fourcc::YVU420, true),    // V4L2_PIX_FMT_YVU420M
];

/// The DRM format of V4L2 pixel format `code`, and whether V4L2 keeps
/// each plane in its own buffer (the `…M` formats).
pub fn from_v4l2(code: u32) -> Option<(Fourcc, bool)> {
    TABLE
        .iter()
        .find(|(c, ..)| *c == code)
        .map(|&(_, f, m)| (f, m))
}

/// The V4L2 pixel format for DRM `format`, with a buffer per plane if
/// `per_plane` (only multi-planar formats have such a variant).
pub fn to_v4l2(format: Fourcc, per_plane: bool) -> Option<u32> {
    TABLE
        .iter()
        .find(|&&(_, f, m)| f == format && m == per_plane)
        .map(|&(c, ..)| c)
}

/// The LINEAR layout of a V4L2 format: `code` and the size from
/// `VIDIOC_G_FMT`, and `bytesperline` of each memory plane (one for a
/// single-buffer format, one per plane for the `…M` formats).
pub fn layout_from_v4l2(
    code: u32,
    width: u32,
    height: u32,
    bytesperline: &[u32],
) -> Result<FrameLayout, FrameError> {
    let (format, per_plane) = from_v4l2(code).ok_or(FrameError::UnknownV4l2Format(Fourcc(code)))?;
    if width == 0 || height == 0 {
        return Err(FrameError::EmptySize { width, height });
    }
    // Every format of the table has a layout.
    let info = format.info().ok_or(FrameError::UnknownFormat(format))?;
    let want = if per_plane { info.plane_count() } else { 1 };
    if bytesperline.len() != want {
        return Err(FrameError::V4l2PlaneCount {
            code: Fourcc(code),
            want,
            got: bytesperline.len(),
        });
    }
    let too_large = FrameError::TooLarge { width, height };
    let mut planes = Vec::with_capacity(info.plane_count());
    let mut offset = 0u64;
    for (i, p) in info.planes.iter().enumerate() {
        if per_plane {
            planes.push(PlaneLayout {
                buffer: i,
                offset: 0,
                stride: u64::from(bytesperline[i]),
            });
            continue;
        }
        let luma = &info.planes[0];
        let stride = u64::from(bytesperline[0]) * u64::from(p.bytes_per_pixel)
            / (u64::from(luma.bytes_per_pixel) * u64::from(p.hsub));
        planes.push(PlaneLayout {
            buffer: 0,
            offset,
            stride,
        });
        offset = stride
            .checked_mul(u64::from(p.height(height)))
            .and_then(|l| l.checked_add(offset))
            .ok_or(too_large.clone())?;
    }
    Ok(FrameLayout {
        format,
        modifier: Modifier::LINEAR,
        width,
        height,
        planes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_translates_both_ways() {
        for &(code, f, m) in TABLE {
            assert_eq!(from_v4l2(code), Some((f, m)));
            assert_eq!(to_v4l2(f, m), Some(code));
            assert!(f.info().is_some());
        }
        // RGB names differ between the two APIs.
        assert_eq!(to_v4l2(Fourcc::RGB565, false), Some(v(b"RGBP")));
        assert_eq!(from_v4l2(v(b"XR24")), Some((Fourcc::XRGB8888, false)));
        assert_eq!(from_v4l2(v(b"MJPG")), None);
        assert_eq!(to_v4l2(Fourcc::XRGB8888, true), None);
    }

    #[test]
    fn single_buffer_formats_follow_v4l2_fill_pixfmt() {
        let l = layout_from_v4l2(v(b"NV12"), 1280, 720, &[1280]).unwrap();
        let p: Vec<_> = l
            .planes
            .iter()
            .map(|p| (p.buffer, p.offset, p.stride))
            .collect();
        assert_eq!(p, vec![(0, 0, 1280), (0, 921_600, 1280)]);
        l.check(&[1_382_400]).unwrap();
        assert!(l.check(&[1_382_399]).is_err());
        let l = layout_from_v4l2(v(b"YU12"), 640, 480, &[640]).unwrap();
        let p: Vec<_> = l.planes.iter().map(|p| (p.offset, p.stride)).collect();
        assert_eq!(p, vec![(0, 640), (307_200, 320), (384_000, 320)]);
        l.check(&[460_800]).unwrap();
        let l = layout_from_v4l2(v(b"P010"), 64, 2, &[128]).unwrap();
        assert_eq!(l.planes[1].offset, 256);
        assert_eq!(l.planes[1].stride, 128);
        let l = layout_from_v4l2(v(b"YUYV"), 640, 480, &[1280]).unwrap();
        assert_eq!(l.planes.len(), 1);
    }

    #[test]
    fn per_plane_formats_take_a_stride_per_plane() {
        let l = layout_from_v4l2(v(b"NM12"), 1280, 720, &[1280, 1344]).unwrap();
        let p: Vec<_> = l
            .planes
            .iter()
            .map(|p| (p.buffer, p.offset, p.stride))
            .collect();
        assert_eq!(p, vec![(0, 0, 1280), (1, 0, 1344)]);
        l.check(&[921_600, 483_840]).unwrap();
    }

    #[test]
    fn bad_v4l2_formats_are_refused_by_name() {
        let e = layout_from_v4l2(v(b"MJPG"), 64, 64, &[64]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "V4L2 format MJPG has no DRM format known to this library"
        );
        let e = layout_from_v4l2(v(b"NM12"), 64, 64, &[64]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "V4L2 format NM12 has 2 memory plane(s), 1 bytesperline values were given"
        );
        let e = layout_from_v4l2(v(b"NV12"), 64, 64, &[64, 64]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "V4L2 format NV12 has 1 memory plane(s), 2 bytesperline values were given"
        );
        let e = layout_from_v4l2(v(b"NV12"), 0, 64, &[64]).unwrap_err();
        assert_eq!(
            e,
            FrameError::EmptySize {
                width: 0,
                height: 64
            }
        );
        // A stride V4L2 gave too small for the width is caught by check.
        let l = layout_from_v4l2(v(b"NV12"), 64, 64, &[32]).unwrap();
        assert!(matches!(
            l.check(&[1 << 20]),
            Err(FrameError::StrideTooSmall { plane: 0, .. })
        ));
        let l = layout_from_v4l2(v(b"YU12"), u32::MAX, u32::MAX, &[u32::MAX]);
        assert!(matches!(l, Err(FrameError::TooLarge { .. })), "{l:?}");
    }
}
