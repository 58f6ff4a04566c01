//! `shmsess_options`: the struct, its defaults, how a caller's older (shorter) struct is read
//! (`struct_size` versioning), and the one check that turns options into a plan for
//! `shmsess_cache_create` and `shmsess_options_check`.

use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::time::Duration;

use super::result::{shmsess_result, Fail};
use super::{bytes, guard, null};
use crate::error::Error;
use crate::handle::{InstallOptions, MAX_ID_PREFIX};
use crate::log::{self, Level};
use crate::remote::{Planned, Remote, RemoteConfig};
use crate::store::cache::{Config, DEFAULT_LOCK_TIMEOUT_MS};
use crate::store::layout::{DEFAULT_UNIT_BYTES, MAX_ID_LEN};
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
/// The segment is written by less privileged processes (workers that dropped root after it
/// was made, as under `shmsesscache run`): a process whose effective uid is 0 never takes its
/// locks. Its session callbacks then act as a miss (a full handshake, nothing stored or
/// removed), each such call is counted in `lock_refused_owner`, and the first one in each
/// process is logged (warning). glibc writes through pointers kept inside a robust mutex, so
/// root locking memory another user can write would hand that user root's writes. The calls
/// that are not callbacks (`shmsess_cache_store`, `_lookup`, ...) are not affected. (Added in
/// 0.5.)
pub const SHMSESS_NEVER_LOCK_AS_ROOT: u32 = 32;
/// Let the byte API (`shmsess_cache_store`, `_lookup`, `_remove`) use the second tier
/// (`remote_url`) as the session callbacks do: stores and removals are queued for Redis, a
/// local miss asks Redis and refills the segment with what it returns, and an entry `SHMSESS_LOOKUP_TAKE_TLS13` (or
/// `_TAKE`) makes single use is single use across hosts (tombstone swap); one read from Redis
/// whose single use Redis cannot confirm is refused. Without this flag the byte API stays on
/// the local segment, as it did before 0.5, for programs that set a remote tier for the
/// callbacks only. The byte API cannot turn early data off: a caller that allows 0-RTT must
/// not resume a ticket from this lookup with early data (mod_ssl offers no 0-RTT). No effect
/// without `remote_url`. (Added in 0.5.)
pub const SHMSESS_BYTE_API_REMOTE: u32 = 64;
/// The settings come from a command line or an environment that no configuration test has
/// seen (the drop-in: `shmsesscache run`, `SHMSESS_PRELOAD_*`), so `shmsess_options_check` and
/// `shmsess_cache_create` also refuse a relative `path` (the server may change directory or
/// chroot before it is used), a `path` in a directory every user can write that is not sticky,
/// and, for a segment still to be made (anonymous, or no file at `path` yet), a `size_bytes`
/// larger than the memory this machine has available now (`MemAvailable` in /proc/meminfo; not
/// checked where that cannot be read): such a segment cannot be backed, and the server would
/// stall, or be killed, at its first `SSL_CTX`. An existing segment is already backed (its
/// pages are Shmem, which MemAvailable leaves out) and is not bounded. (Added in 0.5.)
pub const SHMSESS_STRICT_SETTINGS: u32 = 128;
/// Every flag above: others are refused.
const KNOWN_FLAGS: u32 = SHMSESS_KEEP_INTERNAL_CACHE
    | SHMSESS_TLS13_ALLOW_REUSE
    | SHMSESS_NO_TLS13
    | SHMSESS_KEEP_SESSION_ID_CONTEXT
    | SHMSESS_GENERATE_SESSION_IDS
    | SHMSESS_NEVER_LOCK_AS_ROOT
    | SHMSESS_BYTE_API_REMOTE
    | SHMSESS_STRICT_SETTINGS;

/// Longest session id prefix (bytes); the other 16 or more of a 32-byte id stay random.
pub const SHMSESS_MAX_ID_PREFIX: u32 = 16;

/// Largest session id (bytes).
pub const SHMSESS_MAX_ID_LEN: u32 = 32;
/// Largest session (DER bytes) the cache stores.
pub const SHMSESS_MAX_SESSION_BYTES: u32 = 8192;
/// `lock_timeout_ms` value meaning "wait as long as it takes".
pub const SHMSESS_WAIT_FOREVER: u32 = u32::MAX;

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
    /// Redis Sentinel: `redis+sentinel://[user:password@]ip:port,ip:port/MASTERNAME/db`
    /// (`rediss+sentinel://` for TLS to sentinels and master): the sentinels, IP addresses,
    /// are asked in turn for the master, which must answer `ROLE` as master; the password
    /// logs in at both; a failed, read-only or demoted master sends the next operation to
    /// the sentinels again (see docs/fleet.md). (Sentinel added after 0.4.) Each process connects lazily, after fork, and starts one writer thread on its first new
    /// session: stores and removals are queued, never waited for by the handshake. Requires
    /// `remote_key_file`. Copied at creation.
    /// Used by the session callbacks `shmsess_install` sets; `shmsess_cache_store`, `_lookup`
    /// and `_remove` stay on the local segment unless `flags` has `SHMSESS_BYTE_API_REMOTE`;
    /// `_iterate` always does.
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
    /// Nonzero: `remote_url` names seed nodes of a Redis Cluster (database 0): one host, or
    /// several, comma-separated, those after the first as IP addresses
    /// (`redis://:pw@10.0.0.5:6379,10.0.0.6:6379/0`), asked in order. The slot map is
    /// read with CLUSTER SLOTS, each key goes to the master serving its slot, MOVED and ASK
    /// are followed (within the operation's deadline), and the map is read again after a
    /// redirection or a failed node. Nodes must announce IP addresses. (Added in 0.4.)
    pub remote_cluster: u32,
    /// A label for this fleet (NULL or "": none), sealed into every value with the database
    /// and the key prefix: a value copied to another database, prefix or fleet does not open
    /// there (two fleets sharing a key file cannot resume each other's sessions). Printable
    /// ASCII without spaces, at most 64 bytes, the same on every host of the fleet; not a
    /// secret. Copied at creation. (Added in 0.5.)
    pub remote_fleet: *const c_char,
}

pub(super) fn prefix_arg<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Fail> {
    if len > MAX_ID_PREFIX {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!("session id prefix of {len} bytes is too long: at most {MAX_ID_PREFIX}"),
        ));
    }
    bytes(p, len, "session_id_prefix")
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
        remote_fleet: std::ptr::null(),
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
/// inside a field leaves that field out rather than reading half a pointer. One list: the
/// macro also destructures the struct naming exactly these fields, so a field added to the
/// struct and not here stops the build ("pattern does not mention field"), even one that fits
/// in padding the offset checks below cannot see.
macro_rules! options_fields {
    ($($field:ident: $size:expr),* $(,)?) => {
        const OPTIONS_FIELDS: [(usize, usize); [$(stringify!($field)),*].len()] =
            [$((std::mem::offset_of!(shmsess_options, $field), $size)),*];

        /// Never called: it only has to compile.
        #[allow(dead_code)]
        fn options_fields_name_every_field(o: shmsess_options) {
            let shmsess_options { $($field: _),* } = o;
        }
    };
}

const PTR: usize = std::mem::size_of::<*const c_char>();

options_fields!(
    struct_size: 4,
    flags: 4,
    path: PTR,
    size_bytes: 8,
    slot_bytes: 4,
    lock_timeout_ms: 4,
    session_timeout: 4,
    session_id_context_len: 4,
    session_id_context: PTR,
    session_id_prefix: PTR,
    session_id_prefix_len: 4,
    remote_url: PTR,
    remote_key_file: PTR,
    remote_key_prefix: PTR,
    remote_timeout_ms: 4,
    remote_backoff_ms: 4,
    remote_ca_file: PTR,
    remote_cluster: 4,
    remote_fleet: PTR,
);

/// `OPTIONS_FIELDS` lists every field of `shmsess_options` once, in struct order: each field
/// starts where the one before ends (rounded up to its own alignment, which for these fields
/// is their size), and the last one ends the struct. A field added to the struct but not to
/// the list stops the build here.
const _: () = {
    let mut end: usize = 0;
    let mut i = 0;
    while i < OPTIONS_FIELDS.len() {
        let (off, len) = OPTIONS_FIELDS[i];
        assert!(
            off == end.next_multiple_of(len),
            "OPTIONS_FIELDS misses a field or is out of order"
        );
        end = off + len;
        i += 1;
    }
    let size = std::mem::size_of::<shmsess_options>();
    let align = std::mem::align_of::<shmsess_options>();
    assert!(
        end.next_multiple_of(align) == size,
        "OPTIONS_FIELDS does not reach the end of shmsess_options"
    );
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

/// Everything `shmsess_cache_create` needs besides the segment itself, checked.
pub(super) struct Plan {
    pub(super) cfg: Config,
    pub(super) install: InstallOptions,
    /// The Redis tier, checked; bound to the segment's counters once the segment exists.
    pub(super) remote: Option<Planned>,
}

/// The one validation of a caller's options, shared by `shmsess_cache_create` and
/// `shmsess_options_check`: flags, sizes (the segment's geometry is planned), path, session
/// id context and prefix, the remote URL, key file and CA file. Makes no segment and
/// connects nothing.
pub(super) fn plan(opts: *const shmsess_options) -> Result<Plan, Fail> {
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
        byte_api_remote: o.flags & SHMSESS_BYTE_API_REMOTE != 0,
        id_prefix,
        never_lock_as_root: o.flags & SHMSESS_NEVER_LOCK_AS_ROOT != 0,
    };
    // The same plan Cache::create makes: a size it would refuse is refused here.
    let geo = crate::store::layout::Geometry::plan(cfg.size_bytes, cfg.unit_bytes)
        .map_err(Error::invalid)?;
    if o.flags & SHMSESS_STRICT_SETTINGS != 0 {
        strict_checks(&cfg)?;
    }
    if let Some(p) = cfg.path.as_deref() {
        crate::store::segment::check_path(p, &geo)?;
    }
    let remote = remote_from(o)?;
    Ok(Plan {
        cfg,
        install,
        remote,
    })
}

/// `SHMSESS_STRICT_SETTINGS`: an absolute path in a directory not every user can write (unless
/// sticky), a size the machine can back now.
fn strict_checks(cfg: &Config) -> Result<(), Fail> {
    if let Some(p) = cfg.path.as_deref().filter(|p| !p.is_absolute()) {
        return Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!(
                "segment path {} is relative: give an absolute path (the server may change directory or chroot), e.g. /run/shmsesscache/{}",
                p.display(),
                p.display()
            ),
        ));
    }
    if let Some(p) = cfg.path.as_deref() {
        writable_by_anyone_refused(p)?;
    }
    if will_be_created(cfg) {
        memory_bound(cfg.size_bytes, memory_available())?;
    }
    Ok(())
}

/// Anonymous, or no file at the path yet: the segment is backed now, by this process. An
/// existing one is already backed (a filled tmpfs file is Shmem, which MemAvailable leaves
/// out: bounding it would refuse, at the next restart, the segment the server already has);
/// its size and owner are check_path's.
fn will_be_created(cfg: &Config) -> bool {
    cfg.path
        .as_deref()
        .is_none_or(|p| std::fs::symlink_metadata(p).is_err())
}

/// A segment to be created must fit in what the machine has available (`avail`, None: unknown).
fn memory_bound(size_bytes: u64, avail: Option<u64>) -> Result<(), Fail> {
    match avail {
        Some(avail) if size_bytes > avail => Err(Fail(
            SHMSESS_ERR_INVALID_ARGUMENT,
            format!(
                "size_bytes {} ({} MiB) is more than the memory this machine has available ({} MiB, MemAvailable): a new segment could not be backed and the server would stall or be killed at start; give a smaller size, e.g. {}M",
                size_bytes,
                size_bytes >> 20,
                avail >> 20,
                ((avail >> 20) / 4).clamp(1, 1024)
            ),
        )),
        _ => Ok(()),
    }
}

/// A segment in a directory every user can write without the sticky bit can be renamed away or
/// replaced by any of them between two starts.
fn writable_by_anyone_refused(path: &std::path::Path) -> Result<(), Fail> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let Ok(m) = std::fs::metadata(dir) else {
        return Ok(()); // a missing directory is check_path's to explain
    };
    let mode = m.permissions().mode();
    if mode & 0o002 == 0 || mode & 0o1000 != 0 {
        return Ok(());
    }
    Err(Fail(
        SHMSESS_ERR_INVALID_ARGUMENT,
        format!(
            "the directory {} of segment {} is writable by every user and not sticky (mode {:04o}): anyone could replace the segment; give a directory only root or the server's user can write, e.g. /run/shmsesscache (mkdir -m 0700)",
            dir.display(),
            path.display(),
            mode & 0o7777
        ),
    ))
}

/// `MemAvailable` from /proc/meminfo, in bytes (`None` where it cannot be read).
fn memory_available() -> Option<u64> {
    #[cfg(test)]
    if let Some(text) = tests::FAKE_MEMINFO.with(|f| f.borrow().clone()) {
        return mem_available_in(&text);
    }
    mem_available_in(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The `MemAvailable:` figure of a meminfo text, in bytes.
fn mem_available_in(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Check `opts` as `shmsess_cache_create` would (flags, sizes, path, session id settings,
/// remote URL, key file with its owner, mode, no symlink and contents, CA file) without
/// creating or attaching a segment and without connecting anywhere: for a server's
/// configuration test (`nginx -t`). A file already at a named segment's path is checked as an
/// attach would check it (no symbolic link, FIFO or device, this user's, mode 0600, a segment
/// of the size asked for) but not mapped. Returns SHMSESS_OK or the error
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
fn remote_from(o: &shmsess_options) -> Result<Option<Planned>, Fail> {
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
    let keys = crate::remote::seal::Keyring::load(std::path::Path::new(&key_file))?;
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
    let fleet = text(o.remote_fleet, "remote_fleet")?.unwrap_or_default();
    let remote = Remote::plan(RemoteConfig {
        url: url.take(),
        ca_file,
        prefix,
        timeout: ms(o.remote_timeout_ms, crate::remote::DEFAULT_TIMEOUT),
        backoff: ms(o.remote_backoff_ms, crate::remote::DEFAULT_BACKOFF),
        compat: crate::remote::Compat::Detect,
        cluster,
        keys,
        fleet,
    })?;
    Ok(Some(remote))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::ffi::CString;

    thread_local! {
        /// A /proc/meminfo text memory_available reads instead of the machine's.
        pub(super) static FAKE_MEMINFO: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    fn with_mem_available<T>(kib: u64, f: impl FnOnce() -> T) -> T {
        FAKE_MEMINFO.with(|m| {
            *m.borrow_mut() = Some(format!("MemTotal: 99999999 kB\nMemAvailable: {kib} kB\n"))
        });
        let out = f();
        FAKE_MEMINFO.with(|m| *m.borrow_mut() = None);
        out
    }

    fn strict_options(path: &CString, size: u64) -> shmsess_options {
        let mut o = default_options();
        o.path = path.as_ptr();
        o.size_bytes = size;
        o.flags |= SHMSESS_STRICT_SETTINGS;
        o
    }

    fn fresh_dir(name: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shmsess-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// Review F4: a segment made while memory was plentiful is attached at the next start even
    /// when MemAvailable (which leaves the segment's own Shmem out) is now below its size.
    #[test]
    fn strict_attaches_an_existing_segment_below_mem_available() {
        let dir = fresh_dir("attach");
        let path = CString::new(dir.join("a.sess").to_str().unwrap()).unwrap();
        let size = 8 << 20;
        let made = plan(&strict_options(&path, size))
            .and_then(|p| crate::store::cache::Cache::create(&p.cfg).map_err(Fail::from));
        assert!(
            made.is_ok(),
            "could not make the segment: {:?}",
            made.err().map(|f| f.1)
        );
        drop(made);
        let attach = with_mem_available(4096, || plan(&strict_options(&path, size)));
        assert!(
            attach.is_ok(),
            "an existing segment was refused: {}",
            attach.err().map(|f| f.1).unwrap_or_default()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A segment still to be made (named with no file yet, or anonymous) must fit.
    #[test]
    fn strict_refuses_creating_a_segment_above_mem_available() {
        let dir = fresh_dir("create");
        let path = CString::new(dir.join("new.sess").to_str().unwrap()).unwrap();
        let named = with_mem_available(4096, || plan(&strict_options(&path, 8 << 20)));
        let msg = named.err().map(|f| f.1).unwrap_or_default();
        assert!(
            msg.contains("MemAvailable") && msg.contains("a new segment could not be backed"),
            "not refused: {msg:?}"
        );
        let mut anon = strict_options(&path, 8 << 20);
        anon.path = std::ptr::null();
        let anon = with_mem_available(4096, || plan(&anon));
        assert!(
            anon.is_err(),
            "an anonymous segment above MemAvailable was not refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
