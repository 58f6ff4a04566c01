//! The cache handle's life: `shmsess_cache_create` and `_free`, `shmsess_install` on an
//! `SSL_CTX`, `shmsess_cache_flush` and this process's session id prefix.

use std::sync::Arc;

use openssl_sys::SSL_CTX;

use super::options::{plan, prefix_arg, shmsess_options, Plan, SHMSESS_KEEP_SESSION_ID_CONTEXT};
use super::result::{shmsess_result, Fail};
use super::{guard, handle, null};
use crate::handle::{self, Handle};
use crate::store::cache::Cache;
use crate::tls::install;
use shmsess_result::*;

/// Opaque cache handle. Created by `shmsess_cache_create`, freed by `shmsess_cache_free`.
pub struct shmsess_cache {
    _private: [u8; 0],
}

/// Create a cache as `opts` says and store a new handle in `*out` (set to NULL on failure).
/// Call it in the parent before forking workers: an anonymous segment is shared only with
/// children forked afterwards. A named segment (`opts->path`) is created 0600 without
/// following symlinks, or attached if it exists and has the same size and slot size; a file of
/// another format, size, owner or with a loose mode is refused with a message naming it.
/// The handle is owned by the caller (free it with `shmsess_cache_free`); it may be used from
/// any thread and in every forked child.
#[no_mangle]
pub extern "C" fn shmsess_cache_create(
    opts: *const shmsess_options,
    out: *mut *mut shmsess_cache,
) -> shmsess_result {
    guard("shmsess_cache_create", || {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: out is a caller-owned pointer slot.
        unsafe { *out = std::ptr::null_mut() };
        let Plan {
            cfg,
            install,
            remote,
        } = plan(opts)?;
        let cache = Cache::create(&cfg)?;
        let remote = remote.map(|r| r.bind(cache.remote_counters()));
        let handle = Handle::new(cache, install).with_remote(remote);
        let p = Arc::into_raw(Arc::new(handle)) as *mut shmsess_cache;
        if !handle::register(p as usize) {
            // SAFETY: just made and never handed out.
            drop(unsafe { Arc::from_raw(p as *const Handle) });
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("{} caches are alive in this process already: free some with shmsess_cache_free", handle::MAX_LIVE),
            ));
        }
        // SAFETY: out checked above.
        unsafe { *out = p };
        Ok(SHMSESS_OK)
    })
}

/// Release the caller's handle. SSL_CTXs the cache was installed on keep it mapped until they
/// are freed. NULL is accepted; a pointer that is not a live handle is ignored (and reported
/// through `shmsess_last_error`). A named segment's file is left in place. As with `free()`,
/// no other thread may still be calling the library with this handle: handles are checked
/// without a process-wide lock, so a call racing with the free is not protected.
#[no_mangle]
pub extern "C" fn shmsess_cache_free(cache: *mut shmsess_cache) {
    guard("shmsess_cache_free", || {
        if cache.is_null() {
            return Ok(SHMSESS_OK);
        }
        if !handle::unregister(cache as usize) {
            return Err(Fail(
                SHMSESS_ERR_BAD_HANDLE,
                "cache is not a live handle (freed twice?)".into(),
            ));
        }
        // SAFETY: it was live, so this releases the reference created in shmsess_cache_create.
        drop(unsafe { Arc::from_raw(cache as *const Handle) });
        Ok(SHMSESS_OK)
    });
}

/// Make `ctx` use the cache: sets the new/get/remove session callbacks, the cache mode
/// (`SERVER | NO_INTERNAL`, or `SERVER` with SHMSESS_KEEP_INTERNAL_CACHE) and a session id
/// context: the one in the options, else the SHA-256 of the certificate already loaded on
/// `ctx` (so load it first); with SHMSESS_KEEP_SESSION_ID_CONTEXT the context the caller set is
/// left alone (OpenSSL 3.0 offers no way to read it, so the library cannot tell by itself).
/// Install on every SSL_CTX of the server, including those an SNI callback switches to;
/// several SSL_CTXs may share one cache. Call before `SSL_new` on `ctx`, in one thread.
/// The SSL_CTX holds a reference to the cache until it is freed.
#[no_mangle]
pub extern "C" fn shmsess_install(cache: *mut shmsess_cache, ctx: *mut SSL_CTX) -> shmsess_result {
    guard("shmsess_install", || {
        let h = handle(cache)?;
        if ctx.is_null() {
            return Err(null("ctx"));
        }
        install::install(&h, ctx)?;
        Ok(SHMSESS_OK)
    })
}

/// Flags `shmsess_install_flags` takes (per context).
const INSTALL_FLAGS: u32 = SHMSESS_KEEP_SESSION_ID_CONTEXT;

/// Like `shmsess_install`, with flags for this `ctx` alone, ORed with the cache's own:
/// `SHMSESS_KEEP_SESSION_ID_CONTEXT` leaves the context the server set on `ctx` in place
/// (the cache's other contexts still get one derived). For a caller that knows per context
/// whether the server set one (the drop-in watches `SSL_CTX_set_session_id_context`). Any
/// other flag is `SHMSESS_ERR_INVALID_ARGUMENT` and nothing is changed. Same ownership and
/// threading rules as `shmsess_install`. (Added in 0.5.)
#[no_mangle]
pub extern "C" fn shmsess_install_flags(
    cache: *mut shmsess_cache,
    ctx: *mut SSL_CTX,
    flags: u32,
) -> shmsess_result {
    guard("shmsess_install_flags", || {
        let h = handle(cache)?;
        if ctx.is_null() {
            return Err(null("ctx"));
        }
        if flags & !INSTALL_FLAGS != 0 {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!(
                    "shmsess_install_flags takes only SHMSESS_KEEP_SESSION_ID_CONTEXT, not 0x{:x}",
                    flags & !INSTALL_FLAGS
                ),
            ));
        }
        let keep =
            h.install.keep_session_id_context || flags & SHMSESS_KEEP_SESSION_ID_CONTEXT != 0;
        install::install_keeping(&h, ctx, keep)?;
        Ok(SHMSESS_OK)
    })
}

/// Set the prefix this process's generated session ids start with (0..16 bytes; 0 removes
/// it), e.g. in each worker after fork to add a worker number to the host's prefix. Affects
/// only the calling process and only SSL_CTXs on which the generator was installed (a prefix
/// or SHMSESS_GENERATE_SESSION_IDS at creation). The bytes are copied. Thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_set_session_id_prefix(
    cache: *mut shmsess_cache,
    prefix: *const u8,
    prefix_len: usize,
) -> shmsess_result {
    guard("shmsess_set_session_id_prefix", || {
        let h = handle(cache)?;
        let p = if prefix_len == 0 {
            Vec::new()
        } else {
            prefix_arg(prefix, prefix_len)?.to_vec()
        };
        if !h.install.generate_ids {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                "the session id generator is not enabled for this cache: set session_id_prefix or SHMSESS_GENERATE_SESSION_IDS in the options".into(),
            ));
        }
        *h.id_prefix.write().unwrap_or_else(|p| p.into_inner()) = p;
        Ok(SHMSESS_OK)
    })
}

/// Remove every entry (`expired_at == 0`) or those expired at Unix time `expired_at`.
/// Process-safe; locks one shard at a time. SHMSESS_ERR_LOCK if a shard could not be locked
/// (the others are flushed anyway).
#[no_mangle]
pub extern "C" fn shmsess_cache_flush(
    cache: *mut shmsess_cache,
    expired_at: u64,
) -> shmsess_result {
    guard("shmsess_cache_flush", || {
        let h = handle(cache)?;
        let when = (expired_at != 0).then(|| expired_at.min(u64::from(u32::MAX)) as u32);
        h.cache.flush(when)?;
        Ok(SHMSESS_OK)
    })
}
