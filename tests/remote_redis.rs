//! The remote tier against a real `redis-server` on 127.0.0.1 (started by each test on a free
//! port; `make test-deps` installs it): fleet-wide single use with tombstones, in both
//! dialects (`SET ... GET` and the Lua fallback for Redis < 6.2), a Redis restarted under a
//! pooled connection, and the write queue (bounded, never blocking its caller).

use std::net::TcpListener;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Fetched, Remote, RemoteConfig, Taken};
use shmsesscache::store::cache::RemoteCountersRef;

#[path = "common/redis_server.rs"]
mod redis_server;
use redis_server::{free_port, RedisServer};

fn remote(c: &RemoteCountersRef, port: u16, compat: Compat, timeout_ms: u64) -> Remote {
    let cfg = RemoteConfig {
        url: format!("redis://127.0.0.1:{port}/0"),
        ca_file: None,
        prefix: format!("t{}:", std::process::id()),
        timeout: Duration::from_millis(timeout_ms),
        backoff: Duration::from_millis(1),
        compat,
        cluster: false,
        keys: Keyring::new(Key::new([7; 32]), Vec::new()),
        fleet: String::new(),
    };
    Remote::new(cfg, c.clone()).unwrap()
}

fn counters() -> RemoteCountersRef {
    RemoteCountersRef::private()
}

fn now() -> u32 {
    shmsesscache::util::now_unix()
}

fn hit(f: Fetched) -> bool {
    matches!(f, Fetched::Hit(_))
}

fn miss(f: Fetched) -> bool {
    matches!(f, Fetched::Miss)
}

fn single_use(compat: Compat) {
    let srv = RedisServer::start(free_port());
    let c = counters();
    let r = remote(&c, srv.port, compat, 2000);
    let (t, exp) = (now(), now() + 300);
    let id = |n: u8| [n; 32];

    // Stored by host A, taken by host B: one use in the fleet.
    r.store_now(&id(1), b"der-1", t, exp, t);
    assert!(hit(r.fetch(&id(1), true, t)), "B takes it");
    assert!(miss(r.fetch(&id(1), true, t)), "taken once");
    assert_eq!(
        r.take_local(&id(1), exp, t),
        Taken::UsedElsewhere,
        "A refuses its own copy"
    );

    // Taken on the host that made it: gone for every other host.
    r.store_now(&id(2), b"der-2", t, exp, t);
    assert_eq!(r.take_local(&id(2), exp, t), Taken::Consumed);
    assert!(miss(r.fetch(&id(2), true, t)), "B finds a tombstone");
    assert_eq!(r.take_local(&id(2), exp, t), Taken::UsedElsewhere);

    // Never stored (its SET failed or is still queued): accepted, and a late store cannot
    // bring it back for another host.
    assert_eq!(r.take_local(&id(3), exp, t), Taken::NeverStored);
    let stores = c.get().stores.load(Relaxed);
    r.store_now(&id(3), b"der-3", t, exp, t);
    assert_eq!(
        c.get().stores.load(Relaxed),
        stores,
        "SET NX did not overwrite the tombstone"
    );
    assert!(miss(r.fetch(&id(3), true, t)));

    // TLS 1.2 lookups do not consume; a removal (queued) ends them everywhere.
    r.store_now(&id(4), b"der-4", t, exp, t);
    assert!(hit(r.fetch(&id(4), false, t)));
    assert!(hit(r.fetch(&id(4), false, t)));
    r.remove(&id(4));
    assert!(r.flush(Duration::from_secs(5)));
    assert!(miss(r.fetch(&id(4), false, t)), "removed");
    // A removal of something Redis never had leaves nothing behind.
    r.remove(&id(5));
    assert!(r.flush(Duration::from_secs(5)));
    assert_eq!(r.take_local(&id(5), exp, t), Taken::NeverStored);

    let s = c.get().load();
    assert_eq!(
        (s.errors, s.timeouts, s.skipped, s.rejected, s.dropped),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.stores, 3);
}

#[test]
fn single_use_fleet_wide_with_set_get() {
    single_use(Compat::Detect);
}

#[test]
fn single_use_fleet_wide_with_the_script_fallback() {
    single_use(Compat::Scripts);
}

#[test]
fn a_restarted_redis_costs_no_failure_the_stale_connection_is_replaced() {
    let port = free_port();
    let mut srv = RedisServer::start(port);
    let c = counters();
    let r = remote(&c, port, Compat::Detect, 2000);
    let t = now();
    r.store_now(&[9; 32], b"der", t, t + 300, t);
    assert!(hit(r.fetch(&[9; 32], false, t)));
    srv.stop();
    let _srv = RedisServer::start(port);
    // The pooled connection is dead (the old server closed it): replaced within the same
    // operation. Redis lost its data (no persistence): a miss, not an error.
    assert!(miss(r.fetch(&[9; 32], false, t)));
    let s = c.get().load();
    assert_eq!((s.errors, s.timeouts), (0, 0), "{s:?}");
}

#[test]
fn an_unreachable_redis_leaves_a_local_take_unconfirmed() {
    let c = counters();
    let r = remote(&c, free_port(), Compat::Detect, 200);
    let t = now();
    assert_eq!(r.take_local(&[1; 32], t + 60, t), Taken::Unconfirmed);
    assert_eq!(c.get().unconfirmed.load(Relaxed), 1);
}

#[test]
fn queued_writes_never_wait_for_redis_and_the_queue_is_bounded() {
    // A Redis that never answers: a listener nobody accepts on (the kernel completes the
    // connections into its backlog), so the writer's batches wait out their timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let timeout_ms = 1000;
    let c = counters();
    let r = remote(&c, port, Compat::Detect, timeout_ms);
    let t = now();
    let start = Instant::now();
    for n in 0..5000u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_le_bytes());
        r.store(&id, b"der", t, t + 300, t);
        r.remove(&id);
    }
    let spent = start.elapsed();
    // Wide margin: 10000 queued writes against one timeout (a synchronous write would wait a
    // full timeout for the first one alone).
    assert!(
        spent < Duration::from_millis(timeout_ms),
        "queueing took {spent:?}"
    );
    let dropped = c.get().dropped.load(Relaxed);
    assert!(
        dropped >= 10_000 - 4096 - 64,
        "the queue is bounded: {dropped} dropped"
    );
    assert_eq!(c.get().stores.load(Relaxed), 0);
    drop(r);
    drop(silent);
}

/// Fork, in the child fetch one id within `bound`; true if the child finished by itself.
fn child_fetches_within(r: &Remote, bound: Duration) -> bool {
    // SAFETY: the child only uses the tier and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Backstop: a hung child must not outlive the test.
        unsafe { libc::alarm(10) };
        let ok = !matches!(r.fetch(&[1; 32], false, now()), Fetched::Unavailable);
        unsafe { libc::_exit(if ok { 0 } else { 2 }) };
    }
    let start = Instant::now();
    let mut status = 0;
    loop {
        let w = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if w == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if start.elapsed() > bound {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_child_forked_while_the_writer_is_busy_uses_the_tier() {
    // Prefork servers fork at any moment: the writer thread may hold the process state's
    // lock just then. The child must not inherit it locked.
    let srv = RedisServer::start(free_port());
    let c = counters();
    let r = remote(&c, srv.port, Compat::Detect, 2000);
    let t = now();
    let mut stuck = 0;
    for i in 0..300u32 {
        for j in 0..20u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&(i * 100 + j).to_le_bytes());
            r.store(&id, b"der", t, t + 300, t);
        }
        if !child_fetches_within(&r, Duration::from_secs(3)) {
            stuck += 1;
        }
    }
    assert_eq!(stuck, 0, "children that could not fetch within 3 s, of 300");
    assert!(r.flush(Duration::from_secs(5)));
}

/// One command on a fresh connection to `port`, after SELECT `db`: the reply's bytes (a test
/// helper that moves raw values the way anyone with write access to Redis can).
fn raw(port: u16, db: u32, args: &[&[u8]]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    for cmd in [&[b"SELECT".as_slice(), db.to_string().as_bytes()][..], args] {
        out.extend_from_slice(format!("*{}\r\n", cmd.len()).as_bytes());
        for a in cmd {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }
    s.write_all(&out).unwrap();
    // "+OK\r\n" for SELECT, then the reply: read until the connection has given it whole.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        let rest = &got[5.min(got.len())..];
        let whole = match rest.first() {
            Some(b'$') => rest.iter().position(|&b| b == b'\n').is_some_and(|i| {
                let len: isize = std::str::from_utf8(&rest[1..i - 1])
                    .unwrap()
                    .parse()
                    .unwrap();
                len < 0 || rest.len() >= i + 1 + len as usize + 2
            }),
            Some(_) => rest.ends_with(b"\r\n"),
            None => false,
        };
        if n == 0 || whole {
            return rest.to_vec();
        }
    }
}

/// The value of a bulk reply from [`raw`].
fn bulk_value(reply: &[u8]) -> Vec<u8> {
    let i = reply.iter().position(|&b| b == b'\n').unwrap();
    reply[i + 1..reply.len() - 2].to_vec()
}

fn key(prefix: &str, id: &[u8]) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    for b in id {
        k.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    k
}

/// A tier on `port`, database `db`, with `prefix`, and the key file every fleet here shares.
fn fleet(port: u16, db: u32, prefix: &str, label: &str) -> RemoteConfig {
    RemoteConfig {
        url: format!("redis://127.0.0.1:{port}/{db}"),
        ca_file: None,
        prefix: prefix.into(),
        timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(1),
        compat: Compat::Detect,
        cluster: false,
        keys: Keyring::new(Key::new([7; 32]), Vec::new()),
        fleet: label.into(),
    }
}

#[test]
fn a_value_moved_to_another_database_key_prefix_or_fleet_is_refused() {
    let srv = RedisServer::start(free_port());
    let (c, t) = (counters(), now());
    let id = [4u8; 32];
    let home = Remote::new(fleet(srv.port, 0, "a:", ""), c.clone()).unwrap();
    home.store_now(&id, b"der-4", t, t + 300, t);
    let sealed = bulk_value(&raw(srv.port, 0, &[b"GET", &key("a:", &id)]));
    assert!(sealed.len() > 52, "the stored value: {sealed:?}");

    // Another fleet with the same key file: database 1, another prefix in database 0, or
    // another fleet label (the same database and prefix: the value is where it was).
    for (db, prefix, label) in [(1, "a:", ""), (0, "b:", ""), (0, "a:", "blue")] {
        let k = key(prefix, &id);
        if label.is_empty() {
            assert_eq!(
                raw(srv.port, db, &[b"SET", &k, &sealed, b"PX", b"300000"]),
                b"+OK\r\n"
            );
        }
        let other_c = counters();
        let other = Remote::new(fleet(srv.port, db, prefix, label), other_c.clone()).unwrap();
        let got = other.fetch(&id, false, t);
        assert!(
            !matches!(got, Fetched::Hit(_)),
            "a value copied to database {db}, prefix {prefix}, fleet {label:?} resumed there"
        );
        assert_eq!(
            other_c.get().load().rejected,
            1,
            "{:?}",
            other_c.get().load()
        );
    }
    assert!(
        hit(home.fetch(&id, false, t)),
        "still good where it was sealed"
    );
}
