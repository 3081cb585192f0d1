//! Allocators: one interface, three kinds of memory, and the automatic
//! choice between them.
//!
//! # DOC: choosing memory
//!
//! [`Allocate`] is implemented by [`Heap`] (a DMA heap), [`Udmabuf`]
//! (sealed memfd pages turned into a dma-buf) and [`Portable`] (a sealed
//! memfd, for kernels with neither). [`Allocator::auto`] picks the first
//! that works on this machine, in that order: the `system` heap, then
//! udmabuf, then portable — so a program written against this API runs
//! everywhere, with real dma-bufs wherever the kernel has them.
//! [`Allocator::new`] takes an explicit [`Backend`] and fails clearly if it
//! is not available. Every buffer says which kind it is
//! ([`Buffer::kind`]). Sizes are rounded up to whole pages for every kind,
//! as heaps and udmabuf do.

use std::fmt;
use std::str::FromStr;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::heap::{heap_names, Heap};
use crate::portable::Portable;
use crate::sys;
use crate::udmabuf::Udmabuf;

/// Something that allocates [`Buffer`]s.
pub trait Allocate: fmt::Debug + Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// A new buffer of at least `size` bytes (rounded up to pages), named
    /// `name` (at most 31 bytes; may be empty).
    fn allocate(&self, size: u64, name: &str) -> Result<Buffer>;
}

/// A kind of memory to allocate from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Backend {
    /// The DMA heap of this name.
    Heap(String),
    /// `/dev/udmabuf`.
    Udmabuf,
    /// Sealed memfds.
    Portable,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Heap(h) => write!(f, "heap:{h}"),
            Backend::Udmabuf => f.write_str("udmabuf"),
            Backend::Portable => f.write_str("portable"),
        }
    }
}

impl FromStr for Backend {
    type Err = Error;
    /// `heap` (the system heap), `heap:NAME`, `udmabuf` or `portable`.
    fn from_str(s: &str) -> Result<Backend> {
        match s {
            "heap" => Ok(Backend::Heap("system".into())),
            "udmabuf" => Ok(Backend::Udmabuf),
            "portable" => Ok(Backend::Portable),
            _ => match s.strip_prefix("heap:") {
                Some(h) if !h.is_empty() => Ok(Backend::Heap(h.to_string())),
                _ => Err(Error::invalid(
                    "backend",
                    s,
                    "unknown backend (expected heap, heap:NAME, udmabuf or portable)",
                )),
            },
        }
    }
}

/// The size to allocate for a request of `size` bytes: refused if 0,
/// rounded up to a whole number of pages.
pub(crate) fn allocation_size(size: u64, object: &str) -> Result<u64> {
    if size == 0 {
        return Err(Error::invalid(
            "allocate",
            object,
            "size 0: a buffer needs at least one byte",
        ));
    }
    let page = sys::mem::page_size() as u64;
    size.checked_next_multiple_of(page)
        .ok_or_else(|| Error::invalid("allocate", object, format!("size {size} is too large")))
}

/// An allocator of a chosen or automatic backend.
#[derive(Debug)]
pub struct Allocator {
    inner: Box<dyn Allocate>,
    why: String,
}

impl Allocator {
    /// The best backend this machine offers: the `system` heap (or the
    /// first heap), else udmabuf, else portable. Never fails.
    pub fn auto() -> Allocator {
        let mut tried = Vec::new();
        let names = heap_names();
        let pick = if names.iter().any(|n| n == "system") {
            Some("system".to_string())
        } else {
            names.first().cloned()
        };
        if let Some(name) = pick {
            match Heap::open(&name) {
                Ok(h) => {
                    return Allocator {
                        inner: Box::new(h),
                        why: format!("DMA heap '{name}' is available"),
                    }
                }
                Err(e) => tried.push(e.to_string()),
            }
        } else {
            tried.push("no DMA heaps".to_string());
        }
        match Udmabuf::open() {
            Ok(u) => {
                return Allocator {
                    inner: Box::new(u),
                    why: format!("udmabuf is available ({})", tried.join("; ")),
                }
            }
            Err(e) => tried.push(e.to_string()),
        }
        Allocator {
            inner: Box::new(Portable),
            why: format!("no kernel exporter usable: {}", tried.join("; ")),
        }
    }

    /// An allocator of exactly `backend`, or an error saying why it is not
    /// available here.
    pub fn new(backend: &Backend) -> Result<Allocator> {
        let (inner, why): (Box<dyn Allocate>, _) = match backend {
            Backend::Heap(name) => (Box::new(Heap::open(name)?), "chosen"),
            Backend::Udmabuf => (Box::new(Udmabuf::open()?), "chosen"),
            Backend::Portable => (Box::new(Portable), "chosen"),
        };
        Ok(Allocator {
            inner,
            why: why.to_string(),
        })
    }

    /// Why this backend was picked (for `--verbose` output and reports).
    pub fn reason(&self) -> &str {
        &self.why
    }
}

impl Allocate for Allocator {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn allocate(&self, size: u64, name: &str) -> Result<Buffer> {
        self.inner.allocate(size, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_print() {
        for s in ["heap:system", "udmabuf", "portable", "heap:linux,cma"] {
            assert_eq!(s.parse::<Backend>().unwrap().to_string(), s);
        }
        assert_eq!(
            "heap".parse::<Backend>().unwrap(),
            Backend::Heap("system".into())
        );
        let e = "gpu".parse::<Backend>().unwrap_err();
        assert!(e.to_string().contains("unknown backend"), "{e}");
    }
}
