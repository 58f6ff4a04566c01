//! The byte API: `shmsess_cache_store`, `_lookup`, `_remove` and `_iterate`, for callers that
//! encode sessions themselves (an Apache socache provider), and `shmsess_session_is_tls13`.
//! On the local segment, or with `SHMSESS_BYTE_API_REMOTE` through both tiers (the policy in
//! [`crate::tiers`], the one the OpenSSL callbacks use).

use std::ffi::{c_int, c_void};
use std::ops::ControlFlow;
use std::panic::catch_unwind;
use std::sync::atomic::Ordering::Relaxed;

use super::cache::shmsess_cache;
use super::result::{shmsess_result, Fail};
use super::{bytes, guard, handle, id_arg, null};
use crate::store::cache::{Found, Take};
use crate::tiers::{Reach, Resumer};
use crate::tls::der;
use shmsess_result::*;

/// `take` of `shmsess_cache_lookup`: leave the entry in place.
pub const SHMSESS_LOOKUP_KEEP: c_int = 0;
/// `take` of `shmsess_cache_lookup`: remove the entry with the copy (single use).
pub const SHMSESS_LOOKUP_TAKE: c_int = 1;
/// `take` of `shmsess_cache_lookup`: remove the entry only if its bytes are a DER
/// `SSL_SESSION` of TLS 1.3, decided inside the same critical section. For callers that store
/// i2d output without the SSL at hand (an Apache socache provider): TLS 1.3 stateful tickets
/// become single use, TLS 1.2 sessions stay for the client's next connection.
pub const SHMSESS_LOOKUP_TAKE_TLS13: c_int = 2;

/// Store `data_len` bytes (e.g. an i2d'd SSL_SESSION, 1..8192 bytes) under the id
/// (1..32 bytes), valid until Unix time `expires`. Replaces an entry with the same id. The
/// bytes are copied. SHMSESS_ERR_TOO_LARGE for data over 8192 bytes (nothing stored). With
/// `SHMSESS_BYTE_API_REMOTE` the entry is also queued for Redis (sealed, never waited for).
/// Thread- and process-safe.
#[no_mangle]
pub extern "C" fn shmsess_cache_store(
    cache: *mut shmsess_cache,
    id: *const u8,
    id_len: usize,
    data: *const u8,
    data_len: usize,
    expires: u64,
) -> shmsess_result {
    guard("shmsess_cache_store", || {
        let h = handle(cache)?;
        let id = id_arg(id, id_len)?;
        let data = bytes(data, data_len, "data")?;
        let now = crate::util::now_unix();
        let expires = expires.min(u64::from(u32::MAX)) as u32;
        h.tiers(h.byte_reach()).store(id, data, now, expires)?;
        Ok(SHMSESS_OK)
    })
}

/// Copy the entry for `id` into `buf` (`buf_len` bytes) and its length into `*out_len`.
/// With `take` SHMSESS_LOOKUP_TAKE the entry is removed in the same step (exactly one of
/// several concurrent takers gets it); with SHMSESS_LOOKUP_TAKE_TLS13 only if it is a TLS 1.3
/// session; SHMSESS_LOOKUP_KEEP (0) leaves it. Other values count as SHMSESS_LOOKUP_TAKE.
/// SHMSESS_ERR_NOT_FOUND on a miss or an expired entry;
/// SHMSESS_ERR_BUFFER_TOO_SMALL with `*out_len` set to the size needed: nothing is taken
/// (with `SHMSESS_BYTE_API_REMOTE` neither from the segment nor, by a tombstone, in Redis), so
/// a second call with a buffer of that size still gets the entry.
/// With `SHMSESS_BYTE_API_REMOTE` a local miss asks Redis within `remote_timeout_ms`: an entry
/// the lookup would not take is copied into the segment too; one it takes (a TLS 1.3 ticket)
/// is consumed across hosts by a tombstone swap, and refused (SHMSESS_ERR_NOT_FOUND) if it was
/// used elsewhere already, or if it was read from Redis and Redis could not confirm the swap.
/// A local one Redis cannot confirm is returned (its single use is known on this host only).
/// Lock timeouts are then misses too. Thread- and process-safe.
#[no_mangle]
pub extern "C" fn shmsess_cache_lookup(
    cache: *mut shmsess_cache,
    id: *const u8,
    id_len: usize,
    buf: *mut u8,
    buf_len: usize,
    out_len: *mut usize,
    take: c_int,
) -> shmsess_result {
    guard("shmsess_cache_lookup", || {
        lookup(cache, id, id_len, buf, buf_len, out_len, take, None)
    })
}

/// Called by `shmsess_cache_lookup_checked` with an entry's bytes (valid during the call only)
/// and the caller's `userdata`: nonzero if the entry may answer this lookup, 0 if not (e.g. a
/// session made for another virtual host). It must not call into the cache.
pub type shmsess_accept_fn =
    Option<unsafe extern "C" fn(data: *const u8, data_len: usize, userdata: *mut c_void) -> c_int>;

/// `shmsess_cache_lookup`, with `accept` asked about the entry before the lookup uses it up:
/// an entry it refuses is left as it was (not taken, not stored again, not consumed in
/// Redis, not copied into the segment from Redis), counted in `sni_mismatch` and
/// `lookup_refused`, and the lookup is SHMSESS_ERR_NOT_FOUND with the buffer wiped. An entry
/// the lookup takes (`take`) is copied, asked about, and taken once accepted if the segment
/// still holds the same bytes; if another lookup took it meanwhile, SHMSESS_ERR_NOT_FOUND
/// (counted in `lookup_refused`). For a caller that knows what
/// a resumption needs beyond the id (an Apache provider: the vhost's session id context, which
/// OpenSSL checks only after the lookup). A NULL `accept` is `shmsess_cache_lookup`. The
/// lookup goes through the two-tier policy even without `SHMSESS_BYTE_API_REMOTE` (Redis then
/// stays out of it). Thread- and process-safe; `accept` is called on the calling thread,
/// outside the cache's locks. (Added in 0.5.)
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn shmsess_cache_lookup_checked(
    cache: *mut shmsess_cache,
    id: *const u8,
    id_len: usize,
    buf: *mut u8,
    buf_len: usize,
    out_len: *mut usize,
    take: c_int,
    accept: shmsess_accept_fn,
    userdata: *mut c_void,
) -> shmsess_result {
    guard("shmsess_cache_lookup_checked", || {
        let check = accept.map(|f| Accept { f, userdata });
        lookup(cache, id, id_len, buf, buf_len, out_len, take, check)
    })
}

/// A caller's `shmsess_accept_fn` with its userdata.
#[derive(Clone, Copy)]
struct Accept {
    f: unsafe extern "C" fn(*const u8, usize, *mut c_void) -> c_int,
    userdata: *mut c_void,
}

#[allow(clippy::too_many_arguments)]
fn lookup(
    cache: *mut shmsess_cache,
    id: *const u8,
    id_len: usize,
    buf: *mut u8,
    buf_len: usize,
    out_len: *mut usize,
    take: c_int,
    check: Option<Accept>,
) -> Result<shmsess_result, Fail> {
    {
        let h = handle(cache)?;
        let id = id_arg(id, id_len)?;
        if out_len.is_null() {
            return Err(null("out_len"));
        }
        if buf.is_null() && buf_len > 0 {
            return Err(null("buf"));
        }
        let out: &mut [u8] = if buf_len == 0 {
            &mut []
        } else {
            // SAFETY: the caller promises buf_len writable bytes at buf.
            unsafe { std::slice::from_raw_parts_mut(buf, buf_len) }
        };
        let take = match take {
            SHMSESS_LOOKUP_KEEP => Take::Never,
            SHMSESS_LOOKUP_TAKE_TLS13 => Take::If(der::der_session_is_tls13),
            _ => Take::Always,
        };
        let now = crate::util::now_unix();
        let found = match (h.byte_reach(), check) {
            (Reach::LocalOnly, None) => {
                h.tiers(Reach::LocalOnly).lookup_bytes(id, out, take, now)?
            }
            (reach, check) => lookup_policy(&h, reach, id, out, take, check),
        };
        match found {
            Found::Hit { len, .. } => {
                // SAFETY: checked non-NULL.
                unsafe { *out_len = len };
                Ok(SHMSESS_OK)
            }
            Found::Miss => Err(Fail(SHMSESS_ERR_NOT_FOUND, "no entry with that id".into())),
            Found::BufferTooSmall { needed } => {
                // SAFETY: checked non-NULL.
                unsafe { *out_len = needed };
                Err(Fail(
                    SHMSESS_ERR_BUFFER_TOO_SMALL,
                    format!("buffer of {buf_len} bytes is too small for the {needed}-byte entry"),
                ))
            }
        }
    }
}

/// A byte-API lookup through the two-tier policy ([`crate::tiers::Tiers::resume`]): the
/// bytes are the caller's own encoding, so decoding is a copy into its buffer, and whether
/// the entry is for this handshake (mod_ssl: the vhost's session id context) is the caller's
/// `check`, if it gave one.
fn lookup_policy(
    h: &crate::handle::Handle,
    reach: Reach,
    id: &[u8],
    out: &mut [u8],
    take: Take,
    check: Option<Accept>,
) -> Found {
    let mut copy = Copied {
        out,
        len: 0,
        needed: None,
        check,
    };
    let found = h.tiers(reach).resume(id, take, &mut copy);
    match (found, copy.needed) {
        (Some(_), _) => Found::Hit {
            len: copy.len,
            created: 0,
            expires: 0,
        },
        (None, Some(needed)) => Found::BufferTooSmall { needed },
        (None, None) => {
            // Copied, then refused (used on another host): nothing of it stays behind.
            crate::util::wipe(&mut copy.out[..copy.len]);
            Found::Miss
        }
    }
}

/// The caller's buffer as the policy's [`Resumer`]: an entry is "decoded" by copying it
/// there. Parking for a retried ClientHello is the caller's (it has the connection).
struct Copied<'a> {
    out: &'a mut [u8],
    len: usize,
    needed: Option<usize>,
    check: Option<Accept>,
}

impl Resumer for Copied<'_> {
    type Session = ();
    type Parked = Vec<u8>;

    fn room(&self) -> Option<usize> {
        Some(self.out.len())
    }

    fn checks_before_take(&self) -> bool {
        self.check.is_some()
    }

    fn too_small(&mut self, needed: usize) {
        self.needed = Some(needed);
    }

    fn decode(&mut self, der: &[u8]) -> Option<()> {
        self.out[..der.len()].copy_from_slice(der);
        self.len = der.len();
        Some(())
    }

    fn same_host(&mut self, _: &()) -> bool {
        // SAFETY: the caller's function of this type, given our copy for the call's length.
        self.check
            .is_none_or(|c| unsafe { (c.f)(self.out.as_ptr(), self.len, c.userdata) } != 0)
    }

    fn take_parked(&mut self, _: &[u8]) -> Option<(Vec<u8>, (u32, u32))> {
        None
    }

    fn park(&mut self, _: &[u8], _: &[u8], _: (u32, u32)) {}

    fn discard_parked(&mut self) {}
}

/// Count a resumption the caller answered itself from a copy it kept: the TLS 1.3 ticket a
/// `shmsess_cache_lookup` took for a connection's first ClientHello, handed back for the
/// ClientHello retried after a HelloRetryRequest (a provider that can keep it on the
/// connection, as the Apache one does on mod_ssl's connection pool). Counted in
/// `hrr_resumed`, as the session callbacks count theirs; the resumption's one lookup hit was
/// counted by the lookup that took the ticket, so it is not counted again, and nothing is
/// read. Thread- and process-safe; no lock. (Added in 0.5.)
#[no_mangle]
pub extern "C" fn shmsess_cache_count_hrr_resumed(cache: *mut shmsess_cache) -> shmsess_result {
    guard("shmsess_cache_count_hrr_resumed", || {
        let h = handle(cache)?;
        h.cache.globals().hrr_resumed.fetch_add(1, Relaxed);
        Ok(SHMSESS_OK)
    })
}

/// 1 if `der` (`len` bytes) is an encoded `SSL_SESSION` of TLS 1.3, 0 otherwise (also for NULL
/// or bytes that are not a session). Reads only the first fields, without decoding: what
/// `SHMSESS_LOOKUP_TAKE_TLS13` decides by, for a provider that must know whether its lookup
/// took the entry (e.g. to keep it for the ClientHello after a HelloRetryRequest). Pure
/// function; thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_session_is_tls13(der: *const u8, len: usize) -> c_int {
    if der.is_null() {
        return 0;
    }
    // SAFETY: the caller promises `len` readable bytes at `der`.
    let der = unsafe { std::slice::from_raw_parts(der, len) };
    c_int::from(catch_unwind(|| der::der_session_is_tls13(der)).unwrap_or(false))
}

/// Called by `shmsess_cache_iterate` with each live entry: its id, its bytes (both valid only
/// during the call), its expiry (Unix seconds) and the caller's `userdata`. Return 0 to go on,
/// anything else to stop.
pub type shmsess_entry_fn = Option<
    unsafe extern "C" fn(
        id: *const u8,
        id_len: usize,
        data: *const u8,
        data_len: usize,
        expires: u64,
        userdata: *mut c_void,
    ) -> c_int,
>;

/// Call `callback` once for every live (unexpired, checksum-verified) entry, one shard at a
/// time. Each shard's entries are copied under its lock and handed out after it is released,
/// so the callback may take its time and may call into the cache (an entry stored or removed
/// meanwhile may or may not be seen). Copies are wiped after the callback returns. Returns
/// SHMSESS_OK when every shard was visited or the callback stopped the walk;
/// SHMSESS_ERR_LOCK if a shard's lock could not be had (the others were still visited).
/// Thread- and process-safe.
#[no_mangle]
pub extern "C" fn shmsess_cache_iterate(
    cache: *mut shmsess_cache,
    callback: shmsess_entry_fn,
    userdata: *mut c_void,
) -> shmsess_result {
    guard("shmsess_cache_iterate", || {
        let h = handle(cache)?;
        let Some(callback) = callback else {
            return Err(null("callback"));
        };
        let mut stopped = false;
        let skipped = h.cache.export_each(crate::util::now_unix(), |entries| {
            for e in &entries {
                // SAFETY: pointers to our own copies, valid for the call; the callback is the
                // caller's, who promised it is a function of this type.
                let stop = unsafe {
                    callback(
                        e.id.as_ptr(),
                        e.id.len(),
                        e.data.as_ptr(),
                        e.data.len(),
                        u64::from(e.expires),
                        userdata,
                    )
                };
                if stop != 0 {
                    stopped = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        match skipped {
            Some(e) if !stopped => Err(e.into()),
            _ => Ok(SHMSESS_OK),
        }
    })
}

/// Remove the entry for `id` (1..32 bytes). SHMSESS_ERR_NOT_FOUND if there was none, which is
/// normal (OpenSSL removes sessions it never stored). With `SHMSESS_BYTE_API_REMOTE` its Redis
/// value is also queued to become a tombstone. Thread- and process-safe.
#[no_mangle]
pub extern "C" fn shmsess_cache_remove(
    cache: *mut shmsess_cache,
    id: *const u8,
    id_len: usize,
) -> shmsess_result {
    guard("shmsess_cache_remove", || {
        let h = handle(cache)?;
        let id = id_arg(id, id_len)?;
        if h.tiers(h.byte_reach()).remove(id)? {
            Ok(SHMSESS_OK)
        } else {
            Err(Fail(SHMSESS_ERR_NOT_FOUND, "no entry with that id".into()))
        }
    })
}
