//! The OpenSSL side: the three session callbacks and their installation on an `SSL_CTX`.
//!
//! Facts relied on (OpenSSL 3.0 source, see shared/reference/openssl-session-cache.md):
//! - new_session_cb: OpenSSL keeps its reference when we return 0; in TLS 1.3 it fires once per
//!   ticket, also for stateless tickets whose ids are never looked up (we skip those).
//! - get_session_cb: `*copy` must be 0 for a session we made with d2i, or it leaks one per hit.
//!   It runs before SNI is parsed. TLS 1.3 identities are exactly 32 bytes.
//! - remove_session_cb: fires for ids we never stored and may run under the SSL_CTX's lock, so
//!   it only touches our cache, never OpenSSL's.
//! - OpenSSL 3.0 cannot read back an SSL_CTX's session id context; see `install`.
//!
//! `i2d`/`d2i` happen here, outside any shard lock; the cache only copies bytes.

use std::ffi::{c_int, c_long, c_uchar, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock, RwLock, Weak};

use openssl_sys as ossl;
use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

use crate::cache::{Cache, Found};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{MAX_ID_LEN, MAX_SESSION_BYTES};
use crate::log::{self, Level};
use crate::remote::{Fetched, Remote, Taken};
use crate::resp::Deadline;

/// Symbols libssl.so.3 exports that openssl-sys does not declare.
mod extra {
    use super::*;
    extern "C" {
        pub fn SSL_get_options(s: *const SSL) -> u64;
        pub fn SSL_SESSION_set_timeout(s: *mut SSL_SESSION, t: c_long) -> c_long;
        pub fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
        pub fn SSL_CTX_get_client_CA_list(ctx: *const SSL_CTX) -> *mut ossl::stack_st_X509_NAME;
        pub fn SSL_CTX_set_generate_session_id(
            ctx: *mut SSL_CTX,
            cb: Option<GenSessionCb>,
        ) -> c_int;
        pub fn SSL_has_matching_session_id(s: *const SSL, id: *const c_uchar, len: c_uint)
            -> c_int;
        pub fn EVP_Digest(
            data: *const c_void,
            count: usize,
            md: *mut c_uchar,
            size: *mut c_uint,
            kind: *const ossl::EVP_MD,
            engine: *mut c_void,
        ) -> c_int;
    }
    pub type GenSessionCb =
        unsafe extern "C" fn(ssl: *mut SSL, id: *mut c_uchar, id_len: *mut c_uint) -> c_int;
    pub const SSL_OP_NO_ANTI_REPLAY: u64 = 1 << 24;
    pub const SSL_OP_NO_TICKET: u64 = 1 << 14;
    pub const TLS1_3_VERSION: c_int = 0x0304;
}

/// Sessions up to this size (all but those with large client certificate chains) are encoded
/// and decoded in a stack buffer; larger ones in a heap buffer of their size.
const SMALL_SESSION_BYTES: usize = 1024;

/// How a cache behaves inside OpenSSL (set from `shmsess_options` at creation).
#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    /// Keep OpenSSL's per-process cache in front of the shared one.
    pub keep_internal_cache: bool,
    /// Let a TLS 1.3 stateful ticket resume more than once (default: single use).
    pub tls13_reuse: bool,
    /// Do not store or look up TLS 1.3 sessions at all.
    pub skip_tls13: bool,
    /// Lifetime applied to every stored session instead of the session's own timeout.
    pub session_timeout: Option<u32>,
    /// Session id context to set; `None`: derived from the certificate.
    pub session_id_context: Option<Vec<u8>>,
    /// Leave the SSL_CTX's session id context alone (the caller set one).
    pub keep_session_id_context: bool,
    /// Install the library's session id generator (prefix + CSPRNG, unique in the shared
    /// cache).
    pub generate_ids: bool,
    /// Prefix the generator starts every id with (at most [`MAX_ID_PREFIX`] bytes).
    pub id_prefix: Vec<u8>,
}

/// Longest prefix the id generator accepts: at least half of a 32-byte id stays random.
pub const MAX_ID_PREFIX: usize = 16;

/// What a `shmsess_cache*` points to: the mapped cache and how to behave in OpenSSL.
pub struct Handle {
    pub cache: Cache,
    pub install: InstallOptions,
    /// The generator's prefix in this process: starts as `install.id_prefix`; a worker may
    /// change it after fork (e.g. to add its own number), which affects only that worker.
    pub id_prefix: RwLock<Vec<u8>>,
    /// The optional second tier (Redis), shared by hosts.
    pub remote: Option<Remote>,
}

impl Handle {
    pub fn new(cache: Cache, install: InstallOptions) -> Handle {
        let id_prefix = RwLock::new(install.id_prefix.clone());
        Handle {
            cache,
            install,
            id_prefix,
            remote: None,
        }
    }

    pub fn with_remote(mut self, remote: Option<Remote>) -> Handle {
        self.remote = remote;
        self
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The remote tier's writer thread counts into the segment: stop it (it finishes its
        // batch, bounded by the remote timeout) before `cache` unmaps the segment.
        drop(self.remote.take());
    }
}

fn ex_index() -> c_int {
    static INDEX: OnceLock<c_int> = OnceLock::new();
    // SAFETY: registering an ex_data index with a free function of the right signature.
    *INDEX.get_or_init(|| unsafe {
        ossl::SSL_CTX_get_ex_new_index(0, std::ptr::null_mut(), None, None, Some(free_ex))
    })
}

/// Called by OpenSSL when an SSL_CTX carrying our handle is freed: drops its reference.
unsafe extern "C" fn free_ex(
    _parent: *mut c_void,
    ptr: *mut c_void,
    _ad: *mut ossl::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    if !ptr.is_null() {
        let _ = catch_unwind(|| drop(Arc::from_raw(ptr as *const Handle)));
    }
}

/// The cache most recently installed in this process, for an SSL whose SNI or ClientHello
/// callback switched to an SSL_CTX nothing was installed on. A reload that frees the old cache
/// and installs a new one moves it to the new one.
static LATEST: RwLock<Weak<Handle>> = RwLock::new(Weak::new());

fn handle_for_ctx<'a>(ctx: *const SSL_CTX) -> Option<&'a Handle> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: ex_data for our index is either NULL or an Arc<Handle> we put there, alive
    // while the SSL_CTX is.
    let p = unsafe { ossl::SSL_CTX_get_ex_data(ctx, ex_index()) } as *const Handle;
    // SAFETY: see above.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Run `f` with the cache installed on `ctx`, or else with the cache most recently installed
/// in this process (an SNI callback may have switched to an SSL_CTX nothing was installed on).
fn with_ctx_handle<R>(ctx: *const SSL_CTX, f: impl FnOnce(&Handle) -> R) -> Option<R> {
    if let Some(h) = handle_for_ctx(ctx) {
        return Some(f(h));
    }
    let latest = LATEST.read().unwrap_or_else(|p| p.into_inner()).upgrade();
    latest.map(|h| f(&h))
}

fn with_handle<R>(ssl: *const SSL, f: impl FnOnce(&Handle) -> R) -> Option<R> {
    // SAFETY: ssl is the live SSL OpenSSL passed to the callback.
    with_ctx_handle(unsafe { ossl::SSL_get_SSL_CTX(ssl) }, f)
}

fn is_tls13(ssl: *const SSL) -> bool {
    // SAFETY: live SSL.
    unsafe { ossl::SSL_version(ssl) == extra::TLS1_3_VERSION }
}

/// TLS 1.3 tickets are stateful (their id is looked up) with SSL_OP_NO_TICKET, or when early
/// data is on with OpenSSL's anti-replay (OpenSSL 3.0 `tls_construct_new_session_ticket`).
fn tls13_stateful(ssl: *const SSL) -> bool {
    // SAFETY: live SSL.
    let (opts, early) = unsafe {
        (
            extra::SSL_get_options(ssl),
            ossl::SSL_get_max_early_data(ssl),
        )
    };
    opts & extra::SSL_OP_NO_TICKET != 0 || (early > 0 && opts & extra::SSL_OP_NO_ANTI_REPLAY == 0)
}

fn session_id<'a>(sess: *const SSL_SESSION) -> &'a [u8] {
    let mut len: c_uint = 0;
    // SAFETY: sess is a live session; the id pointer stays valid while it is.
    let p = unsafe { ossl::SSL_SESSION_get_id(sess, &mut len) };
    if p.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: OpenSSL returns the id buffer and its length (at most 32).
    unsafe { std::slice::from_raw_parts(p, (len as usize).min(MAX_ID_LEN)) }
}

fn clamp_u32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

/// # Safety
/// Called by OpenSSL with live objects, as registered by `install`.
pub unsafe extern "C" fn new_session_cb(ssl: *mut SSL, sess: *mut SSL_SESSION) -> c_int {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        with_handle(ssl, |h| store_session(h, ssl, sess))
    }));
    // 0: OpenSSL keeps its reference; we keep only the bytes.
    0
}

fn store_session(h: &Handle, ssl: *mut SSL, sess: *mut SSL_SESSION) {
    // A new ticket means this handshake is over: a ticket parked for a HelloRetryRequest must
    // not outlive it (a server that reuses the SSL after SSL_clear).
    crate::tls::parked::discard(ssl);
    let g = h.cache.globals();
    if is_tls13(ssl) {
        if h.install.skip_tls13 {
            return;
        }
        if !tls13_stateful(ssl) {
            g.tls13_stateless_skipped.fetch_add(1, Relaxed);
            return;
        }
        if !h.install.keep_internal_cache && anti_replay_on(ssl) {
            // Never looked up (see anti_replay_refuses_external): storing it is churn.
            g.anti_replay_skipped.fetch_add(1, Relaxed);
            return;
        }
    }
    let id = session_id(sess);
    if id.is_empty() {
        return;
    }
    crate::tls::sni::record_host(ssl, sess);
    if let Some(t) = h.install.session_timeout {
        // So OpenSSL's own check on resumption agrees with our expiry.
        // SAFETY: live session.
        unsafe { extra::SSL_SESSION_set_timeout(sess, t.min(i32::MAX as u32) as c_long) };
    }
    // SAFETY: live session.
    let len = unsafe { ossl::i2d_SSL_SESSION(sess, std::ptr::null_mut()) };
    if len <= 0 {
        g.encode_errors.fetch_add(1, Relaxed);
        return;
    }
    if len as usize > MAX_SESSION_BYTES {
        g.too_large.fetch_add(1, Relaxed);
        log::emit(
            Level::Info,
            &format!("not caching a {len}-byte session (maximum {MAX_SESSION_BYTES})"),
        );
        return;
    }
    // A stack buffer for the usual sizes (no 8 KiB zero-fill per new session), else the heap.
    let mut small = [0u8; SMALL_SESSION_BYTES];
    let mut big = Vec::new();
    let buf: &mut [u8] = if len as usize <= SMALL_SESSION_BYTES {
        &mut small[..len as usize]
    } else {
        big.resize(len as usize, 0u8);
        &mut big
    };
    let mut p = buf.as_mut_ptr();
    // SAFETY: buf holds len bytes, as measured above.
    let written = unsafe { ossl::i2d_SSL_SESSION(sess, &mut p) };
    if written != len {
        g.encode_errors.fetch_add(1, Relaxed);
        crate::util::wipe(buf);
        return;
    }
    // SAFETY: live session.
    let (time, timeout) = unsafe {
        (
            ossl::SSL_SESSION_get_time(sess),
            ossl::SSL_SESSION_get_timeout(sess),
        )
    };
    let created = clamp_u32(time);
    let expires = clamp_u32(time.saturating_add(timeout));
    if let Err(e) = h.cache.store(id, buf, created, expires) {
        if e.kind != ErrorKind::TooLarge {
            log::emit(Level::Warning, &format!("could not store a session: {e}"));
        }
    }
    if let Some(r) = &h.remote {
        r.store(
            &g.remote,
            id,
            buf,
            created,
            expires,
            crate::util::now_unix(),
        );
    }
    // The DER holds the master secret: do not leave it in memory.
    crate::util::wipe(buf);
}

/// # Safety
/// Called by OpenSSL with live objects, as registered by `install`.
pub unsafe extern "C" fn get_session_cb(
    ssl: *mut SSL,
    id: *const c_uchar,
    id_len: c_int,
    copy: *mut c_int,
) -> *mut SSL_SESSION {
    if !copy.is_null() {
        // A session fresh from d2i belongs to OpenSSL now; 1 would add a reference and leak it.
        *copy = 0;
    }
    if id.is_null() || id_len <= 0 || id_len as usize > MAX_ID_LEN {
        return std::ptr::null_mut();
    }
    let id = std::slice::from_raw_parts(id, id_len as usize);
    catch_unwind(AssertUnwindSafe(|| {
        with_handle(ssl, |h| fetch_session(h, ssl, id)).flatten()
    }))
    .ok()
    .flatten()
    .unwrap_or(std::ptr::null_mut())
}

fn fetch_session(h: &Handle, ssl: *mut SSL, id: &[u8]) -> Option<*mut SSL_SESSION> {
    let tls13 = is_tls13(ssl);
    if tls13 && (h.install.skip_tls13 || anti_replay_refuses_external(h, ssl)) {
        return None;
    }
    // TLS 1.3: take the entry in the same critical section as the copy, so a ticket resumes
    // once in the whole server, whichever worker sees it first.
    let take = tls13 && !h.install.tls13_reuse;
    if take {
        // The ClientHello after a HelloRetryRequest offers the ticket its first one took. It
        // may name another host than the first did: the name is checked again.
        if let Some(mut parked) = crate::tls::parked::take_back(ssl, id) {
            let times = parked.times();
            let sess = accept_session(h, ssl, id, parked.der_mut(), times, true, false);
            if sess.is_some() {
                h.cache.globals().hrr_resumed.fetch_add(1, Relaxed);
            }
            return sess;
        }
    }
    // Most sessions fit in 1 KiB: zero-filling an 8 KiB buffer on every lookup cost a quarter
    // of the callback (callgrind). A too-small buffer changes nothing (not even a take), so
    // the rare large session is simply fetched again into a big one.
    let mut small = [0u8; SMALL_SESSION_BYTES];
    let mut big = Vec::new();
    let local = match h.cache.lookup(id, &mut small, take) {
        Ok(Found::Hit {
            len,
            created,
            expires,
        }) => Some((&mut small[..len], created, expires)),
        Ok(Found::BufferTooSmall { needed }) => {
            big.resize(needed, 0u8);
            match h.cache.lookup(id, &mut big, take) {
                Ok(Found::Hit {
                    len,
                    created,
                    expires,
                }) => Some((&mut big[..len], created, expires)),
                _ => None,
            }
        }
        _ => None,
    };
    let remote_take = h.remote.as_ref().filter(|_| take);
    match (local, &h.remote) {
        (Some((der, created, expires)), _) => {
            // The name check comes first: a ticket offered for another host goes back
            // untouched, here and in the remote tier.
            let sess = accept_session(h, ssl, id, der, (created, expires), take, take);
            crate::util::wipe(der);
            match (sess, remote_take) {
                (Some(s), Some(r)) => consume_remotely(h, r, ssl, s, id, expires, None),
                (sess, _) => sess,
            }
        }
        (None, Some(r)) => {
            let now = crate::util::now_unix();
            // A TLS 1.3 ticket is read first and consumed only once its name is checked: a
            // consumed one could not be put back (stores never overwrite a tombstone).
            // One deadline for the read and the consume: together they cost one remote timeout.
            let dl = r.deadline();
            let Fetched::Hit(mut o) = r.fetch_within(&h.cache.globals().remote, id, false, now, dl)
            else {
                return None;
            };
            if !take {
                // The next resumption on this host is a local hit.
                let _ = h.cache.store(id, &o.der, o.created, o.expires);
            }
            let sess = accept_session(h, ssl, id, &mut o.der, (o.created, o.expires), false, take)?;
            match remote_take {
                Some(r) => consume_remotely(h, r, ssl, sess, id, o.expires, Some(dl)),
                None => Some(sess),
            }
        }
        (None, None) => None,
    }
}

/// A TLS 1.3 ticket about to resume on this host may have been resumed on another already: it
/// is consumed fleet-wide by swapping its remote copy for a tombstone, and refused if the
/// tombstone was there already (see `remote::Taken`). `fetched`: the ticket was read from
/// Redis (not this host's memory) with this deadline; it is then refused unless consumed for
/// sure, since every host could read it again.
fn consume_remotely(
    h: &Handle,
    r: &Remote,
    ssl: *mut SSL,
    sess: *mut SSL_SESSION,
    id: &[u8],
    expires: u32,
    fetched: Option<Deadline>,
) -> Option<*mut SSL_SESSION> {
    let now = crate::util::now_unix();
    let dl = fetched.unwrap_or_else(|| r.deadline());
    match r.take_within(&h.cache.globals().remote, id, expires, now, dl) {
        // Not consumed in Redis (counted as unconfirmed by take_within): another host could
        // read and resume the same ticket again, and again.
        Taken::Unconfirmed if fetched.is_some() => {
            crate::tls::parked::discard(ssl);
            // SAFETY: we own the session d2i made.
            unsafe { ossl::SSL_SESSION_free(sess) };
            None
        }
        Taken::UsedElsewhere => {
            h.cache
                .globals()
                .remote
                .replays_refused
                .fetch_add(1, Relaxed);
            crate::tls::parked::discard(ssl);
            // SAFETY: we own the session d2i made.
            unsafe { ossl::SSL_SESSION_free(sess) };
            None
        }
        Taken::Unconfirmed => {
            // Only this host's single use is known: no 0-RTT on it, so a replay of the ticket
            // elsewhere during a partition cannot carry early data.
            // SAFETY: the SSL OpenSSL passed to the get callback; early data is decided after
            // the callback returns (final_early_data).
            unsafe { ossl::SSL_set_max_early_data(ssl, 0) };
            Some(sess)
        }
        Taken::Consumed | Taken::NeverStored => Some(sess),
    }
}

/// The session in `der` if it may resume this handshake: it decodes and was made for the
/// host this ClientHello names. With `park`, the ticket (created and expiry `times`) is kept on
/// the connection for a ClientHello retried after a HelloRetryRequest; with `put_back`, a
/// refused one goes back into the local cache, since it was taken from there but not used.
/// The caller wipes `der`.
fn accept_session(
    h: &Handle,
    ssl: *mut SSL,
    id: &[u8],
    der: &mut [u8],
    times: (u32, u32),
    put_back: bool,
    park: bool,
) -> Option<*mut SSL_SESSION> {
    let sess = decode(h, id, der)?;
    if !crate::tls::sni::same_host(ssl, sess) {
        // SAFETY: we own the session d2i made.
        unsafe { ossl::SSL_SESSION_free(sess) };
        h.cache.globals().sni_mismatch.fetch_add(1, Relaxed);
        if put_back {
            let _ = h.cache.store(id, der, times.0, times.1);
        }
        return None;
    }
    if park {
        crate::tls::parked::park(ssl, id, der, times);
    }
    Some(sess)
}

/// With early data on and OpenSSL's anti-replay left on, OpenSSL refuses every TLS 1.3
/// resumption that does not come from its internal cache (it cannot remove it there: OpenSSL
/// issue 6313), after the lookup would have taken the ticket. Such lookups are not made, so no
/// ticket is burnt, and the server's log says once what to change.
fn anti_replay_refuses_external(h: &Handle, ssl: *const SSL) -> bool {
    if h.install.keep_internal_cache || !anti_replay_on(ssl) {
        return false;
    }
    h.cache.globals().anti_replay_skipped.fetch_add(1, Relaxed);
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| log::emit(Level::Warning, ANTI_REPLAY_MESSAGE));
    true
}

const ANTI_REPLAY_MESSAGE: &str = "early data is on (max_early_data > 0) without SSL_OP_NO_ANTI_REPLAY: OpenSSL then refuses every TLS 1.3 resumption from an external cache, so TLS 1.3 sessions are not looked up; set SSL_OP_NO_ANTI_REPLAY (this cache's single-use lookup is the anti-replay, across all processes) or turn early data off";

fn ctx_anti_replay_on(ctx: *const SSL_CTX) -> bool {
    // SAFETY: live SSL_CTX.
    let (opts, early) = unsafe {
        (
            ossl::SSL_CTX_get_options(ctx),
            ossl::SSL_CTX_get_max_early_data(ctx),
        )
    };
    early > 0 && opts & extra::SSL_OP_NO_ANTI_REPLAY == 0
}

fn anti_replay_on(ssl: *const SSL) -> bool {
    // SAFETY: live SSL.
    let (opts, early) = unsafe {
        (
            extra::SSL_get_options(ssl),
            ossl::SSL_get_max_early_data(ssl),
        )
    };
    early > 0 && opts & extra::SSL_OP_NO_ANTI_REPLAY == 0
}

/// d2i the session bytes (left in place for the caller to wipe). An entry that does not
/// decode is dropped.
fn decode(h: &Handle, id: &[u8], der: &[u8]) -> Option<*mut SSL_SESSION> {
    let mut p = der.as_ptr();
    // SAFETY: p points to the der.len() bytes we hold.
    let sess = unsafe { ossl::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
    if sess.is_null() {
        h.cache.globals().decode_errors.fetch_add(1, Relaxed);
        // SAFETY: clears the error d2i left on this thread's queue.
        unsafe { ossl::ERR_clear_error() };
        let _ = h.cache.remove(id);
        return None;
    }
    Some(sess)
}

/// # Safety
/// Called by OpenSSL with live objects, as registered by `install`.
pub unsafe extern "C" fn remove_session_cb(ctx: *mut SSL_CTX, sess: *mut SSL_SESSION) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let id = session_id(sess);
        if id.is_empty() {
            return;
        }
        with_ctx_handle(ctx, |h| {
            if h.install.keep_internal_cache {
                // With OpenSSL's own cache kept, this callback also reports its housekeeping
                // (SSL_CTX_free, flushes, eviction when it is full), which is no reason to
                // delete a session for every process and host.
                return;
            }
            let _ = h.cache.remove(id);
            if let Some(r) = &h.remote {
                // Queued: OpenSSL may hold the SSL_CTX lock here, so no network I/O.
                r.remove(&h.cache.globals().remote, id);
            }
        });
    }));
}

/// Whether `der` is an SSL_SESSION whose id is `id` (checked before a dump is loaded, so a
/// file of other bytes cannot put garbage under a session id).
pub fn session_der_matches_id(der: &[u8], id: &[u8]) -> bool {
    let mut p = der.as_ptr();
    // SAFETY: p points to der.len() readable bytes; d2i reads at most that many.
    let sess = unsafe { ossl::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
    if sess.is_null() {
        // SAFETY: clears the error d2i queued on this thread.
        unsafe { ossl::ERR_clear_error() };
        return false;
    }
    let ok = session_id(sess) == id;
    // SAFETY: we own the session d2i made.
    unsafe { ossl::SSL_SESSION_free(sess) };
    ok
}

/// Whether `der` is an encoded `SSL_SESSION` of TLS 1.3, read from its first two fields
/// (OpenSSL's `SSL_SESSION_ASN1` starts `SEQUENCE { version INTEGER, ssl_version INTEGER, ..`)
/// without decoding it: cheap enough to run under a shard lock. Anything else is `false`.
pub fn der_session_is_tls13(der: &[u8]) -> bool {
    fn skip_header(b: &[u8], tag: u8) -> Option<(usize, &[u8])> {
        let (&t, rest) = b.split_first()?;
        let (&l, rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        if l < 0x80 {
            return Some((l as usize, rest));
        }
        let n = (l & 0x7f) as usize;
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize);
        Some((len, &rest[n..]))
    }
    let integer = |b: &[u8]| -> Option<(u32, usize)> {
        let (len, rest) = skip_header(b, 0x02)?;
        if len == 0 || len > 4 || rest.len() < len {
            return None;
        }
        let v = rest[..len].iter().fold(0u32, |a, &x| a << 8 | x as u32);
        Some((v, b.len() - rest.len() + len))
    };
    let Some((_, body)) = skip_header(der, 0x30) else {
        return false;
    };
    let Some((_, used)) = integer(body) else {
        return false;
    };
    matches!(integer(&body[used..]), Some((v, _)) if v == extra::TLS1_3_VERSION as u32)
}

/// Tries before the generator gives up (the handshake then fails, as OpenSSL documents). With
/// at least 16 random bytes a second try is already astronomically unlikely.
const MAX_ID_ATTEMPTS: u32 = 10;

/// Fill `id` with `prefix` followed by random bytes until `in_use` says the candidate is free.
/// Returns false after [`MAX_ID_ATTEMPTS`] candidates that were all in use. Ids shorter than the
/// prefix plus 8 random bytes get no prefix at all: a short random id is still unique, a mostly
/// fixed one is not.
pub(crate) fn generate_id(
    id: &mut [u8],
    prefix: &[u8],
    fill_random: &mut dyn FnMut(&mut [u8]),
    in_use: &mut dyn FnMut(&[u8]) -> bool,
    collisions: &mut u64,
) -> bool {
    let fixed = if id.len() >= prefix.len() + 8 {
        prefix.len()
    } else {
        0
    };
    id[..fixed].copy_from_slice(&prefix[..fixed]);
    for _ in 0..MAX_ID_ATTEMPTS {
        fill_random(&mut id[fixed..]);
        if !in_use(id) {
            return true;
        }
        *collisions += 1;
    }
    false
}

/// OpenSSL's GEN_SESSION_CB: `*id_len` is the length to produce (32 for TLS; TLS 1.3 needs all
/// 32), the buffer is zeroed, and we must never write past it nor lengthen it. We keep the
/// full length. Uniqueness is checked against the shared cache as well as OpenSSL's own
/// (`SSL_has_matching_session_id` sees only the latter).
unsafe extern "C" fn generate_session_id_cb(
    ssl: *mut SSL,
    id: *mut c_uchar,
    id_len: *mut c_uint,
) -> c_int {
    if ssl.is_null() || id.is_null() || id_len.is_null() || *id_len == 0 {
        return 0;
    }
    let len = (*id_len as usize).min(MAX_ID_LEN);
    let out = std::slice::from_raw_parts_mut(id, len);
    let ok = catch_unwind(AssertUnwindSafe(|| {
        with_handle(ssl, |h| {
            // Held, not cloned: readers do not block each other, and only
            // shmsess_set_session_id_prefix writes.
            let prefix = h.id_prefix.read().unwrap_or_else(|p| p.into_inner());
            let mut collisions = 0;
            let made = generate_id(
                out,
                &prefix,
                &mut |b| crate::util::random_bytes(b),
                &mut |cand| {
                    // SAFETY: live SSL; cand is a readable id of at most 32 bytes.
                    let internal = unsafe {
                        extra::SSL_has_matching_session_id(ssl, cand.as_ptr(), cand.len() as c_uint)
                    } == 1;
                    // A cache we cannot lock counts as free: a 128-bit random collision is
                    // far less likely than failing a handshake over it.
                    internal || h.cache.contains(cand).unwrap_or(false)
                },
                &mut collisions,
            );
            let g = h.cache.globals();
            g.id_collisions.fetch_add(collisions, Relaxed);
            if made {
                g.ids_generated.fetch_add(1, Relaxed);
            } else {
                log::emit(
                    Level::Error,
                    &format!("could not generate a unique session id in {MAX_ID_ATTEMPTS} tries"),
                );
            }
            made
        })
    }));
    match ok {
        Ok(Some(true)) => {
            *id_len = len as c_uint;
            1
        }
        // No handle (nothing installed here) or a panic: fill with random bytes, which is what
        // OpenSSL itself would have done, rather than fail the handshake.
        Ok(None) | Err(_) => {
            crate::util::random_bytes(out);
            *id_len = len as c_uint;
            1
        }
        Ok(Some(false)) => 0,
    }
}

/// Install the callbacks, cache mode and session id context on `ctx`. The SSL_CTX keeps a
/// reference to the cache until it is freed.
pub(crate) fn install(handle: &Arc<Handle>, ctx: *mut SSL_CTX) -> Result<()> {
    let sid_ctx = if handle.install.keep_session_id_context {
        None
    } else {
        Some(match &handle.install.session_id_context {
            Some(c) => c.clone(),
            None => derive_session_id_context(ctx)?,
        })
    };
    let idx = ex_index();
    if idx < 0 {
        return Err(Error::new(
            ErrorKind::OpenSsl,
            "SSL_CTX_get_ex_new_index failed",
        ));
    }
    // SAFETY: ctx is the caller's live SSL_CTX (checked non-NULL by the FFI layer).
    unsafe {
        if let Some(ctx_bytes) = &sid_ctx {
            if ossl::SSL_CTX_set_session_id_context(
                ctx,
                ctx_bytes.as_ptr(),
                ctx_bytes.len() as c_uint,
            ) != 1
            {
                return Err(Error::new(
                    ErrorKind::OpenSsl,
                    "SSL_CTX_set_session_id_context failed",
                ));
            }
        }
        let old = ossl::SSL_CTX_get_ex_data(ctx, idx) as *const Handle;
        let new = Arc::into_raw(Arc::clone(handle));
        if ossl::SSL_CTX_set_ex_data(ctx, idx, new as *mut c_void) != 1 {
            drop(Arc::from_raw(new));
            return Err(Error::new(ErrorKind::OpenSsl, "SSL_CTX_set_ex_data failed"));
        }
        if !old.is_null() {
            drop(Arc::from_raw(old));
        }
        ossl::SSL_CTX_sess_set_new_cb(ctx, Some(new_session_cb));
        ossl::SSL_CTX_sess_set_get_cb(ctx, Some(get_session_cb));
        ossl::SSL_CTX_sess_set_remove_cb(ctx, Some(remove_session_cb));
        if handle.install.generate_ids {
            extra::SSL_CTX_set_generate_session_id(ctx, Some(generate_session_id_cb));
        }
        if let Some(t) = handle.install.session_timeout {
            // New sessions get this lifetime when they are made, so the lifetime hint of a
            // ticket tells clients the truth (the new-session callback runs after it is sent).
            extra::SSL_CTX_set_timeout(ctx, c_long::from(t.min(i32::MAX as u32) as i32));
        }
        let mode = if handle.install.keep_internal_cache {
            ossl::SSL_SESS_CACHE_SERVER
        } else {
            ossl::SSL_SESS_CACHE_SERVER | ossl::SSL_SESS_CACHE_NO_INTERNAL
        };
        ossl::SSL_CTX_set_session_cache_mode(ctx, mode);
    }
    *LATEST.write().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(handle);
    if !handle.install.keep_internal_cache && ctx_anti_replay_on(ctx) {
        log::emit(Level::Warning, ANTI_REPLAY_MESSAGE);
    }
    Ok(())
}

/// SHA-256 of what makes a virtual host's sessions its own: the certificate, the verify mode
/// and the client CA names it sends. Virtual hosts with different certificates, or with one
/// certificate and different client-certificate policies, get different contexts. Call
/// `shmsess_install` after configuring verification.
fn derive_session_id_context(ctx: *mut SSL_CTX) -> Result<Vec<u8>> {
    // SAFETY: live SSL_CTX.
    let cert = unsafe { ossl::SSL_CTX_get0_certificate(ctx) };
    if cert.is_null() {
        return Err(Error::invalid(
            "the SSL_CTX has no certificate to derive a session id context from: load the certificate before shmsess_install, or set session_id_context in the options",
        ));
    }
    let mut input = der_of(|p| unsafe { ossl::i2d_X509(cert, p) })
        .ok_or_else(|| Error::new(ErrorKind::OpenSsl, "i2d_X509 failed on the certificate"))?;
    // SAFETY: live SSL_CTX.
    let mode = unsafe { ossl::SSL_CTX_get_verify_mode(ctx) };
    input.extend_from_slice(b"verify");
    input.extend_from_slice(&mode.to_le_bytes());
    // SAFETY: live SSL_CTX; the stack and its names belong to it and outlive this call.
    unsafe {
        let names = extra::SSL_CTX_get_client_CA_list(ctx) as *const ossl::OPENSSL_STACK;
        let n = if names.is_null() {
            0
        } else {
            ossl::OPENSSL_sk_num(names)
        };
        for i in 0..n {
            let name = ossl::OPENSSL_sk_value(names, i) as *mut ossl::X509_NAME;
            let der = der_of(|p| ossl::i2d_X509_NAME(name, p)).ok_or_else(|| {
                Error::new(
                    ErrorKind::OpenSsl,
                    "i2d_X509_NAME failed on a client CA name",
                )
            })?;
            input.extend_from_slice(b"ca");
            input.extend_from_slice(&(der.len() as u32).to_le_bytes());
            input.extend_from_slice(&der);
        }
    }
    let mut md = [0u8; 32];
    let mut md_len: c_uint = 0;
    // SAFETY: digest of our own buffer into a 32-byte one.
    let ok = unsafe {
        extra::EVP_Digest(
            input.as_ptr() as *const c_void,
            input.len(),
            md.as_mut_ptr(),
            &mut md_len,
            ossl::EVP_sha256(),
            std::ptr::null_mut(),
        )
    };
    if ok != 1 {
        return Err(Error::new(
            ErrorKind::OpenSsl,
            "SHA-256 for the session id context failed",
        ));
    }
    Ok(md.to_vec())
}

/// The DER an OpenSSL i2d function writes: called once to measure, once to encode.
fn der_of(i2d: impl Fn(*mut *mut u8) -> c_int) -> Option<Vec<u8>> {
    let len = i2d(std::ptr::null_mut());
    if len <= 0 {
        return None;
    }
    let mut der = vec![0u8; len as usize];
    let mut p = der.as_mut_ptr();
    (i2d(&mut p) == len).then_some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_rng() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |b: &mut [u8]| {
            n += 1;
            b.fill(n);
        }
    }

    #[test]
    fn generated_ids_carry_the_prefix_at_full_length() {
        let mut id = [0u8; 32];
        let mut coll = 0;
        let mut rng = |b: &mut [u8]| crate::util::random_bytes(b);
        assert!(generate_id(
            &mut id,
            b"web-07",
            &mut rng,
            &mut |_| false,
            &mut coll
        ));
        assert_eq!(&id[..6], b"web-07");
        assert_ne!(&id[6..], &[0u8; 26][..], "the rest is random");
        assert_eq!(coll, 0);
    }

    #[test]
    fn an_id_in_use_is_replaced_by_a_fresh_one() {
        let mut id = [0u8; 32];
        let mut coll = 0;
        let mut seen = Vec::new();
        // The first two candidates are "in the shared cache".
        let mut in_use = |c: &[u8]| {
            seen.push(c.to_vec());
            seen.len() <= 2
        };
        assert!(generate_id(
            &mut id,
            b"AB",
            &mut counter_rng(),
            &mut in_use,
            &mut coll
        ));
        assert_eq!(coll, 2);
        assert_eq!(&id[..2], b"AB");
        assert_eq!(id[2..], [3u8; 30], "the third candidate was kept");
    }

    #[test]
    fn the_generator_gives_up_when_every_id_is_taken() {
        let mut id = [0u8; 32];
        let mut coll = 0;
        assert!(!generate_id(
            &mut id,
            b"",
            &mut counter_rng(),
            &mut |_| true,
            &mut coll
        ));
        assert_eq!(coll, u64::from(MAX_ID_ATTEMPTS));
    }

    #[test]
    fn a_short_id_gets_no_prefix() {
        let mut id = [0u8; 16];
        let mut coll = 0;
        assert!(generate_id(
            &mut id,
            b"0123456789",
            &mut counter_rng(),
            &mut |_| false,
            &mut coll
        ));
        assert_eq!(id, [1u8; 16]);
    }
}

#[cfg(test)]
mod der_tests {
    use super::*;

    extern "C" {
        fn SSL_SESSION_new() -> *mut SSL_SESSION;
        fn SSL_SESSION_set1_id(s: *mut SSL_SESSION, id: *const c_uchar, len: c_uint) -> c_int;
        fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, v: c_int) -> c_int;
        fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, c: *const ossl::SSL_CIPHER) -> c_int;
        fn SSL_CIPHER_find(ssl: *mut SSL, p: *const c_uchar) -> *const ossl::SSL_CIPHER;
    }

    /// DER of a session with a 32-byte id of 7s, the given protocol version and cipher suite.
    fn session_der(version: c_int, cipher: [u8; 2]) -> Vec<u8> {
        // SAFETY: building and encoding a session we own.
        unsafe {
            let s = SSL_SESSION_new();
            assert!(!s.is_null());
            assert_eq!(SSL_SESSION_set1_id(s, [7u8; 32].as_ptr(), 32), 1);
            // d2i wants a protocol version and a cipher.
            let ctx = ossl::SSL_CTX_new(ossl::TLS_method());
            let ssl = ossl::SSL_new(ctx);
            let c = SSL_CIPHER_find(ssl, cipher.as_ptr());
            assert!(!c.is_null());
            assert_eq!(SSL_SESSION_set_protocol_version(s, version), 1);
            assert_eq!(SSL_SESSION_set_cipher(s, c), 1);
            ossl::SSL_free(ssl);
            ossl::SSL_CTX_free(ctx);
            let len = ossl::i2d_SSL_SESSION(s, std::ptr::null_mut());
            let mut v = vec![0u8; len as usize];
            let mut p = v.as_mut_ptr();
            ossl::i2d_SSL_SESSION(s, &mut p);
            ossl::SSL_SESSION_free(s);
            v
        }
    }

    const TLS1_2_VERSION: c_int = 0x0303;
    const AES128_GCM_SHA256: [u8; 2] = [0x13, 0x01];
    const ECDHE_RSA_AES128_GCM_SHA256: [u8; 2] = [0xc0, 0x2f];

    #[test]
    fn the_protocol_version_is_read_from_the_der_without_decoding_it() {
        let tls13 = session_der(extra::TLS1_3_VERSION, AES128_GCM_SHA256);
        let tls12 = session_der(TLS1_2_VERSION, ECDHE_RSA_AES128_GCM_SHA256);
        assert!(der_session_is_tls13(&tls13));
        assert!(!der_session_is_tls13(&tls12));
        // Truncated before the version is complete: never TLS 1.3; the peek needs only the
        // first few bytes, never the whole session.
        let first_true = (0..=tls13.len()).find(|&n| der_session_is_tls13(&tls13[..n]));
        assert!(
            matches!(first_true, Some(n) if (9..=12).contains(&n)),
            "{first_true:?}"
        );
        assert!(!der_session_is_tls13(b""));
        assert!(!der_session_is_tls13(b"\x30\x03\x02\x01\x01"));
        assert!(!der_session_is_tls13(&[
            0x31, 0x08, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04
        ]));
        assert!(der_session_is_tls13(&[
            0x30, 0x08, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04
        ]));
        assert!(der_session_is_tls13(&[
            0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x04
        ]));
        assert!(!der_session_is_tls13(&[
            0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01, 0x02, 0x02, 0x03, 0x03
        ]));
    }

    #[test]
    fn only_a_session_with_that_id_matches() {
        let der = session_der(extra::TLS1_3_VERSION, AES128_GCM_SHA256);
        assert!(session_der_matches_id(&der, &[7u8; 32]));
        assert!(!session_der_matches_id(&der, &[8u8; 32]), "another id");
        assert!(
            !session_der_matches_id(&[7u8; 32], &der[..32]),
            "swapped arguments"
        );
        assert!(!session_der_matches_id(b"not a session", &[7u8; 32]));
    }
}
