//! The exported C API. Every function catches panics, checks its pointers, returns a
//! [`shmsess_result`] and leaves a message for [`shmsess_last_error`] on failure.
//! `include/shmsesscache.h` is generated from this file by cbindgen (`make header`).
#![allow(non_camel_case_types)]
// C callers pass raw pointers; each export checks them for NULL and documents what it needs.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssl_sys::SSL_CTX;

use crate::cache::{Ages, Cache, Config, Found, Stats, Take, DEFAULT_LOCK_TIMEOUT_MS};
use crate::error::{Error, ErrorKind};
use crate::glue::{self, Handle, InstallOptions, MAX_ID_PREFIX};
use crate::layout::{DEFAULT_UNIT_BYTES, MAX_ID_LEN};
use crate::log::{self, Level};
use crate::remote::{Remote, RemoteConfig};

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

/// Keep OpenSSL's per-process session cache in front of the shared one
/// (`SSL_SESS_CACHE_SERVER` instead of `SERVER | NO_INTERNAL`). Weakens TLS 1.3 single use
/// within one process. OpenSSL then also calls the remove callback for its own housekeeping
/// (`SSL_CTX_free`, flushes, eviction), so with this flag removals never reach the shared
/// cache: sessions OpenSSL drops as bad and `SSL_CTX_remove_session` stay there for other
/// processes; revoke one everywhere with `shmsess_cache_remove`.
pub const SHMSESS_KEEP_INTERNAL_CACHE: u32 = 1;
/// Allow a TLS 1.3 stateful ticket to resume more than once (default: once in the server).
pub const SHMSESS_TLS13_ALLOW_REUSE: u32 = 2;
/// Neither store nor look up TLS 1.3 sessions.
pub const SHMSESS_NO_TLS13: u32 = 4;
/// Do not set a session id context in `shmsess_install` (the caller has set its own).
pub const SHMSESS_KEEP_SESSION_ID_CONTEXT: u32 = 8;
/// Install the library's session id generator even without a prefix: ids of the full length
/// from the kernel's CSPRNG, checked for uniqueness against the shared cache. Implied by a
/// non-empty `session_id_prefix`.
pub const SHMSESS_GENERATE_SESSION_IDS: u32 = 16;
const KNOWN_FLAGS: u32 = 31;

/// Longest session id prefix (bytes); the other 16 or more of a 32-byte id stay random.
pub const SHMSESS_MAX_ID_PREFIX: u32 = 16;

/// Largest session id (bytes).
pub const SHMSESS_MAX_ID_LEN: u32 = 32;
/// Largest session (DER bytes) the cache stores.
pub const SHMSESS_MAX_SESSION_BYTES: u32 = 8192;
/// `lock_timeout_ms` value meaning "wait as long as it takes".
pub const SHMSESS_WAIT_FOREVER: u32 = u32::MAX;

/// `take` of `shmsess_cache_lookup`: leave the entry in place.
pub const SHMSESS_LOOKUP_KEEP: c_int = 0;
/// `take` of `shmsess_cache_lookup`: remove the entry with the copy (single use).
pub const SHMSESS_LOOKUP_TAKE: c_int = 1;
/// `take` of `shmsess_cache_lookup`: remove the entry only if its bytes are a DER
/// `SSL_SESSION` of TLS 1.3, decided inside the same critical section. For callers that store
/// i2d output without the SSL at hand (an Apache socache provider): TLS 1.3 stateful tickets
/// become single use, TLS 1.2 sessions stay for the client's next connection.
pub const SHMSESS_LOOKUP_TAKE_TLS13: c_int = 2;

/// Options for `shmsess_cache_create`. Always start from `shmsess_options_init`, which sets
/// `struct_size` and the defaults; fields added later go at the end, so a program built
/// against an older header keeps working.
#[repr(C)]
pub struct shmsess_options {
    /// `sizeof(shmsess_options)` as the caller knows it (set by `shmsess_options_init`).
    pub struct_size: u32,
    /// `SHMSESS_*` flags above. Default 0.
    pub flags: u32,
    /// NULL (default): anonymous `MAP_SHARED` memory, shared with children forked after
    /// creation. Otherwise a file (e.g. under /dev/shm) created 0600 or attached if it exists
    /// with the same size and slot size. Copied; the string need not outlive the call.
    pub path: *const c_char,
    /// Segment size in bytes, fixed at creation. Default 8 MiB.
    pub size_bytes: u64,
    /// Bytes per slot (a session takes as many consecutive slots as it needs). Multiple of 8,
    /// 64..4096. Default 200: one slot per typical 160-byte session.
    pub slot_bytes: u32,
    /// Longest wait for a shard lock; after it the operation is a miss. Default 200 ms;
    /// `SHMSESS_WAIT_FOREVER` never gives up.
    pub lock_timeout_ms: u32,
    /// If non-zero, the lifetime in seconds given to every stored session (like Apache's
    /// SSLSessionCacheTimeout) instead of the session's own timeout.
    pub session_timeout: u32,
    /// Length of `session_id_context` (1..32), 0 for none.
    pub session_id_context_len: u32,
    /// Session id context `shmsess_install` sets on each SSL_CTX. NULL: the SHA-256 of the
    /// SSL_CTX's certificate. Copied at creation.
    pub session_id_context: *const u8,
    /// Bytes every session id generated in this server starts with (a host or worker tag a
    /// load balancer can route on), 0..16 bytes; the rest of the 32-byte id comes from the
    /// kernel's CSPRNG. Non-empty: `shmsess_install` installs the generator. Ids travel in
    /// clear text: put nothing secret here. Copied at creation; a worker may change its own
    /// with `shmsess_set_session_id_prefix`. (Field added in 0.2; older callers leave it out.)
    pub session_id_prefix: *const u8,
    /// Length of `session_id_prefix` (0..16).
    pub session_id_prefix_len: u32,
    /// NULL (default): one host. Otherwise the second tier shared by several hosts, e.g.
    /// `redis://127.0.0.1:6379/0` or `redis://user:password@10.0.0.5:6379/2` (AUTH and SELECT
    /// on connect; a host name is looked up within `remote_timeout_ms`; `rediss://` for TLS).
    /// Each process connects lazily, after fork, and starts one writer thread on its first new
    /// session: stores and removals are queued, never waited for by the handshake. Requires
    /// `remote_key_file`. Copied at creation.
    /// Used by the session callbacks `shmsess_install` sets; `shmsess_cache_store`, `_lookup`,
    /// `_remove` and `_iterate` stay on the local segment.
    /// (Fields from here on added in 0.3.)
    pub remote_url: *const c_char,
    /// Key file for the second tier: one AES-256 key per line, 64 hex digits (`openssl rand
    /// -hex 32`); the first seals, later ones are still accepted (rotation). A file of exactly
    /// 32 raw bytes is one key. Must be owned by
    /// the user creating the cache and mode 0600; read once, at creation.
    pub remote_key_file: *const c_char,
    /// Prefix of the Redis keys (NULL: "shmsess:"); keys are the prefix and the id in hex.
    pub remote_key_prefix: *const c_char,
    /// Longest a remote operation may take in ms (0: 25 ms): one deadline for name lookup,
    /// connect, AUTH, SELECT, command and reply together. A slower or unreachable store costs
    /// a handshake at most this much per operation.
    pub remote_timeout_ms: u32,
    /// After 3 failed remote operations in a row, a process skips the tier for this long, in
    /// ms, then tries again by itself (0: 2000 ms).
    pub remote_backoff_ms: u32,
    /// For a `rediss://` `remote_url`: PEM file of the CA certificate(s) Redis's certificate
    /// must chain to; its name (or IP address) must match the URL's host. NULL: the system's
    /// CA store. Refused with a `redis://` URL. Read once, at creation. (Added in 0.4.)
    pub remote_ca_file: *const c_char,
    /// Nonzero: `remote_url` is a seed node of a Redis Cluster (database 0). The slot map is
    /// read with CLUSTER SLOTS, each key goes to the master serving its slot, MOVED and ASK
    /// are followed (within the operation's deadline), and the map is read again after a
    /// redirection or a failed node. Nodes must announce IP addresses. (Added in 0.4.)
    pub remote_cluster: u32,
}

/// Statistics of a cache (all processes together). Counters only grow.
#[repr(C)]
#[derive(Default)]
pub struct shmsess_stats {
    /// `sizeof` of the structure the library filled.
    pub struct_size: u32,
    /// Layout version of this structure (`SHMSESS_STATS_VERSION` of the library that filled it).
    pub version: u32,
    pub stores: u64,
    /// Stores that replaced an entry with the same id.
    pub replaced: u64,
    /// Entries dropped because they had expired (on lookup, store or flush).
    pub expired: u64,
    /// Live entries evicted to make room (the shard was full).
    pub evicted: u64,
    pub lookup_hits: u64,
    pub lookup_misses: u64,
    pub remove_hits: u64,
    pub remove_misses: u64,
    /// TLS 1.3 tickets consumed by a lookup (single use).
    pub taken: u64,
    /// Sessions refused because they were larger than SHMSESS_MAX_SESSION_BYTES.
    pub too_large: u64,
    /// Shard locks recovered after their holder died (EOWNERDEAD), each with a repair.
    pub lock_owner_died: u64,
    /// Shards repaired after a panic inside the library left them marked dirty.
    pub dirty_repairs: u64,
    /// Entries dropped because their header or checksum did not verify.
    pub corrupt_dropped: u64,
    /// Operations that gave up waiting for a lock.
    pub lock_timeouts: u64,
    pub lock_errors: u64,
    /// TLS 1.3 sessions not stored because their tickets are stateless (never looked up).
    pub tls13_stateless_skipped: u64,
    /// Calls refused for bad arguments (bad id length, empty data).
    pub bad_input: u64,
    /// i2d/d2i failures.
    pub encode_errors: u64,
    pub decode_errors: u64,
    /// Entries stored now.
    pub entries: u64,
    /// Slots in use and in all.
    pub used_slots: u64,
    pub capacity_slots: u64,
    pub slot_bytes: u64,
    pub shards: u64,
    pub slots_per_shard: u64,
    pub min_shard_used_slots: u64,
    pub max_shard_used_slots: u64,
    pub size_bytes: u64,
    // ---- version 2 ----
    /// Session ids made by the library's generator.
    pub ids_generated: u64,
    /// Generated candidates thrown away because the id was in use.
    pub id_collisions: u64,
    /// When the segment was created (Unix seconds).
    pub created_unix: u64,
    /// When these statistics were taken (Unix seconds).
    pub now_unix: u64,
    /// Creation time of the oldest and newest live entry, 0 when the cache is empty.
    pub oldest_created_unix: u64,
    pub newest_created_unix: u64,
    /// Earliest and latest expiry among live entries, 0 when the cache is empty.
    pub earliest_expiry_unix: u64,
    pub latest_expiry_unix: u64,
    /// Average seconds left before the live entries expire.
    pub avg_time_left_s: u64,
    /// Shard lock acquisitions that had to wait for another process or thread, and the total
    /// time they waited in nanoseconds (contention; uncontended acquisitions are not timed).
    pub lock_contended: u64,
    pub lock_wait_ns: u64,
    /// Second tier (version 3): sessions written to it; local misses it answered and those it
    /// did not have; operations that failed, timed out, or were skipped while it backed off;
    /// values dropped because they did not authenticate; TLS 1.3 tickets found locally but
    /// already resumed on another host (refused).
    pub remote_stores: u64,
    pub remote_hits: u64,
    pub remote_misses: u64,
    pub remote_errors: u64,
    pub remote_timeouts: u64,
    pub remote_skipped: u64,
    pub remote_rejected: u64,
    pub remote_replays_refused: u64,
    // ---- version 4 ----
    /// Resumptions refused because the ClientHello named another server than the session was
    /// made for (virtual hosts chosen by an SNI or ClientHello callback).
    pub sni_mismatch: u64,
    /// TLS 1.3 tickets resumed after a HelloRetryRequest (the retried ClientHello found the
    /// copy its first lookup kept on the connection).
    pub hrr_resumed: u64,
    /// TLS 1.3 lookups skipped because early data is on with OpenSSL's anti-replay, which
    /// refuses every external-cache resumption (tickets are left in place; see the log).
    pub anti_replay_skipped: u64,
    /// Shard locks re-initialised because nobody could ever take them again (held
    /// by a thread that no longer exists, not recoverable, damaged), each followed by a repair
    /// of the shard; lock attempts refused because the process's user does not own the
    /// segment file.
    pub lock_resets: u64,
    pub lock_refused_owner: u64,
    /// Second tier (version 4): TLS 1.3 tickets found locally while Redis could not confirm
    /// they were unused (resumed without early data); writes (new sessions, removals) that
    /// never reached Redis (queue full, or the tier down or backing off).
    pub remote_unconfirmed: u64,
    pub remote_dropped: u64,
}

/// Version of `shmsess_stats` this library fills (`version` field).
pub const SHMSESS_STATS_VERSION: u32 = 4;

/// Opaque cache handle. Created by `shmsess_cache_create`, freed by `shmsess_cache_free`.
pub struct shmsess_cache {
    _private: [u8; 0],
}

/// Called with each library message: its level (1 error .. 4 debug), the message (valid during
/// the call), and the `userdata` given at registration. May be called from any thread that
/// uses the cache, including inside OpenSSL callbacks; must not call back into this library.
/// With the Redis tier on, messages also come from the library's own writer thread (one per
/// process, started by the first remote write), so the callback must be thread-safe and must
/// not rely on thread-local state of the application's threads. It is never called with the
/// library's state locked: a slow callback holds only the thread that logs.
pub type shmsess_log_fn =
    Option<unsafe extern "C" fn(level: c_int, message: *const c_char, userdata: *mut c_void)>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn code(kind: ErrorKind) -> shmsess_result {
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

struct Fail(shmsess_result, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(code(e.kind), e.message)
    }
}

fn null(what: &str) -> Fail {
    Fail(SHMSESS_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
}

/// The panic boundary: runs `f`, turns errors and panics into a status and a message.
fn guard(func: &str, f: impl FnOnce() -> Result<shmsess_result, Fail>) -> shmsess_result {
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
fn handle(cache: *const shmsess_cache) -> Result<Arc<Handle>, Fail> {
    if cache.is_null() {
        return Err(null("cache"));
    }
    if !crate::handles::is_live(cache as usize) {
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

fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Fail> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: the caller promises `len` readable bytes at p (documented on each function).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

fn prefix_arg<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Fail> {
    if len > MAX_ID_PREFIX {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!("session id prefix of {len} bytes is too long: at most {MAX_ID_PREFIX}"),
        ));
    }
    bytes(p, len, "session_id_prefix")
}

fn id_arg<'a>(id: *const u8, id_len: usize) -> Result<&'a [u8], Fail> {
    let id = bytes(id, id_len, "id")?;
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!("id length {id_len} is invalid: must be 1 to {MAX_ID_LEN}"),
        ));
    }
    Ok(id)
}

/// Size of `shmsess_options` in the 0.1 header (its fields up to `session_id_context`): the
/// smallest struct any caller has.
const OPTIONS_V1_BYTES: usize =
    std::mem::offset_of!(shmsess_options, session_id_context) + std::mem::size_of::<*const u8>();

fn default_options() -> shmsess_options {
    shmsess_options {
        struct_size: std::mem::size_of::<shmsess_options>() as u32,
        flags: 0,
        path: std::ptr::null(),
        size_bytes: 8 << 20,
        slot_bytes: DEFAULT_UNIT_BYTES,
        lock_timeout_ms: DEFAULT_LOCK_TIMEOUT_MS as u32,
        session_timeout: 0,
        session_id_context_len: 0,
        session_id_context: std::ptr::null(),
        session_id_prefix: std::ptr::null(),
        session_id_prefix_len: 0,
        remote_url: std::ptr::null(),
        remote_key_file: std::ptr::null(),
        remote_key_prefix: std::ptr::null(),
        remote_timeout_ms: crate::remote::DEFAULT_TIMEOUT.as_millis() as u32,
        remote_backoff_ms: crate::remote::DEFAULT_BACKOFF.as_millis() as u32,
        remote_ca_file: std::ptr::null(),
        remote_cluster: 0,
    }
}

/// Fill `opts` with the defaults: anonymous segment of 8 MiB, 200-byte slots, 200 ms lock
/// timeout, sessions' own timeouts, context from the certificate, no flags.
///
/// The header turns `shmsess_options_init(o)` into `shmsess_options_init_sized(o, sizeof *(o))`,
/// so code compiled against it gets every field it knows. The exported symbol itself, which
/// programs built against earlier headers call, cannot know their struct's size: it writes only
/// the 0.1 fields (48 bytes, never past any caller's struct) and sets `struct_size` to match,
/// so fields such a program sets beyond them (the session id prefix of 0.2, the remote tier of
/// 0.3) are not read: rebuild against this header to use them. `shmsess_cache_create` then
/// logs a warning once (the symbol marks the struct it filled). Call
/// `(shmsess_options_init)(o)` to reach the symbol itself; bindings that cannot expand the
/// macro (cgo, ctypes) should call `shmsess_options_init_sized`.
/// Returns SHMSESS_ERR_NULL_ARGUMENT if `opts` is NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_options_init(opts: *mut shmsess_options) -> shmsess_result {
    let r = shmsess_options_init_sized(opts, OPTIONS_V1_BYTES);
    if r == SHMSESS_OK {
        // SAFETY: initialised above, so at least 48 bytes and non-NULL.
        unsafe { std::ptr::write_unaligned(opts as *mut u32, OPTIONS_LEGACY_INIT) };
    }
    r
}

/// Like `shmsess_options_init`, for a caller whose `shmsess_options` has `size` bytes (its
/// `sizeof`): writes the defaults of the fields that fit, never more than `size` bytes, and
/// sets `struct_size` to what it filled. A `size` below the 0.1 struct (48 bytes) is
/// SHMSESS_ERR_INVALID_ARGUMENT and nothing is written. Thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_options_init_sized(
    opts: *mut shmsess_options,
    size: usize,
) -> shmsess_result {
    guard("shmsess_options_init", || {
        if opts.is_null() {
            return Err(null("opts"));
        }
        if size < OPTIONS_V1_BYTES {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("options size {size} is smaller than the smallest shmsess_options ({OPTIONS_V1_BYTES} bytes)"),
            ));
        }
        let n = size.min(std::mem::size_of::<shmsess_options>());
        let mut d = default_options();
        d.struct_size = n as u32;
        // SAFETY: the caller's struct has at least `size` >= n writable bytes; no reference to
        // it is made, only bytes copied.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &d as *const shmsess_options as *const u8,
                opts as *mut u8,
                n,
            )
        };
        Ok(SHMSESS_OK)
    })
}

/// `struct_size` that the exported `shmsess_options_init` symbol writes: the 0.1 size with the
/// top bit set, so `shmsess_cache_create` can tell options a program initialised through the
/// legacy symbol (it was built against a header before 0.4, or cannot expand the header's
/// macro) and say that their later fields are not read.
const OPTIONS_LEGACY_INIT: u32 = 0x8000_0000 | OPTIONS_V1_BYTES as u32;

/// Offset and size of every field of `shmsess_options`, in order: a `struct_size` that ends
/// inside a field leaves that field out rather than reading half a pointer.
const OPTIONS_FIELDS: [(usize, usize); 18] = {
    use std::mem::{offset_of, size_of};
    type O = shmsess_options;
    [
        (offset_of!(O, struct_size), 4),
        (offset_of!(O, flags), 4),
        (offset_of!(O, path), size_of::<*const c_char>()),
        (offset_of!(O, size_bytes), 8),
        (offset_of!(O, slot_bytes), 4),
        (offset_of!(O, lock_timeout_ms), 4),
        (offset_of!(O, session_timeout), 4),
        (offset_of!(O, session_id_context_len), 4),
        (offset_of!(O, session_id_context), size_of::<*const u8>()),
        (offset_of!(O, session_id_prefix), size_of::<*const u8>()),
        (offset_of!(O, session_id_prefix_len), 4),
        (offset_of!(O, remote_url), size_of::<*const c_char>()),
        (offset_of!(O, remote_key_file), size_of::<*const c_char>()),
        (offset_of!(O, remote_key_prefix), size_of::<*const c_char>()),
        (offset_of!(O, remote_timeout_ms), 4),
        (offset_of!(O, remote_backoff_ms), 4),
        (offset_of!(O, remote_ca_file), size_of::<*const c_char>()),
        (offset_of!(O, remote_cluster), 4),
    ]
};

/// How many of the caller's bytes to read: its `struct_size`, at most ours, cut back to the
/// end of the last field it holds whole.
fn options_bytes(struct_size: usize) -> usize {
    let n = struct_size.min(std::mem::size_of::<shmsess_options>());
    OPTIONS_FIELDS
        .iter()
        .map(|&(off, len)| off + len)
        .filter(|&end| end <= n)
        .max()
        .unwrap_or(0)
}

/// A private copy of the caller's options: the fields its `struct_size` covers whole (at most
/// ours), the rest zero (absent fields). No reference into the caller's memory is made, which
/// may be shorter than this library's struct.
fn read_options(opts: *const shmsess_options) -> Result<shmsess_options, Fail> {
    // SAFETY: every caller's struct starts with struct_size (4 readable bytes).
    let raw = unsafe { std::ptr::read_unaligned(opts as *const u32) };
    let legacy = raw == OPTIONS_LEGACY_INIT;
    let size = if legacy {
        OPTIONS_V1_BYTES
    } else {
        raw as usize
    };
    if size < OPTIONS_V1_BYTES {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!("opts->struct_size {size} is too small: call shmsess_options_init first"),
        ));
    }
    if legacy {
        warn_legacy_init();
    }
    let n = options_bytes(size);
    let mut o = std::mem::MaybeUninit::<shmsess_options>::zeroed();
    // SAFETY: the caller's struct has struct_size >= n readable bytes; the zeroed rest is a
    // valid value of every field (0 and NULL).
    unsafe {
        std::ptr::copy_nonoverlapping(opts as *const u8, o.as_mut_ptr() as *mut u8, n);
        let mut o = o.assume_init();
        o.struct_size = n as u32;
        Ok(o)
    }
}

fn warn_legacy_init() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        log::emit(
            Level::Warning,
            "options were initialised by the legacy shmsess_options_init symbol (a program built against a header before 0.4, or a binding that calls the symbol): only the 0.1 fields are read, so a session id prefix or a remote tier set in them is ignored; rebuild against this header, or call shmsess_options_init_sized(opts, sizeof *opts)",
        )
    });
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
        let handle = Handle::new(cache, install).with_remote(remote);
        let p = Arc::into_raw(Arc::new(handle)) as *mut shmsess_cache;
        if !crate::handles::register(p as usize) {
            // SAFETY: just made and never handed out.
            drop(unsafe { Arc::from_raw(p as *const Handle) });
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("{} caches are alive in this process already: free some with shmsess_cache_free", crate::handles::MAX_LIVE),
            ));
        }
        // SAFETY: out checked above.
        unsafe { *out = p };
        Ok(SHMSESS_OK)
    })
}

/// Everything `shmsess_cache_create` needs besides the segment itself, checked.
struct Plan {
    cfg: Config,
    install: InstallOptions,
    remote: Option<Remote>,
}

/// The one validation of a caller's options, shared by `shmsess_cache_create` and
/// `shmsess_options_check`: flags, sizes (the segment's geometry is planned), path, session
/// id context and prefix, the remote URL, key file and CA file. Makes no segment and
/// connects nothing.
fn plan(opts: *const shmsess_options) -> Result<Plan, Fail> {
    if opts.is_null() {
        return Err(null("opts"));
    }
    let o = &read_options(opts)?;
    if o.flags & !KNOWN_FLAGS != 0 {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!("unknown flags 0x{:x}", o.flags & !KNOWN_FLAGS),
        ));
    }
    if o.size_bytes == 0 {
        return Err(Fail(SHMSESS_ERR_INVALID_ARGUMENT, "size_bytes is 0".into()));
    }
    let path = if o.path.is_null() {
        None
    } else {
        // SAFETY: a NUL-terminated string from the caller.
        let s = unsafe { CStr::from_ptr(o.path) };
        if s.to_bytes().is_empty() {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                "path is empty (use NULL for an anonymous segment)".into(),
            ));
        }
        Some(PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(s.to_bytes()),
        ))
    };
    let sid_ctx = match (o.session_id_context.is_null(), o.session_id_context_len) {
        (_, 0) => None,
        (true, _) => return Err(null("session_id_context (with a non-zero length)")),
        (false, n) if n as usize > MAX_ID_LEN => {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("session_id_context_len {n} is larger than 32"),
            ))
        }
        (false, n) => Some(bytes(o.session_id_context, n as usize, "session_id_context")?.to_vec()),
    };
    // Fields a caller's struct does not have are zero in the copy: absent.
    let id_prefix = if o.session_id_prefix_len > 0 {
        prefix_arg(o.session_id_prefix, o.session_id_prefix_len as usize)?.to_vec()
    } else {
        Vec::new()
    };
    let cfg = Config {
        path,
        size_bytes: o.size_bytes,
        unit_bytes: if o.slot_bytes == 0 {
            DEFAULT_UNIT_BYTES
        } else {
            o.slot_bytes
        },
        lock_timeout: match o.lock_timeout_ms {
            SHMSESS_WAIT_FOREVER => None,
            0 => Some(Duration::from_millis(DEFAULT_LOCK_TIMEOUT_MS)),
            ms => Some(Duration::from_millis(u64::from(ms))),
        },
        owner: None,
    };
    let install = InstallOptions {
        keep_internal_cache: o.flags & SHMSESS_KEEP_INTERNAL_CACHE != 0,
        tls13_reuse: o.flags & SHMSESS_TLS13_ALLOW_REUSE != 0,
        skip_tls13: o.flags & SHMSESS_NO_TLS13 != 0,
        session_timeout: (o.session_timeout != 0).then_some(o.session_timeout),
        session_id_context: sid_ctx,
        keep_session_id_context: o.flags & SHMSESS_KEEP_SESSION_ID_CONTEXT != 0,
        generate_ids: o.flags & SHMSESS_GENERATE_SESSION_IDS != 0 || !id_prefix.is_empty(),
        id_prefix,
    };
    // The same plan Cache::create makes: a size it would refuse is refused here.
    crate::layout::Geometry::plan(cfg.size_bytes, cfg.unit_bytes).map_err(Error::invalid)?;
    let remote = remote_from(o)?;
    Ok(Plan {
        cfg,
        install,
        remote,
    })
}

/// Check `opts` as `shmsess_cache_create` would (flags, sizes, path, session id settings,
/// remote URL, key file with its owner, mode, no symlink and contents, CA file) without
/// creating or attaching a segment and without connecting anywhere: for a server's
/// configuration test (`nginx -t`). A named segment file is not opened, so a file of another
/// size or owner is only found by `shmsess_cache_create`. Returns SHMSESS_OK or the error
/// `shmsess_cache_create` would return, with its message in `shmsess_last_error`.
/// `opts` stays owned by the caller; safe from any thread.
#[no_mangle]
pub extern "C" fn shmsess_options_check(opts: *const shmsess_options) -> shmsess_result {
    guard("shmsess_options_check", || {
        plan(opts)?;
        Ok(SHMSESS_OK)
    })
}

/// The second tier the options ask for, if any (URL parsed and key file read now, in the
/// process that creates the cache; nothing is connected).
fn remote_from(o: &shmsess_options) -> Result<Option<Remote>, Fail> {
    let text = |p: *const c_char, what: &str| -> Result<Option<String>, Fail> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: a NUL-terminated string from the caller.
        let s = unsafe { CStr::from_ptr(p) };
        match s.to_str() {
            Ok("") => Ok(None),
            Ok(v) => Ok(Some(v.to_owned())),
            Err(_) => Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("{what} is not UTF-8"),
            )),
        }
    };
    let Some(url) = text(o.remote_url, "remote_url")? else {
        return Ok(None);
    };
    // It may hold the Redis password: wiped on every path (Remote::new wipes what it takes).
    let mut url = crate::remote::SecretText(url);
    let Some(key_file) = text(o.remote_key_file, "remote_key_file")? else {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            "remote_url needs remote_key_file: sessions leave the host only sealed".into(),
        ));
    };
    let keys = crate::seal::Keyring::load(std::path::Path::new(&key_file))?;
    let prefix = text(o.remote_key_prefix, "remote_key_prefix")?
        .unwrap_or_else(|| crate::remote::DEFAULT_PREFIX.to_owned());
    let ms = |v: u32, default: Duration| {
        if v == 0 {
            default
        } else {
            Duration::from_millis(u64::from(v))
        }
    };
    // Fields the caller's struct does not have are zero in `o` (see read_options): absent.
    let ca_file = text(o.remote_ca_file, "remote_ca_file")?;
    let cluster = o.remote_cluster != 0;
    let remote = Remote::new(RemoteConfig {
        url: url.take(),
        ca_file,
        prefix,
        timeout: ms(o.remote_timeout_ms, crate::remote::DEFAULT_TIMEOUT),
        backoff: ms(o.remote_backoff_ms, crate::remote::DEFAULT_BACKOFF),
        compat: crate::remote::Compat::Detect,
        cluster,
        keys,
    })?;
    Ok(Some(remote))
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
        if !crate::handles::unregister(cache as usize) {
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
        glue::install(&h, ctx)?;
        Ok(SHMSESS_OK)
    })
}

/// Size of `shmsess_stats` version 1 (its fields up to `size_bytes`): what programs built
/// against 0.1 headers allocate.
const STATS_V1_BYTES: usize = std::mem::offset_of!(shmsess_stats, size_bytes) + 8;

/// Fill `*stats` with the cache's statistics (counts of all processes), `struct_size`
/// included. The header turns `shmsess_cache_stats(c, s)` into
/// `shmsess_cache_stats_sized(c, s, sizeof *(s))`, so code compiled against it gets every
/// field it knows; the exported symbol itself, which programs built against 0.1 headers
/// call, writes only the version-1 fields, never past the struct those programs allocated.
/// Thread- and process-safe. The counters are read without locks; the entry ages lock each
/// shard in turn for a 256-tag scan (a shard whose lock times out is left out of the ages),
/// so call it from a status page, not per handshake. Fails with `SHMSESS_ERR_IO`, writing
/// nothing, once the named segment's file is shorter than its mapping (truncated).
#[no_mangle]
pub extern "C" fn shmsess_cache_stats(
    cache: *const shmsess_cache,
    stats: *mut shmsess_stats,
) -> shmsess_result {
    shmsess_cache_stats_sized(cache, stats, STATS_V1_BYTES)
}

/// Like `shmsess_cache_stats`, for a caller whose `shmsess_stats` has `size` bytes (from an
/// older or newer header): fills only the fields that fit. `size` below 8 is an error.
#[no_mangle]
pub extern "C" fn shmsess_cache_stats_sized(
    cache: *const shmsess_cache,
    stats: *mut shmsess_stats,
    size: usize,
) -> shmsess_result {
    guard("shmsess_cache_stats", || {
        let h = handle(cache)?;
        if stats.is_null() {
            return Err(null("stats"));
        }
        if size < 8 {
            return Err(Fail(
                SHMSESS_ERR_INVALID_ARGUMENT,
                format!("stats size {size} is too small"),
            ));
        }
        let now = crate::util::now_unix();
        let full = to_c_stats(&h.cache.try_stats()?, &h.cache.try_ages(now)?, now);
        let n = size.min(std::mem::size_of::<shmsess_stats>());
        // SAFETY: the caller's struct has at least `size` >= n bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &full as *const shmsess_stats as *const u8,
                stats as *mut u8,
                n,
            );
            (*stats).struct_size = n as u32;
        }
        Ok(SHMSESS_OK)
    })
}

pub fn to_c_stats(s: &Stats, a: &Ages, now: u32) -> shmsess_stats {
    let t = |v: Option<u32>| u64::from(v.unwrap_or(0));
    shmsess_stats {
        struct_size: std::mem::size_of::<shmsess_stats>() as u32,
        version: SHMSESS_STATS_VERSION,
        stores: s.stores,
        replaced: s.replaced,
        expired: s.expired,
        evicted: s.evicted_live,
        lookup_hits: s.lookup_hits,
        lookup_misses: s.lookup_misses,
        remove_hits: s.remove_hits,
        remove_misses: s.remove_misses,
        taken: s.taken,
        too_large: s.too_large,
        lock_owner_died: s.owner_died_recoveries,
        dirty_repairs: s.dirty_repairs,
        corrupt_dropped: s.corrupt_dropped,
        lock_timeouts: s.lock_timeouts,
        lock_errors: s.lock_errors,
        tls13_stateless_skipped: s.tls13_stateless_skipped,
        bad_input: s.bad_input,
        encode_errors: s.encode_errors,
        decode_errors: s.decode_errors,
        entries: s.entries,
        used_slots: s.used_units,
        capacity_slots: s.capacity_units,
        slot_bytes: s.unit_bytes,
        shards: s.shard_count,
        slots_per_shard: s.units_per_shard,
        min_shard_used_slots: s.min_shard_used_units,
        max_shard_used_slots: s.max_shard_used_units,
        size_bytes: s.total_bytes,
        ids_generated: s.ids_generated,
        id_collisions: s.id_collisions,
        created_unix: s.created_unix,
        now_unix: u64::from(now),
        oldest_created_unix: t(a.oldest_created),
        newest_created_unix: t(a.newest_created),
        earliest_expiry_unix: t(a.earliest_expiry),
        latest_expiry_unix: t(a.latest_expiry),
        avg_time_left_s: a.time_left_sum.checked_div(a.live).unwrap_or(0),
        lock_contended: s.lock_contended,
        lock_wait_ns: s.lock_wait_ns,
        remote_stores: s.remote.stores,
        remote_hits: s.remote.hits,
        remote_misses: s.remote.misses,
        remote_errors: s.remote.errors,
        remote_timeouts: s.remote.timeouts,
        remote_skipped: s.remote.skipped,
        remote_rejected: s.remote.rejected,
        remote_replays_refused: s.remote.replays_refused,
        sni_mismatch: s.sni_mismatch,
        hrr_resumed: s.hrr_resumed,
        anti_replay_skipped: s.anti_replay_skipped,
        lock_resets: s.lock_resets,
        lock_refused_owner: s.lock_refused_owner,
        remote_unconfirmed: s.remote.unconfirmed,
        remote_dropped: s.remote.dropped,
    }
}

macro_rules! stats_fields {
    ($($f:ident),* $(,)?) => {
        /// Name and offset of every counter of `shmsess_stats`, in struct order.
        const STATS_FIELDS: &[(&CStr, usize)] = &[
            $( (
                match CStr::from_bytes_with_nul(concat!(stringify!($f), "\0").as_bytes()) {
                    Ok(c) => c,
                    Err(_) => panic!("field name"),
                },
                std::mem::offset_of!(shmsess_stats, $f),
            ), )*
        ];
    };
}

stats_fields!(
    stores,
    replaced,
    expired,
    evicted,
    lookup_hits,
    lookup_misses,
    remove_hits,
    remove_misses,
    taken,
    too_large,
    lock_owner_died,
    dirty_repairs,
    corrupt_dropped,
    lock_timeouts,
    lock_errors,
    tls13_stateless_skipped,
    bad_input,
    encode_errors,
    decode_errors,
    entries,
    used_slots,
    capacity_slots,
    slot_bytes,
    shards,
    slots_per_shard,
    min_shard_used_slots,
    max_shard_used_slots,
    size_bytes,
    ids_generated,
    id_collisions,
    created_unix,
    now_unix,
    oldest_created_unix,
    newest_created_unix,
    earliest_expiry_unix,
    latest_expiry_unix,
    avg_time_left_s,
    lock_contended,
    lock_wait_ns,
    remote_stores,
    remote_hits,
    remote_misses,
    remote_errors,
    remote_timeouts,
    remote_skipped,
    remote_rejected,
    remote_replays_refused,
    sni_mismatch,
    hrr_resumed,
    anti_replay_skipped,
    lock_resets,
    lock_refused_owner,
    remote_unconfirmed,
    remote_dropped,
);

/// Number of numeric fields `shmsess_stats_field` can name (in this library version).
#[no_mangle]
pub extern "C" fn shmsess_stats_field_count() -> usize {
    STATS_FIELDS.len()
}

/// The `index`-th numeric field of `*stats`: its name (a static string, e.g. "lookup_hits")
/// in `*name` and its value in `*value`. Lets a server print or export every statistic
/// without knowing the struct (new versions add fields at the end). SHMSESS_ERR_NOT_FOUND when
/// `index` is past the last field or past what `stats->struct_size` covers (a struct filled
/// by an older library). Pure function of its arguments; thread-safe.
#[no_mangle]
pub extern "C" fn shmsess_stats_field(
    stats: *const shmsess_stats,
    index: usize,
    name: *mut *const c_char,
    value: *mut u64,
) -> shmsess_result {
    guard("shmsess_stats_field", || {
        if stats.is_null() {
            return Err(null("stats"));
        }
        if name.is_null() {
            return Err(null("name"));
        }
        if value.is_null() {
            return Err(null("value"));
        }
        // SAFETY: the caller's struct has at least struct_size (>= 8) bytes; checked below
        // before any field is read.
        let size = unsafe { (*stats).struct_size } as usize;
        let Some(&(n, off)) = STATS_FIELDS.get(index).filter(|(_, off)| off + 8 <= size) else {
            return Err(Fail(
                SHMSESS_ERR_NOT_FOUND,
                format!("no statistics field {index}"),
            ));
        };
        // SAFETY: off + 8 <= struct_size; the field is a u64 at that offset.
        unsafe {
            *value = std::ptr::read_unaligned((stats as *const u8).add(off) as *const u64);
            *name = n.as_ptr();
        }
        Ok(SHMSESS_OK)
    })
}

/// Fraction of lookups that hit (0.0 when there were none). NULL gives 0.0.
#[no_mangle]
pub extern "C" fn shmsess_stats_hit_ratio(stats: *const shmsess_stats) -> f64 {
    if stats.is_null() {
        return 0.0;
    }
    // SAFETY: non-NULL stats filled by this library; both fields are in every version.
    let (h, m) = unsafe { ((*stats).lookup_hits, (*stats).lookup_misses) };
    // The counters come from shared memory any owner's process can write, and wrap: summed
    // as floats, so no value overflows (a debug build would panic, a release one wrap).
    let total = h as f64 + m as f64;
    if total == 0.0 {
        0.0
    } else {
        h as f64 / total
    }
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

/// Store `data_len` bytes (e.g. an i2d'd SSL_SESSION, 1..8192 bytes) under the id
/// (1..32 bytes), valid until Unix time `expires`. Replaces an entry with the same id. The
/// bytes are copied. SHMSESS_ERR_TOO_LARGE for data over 8192 bytes (nothing stored).
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
        h.cache
            .store(id, data, now, expires.min(u64::from(u32::MAX)) as u32)?;
        Ok(SHMSESS_OK)
    })
}

/// Copy the entry for `id` into `buf` (`buf_len` bytes) and its length into `*out_len`.
/// With `take` SHMSESS_LOOKUP_TAKE the entry is removed in the same step (exactly one of
/// several concurrent takers gets it); with SHMSESS_LOOKUP_TAKE_TLS13 only if it is a TLS 1.3
/// session; SHMSESS_LOOKUP_KEEP (0) leaves it. Other values count as SHMSESS_LOOKUP_TAKE.
/// SHMSESS_ERR_NOT_FOUND on a miss or an expired entry;
/// SHMSESS_ERR_BUFFER_TOO_SMALL with `*out_len` set to the size needed (nothing taken).
/// Thread- and process-safe.
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
            SHMSESS_LOOKUP_TAKE_TLS13 => Take::If(glue::der_session_is_tls13),
            _ => Take::Always,
        };
        match h
            .cache
            .lookup_taking(id, out, take, crate::util::now_unix())?
        {
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
    c_int::from(catch_unwind(|| glue::der_session_is_tls13(der)).unwrap_or(false))
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
/// normal (OpenSSL removes sessions it never stored). Thread- and process-safe.
#[no_mangle]
pub extern "C" fn shmsess_cache_remove(
    cache: *mut shmsess_cache,
    id: *const u8,
    id_len: usize,
) -> shmsess_result {
    guard("shmsess_cache_remove", || {
        let h = handle(cache)?;
        let id = id_arg(id, id_len)?;
        if h.cache.remove(id)? {
            Ok(SHMSESS_OK)
        } else {
            Err(Fail(SHMSESS_ERR_NOT_FOUND, "no entry with that id".into()))
        }
    })
}

/// The message of the last failed call on this thread ("" if none). The string belongs to the
/// library and stays valid until the next failing call on the same thread. Never NULL.
#[no_mangle]
pub extern "C" fn shmsess_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Short constant name of a status code, e.g. "SHMSESS_ERR_IO". Never NULL.
#[no_mangle]
pub extern "C" fn shmsess_result_name(r: c_int) -> *const c_char {
    let s: &'static CStr = match r {
        0 => c"SHMSESS_OK",
        1 => c"SHMSESS_ERR_NULL_ARGUMENT",
        2 => c"SHMSESS_ERR_INVALID_ARGUMENT",
        3 => c"SHMSESS_ERR_IO",
        4 => c"SHMSESS_ERR_FORMAT",
        5 => c"SHMSESS_ERR_SECURITY",
        6 => c"SHMSESS_ERR_TOO_LARGE",
        7 => c"SHMSESS_ERR_LOCK",
        8 => c"SHMSESS_ERR_BUFFER_TOO_SMALL",
        9 => c"SHMSESS_ERR_OPENSSL",
        10 => c"SHMSESS_ERR_NOT_FOUND",
        11 => c"SHMSESS_ERR_BAD_HANDLE",
        12 => c"SHMSESS_ERR_PANIC",
        _ => c"SHMSESS_ERR_UNKNOWN",
    };
    s.as_ptr()
}

/// The library's version string, e.g. "0.4.0" (the crate's version, which this build was made
/// from). Static; never NULL.
#[no_mangle]
pub extern "C" fn shmsess_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

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
