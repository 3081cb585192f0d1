//! Volatile views of memory that other parties may write.
//!
//! The bytes of a shared mapping can change under this process at any
//! time (another process, a device): in Rust's model, a `&[u8]` or
//! `&mut [u8]` over them would be a data race, and the compiler may assume
//! that bytes read twice through a shared slice are the same. So, as
//! `vm-memory`'s and crosvm's `VolatileSlice` do, the bytes are reached
//! only through [`VolatileBytes`] and [`VolatileBytesMut`]: every access
//! is a volatile load or store through a raw pointer, and no reference to
//! the shared bytes is ever made (except through the `unsafe`
//! [`VolatileBytes::as_slice`] and [`VolatileBytesMut::as_mut_slice`],
//! where the caller vouches that nobody writes them meanwhile).
//!
//! Bulk copies and fills move aligned 64-bit words (`read_volatile` /
//! `write_volatile` of `u64`, four per loop turn) with head and tail
//! bytes on either side, so they keep near memory speed; copies between
//! two shared views go through a small stack buffer.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::ptr::NonNull;

const WORD: usize = std::mem::size_of::<u64>();

/// A range that is not inside a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    /// Start of the range asked for.
    pub offset: usize,
    /// Its length.
    pub len: usize,
    /// Length of the view.
    pub available: usize,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bytes {}..{} are outside the window (0..{})",
            self.offset,
            self.offset.saturating_add(self.len),
            self.available
        )
    }
}

impl std::error::Error for OutOfRange {}

fn check(offset: usize, len: usize, available: usize) -> Result<(), OutOfRange> {
    match offset.checked_add(len) {
        Some(end) if end <= available => Ok(()),
        _ => Err(OutOfRange {
            offset,
            len,
            available,
        }),
    }
}

fn sub_range(range: &Range<usize>, available: usize) -> Result<(), OutOfRange> {
    if range.start > range.end {
        return Err(OutOfRange {
            offset: range.start,
            len: 0,
            available,
        });
    }
    check(range.start, range.end - range.start, available)
}

/// Copies `n` bytes from shared memory at `src` (volatile loads) to plain
/// memory at `dst`.
///
/// # Safety
///
/// `src..src+n` must be readable mapped memory and `dst..dst+n` writable
/// memory that nothing else accesses during the call; they must not
/// overlap.
unsafe fn load(src: *const u8, dst: *mut u8, n: usize) {
    let head = src.align_offset(WORD).min(n);
    let mut i = 0;
    // SAFETY: (whole body) every offset stays below `n` (loop bounds), so
    // each access is inside the ranges the caller vouches for; word loads
    // are at `src + i` with `i >= head`, 8-byte aligned by construction;
    // stores to `dst` are unaligned-tolerant.
    unsafe {
        while i < head {
            dst.add(i).write(src.add(i).read_volatile());
            i += 1;
        }
        while i + 4 * WORD <= n {
            let s = src.add(i).cast::<u64>();
            let d = dst.add(i).cast::<u64>();
            let (a, b, c, e) = (
                s.read_volatile(),
                s.add(1).read_volatile(),
                s.add(2).read_volatile(),
                s.add(3).read_volatile(),
            );
            d.write_unaligned(a);
            d.add(1).write_unaligned(b);
            d.add(2).write_unaligned(c);
            d.add(3).write_unaligned(e);
            i += 4 * WORD;
        }
        while i + WORD <= n {
            let w = src.add(i).cast::<u64>().read_volatile();
            dst.add(i).cast::<u64>().write_unaligned(w);
            i += WORD;
        }
        while i < n {
            dst.add(i).write(src.add(i).read_volatile());
            i += 1;
        }
    }
}

/// Copies `n` bytes from plain memory at `src` to shared memory at `dst`
/// (volatile stores).
///
/// # Safety
///
/// `dst..dst+n` must be writable mapped memory that no reference covers,
/// `src..src+n` readable memory; they must not overlap.
unsafe fn store(src: *const u8, dst: *mut u8, n: usize) {
    let head = dst.align_offset(WORD).min(n);
    let mut i = 0;
    // SAFETY: (whole body) offsets stay below `n`; word stores are at
    // `dst + i` with `i >= head`, 8-byte aligned by construction; loads
    // from `src` are unaligned-tolerant.
    unsafe {
        while i < head {
            dst.add(i).write_volatile(src.add(i).read());
            i += 1;
        }
        while i + 4 * WORD <= n {
            let s = src.add(i).cast::<u64>();
            let d = dst.add(i).cast::<u64>();
            let (a, b, c, e) = (
                s.read_unaligned(),
                s.add(1).read_unaligned(),
                s.add(2).read_unaligned(),
                s.add(3).read_unaligned(),
            );
            d.write_volatile(a);
            d.add(1).write_volatile(b);
            d.add(2).write_volatile(c);
            d.add(3).write_volatile(e);
            i += 4 * WORD;
        }
        while i + WORD <= n {
            let w = src.add(i).cast::<u64>().read_unaligned();
            dst.add(i).cast::<u64>().write_volatile(w);
            i += WORD;
        }
        while i < n {
            dst.add(i).write_volatile(src.add(i).read());
            i += 1;
        }
    }
}

/// Sets `n` bytes of shared memory at `dst` to `value` (volatile stores).
///
/// # Safety
///
/// `dst..dst+n` must be writable mapped memory that no reference covers.
unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
    let head = dst.align_offset(WORD).min(n);
    let word = u64::from_ne_bytes([value; WORD]);
    let mut i = 0;
    // SAFETY: (whole body) offsets stay below `n`; word stores are 8-byte
    // aligned by construction.
    unsafe {
        while i < head {
            dst.add(i).write_volatile(value);
            i += 1;
        }
        while i + 4 * WORD <= n {
            let d = dst.add(i).cast::<u64>();
            d.write_volatile(word);
            d.add(1).write_volatile(word);
            d.add(2).write_volatile(word);
            d.add(3).write_volatile(word);
            i += 4 * WORD;
        }
        while i + WORD <= n {
            dst.add(i).cast::<u64>().write_volatile(word);
            i += WORD;
        }
        while i < n {
            dst.add(i).write_volatile(value);
            i += 1;
        }
    }
}

/// A read-only view of `len` shared bytes, for lifetime `'a`.
#[derive(Clone, Copy)]
pub struct VolatileBytes<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a [u8]>,
}

/// A writable view of `len` shared bytes, for lifetime `'a`.
pub struct VolatileBytesMut<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _life: PhantomData<&'a mut [u8]>,
}

// SAFETY: the view only reads, through volatile loads; sending it or
// sharing it between threads is like sharing a `&[u8]` whose bytes may
// change: no reference to them exists, so no thread can observe a torn
// Rust-level invariant.
unsafe impl Send for VolatileBytes<'_> {}
// SAFETY: as above.
unsafe impl Sync for VolatileBytes<'_> {}
// SAFETY: a writable view is unique for its lifetime (made from an
// exclusive borrow), like `&mut [u8]`, so it may move between threads.
unsafe impl Send for VolatileBytesMut<'_> {}
// SAFETY: `&VolatileBytesMut` only allows reads (volatile loads).
unsafe impl Sync for VolatileBytesMut<'_> {}

impl fmt::Debug for VolatileBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolatileBytes")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl fmt::Debug for VolatileBytesMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolatileBytesMut")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> VolatileBytes<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must be readable mapped memory for `'a` that no
    /// `&mut` reference covers during `'a`, and that no thread of this
    /// process writes during `'a` except through volatile stores.
    pub(crate) unsafe fn new(ptr: NonNull<u8>, len: usize) -> VolatileBytes<'a> {
        VolatileBytes {
            ptr,
            len,
            _life: PhantomData,
        }
    }

    /// A view of no bytes.
    pub fn empty() -> VolatileBytes<'a> {
        // SAFETY: zero bytes are never accessed.
        unsafe { VolatileBytes::new(NonNull::dangling(), 0) }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte `i` (a volatile load), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u8> {
        if i >= self.len {
            return None;
        }
        // SAFETY: `i` is in bounds of the view (constructor contract).
        Some(unsafe { self.ptr.as_ptr().add(i).read_volatile() })
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfRange> {
        check(offset, dst.len(), self.len)?;
        // SAFETY: the range is inside the view (checked); `dst` is plain
        // memory exclusively borrowed, which cannot overlap a mapping no
        // reference covers.
        unsafe { load(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies the first `min(self.len(), dst.len())` bytes into `dst`;
    /// returns how many.
    pub fn copy_to_slice(&self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        // SAFETY: `n` bytes are inside both; `dst` is exclusively borrowed
        // plain memory.
        unsafe { load(self.ptr.as_ptr(), dst.as_mut_ptr(), n) };
        n
    }

    /// The bytes, copied into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_to_slice(&mut v);
        v
    }

    /// The sub-view of `range`.
    pub fn subslice(&self, range: Range<usize>) -> Result<VolatileBytes<'a>, OutOfRange> {
        sub_range(&range, self.len)?;
        Ok(VolatileBytes {
            // SAFETY: `range.start <= len`, so the pointer stays inside
            // (or one past) the view.
            ptr: unsafe { self.ptr.add(range.start) },
            len: range.len(),
            _life: PhantomData,
        })
    }

    /// The bytes one by one (volatile loads).
    pub fn iter(&self) -> impl Iterator<Item = u8> + 'a {
        let this = *self;
        (0..self.len).map(move |i| {
            // SAFETY: `i < len`: in bounds of the view.
            unsafe { this.ptr.as_ptr().add(i).read_volatile() }
        })
    }

    /// The bytes as a plain slice.
    ///
    /// # Safety
    ///
    /// The caller asserts that nobody — no other process, no device, no
    /// other view in this process — writes these bytes while the slice
    /// lives. That holds when every party that can reach the memory
    /// follows the window and fence protocol of this library (a read
    /// window is open and every writer has finished and signalled); it
    /// does not hold for memory a peer that is not trusted can write.
    pub unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: in bounds and mapped for `'a` (constructor contract); no
        // writer meanwhile (the caller's assertion).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<'a> VolatileBytesMut<'a> {
    /// A writable view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr..ptr+len` must be writable mapped memory for `'a` that no
    /// reference covers and no other view of this process reaches during
    /// `'a`.
    pub(crate) unsafe fn new(ptr: NonNull<u8>, len: usize) -> VolatileBytesMut<'a> {
        VolatileBytesMut {
            ptr,
            len,
            _life: PhantomData,
        }
    }

    /// A view of no bytes.
    pub fn empty() -> VolatileBytesMut<'a> {
        // SAFETY: zero bytes are never accessed.
        unsafe { VolatileBytesMut::new(NonNull::dangling(), 0) }
    }

    /// A read-only view of the same bytes, for as long as this borrow.
    pub fn as_bytes(&self) -> VolatileBytes<'_> {
        // SAFETY: same bytes, borrowed shared from the unique view: no
        // store through `self` can happen while the result lives.
        unsafe { VolatileBytes::new(self.ptr, self.len) }
    }

    /// A shorter-lived writable view of the same bytes (a reborrow).
    pub fn reborrow(&mut self) -> VolatileBytesMut<'_> {
        // SAFETY: same bytes; `self` is exclusively borrowed meanwhile.
        unsafe { VolatileBytesMut::new(self.ptr, self.len) }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u8> {
        self.as_bytes().get(i)
    }

    /// Sets byte `i` (a volatile store); false past the end.
    pub fn set(&mut self, i: usize, value: u8) -> bool {
        if i >= self.len {
            return false;
        }
        // SAFETY: `i` is in bounds of the writable view.
        unsafe { self.ptr.as_ptr().add(i).write_volatile(value) };
        true
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfRange> {
        self.as_bytes().read_at(offset, dst)
    }

    /// Copies `src` to the bytes from `offset`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), OutOfRange> {
        check(offset, src.len(), self.len)?;
        // SAFETY: the range is inside the writable view (checked); `src` is
        // plain memory, which cannot overlap a mapping no reference covers.
        unsafe { store(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) };
        Ok(())
    }

    /// Copies the first `min(self.len(), dst.len())` bytes into `dst`;
    /// returns how many.
    pub fn copy_to_slice(&self, dst: &mut [u8]) -> usize {
        self.as_bytes().copy_to_slice(dst)
    }

    /// Copies the first `min(self.len(), src.len())` bytes of `src` in;
    /// returns how many.
    pub fn copy_from_slice(&mut self, src: &[u8]) -> usize {
        let n = self.len.min(src.len());
        // SAFETY: `n` bytes are inside both; `src` is plain memory.
        unsafe { store(src.as_ptr(), self.ptr.as_ptr(), n) };
        n
    }

    /// Copies the first `min(self.len(), src.len())` bytes of another
    /// shared view in (through a small bounce buffer); returns how many.
    pub fn copy_from_volatile(&mut self, src: VolatileBytes<'_>) -> usize {
        let n = self.len.min(src.len());
        let mut bounce = [0u8; 4096];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(bounce.len());
            // The sub-views are in range: `done + k <= n`.
            let _ = src.read_at(done, &mut bounce[..k]);
            let _ = self.write_at(done, &bounce[..k]);
            done += k;
        }
        n
    }

    /// Sets every byte to `value`.
    pub fn fill(&mut self, value: u8) {
        // SAFETY: the whole writable view.
        unsafe { fill(self.ptr.as_ptr(), value, self.len) };
    }

    /// The bytes, copied into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    /// The writable sub-view of `range`, consuming this one.
    pub fn into_subslice(self, range: Range<usize>) -> Result<VolatileBytesMut<'a>, OutOfRange> {
        sub_range(&range, self.len)?;
        Ok(VolatileBytesMut {
            // SAFETY: `range.start <= len`: inside (or one past) the view.
            ptr: unsafe { self.ptr.add(range.start) },
            len: range.len(),
            _life: PhantomData,
        })
    }

    /// The bytes as a plain mutable slice, consuming the view.
    ///
    /// # Safety
    ///
    /// The caller asserts that nobody else — no other process, no device —
    /// reads or writes these bytes while the slice lives. That holds when
    /// every party that can reach the memory follows the window and fence
    /// protocol of this library (a write window is open, so devices and
    /// cooperating processes wait for its fence); it does not hold for
    /// memory a peer that is not trusted can reach.
    pub unsafe fn as_mut_slice(self) -> &'a mut [u8] {
        // SAFETY: in bounds, writable and mapped for `'a`, unique in this
        // process (constructor contract); no other party meanwhile (the
        // caller's assertion).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(v: &mut [u8]) -> VolatileBytesMut<'_> {
        // SAFETY: a plain vector stands in for the mapping; it is
        // exclusively borrowed for the view's life.
        unsafe { VolatileBytesMut::new(NonNull::new(v.as_mut_ptr()).unwrap(), v.len()) }
    }

    #[test]
    fn copies_and_fills_match_plain_ones_at_every_alignment() {
        let mut backing = vec![0u8; 300];
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100, 250] {
                backing.iter_mut().for_each(|b| *b = 0);
                let mut v = view(&mut backing[start..start + len]);
                assert_eq!(v.copy_from_slice(&src[..len]), len);
                let mut out = vec![0u8; len];
                assert_eq!(v.copy_to_slice(&mut out), len);
                assert_eq!(out, &src[..len], "start {start} len {len}");
                v.fill(0xee);
                assert!(v.to_vec().iter().all(|&b| b == 0xee));
                assert_eq!(backing[..start].iter().filter(|&&b| b != 0).count(), 0);
                assert_eq!(
                    backing[start + len..].iter().filter(|&&b| b != 0).count(),
                    0,
                    "nothing written past the end"
                );
            }
        }
    }

    #[test]
    fn bounds_are_checked() {
        let mut backing = vec![1u8; 16];
        let mut v = view(&mut backing);
        assert_eq!(v.get(15), Some(1));
        assert_eq!(v.get(16), None);
        assert!(!v.set(16, 0));
        assert!(v.set(3, 9));
        assert_eq!(
            v.write_at(10, &[0; 7]).unwrap_err(),
            OutOfRange {
                offset: 10,
                len: 7,
                available: 16
            }
        );
        assert!(v.read_at(usize::MAX, &mut [0; 2]).is_err());
        let r = v.as_bytes();
        assert_eq!(r.subslice(2..5).unwrap().to_vec(), [1, 9, 1]);
        assert!(r.subslice(5..17).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let bad = 5..2;
        assert!(r.subslice(bad).is_err());
        assert_eq!(r.iter().filter(|&b| b == 9).count(), 1);
        let mut small = [0u8; 4];
        assert_eq!(r.copy_to_slice(&mut small), 4);
        let mut other = vec![5u8; 8];
        let o = view(&mut other);
        assert_eq!(v.copy_from_volatile(o.as_bytes()), 8);
        assert_eq!(v.to_vec()[..9], [5, 5, 5, 5, 5, 5, 5, 5, 1]);
    }
}
