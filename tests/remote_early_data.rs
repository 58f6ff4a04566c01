//! TLS 1.3 early data and the remote tier, through the C ABI and real OpenSSL handshakes in one
//! process (client and server joined by a BIO pair): a stateful ticket whose single use Redis
//! cannot confirm (Redis unreachable) is resumed WITHOUT early data, so a replay of it during a
//! partition cannot carry 0-RTT data; with Redis up, or without the tier, early data is accepted.
//!
//! The server is set up the way a server using an external cache for 0-RTT must be:
//! `SSL_OP_NO_TICKET` (stateful tickets, looked up in the cache), `SSL_OP_NO_ANTI_REPLAY` (the
//! cache does the single use), `max_early_data` > 0.

use std::ffi::{c_int, c_void, CString};
use std::path::Path;
use std::process::{Command, Stdio};

#[path = "common/redis_server.rs"]
mod redis_server;
use redis_server::{free_port, RedisServer};

use openssl_sys as ossl;
use shmsesscache::ffi::{
    shmsess_cache, shmsess_cache_create, shmsess_cache_free, shmsess_install, shmsess_options,
    shmsess_options_init_sized, shmsess_result,
};

extern "C" {
    fn BIO_new_bio_pair(
        b1: *mut *mut ossl::BIO,
        w1: usize,
        b2: *mut *mut ossl::BIO,
        w2: usize,
    ) -> c_int;
    fn SSL_get_early_data_status(s: *const ossl::SSL) -> c_int;
    fn SSL_get1_session(s: *mut ossl::SSL) -> *mut ossl::SSL_SESSION;
}

const SSL_OP_NO_ANTI_REPLAY: u64 = 0x0100_0000;
const SSL_EARLY_DATA_REJECTED: c_int = 1;
const SSL_EARLY_DATA_ACCEPTED: c_int = 2;
const SSL_READ_EARLY_DATA_FINISH: c_int = 2;
const EARLY: &[u8] = b"GET /early HTTP/1.0\r\n\r\n";

struct Tmp(std::path::PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A temporary directory with a self-signed certificate and a 0600 key file for the tier.
fn setup() -> Tmp {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("shmsess-0rtt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl command")
        .success();
    assert!(ok, "openssl req failed");
    let key = dir.join("remote.key");
    std::fs::write(&key, [0x9c; 32]).unwrap(); // raw bytes, not all printable
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Tmp(dir)
}

/// A server SSL_CTX with the cache installed (and the tier at `url`, if any), and a client one.
struct Pair {
    server: *mut ossl::SSL_CTX,
    client: *mut ossl::SSL_CTX,
    cache: *mut shmsess_cache,
}

impl Pair {
    unsafe fn new(dir: &Path, url: Option<&str>) -> Pair {
        let server = ossl::SSL_CTX_new(ossl::TLS_server_method());
        let c = |p: &Path| CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(
            ossl::SSL_CTX_use_certificate_chain_file(server, c(&dir.join("cert.pem")).as_ptr()),
            1
        );
        assert_eq!(
            ossl::SSL_CTX_use_PrivateKey_file(
                server,
                c(&dir.join("key.pem")).as_ptr(),
                ossl::SSL_FILETYPE_PEM
            ),
            1
        );
        ossl::SSL_CTX_set_options(server, ossl::SSL_OP_NO_TICKET | SSL_OP_NO_ANTI_REPLAY);
        assert_eq!(ossl::SSL_CTX_set_max_early_data(server, 16384), 1);
        ossl::SSL_CTX_set_num_tickets(server, 1);
        let mut o: shmsess_options = std::mem::zeroed();
        // The sized form: the plain symbol fills only the 0.1 fields (for binaries built
        // against older headers), so the remote tier set below would not be read.
        shmsess_options_init_sized(&mut o, std::mem::size_of::<shmsess_options>());
        o.size_bytes = 1 << 20;
        let (url_c, key_c) = (
            url.map(|u| CString::new(u).unwrap()),
            c(&dir.join("remote.key")),
        );
        if let Some(u) = &url_c {
            o.remote_url = u.as_ptr();
            o.remote_key_file = key_c.as_ptr();
            o.remote_timeout_ms = 200;
            o.remote_backoff_ms = 1;
        }
        let mut cache = std::ptr::null_mut();
        assert!(matches!(
            shmsess_cache_create(&o, &mut cache),
            shmsess_result::SHMSESS_OK
        ));
        assert!(matches!(
            shmsess_install(cache, server),
            shmsess_result::SHMSESS_OK
        ));
        let client = ossl::SSL_CTX_new(ossl::TLS_client_method());
        ossl::SSL_CTX_set_min_proto_version(client, ossl::TLS1_3_VERSION);
        Pair {
            server,
            client,
            cache,
        }
    }

    /// One connection: the client offers `session` (and early data if given one); returns
    /// (server resumed, server's early data status, early bytes the server read, the client's
    /// new session).
    unsafe fn connect(
        &self,
        session: *mut ossl::SSL_SESSION,
    ) -> (bool, c_int, Vec<u8>, *mut ossl::SSL_SESSION) {
        let (c, s) = (ossl::SSL_new(self.client), ossl::SSL_new(self.server));
        let (mut b1, mut b2) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(BIO_new_bio_pair(&mut b1, 0, &mut b2, 0), 1);
        ossl::SSL_set_bio(c, b1, b1);
        ossl::SSL_set_bio(s, b2, b2);
        ossl::SSL_set_connect_state(c);
        ossl::SSL_set_accept_state(s);
        if !session.is_null() {
            assert_eq!(ossl::SSL_set_session(c, session), 1);
            let mut n = 0usize;
            assert_eq!(
                ossl::SSL_write_early_data(c, EARLY.as_ptr() as *const c_void, EARLY.len(), &mut n),
                1
            );
        }
        // The server reads early data (if any) until the handshake proper; the client goes on.
        let mut early = Vec::new();
        let mut server_done = false;
        for _ in 0..100 {
            ossl::SSL_do_handshake(c);
            if !server_done {
                let mut buf = [0u8; 256];
                let mut n = 0usize;
                let r = ossl::SSL_read_early_data(
                    s,
                    buf.as_mut_ptr() as *mut c_void,
                    buf.len(),
                    &mut n,
                );
                early.extend_from_slice(&buf[..n]);
                server_done = r == SSL_READ_EARLY_DATA_FINISH;
            } else {
                ossl::SSL_do_handshake(s);
            }
            if server_done
                && ossl::SSL_is_init_finished(c) == 1
                && ossl::SSL_is_init_finished(s) == 1
            {
                break;
            }
        }
        assert!(
            ossl::SSL_is_init_finished(s) == 1 && ossl::SSL_is_init_finished(c) == 1,
            "handshake"
        );
        // Let the client take the server's NewSessionTicket.
        let mut buf = [0u8; 16];
        let mut n = 0usize;
        ossl::SSL_write_ex(s, b"x".as_ptr() as *const c_void, 1, &mut n);
        ossl::SSL_read_ex(c, buf.as_mut_ptr() as *mut c_void, buf.len(), &mut n);
        ossl::ERR_clear_error();
        let out = (
            ossl::SSL_session_reused(s) == 1,
            SSL_get_early_data_status(s),
            early,
            SSL_get1_session(c),
        );
        ossl::SSL_shutdown(s);
        ossl::SSL_shutdown(c);
        ossl::SSL_free(c);
        ossl::SSL_free(s);
        out
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: objects this Pair made.
        unsafe {
            ossl::SSL_CTX_free(self.server);
            ossl::SSL_CTX_free(self.client);
            shmsess_cache_free(self.cache);
        }
    }
}

/// A full handshake, then a resumption of its ticket with early data.
unsafe fn resume_with_early_data(p: &Pair) -> (bool, c_int, Vec<u8>) {
    let (reused, _, _, sess) = p.connect(std::ptr::null_mut());
    assert!(!reused && !sess.is_null());
    assert!(
        ossl::SSL_SESSION_get_max_early_data(sess) > 0,
        "the ticket allows early data"
    );
    let (reused, status, early, next) = p.connect(sess);
    ossl::SSL_SESSION_free(sess);
    ossl::SSL_SESSION_free(next);
    (reused, status, early)
}

#[test]
fn early_data_is_refused_when_redis_cannot_confirm_single_use() {
    let tmp = setup();
    // SAFETY: OpenSSL objects used on this thread only, freed by Pair's Drop.
    unsafe {
        // Without the tier: the ticket resumes with its early data (the set-up works).
        let (reused, status, early) = resume_with_early_data(&Pair::new(&tmp.0, None));
        assert!(
            reused && status == SSL_EARLY_DATA_ACCEPTED && early == EARLY,
            "no tier: {status}"
        );

        // Redis up: single use is confirmed fleet-wide; early data accepted.
        let port = free_port();
        let redis = RedisServer::start(port);
        let url = format!("redis://127.0.0.1:{port}/0");
        let (reused, status, early) = resume_with_early_data(&Pair::new(&tmp.0, Some(&url)));
        assert!(
            reused && status == SSL_EARLY_DATA_ACCEPTED && early == EARLY,
            "Redis up: {status}"
        );
        drop(redis);

        // Redis unreachable: resumed (this host's copy is single use here), early data refused.
        let dead = format!("redis://127.0.0.1:{}/0", free_port());
        let (reused, status, early) = resume_with_early_data(&Pair::new(&tmp.0, Some(&dead)));
        assert!(reused, "still resumed");
        assert_eq!(
            status, SSL_EARLY_DATA_REJECTED,
            "no 0-RTT without Redis's word"
        );
        assert!(early.is_empty(), "the server read no early data: {early:?}");
    }
}
