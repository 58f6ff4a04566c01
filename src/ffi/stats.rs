//! `shmsess_stats`: the struct, its versioned filling (`struct_size`), and the field-by-field
//! access `shmsess_stats_field` gives to programs that print every statistic.

use std::ffi::{c_char, CStr};

use super::cache::shmsess_cache;
use super::result::{shmsess_result, Fail};
use super::{guard, handle, null};
use crate::store::cache::{Ages, Stats};
use shmsess_result::*;

/// Statistics of a cache (all processes together). Counters only grow.
#[repr(C)]
#[derive(Default)]
pub struct shmsess_stats {
    /// `sizeof` of the structure the library filled.
    pub struct_size: u32,
    /// Layout version of this structure (`SHMSESS_STATS_VERSION` of the library that filled it).
    pub version: u32,
    pub stores: u64,
    /// Stores that replaced an entry with the same id.
    pub replaced: u64,
    /// Entries dropped because they had expired (on lookup, store or flush).
    pub expired: u64,
    /// Live entries evicted to make room (the shard was full).
    pub evicted: u64,
    pub lookup_hits: u64,
    pub lookup_misses: u64,
    pub remove_hits: u64,
    pub remove_misses: u64,
    /// TLS 1.3 tickets consumed by a lookup (single use).
    pub taken: u64,
    /// Sessions refused because they were larger than SHMSESS_MAX_SESSION_BYTES.
    pub too_large: u64,
    /// Shard locks recovered after their holder died (EOWNERDEAD), each with a repair.
    pub lock_owner_died: u64,
    /// Shards repaired after a panic inside the library left them marked dirty.
    pub dirty_repairs: u64,
    /// Entries dropped because their header or checksum did not verify.
    pub corrupt_dropped: u64,
    /// Operations that gave up waiting for a lock.
    pub lock_timeouts: u64,
    pub lock_errors: u64,
    /// TLS 1.3 sessions not stored because their tickets are stateless (never looked up).
    pub tls13_stateless_skipped: u64,
    /// Calls refused for bad arguments (bad id length, empty data).
    pub bad_input: u64,
    /// i2d/d2i failures.
    pub encode_errors: u64,
    pub decode_errors: u64,
    /// Entries stored now.
    pub entries: u64,
    /// Slots in use and in all.
    pub used_slots: u64,
    pub capacity_slots: u64,
    pub slot_bytes: u64,
    pub shards: u64,
    pub slots_per_shard: u64,
    pub min_shard_used_slots: u64,
    pub max_shard_used_slots: u64,
    pub size_bytes: u64,
    // ---- version 2 ----
    /// Session ids made by the library's generator.
    pub ids_generated: u64,
    /// Generated candidates thrown away because the id was in use.
    pub id_collisions: u64,
    /// When the segment was created (Unix seconds).
    pub created_unix: u64,
    /// When these statistics were taken (Unix seconds).
    pub now_unix: u64,
    /// Creation time of the oldest and newest live entry, 0 when the cache is empty.
    pub oldest_created_unix: u64,
    pub newest_created_unix: u64,
    /// Earliest and latest expiry among live entries, 0 when the cache is empty.
    pub earliest_expiry_unix: u64,
    pub latest_expiry_unix: u64,
    /// Average seconds left before the live entries expire.
    pub avg_time_left_s: u64,
    /// Shard lock acquisitions that had to wait for another process or thread, and the total
    /// time they waited in nanoseconds (contention; uncontended acquisitions are not timed).
    pub lock_contended: u64,
    pub lock_wait_ns: u64,
    /// Second tier (version 3): sessions written to it; local misses it answered and those it
    /// did not have; operations that failed, timed out, or were skipped while it backed off;
    /// values dropped because they did not authenticate; TLS 1.3 tickets found locally but
    /// already resumed on another host (refused).
    pub remote_stores: u64,
    pub remote_hits: u64,
    pub remote_misses: u64,
    pub remote_errors: u64,
    pub remote_timeouts: u64,
    pub remote_skipped: u64,
    pub remote_rejected: u64,
    pub remote_replays_refused: u64,
    // ---- version 4 ----
    /// Resumptions refused because the ClientHello named another server than the session was
    /// made for (virtual hosts chosen by an SNI or ClientHello callback).
    pub sni_mismatch: u64,
    /// TLS 1.3 tickets resumed after a HelloRetryRequest (the retried ClientHello found the
    /// copy its first lookup kept on the connection).
    pub hrr_resumed: u64,
    /// TLS 1.3 lookups skipped because early data is on with OpenSSL's anti-replay, which
    /// refuses every external-cache resumption (tickets are left in place; see the log).
    pub anti_replay_skipped: u64,
    /// Shard locks re-initialised because nobody could ever take them again (held
    /// by a thread that no longer exists, not recoverable, damaged), each followed by a repair
    /// of the shard; lock attempts refused because the process's user does not own the
    /// segment file (and, with `SHMSESS_NEVER_LOCK_AS_ROOT`, session callbacks in a root
    /// process that left the cache alone).
    pub lock_resets: u64,
    pub lock_refused_owner: u64,
    /// Second tier (version 4): TLS 1.3 tickets found locally while Redis could not confirm
    /// they were unused (resumed without early data); writes (new sessions, removals) that
    /// never reached Redis (queue full, or the tier down or backing off).
    pub remote_unconfirmed: u64,
    pub remote_dropped: u64,
    /// Version 5: local lookups that found the entry but could not resume it (made for
    /// another server name, also in `sni_mismatch`; not a session; or a TLS 1.3 ticket Redis
    /// says was used on another host, also in `remote_replays_refused`). Counted in
    /// `lookup_hits` too; `shmsess_stats_hit_ratio` leaves them out.
    pub lookup_refused: u64,
    /// Second tier (version 6): Sentinel: times a process's sentinels named another master
    /// than its last answer (a failover counts once per process that follows it, twice if a
    /// stale sentinel named the old master once more); values refused
    /// because they were sealed by 0.4 (also in `remote_rejected`); Redis Cluster
    /// redirections refused because they named an address that is not a node of the slot
    /// map (also in `remote_errors`).
    pub remote_rediscovered: u64,
    pub remote_old_format: u64,
    pub remote_redirects_refused: u64,
    /// Version 7: sessions Redis answered a local miss with (counted in `remote_hits`) that
    /// then could not resume: made for another server name or vhost, not a session, larger
    /// than the byte API caller's buffer, a TLS 1.3 ticket whose single use Redis did not
    /// confirm or that was used on another host meanwhile. A resumption from Redis is
    /// `remote_hits - remote_refused`.
    pub remote_refused: u64,
}

/// Version of `shmsess_stats` this library fills (`version` field).
pub const SHMSESS_STATS_VERSION: u32 = 7;

/// Size of `shmsess_stats` version 1 (its fields up to `size_bytes`): what programs built
/// against 0.1 headers allocate.
const STATS_V1_BYTES: usize = std::mem::offset_of!(shmsess_stats, size_bytes) + 8;

/// Fill `*stats` with the cache's statistics (counts of all processes), `struct_size`
/// included. The header turns `shmsess_cache_stats(c, s)` into
/// `shmsess_cache_stats_sized(c, s, sizeof *(s))`, so code compiled against it gets every
/// field it knows; the exported symbol itself, which programs built against 0.1 headers
/// call, writes only the version-1 fields, never past the struct those programs allocated.
/// Thread- and process-safe. The counters are read without locks; the entry ages lock each
/// shard in turn for a 256-tag scan (a shard whose lock times out is left out of the ages),
/// so call it from a status page, not per handshake. Fails with `SHMSESS_ERR_IO`, writing
/// nothing, once the named segment's file is shorter than its mapping (truncated).
#[no_mangle]
pub extern "C" fn shmsess_cache_stats(
    cache: *const shmsess_cache,
    stats: *mut shmsess_stats,
) -> shmsess_result {
    shmsess_cache_stats_sized(cache, stats, STATS_V1_BYTES)
}

/// Like `shmsess_cache_stats`, for a caller whose `shmsess_stats` has `size` bytes (from an
/// older or newer header): fills only the fields that fit. `size` below 8 is an error.
#[no_mangle]
pub extern "C" fn shmsess_cache_stats_sized(
    cache: *const shmsess_cache,
    stats: *mut shmsess_stats,
    size: usize,
) -> shmsess_result {
    guard("shmsess_cache_stats", || {
        let h = handle(cache)?;
        if stats.is_null() {
            return Err(null("stats"));
        }
        if size < 8 {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("stats size {size} is too small"),
            ));
        }
        let now = crate::util::now_unix();
        let full = to_c_stats(&h.cache.try_stats()?, &h.cache.try_ages(now)?, now);
        let n = size.min(std::mem::size_of::<shmsess_stats>());
        // SAFETY: the caller's struct has at least `size` >= n bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &full as *const shmsess_stats as *const u8,
                stats as *mut u8,
                n,
            );
            (*stats).struct_size = n as u32;
        }
        Ok(SHMSESS_OK)
    })
}

/// The one list of `shmsess_stats`' counters: each field and where its value comes from.
/// From it come [`to_c_stats`] and the name table of `shmsess_stats_field`. A field of the
/// struct missing here stops the build (the struct literal in `to_c_stats` needs them all), and
/// so does a list out of struct order or not reaching the struct's end (the assertion on
/// [`STATS_FIELDS`]), so a new statistic is one struct field and one line here.
macro_rules! stats_fields {
    (|$s:ident, $a:ident, $now:ident| { $($field:ident: $value:expr),* $(,)? }) => {
        /// The C statistics of a cache from its counters `s`, entry ages `a` (at Unix time
        /// `now`). Pure; used by `shmsess_cache_stats` and the `shmsesscache stat` command.
        pub fn to_c_stats($s: &Stats, $a: &Ages, $now: u32) -> shmsess_stats {
            shmsess_stats {
                struct_size: std::mem::size_of::<shmsess_stats>() as u32,
                version: SHMSESS_STATS_VERSION,
                $($field: $value,)*
            }
        }

        /// Name and offset of every counter of `shmsess_stats`, in struct order.
        const STATS_FIELDS: &[(&CStr, usize)] = &[
            $( (
                match CStr::from_bytes_with_nul(concat!(stringify!($field), "\0").as_bytes()) {
                    Ok(c) => c,
                    Err(_) => panic!("field name"),
                },
                std::mem::offset_of!(shmsess_stats, $field),
            ), )*
        ];
    };
}

stats_fields!(|s, a, now| {
    stores: s.stores,
    replaced: s.replaced,
    expired: s.expired,
    evicted: s.evicted_live,
    lookup_hits: s.lookup_hits,
    lookup_misses: s.lookup_misses,
    remove_hits: s.remove_hits,
    remove_misses: s.remove_misses,
    taken: s.taken,
    too_large: s.too_large,
    lock_owner_died: s.owner_died_recoveries,
    dirty_repairs: s.dirty_repairs,
    corrupt_dropped: s.corrupt_dropped,
    lock_timeouts: s.lock_timeouts,
    lock_errors: s.lock_errors,
    tls13_stateless_skipped: s.tls13_stateless_skipped,
    bad_input: s.bad_input,
    encode_errors: s.encode_errors,
    decode_errors: s.decode_errors,
    entries: s.entries,
    used_slots: s.used_units,
    capacity_slots: s.capacity_units,
    slot_bytes: s.unit_bytes,
    shards: s.shard_count,
    slots_per_shard: s.units_per_shard,
    min_shard_used_slots: s.min_shard_used_units,
    max_shard_used_slots: s.max_shard_used_units,
    size_bytes: s.total_bytes,
    ids_generated: s.ids_generated,
    id_collisions: s.id_collisions,
    created_unix: s.created_unix,
    now_unix: u64::from(now),
    oldest_created_unix: unix_or_zero(a.oldest_created),
    newest_created_unix: unix_or_zero(a.newest_created),
    earliest_expiry_unix: unix_or_zero(a.earliest_expiry),
    latest_expiry_unix: unix_or_zero(a.latest_expiry),
    avg_time_left_s: a.time_left_sum.checked_div(a.live).unwrap_or(0),
    lock_contended: s.lock_contended,
    lock_wait_ns: s.lock_wait_ns,
    remote_stores: s.remote.stores,
    remote_hits: s.remote.hits,
    remote_misses: s.remote.misses,
    remote_errors: s.remote.errors,
    remote_timeouts: s.remote.timeouts,
    remote_skipped: s.remote.skipped,
    remote_rejected: s.remote.rejected,
    remote_replays_refused: s.remote.replays_refused,
    sni_mismatch: s.sni_mismatch,
    hrr_resumed: s.hrr_resumed,
    anti_replay_skipped: s.anti_replay_skipped,
    lock_resets: s.lock_resets,
    lock_refused_owner: s.lock_refused_owner,
    remote_unconfirmed: s.remote.unconfirmed,
    remote_dropped: s.remote.dropped,
    lookup_refused: s.lookup_refused,
    remote_rediscovered: s.remote.rediscovered,
    remote_old_format: s.remote.old_format,
    remote_redirects_refused: s.remote.redirects_refused,
    remote_refused: s.remote_refused,
});

/// A time of the entry ages, 0 when the cache has no live entry.
fn unix_or_zero(t: Option<u32>) -> u64 {
    u64::from(t.unwrap_or(0))
}

/// The field list names every counter once, in struct order, up to the struct's end: the
/// first counter follows `version`, each one follows the one before, the last ends the struct.
const _: () = {
    let first = std::mem::offset_of!(shmsess_stats, version) + 4;
    let mut end = first;
    let mut i = 0;
    while i < STATS_FIELDS.len() {
        assert!(
            STATS_FIELDS[i].1 == end,
            "STATS_FIELDS is out of struct order"
        );
        end += 8;
        i += 1;
    }
    assert!(
        end == std::mem::size_of::<shmsess_stats>(),
        "STATS_FIELDS does not reach the end of shmsess_stats"
    );
};

/// Number of numeric fields `shmsess_stats_field` can name (in this library version).
#[no_mangle]
pub extern "C" fn shmsess_stats_field_count() -> usize {
    STATS_FIELDS.len()
}

/// The `index`-th numeric field of `*stats`: its name (a static string, e.g. "lookup_hits")
/// in `*name` and its value in `*value`. Lets a server print or export every statistic
/// without knowing the struct (new versions add fields at the end). SHMSESS_ERR_NOT_FOUND when
/// `index` is past the last field or past what `stats->struct_size` covers (a struct filled
/// by an older library). Pure function of its arguments; thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_stats_field(
    stats: *const shmsess_stats,
    index: usize,
    name: *mut *const c_char,
    value: *mut u64,
) -> shmsess_result {
    guard("shmsess_stats_field", || {
        if stats.is_null() {
            return Err(null("stats"));
        }
        if name.is_null() {
            return Err(null("name"));
        }
        if value.is_null() {
            return Err(null("value"));
        }
        // SAFETY: the caller's struct has at least struct_size (>= 8) bytes; checked below
        // before any field is read.
        let size = unsafe { (*stats).struct_size } as usize;
        let Some(&(n, off)) = STATS_FIELDS.get(index).filter(|(_, off)| off + 8 <= size) else {
            return Err(Fail(
                SHMSESS_ERR_NOT_FOUND,
                format!("no statistics field {index}"),
            ));
        };
        // SAFETY: off + 8 <= struct_size; the field is a u64 at that offset.
        unsafe {
            *value = std::ptr::read_unaligned((stats as *const u8).add(off) as *const u64);
            *name = n.as_ptr();
        }
        Ok(SHMSESS_OK)
    })
}

/// Fraction of lookups that found a session that could resume: hits less `lookup_refused`
/// (for a struct that has it), over hits and misses; 0.0 when there were none. NULL gives
/// 0.0. Pure function; thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_stats_hit_ratio(stats: *const shmsess_stats) -> f64 {
    if stats.is_null() {
        return 0.0;
    }
    // SAFETY: non-NULL; `struct_size` is the first field of every version.
    let size = unsafe { (*stats).struct_size } as usize;
    if size < std::mem::offset_of!(shmsess_stats, lookup_misses) + 8 {
        return 0.0; // not a struct this library filled
    }
    // SAFETY: `struct_size` says the caller's struct holds both fields.
    let (h, m) = unsafe { ((*stats).lookup_hits, (*stats).lookup_misses) };
    // Hits that could not resume (version 5 on) are no hits; older structs lack the field.
    let refused = if size >= std::mem::offset_of!(shmsess_stats, lookup_refused) + 8 {
        // SAFETY: `struct_size` says the caller's struct holds the field.
        unsafe { (*stats).lookup_refused }
    } else {
        0
    };
    // The counters come from shared memory any owner's process can write, and wrap: summed
    // as floats, so no value overflows (a debug build would panic, a release one wrap).
    let total = h as f64 + m as f64;
    if total == 0.0 {
        0.0
    } else {
        (h as f64 - refused as f64).clamp(0.0, total) / total
    }
}
