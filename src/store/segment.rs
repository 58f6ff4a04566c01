//! Mapping the segment: anonymous (inherited across `fork`) or a named file that unrelated or
//! restarted processes attach to.
//!
//! A named segment is never visible half-initialised: the creator builds it in a private
//! temporary file (0600, `O_EXCL|O_NOFOLLOW`) in the same directory, reserves every page of it
//! (`fallocate`, so a full filesystem is an `ENOSPC` error here and not a `SIGBUS` later), then
//! `link()`s it to the final name, which fails atomically if somebody else won the race; the
//! loser attaches. The temporary file is removed on every failure path, and temporary files
//! left by a creator that was killed are swept by the next process that creates or attaches.
//!
//! Every mapping is marked `MADV_DONTDUMP`: the segment holds every master secret, and a
//! worker's core dump must not write them to disk.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::error::{Error, ErrorKind, Result};
use crate::log::{self, Level};
use crate::store::layout::{self, Geometry, SegmentHeader, HEADER_BYTES, MAGIC};

/// How often (at most) a process re-checks the size of a named segment's file.
const BACKING_CHECK_INTERVAL_NS: u64 = 1_000_000_000;

/// One process's mapping of a segment (through `memmap2`). Dropping it unmaps this process's
/// view only.
pub struct Mapping {
    raw: MmapRaw,
    /// A named segment's file, kept open so that its size can be re-checked cheaply.
    backing: Option<Backing>,
}

struct Backing {
    /// Closed on drop only while it still is the segment file (see `is_still_the_file`).
    file: std::mem::ManuallyDrop<File>,
    /// (device, inode) of the file when it was opened.
    identity: (u64, u64),
    path: PathBuf,
    /// CLOCK_MONOTONIC_COARSE time (ns) of the next size check; 0: check at the next use.
    /// Zeroed in a child after `fork` (see [`ForkLocal`]): a worker forked within a second of
    /// its parent's last check still checks at its first use.
    next_check_ns: ForkLocal,
    /// The file's size once it was found shorter than the mapping (for good); else u64::MAX.
    truncated_to: AtomicU64,
}

impl Backing {
    fn is_still_the_file(&self) -> bool {
        self.file
            .metadata()
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false)
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if self.is_still_the_file() {
            // SAFETY: dropped once, here; never used afterwards.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.file) };
        }
        // Otherwise the number belongs to another file of the program now: leave it open.
    }
}

impl Mapping {
    pub fn base(&self) -> *mut u8 {
        self.raw.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// The open file behind a named segment (`None` for an anonymous one): for `fstat`,
    /// `pread` or an `flock` on the segment without opening its path again.
    pub fn file(&self) -> Option<&File> {
        self.backing.as_ref().map(|b| &*b.file)
    }

    /// `len` bytes of zeroed `MAP_SHARED` memory that no file name reaches: shared with children
    /// forked afterwards (a segment, or a page of flags and locks between test processes).
    /// It is a `memfd` mapped shared (memmap2's anonymous maps are private, useless after fork);
    /// the descriptor is closed at once, the mapping keeps the memory alive.
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        // SAFETY: a valid NUL-terminated name and flags.
        let fd = unsafe { libc::memfd_create(c"shmsesscache".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this descriptor; the File owns it from here.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        Ok(Mapping {
            raw: map_shared(file.as_raw_fd(), len)?,
            backing: None,
        })
    }

    fn with_file(file: File, path: &Path, len: usize) -> io::Result<Mapping> {
        let raw = map_shared(file.as_raw_fd(), len)?;
        let st = file.metadata()?;
        Ok(Mapping {
            raw,
            backing: Some(Backing {
                file: std::mem::ManuallyDrop::new(file),
                identity: (st.dev(), st.ino()),
                path: path.to_owned(),
                next_check_ns: ForkLocal::new(),
                truncated_to: AtomicU64::new(u64::MAX),
            }),
        })
    }

    /// For a named segment: fail, instead of dying of `SIGBUS` on the next access, once the
    /// file is shorter than the mapping (somebody truncated it). The size is looked at (one
    /// `fstat`) at the first use in a process (forked children included) and then at most once
    /// a second, unless `force`.
    /// Once a truncation is seen, every later call fails too: the process keeps serving,
    /// without the cache.
    pub fn check_backing(&self, force: bool) -> Result<()> {
        let Some(b) = &self.backing else {
            return Ok(());
        };
        let seen = b.truncated_to.load(Relaxed);
        if seen != u64::MAX {
            return Err(self.truncated_error(b, seen));
        }
        let now = coarse_now_ns();
        if !force && now < b.next_check_ns.get().load(Relaxed) {
            return Ok(());
        }
        let size = match b.file.metadata() {
            Ok(m) if (m.dev(), m.ino()) == b.identity => m.len(),
            // The program closed the descriptor and the number now names something else (a
            // daemon closing every descriptor at start): the size cannot be watched any more.
            Ok(_) => {
                b.next_check_ns.get().store(u64::MAX, Relaxed);
                // Info, not a warning: a server forking a child per connection says it per child.
                log::emit(Level::Info, &format!("{}: the program closed the segment file's descriptor (its number is now another file's), so this process can no longer see the file being truncated; the mapping itself is unaffected", b.path.display()));
                return Ok(());
            }
            // Cannot tell: keep going (the mapping itself is unaffected by fstat failing).
            Err(_) => return Ok(()),
        };
        if size < self.len() as u64 {
            if b.truncated_to.swap(size, Relaxed) == u64::MAX {
                log::emit(Level::Error, &self.truncated_error(b, size).message);
            }
            return Err(self.truncated_error(b, size));
        }
        if !force {
            // A forced check (at create/attach) leaves the first use to check again.
            b.next_check_ns
                .get()
                .store(now.saturating_add(BACKING_CHECK_INTERVAL_NS), Relaxed);
        }
        Ok(())
    }

    /// Let the next [`Mapping::check_backing`] look at the file again, whenever the last look
    /// was: a cache that has just been created or attached (which reads the mapping) must not
    /// spend the first use's check, or a truncation in the next second would go unseen.
    pub fn recheck_backing_at_next_use(&self) {
        if let Some(b) = &self.backing {
            b.next_check_ns.get().store(0, Relaxed);
        }
    }

    fn truncated_error(&self, b: &Backing, size: u64) -> Error {
        Error::new(
            ErrorKind::Io,
            format!(
                "{}: the segment file was truncated to {size} bytes while mapped ({} bytes); the cache is off in this process (touching the lost pages would be SIGBUS). Recreate the segment and restart the server; only the file's owner or root can truncate it",
                b.path.display(),
                self.len()
            ),
        )
    }
}

/// A per-process `AtomicU64` that reads 0 in a child after `fork`: it lives in a private page
/// marked `MADV_WIPEONFORK` (Linux ≥ 4.14). Where the kernel lacks it (or the page cannot be
/// had), an ordinary atomic, inherited across `fork`.
struct ForkLocal {
    page: Option<memmap2::MmapMut>,
    fallback: AtomicU64,
}

impl ForkLocal {
    fn new() -> ForkLocal {
        let page = memmap2::MmapMut::map_anon(4096).ok().filter(|p| {
            // SAFETY: madvise on our own page-aligned private mapping.
            unsafe { libc::madvise(p.as_ptr() as *mut _, p.len(), libc::MADV_WIPEONFORK) == 0 }
        });
        ForkLocal {
            page,
            fallback: AtomicU64::new(0),
        }
    }

    fn get(&self) -> &AtomicU64 {
        match &self.page {
            // SAFETY: the page is ours, zero-filled, page aligned and 4096 bytes long; it is
            // only ever accessed through this atomic.
            Some(p) => unsafe { &*(p.as_ptr() as *const AtomicU64) },
            None => &self.fallback,
        }
    }
}

/// Map `len` bytes of `fd` shared and read-write, excluded from core dumps.
fn map_shared(fd: RawFd, len: usize) -> io::Result<MmapRaw> {
    let raw = MmapOptions::new().len(len).map_raw(fd)?;
    // Linux ≥ 3.4. Failing here means the secrets would be in every core dump: refuse.
    raw.advise(Advice::DontDump)?;
    Ok(raw)
}

fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into our timespec; CLOCK_MONOTONIC_COARSE is a vDSO read (no syscall).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// How a segment came to be in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Anonymous,
    CreatedFile,
    AttachedFile,
}

/// A freshly created anonymous segment. The caller initialises it.
pub fn create_anonymous(geo: &Geometry) -> Result<Mapping> {
    Mapping::anonymous(geo.total_bytes)
        .map_err(|e| Error::io(format!("shared mapping of {} bytes", geo.total_bytes), e))
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains a NUL byte", path.display())))
}

/// Create the named segment at `path` (initialised by `init` before anybody can see it) or, if
/// it already exists, attach to it. `expected` is the geometry the caller asked for; an existing
/// segment of another size or slot size is refused, not silently used.
pub fn create_or_attach(
    path: &Path,
    geo: &Geometry,
    owner: Option<(u32, u32)>,
    init: &dyn Fn(&Mapping) -> Result<()>,
) -> Result<(Mapping, Origin)> {
    match create_file(path, geo, owner, init) {
        Ok(m) => Ok((m, Origin::CreatedFile)),
        Err(CreateError::Exists) => {
            let m = attach(path)?;
            refuse_other_geometry(path, &header(&m), geo)?;
            Ok((m, Origin::AttachedFile))
        }
        Err(CreateError::Other(e)) => Err(e),
    }
}

/// An existing segment of another size or slot size than `geo`, refused with the way to
/// resize it (shared by the attach and the options check, so both say the same).
fn refuse_other_geometry(path: &Path, h: &SegmentHeader, geo: &Geometry) -> Result<()> {
    if h.total_bytes as usize == geo.total_bytes && h.format.unit_bytes as usize == geo.unit_bytes {
        return Ok(());
    }
    Err(Error::format(format!(
        "{p}: existing segment has {} bytes with {}-byte slots, but {} bytes with {}-byte slots were requested; either ask for the existing size, or resize it while the servers using it are stopped: remove {p} (its sessions are lost), or keep them with 'shmsesscache dump {p} FILE', remove {p}, 'shmsesscache create {p} --size NEW', 'shmsesscache load {p} FILE'",
        h.total_bytes,
        h.format.unit_bytes,
        geo.total_bytes,
        geo.unit_bytes,
        p = path.display(),
    )))
}

enum CreateError {
    Exists,
    Other(Error),
}

impl From<Error> for CreateError {
    fn from(e: Error) -> CreateError {
        CreateError::Other(e)
    }
}

/// The creator's temporary file. Removed when dropped unless it was linked into place; held
/// under an exclusive `flock` while it is being built, so that a sweeper can tell a creator at
/// work from one that was killed.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(final_path: &Path) -> Result<TempFile> {
        let path = temp_name(final_path);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        // SAFETY: flock on our own descriptor. A fresh O_EXCL file: nobody else holds it.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    fn fd(&self) -> RawFd {
        self.file.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn remove(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn create_file(
    path: &Path,
    geo: &Geometry,
    owner: Option<(u32, u32)>,
    init: &dyn Fn(&Mapping) -> Result<()>,
) -> std::result::Result<Mapping, CreateError> {
    let final_c = cpath(path)?;
    // A quick check avoids building a temporary file when the segment is already there.
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(CreateError::Exists);
    }
    sweep_stale_temps(path);
    let mut tmp = TempFile::create(path)?;
    // The umask can only remove bits, but be explicit: the file holds master secrets.
    // SAFETY: fchmod on our descriptor.
    if unsafe { libc::fchmod(tmp.fd(), 0o600) } != 0 {
        let e = io::Error::last_os_error();
        return Err(Error::io(format!("cannot chmod {}", tmp.path.display()), e).into());
    }
    if let Err(e) = reserve_ignoring_sigxfsz(tmp.fd(), geo.total_bytes as u64) {
        tmp.remove(); // before measuring the free space: it held part of the reservation
        return Err(reserve_error(path, geo.total_bytes, e).into());
    }
    let file = tmp.file.as_ref().expect("not removed yet").try_clone();
    let m = file
        .and_then(|f| Mapping::with_file(f, path, geo.total_bytes))
        .map_err(|e| Error::io(format!("cannot map {}", tmp.path.display()), e))?;
    m.check_backing(true)?;
    init(&m)?;
    if let Some((uid, gid)) = owner {
        // Just before the link: the file appears under its name already owned by the server's
        // user, and a creator killed before this point leaves a temporary file of its own
        // user, which the next creator running as that user sweeps (it removes only its own).
        // SAFETY: fchown on our descriptor.
        if unsafe { libc::fchown(tmp.fd(), uid, gid) } != 0 {
            let e = io::Error::last_os_error();
            return Err(Error::io(
                format!("cannot give {} to uid {uid} gid {gid}", tmp.path.display()),
                e,
            )
            .into());
        }
    }
    // SAFETY: link between two valid paths; fails with EEXIST if the final name appeared.
    let tmp_c = cpath(&tmp.path)?;
    let rc = unsafe { libc::link(tmp_c.as_ptr(), final_c.as_ptr()) };
    let link_err = io::Error::last_os_error();
    // The file is complete: whoever sweeps may treat the temporary name as abandoned now.
    // SAFETY: flock on our own descriptor.
    unsafe { libc::flock(tmp.fd(), libc::LOCK_UN) };
    tmp.remove();
    if rc != 0 {
        if link_err.raw_os_error() == Some(libc::EEXIST) {
            return Err(CreateError::Exists);
        }
        return Err(Error::io(format!("cannot create {}", path.display()), link_err).into());
    }
    Ok(m)
}

/// [`reserve`] with `SIGXFSZ` ignored (the previous disposition is restored after): a file size
/// limit (`RLIMIT_FSIZE`, `ulimit -f`) below the segment's size would otherwise kill the
/// creator silently, leaving its temporary file; ignored, it is `EFBIG`, reported with the
/// limit. The disposition is process-wide: another thread growing a file past the limit
/// meanwhile also gets `EFBIG` instead of the signal.
fn reserve_ignoring_sigxfsz(fd: RawFd, len: u64) -> io::Result<()> {
    // SAFETY: zeroed sigaction structs are valid; SIG_IGN needs no handler.
    let mut ignore: libc::sigaction = unsafe { std::mem::zeroed() };
    ignore.sa_sigaction = libc::SIG_IGN;
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to our structs.
    let swapped = unsafe { libc::sigaction(libc::SIGXFSZ, &ignore, &mut previous) } == 0;
    let r = reserve(fd, len);
    if swapped {
        // SAFETY: puts back exactly what was there.
        unsafe { libc::sigaction(libc::SIGXFSZ, &previous, std::ptr::null_mut()) };
    }
    r
}

/// Allocate every byte of the file now (it is created empty): later page faults never need
/// space the filesystem does not have. Filesystems without `fallocate` get zeros written.
fn reserve(fd: RawFd, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: fallocate on our descriptor; mode 0 also extends the file to `len`.
        if unsafe { libc::fallocate(fd, 0, 0, len as libc::off_t) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => return write_zeros(fd, len),
            _ => return Err(e),
        }
    }
}

fn write_zeros(fd: RawFd, len: u64) -> io::Result<()> {
    // SAFETY: the descriptor stays open (owned by the caller) while this File exists, and
    // ManuallyDrop keeps it from being closed here.
    let f = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let zeros = vec![0u8; 1 << 16];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    f.sync_data()
}

/// The error for a failed reservation: the segment, the size wanted and, for a full
/// filesystem, how much is free and what to do.
fn reserve_error(path: &Path, want: usize, e: io::Error) -> Error {
    let what = format!(
        "{}: cannot reserve {want} bytes for the segment",
        path.display()
    );
    if e.raw_os_error() == Some(libc::EFBIG) {
        return Error::new(ErrorKind::Io, format!("{what}: {e}; {}", file_size_limit()));
    }
    if !matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
        return Error::io(what, e);
    }
    let dir = parent_dir(path);
    let space = match free_space(dir) {
        Some((free, total)) => format!(
            "the filesystem holding {} has {free} bytes free of {total}",
            dir.display()
        ),
        None => format!("the filesystem holding {} is full", dir.display()),
    };
    Error::new(
        ErrorKind::Io,
        format!(
            "{what}: {e}; {space}. Ask for a smaller segment or give the filesystem more room (a tmpfs's size= mount option; Docker's --shm-size)"
        ),
    )
}

/// Why a file could not grow (`EFBIG`): this process's file size limit, if it has one.
fn file_size_limit() -> String {
    // SAFETY: getrlimit into our struct.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY
    {
        format!(
            "this process's file size limit (RLIMIT_FSIZE, ulimit -f) is {} bytes. Raise it (ulimit -f unlimited; LimitFSIZE= in a systemd unit) or ask for a smaller segment",
            lim.rlim_cur
        )
    } else {
        "the filesystem does not take files this large; ask for a smaller segment".to_string()
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// (bytes available to this user, bytes in all) of the filesystem holding `dir`.
fn free_space(dir: &Path) -> Option<(u64, u64)> {
    let c = cpath(dir).ok()?;
    // SAFETY: statvfs on a valid C string into a zeroed struct.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut v) } != 0 {
        return None;
    }
    let frsize = v.f_frsize as u64;
    Some((v.f_bavail as u64 * frsize, v.f_blocks as u64 * frsize))
}

fn temp_name(path: &Path) -> PathBuf {
    let mut r = [0u8; 8];
    crate::util::random_bytes(&mut r);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".tmp.{}.{:016x}",
        std::process::id(),
        u64::from_ne_bytes(r)
    ));
    PathBuf::from(name)
}

/// Remove `NAME.tmp.PID.RANDOM` files that a creator of `path` left behind when it was killed
/// (each may be as large as the segment). Only ours: a regular file (never a symlink) owned by
/// this user, whose creator PID is dead and which nobody holds locked. Best effort.
pub fn sweep_stale_temps(path: &Path) {
    let Some(name) = path.file_name() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return;
    };
    for ent in entries.flatten() {
        let fname = ent.file_name();
        let Some(pid) = temp_creator_pid(fname.as_bytes(), name.as_bytes()) else {
            continue;
        };
        if process_exists(pid) {
            continue;
        }
        let p = parent_dir(path).join(&fname);
        if remove_if_abandoned(&p) {
            log::emit(
                Level::Warning,
                &format!(
                    "removed {}, left behind by process {pid} that died creating the segment",
                    p.display()
                ),
            );
        }
    }
}

/// The PID in `NAME.tmp.PID.<16 hex digits>`, if `file` is such a name for `name`.
fn temp_creator_pid(file: &[u8], name: &[u8]) -> Option<libc::pid_t> {
    let rest = file.strip_prefix(name)?.strip_prefix(b".tmp.")?;
    let dot = rest.iter().position(|&b| b == b'.')?;
    let (pid, random) = (&rest[..dot], &rest[dot + 1..]);
    if random.len() != 16 || !random.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    std::str::from_utf8(pid)
        .ok()?
        .parse()
        .ok()
        .filter(|&p| p > 0)
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn remove_if_abandoned(p: &Path) -> bool {
    let Ok(before) = std::fs::symlink_metadata(p) else {
        return false;
    };
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    if !before.file_type().is_file() || before.uid() != me {
        return false;
    }
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
    else {
        return false;
    };
    let same = f
        .metadata()
        .is_ok_and(|m| m.dev() == before.dev() && m.ino() == before.ino());
    // A creator at work (perhaps in another PID namespace) holds the lock.
    // SAFETY: flock on our own descriptor.
    let unlocked =
        same && unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    unlocked && std::fs::remove_file(p).is_ok()
}

/// Whose segment files an attach accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Only files owned by this process's effective uid (what servers use).
    Owner,
    /// Files of any owner: only for root's tools, which read whatever they are pointed at
    /// anyway (every read of the segment is bounds- and checksum-checked).
    AnyOwner,
}

/// Attach to an existing named segment after checking that it is a regular file (not a
/// symlink) owned by us, neither readable nor writable by group or others, and a segment this
/// build can read.
pub fn attach(path: &Path) -> Result<Mapping> {
    attach_with(path, Trust::Owner)
}

/// [`attach`] with an explicit owner policy.
pub fn attach_with(path: &Path, trust: Trust) -> Result<Mapping> {
    let (file, st) = open_trusted(path, true, trust)?;
    refuse_readable(path, &st)?;
    let size = st.st_size as u64;
    // The header is read into a private copy (pread, not through a mapping that could SIGBUS
    // or change under us) and the geometry is trusted only after it matches the file size.
    let hdr = read_header(&file, path, size)?;
    let geo = Geometry::from_header(&hdr, size)
        .map_err(|m| Error::format(format!("{}: {m}", path.display())))?;
    let m = Mapping::with_file(file, path, geo.total_bytes)
        .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
    // Truncated between the fstat and the mmap: refuse now rather than SIGBUS later.
    m.check_backing(true)?;
    // A creator killed before linking its file leaves it behind also when another creator
    // made the segment afterwards: every attach sweeps, not only a create.
    sweep_stale_temps(path);
    Ok(m)
}

/// The advice for a file at a segment path that is not a segment.
const NOT_OURS: &str =
    "if nothing needs that file, remove it (the segment is then made there), else name another file";

/// A private copy of the header of the segment file `file` (`size` bytes, from its `fstat`):
/// read with `pread`, its magic checked; the caller validates the rest
/// ([`Geometry::from_header`]).
pub fn read_header(file: &File, path: &Path, size: u64) -> Result<SegmentHeader> {
    const LEN: usize = std::mem::size_of::<SegmentHeader>();
    if size < HEADER_BYTES as u64 {
        return Err(Error::format(format!(
            "{}: file has {size} bytes, smaller than a segment header ({HEADER_BYTES}); {NOT_OURS}",
            path.display()
        )));
    }
    let mut buf = [0u8; LEN];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    // SAFETY: SegmentHeader is plain data (integers and byte arrays); any bytes are a value.
    let hdr: SegmentHeader = unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const _) };
    if hdr.magic != MAGIC {
        return Err(Error::format(format!(
            "{}: not a shmsesscache segment (bad magic); {NOT_OURS}",
            path.display()
        )));
    }
    Ok(hdr)
}

/// Segments hold every master secret: a file that group or others can read is refused like
/// one they can write (checked after [`check_file_trust`], which reports writable first).
fn refuse_readable(path: &Path, st: &libc::stat) -> Result<()> {
    if st.st_mode & 0o077 != 0 {
        return Err(Error::security(format!(
            "{} is readable by group or others (mode {:o}) and holds TLS master secrets; it must be 0600: chmod 600 {}",
            path.display(),
            st.st_mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

/// Open `path` (read-write or read-only) without following a symlink, and check that the file
/// may be trusted (see [`check_file_trust`]). Shared by segments and dump files, which both
/// hold session secrets and both must not be planted by somebody else. Opened non-blocking
/// (a FIFO planted at the path would block the open, and every read, forever) and switched
/// back to blocking only once it is known to be a regular file.
pub fn open_trusted(path: &Path, write: bool, trust: Trust) -> Result<(std::fs::File, libc::stat)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::security(format!(
                    "{} is a symbolic link; refusing to follow it",
                    path.display()
                ))
            } else {
                Error::io(format!("cannot open {}", path.display()), e)
            }
        })?;
    // SAFETY: fstat into a zeroed struct on our open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::io(
            format!("cannot stat {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    check_file_trust(path, &st, trust)?;
    // SAFETY: fcntl on our open descriptor.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(Error::io(
            format!("cannot set {} to blocking mode", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok((file, st))
}

/// A regular file, owned by this process's user (unless `trust` says any owner), that
/// neither group nor others can write.
fn check_file_trust(path: &Path, st: &libc::stat, trust: Trust) -> Result<()> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::security(format!(
            "{} is not a regular file: remove it, or name another file",
            path.display()
        )));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != me && trust == Trust::Owner {
        return Err(Error::security(format!(
            "{} is owned by uid {}, not by this process's uid {me}",
            path.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(Error::security(format!(
            "{} is writable by group or others (mode {:o}); it must be 0600: chmod 600 {}",
            path.display(),
            st.st_mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

/// A private copy of a mapped segment's header (the mapping is shared with every process on
/// the segment: what is validated must not be what another process can change afterwards).
pub fn header(m: &Mapping) -> SegmentHeader {
    // SAFETY: every Mapping handed out is at least HEADER_BYTES long and page aligned, and
    // SegmentHeader is plain data; a volatile read copies it once, as it is now.
    unsafe { std::ptr::read_volatile(m.base() as *const SegmentHeader) }
}

/// Fill in the header of a new segment (the rest is zero: mmap of a new file or anonymous
/// memory is zero-filled).
pub fn write_header(m: &Mapping, geo: &Geometry, hash_key: [u64; 2]) {
    let mut h = SegmentHeader {
        magic: MAGIC,
        format: geo.format_word(),
        total_bytes: geo.total_bytes as u64,
        shard_stride: geo.shard_stride as u64,
        shards_offset: HEADER_BYTES as u64,
        hash_key,
        created_unix: crate::util::now_unix() as u64,
        // SAFETY: no preconditions.
        creator_uid: unsafe { libc::geteuid() },
        header_crc: 0,
    };
    h.header_crc = layout::header_crc(&h);
    // SAFETY: the mapping is at least one page and nobody else sees it yet.
    unsafe { std::ptr::write(m.base() as *mut SegmentHeader, h) };
}

pub fn path_display(p: &CStr) -> String {
    String::from_utf8_lossy(p.to_bytes()).into_owned()
}

/// Filesystems that cannot hold a segment file (their files are the kernel's, not data): a
/// path on one is refused by name before anything is created.
const PSEUDO_FILESYSTEMS: [(libc::c_long, &str); 8] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x1cd1, "devpts"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
];

/// The checks a segment path must pass before anything is created or attached, made by
/// `shmsess_options_check` (a server's configuration test) as by `shmsess_cache_create`: the
/// path does not name a directory, its parent directory exists (the message says how to
/// create it) and is not on a pseudo filesystem such as /proc, its name leaves room for the
/// creator's temporary name, and a file already there is one [`attach`] would take for a
/// segment of `geo` (see [`check_existing`]). Follows no symbolic link at the final component.
pub fn check_path(path: &Path, geo: &Geometry) -> Result<()> {
    let shown = path.display();
    let bytes = path.as_os_str().as_bytes();
    let existing = lstat(path);
    if bytes.ends_with(b"/")
        || existing
            .as_ref()
            .is_some_and(|st| is_type(st, libc::S_IFDIR))
    {
        return Err(Error::invalid(format!(
            "segment path {shown} names a directory: give a file name in it, e.g. {}/ssl.sess",
            shown.to_string().trim_end_matches('/')
        )));
    }
    let parent = parent_dir(path);
    check_parent(path, parent)?;
    check_name_length(path, parent)?;
    match existing {
        Some(st) => check_existing(path, &st, geo),
        None => Ok(()),
    }
}

/// The parent directory of segment `path` exists, is a directory and is not on a pseudo
/// filesystem.
fn check_parent(path: &Path, parent: &Path) -> Result<()> {
    let shown = path.display();
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid(format!(
                "segment path {shown}: {} is not a directory",
                parent.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::invalid(format!(
                "the directory {} of segment {shown} does not exist: create it (mkdir -p {}, owned by the user that starts the server, mode 0700 or 0755; under /run, a tmpfs emptied at boot, also with a systemd-tmpfiles line such as \"d {} 0755 root root -\")",
                parent.display(),
                parent.display(),
                parent.display()
            )))
        }
        Err(e) => return Err(Error::io(format!("cannot use the directory {}", parent.display()), e)),
    }
    if let Some(fs) = pseudo_filesystem(parent) {
        return Err(Error::invalid(format!(
            "segment path {shown} is on {fs}, a pseudo filesystem that cannot hold a segment: give a file on tmpfs (/run, /dev/shm) or a local disk"
        )));
    }
    Ok(())
}

/// Digits of the largest PID Linux can hand out (PID_MAX_LIMIT, 2^22 = 4194304): the
/// temporary name must fit whichever process creates the segment.
const PID_DIGITS: usize = 7;

/// The creator's temporary file `NAME.tmp.PID.<16 hex>` ([`temp_name`]) must be a legal file
/// name: a NAME too long for it would only fail when the server starts.
fn check_name_length(path: &Path, parent: &Path) -> Result<()> {
    let name = path.file_name().map_or(0, |n| n.len());
    let suffix = ".tmp.".len() + PID_DIGITS + ".".len() + 16;
    let name_max = name_max(parent);
    if name + suffix <= name_max && path.as_os_str().len() + suffix < libc::PATH_MAX as usize {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "segment file name {} is too long: its name has {name} bytes and may have at most {} (the segment is made under the name NAME.tmp.PID.RANDOM, {suffix} bytes longer, and a file name has at most {name_max} bytes; the whole path must stay under {} bytes): give a shorter file name",
        path.display(),
        name_max.saturating_sub(suffix),
        libc::PATH_MAX as usize - suffix
    )))
}

/// The longest file name the filesystem of `dir` takes (NAME_MAX, 255, when it does not say).
fn name_max(dir: &Path) -> usize {
    let Ok(c) = cpath(dir) else { return 255 };
    // SAFETY: pathconf reads a NUL-terminated path.
    match unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) } {
        n if n > 0 => n as usize,
        _ => 255,
    }
}

/// A file already at the segment path, checked as [`attach`] and [`create_or_attach`] would
/// refuse it, with their messages: no symbolic link, FIFO or device (judged from `lstat`,
/// never opened: opening a FIFO could block), owned by this user, mode 0600, and a segment of
/// the geometry asked for. Only a regular file is opened, read-only, for its header.
fn check_existing(path: &Path, st: &libc::stat, geo: &Geometry) -> Result<()> {
    if is_type(st, libc::S_IFLNK) {
        return Err(Error::security(format!(
            "{} is a symbolic link; refusing to follow it (give the real file, readlink -f {}, or remove the link)",
            path.display(),
            path.display()
        )));
    }
    check_file_trust(path, st, Trust::Owner)?;
    refuse_readable(path, st)?;
    let (file, st) = open_trusted(path, false, Trust::Owner)?;
    let size = st.st_size as u64;
    let hdr = read_header(&file, path, size)?;
    refuse_other_geometry(path, &hdr, geo)?;
    Geometry::from_header(&hdr, size)
        .map(|_| ())
        .map_err(|m| Error::format(format!("{}: {m}", path.display())))
}

/// `lstat` of `path` (the final component not followed); None when there is nothing there
/// (or it cannot be looked at: the create reports that).
fn lstat(path: &Path) -> Option<libc::stat> {
    let c = cpath(path).ok()?;
    // SAFETY: lstat fills a zeroed struct from a NUL-terminated path.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0).then_some(st)
}

fn is_type(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// The name of the pseudo filesystem `dir` is on, if it is on one.
fn pseudo_filesystem(dir: &Path) -> Option<&'static str> {
    let c = cpath(dir).ok()?;
    // SAFETY: statfs fills a zeroed struct from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    PSEUDO_FILESYSTEMS
        .iter()
        .find(|(magic, _)| st.f_type as libc::c_long == *magic)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod path_tests {
    use super::{check_path, create_or_attach, write_header};
    use crate::store::layout::Geometry;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    const MIB: u64 = 1024 * 1024;

    fn geo(bytes: u64) -> Geometry {
        Geometry::plan(bytes, crate::store::layout::DEFAULT_UNIT_BYTES).unwrap()
    }

    fn refused(p: &str) -> String {
        check_path(Path::new(p), &geo(8 * MIB))
            .expect_err(p)
            .to_string()
    }

    /// A fresh directory of this test's own (removed with everything in it at the end).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("shmsess-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).unwrap();
            Scratch(d)
        }
        fn refused(&self, name: &str, bytes: u64) -> String {
            let p = self.0.join(name);
            check_path(&p, &geo(bytes)).expect_err(name).to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn make_segment(p: &Path, bytes: u64) {
        let g = geo(bytes);
        create_or_attach(p, &g, None, &|m| {
            write_header(m, &g, [1, 2]);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn directories_pseudo_filesystems_and_missing_parents_are_refused() {
        assert!(refused("/").contains("names a directory"));
        assert!(refused("/tmp").contains("names a directory"));
        assert!(refused("/tmp/").contains("names a directory"));
        assert!(refused("/proc/ssl.sess").contains("on proc, a pseudo filesystem"));
        assert!(refused("/sys/kernel/ssl.sess").contains("on sysfs"));
        let missing = refused("/nonexistent-shmsess/dir/ssl.sess");
        assert!(
            missing.contains("the directory /nonexistent-shmsess/dir of segment")
                && missing.contains("mkdir -p /nonexistent-shmsess/dir"),
            "{missing}"
        );
        assert!(refused("/etc/passwd/ssl.sess").contains("/etc/passwd is not a directory"));
    }

    #[test]
    fn a_new_file_in_an_existing_directory_is_accepted() {
        let dir = std::env::temp_dir();
        check_path(
            &dir.join("shmsess-path-check-never-made.sess"),
            &geo(8 * MIB),
        )
        .unwrap();
        check_path(
            Path::new("/dev/shm/shmsess-path-check-never-made.sess"),
            &geo(8 * MIB),
        )
        .unwrap();
    }

    #[test]
    fn links_fifos_devices_and_open_modes_are_refused_as_attach_refuses_them() {
        let d = Scratch::new("check-kinds");
        std::os::unix::fs::symlink(d.0.join("elsewhere.sess"), d.0.join("link.sess")).unwrap();
        let link = d.refused("link.sess", 8 * MIB);
        assert!(
            link.contains("is a symbolic link; refusing to follow it"),
            "{link}"
        );
        let fifo = super::cpath(&d.0.join("fifo.sess")).unwrap();
        // SAFETY: mkfifo of a NUL-terminated path in our scratch directory.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let fifo = d.refused("fifo.sess", 8 * MIB);
        assert!(fifo.contains("is not a regular file"), "{fifo}");
        let dev = refused("/dev/null");
        assert!(dev.contains("/dev/null is not a regular file"), "{dev}");
        let open = d.0.join("open.sess");
        make_segment(&open, 8 * MIB);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let readable = d.refused("open.sess", 8 * MIB);
        assert!(
            readable.contains("readable by group or others (mode 640)"),
            "{readable}"
        );
        assert!(readable.contains("chmod 600"), "{readable}");
    }

    #[test]
    fn an_existing_file_must_be_a_segment_of_the_size_asked_for() {
        let d = Scratch::new("check-existing");
        let junk = d.0.join("junk.sess");
        std::fs::write(&junk, vec![0x5a; (8 * MIB) as usize]).unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let junk = d.refused("junk.sess", 8 * MIB);
        assert!(
            junk.contains("not a shmsesscache segment") && junk.contains("remove it"),
            "{junk}"
        );
        let seg = d.0.join("seg.sess");
        make_segment(&seg, 8 * MIB);
        check_path(&seg, &geo(8 * MIB)).unwrap();
        let other = d.refused("seg.sess", 16 * MIB);
        assert!(
            other.contains("existing segment has 8388608 bytes")
                && other.contains("but 16777216 bytes")
                && other.contains("shmsesscache dump"),
            "{other}"
        );
    }

    #[test]
    fn a_name_without_room_for_the_temporary_name_is_refused() {
        let d = Scratch::new("check-long");
        let fits = "s".repeat(255 - ".tmp.4194304.0123456789abcdef".len());
        check_path(&d.0.join(&fits), &geo(8 * MIB)).unwrap();
        let long = d.refused(&format!("{fits}s"), 8 * MIB);
        assert!(
            long.contains("is too long") && long.contains("give a shorter file name"),
            "{long}"
        );
    }
}
