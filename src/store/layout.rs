//! The segment's byte layout: header, format word, geometry and shard/entry headers.
//!
//! ```text
//! segment  = SegmentHeader (page 0, immutable after creation, CRC-protected)
//!          + Globals       (rest of page 0: counters updated without a shard lock)
//!          + shard[0] … shard[shard_count-1], each `shard_stride` bytes
//! shard    = ShardHeader (robust mutex, dirty flag, counters)
//!          + tags: u16 × units_per_shard   (0 free, 0xFFFF continuation, else a head's hash tag)
//!          + units: unit_bytes × units_per_shard
//! entry    = EntryHeader (16 bytes) + stored bytes, in 1..k *consecutive* units of one shard
//! ```
//!
//! A typical 160-byte session takes exactly one 200-byte unit (5,000+ per MiB); a 545-byte
//! client-certificate session takes three; an 8 KiB one takes 42. Nothing is split between
//! size classes up front, so whatever mix of sizes a server produces uses the whole segment.
//! The session id is stored once: the DER of an `SSL_SESSION` already contains it, so the entry
//! header records where (`id_off`); data that does not contain the id gets it prepended.

use std::mem::size_of;
use std::sync::atomic::{AtomicU32, AtomicU64};

pub const MAGIC: [u8; 8] = *b"SHMSESS\0";
/// Bumped whenever anything in this file changes meaning. 2: the format word names the C
/// library (a segment of version 1 is refused as another format). 3: an entry header's length
/// field carries the "spare" bit ([`EntryHeader::spare`]), which version 2 would take for
/// part of the length and drop as corrupt.
pub const LAYOUT_VERSION: u32 = 3;
pub const HEADER_BYTES: usize = 4096;
pub const GLOBALS_OFFSET: usize = 512;
pub const ENTRY_HEADER_BYTES: usize = 16;
pub const MAX_ID_LEN: usize = 32;
/// Largest session (DER bytes) the cache accepts; larger ones are refused and counted.
pub const MAX_SESSION_BYTES: usize = 8192;
/// Largest stored length: a session plus a prepended id.
pub const MAX_STORED_BYTES: usize = MAX_SESSION_BYTES + MAX_ID_LEN;
pub const DEFAULT_UNIT_BYTES: u32 = 200;
pub const MIN_UNIT_BYTES: u32 = 64;
pub const MAX_UNIT_BYTES: u32 = 4096;
pub const DEFAULT_UNITS_PER_SHARD: u32 = 256;
/// Far above any sensible cache; keeps every offset comfortably inside `usize` and `u32` counts.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 40;

pub const TAG_FREE: u16 = 0;
pub const TAG_CONT: u16 = 0xFFFF;

/// Identifies a layout: two builds that disagree on any of these must not share a segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatWord {
    pub layout_version: u32,
    pub mutex_bytes: u32,
    pub shard_header_bytes: u32,
    pub entry_header_bytes: u32,
    pub unit_bytes: u32,
    pub units_per_shard: u32,
    pub shard_count: u32,
    pub max_session_bytes: u32,
    /// The C library whose `pthread_mutex_t` the shard locks are ([`C_LIBRARY`]): glibc and musl
    /// mutexes have the same size but nothing else in common, so processes of the two would
    /// share the segment without mutual exclusion.
    pub c_library: u32,
    /// Zero. Keeps the header free of padding bytes, which the header CRC would read
    /// uninitialised.
    pub spare: u32,
}

/// [`FormatWord::c_library`] of this build.
#[cfg(target_env = "gnu")]
pub const C_LIBRARY: u32 = u32::from_le_bytes(*b"glbc");
#[cfg(target_env = "musl")]
pub const C_LIBRARY: u32 = u32::from_le_bytes(*b"musl");
#[cfg(not(any(target_env = "gnu", target_env = "musl")))]
pub const C_LIBRARY: u32 = u32::from_le_bytes(*b"othr");

/// A readable name for a [`FormatWord::c_library`] value.
pub fn c_library_name(v: u32) -> String {
    match &v.to_le_bytes() {
        b"glbc" => "glibc".into(),
        b"musl" => "musl".into(),
        b"othr" => "another C library".into(),
        _ => format!("an unknown C library ({v:#x})"),
    }
}

/// Page 0 of the segment. Written once by the creator, never modified afterwards.
#[repr(C)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    pub format: FormatWord,
    pub total_bytes: u64,
    pub shard_stride: u64,
    pub shards_offset: u64,
    /// Key of the keyed hash that maps ids to shards (random per segment, so clients cannot
    /// aim all their ids at one shard).
    pub hash_key: [u64; 2],
    pub created_unix: u64,
    /// Owner uid at creation; informative (the file's owner is what is checked).
    pub creator_uid: u32,
    /// CRC-32 of every byte above it.
    pub header_crc: u32,
}

/// Counters that are not tied to a shard (updated with atomic adds, no lock).
#[repr(C)]
pub struct Globals {
    pub too_large: AtomicU64,
    pub bad_input: AtomicU64,
    pub lock_timeouts: AtomicU64,
    pub lock_errors: AtomicU64,
    pub tls13_stateless_skipped: AtomicU64,
    pub encode_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Session ids made by the library's generator, and candidates it threw away because the
    /// id was already in use (in the shared cache or OpenSSL's own).
    pub ids_generated: AtomicU64,
    pub id_collisions: AtomicU64,
    /// Shard lock acquisitions that found the lock held and had to wait, and the total time
    /// they waited (nanoseconds).
    pub lock_contended: AtomicU64,
    pub lock_wait_ns: AtomicU64,
    /// The second tier (Redis), counted by every process of every server on this segment.
    pub remote: RemoteCounters,
    /// Resumptions refused because the ClientHello named another host than the session was
    /// made for (a virtual host picked after the lookup by an SNI or ClientHello callback).
    pub sni_mismatch: AtomicU64,
    /// TLS 1.3 tickets resumed by the ClientHello that followed a HelloRetryRequest, from the
    /// copy their first lookup parked on the connection.
    pub hrr_resumed: AtomicU64,
    /// TLS 1.3 lookups not made because early data is on with OpenSSL's anti-replay, which
    /// refuses every resumption from an external cache (the ticket is left in place).
    pub anti_replay_skipped: AtomicU64,
    /// Shard locks re-initialised because nobody could ever take them again: not recoverable,
    /// damaged, or held by a thread that no longer exists (a stale lock word). Each reset is
    /// followed by a repair of the shard (its damaged entries count in `corrupt_dropped`).
    pub lock_resets: AtomicU64,
    /// Lock attempts refused because this process's user does not own the segment file (a
    /// mutex other users can write is never locked: see `Cache::lock_shard`).
    pub lock_refused_owner: AtomicU64,
    /// Serialises lock resets between processes: 0, or the pid of the process resetting (a
    /// pid dead in the users' namespace and boot, or a word held too long, is taken over).
    /// Never a mutex: safe to touch whoever wrote it.
    pub recovery_word: AtomicU64,
    /// Local lookups that found the entry but could not resume it: made for another server
    /// name (also in `sni_mismatch`), not a session, or a TLS 1.3 ticket Redis says was used on
    /// another host (also in `remote_replays_refused`). `lookup_hits` counts them too; the hit
    /// ratio leaves them out. (Carved out of `reserved`.)
    pub lookup_refused: AtomicU64,
    /// The second tier's counters of stats version 6. (Carved out of `reserved`.)
    pub remote_v6: RemoteCountersV6,
    /// Sessions Redis answered a local miss with (`remote.hits`) that then could not resume:
    /// made for another server name or vhost, not a session, larger than the caller's room,
    /// or a TLS 1.3 ticket whose single use Redis did not confirm. (Carved out of `reserved`.)
    pub remote_refused: AtomicU64,
    /// Zero in segments made before these counters existed, so using reserved space for new
    /// counters keeps the layout (and its version) unchanged.
    pub reserved: [AtomicU64; 0],
    /// The boot and pid namespace of the processes using the segment (after `reserved`: zero
    /// in segments made before it existed, which count as "unknown" and are adopted as they
    /// are).
    pub users: Users,
}

/// Under which boot and in which pid namespace the thread ids in the shard locks' words were
/// written: a lock word holds its owner's thread id as the owner's pid namespace numbers it,
/// so only a process of the same boot and namespace can tell whether that thread exists (see
/// `users.rs`). Written under the recovery word.
#[repr(C)]
pub struct Users {
    /// `/proc/sys/kernel/random/boot_id` of the boot the users run under (all zero: unknown).
    pub boot_id: [AtomicU64; 2],
    /// Inode of `/proc/self/ns/pid` of the first process of that boot to attach.
    pub pid_ns: AtomicU64,
    /// Non-zero once a process of another pid namespace attached during that boot: from then
    /// on no thread id is trusted to be dead (until the next boot).
    pub mixed_ns: AtomicU64,
}

/// What the second tier did (see `remote.rs`). Carved out of `Globals::reserved`.
#[repr(C)]
pub struct RemoteCounters {
    /// Sessions written to the remote store.
    pub stores: AtomicU64,
    /// Local misses the remote store answered with a value that authenticated.
    pub hits: AtomicU64,
    /// Local misses the remote store did not have either.
    pub misses: AtomicU64,
    /// Remote operations that failed (refused connection, server error), timeouts excluded.
    pub errors: AtomicU64,
    /// Remote operations that gave up after the configured timeout.
    pub timeouts: AtomicU64,
    /// Remote operations not tried because the tier was backing off after failures.
    pub skipped: AtomicU64,
    /// Remote values dropped because they did not authenticate (tampered, unknown key).
    pub rejected: AtomicU64,
    /// TLS 1.3 tickets found locally but already consumed on another host: not resumed.
    pub replays_refused: AtomicU64,
    /// TLS 1.3 tickets whose single use Redis could not confirm (the swap for a tombstone
    /// failed): found locally, resumed without early data; read from Redis, refused. (Carved
    /// out of `reserved`, like the one below.)
    pub unconfirmed: AtomicU64,
    /// Writes (new sessions, removals) that never reached Redis: the per-process queue was
    /// full, or the tier failed or was backing off when they were sent.
    pub dropped: AtomicU64,
}

/// The second tier's counters added with stats version 6 (in `Globals` after
/// `lookup_refused`: [`RemoteCounters`] is followed by other counters, so it cannot grow).
#[repr(C)]
pub struct RemoteCountersV6 {
    /// Sentinel: times a process's sentinels named another master than its last answer
    /// (each process that follows a failover counts it once; twice if a stale sentinel
    /// named the old master once more).
    pub rediscovered: AtomicU64,
    /// Values refused because they are in the format of 0.4 (not bound to database, prefix
    /// and fleet): gone within one session lifetime of an upgrade. Also in `rejected`.
    pub old_format: AtomicU64,
    /// Redis Cluster redirections (MOVED, ASK) refused because they named an address that is
    /// not a node of the slot map (no connection made). Also in `errors`.
    pub redirects_refused: AtomicU64,
}

/// A reading of [`RemoteCounters`] and [`RemoteCountersV6`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    pub stores: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub skipped: u64,
    pub rejected: u64,
    pub replays_refused: u64,
    pub unconfirmed: u64,
    pub dropped: u64,
    pub rediscovered: u64,
    pub old_format: u64,
    pub redirects_refused: u64,
}

impl RemoteCounters {
    /// This and `v6` read together.
    pub fn load(&self, v6: &RemoteCountersV6) -> RemoteStats {
        let l = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        RemoteStats {
            stores: l(&self.stores),
            hits: l(&self.hits),
            misses: l(&self.misses),
            errors: l(&self.errors),
            timeouts: l(&self.timeouts),
            skipped: l(&self.skipped),
            rejected: l(&self.rejected),
            replays_refused: l(&self.replays_refused),
            unconfirmed: l(&self.unconfirmed),
            dropped: l(&self.dropped),
            rediscovered: l(&v6.rediscovered),
            old_format: l(&v6.old_format),
            redirects_refused: l(&v6.redirects_refused),
        }
    }
}

/// Per-shard counters, updated under the shard lock (plain load+store, no RMW needed) and read
/// racily by statistics.
#[repr(usize)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Stores = 0,
    Replaced,
    Expired,
    EvictedLive,
    LookupHit,
    LookupMiss,
    RemoveHit,
    RemoveMiss,
    Taken,
    OwnerDied,
    DirtyRepairs,
    CorruptDropped,
}
pub const COUNTERS: usize = 16;

#[repr(C, align(64))]
pub struct ShardHeader {
    /// Changed by other processes behind our back: only reached through raw pointers.
    pub mutex: std::cell::UnsafeCell<libc::pthread_mutex_t>,
    /// 1 while a process is inside the critical section. Found set by the next locker (after a
    /// panic or a death) it means "repair before use".
    pub dirty: AtomicU32,
    pub live: AtomicU32,
    pub used_units: AtomicU32,
    pub counters: [AtomicU64; COUNTERS],
}

/// Where everything is, derived from the format word only after it has been validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub unit_bytes: usize,
    pub units_per_shard: usize,
    pub shard_count: usize,
    pub tags_offset: usize,
    pub units_offset: usize,
    pub shard_stride: usize,
    pub total_bytes: usize,
}

impl Geometry {
    /// Units an entry with `stored` bytes occupies.
    pub fn units_for(&self, stored: usize) -> usize {
        (ENTRY_HEADER_BYTES + stored).div_ceil(self.unit_bytes)
    }

    pub fn max_entry_units(&self) -> usize {
        self.units_for(MAX_STORED_BYTES)
    }

    pub fn capacity_units(&self) -> u64 {
        (self.units_per_shard * self.shard_count) as u64
    }

    /// Lay out a segment of `total_bytes` with units of `unit_bytes`.
    pub fn plan(total_bytes: u64, unit_bytes: u32) -> Result<Geometry, String> {
        if !(MIN_UNIT_BYTES..=MAX_UNIT_BYTES).contains(&unit_bytes) || unit_bytes % 8 != 0 {
            return Err(format!(
                "slot_bytes {unit_bytes} is invalid: must be a multiple of 8 between {MIN_UNIT_BYTES} and {MAX_UNIT_BYTES}"
            ));
        }
        if total_bytes > MAX_SEGMENT_BYTES {
            return Err(format!(
                "size_bytes {total_bytes} is larger than the maximum {MAX_SEGMENT_BYTES}"
            ));
        }
        let (unit, units) = Self::shard_shape(unit_bytes);
        let g = Self::with_shape(unit, units, 1, 0);
        let min = (HEADER_BYTES + g.shard_stride) as u64;
        if total_bytes < min {
            return Err(format!(
                "size_bytes {total_bytes} is too small: with {unit}-byte slots the minimum is {min} bytes"
            ));
        }
        let shards = (total_bytes as usize - HEADER_BYTES) / g.shard_stride;
        if shards > u32::MAX as usize {
            return Err(format!("size_bytes {total_bytes} needs too many shards"));
        }
        Ok(Self::with_shape(unit, units, shards, total_bytes as usize))
    }

    /// The smallest segment with `unit_bytes`-byte slots (one shard): what `plan` refuses
    /// below. `None` for a slot size `plan` refuses.
    pub fn min_total_bytes(unit_bytes: u32) -> Option<u64> {
        if !(MIN_UNIT_BYTES..=MAX_UNIT_BYTES).contains(&unit_bytes) || unit_bytes % 8 != 0 {
            return None;
        }
        let (unit, units) = Self::shard_shape(unit_bytes);
        Some((HEADER_BYTES + Self::with_shape(unit, units, 1, 0).shard_stride) as u64)
    }

    /// Slot size and slots per shard: at least two of the largest entries fit in one shard,
    /// so a big session never has to evict a whole shard.
    fn shard_shape(unit_bytes: u32) -> (usize, usize) {
        let unit = unit_bytes as usize;
        let max_units = (ENTRY_HEADER_BYTES + MAX_STORED_BYTES).div_ceil(unit);
        (unit, (DEFAULT_UNITS_PER_SHARD as usize).max(2 * max_units))
    }

    fn with_shape(unit: usize, units: usize, shards: usize, total: usize) -> Geometry {
        let tags_offset = size_of::<ShardHeader>();
        let units_offset = (tags_offset + 2 * units).next_multiple_of(64);
        let shard_stride = (units_offset + unit * units).next_multiple_of(64);
        Geometry {
            unit_bytes: unit,
            units_per_shard: units,
            shard_count: shards,
            tags_offset,
            units_offset,
            shard_stride,
            total_bytes: total,
        }
    }

    pub fn format_word(&self) -> FormatWord {
        FormatWord {
            layout_version: LAYOUT_VERSION,
            mutex_bytes: size_of::<libc::pthread_mutex_t>() as u32,
            shard_header_bytes: size_of::<ShardHeader>() as u32,
            entry_header_bytes: ENTRY_HEADER_BYTES as u32,
            unit_bytes: self.unit_bytes as u32,
            units_per_shard: self.units_per_shard as u32,
            shard_count: self.shard_count as u32,
            max_session_bytes: MAX_SESSION_BYTES as u32,
            c_library: C_LIBRARY,
            spare: 0,
        }
    }

    /// Rebuild the geometry from a header read off a segment of `file_bytes` bytes, refusing
    /// anything this build would misread.
    pub fn from_header(h: &SegmentHeader, file_bytes: u64) -> Result<Geometry, String> {
        if h.magic != MAGIC {
            return Err("not a shmsesscache segment (bad magic)".into());
        }
        let f = h.format;
        if f.layout_version != LAYOUT_VERSION {
            return Err(format!(
                "segment layout version {} is not this library's version {LAYOUT_VERSION}: another format, made by another version of shmsesscache (remove the file; the server creates a new one)",
                f.layout_version
            ));
        }
        if header_crc(h) != h.header_crc {
            return Err("segment header checksum mismatch (corrupted header)".into());
        }
        if f.c_library != C_LIBRARY {
            return Err(format!(
                "segment was made by a process linked with {}, but this process uses {}: their shard locks cannot exclude each other, so they must not share a segment (give each its own)",
                c_library_name(f.c_library),
                c_library_name(C_LIBRARY)
            ));
        }
        if h.total_bytes != file_bytes {
            return Err(format!(
                "segment header says {} bytes but the file has {file_bytes}",
                h.total_bytes
            ));
        }
        let planned = Self::plan(h.total_bytes, f.unit_bytes)?;
        if planned.format_word() != f {
            return Err(format!(
                "segment format word {f:?} does not match this build's {:?} (built with another version or on another platform)",
                planned.format_word()
            ));
        }
        if planned.shard_stride as u64 != h.shard_stride || h.shards_offset != HEADER_BYTES as u64 {
            return Err("segment geometry fields are inconsistent".into());
        }
        Ok(planned)
    }
}

pub fn header_crc(h: &SegmentHeader) -> u32 {
    let len = std::mem::offset_of!(SegmentHeader, header_crc);
    // SAFETY: SegmentHeader is repr(C) plain data; we read its first `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(h as *const SegmentHeader as *const u8, len) };
    crc32fast::hash(bytes)
}

const _: () = assert!(size_of::<SegmentHeader>() <= GLOBALS_OFFSET);
// No padding anywhere in the header: the CRC covers its bytes, all of which must be written.
const _: () = assert!(size_of::<FormatWord>() == 4 * 10);
const _: () =
    assert!(std::mem::offset_of!(SegmentHeader, total_bytes) == 8 + size_of::<FormatWord>());
const _: () =
    assert!(std::mem::offset_of!(SegmentHeader, header_crc) + 4 == size_of::<SegmentHeader>());
const _: () = assert!(GLOBALS_OFFSET + size_of::<Globals>() <= HEADER_BYTES);

/// The 16-byte header at the start of an entry's first unit (little endian, unaligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// Bytes stored after the header (including a prepended id).
    pub stored_len: usize,
    /// The id was prepended to the data (it is not inside it).
    pub id_prefixed: bool,
    /// Evicted before the shard's other live entries: a TLS 1.3 ticket its handshake issued
    /// alongside a later one, which is the ticket clients offer first (see `store::shard`).
    pub spare: bool,
    pub id_len: usize,
    pub id_off: usize,
    pub created: u32,
    pub expires: u32,
    pub checksum: u32,
}

const PREFIXED_BIT: u16 = 0x8000;
const SPARE_BIT: u16 = 0x4000;
const LENGTH_BITS: u16 = !(PREFIXED_BIT | SPARE_BIT);
const _: () = assert!(MAX_STORED_BYTES <= LENGTH_BITS as usize);

impl EntryHeader {
    pub fn encode(&self) -> [u8; ENTRY_HEADER_BYTES] {
        let mut b = [0u8; ENTRY_HEADER_BYTES];
        let mut lf = self.stored_len as u16;
        if self.id_prefixed {
            lf |= PREFIXED_BIT;
        }
        if self.spare {
            lf |= SPARE_BIT;
        }
        b[0..2].copy_from_slice(&lf.to_le_bytes());
        b[2] = self.id_len as u8;
        b[3] = self.id_off as u8;
        b[4..8].copy_from_slice(&self.created.to_le_bytes());
        b[8..12].copy_from_slice(&self.expires.to_le_bytes());
        b[12..16].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Decode and check everything that can be checked without the data. `None`: garbage.
    pub fn decode(b: &[u8; ENTRY_HEADER_BYTES]) -> Option<EntryHeader> {
        let lf = u16::from_le_bytes([b[0], b[1]]);
        let h = EntryHeader {
            stored_len: (lf & LENGTH_BITS) as usize,
            id_prefixed: lf & PREFIXED_BIT != 0,
            spare: lf & SPARE_BIT != 0,
            id_len: b[2] as usize,
            id_off: b[3] as usize,
            created: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            expires: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            checksum: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        };
        let sane = (1..=MAX_ID_LEN).contains(&h.id_len)
            && h.stored_len <= MAX_STORED_BYTES
            && h.id_off + h.id_len <= h.stored_len
            && (!h.id_prefixed || h.id_off == 0)
            && h.stored_len > if h.id_prefixed { h.id_len } else { 0 };
        sane.then_some(h)
    }

    /// The payload (what the caller stored) within the stored bytes.
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        if self.id_prefixed {
            self.id_len..self.stored_len
        } else {
            0..self.stored_len
        }
    }

    pub fn compute_checksum(&self, stored: &[u8]) -> u32 {
        let enc = self.encode();
        let mut h = crc32fast::Hasher::new();
        h.update(&enc[..12]);
        h.update(stored);
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_is_dense() {
        let g = Geometry::plan(8 << 20, DEFAULT_UNIT_BYTES).unwrap();
        let per_mib = g.capacity_units() as f64 / 8.0;
        assert!(
            per_mib >= 5000.0,
            "only {per_mib} one-unit sessions per MiB"
        );
        assert!(g.units_for(180) == 1 && g.units_for(185) == 2);
        assert_eq!(g.max_entry_units(), 42);
        assert!(g.units_per_shard >= 2 * g.max_entry_units());
        assert!(HEADER_BYTES + g.shard_count * g.shard_stride <= g.total_bytes);
    }

    #[test]
    fn impossible_geometry_is_refused() {
        assert!(Geometry::plan(0, DEFAULT_UNIT_BYTES)
            .unwrap_err()
            .contains("too small"));
        assert!(Geometry::plan(1 << 20, 7).is_err());
        assert!(Geometry::plan(1 << 20, 100_000).is_err());
        assert!(Geometry::plan(u64::MAX, DEFAULT_UNIT_BYTES).is_err());
    }

    #[test]
    fn entry_header_round_trips_and_rejects_garbage() {
        let h = EntryHeader {
            stored_len: 190,
            id_prefixed: false,
            id_len: 32,
            id_off: 15,
            created: 1_700_000_000,
            expires: 1_700_000_300,
            checksum: 0xdead_beef,
            spare: false,
        };
        assert_eq!(EntryHeader::decode(&h.encode()), Some(h));
        let spare = EntryHeader { spare: true, ..h };
        assert_eq!(EntryHeader::decode(&spare.encode()), Some(spare));
        assert_eq!(EntryHeader::decode(&[0u8; 16]), None);
        assert_eq!(EntryHeader::decode(&[0xffu8; 16]), None);
        let mut bad = h;
        bad.id_off = 170; // id would run past the data
        assert_eq!(EntryHeader::decode(&bad.encode()), None);
    }
}
