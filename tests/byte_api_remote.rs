//! The byte API (`shmsess_cache_store`, `_lookup`, `_remove`) with `SHMSESS_BYTE_API_REMOTE`:
//! two "hosts" (two caches on separate anonymous segments) sharing a real `redis-server` on
//! 127.0.0.1, as two Apache instances with `ShmsessRemote` do. Without the flag the byte API
//! stays on the local segment, as programs built before it expect.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use shmsesscache::ffi::*;
use shmsesscache::handle::Handle;

#[path = "common/redis_server.rs"]
mod redis_server;
use redis_server::{free_port, RedisServer};

/// Bytes the library reads as a TLS 1.3 `SSL_SESSION` (SEQUENCE, version 1, 0x0304), padded.
fn tls13_bytes(n: u8) -> Vec<u8> {
    let mut v = vec![
        0x30, 0x82, 0x00, 0xa0, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04,
    ];
    v.resize(160, n);
    v
}

/// The same for TLS 1.2 (0x0303).
fn tls12_bytes(n: u8) -> Vec<u8> {
    let mut v = tls13_bytes(n);
    v[10] = 0x03;
    v
}

struct Host {
    cache: *mut shmsess_cache,
}

impl Host {
    fn new(port: u16, key_file: &str, prefix: &str, flags: u32, timeout_ms: u32) -> Host {
        let url = CString::new(format!("redis://127.0.0.1:{port}/0")).unwrap();
        let key = CString::new(key_file).unwrap();
        let prefix = CString::new(prefix).unwrap();
        let mut o = std::mem::MaybeUninit::<shmsess_options>::uninit();
        let size = std::mem::size_of::<shmsess_options>();
        assert_eq!(
            shmsess_options_init_sized(o.as_mut_ptr(), size),
            shmsess_result::SHMSESS_OK
        );
        // SAFETY: initialised above.
        let mut o = unsafe { o.assume_init() };
        o.size_bytes = 1 << 20;
        o.flags = flags;
        o.remote_url = url.as_ptr();
        o.remote_key_file = key.as_ptr();
        o.remote_key_prefix = prefix.as_ptr();
        o.remote_timeout_ms = timeout_ms;
        o.remote_backoff_ms = 1;
        let mut cache = std::ptr::null_mut();
        let r = shmsess_cache_create(&o, &mut cache);
        assert_eq!(r, shmsess_result::SHMSESS_OK, "create");
        Host { cache }
    }

    fn store(&self, id: &[u8], data: &[u8]) {
        let exp = u64::from(shmsesscache::util::now_unix()) + 300;
        let r = shmsess_cache_store(
            self.cache,
            id.as_ptr(),
            id.len(),
            data.as_ptr(),
            data.len(),
            exp,
        );
        assert_eq!(r, shmsess_result::SHMSESS_OK);
        // The writer thread has sent it: the other host can read it now.
        assert!(self
            .handle()
            .remote
            .as_ref()
            .unwrap()
            .flush(Duration::from_secs(5)));
    }

    fn lookup(&self, id: &[u8], buf_len: usize) -> Result<Vec<u8>, (shmsess_result, usize)> {
        let mut buf = vec![0u8; buf_len];
        let mut len = 0usize;
        let r = shmsess_cache_lookup(
            self.cache,
            id.as_ptr(),
            id.len(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut len,
            SHMSESS_LOOKUP_TAKE_TLS13,
        );
        if r == shmsess_result::SHMSESS_OK {
            buf.truncate(len);
            Ok(buf)
        } else {
            Err((r, len))
        }
    }

    fn handle(&self) -> &Handle {
        // SAFETY: a live handle from shmsess_cache_create is an Arc<Handle>'s pointer.
        unsafe { &*(self.cache as *const Handle) }
    }

    fn stats(&self) -> shmsess_stats {
        // SAFETY: all-zero bytes are a valid shmsess_stats (integers only); the call fills it.
        let mut st: shmsess_stats = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<shmsess_stats>();
        let r = shmsess_cache_stats_sized(self.cache, &mut st, size);
        assert_eq!(r, shmsess_result::SHMSESS_OK);
        st
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        shmsess_cache_free(self.cache);
    }
}

fn key_file(dir: &std::path::Path) -> String {
    let path = dir.join("keys");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(f, "{}", "ab".repeat(32)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shmsess-byteapi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const FLAG: u32 = SHMSESS_BYTE_API_REMOTE;

#[test]
fn tls12_bytes_stored_on_one_host_resume_on_the_other_and_are_refilled_there() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("12");
    let key = key_file(&dir);
    let (a, b) = (
        Host::new(srv.port, &key, "b12:", FLAG, 2000),
        Host::new(srv.port, &key, "b12:", FLAG, 2000),
    );
    let id = [1u8; 32];
    a.store(&id, &tls12_bytes(1));
    assert_eq!(
        b.lookup(&id, 8192).unwrap(),
        tls12_bytes(1),
        "B reads it from Redis"
    );
    assert_eq!(
        b.lookup(&id, 8192).unwrap(),
        tls12_bytes(1),
        "TLS 1.2: again"
    );
    assert_eq!(
        b.stats().remote_hits,
        1,
        "the second lookup was local (refilled)"
    );
    // A buffer too small: the size needed, as on the local path.
    let other = [2u8; 32];
    a.store(&other, &tls12_bytes(2));
    assert_eq!(
        b.lookup(&other, 10),
        Err((shmsess_result::SHMSESS_ERR_BUFFER_TOO_SMALL, 160))
    );
    // Removed on A: its Redis value is a tombstone, and a third host misses.
    let r = shmsess_cache_remove(a.cache, id.as_ptr(), id.len());
    assert_eq!(r, shmsess_result::SHMSESS_OK);
    assert!(a
        .handle()
        .remote
        .as_ref()
        .unwrap()
        .flush(Duration::from_secs(5)));
    let c = Host::new(srv.port, &key, "b12:", FLAG, 2000);
    assert_eq!(
        c.lookup(&id, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tls13_ticket_resumes_once_across_hosts() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("13");
    let key = key_file(&dir);
    let (a, b) = (
        Host::new(srv.port, &key, "b13:", FLAG, 2000),
        Host::new(srv.port, &key, "b13:", FLAG, 2000),
    );
    let id = [3u8; 32];
    a.store(&id, &tls13_bytes(3));
    // A buffer too small for it: nothing is consumed, the full buffer then gets it.
    assert_eq!(
        b.lookup(&id, 10),
        Err((shmsess_result::SHMSESS_ERR_BUFFER_TOO_SMALL, 160))
    );
    assert_eq!(b.lookup(&id, 8192).unwrap(), tls13_bytes(3), "B takes it");
    assert_eq!(
        b.lookup(&id, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    // A still has it in its own segment: the tombstone refuses the replay there.
    assert_eq!(
        a.lookup(&id, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    assert_eq!(a.stats().remote_replays_refused, 1);
    // The segment found it, but nothing resumed: a refused hit, not a hit (mod_status's
    // CacheRetrieveHitCount and the hit ratio leave it out).
    assert_eq!(a.stats().lookup_refused, 1, "A's replay is a refused hit");
    // The other way round: taken on A (local), then B cannot read it from Redis.
    let id2 = [4u8; 32];
    a.store(&id2, &tls13_bytes(4));
    assert_eq!(a.lookup(&id2, 8192).unwrap(), tls13_bytes(4));
    assert_eq!(
        b.lookup(&id2, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn without_the_flag_the_byte_api_stays_local() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("local");
    let key = key_file(&dir);
    let (a, b) = (
        Host::new(srv.port, &key, "bl:", 0, 2000),
        Host::new(srv.port, &key, "bl:", 0, 2000),
    );
    let id = [5u8; 32];
    let exp = u64::from(shmsesscache::util::now_unix()) + 300;
    let data = tls12_bytes(5);
    let r = shmsess_cache_store(a.cache, id.as_ptr(), 32, data.as_ptr(), data.len(), exp);
    assert_eq!(r, shmsess_result::SHMSESS_OK);
    assert!(a
        .handle()
        .remote
        .as_ref()
        .unwrap()
        .flush(Duration::from_secs(5)));
    assert_eq!(
        b.lookup(&id, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    assert_eq!(
        b.stats().remote_hits + b.stats().remote_misses,
        0,
        "Redis never asked"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn with_redis_down_a_local_ticket_resumes_and_a_lookup_costs_at_most_the_timeout() {
    let mut srv = RedisServer::start(free_port());
    let dir = temp_dir("down");
    let key = key_file(&dir);
    let a = Host::new(srv.port, &key, "bd:", FLAG, 50);
    let id = [6u8; 32];
    a.store(&id, &tls13_bytes(6));
    srv.stop();
    let t = Instant::now();
    assert_eq!(
        a.lookup(&id, 8192).unwrap(),
        tls13_bytes(6),
        "local, unconfirmed"
    );
    assert_eq!(
        a.lookup(&[7u8; 32], 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "two lookups took {took:?}"
    );
    assert_eq!(a.stats().remote_unconfirmed, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_buffer_too_small_takes_nothing_locally_nor_in_redis() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("small");
    let key = key_file(&dir);
    let (a, b) = (
        Host::new(srv.port, &key, "bs:", FLAG, 2000),
        Host::new(srv.port, &key, "bs:", FLAG, 2000),
    );
    let id = [8u8; 32];
    a.store(&id, &tls13_bytes(8));
    let before = a.stats();
    // As the header says: the size needed, and nothing taken (not taken and put back either:
    // meanwhile another child would miss it, and a full shard could lose it).
    assert_eq!(
        a.lookup(&id, 10),
        Err((shmsess_result::SHMSESS_ERR_BUFFER_TOO_SMALL, 160))
    );
    let after = a.stats();
    assert_eq!(
        (after.taken, after.stores, after.lookup_refused),
        (before.taken, before.stores, before.lookup_refused),
        "taken, stores, refused: the too-small lookup changed the segment"
    );
    // Nor was it consumed in Redis: B takes it from there once, and A's copy is then a replay.
    assert_eq!(b.lookup(&id, 8192).unwrap(), tls13_bytes(8), "B takes it");
    assert_eq!(
        a.lookup(&id, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    assert_eq!(a.stats().remote_replays_refused, 1);
    // A ticket only A has: too small, then the right size resumes it once.
    let id2 = [9u8; 32];
    a.store(&id2, &tls13_bytes(9));
    assert!(a.lookup(&id2, 159).is_err());
    assert_eq!(a.lookup(&id2, 160).unwrap(), tls13_bytes(9));
    assert_eq!(
        a.lookup(&id2, 8192).unwrap_err().0,
        shmsess_result::SHMSESS_ERR_NOT_FOUND
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `shmsess_accept_fn` that answers what `*userdata` (an i32) says.
unsafe extern "C" fn answer(_: *const u8, _: usize, userdata: *mut std::ffi::c_void) -> i32 {
    // SAFETY: the test passes a pointer to an i32.
    unsafe { *(userdata as *const i32) }
}

fn lookup_checked(h: &Host, id: &[u8], mut yes: i32) -> Result<usize, shmsess_result> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0usize;
    let r = shmsess_cache_lookup_checked(
        h.cache,
        id.as_ptr(),
        id.len(),
        buf.as_mut_ptr(),
        buf.len(),
        &mut len,
        SHMSESS_LOOKUP_TAKE_TLS13,
        Some(answer),
        &mut yes as *mut i32 as *mut std::ffi::c_void,
    );
    if r == shmsess_result::SHMSESS_OK {
        Ok(len)
    } else {
        Err(r)
    }
}

#[test]
fn a_refused_entry_is_left_as_it_was_locally_and_in_redis() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("checked");
    let key = key_file(&dir);
    let (a, b) = (
        Host::new(srv.port, &key, "bc:", FLAG, 2000),
        Host::new(srv.port, &key, "bc:", FLAG, 2000),
    );
    let id = [10u8; 32];
    a.store(&id, &tls13_bytes(10));
    // Refused on A (another vhost's ticket): not found, counted, and still A's to resume.
    assert_eq!(
        lookup_checked(&a, &id, 0),
        Err(shmsess_result::SHMSESS_ERR_NOT_FOUND)
    );
    let st = a.stats();
    assert_eq!((st.sni_mismatch, st.lookup_refused), (1, 1));
    // Refused on B, read from Redis: not consumed there either.
    assert_eq!(
        lookup_checked(&b, &id, 0),
        Err(shmsess_result::SHMSESS_ERR_NOT_FOUND)
    );
    assert_eq!(lookup_checked(&b, &id, 1), Ok(160), "B takes it once");
    assert_eq!(
        lookup_checked(&a, &id, 1),
        Err(shmsess_result::SHMSESS_ERR_NOT_FOUND),
        "then A's copy is a replay"
    );
    // Without the flag too (the check needs no Redis).
    let local = Host::new(srv.port, &key, "bc2:", 0, 2000);
    let exp = u64::from(shmsesscache::util::now_unix()) + 300;
    let data = tls13_bytes(11);
    let r = shmsess_cache_store(local.cache, id.as_ptr(), 32, data.as_ptr(), data.len(), exp);
    assert_eq!(r, shmsess_result::SHMSESS_OK);
    assert_eq!(
        lookup_checked(&local, &id, 0),
        Err(shmsess_result::SHMSESS_ERR_NOT_FOUND)
    );
    assert_eq!(lookup_checked(&local, &id, 1), Ok(160));
    assert_eq!(
        lookup_checked(&local, &id, 1),
        Err(shmsess_result::SHMSESS_ERR_NOT_FOUND)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tls12_session_read_from_redis_and_refused_is_not_copied_into_the_segment() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("refill");
    let key = key_file(&dir);
    let (a, b) = (
        Host::new(srv.port, &key, "br:", FLAG, 2000),
        Host::new(srv.port, &key, "br:", FLAG, 2000),
    );
    let id = [12u8; 32];
    a.store(&id, &tls12_bytes(12));
    // B's local miss is answered by Redis, and the session refused (another vhost's).
    assert_eq!(
        lookup_checked(&b, &id, 0),
        Err(shmsess_result::SHMSESS_ERR_NOT_FOUND)
    );
    let st = b.stats();
    assert_eq!(
        (st.remote_hits, st.remote_refused, st.entries, st.stores),
        (1, 1, 0, 0),
        "remote hits, refused, entries, stores on B: left as it was"
    );
    // Accepted: resumed from Redis, and from then on a local hit on B.
    assert_eq!(lookup_checked(&b, &id, 1), Ok(160));
    assert_eq!(lookup_checked(&b, &id, 1), Ok(160));
    let st = b.stats();
    assert_eq!(
        (
            st.remote_hits,
            st.remote_refused,
            st.entries,
            st.lookup_hits
        ),
        (2, 1, 1, 1),
        "remote hits, refused, entries, local hits on B"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A cache handle another thread may use (the C API is thread-safe).
#[derive(Clone, Copy)]
struct Shared(*mut shmsess_cache);
// SAFETY: every shmsess_cache_* call is thread-safe; the handle outlives the threads.
unsafe impl Send for Shared {}

/// Rounds of the refusing thread: `round` (set by the test once the round's ticket is stored;
/// `u32::MAX`: stop), `inside` (the round the refuser's check is in), `looked` (the round
/// whose own-vhost lookup is done: the check may answer).
#[derive(Default)]
struct Gate {
    round: AtomicU32,
    inside: AtomicU32,
    looked: AtomicU32,
}

/// `shmsess_accept_fn` refusing every entry, answering only once the test's own lookup of
/// this round is done (at most 5 s): the window a slow check (a d2i) leaves, held open.
unsafe extern "C" fn refuse_once_looked(
    _: *const u8,
    _: usize,
    userdata: *mut std::ffi::c_void,
) -> i32 {
    // SAFETY: the test passes a pointer to its Gate, alive while the refuser runs.
    let gate = unsafe { &*(userdata as *const Gate) };
    let r = gate.round.load(SeqCst);
    gate.inside.store(r, SeqCst);
    let t = Instant::now();
    while gate.looked.load(SeqCst) < r && t.elapsed() < Duration::from_secs(5) {
        std::thread::yield_now();
    }
    0
}

/// Refuse each round's ticket once, until the gate says stop.
fn refuse_each_round(h: &Host, gate: &Gate) {
    let mut buf = vec![0u8; 8192];
    loop {
        let r = gate.round.load(SeqCst);
        if r == u32::MAX {
            return;
        }
        if r == 0 || gate.inside.load(SeqCst) == r {
            std::thread::yield_now();
            continue;
        }
        let id = [r as u8; 32];
        let mut len = 0usize;
        let res = shmsess_cache_lookup_checked(
            h.cache,
            id.as_ptr(),
            id.len(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut len,
            SHMSESS_LOOKUP_TAKE_TLS13,
            Some(refuse_once_looked),
            gate as *const Gate as *mut std::ffi::c_void,
        );
        assert_eq!(res, shmsess_result::SHMSESS_ERR_NOT_FOUND);
    }
}

impl Shared {
    /// The handle as a `Host` that must not be dropped (its owner frees it).
    fn host(self) -> std::mem::ManuallyDrop<Host> {
        std::mem::ManuallyDrop::new(Host { cache: self.0 })
    }
}

#[test]
fn a_refused_ticket_is_never_taken_so_its_own_vhost_always_finds_it() {
    let srv = RedisServer::start(free_port());
    let dir = temp_dir("race");
    let key = key_file(&dir);
    for flags in [0, FLAG] {
        let host = Host::new(srv.port, &key, "brace:", flags, 2000);
        let id = [250u8; 32];
        host.store(&id, &tls13_bytes(13));
        let before = host.stats();
        for _ in 0..5 {
            assert_eq!(
                lookup_checked(&host, &id, 0),
                Err(shmsess_result::SHMSESS_ERR_NOT_FOUND)
            );
        }
        let after = host.stats();
        assert_eq!(
            (
                after.stores,
                after.taken,
                after.entries,
                after.lookup_refused
            ),
            (before.stores, before.taken, 1, before.lookup_refused + 5),
            "stores, taken, entries, refused after 5 refused lookups (flags {flags})"
        );
        // Another vhost's client refuses each round's ticket while its own vhost looks it up:
        // the own vhost's lookup runs while the refusing one is inside its check. A refusal
        // never takes the ticket, so the own vhost finds every one.
        let gate = std::sync::Arc::new(Gate::default());
        let refuser = {
            let (shared, gate) = (Shared(host.cache), gate.clone());
            std::thread::spawn(move || refuse_each_round(&shared.host(), &gate))
        };
        let rounds = 100u32;
        let mut missed = 0;
        for r in 1..=rounds {
            let id = [r as u8; 32];
            host.store(&id, &tls13_bytes(r as u8));
            gate.round.store(r, SeqCst);
            let t = Instant::now();
            while gate.inside.load(SeqCst) != r {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "the refuser never checked round {r}"
                );
                std::thread::yield_now();
            }
            missed += lookup_checked(&host, &id, 1).is_err() as u32;
            gate.looked.store(r, SeqCst);
        }
        gate.round.store(u32::MAX, SeqCst);
        refuser.join().unwrap();
        assert_eq!(
            missed, 0,
            "own vhost missed {missed} of {rounds} tickets in the cache (flags {flags})"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
