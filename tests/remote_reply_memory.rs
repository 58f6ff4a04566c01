//! What one hostile reply can cost a worker in memory, whatever its nesting: a fake cluster
//! seed answers CLUSTER SLOTS with 1000 arrays of 1000 integers (4 MB on the wire, a million
//! elements), and this process's heap is measured by a counting allocator. One test in its
//! own binary, so no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Fetched, Remote, RemoteConfig};
use shmsesscache::store::cache::RemoteCountersRef;

/// The system allocator, counting the bytes live now and the most ever live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A seed that answers INFO, and anything else with `reply`; it writes the reply whole,
/// unless the client hangs up first.
fn seed(reply: Vec<u8>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let n: usize = line.trim_end()[1..].parse().unwrap();
                let mut args = Vec::new();
                for _ in 0..n {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let len: usize = line.trim_end()[1..].parse().unwrap();
                    let mut a = vec![0u8; len + 2];
                    r.read_exact(&mut a).unwrap();
                    args.push(a[..len].to_ascii_uppercase());
                }
                let out = if args[0] == b"INFO" {
                    let info = "# Server\r\nredis_version:7.0.15\r\n";
                    format!("${}\r\n{info}\r\n", info.len()).into_bytes()
                } else {
                    reply.clone()
                };
                if c.write_all(&out).is_err() {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn a_deeply_wide_slot_map_reply_costs_a_bounded_amount_of_memory() {
    let inner = format!("*1000\r\n{}", ":1\r\n".repeat(1000));
    let reply = format!("*1000\r\n{}", inner.repeat(1000)).into_bytes();
    assert!(reply.len() > 4_000_000);
    let port = seed(reply);
    let c = RemoteCountersRef::private();
    let r = Remote::new(
        RemoteConfig {
            url: format!("redis://127.0.0.1:{port}"),
            ca_file: None,
            prefix: "m:".into(),
            timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(60),
            compat: Compat::Detect,
            cluster: true,
            keys: Keyring::new(Key::new([7; 32]), Vec::new()),
            fleet: String::new(),
        },
        c.clone(),
    )
    .unwrap();
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let start = std::time::Instant::now();
    let got = r.fetch(&[9; 32], false, shmsesscache::util::now_unix());
    let peak = PEAK.load(Relaxed) - before;
    eprintln!(
        "the fetch took {:?}; peak heap growth {peak} bytes",
        start.elapsed()
    );
    assert!(
        matches!(got, Fetched::Unavailable),
        "no map from that reply"
    );
    assert_eq!(
        c.get().load().errors,
        1,
        "counted as an error: {:?}",
        c.get().load()
    );
    // The reply buffer (at most the 4 MiB slot map cap) and the parse of what is accepted;
    // a tree of a million elements is ~40 MB.
    assert!(
        peak < 12 << 20,
        "one reply took {peak} bytes of heap at its peak"
    );
}
