//! The wire format: encoding and decoding of message bytes, with no fds
//! attached (see the `share` module documentation for the table).
//!
//! The decoder trusts nothing: every length is checked against the bytes
//! actually received, every count against its limit, reserved bits must
//! be zero, strings must be UTF-8 without NUL, and the number of fds the
//! body implies must equal the header's fd count. It never panics (fuzzed
//! by the tests below).

use crate::error::{Error, ErrorKind, Result};
use crate::frame::FrameLayout;

/// The four magic bytes that open every message.
pub const MAGIC: [u8; 4] = *b"DMBS";
/// The protocol version this library speaks (see the `share` module's
/// message format).
pub const VERSION: u16 = 4;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Largest message body accepted.
pub const MAX_BODY: usize = 1024;
/// Most fences one message may carry.
pub const MAX_FENCES: usize = 8;
/// Most fds one message may carry (each fence at most 2).
pub const MAX_FDS: usize = 2 * MAX_FENCES;

pub(crate) const T_BUFFER: u16 = 1;
pub(crate) const T_FENCE: u16 = 2;
pub(crate) const T_POOL_READY: u16 = 3;
pub(crate) const T_ITEM: u16 = 4;
pub(crate) const T_RELEASE: u16 = 5;
pub(crate) const T_BYE: u16 = 6;
pub(crate) const T_RING: u16 = 7;
pub(crate) const T_FRAME: u16 = 8;

/// The memory kind announced for a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireKind {
    /// A sealed memfd.
    Portable,
    /// A udmabuf dma-buf.
    Udmabuf,
    /// A DMA heap's dma-buf (heap name).
    Heap(String),
    /// Another exporter's dma-buf (exporter name).
    Imported(String),
}

impl WireKind {
    fn code(&self) -> u8 {
        match self {
            WireKind::Portable => 1,
            WireKind::Udmabuf => 2,
            WireKind::Heap(_) => 3,
            WireKind::Imported(_) => 4,
        }
    }

    fn detail(&self) -> &str {
        match self {
            WireKind::Heap(s) | WireKind::Imported(s) => s,
            _ => "",
        }
    }
}

/// One buffer of a frame message: what the receiver checks its fd
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireBuffer {
    /// Its size in bytes (the fd's size must be this).
    pub(crate) size: u64,
    /// Its kind (the fd must be one).
    pub(crate) kind: WireKind,
    /// Its name (at most 31 bytes).
    pub(crate) name: String,
}

/// One fence slot of a message: which kind, hence how many fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireFence {
    /// A kernel sync file: one fd.
    SyncFile,
    /// A user fence: its state memfd, then the read end of its wake-up pipe.
    User,
}

impl WireFence {
    pub(crate) fn fds(self) -> usize {
        match self {
            WireFence::SyncFile => 1,
            WireFence::User => 2,
        }
    }
}

/// A decoded message, fds not yet attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    Buffer {
        id: u64,
        size: u64,
        kind: WireKind,
        name: String,
    },
    Fence {
        tag: u64,
        fences: Vec<WireFence>,
    },
    PoolReady {
        buffers: u32,
        consumer: u32,
    },
    Item {
        buffer: u64,
        seq: u64,
        len: u64,
        sent_ns: u64,
        fences: Vec<WireFence>,
    },
    Release {
        buffer: u64,
        seq: u64,
        fences: Vec<WireFence>,
    },
    Bye,
    Ring {
        capacity: u32,
    },
    Frame {
        id: u64,
        layout: FrameLayout,
        /// One per buffer of the layout, in buffer order.
        buffers: Vec<WireBuffer>,
    },
}

impl Packet {
    /// How many fds travel with this packet.
    pub(crate) fn fd_count(&self) -> usize {
        match self {
            Packet::Buffer { .. } => 1,
            Packet::Fence { fences, .. }
            | Packet::Item { fences, .. }
            | Packet::Release { fences, .. } => fences.iter().map(|f| f.fds()).sum(),
            Packet::PoolReady { .. } | Packet::Bye => 0,
            Packet::Ring { .. } => 3,
            Packet::Frame { buffers, .. } => buffers.len(),
        }
    }

    fn type_code(&self) -> u16 {
        match self {
            Packet::Buffer { .. } => T_BUFFER,
            Packet::Fence { .. } => T_FENCE,
            Packet::PoolReady { .. } => T_POOL_READY,
            Packet::Item { .. } => T_ITEM,
            Packet::Release { .. } => T_RELEASE,
            Packet::Bye => T_BYE,
            Packet::Ring { .. } => T_RING,
            Packet::Frame { .. } => T_FRAME,
        }
    }
}

fn protocol(cause: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, "decode message", "", cause).with_errno(crate::Errno::PROTO)
}

fn put_fences(out: &mut Vec<u8>, fences: &[WireFence]) {
    out.push(fences.len() as u8);
    for f in fences {
        out.push(match f {
            WireFence::SyncFile => 1,
            WireFence::User => 2,
        });
    }
}

/// A buffer's description: size u64, kind u8, detail length u8, name
/// length u8, 0 u8, detail, name.
fn put_buffer(out: &mut Vec<u8>, size: u64, kind: &WireKind, name: &str) {
    out.extend_from_slice(&size.to_le_bytes());
    out.push(kind.code());
    out.push(kind.detail().len() as u8);
    out.push(name.len() as u8);
    out.push(0);
    out.extend_from_slice(kind.detail().as_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Encodes `packet`. Lengths are the caller's promise (names ≤ 255 bytes,
/// ≤ [`MAX_FENCES`] fences); the senders in this module check them.
pub(crate) fn encode(packet: &Packet) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    match packet {
        Packet::Buffer {
            id,
            size,
            kind,
            name,
        } => {
            body.extend_from_slice(&id.to_le_bytes());
            put_buffer(&mut body, *size, kind, name);
        }
        Packet::Fence { tag, fences } => {
            body.extend_from_slice(&tag.to_le_bytes());
            put_fences(&mut body, fences);
        }
        Packet::PoolReady { buffers, consumer } => {
            body.extend_from_slice(&buffers.to_le_bytes());
            body.extend_from_slice(&consumer.to_le_bytes());
        }
        Packet::Item {
            buffer,
            seq,
            len,
            sent_ns,
            fences,
        } => {
            for v in [buffer, seq, len, sent_ns] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            put_fences(&mut body, fences);
        }
        Packet::Release {
            buffer,
            seq,
            fences,
        } => {
            body.extend_from_slice(&buffer.to_le_bytes());
            body.extend_from_slice(&seq.to_le_bytes());
            put_fences(&mut body, fences);
        }
        Packet::Bye => {}
        Packet::Ring { capacity } => body.extend_from_slice(&capacity.to_le_bytes()),
        Packet::Frame {
            id,
            layout,
            buffers,
        } => {
            // The sender checked the layout encodes (a checked frame has 1
            // to 4 planes and buffers).
            let encoded = crate::frame::wire::encode(layout).unwrap_or_default();
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&[encoded.len() as u8, 0, 0, 0]);
            body.extend_from_slice(&encoded);
            for b in buffers {
                put_buffer(&mut body, b.size, &b.kind, &b.name);
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&packet.type_code().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&(packet.fd_count() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A cursor over a body that reports short reads as protocol errors.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(protocol(format!(
                "{} body ends early: {} more bytes needed, {} left",
                self.what,
                n,
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, n: usize, field: &str) -> Result<String> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| protocol(format!("{} {field} is not UTF-8", self.what)))?;
        if s.contains('\0') {
            return Err(protocol(format!(
                "{} {field} contains a NUL byte",
                self.what
            )));
        }
        Ok(s.to_string())
    }

    /// A buffer's description (see `put_buffer`), checked.
    fn buffer(&mut self) -> Result<WireBuffer> {
        let size = self.u64()?;
        let code = self.u8()?;
        let detail_len = self.u8()? as usize;
        let name_len = self.u8()? as usize;
        if self.u8()? != 0 {
            return Err(protocol(format!(
                "{} has a non-zero reserved byte",
                self.what
            )));
        }
        let detail = self.string(detail_len, "kind detail")?;
        let name = self.string(name_len, "name")?;
        if name.len() > crate::MAX_NAME_LEN {
            return Err(protocol(format!(
                "buffer name is {} bytes; at most {} are allowed",
                name.len(),
                crate::MAX_NAME_LEN
            )));
        }
        if size == 0 {
            return Err(protocol(format!("{} announces size 0", self.what)));
        }
        let kind = match (code, detail.is_empty()) {
            (1, true) => WireKind::Portable,
            (2, true) => WireKind::Udmabuf,
            (3, false) => WireKind::Heap(detail),
            (4, _) => WireKind::Imported(detail),
            (1 | 2, false) => {
                return Err(protocol(format!(
                    "buffer kind {code} takes no detail, got '{detail}'"
                )))
            }
            (3, true) => return Err(protocol("heap buffer without a heap name")),
            (k, _) => return Err(protocol(format!("unknown buffer kind {k}"))),
        };
        Ok(WireBuffer { size, kind, name })
    }

    fn fences(&mut self) -> Result<Vec<WireFence>> {
        let n = self.u8()? as usize;
        if n > MAX_FENCES {
            return Err(protocol(format!(
                "{} carries {n} fences; at most {MAX_FENCES} are allowed",
                self.what
            )));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(match self.u8()? {
                1 => WireFence::SyncFile,
                2 => WireFence::User,
                k => {
                    return Err(protocol(format!(
                        "{} has a fence of unknown kind {k}",
                        self.what
                    )))
                }
            });
        }
        Ok(v)
    }

    fn finish(self) -> Result<()> {
        if !self.bytes.is_empty() {
            return Err(protocol(format!(
                "{} body has {} trailing bytes",
                self.what,
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

/// Decodes one message of `bytes` that arrived with `fds` file
/// descriptors. Every inconsistency is an error of kind
/// [`ErrorKind::Protocol`] (errno `EPROTO`).
pub(crate) fn decode(bytes: &[u8], fds: usize) -> Result<Packet> {
    if bytes.len() < HEADER_LEN {
        return Err(protocol(format!(
            "message of {} bytes is shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[0..4] != MAGIC {
        return Err(protocol(format!(
            "bad magic {:02x?} (expected \"DMBS\")",
            &bytes[0..4]
        )));
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let version = u16_at(4);
    if version != VERSION {
        return Err(protocol(format!(
            "protocol version {version} is not supported (this side speaks {VERSION})"
        )));
    }
    let ty = u16_at(6);
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let fd_count = u16_at(12) as usize;
    let flags = u16_at(14);
    if flags != 0 {
        return Err(protocol(format!("reserved header bits {flags:#x} are set")));
    }
    if body_len > MAX_BODY {
        return Err(protocol(format!(
            "body length {body_len} exceeds the limit {MAX_BODY}"
        )));
    }
    if bytes.len() - HEADER_LEN != body_len {
        return Err(protocol(format!(
            "header announces a {body_len}-byte body but {} bytes followed",
            bytes.len() - HEADER_LEN
        )));
    }
    if fd_count != fds {
        return Err(protocol(format!(
            "header announces {fd_count} fds but {fds} arrived"
        )));
    }
    let what = match ty {
        T_BUFFER => "buffer message",
        T_FENCE => "fence message",
        T_POOL_READY => "pool-ready message",
        T_ITEM => "item message",
        T_RELEASE => "release message",
        T_BYE => "bye message",
        T_RING => "ring message",
        T_FRAME => "frame message",
        t => return Err(protocol(format!("unknown message type {t}"))),
    };
    let mut r = Reader {
        bytes: &bytes[HEADER_LEN..],
        what,
    };
    let packet = match ty {
        T_BUFFER => {
            let id = r.u64()?;
            let WireBuffer { size, kind, name } = r.buffer()?;
            Packet::Buffer {
                id,
                size,
                kind,
                name,
            }
        }
        T_FRAME => {
            let id = r.u64()?;
            let len = r.u8()? as usize;
            if r.take(3)? != [0, 0, 0] {
                return Err(protocol("frame message has non-zero reserved bytes"));
            }
            let layout = crate::frame::wire::decode(r.take(len)?)
                .map_err(|e| protocol(format!("frame message: {}", e.cause())))?;
            let buffers = (0..layout.buffer_count())
                .map(|_| r.buffer())
                .collect::<Result<Vec<_>>>()?;
            Packet::Frame {
                id,
                layout,
                buffers,
            }
        }
        T_FENCE => Packet::Fence {
            tag: r.u64()?,
            fences: r.fences()?,
        },
        T_POOL_READY => Packet::PoolReady {
            buffers: r.u32()?,
            consumer: r.u32()?,
        },
        T_ITEM => Packet::Item {
            buffer: r.u64()?,
            seq: r.u64()?,
            len: r.u64()?,
            sent_ns: r.u64()?,
            fences: r.fences()?,
        },
        T_RELEASE => Packet::Release {
            buffer: r.u64()?,
            seq: r.u64()?,
            fences: r.fences()?,
        },
        T_RING => Packet::Ring { capacity: r.u32()? },
        _ => Packet::Bye,
    };
    r.finish()?;
    if packet.fd_count() != fds {
        return Err(protocol(format!(
            "{what} needs {} fds but {fds} arrived",
            packet.fd_count()
        )));
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Packet> {
        vec![
            Packet::Buffer {
                id: 7,
                size: 4096,
                kind: WireKind::Portable,
                name: "frames-0".into(),
            },
            Packet::Buffer {
                id: 1,
                size: 1 << 20,
                kind: WireKind::Heap("system".into()),
                name: String::new(),
            },
            Packet::Buffer {
                id: 2,
                size: 8192,
                kind: WireKind::Imported("vivid".into()),
                name: "x".into(),
            },
            Packet::Fence {
                tag: 3,
                fences: vec![WireFence::SyncFile, WireFence::User],
            },
            Packet::PoolReady {
                buffers: 4,
                consumer: 1,
            },
            Packet::Item {
                buffer: 2,
                seq: 99,
                len: 100,
                sent_ns: 123456789,
                fences: vec![],
            },
            Packet::Release {
                buffer: 2,
                seq: 99,
                fences: vec![WireFence::User],
            },
            Packet::Bye,
            frame_sample(),
        ]
    }

    /// NV12 64x32 in two buffers (luma, chroma).
    fn frame_sample() -> Packet {
        use crate::frame::{Fourcc, Modifier, PlaneLayout};
        Packet::Frame {
            id: 5,
            layout: FrameLayout {
                format: Fourcc::NV12,
                modifier: Modifier::LINEAR,
                width: 64,
                height: 32,
                planes: vec![
                    PlaneLayout {
                        buffer: 0,
                        offset: 0,
                        stride: 64,
                    },
                    PlaneLayout {
                        buffer: 1,
                        offset: 0,
                        stride: 64,
                    },
                ],
            },
            buffers: vec![
                WireBuffer {
                    size: 4096,
                    kind: WireKind::Portable,
                    name: "luma".into(),
                },
                WireBuffer {
                    size: 4096,
                    kind: WireKind::Imported("vivid".into()),
                    name: "chroma".into(),
                },
            ],
        }
    }

    #[test]
    fn frame_failures_are_named() {
        let good = encode(&frame_sample());
        assert_eq!(decode(&good, 2).unwrap(), frame_sample());
        // One fd per buffer of the layout.
        let mut b = good.clone();
        b[12] = 3;
        assert!(err(&b, 3).contains("frame message needs 2 fds but 3 arrived"));
        // Reserved bytes after the layout length.
        let mut b = good.clone();
        b[HEADER_LEN + 9] = 1;
        assert!(err(&b, 2).contains("frame message has non-zero reserved bytes"));
        // The layout encoding is decoded as hostile input.
        let mut b = good.clone();
        b[HEADER_LEN + 12] = b'X';
        assert!(err(&b, 2).contains("frame message: bad magic"));
        let mut b = good.clone();
        b[HEADER_LEN + 12 + 5] = 9;
        assert!(err(&b, 2).contains("plane count 9"));
        // A layout length that cuts the layout.
        let mut b = good.clone();
        b[HEADER_LEN + 8] = 20;
        assert!(err(&b, 2).contains("frame message: 20 bytes is shorter"));
        // A buffer description that runs past the body.
        let mut b = good[..good.len() - 3].to_vec();
        let body = (b.len() - HEADER_LEN) as u32;
        b[8..12].copy_from_slice(&body.to_le_bytes());
        assert!(err(&b, 2).contains("frame message body ends early"));
        // Trailing bytes.
        let mut b = good.clone();
        b.push(0);
        let body = (b.len() - HEADER_LEN) as u32;
        b[8..12].copy_from_slice(&body.to_le_bytes());
        assert!(err(&b, 2).contains("frame message body has 1 trailing bytes"));
    }

    #[test]
    fn round_trip_every_type() {
        for f in samples() {
            let bytes = encode(&f);
            assert_eq!(decode(&bytes, f.fd_count()).unwrap(), f);
        }
    }

    fn err(bytes: &[u8], fds: usize) -> String {
        let e = decode(bytes, fds).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(e.errno(), Some(crate::Errno::PROTO));
        e.to_string()
    }

    #[test]
    fn header_failures_are_named() {
        let good = encode(&Packet::Bye);
        assert!(err(&good[..10], 0).contains("shorter than the 16-byte header"));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(err(&b, 0).contains("bad magic"));
        let mut b = good.clone();
        b[4] = 9;
        assert!(err(&b, 0).contains("protocol version 9 is not supported"));
        let mut b = good.clone();
        b[6] = 77;
        assert!(err(&b, 0).contains("unknown message type 77"));
        let mut b = good.clone();
        b[14] = 1;
        assert!(err(&b, 0).contains("reserved header bits"));
        let mut b = good.clone();
        b[8] = 4;
        assert!(err(&b, 0).contains("announces a 4-byte body but 0 bytes followed"));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(err(&b, 0).contains("exceeds the limit"));
        assert!(err(&good, 2).contains("header announces 0 fds but 2 arrived"));
    }

    #[test]
    fn body_failures_are_named() {
        // A fence message whose header claims 1 fd but whose body needs 2.
        let mut b = encode(&Packet::Fence {
            tag: 1,
            fences: vec![WireFence::User],
        });
        b[12] = 1;
        assert!(err(&b, 1).contains("fence message needs 2 fds but 1 arrived"));
        // Unknown fence kind.
        let mut b = encode(&Packet::Fence {
            tag: 1,
            fences: vec![WireFence::SyncFile],
        });
        let last = b.len() - 1;
        b[last] = 9;
        assert!(err(&b, 1).contains("fence of unknown kind 9"));
        // Too many fences.
        let mut b = encode(&Packet::Fence {
            tag: 1,
            fences: vec![],
        });
        let last = b.len() - 1;
        b[last] = 200;
        assert!(err(&b, 0).contains("carries 200 fences"));
        // Truncated body (length fields agree, content too short).
        let full = encode(&Packet::PoolReady {
            buffers: 1,
            consumer: 0,
        });
        let mut b = full[..full.len() - 2].to_vec();
        b[8] = 6;
        assert!(err(&b, 0).contains("pool-ready message body ends early"));
        // Trailing bytes.
        let mut b = encode(&Packet::Bye);
        b.push(0);
        b[8] = 1;
        assert!(err(&b, 0).contains("bye message body has 1 trailing bytes"));
        // Buffer with an over-long name, bad UTF-8, NUL, zero size, bad kind.
        let buf = |name: &[u8], size: u64, code: u8, detail: &[u8]| {
            let mut body = Vec::new();
            body.extend_from_slice(&1u64.to_le_bytes());
            body.extend_from_slice(&size.to_le_bytes());
            body.extend_from_slice(&[code, detail.len() as u8, name.len() as u8, 0]);
            body.extend_from_slice(detail);
            body.extend_from_slice(name);
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&T_BUFFER.to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&1u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&body);
            out
        };
        assert!(err(&buf(&[b'a'; 40], 4096, 1, b""), 1).contains("name is 40 bytes"));
        assert!(err(&buf(&[0xff, 0xfe], 4096, 1, b""), 1).contains("name is not UTF-8"));
        assert!(err(&buf(b"a\0b", 4096, 1, b""), 1).contains("name contains a NUL byte"));
        assert!(err(&buf(b"a", 0, 1, b""), 1).contains("announces size 0"));
        assert!(err(&buf(b"a", 4096, 8, b""), 1).contains("unknown buffer kind 8"));
        assert!(err(&buf(b"a", 4096, 3, b""), 1).contains("heap buffer without a heap name"));
        assert!(err(&buf(b"a", 4096, 1, b"x"), 1).contains("takes no detail"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes: an error or a packet, never a panic; a packet
        /// always agrees with the fd count.
        #[test]
        fn decoder_never_panics_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..200), fds in 0usize..20) {
            if let Ok(f) = decode(&bytes, fds) {
                prop_assert_eq!(f.fd_count(), fds);
            }
        }

        /// Valid messages with bytes flipped, cut or extended.
        #[test]
        fn decoder_never_panics_on_mutations(which in 0usize..9, pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>(), fds in 0usize..4) {
            let f = samples().swap_remove(which);
            let mut b = encode(&f);
            let p = pos % b.len();
            b[p] = val;
            let c = cut % (b.len() + 1);
            let _ = decode(&b[..c], fds);
            let _ = decode(&b, fds);
            b.extend_from_slice(&[val; 3]);
            let _ = decode(&b, fds);
        }
    }
}
