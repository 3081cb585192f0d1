//! The bulk operations under [`super::VolatileBytes`] and
//! [`super::VolatileBytesMut`]: copy in, copy out, fill, and compare, on
//! raw pointers into memory another party may write at any time.
//!
//! # DOC: bulk volatile access
//!
//! * **Every access to the shared side is a volatile load or store**, and
//!   each shared byte is accessed exactly once per operation: no `&[u8]`
//!   over shared bytes, no second read of a byte that may have changed
//!   since the first. A compare reports the first differing position from
//!   the values it loaded (vector lanes kept in registers), not by reading
//!   the bytes again, so a peer writing meanwhile cannot make it report a
//!   position whose byte matched, or "equal" for bytes it saw differ.
//! * **Wide accesses.** On x86-64 with AVX2 (detected at run time, once;
//!   the std detection is cached), the shared side is reached in aligned
//!   32-byte volatile loads and stores of `__m256i`, four per loop turn,
//!   with the head (up to the next 32-byte boundary) and the tail done in
//!   the narrow way. **Stores go wider still**, because in a stream the
//!   producer writes lines its consumer's core has just read, and how
//!   fast that goes depends on how a line is written:
//!   - a store of 2 KiB or more, in a write of less than 1 MiB, is one
//!     `rep movsb` on CPUs with ERMS (see [`strings`]), as the C
//!     library's `memcpy` does for copies of that size;
//!   - other stores and fills of 320 bytes or more are aligned 64-byte
//!     stores on CPUs with AVX-512F, a whole cache line each (see
//!     [`avx512`]). Measured on this project's machine (AMD EPYC, 2
//!     shared cores, AVX-512), a bare two-process ring in C writing
//!     64 KiB, 256 KiB and 1 MiB items with 64-byte stores ran at
//!     1.2–1.3× (median of six alternating runs each: 32.2 against 24.7,
//!     38.1 against 28.4, 53.5 against 45.1 GiB/s) the same ring with
//!     32-byte stores.
//!
//!   Both are inline assembly.
//! * **Repeated patterns** (`write_repeated`, `mismatch_repeated` of the
//!   views) of 128 bytes or more are written and compared straight from
//!   the caller's copy of one period, not unrolled into a longer run on
//!   the stack first ([`mismatch_repeated`], [`store_repeated`]: on the
//!   AVX2 path only, and stores only where they would be 32-byte lanes
//!   anyway). Where the period is
//!   a whole number of lanes dividing 256 bytes (32, 64, 128 or 256) and
//!   the shared side starts on a lane, the period is held in eight
//!   registers: a compare then loads only the shared bytes. Measured on
//!   this project's machine (AMD EPYC, 2 shared cores, AVX2, no
//!   AVX-512), a throw-away loop comparing 4 KiB windows with a 256-byte
//!   pattern, three rounds: 35–44 ns per 4 KiB in cache, against 75–82
//!   for the unrolled compare and 58–63 for sixteen 256-byte `memcmp`s.
//!
//!   Elsewhere (other CPUs, or x86-64 without AVX2), in
//!   aligned 8-byte volatile accesses of `u64`, four per loop turn, with
//!   byte accesses for the unaligned head and tail. The plain side
//!   (caller's slice) is read or written unaligned. No operation promises
//!   atomicity of any width: a concurrent writer can be seen torn at any
//!   byte boundary, as with `memcpy`.
//! * **Why not the C library.** vm-memory's `copy_slice`
//!   (`src/volatile_memory.rs`) copies up to 8 bytes with aligned
//!   volatile accesses and anything longer with
//!   `std::ptr::copy_nonoverlapping`, i.e. `memcpy`; crosvm's
//!   `base::VolatileSlice` fills with `std::ptr::write_bytes` (`memset`,
//!   "bytes accessed in an arbitrary order"), copies between slices with
//!   `std::ptr::copy` and compares with `libc::memcmp`, while its typed
//!   `copy_to`/`copy_from` are element-wise `read_volatile`/
//!   `write_volatile`. Calling `memcpy`/`memset`/`memcmp` on raw pointers
//!   is as fast as it gets, but it is not opaque: LLVM knows those names
//!   and turns such calls into its own non-volatile `llvm.memcpy`/
//!   `llvm.memset`/`bcmp` forms, which it may split, merge or elide under
//!   the assumption that nobody else writes the bytes. `memcmp` also
//!   says only "different", so a position would need a second read that
//!   may see other bytes. Measured on this project's machine (AMD EPYC,
//!   2 shared cores, AVX2), one run of a throw-away side-by-side
//!   micro-benchmark, 1 MiB in cache: the 32-byte volatile loops copied
//!   at 45–47 GiB/s against glibc `memcpy`'s 48, compared at 45 against
//!   `memcmp`'s 45, and wrote a repeated 256-byte block at 113 against 106
//!   for 256-byte `memcpy` calls, where the 8-byte loops reached 30–41
//!   GiB/s (35 against 114 at 4 KiB). The `volatile_copy` example (fill,
//!   copy in, compare, copy out through a window, against the same on a
//!   plain slice of the same mapping, interleaved; two runs) puts the
//!   volatile path at 1.11–1.15× the plain time at 64 KiB, 1.06–1.07× at
//!   1 MiB and 1.00–1.01× at 16 MiB (medians). So the wide volatile loops
//!   keep the volatile contract at about the C library's speed, and this
//!   module uses them.
//!
//! Every function here takes raw pointers and a length and is `unsafe`:
//! the views check ranges and call them.

/// Bytes of one wide access.
#[cfg(target_arch = "x86_64")]
const LANE: usize = 32;
/// Below this many bytes the wide path is not worth its set-up.
#[cfg(target_arch = "x86_64")]
const WIDE_MIN: usize = 2 * LANE;
const WORD: usize = std::mem::size_of::<u64>();

/// Whether the wide (AVX2) path may run on this CPU.
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Whether the widest stores (AVX-512, whole cache lines) may run on this
/// CPU (and its kernel saves the registers: the std detection checks).
#[cfg(target_arch = "x86_64")]
fn line_wide() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && wide()
}

/// Copies `n` bytes from shared memory at `src` (volatile loads) to plain
/// memory at `dst`.
///
/// # Safety
///
/// `src..src+n` must be readable mapped memory and `dst..dst+n` writable
/// memory that nothing else accesses during the call; they must not
/// overlap.
pub(super) unsafe fn load(src: *const u8, dst: *mut u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= WIDE_MIN && wide() {
        // SAFETY: AVX2 is present (checked); the caller's contract.
        return unsafe { avx2::load(src, dst, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { words::load(src, dst, n) }
}

/// Copies `n` bytes from plain memory at `src` to shared memory at `dst`
/// (volatile stores).
///
/// # Safety
///
/// `dst..dst+n` must be writable mapped memory that no reference covers,
/// `src..src+n` readable memory; they must not overlap.
pub(super) unsafe fn store(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's contract.
    unsafe { store_part(src, dst, n, n) }
}

/// [`store`] of `n` bytes that are part of one write of `whole` bytes
/// (a repeated pattern written chunk by chunk): the write's size picks
/// the way to store (see [`strings`]).
///
/// # Safety
///
/// As [`store`].
pub(super) unsafe fn store_part(src: *const u8, dst: *mut u8, n: usize, whole: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= strings::MIN && whole < strings::MAX_WHOLE && strings::fast() {
        // SAFETY: the caller's contract.
        return unsafe { strings::store(src, dst, n) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = whole;
    #[cfg(target_arch = "x86_64")]
    if n >= avx512::MIN && line_wide() {
        // SAFETY: AVX-512F and AVX2 are present (checked); the caller's
        // contract.
        return unsafe { avx512::store(src, dst, n) };
    }
    #[cfg(target_arch = "x86_64")]
    if n >= WIDE_MIN && wide() {
        // SAFETY: AVX2 is present (checked); the caller's contract.
        return unsafe { avx2::store(src, dst, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { words::store(src, dst, n) }
}

/// Sets `n` bytes of shared memory at `dst` to `value` (volatile stores).
///
/// # Safety
///
/// `dst..dst+n` must be writable mapped memory that no reference covers.
pub(super) unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if n >= avx512::MIN && line_wide() {
        // SAFETY: AVX-512F and AVX2 are present (checked); the caller's
        // contract.
        return unsafe { avx512::fill(dst, value, n) };
    }
    #[cfg(target_arch = "x86_64")]
    if n >= WIDE_MIN && wide() {
        // SAFETY: AVX2 is present (checked); the caller's contract.
        return unsafe { avx2::fill(dst, value, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { words::fill(dst, value, n) }
}

/// The offset of the first of `n` bytes where shared memory at `shared`
/// (volatile loads) differs from plain memory at `plain`, if any.
///
/// # Safety
///
/// `shared..shared+n` must be readable mapped memory, `plain..plain+n`
/// readable memory.
pub(super) unsafe fn mismatch(shared: *const u8, plain: *const u8, n: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if n >= WIDE_MIN && wide() {
        // SAFETY: AVX2 is present (checked); the caller's contract.
        return unsafe { avx2::mismatch(shared, plain, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { words::mismatch(shared, plain, n) }
}

/// Patterns at least this long are compared and written straight from
/// the caller's copy on the wide path, one period after the other
/// ([`mismatch_repeated`], [`store_repeated`]), not unrolled into a
/// longer run first: a period is then long enough for the wide loops,
/// and the unrolling (a copy on the stack the size of a quarter of the
/// item, up to 4 KiB) would cost a small item more than it saves.
pub(super) const PERIOD_MIN: usize = 128;

/// The offset of the first of `n` bytes of shared memory at `shared`
/// (volatile loads) that differs from `period` repeated (byte `i`
/// against `period[i % period.len()]`), if any, compared straight
/// against `period` on the wide path: `Some(answer)` there, `None`
/// (nothing read) elsewhere, where the caller unrolls the pattern and
/// compares with [`mismatch`].
///
/// # Safety
///
/// `shared..shared+n` must be readable mapped memory.
pub(super) unsafe fn mismatch_repeated(
    shared: *const u8,
    period: &[u8],
    n: usize,
) -> Option<Option<usize>> {
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: AVX2 is present (checked); the caller's contract.
        return Some(unsafe { avx2::mismatch_repeated(shared, period, n) });
    }
    let _ = (shared, period, n);
    None
}

/// Writes `period` repeated over the `n` bytes at `dst` (volatile
/// stores) straight from `period`, if that is how this write would be
/// stored anyway: in 32-byte lanes, because the run of repeats the caller
/// would unroll (`chunk` bytes) is too short for string stores and the
/// CPU has no line-wide stores (see [`store_part`]). Returns `false`,
/// having written nothing, where another way of storing wins: the caller
/// then unrolls.
///
/// # Safety
///
/// As [`store`] for `dst..dst+n`.
pub(super) unsafe fn store_repeated(period: &[u8], dst: *mut u8, n: usize, chunk: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let strings = chunk >= strings::MIN && n < strings::MAX_WHOLE && strings::fast();
        let lines = chunk >= avx512::MIN && line_wide();
        if period.is_empty() || strings || lines || !wide() {
            return false;
        }
        // SAFETY: AVX2 is present (checked); the caller's contract.
        unsafe { avx2::store_repeated(period, dst, n) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (period, dst, n, chunk);
        false
    }
}

/// The narrow path: aligned `u64` volatile accesses, bytes at the ends.
pub(super) mod words {
    use super::WORD;

    /// [`super::load`] in `u64` words.
    ///
    /// # Safety
    ///
    /// As [`super::load`].
    pub(in crate::sys::volatile) unsafe fn load(src: *const u8, dst: *mut u8, n: usize) {
        let head = src.align_offset(WORD).min(n);
        let mut i = 0;
        // SAFETY: (whole body) every offset stays below `n` (loop bounds),
        // so each access is inside the ranges the caller vouches for; word
        // loads are at `src + i` with `i >= head`, 8-byte aligned by
        // construction; stores to `dst` are unaligned-tolerant.
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

    /// [`super::store`] in `u64` words.
    ///
    /// # Safety
    ///
    /// As [`super::store`].
    pub(in crate::sys::volatile) unsafe fn store(src: *const u8, dst: *mut u8, n: usize) {
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

    /// [`super::fill`] in `u64` words.
    ///
    /// # Safety
    ///
    /// As [`super::fill`].
    pub(in crate::sys::volatile) unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
        let head = dst.align_offset(WORD).min(n);
        let word = u64::from_ne_bytes([value; WORD]);
        let mut i = 0;
        // SAFETY: (whole body) offsets stay below `n`; word stores are
        // 8-byte aligned by construction.
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

    /// The first differing byte within a word that differs: `x` is the
    /// XOR of the two words as loaded (native order), not zero.
    fn first_in_word(x: u64) -> usize {
        // `to_le` puts the byte at the lowest address in the lowest bits
        // on either byte order.
        (x.to_le().trailing_zeros() / 8) as usize
    }

    /// [`super::mismatch`] in `u64` words.
    ///
    /// # Safety
    ///
    /// As [`super::mismatch`].
    pub(in crate::sys::volatile) unsafe fn mismatch(
        shared: *const u8,
        plain: *const u8,
        n: usize,
    ) -> Option<usize> {
        let head = shared.align_offset(WORD).min(n);
        let mut i = 0;
        // SAFETY: (whole body) offsets stay below `n`; word loads from
        // `shared` are 8-byte aligned by construction; loads from `plain`
        // are unaligned-tolerant. Each shared byte is loaded once.
        unsafe {
            while i < head {
                if shared.add(i).read_volatile() != plain.add(i).read() {
                    return Some(i);
                }
                i += 1;
            }
            while i + 4 * WORD <= n {
                let s = shared.add(i).cast::<u64>();
                let p = plain.add(i).cast::<u64>();
                let x = [
                    s.read_volatile() ^ p.read_unaligned(),
                    s.add(1).read_volatile() ^ p.add(1).read_unaligned(),
                    s.add(2).read_volatile() ^ p.add(2).read_unaligned(),
                    s.add(3).read_volatile() ^ p.add(3).read_unaligned(),
                ];
                if x[0] | x[1] | x[2] | x[3] != 0 {
                    let k = x.iter().position(|&w| w != 0).unwrap_or(0);
                    return Some(i + k * WORD + first_in_word(x[k]));
                }
                i += 4 * WORD;
            }
            while i + WORD <= n {
                let x = shared.add(i).cast::<u64>().read_volatile()
                    ^ plain.add(i).cast::<u64>().read_unaligned();
                if x != 0 {
                    return Some(i + first_in_word(x));
                }
                i += WORD;
            }
            while i < n {
                if shared.add(i).read_volatile() != plain.add(i).read() {
                    return Some(i);
                }
                i += 1;
            }
        }
        None
    }
}

/// The wide path: aligned 32-byte AVX2 volatile accesses.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
        _mm256_setzero_si256, _mm256_testz_si256, _mm256_xor_si256,
    };

    use super::{words, LANE};

    /// Bytes up to the next 32-byte boundary of `p`, at most `n`.
    fn head(p: *const u8, n: usize) -> usize {
        p.align_offset(LANE).min(n)
    }

    /// [`super::load`] in 32-byte lanes.
    ///
    /// # Safety
    ///
    /// As [`super::load`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(in crate::sys::volatile) unsafe fn load(src: *const u8, dst: *mut u8, n: usize) {
        let h = head(src, n);
        // SAFETY: (whole body) the head and the tail are inside the
        // caller's ranges and handed to the narrow path; lane loads are
        // at `src + i` with `i >= h`, 32-byte aligned by construction, and
        // `i + LANE * k <= n` by the loop bounds; stores to `dst` are
        // unaligned-tolerant.
        unsafe {
            if h > 0 {
                words::load(src, dst, h);
            }
            let mut i = h;
            while i + 4 * LANE <= n {
                let s = src.add(i).cast::<__m256i>();
                let d = dst.add(i).cast::<__m256i>();
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
                i += 4 * LANE;
            }
            while i + LANE <= n {
                let v = src.add(i).cast::<__m256i>().read_volatile();
                dst.add(i).cast::<__m256i>().write_unaligned(v);
                i += LANE;
            }
            if i < n {
                words::load(src.add(i), dst.add(i), n - i);
            }
        }
    }

    /// [`super::store`] in 32-byte lanes.
    ///
    /// # Safety
    ///
    /// As [`super::store`], and the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::sys::volatile) unsafe fn store(src: *const u8, dst: *mut u8, n: usize) {
        let h = head(dst, n);
        // SAFETY: (whole body) as in `load`, with the aligned volatile
        // side being `dst` and the unaligned plain side `src`.
        unsafe {
            if h > 0 {
                words::store(src, dst, h);
            }
            let mut i = h;
            while i + 4 * LANE <= n {
                let s = src.add(i).cast::<__m256i>();
                let d = dst.add(i).cast::<__m256i>();
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
                i += 4 * LANE;
            }
            while i + LANE <= n {
                let v = src.add(i).cast::<__m256i>().read_unaligned();
                dst.add(i).cast::<__m256i>().write_volatile(v);
                i += LANE;
            }
            if i < n {
                words::store(src.add(i), dst.add(i), n - i);
            }
        }
    }

    /// [`super::fill`] in 32-byte lanes.
    ///
    /// # Safety
    ///
    /// As [`super::fill`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(in crate::sys::volatile) unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
        let h = head(dst, n);
        // SAFETY: (whole body) as in `store`; the source is a register.
        unsafe {
            if h > 0 {
                words::fill(dst, value, h);
            }
            let v = _mm256_set1_epi8(value as i8);
            let mut i = h;
            while i + 4 * LANE <= n {
                let d = dst.add(i).cast::<__m256i>();
                d.write_volatile(v);
                d.add(1).write_volatile(v);
                d.add(2).write_volatile(v);
                d.add(3).write_volatile(v);
                i += 4 * LANE;
            }
            while i + LANE <= n {
                dst.add(i).cast::<__m256i>().write_volatile(v);
                i += LANE;
            }
            if i < n {
                words::fill(dst.add(i), value, n - i);
            }
        }
    }

    /// Bytes of one turn of the loops of a repeated pattern held in
    /// registers: eight lanes.
    const PERIOD_TURN: usize = 8 * LANE;

    /// The eight lanes of one [`PERIOD_TURN`] of `period` repeated, if
    /// the pattern can be held in registers that way: its length divides
    /// the turn and is a whole number of lanes.
    #[target_feature(enable = "avx2")]
    unsafe fn period_lanes(period: &[u8]) -> Option<[__m256i; 8]> {
        let p = period.len();
        if p == 0 || p % LANE != 0 || PERIOD_TURN % p != 0 {
            return None;
        }
        let per = p / LANE;
        // SAFETY: lane `j % per` starts at `LANE * (j % per) < p` and ends
        // at most at `p`: inside `period`.
        Some(std::array::from_fn(|j| unsafe {
            period
                .as_ptr()
                .add(LANE * (j % per))
                .cast::<__m256i>()
                .read_unaligned()
        }))
    }

    /// `period` as seen from `by` bytes in (byte `k` is `period[(by + k)
    /// % p]`), in the first `p` bytes; for a pattern that
    /// [`period_lanes`] takes (`p` divides [`PERIOD_TURN`]).
    fn rotated(period: &[u8], by: usize) -> [u8; PERIOD_TURN] {
        let p = period.len();
        let by = by % p;
        let mut r = [0u8; PERIOD_TURN];
        // Two copies, not a division per byte.
        r[..p - by].copy_from_slice(&period[by..]);
        r[p - by..p].copy_from_slice(&period[..by]);
        r
    }

    /// [`super::mismatch_repeated`] in 32-byte lanes. Where the pattern
    /// is a whole number of lanes dividing 256 bytes, it is held in
    /// registers and each shared lane compared with its register (eight
    /// per turn, nothing loaded from the plain side), from the first lane
    /// boundary of `shared` on (the bytes before it, and any other
    /// pattern, by [`mismatch`] against `period`, one period after the
    /// other, inlined here).
    ///
    /// # Safety
    ///
    /// As [`super::mismatch_repeated`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(in crate::sys::volatile) unsafe fn mismatch_repeated(
        shared: *const u8,
        period: &[u8],
        n: usize,
    ) -> Option<usize> {
        if period.is_empty() {
            return (n > 0).then_some(0);
        }
        // SAFETY: (whole body) lane loads are at `shared + i` with `i` a
        // multiple of `LANE` from an aligned `shared`, and `i + LANE * k
        // <= n` by the loop bounds; each shared lane is loaded once and a
        // difference located in the XOR already computed; the tail is
        // handed to the narrow path against the plain pattern at the same
        // phase, which has at least as many bytes left.
        unsafe {
            let h = head(shared, n);
            let lanes = match period_lanes(period) {
                Some(l) if h == 0 => l,
                // Not lane-aligned: the bytes up to the first lane
                // boundary against the pattern's start, then the rest
                // aligned, against the pattern as seen from there.
                Some(_) if h < n => {
                    if let Some(at) = mismatch(shared, period.as_ptr(), h) {
                        return Some(at);
                    }
                    let r = rotated(period, h);
                    return mismatch_repeated(shared.add(h), &r[..period.len()], n - h)
                        .map(|at| at + h);
                }
                _ => {
                    let mut off = 0;
                    while off < n {
                        let k = (n - off).min(period.len());
                        if let Some(at) = mismatch(shared.add(off), period.as_ptr(), k) {
                            return Some(off + at);
                        }
                        off += k;
                    }
                    return None;
                }
            };
            let mut i = 0;
            while i + PERIOD_TURN <= n {
                let s = shared.add(i).cast::<__m256i>();
                let x: [__m256i; 8] =
                    std::array::from_fn(|j| _mm256_xor_si256(s.add(j).read_volatile(), lanes[j]));
                let any = _mm256_or_si256(
                    _mm256_or_si256(_mm256_or_si256(x[0], x[1]), _mm256_or_si256(x[2], x[3])),
                    _mm256_or_si256(_mm256_or_si256(x[4], x[5]), _mm256_or_si256(x[6], x[7])),
                );
                if _mm256_testz_si256(any, any) == 0 {
                    for (k, &lane) in x.iter().enumerate() {
                        if let Some(j) = first_in_lane(lane) {
                            return Some(i + k * LANE + j);
                        }
                    }
                }
                i += PERIOD_TURN;
            }
            while i + LANE <= n {
                let x = _mm256_xor_si256(
                    shared.add(i).cast::<__m256i>().read_volatile(),
                    lanes[(i % PERIOD_TURN) / LANE],
                );
                if let Some(j) = first_in_lane(x) {
                    return Some(i + j);
                }
                i += LANE;
            }
            if i == n {
                return None;
            }
            let phase = i % period.len();
            words::mismatch(shared.add(i), period.as_ptr().add(phase), n - i).map(|at| i + at)
        }
    }

    /// [`super::store_repeated`]'s stores in 32-byte lanes: where the
    /// pattern is a whole number of lanes dividing 256 bytes, from
    /// registers holding it (eight stores per turn), from the first lane
    /// boundary of `dst` on (the bytes before it, and any other pattern,
    /// by [`store`] of `period`, one period after the other, inlined
    /// here).
    ///
    /// # Safety
    ///
    /// As [`super::store`] for `dst..dst+n`, and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(in crate::sys::volatile) unsafe fn store_repeated(period: &[u8], dst: *mut u8, n: usize) {
        // SAFETY: (whole body) as in `mismatch_repeated`, with the
        // aligned volatile side being `dst`.
        unsafe {
            let h = head(dst, n);
            let lanes = match period_lanes(period) {
                Some(l) if h == 0 => l,
                // Not lane-aligned: as in `mismatch_repeated`.
                Some(_) if h < n => {
                    store(period.as_ptr(), dst, h);
                    let r = rotated(period, h);
                    store_repeated(&r[..period.len()], dst.add(h), n - h);
                    return;
                }
                _ => {
                    let mut off = 0;
                    while off < n && !period.is_empty() {
                        let k = (n - off).min(period.len());
                        store(period.as_ptr(), dst.add(off), k);
                        off += k;
                    }
                    return;
                }
            };
            let mut i = 0;
            while i + PERIOD_TURN <= n {
                let d = dst.add(i).cast::<__m256i>();
                for (j, &lane) in lanes.iter().enumerate() {
                    d.add(j).write_volatile(lane);
                }
                i += PERIOD_TURN;
            }
            while i + LANE <= n {
                dst.add(i)
                    .cast::<__m256i>()
                    .write_volatile(lanes[(i % PERIOD_TURN) / LANE]);
                i += LANE;
            }
            if i < n {
                let phase = i % period.len();
                words::store(period.as_ptr().add(phase), dst.add(i), n - i);
            }
        }
    }

    /// The first differing byte within a lane that differs: `x` is the
    /// XOR of the two lanes as loaded.
    #[target_feature(enable = "avx2")]
    unsafe fn first_in_lane(x: __m256i) -> Option<usize> {
        // The intrinsics are safe to call from an AVX2 function since Rust
        // 1.87 and `unsafe` before (this crate's `rust-version` is 1.85).
        // SAFETY: register operations only; AVX2 is present (contract).
        #[allow(unused_unsafe)]
        let equal = unsafe { _mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_setzero_si256())) };
        // Bit `j` set: byte `j` equal.
        let differ = !(equal as u32);
        (differ != 0).then(|| differ.trailing_zeros() as usize)
    }

    /// [`super::mismatch`] in 32-byte lanes.
    ///
    /// # Safety
    ///
    /// As [`super::mismatch`], and the CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::sys::volatile) unsafe fn mismatch(
        shared: *const u8,
        plain: *const u8,
        n: usize,
    ) -> Option<usize> {
        let h = head(shared, n);
        // SAFETY: (whole body) as in `load`, with the aligned volatile
        // side being `shared`; each shared lane is loaded once, and a
        // difference is located in the XOR already computed.
        unsafe {
            // The narrow path only for bytes before the first lane (none
            // on an aligned view) and after the last.
            if h > 0 {
                if let Some(at) = words::mismatch(shared, plain, h) {
                    return Some(at);
                }
            }
            let mut i = h;
            while i + 4 * LANE <= n {
                let s = shared.add(i).cast::<__m256i>();
                let p = plain.add(i).cast::<__m256i>();
                let x = [
                    _mm256_xor_si256(s.read_volatile(), p.read_unaligned()),
                    _mm256_xor_si256(s.add(1).read_volatile(), p.add(1).read_unaligned()),
                    _mm256_xor_si256(s.add(2).read_volatile(), p.add(2).read_unaligned()),
                    _mm256_xor_si256(s.add(3).read_volatile(), p.add(3).read_unaligned()),
                ];
                let any = _mm256_or_si256(_mm256_or_si256(x[0], x[1]), _mm256_or_si256(x[2], x[3]));
                if _mm256_testz_si256(any, any) == 0 {
                    for (k, &lane) in x.iter().enumerate() {
                        if let Some(j) = first_in_lane(lane) {
                            return Some(i + k * LANE + j);
                        }
                    }
                }
                i += 4 * LANE;
            }
            while i + LANE <= n {
                let x = _mm256_xor_si256(
                    shared.add(i).cast::<__m256i>().read_volatile(),
                    plain.add(i).cast::<__m256i>().read_unaligned(),
                );
                if let Some(j) = first_in_lane(x) {
                    return Some(i + j);
                }
                i += LANE;
            }
            if i == n {
                return None;
            }
            words::mismatch(shared.add(i), plain.add(i), n - i).map(|at| i + at)
        }
    }
}

/// The widest stores: aligned 64-byte AVX-512 stores, one whole cache
/// line each, four per loop turn.
///
/// Why: a store to a line another core has just read must first take the
/// line from that core; a whole-line store in one instruction costs the
/// producer of a stream far less of that than two 32-byte halves (see the
/// module's DOC). The loop is inline assembly, not intrinsics: the
/// `avx512f` target feature cannot be enabled on a function by this
/// crate's minimum Rust (1.85), and assembly is opaque to the compiler,
/// which can neither split, merge nor drop its stores (each shared byte is
/// written once, as with volatile stores). `clobber_abi("C")` tells the
/// compiler the block clobbers every register a call may (all vector
/// registers among them); it ends with `vzeroupper`, as the C library's
/// vector routines do.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::asm;

    use super::avx2;

    /// Bytes of one line-wide store.
    const LINE: usize = 64;
    /// Bytes of one loop turn.
    const TURN: usize = 4 * LINE;
    /// Below this many bytes the 32-byte path is used.
    pub(in crate::sys::volatile) const MIN: usize = TURN + LINE;

    /// `n` bytes split as: a head up to `dst`'s next 64-byte boundary,
    /// whole loop turns, and a tail.
    fn split(dst: *const u8, n: usize) -> (usize, usize) {
        let head = dst.align_offset(LINE).min(n);
        let body = (n - head) / TURN * TURN;
        (head, body)
    }

    /// [`super::store`] in 64-byte lines.
    ///
    /// # Safety
    ///
    /// As [`super::store`], and the CPU has AVX-512F and AVX2.
    pub(in crate::sys::volatile) unsafe fn store(src: *const u8, dst: *mut u8, n: usize) {
        let (head, body) = split(dst, n);
        // SAFETY: (whole body) the head and the tail are inside the
        // caller's ranges and handed to the 32-byte path (AVX2 present);
        // the loop stores `body` bytes (a non-zero multiple of 256, or
        // skipped) at `dst + head`, 64-byte aligned by construction, each
        // byte once, and loads the same count, unaligned, from
        // `src + head`: inside both ranges since `head + body <= n`.
        unsafe {
            avx2::store(src, dst, head);
            if body > 0 {
                asm!(
                    "2:",
                    "vmovdqu64 zmm0, [rsi]",
                    "vmovdqu64 zmm1, [rsi + 64]",
                    "vmovdqu64 zmm2, [rsi + 128]",
                    "vmovdqu64 zmm3, [rsi + 192]",
                    "vmovdqa64 [rdi], zmm0",
                    "vmovdqa64 [rdi + 64], zmm1",
                    "vmovdqa64 [rdi + 128], zmm2",
                    "vmovdqa64 [rdi + 192], zmm3",
                    "add rsi, 256",
                    "add rdi, 256",
                    "sub rcx, 256",
                    "jnz 2b",
                    "vzeroupper",
                    inout("rsi") src.add(head) => _,
                    inout("rdi") dst.add(head) => _,
                    inout("rcx") body => _,
                    clobber_abi("C"),
                    options(nostack),
                );
            }
            let done = head + body;
            avx2::store(src.add(done), dst.add(done), n - done);
        }
    }

    /// [`super::fill`] in 64-byte lines.
    ///
    /// # Safety
    ///
    /// As [`super::fill`], and the CPU has AVX-512F and AVX2.
    pub(in crate::sys::volatile) unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
        let (head, body) = split(dst, n);
        let line = [value; LINE];
        // SAFETY: (whole body) as in `store`, the source being one line
        // of `value` on this stack, loaded once.
        unsafe {
            avx2::fill(dst, value, head);
            if body > 0 {
                asm!(
                    "vmovdqu64 zmm0, [rsi]",
                    "2:",
                    "vmovdqa64 [rdi], zmm0",
                    "vmovdqa64 [rdi + 64], zmm0",
                    "vmovdqa64 [rdi + 128], zmm0",
                    "vmovdqa64 [rdi + 192], zmm0",
                    "add rdi, 256",
                    "sub rcx, 256",
                    "jnz 2b",
                    "vzeroupper",
                    inout("rsi") line.as_ptr() => _,
                    inout("rdi") dst.add(head) => _,
                    inout("rcx") body => _,
                    clobber_abi("C"),
                    options(nostack),
                );
            }
            let done = head + body;
            avx2::fill(dst.add(done), value, n - done);
        }
    }
}

/// Long stores as one string instruction, `rep movsb`, on CPUs that make
/// it fast (ERMS, "enhanced rep movsb"), as the C library's `memcpy` does
/// for copies of this size — in writes of less than [`MAX_WHOLE`](strings::MAX_WHOLE) bytes.
///
/// Why: in a stream the producer writes lines its consumer's core has
/// just read; which store keeps up depends on the write's size. Measured
/// on this project's machine (AMD EPYC, 1 MiB of L2 per core, 2 shared
/// cores, AVX-512, ERMS), `dmabuf stream` against a bare C ring whose
/// copies the compiler made `rep movsq`, six alternating rounds per
/// size, medians (the worst round): with the 64-byte stores of
/// [`avx512`], 0.87 (0.80), 0.91 (0.89), 0.81 (0.74), 1.04 (0.88), 1.21
/// (0.99) and 1.01 (0.92) of the ring at 16 KiB, 64 KiB, 256 KiB, 1 MiB,
/// 4 MiB and 16 MiB; with `rep movsb`, 1.08 (1.03), 0.99 (0.92), 1.02
/// (0.88), 0.93 (0.83), 0.99 (0.82) and 0.99 (0.94). So writes smaller
/// than a core's L2, whose lines the other core holds, go as string
/// stores, and larger ones as line-wide vector stores.
///
/// Inline assembly is opaque to the compiler, which can neither split,
/// merge nor drop the stores: each shared byte is written once, in an
/// order the CPU chooses (as with any bulk copy here).
#[cfg(target_arch = "x86_64")]
pub(super) mod strings {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Stores of at least this many bytes use the string instruction
    /// (the C library's default threshold on CPUs with 32-byte vectors).
    pub(in crate::sys::volatile) const MIN: usize = 2048;

    /// Writes of this many bytes or more use the vector stores instead.
    pub(in crate::sys::volatile) const MAX_WHOLE: usize = 1 << 20;

    /// Whether this CPU has ERMS (CPUID leaf 7, EBX bit 9). Asked once.
    pub(in crate::sys::volatile) fn fast() -> bool {
        static ERMS: OnceLock<bool> = OnceLock::new();
        *ERMS.get_or_init(|| {
            // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is asked
            // only if the highest standard leaf (leaf 0's EAX) reaches it.
            // (The intrinsics are `unsafe` in this crate's minimum Rust,
            // safe in later ones.)
            #[allow(unused_unsafe)]
            unsafe {
                use std::arch::x86_64::{__cpuid, __cpuid_count};
                __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 9) != 0
            }
        })
    }

    /// [`super::store`] as one `rep movsb`.
    ///
    /// # Safety
    ///
    /// As [`super::store`].
    pub(in crate::sys::volatile) unsafe fn store(src: *const u8, dst: *mut u8, n: usize) {
        // SAFETY: `rep movsb` copies exactly `n` bytes forwards (the
        // direction flag is clear, as the ABI guarantees at every call)
        // from `src` to `dst`: the ranges the caller vouches for. It
        // touches no memory else, no stack, and no flag.
        unsafe {
            asm!(
                "rep movsb",
                inout("rsi") src => _,
                inout("rdi") dst => _,
                inout("rcx") n => _,
                options(nostack, preserves_flags),
            );
        }
    }
}
