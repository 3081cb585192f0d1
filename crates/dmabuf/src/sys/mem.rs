//! Shared memory mappings, with the borrow bookkeeping that makes handing
//! out slices of them sound.
//!
//! A [`Region`] is one `mmap(MAP_SHARED)` of a dma-buf or memfd. Slices of
//! it are only given out as [`RegionRef`] (shared) and [`RegionMut`]
//! (exclusive) borrows of a byte range, tracked at run time like a
//! `RefCell` over ranges: any number of shared borrows, or one exclusive
//! borrow, of any byte. A conflicting borrow is refused, never granted.
//! The mapping is unmapped when the `Region` is dropped, which the borrow
//! lifetimes prevent while any slice is alive.
//!
//! What this layer cannot promise: the memory is shared with other
//! processes and devices, which may write it while a slice is held. That is
//! what the CPU-access windows above (and the fences they wait for) are
//! for; this layer only guarantees that *this* process never aliases a
//! `&mut [u8]`.

use std::ops::{Deref, DerefMut, Range};
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use rustix::mm::{MapFlags, ProtFlags};

use super::Errno;

type IoResult<T> = rustix::io::Result<T>;

/// The system page size.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// One shared mapping of (part of) a file.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    borrows: Mutex<Vec<Borrow>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Borrow {
    start: usize,
    end: usize,
    exclusive: bool,
}

// SAFETY: the region is a process-wide mapping valid until `Drop`; every
// access to its bytes goes through the borrow registry, which is
// protected by a mutex, so using it from several threads is sound.
unsafe impl Send for Region {}
// SAFETY: as above; shared references only hand out tracked borrows.
unsafe impl Sync for Region {}

/// Why a borrow of a [`Region`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BorrowError {
    /// The range is not inside the region.
    OutOfBounds,
    /// An exclusive borrow was asked of a read-only mapping.
    ReadOnly,
    /// The range overlaps a live borrow that conflicts with this one; the
    /// flag says whether the live one is exclusive.
    Conflict {
        /// Whether the live borrow in the way is exclusive (a writer).
        with_exclusive: bool,
    },
}

impl Region {
    /// Maps `len` bytes of `fd` at `offset`, shared, readable and (if
    /// `writable`) writable.
    pub fn map(fd: impl AsFd, offset: u64, len: usize, writable: bool) -> IoResult<Region> {
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
            borrows: Mutex::new(Vec::new()),
        })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: zero-length mappings are
    /// refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping allows writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The address of the first byte (for diagnostics and device APIs that
    /// take user pointers; reading through it bypasses the bookkeeping).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Number of live borrows.
    pub fn live_borrows(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Borrow>> {
        // A panic while holding the lock cannot leave the list
        // inconsistent (each update is a single push or remove).
        self.borrows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, range: &Range<usize>, exclusive: bool) -> Result<Borrow, BorrowError> {
        if range.start > range.end || range.end > self.len {
            return Err(BorrowError::OutOfBounds);
        }
        if exclusive && !self.writable {
            return Err(BorrowError::ReadOnly);
        }
        let b = Borrow {
            start: range.start,
            end: range.end,
            exclusive,
        };
        let mut live = self.lock();
        for other in live.iter() {
            let overlap = b.start < other.end && other.start < b.end;
            if overlap && (exclusive || other.exclusive) {
                return Err(BorrowError::Conflict {
                    with_exclusive: other.exclusive,
                });
            }
        }
        live.push(b);
        Ok(b)
    }

    fn release(&self, b: Borrow) {
        let mut live = self.lock();
        if let Some(i) = live.iter().position(|x| *x == b) {
            live.swap_remove(i);
        }
    }

    /// A shared borrow of `range`.
    pub fn borrow(&self, range: Range<usize>) -> Result<RegionRef<'_>, BorrowError> {
        let b = self.register(&range, false)?;
        Ok(RegionRef { region: self, b })
    }

    /// An exclusive borrow of `range`.
    pub fn borrow_mut(&self, range: Range<usize>) -> Result<RegionMut<'_>, BorrowError> {
        let b = self.register(&range, true)?;
        Ok(RegionMut { region: self, b })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // borrow can be alive: each borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A shared borrow of bytes of a [`Region`].
#[derive(Debug)]
pub struct RegionRef<'a> {
    region: &'a Region,
    b: Borrow,
}

impl Deref for RegionRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range is inside the live mapping (checked in
        // `register`), and the registry guarantees no exclusive borrow of
        // any of these bytes exists while this one lives.
        unsafe {
            std::slice::from_raw_parts(
                self.region.ptr.as_ptr().add(self.b.start),
                self.b.end - self.b.start,
            )
        }
    }
}

impl Drop for RegionRef<'_> {
    fn drop(&mut self) {
        self.region.release(self.b);
    }
}

/// An exclusive borrow of bytes of a [`Region`].
#[derive(Debug)]
pub struct RegionMut<'a> {
    region: &'a Region,
    b: Borrow,
}

impl Deref for RegionMut<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: inside the live mapping; this borrow is the only one of
        // these bytes (registry), and `&self` forbids mutation meanwhile.
        unsafe {
            std::slice::from_raw_parts(
                self.region.ptr.as_ptr().add(self.b.start),
                self.b.end - self.b.start,
            )
        }
    }
}

impl DerefMut for RegionMut<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: inside the live, writable mapping; the registry
        // guarantees no other borrow of these bytes exists, and `&mut self`
        // makes this slice unique for its lifetime.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.region.ptr.as_ptr().add(self.b.start),
                self.b.end - self.b.start,
            )
        }
    }
}

impl Drop for RegionMut<'_> {
    fn drop(&mut self) {
        self.region.release(self.b);
    }
}

/// A small shared mapping used as an array of atomic 64-bit words (the
/// state page of a user-space fence, shared between processes).
#[derive(Debug)]
pub struct AtomicWords {
    ptr: NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: the words are only ever accessed atomically, from any thread.
unsafe impl Send for AtomicWords {}
// SAFETY: as above.
unsafe impl Sync for AtomicWords {}

impl AtomicWords {
    /// Maps `words` 64-bit words of `fd` at offset 0, shared, read-write.
    pub fn map(fd: impl AsFd, words: usize) -> IoResult<AtomicWords> {
        let len = words.checked_mul(8).ok_or(Errno::INVAL)?;
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: a new mapping at an address chosen by the kernel touches
        // no existing Rust memory; the result is owned by `AtomicWords`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or(Errno::NOMEM)?;
        Ok(AtomicWords { ptr, words })
    }

    /// Word `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.words {
            return None;
        }
        // SAFETY: the mapping is page-aligned (so 8-byte aligned), `i` is in
        // bounds, it lives as long as `self`, and every access to it is
        // atomic (other processes use the same protocol).
        Some(unsafe { &*self.ptr.as_ptr().add(i) })
    }
}

impl Drop for AtomicWords {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; references handed out
        // borrow `self` and so are gone.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.words * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = memfd_create("sys-mem-test", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn shared_borrows_coexist_exclusive_ones_do_not() {
        let fd = memfd(8192);
        let r = Region::map(&fd, 0, 8192, true).unwrap();
        let a = r.borrow(0..100).unwrap();
        let b = r.borrow(50..200).unwrap();
        assert_eq!(
            r.borrow_mut(150..300).unwrap_err(),
            BorrowError::Conflict {
                with_exclusive: false
            }
        );
        let mut w = r.borrow_mut(200..300).unwrap();
        w[0] = 7;
        assert_eq!(
            r.borrow(250..251).unwrap_err(),
            BorrowError::Conflict {
                with_exclusive: true
            }
        );
        drop((a, b, w));
        assert_eq!(r.live_borrows(), 0);
        assert_eq!(r.borrow(200..201).unwrap()[0], 7);
    }

    #[test]
    fn bounds_and_read_only_are_enforced() {
        let fd = memfd(4096);
        let r = Region::map(&fd, 0, 4096, false).unwrap();
        assert_eq!(r.borrow(0..4097).unwrap_err(), BorrowError::OutOfBounds);
        assert_eq!(r.borrow_mut(0..1).unwrap_err(), BorrowError::ReadOnly);
        assert_eq!(Region::map(&fd, 0, 0, false).unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn atomic_words_are_shared_between_mappings() {
        let fd = memfd(4096);
        let a = AtomicWords::map(&fd, 4).unwrap();
        let b = AtomicWords::map(&fd, 4).unwrap();
        a.get(3)
            .unwrap()
            .store(42, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            b.get(3).unwrap().load(std::sync::atomic::Ordering::SeqCst),
            42
        );
        assert!(a.get(4).is_none());
    }
}
