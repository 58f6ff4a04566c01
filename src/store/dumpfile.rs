//! The file `shmsesscache dump` writes and `shmsesscache load` reads: the live sessions of a
//! segment with their times, for a warm restart or a move to a bigger segment.
//!
//! ```text
//! file   = "SHMSDUMP" | version u32 | count u32 | written_unix u64 | crc32 of the above u32
//!          record*count
//!          "SHMSEND\0" | crc32 of every byte before it u32
//! record = id_len u8 | id | created u32 | expires u32 | data_len u32 | data
//! ```
//! Little endian throughout. The file holds master secrets: it is written 0600 through a
//! temporary file (`O_EXCL|O_NOFOLLOW`) renamed into place, and read only if it is a regular
//! file that nobody but its owner can write. A file that does not verify is refused whole, so
//! a load never stores half of a damaged file.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::store::cache::{Cache, ExportedEntry};
use crate::store::layout::{MAX_ID_LEN, MAX_SESSION_BYTES};
use crate::store::segment::{self, Trust};

const MAGIC: &[u8; 8] = b"SHMSDUMP";
const END: &[u8; 8] = b"SHMSEND\0";
const VERSION: u32 = 1;
const HEAD_BYTES: usize = 8 + 4 + 4 + 8 + 4;
/// Largest file a load reads: every record at its largest, for a 1 TiB segment's worth of
/// one-slot sessions would be absurd, so bound by what a sane segment holds.
const MAX_FILE_BYTES: u64 = 4 << 30;

/// Serialise `entries` into the dump format.
pub fn encode(entries: &[ExportedEntry], written_unix: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEAD_BYTES + entries.len() * 200 + 12);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    b.extend_from_slice(&written_unix.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    for e in entries {
        b.push(e.id.len() as u8);
        b.extend_from_slice(&e.id);
        b.extend_from_slice(&e.created.to_le_bytes());
        b.extend_from_slice(&e.expires.to_le_bytes());
        b.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&e.data);
    }
    b.extend_from_slice(END);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

/// Parse and verify a whole dump. Any defect refuses the file (nothing is returned).
pub fn decode(b: &[u8]) -> std::result::Result<(Vec<ExportedEntry>, u64), String> {
    if b.len() < HEAD_BYTES + END.len() + 4 || &b[..8] != MAGIC {
        return Err("not a shmsesscache dump (bad magic)".into());
    }
    let mut r = Reader { b, at: 8 };
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("dump format version {version} is not {VERSION}"));
    }
    let count = r.u32()?;
    let written = u64::from_le_bytes(r.take(8)?.try_into().unwrap());
    let head_crc = r.u32()?;
    if crc32fast::hash(&b[..HEAD_BYTES - 4]) != head_crc {
        return Err("header checksum mismatch".into());
    }
    let body_end = b.len() - 4;
    if crc32fast::hash(&b[..body_end]) != u32::from_le_bytes(b[body_end..].try_into().unwrap()) {
        return Err("checksum mismatch (damaged or truncated file)".into());
    }
    let mut v = Vec::with_capacity((count as usize).min(1 << 20));
    for n in 0..count {
        let id_len = r.take(1)?[0] as usize;
        if !(1..=MAX_ID_LEN).contains(&id_len) {
            return Err(format!("record {n}: id length {id_len} is invalid"));
        }
        let id = r.take(id_len)?.to_vec();
        let created = r.u32()?;
        let expires = r.u32()?;
        let len = r.u32()? as usize;
        if len == 0 || len > MAX_SESSION_BYTES {
            return Err(format!("record {n}: session length {len} is invalid"));
        }
        let data = r.take(len)?.to_vec();
        v.push(ExportedEntry {
            id,
            created,
            expires,
            data,
        });
    }
    if r.take(END.len())? != END || r.at != body_end {
        return Err("records do not end where the file says".into());
    }
    Ok((v, written))
}

/// Write `bytes` to `path` as a new 0600 file: a temporary file in the same directory
/// (`O_EXCL|O_NOFOLLOW`), synced, then renamed over `path` (a symlink at `path` is replaced,
/// never followed).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut r = [0u8; 8];
    crate::util::random_bytes(&mut r);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{:016x}", u64::from_ne_bytes(r)));
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("cannot write {}", path.display()), e)
    })
}

/// Read a dump file after checking, like a segment file, that it is a regular file (not a
/// symlink) owned by us (or by anyone, with `Trust::AnyOwner`) that neither group nor others
/// can write: a writable dump would let somebody else inject sessions. Returns the bytes and
/// whether others could *read* it (the caller warns: it holds secrets).
pub fn read_private_file(path: &Path, trust: Trust) -> Result<(Vec<u8>, bool)> {
    let (mut f, st) = segment::open_trusted(path, false, trust)?;
    let len = st.st_size as u64;
    if len > MAX_FILE_BYTES {
        return Err(Error::format(format!(
            "{} is too large for a dump",
            path.display()
        )));
    }
    let mut b = Vec::with_capacity(len as usize);
    f.read_to_end(&mut b)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok((b, st.st_mode & 0o044 != 0))
}

/// What a load did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: u64,
    pub expired: u64,
    /// Records that are not a session with that id (per `valid`), or that the cache refused.
    pub refused: u64,
}

/// Store every record that has not expired at `now` and that `valid(id, data)` accepts.
/// Records are stored with their own creation and expiry times.
pub fn load_into(
    cache: &Cache,
    records: &[ExportedEntry],
    now: u32,
    valid: &dyn Fn(&[u8], &[u8]) -> bool,
) -> (LoadReport, Option<Error>) {
    let mut rep = LoadReport::default();
    let mut first_err = None;
    for r in records {
        if r.expires <= now {
            rep.expired += 1;
            continue;
        }
        if !valid(&r.id, &r.data) {
            rep.refused += 1;
            continue;
        }
        match cache.store_at(&r.id, &r.data, r.created, r.expires, now) {
            Ok(()) => rep.loaded += 1,
            Err(e) => {
                rep.refused += 1;
                if e.kind == ErrorKind::Lock || first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    (rep, first_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, expires: u32) -> ExportedEntry {
        ExportedEntry {
            id: vec![n; 32],
            created: 1000,
            expires,
            data: vec![n ^ 0x5a; 100 + n as usize],
        }
    }

    #[test]
    fn a_dump_round_trips() {
        let v = vec![rec(1, 5000), rec(2, 6000), rec(3, 7000)];
        let b = encode(&v, 1234);
        let (back, written) = decode(&b).unwrap();
        assert_eq!(back, v);
        assert_eq!(written, 1234);
        assert_eq!(decode(&encode(&[], 0)).unwrap().0.len(), 0);
    }

    #[test]
    fn any_damaged_byte_refuses_the_whole_file() {
        let b = encode(&[rec(1, 5000), rec(2, 6000)], 1);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x01;
            assert!(decode(&d).is_err(), "flipping byte {i} went unnoticed");
        }
        for cut in 0..b.len() {
            assert!(
                decode(&b[..cut]).is_err(),
                "truncation at {cut} went unnoticed"
            );
        }
        assert!(decode(b"SHMSDUMPxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").is_err());
    }

    #[test]
    fn load_skips_expired_and_invalid_records_and_keeps_times() {
        let cache = Cache::create(&crate::store::cache::Config {
            size_bytes: 1 << 20,
            ..Default::default()
        })
        .unwrap();
        let v = vec![rec(1, 5000), rec(2, 1500), rec(3, 7000), rec(4, 9000)];
        let (rep, err) = load_into(&cache, &v, 2000, &|id, _| id[0] != 4);
        assert!(err.is_none());
        assert_eq!(
            rep,
            LoadReport {
                loaded: 2,
                expired: 1,
                refused: 1
            }
        );
        let mut buf = [0u8; 8192];
        match cache.lookup_at(&[3u8; 32], &mut buf, false, 2000).unwrap() {
            crate::store::cache::Found::Hit {
                len,
                created,
                expires,
            } => {
                assert_eq!(&buf[..len], &v[2].data[..]);
                assert_eq!((created, expires), (1000, 7000));
            }
            other => panic!("record 3 not loaded: {other:?}"),
        }
        for miss in [2u8, 4] {
            assert_eq!(
                cache.lookup_at(&[miss; 32], &mut buf, false, 2000).unwrap(),
                crate::store::cache::Found::Miss
            );
        }
    }

    #[test]
    fn dump_files_are_private_and_loose_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shmsess-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.bin");
        write_private_file(&p, b"hello").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_private_file(&p, Trust::Owner).unwrap(),
            (b"hello".to_vec(), false)
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert_eq!(
            read_private_file(&p, Trust::Owner).unwrap_err().kind,
            ErrorKind::Security
        );
        let link = dir.join("link.bin");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(
            read_private_file(&link, Trust::Owner).unwrap_err().kind,
            ErrorKind::Security
        );
        // Writing over a symlink replaces the link, it does not write through it.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_private_file(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
