//! The Redis password of the remote URL leaves no copy in this process's memory once the
//! tier is dropped (the URL, its parsed form and the AUTH command are wiped). Its own test
//! binary: the whole process's writable memory is searched.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Fetched, Remote, RemoteConfig};
use shmsesscache::store::cache::RemoteCountersRef;

/// Places in writable anonymous memory (heap, stacks, anonymous maps) holding `pat`, except
/// `pat` itself (a slice of the test's own copy).
fn copies_of(pat: &[u8]) -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut found = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[1].starts_with("rw") || f.len() > 5 && !f[5].starts_with('[') {
            continue;
        }
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for (i, w) in buf.windows(pat.len()).enumerate() {
            let at = a + i as u64;
            if w == pat && at != pat.as_ptr() as u64 {
                found.push(at);
            }
        }
        buf.fill(0);
    }
    found
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_url_password_is_wiped() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server not found: run `make test-deps`");
    // Stopped however the test ends (a failed assert too).
    let _redis = KillOnDrop(redis);
    let start = Instant::now();
    let mut admin = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // A password made at run time (no literal copy in the binary), written to Redis from a
    // buffer wiped at once.
    let pat: Vec<u8> = (0..40u32)
        .map(|i| b'a' + ((i * 7 + 3) % 26) as u8)
        .collect();
    let mut cmd = Vec::with_capacity(128);
    cmd.extend_from_slice(b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n$40\r\n");
    cmd.extend_from_slice(&pat);
    cmd.extend_from_slice(b"\r\n");
    admin.write_all(&cmd).unwrap();
    shmsesscache::util::wipe(&mut cmd);
    let mut ok = [0u8; 5];
    admin.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    {
        let mut url = String::with_capacity(64);
        url.push_str("redis://:");
        url.extend(pat.iter().map(|&b| b as char));
        url.push_str(&format!("@127.0.0.1:{port}/0"));
        let c = RemoteCountersRef::private();
        let cfg = RemoteConfig {
            url,
            ca_file: None,
            prefix: "s:".into(),
            timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(1),
            compat: Compat::Detect,
            cluster: false,
            keys: Keyring::new(Key::new([7; 32]), Vec::new()),
            fleet: String::new(),
        };
        let r = Remote::new(cfg, c.clone()).unwrap();
        let got = r.fetch(&[9; 32], false, 0);
        assert!(
            matches!(got, Fetched::Miss),
            "logged in: {:?}",
            c.get().load()
        );
    }
    // Its last 24 bytes: a freed copy may have its first 16 overwritten by the allocator.
    let found = copies_of(&pat[16..]);
    assert!(
        found.is_empty(),
        "{} copies of the password left at {found:x?}",
        found.len()
    );
}
