//! The second tier: sessions sealed (see [`crate::remote::seal`]) in Redis, so that servers on several
//! hosts behind a load balancer resume each other's sessions. Shared memory stays the first
//! tier; this one is asked only on a local miss, written on every new session.
//!
//! Rules that keep it from hurting handshakes:
//! - every operation is bounded by one deadline (name lookup, connect, AUTH/SELECT, command
//!   and reply together; see [`crate::remote::resp`]) and every reply by [`REPLY_CAP`];
//! - after [`Breaker::TRIP_AFTER`] failures in a row a process skips the tier for the back-off
//!   period, then tries again by itself;
//! - a failure is never an error for the handshake: it is a miss (or, for a store, nothing);
//! - connections belong to the process that made them (created lazily, after fork; a child
//!   never touches what it inherited, not even its lock) and to one operation at a time (a
//!   small idle pool per process);
//! - a connection that saw any error is dropped: after a timeout its late reply would
//!   otherwise be read as the answer to the next command.
//! - writes (new sessions, removals) never run on the handshake or in OpenSSL's callbacks:
//!   they are queued for a writer thread per process (bounded; drops counted);
//! - a used TLS 1.3 ticket leaves a tombstone in Redis until it would have expired, so single
//!   use does not depend on whether (or when) its store reached Redis (see [`Taken`]);
//! - Redis < 6.2 gets the same atomic swaps as Lua scripts; Redis Cluster is routed by slot.

pub mod resp;
pub mod resp_tls;
pub mod seal;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{
    AtomicPtr, AtomicU32, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::log::{self, Level};
use crate::store::cache::RemoteCountersRef;
use resp::{Begun, Conn, Deadline, Failure, Reply, Resolver, Target, Version, URL_FORM};
use resp_tls::{ClientCtx, TlsStream};
use seal::{Binding, Keyring, Opened, Refused};

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
    /// [`Remote::new`] wipes it once parsed.
    pub url: String,
    /// For `rediss://`: PEM file of the CA(s) Redis's certificate must chain to (`None`: the
    /// system's CA store).
    pub ca_file: Option<String>,
    pub prefix: String,
    pub timeout: Duration,
    pub backoff: Duration,
    /// How single-use swaps are spelled (default: by the server's version).
    pub compat: Compat,
    /// Redis Cluster: the URL is a seed node; keys go to the node serving their slot.
    pub cluster: bool,
    pub keys: Keyring,
    /// Sealed into every value with the database and the prefix (see [`seal::Binding`]): two
    /// fleets that share a key file and a Redis but not a label cannot resume each other's
    /// values. Default empty.
    pub fleet: String,
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
    /// Idle connections of this process, each done with its last operation.
    idle: Vec<Link>,
    breaker: Breaker,
    resolver: Resolver,
    /// Writes waiting for this process's writer thread, and their bytes.
    queue: VecDeque<Job>,
    queued_bytes: usize,
    /// Writes the writer has taken from the queue and not finished yet.
    in_flight: usize,
    /// The writer sleeps on `wake` (a write must wake it).
    writer_waiting: bool,
    /// This process's writer thread, started by the first queued write.
    writer: Option<JoinHandle<()>>,
    closing: bool,
    /// Redis Cluster: which node serves which slots (fetched lazily, refreshed when stale).
    slots: Option<SlotMap>,
    /// Sentinel: the master the sentinels last named (asked lazily, again when the answer is
    /// older than [`Named::FRESH_FOR`] or the master failed).
    master: Option<Named>,
}

/// A sentinel's answer: where the master is, which sentinel (index in the URL) said so, and
/// when (`None`: to be asked again before the next operation).
#[derive(Clone, Copy, Debug)]
struct Named {
    addr: SocketAddr,
    by: usize,
    asked: Option<Instant>,
}

impl Named {
    /// How long an answer is used without asking again. The old master of a failover keeps
    /// saying `ROLE` master (and taking writes) until the sentinels demote it, ~10 s after
    /// they named the new one: a pooled connection to it would take a used ticket's
    /// tombstone where the new master never sees it. Asking once a second bounds that
    /// window by the sentinels' own switch plus this; it costs one sentinel query per second
    /// per process that has traffic.
    const FRESH_FOR: Duration = Duration::from_secs(1);

    fn fresh(&self) -> bool {
        self.asked.is_some_and(|t| t.elapsed() < Named::FRESH_FOR)
    }
}

/// The slot ranges of a cluster and their masters, from CLUSTER SLOTS.
struct SlotMap {
    ranges: Vec<(u16, u16, SocketAddr)>,
    /// Every node the map names, masters and replicas: the only addresses a redirection may
    /// send a worker to.
    nodes: Vec<SocketAddr>,
    fetched: Instant,
    /// A node failed or redirected: fetch the map again before the next routing.
    stale: bool,
}

impl SlotMap {
    /// Refetched this often even without trouble (new nodes, resharding).
    const MAX_AGE: Duration = Duration::from_secs(30);

    fn node(&self, slot: u16) -> Option<SocketAddr> {
        self.ranges
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2)
    }

    fn usable(&self) -> bool {
        !self.stale && self.fetched.elapsed() < Self::MAX_AGE
    }

    /// From a CLUSTER SLOTS reply: `[[start, end, [ip, port, ...], replicas...], ...]`.
    fn parse(r: Reply, seed: IpAddr) -> FResult<SlotMap> {
        let bad = || Failure::Protocol("unexpected CLUSTER SLOTS reply");
        let Reply::Array(Some(items)) = r else {
            return Err(bad());
        };
        let mut ranges = Vec::with_capacity(items.len());
        let mut nodes = Vec::new();
        for item in items {
            let Reply::Array(Some(f)) = item else {
                return Err(bad());
            };
            let (Some(Reply::Int(a)), Some(Reply::Int(b)), Some(Reply::Array(Some(_)))) =
                (f.first(), f.get(1), f.get(2))
            else {
                return Err(bad());
            };
            let (Ok(a), Ok(b)) = (u16::try_from(*a), u16::try_from(*b)) else {
                return Err(bad());
            };
            for (i, node) in f[2..].iter().enumerate() {
                let addr = Self::node_address(node, seed)?;
                if i == 0 {
                    ranges.push((a, b, addr));
                }
                if !nodes.contains(&addr) {
                    nodes.push(addr);
                }
            }
        }
        Ok(SlotMap {
            ranges,
            nodes,
            fetched: Instant::now(),
            stale: false,
        })
    }
}

impl SlotMap {
    /// A node of a range, `[ip, port, ...]`; an empty IP means "the address you reached me
    /// on": the seed's.
    fn node_address(node: &Reply, seed: IpAddr) -> FResult<SocketAddr> {
        let bad = || Failure::Protocol("unexpected CLUSTER SLOTS reply");
        let Reply::Array(Some(node)) = node else {
            return Err(bad());
        };
        let (Some(Reply::Bulk(Some(ip))), Some(Reply::Int(port))) = (node.first(), node.get(1))
        else {
            return Err(bad());
        };
        let ip = if ip.is_empty() {
            seed
        } else {
            std::str::from_utf8(ip)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Failure::Protocol(
                    "a cluster node announced a host name: announce IP addresses",
                ))?
        };
        let port = u16::try_from(*port).map_err(|_| bad())?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Redis Cluster's slot of a key: CRC16 (XMODEM) of the key, or of its `{hash tag}`, mod 16384.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|i| {
            let rest = &key[i + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&j| j > 0)
                .map(|j| &rest[..j])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3fff
}

/// A connection and what its server understands.
struct Link {
    conn: Conn,
    dialect: Dialect,
    /// The node it is connected to (cluster routing picks pooled links by it).
    addr: Option<SocketAddr>,
}

/// How single-use swaps are spelled on a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// Redis 6.2 and later (and Valkey): `SET key value GET` returns the old value atomically.
    Native,
    /// Older servers: the same swap as a Lua script (EVAL, Redis 2.6 and later).
    Scripts,
}

/// Which [`Dialect`] to use: the server's version decides, unless the configuration forces
/// the scripts (a proxy that misreports its version; tests of the fallback).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compat {
    #[default]
    Detect,
    Scripts,
}

/// A write for the writer thread.
enum Job {
    /// Seal, then `SET key sealed PX ttl NX` (sealing is the writer's work too: it is most of
    /// what a store costs on this side).
    Store {
        id: Vec<u8>,
        /// The session DER (it holds the master secret: wiped when the job is dropped).
        der: Vec<u8>,
        created: u32,
        expires: u32,
        ttl_ms: u64,
    },
    /// The session was removed here: turn its value into a tombstone, if it is there.
    Remove { key: Vec<u8> },
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Store { id, der, .. } => {
                2 * id.len() + der.len() + crate::remote::seal::OVERHEAD + 64
            }
            Job::Remove { key } => key.len() + 64,
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Job::Store { der, .. } = self {
            crate::util::wipe(der);
        }
    }
}

/// The value a used (or removed) session's key holds until the session would have expired:
/// a later swap sees it and refuses the ticket. Shorter than any sealed value, so it never
/// opens as one.
pub const TOMBSTONE: &[u8] = b"SSR1:used";

/// Swap in a tombstone, creating it if the key is missing (PX ARGV[2] ms); returns the old
/// value. For servers without `SET ... GET`.
const SWAP_SCRIPT: &[u8] = b"local v = redis.call('GET', KEYS[1]) \
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return v";
/// Swap in a tombstone only if the key exists, keeping its expiry; returns the old value.
const SWAP_EXISTING_SCRIPT: &[u8] = b"local v = redis.call('GET', KEYS[1]) \
    if v then local t = redis.call('PTTL', KEYS[1]) \
    if t > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', t) \
    else redis.call('SET', KEYS[1], ARGV[1]) end end return v";

/// Most writes a process queues (a new session or a removal each); more are dropped, counted.
const MAX_QUEUE: usize = 4096;
/// Most bytes of queued writes per process.
const MAX_QUEUE_BYTES: usize = 4 << 20;
/// Most writes the writer sends in one pipelined batch.
const BATCH: usize = 64;

struct Shared {
    target: Target,
    /// Set for `rediss://`: every connection is TLS, verified with this context.
    tls: Option<ClientCtx>,
    prefix: String,
    timeout: Duration,
    compat: Compat,
    cluster: bool,
    keys: Keyring,
    /// Where values live, sealed into each (database, prefix, fleet label).
    binding: Binding,
    backoff: Duration,
    /// Where every operation counts, the writer thread's included (into nothing once the
    /// cache that owns the segment is gone).
    counters: RemoteCountersRef,
    /// This process's [`PerProcess`] (never null; see [`Shared::here`]).
    per_process: AtomicPtr<PerProcess>,
}

/// The state of one process. A child of fork() must never touch its parent's: the writer
/// thread may have held the mutex at the fork, and the child's copy of it then stays locked
/// forever (no thread exists there to unlock it). So the state sits behind a pointer tagged
/// with its process id; a process that finds another pid there builds its own and leaves
/// the inherited copy alone (leaked: its connections, queue and thread handle are the
/// parent's, and may be half-way through a change). Leaked, not lost: the new state points at
/// the one it replaced, and [`ABANDONED`] keeps those of a tier freed in a child, so a leak
/// checker (valgrind in a forked worker) sees them still reachable rather than "definitely
/// lost".
struct PerProcess {
    pid: u32,
    /// The parent's state this one replaced after a fork (null in the process that made the
    /// tier): never touched, only kept reachable.
    inherited: *mut PerProcess,
    /// Next in [`ABANDONED`], once this is on it.
    next_abandoned: AtomicPtr<PerProcess>,
    state: Mutex<ProcessState>,
    /// Wakes the writer thread.
    wake: Condvar,
}

/// The inherited states of tiers freed in a forked process (see [`PerProcess`]), a stack
/// linked through `next_abandoned`: pushed with one compare-and-swap, so no lock a fork could
/// have left held is ever taken.
static ABANDONED: AtomicPtr<PerProcess> = AtomicPtr::new(std::ptr::null_mut());

impl PerProcess {
    fn new(pid: u32, backoff: Duration, inherited: *mut PerProcess) -> PerProcess {
        PerProcess {
            pid,
            inherited,
            next_abandoned: AtomicPtr::new(std::ptr::null_mut()),
            state: Mutex::new(ProcessState {
                idle: Vec::new(),
                breaker: Breaker::new(backoff),
                resolver: Resolver::default(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                in_flight: 0,
                writer_waiting: false,
                writer: None,
                closing: false,
                slots: None,
                master: None,
            }),
            wake: Condvar::new(),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let p = *self.per_process.get_mut();
        // SAFETY: never null; ours to free only if this process made it (an inherited one
        // is left alone, see `PerProcess`).
        if unsafe { (*p).pid } == std::process::id() {
            // SAFETY: ours (made by this process), and nothing else refers to it once `self`
            // goes away.
            let mine = unsafe { Box::from_raw(p) };
            abandon(mine.inherited);
        }
    }
}

/// Keep `p` (an inherited state, or null) reachable for the life of the process.
fn abandon(p: *mut PerProcess) {
    if p.is_null() {
        return;
    }
    // SAFETY: an inherited state is never freed; only its `next_abandoned` link, which no
    // other code reads or writes, is set here, before it is published on the stack.
    let link = unsafe { &(*p).next_abandoned };
    let mut head = ABANDONED.load(Acquire);
    loop {
        link.store(head, Relaxed);
        match ABANDONED.compare_exchange_weak(head, p, AcqRel, Acquire) {
            Ok(_) => return,
            Err(now) => head = now,
        }
    }
}

pub struct Remote {
    shared: Arc<Shared>,
}

/// Largest bulk reply accepted: the largest sealed session. Anything bigger is not ours, and
/// the connection is dropped before it is read.
pub const REPLY_CAP: usize =
    crate::store::layout::MAX_SESSION_BYTES + crate::remote::seal::OVERHEAD;

/// What a remote lookup gave.
pub enum Fetched {
    Hit(Opened),
    Miss,
    /// Down, slow, skipped or answered with something that did not authenticate.
    Unavailable,
}

/// What consuming a TLS 1.3 ticket found in this host's memory gave, fleet-wide.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Its value was in Redis and is a tombstone now: this is the one use.
    Consumed,
    /// Redis never had it (its store failed, was dropped or is still queued; or Redis lost
    /// it): no other host can have resumed it, and the tombstone left now keeps a late store
    /// from putting it there.
    NeverStored,
    /// A tombstone: resumed (or removed) on some host already. Refuse it.
    UsedElsewhere,
    /// Redis could not be asked, or could not store the tombstone (down, slow, out of memory,
    /// a read-only replica): single use is only known for this host. A ticket from this
    /// host's own memory resumes without early data, so a replay during a partition cannot be
    /// 0-RTT; a ticket read from Redis is refused (every host could read it again).
    Unconfirmed,
}

/// A checked tier configuration, not yet counting anywhere: [`Planned::bind`] makes the
/// [`Remote`].
pub struct Planned {
    target: Target,
    tls: Option<ClientCtx>,
    prefix: String,
    timeout: Duration,
    compat: Compat,
    cluster: bool,
    keys: Keyring,
    binding: Binding,
    backoff: Duration,
}

impl Planned {
    /// The tier, counting into `counters` (its owner's segment: [`Cache::remote_counters`]).
    ///
    /// [`Cache::remote_counters`]: crate::store::cache::Cache::remote_counters
    pub fn bind(self, counters: RemoteCountersRef) -> Remote {
        let Planned {
            target,
            tls,
            prefix,
            timeout,
            compat,
            cluster,
            keys,
            binding,
            backoff,
        } = self;
        let here = PerProcess::new(std::process::id(), backoff, std::ptr::null_mut());
        Remote {
            shared: Arc::new(Shared {
                target,
                tls,
                prefix,
                timeout,
                compat,
                cluster,
                keys,
                binding,
                backoff,
                counters,
                per_process: AtomicPtr::new(Box::into_raw(Box::new(here))),
            }),
        }
    }
}

impl Remote {
    /// Parse the URL and count into `counters` (nothing is connected yet: connections are
    /// made in the process that uses them, after fork). [`Remote::plan`] then
    /// [`Planned::bind`].
    pub fn new(cfg: RemoteConfig, counters: RemoteCountersRef) -> Result<Remote> {
        Ok(Remote::plan(cfg)?.bind(counters))
    }

    /// Check and parse `cfg` (URL, TLS settings, limits) without counters yet: what a
    /// configuration check needs, and what a cache's creation binds to its segment.
    pub fn plan(mut cfg: RemoteConfig) -> Result<Planned> {
        // The URL may hold a password: name the problem, not the URL, and wipe it once
        // parsed (the password lives on only in the target's `Secret`).
        let parsed = Target::parse(&cfg.url);
        wipe_string(&mut cfg.url);
        let target = parsed.map_err(|m| {
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
        let sentinel = target.sentinel_master.is_some();
        if sentinel && cfg.cluster {
            return Err(Error::new(
                ErrorKind::Invalid,
                "remote URL: redis+sentinel:// names sentinels, not a Redis Cluster: turn remote_cluster off (or give the cluster's nodes in a redis:// URL)",
            ));
        }
        if !cfg.cluster && !sentinel && !target.more_seeds.is_empty() {
            return Err(Error::new(
                ErrorKind::Invalid,
                "remote URL: several hosts need remote_cluster (they are a Redis Cluster's seed nodes); for one Redis, give one host",
            ));
        }
        if cfg.cluster && target.db != 0 {
            return Err(Error::new(
                ErrorKind::Invalid,
                "remote URL: Redis Cluster has only database 0 (end the URL with /0 or nothing)",
            ));
        }
        check_fleet_label(&cfg.fleet)?;
        Ok(Planned {
            binding: Binding::new(target.db, &cfg.prefix, &cfg.fleet),
            target,
            tls,
            prefix: cfg.prefix,
            timeout: cfg.timeout,
            compat: cfg.compat,
            cluster: cfg.cluster,
            keys: cfg.keys,
            backoff: cfg.backoff,
        })
    }

    /// Seal a new session and queue it for this process's writer thread (started now if it
    /// is not running): the handshake does not wait for Redis. A full queue drops it,
    /// counted in `dropped`.
    pub fn store(&self, id: &[u8], der: &[u8], created: u32, expires: u32, now: u32) {
        if let Some(job) = self.store_job(id, der, created, expires, now) {
            self.shared.enqueue(job);
        }
    }

    /// [`Remote::store`] on the caller's thread, waiting for Redis (benchmarks and tests).
    pub fn store_now(&self, id: &[u8], der: &[u8], created: u32, expires: u32, now: u32) {
        if let Some(job) = self.store_job(id, der, created, expires, now) {
            self.shared.write_batch(vec![job]);
        }
    }

    fn store_job(
        &self,
        id: &[u8],
        der: &[u8],
        created: u32,
        expires: u32,
        now: u32,
    ) -> Option<Job> {
        let ttl_ms = u64::from(expires.saturating_sub(now)) * 1000;
        (ttl_ms > 0).then(|| Job::Store {
            id: id.to_vec(),
            der: der.to_vec(),
            created,
            expires,
            ttl_ms,
        })
    }

    /// A session was removed here (OpenSSL's remove callback): queue turning its remote copy
    /// into a tombstone. Never does network I/O on the caller's thread (OpenSSL may hold the
    /// SSL_CTX lock while calling).
    pub fn remove(&self, id: &[u8]) {
        self.shared.enqueue(Job::Remove {
            key: self.shared.key(id),
        });
    }

    /// Wait until this process's queued writes have been sent (or dropped), at most `limit`.
    /// Returns whether the queue is empty (tests and benchmarks).
    pub fn flush(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            let st = self.shared.lock();
            if st.queue.is_empty() && st.in_flight == 0 {
                return true;
            }
            drop(st);
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Look a session up after a local miss. With `take` (TLS 1.3 single use) the value is
    /// swapped for a tombstone in the same step, so one host in the fleet gets it.
    pub fn fetch(&self, id: &[u8], take: bool, now: u32) -> Fetched {
        self.fetch_within(id, take, now, self.deadline())
    }

    /// A deadline one remote timeout from now, for several operations that must fit in one
    /// timeout together (a cross-host TLS 1.3 resumption: read, then consume).
    pub fn deadline(&self) -> Deadline {
        Deadline::after(self.shared.timeout)
    }

    /// [`Remote::fetch`] finished by `dl`.
    pub fn fetch_within(&self, id: &[u8], take: bool, now: u32, dl: Deadline) -> Fetched {
        let c = &self.shared.counters;
        let key = self.shared.key(id);
        let got = self.shared.run(c, Some(&key), dl, |conn, d, dl| {
            if take {
                swap(conn, d, &key, None, dl)
            } else {
                bulk(conn.call(&[b"GET", &key], dl)?)
            }
        });
        match got {
            Some(Some(v)) if v == TOMBSTONE => {
                c.get().misses.fetch_add(1, Relaxed);
                Fetched::Miss
            }
            Some(Some(mut value)) => {
                let opened = self.shared.keys.open(&self.shared.binding, id, &value);
                crate::util::wipe(&mut value);
                match opened {
                    Ok(o) if o.expires > now => {
                        c.get().hits.fetch_add(1, Relaxed);
                        Fetched::Hit(o)
                    }
                    Ok(_) => {
                        c.get().misses.fetch_add(1, Relaxed);
                        Fetched::Miss
                    }
                    Err(why) => {
                        c.get().rejected.fetch_add(1, Relaxed);
                        if why == Refused::OldFormat {
                            c.get().v6().old_format.fetch_add(1, Relaxed);
                        }
                        log_refused(why);
                        Fetched::Unavailable
                    }
                }
            }
            Some(None) => {
                c.get().misses.fetch_add(1, Relaxed);
                Fetched::Miss
            }
            None => Fetched::Unavailable,
        }
    }

    /// Consume, fleet-wide, a TLS 1.3 ticket this host found (and took) in its own memory:
    /// swap its key for a tombstone that lives until `expires`. See [`Taken`].
    pub fn take_local(&self, id: &[u8], expires: u32, now: u32) -> Taken {
        self.take_within(id, expires, now, self.deadline())
    }

    /// [`Remote::take_local`] finished by `dl`. Also consumes a ticket a [`Remote::fetch`]
    /// read from Redis (once its server name is checked), within that fetch's deadline.
    pub fn take_within(&self, id: &[u8], expires: u32, now: u32, dl: Deadline) -> Taken {
        let c = &self.shared.counters;
        let key = self.shared.key(id);
        let ttl = (u64::from(expires.saturating_sub(now)).max(1) * 1000).to_string();
        let got = self.shared.run(c, Some(&key), dl, |conn, d, dl| {
            swap(conn, d, &key, Some(ttl.as_bytes()), dl)
        });
        match got {
            Some(Some(v)) if v == TOMBSTONE => Taken::UsedElsewhere,
            Some(Some(mut v)) => {
                crate::util::wipe(&mut v);
                Taken::Consumed
            }
            Some(None) => Taken::NeverStored,
            None => {
                c.get().unconfirmed.fetch_add(1, Relaxed);
                Taken::Unconfirmed
            }
        }
    }
}

impl Drop for Remote {
    /// Stops this process's writer thread (it finishes its batch, bounded by the timeout).
    fn drop(&mut self) {
        let writer = {
            let mut st = self.shared.lock();
            st.closing = true;
            st.writer.take()
        };
        self.shared.here().wake.notify_all();
        if let Some(w) = writer {
            let _ = w.join();
        }
    }
}

/// Longest fleet label: a name, not a secret (it is not stored, only sealed into values).
const MAX_FLEET_LABEL: usize = 64;

/// A fleet label is printable ASCII, at most [`MAX_FLEET_LABEL`] bytes: it is compared
/// byte for byte on every host, so invisible differences must not creep in.
fn check_fleet_label(label: &str) -> Result<()> {
    if label.len() > MAX_FLEET_LABEL || !label.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "remote fleet label must be at most {MAX_FLEET_LABEL} printable ASCII characters without spaces (the same on every host of the fleet), e.g. \"prod-eu\""
            ),
        ));
    }
    Ok(())
}

/// Log why a value from Redis was refused: a value sealed by 0.4 once per process (a fleet
/// being upgraded has many, for one session lifetime), anything else every time.
fn log_refused(why: Refused) {
    match why {
        Refused::OldFormat => {
            static LOGGED: AtomicU32 = AtomicU32::new(0);
            if LOGGED.swap(std::process::id(), Relaxed) != std::process::id() {
                log::emit(
                    Level::Info,
                    "remote tier: dropped a value sealed by shmsesscache 0.4 (not bound to its database, key prefix and fleet): such values are refused and gone within one session lifetime",
                );
            }
        }
        Refused::NotAuthentic => log::emit(
            Level::Warning,
            "remote tier: dropped a value that does not authenticate (tampered, sealed with a key not in the key file, or copied from another database, key prefix or fleet label)",
        ),
    }
}

/// Overwrite a string that held a secret (zeros are valid UTF-8).
pub fn wipe_string(s: &mut str) {
    // SAFETY: only zero bytes are written, which keeps the string valid UTF-8.
    crate::util::wipe(unsafe { s.as_bytes_mut() });
}

/// A string holding a secret (a URL with a password), wiped when dropped unless taken.
pub struct SecretText(pub String);

impl SecretText {
    /// The string, for a consumer that wipes it (e.g. [`Remote::new`]).
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        wipe_string(&mut self.0);
    }
}

/// `Some(value)`, `None` (no such key), or a protocol failure for any other reply.
fn bulk(r: Reply) -> FResult<Option<Vec<u8>>> {
    match r {
        Reply::Bulk(v) => Ok(v),
        _ => Err(Failure::Protocol("expected a bulk string")),
    }
}

/// Put a tombstone in `key` and return what it held, atomically. `ttl` (ms): create it with
/// that lifetime even if the key is missing; `None`: only if the key exists, keeping its
/// expiry.
fn swap(
    conn: &mut Conn,
    d: Dialect,
    key: &[u8],
    ttl: Option<&[u8]>,
    dl: Deadline,
) -> FResult<Option<Vec<u8>>> {
    bulk(match (d, ttl) {
        (Dialect::Native, Some(t)) => conn.call(&[b"SET", key, TOMBSTONE, b"PX", t, b"GET"], dl)?,
        (Dialect::Native, None) => {
            conn.call(&[b"SET", key, TOMBSTONE, b"XX", b"KEEPTTL", b"GET"], dl)?
        }
        (Dialect::Scripts, Some(t)) => {
            conn.call(&[b"EVAL", SWAP_SCRIPT, b"1", key, TOMBSTONE, t], dl)?
        }
        (Dialect::Scripts, None) => {
            conn.call(&[b"EVAL", SWAP_EXISTING_SCRIPT, b"1", key, TOMBSTONE], dl)?
        }
    })
}

impl Shared {
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

    /// This process's state: the one made here, or a fresh one if the pointer still holds
    /// the parent's (see [`PerProcess`]).
    fn here(&self) -> &PerProcess {
        let pid = std::process::id();
        loop {
            let p = self.per_process.load(Acquire);
            // SAFETY: never null, and freed only when `self` goes away.
            if unsafe { (*p).pid } == pid {
                return unsafe { &*p };
            }
            let fresh = Box::into_raw(Box::new(PerProcess::new(pid, self.backoff, p)));
            if self
                .per_process
                .compare_exchange(p, fresh, AcqRel, Acquire)
                .is_err()
            {
                // Another thread of this (forked) process was first.
                // SAFETY: ours, never shared.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        self.here().state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(self: &Arc<Self>, job: Job) {
        let c = &self.counters;
        let mut st = self.lock();
        if st.closing {
            return;
        }
        let bytes = job.bytes();
        if st.queue.len() >= MAX_QUEUE || st.queued_bytes + bytes > MAX_QUEUE_BYTES {
            c.get().dropped.fetch_add(1, Relaxed);
            return;
        }
        st.queue.push_back(job);
        st.queued_bytes += bytes;
        if st.writer.is_none() {
            let me = Arc::clone(self);
            match std::thread::Builder::new()
                .name("shmsess-remote".into())
                .spawn(move || me.writer_loop())
            {
                Ok(h) => st.writer = Some(h),
                Err(_) => {
                    // No thread: nothing would ever send the queue.
                    let n = st.queue.len() as u64;
                    st.queue.clear();
                    st.queued_bytes = 0;
                    c.get().dropped.fetch_add(n, Relaxed);
                    return;
                }
            }
        }
        // Only a sleeping writer needs the (system call) wake-up; a busy one sees the queue
        // when its batch is done (writes that arrive meanwhile make the next batch). No
        // lingering to batch more: every microsecond a write waits is a window in which a
        // client resuming on another host misses it.
        let wake = st.writer_waiting;
        drop(st);
        if wake {
            self.here().wake.notify_one();
        }
    }

    /// The writer thread: sends queued writes in pipelined batches until the Remote drops.
    fn writer_loop(self: Arc<Self>) {
        loop {
            let batch = {
                let mut st = self.lock();
                while st.queue.is_empty() && !st.closing {
                    st.writer_waiting = true;
                    st = self.here().wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.writer_waiting = false;
                if st.closing {
                    // The handle is going away: what is left is dropped, counted, rather than
                    // holding its owner for a timeout per batch.
                    let left = st.queue.len() as u64;
                    self.counters.get().dropped.fetch_add(left, Relaxed);
                    st.queue.clear();
                    return;
                }
                let n = st.queue.len().min(BATCH);
                let batch: Vec<Job> = st.queue.drain(..n).collect();
                st.queued_bytes -= batch.iter().map(Job::bytes).sum::<usize>();
                st.in_flight = n;
                batch
            };
            self.write_batch(batch);
            self.lock().in_flight = 0;
        }
    }

    /// Seal `jobs` and send them pipelined on one connection under one deadline; count what
    /// was stored, and what was lost if the batch failed.
    fn write_batch(&self, jobs: Vec<Job>) {
        let c = &self.counters;
        /// A job ready to send: an encoded SET of a sealed value, or a key to tombstone (its
        /// command depends on the connection's dialect).
        enum Ready {
            /// The encoded command and its key.
            Set(Vec<u8>, Vec<u8>),
            Remove(Vec<u8>),
        }
        let mut ready = Vec::with_capacity(jobs.len());
        for j in &jobs {
            match j {
                Job::Store {
                    id,
                    der,
                    created,
                    expires,
                    ttl_ms,
                } => {
                    let Ok(value) = self.keys.seal(&self.binding, id, der, *created, *expires)
                    else {
                        c.get().errors.fetch_add(1, Relaxed);
                        continue;
                    };
                    let (key, ttl) = (self.key(id), ttl_ms.to_string());
                    let mut cmd = Vec::new();
                    resp::encode(
                        &mut cmd,
                        &[b"SET", &key, &value, b"PX", ttl.as_bytes(), b"NX"],
                    );
                    ready.push(Ready::Set(cmd, key));
                }
                Job::Remove { key } => ready.push(Ready::Remove(key.clone())),
            }
        }
        drop(jobs); // wipes the DERs
                    // One pipelined batch; in a cluster, one per job (its key decides the node).
        let groups: Vec<&[Ready]> = if self.cluster {
            ready.chunks(1).collect()
        } else {
            vec![&ready[..]]
        };
        // One deadline for the whole batch, cluster or not: the owner's shmsess_cache_free
        // waits for it (a deadline per job would be up to BATCH timeouts).
        let dl = Deadline::after(self.timeout);
        for (i, &group) in groups.iter().enumerate() {
            let key = match group.first() {
                Some(Ready::Set(_, key)) | Some(Ready::Remove(key)) => key.clone(),
                None => continue,
            };
            if self.lock().closing || dl.left().is_err() {
                // Closing or out of time: the rest is dropped, counted (not a failure of
                // Redis, so not for the breaker).
                let rest: usize = groups[i..].iter().map(|g| g.len()).sum();
                c.get().dropped.fetch_add(rest as u64, Relaxed);
                break;
            }
            let sent = self.run(c, Some(&key), dl, |conn, d, dl| {
                let mut out = Vec::new();
                for r in group {
                    match (r, d) {
                        (Ready::Set(cmd, _), _) => out.extend_from_slice(cmd),
                        (Ready::Remove(key), Dialect::Native) => {
                            resp::encode(&mut out, &[b"SET", key, TOMBSTONE, b"XX", b"KEEPTTL"])
                        }
                        (Ready::Remove(key), Dialect::Scripts) => resp::encode(
                            &mut out,
                            &[b"EVAL", SWAP_EXISTING_SCRIPT, b"1", key, TOMBSTONE],
                        ),
                    }
                }
                conn.send(&out, dl)?;
                let mut stored = 0u64;
                for r in group {
                    // +OK: stored; nil: NX found the key (a tombstone: the ticket was used first).
                    let reply = conn.recv(dl)?.into_result()?;
                    if matches!(r, Ready::Set(..)) && matches!(reply, Reply::Simple(_)) {
                        stored += 1;
                    }
                }
                Ok(stored)
            });
            match sent {
                Some(stored) => c.get().stores.fetch_add(stored, Relaxed),
                None => c.get().dropped.fetch_add(group.len() as u64, Relaxed),
            };
        }
    }

    /// Run one operation on a connection of this process, finished by `dl`, under the
    /// breaker. `None` if it was skipped or failed (counted either way). A pooled connection
    /// the server closed (restarted Redis, idle timeout) is replaced once, within the same
    /// deadline.
    fn run<T>(
        &self,
        c: &RemoteCountersRef,
        key: Option<&[u8]>,
        dl: Deadline,
        op: impl Fn(&mut Conn, Dialect, Deadline) -> FResult<T>,
    ) -> Option<T> {
        {
            let st = self.lock();
            if !st.breaker.allows(Instant::now()) {
                c.get().skipped.fetch_add(1, Relaxed);
                return None;
            }
        }
        let result = match (self.cluster, key) {
            (true, Some(key)) => self.run_in_cluster(key, &op, dl),
            _ if self.target.sentinel_master.is_some() => {
                self.run_via_sentinels(&op, dl).map_err(Failure::reason)
            }
            _ => self.run_on(None, false, &op, dl),
        };
        // The log message is made under the lock and emitted after it: the application's
        // callback may be slow, and must not hold other threads out of the tier.
        let (v, message) = {
            let mut st = self.lock();
            match result {
                Ok((v, link)) => {
                    if st.idle.len() < MAX_IDLE {
                        st.idle.push(link);
                    }
                    let recovered = st.breaker.success();
                    (
                        Some(v),
                        recovered.then(|| (Level::Info, "remote tier: working again".to_owned())),
                    )
                }
                Err(f) => {
                    if f == Failure::Timeout {
                        c.get().timeouts.fetch_add(1, Relaxed);
                    } else {
                        c.get().errors.fetch_add(1, Relaxed);
                    }
                    let tripped = st.breaker.failure(Instant::now());
                    let backoff = st.breaker.backoff.as_millis();
                    (
                        None,
                        tripped.then(|| {
                            (
                                Level::Warning,
                                format!(
                                    "remote tier: {} failures in a row (last: {f}); skipping it for {backoff} ms",
                                    Breaker::TRIP_AFTER
                                ),
                            )
                        }),
                    )
                }
            }
        };
        if let Some((level, m)) = message {
            log::emit(level, &m);
        }
        v
    }

    /// Run `op` on a pooled connection to `node` (any, for `None`: the URL's server), or a
    /// new one; a pooled connection the server closed is replaced (before use if that shows,
    /// else once after a failure that wrote nothing). `asking`: send ASKING
    /// first (a cluster slot being migrated).
    fn run_on<T>(
        &self,
        node: Option<SocketAddr>,
        asking: bool,
        op: &impl Fn(&mut Conn, Dialect, Deadline) -> FResult<T>,
        dl: Deadline,
    ) -> FResult<(T, Link)> {
        let op = |conn: &mut Conn, d: Dialect, dl: Deadline| {
            if asking {
                conn.call(&[b"ASKING"], dl)?.expect_ok()?;
            }
            op(conn, d, dl)
        };
        let pooled = {
            let mut st = self.lock();
            let i = st
                .idle
                .iter()
                .rposition(|l| node.is_none() || l.addr == node);
            i.map(|i| st.idle.swap_remove(i))
        };
        match pooled {
            Some(mut link) if link.conn.idle_and_open() => {
                let before = link.conn.written();
                match op(&mut link.conn, link.dialect, dl) {
                    Ok(v) => Ok((v, link)),
                    // Retried only if nothing of it was written: a command that reached
                    // the server may have been done (a swap done twice would find its own
                    // tombstone and refuse a ticket used once).
                    Err(f) if f.is_stale_connection() && link.conn.written() == before => {
                        self.connect_and_run(node, &op, dl)
                    }
                    Err(f) => Err(f),
                }
            }
            // Closed by the server while idle (a restart, an idle timeout), or holding bytes
            // nobody asked for: replaced before anything is sent on it.
            Some(_) | None => self.connect_and_run(node, &op, dl),
        }
    }

    /// Run `op` for `key` on the cluster node serving its slot: the slot map is fetched when
    /// missing or stale; MOVED updates it and follows once, ASK is followed once; all within
    /// `dl`. A redirection is followed only to a node of the map (see
    /// [`Shared::redirect_target`]).
    fn run_in_cluster<T>(
        &self,
        key: &[u8],
        op: &impl Fn(&mut Conn, Dialect, Deadline) -> FResult<T>,
        dl: Deadline,
    ) -> FResult<(T, Link)> {
        let slot = hash_slot(key);
        let mut node = self.node_for(slot, dl)?;
        let mut asking = false;
        for _ in 0..3 {
            match self.run_on(Some(node), asking, op, dl) {
                Err(Failure::Moved(to)) => {
                    self.mark_map_stale();
                    (node, asking) = (self.redirect_target(to, dl)?, false);
                }
                Err(Failure::Ask(to)) => (node, asking) = (self.redirect_target(to, dl)?, true),
                Err(f) => {
                    // A node down or in trouble: the map may have changed (failover).
                    self.mark_map_stale();
                    return Err(f);
                }
                ok => return ok,
            }
        }
        Err(Failure::Protocol("too many cluster redirections"))
    }

    fn mark_map_stale(&self) {
        if let Some(m) = self.lock().slots.as_mut() {
            m.stale = true;
        }
    }

    /// Where a MOVED or ASK to `to` may be followed: `to` itself if the slot map names it as a
    /// node of the cluster, else only if a map fetched again now (the configured seeds first)
    /// names it. Anything else is refused without a connection: a reply (from a node, or
    /// from whoever sits between it and us without TLS) must never send this worker, and the
    /// AUTH password with it, to an address of its choosing.
    fn redirect_target(&self, to: SocketAddr, dl: Deadline) -> FResult<SocketAddr> {
        if self.map_names(to) {
            return Ok(to);
        }
        let refreshed = self.refresh_map(self.seeds_then_known(), dl);
        if self.map_names(to) {
            return Ok(to);
        }
        refreshed?;
        self.counters
            .get()
            .v6()
            .redirects_refused
            .fetch_add(1, Relaxed);
        log::emit(
            Level::Warning,
            &format!(
                "remote tier: refused a cluster redirection to {to}, which is not a node of the cluster's slot map"
            ),
        );
        Err(Failure::Protocol(
            "redirected to an address that is not a node of the slot map",
        ))
    }

    fn map_names(&self, node: SocketAddr) -> bool {
        self.lock()
            .slots
            .as_ref()
            .is_some_and(|m| m.nodes.contains(&node))
    }

    /// The configured seeds (`None`: the URL's own server, its name looked up), then the
    /// nodes the last map named that are not seeds.
    fn seeds_then_known(&self) -> Vec<Option<SocketAddr>> {
        let mut out = self.seeds();
        for n in self.known_nodes() {
            if !out.contains(&Some(n)) {
                out.push(Some(n));
            }
        }
        out
    }

    /// The nodes the last map named first (they are what the cluster was, and a seed may be
    /// down), then the seeds.
    fn known_then_seeds(&self) -> Vec<Option<SocketAddr>> {
        let mut out: Vec<Option<SocketAddr>> = self.known_nodes().into_iter().map(Some).collect();
        for s in self.seeds() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The seed nodes of the configuration, in the URL's order: its first host (`None` when
    /// it is a name, looked up when connecting), then the others.
    fn seeds(&self) -> Vec<Option<SocketAddr>> {
        let first = self
            .target
            .ip()
            .map(|ip| SocketAddr::new(ip, self.target.port));
        let mut out = vec![first];
        for &s in &self.target.more_seeds {
            if !out.contains(&Some(s)) {
                out.push(Some(s));
            }
        }
        out
    }

    /// The masters of the last slot map, each once.
    fn known_nodes(&self) -> Vec<SocketAddr> {
        let st = self.lock();
        let mut nodes: Vec<SocketAddr> = Vec::new();
        for r in st.slots.iter().flat_map(|m| &m.ranges) {
            if !nodes.contains(&r.2) {
                nodes.push(r.2);
            }
        }
        nodes
    }

    /// The master serving `slot`, from the slot map (fetched when missing or stale: from the
    /// nodes the old map named, then the seeds, so a seed that is down or hung is no single
    /// point of failure once a map was had).
    fn node_for(&self, slot: u16, dl: Deadline) -> FResult<SocketAddr> {
        let old = {
            let st = self.lock();
            match &st.slots {
                Some(m) if m.usable() => {
                    return m.node(slot).ok_or(Failure::Protocol("slot not served"))
                }
                Some(m) => m.node(slot),
                None => None,
            }
        };
        match self.refresh_map(self.known_then_seeds(), dl) {
            Ok(()) => self
                .lock()
                .slots
                .as_ref()
                .and_then(|m| m.node(slot))
                .ok_or(Failure::Protocol("slot not served")),
            // No node gave a map: the old one may still be right (a MOVED corrects it).
            Err(_) if old.is_some() && dl.left().is_ok() => Ok(old.unwrap()),
            Err(f) => Err(f),
        }
    }

    /// Fetch the slot map (CLUSTER SLOTS) from the first of `candidates` that answers, each
    /// but the last given half the time left (a hung node leaves time to ask the next one,
    /// and the operation itself needs some too), and keep it.
    fn refresh_map(&self, candidates: Vec<Option<SocketAddr>>, dl: Deadline) -> FResult<()> {
        let fetch = |conn: &mut Conn, _: Dialect, dl: Deadline| {
            conn.set_limits(SLOTS_LIMITS);
            let r = conn.call(&[b"CLUSTER", b"SLOTS"], dl);
            conn.set_limits(resp::Limits::reply(REPLY_CAP));
            let seed = conn
                .peer()
                .map(|a| a.ip())
                .ok_or(Failure::Protocol("no peer address"))?;
            SlotMap::parse(r?, seed)
        };
        let mut last = Failure::Protocol("no cluster node answered");
        for (i, &node) in candidates.iter().enumerate() {
            let Ok(left) = dl.left() else {
                return Err(Failure::Timeout);
            };
            let share = if i + 1 < candidates.len() {
                left / 2
            } else {
                left
            };
            match self.run_on(node, false, &fetch, Deadline::after(share)) {
                Ok((map, link)) => {
                    let mut st = self.lock();
                    st.slots = Some(map);
                    if st.idle.len() < MAX_IDLE {
                        st.idle.push(link);
                    }
                    return Ok(());
                }
                Err(f) => last = f,
            }
        }
        Err(last)
    }

    /// Resolve (if the URL names a host, and no node is given), connect, log in and run `op`,
    /// all before `dl`.
    fn connect_and_run<T>(
        &self,
        node: Option<SocketAddr>,
        op: &impl Fn(&mut Conn, Dialect, Deadline) -> FResult<T>,
        dl: Deadline,
    ) -> FResult<(T, Link)> {
        let addrs = match node {
            Some(a) => vec![a],
            None => self.addresses(dl)?,
        };
        let tcp = resp::tcp_connect(&addrs, dl).inspect_err(|_| self.lock().resolver.forget())?;
        let sentinel_named = self.target.sentinel_master.is_some();
        let (mut conn, version) = self.set_up(tcp, node, dl).map_err(|f| {
            if sentinel_named {
                Failure::Unusable(Box::new(f))
            } else {
                f
            }
        })?;
        let dialect = self.dialect(version);
        let v = op(&mut conn, dialect, dl)?;
        let addr = conn.peer();
        Ok((
            v,
            Link {
                conn,
                dialect,
                addr,
            },
        ))
    }

    /// A new connection's TLS and login (and, with Sentinel, its `ROLE` check), by `dl`:
    /// the connection and the server's version.
    fn set_up(
        &self,
        tcp: std::net::TcpStream,
        node: Option<SocketAddr>,
        dl: Deadline,
    ) -> FResult<(Conn, Option<Version>)> {
        let mut conn = match &self.tls {
            None => Conn::new(Box::new(tcp), REPLY_CAP),
            Some(ctx) => {
                // A cluster node (or a redirection's target) is checked against the IP
                // address it was announced with, not the seed's name: a certificate valid
                // for the seed must not pass for whatever address a map names.
                let name = match node {
                    Some(a) => a.ip().to_string(),
                    None => self.target.host.clone(),
                };
                let tls = TlsStream::connect(ctx, tcp, &name, dl)?;
                Conn::new(Box::new(tls), REPLY_CAP)
            }
        };
        let version = conn.login(&self.target, dl)?;
        if self.target.sentinel_master.is_some() {
            conn.confirm_master(dl)?;
        }
        Ok((conn, version))
    }

    /// `SET ... GET` needs Redis 6.2; an older (or unknown) version gets the scripts, once
    /// logged per process.
    fn dialect(&self, version: Option<Version>) -> Dialect {
        if self.compat == Compat::Scripts {
            return Dialect::Scripts;
        }
        match version {
            Some(v) if v >= NATIVE_SINCE => Dialect::Native,
            _ => {
                static LOGGED: AtomicU32 = AtomicU32::new(0);
                if LOGGED.swap(std::process::id(), Relaxed) != std::process::id() {
                    log::emit(
                        Level::Info,
                        &match version {
                            Some(v) => format!(
                                "remote tier: Redis {v} has no SET ... GET (6.2): single use goes through Lua scripts (EVAL)"
                            ),
                            None => "remote tier: Redis did not say its version (INFO): single use goes through Lua scripts (EVAL)".into(),
                        },
                    );
                }
                Dialect::Scripts
            }
        }
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
}

impl Shared {
    /// Run `op` on the master the sentinels name: the one last named if named less than
    /// [`Named::FRESH_FOR`] ago, else asked for now. A master that fails (refused, closed,
    /// timed out), answers `-READONLY` or `-NOREPLICAS`, or on a new connection fails TLS,
    /// the login or `ROLE` (anything but master) makes the sentinels be asked again, from the
    /// one after the sentinel that named it, once per operation and within `dl`: a failover
    /// is followed by the first operation after it. Named again, the same master is not
    /// retried (`-NOREPLICAS` from a master whose replicas lag is no failover).
    fn run_via_sentinels<T>(
        &self,
        op: &impl Fn(&mut Conn, Dialect, Deadline) -> FResult<T>,
        dl: Deadline,
    ) -> FResult<(T, Link)> {
        let mut master = self.named_master(dl)?;
        let mut asked_again = false;
        loop {
            match self.run_on(Some(master.addr), false, op, dl) {
                Err(f) if master_may_have_moved(&f) => {
                    self.doubt(master.addr);
                    if asked_again || dl.left().is_err() {
                        return Err(f);
                    }
                    asked_again = true;
                    match self.ask_sentinels(master.by + 1, dl) {
                        Ok(again) if again.addr != master.addr => master = again,
                        _ => return Err(f),
                    }
                }
                done => return done,
            }
        }
    }

    /// The master to use now: the last answer while fresh, else the sentinels' answer (the
    /// sentinel that named the last working master asked first); if none answers, the last
    /// answer still (a master that is up goes on working while its sentinels restart).
    fn named_master(&self, dl: Deadline) -> FResult<Named> {
        let known = self.lock().master;
        match known {
            Some(m) if m.fresh() => Ok(m),
            Some(m) => self.ask_sentinels(m.by, dl).or(Ok(m)),
            None => self.ask_sentinels(0, dl),
        }
    }

    /// Ask the sentinels of the URL, in its order from `first` round to the one before it:
    /// the first that answers decides (the master it names is then confirmed by `ROLE`).
    /// Each sentinel but the last gets half the time left, so a hung one leaves time for the
    /// next and for the operation itself. A master at another address than the last answer
    /// is a rediscovery: counted, and the idle connections to the old one dropped (they
    /// would also hold places in the pool the new master's need).
    fn ask_sentinels(&self, first: usize, dl: Deadline) -> FResult<Named> {
        let sentinels = self.target.sentinels();
        let n = sentinels.len();
        let mut last = Failure::Protocol("no sentinel answered");
        for k in 0..n {
            let i = (first + k) % n;
            let left = dl.left()?;
            let share = if k + 1 < n { left / 2 } else { left };
            match self.ask_sentinel(sentinels[i], Deadline::after(share)) {
                Ok(addr) => return Ok(self.record(addr, i)),
                Err(f) => last = f,
            }
        }
        Err(last)
    }

    /// Keep sentinel `by`'s answer `addr`.
    fn record(&self, addr: SocketAddr, by: usize) -> Named {
        let named = Named {
            addr,
            by,
            asked: Some(Instant::now()),
        };
        let mut st = self.lock();
        if let Some(old) = st.master.filter(|m| m.addr != addr) {
            self.counters.get().v6().rediscovered.fetch_add(1, Relaxed);
            st.idle.retain(|l| l.addr != Some(old.addr));
        }
        st.master = Some(named);
        named
    }

    /// One sentinel's answer, on a connection made for it and closed after it (TLS with
    /// `rediss+sentinel://`, its certificate checked against its IP address).
    fn ask_sentinel(&self, sentinel: SocketAddr, dl: Deadline) -> FResult<SocketAddr> {
        let name = self.target.sentinel_master.as_deref().unwrap_or_default();
        let tcp = resp::tcp_connect(&[sentinel], dl)?;
        let mut conn = match &self.tls {
            None => Conn::new(Box::new(tcp), REPLY_CAP),
            Some(ctx) => {
                let tls = TlsStream::connect(ctx, tcp, &sentinel.ip().to_string(), dl)?;
                Conn::new(Box::new(tls), REPLY_CAP)
            }
        };
        conn.ask_sentinel(&self.target, name, dl)
    }

    /// The master at `addr` failed: ask the sentinels before the next operation.
    fn doubt(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if let Some(m) = st.master.as_mut().filter(|m| m.addr == addr) {
            m.asked = None;
        }
    }
}

/// Whether a failure on the master the sentinels named means it may no longer be the master:
/// it is down, hung, a replica now, could not be logged into or set up at all (another
/// service, a sentinel, a Redis with another password: a wrong answer must not pin a worker
/// to it), or cut off from its replicas (`-NOREPLICAS`, with
/// `min-replicas-to-write`: what an old master says once the replica promoted in its place
/// stops following it).
fn master_may_have_moved(f: &Failure) -> bool {
    match f {
        Failure::Io(_) | Failure::Timeout | Failure::NotMaster | Failure::Unusable(_) => true,
        Failure::Server(word) => word == "READONLY" || word == "NOREPLICAS",
        _ => false,
    }
}

/// Most ranges in a CLUSTER SLOTS reply: one per slot at the very most.
const SLOTS_MAX_RANGES: usize = 16384;
/// Largest CLUSTER SLOTS reply read: up to [`SLOTS_MAX_RANGES`] ranges of about 150 bytes
/// (a master and a replica with their ids), with room to spare.
const SLOTS_CAP: usize = 4 << 20;
/// Bounds on a CLUSTER SLOTS reply as a whole. A range with a master and a replica is 13
/// elements (Redis 7 adds a map of metadata per node) and ~700 bytes parsed: room for ~10,000
/// such ranges, far more than a cluster that was ever rebalanced has. With the reply buffer
/// ([`SLOTS_CAP`]) a worker spends at most ~12 MiB on one reply, whatever its nesting.
const SLOTS_LIMITS: resp::Limits = resp::Limits {
    cap: SLOTS_CAP,
    max_array: SLOTS_MAX_RANGES,
    max_elements: 1 << 17,
    max_tree_bytes: 8 << 20,
};

/// First version with `SET ... GET` (and GETDEL).
const NATIVE_SINCE: Version = Version(6, 2, 0);

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

    /// A tier on 127.0.0.1:`port` with a 200 ms timeout and a 60 s back-off.
    fn test_config(port: u16) -> RemoteConfig {
        RemoteConfig {
            url: format!("redis://127.0.0.1:{port}/0"),
            prefix: DEFAULT_PREFIX.into(),
            timeout: Duration::from_millis(200),
            backoff: Duration::from_secs(60),
            ca_file: None,
            compat: Compat::Detect,
            cluster: false,
            keys: Keyring::new(crate::remote::seal::Key::new([1; 32]), Vec::new()),
            fleet: String::new(),
        }
    }

    #[test]
    fn a_refused_connection_counts_and_trips_without_waiting() {
        // A port nothing listens on (bound, never listened): every try is refused at once.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let c = RemoteCountersRef::private();
        let cfg = test_config(port);
        let r = Remote::new(cfg, c.clone()).unwrap();
        for _ in 0..5 {
            assert!(matches!(r.fetch(&[1; 32], false, 0), Fetched::Unavailable));
        }
        assert_eq!(
            c.get().errors.load(Relaxed),
            3,
            "three tries, then the breaker"
        );
        assert_eq!(c.get().skipped.load(Relaxed), 2);
        assert_eq!(c.get().hits.load(Relaxed) + c.get().misses.load(Relaxed), 0);
    }

    #[test]
    fn a_slot_map_of_ten_thousand_ranges_with_replicas_fits_its_bounds() {
        // What Redis 7 sends per range: master and replica, each with its id and an (empty)
        // metadata map.
        let node = |port: u32| {
            format!(
                "*4\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$40\r\n{}\r\n*0\r\n",
                "a".repeat(40)
            )
        };
        let mut reply = "*10000\r\n".to_string();
        for i in 0..10000u32 {
            let (a, b) = (i, i);
            reply += &format!("*4\r\n:{a}\r\n:{b}\r\n{}{}", node(7000), node(7001));
        }
        assert!(reply.len() < SLOTS_CAP, "{}", reply.len());
        let (r, _) = resp::parse_within(reply.as_bytes(), SLOTS_LIMITS)
            .unwrap()
            .unwrap();
        let map = SlotMap::parse(r, IpAddr::from([127, 0, 0, 1])).unwrap();
        assert_eq!(map.ranges.len(), 10000);
    }

    #[test]
    fn a_master_that_is_read_only_or_without_replicas_is_asked_for_again() {
        for word in ["READONLY", "NOREPLICAS"] {
            assert!(
                master_may_have_moved(&Failure::Server(word.into())),
                "{word}"
            );
        }
        assert!(master_may_have_moved(&Failure::NotMaster));
        for f in [Failure::Server("OOM".into()), Failure::TooLarge(1)] {
            assert!(
                !master_may_have_moved(&f),
                "{f}: the master is still the master"
            );
        }
    }

    #[test]
    fn hash_slots_are_redis_clusters() {
        // CLUSTER KEYSLOT on a real server: foo 12182, 123456789 12739 (CRC16 0x31C3).
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"123456789"), 12739);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(
            hash_slot(b"a{}b"),
            hash_slot(b"a{}b"),
            "an empty tag hashes the whole key"
        );
        assert_ne!(hash_slot(b"a{}b"), hash_slot(b""));
    }

    #[test]
    fn a_writer_that_outlives_its_cache_neither_keeps_the_segment_nor_crashes() {
        // Listening, never answering: the writer's SET waits out the timeout, long after the
        // cache below is dropped. The tier must not keep the segment mapped for it (a forked
        // child that frees its cache must unmap it: the tier state it inherited is never
        // freed there), and its late counts must go somewhere harmless.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let cache = crate::store::cache::Cache::create(&crate::store::cache::Config {
            size_bytes: 1 << 20,
            ..Default::default()
        })
        .unwrap();
        let cfg = test_config(port);
        let r = Remote::new(cfg, cache.remote_counters()).unwrap();
        let now = crate::util::now_unix();
        r.store(&[3; 32], b"der", now, now + 300, now);
        let counters = r.shared.counters.clone();
        assert!(counters.in_live_segment());
        drop(cache);
        assert!(
            !counters.in_live_segment(),
            "the tier kept the segment mapped after its cache went"
        );
        assert!(r.flush(Duration::from_secs(5)), "the writer finished");
        drop(silent);
    }

    #[test]
    fn a_fleet_label_with_spaces_or_too_long_is_refused_at_check_time() {
        let plan = |fleet: &str| {
            Remote::plan(RemoteConfig {
                url: "redis://127.0.0.1:6379/0".into(),
                prefix: DEFAULT_PREFIX.into(),
                timeout: DEFAULT_TIMEOUT,
                backoff: DEFAULT_BACKOFF,
                ca_file: None,
                compat: Compat::Detect,
                cluster: false,
                keys: Keyring::new(crate::remote::seal::Key::new([1; 32]), Vec::new()),
                fleet: fleet.into(),
            })
        };
        assert!(plan("").is_ok() && plan("prod-eu").is_ok());
        for bad in ["prod eu", "prod\teu", &"x".repeat(65), "caf\u{e9}"] {
            let e = plan(bad).err().unwrap();
            assert_eq!(e.kind, ErrorKind::Invalid, "{bad:?}");
            assert!(e.message.contains("fleet label must be"), "{e}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let e = Remote::plan(RemoteConfig {
            url: "http://user:secretpw@host/".into(),
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
            backoff: DEFAULT_BACKOFF,
            ca_file: None,
            compat: Compat::Detect,
            cluster: false,
            keys: Keyring::new(crate::remote::seal::Key::new([1; 32]), Vec::new()),
            fleet: String::new(),
        })
        .err()
        .unwrap();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(!e.message.contains("secretpw"), "{e}");
        assert!(e.message.contains(URL_FORM), "{e}");
    }
}
