//! A small Redis client (RESP2) for the handful of commands the remote tier sends, built so
//! that one operation has one deadline and one reply has a size limit.
//!
//! Why not the `redis` crate: its timeouts are per `read()`/`write()` call and per setup step,
//! so a server that drips its reply (or answers AUTH, SELECT and the command each just inside
//! the timeout) holds a handshake for as long as it likes, and it reads a bulk string of any
//! announced length into memory. Here every wait is a `poll()` against the operation's
//! [`Deadline`] on a nonblocking socket (name lookup, connect, TLS, AUTH/SELECT, command and
//! reply together), and the reader refuses a reply larger than its cap before buffering it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The point in time an operation must be finished by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }

    /// Time left, `Err(Timeout)` once it has passed.
    pub fn left(&self) -> Result<Duration, Failure> {
        match self.0.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(Failure::Timeout),
        }
    }
}

/// Why an operation did not give an answer. Nothing here holds text from the URL or from a
/// reply's payload (either may hold secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The deadline passed.
    Timeout,
    /// The host name did not resolve (or not to an address).
    Resolve(String),
    /// connect/read/write failed, or the server closed the connection.
    Io(io::ErrorKind),
    /// The server sent something that is not the RESP we expect.
    Protocol(&'static str),
    /// A reply larger than the cap (the connection is dropped before reading it).
    TooLarge(u64),
    /// The server answered with an error; its first word (e.g. `ERR`, `NOAUTH`, `WRONGPASS`).
    Server(String),
    /// TLS setup or certificate verification failed.
    Tls(String),
    /// Redis Cluster: the key's slot is served by another node (`MOVED`), for good or
    /// during a migration (`ASK`: ask that node once, after ASKING).
    Moved(SocketAddr),
    Ask(SocketAddr),
    /// Sentinel: the server the sentinels named does not say `ROLE` master (a replica, or a
    /// stale answer during a failover).
    NotMaster,
    /// Sentinel: a new connection to the server the sentinels named failed before any
    /// operation (TLS, AUTH, SELECT or ROLE): whatever the reason, not a master to use, so
    /// the sentinels are asked again. Holds the reason (reported, counted as itself).
    Unusable(Box<Failure>),
}

impl Failure {
    /// The reason itself, for [`Failure::Unusable`] (what is reported and counted).
    pub fn reason(self) -> Failure {
        match self {
            Failure::Unusable(why) => *why,
            f => f,
        }
    }

    /// Whether a fresh connection might succeed where this (pooled) one failed: the server
    /// closed or reset it (a restarted Redis, an idle timeout), before any answer was read.
    pub fn is_stale_connection(&self) -> bool {
        matches!(
            self,
            Failure::Io(
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            )
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Resolve(m) => write!(f, "name lookup failed ({m})"),
            Failure::Io(k) => write!(f, "I/O error ({k:?})"),
            Failure::Protocol(m) => write!(f, "not a Redis reply ({m})"),
            Failure::TooLarge(n) => write!(f, "reply of {n} bytes is over the limit"),
            Failure::Server(m) => write!(f, "Redis said {m}"),
            Failure::Tls(m) => write!(f, "TLS: {m}"),
            Failure::Moved(a) => write!(f, "slot moved to {a}"),
            Failure::Ask(a) => write!(f, "slot migrating to {a}"),
            Failure::NotMaster => f.write_str("the server the sentinels named is not a master"),
            Failure::Unusable(why) => {
                write!(f, "the server the sentinels named is unusable: {why}")
            }
        }
    }
}

/// One parsed reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// An error reply as a [`Failure`] carrying its first word only.
    pub fn into_result(self) -> Result<Reply, Failure> {
        match self {
            Reply::Error(e) => {
                if let Some(f) = redirection(&e) {
                    return Err(f);
                }
                let word = e.split(|&b| b == b' ').next().unwrap_or(b"ERR");
                let word: String = String::from_utf8_lossy(word)
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(32)
                    .collect();
                Err(Failure::Server(word))
            }
            r => Ok(r),
        }
    }

    /// `+OK` (or any simple string) expected.
    pub fn expect_ok(self) -> Result<(), Failure> {
        match self.into_result()? {
            Reply::Simple(_) => Ok(()),
            _ => Err(Failure::Protocol("expected a status reply")),
        }
    }
}

/// `MOVED slot ip:port` / `ASK slot ip:port` as a [`Failure`] (addresses as IPs only).
fn redirection(e: &[u8]) -> Option<Failure> {
    let text = std::str::from_utf8(e).ok()?;
    let mut words = text.split(' ');
    let (kind, _slot, addr) = (words.next()?, words.next()?, words.next()?);
    let addr: SocketAddr = addr.parse().ok()?;
    match kind {
        "MOVED" => Some(Failure::Moved(addr)),
        "ASK" => Some(Failure::Ask(addr)),
        _ => None,
    }
}

/// Longest line (status, error, integer, length header) accepted.
const MAX_LINE: usize = 512;
/// Most elements in an array reply (a few, or a node's fields in CLUSTER SLOTS). CLUSTER
/// SLOTS itself has one element per slot range: see [`Conn::set_limits`].
pub const MAX_ARRAY: usize = 1024;
/// Deepest array nesting accepted.
const MAX_DEPTH: usize = 4;

/// Parse one reply from the start of `buf`. `Ok(None)`: incomplete, read more. `cap` bounds
/// every bulk string; the other bounds are [`Limits::reply`]'s.
pub fn parse(buf: &[u8], cap: usize) -> Result<Option<(Reply, usize)>, Failure> {
    parse_within(buf, Limits::reply(cap))
}

/// [`parse`] under the bounds `lim`.
pub fn parse_within(buf: &[u8], lim: Limits) -> Result<Option<(Reply, usize)>, Failure> {
    match scan(buf, &mut Scan::default(), lim)? {
        None => Ok(None),
        Some(end) => parse_at(&buf[..end], 0, lim, 0),
    }
}

/// Bounds on one reply, whatever its nesting: its bulk strings, its arrays, how many elements
/// it has in all and what its parsed tree may cost in memory. Checked by [`scan`] as bytes
/// arrive, before anything is parsed: a bound per array alone let 1000 arrays of 1000
/// elements (4 MB on the wire) become a 40 MB tree.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest bulk string.
    pub cap: usize,
    /// Most elements of one array.
    pub max_array: usize,
    /// Most elements in the whole reply (arrays and what they hold, at every level).
    pub max_elements: usize,
    /// Most bytes the parsed reply may take: [`ELEMENT_COST`] per element plus its payload.
    pub max_tree_bytes: usize,
}

/// What one parsed element costs beyond its payload: its `Reply` in its parent's array and
/// the allocator's share of its own buffer.
pub const ELEMENT_COST: usize = std::mem::size_of::<Reply>() + 16;

impl Limits {
    /// An ordinary reply (a value, a status, INFO, a short array): bulk strings up to `cap`.
    pub fn reply(cap: usize) -> Limits {
        Limits {
            cap,
            max_array: MAX_ARRAY,
            max_elements: MAX_ARRAY,
            max_tree_bytes: cap + MAX_ARRAY * ELEMENT_COST,
        }
    }
}

fn parse_at(
    buf: &[u8],
    at: usize,
    lim: Limits,
    depth: usize,
) -> Result<Option<(Reply, usize)>, Failure> {
    let cap = lim.cap;
    let Some((line, next)) = line_at(buf, at)? else {
        return Ok(None);
    };
    let (&kind, body) = line.split_first().ok_or(Failure::Protocol("empty line"))?;
    let int = || -> Result<i64, Failure> {
        std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(Failure::Protocol("bad integer"))
    };
    Ok(Some(match kind {
        b'+' => (Reply::Simple(body.to_vec()), next),
        b'-' => (Reply::Error(body.to_vec()), next),
        b':' => (Reply::Int(int()?), next),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            if n as u64 > cap as u64 {
                return Err(Failure::TooLarge(n as u64));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Failure::Protocol("bulk string not terminated"));
            }
            (Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if n as u64 > lim.max_array as u64 || depth >= MAX_DEPTH {
                return Err(Failure::Protocol("array too large or too deep"));
            }
            // Each element takes 3 bytes at least: never reserve more than the buffer holds.
            let mut items = Vec::with_capacity((n as usize).min((buf.len() - next) / 3));
            let mut pos = next;
            for _ in 0..n {
                let Some((item, p)) = parse_at(buf, pos, lim, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                pos = p;
            }
            (Reply::Array(Some(items)), pos)
        }
        _ => return Err(Failure::Protocol("unknown reply type")),
    }))
}

/// How far the bytes of a reply being received have been checked: [`scan`] goes over each
/// byte once, and the reply is parsed once, when the scan finds its end (re-parsing a large
/// burst for every byte that dribbles in after it would keep the reader busy past its
/// deadline).
#[derive(Debug, Default)]
struct Scan {
    /// Bytes checked: whole elements of the reply being received.
    pos: usize,
    /// Elements each open array still expects, innermost last.
    open: Vec<u64>,
    /// Elements seen so far, at every level, and what their parse will cost (see [`Limits`]).
    elements: usize,
    tree_bytes: usize,
}

/// Advance `s` over the complete elements in `buf`; `Some(end)` once a whole reply is there.
/// Refuses what [`parse_at`] refuses, as early as it shows.
fn scan(buf: &[u8], s: &mut Scan, lim: Limits) -> Result<Option<usize>, Failure> {
    loop {
        let Some((line, next)) = line_at(buf, s.pos)? else {
            return Ok(None);
        };
        let (&kind, body) = line.split_first().ok_or(Failure::Protocol("empty line"))?;
        let int = || -> Result<i64, Failure> {
            std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or(Failure::Protocol("bad integer"))
        };
        // Counted once the element is passed (a bulk string still arriving is seen again).
        let (elements, tree_bytes) = (
            s.elements + 1,
            s.tree_bytes + ELEMENT_COST + payload_bytes(kind, body, lim.cap),
        );
        if elements > lim.max_elements {
            return Err(Failure::Protocol("reply has too many elements"));
        }
        if tree_bytes > lim.max_tree_bytes {
            return Err(Failure::TooLarge(tree_bytes as u64));
        }
        let opened = match kind {
            b'+' | b'-' => None,
            b':' => int().map(|_| None)?,
            b'$' => {
                let n = int()?;
                if n >= 0 {
                    if n as u64 > lim.cap as u64 {
                        return Err(Failure::TooLarge(n as u64));
                    }
                    if buf.len() < next + n as usize + 2 {
                        return Ok(None);
                    }
                    s.pos = next + n as usize + 2;
                }
                None
            }
            b'*' => {
                let n = int()?;
                if n >= 0 && (n as u64 > lim.max_array as u64 || s.open.len() >= MAX_DEPTH) {
                    return Err(Failure::Protocol("array too large or too deep"));
                }
                (n > 0).then_some(n as u64)
            }
            _ => return Err(Failure::Protocol("unknown reply type")),
        };
        if kind != b'$' || s.pos < next {
            s.pos = next;
        }
        (s.elements, s.tree_bytes) = (elements, tree_bytes);
        if let Some(n) = opened {
            s.open.push(n);
            continue;
        }
        // One element complete: close the arrays it completes.
        loop {
            match s.open.last_mut() {
                None => return Ok(Some(s.pos)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    s.open.pop();
                }
            }
        }
    }
}

/// The bytes an element's parse copies: a status or error's text, a bulk string's announced
/// length (0 if over `cap`: that one is refused as too large by itself).
fn payload_bytes(kind: u8, body: &[u8], cap: usize) -> usize {
    match kind {
        b'+' | b'-' => body.len(),
        b'$' => std::str::from_utf8(body)
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|&n| n <= cap)
            .unwrap_or(0),
        _ => 0,
    }
}

/// The line starting at `at` (without CRLF) and where the next one starts.
fn line_at(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Failure> {
    let rest = &buf[at..];
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], at + i + 2))),
        None if window.len() >= MAX_LINE + 2 => Err(Failure::Protocol("line too long")),
        None => Ok(None),
    }
}

/// Append one command (an array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A password (or user name) from the URL, wiped when dropped.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        crate::util::wipe(&mut self.0);
    }
}

/// Where to connect and how to log in, parsed from
/// `redis[s]://[[user]:password@]host[:port][,ip[:port]...][/db]`.
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Further seed nodes (a Redis Cluster's), after `host`: IP addresses only, so that
    /// asking each costs no name lookup.
    pub more_seeds: Vec<SocketAddr>,
    pub user: Option<Secret>,
    pub password: Option<Secret>,
    pub db: u32,
    /// `redis+sentinel://`: the name of the master the sentinels (`host` and `more_seeds`,
    /// all IP addresses) are asked for. `None`: `host` is Redis itself (or a cluster seed).
    pub sentinel_master: Option<String>,
}

/// What a usable URL looks like (quoted in every refusal; the URL itself never is: it may hold
/// a password).
pub const URL_FORM: &str =
    "redis://[user:password@]host:port/db or rediss://... for TLS (a cluster: host:port,ip:port,.../0; Sentinel: redis+sentinel://[user:password@]ip:port,ip:port,.../MASTERNAME/db, rediss+sentinel://... for TLS)";

/// Longest master name accepted in a `redis+sentinel://` URL.
const MAX_MASTER_NAME: usize = 64;

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, sentinel, rest) = if let Some(r) = url.strip_prefix("redis://") {
            (false, false, r)
        } else if let Some(r) = url.strip_prefix("rediss://") {
            (true, false, r)
        } else if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, true, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, true, r)
        } else {
            return Err(
                "the scheme must be redis://, rediss://, redis+sentinel:// or rediss+sentinel://"
                    .into(),
            );
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err("URL parameters (?...) are not supported".into());
        }
        let (sentinel_master, path) = if sentinel {
            let (name, db) = path.split_once('/').unwrap_or((path, ""));
            (Some(master_name(name)?), db)
        } else {
            (None, path)
        };
        let db = match path {
            "" => 0,
            p => p
                .parse::<u32>()
                .map_err(|_| "the path must be a database number")?,
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (name, pw) = u.split_once(':').unwrap_or(("", u));
                let name = percent_decode(name).ok_or("bad %-escape in the user name")?;
                let pw = percent_decode(pw).ok_or("bad %-escape in the password")?;
                let name = (!name.is_empty()).then_some(Secret(name));
                (name, (!pw.is_empty()).then_some(Secret(pw)))
            }
        };
        // A sentinel listens on 26379 by default, Redis on 6379.
        let default_port = if sentinel { 26379 } else { 6379 };
        let mut hosts = hostport.split(',');
        let (host, port) = split_host_port(hosts.next().unwrap_or(""), default_port)?;
        let more_seeds = hosts
            .map(|h| {
                let (ip, port) = split_host_port(h, default_port)?;
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| "every host after the first must be an IP address")?;
                Ok(SocketAddr::new(ip, port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if sentinel && host.parse::<IpAddr>().is_err() {
            return Err("every sentinel must be an IP address (ip:port,ip:port,...)".into());
        }
        Ok(Target {
            tls,
            host,
            port,
            more_seeds,
            user,
            password,
            db,
            sentinel_master,
        })
    }

    /// `redis+sentinel://`: the sentinels, in the URL's order.
    pub fn sentinels(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .ip()
            .map(|ip| SocketAddr::new(ip, self.port))
            .into_iter()
            .collect();
        for &s in &self.more_seeds {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The host as an IP address, if it is one (no name lookup needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// A master name as the sentinels know it (`sentinel monitor NAME ...`): letters, digits and
/// `.-_`, so that it cannot carry anything into the command it is sent in but a name.
fn master_name(name: &str) -> Result<String, String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
    if name.is_empty() || name.len() > MAX_MASTER_NAME || !name.bytes().all(ok) {
        return Err(format!(
            "redis+sentinel:// needs the master's name after the sentinels (/MASTERNAME or /MASTERNAME/db: at most {MAX_MASTER_NAME} letters, digits, '.', '-' or '_')"
        ));
    }
    // `redis+sentinel://...@IP:PORT/0` names a master "0": a database number where the name
    // belongs, which would only fail at run time ("the sentinel does not know the name").
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "redis+sentinel:// master name is all digits: did you forget /MASTERNAME before the database? (ip:port,.../MASTERNAME/db)".into(),
        );
    }
    Ok(name.to_owned())
}

fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(r) = s.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("unclosed [ in the host")?;
        (h, after.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address: its last group would be taken for the port.
        return Err(format!(
            "put IPv6 addresses in brackets: [::1]:{default_port}"
        ));
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or("bad port")?,
    };
    Ok((host.to_owned(), port))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Name lookups, bounded by the caller's deadline. `getaddrinfo` cannot be interrupted, so it
/// runs on a helper thread and the caller stops waiting at its deadline; a lookup still running
/// is handed to the next caller instead of starting another, and a result is reused for
/// [`Resolver::REUSE`]. The caller waits outside of any lock: [`Resolver::begin`] and
/// [`Resolver::finish`] are the short critical sections around the wait.
#[derive(Default)]
pub struct Resolver {
    pending: Option<Lookup>,
    last: Option<(Instant, Vec<SocketAddr>)>,
}

/// A lookup running on its helper thread.
pub struct Lookup(mpsc::Receiver<io::Result<Vec<SocketAddr>>>);

pub enum Begun {
    Known(Vec<SocketAddr>),
    Wait(Lookup),
}

impl Lookup {
    /// Wait for the lookup until the deadline; `Err(self)` if it is still running then.
    pub fn wait(self, dl: Deadline) -> Result<Result<Vec<SocketAddr>, Failure>, Lookup> {
        let Ok(left) = dl.left() else {
            return Err(self);
        };
        match self.0.recv_timeout(left) {
            Ok(Ok(addrs)) if !addrs.is_empty() => Ok(Ok(addrs)),
            Ok(Ok(_)) => Ok(Err(Failure::Resolve("no address".into()))),
            Ok(Err(e)) => Ok(Err(Failure::Resolve(format!("{:?}", e.kind())))),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Ok(Err(Failure::Resolve("lookup thread died".into())))
            }
        }
    }
}

impl Resolver {
    pub const REUSE: Duration = Duration::from_secs(30);

    /// A fresh earlier result, the lookup in progress, or a new one.
    pub fn begin(&mut self, host: &str, port: u16) -> Result<Begun, Failure> {
        if let Some((at, addrs)) = &self.last {
            if at.elapsed() < Self::REUSE {
                return Ok(Begun::Known(addrs.clone()));
            }
        }
        if let Some(l) = self.pending.take() {
            return Ok(Begun::Wait(l));
        }
        let (tx, rx) = mpsc::channel();
        let name = format!("{host}:{port}");
        std::thread::Builder::new()
            .name("shmsess-resolve".into())
            .spawn(move || {
                let _ = tx.send(name.to_socket_addrs().map(|a| a.collect()));
            })
            .map_err(|_| Failure::Resolve("cannot start a lookup thread".into()))?;
        Ok(Begun::Wait(Lookup(rx)))
    }

    /// Record what waiting gave: addresses to reuse, or a lookup to hand to the next caller.
    pub fn finish(&mut self, waited: &Result<Result<Vec<SocketAddr>, Failure>, Lookup>) {
        if let Ok(Ok(addrs)) = waited {
            self.last = Some((Instant::now(), addrs.clone()));
        }
    }

    pub fn park(&mut self, l: Lookup) {
        if self.pending.is_none() {
            self.pending = Some(l);
        }
    }

    /// Forget a reused result (after a failed connect the name may point elsewhere now).
    pub fn forget(&mut self) {
        self.last = None;
    }
}

/// What the transport needs before it can go on.
pub enum Want {
    Read,
    Write,
}

/// A byte stream under a deadline: plain TCP, or TLS over it (see `tls.rs`).
pub trait Transport {
    /// Nonblocking read; `Err(Ok(want))` when it must wait. A transport that does work of its
    /// own between bytes (TLS records that carry no application data) stops at `dl`.
    fn read_nb(&mut self, buf: &mut [u8], dl: Deadline) -> Result<usize, Result<Want, Failure>>;
    /// Nonblocking write, likewise.
    fn write_nb(&mut self, buf: &[u8], dl: Deadline) -> Result<usize, Result<Want, Failure>>;
    fn fd(&self) -> i32;
    fn peer(&self) -> Option<SocketAddr>;
}

/// A nonblocking socket call's result: a would-block (or interrupted) call must wait for
/// `want`, any other error fails the connection.
fn nonblocking(r: io::Result<usize>, want: Want) -> Result<usize, Result<Want, Failure>> {
    match r {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Err(Ok(want))
        }
        Err(e) => Err(Err(Failure::Io(e.kind()))),
    }
}

impl Transport for TcpStream {
    fn read_nb(&mut self, buf: &mut [u8], _: Deadline) -> Result<usize, Result<Want, Failure>> {
        nonblocking(self.read(buf), Want::Read)
    }
    fn write_nb(&mut self, buf: &[u8], _: Deadline) -> Result<usize, Result<Want, Failure>> {
        nonblocking(self.write(buf), Want::Write)
    }
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
    fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

/// Wait until `fd` is ready for `want`, or the deadline.
pub fn wait(fd: i32, want: Want, dl: Deadline) -> Result<(), Failure> {
    let events = match want {
        Want::Read => libc::POLLIN,
        Want::Write => libc::POLLOUT,
    };
    loop {
        let left = dl.left()?;
        // Round up: polling 0 ms until the deadline would spin.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Failure::Io(e.kind()));
            }
        }
    }
}

/// TCP connect to the first address that answers, within the deadline.
pub fn tcp_connect(addrs: &[SocketAddr], dl: Deadline) -> Result<TcpStream, Failure> {
    let mut last = Failure::Io(io::ErrorKind::NotFound);
    for a in addrs {
        match TcpStream::connect_timeout(a, dl.left()?) {
            Ok(s) => {
                s.set_nonblocking(true).map_err(|e| Failure::Io(e.kind()))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = Failure::Timeout
            }
            Err(e) => last = Failure::Io(e.kind()),
        }
    }
    Err(last)
}

/// One connection: a transport, the bytes read but not parsed yet, and the reply cap.
pub struct Conn {
    io: Box<dyn Transport + Send>,
    buf: Vec<u8>,
    lim: Limits,
    /// How much of `buf` is known to be part of the next reply, complete elements only.
    scan: Scan,
    /// Bytes written so far: whether a failed operation may have reached the server.
    written: u64,
}

/// Bytes read per `read()` call.
const CHUNK: usize = 16 * 1024;

impl Conn {
    /// `cap`: largest bulk string accepted; the read buffer never holds more than a few
    /// replies' framing beyond it.
    pub fn new(io: Box<dyn Transport + Send>, cap: usize) -> Conn {
        Conn {
            io,
            buf: Vec::new(),
            lim: Limits::reply(cap),
            scan: Scan::default(),
            written: 0,
        }
    }

    /// Bytes written on this connection so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether an idle connection can take a command: nothing is waiting to be read (no
    /// late reply, no close from the server: FIN, RST or a TLS alert). A connection the
    /// server closed while idle is found here, before any command is written to it.
    pub fn idle_and_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        // SAFETY: a valid descriptor of ours and a 1-byte buffer; MSG_PEEK leaves the data.
        let n = unsafe {
            libc::recv(
                self.io.fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Change the bounds on the next replies (CLUSTER SLOTS is larger than any session, and
    /// has an element per slot range).
    pub fn set_limits(&mut self, lim: Limits) {
        self.lim = lim;
    }

    /// The peer's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.io.peer()
    }

    fn limit(&self) -> usize {
        self.lim.cap + 4 * MAX_LINE
    }

    pub fn send(&mut self, data: &[u8], dl: Deadline) -> Result<(), Failure> {
        let mut off = 0;
        while off < data.len() {
            match self.io.write_nb(&data[off..], dl) {
                Ok(0) => return Err(Failure::Io(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    off += n;
                    self.written += n as u64;
                }
                Err(Ok(w)) => wait(self.io.fd(), w, dl)?,
                Err(Err(f)) => return Err(f),
            }
        }
        Ok(())
    }

    /// Read one reply (error replies included: see [`Reply::into_result`]).
    pub fn recv(&mut self, dl: Deadline) -> Result<Reply, Failure> {
        loop {
            if let Some(end) = scan(&self.buf, &mut self.scan, self.lim)? {
                self.scan = Scan::default();
                let (reply, used) = parse_at(&self.buf[..end], 0, self.lim, 0)?
                    .ok_or(Failure::Protocol("reply shorter than scanned"))?;
                self.buf.drain(..used);
                return Ok(reply);
            }
            // Checked on every pass, not only when a read would block: a server that keeps
            // bytes coming is cut at the deadline too.
            dl.left()?;
            let room = self.limit().saturating_sub(self.buf.len());
            if room == 0 {
                return Err(Failure::TooLarge(self.buf.len() as u64));
            }
            let old = self.buf.len();
            self.buf.resize(old + room.min(CHUNK), 0);
            let got = self.io.read_nb(&mut self.buf[old..], dl);
            let n = match got {
                Ok(n) => n,
                Err(_) => 0,
            };
            self.buf.truncate(old + n);
            match got {
                Ok(0) => return Err(Failure::Io(io::ErrorKind::UnexpectedEof)),
                Ok(_) => {}
                Err(Ok(w)) => wait(self.io.fd(), w, dl)?,
                Err(Err(f)) => return Err(f),
            }
        }
    }

    /// Send commands in one write and read one reply per command, in order.
    pub fn pipeline(&mut self, cmds: &[&[&[u8]]], dl: Deadline) -> Result<Vec<Reply>, Failure> {
        // It carries AUTH (login): sized once, so no reallocation leaves a copy behind, and
        // wiped after sending.
        let size: usize = cmds
            .iter()
            .flat_map(|c| c.iter())
            .map(|a| a.len() + 32)
            .sum();
        let mut out = Vec::with_capacity(size + 32 * cmds.len());
        for c in cmds {
            encode(&mut out, c);
        }
        let sent = self.send(&out, dl);
        crate::util::wipe(&mut out);
        sent?;
        cmds.iter().map(|_| self.recv(dl)).collect()
    }

    /// One command, one reply (error replies as [`Failure::Server`]).
    pub fn call(&mut self, args: &[&[u8]], dl: Deadline) -> Result<Reply, Failure> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.send(&out, dl)?;
        self.recv(dl)?.into_result()
    }

    /// AUTH (when the URL has a password), SELECT (when its db is not 0) and `INFO server`,
    /// pipelined: one round trip. Returns the server's version (`None` if INFO is refused or
    /// does not say).
    pub fn login(&mut self, t: &Target, dl: Deadline) -> Result<Option<Version>, Failure> {
        let db = t.db.to_string();
        let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
        cmds.extend(auth_command(t));
        if t.db != 0 {
            cmds.push(vec![b"SELECT", db.as_bytes()]);
        }
        cmds.push(vec![b"INFO", b"server"]);
        let refs: Vec<&[&[u8]]> = cmds.iter().map(|c| c.as_slice()).collect();
        let mut replies = self.pipeline(&refs, dl)?;
        let info = replies.pop();
        for r in replies {
            r.expect_ok()?;
        }
        Ok(match info {
            Some(Reply::Bulk(Some(text))) => Version::from_info(&text),
            _ => None,
        })
    }
}

/// `AUTH [user] password` for `t`'s credentials, if it has a password.
fn auth_command(t: &Target) -> Option<Vec<&[u8]>> {
    let pw = t.password.as_ref()?;
    Some(match &t.user {
        // Two-argument AUTH (ACL users) needs Redis 6; "default" is what one-argument AUTH
        // logs in as, so keep that form for it (older servers understand it).
        Some(u) if u.bytes() != b"default" => vec![b"AUTH", u.bytes(), pw.bytes()],
        _ => vec![b"AUTH", pw.bytes()],
    })
}

impl Conn {
    /// Log in at a sentinel (one of the URL's, never an address from a reply) with the URL's
    /// credentials, and ask it where the master `name` is. A sentinel without `requirepass`
    /// answers AUTH with `ERR` (no password configured): that one is asked all the same.
    /// Only an IP address and a port are accepted (a sentinel with `resolve-hostnames`
    /// naming a host is refused: no name lookup on a reply's word).
    pub fn ask_sentinel(
        &mut self,
        t: &Target,
        name: &str,
        dl: Deadline,
    ) -> Result<SocketAddr, Failure> {
        self.set_limits(SENTINEL_REPLY_LIMITS);
        let mut cmds: Vec<Vec<&[u8]>> = Vec::new();
        cmds.extend(auth_command(t));
        cmds.push(vec![
            b"SENTINEL",
            b"GET-MASTER-ADDR-BY-NAME",
            name.as_bytes(),
        ]);
        let refs: Vec<&[&[u8]]> = cmds.iter().map(|c| c.as_slice()).collect();
        let mut replies = self.pipeline(&refs, dl)?;
        let addr = replies.pop().ok_or(Failure::Protocol("no reply"))?;
        if let Some(auth) = replies.pop() {
            match auth.expect_ok() {
                Ok(()) => {}
                Err(Failure::Server(w)) if w == "ERR" => {}
                Err(f) => return Err(f),
            }
        }
        master_address(addr.into_result()?)
    }

    /// `ROLE` on a master the sentinels named: anything but `master` (a replica, a sentinel,
    /// a stale answer during a failover) is [`Failure::NotMaster`], so nothing is written to
    /// a replica.
    pub fn confirm_master(&mut self, dl: Deadline) -> Result<(), Failure> {
        match self.call(&[b"ROLE"], dl)? {
            Reply::Array(Some(items)) => match items.first() {
                Some(Reply::Bulk(Some(role))) if role == b"master" => Ok(()),
                _ => Err(Failure::NotMaster),
            },
            _ => Err(Failure::Protocol("unexpected ROLE reply")),
        }
    }
}

/// Bounds on a sentinel's answer: two short strings (an IP address and a port), or nil.
const SENTINEL_REPLY_LIMITS: Limits = Limits {
    cap: 64,
    max_array: 2,
    max_elements: 3,
    max_tree_bytes: 3 * ELEMENT_COST + 128,
};

/// `[ip, port]` from `SENTINEL GET-MASTER-ADDR-BY-NAME`; nil: the sentinel does not know the
/// name.
fn master_address(r: Reply) -> Result<SocketAddr, Failure> {
    let Reply::Array(Some(items)) = r else {
        return Err(Failure::Protocol(
            "the sentinel does not know the master's name",
        ));
    };
    let (Some(Reply::Bulk(Some(ip))), Some(Reply::Bulk(Some(port))), None) =
        (items.first(), items.get(1), items.get(2))
    else {
        return Err(Failure::Protocol("unexpected sentinel reply"));
    };
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let ip: IpAddr = text(ip)
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::Protocol(
        "a sentinel named the master by host name: set resolve-hostnames no, announce IP addresses",
    ))?;
    let port: u16 = text(port)
        .and_then(|s| s.parse().ok())
        .filter(|&p| p != 0)
        .ok_or(Failure::Protocol("a sentinel named a bad port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// A server version as `INFO server` reports it (Valkey reports the Redis version it is
/// compatible with in `redis_version` too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn from_info(text: &[u8]) -> Option<Version> {
        let text = std::str::from_utf8(text).ok()?;
        let v = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        Some(Version(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_each_reply_end_once_as_bytes_arrive() {
        let all: &[u8] = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*0\r\n*-1\r\n\
            *2\r\n*2\r\n:1\r\n$1\r\nx\r\n:7\r\n-ERR nope\r\n";
        let lim = Limits::reply(100);
        let mut pos = 0;
        while pos < all.len() {
            let (_, used) = parse(&all[pos..], 100).unwrap().unwrap();
            // Fed one byte more each time, with its state kept: the end shows exactly when
            // the last byte arrives.
            let mut st = Scan::default();
            for cut in pos + 1..=pos + used {
                let end = scan(&all[pos..cut], &mut st, lim).unwrap();
                let want = (cut == pos + used).then_some(used);
                assert_eq!(end, want, "reply at {pos}, {} bytes in", cut - pos);
            }
            pos += used;
        }
        let mut st = Scan::default();
        assert!(scan(b"*1025\r\n", &mut st, lim).is_err());
        let wide = Limits {
            max_array: 16384,
            max_elements: 16384,
            ..Limits::reply(100)
        };
        assert_eq!(
            scan(b"*1025\r\n", &mut Scan::default(), wide).unwrap(),
            None
        );
        assert!(scan(b"$101\r\n", &mut Scan::default(), lim).is_err());
    }

    #[test]
    fn replies_parse_incrementally_and_exactly() {
        let all = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n:7\r\n-ERR nope\r\n";
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < all.len() {
            // Every strict prefix of the next reply is "incomplete", never an error.
            let (r, used) = parse(&all[pos..], 100).unwrap().unwrap();
            for cut in pos..pos + used {
                assert!(
                    parse(&all[pos..cut], 100).unwrap().is_none(),
                    "prefix {cut}"
                );
            }
            got.push(r);
            pos += used;
        }
        assert_eq!(
            got,
            vec![
                Reply::Simple(b"OK".to_vec()),
                Reply::Int(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Int(7)])),
                Reply::Error(b"ERR nope".to_vec()),
            ]
        );
    }

    #[test]
    fn oversized_and_malformed_replies_are_refused_before_buffering() {
        assert_eq!(
            parse(b"$400000000\r\n", 9000),
            Err(Failure::TooLarge(400_000_000))
        );
        assert_eq!(parse(b"$10\r\n", 9), Err(Failure::TooLarge(10)));
        assert!(parse(b"$10\r\n", 10).unwrap().is_none());
        assert!(matches!(
            parse(b"\x00\xff garbage\r\n", 100),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            parse(b"$3\r\nabcXY", 100),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            parse(&[b'+'; 600], 100),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            parse(b"*100000\r\n", 100),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(
            parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 100),
            Err(Failure::Protocol(_))
        ));
        assert!(matches!(parse(b":12x\r\n", 100), Err(Failure::Protocol(_))));
    }

    #[test]
    fn elements_are_bounded_across_levels_not_only_per_array() {
        // 3 arrays of 3: 13 elements, each array within its own bound.
        let reply = format!("*3\r\n{}", "*3\r\n:1\r\n:2\r\n:3\r\n".repeat(3));
        let lim = |max_elements, max_tree_bytes| Limits {
            cap: 100,
            max_array: 3,
            max_elements,
            max_tree_bytes,
        };
        assert!(parse_within(reply.as_bytes(), lim(13, 1 << 20))
            .unwrap()
            .is_some());
        assert_eq!(
            parse_within(reply.as_bytes(), lim(12, 1 << 20)),
            Err(Failure::Protocol("reply has too many elements"))
        );
        assert!(matches!(
            parse_within(reply.as_bytes(), lim(13, 12 * ELEMENT_COST)),
            Err(Failure::TooLarge(_))
        ));
        // A bulk string is charged its length once, however it arrives.
        let bulk = b"*2\r\n$50\r\n";
        let mut st = Scan::default();
        let l = lim(3, 3 * ELEMENT_COST + 50);
        assert_eq!(scan(bulk, &mut st, l).unwrap(), None);
        assert_eq!(scan(bulk, &mut st, l).unwrap(), None);
        let mut all = bulk.to_vec();
        all.extend_from_slice(&[b'x'; 50]);
        all.extend_from_slice(b"\r\n:1\r\n");
        assert_eq!(scan(&all, &mut st, l).unwrap(), Some(all.len()));
    }

    #[test]
    fn cluster_redirections_are_read() {
        let r = |t: &[u8]| Reply::Error(t.to_vec()).into_result().unwrap_err();
        assert_eq!(
            r(b"MOVED 3999 127.0.0.1:6381"),
            Failure::Moved("127.0.0.1:6381".parse().unwrap())
        );
        assert_eq!(
            r(b"ASK 3999 [::1]:7000"),
            Failure::Ask("[::1]:7000".parse().unwrap())
        );
        assert_eq!(
            r(b"MOVED 3999 redis-2:6381"),
            Failure::Server("MOVED".into()),
            "names are not followed"
        );
    }

    #[test]
    fn error_replies_keep_only_their_first_word() {
        let f = Reply::Error(b"WRONGPASS invalid username-password pair secret".to_vec())
            .into_result()
            .unwrap_err();
        assert_eq!(f, Failure::Server("WRONGPASS".into()));
    }

    #[test]
    fn urls_parse_into_targets() {
        let t = Target::parse("redis://u%40x:p%3Aw@10.0.0.5:6380/2").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.db),
            (false, "10.0.0.5", 6380, 2)
        );
        assert_eq!(t.user.unwrap().bytes(), b"u@x");
        assert_eq!(t.password.unwrap().bytes(), b"p:w");
        let t = Target::parse("rediss://:pw@[::1]/0").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 6379));
        assert!(t.user.is_none() && t.ip().is_some());
        let t = Target::parse("redis://:pw@redis-1:7000,10.0.0.6:7001,[::1]/0").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("redis-1", 7000));
        assert_eq!(
            t.more_seeds,
            [
                "10.0.0.6:7001".parse().unwrap(),
                "[::1]:6379".parse().unwrap()
            ]
        );
        assert!(Target::parse("redis://10.0.0.5,redis-2/0").is_err());
        assert!(Target::parse("redis://10.0.0.5,/0").is_err());
        let t = Target::parse("rediss+sentinel://:pw@10.0.0.7,10.0.0.8:26380/cache-1/2").unwrap();
        assert_eq!(
            (t.tls, t.port, t.db),
            (true, 26379, 2),
            "a sentinel's default port"
        );
        assert_eq!(t.sentinel_master.as_deref(), Some("cache-1"));
        assert_eq!(
            t.sentinels(),
            [
                "10.0.0.7:26379".parse().unwrap(),
                "10.0.0.8:26380".parse().unwrap()
            ]
        );
        assert!(Target::parse("redis+sentinel://10.0.0.7/a b").is_err());
        let t = Target::parse("redis://redis.internal").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.db), ("redis.internal", 6379, 0));
        assert!(t.ip().is_none());
        for bad in [
            "http://h/",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/x",
            "redis://h/0?a=1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_are_read_from_info() {
        let info = b"# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n";
        assert_eq!(Version::from_info(info), Some(Version(7, 0, 15)));
        let valkey =
            b"# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n";
        assert_eq!(Version::from_info(valkey), Some(Version(7, 2, 4)));
        assert_eq!(
            Version::from_info(b"redis_version:6.0\r\n"),
            Some(Version(6, 0, 0))
        );
        assert_eq!(Version::from_info(b"# Server\r\n"), None);
        assert!(Version(6, 0, 16) < Version(6, 2, 0) && Version(6, 2, 0) <= Version(7, 0, 0));
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
    }
}
