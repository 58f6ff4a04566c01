//! A worker forked while the Redis tier's writer thread is busy inherits the tier's state,
//! which it must never free (the writer may have held its locks at the fork). It must still
//! unmap the segment when it frees its cache: the tier counts into the segment only while the
//! cache lives, it does not keep it mapped. One test in its own process (forking a test
//! binary with many threads would invite other locks held at the fork).

use std::time::Duration;

use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Remote, RemoteConfig};
use shmsesscache::store::cache::{Cache, Config};

/// Mappings of anonymous segments (memfd "shmsesscache") in this process.
fn segment_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/memfd:shmsesscache"))
        .count()
}

#[test]
fn a_worker_forked_while_the_writer_works_unmaps_the_segment_when_it_frees_the_cache() {
    // Accepts, never answers: the writer's SET waits out its timeout across the fork.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let cache = Cache::create(&Config {
        size_bytes: 1 << 20,
        ..Config::default()
    })
    .unwrap();
    let remote = Remote::new(
        RemoteConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            ca_file: None,
            prefix: "f:".into(),
            timeout: Duration::from_millis(500),
            backoff: Duration::from_secs(60),
            compat: Compat::Detect,
            cluster: false,
            keys: Keyring::new(Key::new([7; 32]), Vec::new()),
            fleet: String::new(),
        },
        cache.remote_counters(),
    )
    .unwrap();
    let now = shmsesscache::util::now_unix();
    remote.store(&[5; 32], b"der", now, now + 300, now);
    assert_eq!(segment_mappings(), 1);
    // SAFETY: the child only drops values, reads /proc and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // What shmsess_cache_free does: the tier first, then the cache.
        drop(remote);
        drop(cache);
        let code = if segment_mappings() == 0 { 0 } else { 2 };
        // SAFETY: leaving the child without running the test harness's exit code.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "2: the child kept the segment mapped after freeing its cache"
    );
    drop(remote);
    drop(cache);
    drop(silent);
}
