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
//! Bulk copies, fills and compares (`bulk`) move aligned 32-byte lanes
//! (AVX2, detected at run time) or 64-bit words, each a volatile load or
//! store, with narrower accesses at the unaligned ends; they run at the
//! speed of the C library's `memcpy`/`memset`/`memcmp` (see the `bulk`
//! module for the measurements and why the C library itself is not
//! called). Compares are in place ([`VolatileBytes::mismatch_at`],
//! [`VolatileBytes::mismatch_repeated`]): no copy of the shared bytes,
//! each byte loaded once. Copies between two shared views go through a
//! small stack buffer.

use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::ptr::NonNull;

mod bulk;

use bulk::{fill, load, mismatch, store, store_part};

/// Bytes of the stack buffer a repeated pattern is unrolled into.
const UNROLL: usize = 4096;

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

/// The length of the run [`unrolled`] makes of a pattern of `p` bytes
/// (not 0) for a view of `len` bytes.
fn unrolled_len(p: usize, len: usize) -> usize {
    if p > UNROLL / 2 {
        return p;
    }
    (len / 4).div_ceil(p).clamp(1, UNROLL / p) * p
}

/// `pattern` (not empty) repeated into `buf` as many whole times as fit
/// in a quarter of `len` (at least once, at most `UNROLL` bytes), or
/// `pattern` itself where the run is one repeat (among others, a pattern
/// longer than half of `buf`): a run of whole
/// repeats to compare or write with. Only the bytes used are written
/// (no zeroing of the whole buffer first): for a small item the
/// unrolling must not cost more than the item itself.
fn unrolled<'p>(pattern: &'p [u8], len: usize, buf: &'p mut [MaybeUninit<u8>; UNROLL]) -> &'p [u8] {
    let p = pattern.len();
    let reps = unrolled_len(p, len) / p;
    if reps == 1 {
        return pattern;
    }
    for c in buf[..reps * p].chunks_exact_mut(p) {
        for (d, s) in c.iter_mut().zip(pattern) {
            d.write(*s);
        }
    }
    // SAFETY: the first `reps * p` bytes were all written just above;
    // the slice borrows `buf` for `'p` and covers only them.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), reps * p) }
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

/// A view of ordinary memory, for code that works on both (a window's
/// bytes and a plain buffer go through the same volatile loops).
///
/// ```
/// use dmabuf::mapping::VolatileBytes;
/// let v = vec![1u8, 2, 3];
/// assert_eq!(VolatileBytes::from(&v[..]).mismatch_repeated(&[1, 2, 3]), None);
/// ```
impl<'a> From<&'a [u8]> for VolatileBytes<'a> {
    fn from(bytes: &'a [u8]) -> VolatileBytes<'a> {
        // SAFETY: the shared borrow keeps the bytes readable and unwritten
        // (a `[u8]` has no interior mutability) for `'a`.
        unsafe { VolatileBytes::new(NonNull::from(bytes).cast(), bytes.len()) }
    }
}

/// A writable view of ordinary memory (see the `From<&[u8]>` impl of
/// [`VolatileBytes`]).
///
/// ```
/// use dmabuf::mapping::VolatileBytesMut;
/// let mut v = vec![0u8; 5];
/// VolatileBytesMut::from(&mut v[..]).write_repeated(&[7, 8]);
/// assert_eq!(v, [7, 8, 7, 8, 7]);
/// ```
impl<'a> From<&'a mut [u8]> for VolatileBytesMut<'a> {
    fn from(bytes: &'a mut [u8]) -> VolatileBytesMut<'a> {
        let len = bytes.len();
        // SAFETY: the exclusive borrow keeps every other reference and
        // view away from the bytes for `'a`.
        unsafe { VolatileBytesMut::new(NonNull::from(bytes).cast(), len) }
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

    /// Compares the bytes from `offset` with `expected` in place (each
    /// byte one volatile load, nothing copied): the position, counted
    /// from `offset`, of the first byte that differs, or `None` if all
    /// `expected.len()` bytes are equal. The position is that of a byte
    /// that differed when it was loaded, even if another party writes
    /// meanwhile.
    pub fn mismatch_at(&self, offset: usize, expected: &[u8]) -> Result<Option<usize>, OutOfRange> {
        check(offset, expected.len(), self.len)?;
        // SAFETY: the range is inside the view (checked); `expected` is
        // plain memory, only read.
        Ok(unsafe {
            mismatch(
                self.ptr.as_ptr().add(offset),
                expected.as_ptr(),
                expected.len(),
            )
        })
    }

    /// Compares every byte with `pattern` repeated (byte `i` against
    /// `pattern[i % pattern.len()]`) in place, as
    /// [`mismatch_at`](Self::mismatch_at): the offset of the first byte
    /// that differs, or `None`. An empty pattern matches no byte: a view
    /// that is not empty then differs at 0.
    pub fn mismatch_repeated(&self, pattern: &[u8]) -> Option<usize> {
        if pattern.is_empty() {
            return (self.len > 0).then_some(0);
        }
        if pattern.len() >= bulk::PERIOD_MIN {
            // SAFETY: the whole view, readable; `pattern` is plain memory.
            let at = unsafe { bulk::mismatch_repeated(self.ptr.as_ptr(), pattern, self.len) };
            if let Some(at) = at {
                return at;
            }
        }
        let mut buf = [MaybeUninit::uninit(); UNROLL];
        let chunk = unrolled(pattern, self.len, &mut buf);
        let mut off = 0;
        while off < self.len {
            let n = (self.len - off).min(chunk.len());
            // SAFETY: `off + n <= len`: inside the view; `chunk` is plain
            // memory, only read.
            let at = unsafe { mismatch(self.ptr.as_ptr().add(off), chunk.as_ptr(), n) };
            if let Some(at) = at {
                return Some(off + at);
            }
            // `chunk` is whole repeats of `pattern`: the phase is kept.
            off += n;
        }
        None
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

    /// Writes `pattern` repeated over every byte (byte `i` becomes
    /// `pattern[i % pattern.len()]`), in volatile stores; an empty
    /// pattern writes nothing.
    pub fn write_repeated(&mut self, pattern: &[u8]) {
        if pattern.is_empty() {
            return;
        }
        if pattern.len() >= bulk::PERIOD_MIN {
            let chunk = unrolled_len(pattern.len(), self.len);
            // SAFETY: the whole writable view; `pattern` is plain memory,
            // which cannot overlap it.
            if unsafe { bulk::store_repeated(pattern, self.ptr.as_ptr(), self.len, chunk) } {
                return;
            }
        }
        let mut buf = [MaybeUninit::uninit(); UNROLL];
        let chunk = unrolled(pattern, self.len, &mut buf);
        let mut off = 0;
        while off < self.len {
            let n = (self.len - off).min(chunk.len());
            // SAFETY: `off + n <= len`: inside the writable view; `chunk`
            // is plain memory on this stack, which cannot overlap it.
            unsafe { store_part(chunk.as_ptr(), self.ptr.as_ptr().add(off), n, self.len) };
            // `chunk` is whole repeats of `pattern`: the phase is kept.
            off += n;
        }
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
    fn views_of_plain_slices_read_and_write_those_slices() {
        let mut v = vec![0u8; 1000];
        VolatileBytesMut::from(&mut v[3..]).write_repeated(&[1, 2, 3]);
        assert_eq!(&v[..6], &[0, 0, 0, 1, 2, 3]);
        assert_eq!(v[999], [1, 2, 3][(999 - 3) % 3]);
        let r = VolatileBytes::from(&v[3..]);
        assert_eq!(r.len(), 997);
        assert_eq!(r.mismatch_repeated(&[1, 2, 3]), None);
        v[500] ^= 0xff;
        assert_eq!(
            VolatileBytes::from(&v[3..]).mismatch_repeated(&[1, 2, 3]),
            Some(497)
        );
        assert!(VolatileBytes::from(&v[..0]).is_empty());
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

    /// The bulk paths this CPU can run: (name, load, store, fill, mismatch).
    #[allow(clippy::type_complexity)]
    fn paths() -> Vec<(
        &'static str,
        unsafe fn(*const u8, *mut u8, usize),
        unsafe fn(*const u8, *mut u8, usize),
        unsafe fn(*mut u8, u8, usize),
        unsafe fn(*const u8, *const u8, usize) -> Option<usize>,
    )> {
        let mut v: Vec<(&'static str, _, _, _, _)> = vec![
            (
                "dispatch",
                bulk::load as _,
                bulk::store as _,
                bulk::fill as _,
                bulk::mismatch as _,
            ),
            (
                "words",
                bulk::words::load as _,
                bulk::words::store as _,
                bulk::words::fill as _,
                bulk::words::mismatch as _,
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push((
                "avx2",
                bulk::avx2::load as _,
                bulk::avx2::store as _,
                bulk::avx2::fill as _,
                bulk::avx2::mismatch as _,
            ));
        }
        #[cfg(target_arch = "x86_64")]
        v.push((
            "rep movsb stores (the rest: words)",
            bulk::words::load as _,
            bulk::strings::store as _,
            bulk::words::fill as _,
            bulk::words::mismatch as _,
        ));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            v.push((
                "avx512 (loads and compares: avx2)",
                bulk::avx2::load as _,
                bulk::avx512::store as _,
                bulk::avx512::fill as _,
                bulk::avx2::mismatch as _,
            ));
        }
        v
    }

    const LENS: std::ops::RangeInclusive<usize> = 0..=130;

    fn lens() -> impl Iterator<Item = usize> {
        LENS.chain([
            255, 256, 257, 319, 320, 321, 383, 1000, 2047, 2048, 2049, 4099,
        ])
    }

    #[test]
    fn every_bulk_path_copies_and_fills_exactly_its_range() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8 | 1).collect();
        let mut backing = vec![0u8; 5000 + 128];
        let mut out = vec![0u8; 5000 + 128];
        for (name, load, store, fill, _) in paths() {
            for start in 0..40 {
                for len in lens() {
                    backing.iter_mut().for_each(|b| *b = 0);
                    let d = backing[start..].as_mut_ptr();
                    // SAFETY: `start + len` is inside `backing`, `src`
                    // has 5000 bytes; distinct vectors.
                    unsafe { store(src.as_ptr(), d, len) };
                    assert_eq!(
                        backing[start..start + len],
                        src[..len],
                        "{name} store {start}+{len}"
                    );
                    assert!(
                        backing[..start].iter().all(|&b| b == 0),
                        "{name} store before"
                    );
                    assert!(
                        backing[start + len..].iter().all(|&b| b == 0),
                        "{name} store after"
                    );
                    out.iter_mut().for_each(|b| *b = 0);
                    // Loads into an unaligned destination too.
                    let o = out[start / 2..].as_mut_ptr();
                    // SAFETY: as above.
                    unsafe { load(backing[start..].as_ptr(), o, len) };
                    assert_eq!(
                        out[start / 2..start / 2 + len],
                        src[..len],
                        "{name} load {start}+{len}"
                    );
                    assert!(
                        out[start / 2 + len..].iter().all(|&b| b == 0),
                        "{name} load after"
                    );
                    // SAFETY: as above.
                    unsafe { fill(backing[start..].as_mut_ptr(), 0xee, len) };
                    assert!(backing[start..start + len].iter().all(|&b| b == 0xee));
                    assert!(
                        backing[..start].iter().all(|&b| b == 0),
                        "{name} fill before"
                    );
                    assert!(
                        backing[start + len..].iter().all(|&b| b == 0),
                        "{name} fill after"
                    );
                }
            }
        }
    }

    #[test]
    fn every_bulk_path_reports_the_first_mismatch() {
        let expected: Vec<u8> = (0..5000u32).map(|i| (i * 13 + 5) as u8).collect();
        let mut backing = vec![0u8; 5000 + 64];
        for (name, _, _, _, mismatch) in paths() {
            for start in 0..40 {
                for len in lens() {
                    let region = start..start + len;
                    backing[region.clone()].copy_from_slice(&expected[..len]);
                    // Bytes just outside the range differ: never looked at.
                    backing[..start].iter_mut().for_each(|b| *b = 0x5a);
                    backing[start + len] = expected[len] ^ 0xff;
                    let at = |b: &[u8]| {
                        // SAFETY: `start + len` is inside `b`, `expected`
                        // has 5000 bytes.
                        unsafe { mismatch(b[start..].as_ptr(), expected.as_ptr(), len) }
                    };
                    assert_eq!(at(&backing), None, "{name} {start}+{len} equal");
                    let positions: Vec<usize> = if len <= 130 {
                        (0..len).collect()
                    } else {
                        vec![0, 31, 32, 127, 128, len / 2, len - 1]
                    };
                    for p in positions {
                        // One flipped bit, then a second difference later.
                        backing[start + p] ^= 0x10;
                        if p + 3 < len {
                            backing[start + p + 3] ^= 0x01;
                        }
                        assert_eq!(at(&backing), Some(p), "{name} {start}+{len} at {p}");
                        backing[start + p] ^= 0x10;
                        if p + 3 < len {
                            backing[start + p + 3] ^= 0x01;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn in_place_compares_match_the_views_bytes() {
        let mut backing: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        let plain = backing.clone();
        let mut v = view(&mut backing);
        let r = v.as_bytes();
        assert_eq!(r.mismatch_at(0, &plain), Ok(None));
        assert_eq!(r.mismatch_at(100, &plain[100..300]), Ok(None));
        assert_eq!(r.mismatch_at(101, &plain[100..300]), Ok(Some(0)));
        assert_eq!(r.mismatch_at(9000, &[]), Ok(None));
        assert_eq!(
            r.mismatch_at(8999, &[0, 0]).unwrap_err(),
            OutOfRange {
                offset: 8999,
                len: 2,
                available: 9000
            }
        );
        let cycle: Vec<u8> = (0..251u8).collect();
        assert_eq!(r.mismatch_repeated(&cycle), None);
        assert_eq!(r.mismatch_repeated(&cycle[..250]), Some(250));
        assert_eq!(r.mismatch_repeated(&[]), Some(0));
        assert_eq!(VolatileBytes::empty().mismatch_repeated(&[]), None);
        assert_eq!(VolatileBytes::empty().mismatch_repeated(&[1]), None);
        // A difference past the first unrolled chunk (4096 bytes).
        let b = v.get(7777).unwrap();
        assert!(v.set(7777, b ^ 0x80));
        assert_eq!(v.as_bytes().mismatch_repeated(&cycle), Some(7777));
        assert_eq!(v.as_bytes().mismatch_at(0, &plain), Ok(Some(7777)));
    }

    #[test]
    fn repeated_patterns_keep_their_phase_at_any_length() {
        // Pattern lengths: one byte, odd, the CLI's 256-byte block, longer
        // than half the unroll buffer, longer than the buffer.
        for plen in [1usize, 3, 256, 251 * 16, 5000] {
            let pattern: Vec<u8> = (0..plen).map(|i| (i * 31 + 1) as u8).collect();
            // (From 1 MiB, writes go as vector stores rather than string
            // stores: both sides of that line.)
            for len in [
                0usize,
                1,
                2,
                255,
                256,
                257,
                4095,
                4096,
                4097,
                12_345,
                (1 << 20) - 1,
                (1 << 20) + 5,
            ] {
                let mut backing = vec![0u8; len + 2];
                let mut v = view(&mut backing[1..1 + len]);
                v.write_repeated(&pattern);
                let want: Vec<u8> = (0..len).map(|i| pattern[i % plen]).collect();
                assert_eq!(v.to_vec(), want, "pattern {plen}, len {len}");
                assert_eq!(v.as_bytes().mismatch_repeated(&pattern), None);
                if len > 0 {
                    let p = len * 2 / 3;
                    let b = v.get(p).unwrap();
                    assert!(v.set(p, b ^ 1));
                    assert_eq!(v.as_bytes().mismatch_repeated(&pattern), Some(p));
                }
                v.write_repeated(&[]);
                assert_eq!(backing[0], 0, "nothing before");
                assert_eq!(backing[len + 1], 0, "nothing after");
            }
        }
    }

    /// The ways a repeated pattern is compared straight from its period
    /// (no unrolled copy) that this CPU can run: (name, store, mismatch);
    /// a `None` store is the views' own choice.
    #[allow(clippy::type_complexity)]
    fn period_paths() -> Vec<(
        &'static str,
        Option<unsafe fn(&[u8], *mut u8, usize)>,
        unsafe fn(*const u8, &[u8], usize) -> Option<usize>,
    )> {
        /// The views' own choice of compare.
        unsafe fn by_view(shared: *const u8, period: &[u8], n: usize) -> Option<usize> {
            // SAFETY: the caller's range, readable for the call.
            unsafe { VolatileBytes::new(NonNull::new(shared.cast_mut()).unwrap(), n) }
                .mismatch_repeated(period)
        }
        let mut v: Vec<(&'static str, Option<unsafe fn(&[u8], *mut u8, usize)>, _)> =
            vec![("views", None, by_view as _)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push((
                "avx2",
                Some(bulk::avx2::store_repeated as _),
                bulk::avx2::mismatch_repeated as _,
            ));
        }
        v
    }

    #[test]
    fn patterns_compared_and_written_by_period_keep_their_phase() {
        // Periods held in registers (whole lanes dividing 256 bytes) and
        // periods that are not; starts on a 64-byte boundary and off it;
        // lengths around a lane, a 256-byte turn, and the choice between
        // string and vector stores (1 MiB).
        let lens = [
            0usize,
            1,
            31,
            32,
            33,
            255,
            256,
            257,
            300,
            511,
            512,
            513,
            4096,
            4097,
            12_345,
            (1 << 20) + 37,
        ];
        for plen in [32usize, 64, 96, 128, 160, 200, 256, 512] {
            let pattern: Vec<u8> = (0..plen).map(|i| (i * 31 + 7) as u8).collect();
            for (name, store, mismatch) in period_paths() {
                for off in [0usize, 1, 8, 31, 32, 33, 64] {
                    for len in lens {
                        let mut backing = vec![0u8; len + off + 128];
                        let start = backing.as_ptr().align_offset(64) + off;
                        let want: Vec<u8> = (0..len).map(|i| pattern[i % plen]).collect();
                        let mut v = view(&mut backing[start..start + len]);
                        match store {
                            // SAFETY: the view's own range, exclusively
                            // borrowed; `pattern` is another vector.
                            Some(f) => unsafe { f(&pattern, v.ptr.as_ptr(), len) },
                            None => v.write_repeated(&pattern),
                        }
                        let what = format!("{name}: period {plen}, start {off}, len {len}");
                        assert_eq!(v.to_vec(), want, "{what}: written");
                        let at = |v: &VolatileBytesMut<'_>| {
                            // SAFETY: the view's own range.
                            unsafe { mismatch(v.ptr.as_ptr(), &pattern, len) }
                        };
                        assert_eq!(at(&v), None, "{what}: equal");
                        let mut positions =
                            vec![0, 31, 32, 255, 256, 300, len / 2, len.saturating_sub(1)];
                        positions.retain(|&p| p < len);
                        for p in positions {
                            // One flipped bit, then a second difference.
                            let b = v.get(p).unwrap();
                            assert!(v.set(p, b ^ 0x10));
                            let later = (p + 40 < len).then(|| p + 40);
                            if let Some(q) = later {
                                let c = v.get(q).unwrap();
                                assert!(v.set(q, c ^ 1));
                            }
                            assert_eq!(at(&v), Some(p), "{what}: differs at {p}");
                            assert!(v.set(p, b));
                            if let Some(q) = later {
                                let c = v.get(q).unwrap();
                                assert!(v.set(q, c ^ 1));
                            }
                        }
                        assert!(backing[..start].iter().all(|&b| b == 0), "{what}: before");
                        assert!(
                            backing[start + len..].iter().all(|&b| b == 0),
                            "{what}: after"
                        );
                    }
                }
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
