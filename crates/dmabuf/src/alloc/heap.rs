//! DMA heaps: allocating dma-bufs from `/dev/dma_heap/<name>`.
//!
//! # DOC: heaps
//!
//! Each heap is a device node `/dev/dma_heap/<name>` (6.12: `system`, and a
//! CMA heap named after the default CMA area when configured; root-only
//! `0600` unless udev says otherwise). `DMA_HEAP_IOCTL_ALLOC` returns a
//! zeroed dma-buf of the length rounded up to pages, with close-on-exec
//! and an access mode of the caller's choice; no heap flags exist in 6.12.
//! A length the kernel could not satisfy (0, overflowing when rounded to
//! pages, more than the memory this process can still get) is refused
//! first, with the same messages as every allocator (see the `alloc`
//! module's memory limits).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::{allocation_size, named_buffer, Allocate, Backend};
use crate::access::Access;
use crate::buffer::{Buffer, BufferKind};
use crate::dma_buf::DmaBuf;
use crate::error::{Errno, Error, ErrorKind, Result};
use crate::sys;

/// How to allocate from a heap.
#[derive(Debug, Clone, Copy)]
pub struct HeapAllocOptions {
    /// Access mode of the new fd (read-only buffers cannot be mapped
    /// writable).
    pub access: Access,
    /// Give the fd `O_CLOEXEC` (default true).
    pub cloexec: bool,
    /// Heap flags (none exist in 6.12: anything but 0 is refused).
    pub heap_flags: u64,
}

impl Default for HeapAllocOptions {
    fn default() -> Self {
        HeapAllocOptions {
            access: Access::ReadWrite,
            cloexec: true,
            heap_flags: 0,
        }
    }
}

/// An open DMA heap.
#[derive(Debug)]
pub struct Heap {
    name: String,
    path: PathBuf,
    fd: OwnedFd,
}

/// The names of the heaps present (sorted; empty without heap support).
pub fn heap_names() -> Vec<String> {
    heap_names_in(Path::new(sys::dma_heap::DMA_HEAP_DIR))
}

fn heap_names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Heap {
    /// Opens the heap `name` (e.g. `"system"`).
    pub fn open(name: &str) -> Result<Heap> {
        Heap::open_in(Path::new(sys::dma_heap::DMA_HEAP_DIR), name)
    }

    fn open_in(dir: &Path, name: &str) -> Result<Heap> {
        let path = dir.join(name);
        let shown = path.display().to_string();
        if name.is_empty() || name.contains('/') {
            return Err(Error::invalid("open heap", shown, "not a heap name"));
        }
        let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                Errno::NOENT => {
                    let have = heap_names_in(dir);
                    Error::kernel(
                        "open heap",
                        shown.clone(),
                        e,
                        if have.is_empty() {
                            format!("no DMA heap named '{name}': this kernel offers no heaps")
                        } else {
                            format!(
                                "no DMA heap named '{name}' (available: {})",
                                have.join(", ")
                            )
                        },
                    )
                    .with_kind(ErrorKind::NotFound)
                }
                Errno::ACCESS | Errno::PERM => Error::kernel(
                    "open heap",
                    shown.clone(),
                    e,
                    "permission denied (heap nodes are root-only unless udev grants access)",
                ),
                e => Error::os("open heap", shown.clone(), e),
            },
        )?;
        Ok(Heap {
            name: name.to_string(),
            path,
            fd,
        })
    }

    /// The heap's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allocates a dma-buf of `len` bytes (rounded up to pages by the
    /// kernel), zeroed.
    pub fn allocate_dma_buf(&self, len: u64, opts: HeapAllocOptions) -> Result<DmaBuf> {
        let obj = format!("heap '{}'", self.name);
        // The one size check of every allocator: 0, overflow when rounded
        // to pages, more than the memory this process can still get.
        let len = allocation_size(len, &obj)?;
        if opts.heap_flags & !sys::dma_heap::DMA_HEAP_VALID_HEAP_FLAGS != 0 {
            return Err(Error::invalid(
                "heap allocate",
                obj,
                format!(
                    "heap flags {:#x} are not supported (Linux 6.12 accepts none)",
                    opts.heap_flags
                ),
            ));
        }
        let mut fd_flags = match opts.access {
            Access::Read => 0, // O_RDONLY
            Access::Write => 1,
            Access::ReadWrite => 2,
        };
        if opts.cloexec {
            fd_flags |= 0o2000000;
        }
        let fd = sys::dma_heap::alloc(&self.fd, len, fd_flags, opts.heap_flags).map_err(
            |e| match e {
                Errno::NOMEM => Error::kernel(
                    "heap allocate",
                    obj.clone(),
                    e,
                    format!("out of memory for {len} bytes"),
                ),
                Errno::INVAL => Error::kernel(
                    "heap allocate",
                    obj.clone(),
                    e,
                    "the kernel refused the arguments",
                ),
                e => Error::os("heap allocate", obj.clone(), e),
            },
        )?;
        DmaBuf::from_fd(fd)
    }
}

impl AsFd for Heap {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Allocate for Heap {
    fn backend(&self) -> Backend {
        Backend::Heap(self.name.clone())
    }

    fn allocate(&self, size: u64, name: &str) -> Result<Buffer> {
        let d = self.allocate_dma_buf(size, HeapAllocOptions::default())?;
        named_buffer(d, BufferKind::Heap(self.name.clone()), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_heap_is_named_with_what_exists() {
        let dir = std::env::temp_dir().join(format!("dmabuf-heaps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("system"), b"").unwrap();
        let e = Heap::open_in(&dir, "cma").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(
            e.to_string()
                .contains("no DMA heap named 'cma' (available: system)"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_heaps_at_all_is_said_plainly() {
        let e = Heap::open_in(Path::new("/nonexistent-dma-heap-dir"), "system").unwrap_err();
        assert!(e.to_string().contains("this kernel offers no heaps"), "{e}");
        assert_eq!(e.errno(), Some(Errno::NOENT));
    }
}
