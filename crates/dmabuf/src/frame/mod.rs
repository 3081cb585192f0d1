//! Frames: a format, a modifier, a size and one to four planes in buffers.
//!
//! # DOC: frames
//!
//! Media and graphics code passes *frames*, not bytes: a DRM [`Fourcc`],
//! a [`Modifier`], a width and height, and per plane a buffer, an offset
//! and a stride (Wayland's linux-dmabuf, GStreamer, libcamera and V4L2's
//! multi-planar API all describe them so). A [`Frame`] is that, with its
//! layout checked before anything uses it:
//!
//! * every way of making a frame — [`Frame::new`], [`Frame::from_layout`],
//!   [`Frame::allocate`] — checks it with [`FrameLayout::check`] (see the
//!   `layout` module for the rules) against the real sizes of its
//!   buffers, and refuses a bad one with an [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
//!   error (`EINVAL`) whose cause is the [`FrameError`] in words: no
//!   device and no peer ever sees a frame whose plane does not fit its
//!   buffer;
//! * a frame holds each buffer once, however many planes share it
//!   ([`Frame::buffers`]); planes name their buffer by index
//!   ([`PlaneLayout::buffer`]). Two handles on one file (a dma-buf or a
//!   memfd: same device and inode) count as one buffer, so planes that
//!   overlap in one memory are caught even when they arrive as two fds;
//! * [`Frame::allocate`] lays a LINEAR frame out with strides rounded up
//!   to [`FrameOptions::stride_align`] (default 64 bytes), in one buffer
//!   or one buffer per plane ([`Placement`]), from any [`Allocate`]
//!   backend;
//! * the bytes of a plane are reached like any buffer's: through a
//!   mapping and a CPU-access window ([`Frame::map_plane`] gives a
//!   [`PlaneMap`] whose windows cover exactly the plane's rows);
//! * `Display` gives `NV12 1280x720 (LINEAR), 2 planes`;
//! * frames travel to other processes whole — layout and each buffer's
//!   fd once — over a [`Channel`](crate::share::Channel)
//!   ([`send_frame`](crate::share::Channel::send_frame),
//!   [`recv_frame`](crate::share::Channel::recv_frame)) or as the slots of
//!   a streaming pool
//!   ([`Producer::new_frames`](crate::share::pool::Producer::new_frames)),
//!   and are checked on receipt as any frame is (see the `share` module's
//!   rules).
//!
//! The [`v4l2`] module maps V4L2 pixel formats and `bytesperline` values
//! to frame layouts; the [`wire`] module encodes a frame's layout as bytes (for sharing a
//! frame with another process) and checks what it decodes.

mod format;
mod layout;
pub mod v4l2;
pub mod wire;

use std::fmt;
use std::ops::Range;

pub use format::{FormatInfo, Fourcc, Modifier, PlaneInfo};
pub use layout::{
    FrameError, FrameLayout, Placement, PlaneLayout, DEFAULT_STRIDE_ALIGN, MAX_PLANES,
};

use crate::alloc::Allocate;
use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::mapping::{Mapping, ReadOnly, ReadWrite, Window, WriteOnly};
use crate::sys;

/// One plane given to [`Frame::new`]: a buffer, an offset and a stride.
#[derive(Debug, Clone)]
pub struct Plane {
    /// The buffer the plane lives in.
    pub buffer: Buffer,
    /// Byte offset of the plane's first row.
    pub offset: u64,
    /// Bytes from one row to the next.
    pub stride: u64,
}

/// How [`Frame::allocate`] lays a frame out.
#[derive(Debug, Clone)]
pub struct FrameOptions {
    /// Strides are rounded up to this many bytes (a power of two, 1 to
    /// 4096); default [`DEFAULT_STRIDE_ALIGN`].
    pub stride_align: u32,
    /// One buffer, or one per plane; default one.
    pub placement: Placement,
    /// Name of the buffers (at most 31 bytes).
    pub name: String,
}

impl Default for FrameOptions {
    fn default() -> Self {
        FrameOptions {
            stride_align: DEFAULT_STRIDE_ALIGN,
            placement: Placement::Contiguous,
            name: String::new(),
        }
    }
}

/// A checked frame: a layout and the buffers its planes live in.
#[derive(Debug, Clone)]
pub struct Frame {
    layout: FrameLayout,
    buffers: Vec<Buffer>,
}

/// Whether two buffer handles are the same memory: the same handle, or
/// two handles on the same file (dma-buf or memfd: same device and inode),
/// such as two fds a peer sent for one buffer.
fn same_memory(a: &Buffer, b: &Buffer) -> bool {
    if a.same_as(b) {
        return true;
    }
    match (rustix::fs::fstat(a.fd()), rustix::fs::fstat(b.fd())) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

fn refuse(layout: &FrameLayout, e: FrameError) -> Error {
    Error::invalid("frame", format!("frame {layout}"), e.to_string())
}

impl Frame {
    /// A frame of `format`, `modifier` and size from `planes`, checked.
    /// Planes that share a buffer keep one handle on it.
    pub fn new(
        format: Fourcc,
        modifier: Modifier,
        width: u32,
        height: u32,
        planes: impl IntoIterator<Item = Plane>,
    ) -> Result<Frame> {
        let mut buffers: Vec<Buffer> = Vec::new();
        let mut layouts = Vec::new();
        for p in planes {
            let index = match buffers.iter().position(|b| same_memory(b, &p.buffer)) {
                Some(i) => i,
                None => {
                    buffers.push(p.buffer);
                    buffers.len() - 1
                }
            };
            layouts.push(PlaneLayout {
                buffer: index,
                offset: p.offset,
                stride: p.stride,
            });
        }
        let layout = FrameLayout {
            format,
            modifier,
            width,
            height,
            planes: layouts,
        };
        Frame::from_layout(layout, buffers)
    }

    /// A frame from a layout and the buffers its planes name, checked.
    /// Every buffer must be used by a plane, and each only once in
    /// `buffers`.
    pub fn from_layout(layout: FrameLayout, buffers: Vec<Buffer>) -> Result<Frame> {
        let sizes: Vec<u64> = buffers.iter().map(Buffer::size).collect();
        layout.check(&sizes).map_err(|e| refuse(&layout, e))?;
        for (i, b) in buffers.iter().enumerate() {
            if !layout.planes.iter().any(|p| p.buffer == i) {
                return Err(Error::invalid(
                    "frame",
                    format!("frame {layout}"),
                    format!("buffer {i} ({}) holds no plane", b.describe()),
                ));
            }
            if let Some(j) = buffers[..i].iter().position(|o| same_memory(o, b)) {
                return Err(Error::invalid(
                    "frame",
                    format!("frame {layout}"),
                    format!(
                        "buffers {j} and {i} are the same memory ({}); name it once",
                        b.describe()
                    ),
                ));
            }
        }
        Ok(Frame { layout, buffers })
    }

    /// Allocates a LINEAR `width`×`height` frame of `format` from `alloc`
    /// (see [`FrameOptions`]).
    pub fn allocate(
        alloc: &dyn Allocate,
        format: Fourcc,
        width: u32,
        height: u32,
        options: &FrameOptions,
    ) -> Result<Frame> {
        let (layout, sizes) = FrameLayout::linear(
            format,
            width,
            height,
            options.stride_align,
            options.placement,
        )
        .map_err(|e| {
            Error::invalid(
                "allocate frame",
                format!("{format} {width}x{height}"),
                e.to_string(),
            )
        })?;
        let buffers = sizes
            .iter()
            .map(|&size| alloc.allocate(size, &options.name))
            .collect::<Result<Vec<_>>>()?;
        Frame::from_layout(layout, buffers)
    }

    /// The layout.
    pub fn layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// The pixel format.
    pub fn format(&self) -> Fourcc {
        self.layout.format
    }

    /// The modifier.
    pub fn modifier(&self) -> Modifier {
        self.layout.modifier
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.layout.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.layout.height
    }

    /// Number of planes.
    pub fn plane_count(&self) -> usize {
        self.layout.planes.len()
    }

    /// The distinct buffers, each once, in the order planes first name
    /// them.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// Plane `index`: its buffer, offset and stride.
    pub fn plane(&self, index: usize) -> Option<Plane> {
        let p = self.layout.planes.get(index)?;
        Some(Plane {
            buffer: self.buffers[p.buffer].clone(),
            offset: p.offset,
            stride: p.stride,
        })
    }

    /// Maps plane `index` (read-write if `writable`); its windows cover
    /// the plane's rows (`offset .. offset + stride × rows`; for a
    /// non-LINEAR frame, from the offset to the end of the buffer).
    pub fn map_plane(&self, index: usize, writable: bool) -> Result<PlaneMap> {
        let obj = || format!("frame {}", self.layout);
        let p = self.layout.planes.get(index).ok_or_else(|| {
            Error::invalid(
                "map plane",
                obj(),
                format!("no plane {index} (the frame has {})", self.plane_count()),
            )
        })?;
        let buffer = &self.buffers[p.buffer];
        let span = self
            .layout
            .plane_span(index, buffer.size())
            .ok_or_else(|| Error::invalid("map plane", obj(), "the plane has no extent"))?;
        let page = sys::mem::page_size() as u64;
        let start = span.start - span.start % page;
        let mapping = buffer.map_range(start..span.end, writable)?;
        let rows = match self.layout.format.info() {
            Some(f) if self.layout.modifier.is_linear() => f.planes[index].height(self.height()),
            _ => 0,
        };
        let range = (span.start - start) as usize..(span.end - start) as usize;
        Ok(PlaneMap {
            mapping,
            range,
            stride: p.stride,
            rows,
        })
    }
}

impl fmt::Display for Frame {
    /// `NV12 1280x720 (LINEAR), 2 planes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.layout.fmt(f)
    }
}

/// A mapping of one plane; its windows cover exactly the plane.
#[derive(Debug)]
pub struct PlaneMap {
    mapping: Mapping,
    range: Range<usize>,
    stride: u64,
    rows: u32,
}

impl PlaneMap {
    /// The underlying mapping (from the page the plane starts in).
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Where the plane lies in [`PlaneMap::mapping`].
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Length of the plane in bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the plane is empty (never for a checked frame).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Bytes from one row to the next.
    pub fn stride(&self) -> u64 {
        self.stride
    }

    /// Rows of the plane (0 for a non-LINEAR frame, whose layout only its
    /// driver knows).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Opens a read window over the plane (waits for writers).
    pub fn read(&self) -> Result<Window<'_, ReadOnly>> {
        self.mapping.window(self.range(), None)
    }

    /// Opens a write window over the plane (waits for everyone; refused
    /// with [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied) if the plane was mapped
    /// read-only).
    pub fn write(&self) -> Result<Window<'_, WriteOnly>> {
        self.mapping.window(self.range(), None)
    }

    /// Opens a read-write window over the plane.
    pub fn read_write(&self) -> Result<Window<'_, ReadWrite>> {
        self.mapping.window(self.range(), None)
    }
}
