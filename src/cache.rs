//! The cache: maps ids to shards, takes the shard locks (repairing after a crash), and
//! offers store / lookup / take / remove / flush / statistics over raw bytes. Knows nothing of
//! OpenSSL; `glue.rs` turns sessions into bytes outside any lock.

use std::hash::Hasher;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use crate::error::{Error, ErrorKind, Result};
use crate::fault::{self, FaultPoint};
use crate::layout::{
    Counter, Geometry, Globals, RemoteStats, ShardHeader, COUNTERS, GLOBALS_OFFSET, HEADER_BYTES,
    MAX_ID_LEN, MAX_SESSION_BYTES,
};
use crate::lock::{Acquired, LockError, ShardLock};
use crate::log::{self, Level};
use crate::segment::{self, Mapping, Origin};
pub use crate::shard::{Ages, EntryInfo, ExportedEntry, Found, Take};
use crate::shard::{NewEntry, Shard};

/// How to build or find a segment.
#[derive(Clone, Debug)]
pub struct Config {
    /// `None`: anonymous shared memory, inherited by children forked afterwards.
    pub path: Option<PathBuf>,
    pub size_bytes: u64,
    pub unit_bytes: u32,
    /// Longest wait for a shard lock before an operation gives up (a lookup becomes a miss).
    /// `None` waits forever (only a live, stuck owner can make it wait: a dead one is recovered).
    pub lock_timeout: Option<Duration>,
    /// Owner (uid, gid) to give a newly created named segment file, e.g. when root
    /// pre-creates it for a server that runs as another user. `None`: the creator's.
    pub owner: Option<(u32, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: None,
            size_bytes: 8 << 20,
            unit_bytes: crate::layout::DEFAULT_UNIT_BYTES,
            lock_timeout: Some(Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS)),
            owner: None,
        }
    }
}

pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 200;

pub struct Cache {
    map: Mapping,
    geo: Geometry,
    hash_key: [u64; 2],
    origin: Origin,
    path: Option<PathBuf>,
    lock_timeout: Option<Duration>,
}

/// Statistics, summed over shards (read without locks: each counter is exact, the set is a
/// near-instant snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub stores: u64,
    pub replaced: u64,
    pub expired: u64,
    pub evicted_live: u64,
    pub lookup_hits: u64,
    pub lookup_misses: u64,
    pub remove_hits: u64,
    pub remove_misses: u64,
    pub taken: u64,
    pub owner_died_recoveries: u64,
    pub dirty_repairs: u64,
    pub corrupt_dropped: u64,
    pub too_large: u64,
    pub bad_input: u64,
    pub lock_timeouts: u64,
    pub lock_errors: u64,
    pub tls13_stateless_skipped: u64,
    pub encode_errors: u64,
    pub decode_errors: u64,
    pub ids_generated: u64,
    pub id_collisions: u64,
    pub lock_contended: u64,
    pub lock_wait_ns: u64,
    /// The second tier's counters.
    pub remote: RemoteStats,
    pub sni_mismatch: u64,
    pub hrr_resumed: u64,
    pub anti_replay_skipped: u64,
    /// When the segment was created (Unix seconds).
    pub created_unix: u64,
    pub entries: u64,
    pub used_units: u64,
    pub capacity_units: u64,
    pub shard_count: u64,
    pub unit_bytes: u64,
    pub units_per_shard: u64,
    pub total_bytes: u64,
    pub min_shard_used_units: u64,
    pub max_shard_used_units: u64,
}

/// Holds a shard lock; releasing it clears the dirty flag unless we are unwinding from a panic,
/// in which case the next locker repairs the shard.
pub struct ShardGuard<'a> {
    shard: Shard<'a>,
    lock: ShardLock,
}

impl<'a> std::ops::Deref for ShardGuard<'a> {
    type Target = Shard<'a>;
    fn deref(&self) -> &Shard<'a> {
        &self.shard
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            fault::point(FaultPoint::BeforeUnlock);
            self.shard.hdr.dirty.store(0, Relaxed);
        }
        self.lock.unlock();
    }
}

fn check_id(id: &[u8]) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!(
            "session id length {} is invalid: must be 1 to {MAX_ID_LEN} bytes",
            id.len()
        )));
    }
    Ok(())
}

impl Cache {
    /// Create a segment (or attach to the named one) as `cfg` says.
    pub fn create(cfg: &Config) -> Result<Cache> {
        let geo = Geometry::plan(cfg.size_bytes, cfg.unit_bytes).map_err(Error::invalid)?;
        let mut key = [0u8; 16];
        crate::util::random_bytes(&mut key);
        let hash_key = [
            u64::from_ne_bytes(key[..8].try_into().unwrap()),
            u64::from_ne_bytes(key[8..].try_into().unwrap()),
        ];
        let init = |m: &Mapping| init_segment(m, &geo, hash_key);
        let (map, origin) = match &cfg.path {
            None => {
                let m = segment::create_anonymous(&geo)?;
                init(&m)?;
                (m, Origin::Anonymous)
            }
            Some(p) => segment::create_or_attach(p, &geo, cfg.owner, &init)?,
        };
        Self::from_mapping(map, origin, cfg.path.clone(), cfg.lock_timeout)
    }

    /// Attach to an existing named segment, whatever its size (for tools).
    pub fn attach(path: &Path, lock_timeout: Option<Duration>) -> Result<Cache> {
        Self::attach_with(path, lock_timeout, segment::Trust::Owner)
    }

    /// Attach with an explicit owner policy (`shmsesscache` run by root inspects segments
    /// whatever their owner).
    pub fn attach_with(
        path: &Path,
        lock_timeout: Option<Duration>,
        trust: segment::Trust,
    ) -> Result<Cache> {
        let map = segment::attach_with(path, trust)?;
        Self::from_mapping(
            map,
            Origin::AttachedFile,
            Some(path.to_owned()),
            lock_timeout,
        )
    }

    fn from_mapping(
        map: Mapping,
        origin: Origin,
        path: Option<PathBuf>,
        lock_timeout: Option<Duration>,
    ) -> Result<Cache> {
        let h = segment::header(&map);
        let geo = Geometry::from_header(&h, map.len() as u64).map_err(Error::format)?;
        if geo.total_bytes != map.len() {
            return Err(Error::format(format!(
                "segment geometry covers {} bytes but {} are mapped",
                geo.total_bytes,
                map.len()
            )));
        }
        let hash_key = h.hash_key;
        Ok(Cache {
            map,
            geo,
            hash_key,
            origin,
            path,
            lock_timeout,
        })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn created_unix(&self) -> u64 {
        segment::header(&self.map).created_unix
    }

    /// Address of this process's mapping of the segment (diagnostics: /proc/PID/smaps).
    pub fn segment_base(&self) -> usize {
        self.map.base() as usize
    }

    pub(crate) fn globals(&self) -> &Globals {
        // SAFETY: page 0 is mapped; Globals lies inside it (asserted in layout.rs) and consists
        // of atomics only.
        unsafe { &*(self.map.base().add(GLOBALS_OFFSET) as *const Globals) }
    }

    fn shard_base(&self, idx: usize) -> *mut u8 {
        debug_assert!(idx < self.geo.shard_count);
        // SAFETY: idx < shard_count, so the shard lies inside the mapping (validated geometry).
        unsafe {
            self.map
                .base()
                .add(HEADER_BYTES + idx * self.geo.shard_stride)
        }
    }

    #[cfg(test)]
    pub(crate) fn shard_mutex_for_tests(&self, idx: usize) -> *mut libc::pthread_mutex_t {
        self.shard_base(idx) as *mut libc::pthread_mutex_t
    }

    fn shard_header(&self, idx: usize) -> &ShardHeader {
        // SAFETY: see shard_base; ShardHeader is interior-mutable (atomics, pthread mutex).
        unsafe { &*(self.shard_base(idx) as *const ShardHeader) }
    }

    /// Which shard an id lives in, and its 15-bit tag (never FREE or CONT).
    pub fn placement(&self, id: &[u8]) -> (usize, u16) {
        let mut h = SipHasher13::new_with_keys(self.hash_key[0], self.hash_key[1]);
        h.write(id);
        let x = h.finish();
        let shard = ((u128::from(x) * self.geo.shard_count as u128) >> 64) as usize;
        (shard, (x & 0x7fff) as u16 + 1)
    }

    /// Take shard `idx`'s lock, repairing the shard first if its last holder died or panicked.
    pub fn lock_shard(&self, idx: usize) -> Result<ShardGuard<'_>> {
        self.map.check_backing(false)?; // a truncated file: an error, not SIGBUS
        let base = self.shard_base(idx);
        // SAFETY: the mutex is the first field of the shard header inside the mapping.
        let lock = unsafe { ShardLock::from_ptr(base as *mut libc::pthread_mutex_t) };
        let acquired = match self.acquire(&lock) {
            Ok(a) => a,
            Err(e) => return Err(self.lock_failed(idx, e)),
        };
        // SAFETY: we hold the lock for as long as the guard lives.
        let shard = unsafe { Shard::from_base(base, &self.geo) };
        let dirty = shard.hdr.dirty.load(Relaxed) != 0;
        let guard = ShardGuard { shard, lock };
        if acquired == Acquired::OwnerDied || dirty {
            // Stay dirty throughout the repair: dying in it makes the next locker start over.
            guard.hdr.dirty.store(1, Relaxed);
            // Counted when observed, before repairing: if we die in the repair, the next locker
            // sees EOWNERDEAD again and counts it again, so the counter equals the number of
            // EOWNERDEAD results (= deaths inside a critical section).
            guard.bump(if acquired == Acquired::OwnerDied {
                Counter::OwnerDied
            } else {
                Counter::DirtyRepairs
            });
            let report = guard.repair(idx, &|id| self.placement(id));
            if acquired == Acquired::OwnerDied {
                if let Err(e) = guard.lock.mark_consistent() {
                    log::emit(
                        Level::Error,
                        &format!("shard {idx}: pthread_mutex_consistent failed: {e}"),
                    );
                }
            }
            log::emit(
                Level::Warning,
                &format!(
                    "shard {idx}: recovered after {} (kept {} entries, dropped {})",
                    if acquired == Acquired::OwnerDied {
                        "a process died holding its lock"
                    } else {
                        "a panic inside its lock"
                    },
                    report.kept,
                    report.dropped
                ),
            );
        }
        guard.hdr.dirty.store(1, Relaxed);
        fault::point(FaultPoint::AfterLock);
        Ok(guard)
    }

    /// Take the lock: at once if it is free, else wait (bounded by `lock_timeout`) and count
    /// the wait, so contention shows in the statistics.
    fn acquire(&self, lock: &ShardLock) -> std::result::Result<Acquired, LockError> {
        if let Some(a) = lock.try_lock()? {
            return Ok(a);
        }
        let t0 = std::time::Instant::now();
        let r = lock.lock(self.lock_timeout);
        let g = self.globals();
        g.lock_contended.fetch_add(1, Relaxed);
        g.lock_wait_ns.fetch_add(
            t0.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            Relaxed,
        );
        r
    }

    fn lock_failed(&self, idx: usize, e: LockError) -> Error {
        let g = self.globals();
        match e {
            LockError::Timeout => g.lock_timeouts.fetch_add(1, Relaxed),
            _ => g.lock_errors.fetch_add(1, Relaxed),
        };
        let msg = format!("shard {idx}: {e}");
        log::emit(Level::Error, &msg);
        Error::new(ErrorKind::Lock, msg)
    }

    /// Store `data` under `id`, valid until `expires` (Unix seconds). Replaces an entry with the
    /// same id; evicts expired, then oldest entries of the shard when it is full.
    pub fn store(&self, id: &[u8], data: &[u8], created: u32, expires: u32) -> Result<()> {
        self.store_at(id, data, created, expires, crate::util::now_unix())
    }

    pub fn store_at(
        &self,
        id: &[u8],
        data: &[u8],
        created: u32,
        expires: u32,
        now: u32,
    ) -> Result<()> {
        if let Err(e) = check_id(id) {
            self.globals().bad_input.fetch_add(1, Relaxed);
            return Err(e);
        }
        if data.is_empty() {
            self.globals().bad_input.fetch_add(1, Relaxed);
            return Err(Error::invalid("session data is empty"));
        }
        if data.len() > MAX_SESSION_BYTES {
            self.globals().too_large.fetch_add(1, Relaxed);
            log::emit(
                Level::Info,
                &format!(
                    "refused a {}-byte session (maximum {MAX_SESSION_BYTES})",
                    data.len()
                ),
            );
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "session of {} bytes is larger than the maximum {MAX_SESSION_BYTES}",
                    data.len()
                ),
            ));
        }
        let (idx, tag) = self.placement(id);
        let entry = NewEntry {
            id,
            data,
            id_in_data: find_id(data, id),
            tag,
            created,
            expires,
        };
        let guard = self.lock_shard(idx)?;
        let evicted = guard.store(&entry, now);
        drop(guard);
        if evicted > 0 {
            self.report_full_shard(idx, evicted);
        }
        Ok(())
    }

    /// A store had to evict live sessions: the segment is too small for the load. Said at most
    /// once a minute per process (with the count since), so a full cache cannot flood the log.
    fn report_full_shard(&self, idx: usize, evicted: u64) {
        static FULL: RateLimit = RateLimit::new(60);
        if let Some(n) = FULL.note(evicted, u64::from(crate::util::now_unix())) {
            log::emit(
                Level::Warning,
                &format!(
                    "shard {idx} is full: {n} live session(s) evicted since the last report; the {}-byte segment is too small for this load",
                    self.geo.total_bytes
                ),
            );
        }
    }

    /// Whether an entry with `id` is stored (expired or not). Counts nothing: for the session id
    /// generator's uniqueness check, not for resumption.
    pub fn contains(&self, id: &[u8]) -> Result<bool> {
        check_id(id)?;
        let (idx, tag) = self.placement(id);
        let guard = self.lock_shard(idx)?;
        Ok(guard.find(tag, id).is_some())
    }

    /// Copy the entry for `id` into `out`. With `take`, the entry is removed atomically with the
    /// copy, so of many concurrent takers exactly one gets it. An expired entry is a miss.
    /// A buffer that is too small gives `Found::BufferTooSmall` and changes nothing.
    pub fn lookup(&self, id: &[u8], out: &mut [u8], take: bool) -> Result<Found> {
        self.lookup_at(id, out, take, crate::util::now_unix())
    }

    pub fn lookup_at(&self, id: &[u8], out: &mut [u8], take: bool, now: u32) -> Result<Found> {
        self.lookup_taking(id, out, Take::from(take), now)
    }

    /// [`lookup_at`](Self::lookup_at) with the take decided per entry (see [`Take`]).
    pub fn lookup_taking(&self, id: &[u8], out: &mut [u8], take: Take, now: u32) -> Result<Found> {
        if let Err(e) = check_id(id) {
            self.globals().bad_input.fetch_add(1, Relaxed);
            return Err(e);
        }
        let (idx, tag) = self.placement(id);
        let guard = self.lock_shard(idx)?;
        Ok(guard.lookup_taking(tag, id, out, take, now))
    }

    /// Remove the entry for `id`; `Ok(false)` if there was none (unknown ids are normal).
    pub fn remove(&self, id: &[u8]) -> Result<bool> {
        if let Err(e) = check_id(id) {
            self.globals().bad_input.fetch_add(1, Relaxed);
            return Err(e);
        }
        let (idx, tag) = self.placement(id);
        let guard = self.lock_shard(idx)?;
        Ok(guard.remove(tag, id))
    }

    /// Remove all entries (`expired_at == None`) or those expired at that time. A shard whose
    /// lock cannot be had is skipped and reported after the others are done.
    pub fn flush(&self, expired_at: Option<u32>) -> Result<u64> {
        let mut removed = 0u64;
        let mut first_err = None;
        for idx in 0..self.geo.shard_count {
            match self.lock_shard(idx) {
                Ok(g) => removed += g.flush(expired_at) as u64,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Every live entry's id, size and times (never its contents), shard by shard.
    pub fn entries(&self) -> Result<Vec<(usize, EntryInfo)>> {
        let mut v = Vec::new();
        for idx in 0..self.geo.shard_count {
            let g = self.lock_shard(idx)?;
            v.extend(g.entries().into_iter().map(|e| (idx, e)));
        }
        Ok(v)
    }

    /// Copies of every live, verified entry with its payload (for `shmsesscache dump`). A shard
    /// whose lock cannot be had is skipped; the error is returned with what was exported.
    pub fn export(&self, now: u32) -> (Vec<ExportedEntry>, Option<Error>) {
        let mut v = Vec::new();
        let first_err = self.export_each(now, |entries| {
            v.extend(entries);
            ControlFlow::Continue(())
        });
        (v, first_err)
    }

    /// Hand the copies of each shard's live, verified entries to `f`, one shard at a time; the
    /// copies are taken under the shard's lock and handed over after it is released, so `f`
    /// may take its time. `f` may stop the walk. A shard whose lock cannot be had is skipped;
    /// the first such error is returned after the others were visited.
    pub fn export_each(
        &self,
        now: u32,
        mut f: impl FnMut(Vec<ExportedEntry>) -> ControlFlow<()>,
    ) -> Option<Error> {
        let mut first_err = None;
        for idx in 0..self.geo.shard_count {
            let entries = match self.lock_shard(idx) {
                Ok(g) => g.export(now),
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            if f(entries).is_break() {
                break;
            }
        }
        first_err
    }

    /// Creation and expiry times of the live entries, shard by shard under each lock (a shard
    /// whose lock times out is left out).
    pub fn ages(&self, now: u32) -> Ages {
        let mut a = Ages::default();
        for idx in 0..self.geo.shard_count {
            if let Ok(g) = self.lock_shard(idx) {
                a.merge(&g.ages(now));
            }
        }
        a
    }

    pub fn stats(&self) -> Stats {
        let mut sum = [0u64; COUNTERS];
        let mut s = Stats {
            min_shard_used_units: u64::MAX,
            ..Stats::default()
        };
        for idx in 0..self.geo.shard_count {
            let h = self.shard_header(idx);
            for (acc, c) in sum.iter_mut().zip(h.counters.iter()) {
                *acc += c.load(Relaxed);
            }
            let used = u64::from(h.used_units.load(Relaxed));
            s.entries += u64::from(h.live.load(Relaxed));
            s.used_units += used;
            s.min_shard_used_units = s.min_shard_used_units.min(used);
            s.max_shard_used_units = s.max_shard_used_units.max(used);
        }
        let c = |k: Counter| sum[k as usize];
        s.stores = c(Counter::Stores);
        s.replaced = c(Counter::Replaced);
        s.expired = c(Counter::Expired);
        s.evicted_live = c(Counter::EvictedLive);
        s.lookup_hits = c(Counter::LookupHit);
        s.lookup_misses = c(Counter::LookupMiss);
        s.remove_hits = c(Counter::RemoveHit);
        s.remove_misses = c(Counter::RemoveMiss);
        s.taken = c(Counter::Taken);
        s.owner_died_recoveries = c(Counter::OwnerDied);
        s.dirty_repairs = c(Counter::DirtyRepairs);
        s.corrupt_dropped = c(Counter::CorruptDropped);
        let g = self.globals();
        s.too_large = g.too_large.load(Relaxed);
        s.bad_input = g.bad_input.load(Relaxed);
        s.lock_timeouts = g.lock_timeouts.load(Relaxed);
        s.lock_errors = g.lock_errors.load(Relaxed);
        s.tls13_stateless_skipped = g.tls13_stateless_skipped.load(Relaxed);
        s.encode_errors = g.encode_errors.load(Relaxed);
        s.decode_errors = g.decode_errors.load(Relaxed);
        s.ids_generated = g.ids_generated.load(Relaxed);
        s.id_collisions = g.id_collisions.load(Relaxed);
        s.lock_contended = g.lock_contended.load(Relaxed);
        s.lock_wait_ns = g.lock_wait_ns.load(Relaxed);
        s.remote = g.remote.load();
        s.sni_mismatch = g.sni_mismatch.load(Relaxed);
        s.hrr_resumed = g.hrr_resumed.load(Relaxed);
        s.anti_replay_skipped = g.anti_replay_skipped.load(Relaxed);
        s.created_unix = self.created_unix();
        s.capacity_units = self.geo.capacity_units();
        s.shard_count = self.geo.shard_count as u64;
        s.unit_bytes = self.geo.unit_bytes as u64;
        s.units_per_shard = self.geo.units_per_shard as u64;
        s.total_bytes = self.geo.total_bytes as u64;
        s
    }
}

/// Counts events and says when to report them: at most once per `period` seconds, with the
/// number of events since the last report. Lock-free; per process.
pub struct RateLimit {
    period: u64,
    pending: std::sync::atomic::AtomicU64,
    last: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    pub const fn new(period: u64) -> RateLimit {
        RateLimit {
            period,
            pending: std::sync::atomic::AtomicU64::new(0),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Record `n` events at `now`; `Some(total)` when a report is due.
    pub fn note(&self, n: u64, now: u64) -> Option<u64> {
        let total = self.pending.fetch_add(n, Relaxed) + n;
        let last = self.last.load(Relaxed);
        if (last == 0 || now >= last + self.period)
            && self
                .last
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            self.pending.fetch_sub(total, Relaxed);
            return Some(total);
        }
        None
    }
}

/// Initialise a zero-filled mapping: header and one robust mutex per shard.
fn init_segment(m: &Mapping, geo: &Geometry, hash_key: [u64; 2]) -> Result<()> {
    for idx in 0..geo.shard_count {
        // SAFETY: shard idx lies inside the fresh mapping; nobody else can see it yet.
        let lock = unsafe {
            ShardLock::from_ptr(
                m.base().add(HEADER_BYTES + idx * geo.shard_stride) as *mut libc::pthread_mutex_t
            )
        };
        lock.init()
            .map_err(|e| Error::io("pthread_mutex_init", e))?;
    }
    segment::write_header(m, geo, hash_key);
    Ok(())
}

/// Where `id` occurs in `data` close enough to the front for the entry header's one-byte offset.
/// The DER of an SSL_SESSION carries its id about 15 bytes in.
fn find_id(data: &[u8], id: &[u8]) -> Option<usize> {
    let limit = data.len().min(255 + id.len());
    data[..limit].windows(id.len()).position(|w| w == id)
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
