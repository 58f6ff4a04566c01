//! `shmsess_set_log_callback`: where the library's messages go (see [`crate::log`]).

use std::ffi::{c_char, c_int, c_void};

use super::guard;
use super::result::{shmsess_result, Fail};
use crate::log::{self, Level};
use shmsess_result::*;

/// Called with each library message: its level (1 error .. 4 debug), the message (valid during
/// the call), and the `userdata` given at registration. May be called from any thread that
/// uses the cache, including inside OpenSSL callbacks; must not call back into this library.
/// With the Redis tier on, messages also come from the library's own writer thread (one per
/// process, started by the first remote write), so the callback must be thread-safe and must
/// not rely on thread-local state of the application's threads. It is never called with the
/// library's state locked: a slow callback holds only the thread that logs.
pub type shmsess_log_fn =
    Option<unsafe extern "C" fn(level: c_int, message: *const c_char, userdata: *mut c_void)>;

/// Route the library's messages (lock recoveries, refused sessions, lock timeouts) to
/// `callback` with `userdata`, for levels up to `max_level` (1 error, 2 warning, 3 info,
/// 4 debug). NULL `callback` turns logging off (the default: nothing is printed). Messages
/// never contain session contents. Process-wide; safe to call at any time. Messages may come
/// from the library's Redis writer thread too (see `shmsess_log_fn`).
#[no_mangle]
pub extern "C" fn shmsess_set_log_callback(
    callback: shmsess_log_fn,
    userdata: *mut c_void,
    max_level: c_int,
) -> shmsess_result {
    guard("shmsess_set_log_callback", || {
        let level = match max_level {
            1 => Level::Error,
            2 => Level::Warning,
            3 => Level::Info,
            4 => Level::Debug,
            _ => {
                return Err(Fail(
                    SHMSESS_ERR_INVALID_ARGUMENT,
                    format!("max_level {max_level} is not 1..4"),
                ))
            }
        };
        log::set(callback, userdata, level);
        Ok(SHMSESS_OK)
    })
}
