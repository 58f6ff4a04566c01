//! A TLS server that answers a command with an endless stream of records that carry no
//! application data (TLS 1.3 NewSessionTicket messages, which OpenSSL takes in any number),
//! sent faster than the client can process them: the operation must still end at its
//! deadline. The server is OpenSSL itself (openssl-sys) on 127.0.0.1, with a certificate the
//! test makes.

use std::ffi::{c_int, CString};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use openssl_sys as ossl;
use shmsesscache::remote::seal::{Key, Keyring};
use shmsesscache::remote::{Compat, Fetched, Remote, RemoteConfig};
use shmsesscache::store::cache::RemoteCountersRef;

extern "C" {
    fn SSL_new_session_ticket(s: *mut ossl::SSL) -> c_int;
    fn SSL_set0_wbio(s: *mut ossl::SSL, wbio: *mut ossl::BIO);
    fn SSL_set_fd(s: *mut ossl::SSL, fd: c_int) -> c_int;
}

const BIO_CTRL_PENDING: c_int = 10;
/// Tickets sent after the command: far more than the client processes within the timeout.
const TICKETS: usize = 150_000;

struct Tmp(std::path::PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for IP 127.0.0.1 (it is its own CA) and its key.
fn certificate() -> Tmp {
    let dir = std::env::temp_dir().join(format!("shmsess-tlsrec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=fake-redis"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl command")
        .success();
    assert!(ok, "openssl req failed");
    Tmp(dir)
}

/// One RESP command's worth of bytes read through `ssl` (enough for the fake: it reads until
/// the bytes end with CRLF and hold as many bulk strings as the array header says).
unsafe fn read_command(ssl: *mut ossl::SSL) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let n = unsafe { ossl::SSL_read(ssl, buf.as_mut_ptr().cast(), buf.len() as c_int) };
        assert!(n > 0, "the client went away");
        got.extend_from_slice(&buf[..n as usize]);
        let text = String::from_utf8_lossy(&got);
        let args: usize = text[1..text.find('\r').unwrap_or(1)]
            .parse()
            .unwrap_or(usize::MAX);
        if text.ends_with("\r\n") && text.matches('$').count() >= args {
            return got;
        }
    }
}

unsafe fn write(ssl: *mut ossl::SSL, bytes: &[u8]) {
    let n = unsafe { ossl::SSL_write(ssl, bytes.as_ptr().cast(), bytes.len() as c_int) };
    assert_eq!(n as usize, bytes.len());
}

/// The fake: a TLS 1.3 server that answers INFO and the first GET (a miss), then makes
/// [`TICKETS`] tickets ahead (reported on `ready`), and answers the second GET with them,
/// written to the socket as fast as it takes them, and never with a reply.
fn server(dir: &std::path::Path, ready: mpsc::Sender<()>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (cert, key) = (
        CString::new(dir.join("cert.pem").to_str().unwrap()).unwrap(),
        CString::new(dir.join("key.pem").to_str().unwrap()).unwrap(),
    );
    std::thread::spawn(move || unsafe {
        let ctx = ossl::SSL_CTX_new(ossl::TLS_server_method());
        assert_eq!(
            ossl::SSL_CTX_use_certificate_chain_file(ctx, cert.as_ptr()),
            1
        );
        assert_eq!(
            ossl::SSL_CTX_use_PrivateKey_file(ctx, key.as_ptr(), ossl::SSL_FILETYPE_PEM),
            1
        );
        ossl::SSL_CTX_set_min_proto_version(ctx, ossl::TLS1_3_VERSION);
        ossl::SSL_CTX_set_num_tickets(ctx, 0);
        let (mut tcp, _) = l.accept().unwrap();
        let ssl = ossl::SSL_new(ctx);
        assert_eq!(SSL_set_fd(ssl, tcp.as_raw_fd()), 1);
        assert_eq!(ossl::SSL_accept(ssl), 1, "handshake");
        let info = "# Server\r\nredis_version:7.0.15\r\n";
        read_command(ssl);
        write(ssl, format!("${}\r\n{info}\r\n", info.len()).as_bytes());
        read_command(ssl);
        write(ssl, b"$-1\r\n");
        // The tickets, made into memory now: what the client gets next is only them.
        let mem = ossl::BIO_new(ossl::BIO_s_mem());
        SSL_set0_wbio(ssl, mem);
        for _ in 0..TICKETS {
            assert_eq!(SSL_new_session_ticket(ssl), 1);
        }
        assert_eq!(ossl::SSL_do_handshake(ssl), 1, "tickets written");
        let pending = ossl::BIO_ctrl(mem, BIO_CTRL_PENDING, 0, std::ptr::null_mut()) as usize;
        let mut stream = vec![0u8; pending];
        assert_eq!(
            ossl::BIO_read(mem, stream.as_mut_ptr().cast(), pending as c_int) as usize,
            pending
        );
        ready.send(()).unwrap();
        // The second GET (still encrypted: the read side is the socket), then the flood.
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf);
        let _ = tcp.write_all(&stream);
        std::thread::sleep(Duration::from_secs(30));
    });
    port
}

#[test]
fn a_stream_of_non_application_records_is_cut_at_the_deadline() {
    let dir = certificate();
    let (tx, rx) = mpsc::channel();
    let port = server(&dir.0, tx);
    let c = RemoteCountersRef::private();
    let timeout = Duration::from_millis(150);
    let r = Remote::new(
        RemoteConfig {
            url: format!("rediss://127.0.0.1:{port}/0"),
            ca_file: Some(dir.0.join("cert.pem").to_str().unwrap().into()),
            prefix: "r:".into(),
            timeout: Duration::from_secs(5),
            backoff: Duration::ZERO,
            compat: Compat::Detect,
            cluster: false,
            keys: Keyring::new(Key::new([7; 32]), Vec::new()),
            fleet: String::new(),
        },
        c.clone(),
    )
    .unwrap();
    let t = shmsesscache::util::now_unix();
    // The first fetch connects (TLS, INFO) and leaves the connection in the pool.
    assert!(
        matches!(r.fetch(&[1; 32], false, t), Fetched::Miss),
        "{:?}",
        c.get().load()
    );
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the server made its tickets");
    // The second one gets only tickets, under its own short deadline.
    let start = Instant::now();
    let got = r.fetch_within(&[1; 32], false, t, deadline(timeout));
    let spent = start.elapsed();
    eprintln!("the fetch took {spent:?} (deadline {timeout:?})");
    assert!(matches!(got, Fetched::Unavailable));
    assert_eq!(c.get().load().timeouts, 1, "{:?}", c.get().load());
    assert!(
        spent < timeout + Duration::from_millis(350),
        "a stream of tickets held the operation {spent:?} past a {timeout:?} deadline"
    );
}

fn deadline(d: Duration) -> shmsesscache::remote::resp::Deadline {
    shmsesscache::remote::resp::Deadline::after(d)
}
