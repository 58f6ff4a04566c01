//! `shmsess_install`: the callbacks, cache mode and session id context on an `SSL_CTX`, the
//! handle it carries (ex_data) for the callbacks to find, and the session id generator.
//!
//! OpenSSL 3.0 cannot read back an SSL_CTX's session id context, so `install` sets one (the
//! options' or one derived from the certificate) unless the caller says it set its own.

use std::ffi::{c_int, c_long, c_uchar, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock, Weak};

use openssl_sys as ossl;
use openssl_sys::{SSL, SSL_CTX};

use super::callbacks::{get_session_cb, new_session_cb, remove_session_cb, ANTI_REPLAY_MESSAGE};
use super::ex_data::Slot;
use super::ossl as extra;
use crate::error::{Error, ErrorKind, Result};
use crate::handle::Handle;
use crate::log::{self, Level};
use crate::store::layout::MAX_ID_LEN;

/// The cache handle on each `SSL_CTX` it was installed on: a reference the `SSL_CTX` holds
/// until it is freed.
static HANDLE: Slot<SSL_CTX, Arc<Handle>> = Slot::new();

/// The cache most recently installed in this process, for an SSL whose SNI or ClientHello
/// callback switched to an SSL_CTX nothing was installed on. A reload that frees the old cache
/// and installs a new one moves it to the new one.
static LATEST: RwLock<Weak<Handle>> = RwLock::new(Weak::new());

fn handle_for_ctx<'a>(ctx: *const SSL_CTX) -> Option<&'a Handle> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: a live SSL_CTX (OpenSSL's callback argument); the handle on it is replaced only
    // by `install`, which OpenSSL requires before the SSL_CTX is used, and lives as long as
    // the SSL_CTX.
    unsafe { HANDLE.get(ctx) }
}

/// Run `f` with the cache installed on `ctx`, or else with the cache most recently installed
/// in this process (an SNI callback may have switched to an SSL_CTX nothing was installed on).
pub(super) fn with_ctx_handle<R>(ctx: *const SSL_CTX, f: impl FnOnce(&Handle) -> R) -> Option<R> {
    if let Some(h) = handle_for_ctx(ctx) {
        return served_here(h).then(|| f(h));
    }
    let latest = LATEST.read().unwrap_or_else(|p| p.into_inner()).upgrade();
    latest.filter(|h| served_here(h)).map(|h| f(&h))
}

const ROOT_NOT_SERVED: &str = "this process runs as root and the session cache was created with SHMSESS_NEVER_LOCK_AS_ROOT (its segment may be written by processes of other users): root never takes its locks, so this process's TLS handshakes are not served by the shared cache (full handshakes, nothing stored); let unprivileged workers handle TLS, or leave the cache out of a server that runs as root only";

/// Whether the callbacks of this process may use `h`'s cache: not as root when the segment is
/// written by less privileged workers (glibc writes through pointers inside a robust mutex).
/// The first refusal in each process is logged; every one is counted.
fn served_here(h: &Handle) -> bool {
    // SAFETY: no preconditions.
    if !h.install.never_lock_as_root || unsafe { libc::geteuid() } != 0 {
        return true;
    }
    h.cache.globals().lock_refused_owner.fetch_add(1, Relaxed);
    static SAID_IN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    // SAFETY: no preconditions.
    let pid = unsafe { libc::getpid() };
    if SAID_IN.swap(pid, Relaxed) != pid {
        log::emit(Level::Warning, ROOT_NOT_SERVED);
    }
    false
}

pub(super) fn with_handle<R>(ssl: *const SSL, f: impl FnOnce(&Handle) -> R) -> Option<R> {
    // SAFETY: ssl is the live SSL OpenSSL passed to the callback.
    with_ctx_handle(unsafe { ossl::SSL_get_SSL_CTX(ssl) }, f)
}

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

/// Tries before the generator gives up (the handshake then fails, as OpenSSL documents). With
/// at least 16 random bytes a second try is already astronomically unlikely.
const MAX_ID_ATTEMPTS: u32 = 10;

/// Random candidates per try, of which the one whose shard has the most free units is kept.
/// Each id's shard is a keyed hash of it, so with one candidate the shards fill unevenly (the
/// fullest evicts while others still have room: at 1 MiB the first evictions came at 93% of
/// what the cache keeps); the emptiest of a few balances them (the "power of d choices"), at
/// the cost of d hashes and d lock-free reads. Placement and lookups are unchanged, and every
/// id is still random (choosing among 4 costs at most 2 bits of its 128+).
pub(crate) const ID_CHOICES: usize = 4;

/// Fill `id` with `prefix` followed by random bytes until `in_use` says the candidate is free.
/// Each try draws [`ID_CHOICES`] candidates and keeps the one of least `load` (the units its
/// shard has in use). Returns false after [`MAX_ID_ATTEMPTS`] tries that were all in use. Ids
/// shorter than the prefix plus 8 random bytes get no prefix at all: a short random id is
/// still unique, a mostly fixed one is not.
pub(crate) fn generate_id(
    id: &mut [u8],
    prefix: &[u8],
    fill_random: &mut dyn FnMut(&mut [u8]),
    load: &mut dyn FnMut(&[u8]) -> u32,
    in_use: &mut dyn FnMut(&[u8]) -> bool,
    collisions: &mut u64,
) -> bool {
    let fixed = if id.len() >= prefix.len() + 8 {
        prefix.len()
    } else {
        0
    };
    id[..fixed].copy_from_slice(&prefix[..fixed]);
    let mut candidate = [0u8; MAX_ID_LEN];
    let candidate = &mut candidate[..id.len()];
    candidate[..fixed].copy_from_slice(&id[..fixed]);
    for _ in 0..MAX_ID_ATTEMPTS {
        let mut least = None;
        for _ in 0..ID_CHOICES {
            fill_random(&mut candidate[fixed..]);
            let l = load(candidate);
            if least.is_none_or(|least| l < least) {
                least = Some(l);
                id[fixed..].copy_from_slice(&candidate[fixed..]);
            }
        }
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
    // SAFETY: OpenSSL's in/out length, checked non-NULL first.
    if ssl.is_null() || id.is_null() || id_len.is_null() || unsafe { *id_len } == 0 {
        return 0;
    }
    // SAFETY: as above.
    let len = (unsafe { *id_len } as usize).min(MAX_ID_LEN);
    // SAFETY: OpenSSL's zeroed buffer of *id_len bytes (we use at most that many).
    let out = unsafe { std::slice::from_raw_parts_mut(id, len) };
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
                &mut |cand| h.cache.shard_load(cand),
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
    let made = match ok {
        Ok(Some(made)) => made,
        // No handle (nothing installed here) or a panic: fill with random bytes, which is what
        // OpenSSL itself would have done, rather than fail the handshake.
        Ok(None) | Err(_) => {
            crate::util::random_bytes(out);
            true
        }
    };
    if !made {
        return 0;
    }
    // SAFETY: checked non-NULL above; the length never grows.
    unsafe { *id_len = len as c_uint };
    1
}

/// Install the callbacks, cache mode and session id context on `ctx`. The SSL_CTX keeps a
/// reference to the cache until it is freed.
pub(crate) fn install(handle: &Arc<Handle>, ctx: *mut SSL_CTX) -> Result<()> {
    install_keeping(handle, ctx, handle.install.keep_session_id_context)
}

/// [`install`], leaving `ctx`'s session id context alone when `keep_session_id_context` (a
/// drop-in that saw the server set one installs per context).
pub(crate) fn install_keeping(
    handle: &Arc<Handle>,
    ctx: *mut SSL_CTX,
    keep_session_id_context: bool,
) -> Result<()> {
    let sid_ctx = if keep_session_id_context {
        None
    } else {
        Some(match &handle.install.session_id_context {
            Some(c) => c.clone(),
            None => derive_session_id_context(ctx)?,
        })
    };
    if HANDLE.index().is_none() {
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
        // A second install on the same SSL_CTX (a reload) drops the reference to the cache
        // installed before.
        if HANDLE.put(ctx, Arc::clone(handle)).is_err() {
            return Err(Error::new(ErrorKind::OpenSsl, "SSL_CTX_set_ex_data failed"));
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
    use crate::store::cache::{Cache, Config};

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
            &mut |_| 0,
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
            &mut |_| 0,
            &mut in_use,
            &mut coll
        ));
        assert_eq!(coll, 2);
        assert_eq!(&id[..2], b"AB");
        // Equal loads: each try keeps its first candidate (1, then 5, then 9).
        let third_try = 2 * ID_CHOICES as u8 + 1;
        assert_eq!(
            id[2..],
            [third_try; 30],
            "the third try's candidate was kept"
        );
    }

    #[test]
    fn the_generator_gives_up_when_every_id_is_taken() {
        let mut id = [0u8; 32];
        let mut coll = 0;
        assert!(!generate_id(
            &mut id,
            b"",
            &mut counter_rng(),
            &mut |_| 0,
            &mut |_| true,
            &mut coll
        ));
        assert_eq!(coll, u64::from(MAX_ID_ATTEMPTS));
    }

    #[test]
    fn the_candidate_whose_shard_is_emptiest_is_kept() {
        let mut id = [0u8; 32];
        let mut coll = 0;
        // Candidate n (all bytes n) has load 100 - n: the last one drawn is the emptiest.
        let mut load = |c: &[u8]| 100 - u32::from(c[31]);
        assert!(generate_id(
            &mut id,
            b"",
            &mut counter_rng(),
            &mut load,
            &mut |_| false,
            &mut coll
        ));
        assert_eq!(id, [ID_CHOICES as u8; 32]);
        // Hostile loads (all at the maximum) still give the first random candidate.
        assert!(generate_id(
            &mut id,
            b"",
            &mut counter_rng(),
            &mut |_| u32::MAX,
            &mut |_| false,
            &mut coll
        ));
        assert_eq!(id, [1u8; 32]);
    }

    /// The shards fill evenly: a 1 MiB cache filled to 97% of its units with sessions under
    /// generated ids evicts nothing. With one random candidate per id the fullest of its ~20
    /// shards overflows long before (at 1 MiB the first evictions came at ~93%).
    #[test]
    fn generated_ids_fill_the_shards_evenly() {
        let cache = Cache::create(&Config {
            size_bytes: 1 << 20,
            ..Config::default()
        })
        .unwrap();
        let capacity = cache.geometry().capacity_units();
        let sessions = capacity * 97 / 100;
        let now = crate::util::now_unix();
        let mut coll = 0;
        for _ in 0..sessions {
            // Like a session's DER (160 bytes, the id inside it): one unit each.
            let mut data = [7u8; 160];
            let mut id = [0u8; 32];
            assert!(generate_id(
                &mut id,
                b"",
                &mut |b| crate::util::random_bytes(b),
                &mut |c| cache.shard_load(c),
                &mut |c| cache.contains(c).unwrap(),
                &mut coll
            ));
            data[64..96].copy_from_slice(&id);
            cache.store_at(&id, &data, now, now + 300, now).unwrap();
        }
        let s = cache.stats();
        assert_eq!(
            s.evicted_live,
            0,
            "{} of {sessions} sessions evicted in {} shards of {} units (fullest {}, emptiest {})",
            s.evicted_live,
            cache.geometry().shard_count,
            cache.geometry().units_per_shard,
            s.max_shard_used_units,
            s.min_shard_used_units
        );
        assert_eq!(s.entries, sessions);
    }

    #[test]
    fn a_short_id_gets_no_prefix() {
        let mut id = [0u8; 16];
        let mut coll = 0;
        assert!(generate_id(
            &mut id,
            b"0123456789",
            &mut counter_rng(),
            &mut |_| 0,
            &mut |_| false,
            &mut coll
        ));
        assert_eq!(id, [1u8; 16]);
    }
}
