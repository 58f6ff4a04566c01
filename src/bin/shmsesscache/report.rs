//! `shmsesscache stat` output. Every number comes from the same `shmsess_stats` a C server
//! gets from `shmsess_cache_stats`, and the machine formats walk it with
//! `shmsess_stats_field`, so the tool cannot show anything the C API lacks.

use std::fmt::Write;

use shmsesscache::ffi::{self, shmsess_stats};
use shmsesscache::store::cache::Cache;

use crate::text::{self, duration, utc};

pub struct Snapshot {
    pub path: String,
    pub s: shmsess_stats,
}

impl Snapshot {
    pub fn take(cache: &Cache, path: &str, now: u32) -> Snapshot {
        Snapshot {
            path: path.to_string(),
            s: ffi::to_c_stats(&cache.stats(), &cache.ages(now), now),
        }
    }

    fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        for i in 0..ffi::shmsess_stats_field_count() {
            let mut name = std::ptr::null();
            let mut value = 0u64;
            if ffi::shmsess_stats_field(&self.s, i, &mut name, &mut value)
                != ffi::shmsess_result::SHMSESS_OK
            {
                break;
            }
            // SAFETY: the library hands out static NUL-terminated names.
            let n = unsafe { std::ffi::CStr::from_ptr(name) };
            v.push((n.to_str().unwrap_or("?"), value));
        }
        v
    }

    fn hit_ratio(&self) -> f64 {
        ffi::shmsess_stats_hit_ratio(&self.s)
    }

    fn fill_ratio(&self) -> f64 {
        ratio(self.s.used_slots, self.s.capacity_slots)
    }

    fn avg_shard_used(&self) -> f64 {
        ratio(self.s.used_slots, self.s.shards)
    }

    fn recoveries(&self) -> u64 {
        // Saturating: the counters wrap, and a hostile segment holds any value.
        self.s.lock_owner_died.saturating_add(self.s.dirty_repairs)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// "5m 3s ago" / "in 4m 57s" relative to now.
fn rel(t: u64, now: u64) -> String {
    if t <= now {
        format!("{} ({} ago)", utc(t), duration(now - t))
    } else {
        format!("{} (in {})", utc(t), duration(t - now))
    }
}

pub fn human(snap: &Snapshot) -> String {
    let s = &snap.s;
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "segment           {}", snap.path);
    let _ = writeln!(
        w,
        "  size            {} bytes ({}), created {}",
        s.size_bytes,
        mib(s.size_bytes),
        rel(s.created_unix, s.now_unix)
    );
    let _ = writeln!(
        w,
        "  geometry        {} shards x {} slots x {} bytes = {} slots",
        s.shards, s.slots_per_shard, s.slot_bytes, s.capacity_slots
    );
    let _ = writeln!(
        w,
        "entries           {} sessions in {} slots ({} full)",
        s.entries,
        s.used_slots,
        pct(snap.fill_ratio())
    );
    let _ = writeln!(
        w,
        "  per shard       slots used min {} / avg {:.1} / max {} of {}",
        s.min_shard_used_slots,
        snap.avg_shard_used(),
        s.max_shard_used_slots,
        s.slots_per_shard
    );
    if s.entries > 0 {
        let _ = writeln!(
            w,
            "  oldest          created {}",
            rel(s.oldest_created_unix, s.now_unix)
        );
        let _ = writeln!(
            w,
            "  newest          created {}",
            rel(s.newest_created_unix, s.now_unix)
        );
        let _ = writeln!(
            w,
            "  time left       next expiry {}, last {}, average {}",
            rel(s.earliest_expiry_unix, s.now_unix),
            rel(s.latest_expiry_unix, s.now_unix),
            duration(s.avg_time_left_s)
        );
    }
    let _ = writeln!(
        w,
        "lookups           {} hits, {} misses, {} hits refused (hit ratio {})",
        s.lookup_hits,
        s.lookup_misses,
        s.lookup_refused,
        pct(snap.hit_ratio())
    );
    let _ = writeln!(
        w,
        "  names           {} refused: the ClientHello named another server than the session's",
        s.sni_mismatch
    );
    let _ = writeln!(
        w,
        "  single use      {} TLS 1.3 tickets taken, {} resumed after a HelloRetryRequest",
        s.taken, s.hrr_resumed
    );
    // The advice is for a C server's author: nginx and Apache never count here, and their
    // operators cannot set the option.
    let _ = writeln!(
        w,
        "  early data      {} TLS 1.3 lookups skipped for OpenSSL's anti-replay{}",
        s.anti_replay_skipped,
        if s.anti_replay_skipped > 0 {
            " (it is on: set SSL_OP_NO_ANTI_REPLAY)   <- TLS 1.3 is not resumed"
        } else {
            ""
        }
    );
    let _ = writeln!(
        w,
        "stores            {} ({} replaced an entry with the same id)",
        s.stores, s.replaced
    );
    let _ = writeln!(
        w,
        "removals          {} hits, {} misses",
        s.remove_hits, s.remove_misses
    );
    let _ = writeln!(w, "expired           {}", s.expired);
    let _ = writeln!(
        w,
        "evicted (live)    {}{}",
        s.evicted,
        if s.evicted > 0 {
            "   <- the segment is too small for this load"
        } else {
            ""
        }
    );
    let _ = writeln!(
        w,
        "recoveries        {} ({} lock owners died, {} after a panic), {} corrupt entries dropped",
        snap.recoveries(),
        s.lock_owner_died,
        s.dirty_repairs,
        s.corrupt_dropped
    );
    let _ = writeln!(
        w,
        "lock trouble      {} timeouts, {} errors, {} locks re-initialised, {} refused (not the owner)",
        s.lock_timeouts, s.lock_errors, s.lock_resets, s.lock_refused_owner
    );
    let _ = writeln!(
        w,
        "lock contention   {} waits for a held lock, {} in all",
        s.lock_contended,
        text::nanos(s.lock_wait_ns)
    );
    let _ = writeln!(
        w,
        "refused           {} too large, {} bad input, {} TLS 1.3 stateless tickets not stored",
        s.too_large, s.bad_input, s.tls13_stateless_skipped
    );
    let _ = writeln!(
        w,
        "codec errors      {} encode, {} decode",
        s.encode_errors, s.decode_errors
    );
    let _ = writeln!(
        w,
        "session ids       {} generated, {} collisions",
        s.ids_generated, s.id_collisions
    );
    // Whether any remote counter is non-zero (a sum could overflow on hostile counters).
    let remote_used = [
        s.remote_stores,
        s.remote_hits,
        s.remote_misses,
        s.remote_errors,
        s.remote_timeouts,
        s.remote_skipped,
        s.remote_dropped,
    ]
    .iter()
    .any(|&c| c > 0);
    if remote_used {
        let _ = writeln!(
            w,
            "remote tier       {} stored, {} hits ({} could not resume), {} misses after local misses",
            s.remote_stores, s.remote_hits, s.remote_refused, s.remote_misses
        );
        let _ = writeln!(
            w,
            "remote trouble    {} errors, {} timeouts, {} skipped while backing off, {} writes dropped",
            s.remote_errors, s.remote_timeouts, s.remote_skipped, s.remote_dropped
        );
        let _ = writeln!(
            w,
            "remote refused    {} values that did not authenticate{}, {} TLS 1.3 replays, {} unconfirmed (no early data, or refused if read from Redis)",
            s.remote_rejected,
            if s.remote_rejected > 0 { " (tampered, or a key missing from the key file)" } else { "" },
            s.remote_replays_refused,
            s.remote_unconfirmed
        );
        let _ = writeln!(
            w,
            "remote moved      {} sentinel rediscoveries (another master named: a failover), {} values sealed by 0.4 refused, {} cluster redirections outside the slot map refused",
            s.remote_rediscovered, s.remote_old_format, s.remote_redirects_refused
        );
    } else {
        let _ = writeln!(w, "remote tier       not used");
    }
    o
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub fn json(snap: &Snapshot) -> String {
    let mut parts = vec![format!("\"path\":{}", json_str(&snap.path))];
    parts.push(format!("\"stats_version\":{}", snap.s.version));
    for (n, v) in snap.fields() {
        parts.push(format!("\"{n}\":{v}"));
    }
    parts.push(format!("\"hit_ratio\":{:.6}", snap.hit_ratio()));
    parts.push(format!("\"fill_ratio\":{:.6}", snap.fill_ratio()));
    parts.push(format!(
        "\"avg_shard_used_slots\":{:.3}",
        snap.avg_shard_used()
    ));
    parts.push(format!("\"recoveries\":{}", snap.recoveries()));
    format!("{{{}}}\n", parts.join(","))
}

fn prom_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The library's Prometheus text (the nginx modules' status pages print the same), labelled
/// with the segment.
pub fn prometheus(snap: &Snapshot) -> String {
    let label = format!("segment=\"{}\"", prom_label(&snap.path));
    ffi::prometheus_text(&snap.s, &label)
}
