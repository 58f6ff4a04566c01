//! The application's log callback is never called with the tier's state locked: a slow
//! callback (a blocking syslog write) holds only the thread that logs. Its own test binary:
//! the log callback is process-wide.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Fetched, Remote, RemoteConfig};
use shmsesscache::store::cache::RemoteCountersRef;

static IN_CALLBACK: AtomicBool = AtomicBool::new(false);
static RELEASE: AtomicBool = AtomicBool::new(false);

extern "C" fn slow_log(_level: i32, msg: *const c_char, _: *mut c_void) {
    let msg = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    if msg.contains("failures in a row") {
        IN_CALLBACK.store(true, SeqCst);
        let start = Instant::now();
        while !RELEASE.load(SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_slow_log_callback_does_not_hold_other_threads() {
    shmsesscache::ffi::shmsess_set_log_callback(Some(slow_log), std::ptr::null_mut(), 4);
    // Refused at once: a port bound but never listened on.
    let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    drop(sock);
    let r: &'static Remote = Box::leak(Box::new(
        Remote::new(
            RemoteConfig {
                url: format!("redis://127.0.0.1:{port}/0"),
                ca_file: None,
                prefix: "l:".into(),
                timeout: Duration::from_millis(500),
                backoff: Duration::from_secs(60),
                compat: Compat::Detect,
                cluster: false,
                keys: Keyring::new(Key::new([7; 32]), Vec::new()),
                fleet: String::new(),
            },
            RemoteCountersRef::private(),
        )
        .unwrap(),
    ));
    // Three failures trip the breaker, whose warning the callback sits on.
    let tripper = std::thread::spawn(move || {
        for _ in 0..3 {
            let _ = r.fetch(&[1; 32], false, 0);
        }
    });
    let start = Instant::now();
    while !IN_CALLBACK.load(SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no warning logged"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Meanwhile another thread (a handshake) uses the tier: skipped at once, not held.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let skipped = matches!(r.fetch(&[2; 32], false, 0), Fetched::Unavailable);
        let _ = tx.send(skipped);
    });
    let answered = rx.recv_timeout(Duration::from_secs(3));
    RELEASE.store(true, SeqCst);
    tripper.join().unwrap();
    assert_eq!(
        answered,
        Ok(true),
        "the other thread waited for the log callback"
    );
}
