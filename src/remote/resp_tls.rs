//! TLS to Redis (`rediss://`) for [`crate::remote::resp`], through the OpenSSL the library links.
//!
//! The TLS engine runs on memory BIOs and this module moves the bytes between them and the
//! nonblocking socket itself, so:
//! - every wait is the caller's `poll()` against its deadline (the handshake included);
//! - socket writes go through Rust's `TcpStream` (`send` with `MSG_NOSIGNAL`): a Redis that
//!   closes the connection cannot SIGPIPE a server that did not ignore the signal (OpenSSL's
//!   socket BIO writes with plain `write`).
//!
//! The peer certificate is verified against the CA file given (or the system's CA store), and
//! its name against the URL's host (an IP address is checked against the certificate's IP
//! SANs). OpenSSL errors raised here are popped from the thread's error queue before
//! returning: the remote tier runs inside the server's own handshake callbacks.

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsRawFd;

use openssl_sys as ossl;

use crate::error::{Error, ErrorKind, Result};
use crate::remote::resp::{wait, Deadline, Failure, Transport, Want};

extern "C" {
    // Not declared by openssl-sys.
    fn ERR_set_mark() -> c_int;
    fn ERR_pop_to_mark() -> c_int;
}

const BIO_CTRL_PENDING: c_int = 10;
const X509_V_OK: c_long = 0;
type Step = std::result::Result<Option<usize>, std::result::Result<Want, Failure>>;

/// Bytes moved from the socket into the TLS engine at a time (one record at most).
const CHUNK: usize = 17 * 1024;

/// The client context: CA store and verification settings, shared by all connections of a
/// [`crate::remote::Remote`] (and, after fork, by the children: it is only read).
pub struct ClientCtx(*mut ossl::SSL_CTX);

// SAFETY: an SSL_CTX is safe to share between threads once configured; we never change it
// after `new`.
unsafe impl Send for ClientCtx {}
unsafe impl Sync for ClientCtx {}

impl Drop for ClientCtx {
    fn drop(&mut self) {
        // SAFETY: the context we made.
        unsafe { ossl::SSL_CTX_free(self.0) };
    }
}

/// Run an OpenSSL call with the thread's error queue restored afterwards (our errors are
/// described by the caller from `SSL_get_error`/the verify result, never left behind).
fn quiet<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: marks and pops only this thread's queue.
    unsafe { ERR_set_mark() };
    let r = f();
    // SAFETY: as above.
    unsafe { ERR_pop_to_mark() };
    r
}

impl ClientCtx {
    /// TLS 1.2 or later, peer verified against `ca_file` (PEM), or the system's store if
    /// `None`.
    pub fn new(ca_file: Option<&str>) -> Result<ClientCtx> {
        quiet(|| {
            // SAFETY: plain OpenSSL calls on a context we own; freed by Drop on every error path.
            unsafe {
                let ctx = ossl::SSL_CTX_new(ossl::TLS_client_method());
                if ctx.is_null() {
                    return Err(Error::new(ErrorKind::OpenSsl, "remote TLS: no SSL_CTX"));
                }
                let ctx = ClientCtx(ctx);
                if ossl::SSL_CTX_set_min_proto_version(ctx.0, ossl::TLS1_2_VERSION) != 1 {
                    return Err(Error::new(
                        ErrorKind::OpenSsl,
                        "remote TLS: cannot require TLS 1.2",
                    ));
                }
                let loaded = match ca_file {
                    Some(f) => {
                        // OpenSSL's refusal does not say whether the file is there at all.
                        if let Err(e) = std::fs::File::open(f) {
                            return Err(Error::invalid(format!(
                                "remote CA file {f}: cannot open it: {e}"
                            )));
                        }
                        let c = CString::new(f)
                            .map_err(|_| Error::invalid("remote CA file name has a NUL byte"))?;
                        ossl::SSL_CTX_load_verify_locations(ctx.0, c.as_ptr(), std::ptr::null())
                    }
                    None => ossl::SSL_CTX_set_default_verify_paths(ctx.0),
                };
                if loaded != 1 {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        match ca_file {
                            Some(f) => format!(
                                "remote CA file {f}: no certificate could be read from it (expected PEM \
                                 certificates of the CA that signed Redis's certificate)"
                            ),
                            None => "remote TLS: the system's CA store could not be loaded; give a CA file".into(),
                        },
                    ));
                }
                ossl::SSL_CTX_set_verify(ctx.0, ossl::SSL_VERIFY_PEER, None);
                Ok(ctx)
            }
        })
    }
}

/// One TLS connection over a nonblocking TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    ssl: *mut ossl::SSL,
    rbio: *mut ossl::BIO,
    wbio: *mut ossl::BIO,
    /// TLS bytes produced by the engine and not yet accepted by the socket.
    out: Vec<u8>,
}

// SAFETY: the SSL is used by one thread at a time (a connection belongs to one operation).
unsafe impl Send for TlsStream {}

impl Drop for TlsStream {
    fn drop(&mut self) {
        // No close_notify: that would be I/O (and in a child after fork, on the parent's
        // session). Freeing the SSL frees both BIOs.
        // SAFETY: the SSL we made.
        unsafe { ossl::SSL_free(self.ssl) };
    }
}

impl TlsStream {
    /// Handshake as a client of `host` within `dl`.
    pub fn connect(
        ctx: &ClientCtx,
        tcp: TcpStream,
        host: &str,
        dl: Deadline,
    ) -> std::result::Result<TlsStream, Failure> {
        let mut s = quiet(|| TlsStream::new(ctx, tcp, host))?;
        loop {
            // SAFETY: live SSL.
            match s.step(|ssl| (unsafe { ossl::SSL_connect(ssl) }, 0)) {
                Ok(Some(_)) => break,
                Ok(None) => dl.left().map(|_| ())?,
                Err(Ok(w)) => wait(s.tcp.as_raw_fd(), w, dl)?,
                Err(Err(f)) => return Err(f),
            }
        }
        // The handshake's last flight may still be queued.
        while !s.out.is_empty() {
            match s.flush() {
                Ok(()) => {}
                Err(Ok(w)) => wait(s.tcp.as_raw_fd(), w, dl)?,
                Err(Err(f)) => return Err(f),
            }
        }
        Ok(s)
    }

    fn new(ctx: &ClientCtx, tcp: TcpStream, host: &str) -> std::result::Result<TlsStream, Failure> {
        let fail = |m: &str| Failure::Tls(m.into());
        // SAFETY: objects we create; on error the SSL (and the BIOs it owns) are freed by Drop.
        unsafe {
            let ssl = ossl::SSL_new(ctx.0);
            if ssl.is_null() {
                return Err(fail("no SSL"));
            }
            let rbio = ossl::BIO_new(ossl::BIO_s_mem());
            let wbio = ossl::BIO_new(ossl::BIO_s_mem());
            if rbio.is_null() || wbio.is_null() {
                ossl::BIO_free_all(rbio);
                ossl::BIO_free_all(wbio);
                ossl::SSL_free(ssl);
                return Err(fail("no BIO"));
            }
            ossl::SSL_set_bio(ssl, rbio, wbio);
            let s = TlsStream {
                tcp,
                ssl,
                rbio,
                wbio,
                out: Vec::new(),
            };
            let param = ossl::SSL_get0_param(ssl);
            let checked = match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => {
                    ossl::X509_VERIFY_PARAM_set1_ip(param, ip.octets().as_ptr(), 4)
                }
                Ok(IpAddr::V6(ip)) => {
                    ossl::X509_VERIFY_PARAM_set1_ip(param, ip.octets().as_ptr(), 16)
                }
                Err(_) => {
                    let name = CString::new(host).map_err(|_| fail("host name has a NUL byte"))?;
                    ossl::SSL_set_tlsext_host_name(ssl, name.as_ptr() as *mut c_char);
                    ossl::X509_VERIFY_PARAM_set1_host(param, name.as_ptr(), host.len())
                }
            };
            if checked != 1 {
                return Err(fail("cannot set the name to verify"));
            }
            Ok(s)
        }
    }

    /// One SSL call `f` (returning its status and a byte count) and, if it did not succeed,
    /// what to do next, all within one error-queue mark: `Ok(Some(n))` done, `Ok(None)` call
    /// again at once, `Err(Ok(want))` wait first.
    fn step(&mut self, f: impl FnOnce(*mut ossl::SSL) -> (c_int, usize)) -> Step {
        quiet(|| {
            let (r, n) = f(self.ssl);
            if r == 1 {
                Ok(Some(n))
            } else {
                self.after_error(r).map(|()| None)
            }
        })
    }

    /// After an SSL call returned `r <= 0`: move bytes if the engine wants them (`Ok` to call
    /// again at once), or say what to wait for, or fail.
    fn after_error(
        &mut self,
        r: c_int,
    ) -> std::result::Result<(), std::result::Result<Want, Failure>> {
        // SAFETY: live SSL; the queue this reads is restored by `quiet` in our callers.
        let e = unsafe { ossl::SSL_get_error(self.ssl, r) };
        match e {
            ossl::SSL_ERROR_WANT_READ => {
                self.flush()?;
                self.fill()
            }
            ossl::SSL_ERROR_WANT_WRITE => self.flush(),
            ossl::SSL_ERROR_ZERO_RETURN => Err(Err(Failure::Io(io::ErrorKind::UnexpectedEof))),
            _ => Err(Err(self.describe())),
        }
    }

    /// Why the engine failed: the certificate verdict if verification failed, else the
    /// OpenSSL reason string.
    fn describe(&self) -> Failure {
        // SAFETY: live SSL; static strings from OpenSSL.
        unsafe {
            let v = ossl::SSL_get_verify_result(self.ssl);
            if v != X509_V_OK {
                let m = CStr::from_ptr(ossl::X509_verify_cert_error_string(v));
                return Failure::Tls(format!("certificate refused: {}", m.to_string_lossy()));
            }
            let code = ossl::ERR_peek_last_error();
            let reason = ossl::ERR_reason_error_string(code);
            if reason.is_null() {
                Failure::Tls("handshake failed".into())
            } else {
                Failure::Tls(CStr::from_ptr(reason).to_string_lossy().into_owned())
            }
        }
    }

    /// Move what the engine wrote to the socket; `Want::Write` while some is left.
    fn flush(&mut self) -> std::result::Result<(), std::result::Result<Want, Failure>> {
        loop {
            // SAFETY: live BIO; reads at most `CHUNK` bytes into our buffer.
            let pending =
                unsafe { ossl::BIO_ctrl(self.wbio, BIO_CTRL_PENDING, 0, std::ptr::null_mut()) };
            if pending <= 0 {
                break;
            }
            let old = self.out.len();
            self.out.resize(old + (pending as usize).min(CHUNK), 0);
            let n = unsafe {
                ossl::BIO_read(
                    self.wbio,
                    self.out[old..].as_mut_ptr() as *mut c_void,
                    (self.out.len() - old) as c_int,
                )
            };
            self.out.truncate(old + n.max(0) as usize);
            if n <= 0 {
                break;
            }
        }
        while !self.out.is_empty() {
            match self.tcp.write(&self.out) {
                Ok(0) => return Err(Err(Failure::Io(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Err(Ok(Want::Write))
                }
                Err(e) => return Err(Err(Failure::Io(e.kind()))),
            }
        }
        Ok(())
    }

    /// Move bytes from the socket into the engine; `Want::Read` if there are none yet.
    fn fill(&mut self) -> std::result::Result<(), std::result::Result<Want, Failure>> {
        let mut buf = [0u8; CHUNK];
        match self.tcp.read(&mut buf) {
            Ok(0) => Err(Err(Failure::Io(io::ErrorKind::UnexpectedEof))),
            Ok(n) => {
                // SAFETY: live memory BIO; it copies the n bytes.
                let w = unsafe {
                    ossl::BIO_write(self.rbio, buf.as_ptr() as *const c_void, n as c_int)
                };
                if w != n as c_int {
                    return Err(Err(Failure::Tls("cannot buffer input".into())));
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Err(Ok(Want::Read))
            }
            Err(e) => Err(Err(Failure::Io(e.kind()))),
        }
    }
}

impl Transport for TlsStream {
    fn read_nb(
        &mut self,
        buf: &mut [u8],
        dl: Deadline,
    ) -> std::result::Result<usize, std::result::Result<Want, Failure>> {
        loop {
            // A server can send records without application data (tickets, without limit)
            // as fast as they are processed: the socket never runs dry, so only the
            // deadline ends this loop.
            dl.left().map_err(Err)?;
            let done = self.step(|ssl| {
                let mut n = 0usize;
                // SAFETY: live SSL; writes at most buf.len() bytes.
                let r = unsafe {
                    ossl::SSL_read_ex(ssl, buf.as_mut_ptr() as *mut c_void, buf.len(), &mut n)
                };
                (r, n)
            })?;
            if let Some(n) = done {
                // Reading may have produced output (a key update answer): send it when we can.
                if let Err(Err(f)) = self.flush() {
                    return Err(Err(f));
                }
                return Ok(n);
            }
        }
    }

    fn write_nb(
        &mut self,
        buf: &[u8],
        dl: Deadline,
    ) -> std::result::Result<usize, std::result::Result<Want, Failure>> {
        // Earlier output first, so the engine's buffer stays small.
        self.flush()?;
        loop {
            // A write may have to read first (the engine's records), as above.
            dl.left().map_err(Err)?;
            let done = self.step(|ssl| {
                let mut n = 0usize;
                // SAFETY: live SSL; reads buf.len() bytes.
                let r = unsafe {
                    ossl::SSL_write_ex(ssl, buf.as_ptr() as *const c_void, buf.len(), &mut n)
                };
                (r, n)
            })?;
            if let Some(n) = done {
                // Encrypted into the memory BIO: it is ours to send now or on the next call.
                if let Err(Err(f)) = self.flush() {
                    return Err(Err(f));
                }
                return Ok(n);
            }
        }
    }

    fn fd(&self) -> i32 {
        self.tcp.as_raw_fd()
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.tcp.peer_addr().ok()
    }
}
