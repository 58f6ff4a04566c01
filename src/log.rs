//! The library's messages (recoveries, refused sessions, lock trouble) go to a callback the
//! server installs; by default they go nowhere. Messages never contain session contents.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::RwLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C)]
pub enum Level {
    Error = 1,
    Warning = 2,
    Info = 3,
    Debug = 4,
}

/// C signature of a log callback: level, NUL-terminated message (valid during the call only),
/// the user data given at registration.
pub type LogFn = unsafe extern "C" fn(level: c_int, message: *const c_char, userdata: *mut c_void);

struct Sink {
    f: LogFn,
    userdata: usize,
    max_level: Level,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

pub fn set(f: Option<LogFn>, userdata: *mut c_void, max_level: Level) {
    let mut s = SINK.write().unwrap_or_else(|p| p.into_inner());
    *s = f.map(|f| Sink {
        f,
        userdata: userdata as usize,
        max_level,
    });
}

pub fn emit(level: Level, message: &str) {
    let s = SINK.read().unwrap_or_else(|p| p.into_inner());
    if let Some(sink) = s.as_ref() {
        if level <= sink.max_level {
            let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
            // SAFETY: the callback was registered by the application with this contract.
            unsafe { (sink.f)(level as c_int, c.as_ptr(), sink.userdata as *mut c_void) };
        }
    }
}
