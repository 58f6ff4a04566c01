//! The three session callbacks OpenSSL calls: new (store), get (lookup) and remove.
//!
//! Facts relied on (OpenSSL 3.0 source):
//! - new_session_cb (`ssl_lib.c:ssl_update_cache`): OpenSSL keeps its reference when we return
//!   0; in TLS 1.3 it fires once per ticket (`statem_srvr.c:tls_construct_new_session_ticket`),
//!   also for stateless tickets whose ids are never looked up (we skip those).
//! - get_session_cb (`ssl_sess.c:lookup_sess_in_cache`): `*copy` must be 0 for a session we
//!   made with d2i, or it leaks one per hit. It runs before SNI is parsed. TLS 1.3 identities
//!   are exactly 32 bytes (`extensions_srvr.c:tls_get_stateful_ticket`).
//! - remove_session_cb (`ssl_sess.c:remove_session_lock`, `SSL_CTX_flush_sessions`): fires for
//!   ids we never stored and may run under the SSL_CTX's lock, so it only touches our cache,
//!   never OpenSSL's.
//!
//! `i2d`/`d2i` happen here, outside any shard lock; the cache only copies bytes.

use std::ffi::{c_int, c_long, c_uchar, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;

use openssl_sys as ossl;
use openssl_sys::{SSL, SSL_CTX, SSL_SESSION};

use super::install::{with_ctx_handle, with_handle};
use super::ossl as extra;
use super::parked::{self, Unparked};
use super::sni;
use crate::error::ErrorKind;
use crate::handle::Handle;
use crate::log::{self, Level};
use crate::store::cache::Take;
use crate::store::layout::{MAX_ID_LEN, MAX_SESSION_BYTES};
use crate::tiers::{Reach, Resumer, SMALL_SESSION_BYTES};

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

pub(super) fn session_id<'a>(sess: *const SSL_SESSION) -> &'a [u8] {
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
    put_back_unused(h, ssl);
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
    let spare = is_tls13(ssl) && super::spares::ticket_is_spare(ssl);
    if let Err(e) = h
        .tiers(Reach::Both)
        .store_ranked(id, buf, created, expires, spare)
    {
        if e.kind != ErrorKind::TooLarge {
            log::emit(Level::Warning, &format!("could not store a session: {e}"));
        }
    }
    // The DER holds the master secret: do not leave it in memory.
    crate::util::wipe(buf);
}

/// The ticket this handshake's lookup took, put back into the segment when the handshake did
/// not resume it, else wiped. OpenSSL checks a looked-up session only after the callback
/// returns (session id context, protocol version, expiry: `ssl_sess.c`,
/// `extensions_srvr.c:tls_parse_ctos_psk`), and OpenSSL has no getter for the context an
/// `SSL` will be compared with; so its own verdict is read afterwards, here, rather than
/// guessed before. A ticket offered to a listener of another context sharing the segment
/// (nginx's http and stream blocks, two servers with different certificates) was never used:
/// it goes back once, for the server it belongs to, and its hit counts as refused. A ticket
/// also consumed in Redis stays consumed there (a tombstone cannot be undone).
fn put_back_unused(h: &Handle, ssl: *mut SSL) {
    let Some(taken) = parked::finish(ssl) else {
        return;
    };
    // SAFETY: the live SSL of the new-session callback.
    if unsafe { ossl::SSL_session_reused(ssl) } != 0 {
        return;
    }
    let (created, expires) = taken.times();
    if h.cache
        .store(taken.id(), taken.as_ref(), created, expires)
        .is_ok()
    {
        h.cache.globals().lookup_refused.fetch_add(1, Relaxed);
    }
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
        // SAFETY: OpenSSL's out-parameter, checked non-NULL.
        unsafe { *copy = 0 };
    }
    if id.is_null() || id_len <= 0 || id_len as usize > MAX_ID_LEN {
        return std::ptr::null_mut();
    }
    // SAFETY: OpenSSL passes the ClientHello's id_len bytes at id (non-NULL, checked).
    let id = unsafe { std::slice::from_raw_parts(id, id_len as usize) };
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
    let resumed = h
        .tiers(Reach::Both)
        .resume(id, Take::from(take), &mut Handshake { ssl })?;
    if resumed.unconfirmed {
        // SAFETY: the SSL OpenSSL passed to the get callback; early data is decided after
        // the callback returns (final_early_data).
        unsafe { ossl::SSL_set_max_early_data(ssl, 0) };
    }
    Some(resumed.session.into_raw())
}

/// A session d2i made, ours until handed to OpenSSL ([`Session::into_raw`]); freed if
/// dropped before.
struct Session(*mut SSL_SESSION);

impl Session {
    fn into_raw(self) -> *mut SSL_SESSION {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: we own the session d2i made (into_raw did not hand it over).
        unsafe { ossl::SSL_SESSION_free(self.0) };
    }
}

/// The handshake a lookup is for: what the two-tier policy asks of OpenSSL.
struct Handshake {
    ssl: *mut SSL,
}

impl Resumer for Handshake {
    type Session = Session;
    type Parked = Unparked;

    fn decode(&mut self, der: &[u8]) -> Option<Session> {
        let mut p = der.as_ptr();
        // SAFETY: p points to the der.len() bytes we hold.
        let sess =
            unsafe { ossl::d2i_SSL_SESSION(std::ptr::null_mut(), &mut p, der.len() as c_long) };
        if sess.is_null() {
            // SAFETY: clears the error d2i left on this thread's queue.
            unsafe { ossl::ERR_clear_error() };
            return None;
        }
        Some(Session(sess))
    }

    fn same_host(&mut self, session: &Session) -> bool {
        sni::same_host(self.ssl, session.0)
    }

    fn take_parked(&mut self, id: &[u8]) -> Option<(Unparked, (u32, u32))> {
        parked::take_back(self.ssl, id).map(|p| {
            let times = p.times();
            (p, times)
        })
    }

    fn park(&mut self, id: &[u8], der: &[u8], times: (u32, u32)) {
        parked::park(self.ssl, id, der, times);
    }

    fn discard_parked(&mut self) {
        parked::discard(self.ssl);
    }
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

pub(super) const ANTI_REPLAY_MESSAGE: &str = "early data is on (max_early_data > 0) without SSL_OP_NO_ANTI_REPLAY: OpenSSL then refuses every TLS 1.3 resumption from an external cache, so TLS 1.3 sessions are not looked up; set SSL_OP_NO_ANTI_REPLAY (this cache's single-use lookup is the anti-replay, across all processes) or turn early data off";

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
            let _ = h.tiers(Reach::Both).remove(id);
        });
    }));
}
