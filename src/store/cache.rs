//! The cache: maps ids to shards, takes the shard locks (repairing after a crash), and
//! offers store / lookup / take / remove / flush / statistics over raw bytes. Knows nothing of
//! OpenSSL; `tls::callbacks` turns sessions into bytes outside any lock.

use std::hash::Hasher;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use siphasher::sip::SipHasher13;

use crate::error::{Error, ErrorKind, Result};
use crate::fault::{self, FaultPoint};
use crate::log::{self, Level};
use crate::store::layout::{
    Counter, Geometry, Globals, RemoteCounters, RemoteCountersV6, RemoteStats, ShardHeader,
    COUNTERS, GLOBALS_OFFSET, HEADER_BYTES, MAX_ID_LEN, MAX_SESSION_BYTES,
};
use crate::store::lock::{Acquired, Holder, LockError, ShardLock};
use crate::store::segment::{self, Mapping, Origin};
pub use crate::store::shard::{Ages, EntryInfo, ExportedEntry, Found, Take};
use crate::store::shard::{NewEntry, Shard};

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
            unit_bytes: crate::store::layout::DEFAULT_UNIT_BYTES,
            lock_timeout: Some(Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS)),
            owner: None,
        }
    }
}

pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 200;

pub struct Cache {
    /// The segment; the Redis tier's [`RemoteCountersRef`] holds it only while it counts, so
    /// the segment is unmapped when this value goes (give or take one count in flight).
    map: Arc<Mapping>,
    geo: Geometry,
    hash_key: [u64; 2],
    origin: Origin,
    path: Option<PathBuf>,
    lock_timeout: Option<Duration>,
    /// The user owning the segment file (for an anonymous segment: its creator). Nobody else
    /// takes its locks (see `check_owner`).
    owner_uid: u32,
    /// Set when this process can never run as anybody but the owner (real, effective and
    /// saved uid are all the owner's, not root; a process given CAP_SETUID without root is not
    /// considered): the owner check then costs no system call.
    owner_for_good: bool,
    /// A private copy of a segment file read by a tool: validated, never locked, never
    /// written back.
    snapshot: bool,
    /// Shard locks this process re-initialised when it attached to a segment kept across a
    /// reboot (see [`Cache::join_users`]).
    reboot_resets: u64,
    /// `users::forks()` when this process last checked its pid namespace against the users'
    /// (see `Users::rejoin_after_fork`).
    joined_forks: std::sync::atomic::AtomicU64,
    /// The header's creation time, copied at attach (the header page may be gone later: a
    /// truncated file).
    created_unix: u64,
}

/// Where the global counters go once the segment's file was found truncated: process-local
/// atomics, so that counting (here and in the OpenSSL glue) never touches a lost page.
static LOST_SEGMENT_GLOBALS: Globals = {
    // SAFETY: Globals consists of atomic integers only, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
};

/// The global counters of the segment `map` holds, or, once its file was found truncated
/// (when page 0 may be gone: touching it would be SIGBUS), a process-local stand-in that
/// nobody reads.
fn globals_of(map: &Mapping) -> &Globals {
    if map.check_backing(false).is_err() {
        return &LOST_SEGMENT_GLOBALS;
    }
    // SAFETY: page 0 is mapped and backed (checked above); Globals lies inside it (asserted in
    // layout.rs) and consists of atomics only.
    unsafe { &*(map.base().add(GLOBALS_OFFSET) as *const Globals) }
}

/// Where the Redis tier counts (`remote_*` statistics): a segment's counters
/// ([`Cache::remote_counters`]), or private counters nobody else sees
/// ([`RemoteCountersRef::private`]: tests, benchmarks). Cheap to clone.
///
/// It does not keep the segment mapped: the cache's owner decides when the segment goes (a
/// forked child that frees its cache unmaps it, although the tier state it inherited is never
/// freed there). [`RemoteCountersRef::get`] holds the mapping while one count is made; once
/// the cache is gone, counts go nowhere.
#[derive(Clone)]
pub struct RemoteCountersRef(CountersAt);

#[derive(Clone)]
enum CountersAt {
    Segment(Weak<Mapping>),
    /// All of a segment's counters for the tier's few: they are in two places there.
    Private(Arc<Globals>),
}

/// The counters of a [`RemoteCountersRef`] for the moment: holds the segment mapped while it
/// lives. Reads as [`RemoteCounters`].
pub struct Counting<'a>(CountingAt<'a>);

enum CountingAt<'a> {
    Segment(Arc<Mapping>),
    Borrowed(&'a Globals),
}

impl Counting<'_> {
    fn globals(&self) -> &Globals {
        match &self.0 {
            CountingAt::Segment(map) => globals_of(map),
            CountingAt::Borrowed(g) => g,
        }
    }

    /// The counters of stats version 6.
    pub fn v6(&self) -> &RemoteCountersV6 {
        &self.globals().remote_v6
    }

    /// All of the tier's counters, read now.
    pub fn load(&self) -> RemoteStats {
        let g = self.globals();
        g.remote.load(&g.remote_v6)
    }
}

impl std::ops::Deref for Counting<'_> {
    type Target = RemoteCounters;

    fn deref(&self) -> &RemoteCounters {
        &self.globals().remote
    }
}

impl RemoteCountersRef {
    /// Counters of their own, all zero, in no segment.
    pub fn private() -> RemoteCountersRef {
        // SAFETY: Globals consists of atomic integers only, for which all-zero bytes are valid.
        let zero: Globals = unsafe { std::mem::zeroed() };
        RemoteCountersRef(CountersAt::Private(Arc::new(zero)))
    }

    /// The counters to count into now: the segment's while its cache lives, else (the cache
    /// was freed, e.g. while the tier's writer thread finished a batch) counters nobody reads.
    pub fn get(&self) -> Counting<'_> {
        match &self.0 {
            CountersAt::Segment(map) => match map.upgrade() {
                Some(map) => Counting(CountingAt::Segment(map)),
                None => Counting(CountingAt::Borrowed(&LOST_SEGMENT_GLOBALS)),
            },
            CountersAt::Private(c) => Counting(CountingAt::Borrowed(c)),
        }
    }

    /// Whether these are a segment's counters whose cache still lives.
    pub fn in_live_segment(&self) -> bool {
        matches!(&self.0, CountersAt::Segment(map) if map.strong_count() > 0)
    }
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
    /// Shard locks re-initialised because nobody could take them again.
    pub lock_resets: u64,
    /// Lock attempts refused because this process's user does not own the segment.
    pub lock_refused_owner: u64,
    /// The second tier's counters.
    pub remote: RemoteStats,
    pub sni_mismatch: u64,
    pub hrr_resumed: u64,
    pub anti_replay_skipped: u64,
    /// Local hits that could not resume (another server name, not a session).
    pub lookup_refused: u64,
    /// Redis hits that could not resume (see `Globals::remote_refused`).
    pub remote_refused: u64,
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
/// in which case the next locker repairs the shard. On a snapshot it holds nothing.
pub struct ShardGuard<'a> {
    shard: Shard<'a>,
    lock: Option<ShardLock>,
    /// What to log once the lock is released (never format or call the user's callback
    /// while other processes wait for this lock).
    notes: [Option<Note>; 2],
}

/// A message about a shard, formatted and logged after its lock is released.
#[derive(Clone, Copy, Debug)]
enum Note {
    Recovered {
        idx: usize,
        owner_died: bool,
        kept: usize,
        dropped: usize,
    },
    ConsistentFailed {
        idx: usize,
        err: LockError,
    },
    Reset {
        idx: usize,
        was: Holder,
    },
}

impl Note {
    fn emit(self) {
        match self {
            Note::Recovered {
                idx,
                owner_died,
                kept,
                dropped,
            } => log::emit(
                Level::Warning,
                &format!(
                    "shard {idx}: recovered after {} (kept {kept} entries, dropped {dropped})",
                    if owner_died {
                        "a process died holding its lock"
                    } else {
                        "a panic inside its lock"
                    }
                ),
            ),
            Note::ConsistentFailed { idx, err } => log::emit(
                Level::Error,
                &format!("shard {idx}: pthread_mutex_consistent failed: {err}"),
            ),
            Note::Reset { idx, was } => log::emit(
                Level::Warning,
                &format!(
                    "shard {idx}: lock re-initialised ({}); the shard is repaired before use",
                    match was {
                        Holder::Stale(tid) =>
                            format!("held by thread {tid}, which no longer exists"),
                        Holder::NotRecoverable => "it was not recoverable".to_string(),
                        Holder::Damaged => "it was damaged".to_string(),
                        other => format!("{other:?}, by the operator"),
                    }
                ),
            ),
        }
    }
}

impl<'a> std::ops::Deref for ShardGuard<'a> {
    type Target = Shard<'a>;
    fn deref(&self) -> &Shard<'a> {
        &self.shard
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        let Some(lock) = &self.lock else { return };
        if !std::thread::panicking() {
            fault::point(FaultPoint::BeforeUnlock);
            self.shard.hdr.dirty.store(0, Relaxed);
        }
        lock.unlock();
        for n in self.notes.iter_mut().filter_map(Option::take) {
            n.emit();
        }
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
        let owner_uid = match &cfg.path {
            None => current_euid(),
            Some(p) => file_owner(p)?,
        };
        let mut cache =
            Self::from_mapping(map, origin, cfg.path.clone(), cfg.lock_timeout, owner_uid)?;
        cache.join_users()?;
        cache.map.recheck_backing_at_next_use();
        Ok(cache)
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
        let mut cache = Self::from_mapping(
            map,
            Origin::AttachedFile,
            Some(path.to_owned()),
            lock_timeout,
            file_owner(path)?,
        )?;
        cache.join_users()?;
        cache.map.recheck_backing_at_next_use();
        Ok(cache)
    }

    /// Become one of the segment's users (see `users.rs`): under the boot recorded in it, note
    /// whether this process runs in another pid namespace (then nobody trusts a thread id to
    /// be dead any more); under another boot, re-initialise every held shard lock (their
    /// owners died with the machine, whatever thread their ids name now) and record this boot
    /// and namespace. A segment that records no boot (made before this existed) is adopted as
    /// it is. Nothing is recorded when this system's boot id or pid namespace cannot be read:
    /// thread ids are then never trusted by this process.
    fn join_users(&mut self) -> Result<()> {
        let (Some(boot), Some(ns)) = (
            crate::store::users::this_boot(),
            crate::store::users::this_pid_ns(),
        ) else {
            return Ok(());
        };
        crate::store::users::count_forks();
        self.joined_forks.store(
            crate::store::users::forks(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let started = std::time::Instant::now();
        loop {
            let g = self.globals();
            if g.users.boot() == boot {
                if g.users.pid_ns.load(Relaxed) != ns {
                    g.users.mixed_ns.store(1, Relaxed);
                }
                self.log_reboot_resets();
                return Ok(());
            }
            let resets = RecoveryWord::take(&g.recovery_word, false).map(|_word| {
                let recorded = g.users.boot();
                let mut resets = 0;
                if recorded != boot {
                    if recorded != [0, 0] {
                        resets = self.reset_held_locks();
                    }
                    g.users.record(boot, ns);
                }
                resets
            });
            if let Some(n) = resets {
                self.reboot_resets += n;
                continue;
            }
            // Another process holds the word for microseconds; one left behind is taken over
            // after RECOVERY_WORD_STALE_SECS.
            if started.elapsed() > Duration::from_secs(RECOVERY_WORD_STALE_SECS + 2) {
                return Err(Error::new(
                    ErrorKind::Lock,
                    "the segment's recovery word stays held: cannot check whether its locks survived a reboot; try again, or recreate the segment",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Re-initialise every shard lock that is not free, marking its shard dirty (only for a
    /// segment kept across a reboot: the caller holds the recovery word). Returns how many.
    fn reset_held_locks(&self) -> u64 {
        let mut n = 0;
        for idx in 0..self.geo.shard_count {
            // SAFETY: the mutex is the first field of the shard header inside the mapping.
            let lock =
                unsafe { ShardLock::from_ptr(self.shard_base(idx) as *mut libc::pthread_mutex_t) };
            if lock.holder(false) != Holder::Free {
                self.shard_header(idx).dirty.store(1, Relaxed);
                if lock.reset().is_ok() {
                    self.globals().lock_resets.fetch_add(1, Relaxed);
                    n += 1;
                }
            }
        }
        n
    }

    fn log_reboot_resets(&self) {
        if self.reboot_resets > 0 {
            log::emit(
                Level::Warning,
                &format!(
                    "{}: kept across a reboot: {} shard lock(s) held before it re-initialised; the shards are repaired before use",
                    self.path.as_deref().unwrap_or(Path::new("segment")).display(),
                    self.reboot_resets
                ),
            );
        }
    }

    /// The first lock after a fork checks the pid namespace again: the child of a process
    /// that called `unshare(CLONE_NEWPID)` writes its lock words in a new one. One load
    /// otherwise.
    fn rejoin_after_fork(&self) {
        let forks = crate::store::users::forks();
        if self.joined_forks.load(Relaxed) != forks
            && self.joined_forks.swap(forks, Relaxed) != forks
        {
            self.globals().users.rejoin_after_fork();
        }
    }

    /// Whether this process may judge a lock word's thread id (see `users.rs`).
    fn tids_checkable(&self) -> std::result::Result<(), String> {
        self.globals().users.tids_checkable()
    }

    /// A private copy of the named segment at `path`, read with `pread` (never mapped shared,
    /// never locked), for tools that only look: `stat`, `list`, `dump`. Every byte is treated
    /// as hostile: the header is validated on the copy, and every shard of the copy is put
    /// through the repair (entries that do not verify completely, checksum included, are
    /// dropped from the copy; counts are recomputed). A shard being written while it was read
    /// loses at most the entries being written. Its locks are never taken: the result of
    /// [`Cache::lock_shard`] on a snapshot guards nothing and nothing is written to the file.
    pub fn snapshot(path: &Path, trust: segment::Trust) -> Result<Cache> {
        let (file, st) = segment::open_trusted(path, false, trust)?;
        let size = st.st_size as u64;
        // The header first (4 KiB, validated, its size matching the file's): a file that is not
        // a segment is refused before anything as large as the file is read or allocated.
        let hdr = segment::read_header(&file, path, size)?;
        let geo = Geometry::from_header(&hdr, size)
            .map_err(|m| Error::format(format!("{}: {m}", path.display())))?;
        let map = Mapping::anonymous(geo.total_bytes).map_err(|e| {
            Error::io(
                format!(
                    "cannot allocate {size} bytes for a copy of {}",
                    path.display()
                ),
                e,
            )
        })?;
        let read = |off: usize, len: usize| {
            // SAFETY: the mapping is ours alone (private to this process until it forks) and
            // `off + len` is inside it (callers stay within the validated geometry).
            let buf = unsafe { std::slice::from_raw_parts_mut(map.base().add(off), len) };
            std::os::unix::fs::FileExt::read_exact_at(&file, buf, off as u64)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
        };
        read(0, HEADER_BYTES)?;
        let mut cache = Self::from_mapping(
            map,
            Origin::AttachedFile,
            Some(path.to_owned()),
            None,
            st.st_uid,
        )
        .map_err(|e| Error::new(e.kind, format!("{}: {}", path.display(), e.message)))?;
        cache.snapshot = true;
        // The header read again may differ from the first read (a live segment): the copy's
        // own header was validated by from_mapping, and its geometry is what bounds the reads.
        for idx in 0..cache.geo.shard_count {
            let off = HEADER_BYTES + idx * cache.geo.shard_stride;
            let read_shard = |len| {
                // SAFETY: as above: the copy is private, shard idx lies inside it.
                let buf = unsafe { std::slice::from_raw_parts_mut(cache.map.base().add(off), len) };
                std::os::unix::fs::FileExt::read_exact_at(&file, buf, off as u64)
                    .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))
            };
            read_shard(cache.geo.shard_stride)?;
            cache.validate_snapshot_shard(idx);
        }
        Ok(cache)
    }

    /// Repair shard `idx` of a snapshot (see [`Cache::snapshot`]), keeping its counters as
    /// they were read: what the copy dropped was not dropped from the segment.
    fn validate_snapshot_shard(&self, idx: usize) {
        // SAFETY: the snapshot is private memory nobody else touches.
        let shard = unsafe { Shard::from_base(self.shard_base(idx), &self.geo) };
        let counters: Vec<u64> = shard.hdr.counters.iter().map(|c| c.load(Relaxed)).collect();
        shard.repair(idx, &|id| self.placement(id));
        for (c, v) in shard.hdr.counters.iter().zip(counters) {
            c.store(v, Relaxed);
        }
        shard.hdr.dirty.store(0, Relaxed);
    }

    /// Whether this is a tool's private copy (see [`Cache::snapshot`]).
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    /// The user owning the segment (file owner; an anonymous segment's creator).
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }

    fn from_mapping(
        map: Mapping,
        origin: Origin,
        path: Option<PathBuf>,
        lock_timeout: Option<Duration>,
        owner_uid: u32,
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
            created_unix: h.created_unix,
            map: Arc::new(map),
            geo,
            hash_key,
            origin,
            path,
            lock_timeout,
            owner_uid,
            owner_for_good: only_ever(owner_uid),
            snapshot: false,
            reboot_resets: 0,
            joined_forks: std::sync::atomic::AtomicU64::new(0),
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
        self.created_unix
    }

    /// Address of this process's mapping of the segment (diagnostics: /proc/PID/smaps).
    pub fn segment_base(&self) -> usize {
        self.map.base() as usize
    }

    /// The segment's global counters, or, once its file was found truncated (when page 0 may
    /// be gone: touching it would be SIGBUS), a process-local stand-in that nobody reads.
    pub(crate) fn globals(&self) -> &Globals {
        globals_of(&self.map)
    }

    /// The Redis tier's counters in this segment, for the tier to keep: they stay mapped as
    /// long as it holds them, whatever happens to this `Cache` meanwhile.
    pub fn remote_counters(&self) -> RemoteCountersRef {
        RemoteCountersRef(CountersAt::Segment(Arc::downgrade(&self.map)))
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

    /// How many units the shard `id` would live in has in use: read without its lock (a hint
    /// for the session id generator, which picks the emptiest of a few candidates; any value
    /// a hostile segment holds is only a worse hint).
    pub fn shard_load(&self, id: &[u8]) -> u32 {
        let (idx, _) = self.placement(id);
        self.shard_header(idx).used_units.load(Relaxed)
    }

    /// Take shard `idx`'s lock, repairing the shard first if its last holder died or panicked.
    /// A lock nobody can ever take again (held by a thread that no longer exists, not
    /// recoverable, damaged) is re-initialised first (see [`Cache::reset_lock`]).
    ///
    /// Refused, with an error of kind `Security`, when this process's user is not the
    /// segment's owner (unless root owns it): glibc writes through pointers stored inside a
    /// robust mutex, so a process locking a mutex that another user can write lends that user
    /// its privileges.
    pub fn lock_shard(&self, idx: usize) -> Result<ShardGuard<'_>> {
        self.map.check_backing(false)?; // a truncated file: an error, not SIGBUS
        let base = self.shard_base(idx);
        // SAFETY: base is shard idx's (see shard_base); the guard below holds its lock, or the
        // mapping is a private snapshot.
        let shard = unsafe { Shard::from_base(base, &self.geo) };
        if self.snapshot {
            return Ok(ShardGuard {
                shard,
                lock: None,
                notes: [None; 2],
            });
        }
        self.check_owner(idx)?;
        self.rejoin_after_fork();
        // SAFETY: the mutex is the first field of the shard header inside the mapping.
        let lock = unsafe { ShardLock::from_ptr(base as *mut libc::pthread_mutex_t) };
        let (acquired, reset) = match self.acquire(idx, &lock) {
            Ok(a) => a,
            Err(e) => return Err(self.lock_failed(idx, e, &lock)),
        };
        let dirty = shard.hdr.dirty.load(Relaxed) != 0;
        let mut guard = ShardGuard {
            shard,
            lock: Some(lock),
            notes: [reset.map(|was| Note::Reset { idx, was }), None],
        };
        if acquired == Acquired::OwnerDied || dirty {
            guard.recover(idx, acquired == Acquired::OwnerDied, &|id| {
                self.placement(id)
            });
        }
        guard.hdr.dirty.store(1, Relaxed);
        fault::point(FaultPoint::AfterLock);
        Ok(guard)
    }

    /// Only the segment's owner takes its locks, and only a process that cannot become anybody
    /// else: real, effective and saved uid must all be the owner's (one that dropped root with
    /// `seteuid` alone can take root back, so the owner could still reach root through it). A
    /// root-owned segment is the exception: only root can open it, and its mapping reaches other
    /// users only through a root parent that forked them (Apache, nginx), which never locks it
    /// itself.
    fn check_owner(&self, idx: usize) -> Result<()> {
        // Both shortcuts first: getresuid is a system call, a lock is not.
        if self.owner_for_good || self.owner_uid == 0 {
            return Ok(());
        }
        let owner = self.owner_uid;
        let (real, effective, saved) = current_resuid();
        if (real, effective, saved) == (owner, owner, owner) {
            return Ok(());
        }
        self.globals().lock_refused_owner.fetch_add(1, Relaxed);
        if effective == owner {
            return Err(Error::security(format!(
                "shard {idx}: refusing to lock a segment owned by uid {owner}: this process runs as uid {owner} but its real and saved uids are {real} and {saved}, so it can switch back (privileges dropped with seteuid only); its locks are writable by uid {owner}, and locking them would hand that user the other uid's privileges; drop privileges for good (setuid or setresuid to uid {owner}) before using the cache"
            )));
        }
        Err(Error::security(format!(
            "shard {idx}: refusing to lock a segment owned by uid {owner} while running as uid {effective}: its locks are writable by that user, and locking them would hand it this process's privileges; run as the owner (e.g. sudo -u), or read a copy ('shmsesscache stat')"
        )))
    }

    /// Take the lock: at once if it is free, else wait (bounded by `lock_timeout`) and count
    /// the wait, so contention shows in the statistics. A lock found unusable (see
    /// [`Holder::is_unusable`]) is reset once and taken again; also returns what it was.
    /// Without a timeout, the wait is cut in one-second slices to look for a stale owner.
    fn acquire(
        &self,
        idx: usize,
        lock: &ShardLock,
    ) -> std::result::Result<(Acquired, Option<Holder>), LockError> {
        let mut reset = None;
        loop {
            let r = self.acquire_once(lock, self.lock_timeout.unwrap_or(Duration::from_secs(1)));
            match r {
                Ok(a) => return Ok((a, reset)),
                Err(LockError::Timeout | LockError::NotRecoverable | LockError::Corrupt)
                    if reset.is_none() =>
                {
                    if let Some(was) = self.reset_lock(idx, lock, false) {
                        reset = Some(was);
                        continue;
                    }
                    if self.lock_timeout.is_none() && r == Err(LockError::Timeout) {
                        continue;
                    }
                    return Err(r.unwrap_err());
                }
                Err(LockError::Timeout) if self.lock_timeout.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn acquire_once(
        &self,
        lock: &ShardLock,
        timeout: Duration,
    ) -> std::result::Result<Acquired, LockError> {
        if let Some(a) = lock.try_lock()? {
            return Ok(a);
        }
        let t0 = std::time::Instant::now();
        let r = lock.lock(Some(timeout));
        let g = self.globals();
        g.lock_contended.fetch_add(1, Relaxed);
        g.lock_wait_ns.fetch_add(
            t0.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            Relaxed,
        );
        r
    }

    /// Re-initialise shard `idx`'s lock if nobody can ever take it again (or, with `force`,
    /// whoever holds it: the operator's `shmsesscache repair --force` for a live but stuck
    /// holder). Resets are serialised by the segment's recovery word, and the state is checked
    /// again under it, so two processes never both reset the same lock. The shard is marked
    /// dirty: whoever locks it next repairs it. Returns what the lock was, if it was reset.
    pub fn reset_lock(&self, idx: usize, lock: &ShardLock, force: bool) -> Option<Holder> {
        let checkable = self.tids_checkable().is_ok();
        if !force && !lock.holder(checkable).is_unusable() {
            return None;
        }
        let _word = RecoveryWord::take(&self.globals().recovery_word, checkable)?;
        let was = lock.holder(checkable);
        if !(was.is_unusable() || force && was != Holder::Free) {
            return None;
        }
        self.shard_header(idx).dirty.store(1, Relaxed);
        lock.reset().ok()?;
        self.globals().lock_resets.fetch_add(1, Relaxed);
        Some(was)
    }

    /// Reset every shard lock that is unusable (all held ones with `force`) and repair every
    /// shard: `shmsesscache repair`. Returns (locks reset, shards that still cannot be
    /// locked, with the reason).
    /// Locks re-initialised on attaching after a reboot count too.
    pub fn repair_all(&self, force: bool) -> Result<(u64, Vec<(usize, Error)>)> {
        let mut resets = self.reboot_resets;
        let checkable = self.tids_checkable().is_ok();
        let mut failed = Vec::new();
        for idx in 0..self.geo.shard_count {
            self.check_owner(idx)?;
            // SAFETY: the mutex is the first field of the shard header inside the mapping.
            let lock =
                unsafe { ShardLock::from_ptr(self.shard_base(idx) as *mut libc::pthread_mutex_t) };
            let held = lock.holder(checkable);
            if (held.is_unusable()
                || force && matches!(held, Holder::Live(_) | Holder::Unchecked(_)))
                && self.reset_lock(idx, &lock, force).is_some()
            {
                resets += 1;
            }
            if let Err(e) = self.lock_shard(idx) {
                failed.push((idx, e));
            }
        }
        Ok((resets, failed))
    }

    /// Count a lock failure and report it: an error, logged at most every ten seconds per
    /// process with the number of failures since (a stuck shard must not flood the log).
    /// A timeout on a lock whose owner this process cannot check says so: it is never reset
    /// automatically (its owner may be alive in another pid namespace).
    fn lock_failed(&self, idx: usize, e: LockError, lock: &ShardLock) -> Error {
        let g = self.globals();
        match e {
            LockError::Timeout => g.lock_timeouts.fetch_add(1, Relaxed),
            _ => g.lock_errors.fetch_add(1, Relaxed),
        };
        let why = match (e, self.tids_checkable()) {
            (LockError::Timeout, Err(reason)) => match lock.holder(false) {
                Holder::Unchecked(tid) => format!(
                    " (held by thread id {tid}, never re-initialised automatically: {reason}; if no process uses the segment any more, 'shmsesscache repair --force' breaks the lock)"
                ),
                _ => String::new(),
            },
            _ => String::new(),
        };
        static LOCK_TROUBLE: RateLimit = RateLimit::new(10);
        if let Some(n) = LOCK_TROUBLE.note(1, u64::from(crate::util::now_unix())) {
            log::emit(
                Level::Error,
                &format!("shard {idx}: {e}{why} ({n} lock failure(s) since the last report)"),
            );
        }
        Error::new(ErrorKind::Lock, format!("shard {idx}: {e}{why}"))
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
        self.store_ranked(id, data, created, expires, now, false)
    }

    /// [`store_at`](Self::store_at), with `spare`: the entry goes before the shard's other live
    /// entries when room is needed (a TLS 1.3 ticket issued alongside a later one).
    pub fn store_ranked(
        &self,
        id: &[u8],
        data: &[u8],
        created: u32,
        expires: u32,
        now: u32,
        spare: bool,
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
            spare,
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

    /// Take the entry for `id` if it still holds `expected` (copied by an earlier lookup, then
    /// checked outside the lock): whether it did. Another process may have taken or replaced
    /// it meanwhile; then nothing changes.
    pub fn take_if_unchanged(&self, id: &[u8], expected: &[u8], now: u32) -> Result<bool> {
        if let Err(e) = check_id(id) {
            self.globals().bad_input.fetch_add(1, Relaxed);
            return Err(e);
        }
        let (idx, tag) = self.placement(id);
        let guard = self.lock_shard(idx)?;
        Ok(guard.take_if_unchanged(tag, id, expected, now))
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
    /// whose lock times out is left out). Empty when the segment's file was truncated (see
    /// [`Cache::try_ages`]).
    pub fn ages(&self, now: u32) -> Ages {
        self.try_ages(now).unwrap_or_default()
    }

    /// [`Cache::ages`], failing when the segment's file is shorter than the mapping (checked
    /// now, not at the rate of [`Mapping::check_backing`]).
    pub fn try_ages(&self, now: u32) -> Result<Ages> {
        self.map.check_backing(true)?;
        let mut a = Ages::default();
        for idx in 0..self.geo.shard_count {
            if let Ok(g) = self.lock_shard(idx) {
                a.merge(&g.ages(now));
            }
        }
        Ok(a)
    }

    /// The statistics; all zero but the geometry when the segment's file was truncated (see
    /// [`Cache::try_stats`]).
    pub fn stats(&self) -> Stats {
        self.try_stats().unwrap_or_else(|_| self.geometry_stats())
    }

    /// The statistics, or an error when the segment's file is shorter than the mapping
    /// (checked now: status pages and signal handlers of freshly forked workers call this
    /// first, and the counters live in the pages a truncation took away).
    pub fn try_stats(&self) -> Result<Stats> {
        self.map.check_backing(true)?;
        let mut sum = [0u64; COUNTERS];
        let mut s = Stats {
            min_shard_used_units: u64::MAX,
            ..Stats::default()
        };
        for idx in 0..self.geo.shard_count {
            let h = self.shard_header(idx);
            for (acc, c) in sum.iter_mut().zip(h.counters.iter()) {
                // Shared memory: any value, so sums wrap rather than overflow.
                *acc = acc.wrapping_add(c.load(Relaxed));
            }
            let used = u64::from(h.used_units.load(Relaxed));
            s.entries = s.entries.wrapping_add(u64::from(h.live.load(Relaxed)));
            s.used_units = s.used_units.wrapping_add(used);
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
        s.lock_resets = g.lock_resets.load(Relaxed);
        s.lock_refused_owner = g.lock_refused_owner.load(Relaxed);
        s.remote = g.remote.load(&g.remote_v6);
        s.sni_mismatch = g.sni_mismatch.load(Relaxed);
        s.hrr_resumed = g.hrr_resumed.load(Relaxed);
        s.anti_replay_skipped = g.anti_replay_skipped.load(Relaxed);
        s.lookup_refused = g.lookup_refused.load(Relaxed);
        s.remote_refused = g.remote_refused.load(Relaxed);
        let geo = self.geometry_stats();
        Ok(Stats {
            created_unix: geo.created_unix,
            capacity_units: geo.capacity_units,
            shard_count: geo.shard_count,
            unit_bytes: geo.unit_bytes,
            units_per_shard: geo.units_per_shard,
            total_bytes: geo.total_bytes,
            ..s
        })
    }

    /// What is known without reading the segment: its geometry and creation time.
    fn geometry_stats(&self) -> Stats {
        Stats {
            created_unix: self.created_unix(),
            capacity_units: self.geo.capacity_units(),
            shard_count: self.geo.shard_count as u64,
            unit_bytes: self.geo.unit_bytes as u64,
            units_per_shard: self.geo.units_per_shard as u64,
            total_bytes: self.geo.total_bytes as u64,
            ..Stats::default()
        }
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

impl ShardGuard<'_> {
    /// Repair the shard after its last holder died (`owner_died`) or panicked. The mutex is
    /// declared consistent *before* the repair, with the shard marked dirty: a panic inside the
    /// repair then leaves a usable mutex over a shard the next locker repairs again (never
    /// `ENOTRECOVERABLE`), and a death inside it leaves `EOWNERDEAD` again.
    fn recover(&mut self, idx: usize, owner_died: bool, placement: &dyn Fn(&[u8]) -> (usize, u16)) {
        self.hdr.dirty.store(1, Relaxed);
        // Counted when observed, before repairing: if we die in the repair, the next locker
        // sees EOWNERDEAD again and counts it again, so the counter equals the number of
        // EOWNERDEAD results (= deaths inside a critical section).
        self.bump(if owner_died {
            Counter::OwnerDied
        } else {
            Counter::DirtyRepairs
        });
        if owner_died {
            if let Some(Err(err)) = self.lock.as_ref().map(ShardLock::mark_consistent) {
                self.notes[1] = Some(Note::ConsistentFailed { idx, err });
            }
        }
        let report = self.repair(idx, placement);
        self.notes[1] = self.notes[1].or(Some(Note::Recovered {
            idx,
            owner_died,
            kept: report.kept,
            dropped: report.dropped,
        }));
    }
}

/// The segment's recovery word, held: released when dropped. It holds the holder's pid (low
/// 32 bits) and when it took the word (Unix seconds, high 32 bits).
struct RecoveryWord<'a>(&'a std::sync::atomic::AtomicU64);

/// A reset takes microseconds: a word held longer than this was left behind (its holder's pid
/// reused after a reboot, or hostile bytes) and is taken over.
const RECOVERY_WORD_STALE_SECS: u64 = 10;

impl<'a> RecoveryWord<'a> {
    /// Take the word: free, held by a process that no longer exists (judged only when
    /// `pids_checkable`: the pid was written in this pid namespace and boot, see `users.rs`),
    /// or held for too long. `None`: another process is resetting a lock right now (the caller
    /// fails this time and retries later).
    fn take(
        word: &'a std::sync::atomic::AtomicU64,
        pids_checkable: bool,
    ) -> Option<RecoveryWord<'a>> {
        let now = u64::from(crate::util::now_unix());
        let mine = now << 32 | u64::from(std::process::id());
        let cur = word.load(Relaxed);
        let (pid, since) = (cur & 0xffff_ffff, cur >> 32);
        let free = cur == 0
            || now.abs_diff(since) > RECOVERY_WORD_STALE_SECS
            || pids_checkable && {
                // SAFETY: signal 0 only checks existence.
                let rc = unsafe { libc::kill(pid.min(i32::MAX as u64) as libc::pid_t, 0) };
                pid == 0
                    || rc != 0
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            };
        (free && word.compare_exchange(cur, mine, Relaxed, Relaxed).is_ok())
            .then_some(RecoveryWord(word))
    }
}

impl Drop for RecoveryWord<'_> {
    fn drop(&mut self) {
        self.0.store(0, Relaxed);
    }
}

/// Whether this process runs as `uid` (not root) for good: real, effective and saved uid.
fn only_ever(uid: u32) -> bool {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three uids.
    let ok = unsafe { libc::getresuid(&mut r, &mut e, &mut s) } == 0;
    ok && uid != 0 && r == uid && e == uid && s == uid
}

/// Real, effective and saved uid of this process.
fn current_resuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three uids; it cannot fail with valid pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

fn current_euid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

/// The owner of the segment file at `path` (not following a symlink).
fn file_owner(path: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.uid())
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))
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
