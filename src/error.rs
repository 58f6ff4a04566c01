//! One error type for the Rust core; the C API maps its kind to a status code and keeps its
//! message for `shmsess_last_error()`.

use std::fmt;
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An argument is out of range (bad size, id length, options).
    Invalid,
    /// An operating-system call failed.
    Io,
    /// A segment of another format, size or layout.
    Format,
    /// A file we refuse to trust (symlink, other owner, loose mode).
    Security,
    /// A session larger than the largest entry.
    TooLarge,
    /// A shard lock could not be taken (timeout or unrecoverable).
    Lock,
    /// The caller's buffer is too small for the result.
    BufferTooSmall,
    /// OpenSSL refused something.
    OpenSsl,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, m)
    }
    pub fn format(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Format, m)
    }
    pub fn security(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Security, m)
    }
    pub fn io(what: impl fmt::Display, e: io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{what}: {e}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
