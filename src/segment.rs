//! Mapping the segment: anonymous (inherited across `fork`) or a named file that unrelated or
//! restarted processes attach to.
//!
//! A named segment is never visible half-initialised: the creator builds it in a private
//! temporary file (0600, `O_EXCL|O_NOFOLLOW`) in the same directory, then `link()`s it to the
//! final name, which fails atomically if somebody else won the race; the loser attaches.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::{self, Geometry, SegmentHeader, HEADER_BYTES, MAGIC};

/// One process's mapping of a segment. Dropping it unmaps this process's view only.
pub struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access to its contents goes through the
// shard locks or atomics.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `len` bytes of zeroed anonymous `MAP_SHARED` memory: shared with children forked
    /// afterwards (a segment, or a page of flags and locks between test processes).
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        Self::map(-1, len)
    }

    fn map(fd: libc::c_int, len: usize) -> io::Result<Mapping> {
        let flags = if fd < 0 {
            libc::MAP_SHARED | libc::MAP_ANONYMOUS
        } else {
            libc::MAP_SHARED
        };
        // SAFETY: a fresh mapping; the kernel validates fd and len.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: p as *mut u8,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len came from a successful mmap.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
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
        .map_err(|e| Error::io(format!("mmap of {} bytes", geo.total_bytes), e))
}

struct Fd(libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe {
            libc::close(self.0);
        }
    }
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
            let h = header(&m);
            if h.total_bytes as usize != geo.total_bytes
                || h.format.unit_bytes as usize != geo.unit_bytes
            {
                return Err(Error::format(format!(
                    "{}: existing segment has {} bytes with {}-byte slots, but {} bytes with {}-byte slots were requested",
                    path.display(),
                    h.total_bytes,
                    h.format.unit_bytes,
                    geo.total_bytes,
                    geo.unit_bytes
                )));
            }
            Ok((m, Origin::AttachedFile))
        }
        Err(CreateError::Other(e)) => Err(e),
    }
}

enum CreateError {
    Exists,
    Other(Error),
}

fn create_file(
    path: &Path,
    geo: &Geometry,
    owner: Option<(u32, u32)>,
    init: &dyn Fn(&Mapping) -> Result<()>,
) -> std::result::Result<Mapping, CreateError> {
    let final_c = cpath(path).map_err(CreateError::Other)?;
    // A quick check avoids building a temporary file when the segment is already there.
    // SAFETY: lstat on a valid C string into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(final_c.as_ptr(), &mut st) } == 0 {
        return Err(CreateError::Exists);
    }
    let tmp = temp_name(path);
    let tmp_c = cpath(&tmp).map_err(CreateError::Other)?;
    let oflags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: open with a valid path.
    let fd = unsafe { libc::open(tmp_c.as_ptr(), oflags, 0o600 as libc::c_uint) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(CreateError::Other(Error::io(
            format!("cannot create {}", tmp.display()),
            e,
        )));
    }
    let fd = Fd(fd);
    let cleanup = |e: Error| {
        // SAFETY: unlinking our own temporary file.
        unsafe { libc::unlink(tmp_c.as_ptr()) };
        CreateError::Other(e)
    };
    // The umask can only remove bits, but be explicit: the file holds master secrets.
    // SAFETY: fchmod/ftruncate on our descriptor.
    if unsafe { libc::fchmod(fd.0, 0o600) } != 0
        || unsafe { libc::ftruncate(fd.0, geo.total_bytes as libc::off_t) } != 0
    {
        let e = io::Error::last_os_error();
        return Err(cleanup(Error::io(
            format!("cannot size {}", tmp.display()),
            e,
        )));
    }
    if let Some((uid, gid)) = owner {
        // Before the link: the file appears under its name already owned by the server's user.
        // SAFETY: fchown on our descriptor.
        if unsafe { libc::fchown(fd.0, uid, gid) } != 0 {
            let e = io::Error::last_os_error();
            return Err(cleanup(Error::io(
                format!("cannot give {} to uid {uid} gid {gid}", tmp.display()),
                e,
            )));
        }
    }
    let m = match Mapping::map(fd.0, geo.total_bytes) {
        Ok(m) => m,
        Err(e) => {
            return Err(cleanup(Error::io(
                format!("cannot map {}", tmp.display()),
                e,
            )))
        }
    };
    if let Err(e) = init(&m) {
        return Err(cleanup(e));
    }
    // SAFETY: link between two valid paths; fails with EEXIST if the final name appeared.
    let rc = unsafe { libc::link(tmp_c.as_ptr(), final_c.as_ptr()) };
    let link_err = io::Error::last_os_error();
    // SAFETY: the temporary name is ours.
    unsafe { libc::unlink(tmp_c.as_ptr()) };
    if rc != 0 {
        if link_err.raw_os_error() == Some(libc::EEXIST) {
            return Err(CreateError::Exists);
        }
        return Err(CreateError::Other(Error::io(
            format!("cannot create {}", path.display()),
            link_err,
        )));
    }
    Ok(m)
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
/// symlink) owned by us, not writable by group or others, and a segment this build can read.
pub fn attach(path: &Path) -> Result<Mapping> {
    attach_with(path, Trust::Owner)
}

/// [`attach`] with an explicit owner policy.
pub fn attach_with(path: &Path, trust: Trust) -> Result<Mapping> {
    let (file, st) = open_trusted(path, true, trust)?;
    let fd = file.as_raw_fd();
    let size = st.st_size as u64;
    if size < HEADER_BYTES as u64 {
        return Err(Error::format(format!(
            "{}: file has {size} bytes, smaller than a segment header ({HEADER_BYTES})",
            path.display()
        )));
    }
    // Map only the header first: geometry is trusted only after it matches the file size.
    let head = Mapping::map(fd, HEADER_BYTES)
        .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
    // SAFETY: the header page is mapped and SegmentHeader is plain data smaller than a page.
    let hdr: SegmentHeader = unsafe { std::ptr::read(head.base() as *const SegmentHeader) };
    drop(head);
    if hdr.magic != MAGIC {
        return Err(Error::format(format!(
            "{}: not a shmsesscache segment (bad magic)",
            path.display()
        )));
    }
    let geo = Geometry::from_header(&hdr, size)
        .map_err(|m| Error::format(format!("{}: {m}", path.display())))?;
    Mapping::map(fd, geo.total_bytes)
        .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))
}

/// Open `path` (read-write or read-only) without following a symlink, and check that the file
/// may be trusted (see [`check_file_trust`]). Shared by segments and dump files, which both
/// hold session secrets and both must not be planted by somebody else.
pub fn open_trusted(path: &Path, write: bool, trust: Trust) -> Result<(std::fs::File, libc::stat)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
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
    Ok((file, st))
}

/// A regular file, owned by this process's user (unless `trust` says any owner), that
/// neither group nor others can write.
fn check_file_trust(path: &Path, st: &libc::stat, trust: Trust) -> Result<()> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::security(format!(
            "{} is not a regular file",
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
            "{} is writable by group or others (mode {:o}); it must be 0600",
            path.display(),
            st.st_mode & 0o777
        )));
    }
    Ok(())
}

/// The header of a mapped segment.
pub fn header(m: &Mapping) -> &SegmentHeader {
    // SAFETY: every Mapping handed out is at least HEADER_BYTES long and page aligned.
    unsafe { &*(m.base() as *const SegmentHeader) }
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
