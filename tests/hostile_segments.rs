//! Named segment files that are wrong, damaged or untrusted: attaching fails with a message
//! that names the problem, or the damaged slots are dropped; never an out-of-bounds access, a
//! hang or bytes that nobody stored.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{id, make, verify, Rng};
use shmsesscache::store::cache::{Cache, Config, Found};
use shmsesscache::store::layout::{header_crc, SegmentHeader, HEADER_BYTES};
use shmsesscache::ErrorKind;

const SIZE: u64 = 512 << 10;

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let c = Cache::create(&Config {
        path: Some(p.clone()),
        size_bytes: SIZE,
        ..Config::default()
    })
    .unwrap();
    for n in 0..300 {
        c.store(&id(n), &make(n, 1), 0, u32::MAX).unwrap();
    }
    p
}

fn attach(p: &Path) -> Result<Cache, shmsesscache::Error> {
    Cache::attach(p, Some(Duration::from_millis(50)))
}

fn read_header(p: &Path) -> SegmentHeader {
    let mut b = vec![0u8; HEADER_BYTES];
    fs::File::open(p).unwrap().read_exact(&mut b).unwrap();
    // SAFETY: SegmentHeader is plain data, smaller than the page we read.
    unsafe { std::ptr::read_unaligned(b.as_ptr() as *const SegmentHeader) }
}

fn write_header(p: &Path, h: &SegmentHeader) {
    // SAFETY: viewing a plain-data struct as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            h as *const SegmentHeader as *const u8,
            std::mem::size_of::<SegmentHeader>(),
        )
    };
    let mut f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all(bytes).unwrap();
}

fn expect_err(p: &Path, kind: ErrorKind, words: &str) {
    match attach(p) {
        Ok(_) => panic!(
            "{} was attached but should be refused ({words})",
            p.display()
        ),
        Err(e) => {
            assert_eq!(e.kind, kind, "{e}");
            assert!(
                e.message.contains(words),
                "message {:?} should mention {words:?}",
                e.message
            );
            assert!(
                e.message.contains(&p.display().to_string()),
                "message {:?} should name the file",
                e.message
            );
        }
    }
}

/// Whatever the damage, operations finish and lookups return a miss or exact bytes.
fn exercise(c: &Cache) {
    let mut buf = vec![0u8; 8192];
    let mut rng = Rng(77);
    for _ in 0..3000 {
        let n = rng.below(400) as u32;
        match rng.below(3) {
            0 => {
                let _ = c.store(&id(n), &make(n, 2), 0, u32::MAX);
            }
            1 => {
                if let Ok(Found::Hit { len, .. }) = c.lookup(&id(n), &mut buf, false) {
                    assert!(verify(n, &buf[..len]), "entry {n}: bytes nobody stored");
                }
            }
            _ => {
                let _ = c.remove(&id(n));
            }
        }
    }
    let _ = c.entries();
    let _ = c.flush(Some(1));
    let s = c.stats();
    assert!(s.used_units <= s.capacity_units, "{s:?}");
}

#[test]
fn hostile_segment_files() {
    let dir = tempdir();
    let d = dir.as_path();

    // Healthy: attaches and shares the data.
    let p = fresh(d, "ok");
    let c = attach(&p).unwrap();
    let mut buf = vec![0u8; 8192];
    assert!(matches!(
        c.lookup(&id(5), &mut buf, false).unwrap(),
        Found::Hit { .. }
    ));
    drop(c);

    // Truncated, and grown beyond what the header says.
    let p = fresh(d, "short");
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(SIZE - 4096)
        .unwrap();
    expect_err(&p, ErrorKind::Format, "bytes but the file has");
    let p = fresh(d, "long");
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(SIZE + 4096)
        .unwrap();
    expect_err(&p, ErrorKind::Format, "bytes but the file has");
    let p = d.join("tiny");
    fs::write(&p, b"SHMSESS").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    expect_err(&p, ErrorKind::Format, "smaller than a segment header");

    // Another build: layout version, lock size, slot geometry (with a valid CRC).
    for (name, patch, words) in [
        (
            "version",
            (|h: &mut SegmentHeader| h.format.layout_version = 99) as fn(&mut SegmentHeader),
            "layout version",
        ),
        (
            "mutex",
            |h: &mut SegmentHeader| h.format.mutex_bytes = 48,
            "format word",
        ),
        (
            "units",
            |h: &mut SegmentHeader| h.format.units_per_shard = 1000,
            "format word",
        ),
        (
            "shards",
            |h: &mut SegmentHeader| h.format.shard_count += 1,
            "format word",
        ),
        (
            "slot",
            |h: &mut SegmentHeader| h.format.unit_bytes = 8,
            "slot_bytes",
        ),
    ] {
        let p = fresh(d, name);
        let mut h = read_header(&p);
        patch(&mut h);
        h.header_crc = header_crc(&h);
        write_header(&p, &h);
        expect_err(&p, ErrorKind::Format, words);
    }

    // A flipped header byte without a matching CRC; bad magic.
    let p = fresh(d, "crc");
    let mut h = read_header(&p);
    h.created_unix ^= 1;
    write_header(&p, &h);
    expect_err(&p, ErrorKind::Format, "checksum");
    let p = fresh(d, "magic");
    let mut h = read_header(&p);
    h.magic[0] = b'X';
    write_header(&p, &h);
    expect_err(&p, ErrorKind::Format, "magic");

    // Untrusted files.
    let p = fresh(d, "mode");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o620)).unwrap();
    expect_err(&p, ErrorKind::Security, "writable by group or others");
    let p = fresh(d, "link-target");
    let l = d.join("link");
    std::os::unix::fs::symlink(&p, &l).unwrap();
    expect_err(&l, ErrorKind::Security, "symbolic link");
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let p = fresh(d, "owner");
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        expect_err(&p, ErrorKind::Security, "owned by uid 65534");
    }
    let p = d.join("dir");
    fs::create_dir(&p).unwrap();
    assert!(attach(&p).is_err());

    // A shard mutex whose kind word says priority-protect, not robust (found by the fuzzer):
    // glibc would abort inside pthread_mutex_lock. It is never locked as it is: it is
    // re-initialised (once, counted) and the shard repaired, then used.
    let p = fresh(d, "mutex-kind");
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let kind_at = HEADER_BYTES as u64 + 16;
    let mut kind = [0u8; 4];
    f.seek(SeekFrom::Start(kind_at)).unwrap();
    f.read_exact(&mut kind).unwrap();
    // Robust bit (0x10) cleared, PTHREAD_MUTEX_PRIO_PROTECT_NP (0x40) set, ceiling 0.
    let k = (i32::from_ne_bytes(kind) & !0x10) | 0x40;
    f.seek(SeekFrom::Start(kind_at)).unwrap();
    f.write_all(&k.to_ne_bytes()).unwrap();
    drop(f);
    let c = attach(&p).unwrap();
    exercise(&c);
    let s = c.stats();
    assert_eq!(
        (s.lock_resets, s.dirty_repairs, s.lock_errors),
        (1, 1, 0),
        "the damaged lock must be reset once and its shard repaired: {s:?}"
    );
    drop(c);

    // Random bytes in the slots and tags (not the mutexes): attaches; garbage is dropped.
    let p = fresh(d, "slots");
    scribble(&p, false);
    let c = attach(&p).unwrap();
    exercise(&c);
    let s = c.stats();
    eprintln!("random bytes in slots: {s:?}");
    assert!(
        s.corrupt_dropped > 0,
        "the damage must be detected and dropped: {s:?}"
    );
    drop(c);

    // Random bytes everywhere after the header, mutexes included: no crash, no hang (locks
    // that look held time out), no wrong bytes.
    let p = fresh(d, "all");
    scribble(&p, true);
    let c = attach(&p).unwrap();
    exercise(&c);
    eprintln!("random bytes everywhere: {:?}", c.stats());
}

/// Overwrite 2,000 random 16-byte runs after the header; with `mutexes == false`, spare the
/// first 64 bytes of each shard (mutex and dirty flag).
fn scribble(p: &Path, mutexes: bool) {
    let h = read_header(p);
    let stride = h.shard_stride;
    let mut f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut rng = Rng(0xfeed);
    for _ in 0..2000 {
        let off = HEADER_BYTES as u64 + rng.below(SIZE - HEADER_BYTES as u64 - 16);
        let in_shard = (off - HEADER_BYTES as u64) % stride;
        if !mutexes && in_shard < 64 + 16 {
            continue;
        }
        let junk: Vec<u8> = (0..16).map(|_| rng.next() as u8).collect();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&junk).unwrap();
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn as_path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
fn tempdir() -> TempDir {
    let mut r = [0u8; 8];
    shmsesscache::util::random_bytes(&mut r);
    let p = std::env::temp_dir().join(format!("shmsess-hostile-{}", u64::from_ne_bytes(r)));
    fs::create_dir(&p).unwrap();
    TempDir(p)
}
