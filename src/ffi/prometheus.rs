//! The statistics in the Prometheus text exposition format, for `shmsesscache stat
//! --prometheus` and the nginx modules' status pages alike: one metric prefix, one list of
//! which statistics are gauges, and a `# HELP` and a `# TYPE` line for every metric.

use std::ffi::{c_char, CStr};
use std::fmt::Write as _;

use super::result::{shmsess_result, Fail};
use super::stats::{
    shmsess_stats, shmsess_stats_field, shmsess_stats_field_count, shmsess_stats_hit_ratio,
};
use super::{guard, null};

/// What every metric's name starts with (the command-line tool's, kept by the nginx modules).
const METRIC_PREFIX: &str = "shmsesscache_";

/// Counter or gauge (goes up and down).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}

use Kind::{Counter, Gauge};

/// Every field of `shmsess_stats`, in its order, with its kind and help text (a test checks
/// that no field is missing).
const METRICS: &[(&str, Kind, &str)] = &[
    ("stores", Counter, "Sessions stored."),
    (
        "replaced",
        Counter,
        "Stores that replaced an entry with the same id.",
    ),
    (
        "expired",
        Counter,
        "Entries dropped because they had expired.",
    ),
    (
        "evicted",
        Counter,
        "Live entries evicted to make room (the shard was full).",
    ),
    (
        "lookup_hits",
        Counter,
        "Lookups that found a session (resumptions).",
    ),
    ("lookup_misses", Counter, "Lookups that found no session."),
    ("remove_hits", Counter, "Removals of a stored session."),
    (
        "remove_misses",
        Counter,
        "Removals of a session that was not stored.",
    ),
    (
        "taken",
        Counter,
        "TLS 1.3 tickets consumed by a lookup (single use).",
    ),
    (
        "too_large",
        Counter,
        "Sessions refused for being larger than the largest entry.",
    ),
    (
        "lock_owner_died",
        Counter,
        "Shard locks recovered after their holder died, each with a repair.",
    ),
    (
        "dirty_repairs",
        Counter,
        "Shards repaired after a panic inside the library left them marked dirty.",
    ),
    (
        "corrupt_dropped",
        Counter,
        "Entries dropped because their header or checksum did not verify.",
    ),
    (
        "lock_timeouts",
        Counter,
        "Operations that gave up waiting for a shard lock.",
    ),
    ("lock_errors", Counter, "Shard lock operations that failed."),
    (
        "tls13_stateless_skipped",
        Counter,
        "TLS 1.3 sessions not stored because their tickets are stateless.",
    ),
    ("bad_input", Counter, "Calls refused for bad arguments."),
    (
        "encode_errors",
        Counter,
        "Sessions that could not be encoded (i2d).",
    ),
    (
        "decode_errors",
        Counter,
        "Stored sessions that could not be decoded (d2i).",
    ),
    ("entries", Gauge, "Entries stored now."),
    ("used_slots", Gauge, "Slots in use."),
    ("capacity_slots", Gauge, "Slots in all."),
    ("slot_bytes", Gauge, "Bytes per slot."),
    (
        "shards",
        Gauge,
        "Shards of the segment, each with its own lock.",
    ),
    ("slots_per_shard", Gauge, "Slots per shard."),
    (
        "min_shard_used_slots",
        Gauge,
        "Slots in use in the emptiest shard.",
    ),
    (
        "max_shard_used_slots",
        Gauge,
        "Slots in use in the fullest shard.",
    ),
    ("size_bytes", Gauge, "Size of the segment in bytes."),
    (
        "ids_generated",
        Counter,
        "Session ids made by the library's generator.",
    ),
    (
        "id_collisions",
        Counter,
        "Generated session ids thrown away because the id was in use.",
    ),
    (
        "created_unix",
        Gauge,
        "When the segment was created (Unix seconds).",
    ),
    (
        "now_unix",
        Gauge,
        "When these statistics were taken (Unix seconds).",
    ),
    (
        "oldest_created_unix",
        Gauge,
        "Creation time of the oldest live entry (0: empty).",
    ),
    (
        "newest_created_unix",
        Gauge,
        "Creation time of the newest live entry (0: empty).",
    ),
    (
        "earliest_expiry_unix",
        Gauge,
        "Earliest expiry among live entries (0: empty).",
    ),
    (
        "latest_expiry_unix",
        Gauge,
        "Latest expiry among live entries (0: empty).",
    ),
    (
        "avg_time_left_s",
        Gauge,
        "Average seconds left before the live entries expire.",
    ),
    (
        "lock_contended",
        Counter,
        "Shard lock acquisitions that had to wait.",
    ),
    (
        "lock_wait_ns",
        Counter,
        "Nanoseconds spent waiting for contended shard locks.",
    ),
    (
        "remote_stores",
        Counter,
        "Sessions written to the Redis tier.",
    ),
    (
        "remote_hits",
        Counter,
        "Local misses the Redis tier answered.",
    ),
    (
        "remote_misses",
        Counter,
        "Local misses the Redis tier did not have either.",
    ),
    ("remote_errors", Counter, "Redis operations that failed."),
    (
        "remote_timeouts",
        Counter,
        "Redis operations that timed out.",
    ),
    (
        "remote_skipped",
        Counter,
        "Redis operations skipped while the tier backed off.",
    ),
    (
        "remote_rejected",
        Counter,
        "Values from Redis dropped because they did not authenticate.",
    ),
    (
        "remote_replays_refused",
        Counter,
        "TLS 1.3 tickets found locally but already resumed on another host.",
    ),
    (
        "sni_mismatch",
        Counter,
        "Resumptions refused because the ClientHello named another server.",
    ),
    (
        "hrr_resumed",
        Counter,
        "TLS 1.3 tickets resumed after a HelloRetryRequest.",
    ),
    (
        "anti_replay_skipped",
        Counter,
        "TLS 1.3 lookups skipped because OpenSSL's anti-replay is on.",
    ),
    (
        "lock_resets",
        Counter,
        "Shard locks re-initialised because nobody could take them again.",
    ),
    (
        "lock_refused_owner",
        Counter,
        "Lock attempts refused because this user does not own the segment file.",
    ),
    (
        "remote_unconfirmed",
        Counter,
        "TLS 1.3 tickets resumed while Redis could not confirm they were unused.",
    ),
    (
        "remote_dropped",
        Counter,
        "Writes that never reached Redis (queue full, tier down or backing off).",
    ),
    (
        "lookup_refused",
        Counter,
        "Lookup hits that could not resume (another server name, not a session).",
    ),
    (
        "remote_rediscovered",
        Counter,
        "Times a process's sentinels named another master than its last answer (a failover).",
    ),
    (
        "remote_old_format",
        Counter,
        "Values from Redis refused because shmsesscache 0.4 sealed them.",
    ),
    (
        "remote_redirects_refused",
        Counter,
        "Redis Cluster redirections refused: the address is not a node of the slot map.",
    ),
    (
        "remote_refused",
        Counter,
        "Redis hits that could not resume (another server name or vhost, unconfirmed ticket).",
    ),
];

/// One metric: `# HELP`, `# TYPE` and the sample.
fn metric(out: &mut String, name: &str, kind: Kind, help: &str, labels: &str, value: &str) {
    let (suffix, type_name) = match kind {
        Counter => ("_total", "counter"),
        Gauge => ("", "gauge"),
    };
    let full = format!("{METRIC_PREFIX}{name}{suffix}");
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "# HELP {full} {help}");
    let _ = writeln!(out, "# TYPE {full} {type_name}");
    let _ = writeln!(out, "{full}{labels} {value}");
}

/// The Prometheus text of `stats`, every sample with `labels` (`name="value",...`, escaped
/// by the caller, or empty).
pub fn prometheus_text(stats: &shmsess_stats, labels: &str) -> String {
    text_of(stats, labels)
}

/// [`prometheus_text`] for statistics a C caller filled: read through `shmsess_stats_field`,
/// which reads only what the caller's structure has (an older one has fewer fields).
fn text_of(stats: *const shmsess_stats, labels: &str) -> String {
    let mut out = String::new();
    let (mut used_slots, mut shards) = (0u64, 0u64);
    for i in 0..shmsess_stats_field_count() {
        let mut name = std::ptr::null();
        let mut value = 0u64;
        if shmsess_stats_field(stats, i, &mut name, &mut value) != shmsess_result::SHMSESS_OK {
            break;
        }
        // SAFETY: shmsess_stats_field hands out static NUL-terminated names.
        let name = unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("?");
        let (kind, help) = METRICS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or((Counter, ""), |(_, k, h)| (*k, *h));
        metric(&mut out, name, kind, help, labels, &value.to_string());
        match name {
            "used_slots" => used_slots = value,
            "shards" => shards = value,
            _ => {}
        }
    }
    let ratio = format!("{:.6}", shmsess_stats_hit_ratio(stats));
    // As floats: the counters come from shared memory and hold any value.
    let per_shard = if shards == 0 {
        0.0
    } else {
        used_slots as f64 / shards as f64
    };
    let hit = "Fraction of lookups that found a session.";
    metric(&mut out, "hit_ratio", Gauge, hit, labels, &ratio);
    let avg = "Average slots in use per shard.";
    let per_shard = format!("{per_shard:.3}");
    metric(
        &mut out,
        "avg_shard_used_slots",
        Gauge,
        avg,
        labels,
        &per_shard,
    );
    out
}

/// Write the statistics `stats` (filled by `shmsess_cache_stats`) in the Prometheus text
/// format, as `shmsesscache stat --prometheus` prints them: every metric named
/// `shmsesscache_...` (counters end in `_total`) with `# HELP` and `# TYPE` lines, each sample
/// with `labels` (NULL, or `name="value",...` escaped by the caller). Writes the text and a NUL
/// into `buf` (`cap` bytes, owned by the caller) if it fits, and its length without the NUL
/// into `*len` whenever the text could be made: `SHMSESS_OK`, or `SHMSESS_ERR_BUFFER_TOO_SMALL`,
/// which means call again with `cap = *len + 1` (`buf` may be NULL with `cap` 0 to ask for the
/// length). On other errors (a NULL argument, `labels` that are not UTF-8) `*len` is left as
/// it was. Keeps nothing;
/// safe from any thread.
#[no_mangle]
pub extern "C" fn shmsess_stats_prometheus(
    stats: *const shmsess_stats,
    labels: *const c_char,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> shmsess_result {
    guard("shmsess_stats_prometheus", || {
        if stats.is_null() {
            return Err(null("stats"));
        }
        if len.is_null() {
            return Err(null("len"));
        }
        if buf.is_null() && cap != 0 {
            return Err(null("buf (with a non-zero cap)"));
        }
        let labels = if labels.is_null() {
            ""
        } else {
            // SAFETY: a NUL-terminated string from the caller.
            unsafe { CStr::from_ptr(labels) }.to_str().map_err(|_| {
                Fail(
                    shmsess_result::SHMSESS_ERR_INVALID_ARGUMENT,
                    "labels is not UTF-8".into(),
                )
            })?
        };
        let text = text_of(stats, labels);
        // SAFETY: len is a caller-owned slot.
        unsafe { *len = text.len() };
        if cap <= text.len() {
            return Err(Fail(
                shmsess_result::SHMSESS_ERR_BUFFER_TOO_SMALL,
                format!("the text has {} bytes and a NUL, buf has {cap}", text.len()),
            ));
        }
        // SAFETY: buf has cap > text.len() bytes (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, text.len());
            *buf.add(text.len()) = 0;
        }
        Ok(shmsess_result::SHMSESS_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statistic_has_a_kind_and_a_help_text_in_struct_order() {
        let stats: shmsess_stats = unsafe { std::mem::zeroed() };
        let stats = shmsess_stats {
            struct_size: std::mem::size_of::<shmsess_stats>() as u32,
            ..stats
        };
        let mut names = Vec::new();
        for i in 0..shmsess_stats_field_count() {
            let (mut name, mut value) = (std::ptr::null(), 0u64);
            assert_eq!(
                shmsess_stats_field(&stats, i, &mut name, &mut value),
                shmsess_result::SHMSESS_OK
            );
            names.push(unsafe { CStr::from_ptr(name) }.to_str().unwrap().to_owned());
        }
        let listed: Vec<_> = METRICS.iter().map(|(n, _, _)| n.to_string()).collect();
        assert_eq!(names, listed);
    }

    #[test]
    fn text_has_help_type_and_labelled_samples() {
        let mut stats: shmsess_stats = unsafe { std::mem::zeroed() };
        stats.struct_size = std::mem::size_of::<shmsess_stats>() as u32;
        stats.lookup_hits = 3;
        stats.lookup_misses = 1;
        stats.entries = 7;
        let t = prometheus_text(&stats, "block=\"stream\"");
        assert!(t.contains(
            "# HELP shmsesscache_lookup_hits_total Lookups that found a session (resumptions).\n\
             # TYPE shmsesscache_lookup_hits_total counter\n\
             shmsesscache_lookup_hits_total{block=\"stream\"} 3\n"
        ));
        assert!(t.contains(
            "# TYPE shmsesscache_entries gauge\nshmsesscache_entries{block=\"stream\"} 7\n"
        ));
        assert!(t.contains("shmsesscache_hit_ratio{block=\"stream\"} 0.750000\n"));
        assert!(prometheus_text(&stats, "").contains("\nshmsesscache_entries 7\n"));
    }

    #[test]
    fn the_c_call_reports_the_length_and_refuses_a_short_buffer() {
        let mut stats: shmsess_stats = unsafe { std::mem::zeroed() };
        stats.struct_size = std::mem::size_of::<shmsess_stats>() as u32;
        let mut len = 0usize;
        let r =
            shmsess_stats_prometheus(&stats, std::ptr::null(), std::ptr::null_mut(), 0, &mut len);
        assert_eq!(r, shmsess_result::SHMSESS_ERR_BUFFER_TOO_SMALL);
        let mut buf = vec![0 as c_char; len + 1];
        let r = shmsess_stats_prometheus(
            &stats,
            c"a=\"b\"".as_ptr(),
            buf.as_mut_ptr(),
            len + 1,
            &mut len,
        );
        assert_eq!(
            r,
            shmsess_result::SHMSESS_ERR_BUFFER_TOO_SMALL,
            "labels make it longer"
        );
        let mut buf = vec![0 as c_char; len + 1];
        let r = shmsess_stats_prometheus(
            &stats,
            c"a=\"b\"".as_ptr(),
            buf.as_mut_ptr(),
            len + 1,
            &mut len,
        );
        assert_eq!(r, shmsess_result::SHMSESS_OK);
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(text.len(), len);
        assert!(text.ends_with("shmsesscache_avg_shard_used_slots{a=\"b\"} 0.000\n"));
    }
}
