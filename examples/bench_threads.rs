//! Threads of one process sharing a cache through the C API (run by `make bench`, never by
//! `make test`): what a threaded server (Apache's event MPM with the socache provider) pays.
//!
//! `bench_threads SECONDS RUNS` prints one JSON object: for 1, 2, 4 and 8 threads, lookups per
//! second through `shmsess_cache_lookup` (median of RUNS), and the same with every call
//! wrapped in one process-wide mutex (what the handle check cost before it was made
//! lock-free), each with its ratio to one thread. The cache holds 4,096 sessions of 160 bytes;
//! threads look up ids spread over all shards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmsesscache::ffi::*;

const ENTRIES: u64 = 4096;

fn id(n: u64) -> [u8; 32] {
    let mut id = [0x5au8; 32];
    id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    id
}

struct Cache(*mut shmsess_cache);
// SAFETY: the C API is thread-safe for a live handle.
unsafe impl Send for Cache {}
unsafe impl Sync for Cache {}

fn create() -> Cache {
    let mut o = std::mem::MaybeUninit::<shmsess_options>::zeroed();
    let mut c = std::ptr::null_mut();
    // SAFETY: a struct of our own size, then a create that fills `c`.
    unsafe {
        assert_eq!(
            shmsess_options_init_sized(o.as_mut_ptr(), std::mem::size_of::<shmsess_options>()),
            shmsess_result::SHMSESS_OK
        );
        let mut o = o.assume_init();
        o.size_bytes = 8 << 20;
        assert_eq!(shmsess_cache_create(&o, &mut c), shmsess_result::SHMSESS_OK);
    }
    let data = [7u8; 160];
    for n in 0..ENTRIES {
        let k = id(n);
        let r = shmsess_cache_store(c, k.as_ptr(), 32, data.as_ptr(), 160, u64::from(u32::MAX));
        assert_eq!(r, shmsess_result::SHMSESS_OK);
    }
    Cache(c)
}

/// Lookups per second with `threads` threads for `secs`, each call optionally under `global`.
fn run(cache: &Arc<Cache>, threads: usize, secs: f64, global: Option<&Arc<Mutex<()>>>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, stop, total) = (cache.clone(), stop.clone(), total.clone());
            let global = global.cloned();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let mut n = t as u64 * 7919;
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        n = (n + 1) % ENTRIES;
                        let k = id(n);
                        let mut len = 0usize;
                        let _g = global.as_ref().map(|m| m.lock().unwrap());
                        let r = shmsess_cache_lookup(
                            cache.0,
                            k.as_ptr(),
                            32,
                            buf.as_mut_ptr(),
                            buf.len(),
                            &mut len,
                            0,
                        );
                        debug_assert_eq!(r, shmsess_result::SHMSESS_OK);
                        done += 1;
                    }
                }
                total.fetch_add(done, Ordering::Relaxed);
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cache = Arc::new(create());
    let global = Arc::new(Mutex::new(()));
    let counts = [1usize, 2, 4, 8];
    let mut rows = Vec::new();
    let (mut base, mut base_mutex) = (0.0, 0.0);
    for &n in &counts {
        let mut free = Vec::new();
        let mut locked = Vec::new();
        for _ in 0..runs {
            // Interleaved, so both see the same machine.
            free.push(run(&cache, n, secs, None));
            locked.push(run(&cache, n, secs, Some(&global)));
        }
        let (f, l) = (median(free), median(locked));
        if n == 1 {
            (base, base_mutex) = (f, l);
        }
        rows.push(format!(
            "{{\"threads\": {n}, \"lookups_per_s\": {f:.0}, \"ratio_vs_1\": {:.3}, \"with_global_mutex_per_s\": {l:.0}, \"global_mutex_ratio_vs_1\": {:.3}}}",
            f / base,
            l / base_mutex
        ));
    }
    // No thread uses the handle any more.
    shmsess_cache_free(cache.0);
    println!(
        "{{\"cores\": {}, \"rows\": [{}]}}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rows.join(", ")
    );
}
