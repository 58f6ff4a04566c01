//! The second tier: sessions sealed (see [`crate::seal`]) in Redis, so that servers on several
//! hosts behind a load balancer resume each other's sessions. Shared memory stays the first
//! tier; this one is asked only on a local miss, written on every new session.
//!
//! Rules that keep it from hurting handshakes:
//! - every operation is bounded by one deadline (name lookup, connect, AUTH/SELECT, command
//!   and reply together; see [`crate::resp`]) and every reply by [`REPLY_CAP`];
//! - after [`Breaker::TRIP_AFTER`] failures in a row a process skips the tier for the back-off
//!   period, then tries again by itself;
//! - a failure is never an error for the handshake: it is a miss (or, for a store, nothing);
//! - connections belong to the process that made them (created lazily, after fork; a child
//!   drops what it inherited) and to one operation at a time (a small idle pool per process);
//! - a connection that saw any error is dropped: after a timeout its late reply would
//!   otherwise be read as the answer to the next command.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::RemoteCounters;
use crate::log::{self, Level};
use crate::resp::{self, Begun, Conn, Deadline, Failure, Reply, Resolver, Target, URL_FORM};
use crate::resp_tls::{ClientCtx, TlsStream};
use crate::seal::{Keyring, Opened};

type FResult<T> = std::result::Result<T, Failure>;

/// Default bound on one remote operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(25);
/// Default time the tier is skipped after it failed [`Breaker::TRIP_AFTER`] times in a row.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// Default key prefix (Redis keys are the prefix and the session id in hex).
pub const DEFAULT_PREFIX: &str = "shmsess:";
/// Idle connections a process keeps (one per thread doing a remote operation at once).
const MAX_IDLE: usize = 8;

pub struct RemoteConfig {
    /// `redis[s]://[user:password@]host:port/db` (AUTH and SELECT are done on connect).
    pub url: String,
    /// For `rediss://`: PEM file of the CA(s) Redis's certificate must chain to (`None`: the
    /// system's CA store).
    pub ca_file: Option<String>,
    pub prefix: String,
    pub timeout: Duration,
    pub backoff: Duration,
    pub keys: Keyring,
}

/// Whether to try the tier now: closed (try), or open (skip) until the back-off ends.
#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    backoff: Duration,
}

impl Breaker {
    pub const TRIP_AFTER: u32 = 3;

    pub fn new(backoff: Duration) -> Breaker {
        Breaker {
            failures: 0,
            open_until: None,
            backoff,
        }
    }

    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|t| now >= t)
    }

    /// Returns true if the tier had been skipped and works again.
    pub fn success(&mut self) -> bool {
        let recovered = self.failures >= Self::TRIP_AFTER;
        self.failures = 0;
        self.open_until = None;
        recovered
    }

    /// Returns true when this failure starts a back-off (the first trip, not each retry).
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= Self::TRIP_AFTER {
            self.open_until = Some(now + self.backoff);
            return self.failures == Self::TRIP_AFTER;
        }
        false
    }
}

struct ProcessState {
    pid: u32,
    /// Idle connections of this process, each done with its last operation.
    idle: Vec<Conn>,
    breaker: Breaker,
    resolver: Resolver,
}

pub struct Remote {
    target: Target,
    /// Set for `rediss://`: every connection is TLS, verified with this context.
    tls: Option<ClientCtx>,
    prefix: String,
    timeout: Duration,
    keys: Keyring,
    state: Mutex<ProcessState>,
}

/// Largest bulk reply accepted: the largest sealed session. Anything bigger is not ours, and
/// the connection is dropped before it is read.
pub const REPLY_CAP: usize = crate::layout::MAX_SESSION_BYTES + crate::seal::OVERHEAD;

/// What a remote lookup gave.
pub enum Fetched {
    Hit(Opened),
    Miss,
    /// Down, slow, skipped or answered with something that did not authenticate.
    Unavailable,
}

impl Remote {
    /// Parse the URL (nothing is connected yet: connections are made in the process that
    /// uses them, after fork).
    pub fn new(cfg: RemoteConfig) -> Result<Remote> {
        // The URL may hold a password: name the problem, not the URL.
        let target = Target::parse(&cfg.url).map_err(|m| {
            Error::new(
                ErrorKind::Invalid,
                format!("remote URL is not usable ({m}): expected {URL_FORM}"),
            )
        })?;
        let tls = match (target.tls, &cfg.ca_file) {
            (true, ca) => Some(ClientCtx::new(ca.as_deref())?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "a remote CA file is given but the URL is redis://: use rediss:// for TLS",
                ))
            }
        };
        if cfg.timeout.is_zero() {
            return Err(Error::new(ErrorKind::Invalid, "remote timeout is 0"));
        }
        Ok(Remote {
            target,
            tls,
            prefix: cfg.prefix,
            timeout: cfg.timeout,
            keys: cfg.keys,
            state: Mutex::new(ProcessState {
                pid: std::process::id(),
                idle: Vec::new(),
                breaker: Breaker::new(cfg.backoff),
                resolver: Resolver::default(),
            }),
        })
    }

    fn key(&self, id: &[u8]) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut k = Vec::with_capacity(self.prefix.len() + 2 * id.len());
        k.extend_from_slice(self.prefix.as_bytes());
        for &b in id {
            k.push(HEX[usize::from(b >> 4)]);
            k.push(HEX[usize::from(b & 15)]);
        }
        k
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcessState> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::process::id();
        if st.pid != pid {
            // Forked: connections, failures and lookups belong to the parent. Dropping the
            // copies closes only this process's descriptors.
            st.idle.clear();
            st.pid = pid;
            st.breaker = Breaker::new(st.breaker.backoff);
            st.resolver = Resolver::default();
        }
        st
    }

    /// Run one operation on a connection of this process, under one deadline and the
    /// breaker. `None` if it was skipped or failed (counted either way). A pooled connection
    /// the server closed (restarted Redis, idle timeout) is replaced once, within the same
    /// deadline.
    fn run<T>(
        &self,
        c: &RemoteCounters,
        op: impl Fn(&mut Conn, Deadline) -> FResult<T>,
    ) -> Option<T> {
        let dl = Deadline::after(self.timeout);
        let pooled = {
            let mut st = self.lock();
            if !st.breaker.allows(Instant::now()) {
                c.skipped.fetch_add(1, Relaxed);
                return None;
            }
            st.idle.pop()
        };
        let result = match pooled {
            Some(mut conn) => match op(&mut conn, dl) {
                Ok(v) => Ok((v, conn)),
                Err(f) if f.is_stale_connection() => self.connect_and_run(&op, dl),
                Err(f) => Err(f),
            },
            None => self.connect_and_run(&op, dl),
        };
        let mut st = self.lock();
        match result {
            Ok((v, conn)) => {
                if st.idle.len() < MAX_IDLE {
                    st.idle.push(conn);
                }
                if st.breaker.success() {
                    log::emit(Level::Info, "remote tier: working again");
                }
                Some(v)
            }
            Err(f) => {
                if f == Failure::Timeout {
                    c.timeouts.fetch_add(1, Relaxed);
                } else {
                    c.errors.fetch_add(1, Relaxed);
                }
                if st.breaker.failure(Instant::now()) {
                    log::emit(
                        Level::Warning,
                        &format!(
                            "remote tier: {} failures in a row (last: {f}); skipping it for {} ms",
                            Breaker::TRIP_AFTER,
                            st.breaker.backoff.as_millis()
                        ),
                    );
                }
                None
            }
        }
    }

    /// Resolve (if the URL names a host), connect, log in and run `op`, all before `dl`.
    fn connect_and_run<T>(
        &self,
        op: &impl Fn(&mut Conn, Deadline) -> FResult<T>,
        dl: Deadline,
    ) -> FResult<(T, Conn)> {
        let addrs = self.addresses(dl)?;
        let tcp = resp::tcp_connect(&addrs, dl).inspect_err(|_| self.lock().resolver.forget())?;
        let mut conn = match &self.tls {
            None => Conn::new(Box::new(tcp), REPLY_CAP),
            Some(ctx) => {
                let tls = TlsStream::connect(ctx, tcp, &self.target.host, dl)?;
                Conn::new(Box::new(tls), REPLY_CAP)
            }
        };
        conn.login(&self.target, dl)?;
        let v = op(&mut conn, dl)?;
        Ok((v, conn))
    }

    /// The addresses to connect to: the URL's IP, or its host name looked up within `dl`.
    fn addresses(&self, dl: Deadline) -> FResult<Vec<SocketAddr>> {
        if let Some(ip) = self.target.ip() {
            return Ok(vec![SocketAddr::new(ip, self.target.port)]);
        }
        let begun = self
            .lock()
            .resolver
            .begin(&self.target.host, self.target.port)?;
        let lookup = match begun {
            Begun::Known(addrs) => return Ok(addrs),
            Begun::Wait(l) => l,
        };
        let waited = lookup.wait(dl);
        let mut st = self.lock();
        st.resolver.finish(&waited);
        match waited {
            Ok(r) => r,
            Err(still_running) => {
                st.resolver.park(still_running);
                Err(Failure::Timeout)
            }
        }
    }

    /// Write a new session, sealed, with Redis expiring it when the session does.
    pub fn store(
        &self,
        c: &RemoteCounters,
        id: &[u8],
        der: &[u8],
        created: u32,
        expires: u32,
        now: u32,
    ) {
        let ttl_ms = u64::from(expires.saturating_sub(now)) * 1000;
        if ttl_ms == 0 {
            return;
        }
        let Ok(value) = self.keys.seal(id, der, created, expires) else {
            c.errors.fetch_add(1, Relaxed);
            return;
        };
        let key = self.key(id);
        let ttl = ttl_ms.to_string();
        let stored = self.run(c, |conn, dl| {
            conn.call(&[b"SET", &key, &value, b"PX", ttl.as_bytes()], dl)?
                .expect_ok()
        });
        if stored.is_some() {
            c.stores.fetch_add(1, Relaxed);
        }
    }

    /// Look a session up after a local miss. With `take` (TLS 1.3 single use) the value is
    /// deleted in the same step (GETDEL), so one host in the fleet gets it.
    pub fn fetch(&self, c: &RemoteCounters, id: &[u8], take: bool, now: u32) -> Fetched {
        let key = self.key(id);
        let cmd: &[u8] = if take { b"GETDEL" } else { b"GET" };
        let got = self.run(c, |conn, dl| match conn.call(&[cmd, &key], dl)? {
            Reply::Bulk(v) => Ok(v),
            _ => Err(Failure::Protocol("expected a bulk string")),
        });
        match got {
            Some(Some(mut value)) => {
                let opened = self.keys.open(id, &value);
                crate::util::wipe(&mut value);
                match opened {
                    Some(o) if o.expires > now => {
                        c.hits.fetch_add(1, Relaxed);
                        Fetched::Hit(o)
                    }
                    Some(_) => {
                        c.misses.fetch_add(1, Relaxed);
                        Fetched::Miss
                    }
                    None => {
                        c.rejected.fetch_add(1, Relaxed);
                        log::emit(
                            Level::Warning,
                            "remote tier: dropped a value that does not authenticate (tampered, or sealed with a key not in the key file)",
                        );
                        Fetched::Unavailable
                    }
                }
            }
            Some(None) => {
                c.misses.fetch_add(1, Relaxed);
                Fetched::Miss
            }
            None => Fetched::Unavailable,
        }
    }

    /// Delete `id`; `Some(true)` if it was there, `Some(false)` if not, `None` if the tier
    /// could not be asked. Used to consume a TLS 1.3 ticket found locally, fleet-wide.
    pub fn delete(&self, c: &RemoteCounters, id: &[u8]) -> Option<bool> {
        let key = self.key(id);
        self.run(c, |conn, dl| match conn.call(&[b"DEL", &key], dl)? {
            Reply::Int(n) => Ok(n > 0),
            _ => Err(Failure::Protocol("expected an integer")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_trips_after_repeated_failures_and_retries_after_the_back_off() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Duration::from_secs(2));
        assert!(b.allows(t0));
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.allows(t0), "two failures: still trying");
        assert!(b.failure(t0), "the third failure trips it");
        assert!(!b.allows(t0 + Duration::from_millis(1999)));
        assert!(
            b.allows(t0 + Duration::from_secs(2)),
            "retried after the back-off"
        );
        // The retry fails: skipped again at once, without another warning.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!b.failure(t1));
        assert!(!b.allows(t1 + Duration::from_secs(1)));
        assert!(b.allows(t1 + Duration::from_secs(2)));
        assert!(b.success(), "reports the recovery");
        assert!(b.allows(t1), "closed again");
        assert!(!b.success(), "a success when nothing failed is no recovery");
        assert!(!b.failure(t1), "counting starts over");
    }

    #[test]
    fn a_refused_connection_counts_and_trips_without_waiting() {
        // A port nothing listens on (bound, never listened): every try is refused at once.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let r = Remote::new(RemoteConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            prefix: DEFAULT_PREFIX.into(),
            timeout: Duration::from_millis(200),
            backoff: Duration::from_secs(60),
            ca_file: None,
            keys: Keyring::new(crate::seal::Key::new([1; 32]), Vec::new()),
        })
        .unwrap();
        let c: RemoteCounters = unsafe { std::mem::zeroed() };
        for _ in 0..5 {
            assert!(matches!(
                r.fetch(&c, &[1; 32], false, 0),
                Fetched::Unavailable
            ));
        }
        assert_eq!(c.errors.load(Relaxed), 3, "three tries, then the breaker");
        assert_eq!(c.skipped.load(Relaxed), 2);
        assert_eq!(c.hits.load(Relaxed) + c.misses.load(Relaxed), 0);
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let e = Remote::new(RemoteConfig {
            url: "http://user:secretpw@host/".into(),
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
            backoff: DEFAULT_BACKOFF,
            ca_file: None,
            keys: Keyring::new(crate::seal::Key::new([1; 32]), Vec::new()),
        })
        .err()
        .unwrap();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(!e.message.contains("secretpw"), "{e}");
        assert!(e.message.contains(URL_FORM), "{e}");
    }
}
