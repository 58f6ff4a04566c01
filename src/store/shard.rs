//! Operations on one shard. Every method here runs with the shard's lock held (a
//! [`Shard`] is only reachable through a [`crate::store::cache::ShardGuard`]) and does nothing but
//! scan, compare and copy bytes: no allocation, no OpenSSL.
//!
//! Invariants a healthy shard keeps (and [`Shard::repair`] restores):
//! - a unit whose tag is `TAG_FREE` is all zero (freed entries are wiped: they held secrets);
//! - a head unit's tag is the id's hash tag, its header decodes, its `k-1` following units
//!   are tagged `TAG_CONT`, its checksum verifies and its id hashes to this shard;
//! - `live` and `used_units` count the heads and their units.

use std::ptr;
use std::sync::atomic::Ordering::Relaxed;

use crate::fault::{self, FaultPoint};
use crate::store::layout::{
    Counter, EntryHeader, Geometry, ShardHeader, ENTRY_HEADER_BYTES, TAG_CONT, TAG_FREE,
};

/// The largest number of units a shard can have (unit_bytes >= 64 bounds it).
const MAX_UNITS: usize = 512;

pub struct Shard<'a> {
    pub(crate) hdr: &'a ShardHeader,
    tags: *mut u16,
    units: *mut u8,
    geo: &'a Geometry,
}

/// Whether a lookup removes the entry it found, in the same critical section as the copy.
#[derive(Clone, Copy, Debug)]
pub enum Take {
    Never,
    Always,
    /// Only when the predicate says so about the payload. Callers that store opaque bytes
    /// (the Apache provider) use it to make TLS 1.3 sessions single use and leave TLS 1.2
    /// sessions, which clients legitimately resume many times, in place.
    If(fn(&[u8]) -> bool),
}

impl Take {
    /// Whether a lookup taking this way removes an entry holding `payload`.
    pub fn applies_to(self, payload: &[u8]) -> bool {
        match self {
            Take::Never => false,
            Take::Always => true,
            Take::If(pred) => pred(payload),
        }
    }
}

impl From<bool> for Take {
    fn from(take: bool) -> Take {
        if take {
            Take::Always
        } else {
            Take::Never
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Copied `len` payload bytes into the caller's buffer.
    Hit {
        len: usize,
        created: u32,
        expires: u32,
    },
    /// An entry exists but the buffer holds fewer than `needed` bytes; nothing was changed.
    BufferTooSmall {
        needed: usize,
    },
    Miss,
}

/// One live entry, as listed by [`Shard::entries`]. Never carries the session bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub id: Vec<u8>,
    pub payload_len: usize,
    pub units: usize,
    pub created: u32,
    pub expires: u32,
}

/// A live entry with its payload, as [`Shard::export`] copies it. The payload holds a
/// master secret: it is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct ExportedEntry {
    pub id: Vec<u8>,
    pub created: u32,
    pub expires: u32,
    pub data: Vec<u8>,
}

impl Drop for ExportedEntry {
    fn drop(&mut self) {
        crate::util::wipe(&mut self.data);
    }
}

impl std::fmt::Debug for ExportedEntry {
    // Never print the payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ExportedEntry {{ id: {} bytes, {} data bytes }}",
            self.id.len(),
            self.data.len()
        )
    }
}

/// Times of the live entries of one shard or of the whole cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ages {
    pub live: u64,
    pub oldest_created: Option<u32>,
    pub newest_created: Option<u32>,
    pub earliest_expiry: Option<u32>,
    pub latest_expiry: Option<u32>,
    /// Sum over live entries of (expiry - now), for the average time left.
    pub time_left_sum: u64,
}

impl Ages {
    fn add(&mut self, created: u32, expires: u32, now: u32) {
        self.live += 1;
        self.oldest_created = Some(self.oldest_created.map_or(created, |o| o.min(created)));
        self.newest_created = Some(self.newest_created.map_or(created, |o| o.max(created)));
        self.earliest_expiry = Some(self.earliest_expiry.map_or(expires, |o| o.min(expires)));
        self.latest_expiry = Some(self.latest_expiry.map_or(expires, |o| o.max(expires)));
        self.time_left_sum = self
            .time_left_sum
            .saturating_add(u64::from(expires.saturating_sub(now)));
    }

    pub fn merge(&mut self, o: &Ages) {
        fn pick(a: Option<u32>, b: Option<u32>, f: fn(u32, u32) -> u32) -> Option<u32> {
            match (a, b) {
                (Some(x), Some(y)) => Some(f(x, y)),
                (x, y) => x.or(y),
            }
        }
        self.live = self.live.saturating_add(o.live);
        self.oldest_created = pick(self.oldest_created, o.oldest_created, u32::min);
        self.newest_created = pick(self.newest_created, o.newest_created, u32::max);
        self.earliest_expiry = pick(self.earliest_expiry, o.earliest_expiry, u32::min);
        self.latest_expiry = pick(self.latest_expiry, o.latest_expiry, u32::max);
        self.time_left_sum = self.time_left_sum.saturating_add(o.time_left_sum);
    }
}

pub struct NewEntry<'d> {
    pub id: &'d [u8],
    pub data: &'d [u8],
    /// Where `id` sits inside `data`, or `None` to prepend it.
    pub id_in_data: Option<usize>,
    pub tag: u16,
    pub created: u32,
    pub expires: u32,
    /// Goes before the shard's other live entries when room is needed ([`EntryHeader::spare`]).
    pub spare: bool,
}

impl NewEntry<'_> {
    pub fn stored_len(&self) -> usize {
        self.data.len()
            + if self.id_in_data.is_some() {
                0
            } else {
                self.id.len()
            }
    }
}

/// Result of a repair pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairReport {
    pub kept: usize,
    pub dropped: usize,
}

impl<'a> Shard<'a> {
    /// # Safety
    /// `base` must point to a whole shard (geo.shard_stride bytes) inside a live mapping, and
    /// the caller must hold that shard's lock for as long as the `Shard` is used.
    pub unsafe fn from_base(base: *mut u8, geo: &'a Geometry) -> Shard<'a> {
        // SAFETY: the caller's promise: a whole locked shard, so its header, tag array and
        // units lie at these offsets of the validated geometry.
        unsafe {
            Shard {
                hdr: &*(base as *const ShardHeader),
                tags: base.add(geo.tags_offset) as *mut u16,
                units: base.add(geo.units_offset),
                geo,
            }
        }
    }

    fn n(&self) -> usize {
        self.geo.units_per_shard
    }

    fn tag(&self, i: usize) -> u16 {
        debug_assert!(i < self.n());
        // SAFETY: i < units_per_shard; the tag array lies inside the shard.
        unsafe { ptr::read_volatile(self.tags.add(i)) }
    }

    fn set_tag(&self, i: usize, t: u16) {
        // SAFETY: as in tag().
        unsafe { ptr::write_volatile(self.tags.add(i), t) }
    }

    fn unit_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: i <= units_per_shard, so the pointer stays within (or one past) the shard.
        unsafe { self.units.add(i * self.geo.unit_bytes) }
    }

    pub(crate) fn bump(&self, c: Counter) {
        let a = &self.hdr.counters[c as usize];
        a.store(a.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// The header of the entry whose head is unit `i`, if it is structurally sound: decodes,
    /// fits in the shard, and its continuation units are tagged as such.
    fn header_at(&self, i: usize) -> Option<EntryHeader> {
        let mut raw = [0u8; ENTRY_HEADER_BYTES];
        // SAFETY: unit i lies inside the shard and a unit is larger than an entry header.
        unsafe { ptr::copy_nonoverlapping(self.unit_ptr(i), raw.as_mut_ptr(), ENTRY_HEADER_BYTES) };
        let h = EntryHeader::decode(&raw)?;
        let k = self.geo.units_for(h.stored_len);
        if i + k > self.n() || (i + 1..i + k).any(|j| self.tag(j) != TAG_CONT) {
            return None;
        }
        Some(h)
    }

    /// The stored bytes of a structurally sound entry (see `header_at`).
    fn stored(&self, i: usize, h: &EntryHeader) -> &[u8] {
        // SAFETY: header_at checked that the entry's units lie inside the shard; units are
        // contiguous, so the stored bytes are too.
        unsafe {
            std::slice::from_raw_parts(self.unit_ptr(i).add(ENTRY_HEADER_BYTES), h.stored_len)
        }
    }

    fn id_of<'s>(&'s self, i: usize, h: &EntryHeader) -> &'s [u8] {
        &self.stored(i, h)[h.id_off..h.id_off + h.id_len]
    }

    fn checksum_ok(&self, i: usize, h: &EntryHeader) -> bool {
        h.compute_checksum(self.stored(i, h)) == h.checksum
    }

    /// Wipe units `i..i+k` and mark them free. Secrets do not outlive their entry.
    fn wipe(&self, i: usize, k: usize) {
        // Tags first: a death half way leaves free-tagged garbage, which repair wipes, rather
        // than a head pointing at half-zeroed bytes.
        for j in i..i + k {
            self.set_tag(j, TAG_FREE);
        }
        fault::point(FaultPoint::MidWipe);
        // SAFETY: the units lie inside the shard (callers pass k from a checked header or 1).
        unsafe { ptr::write_bytes(self.unit_ptr(i), 0, k * self.geo.unit_bytes) };
    }

    fn free_entry(&self, i: usize, h: &EntryHeader) {
        let k = self.geo.units_for(h.stored_len);
        self.wipe(i, k);
        self.hdr
            .live
            .store(self.hdr.live.load(Relaxed).saturating_sub(1), Relaxed);
        self.hdr.used_units.store(
            self.hdr.used_units.load(Relaxed).saturating_sub(k as u32),
            Relaxed,
        );
    }

    /// A head whose header is garbage. Its length cannot be trusted, but the run of
    /// continuation units right after it can only be its own (a continuation always follows its
    /// head), so the head and that run are wiped (they hold session bytes) and given back.
    fn drop_corrupt_head(&self, i: usize) {
        let k = 1
            + (i + 1..self.n())
                .take_while(|&j| self.tag(j) == TAG_CONT)
                .count();
        self.wipe(i, k);
        self.bump(Counter::CorruptDropped);
        self.hdr
            .live
            .store(self.hdr.live.load(Relaxed).saturating_sub(1), Relaxed);
        self.hdr.used_units.store(
            self.hdr.used_units.load(Relaxed).saturating_sub(k as u32),
            Relaxed,
        );
    }

    /// Visit every head unit in order with its header, or `None` if the header is not sound.
    /// The walk steps over a sound entry's continuation units (computed before `visit` runs,
    /// so `visit` may free the entry) and over free and orphan continuation units.
    fn for_each_head(&self, mut visit: impl FnMut(usize, Option<EntryHeader>)) {
        let mut i = 0;
        while i < self.n() {
            if matches!(self.tag(i), TAG_FREE | TAG_CONT) {
                i += 1;
                continue;
            }
            let h = self.header_at(i);
            let step = h.map_or(1, |h| self.geo.units_for(h.stored_len));
            visit(i, h);
            i += step;
        }
    }

    /// Find the head of the entry for `id`. The tags are compared four at a time (one u64
    /// word, SWAR), so the scan, whose length grows with the position of the match in a fuller
    /// shard, costs a quarter as much (callgrind, 10^5 sessions: 1,774 to 1,585 instructions
    /// per hit).
    pub fn find(&self, tag: u16, id: &[u8]) -> Option<(usize, EntryHeader)> {
        const LANES: u64 = 0x0001_0001_0001_0001;
        let pattern = u64::from(tag) * LANES;
        let n = self.n();
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: tags i..i+4 lie inside the tag array, which is 64-byte aligned (the
            // shard header's alignment), so this u64 read is aligned.
            let word = unsafe { ptr::read_volatile(self.tags.add(i) as *const u64) };
            let x = word ^ pattern;
            // Non-zero iff some 16-bit lane of x is zero, i.e. some tag equals `tag` (it may
            // also flag a lane above a true match; every lane is checked exactly below).
            if x.wrapping_sub(LANES) & !x & (LANES << 15) != 0 {
                for j in i..i + 4 {
                    if let Some(found) = self.check_head(j, tag, id) {
                        return Some(found);
                    }
                }
            }
            i += 4;
        }
        (i..n).find_map(|j| self.check_head(j, tag, id))
    }

    /// Unit `i` is the head of the entry for `id` (a damaged head with that tag is dropped).
    fn check_head(&self, i: usize, tag: u16, id: &[u8]) -> Option<(usize, EntryHeader)> {
        if self.tag(i) != tag {
            return None;
        }
        match self.header_at(i) {
            Some(h) if self.id_of(i, &h) == id => Some((i, h)),
            Some(_) => None,
            None => {
                self.drop_corrupt_head(i);
                None
            }
        }
    }

    /// Copy the entry for `id` into `out`; with `take`, remove it in the same critical section
    /// (TLS 1.3 single use). Expired or corrupt entries are removed and reported as a miss.
    pub fn lookup(&self, tag: u16, id: &[u8], out: &mut [u8], take: bool, now: u32) -> Found {
        self.lookup_taking(tag, id, out, Take::from(take), now)
    }

    /// [`lookup`](Self::lookup) with the decision to remove the entry made by `take`, which
    /// may look at the copied payload while the lock is still held.
    pub fn lookup_taking(
        &self,
        tag: u16,
        id: &[u8],
        out: &mut [u8],
        take: Take,
        now: u32,
    ) -> Found {
        let Some((i, h)) = self.find(tag, id) else {
            self.bump(Counter::LookupMiss);
            return Found::Miss;
        };
        if !self.checksum_ok(i, &h) {
            self.free_entry(i, &h);
            self.bump(Counter::CorruptDropped);
            self.bump(Counter::LookupMiss);
            return Found::Miss;
        }
        if h.expires <= now {
            self.free_entry(i, &h);
            self.bump(Counter::Expired);
            self.bump(Counter::LookupMiss);
            return Found::Miss;
        }
        let payload = &self.stored(i, &h)[h.payload_range()];
        if out.len() < payload.len() {
            return Found::BufferTooSmall {
                needed: payload.len(),
            };
        }
        out[..payload.len()].copy_from_slice(payload);
        let len = payload.len();
        if take.applies_to(&out[..len]) {
            self.free_entry(i, &h);
            self.bump(Counter::Taken);
        }
        self.bump(Counter::LookupHit);
        Found::Hit {
            len,
            created: h.created,
            expires: h.expires,
        }
    }

    /// Take (remove, counted in `taken`) the entry for `id` if it still holds `expected`, the
    /// bytes an earlier lookup copied: whether it did. Counts no lookup (that one did).
    pub fn take_if_unchanged(&self, tag: u16, id: &[u8], expected: &[u8], now: u32) -> bool {
        let Some((i, h)) = self.find(tag, id) else {
            return false;
        };
        let same = h.expires > now
            && self.checksum_ok(i, &h)
            && self.stored(i, &h)[h.payload_range()] == *expected;
        if same {
            self.free_entry(i, &h);
            self.bump(Counter::Taken);
        }
        same
    }

    pub fn remove(&self, tag: u16, id: &[u8]) -> bool {
        match self.find(tag, id) {
            Some((i, h)) => {
                self.free_entry(i, &h);
                self.bump(Counter::RemoveHit);
                true
            }
            None => {
                self.bump(Counter::RemoveMiss);
                false
            }
        }
    }

    /// Store `e`, replacing an entry with the same id and evicting as needed. `k` units must
    /// not exceed the shard (the cache checks sizes before locking).
    /// Returns how many live entries were evicted to make room.
    pub fn store(&self, e: &NewEntry<'_>, now: u32) -> u64 {
        let evicted_before = self.hdr.counters[Counter::EvictedLive as usize].load(Relaxed);
        if let Some((i, h)) = self.find(e.tag, e.id) {
            self.free_entry(i, &h);
            self.bump(Counter::Replaced);
        }
        let stored_len = e.stored_len();
        let k = self.geo.units_for(stored_len);
        let start = if k == 1 {
            self.make_room_for_one(now)
        } else {
            self.make_room(k, now)
        };
        self.write(start, k, e);
        self.bump(Counter::Stores);
        self.hdr.counters[Counter::EvictedLive as usize]
            .load(Relaxed)
            .wrapping_sub(evicted_before)
    }

    fn write(&self, start: usize, k: usize, e: &NewEntry<'_>) {
        let (id_prefixed, id_off) = match e.id_in_data {
            Some(off) => (false, off),
            None => (true, 0),
        };
        let mut h = EntryHeader {
            stored_len: e.stored_len(),
            id_prefixed,
            id_len: e.id.len(),
            id_off,
            created: e.created,
            expires: e.expires,
            checksum: 0,
            spare: e.spare,
        };
        let body = self.unit_ptr(start).wrapping_add(ENTRY_HEADER_BYTES);
        // SAFETY: units start..start+k are free and inside the shard; k was computed from
        // stored_len so header + stored bytes fit.
        unsafe {
            let mut at = body;
            if id_prefixed {
                ptr::copy_nonoverlapping(e.id.as_ptr(), at, e.id.len());
                at = at.add(e.id.len());
            }
            ptr::copy_nonoverlapping(e.data.as_ptr(), at, e.data.len());
            let stored = std::slice::from_raw_parts(body, h.stored_len);
            h.checksum = h.compute_checksum(stored);
            fault::point(FaultPoint::MidWrite);
            ptr::copy_nonoverlapping(
                h.encode().as_ptr(),
                self.unit_ptr(start),
                ENTRY_HEADER_BYTES,
            );
        }
        for j in start + 1..start + k {
            self.set_tag(j, TAG_CONT);
        }
        fault::point(FaultPoint::BeforeHeadTag);
        // The head tag last: until it is set, nothing finds the entry.
        self.set_tag(start, e.tag);
        self.hdr
            .live
            .store(self.hdr.live.load(Relaxed).wrapping_add(1), Relaxed);
        self.hdr.used_units.store(
            self.hdr.used_units.load(Relaxed).wrapping_add(k as u32),
            Relaxed,
        );
    }

    /// Evict an entry whose units are freed by this; returns whether it was expired.
    fn evict(&self, i: usize, h: &EntryHeader, now: u32) {
        let expired = h.expires <= now;
        self.free_entry(i, h);
        self.bump(if expired {
            Counter::Expired
        } else {
            Counter::EvictedLive
        });
    }

    /// A unit for a one-unit entry: a free one, else the first-to-go expired entry, else the
    /// oldest live spare, else the oldest live entry.
    fn make_room_for_one(&self, now: u32) -> usize {
        let mut expired: Option<(usize, EntryHeader)> = None;
        let mut oldest_spare: Option<(usize, EntryHeader)> = None;
        let mut oldest: Option<(usize, EntryHeader)> = None;
        for i in 0..self.n() {
            match self.tag(i) {
                TAG_FREE => return i,
                TAG_CONT => continue,
                _ => {}
            }
            let Some(h) = self.header_at(i) else {
                self.drop_corrupt_head(i);
                return i;
            };
            if h.expires <= now {
                if expired.is_none_or(|(_, e)| h.expires < e.expires) {
                    expired = Some((i, h));
                }
            } else {
                let pick = if h.spare {
                    &mut oldest_spare
                } else {
                    &mut oldest
                };
                if pick.is_none_or(|(_, o)| h.created < o.created) {
                    *pick = Some((i, h));
                }
            }
        }
        match expired.or(oldest_spare).or(oldest) {
            Some((i, h)) => {
                self.evict(i, &h, now);
                i
            }
            // No free unit and no head: every tag says "continuation", which only damaged or
            // hostile bytes do. Those units belong to nobody; unit 0 is reclaimed.
            None => {
                self.wipe(0, 1);
                self.bump(Counter::CorruptDropped);
                0
            }
        }
    }

    /// `k` consecutive units: the window that evicts the fewest live entries other than spares,
    /// then the fewest live spares, and among those the one whose newest victim is oldest (free
    /// and expired space is used first).
    fn make_room(&self, k: usize, now: u32) -> usize {
        let n = self.n();
        // owner[j]: index of the head owning unit j, or u16::MAX when free.
        let mut owner = [u16::MAX; MAX_UNITS];
        // A CONT with no sound head before it is an orphan: its unit counts as free.
        self.for_each_head(|i, h| match h {
            Some(h) => owner[i..i + self.geo.units_for(h.stored_len)].fill(i as u16),
            None => self.drop_corrupt_head(i),
        });
        // Cost of a window: (live victims other than spares, live spares, newest live victim's
        // creation, victims at all).
        let mut best: Option<(usize, (usize, usize, u32, usize))> = None;
        for s in 0..=n - k {
            let mut cost = (0usize, 0usize, 0u32, 0usize);
            let mut last_head = u16::MAX;
            for &o in &owner[s..s + k] {
                if o == u16::MAX || o == last_head {
                    continue;
                }
                last_head = o;
                cost.3 += 1;
                if let Some(h) = self.header_at(o as usize) {
                    if h.expires > now {
                        if h.spare {
                            cost.1 += 1;
                        } else {
                            cost.0 += 1;
                        }
                        cost.2 = cost.2.max(h.created);
                    }
                }
            }
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((s, cost));
                if cost == (0, 0, 0, 0) {
                    break;
                }
            }
        }
        let (s, _) = best.expect("k never exceeds units_per_shard");
        // Free every entry overlapping the window (a victim may start before it).
        let mut j = s;
        while j < s + k {
            let o = owner[j];
            if o == u16::MAX {
                if self.tag(j) == TAG_CONT {
                    self.wipe(j, 1); // orphan continuation
                }
                j += 1;
                continue;
            }
            let head = o as usize;
            match self.header_at(head) {
                Some(h) => {
                    self.evict(head, &h, now);
                    j = head + self.geo.units_for(h.stored_len);
                }
                None => {
                    self.drop_corrupt_head(head);
                    j += 1;
                }
            }
        }
        s
    }

    /// Remove entries expired at `now` (all entries when `now` is `None`). Returns how many.
    pub fn flush(&self, now: Option<u32>) -> usize {
        let mut removed = 0;
        self.for_each_head(|i, h| match h {
            Some(h) if now.is_none_or(|t| h.expires <= t) => {
                self.free_entry(i, &h);
                if now.is_some() {
                    self.bump(Counter::Expired);
                }
                removed += 1;
            }
            Some(_) => {}
            None => self.drop_corrupt_head(i),
        });
        removed
    }

    /// Live entries (ids and times only), for listing and dumping.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut v = Vec::new();
        // Read-only: a damaged head is skipped here and dropped by the next lookup or flush.
        self.for_each_head(|i, h| {
            if let Some(h) = h {
                v.push(EntryInfo {
                    id: self.id_of(i, &h).to_vec(),
                    payload_len: h.payload_range().len(),
                    units: self.geo.units_for(h.stored_len),
                    created: h.created,
                    expires: h.expires,
                });
            }
        });
        v
    }

    /// The creation and expiry times of the live entries, for the statistics.
    pub fn ages(&self, now: u32) -> Ages {
        let mut a = Ages::default();
        self.for_each_head(|_, h| {
            if let Some(h) = h.filter(|h| h.expires > now) {
                a.add(h.created, h.expires, now);
            }
        });
        a
    }

    /// Copies of the live entries (id, times, payload) that verify, for dumping. Allocates
    /// under the lock: a tool's path, never a handshake's.
    pub fn export(&self, now: u32) -> Vec<ExportedEntry> {
        let mut v = Vec::new();
        self.for_each_head(|i, h| {
            let Some(h) = h.filter(|h| h.expires > now && self.checksum_ok(i, h)) else {
                return;
            };
            v.push(ExportedEntry {
                id: self.id_of(i, &h).to_vec(),
                created: h.created,
                expires: h.expires,
                data: self.stored(i, &h)[h.payload_range()].to_vec(),
            });
        });
        v
    }

    /// Bring the shard back to its invariants after a crash or panic inside the critical
    /// section: keep every entry that verifies completely (structure, checksum, id hashing to
    /// this shard with this tag), wipe everything else, recount.
    /// `placement(id)` gives the (shard, tag) the id belongs to.
    pub fn repair(
        &self,
        this_shard: usize,
        placement: &dyn Fn(&[u8]) -> (usize, u16),
    ) -> RepairReport {
        let mut report = RepairReport::default();
        let (mut live, mut used) = (0u32, 0u32);
        let mut i = 0;
        while i < self.n() {
            let t = self.tag(i);
            if t == TAG_FREE || t == TAG_CONT {
                // Free units must be zero; an orphan continuation is garbage.
                if t == TAG_CONT || !self.unit_is_zero(i) {
                    self.wipe(i, 1);
                }
                i += 1;
                continue;
            }
            fault::point(FaultPoint::MidRepair);
            let verified = self.header_at(i).filter(|h| {
                self.checksum_ok(i, h) && placement(self.id_of(i, h)) == (this_shard, t)
            });
            match verified {
                Some(h) => {
                    let k = self.geo.units_for(h.stored_len);
                    live += 1;
                    used += k as u32;
                    report.kept += 1;
                    i += k;
                }
                None => {
                    self.wipe(i, 1);
                    self.bump(Counter::CorruptDropped);
                    report.dropped += 1;
                    i += 1;
                }
            }
        }
        self.hdr.live.store(live, Relaxed);
        self.hdr.used_units.store(used, Relaxed);
        report
    }

    fn unit_is_zero(&self, i: usize) -> bool {
        // SAFETY: unit i lies inside the shard.
        let u = unsafe { std::slice::from_raw_parts(self.unit_ptr(i), self.geo.unit_bytes) };
        u.iter().all(|&b| b == 0)
    }

    /// Test support: set the tag of unit `i` (to damage a shard on purpose).
    #[cfg(test)]
    pub fn set_tag_for_tests(&self, i: usize, t: u16) {
        self.set_tag(i, t)
    }

    /// Test support: the raw bytes of unit `i` (to corrupt them on purpose).
    #[cfg(test)]
    #[allow(clippy::mut_from_ref)] // shared memory: exclusivity comes from the shard lock
    pub fn unit_bytes_mut(&self, i: usize) -> &mut [u8] {
        // SAFETY: unit i lies inside the shard; tests hold the lock.
        unsafe { std::slice::from_raw_parts_mut(self.unit_ptr(i), self.geo.unit_bytes) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::cache::{Cache, Config, Found};
    use crate::store::layout::{Geometry, DEFAULT_UNIT_BYTES, HEADER_BYTES};

    const NOW: u32 = 1_800_000_000;

    /// A head whose header no longer decodes is dropped together with its continuation units:
    /// none of its session bytes stay behind and `used_units` goes back to zero.
    #[test]
    fn a_corrupt_head_takes_its_continuations_with_it() {
        let g = Geometry::plan(1 << 20, DEFAULT_UNIT_BYTES).unwrap();
        let c = Cache::create(&Config {
            size_bytes: (HEADER_BYTES + g.shard_stride) as u64,
            lock_timeout: Some(Duration::from_secs(5)),
            ..Config::default()
        })
        .unwrap();
        let id = [0x5au8; 32];
        let data = vec![0xC3u8; 900]; // five 200-byte units
        c.store_at(&id, &data, NOW, NOW + 60, NOW).unwrap();
        let k = c.geometry().units_for(900 + 32);
        assert_eq!(c.stats().used_units, k as u64);
        {
            let guard = c.lock_shard(0).unwrap();
            let head = (0..c.geometry().units_per_shard)
                .find(|&i| guard.unit_bytes_mut(i)[16..].starts_with(&id))
                .expect("the entry's head unit");
            guard.unit_bytes_mut(head)[2] = 0; // id length 0: the header no longer decodes
        }
        let mut buf = vec![0u8; 2048];
        assert!(matches!(
            c.lookup_at(&id, &mut buf, false, NOW).unwrap(),
            Found::Miss
        ));
        let s = c.stats();
        assert_eq!(
            (s.corrupt_dropped, s.entries, s.used_units),
            (1, 0, 0),
            "{s:?}"
        );
        let guard = c.lock_shard(0).unwrap();
        for i in 0..c.geometry().units_per_shard {
            assert!(
                guard.unit_bytes_mut(i).iter().all(|&b| b == 0),
                "unit {i} still holds bytes of the dropped entry"
            );
        }
    }
}
