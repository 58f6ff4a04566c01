//! The exported C API, one file per C concept: [`result`] (status codes and the last error),
//! [`options`] (`shmsess_options`, its ABI versioning and its check), [`cache`] (create, free,
//! install on an `SSL_CTX`, flush, id prefix), [`entries`] (the byte API: store, lookup,
//! remove, iterate), [`stats`] (`shmsess_stats`, filled and named from one field list) and
//! [`log`] (the message callback).
//!
//! This file holds what every export shares: the one panic boundary (`guard`: nothing
//! unwinds into C, every failure leaves a message for `shmsess_last_error`) and the casts from
//! C pointers to Rust values, each checked for NULL.
//!
//! `include/shmsesscache.h` is generated from this folder by cbindgen (`make header`); items
//! already in the header keep their place there (see `examples/gen_header.rs`).
#![allow(non_camel_case_types)]
// C callers pass raw pointers; each export checks them for NULL and documents what it needs.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::handle::Handle;
use crate::store::layout::MAX_ID_LEN;

// In the order a C programmer meets them, which cbindgen follows for the header's types (a
// blank line between each keeps rustfmt from sorting them).
pub mod options;

pub mod cache;

pub mod stats;

pub mod prometheus;

pub mod entries;

pub mod result;

pub mod log;

pub use cache::*;
pub use entries::*;
pub use log::*;
pub use options::*;
pub use prometheus::*;
pub use result::*;
pub use stats::*;

use result::{set_error, Fail};
use shmsess_result::*;

/// The library's version string, e.g. "0.4.0" (the crate's version, which this build was made
/// from). Static; never NULL.
#[no_mangle]
pub extern "C" fn shmsess_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

pub(crate) fn null(what: &str) -> Fail {
    Fail(SHMSESS_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
}

/// The panic boundary: runs `f`, turns errors and panics into a status and a message.
pub(crate) fn guard(
    func: &str,
    f: impl FnOnce() -> Result<shmsess_result, Fail>,
) -> shmsess_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => r,
        Ok(Err(Fail(r, m))) => {
            set_error(&format!("{func}: {m}"));
            r
        }
        Err(_) => {
            set_error(&format!(
                "{func}: internal error (panic caught at the API boundary)"
            ));
            SHMSESS_ERR_PANIC
        }
    }
}

/// Borrow the handle behind a C pointer if it is live. The returned Arc keeps it alive for
/// the duration of the call even if another thread frees it meanwhile.
pub(crate) fn handle(cache: *const shmsess_cache) -> Result<Arc<Handle>, Fail> {
    if cache.is_null() {
        return Err(null("cache"));
    }
    if !crate::handle::is_live(cache as usize) {
        return Err(Fail(
            SHMSESS_ERR_BAD_HANDLE,
            "cache is not a live handle (freed already?)".into(),
        ));
    }
    // SAFETY: the pointer is live, so it came from Arc::into_raw and has not been released (a
    // shmsess_cache_free racing with this call on the same handle is the caller's bug, as with
    // free(); documented on shmsess_cache_free).
    unsafe {
        let p = cache as *const Handle;
        Arc::increment_strong_count(p);
        Ok(Arc::from_raw(p))
    }
}

pub(crate) fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: the caller promises `len` readable bytes at p (documented on each function).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

pub(crate) fn id_arg<'a>(id: *const u8, id_len: usize) -> Result<&'a [u8], Fail> {
    let id = bytes(id, id_len, "id")?;
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!("id length {id_len} is invalid: must be 1 to {MAX_ID_LEN}"),
        ));
    }
    Ok(id)
}
