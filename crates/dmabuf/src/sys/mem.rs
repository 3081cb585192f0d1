//! Shared memory mappings.
//!
//! A [`Region`] is one `mmap(MAP_SHARED)` of a dma-buf or memfd. It hands
//! out no bytes itself: the borrow registry of the memory object it maps
//! (`sys::object`) decides who may reach which bytes, and the views it
//! grants read and write them (see `sys::volatile`). The mapping is
//! unmapped when the last holder drops the `Region`.
//!
//! Atomic words shared with other processes (fence pages, rings) are
//! `sys::futex::SharedWords`, mapped after the same check
//! ([`check_fixed_size`]).

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;

use rustix::mm::{Advice, MapFlags, ProtFlags};

use super::Errno;

type IoResult<T> = rustix::io::Result<T>;

/// The system page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// Checks that `fd` cannot shrink below `offset + len` bytes: a dma-buf
/// (fixed size) or a memfd with `F_SEAL_SHRINK`, long enough.
pub(crate) fn check_fixed_size(fd: BorrowedFd<'_>, offset: u64, len: usize) -> IoResult<()> {
    let end = offset
        .checked_add(len as u64)
        .filter(|_| len > 0)
        .ok_or(Errno::INVAL)?;
    let fs = rustix::fs::fstatfs(fd)?;
    let size = if fs.f_type as i64 == super::dma_buf::DMA_BUF_MAGIC {
        rustix::fs::seek(fd, rustix::fs::SeekFrom::End(0))?
    } else {
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| Errno::BADF)?;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(Errno::INVAL);
        }
        rustix::fs::fstat(fd)?.st_size as u64
    };
    if end > size {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// One shared mapping of (part of) a file.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    owner: u64,
}

// SAFETY: the region is a process-wide mapping valid until `Drop`; it
// hands out no references, only its address to the views that the owner's
// borrow registry (protected by a mutex) granted, so moving or sharing the
// handle between threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of `fd` at `offset` after checking that the file
    /// cannot shrink under the mapping: a dma-buf (whose size is fixed) or
    /// a memfd sealed with `F_SEAL_SHRINK`, at least `offset + len` bytes
    /// long. Anything else is refused with EINVAL (EBADF for other files).
    /// `owner` is the id of the memory object whose registry governs the
    /// bytes (`sys::object`), recorded so that only its borrows read them.
    pub fn map_fixed_size(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        writable: bool,
        owner: u64,
    ) -> IoResult<Region> {
        let fd = fd.as_fd();
        check_fixed_size(fd, offset, len)?;
        // SAFETY: the file cannot shrink (checked just above: a dma-buf's
        // size never changes, a memfd sealed against shrinking cannot lose
        // pages, and seals cannot be removed), so no access to the mapping
        // can fault; the region hands out no references, only its address
        // to views granted by the registry of `owner`.
        unsafe { Region::map(fd, offset, len, writable, owner) }
    }

    /// Maps `len` bytes of `fd` at `offset`, shared, readable and (if
    /// `writable`) writable.
    ///
    /// # Safety
    ///
    /// In the style of `memmap2::Mmap::map`: the caller guarantees that the
    /// file is not truncated (or shrunk) while the mapping lives — an access
    /// past the file's end raises `SIGBUS` — and that `fd` is the memory of
    /// the object `owner`, whose registry is then the only way to these
    /// bytes in this process.
    pub unsafe fn map(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        writable: bool,
        owner: u64,
    ) -> IoResult<Region> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new mapping at an address chosen by the kernel touches
        // no existing Rust memory; the result is owned by the Region.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(Region {
            ptr,
            len,
            writable,
            owner,
        })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping allows writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The memory object whose registry governs these bytes.
    pub fn owner(&self) -> u64 {
        self.owner
    }

    /// The address of the first byte (for diagnostics and device APIs that
    /// take user pointers; nothing in the library reads through it
    /// outside a granted view).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The first byte, for views granted by the owner's registry.
    pub(super) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Maps every page of `range` (of the region; its start page-aligned,
    /// its end inside the region) into this process's page tables now, so
    /// that no later access to them stops for a page fault:
    /// `madvise(MADV_POPULATE_WRITE)` on a writable region (which also
    /// allocates the pages a memfd does not have yet, as a write would),
    /// `MADV_POPULATE_READ` on a read-only one. No byte is read or
    /// written. Interrupted calls are made again.
    ///
    /// The kernel answers EINVAL for mappings it cannot populate (raw page
    /// frames, `VM_PFNMAP`/`VM_IO`, as dma-buf exporters such as the system
    /// heap and udmabuf map them) and on kernels before 5.14; a range
    /// outside the region is EINVAL here, before any call.
    pub fn populate(&self, range: Range<usize>) -> IoResult<()> {
        if range.start > range.end || range.end > self.len || range.start % page_size() != 0 {
            return Err(Errno::INVAL);
        }
        if range.is_empty() {
            return Ok(());
        }
        let advice = if self.writable {
            Advice::LinuxPopulateWrite
        } else {
            Advice::LinuxPopulateRead
        };
        loop {
            // SAFETY: the range lies inside this mapping (checked above).
            // Populating faults the pages in as an access would and
            // changes no byte (unlike `MADV_DONTNEED` or `MADV_REMOVE`),
            // so no view's bytes or Rust's assumptions about them change.
            let r = unsafe {
                rustix::mm::madvise(
                    self.ptr.as_ptr().add(range.start).cast(),
                    range.len(),
                    advice,
                )
            };
            match r {
                Err(Errno::INTR) => continue,
                r => return r,
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // view can be alive: each holds an `Arc` of this region.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = memfd_create(
            "sys-mem-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&fd, len).unwrap();
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        fd
    }

    #[test]
    fn safe_constructors_refuse_files_that_can_shrink() {
        let open = memfd_create("sys-mem-unsealed", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&open, 4096).unwrap();
        // A memfd made without MFD_ALLOW_SEALING reports F_SEAL_SEAL only.
        assert_eq!(
            Region::map_fixed_size(&open, 0, 4096, true, 0).unwrap_err(),
            Errno::INVAL
        );
        // A file that is neither a dma-buf nor a memfd.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            Region::map_fixed_size(&file, 0, 4096, false, 0).unwrap_err(),
            Errno::BADF
        );
        let sealable = memfd_create(
            "sys-mem-sealable",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&sealable, 4096).unwrap();
        assert_eq!(
            Region::map_fixed_size(&sealable, 0, 4096, true, 0).unwrap_err(),
            Errno::INVAL
        );
        let sealed = memfd(4096);
        assert_eq!(
            Region::map_fixed_size(&sealed, 0, 8192, true, 0).unwrap_err(),
            Errno::INVAL,
            "past the end"
        );
        assert!(Region::map_fixed_size(&sealed, 0, 4096, true, 0).is_ok());
    }

    #[test]
    fn populate_refuses_ranges_outside_the_region_or_off_a_page() {
        let page = page_size();
        let fd = memfd(2 * page as u64);
        let r = Region::map_fixed_size(&fd, 0, 2 * page, false, 0).unwrap();
        assert_eq!(r.populate(1..page), Err(Errno::INVAL), "unaligned start");
        assert_eq!(
            r.populate(page..3 * page),
            Err(Errno::INVAL),
            "past the end"
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = page..0;
        assert_eq!(r.populate(backwards), Err(Errno::INVAL), "backwards");
        assert_eq!(r.populate(page..page), Ok(()), "empty");
        assert_eq!(
            r.populate(page..2 * page - 1),
            Ok(()),
            "a partial last page"
        );
    }

    #[test]
    fn zero_lengths_are_refused() {
        let fd = memfd(4096);
        assert_eq!(
            Region::map_fixed_size(&fd, 0, 0, false, 0).unwrap_err(),
            Errno::INVAL
        );
    }
}
