//! The second tier: sessions sealed (see [`crate::seal`]) in Redis, so that servers on several
//! hosts behind a load balancer resume each other's sessions. Shared memory stays the first
//! tier; this one is asked only on a local miss, written on every new session.
//!
//! Rules that keep it from hurting handshakes:
//! - every operation is bounded by one timeout (connect, AUTH/SELECT, command);
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

use crate::error::{Error, ErrorKind, Result};
use crate::layout::RemoteCounters;
use crate::log::{self, Level};
use crate::seal::{Keyring, Opened};

/// Default bound on one remote operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(25);
/// Default time the tier is skipped after it failed [`Breaker::TRIP_AFTER`] times in a row.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// Default key prefix (Redis keys are the prefix and the session id in hex).
pub const DEFAULT_PREFIX: &str = "shmsess:";
/// Idle connections a process keeps (one per thread doing a remote operation at once).
const MAX_IDLE: usize = 8;

pub struct RemoteConfig {
    /// `redis://[user:password@]host:port/db` (AUTH and SELECT are done on connect).
    pub url: String,
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

/// An idle connection of this process, with the full timeout set on it.
struct Pooled(redis::Connection);

struct ProcessState {
    pid: u32,
    idle: Vec<Pooled>,
    breaker: Breaker,
}

pub struct Remote {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    keys: Keyring,
    state: Mutex<ProcessState>,
}

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
        use redis::IntoConnectionInfo;
        // The URL may hold a password: name the problem, not the URL.
        if cfg.url.starts_with("rediss:") || cfg.url.starts_with("valkeys:") {
            return Err(Error::new(
                ErrorKind::Invalid,
                "remote URL: TLS to Redis (rediss://) is not built in; use redis:// on a private \
                 network or through a local TLS tunnel (values are sealed either way)",
            ));
        }
        let bad = |e: redis::RedisError| {
            Error::new(
                ErrorKind::Invalid,
                format!(
                    "remote URL is not usable ({}): expected redis://[user:password@]host:port/db",
                    kind_name(&e)
                ),
            )
        };
        let info = cfg.url.as_str().into_connection_info().map_err(bad)?;
        // No CLIENT SETINFO on connect: each reply the setup waits for is another full
        // timeout against a hung server (strace: AUTH plus two SETINFOs took 3 x the timeout).
        let redis_info = info.redis_settings().clone().set_skip_set_lib_name();
        let client = redis::Client::open(info.set_redis_settings(redis_info)).map_err(bad)?;
        if cfg.timeout.is_zero() {
            return Err(Error::new(ErrorKind::Invalid, "remote timeout is 0"));
        }
        Ok(Remote {
            client,
            prefix: cfg.prefix,
            timeout: cfg.timeout,
            keys: cfg.keys,
            state: Mutex::new(ProcessState {
                pid: std::process::id(),
                idle: Vec::new(),
                breaker: Breaker::new(cfg.backoff),
            }),
        })
    }

    fn key(&self, id: &[u8]) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut k = String::with_capacity(self.prefix.len() + 2 * id.len());
        k.push_str(&self.prefix);
        for &b in id {
            k.push(HEX[usize::from(b >> 4)] as char);
            k.push(HEX[usize::from(b & 15)] as char);
        }
        k
    }

    /// Run one command on a connection of this process, under the timeout and the breaker.
    /// `None` if it was skipped or failed (counted either way).
    fn run<T>(
        &self,
        c: &RemoteCounters,
        op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let conn = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let pid = std::process::id();
            if st.pid != pid {
                // Forked: connections and failures belong to the parent. Dropping the copies
                // closes only this process's descriptors.
                st.idle.clear();
                st.pid = pid;
                st.breaker = Breaker::new(st.breaker.backoff);
            }
            if !st.breaker.allows(Instant::now()) {
                c.skipped.fetch_add(1, Relaxed);
                return None;
            }
            st.idle.pop()
        };
        let result = match conn {
            Some(mut conn) => op(&mut conn.0).map(|v| (v, conn)),
            None => self.connect_and_run(op),
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
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
            Err(e) => {
                if e.is_timeout() {
                    c.timeouts.fetch_add(1, Relaxed);
                } else {
                    c.errors.fetch_add(1, Relaxed);
                }
                if st.breaker.failure(Instant::now()) {
                    log::emit(
                        Level::Warning,
                        &format!(
                            "remote tier: {} failures in a row (last: {}); skipping it for {} ms",
                            Breaker::TRIP_AFTER,
                            describe(&e),
                            st.breaker.backoff.as_millis()
                        ),
                    );
                }
                None
            }
        }
    }

    /// Connect (AUTH and SELECT included) and run `op` within one timeout in all, so a
    /// handshake waits at most `timeout` per remote operation even when it has to connect.
    fn connect_and_run<T>(
        &self,
        op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<(T, Pooled)> {
        let start = Instant::now();
        let mut conn = self.client.get_connection_with_timeout(self.timeout)?;
        let left = self
            .timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(1));
        conn.set_read_timeout(Some(left))?;
        conn.set_write_timeout(Some(left))?;
        let v = op(&mut conn)?;
        // Pooled connections carry the full timeout for their next operation.
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok((v, Pooled(conn)))
    }

    /// Write a new session, sealed, with Redis expiring it when the session does.
    pub fn store(&self, c: &RemoteCounters, id: &[u8], der: &[u8], created: u32, expires: u32, now: u32) {
        let ttl_ms = u64::from(expires.saturating_sub(now)) * 1000;
        if ttl_ms == 0 {
            return;
        }
        let Ok(value) = self.keys.seal(id, der, created, expires) else {
            c.errors.fetch_add(1, Relaxed);
            return;
        };
        let key = self.key(id);
        let stored = self.run(c, |conn| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(ttl_ms)
                .query::<()>(conn)
        });
        if stored.is_some() {
            c.stores.fetch_add(1, Relaxed);
        }
    }

    /// Look a session up after a local miss. With `take` (TLS 1.3 single use) the value is
    /// deleted in the same step (GETDEL), so one host in the fleet gets it.
    pub fn fetch(&self, c: &RemoteCounters, id: &[u8], take: bool, now: u32) -> Fetched {
        let key = self.key(id);
        let got = self.run(c, |conn| {
            redis::cmd(if take { "GETDEL" } else { "GET" })
                .arg(&key)
                .query::<Option<Vec<u8>>>(conn)
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
        self.run(c, |conn| redis::cmd("DEL").arg(&key).query::<u64>(conn))
            .map(|n| n > 0)
    }
}

/// An error's description without anything from the URL (a password may be in it).
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_io_error() {
        format!("I/O error ({})", kind_name(e))
    } else {
        format!("Redis said {}", kind_name(e))
    }
}

fn kind_name(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
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
        assert!(b.allows(t0 + Duration::from_secs(2)), "retried after the back-off");
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
            keys: Keyring::new(crate::seal::Key::new([1; 32]), Vec::new()),
        })
        .unwrap();
        let c: RemoteCounters = unsafe { std::mem::zeroed() };
        for _ in 0..5 {
            assert!(matches!(r.fetch(&c, &[1; 32], false, 0), Fetched::Unavailable));
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
            keys: Keyring::new(crate::seal::Key::new([1; 32]), Vec::new()),
        })
        .err()
        .unwrap();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(!e.message.contains("secretpw"), "{e}");
        assert!(e.message.contains("redis://[user:password@]host:port/db"), "{e}");
    }
}
