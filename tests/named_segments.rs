//! Named segments against the operating system: a full filesystem, a truncated file, temporary
//! files of a killed creator, core dumps, loose modes and name squatting.
//! One #[test]: parts of it fork (a SIGBUS must kill a child, not the test binary), and nothing
//! may fork while another test thread holds a lock.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{id, make, spawn, wait, Exit};
use shmsesscache::store::cache::{Cache, Config, Found};
use shmsesscache::store::layout::{header_crc, SegmentHeader, HEADER_BYTES};
use shmsesscache::store::segment::Mapping;
use shmsesscache::ErrorKind;

#[test]
fn named_segments_and_the_operating_system() {
    let dir = TempDir::new();
    full_filesystem_is_a_clean_error(dir.path());
    truncated_file_is_an_error_not_a_sigbus(dir.path());
    descriptor_closed_by_the_program(dir.path());
    stats_of_a_segment_truncated_to_nothing(dir.path());
    cli_reads_check_the_file_before_reading_it(dir.path());
    file_size_limit_is_a_clean_error(dir.path());
    stale_temporary_files_are_swept(dir.path());
    segments_are_kept_out_of_core_dumps(dir.path());
    readable_segments_are_refused(dir.path());
    other_formats_are_refused(dir.path());
    create_defaults_to_a_private_directory(dir.path());
    create_for_another_user_leaves_roots_directory_alone();
}

fn create(path: &Path, size: u64) -> shmsesscache::Result<Cache> {
    Cache::create(&Config {
        path: Some(path.to_owned()),
        size_bytes: size,
        lock_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    })
}

/// Run `f` in a child; a signal (SIGBUS) or a non-zero code fails the test with `what`.
fn in_child(what: &str, f: impl FnOnce() -> i32) {
    match wait(spawn(f), Duration::from_secs(60)) {
        Exit::Code(0) => {}
        Exit::Code(c) => panic!("{what}: child failed with code {c}"),
        Exit::Signal(s) => panic!("{what}: child killed by signal {s} (7 is SIGBUS)"),
    }
}

/// Point 1: a segment larger than the free space of a small tmpfs (as Docker's 64 MiB
/// /dev/shm) is refused at create time with ENOSPC, the file and the free space named, and no
/// temporary file left; one that fits has all its pages reserved.
fn full_filesystem_is_a_clean_error(base: &Path) {
    let mnt = base.join("tmpfs");
    fs::create_dir(&mnt).unwrap();
    let Some(_mount) = Tmpfs::mount(&mnt, "size=1m") else {
        return;
    };
    let big = mnt.join("big.sess");
    let shown = big.display().to_string();
    in_child("8 MiB segment on a 1 MiB tmpfs", move || {
        let err = match create(&big, 8 << 20) {
            Ok(c) => {
                eprintln!("an 8 MiB segment was created on a 1 MiB tmpfs; storing into it");
                for n in 0..40_000 {
                    let _ = c.store(&id(n), &make(n, 1), 0, u32::MAX);
                }
                return 1;
            }
            Err(e) => e,
        };
        eprintln!("create on a full tmpfs: {err}");
        let m = &err.message;
        let ok = err.kind == ErrorKind::Io
            && m.contains(&shown)
            && m.contains("No space left on device")
            && m.contains("bytes free of 1048576");
        if ok {
            0
        } else {
            2
        }
    });
    assert_eq!(names(&mnt), Vec::<String>::new(), "files left on the tmpfs");

    // One that fits has every page allocated (not a sparse file); a second one that would
    // not fit beside it is refused the same way (with the old sparse files it was created and
    // its users died of SIGBUS).
    let first = mnt.join("first.sess");
    let second = mnt.join("second.sess");
    in_child("two 640 KiB segments on a 1 MiB tmpfs", move || {
        let c = create(&first, 640 << 10).unwrap();
        let st = fs::metadata(&first).unwrap();
        if st.blocks() * 512 < 640 << 10 {
            eprintln!(
                "only {} of {} bytes allocated",
                st.blocks() * 512,
                640 << 10
            );
            return 1;
        }
        for n in 0..2000 {
            c.store(&id(n), &make(n, 1), 0, u32::MAX).unwrap();
        }
        match create(&second, 640 << 10) {
            Ok(c2) => {
                for n in 0..2000 {
                    let _ = c2.store(&id(n), &make(n, 1), 0, u32::MAX);
                }
                eprintln!("a second 640 KiB segment was created on a 1 MiB tmpfs");
                3
            }
            Err(e) if e.message.contains("No space left on device") => 0,
            Err(e) => {
                eprintln!("unexpected error: {e}");
                4
            }
        }
    });
    assert_eq!(names(&mnt), vec!["first.sess".to_string()]);

    // A filesystem without fallocate (ramfs answers EOPNOTSUPP): the pages are reserved by
    // writing zeros instead, and the segment works.
    let ramfs = base.join("ramfs");
    fs::create_dir(&ramfs).unwrap();
    let Some(_ramfs) = Tmpfs::mount_fs(&ramfs, "ramfs", "") else {
        return;
    };
    let p = ramfs.join("zeros.sess");
    let c = create(&p, 256 << 10).unwrap();
    c.store(&id(1), &make(1, 1), 0, u32::MAX).unwrap();
    let st = fs::metadata(&p).unwrap();
    assert_eq!(st.len(), 256 << 10);
    assert!(
        st.blocks() * 512 >= 256 << 10,
        "{} bytes allocated",
        st.blocks() * 512
    );
    drop(c);
    let mut buf = vec![0u8; 8192];
    let again = Cache::attach(&p, None).unwrap();
    assert!(matches!(
        again.lookup(&id(1), &mut buf, false).unwrap(),
        Found::Hit { .. }
    ));
}

/// Point 1: a file truncated under the server's mapping must not make workers die of SIGBUS
/// one after another. As in a prefork server, a master creates the segment and forks workers;
/// after the truncation, a newly forked worker (and the master) get an error per call, the
/// cache being off, instead of SIGBUS; attaching to the file again is refused.
fn truncated_file_is_an_error_not_a_sigbus(base: &Path) {
    let p = base.join("truncated.sess");
    in_child("master and workers on a truncated segment", move || {
        let c = create(&p, 512 << 10).unwrap();
        let stored = wait(
            spawn(|| {
                for n in 0..300 {
                    c.store(&id(n), &make(n, 1), 0, u32::MAX).unwrap();
                }
                0
            }),
            Duration::from_secs(30),
        );
        assert_eq!(stored, Exit::Code(0));
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(HEADER_BYTES as u64)
            .unwrap();
        let worker = || {
            let mut buf = vec![0u8; 8192];
            let mut failures = 0;
            for n in 0..300 {
                match c.lookup(&id(n), &mut buf, false) {
                    Err(e) if e.message.contains("truncated to 4096 bytes") => {}
                    other => {
                        eprintln!("lookup {n} on a truncated segment: {other:?}");
                        failures += 1;
                    }
                }
            }
            let store = c.store(&id(1), &make(1, 2), 0, u32::MAX);
            if let Err(e) = &store {
                eprintln!("store on a truncated segment: {e}");
            }
            i32::from(failures != 0 || store.is_ok())
        };
        for w in 0..3 {
            match wait(spawn(worker), Duration::from_secs(30)) {
                Exit::Code(0) => {}
                other => {
                    eprintln!("worker {w} after the truncation: {other:?}");
                    return 1;
                }
            }
        }
        let attach = Cache::attach(&p, None);
        eprintln!("attach after the truncation: {:?}", attach.as_ref().err());
        let refused = attach.is_err_and(|e| e.message.contains("bytes but the file has 4096"));
        if worker() == 0 && refused {
            0
        } else {
            2
        }
    });
}

/// A daemon that closes every descriptor at start (proftpd) takes the segment file's with it,
/// and the number is soon another file's (a socket, an empty file): its size must not read as
/// a truncation that turns the cache off, and dropping the cache must not close that file.
fn descriptor_closed_by_the_program(base: &Path) {
    let p = base.join("closed-fd.sess");
    let other = base.join("other-file");
    in_child(
        "a segment whose descriptor the program closed and reused",
        move || {
            let c = create(&p, 512 << 10).unwrap();
            let fd = fd_of(&p).expect("the cache keeps the segment file open");
            let replacement = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&other)
                .unwrap();
            // SAFETY: the program closing "every descriptor" and reusing the number, as daemons do.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&replacement), fd) };
            let worker = || {
                let mut buf = vec![0u8; 8192];
                let ok = c.store(&id(7), &make(7, 1), 0, u32::MAX).is_ok()
                    && matches!(c.lookup(&id(7), &mut buf, false), Ok(Found::Hit { .. }));
                i32::from(!ok)
            };
            let in_worker = wait(spawn(worker), Duration::from_secs(30));
            let here = worker();
            drop(c);
            // SAFETY: asks whether the number is still open.
            let still_open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            eprintln!(
                "worker {in_worker:?}, here {here}, the program's file still open: {still_open}"
            );
            i32::from(!(in_worker == Exit::Code(0) && here == 0 && still_open))
        },
    );
}

/// The descriptor of this process open on `path`'s inode (the library opens a temporary name
/// and links it into place, so the name /proc shows may be another).
fn fd_of(path: &Path) -> Option<i32> {
    let want = fs::metadata(path).ok()?;
    fs::read_dir("/proc/self/fd").ok()?.flatten().find_map(|e| {
        let m = fs::metadata(e.path()).ok()?;
        (m.dev() == want.dev() && m.ino() == want.ino())
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// Point 1: a file truncated to nothing takes the header page too (the global counters).
/// Workers forked afterwards whose first call reads statistics (a status page, SIGUSR1) or
/// counts refused input get errors or zeros, never SIGBUS.
fn stats_of_a_segment_truncated_to_nothing(base: &Path) {
    let p = base.join("truncated0.sess");
    in_child(
        "workers reading stats of a segment truncated to 0 bytes",
        move || {
            let c = create(&p, 512 << 10).unwrap();
            c.store(&id(1), &make(1, 1), 0, u32::MAX).unwrap();
            assert_eq!(c.stats().entries, 1);
            // The master's last use checked the size (rate-limited: the next check is due in a
            // second); a worker forked now must still check at its own first use.
            let mut buf = vec![0u8; 8192];
            assert!(matches!(
                c.lookup(&id(1), &mut buf, false),
                Ok(Found::Hit { .. })
            ));
            OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(0)
                .unwrap();
            let first_lookup = || {
                let r = c.lookup(&id(1), &mut [0u8; 8192], false);
                eprintln!("first call after the fork, a lookup: {r:?}");
                i32::from(!r.is_err_and(|e| e.message.contains("truncated to 0 bytes")))
            };
            match wait(spawn(first_lookup), Duration::from_secs(30)) {
                Exit::Code(0) => {}
                other => {
                    eprintln!("worker whose first call is a lookup: {other:?}");
                    return 1;
                }
            }
            let worker = || {
                let s = c.stats();
                let zeroed = s.entries == 0 && s.stores == 0 && s.total_bytes == 512 << 10;
                let too_large = c.store(&id(2), &vec![1u8; 1 << 20], 0, u32::MAX);
                let bad_input = c.lookup(&[], &mut [0u8; 16], false);
                let truncated = |r: &str| r.contains("truncated to 0 bytes");
                let errors = [
                    c.try_stats().map(|_| ()).map_err(|e| e.message),
                    c.try_ages(0).map(|_| ()).map_err(|e| e.message),
                ];
                eprintln!("stats {zeroed}, {too_large:?}, {bad_input:?}, {errors:?}");
                let ok = zeroed
                    && too_large.is_err_and(|e| e.kind == ErrorKind::TooLarge)
                    && bad_input.is_err_and(|e| e.kind == ErrorKind::Invalid)
                    && errors
                        .iter()
                        .all(|r| r.as_ref().is_err_and(|m| truncated(m)));
                i32::from(!ok)
            };
            for w in 0..3 {
                match wait(spawn(worker), Duration::from_secs(30)) {
                    Exit::Code(0) => {}
                    other => {
                        eprintln!("worker {w} after the truncation: {other:?}");
                        return 1;
                    }
                }
            }
            worker()
        },
    );
}

/// `shmsesscache stat/list/dump` (which read a private copy) look at the file before they
/// read it: a large sparse file that is not a segment, or a segment whose header does not
/// match the file's size, is refused without being read (bounded memory), and a FIFO planted
/// at the path is refused instead of blocking the tool forever.
fn cli_reads_check_the_file_before_reading_it(base: &Path) {
    const BIG: u64 = 1 << 30;
    let sparse = base.join("sparse.sess");
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&sparse)
        .unwrap();
    f.set_len(BIG).unwrap();
    let grown = base.join("grown.sess");
    drop(create(&grown, 256 << 10).unwrap());
    OpenOptions::new()
        .write(true)
        .open(&grown)
        .unwrap()
        .set_len(BIG)
        .unwrap();
    let fifo = base.join("fifo.sess");
    let c = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = base.join("out.dump");
    let cases = [
        (&sparse, "not a shmsesscache segment (bad magic)"),
        (
            &grown,
            "header says 262144 bytes but the file has 1073741824",
        ),
        (&fifo, "is not a regular file"),
    ];
    for (p, why) in cases {
        let p = p.to_str().unwrap();
        for args in [
            &["stat", p][..],
            &["list", p],
            &["dump", p, out.to_str().unwrap()],
        ] {
            let (code, text, max_rss_kib) = run_cli_bounded(args, Duration::from_secs(30));
            eprintln!(
                "{args:?}: exit {code:?}, max RSS {max_rss_kib} KiB: {}",
                text.trim()
            );
            assert!(
                code.is_some_and(|c| c != 0) && text.contains(why),
                "{args:?}: {text}"
            );
            assert!(max_rss_kib < 64 << 10, "{args:?} used {max_rss_kib} KiB");
            assert!(!out.exists());
        }
    }
}

/// Run the CLI; (exit code, or None if it had to be killed after `limit`; its output; its
/// peak RSS in KiB, from wait4).
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's wait cannot replace (rusage)
fn run_cli_bounded(args: &[&str], limit: Duration) -> (Option<i32>, String, i64) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmsesscache"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let deadline = std::time::Instant::now() + limit;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut code = None;
    loop {
        // SAFETY: our own child; status and rusage are ours.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            break;
        }
        if std::time::Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            break;
        }
        std::thread::sleep(Duration::from_millis(20)); // polling an exit, bounded by `limit`
    }
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    (code, text, ru.ru_maxrss)
}

/// A file size limit (RLIMIT_FSIZE) below the segment's size is an error naming the limit,
/// not a silent death by SIGXFSZ with the temporary file left behind; the creator's own
/// SIGXFSZ disposition is the same afterwards.
fn file_size_limit_is_a_clean_error(base: &Path) {
    let d = base.join("fsize");
    fs::create_dir(&d).unwrap();
    let seg = d.join("seg");
    in_child("create under a 64 KiB file size limit", || {
        let lim = libc::rlimit {
            rlim_cur: 64 << 10,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit with our struct; only this child is limited.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) }, 0);
        let e = match create(&seg, 256 << 10) {
            Ok(_) => return 1,
            Err(e) => e,
        };
        eprintln!("create under RLIMIT_FSIZE: {e}");
        // SAFETY: queries the current disposition into a zeroed struct.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaction(libc::SIGXFSZ, std::ptr::null(), &mut now) };
        let named = e.message.contains("RLIMIT_FSIZE") && e.message.contains("65536 bytes");
        let left = names(&d);
        i32::from(!(named && left.is_empty() && now.sa_sigaction == libc::SIG_DFL)) * 2
    });
}

/// Point 1: `NAME.tmp.PID.RANDOM` files of a creator that was killed are removed by the next
/// creator: only regular files of ours whose PID is dead and that nobody holds locked.
fn stale_temporary_files_are_swept(base: &Path) {
    let d = base.join("sweep");
    fs::create_dir(&d).unwrap();
    let dead = dead_pid();
    let me = std::process::id();
    let tmp = |pid: u32, r: u64| format!("seg.tmp.{pid}.{r:016x}");
    let plant = |name: &str| {
        let p = d.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        p
    };
    let abandoned = tmp(dead, 1);
    plant(&abandoned);
    let alive = tmp(me, 2); // its creator (us) is alive
    plant(&alive);
    let other_name = format!("other.tmp.{dead}.{:016x}", 3);
    plant(&other_name);
    let locked = tmp(dead, 4); // a creator at work in another PID namespace holds the lock
    let held = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(d.join(&locked))
        .unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let link = tmp(dead, 5);
    let target = plant("target");
    std::os::unix::fs::symlink(&target, d.join(&link)).unwrap();
    let mut expected = vec![
        alive,
        other_name,
        locked,
        link,
        "seg".to_string(),
        "target".to_string(),
    ];
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = tmp(dead, 6);
        let p = plant(&foreign);
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        expected.push(foreign);
    }
    drop(create(&d.join("seg"), 256 << 10).unwrap());
    expected.sort();
    assert_eq!(names(&d), expected, "only {abandoned} may be removed");
    // Left behind after the segment exists (a creator that lost the race and was killed):
    // the next process that attaches removes it, with the same conditions.
    let late = tmp(dead, 7);
    plant(&late);
    drop(Cache::attach(&d.join("seg"), None).unwrap());
    assert_eq!(names(&d), expected, "attaching did not remove {late}");
    drop(held);
    killed_creator_with_an_owner_leaves_a_file_it_can_sweep(base);
}

/// A creator that gives the segment to another user (root's `shmsesscache create --owner`)
/// and is killed before linking it leaves a temporary file still owned by itself, so that the
/// next creator (root again) removes it: the sweep never removes another user's files.
fn killed_creator_with_an_owner_leaves_a_file_it_can_sweep(base: &Path) {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED killed creator with --owner: needs root to give a file away");
        return;
    }
    let d = base.join("sweep-owner");
    fs::create_dir(&d).unwrap();
    let seg = d.join("seg");
    let creator = spawn(|| {
        let geo = shmsesscache::store::layout::Geometry::plan(
            256 << 10,
            shmsesscache::store::layout::DEFAULT_UNIT_BYTES,
        )
        .unwrap();
        let die = |_: &Mapping| -> shmsesscache::Result<()> {
            // SAFETY: killing ourselves while the temporary file is being built.
            unsafe { libc::raise(libc::SIGKILL) };
            unreachable!()
        };
        let _ =
            shmsesscache::store::segment::create_or_attach(&seg, &geo, Some((65534, 65534)), &die);
        0
    });
    assert_eq!(
        wait(creator, Duration::from_secs(30)),
        Exit::Signal(libc::SIGKILL)
    );
    let left = names(&d);
    let owners: Vec<u32> = left
        .iter()
        .map(|n| fs::symlink_metadata(d.join(n)).unwrap().uid())
        .collect();
    eprintln!("left by the killed creator: {left:?}, owned by {owners:?}");
    assert_eq!(left.len(), 1, "{left:?}");
    drop(create(&seg, 256 << 10).unwrap());
    assert_eq!(
        names(&d),
        vec!["seg".to_string()],
        "the killed creator's file was not swept"
    );
}

/// Point 4: every mapping of a segment, named or anonymous, carries MADV_DONTDUMP ("dd" in
/// /proc/self/smaps), so a worker's core dump does not hold the master secrets.
fn segments_are_kept_out_of_core_dumps(base: &Path) {
    let named = create(&base.join("dump.sess"), 256 << 10).unwrap();
    let anonymous = Cache::create(&Config {
        size_bytes: 256 << 10,
        ..Config::default()
    })
    .unwrap();
    let flag_page = Mapping::anonymous(4096).unwrap();
    for (what, addr) in [
        ("named", named.segment_base()),
        ("anonymous", anonymous.segment_base()),
        ("Mapping::anonymous", flag_page.base() as usize),
    ] {
        let flags = vm_flags(addr).unwrap_or_else(|| panic!("{what}: no mapping at {addr:#x}"));
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "{what} segment mapping lacks MADV_DONTDUMP: VmFlags: {flags}"
        );
    }
}

/// Point 4: a segment file that group or others can read is refused, with the fix.
fn readable_segments_are_refused(base: &Path) {
    for mode in [0o640, 0o604, 0o644] {
        let p = base.join(format!("mode{mode:o}.sess"));
        drop(create(&p, 256 << 10).unwrap());
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        let e = Cache::attach(&p, None)
            .err()
            .expect("a readable segment was attached");
        assert_eq!(e.kind, ErrorKind::Security, "{e}");
        assert!(
            e.message.contains("readable by group or others")
                && e.message.contains(&format!("chmod 600 {}", p.display())),
            "{e}"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let c = Cache::attach(&p, None).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(
            c.lookup(&id(1), &mut buf, false).unwrap(),
            Found::Miss
        ));
    }
}

/// Point 5: a segment of the previous layout, or made by a process on the other C library
/// (same mutex size, incompatible mutexes), is refused with a message saying so.
fn other_formats_are_refused(base: &Path) {
    let p = base.join("libc.sess");
    drop(create(&p, 256 << 10).unwrap());
    let mut h = read_header(&p);
    let other = if h.format.c_library == u32::from_le_bytes(*b"musl") {
        *b"glbc"
    } else {
        *b"musl"
    };
    h.format.c_library = u32::from_le_bytes(other);
    h.header_crc = header_crc(&h);
    write_header(&p, &h);
    let e = Cache::attach(&p, None)
        .err()
        .expect("a segment of the other C library was attached");
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(
        e.message.contains("linked with") && e.message.contains(&p.display().to_string()),
        "{e}"
    );

    let p = base.join("v1.sess");
    drop(create(&p, 256 << 10).unwrap());
    let mut h = read_header(&p);
    h.format.layout_version = 1;
    h.header_crc = header_crc(&h);
    write_header(&p, &h);
    let e = Cache::attach(&p, None)
        .err()
        .expect("a version 1 segment was attached");
    assert!(
        e.message.contains("layout version 1") && e.message.contains("another format"),
        "{e}"
    );
}

/// Point 4: `shmsesscache create NAME` goes into a directory only the server's user can write
/// (made 0700 if missing); a directory others can write is refused, and an explicit path in
/// one (like /dev/shm) gets a warning about name squatting.
fn create_defaults_to_a_private_directory(base: &Path) {
    let cli = env!("CARGO_BIN_EXE_shmsesscache");
    let run = |args: &[&str]| {
        let o = Command::new(cli).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let private = base.join("private");
    let (code, out) = run(&[
        "create",
        "web",
        "--size",
        "256K",
        "--dir",
        private.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let seg = private.join("web");
    assert!(out.contains(&seg.display().to_string()), "{out}");
    let m = fs::symlink_metadata(&private).unwrap();
    assert!(
        m.is_dir() && m.mode() & 0o777 == 0o700,
        "mode {:o}",
        m.mode()
    );
    // SAFETY: no preconditions.
    assert_eq!(m.uid(), unsafe { libc::geteuid() });
    assert_eq!(fs::metadata(&seg).unwrap().mode() & 0o777, 0o600);

    let open = base.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, out) = run(&[
        "create",
        "web",
        "--size",
        "256K",
        "--dir",
        open.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("name squatting") && !open.join("web").exists(),
        "{out}"
    );

    let explicit = open.join("explicit.sess");
    let (code, out) = run(&["create", explicit.to_str().unwrap(), "--size", "256K"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning:") && out.contains("name squatting"),
        "{out}"
    );

    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = base.join("theirs");
        let (code, out) = run(&[
            "create",
            "web",
            "--size",
            "256K",
            "--owner",
            "65534:65534",
            "--dir",
            theirs.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(0), "{out}");
        let m = fs::symlink_metadata(&theirs).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o700));
        assert_eq!(fs::metadata(theirs.join("web")).unwrap().uid(), 65534);
    }
}

/// `create NAME --owner USER` without `--dir`, on a system with the package's /run/shmsesscache
/// (0700 root): the segment goes into USER's own /run/shmsesscache-USER, and root's directory
/// stays root's, so root's servers can still create their segments there. In a private mount
/// namespace with its own /run, so the machine's /run is not touched.
fn create_for_another_user_leaves_roots_directory_alone() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED create --owner in /run: needs root (a mount namespace, chown)");
        return;
    }
    let script = r#"set -e
mount -t tmpfs tmpfs /run
install -d -m 0700 -o root -g root /run/shmsesscache   # the package's tmpfiles.d entry
"$0" create web --size 256K --owner nobody
stat -c 'dir %u %a %n' /run/shmsesscache /run/shmsesscache-nobody
stat -c 'seg %u %a %n' /run/shmsesscache-nobody/web
"$0" create apache --size 256K"#;
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_shmsesscache"))
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if out.contains("unshare failed") {
        eprintln!("SKIPPED create --owner in /run: no mount namespace here: {out}");
        return;
    }
    assert!(o.status.success(), "{out}");
    for line in [
        "dir 0 700 /run/shmsesscache\n",
        "dir 65534 700 /run/shmsesscache-nobody\n",
        "seg 65534 600 /run/shmsesscache-nobody/web\n",
        "created /run/shmsesscache/apache:",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}

/// `VmFlags` of the mapping that starts at `addr`, from /proc/self/smaps.
fn vm_flags(addr: usize) -> Option<String> {
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_it = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, _)) = range.split_once('-') {
                if let Ok(s) = usize::from_str_radix(start, 16) {
                    in_it = s == addr;
                    continue;
                }
            }
        }
        if in_it {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

fn read_header(p: &Path) -> SegmentHeader {
    let b = fs::read(p).unwrap();
    // SAFETY: SegmentHeader is plain data, smaller than the file.
    unsafe { std::ptr::read_unaligned(b.as_ptr() as *const SegmentHeader) }
}

fn write_header(p: &Path, h: &SegmentHeader) {
    use std::os::unix::fs::FileExt;
    // SAFETY: viewing a plain-data struct as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            h as *const SegmentHeader as *const u8,
            std::mem::size_of::<SegmentHeader>(),
        )
    };
    OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(bytes, 0)
        .unwrap();
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The PID of a process that has ended (a child that was waited for).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A tmpfs (or ramfs) mounted for the test, unmounted (lazily) when dropped.
struct Tmpfs(CString);

impl Tmpfs {
    /// `None`, with a message, where mounting is not allowed (not root, no CAP_SYS_ADMIN).
    fn mount(at: &Path, options: &str) -> Option<Tmpfs> {
        Self::mount_fs(at, "tmpfs", options)
    }

    fn mount_fs(at: &Path, fstype: &str, options: &str) -> Option<Tmpfs> {
        let target = CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        let fstype = CString::new(fstype).unwrap();
        let opts = CString::new(options).unwrap();
        // SAFETY: valid C strings; tmpfs and ramfs need no source device.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr() as *const libc::c_void,
            )
        };
        if rc != 0 {
            eprintln!(
                "SKIPPED full-filesystem test: cannot mount a {} at {} ({}); run as root to test ENOSPC handling",
                fstype.to_string_lossy(),
                at.display(),
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs(target))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: unmounting what we mounted.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let mut r = [0u8; 8];
        shmsesscache::util::random_bytes(&mut r);
        let p = std::env::temp_dir().join(format!("shmsess-named-{:016x}", u64::from_ne_bytes(r)));
        fs::create_dir(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
