//! Access and usage: the two words of implicit synchronisation.
//!
//! # DOC: one notion each
//!
//! * An [`Access`] is what one user is about to do to the bytes: read,
//!   write, or both. The user is the CPU (a window, an idle-wait, a fence
//!   export for "what must I wait for") or a device (a transfer queued by
//!   an endpoint). The access decides what the user **waits for**. It is
//!   the direction `DMA_BUF_IOCTL_SYNC` and `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`
//!   take (`DMA_BUF_SYNC_READ`, `_WRITE`, `_RW`), and the access mode of a
//!   new heap buffer's fd.
//! * A [`Usage`] is how a fence *in a reservation* uses the buffer: the
//!   kernel's `enum dma_resv_usage`, as far as user space can set it
//!   (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE` adds fences as `WRITE` or `READ`;
//!   `KERNEL` and `BOOKKEEP` are for drivers only). The usage decides
//!   **who waits for** the fence.
//!
//! The two meet in two rules, both the kernel's and both here only:
//!
//! * work doing an access is published with [`Access::usage`]: a read as
//!   [`Usage::Read`], a write or a read-write as [`Usage::Write`]
//!   (`IMPORT_SYNC_FILE` with `WRITE` set adds a `WRITE` fence, else a
//!   `READ` one);
//! * an access waits for the fences [`Access::waits_for`] says: a read
//!   for [`Usage::Write`] fences, a write (or read-write) for every fence
//!   (the kernel's `dma_resv_usage_rw`).
//!
//! This module is a leaf: it uses no other module of the crate but the
//! kernel-facing constants, so `buffer`, `mapping`, `reservation` and the
//! endpoints all name the same two types without importing each other.

use std::fmt;

use crate::sys;

/// What one user (the CPU or a device) is about to do to a buffer's
/// bytes; it decides what the user waits for. See the module
/// documentation.
///
/// Closed by nature (read, write, or both), so not `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Reading: waits for writers.
    Read,
    /// Writing: waits for everyone.
    Write,
    /// Both: waits for everyone.
    ReadWrite,
}

impl Access {
    /// Whether the access writes.
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }

    /// Whether the access reads.
    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    /// The usage of a fence of work that makes this access: [`Usage::Write`]
    /// if it writes, else [`Usage::Read`].
    pub fn usage(self) -> Usage {
        if self.writes() {
            Usage::Write
        } else {
            Usage::Read
        }
    }

    /// Whether this access must wait for a fence of `usage`: a write waits
    /// for every fence, a read only for [`Usage::Write`] fences.
    pub fn waits_for(self, usage: Usage) -> bool {
        self.writes() || usage == Usage::Write
    }

    /// The `DMA_BUF_SYNC_*` direction flags.
    pub(crate) fn sync_flags(self) -> u64 {
        match self {
            Access::Read => sys::dma_buf::DMA_BUF_SYNC_READ,
            Access::Write => sys::dma_buf::DMA_BUF_SYNC_WRITE,
            Access::ReadWrite => sys::dma_buf::DMA_BUF_SYNC_RW,
        }
    }

    /// Lower-case name for messages (`read`, `write`, `read-write`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a fence in a reservation uses the buffer (the kernel's
/// `dma_resv_usage`, as far as user space can set it); it decides who
/// waits for the fence. See the module documentation.
///
/// `#[non_exhaustive]`: the kernel has two more usages (`KERNEL`,
/// `BOOKKEEP`) that user space cannot set today and might one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Usage {
    /// The work reads the buffer: writers wait for it.
    Read,
    /// The work writes the buffer: everyone waits for it.
    Write,
}

impl Usage {
    /// Whether a fence of this usage may replace an earlier fence of
    /// `old` usage on the same timeline (`dma_resv_add_fence`): unless
    /// `old` is stronger — a read fence never replaces a write fence.
    pub(crate) fn may_replace(self, old: Usage) -> bool {
        !(old == Usage::Write && self == Usage::Read)
    }

    /// The `DMA_BUF_SYNC_*` flag `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` takes
    /// for it.
    pub(crate) fn sync_flags(self) -> u64 {
        match self {
            Usage::Read => sys::dma_buf::DMA_BUF_SYNC_READ,
            Usage::Write => sys::dma_buf::DMA_BUF_SYNC_WRITE,
        }
    }

    /// Lower-case name for messages (`read`, `write`).
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Read => "read",
            Usage::Write => "write",
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_an_access_and_what_it_waits_for_follow_the_kernel() {
        assert!(Access::Read.reads() && !Access::Read.writes());
        assert!(!Access::Write.reads() && Access::Write.writes());
        assert!(Access::ReadWrite.reads() && Access::ReadWrite.writes());
        assert_eq!(Access::Read.usage(), Usage::Read);
        assert_eq!(Access::Write.usage(), Usage::Write);
        assert_eq!(Access::ReadWrite.usage(), Usage::Write);
        assert!(Access::Read.waits_for(Usage::Write));
        assert!(!Access::Read.waits_for(Usage::Read));
        for a in [Access::Write, Access::ReadWrite] {
            assert!(a.waits_for(Usage::Write) && a.waits_for(Usage::Read));
        }
        assert!(Usage::Write.may_replace(Usage::Read));
        assert!(Usage::Write.may_replace(Usage::Write));
        assert!(Usage::Read.may_replace(Usage::Read));
        assert!(!Usage::Read.may_replace(Usage::Write));
    }

    #[test]
    fn flags_are_the_uapi_directions() {
        assert_eq!(Access::Read.sync_flags(), sys::dma_buf::DMA_BUF_SYNC_READ);
        assert_eq!(Access::Write.sync_flags(), sys::dma_buf::DMA_BUF_SYNC_WRITE);
        assert_eq!(
            Access::ReadWrite.sync_flags(),
            sys::dma_buf::DMA_BUF_SYNC_RW
        );
        assert_eq!(
            Access::ReadWrite.usage().sync_flags(),
            sys::dma_buf::DMA_BUF_SYNC_WRITE
        );
        assert_eq!(Access::ReadWrite.to_string(), "read-write");
        assert_eq!(Usage::Read.to_string(), "read");
    }
}
