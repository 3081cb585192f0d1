//! The portable engine: sealed memfd buffers for kernels with no dma-buf
//! exporter (no `/dev/udmabuf`, no DMA heaps).
//!
//! # DOC: the portable kind
//!
//! A portable buffer is a memfd named `dmabuf-portable:<name>` (see
//! [`PORTABLE_MEMFD_PREFIX`]), sized once and
//! sealed with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: its size can
//! never change, so a process it is shared with cannot be made to fault.
//! It is never sealed against writing. It behaves like a dma-buf in every
//! way the API shows: mapped once, bytes only inside CPU windows, fences
//! and reservation rules enforced by the library. Devices cannot import it
//! (it is not a dma-buf); endpoints use their copy path for it.

use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};

use super::{allocation_size, Allocate, Backend};
use crate::buffer::{Buffer, PORTABLE_MEMFD_PREFIX};
use crate::error::{Error, Result};

/// Allocates portable buffers. Always available.
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl Allocate for Portable {
    fn backend(&self) -> Backend {
        Backend::Portable
    }

    fn allocate(&self, size: u64, name: &str) -> Result<Buffer> {
        let obj = format!("portable buffer '{name}'");
        let size = allocation_size(size, &obj)?;
        let memfd = memfd_create(
            format!("{PORTABLE_MEMFD_PREFIX}{name}"),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| Error::os("memfd_create", obj.clone(), e))?;
        ftruncate(&memfd, size).map_err(|e| Error::os("allocate", obj.clone(), e))?;
        fcntl_add_seals(
            &memfd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| Error::os("seal memfd", obj.clone(), e))?;
        let buffer = Buffer::from_memfd(memfd, "")?;
        buffer.set_name(name)?;
        Ok(buffer)
    }
}
