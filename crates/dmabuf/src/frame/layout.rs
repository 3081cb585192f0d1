//! The geometry of a frame, checked without touching memory.
//!
//! # DOC: frame validation
//!
//! A [`FrameLayout`] is a frame without its memory: format, modifier,
//! size, and per plane the *index* of the buffer it lives in (so planes
//! that share a buffer name it once), its offset and its stride.
//! [`FrameLayout::check`] decides, from the buffers' sizes alone, whether
//! the frame is usable, and names the first problem as a [`FrameError`]:
//!
//! * width and height are not zero; 1 to 4 planes; every stride is not
//!   zero; every plane names an existing buffer;
//! * the format is one the library knows ([`Fourcc::info`]), for a LINEAR
//!   frame;
//! * for [`Modifier::LINEAR`]: the plane count is the format's; every
//!   stride covers a row of its plane (`stride ≥ plane width × bytes per
//!   pixel`); offsets and strides are multiples of the plane's element
//!   alignment ([`PlaneInfo::alignment`](super::PlaneInfo::alignment));
//!   every plane fits its buffer: `offset + stride × plane rows ≤ buffer
//!   size`, computed without overflow (stricter than the kernel's
//!   framebuffer check, which lets the last row end after its pixels: a
//!   window over a plane covers whole rows); planes that share a buffer
//!   do not overlap;
//! * for any other modifier (including [`Modifier::INVALID`]) the layout
//!   is the driver's, so only what can be checked is: every offset lies
//!   inside its buffer.
//!
//! [`FrameLayout::linear`] computes the layout of a LINEAR frame, with
//! strides rounded up to a power-of-two alignment, in one buffer (planes
//! one after the other) or in one buffer per plane.

use std::fmt;

use super::format::{Fourcc, Modifier};

/// Most planes a frame can have (DRM's and V4L2's limit).
pub const MAX_PLANES: usize = 4;

/// The default stride alignment of allocated frames, in bytes.
pub const DEFAULT_STRIDE_ALIGN: u32 = 64;

/// Where one plane lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlaneLayout {
    /// Index of the plane's buffer among the frame's buffers.
    pub buffer: usize,
    /// Byte offset of the plane's first row in the buffer.
    pub offset: u64,
    /// Bytes from one row to the next.
    pub stride: u64,
}

/// A frame's geometry: everything but the memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameLayout {
    /// Pixel format.
    pub format: Fourcc,
    /// Format modifier.
    pub modifier: Modifier,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The planes, in the format's order.
    pub planes: Vec<PlaneLayout>,
}

/// Why a frame's layout is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Width or height is zero.
    #[error("size {width}x{height} is empty")]
    EmptySize {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The format has no layout known to the library.
    #[error("format {0} is unknown to this library: its planes cannot be checked")]
    UnknownFormat(Fourcc),
    /// A V4L2 pixel format without a DRM equivalent in the library's table.
    #[error("V4L2 format {0} has no DRM format known to this library")]
    UnknownV4l2Format(Fourcc),
    /// A V4L2 format was given the wrong number of `bytesperline` values.
    #[error("V4L2 format {code} has {want} memory plane(s), {got} bytesperline values were given")]
    V4l2PlaneCount {
        /// The V4L2 code.
        code: Fourcc,
        /// Its memory planes.
        want: usize,
        /// The values given.
        got: usize,
    },
    /// No planes, or more than [`MAX_PLANES`].
    #[error("{0} planes (a frame has 1 to 4)")]
    PlaneCountOutOfRange(usize),
    /// The plane count is not the format's.
    #[error("{format} has {want} planes, the frame gives {got}")]
    PlaneCountMismatch {
        /// The format.
        format: &'static str,
        /// The format's plane count.
        want: usize,
        /// The frame's.
        got: usize,
    },
    /// A plane names a buffer the frame does not have.
    #[error("plane {plane} names buffer {buffer}, the frame has {buffers}")]
    NoSuchBuffer {
        /// Plane index.
        plane: usize,
        /// The buffer index it names.
        buffer: usize,
        /// Number of buffers.
        buffers: usize,
    },
    /// A plane's buffer is empty or unusable.
    #[error("plane {plane}'s buffer is empty")]
    EmptyBuffer {
        /// Plane index.
        plane: usize,
    },
    /// A stride of zero.
    #[error("plane {plane} has stride 0")]
    ZeroStride {
        /// Plane index.
        plane: usize,
    },
    /// The stride is shorter than a row of the plane.
    #[error("plane {plane}: stride {stride} is shorter than a row ({width} pixels × {bytes_per_pixel} bytes = {min} bytes)")]
    StrideTooSmall {
        /// Plane index.
        plane: usize,
        /// The stride.
        stride: u64,
        /// The plane's width in pixels.
        width: u32,
        /// Bytes per pixel of the plane.
        bytes_per_pixel: u32,
        /// The minimum stride.
        min: u64,
    },
    /// An offset or stride that is not a multiple of the plane's element
    /// alignment.
    #[error("plane {plane}: {what} {value} is not a multiple of {align} (the plane's element alignment)")]
    Misaligned {
        /// Plane index.
        plane: usize,
        /// `"offset"` or `"stride"`.
        what: &'static str,
        /// The value.
        value: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// A plane does not fit its buffer.
    #[error("plane {plane} does not fit its buffer: offset {offset} + stride {stride} × {rows} rows = {end} bytes > buffer size {size}")]
    PlaneOutOfBounds {
        /// Plane index.
        plane: usize,
        /// Its offset.
        offset: u64,
        /// Its stride.
        stride: u64,
        /// Its rows.
        rows: u32,
        /// Where it ends (saturated at `u64::MAX` on overflow).
        end: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A plane of a non-LINEAR frame starts past its buffer.
    #[error("plane {plane}: offset {offset} is past the end of its buffer ({size} bytes)")]
    OffsetOutOfBounds {
        /// Plane index.
        plane: usize,
        /// Its offset.
        offset: u64,
        /// The buffer's size.
        size: u64,
    },
    /// Two planes of one buffer share bytes.
    #[error("plane {plane} (bytes {start}..{end}) overlaps plane {other} in the same buffer")]
    Overlap {
        /// Plane index.
        plane: usize,
        /// The earlier plane it overlaps.
        other: usize,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// A stride alignment that is not a power of two (allocation).
    #[error("stride alignment {0} is not a power of two between 1 and 4096")]
    BadStrideAlign(u32),
    /// A LINEAR layout was asked for a non-LINEAR modifier (allocation).
    #[error("only LINEAR frames can be laid out by the library, not {0}")]
    NotLinear(Modifier),
    /// A size whose layout does not fit in 64 bits (allocation).
    #[error("a {width}x{height} frame is too large")]
    TooLarge {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// How [`FrameLayout::linear`] places planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// All planes in one buffer, one after the other.
    #[default]
    Contiguous,
    /// One buffer per plane, each plane at offset 0.
    PerPlane,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

impl FrameLayout {
    /// The number of buffers the planes name (highest index + 1).
    pub fn buffer_count(&self) -> usize {
        self.planes.iter().map(|p| p.buffer + 1).max().unwrap_or(0)
    }

    /// The LINEAR layout of a `width`×`height` frame of `format`: strides
    /// are the minimum rounded up to `stride_align` (a power of two, 1 to
    /// 4096); returns the layout and the size each buffer needs.
    pub fn linear(
        format: Fourcc,
        width: u32,
        height: u32,
        stride_align: u32,
        placement: Placement,
    ) -> Result<(FrameLayout, Vec<u64>), FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::EmptySize { width, height });
        }
        if !stride_align.is_power_of_two() || stride_align > 4096 {
            return Err(FrameError::BadStrideAlign(stride_align));
        }
        let info = format.info().ok_or(FrameError::UnknownFormat(format))?;
        let too_large = FrameError::TooLarge { width, height };
        let mut planes = Vec::new();
        let mut sizes = Vec::new();
        let mut end = 0u64;
        for (i, p) in info.planes.iter().enumerate() {
            let align = u64::from(stride_align).max(p.alignment());
            let stride = align_up(p.min_stride(width), align).ok_or(too_large.clone())?;
            let len = stride
                .checked_mul(u64::from(p.height(height)))
                .ok_or(too_large.clone())?;
            match placement {
                Placement::Contiguous => {
                    let offset = align_up(end, align).ok_or(too_large.clone())?;
                    end = offset.checked_add(len).ok_or(too_large.clone())?;
                    planes.push(PlaneLayout {
                        buffer: 0,
                        offset,
                        stride,
                    });
                }
                Placement::PerPlane => {
                    planes.push(PlaneLayout {
                        buffer: i,
                        offset: 0,
                        stride,
                    });
                    sizes.push(len);
                }
            }
        }
        if placement == Placement::Contiguous {
            sizes.push(end);
        }
        Ok((
            FrameLayout {
                format,
                modifier: Modifier::LINEAR,
                width,
                height,
                planes,
            },
            sizes,
        ))
    }

    /// Checks the layout against the sizes of its buffers (`buffer_sizes[i]`
    /// is the size of buffer `i`); see the module documentation for the
    /// rules.
    pub fn check(&self, buffer_sizes: &[u64]) -> Result<(), FrameError> {
        let (width, height) = (self.width, self.height);
        if width == 0 || height == 0 {
            return Err(FrameError::EmptySize { width, height });
        }
        let n = self.planes.len();
        if n == 0 || n > MAX_PLANES {
            return Err(FrameError::PlaneCountOutOfRange(n));
        }
        for (i, p) in self.planes.iter().enumerate() {
            let Some(&size) = buffer_sizes.get(p.buffer) else {
                return Err(FrameError::NoSuchBuffer {
                    plane: i,
                    buffer: p.buffer,
                    buffers: buffer_sizes.len(),
                });
            };
            if size == 0 {
                return Err(FrameError::EmptyBuffer { plane: i });
            }
            if p.stride == 0 {
                return Err(FrameError::ZeroStride { plane: i });
            }
            if !self.modifier.is_linear() && p.offset >= size {
                return Err(FrameError::OffsetOutOfBounds {
                    plane: i,
                    offset: p.offset,
                    size,
                });
            }
        }
        if !self.modifier.is_linear() {
            return Ok(());
        }
        let info = self
            .format
            .info()
            .ok_or(FrameError::UnknownFormat(self.format))?;
        if info.plane_count() != n {
            return Err(FrameError::PlaneCountMismatch {
                format: info.name,
                want: info.plane_count(),
                got: n,
            });
        }
        let mut spans: Vec<(usize, usize, u64, u64)> = Vec::with_capacity(n);
        for (i, (p, pi)) in self.planes.iter().zip(info.planes).enumerate() {
            let min = pi.min_stride(width);
            if p.stride < min {
                return Err(FrameError::StrideTooSmall {
                    plane: i,
                    stride: p.stride,
                    width: pi.width(width),
                    bytes_per_pixel: pi.bytes_per_pixel,
                    min,
                });
            }
            let align = pi.alignment();
            for (what, value) in [("offset", p.offset), ("stride", p.stride)] {
                if value % align != 0 {
                    return Err(FrameError::Misaligned {
                        plane: i,
                        what,
                        value,
                        align,
                    });
                }
            }
            let rows = pi.height(height);
            let size = buffer_sizes[p.buffer];
            let end = p
                .stride
                .checked_mul(u64::from(rows))
                .and_then(|len| len.checked_add(p.offset));
            match end {
                Some(end) if end <= size => spans.push((i, p.buffer, p.offset, end)),
                _ => {
                    return Err(FrameError::PlaneOutOfBounds {
                        plane: i,
                        offset: p.offset,
                        stride: p.stride,
                        rows,
                        end: end.unwrap_or(u64::MAX),
                        size,
                    })
                }
            }
        }
        for (k, &(i, buf, start, end)) in spans.iter().enumerate() {
            if let Some(&(other, ..)) = spans[..k]
                .iter()
                .find(|&&(_, b, s, e)| b == buf && start < e && s < end)
            {
                return Err(FrameError::Overlap {
                    plane: i,
                    other,
                    start,
                    end,
                });
            }
        }
        Ok(())
    }

    /// The byte range plane `plane` covers in its buffer (`offset ..
    /// offset + stride × rows`), for a checked LINEAR layout; for other
    /// modifiers, from the offset to the end of the buffer (`size`).
    pub fn plane_span(&self, plane: usize, size: u64) -> Option<std::ops::Range<u64>> {
        let p = self.planes.get(plane)?;
        if !self.modifier.is_linear() {
            return Some(p.offset..size);
        }
        let rows = self.format.info()?.planes.get(plane)?.height(self.height);
        let end = p
            .stride
            .checked_mul(u64::from(rows))?
            .checked_add(p.offset)?;
        Some(p.offset..end.min(size))
    }
}

impl fmt::Display for FrameLayout {
    /// `NV12 1280x720 (LINEAR), 2 planes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format.name() {
            Some(n) => f.write_str(n)?,
            None => write!(f, "{}", self.format)?,
        }
        let n = self.planes.len();
        write!(
            f,
            " {}x{} ({}), {n} plane{}",
            self.width,
            self.height,
            self.modifier,
            if n == 1 { "" } else { "s" }
        )
    }
}
