//! Cost of a session lookup in each tier (run by `make bench` against a throw-away
//! redis-server on 127.0.0.1, never by `make test`).
//!
//! `bench_tiers REDIS_URL KEY_FILE SECONDS RUNS` prints one JSON object with the median
//! nanoseconds per operation, one process, operations in sequence:
//! - `local_hit`: a lookup that shared memory answers (what every resumption on the host that
//!   made the session costs, tier or not);
//! - `remote_hit`: a local miss, then GET from Redis, unseal (AES-256-GCM) and the copy into
//!   shared memory (what a resumption on another host costs once);
//! - `miss`: a local miss and a Redis miss (a client offering an unknown session);
//! - `new_session_async`: what the new-session callback does with the tier: the shared-memory
//!   store, sealing, and queueing for the writer thread;
//! - `new_session_sync`: the same with the SET sent and its reply awaited on the caller's thread
//!   (what the library did before writes were queued);
//! - `new_session_local`: the shared-memory store alone, same pattern: the callback without
//!   the tier (the baseline of the two above);
//! - `local_store`: the shared-memory store replacing existing entries (a warm segment).
//!
//! A session is 160 bytes, like a typical TLS 1.2 session; d2i/i2d, the same on every path,
//! are left out.

use std::path::Path;
use std::time::{Duration, Instant};

use shmsesscache::remote::seal::Keyring;
use shmsesscache::remote::{Fetched, Remote, RemoteConfig, DEFAULT_BACKOFF};
use shmsesscache::store::cache::RemoteCountersRef;
use shmsesscache::store::cache::{Cache, Config, Found};

const SESSION_BYTES: usize = 160;

fn id(tag: u8, n: u64) -> [u8; 32] {
    let mut id = [tag; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn now_unix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// Run `op(i)` for `i = 0..` until `secs` have passed; ns per call.
fn timed(secs: f64, mut op: impl FnMut(u64)) -> f64 {
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while t0.elapsed() < limit {
        for _ in 0..64 {
            op(n);
            n += 1;
        }
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

/// Like [`timed`], timing only bursts of `burst` calls, with `between` run untimed after each.
fn timed_bursts(secs: f64, burst: u64, mut op: impl FnMut(u64), mut between: impl FnMut()) -> f64 {
    let limit = Duration::from_secs_f64(secs);
    let (mut spent, mut n) = (Duration::ZERO, 0u64);
    while spent < limit {
        let t0 = Instant::now();
        for _ in 0..burst {
            op(n);
            n += 1;
        }
        spent += t0.elapsed();
        between();
    }
    spent.as_nanos() as f64 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: bench_tiers REDIS_URL KEY_FILE SECONDS RUNS");
        std::process::exit(2);
    }
    let secs: f64 = args[3].parse().expect("SECONDS");
    let runs: usize = args[4].parse().expect("RUNS");
    let counters = RemoteCountersRef::private();
    let cfg = RemoteConfig {
        url: args[1].clone(),
        ca_file: None,
        compat: shmsesscache::remote::Compat::Detect,
        cluster: false,
        prefix: "bench:".into(),
        timeout: Duration::from_millis(500),
        backoff: DEFAULT_BACKOFF,
        keys: Keyring::load(Path::new(&args[2])).expect("key file"),
        fleet: String::new(),
    };
    let remote = Remote::new(cfg, counters.clone()).expect("remote");
    let der = vec![0x30u8; SESSION_BYTES];
    let mut buf = vec![0u8; 8192];
    let (now, expires) = (now_unix(), now_unix() + 3600);
    let mut res: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for run in 0..runs as u64 {
        // A fresh local cache per run; remote ids are new per run, so every remote hit is a
        // local miss first.
        let cache = Cache::create(&Config {
            size_bytes: 256 << 20,
            ..Config::default()
        })
        .expect("cache");
        // The host that makes the sessions (the lookups below run on another, `cache`).
        let origin = Cache::create(&Config {
            size_bytes: 256 << 20,
            ..Config::default()
        })
        .expect("cache");
        let tag = run as u8 + 1;
        // What the new-session callback does with the tier, Redis's reply awaited (the
        // library before writes were queued), which also fills Redis for the lookups below.
        let stored = timed(secs, |i| {
            let _ = origin.store(&id(tag, i), &der, now, expires);
            remote.store_now(&id(tag, i), &der, now, expires, now);
        });
        res.entry("new_session_sync").or_default().push(stored);
        // What it does now: the local store, sealing and queueing for the writer thread. In
        // bursts of 256 with the queue drained (untimed) in between, so the figure is the
        // callback's cost, never that of dropping into a full queue.
        // Both measured on warm entries (replacing `WARM` sessions stored once beforehand), so
        // page faults of a fresh segment weigh on neither.
        const WARM: u64 = 1 << 16;
        for i in 0..WARM {
            let _ = origin.store(&id(tag ^ 0x80, i), &der, now, expires);
            let _ = origin.store(&id(tag ^ 0x40, i), &der, now, expires);
        }
        let dropped = counters
            .get()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        let queued = timed_bursts(
            secs,
            256,
            |i| {
                let k = id(tag ^ 0x80, i % WARM);
                let _ = origin.store(&k, &der, now, expires);
                remote.store(&k, &der, now, expires, now);
            },
            || assert!(remote.flush(Duration::from_secs(10)), "writer stuck"),
        );
        assert_eq!(
            counters
                .get()
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            dropped,
            "writes dropped"
        );
        res.entry("new_session_async").or_default().push(queued);
        // The same callback without the tier, same pattern (bursts): the baseline of the two
        // above.
        let local_new = timed_bursts(
            secs,
            256,
            |i| {
                let _ = origin.store(&id(tag ^ 0x40, i % WARM), &der, now, expires);
            },
            || (),
        );
        res.entry("new_session_local").or_default().push(local_new);
        // Everything stored above exists remotely: look the same ids up.
        let mut hits = 0u64;
        let remote_hit = timed(secs, |i| {
            let k = id(tag, i);
            if let Ok(Found::Hit { .. }) = cache.lookup(&k, &mut buf, false) {
                panic!("local hit on a fresh cache");
            }
            if let Fetched::Hit(o) = remote.fetch(&k, false, now) {
                let _ = cache.store(&k, &o.der, o.created, o.expires);
                hits += 1;
            }
        });
        res.entry("remote_hit").or_default().push(remote_hit);
        let local_hit = timed(secs, |i| {
            let k = id(tag, i % hits.max(1));
            assert!(matches!(
                cache.lookup(&k, &mut buf, false),
                Ok(Found::Hit { .. })
            ));
        });
        res.entry("local_hit").or_default().push(local_hit);
        let miss = timed(secs, |i| {
            let k = id(0xEE, i);
            let _ = cache.lookup(&k, &mut buf, false);
            assert!(matches!(remote.fetch(&k, false, now), Fetched::Miss));
        });
        res.entry("miss").or_default().push(miss);
        // Replacing entries that exist: warm pages, like a server's steady state (fresh pages
        // of a new segment would add a page fault per store).
        let local_store = timed(secs, |i| {
            let _ = origin.store(&id(tag, i % hits.max(1)), &der, now, expires);
        });
        res.entry("local_store").or_default().push(local_store);
        eprintln!(
            "  tiers run {}: local hit {local_hit:.0} ns, remote hit {remote_hit:.0} ns, miss {miss:.0} ns, \
             new session: local only {local_new:.0} ns, tier queued {queued:.0} ns, tier awaited {stored:.0} ns",
            run + 1
        );
    }
    let body: Vec<String> = res
        .iter()
        .map(|(k, v)| {
            let runs: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
            format!(
                "\"{k}\":{{\"median_ns\":{:.0},\"runs\":[{}]}}",
                median(v.clone()),
                runs.join(",")
            )
        })
        .collect();
    println!("{{\"session_bytes\":{SESSION_BYTES},{}}}", body.join(","));
}
