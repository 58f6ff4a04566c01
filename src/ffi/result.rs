//! `shmsess_result`, the status every export returns, and the message of the last failure on
//! each thread (`shmsess_last_error`).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

use crate::error::{Error, ErrorKind};

/// Status of every call. `SHMSESS_OK` is 0; anything else comes with a message from
/// `shmsess_last_error()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum shmsess_result {
    SHMSESS_OK = 0,
    /// A required pointer argument was NULL.
    SHMSESS_ERR_NULL_ARGUMENT = 1,
    /// An argument is out of range: size, id length, option, struct size.
    SHMSESS_ERR_INVALID_ARGUMENT = 2,
    /// A system call failed (open, mmap, ...); the message names the file and errno text.
    SHMSESS_ERR_IO = 3,
    /// A segment of another format, layout, size or a corrupted header.
    SHMSESS_ERR_FORMAT = 4,
    /// A segment file that is a symlink, owned by another user or writable by others.
    SHMSESS_ERR_SECURITY = 5,
    /// A session larger than the largest entry (8192 bytes of DER); refused and counted.
    SHMSESS_ERR_TOO_LARGE = 6,
    /// A shard lock could not be taken in time (a live process holds it).
    SHMSESS_ERR_LOCK = 7,
    /// The caller's buffer is too small; the needed size is returned.
    SHMSESS_ERR_BUFFER_TOO_SMALL = 8,
    /// OpenSSL refused an operation.
    SHMSESS_ERR_OPENSSL = 9,
    /// No entry with that id (lookup and remove).
    SHMSESS_ERR_NOT_FOUND = 10,
    /// The cache pointer is not a live handle (already freed, or never created).
    SHMSESS_ERR_BAD_HANDLE = 11,
    /// A bug inside the library was caught at the API boundary; the cache stays usable.
    SHMSESS_ERR_PANIC = 12,
}
use shmsess_result::*;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn code(kind: ErrorKind) -> shmsess_result {
    match kind {
        ErrorKind::Invalid => SHMSESS_ERR_INVALID_ARGUMENT,
        ErrorKind::Io => SHMSESS_ERR_IO,
        ErrorKind::Format => SHMSESS_ERR_FORMAT,
        ErrorKind::Security => SHMSESS_ERR_SECURITY,
        ErrorKind::TooLarge => SHMSESS_ERR_TOO_LARGE,
        ErrorKind::Lock => SHMSESS_ERR_LOCK,
        ErrorKind::BufferTooSmall => SHMSESS_ERR_BUFFER_TOO_SMALL,
        ErrorKind::OpenSsl => SHMSESS_ERR_OPENSSL,
    }
}

/// A failed call: its status and message (the function's name is added by [`super::guard`]).
pub(crate) struct Fail(pub(crate) shmsess_result, pub(crate) String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(code(e.kind), e.message)
    }
}

/// The message of the last failed call on this thread ("" if none). The string belongs to the
/// library and stays valid until the next failing call on the same thread. Never NULL.
#[no_mangle]
pub extern "C" fn shmsess_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Every status code, each named once: the names `shmsess_result_name` returns are made from
/// these identifiers, and the exhaustive `match` in `name` stops the build when a variant of
/// [`shmsess_result`] is missing here (cbindgen cannot expand a macro, so the enum itself stays
/// written out for the header).
macro_rules! result_names {
    ($($variant:ident),* $(,)?) => {
        const ALL_RESULTS: &[shmsess_result] = &[$($variant),*];

        impl shmsess_result {
            /// The variant's own name, e.g. "SHMSESS_ERR_IO".
            pub const fn name(self) -> &'static CStr {
                match self {
                    $($variant => match CStr::from_bytes_with_nul(
                        concat!(stringify!($variant), "\0").as_bytes(),
                    ) {
                        Ok(name) => name,
                        Err(_) => panic!("a status name has a NUL byte"),
                    },)*
                }
            }
        }
    };
}

result_names!(
    SHMSESS_OK,
    SHMSESS_ERR_NULL_ARGUMENT,
    SHMSESS_ERR_INVALID_ARGUMENT,
    SHMSESS_ERR_IO,
    SHMSESS_ERR_FORMAT,
    SHMSESS_ERR_SECURITY,
    SHMSESS_ERR_TOO_LARGE,
    SHMSESS_ERR_LOCK,
    SHMSESS_ERR_BUFFER_TOO_SMALL,
    SHMSESS_ERR_OPENSSL,
    SHMSESS_ERR_NOT_FOUND,
    SHMSESS_ERR_BAD_HANDLE,
    SHMSESS_ERR_PANIC,
);

/// Short constant name of a status code, e.g. "SHMSESS_ERR_IO"; "SHMSESS_ERR_UNKNOWN" for a
/// number that is no status. A static string, never NULL. Pure function; thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_result_name(r: c_int) -> *const c_char {
    ALL_RESULTS
        .iter()
        .find(|&&v| v as c_int == r)
        .map_or(c"SHMSESS_ERR_UNKNOWN", |v| v.name())
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_code_has_its_own_name() {
        for (i, v) in ALL_RESULTS.iter().enumerate() {
            assert_eq!(*v as usize, i, "codes are 0.. in order");
            // SAFETY: a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(shmsess_result_name(i as c_int)) };
            assert_eq!(name.to_str().unwrap(), format!("{v:?}"));
        }
        let past = ALL_RESULTS.len() as c_int;
        for r in [past, -1, c_int::MAX] {
            // SAFETY: a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(shmsess_result_name(r)) };
            assert_eq!(name, c"SHMSESS_ERR_UNKNOWN");
        }
    }
}
