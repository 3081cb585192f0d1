//! A small, versioned byte encoding of a [`FrameLayout`], for carrying a
//! frame to another process next to its buffers' fds.
//!
//! # DOC: frame encoding
//!
//! The encoding is little-endian, fixed-size per plane, and versioned:
//!
//! ```text
//! offset size field
//!      0    4 magic "DBFR"
//!      4    1 version (1)
//!      5    1 plane count (1..=4)
//!      6    1 buffer count (1..=4): the fds that travel with it, each once
//!      7    1 reserved, 0
//!      8    4 fourcc
//!     12    4 width
//!     16    4 height
//!     20    8 modifier
//!     28   24 per plane: buffer index (1 byte), 7 reserved zero bytes,
//!             offset (8), stride (8)
//! ```
//!
//! [`decode`] treats its input as hostile: it never panics, refuses a
//! wrong length, magic or version, non-zero reserved bytes, a plane or
//! buffer count out of range, a plane naming a buffer past the count, a
//! buffer no plane uses, and an empty size, each with an
//! [`ErrorKind::Protocol`] error naming the
//! field. A decoded layout is only geometry: it becomes a frame through
//! [`Frame::from_layout`](super::Frame::from_layout), which checks every
//! plane against the real sizes of the buffers received.
//!
//! [`encode_frame`] gives the bytes and the fds to send with them (each
//! buffer's fd once, in buffer order); [`decode_frame`] takes the bytes
//! and the fds received, and refuses a count of fds other than the
//! message's buffer count, an fd that is neither a dma-buf nor a sealed
//! memfd ([`Buffer::from_fd`]), and a frame whose planes do not fit the
//! buffers received — so no frame built from a peer's message has a plane
//! outside its memory. The received fds are closed on every refusal.

use std::os::fd::{BorrowedFd, OwnedFd};

use super::format::{Fourcc, Modifier};
use super::layout::{FrameLayout, PlaneLayout, MAX_PLANES};
use super::Frame;
use crate::buffer::Buffer;
use crate::error::{Errno, Error, ErrorKind, Result};

/// The first four bytes of an encoded frame.
pub const MAGIC: [u8; 4] = *b"DBFR";
/// The encoding's version.
pub const VERSION: u8 = 1;
const HEADER: usize = 28;
const PLANE: usize = 24;
/// The longest encoding (four planes).
pub const MAX_LEN: usize = HEADER + MAX_PLANES * PLANE;

fn protocol(cause: String) -> Error {
    Error::new(ErrorKind::Protocol, "decode frame", "frame message", cause).with_errno(Errno::PROTO)
}

/// The length of the encoding of a frame of `planes` planes.
pub fn encoded_len(planes: usize) -> usize {
    HEADER + planes * PLANE
}

/// Encodes `layout`; refused if it has no planes or more than four, or a
/// plane names a buffer index of 4 or more.
pub fn encode(layout: &FrameLayout) -> Result<Vec<u8>> {
    let n = layout.planes.len();
    let buffers = layout.buffer_count();
    if n == 0 || n > MAX_PLANES || buffers > MAX_PLANES {
        return Err(Error::invalid(
            "encode frame",
            format!("frame {layout}"),
            format!("{n} planes in {buffers} buffers (1 to 4 of each can be encoded)"),
        ));
    }
    let mut out = Vec::with_capacity(encoded_len(n));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION, n as u8, buffers as u8, 0]);
    out.extend_from_slice(&layout.format.0.to_le_bytes());
    out.extend_from_slice(&layout.width.to_le_bytes());
    out.extend_from_slice(&layout.height.to_le_bytes());
    out.extend_from_slice(&layout.modifier.0.to_le_bytes());
    for p in &layout.planes {
        out.push(p.buffer as u8);
        out.extend_from_slice(&[0; 7]);
        out.extend_from_slice(&p.offset.to_le_bytes());
        out.extend_from_slice(&p.stride.to_le_bytes());
    }
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes an encoded layout, checking everything the encoding alone
/// can tell (see the module documentation). The number of buffers it
/// needs is [`FrameLayout::buffer_count`].
pub fn decode(bytes: &[u8]) -> Result<FrameLayout> {
    if bytes.len() < HEADER {
        return Err(protocol(format!(
            "{} bytes is shorter than the {HEADER}-byte header",
            bytes.len()
        )));
    }
    if bytes[0..4] != MAGIC {
        return Err(protocol(format!(
            "bad magic {:02x?} (want \"DBFR\")",
            &bytes[0..4]
        )));
    }
    if bytes[4] != VERSION {
        return Err(protocol(format!(
            "version {} is not supported (this library speaks {VERSION})",
            bytes[4]
        )));
    }
    let (n, buffers) = (bytes[5] as usize, bytes[6] as usize);
    if n == 0 || n > MAX_PLANES {
        return Err(protocol(format!("plane count {n} (want 1 to 4)")));
    }
    if buffers == 0 || buffers > n {
        return Err(protocol(format!(
            "buffer count {buffers} (want 1 to the plane count {n})"
        )));
    }
    if bytes[7] != 0 {
        return Err(protocol("reserved header byte is not zero".into()));
    }
    if bytes.len() != encoded_len(n) {
        return Err(protocol(format!(
            "{} bytes for {n} planes (want {})",
            bytes.len(),
            encoded_len(n)
        )));
    }
    let (width, height) = (u32_at(bytes, 12), u32_at(bytes, 16));
    if width == 0 || height == 0 {
        return Err(protocol(format!("size {width}x{height} is empty")));
    }
    let mut planes = Vec::with_capacity(n);
    for i in 0..n {
        let at = HEADER + i * PLANE;
        let buffer = bytes[at] as usize;
        if buffer >= buffers {
            return Err(protocol(format!(
                "plane {i} names buffer {buffer}, the message carries {buffers}"
            )));
        }
        if bytes[at + 1..at + 8].iter().any(|&b| b != 0) {
            return Err(protocol(format!("plane {i}'s reserved bytes are not zero")));
        }
        planes.push(PlaneLayout {
            buffer,
            offset: u64_at(bytes, at + 8),
            stride: u64_at(bytes, at + 16),
        });
    }
    if let Some(unused) = (0..buffers).find(|b| !planes.iter().any(|p| p.buffer == *b)) {
        return Err(protocol(format!("buffer {unused} holds no plane")));
    }
    Ok(FrameLayout {
        format: Fourcc(u32_at(bytes, 8)),
        modifier: Modifier(u64_at(bytes, 20)),
        width,
        height,
        planes,
    })
}

/// Encodes `frame`'s layout, and lists the fds to send with it: each
/// buffer's once, in the order the planes' buffer indices refer to.
pub fn encode_frame(frame: &Frame) -> Result<(Vec<u8>, Vec<BorrowedFd<'_>>)> {
    let bytes = encode(frame.layout())?;
    Ok((bytes, frame.buffers().iter().map(Buffer::fd).collect()))
}

/// Builds a frame from a received message and the fds that came with it
/// (see the module documentation for what is refused).
pub fn decode_frame(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Frame> {
    let layout = decode(bytes)?;
    if fds.len() != layout.buffer_count() {
        return Err(protocol(format!(
            "{} fds came with a frame of {} buffers",
            fds.len(),
            layout.buffer_count()
        )));
    }
    let buffers = fds
        .into_iter()
        .enumerate()
        .map(|(i, fd)| Buffer::from_fd(fd, &format!("frame buffer {i}")))
        .collect::<Result<Vec<_>>>()?;
    Frame::from_layout(layout, buffers)
}
