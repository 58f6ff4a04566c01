//! Cache-operation benchmark (run by `make bench`, never by `make test`).
//!
//! `bench_ops SECONDS RUNS` prints one JSON object:
//! - `ops`: store+lookup pairs per second for 1, 2 and 4 processes on one segment, with the
//!   sharded locks as built ("sharded") and with the same code behind one extra process-shared
//!   robust mutex around every operation ("one_lock": the shmcb / nginx design), for raw
//!   copies ("copy") and with `i2d_SSL_SESSION`/`d2i_SSL_SESSION` around them ("der", what a
//!   handshake pays); with the time spent waiting for locks.
//! - `fill`: lookup cost (ns, one process) as a 64 MiB cache fills from 1 % to 100 %.
//! - `size`: lookup cost as the cache holds 10^3 … 10^6 sessions.
//!
//! Each figure is the median of RUNS runs; all runs are listed too.

use std::ffi::{c_int, c_long, c_uchar, c_uint};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use openssl_sys as ossl;
use shmsesscache::store::cache::{Cache, Config, Found};
use shmsesscache::store::lock::ShardLock;
use shmsesscache::store::segment::Mapping;

extern "C" {
    fn SSL_SESSION_new() -> *mut ossl::SSL_SESSION;
    fn SSL_SESSION_set1_id(s: *mut ossl::SSL_SESSION, id: *const c_uchar, len: c_uint) -> c_int;
    fn SSL_SESSION_set_protocol_version(s: *mut ossl::SSL_SESSION, v: c_int) -> c_int;
    fn SSL_SESSION_set_cipher(s: *mut ossl::SSL_SESSION, c: *const ossl::SSL_CIPHER) -> c_int;
    fn SSL_SESSION_set1_master_key(s: *mut ossl::SSL_SESSION, k: *const c_uchar, l: usize)
        -> c_int;
    fn SSL_CIPHER_find(ssl: *mut ossl::SSL, p: *const c_uchar) -> *const ossl::SSL_CIPHER;
}

/// State shared by the parent and its forked workers (anonymous MAP_SHARED page).
#[repr(C)]
struct Shared {
    global_lock: libc::pthread_mutex_t,
    ready: AtomicU32,
    go: AtomicU32,
    stop: AtomicU32,
    pairs: AtomicU64,
    global_wait_ns: AtomicU64,
}

/// The page shared by the parent and its workers, with the one-lock mode's mutex initialised.
fn shared_page() -> Mapping {
    let page = Mapping::anonymous(4096).expect("mmap of one page");
    // SAFETY: a fresh zeroed page; the mutex is initialised before any worker exists.
    unsafe {
        let s = &*(page.base() as *const Shared);
        ShardLock::from_ptr(&s.global_lock as *const _ as *mut _)
            .init()
            .unwrap();
    }
    page
}

fn cache(size: u64) -> Cache {
    Cache::create(&Config {
        size_bytes: size,
        lock_timeout: None,
        ..Config::default()
    })
    .unwrap()
}

/// A 160-byte record with its id 15 bytes in, like a session's DER.
fn record(id: &[u8; 32]) -> [u8; 160] {
    let mut d = [0x5au8; 160];
    d[15..47].copy_from_slice(id);
    d
}

fn id_of(worker: u64, n: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&worker.to_le_bytes());
    id[8..16].copy_from_slice(&n.to_le_bytes());
    id[16..24].copy_from_slice(&(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    id
}

/// A template TLS 1.3 session for the "der" mode; its id is replaced per store.
struct Der {
    sess: *mut ossl::SSL_SESSION,
}

impl Der {
    fn new() -> Der {
        // SAFETY: building a session we own with OpenSSL's public calls.
        unsafe {
            let ctx = ossl::SSL_CTX_new(ossl::TLS_method());
            let ssl = ossl::SSL_new(ctx);
            let cipher = SSL_CIPHER_find(ssl, [0x13u8, 0x01].as_ptr());
            let sess = SSL_SESSION_new();
            SSL_SESSION_set_protocol_version(sess, 0x0304);
            SSL_SESSION_set_cipher(sess, cipher);
            SSL_SESSION_set1_master_key(sess, [7u8; 48].as_ptr(), 48);
            ossl::SSL_free(ssl);
            ossl::SSL_CTX_free(ctx);
            Der { sess }
        }
    }

    fn encode(&self, id: &[u8; 32], out: &mut [u8]) -> usize {
        // SAFETY: our session; out is large enough for a bare session (checked by i2d's size).
        unsafe {
            SSL_SESSION_set1_id(self.sess, id.as_ptr(), 32);
            let n = ossl::i2d_SSL_SESSION(self.sess, std::ptr::null_mut()) as usize;
            assert!(n <= out.len());
            let mut p = out.as_mut_ptr();
            ossl::i2d_SSL_SESSION(self.sess, &mut p);
            n
        }
    }

    fn decode(bytes: &[u8]) {
        let mut p = bytes.as_ptr();
        // SAFETY: p points to bytes.len() readable bytes.
        unsafe {
            let s = ossl::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, bytes.len() as c_long);
            assert!(!s.is_null());
            ossl::SSL_SESSION_free(s);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Locking {
    Sharded,
    OneLock,
}

/// One worker: store a new session, look up one stored a little earlier, until told to stop.
fn worker(c: &Cache, sh: &Shared, w: u64, locking: Locking, der: bool) -> u64 {
    let template = der.then(Der::new);
    let global = (locking == Locking::OneLock)
        // SAFETY: the mutex was initialised by the parent in the shared page.
        .then(|| unsafe { ShardLock::from_ptr(&sh.global_lock as *const _ as *mut _) });
    let mut buf = [0u8; 8192];
    let mut enc = [0u8; 1024];
    let mut n = 0u64;
    let locked = |f: &mut dyn FnMut()| match &global {
        None => f(),
        Some(l) => {
            if l.try_lock().unwrap().is_none() {
                let t0 = Instant::now();
                l.lock(None).unwrap();
                sh.global_wait_ns
                    .fetch_add(t0.elapsed().as_nanos() as u64, SeqCst);
            }
            f();
            l.unlock();
        }
    };
    sh.ready.fetch_add(1, SeqCst);
    while sh.go.load(SeqCst) == 0 {
        std::hint::spin_loop();
    }
    while sh.stop.load(SeqCst) == 0 {
        for _ in 0..64 {
            let id = id_of(w, n);
            match &template {
                Some(t) => {
                    let len = t.encode(&id, &mut enc);
                    locked(&mut || c.store(&id, &enc[..len], 1, u32::MAX).unwrap());
                }
                None => locked(&mut || c.store(&id, &record(&id), 1, u32::MAX).unwrap()),
            }
            let back = id_of(w, n.saturating_sub(16));
            let mut found = Found::Miss;
            locked(&mut || found = c.lookup(&back, &mut buf, false).unwrap());
            if let (Some(_), Found::Hit { len, .. }) = (&template, found) {
                Der::decode(&buf[..len]);
            }
            n += 1;
        }
    }
    n
}

/// Store+lookup pairs per second with `procs` processes, and lock wait per pair (ns).
fn run_ops(procs: usize, locking: Locking, der: bool, secs: f64) -> (f64, f64) {
    let c = cache(32 << 20);
    let page = shared_page();
    // SAFETY: the page holds a zero-initialised Shared (atomics and a pshared mutex).
    let sh = unsafe { &*(page.base() as *const Shared) };
    let mut pids = Vec::new();
    for w in 0..procs {
        // SAFETY: fork in a single-threaded benchmark; the child only runs `worker` and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let n = worker(&c, sh, w as u64, locking, der);
            sh.pairs.fetch_add(n, SeqCst);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        pids.push(pid);
    }
    while sh.ready.load(SeqCst) < procs as u32 {
        std::thread::yield_now();
    }
    let t0 = Instant::now();
    sh.go.store(1, SeqCst);
    std::thread::sleep(Duration::from_secs_f64(secs)); // the measured period itself
    sh.stop.store(1, SeqCst);
    for p in pids {
        // SAFETY: reaping our own children.
        unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
    }
    let el = t0.elapsed().as_secs_f64();
    let pairs = sh.pairs.load(SeqCst) as f64;
    let s = c.stats();
    let wait = s.lock_wait_ns + sh.global_wait_ns.load(SeqCst);
    (pairs / el, wait as f64 / pairs.max(1.0))
}

/// Mean ns per lookup in one process over the first `sessions` stored ids, and the fraction
/// that hit (below 1 once the cache is full enough to have evicted some).
fn lookup_ns(c: &Cache, sessions: u64, probes: u64) -> (f64, f64) {
    let mut buf = [0u8; 8192];
    let t0 = Instant::now();
    let mut hits = 0;
    for i in 0..probes {
        let id = id_of(9, (i.wrapping_mul(2_654_435_761)) % sessions);
        if let Found::Hit { .. } = c.lookup(&id, &mut buf, false).unwrap() {
            hits += 1;
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / probes as f64;
    (ns, hits as f64 / probes as f64)
}

/// The memory floor for the same access pattern: copy one random 200-byte record out of
/// `positions` spread over a buffer as large as the segment. A lookup must touch at least that
/// (plus its shard's lock and tags); what a lookup costs above it is the cache's own work.
fn touch_ns(mem: &[u8], positions: u64, probes: u64) -> f64 {
    let stride = (mem.len() as u64 / positions.max(1)).max(200);
    let mut out = [0u8; 200];
    let mut sum = 0u64;
    let t0 = Instant::now();
    for i in 0..probes {
        let at = (((i.wrapping_mul(2_654_435_761)) % positions) * stride) as usize;
        let at = at.min(mem.len() - 200);
        out.copy_from_slice(&mem[at..at + 200]);
        sum = sum.wrapping_add(u64::from(std::hint::black_box(out)[7]));
    }
    std::hint::black_box(sum);
    t0.elapsed().as_nanos() as f64 / probes as f64
}

fn touched(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| i as u8).collect()
}

fn fill(c: &Cache, from: u64, to: u64) {
    for n in from..to {
        let id = id_of(9, n);
        c.store(&id, &record(&id), 1, u32::MAX).unwrap();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `bench_ops lookups N`: fill N sessions, then 100,000 lookups (run under
    // `valgrind --tool=callgrind --cache-sim=yes --toggle-collect=*lookup_ns*` to count the
    // instructions and cache misses of the lookups alone).
    if args.get(1).map(String::as_str) == Some("lookups") {
        let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let bytes = ((n as f64 / 0.8 / 5152.0) * (1u64 << 20) as f64) as u64 + (1 << 20);
        let c = cache(bytes);
        fill(&c, 0, n);
        let (ns, hits) = lookup_ns(&c, n, 100_000);
        println!(
            "{n} sessions: {ns:.0} ns per lookup, {:.1}% hits",
            100.0 * hits
        );
        return;
    }
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut out = Vec::new();
    for der in [false, true] {
        for procs in [1usize, 2, 4] {
            let mut r = [Vec::new(), Vec::new()];
            let mut w = [Vec::new(), Vec::new()];
            for _ in 0..runs {
                for (k, l) in [Locking::Sharded, Locking::OneLock].into_iter().enumerate() {
                    let (rate, wait) = run_ops(procs, l, der, secs);
                    r[k].push(rate);
                    w[k].push(wait);
                }
            }
            for (k, name) in ["sharded", "one_lock"].into_iter().enumerate() {
                let line = format!(
                    "{{\"codec\":\"{}\",\"procs\":{procs},\"locking\":\"{name}\",\"median_pairs_per_s\":{:.1},\"median_wait_ns_per_pair\":{:.1},\"runs\":[{}]}}",
                    if der { "der" } else { "copy" },
                    median(&mut r[k].clone()),
                    median(&mut w[k].clone()),
                    list(&r[k])
                );
                eprintln!("{line}");
                out.push(line);
            }
        }
    }
    // Cost as the cache fills.
    let size: u64 = 64 << 20;
    let c = cache(size);
    let floor_mem = touched(size as usize);
    let cap = c.stats().capacity_units;
    let mut stored = 0;
    let mut fills = Vec::new();
    for pct in [1u64, 10, 25, 50, 75, 90, 100] {
        let target = cap * pct / 100;
        fill(&c, stored, target);
        stored = target;
        let r: Vec<(f64, f64)> = (0..runs).map(|_| lookup_ns(&c, stored, 200_000)).collect();
        let mut v: Vec<f64> = r.iter().map(|x| x.0).collect();
        let mut f: Vec<f64> = (0..runs)
            .map(|_| touch_ns(&floor_mem, stored, 200_000))
            .collect();
        let line = format!(
            "{{\"fill_pct\":{pct},\"entries\":{},\"median_lookup_ns\":{:.1},\"median_memory_floor_ns\":{:.1},\"hit_fraction\":{:.3}}}",
            c.stats().entries,
            median(&mut v),
            median(&mut f),
            r[0].1
        );
        eprintln!("{line}");
        fills.push(line);
    }
    drop(c);
    drop(floor_mem);
    // Cost as the cache grows.
    let mut sizes = Vec::new();
    for n in [1_000u64, 10_000, 100_000, 1_000_000] {
        // Room for n one-slot sessions at about 80 % fill (5,152 slots per MiB).
        let bytes = ((n as f64 / 0.8 / 5152.0) * (1u64 << 20) as f64) as u64 + (1 << 20);
        let c = cache(bytes);
        fill(&c, 0, n);
        let r: Vec<(f64, f64)> = (0..runs).map(|_| lookup_ns(&c, n, 200_000)).collect();
        let mut v: Vec<f64> = r.iter().map(|x| x.0).collect();
        let mem = touched(bytes as usize);
        let mut f: Vec<f64> = (0..runs).map(|_| touch_ns(&mem, n, 200_000)).collect();
        drop(mem);
        let line = format!(
            "{{\"sessions\":{n},\"segment_bytes\":{bytes},\"median_lookup_ns\":{:.1},\"median_memory_floor_ns\":{:.1},\"hit_fraction\":{:.3}}}",
            median(&mut v),
            median(&mut f),
            r[0].1
        );
        eprintln!("{line}");
        sizes.push(line);
    }
    println!(
        "{{\"ops\":[{}],\"fill\":[{}],\"size\":[{}]}}",
        out.join(","),
        fills.join(","),
        sizes.join(",")
    );
}
