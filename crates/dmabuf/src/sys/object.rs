//! One identity per memory object per process, and the borrow registry
//! that makes windows on it exclusive.
//!
//! A [`MemoryObject`] stands for one piece of memory the kernel knows as
//! one file: a dma-buf or a memfd, named by `(st_dev, st_ino)`. It is
//! interned process-wide: every fd on the same memory — dup'd, received
//! over a socket, opened twice — yields the same object, so there is one
//! borrow registry and one [`Region`] (mapping) for it however many handles
//! exist.
//!
//! Borrows are kept in the object's own offsets, independent of which
//! mapping serves the bytes (a read-only mapping made first and a writable
//! one made later are both views of the same registry). A udmabuf made by
//! this process records its *backing*: the memfd objects and page ranges
//! it is made of; a borrow of the udmabuf is registered on those memfd
//! ranges too, so a window on the udmabuf conflicts with one on the memfd
//! itself or on another udmabuf over the same pages.
//!
//! Rules: any number of shared borrows of a byte, or one exclusive borrow;
//! a conflicting borrow is refused, never granted. A borrow is checked and
//! recorded under the locks of every object it touches, held together
//! (taken in a fixed order): a borrow spanning several objects is atomic,
//! and a borrow of one plain object takes that object's lock alone.
//!
//! One case takes no lock: a borrow of a whole plain object (no backing)
//! through a mapping of all of it, while the object's list is empty — the
//! borrow a window on a whole buffer makes. An object made of the whole
//! of one other object (a udmabuf over all of one memfd, as the udmabuf
//! allocator makes them) counts as plain here: the claim is taken on
//! that object first, then on this one, and given back if the second is
//! refused. It is a *claim* on the
//! object's atomic word ([`Claims`]): one compare-and-swap to take it, one
//! atomic operation to give it back. A claim counts as covering every
//! byte of the object. The list's borrows raise a flag in the same word,
//! under the lock, before the first record goes in (the answer shows the
//! claims held at that moment, which the new borrow is checked against)
//! and lower it, under the lock, once the list is empty again: while the
//! flag is up no claim is granted, so a claim and a recorded borrow are
//! always checked against each other. (Two borrows racing for the same
//! bytes may then both be refused, each for the other's claim taken
//! half-way; never both granted.)
//!
//! The word has room for its owner's bits ([`RESERVED`]): the buffer
//! layer keeps its reservation's CPU-window counts and flags there, so
//! that a window on a whole buffer takes its claim and counts itself open
//! in one compare-and-swap ([`MemoryObject::claim_whole_with`]) and gives
//! both back in one ([`View::release_with`]). Claims never change those
//! bits, and those operations never change the claims' bits.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use super::mem::Region;
use super::volatile::{VolatileBytes, VolatileBytesMut};
use super::Errno;

type IoResult<T> = rustix::io::Result<T>;

/// `(st_dev, st_ino)`: what names a piece of memory to the kernel.
pub type ObjectKey = (u64, u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn objects() -> MutexGuard<'static, HashMap<ObjectKey, Weak<MemoryObject>>> {
    static OBJECTS: OnceLock<Mutex<HashMap<ObjectKey, Weak<MemoryObject>>>> = OnceLock::new();
    OBJECTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// How many udmabufs' backing records outlive their handles.
pub const KEPT_BACKINGS: usize = 4096;

/// Backing records by object key, kept past the objects' lives (a handle
/// may give up its fd, `DmaBuf::into_fd`, and the fd come back as a new
/// handle later): the most recent [`KEPT_BACKINGS`], oldest dropped first.
#[derive(Default)]
struct Backings {
    by_key: HashMap<ObjectKey, Vec<Segment>>,
    order: std::collections::VecDeque<ObjectKey>,
}

fn backings() -> MutexGuard<'static, Backings> {
    static BACKINGS: OnceLock<Mutex<Backings>> = OnceLock::new();
    BACKINGS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// One piece of memory (a dma-buf or a memfd), once per process.
#[derive(Debug)]
pub struct MemoryObject {
    id: u64,
    key: ObjectKey,
    /// Live borrows, in the object's offsets.
    borrows: Mutex<Vec<Borrow>>,
    /// Claims of the whole object taken without the lock, and whether
    /// the list may hold borrows (see [`Claims`]).
    claims: AtomicU64,
    /// The current mapping (the widest one made: writable wins).
    region: Mutex<Weak<Region>>,
    /// The memfd pages this object is made of, if this process made it
    /// from memfds (a udmabuf); set once.
    backing: OnceLock<Vec<Segment>>,
}

/// A range of this object that is made of pages of another object.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Offset in this object.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The object that holds the pages (a memfd).
    pub target: Arc<MemoryObject>,
    /// Offset in the target.
    pub target_offset: u64,
    /// Whether the segment is the whole of its target (`target_offset`
    /// 0, and the target `len` bytes long): a claim of the whole object
    /// made of it may then stand for a borrow of the target too (see
    /// [`MemoryObject::borrow`]).
    pub whole_target: bool,
}

/// A live borrow. Two shared borrows of the same range are the same
/// record: either may be removed for the other (the list is a multiset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Borrow {
    start: u64,
    end: u64,
    exclusive: bool,
}

/// The bits of an object's word that belong to its owner
/// ([`MemoryObject::word`]): bits 16 to 61. Claims never change them.
pub const RESERVED: u64 = ((1 << 46) - 1) << 16;

/// The word of an object's lock-free claims: shared claims counted in
/// the low 16 bits, an exclusive claim in [`Claims::EXCLUSIVE`], and
/// [`Claims::LISTED`] raised while the list may hold borrows (see the
/// module documentation); the bits of [`RESERVED`] are the owner's and
/// are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claims(u64);

impl Claims {
    /// The most shared claims at once (more borrows go to the list).
    const MAX_SHARED: u64 = 0xffff;
    const EXCLUSIVE: u64 = 1 << 62;
    const LISTED: u64 = 1 << 63;

    fn shared(self) -> u64 {
        self.0 & Self::MAX_SHARED
    }

    fn exclusive(self) -> bool {
        self.0 & Self::EXCLUSIVE != 0
    }

    fn listed(self) -> bool {
        self.0 & Self::LISTED != 0
    }

    /// The word with one more claim of this kind, if one may be granted
    /// without the lock.
    fn claimed(self, exclusive: bool) -> Option<Claims> {
        if self.listed() || self.exclusive() {
            return None;
        }
        match exclusive {
            true if self.shared() == 0 => Some(Claims(self.0 | Self::EXCLUSIVE)),
            false if self.shared() < Self::MAX_SHARED => Some(Claims(self.0 + 1)),
            _ => None,
        }
    }

    /// The word with one claim of this kind given back.
    fn released(self, exclusive: bool) -> Claims {
        if exclusive {
            Claims(self.0 & !Self::EXCLUSIVE)
        } else {
            Claims(self.0 - self.shared().min(1))
        }
    }

    /// `Ok` if no claim conflicts with a borrow of `start..end` of the
    /// object (`exclusive` or not): claims cover every byte.
    fn check(
        self,
        start: u64,
        end: u64,
        exclusive: bool,
        backing: Option<ObjectKey>,
    ) -> Result<(), BorrowError> {
        let conflict = |with_exclusive| BorrowError::Conflict {
            with_exclusive,
            overlap: start..end,
            backing,
        };
        if start >= end {
            return Ok(());
        }
        if self.exclusive() {
            return Err(conflict(true));
        }
        if exclusive && self.shared() > 0 {
            return Err(conflict(false));
        }
        Ok(())
    }
}

/// Why a borrow was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BorrowError {
    /// The range is not inside the mapping it would be read through.
    OutOfBounds,
    /// An exclusive borrow was asked through a read-only mapping.
    ReadOnly,
    /// The range overlaps a live borrow that conflicts with it.
    Conflict {
        /// Whether the live borrow in the way is exclusive (a writer).
        with_exclusive: bool,
        /// The bytes both cover, in the offsets of the object where they
        /// meet.
        overlap: Range<u64>,
        /// Where they meet: `None` for the object itself, else the backing
        /// object's key (e.g. the memfd of a udmabuf).
        backing: Option<ObjectKey>,
    },
}

impl MemoryObject {
    /// The object of the memory `fd` refers to, made on first use.
    pub fn intern(fd: impl AsFd) -> IoResult<Arc<MemoryObject>> {
        let st = rustix::fs::fstat(fd)?;
        let key = (st.st_dev, st.st_ino);
        let mut map = objects();
        if let Some(o) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(o);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let backing = OnceLock::new();
        if let Some(segments) = backings().by_key.get(&key) {
            let _ = backing.set(segments.clone());
        }
        let o = Arc::new(MemoryObject {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key,
            borrows: Mutex::new(Vec::new()),
            claims: AtomicU64::new(0),
            region: Mutex::new(Weak::new()),
            backing,
        });
        map.insert(key, Arc::downgrade(&o));
        Ok(o)
    }

    /// A process-unique id of the object.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `(st_dev, st_ino)` of the memory.
    pub fn key(&self) -> ObjectKey {
        self.key
    }

    /// Records the backing of this object (once; a second call with other
    /// segments is refused with EEXIST, the same ones are accepted).
    /// Segments must not overlap one another in this object. The record
    /// also outlives the object: a later object of the same key (the same
    /// dma-buf, reopened from an fd that was given up) gets it back, for
    /// the [`KEPT_BACKINGS`] most recent records.
    pub fn set_backing(&self, segments: Vec<Segment>) -> IoResult<()> {
        let same = |a: &[Segment], b: &[Segment]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    (
                        x.offset,
                        x.len,
                        x.target.id,
                        x.target_offset,
                        x.whole_target,
                    ) == (
                        y.offset,
                        y.len,
                        y.target.id,
                        y.target_offset,
                        y.whole_target,
                    )
                })
        };
        match self.backing.get() {
            Some(old) if same(old, &segments) => Ok(()),
            Some(_) => Err(Errno::EXIST),
            None => {
                let mut kept = backings();
                if kept.by_key.insert(self.key, segments.clone()).is_none() {
                    kept.order.push_back(self.key);
                }
                while kept.order.len() > KEPT_BACKINGS {
                    if let Some(old) = kept.order.pop_front() {
                        kept.by_key.remove(&old);
                    }
                }
                drop(kept);
                let _ = self.backing.set(segments);
                Ok(())
            }
        }
    }

    /// The recorded backing (empty if none).
    pub fn backing(&self) -> &[Segment] {
        self.backing.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// For a claim of all `len` bytes of this object: `Some(None)` for a
    /// plain object, `Some(Some(target))` for one made of the whole of
    /// `target` (which the claim must hold too), `None` where no claim
    /// can stand for the borrow (the object is made of parts of others,
    /// which only recorded borrows can name).
    fn claim_target(&self, len: u64) -> Option<Option<&MemoryObject>> {
        match self.backing() {
            [] => Some(None),
            [s] if s.offset == 0 && s.len == len && s.target_offset == 0 && s.whole_target => {
                Some(Some(&*s.target))
            }
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Borrow>> {
        // Each update is a single push or remove: a panic cannot leave the
        // list inconsistent.
        self.borrows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of live borrows of this object itself.
    pub fn live_borrows(&self) -> usize {
        let listed = self.lock().len();
        let c = self.claims();
        listed + c.shared() as usize + usize::from(c.exclusive())
    }

    fn claims(&self) -> Claims {
        Claims(self.claims.load(Ordering::Acquire))
    }

    /// Raises [`Claims::LISTED`] (the caller holds the list's lock and is
    /// about to record a borrow) and returns the claims held now.
    fn list(&self) -> Claims {
        Claims(self.claims.fetch_or(Claims::LISTED, Ordering::AcqRel))
    }

    /// Lowers [`Claims::LISTED`] if `live` (this object's list, locked by
    /// the caller) is empty.
    fn unlist_if_empty(&self, live: &[Borrow]) {
        if live.is_empty() {
            self.claims.fetch_and(!Claims::LISTED, Ordering::AcqRel);
        }
    }

    /// The object's atomic word, whose [`RESERVED`] bits are its owner's
    /// to keep (with atomic operations that leave every other bit as it
    /// is); the rest are the claims' (see the module documentation).
    pub fn word(&self) -> &AtomicU64 {
        &self.claims
    }

    /// A borrow of `range` that is a claim of the whole plain object,
    /// taken in one compare-and-swap together with `also`, a change of
    /// the [`RESERVED`] bits (given the word with the claim taken, the new
    /// word, or `None` to refuse): both are made, or neither. `None` if
    /// the borrow is not such a claim (part of the object, or an object
    /// with backing, or one whose list holds borrows), a claim is in the
    /// way, or `also` refused: the caller then borrows the usual way.
    /// Given back with [`View::release_with`] (or, dropped, without
    /// `also`'s counterpart).
    ///
    /// Always inlined: the view is then built where the caller keeps it.
    /// Returned from a call, it was copied in wide loads just after the
    /// callee's narrow stores, which store forwarding cannot serve; that
    /// stall was most of the cost of a CPU window on an x86-64 machine.
    #[inline(always)]
    pub fn claim_whole_with<'a>(
        &'a self,
        region: &'a Region,
        range: Range<usize>,
        exclusive: bool,
        also: impl Fn(u64) -> Option<u64>,
    ) -> Option<View<'a>> {
        let whole = range.start == 0 && range.end == region.len() && range.end > 0;
        if !whole || region.owner() != self.id || (exclusive && !region.is_writable()) {
            return None;
        }
        let target = self.claim_target(range.end as u64)?;
        if target.is_some_and(|t| !t.try_claim(exclusive)) {
            return None;
        }
        let claimed = self
            .claims
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                let claimed = Claims(c).claimed(exclusive)?.0;
                Some((claimed & !RESERVED) | (also(claimed)? & RESERVED))
            })
            .is_ok();
        if !claimed {
            if let Some(t) = target {
                t.release_claim(exclusive);
            }
            return None;
        }
        Some(View {
            region,
            range,
            exclusive,
            object: self,
            own: None,
            claimed_target: target,
            backing: Vec::new(),
            released: false,
        })
    }

    /// Takes a claim of the whole object without the lock, if the list is
    /// empty and no claim is in the way.
    fn try_claim(&self, exclusive: bool) -> bool {
        let claimed = |c| Claims(c).claimed(exclusive).map(|n| n.0);
        self.claims
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, claimed)
            .is_ok()
    }

    fn release_claim(&self, exclusive: bool) {
        let released = |c| Some(Claims(c).released(exclusive).0);
        let _ = self
            .claims
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, released);
    }

    /// The object's mapping for `len` bytes from `fd` (which must refer to
    /// this object), made if there is none or if the one there is
    /// read-only and `writable` is asked; shared by every caller until
    /// the last drops it.
    pub fn region(&self, fd: impl AsFd, len: usize, writable: bool) -> IoResult<Arc<Region>> {
        let fd = fd.as_fd();
        let st = rustix::fs::fstat(fd)?;
        if (st.st_dev, st.st_ino) != self.key {
            return Err(Errno::INVAL);
        }
        let mut slot = self.region.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = slot.upgrade() {
            if r.len() == len && (r.is_writable() || !writable) {
                return Ok(r);
            }
        }
        let r = Arc::new(Region::map_fixed_size(fd, 0, len, writable, self.id)?);
        *slot = Arc::downgrade(&r);
        Ok(r)
    }

    /// The current mapping, if any.
    pub fn current_region(&self) -> Option<Arc<Region>> {
        self.region
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()
    }

    /// Registers a borrow of `range` (object offsets) read through
    /// `region`, a mapping of this object: shared, or `exclusive`. The
    /// borrow is registered on the object and on every backing range it
    /// covers; it lasts as long as the returned [`View`].
    pub fn borrow<'a>(
        &'a self,
        region: &'a Region,
        range: Range<usize>,
        exclusive: bool,
    ) -> Result<View<'a>, BorrowError> {
        if region.owner() != self.id || range.start > range.end || range.end > region.len() {
            return Err(BorrowError::OutOfBounds);
        }
        if exclusive && !region.is_writable() {
            return Err(BorrowError::ReadOnly);
        }
        let (start, end) = (range.start as u64, range.end as u64);
        // The pages of other objects this range is made of (none unless
        // this process made the object from memfds): computed twice, never
        // collected, so a borrow of a plain object allocates nothing.
        let via = || {
            self.backing().iter().filter_map(move |s| {
                let lo = start.max(s.offset);
                let hi = end.min(s.offset + s.len);
                (lo < hi).then(|| {
                    let t = s.target_offset + (lo - s.offset);
                    (&s.target, t, t + (hi - lo))
                })
            })
        };
        let new = |start: u64, end: u64| Borrow {
            start,
            end,
            exclusive,
        };
        let view = |own: Option<Borrow>, backing: Vec<(&'a MemoryObject, Borrow)>| View {
            region,
            range: range.clone(),
            exclusive,
            object: self,
            own,
            claimed_target: None,
            backing,
            released: false,
        };
        // The whole of a plain object (or of one made of the whole of one
        // other), nothing listed: a claim, no lock.
        if let Some(v) = self.claim_whole_with(region, range.clone(), exclusive, Some) {
            return Ok(v);
        }
        if via().next().is_none() {
            // One object: its own lock makes the check and the record one
            // step.
            let mut live = self.lock();
            let checked = self
                .list()
                .check(start, end, exclusive, None)
                .and_then(|()| check_free(&live, start, end, exclusive, None));
            if let Err(e) = checked {
                self.unlist_if_empty(&live);
                return Err(e);
            }
            let own = new(start, end);
            live.push(own);
            drop(live);
            return Ok(view(Some(own), Vec::new()));
        }
        // Several objects: hold the lock of each (once, taken in id order,
        // so that two such borrows cannot deadlock) while everything is
        // checked and then recorded: nothing is half-registered, and no
        // borrow of one of them alone slips in between.
        let mut objects: Vec<&MemoryObject> = std::iter::once(self)
            .chain(via().map(|(o, _, _)| &**o))
            .collect();
        objects.sort_by_key(|o| o.id);
        objects.dedup_by_key(|o| o.id);
        let mut locked: Vec<(u64, MutexGuard<'_, Vec<Borrow>>)> =
            objects.iter().map(|o| (o.id, o.lock())).collect();
        let at = |locked: &[(u64, MutexGuard<'_, Vec<Borrow>>)], id: u64| {
            locked
                .iter()
                .position(|(k, _)| *k == id)
                .expect("every object of the borrow is locked")
        };
        // Every object's flag goes up before its claims are read: no claim
        // is granted on any of them from here until the lists are settled.
        // (`objects`, `locked` and `claims` are in the same order.)
        let claims: Vec<Claims> = objects.iter().map(|o| o.list()).collect();
        let checked = (|| {
            let i = at(&locked, self.id);
            claims[i].check(start, end, exclusive, None)?;
            check_free(&locked[i].1, start, end, exclusive, None)?;
            for (obj, s, e) in via() {
                let i = at(&locked, obj.id);
                claims[i].check(s, e, exclusive, Some(obj.key))?;
                check_free(&locked[i].1, s, e, exclusive, Some(obj.key))?;
            }
            Ok(())
        })();
        let recorded = checked.map(|()| {
            let own = new(start, end);
            let i = at(&locked, self.id);
            locked[i].1.push(own);
            let mut backing = Vec::new();
            for (obj, s, e) in via() {
                let b = new(s, e);
                let i = at(&locked, obj.id);
                locked[i].1.push(b);
                backing.push((&**obj, b));
            }
            (own, backing)
        });
        // Settle every flag: a refused borrow recorded nothing, and an
        // object whose range was empty got no record.
        for (o, (_, live)) in objects.iter().zip(&locked) {
            o.unlist_if_empty(live);
        }
        drop(locked);
        let (own, backing) = recorded?;
        Ok(view(Some(own), backing))
    }

    /// Removes the live borrow `b`.
    fn forget(&self, b: &Borrow) {
        let mut live = self.lock();
        if let Some(i) = live.iter().position(|x| x == b) {
            live.swap_remove(i);
        }
        self.unlist_if_empty(&live);
    }
}

/// `Ok` if no borrow in `live` (one object's list, locked by the caller)
/// conflicts with one of `start..end` (`exclusive` or not); `backing`:
/// the key of that object when it backs the one borrowed (named in the
/// error).
fn check_free(
    live: &[Borrow],
    start: u64,
    end: u64,
    exclusive: bool,
    backing: Option<ObjectKey>,
) -> Result<(), BorrowError> {
    for other in live {
        let (lo, hi) = (start.max(other.start), end.min(other.end));
        if lo < hi && (exclusive || other.exclusive) {
            return Err(BorrowError::Conflict {
                with_exclusive: other.exclusive,
                overlap: lo..hi,
                backing,
            });
        }
    }
    Ok(())
}

/// A registered borrow of bytes of a [`MemoryObject`], with the mapping
/// they are read through (both borrowed: a window holds them anyway, and
/// a view costs no reference count). Released on drop.
#[derive(Debug)]
pub struct View<'a> {
    region: &'a Region,
    range: Range<usize>,
    exclusive: bool,
    /// The object borrowed and its record; the records on the objects
    /// backing it (empty unless this process made it from memfds).
    object: &'a MemoryObject,
    /// `None`: a claim of the whole object (no record).
    own: Option<Borrow>,
    /// With a claim: the object this one is made of the whole of, which
    /// the claim holds too (see [`MemoryObject::claim_target`]).
    claimed_target: Option<&'a MemoryObject>,
    backing: Vec<(&'a MemoryObject, Borrow)>,
    /// Given back already ([`View::release_with`]).
    released: bool,
}

impl View<'_> {
    /// Whether the borrow is exclusive (a writer).
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// The bytes borrowed, in the object's offsets.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The borrowed bytes, for volatile reads.
    pub fn bytes(&self) -> VolatileBytes<'_> {
        // SAFETY: the range is inside the live mapping (checked in
        // `borrow`), a mapping of this object (owner id checked) that
        // cannot shrink and lives as long as `self`; no reference to the
        // bytes exists, and the registry guarantees that no exclusive
        // borrow of them, through any mapping or backing, exists while
        // this one lives (an exclusive view writes only through
        // `&mut self`).
        unsafe { VolatileBytes::new(self.region.ptr().add(self.range.start), self.range.len()) }
    }

    /// The borrowed bytes, for volatile writes: exclusive views only.
    pub fn bytes_mut(&mut self) -> Option<VolatileBytesMut<'_>> {
        if !self.exclusive {
            return None;
        }
        // SAFETY: inside the live, writable mapping (checked in `borrow`);
        // the registry guarantees no other borrow of these bytes exists in
        // this process, and `&mut self` makes this view unique for its
        // lifetime.
        Some(unsafe {
            VolatileBytesMut::new(self.region.ptr().add(self.range.start), self.range.len())
        })
    }
}

impl View<'_> {
    /// Gives the borrow back and makes `also`, a change of the object's
    /// [`RESERVED`] bits (given the word with the borrow given back), in
    /// one atomic step for a claim ([`MemoryObject::claim_whole_with`]),
    /// one after the other for a recorded borrow. Returns the word as it
    /// was just before the step that made `also`. Once given back, the
    /// view holds nothing: a second call (or its drop) gives nothing back
    /// and makes no change, and returns the word as it is. (It takes
    /// `&mut self`, not `self`, so that a caller holding the view inside
    /// a larger value gives it back where it lies, without moving it.)
    pub fn release_with(&mut self, also: impl Fn(u64) -> u64) -> u64 {
        if self.released {
            return self.object.claims.load(Ordering::Acquire);
        }
        self.released = true;
        let exclusive = self.exclusive;
        let with = |released: u64| (released & !RESERVED) | (also(released) & RESERVED);
        let old = match self.own {
            None => {
                let old =
                    self.object
                        .claims
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                            Some(with(Claims(c).released(exclusive).0))
                        });
                if let Some(t) = self.claimed_target {
                    t.release_claim(exclusive);
                }
                old
            }
            Some(b) => {
                self.release_records(&b);
                self.object
                    .claims
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some(with(c)))
            }
        };
        match old {
            Ok(w) | Err(w) => w,
        }
    }

    /// Removes this borrow's records (its own and on its backing).
    fn release_records(&mut self, own: &Borrow) {
        // Each list on its own: a borrow that sees some of these records
        // gone and others not yet is refused, as it would be had it come
        // before this drop.
        self.object.forget(own);
        for (obj, b) in self.backing.drain(..) {
            obj.forget(&b);
        }
    }
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        match self.own {
            Some(b) => self.release_records(&b),
            None => {
                self.object.release_claim(self.exclusive);
                if let Some(t) = self.claimed_target {
                    t.release_claim(self.exclusive);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, SealFlags};

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = memfd_create(
            "sys-object-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&fd, len).unwrap();
        fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        fd
    }

    /// Two pages of `target` from `off`, as the backing of a two-page
    /// "made of" object.
    fn two_pages_of(target: &Arc<MemoryObject>, page: u64, off: u64) -> Vec<Segment> {
        vec![Segment {
            offset: 0,
            len: 2 * page,
            target: target.clone(),
            target_offset: off,
            whole_target: false,
        }]
    }

    /// A memfd of 4 pages and two "made of" objects (any sealed memfds
    /// stand in for udmabufs) over its pages 1..3 and 2..4: the memfd,
    /// its object, then each made-of fd and object.
    #[allow(clippy::type_complexity)]
    fn overlapping_pair(
        page: u64,
    ) -> (
        std::os::fd::OwnedFd,
        Arc<MemoryObject>,
        [(std::os::fd::OwnedFd, Arc<MemoryObject>); 2],
    ) {
        let m = memfd(4 * page);
        let mo = MemoryObject::intern(&m).unwrap();
        let made = [page, 2 * page].map(|off| {
            let f = memfd(2 * page);
            let o = MemoryObject::intern(&f).unwrap();
            o.set_backing(two_pages_of(&mo, page, off)).unwrap();
            (f, o)
        });
        (m, mo, made)
    }

    #[test]
    fn whole_borrows_are_claims_and_meet_recorded_borrows_both_ways() {
        let page = super::super::mem::page_size();
        let fd = memfd(2 * page as u64);
        let o = MemoryObject::intern(&fd).unwrap();
        let r = o.region(&fd, 2 * page, true).unwrap();
        let whole = 0..2 * page;
        let conflict = |with_exclusive, overlap: Range<u64>| BorrowError::Conflict {
            with_exclusive,
            overlap,
            backing: None,
        };
        // Whole and nothing listed: claims, in the word only.
        let a = o.borrow(&r, whole.clone(), false).unwrap();
        let b = o.borrow(&r, whole.clone(), false).unwrap();
        assert_eq!((o.claims().shared(), o.lock().len()), (2, 0));
        assert_eq!(o.live_borrows(), 2);
        // A claim covers every byte: a partial writer is refused, a
        // partial reader recorded (and the flag raised with it).
        let e = o.borrow(&r, 10..20, true).unwrap_err();
        assert_eq!(e, conflict(false, 10..20));
        assert!(!o.claims().listed(), "a refusal leaves nothing listed");
        let c = o.borrow(&r, page..page + 1, false).unwrap();
        assert!(o.claims().listed());
        // Listed borrows: a whole borrow is no claim now, and is checked
        // against both.
        let d = o.borrow(&r, whole.clone(), false).unwrap();
        assert_eq!((o.claims().shared(), o.lock().len()), (2, 2));
        let e = o.borrow(&r, whole.clone(), true).unwrap_err();
        assert_eq!(e, conflict(false, 0..2 * page as u64));
        drop((a, b, c, d));
        assert_eq!(o.claims(), Claims(0), "all given back, flag down");
        assert_eq!(o.live_borrows(), 0);
        // An exclusive claim refuses everything, whole or partial.
        let w = o.borrow(&r, whole.clone(), true).unwrap();
        assert!(o.claims().exclusive());
        let e = o.borrow(&r, whole.clone(), false).unwrap_err();
        assert_eq!(e, conflict(true, 0..2 * page as u64));
        let e = o.borrow(&r, 5..6, false).unwrap_err();
        assert_eq!(e, conflict(true, 5..6));
        // An empty range overlaps nothing.
        let empty = o.borrow(&r, 7..7, true).unwrap();
        drop((w, empty));
        assert_eq!(o.claims(), Claims(0));
    }

    #[test]
    fn a_claim_on_a_memfd_meets_borrows_of_what_is_made_of_it() {
        let page = super::super::mem::page_size() as u64;
        let (m, mo, [(u1f, u1), _]) = overlapping_pair(page);
        let rm = mo.region(&m, (4 * page) as usize, true).unwrap();
        let r1 = u1.region(&u1f, (2 * page) as usize, true).unwrap();
        // The memfd's whole writer is a claim; a reader of the made-of
        // object meets it on the memfd's pages 1..3.
        let w = mo.borrow(&rm, 0..(4 * page) as usize, true).unwrap();
        assert!(w.own.is_none(), "a claim");
        let e = u1.borrow(&r1, 0..10, false).unwrap_err();
        assert_eq!(
            e,
            BorrowError::Conflict {
                with_exclusive: true,
                overlap: page..page + 10,
                backing: Some(mo.key()),
            }
        );
        assert!(!mo.claims().listed() && !u1.claims().listed());
        drop(w);
        // The other way: a made-of reader is recorded on the memfd, so the
        // memfd's whole writer is no claim and is refused.
        let r = u1.borrow(&r1, 0..10, false).unwrap();
        assert!(mo.claims().listed());
        let e = mo.borrow(&rm, 0..(4 * page) as usize, true).unwrap_err();
        assert_eq!(
            e,
            BorrowError::Conflict {
                with_exclusive: false,
                overlap: page..page + 10,
                backing: None,
            }
        );
        drop(r);
        assert_eq!((mo.claims(), u1.claims()), (Claims(0), Claims(0)));
    }

    #[test]
    fn claims_and_recorded_borrows_of_one_object_never_alias_under_contention() {
        // Three threads take exclusive borrows of one object: the whole
        // of it (a claim) or its first page (a record). Every range holds
        // byte 0, so two exclusive borrows at once would be a double
        // `&mut`: the mark counts holders.
        use std::sync::atomic::AtomicU32;
        let page = super::super::mem::page_size();
        let fd = memfd(2 * page as u64);
        let o = MemoryObject::intern(&fd).unwrap();
        let r = o.region(&fd, 2 * page, true).unwrap();
        let mark = AtomicU32::new(0);
        let (claimed, recorded) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|sc| {
            for t in 0..3 {
                let (o, r, mark, claimed, recorded) = (&o, &r, &mark, &claimed, &recorded);
                sc.spawn(move || {
                    for i in 0..30_000 {
                        let whole = (t + i) % 2 == 0;
                        let range = if whole { 0..2 * page } else { 0..page };
                        let Ok(view) = o.borrow(r, range, true) else {
                            continue;
                        };
                        assert_eq!(mark.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                        if view.own.is_none() {
                            claimed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            recorded.fetch_add(1, Ordering::Relaxed);
                        }
                        mark.fetch_sub(1, Ordering::SeqCst);
                        drop(view);
                    }
                });
            }
        });
        let (c, r) = (claimed.into_inner(), recorded.into_inner());
        assert!(c > 0 && r > 0, "claimed {c}, recorded {r}");
        assert_eq!(o.live_borrows(), 0);
        assert_eq!(o.claims(), Claims(0));
    }

    #[test]
    fn one_object_per_memory_and_one_registry() {
        let fd = memfd(8192);
        let dup = fd.try_clone().unwrap();
        let a = MemoryObject::intern(&fd).unwrap();
        let b = MemoryObject::intern(&dup).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let ra = a.region(&fd, 8192, true).unwrap();
        let rb = b.region(&dup, 8192, true).unwrap();
        assert!(Arc::ptr_eq(&ra, &rb), "one mapping");
        let _w = a.borrow(&ra, 0..100, true).unwrap();
        let e = b.borrow(&rb, 50..60, false).unwrap_err();
        assert_eq!(
            e,
            BorrowError::Conflict {
                with_exclusive: true,
                overlap: 50..60,
                backing: None
            }
        );
        let other = memfd(4096);
        assert_eq!(a.region(&other, 4096, false).unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn borrows_over_several_objects_are_atomic_and_never_deadlock() {
        // Two "made of" objects over memfd pages 1..3 and 2..4 and the
        // memfd itself, borrowed exclusively by three threads at once in
        // every order. Whoever holds a borrow marks the memfd pages it
        // covers: a mark already there would be two exclusive borrows of
        // one page. The threads finishing shows there is no deadlock.
        use std::sync::atomic::AtomicU32;
        let page = super::super::mem::page_size() as u64;
        let (m, mo, [(u1f, u1), (u2f, u2)]) = overlapping_pair(page);
        let r1 = u1.region(&u1f, (2 * page) as usize, true).unwrap();
        let r2 = u2.region(&u2f, (2 * page) as usize, true).unwrap();
        let rm = mo.region(&m, (4 * page) as usize, true).unwrap();
        let marks: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
        let (granted, refused) = (AtomicU32::new(0), AtomicU32::new(0));
        // (object, its mapping, its length, the memfd pages it covers)
        let who: [(&MemoryObject, &Region, u64, std::ops::Range<usize>); 3] = [
            (&u1, &r1, 2 * page, 1..3),
            (&u2, &r2, 2 * page, 2..4),
            (&mo, &rm, 4 * page, 0..4),
        ];
        // Rounds until the threads met at least once (a refusal), at most 5.
        for _ in 0..5 {
            let start = std::sync::Barrier::new(3);
            std::thread::scope(|sc| {
                for t in 0..3 {
                    let (who, marks, granted, refused) = (&who, &marks, &granted, &refused);
                    let start = &start;
                    sc.spawn(move || {
                        start.wait();
                        for i in 0..20_000 {
                            let (obj, region, len, pages) = &who[(t + i) % 3];
                            let Ok(view) = obj.borrow(region, 0..*len as usize, true) else {
                                refused.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            for p in pages.clone() {
                                assert_eq!(marks[p].fetch_add(1, Ordering::SeqCst), 0, "page {p}");
                            }
                            granted.fetch_add(1, Ordering::Relaxed);
                            for p in pages.clone() {
                                marks[p].fetch_sub(1, Ordering::SeqCst);
                            }
                            drop(view);
                        }
                    });
                }
            });
            if refused.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        // Both outcomes happened: the threads did meet.
        let (g, r) = (granted.into_inner(), refused.into_inner());
        assert!(g > 0 && r > 0, "granted {g}, refused {r}");
        assert_eq!(
            (u1.live_borrows(), u2.live_borrows(), mo.live_borrows()),
            (0, 0, 0)
        );
    }

    #[test]
    fn shared_borrows_coexist_exclusive_ones_do_not() {
        let fd = memfd(8192);
        let o = MemoryObject::intern(&fd).unwrap();
        let r = o.region(&fd, 8192, true).unwrap();
        let a = o.borrow(&r, 0..100, false).unwrap();
        let b = o.borrow(&r, 50..200, false).unwrap();
        assert!(matches!(
            o.borrow(&r, 150..300, true).unwrap_err(),
            BorrowError::Conflict {
                with_exclusive: false,
                ..
            }
        ));
        let w = o.borrow(&r, 200..300, true).unwrap();
        assert!(matches!(
            o.borrow(&r, 250..251, false).unwrap_err(),
            BorrowError::Conflict {
                with_exclusive: true,
                ..
            }
        ));
        drop((a, b, w));
        assert_eq!(o.live_borrows(), 0);
        assert_eq!(
            o.borrow(&r, 0..8193, false).unwrap_err(),
            BorrowError::OutOfBounds
        );
    }

    #[test]
    fn a_read_only_mapping_is_widened_and_borrows_stay_on_the_object() {
        let fd = memfd(4096);
        let o = MemoryObject::intern(&fd).unwrap();
        let ro = o.region(&fd, 4096, false).unwrap();
        assert_eq!(
            o.borrow(&ro, 0..1, true).unwrap_err(),
            BorrowError::ReadOnly
        );
        let _r = o.borrow(&ro, 0..10, false).unwrap();
        let rw = o.region(&fd, 4096, true).unwrap();
        assert!(!Arc::ptr_eq(&ro, &rw));
        assert!(rw.is_writable());
        // The read borrow made through the read-only mapping still counts.
        assert!(o.borrow(&rw, 5..6, true).is_err());
        assert!(o.borrow(&rw, 10..11, true).is_ok());
        // A later read-only request reuses the writable mapping.
        assert!(Arc::ptr_eq(&o.region(&fd, 4096, false).unwrap(), &rw));
    }

    #[test]
    fn borrows_reach_the_backing_pages() {
        let page = super::super::mem::page_size() as u64;
        let (m, mo, [(u1f, u1), (u2f, u2)]) = overlapping_pair(page);
        let seg = |off: u64| two_pages_of(&mo, page, off);
        assert_eq!(u1.set_backing(seg(page)), Ok(()));
        assert_eq!(u1.set_backing(seg(0)), Err(Errno::EXIST));
        let r1 = u1.region(&u1f, (2 * page) as usize, true).unwrap();
        let r2 = u2.region(&u2f, (2 * page) as usize, true).unwrap();
        let rm = mo.region(&m, (4 * page) as usize, true).unwrap();
        // u1's second page is memfd page 2, u2's first page too.
        let w = u1
            .borrow(&r1, page as usize..(page + 10) as usize, true)
            .unwrap();
        assert_eq!(
            u2.borrow(&r2, 0..1, false).unwrap_err(),
            BorrowError::Conflict {
                with_exclusive: true,
                overlap: 2 * page..2 * page + 1,
                backing: Some(mo.key()),
            }
        );
        assert!(mo
            .borrow(&rm, (2 * page) as usize..(2 * page + 4) as usize, false)
            .is_err());
        // Disjoint pages are free.
        assert!(u2
            .borrow(&r2, page as usize..(page + 1) as usize, true)
            .is_ok());
        assert!(mo.borrow(&rm, 0..page as usize, true).is_ok());
        drop(w);
        assert_eq!(mo.live_borrows(), 0);
        assert!(u2.borrow(&r2, 0..1, true).is_ok());

        // Every handle of u1 gone, its fd kept: the record comes back with
        // the object made again from the fd.
        let u1_key = u1.key();
        drop((r1, u1));
        let again = MemoryObject::intern(&u1f).unwrap();
        assert_eq!(again.key(), u1_key);
        assert_eq!(again.backing().len(), 1);
        assert_eq!(again.backing()[0].target_offset, page);
        let ra = again.region(&u1f, (2 * page) as usize, true).unwrap();
        let _w = again
            .borrow(&ra, page as usize..(page + 1) as usize, true)
            .unwrap();
        assert!(u2.borrow(&r2, 0..1, false).is_err());
    }

    /// A memfd of two pages and an object made of all of it (a sealed
    /// memfd stands in for the udmabuf): the memfd's fd, object and
    /// mapping, then the made-of object's.
    #[allow(clippy::type_complexity)]
    fn made_of_all(
        page: u64,
    ) -> (
        (std::os::fd::OwnedFd, Arc<MemoryObject>, Arc<Region>),
        (std::os::fd::OwnedFd, Arc<MemoryObject>, Arc<Region>),
    ) {
        let m = memfd(2 * page);
        let mo = MemoryObject::intern(&m).unwrap();
        let uf = memfd(2 * page);
        let u = MemoryObject::intern(&uf).unwrap();
        u.set_backing(vec![Segment {
            offset: 0,
            len: 2 * page,
            target: mo.clone(),
            target_offset: 0,
            whole_target: true,
        }])
        .unwrap();
        let rm = mo.region(&m, (2 * page) as usize, true).unwrap();
        let ru = u.region(&uf, (2 * page) as usize, true).unwrap();
        ((m, mo, rm), (uf, u, ru))
    }

    #[test]
    fn a_claim_of_an_object_made_of_all_of_another_holds_that_one_too() {
        let page = super::super::mem::page_size() as u64;
        let len = (2 * page) as usize;
        let ((_m, mo, rm), (_uf, u, ru)) = made_of_all(page);
        let conflict =
            |r: Result<View<'_>, BorrowError>| matches!(r, Err(BorrowError::Conflict { .. }));
        // A window on all of it: claims, no record anywhere; the memfd
        // counts the claim, and refuses its own windows while it lives.
        for via_claim in [true, false] {
            let mut w = if via_claim {
                u.claim_whole_with(&ru, 0..len, true, Some).unwrap()
            } else {
                u.borrow(&ru, 0..len, true).unwrap()
            };
            assert_eq!((u.live_borrows(), mo.live_borrows()), (1, 1));
            assert!(
                u.lock().is_empty() && mo.lock().is_empty(),
                "nothing recorded"
            );
            assert!(conflict(mo.borrow(&rm, 0..len, false)));
            assert!(conflict(mo.borrow(&rm, page as usize..len, false)));
            assert!(mo.claim_whole_with(&rm, 0..len, false, Some).is_none());
            if via_claim {
                let before = u.word().load(Ordering::Relaxed);
                assert_eq!(w.release_with(|c| c), before);
                // A second time, and the drop after, give nothing back.
                let after = u.word().load(Ordering::Relaxed);
                assert_eq!(w.release_with(|c| c), after);
                assert_eq!(u.word().load(Ordering::Relaxed), after);
            }
            drop(w);
            assert_eq!(
                (u.live_borrows(), mo.live_borrows()),
                (0, 0),
                "both given back, once"
            );
        }
        // The other way: a writer on the memfd refuses the claim, and the
        // refused claim leaves nothing behind on either object.
        let v = mo.borrow(&rm, page as usize..len, true).unwrap();
        assert!(u.claim_whole_with(&ru, 0..len, false, Some).is_none());
        match u.borrow(&ru, 0..len, false) {
            Err(BorrowError::Conflict { backing, .. }) => assert_eq!(backing, Some(mo.key())),
            other => panic!("expected a conflict on the memfd, got {other:?}"),
        }
        drop(v);
        assert_eq!((u.live_borrows(), mo.live_borrows()), (0, 0));
        // Readers through both at once; a rule of the owner's bits that
        // refuses gives the memfd's claim back too.
        let a = u.claim_whole_with(&ru, 0..len, false, Some).unwrap();
        let b = mo.borrow(&rm, 0..page as usize, false).unwrap();
        assert!(u.claim_whole_with(&ru, 0..len, false, |_| None).is_none());
        assert_eq!(mo.live_borrows(), 2);
        drop((a, b));
        assert_eq!((u.live_borrows(), mo.live_borrows()), (0, 0));
        // Part of a memfd: recorded on it, never claimed.
        let big = memfd(4 * page);
        let bo = MemoryObject::intern(&big).unwrap();
        let pf = memfd(2 * page);
        let p = MemoryObject::intern(&pf).unwrap();
        p.set_backing(two_pages_of(&bo, page, 0)).unwrap();
        let rp = p.region(&pf, len, true).unwrap();
        assert!(p.claim_whole_with(&rp, 0..len, true, Some).is_none());
        let w = p.borrow(&rp, 0..len, true).unwrap();
        assert_eq!(bo.lock().len(), 1, "recorded on the memfd");
        drop(w);
        assert_eq!(bo.live_borrows(), 0);
    }

    #[test]
    fn writers_through_an_object_and_the_one_it_is_made_of_never_overlap() {
        // Two threads race for exclusive windows on all of the memfd and
        // on all of the object made of it: never both at once.
        let page = super::super::mem::page_size() as u64;
        let len = (2 * page) as usize;
        let ((_m, mo, rm), (_uf, u, ru)) = made_of_all(page);
        let inside = AtomicU64::new(0);
        let granted = [AtomicU64::new(0), AtomicU64::new(0)];
        std::thread::scope(|s| {
            for (t, granted) in granted.iter().enumerate() {
                let (inside, mo, rm, u, ru) = (&inside, &mo, &rm, &u, &ru);
                s.spawn(move || {
                    for i in 0..20_000 {
                        let w = match (t, i % 2) {
                            (0, 0) => u.claim_whole_with(ru, 0..len, true, Some),
                            (0, _) => u.borrow(ru, 0..len, true).ok(),
                            (_, 0) => mo.claim_whole_with(rm, 0..len, true, Some),
                            _ => mo.borrow(rm, 0..len, true).ok(),
                        };
                        if let Some(w) = w {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                            granted.fetch_add(1, Ordering::Relaxed);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(w);
                        }
                    }
                });
            }
        });
        // (One thread may get none: it can run its turns while the other
        // sleeps holding its window.)
        let got: u64 = granted.iter().map(|g| g.load(Ordering::Relaxed)).sum();
        assert!(got > 0, "no window granted");
        assert_eq!((u.live_borrows(), mo.live_borrows()), (0, 0));
    }

    #[test]
    fn a_borrow_over_several_backing_ranges_records_on_each_or_on_none() {
        // An object of four pages made of two pieces of memfd `a` (its
        // pages 0 and 2) and one of memfd `b` (its page 1): a borrow of it
        // touches three objects and three backing ranges.
        let page = super::super::mem::page_size() as u64;
        let (a, b) = (memfd(4 * page), memfd(2 * page));
        let (ao, bo) = (
            MemoryObject::intern(&a).unwrap(),
            MemoryObject::intern(&b).unwrap(),
        );
        let uf = memfd(4 * page);
        let u = MemoryObject::intern(&uf).unwrap();
        let seg = |offset, target: &Arc<MemoryObject>, target_offset| Segment {
            offset,
            len: page,
            target: target.clone(),
            target_offset,
            whole_target: false,
        };
        u.set_backing(vec![
            seg(0, &ao, 0),
            seg(page, &ao, 2 * page),
            seg(2 * page, &bo, page),
        ])
        .unwrap();
        let ru = u.region(&uf, (4 * page) as usize, true).unwrap();
        let ra = ao.region(&a, (4 * page) as usize, true).unwrap();
        let rb = bo.region(&b, (2 * page) as usize, true).unwrap();
        let p = page as usize;
        // Pages 0..3 of u: records on u, twice on a, once on b.
        let w = u.borrow(&ru, 0..3 * p, true).unwrap();
        assert_eq!(
            (u.live_borrows(), ao.live_borrows(), bo.live_borrows()),
            (1, 2, 1)
        );
        for (o, r, at) in [(&ao, &ra, 0), (&ao, &ra, 2 * p), (&bo, &rb, p)] {
            assert_eq!(
                o.borrow(r, at..at + 1, false).unwrap_err(),
                BorrowError::Conflict {
                    with_exclusive: true,
                    overlap: at as u64..at as u64 + 1,
                    backing: None,
                },
                "{at}"
            );
        }
        // Pages not under it are free.
        drop(ao.borrow(&ra, p..2 * p, true).unwrap());
        drop(bo.borrow(&rb, 0..p, true).unwrap());
        drop(w);
        assert_eq!(
            (u.live_borrows(), ao.live_borrows(), bo.live_borrows()),
            (0, 0, 0)
        );
        // Refused on its last range (b's page 1 held): nothing recorded
        // anywhere, and every list flag down again.
        let held = bo.borrow(&rb, p..p + 1, false).unwrap();
        assert_eq!(
            u.borrow(&ru, 0..3 * p, true).unwrap_err(),
            BorrowError::Conflict {
                with_exclusive: false,
                overlap: page..page + 1,
                backing: Some(bo.key()),
            }
        );
        assert_eq!((u.live_borrows(), ao.live_borrows()), (0, 0));
        assert!(!u.claims().listed() && !ao.claims().listed());
        drop(held);
        assert!(!bo.claims().listed());
    }
}
