//! Format negotiation (`VIDIOC_G_FMT`/`S_FMT`, single- and multi-planar)
//! and its translation to the frame type.

use std::fmt;
use std::os::fd::OwnedFd;
use std::str::FromStr;

use crate::error::{Errno, Error, Result};
use crate::frame::v4l2::layout_from_v4l2;
use crate::frame::FrameLayout;
use crate::sys::v4l2 as sys;

/// A V4L2 pixel format code (fourcc), such as `YUYV` or `NM12`. V4L2's
/// codes are not DRM's (see [`crate::frame::v4l2`]); [`Format::layout`]
/// translates.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub u32);

impl FourCc {
    /// The code of four ASCII characters.
    pub const fn new(code: &[u8; 4]) -> FourCc {
        FourCc(sys::fourcc(code))
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_le_bytes();
        if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
            write!(f, "{}", String::from_utf8_lossy(&b).trim_end())
        } else {
            write!(f, "{:#010x}", self.0)
        }
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCc({self})")
    }
}

impl FromStr for FourCc {
    type Err = Error;
    /// One to four printable ASCII characters (`YUYV`, `RGB3`, `GREY`);
    /// shorter codes are padded with spaces, as V4L2 does.
    fn from_str(s: &str) -> Result<FourCc> {
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(Error::invalid(
                "pixel format",
                s,
                "a fourcc is 1 to 4 printable ASCII characters, such as YUYV or RGB3",
            ));
        }
        let mut code = [b' '; 4];
        code[..s.len()].copy_from_slice(s.as_bytes());
        Ok(FourCc::new(&code))
    }
}

/// One memory plane of a format: what one dma-buf of a frame must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneFormat {
    /// Bytes per line, including padding.
    pub bytesperline: u32,
    /// Bytes of the plane: the least its buffer must hold.
    pub sizeimage: u32,
}

/// The format the driver captures or outputs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixel format.
    pub pixelformat: FourCc,
    /// `enum v4l2_field` (1: progressive).
    pub field: u32,
    /// Bytes per line of the first memory plane, including padding.
    pub bytesperline: u32,
    /// Bytes of one frame, all memory planes together.
    pub sizeimage: u32,
    /// The memory planes: one buffer each (one for single-planar nodes
    /// and for formats such as `NV12` that keep every plane in one
    /// buffer; one per plane for formats such as `NM12`).
    pub planes: Vec<PlaneFormat>,
    /// Whether the node uses the multi-planar API (`…_MPLANE` types).
    pub multiplanar: bool,
}

impl Format {
    fn from_fmt(f: &sys::V4l2Format) -> Format {
        if sys::is_multiplanar(f.type_) {
            let p = f.pix_mp();
            let n = usize::from(p.num_planes).min(sys::VIDEO_MAX_PLANES);
            let planes: Vec<PlaneFormat> = p.plane_fmt[..n]
                .iter()
                .map(|pf| PlaneFormat {
                    bytesperline: pf.bytesperline,
                    sizeimage: pf.sizeimage,
                })
                .collect();
            Format {
                width: p.width,
                height: p.height,
                pixelformat: FourCc(p.pixelformat),
                field: p.field,
                bytesperline: planes.first().map_or(0, |p| p.bytesperline),
                sizeimage: planes
                    .iter()
                    .fold(0u32, |a, p| a.saturating_add(p.sizeimage)),
                planes,
                multiplanar: true,
            }
        } else {
            let p = f.pix();
            Format {
                width: p.width,
                height: p.height,
                pixelformat: FourCc(p.pixelformat),
                field: p.field,
                bytesperline: p.bytesperline,
                sizeimage: p.sizeimage,
                planes: vec![PlaneFormat {
                    bytesperline: p.bytesperline,
                    sizeimage: p.sizeimage,
                }],
                multiplanar: false,
            }
        }
    }

    /// The frame layout of this format (LINEAR, planes where V4L2 puts
    /// them, see [`layout_from_v4l2`]), or an error naming why there is
    /// none (a V4L2 format with no DRM counterpart, such as `MJPG`).
    pub fn layout(&self) -> Result<FrameLayout> {
        let bpl: Vec<u32> = self.planes.iter().map(|p| p.bytesperline).collect();
        let layout = layout_from_v4l2(self.pixelformat.0, self.width, self.height, &bpl)
            .map_err(|e| Error::invalid("v4l2 frame layout", self.to_string(), e.to_string()))?;
        let sizes: Vec<u64> = self.planes.iter().map(|p| u64::from(p.sizeimage)).collect();
        layout.check(&sizes).map_err(|e| {
            Error::invalid(
                "v4l2 frame layout",
                self.to_string(),
                format!("the driver's sizes do not hold the frame: {e}"),
            )
        })?;
        Ok(layout)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} ({} bytes per line, {} bytes per frame",
            self.width, self.height, self.pixelformat, self.bytesperline, self.sizeimage
        )?;
        if self.multiplanar {
            write!(f, "; multi-planar, {} buffer(s):", self.planes.len())?;
            for p in &self.planes {
                write!(f, " {}", p.sizeimage)?;
            }
        }
        f.write_str(")")
    }
}

/// What to ask the driver for; unset fields keep the driver's current
/// value. The default asks for nothing (the current format).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatRequest {
    /// Width in pixels.
    pub width: Option<u32>,
    /// Height in pixels.
    pub height: Option<u32>,
    /// Pixel format.
    pub pixelformat: Option<FourCc>,
}

impl FormatRequest {
    /// Whether anything is asked for.
    pub fn is_empty(&self) -> bool {
        self.width.is_none() && self.height.is_none() && self.pixelformat.is_none()
    }
}

/// `VIDIOC_G_FMT` of `type_`, then `VIDIOC_S_FMT` with the requested
/// fields (the derived ones left for the driver to compute). A requested
/// pixel format the driver replaced by another is refused: the driver
/// does not do that format.
pub(super) fn set_format(
    dev: &OwnedFd,
    type_: u32,
    obj: &str,
    req: &FormatRequest,
) -> Result<Format> {
    let mut fmt = sys::g_fmt(dev, type_).map_err(|e| Error::os("v4l2 get format", obj, e))?;
    if !req.is_empty() {
        if sys::is_multiplanar(type_) {
            let mut p = fmt.pix_mp();
            if let Some(w) = req.width {
                p.width = w;
            }
            if let Some(h) = req.height {
                p.height = h;
            }
            if let Some(c) = req.pixelformat {
                p.pixelformat = c.0;
            }
            for pf in &mut p.plane_fmt {
                *pf = sys::V4l2PlanePixFormat::default();
            }
            p.field = sys::V4L2_FIELD_ANY;
            fmt.set_pix_mp(&p);
        } else {
            let mut p = fmt.pix();
            if let Some(w) = req.width {
                p.width = w;
            }
            if let Some(h) = req.height {
                p.height = h;
            }
            if let Some(c) = req.pixelformat {
                p.pixelformat = c.0;
            }
            p.bytesperline = 0;
            p.sizeimage = 0;
            p.field = sys::V4L2_FIELD_ANY;
            fmt.set_pix(&p);
        }
        sys::s_fmt(dev, &mut fmt).map_err(|e| match e {
            Errno::BUSY => Error::kernel(
                "v4l2 set format",
                obj,
                e,
                "the format cannot change now (buffers are set up, perhaps by another program)",
            ),
            e => Error::os("v4l2 set format", obj, e),
        })?;
    }
    let format = Format::from_fmt(&fmt);
    if let Some(want) = req.pixelformat {
        if want != format.pixelformat {
            return Err(Error::kernel(
                "v4l2 set format",
                obj,
                Errno::INVAL,
                format!(
                    "the driver does not do {want} on this node; it chose {} instead",
                    format.pixelformat
                ),
            ));
        }
    }
    if format.planes.is_empty() || format.planes.iter().any(|p| p.sizeimage == 0) {
        return Err(Error::kernel(
            "v4l2 get format",
            obj,
            Errno::INVAL,
            format!("the driver reports an empty memory plane for {format}"),
        ));
    }
    Ok(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourcc_parses_and_prints() {
        let f: FourCc = "YUYV".parse().unwrap();
        assert_eq!(f.0, sys::V4L2_PIX_FMT_YUYV);
        assert_eq!(f.to_string(), "YUYV");
        assert_eq!("RGB3".parse::<FourCc>().unwrap().0, sys::V4L2_PIX_FMT_RGB24);
        // Short codes are space-padded, as in videodev2.h (`'Y','1','6',' '`).
        let y16: FourCc = "Y16".parse().unwrap();
        assert_eq!(y16, FourCc::new(b"Y16 "));
        assert_eq!(y16.to_string(), "Y16");
        for bad in ["", "TOOLONG", "YU V", "é"] {
            let e = bad.parse::<FourCc>().unwrap_err();
            assert_eq!(e.errno(), Some(Errno::INVAL), "{bad}");
            assert!(e.to_string().contains("fourcc"), "{e}");
        }
        assert_eq!(FourCc(0x0102_0304).to_string(), "0x01020304");
    }

    fn mp(code: &[u8; 4], planes: &[(u32, u32)]) -> sys::V4l2Format {
        let mut p = sys::V4l2PixFormatMplane {
            width: 1280,
            height: 720,
            pixelformat: sys::fourcc(code),
            field: 1,
            num_planes: planes.len() as u8,
            ..Default::default()
        };
        for (i, &(bpl, size)) in planes.iter().enumerate() {
            p.plane_fmt[i] = sys::V4l2PlanePixFormat {
                bytesperline: bpl,
                sizeimage: size,
            };
        }
        let mut f = sys::V4l2Format {
            type_: sys::V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
            ..Default::default()
        };
        f.set_pix_mp(&p);
        f
    }

    #[test]
    fn multiplanar_formats_map_to_frame_layouts() {
        let f = Format::from_fmt(&mp(b"NM12", &[(1280, 921_600), (1280, 460_800)]));
        assert!(f.multiplanar);
        assert_eq!(f.sizeimage, 1_382_400);
        assert_eq!(f.planes.len(), 2);
        let l = f.layout().unwrap();
        assert_eq!(l.to_string(), "NV12 1280x720 (LINEAR), 2 planes");
        assert_eq!(l.buffer_count(), 2);
        let f = Format::from_fmt(&mp(b"NV12", &[(1280, 1_382_400)]));
        let l = f.layout().unwrap();
        assert_eq!(l.buffer_count(), 1);
        assert_eq!(l.planes[1].offset, 921_600);
        assert!(
            f.to_string().contains("multi-planar, 1 buffer(s): 1382400"),
            "{f}"
        );
    }

    #[test]
    fn a_layout_the_driver_sizes_cannot_hold_is_refused() {
        // A chroma plane of 1000 bytes cannot hold 1280x360 of CbCr.
        let f = Format::from_fmt(&mp(b"NM12", &[(1280, 921_600), (1280, 1000)]));
        let e = f.layout().unwrap_err();
        assert_eq!(e.errno(), Some(Errno::INVAL));
        assert!(e.to_string().contains("do not hold the frame"), "{e}");
        let f = Format::from_fmt(&mp(b"MJPG", &[(0, 100_000)]));
        let e = f.layout().unwrap_err();
        assert!(e.to_string().contains("MJPG"), "{e}");
    }
}
