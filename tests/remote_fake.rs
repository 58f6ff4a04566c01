//! The remote tier against small fake Redis servers on 127.0.0.1 that misbehave on purpose
//! (slow replies, a cluster whose node never answers, a connection closed after a swap was
//! done): what a real redis-server cannot be made to do on demand.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Fetched, Remote, RemoteConfig, Taken};
use shmsesscache::store::cache::RemoteCountersRef;

/// What the fake server does with one command.
enum Act {
    /// Send these bytes after this delay.
    Reply(Vec<u8>, Duration),
    /// Close the connection without answering.
    Close,
    /// Never answer (the connection stays open).
    Silent,
    /// Send these bytes at once, then one byte of an endless reply element every `gap`.
    Drip(Vec<u8>, Duration),
}

type Handler = dyn Fn(&[Vec<u8>]) -> Act + Send + Sync;
/// A fake server's keys and values.
type Store = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A fake server on a free port; its threads end with the test process.
fn fake(handler: Arc<Handler>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let h = Arc::clone(&handler);
            std::thread::spawn(move || serve(c, &*h));
        }
    });
    port
}

fn serve(mut c: TcpStream, h: &Handler) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    loop {
        let Some(args) = read_command(&mut r) else {
            return;
        };
        match h(&args) {
            Act::Reply(bytes, delay) => {
                std::thread::sleep(delay);
                if c.write_all(&bytes).is_err() {
                    return;
                }
            }
            Act::Close => return,
            Act::Silent => std::thread::sleep(Duration::from_secs(3600)),
            Act::Drip(burst, gap) => {
                if c.write_all(&burst).is_err() {
                    return;
                }
                for b in b":1\r\n".iter().cycle() {
                    if c.write_all(&[*b]).is_err() {
                        return; // the client hung up
                    }
                    std::thread::sleep(gap);
                }
            }
        }
    }
}

fn read_command(r: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    r.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut a = vec![0u8; len + 2];
        r.read_exact(&mut a).ok()?;
        a.truncate(len);
        args.push(a);
    }
    Some(args)
}

fn bulk(v: Option<&[u8]>) -> Vec<u8> {
    match v {
        None => b"$-1\r\n".to_vec(),
        Some(v) => {
            let mut out = format!("${}\r\n", v.len()).into_bytes();
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

fn info() -> Act {
    Act::Reply(
        bulk(Some(b"# Server\r\nredis_version:7.0.15\r\n")),
        Duration::ZERO,
    )
}

fn is(args: &[Vec<u8>], cmd: &str) -> bool {
    args.first()
        .is_some_and(|a| a.eq_ignore_ascii_case(cmd.as_bytes()))
}

/// A single server keeping values in memory (SET with GET/NX, GET), each reply after `delay`.
fn store_server(delay: Duration, store: Store) -> Arc<Handler> {
    Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        let mut st = store.lock().unwrap();
        let old = st
            .iter()
            .find(|(k, _)| *k == args[1])
            .map(|(_, v)| v.clone());
        if is(args, "GET") {
            return Act::Reply(bulk(old.as_deref()), delay);
        }
        if is(args, "SET") {
            let opts: Vec<Vec<u8>> = args[3..].iter().map(|o| o.to_ascii_uppercase()).collect();
            let has = |o: &[u8]| opts.iter().any(|x| x == o);
            if has(b"NX") && old.is_some() {
                return Act::Reply(b"$-1\r\n".to_vec(), delay);
            }
            st.retain(|(k, _)| *k != args[1]);
            st.push((args[1].clone(), args[2].clone()));
            let r = if has(b"GET") {
                bulk(old.as_deref())
            } else {
                b"+OK\r\n".to_vec()
            };
            return Act::Reply(r, delay);
        }
        Act::Reply(b"-ERR unknown\r\n".to_vec(), Duration::ZERO)
    })
}

fn config(port: u16, timeout: Duration, backoff: Duration, cluster: bool) -> RemoteConfig {
    RemoteConfig {
        url: format!("redis://127.0.0.1:{port}"),
        ca_file: None,
        prefix: "f:".into(),
        timeout,
        backoff,
        compat: Compat::Detect,
        cluster,
        keys: Keyring::new(Key::new([7; 32]), Vec::new()),
        fleet: String::new(),
    }
}

fn counters() -> RemoteCountersRef {
    RemoteCountersRef::private()
}

/// The tier configured as `cfg`, counting into `c`.
fn bind(c: &RemoteCountersRef, cfg: RemoteConfig) -> shmsesscache::Result<Remote> {
    Remote::new(cfg, c.clone())
}

fn now() -> u32 {
    shmsesscache::util::now_unix()
}

const DER: &[u8] = &[0x30; 200];

#[test]
fn a_cross_host_read_and_consume_share_one_deadline() {
    // Every GET and SET answered after 150 ms; the timeout is 250 ms: either fits alone, the
    // two together do not.
    let store = Arc::new(Mutex::new(Vec::new()));
    let port = fake(store_server(Duration::from_millis(150), store));
    let c = counters();
    let r = bind(
        &c,
        config(
            port,
            Duration::from_millis(250),
            Duration::from_millis(1),
            false,
        ),
    )
    .unwrap();
    let t = now();
    r.store_now(&[9; 32], DER, t, t + 300, t);
    assert_eq!(c.get().stores.load(Relaxed), 1);
    let start = Instant::now();
    let dl = r.deadline();
    let got = r.fetch_within(&[9; 32], false, t, dl);
    assert!(matches!(got, Fetched::Hit(_)), "the read fits");
    let taken = r.take_within(&[9; 32], t + 300, t, dl);
    let spent = start.elapsed();
    assert_eq!(
        taken,
        Taken::Unconfirmed,
        "the consume is cut at the shared deadline"
    );
    // Bound with a wide margin for a loaded machine, well under two timeouts plus the delay.
    assert!(
        spent < Duration::from_millis(450),
        "read and consume took {spent:?} (timeout 250 ms)"
    );
}

#[test]
fn freeing_a_cluster_handle_waits_one_timeout_not_one_per_job() {
    // A cluster whose only node serves all slots and never answers a write.
    let port_cell = Arc::new(AtomicUsize::new(0));
    let pc = Arc::clone(&port_cell);
    let port = fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        if is(args, "CLUSTER") {
            let p = pc.load(Relaxed);
            let r = format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{p}\r\n");
            return Act::Reply(r.into_bytes(), Duration::ZERO);
        }
        Act::Silent
    }));
    port_cell.store(usize::from(port), Relaxed);
    let timeout = Duration::from_millis(100);
    let c = counters();
    // No back-off: every job is tried (a back-off would skip most of them at once).
    let r = bind(&c, config(port, timeout, Duration::ZERO, true)).unwrap();
    let t = now();
    for j in 0..64u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&j.to_le_bytes());
        r.store(&id, DER, t, t + 300, t);
    }
    // The writer took the first store alone (it started with it) and waits out its timeout;
    // the other 63 make its second batch, which it is inside after 150 ms.
    std::thread::sleep(Duration::from_millis(150));
    let start = Instant::now();
    drop(r);
    let spent = start.elapsed();
    // 63 jobs at one timeout each would be 6.3 s; one batch deadline is 0.1 s.
    assert!(
        spent < Duration::from_millis(1500),
        "freeing the handle took {spent:?}"
    );
    let s = c.get().load();
    assert_eq!(s.stores, 0);
    assert_eq!(s.dropped, 64, "every write not sent is counted: {s:?}");
}

/// A cluster seed whose CLUSTER SLOTS reply is `ranges` slot ranges on itself, all at once.
fn slots_reply(ranges: usize, port: usize) -> Vec<u8> {
    let per = 16384 / ranges;
    let mut r = format!("*{ranges}\r\n").into_bytes();
    for i in 0..ranges {
        let (a, b) = (
            i * per,
            if i == ranges - 1 {
                16383
            } else {
                (i + 1) * per - 1
            },
        );
        r.extend_from_slice(
            format!("*3\r\n:{a}\r\n:{b}\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n").as_bytes(),
        );
    }
    r
}

#[test]
fn a_reply_dribbled_after_a_large_burst_is_cut_at_the_deadline() {
    // ~200 KB of CLUSTER SLOTS at once, then a byte every 0.2 ms that never ends the reply.
    let port = fake(Arc::new(|args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        // 50 complete elements of 1000 integers, then one that never completes.
        let inner = format!("*1000\r\n{}", ":1\r\n".repeat(1000));
        let burst = format!("*1024\r\n{}*1000\r\n", inner.repeat(50)).into_bytes();
        Act::Drip(burst, Duration::from_micros(200))
    }));
    let c = counters();
    let r = bind(
        &c,
        config(
            port,
            Duration::from_millis(200),
            Duration::from_secs(60),
            true,
        ),
    )
    .unwrap();
    let start = Instant::now();
    let got = r.fetch(&[9; 32], false, now());
    let spent = start.elapsed();
    assert!(matches!(got, Fetched::Unavailable));
    assert!(
        spent < Duration::from_millis(1500),
        "the fetch took {spent:?} (timeout 200 ms)"
    );
    assert_eq!(c.get().timeouts.load(Relaxed), 1);
}

#[test]
fn a_cluster_with_more_slot_ranges_than_a_reply_array_is_routed() {
    // 2000 ranges (a fragmented cluster) all on one node, which stores as a single server.
    let port_cell = Arc::new(AtomicUsize::new(0));
    let pc = Arc::clone(&port_cell);
    let store = store_server(Duration::ZERO, Arc::new(Mutex::new(Vec::new())));
    let port = fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "CLUSTER") {
            return Act::Reply(slots_reply(2000, pc.load(Relaxed)), Duration::ZERO);
        }
        store(args)
    }));
    port_cell.store(usize::from(port), Relaxed);
    let c = counters();
    let r = bind(
        &c,
        config(port, Duration::from_secs(2), Duration::from_secs(60), true),
    )
    .unwrap();
    let t = now();
    r.store_now(&[9; 32], DER, t, t + 300, t);
    assert!(
        matches!(r.fetch(&[9; 32], false, t), Fetched::Hit(_)),
        "{:?}",
        c.get().load()
    );
}

#[test]
fn a_swap_done_before_the_connection_broke_is_not_retried_into_a_refusal() {
    // The server does the first swap, then closes the connection instead of answering (a
    // crash, a proxy cut). A retry of the swap would find its own tombstone.
    let store = Arc::new(Mutex::new(Vec::new()));
    let inner = store_server(Duration::ZERO, Arc::clone(&store));
    let cut = Arc::new(AtomicUsize::new(0));
    let port = fake(Arc::new(move |args: &[Vec<u8>]| {
        let swap = is(args, "SET") && args.iter().any(|a| a.eq_ignore_ascii_case(b"GET"));
        let act = inner(args);
        if swap && cut.fetch_add(1, Relaxed) == 0 {
            return Act::Close;
        }
        act
    }));
    let c = counters();
    let r = bind(
        &c,
        config(
            port,
            Duration::from_secs(2),
            Duration::from_millis(1),
            false,
        ),
    )
    .unwrap();
    let t = now();
    r.store_now(&[5; 32], DER, t, t + 300, t);
    assert_eq!(c.get().stores.load(Relaxed), 1);
    // A never-used ticket: its one use cannot be confirmed, but it is no replay.
    assert_eq!(r.take_local(&[5; 32], t + 300, t), Taken::Unconfirmed);
}

#[test]
fn a_hung_seed_does_not_stop_the_cluster_when_a_known_node_answers() {
    use std::sync::atomic::AtomicBool;
    // Node B serves all slots (and says so); its first GET fails (a hiccup), which makes the
    // slot map stale. Then the seed A hangs: the map is refetched from B, which it named.
    let b_port = Arc::new(AtomicUsize::new(0));
    let slots = |p: &AtomicUsize| {
        let p = p.load(Relaxed);
        Act::Reply(
            format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{p}\r\n").into_bytes(),
            Duration::ZERO,
        )
    };
    let (bp, hiccup) = (Arc::clone(&b_port), Arc::new(AtomicBool::new(true)));
    let b = fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        if is(args, "CLUSTER") {
            return slots(&bp);
        }
        if hiccup.swap(false, Relaxed) {
            return Act::Reply(b"-ERR transient\r\n".to_vec(), Duration::ZERO);
        }
        Act::Reply(b"$-1\r\n".to_vec(), Duration::ZERO)
    }));
    b_port.store(usize::from(b), Relaxed);
    let hung = Arc::new(AtomicBool::new(false));
    let (ap, h) = (Arc::clone(&b_port), Arc::clone(&hung));
    let a = fake(Arc::new(move |args: &[Vec<u8>]| {
        if h.load(Relaxed) {
            return Act::Silent;
        }
        if is(args, "INFO") {
            return info();
        }
        slots(&ap)
    }));
    let c = counters();
    let r = bind(
        &c,
        config(a, Duration::from_millis(300), Duration::ZERO, true),
    )
    .unwrap();
    let t = now();
    assert!(
        matches!(r.fetch(&[9; 32], false, t), Fetched::Unavailable),
        "the hiccup"
    );
    hung.store(true, Relaxed);
    let got = r.fetch(&[9; 32], false, t);
    assert!(
        matches!(got, Fetched::Miss),
        "answered by B: {:?}",
        c.get().load()
    );
}

/// A listener that only counts the connections it gets (it never reads or answers).
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&n);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            seen.fetch_add(1, Relaxed);
            held.push(c);
        }
    });
    (port, n)
}

/// A cluster node whose map (also its answer to CLUSTER SLOTS) is `map_ports` serving all
/// slots in equal parts, which answers AUTH, INFO, and any key command with `redirect`.
fn redirecting_node(map_ports: Arc<Mutex<Vec<u16>>>, redirect: String) -> u16 {
    fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        if is(args, "AUTH") {
            return Act::Reply(b"+OK\r\n".to_vec(), Duration::ZERO);
        }
        if is(args, "CLUSTER") {
            let ports = map_ports.lock().unwrap().clone();
            let per = 16384 / ports.len();
            let mut r = format!("*{}\r\n", ports.len());
            for (i, p) in ports.iter().enumerate() {
                let end = if i + 1 == ports.len() {
                    16383
                } else {
                    (i + 1) * per - 1
                };
                r += &format!(
                    "*3\r\n:{}\r\n:{end}\r\n*2\r\n$9\r\n127.0.0.1\r\n:{p}\r\n",
                    i * per
                );
            }
            return Act::Reply(r.into_bytes(), Duration::ZERO);
        }
        Act::Reply(redirect.clone().into_bytes(), Duration::ZERO)
    }))
}

#[test]
fn a_redirect_to_an_address_outside_the_slot_map_gets_no_connection_and_no_password() {
    let (trap, connections) = counting_listener();
    for kind in ["MOVED", "ASK"] {
        let map = Arc::new(Mutex::new(Vec::new()));
        let seed = redirecting_node(Arc::clone(&map), format!("-{kind} 1 127.0.0.1:{trap}\r\n"));
        map.lock().unwrap().push(seed);
        let c = counters();
        let mut cfg = config(seed, Duration::from_millis(500), Duration::ZERO, true);
        cfg.url = format!("redis://:TopSecretPW@127.0.0.1:{seed}");
        let r = bind(&c, cfg).unwrap();
        let t = now();
        assert!(
            matches!(r.fetch(&[9; 32], false, t), Fetched::Unavailable),
            "{kind}"
        );
        r.store_now(&[9; 32], DER, t, t + 300, t);
        // Connections are made in the calls above, so none is still on its way.
        assert_eq!(
            connections.load(Relaxed),
            0,
            "{kind}: the address a reply named got a connection"
        );
        assert_eq!(c.get().load().errors, 2, "{kind}: {:?}", c.get().load());
        assert_eq!(c.get().load().dropped, 1, "{kind}: {:?}", c.get().load());
        assert_eq!(
            c.get().load().redirects_refused,
            2,
            "{kind}: {:?}",
            c.get().load()
        );
    }
}

#[test]
fn a_redirect_to_a_node_of_the_slot_map_is_followed() {
    // The seed A names itself and B in its map, and redirects every key to B (a migration).
    let store = Arc::new(Mutex::new(Vec::new()));
    let map = Arc::new(Mutex::new(Vec::new()));
    let inner = store_server(Duration::ZERO, Arc::clone(&store));
    let m = Arc::clone(&map);
    let b = fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "CLUSTER") {
            let p = m.lock().unwrap().clone();
            let r = format!(
                "*2\r\n*3\r\n:0\r\n:8191\r\n*2\r\n$9\r\n127.0.0.1\r\n:{}\r\n*3\r\n:8192\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{}\r\n",
                p[0], p[1]
            );
            return Act::Reply(r.into_bytes(), Duration::ZERO);
        }
        inner(args)
    }));
    let a = redirecting_node(Arc::clone(&map), format!("-MOVED 1 127.0.0.1:{b}\r\n"));
    map.lock().unwrap().extend([a, b]);
    let c = counters();
    let r = bind(
        &c,
        config(a, Duration::from_millis(500), Duration::ZERO, true),
    )
    .unwrap();
    let t = now();
    // Which node the key's slot is on in the map does not matter: A redirects, B serves.
    r.store_now(&[9; 32], DER, t, t + 300, t);
    assert_eq!(c.get().load().stores, 1, "{:?}", c.get().load());
    assert_eq!(store.lock().unwrap().len(), 1);
}

#[test]
fn a_worker_whose_first_seed_is_down_or_hung_gets_the_map_from_another_seed() {
    // Seed B serves all slots (and says so). The first seed is a port nothing listens on,
    // or a node that never answers.
    let map = Arc::new(Mutex::new(Vec::new()));
    let store = store_server(Duration::ZERO, Arc::new(Mutex::new(Vec::new())));
    let m = Arc::clone(&map);
    let b = fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "CLUSTER") {
            let p = m.lock().unwrap()[0];
            let r = format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{p}\r\n");
            return Act::Reply(r.into_bytes(), Duration::ZERO);
        }
        store(args)
    }));
    map.lock().unwrap().push(b);
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hung = fake(Arc::new(|_: &[Vec<u8>]| Act::Silent));
    for (n, first) in [(1u8, down), (2, hung)] {
        let c = counters();
        let mut cfg = config(first, Duration::from_millis(400), Duration::ZERO, true);
        cfg.url = format!("redis://127.0.0.1:{first},127.0.0.1:{b}/0");
        let r = bind(&c, cfg).unwrap();
        let t = now();
        let start = Instant::now();
        r.store_now(&[n; 32], DER, t, t + 300, t);
        assert_eq!(
            c.get().load().stores,
            1,
            "first seed {first}: {:?}",
            c.get().load()
        );
        assert!(
            start.elapsed() < Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
        assert!(matches!(r.fetch(&[n; 32], false, t), Fetched::Hit(_)));
    }
}

#[test]
fn several_seeds_are_refused_without_a_cluster_and_as_host_names() {
    let cfg = |url: &str, cluster: bool| {
        let mut c = config(1, Duration::from_millis(100), Duration::ZERO, cluster);
        c.url = url.into();
        c
    };
    let e = bind(
        &counters(),
        cfg("redis://:pw@127.0.0.1:1,127.0.0.1:2/0", false),
    )
    .err()
    .unwrap();
    assert!(
        e.message.contains("several hosts need remote_cluster"),
        "{e}"
    );
    assert!(!e.message.contains("pw@"), "{e}");
    let e = bind(&counters(), cfg("redis://127.0.0.1:1,redis-2:2/0", true))
        .err()
        .unwrap();
    assert!(e.message.contains("IP address"), "{e}");
}

/// The first word of every command a fake server got, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// A fake Redis behind sentinels: `store_server` answering `ROLE` as a master, or, once
/// `replica` is set, as a replica that refuses writes (`-READONLY`) but still reads, as a
/// master demoted by a failover does. Records the commands it gets in `seen`.
fn sentinel_managed(store: Store, replica: Arc<Mutex<bool>>, seen: Seen) -> u16 {
    let inner = store_server(Duration::ZERO, store);
    fake(Arc::new(move |args: &[Vec<u8>]| {
        let word = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        seen.lock().unwrap().push(word.clone());
        let is_replica = *replica.lock().unwrap();
        match word.as_str() {
            "AUTH" | "SELECT" => Act::Reply(b"+OK\r\n".to_vec(), Duration::ZERO),
            "ROLE" if is_replica => Act::Reply(
                b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n"
                    .to_vec(),
                Duration::ZERO,
            ),
            "ROLE" => Act::Reply(
                b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n".to_vec(),
                Duration::ZERO,
            ),
            "SET" if is_replica => Act::Reply(
                b"-READONLY You can't write against a read only replica.\r\n".to_vec(),
                Duration::ZERO,
            ),
            _ => inner(args),
        }
    }))
}

/// A fake sentinel that answers `SENTINEL GET-MASTER-ADDR-BY-NAME mymaster` with `answer`
/// (raw RESP), and records the commands it gets.
fn fake_sentinel(answer: Arc<Mutex<Vec<u8>>>, seen: Seen) -> u16 {
    fake(Arc::new(move |args: &[Vec<u8>]| {
        let word = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        seen.lock().unwrap().push(word.clone());
        match word.as_str() {
            "AUTH" => Act::Reply(b"+OK\r\n".to_vec(), Duration::ZERO),
            "SENTINEL" if args.get(2).is_some_and(|n| n == b"mymaster") => {
                Act::Reply(answer.lock().unwrap().clone(), Duration::ZERO)
            }
            "SENTINEL" => Act::Reply(b"*-1\r\n".to_vec(), Duration::ZERO),
            _ => Act::Reply(b"-ERR unknown command\r\n".to_vec(), Duration::ZERO),
        }
    }))
}

/// A sentinel's answer naming 127.0.0.1:`port`.
fn names_master(port: u16) -> Vec<u8> {
    let p = port.to_string();
    format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{p}\r\n", p.len()).into_bytes()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn sentinel_config(sentinels: &[u16], timeout: Duration) -> RemoteConfig {
    let mut cfg = config(sentinels[0], timeout, Duration::ZERO, false);
    let list: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    cfg.url = format!(
        "redis+sentinel://:TopSecretPW@{}/mymaster/0",
        list.join(",")
    );
    cfg
}

#[test]
fn the_master_is_found_through_the_sentinels_and_a_failover_is_followed_in_one_operation() {
    let (a_store, b_store) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (a_replica, b_replica) = (Arc::new(Mutex::new(false)), Arc::new(Mutex::new(true)));
    let (a_seen, b_seen, s_seen): (Seen, Seen, Seen) = Default::default();
    let a = sentinel_managed(
        Arc::clone(&a_store),
        Arc::clone(&a_replica),
        Arc::clone(&a_seen),
    );
    let b = sentinel_managed(
        Arc::clone(&b_store),
        Arc::clone(&b_replica),
        Arc::clone(&b_seen),
    );
    let answer = Arc::new(Mutex::new(names_master(a)));
    // The first sentinel is down: the second is asked.
    let s = fake_sentinel(Arc::clone(&answer), Arc::clone(&s_seen));
    let timeout = Duration::from_millis(400);
    let c = counters();
    let r = bind(&c, sentinel_config(&[closed_port(), s], timeout)).unwrap();
    let t = now();
    r.store_now(&[1; 32], DER, t, t + 300, t);
    assert_eq!(c.get().load().stores, 1, "{:?}", c.get().load());
    assert_eq!(a_store.lock().unwrap().len(), 1, "stored on the master A");
    assert!(matches!(r.fetch(&[1; 32], false, t), Fetched::Hit(_)));
    assert_eq!(*s_seen.lock().unwrap(), ["AUTH", "SENTINEL"], "asked once");
    assert_eq!(
        c.get().load().rediscovered,
        0,
        "the first discovery is none"
    );
    assert!(a_seen
        .lock()
        .unwrap()
        .starts_with(&["AUTH".into(), "INFO".into(), "ROLE".into()]));
    // Failover: B is promoted, A demoted (its pooled connection stays open, as a master
    // turned replica by hand keeps its clients); the sentinels name B now.
    *b_replica.lock().unwrap() = false;
    *a_replica.lock().unwrap() = true;
    *answer.lock().unwrap() = names_master(b);
    let a_writes = a_store.lock().unwrap().len();
    let start = Instant::now();
    r.store_now(&[2; 32], DER, t, t + 300, t);
    assert!(start.elapsed() < timeout, "{:?}", start.elapsed());
    assert_eq!(c.get().load().stores, 2, "{:?}", c.get().load());
    assert_eq!(
        b_store.lock().unwrap().len(),
        1,
        "stored on the new master B"
    );
    assert_eq!(
        a_store.lock().unwrap().len(),
        a_writes,
        "nothing written to the replica"
    );
    assert_eq!(s_seen.lock().unwrap().len(), 4, "asked again once");
    assert_eq!(c.get().load().rediscovered, 1, "{:?}", c.get().load());
    assert!(matches!(r.fetch(&[2; 32], false, t), Fetched::Hit(_)));
}

#[test]
fn a_master_that_says_it_is_a_replica_gets_no_command_but_the_login_and_role() {
    let seen: Seen = Default::default();
    let replica = sentinel_managed(
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(true)),
        Arc::clone(&seen),
    );
    let s = fake_sentinel(
        Arc::new(Mutex::new(names_master(replica))),
        Default::default(),
    );
    let c = counters();
    let r = bind(&c, sentinel_config(&[s], Duration::from_millis(300))).unwrap();
    let t = now();
    r.store_now(&[3; 32], DER, t, t + 300, t);
    assert!(matches!(r.fetch(&[3; 32], true, t), Fetched::Unavailable));
    assert_eq!(c.get().load().stores, 0, "{:?}", c.get().load());
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|w| ["AUTH", "INFO", "ROLE"].contains(&w.as_str())),
        "a replica got {seen:?}"
    );
    assert!(!seen.is_empty(), "the replica was never asked its role");
}

#[test]
fn no_address_but_the_sentinels_master_gets_a_connection() {
    let (trap, connections) = counting_listener();
    // A master that names the trap as its replica, and redirects every key there.
    let t_name = format!("127.0.0.1:{trap}");
    let master = fake(Arc::new(move |args: &[Vec<u8>]| {
        let r = if is(args, "INFO") {
            return info();
        } else if is(args, "AUTH") {
            "+OK\r\n".to_string()
        } else if is(args, "ROLE") {
            format!("*3\r\n$6\r\nmaster\r\n:0\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$5\r\n{trap}\r\n$1\r\n0\r\n")
        } else {
            format!("-MOVED 1 {t_name}\r\n")
        };
        Act::Reply(r.into_bytes(), Duration::ZERO)
    }));
    // Sentinels that answer with a host name, too much, nothing they know, then the master.
    let answers: [&[u8]; 3] = [
        b"*2\r\n$9\r\nlocalhost\r\n$4\r\n6379\r\n",
        b"*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n$4\r\n6380\r\n",
        b"*-1\r\n",
    ];
    let mut ports: Vec<u16> = answers
        .iter()
        .map(|a| fake_sentinel(Arc::new(Mutex::new(a.to_vec())), Default::default()))
        .collect();
    ports.push(fake_sentinel(
        Arc::new(Mutex::new(names_master(master))),
        Default::default(),
    ));
    let c = counters();
    let r = bind(&c, sentinel_config(&ports, Duration::from_secs(2))).unwrap();
    let t = now();
    assert!(matches!(r.fetch(&[4; 32], false, t), Fetched::Unavailable));
    r.store_now(&[4; 32], DER, t, t + 300, t);
    assert_eq!(
        connections.load(Relaxed),
        0,
        "an address from a reply got a connection"
    );
    assert_eq!(c.get().load().errors, 2, "{:?}", c.get().load());
    // Each of the bad sentinels alone: refused, nothing connected.
    for bad in &ports[..3] {
        let c = counters();
        let r = bind(&c, sentinel_config(&[*bad], Duration::from_millis(300))).unwrap();
        assert!(matches!(r.fetch(&[4; 32], false, t), Fetched::Unavailable));
        assert_eq!(c.get().load().errors, 1, "{:?}", c.get().load());
    }
    assert_eq!(connections.load(Relaxed), 0);
}

#[test]
fn sentinel_urls_are_checked_before_use() {
    let cfg = |url: &str, cluster: bool| {
        let mut c = config(1, Duration::from_millis(100), Duration::ZERO, cluster);
        c.url = url.into();
        c
    };
    for (url, cluster, says) in [
        (
            "redis+sentinel://:pw@127.0.0.1:1/mymaster/0",
            true,
            "not a Redis Cluster",
        ),
        (
            "redis+sentinel://:pw@sentinel-1:26379/mymaster",
            false,
            "IP address",
        ),
        (
            "redis+sentinel://:pw@127.0.0.1,10.0.0.1:x/mymaster",
            false,
            "bad port",
        ),
        (
            "redis+sentinel://:pw@127.0.0.1:26379",
            false,
            "master's name",
        ),
        (
            "redis+sentinel://:pw@127.0.0.1:26379/my%20master",
            false,
            "master's name",
        ),
        (
            "redis+sentinel://:pw@127.0.0.1:26379/mymaster/x",
            false,
            "database number",
        ),
        (
            "redis+sentinel://:pw@127.0.0.1:26379/0",
            false,
            "did you forget /MASTERNAME before the database?",
        ),
        (
            "redis+sentinel://:pw@::1/mymaster",
            false,
            "put IPv6 addresses in brackets: [::1]:26379",
        ),
        (
            "redis+sentinel://:pw@127.0.0.1,::1/mymaster",
            false,
            "put IPv6 addresses in brackets",
        ),
        ("redis://:pw@::1:6380/0", false, "[::1]:6379"),
    ] {
        let e = bind(&counters(), cfg(url, cluster)).err().expect(url);
        assert!(e.message.contains(says), "{url}: {e}");
        assert!(!e.message.contains("pw@"), "{e}");
    }
    assert!(bind(
        &counters(),
        cfg("rediss+sentinel://127.0.0.1,[::1]:26380/m-1.x_y/3", false)
    )
    .is_ok());
}

#[test]
fn values_sealed_by_0_4_are_counted_apart_from_forgeries() {
    let store: Store = Arc::new(Mutex::new(Vec::new()));
    let port = fake(store_server(Duration::ZERO, Arc::clone(&store)));
    let key = |id: u8| format!("f:{}", format!("{id:02x}").repeat(32)).into_bytes();
    let len = shmsesscache::remote::seal::OVERHEAD + 200;
    let mut old = b"SSR1".to_vec();
    old.resize(len, 0);
    let mut forged = b"SSR2".to_vec();
    forged.resize(len, 0);
    store
        .lock()
        .unwrap()
        .extend([(key(5), old), (key(6), forged)]);
    let c = counters();
    let r = bind(
        &c,
        config(port, Duration::from_millis(300), Duration::ZERO, false),
    )
    .unwrap();
    let t = now();
    assert!(matches!(r.fetch(&[5; 32], false, t), Fetched::Unavailable));
    assert!(matches!(r.fetch(&[6; 32], false, t), Fetched::Unavailable));
    let st = c.get().load();
    assert_eq!((st.rejected, st.old_format), (2, 1), "{st:?}");
}

#[test]
fn a_sentinel_without_a_password_is_asked_and_a_wrong_password_is_not_ignored() {
    let store: Store = Arc::new(Mutex::new(Vec::new()));
    let master = sentinel_managed(store, Arc::new(Mutex::new(false)), Default::default());
    // What Redis 7 sentinels answer AUTH with: no requirepass, or another password.
    let sentinel_answering = |auth: &'static [u8]| {
        let answer = names_master(master);
        fake(Arc::new(move |args: &[Vec<u8>]| {
            if is(args, "AUTH") {
                return Act::Reply(auth.to_vec(), Duration::ZERO);
            }
            Act::Reply(answer.clone(), Duration::ZERO)
        }))
    };
    let open = sentinel_answering(
        b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    );
    let wrong =
        sentinel_answering(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    let t = now();
    for (port, stores) in [(open, 1), (wrong, 0)] {
        let c = counters();
        let r = bind(&c, sentinel_config(&[port], Duration::from_millis(300))).unwrap();
        r.store_now(&[8; 32], DER, t, t + 300, t);
        assert_eq!(c.get().load().stores, stores, "{:?}", c.get().load());
    }
}

/// How many `SENTINEL` queries a fake sentinel got.
fn queries(seen: &Seen) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|w| *w == "SENTINEL")
        .count()
}

/// How a wrongly named server answers a command (`None`: `+OK`).
type WrongAnswer = fn(&[Vec<u8>]) -> Option<&'static [u8]>;

/// A server the sentinels may wrongly name: answers INFO, and everything else as `other`
/// says (AUTH, SELECT or ROLE failing or malformed: another service, a Redis without a
/// password, a sentinel).
fn not_our_master(other: WrongAnswer) -> u16 {
    fake(Arc::new(move |args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        let reply = other(args).unwrap_or(b"+OK\r\n");
        Act::Reply(reply.to_vec(), Duration::ZERO)
    }))
}

#[test]
fn a_named_master_that_refuses_the_login_or_role_is_forgotten_and_the_sentinels_asked_again() {
    let cases: [(&str, u32, WrongAnswer); 4] = [
        ("ROLE unknown", 0, |a| {
            is(a, "ROLE").then_some(b"-ERR unknown command 'ROLE'\r\n")
        }),
        ("ROLE +OK", 0, |_| None),
        ("AUTH without a password", 0, |a| {
            if is(a, "AUTH") {
                Some(b"-ERR AUTH <password> called without any password configured for the default user\r\n")
            } else {
                Some(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
            }
        }),
        ("a sentinel, database 3", 3, |a| {
            if is(a, "AUTH") {
                None
            } else if is(a, "ROLE") {
                Some(b"*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n")
            } else {
                Some(b"-ERR unknown command 'SELECT'\r\n")
            }
        }),
    ];
    for (label, db, bad) in cases {
        let bad = not_our_master(bad);
        let good: Store = Arc::new(Mutex::new(Vec::new()));
        let master = sentinel_managed(Arc::clone(&good), Default::default(), Default::default());
        let answer = Arc::new(Mutex::new(names_master(bad)));
        let seen: Seen = Default::default();
        let s = fake_sentinel(Arc::clone(&answer), Arc::clone(&seen));
        let c = counters();
        let mut cfg = sentinel_config(&[s], Duration::from_millis(300));
        cfg.url = cfg.url.replace("/mymaster/0", &format!("/mymaster/{db}"));
        let r = bind(&c, cfg).unwrap();
        let t = now();
        r.store_now(&[1; 32], DER, t, t + 300, t);
        assert_eq!(c.get().load().stores, 0, "{label}: nothing stored on {bad}");
        // The sentinels' answer is corrected (a failover, a fixed configuration).
        *answer.lock().unwrap() = names_master(master);
        for i in 0..5u8 {
            r.store_now(&[10 + i; 32], DER, t, t + 300, t);
        }
        assert_eq!(
            good.lock().unwrap().len(),
            5,
            "{label}: stored on the corrected master; sentinel asked {} times; {:?}",
            queries(&seen),
            c.get().load()
        );
    }
}

#[test]
fn an_answer_older_than_a_second_is_asked_again_though_the_old_master_still_says_master() {
    // What a failover looks like from a pooled connection: the sentinels name B while A
    // still says master (and takes writes) until the sentinels demote it, ~10 s later.
    let (a_store, b_store): (Store, Store) = Default::default();
    let a = sentinel_managed(Arc::clone(&a_store), Default::default(), Default::default());
    let b = sentinel_managed(Arc::clone(&b_store), Default::default(), Default::default());
    let answer = Arc::new(Mutex::new(names_master(a)));
    let seen: Seen = Default::default();
    let s = fake_sentinel(Arc::clone(&answer), Arc::clone(&seen));
    let c = counters();
    let r = bind(&c, sentinel_config(&[s], Duration::from_millis(300))).unwrap();
    let t = now();
    for i in 0..5u8 {
        r.store_now(&[i; 32], DER, t, t + 300, t);
    }
    assert_eq!(queries(&seen), 1, "a fresh answer is used as it is");
    *answer.lock().unwrap() = names_master(b);
    // The age of the answer is what is tested: nothing to wait on but the clock.
    std::thread::sleep(Duration::from_millis(1100));
    r.store_now(&[9; 32], DER, t, t + 300, t);
    assert_eq!(b_store.lock().unwrap().len(), 1, "{:?}", c.get().load());
    assert_eq!(
        a_store.lock().unwrap().len(),
        5,
        "nothing more on the old master"
    );
    assert_eq!(c.get().load().rediscovered, 1, "{:?}", c.get().load());
}

#[test]
fn a_stale_first_sentinel_does_not_decide_once_its_master_failed() {
    let store: Store = Default::default();
    let master = sentinel_managed(Arc::clone(&store), Default::default(), Default::default());
    let (stale_seen, second_seen): (Seen, Seen) = Default::default();
    let stale = fake_sentinel(
        Arc::new(Mutex::new(names_master(closed_port()))),
        Arc::clone(&stale_seen),
    );
    let s2 = fake_sentinel(
        Arc::new(Mutex::new(names_master(master))),
        Arc::clone(&second_seen),
    );
    let s3 = fake_sentinel(
        Arc::new(Mutex::new(names_master(master))),
        Default::default(),
    );
    let c = counters();
    let r = bind(
        &c,
        sentinel_config(&[stale, s2, s3], Duration::from_millis(300)),
    )
    .unwrap();
    let t = now();
    for i in 0..10u8 {
        r.store_now(&[i; 32], DER, t, t + 300, t);
    }
    let st = c.get().load();
    assert_eq!((st.stores, st.errors), (10, 0), "{st:?}");
    assert_eq!(store.lock().unwrap().len(), 10);
    assert_eq!(
        queries(&stale_seen),
        1,
        "asked first once, then passed over"
    );
    assert_eq!(queries(&second_seen), 1);
}

#[test]
fn a_master_without_replicas_named_again_is_no_rediscovery() {
    // min-replicas-to-write with a lagging replica: -NOREPLICAS, the sentinels name the
    // same master: an error, not a failover.
    let seen: Seen = Default::default();
    let master = fake(Arc::new(|args: &[Vec<u8>]| {
        if is(args, "INFO") {
            return info();
        }
        let reply: &[u8] = if is(args, "ROLE") {
            b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
        } else if is(args, "SET") {
            b"-NOREPLICAS Not enough good replicas to write.\r\n"
        } else {
            b"+OK\r\n"
        };
        Act::Reply(reply.to_vec(), Duration::ZERO)
    }));
    let s = fake_sentinel(
        Arc::new(Mutex::new(names_master(master))),
        Arc::clone(&seen),
    );
    let c = counters();
    let r = bind(&c, sentinel_config(&[s], Duration::from_millis(300))).unwrap();
    let t = now();
    for i in 0..5u8 {
        r.store_now(&[i; 32], DER, t, t + 300, t);
    }
    let st = c.get().load();
    assert_eq!((st.stores, st.errors, st.rediscovered), (0, 5, 0), "{st:?}");
    assert_eq!(
        queries(&seen),
        6,
        "asked once, and again after each -NOREPLICAS"
    );
}

#[test]
fn a_hung_first_sentinel_leaves_the_operation_time_through_the_second() {
    let store: Store = Default::default();
    let master = sentinel_managed(Arc::clone(&store), Default::default(), Default::default());
    let hung = fake(Arc::new(|_: &[Vec<u8>]| Act::Silent));
    let s2 = fake_sentinel(
        Arc::new(Mutex::new(names_master(master))),
        Default::default(),
    );
    let timeout = Duration::from_millis(300);
    let c = counters();
    let r = bind(&c, sentinel_config(&[hung, s2], timeout)).unwrap();
    let t = now();
    let start = Instant::now();
    r.store_now(&[1; 32], DER, t, t + 300, t);
    let took = start.elapsed();
    assert_eq!(c.get().load().stores, 1, "{:?}", c.get().load());
    assert!(took < timeout + Duration::from_millis(50), "{took:?}");
}
