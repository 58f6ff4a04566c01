//! Processes of several pid namespaces on one segment (containers sharing /dev/shm or an IPC
//! namespace): a lock word holds its owner's thread id as the owner's namespace numbers it, so
//! a process of another namespace must never take a live owner for a dead one.
//! One #[test]: it forks, and nothing may fork while another test thread holds a lock.

mod common;

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{spawn, wait, Exit};
use shmsesscache::store::cache::{Cache, Config};
use shmsesscache::ErrorKind;

/// Exit code of a checker that could not make a pid namespace (not root, no CAP_SYS_ADMIN).
const SKIP: i32 = 77;

#[test]
fn a_lock_held_in_another_pid_namespace_is_never_reset() {
    let dir = TempDir::new();
    let path = dir.0.join("seg");
    let c = Cache::create(&Config {
        path: Some(path.clone()),
        size_bytes: 1 << 20,
        lock_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    })
    .unwrap();
    let (ready, release) = (pipe(), pipe());
    // The holder: a worker of this namespace inside shard 0's critical section.
    let holder = spawn(|| {
        let c = Cache::attach(&path, Some(Duration::from_secs(5))).unwrap();
        let g = c.lock_shard(0).unwrap();
        write_byte(ready[1]);
        read_byte(release[0]); // until the test is done
        drop(g);
        0
    });
    read_byte(ready[0]);
    let checker = spawn(|| in_new_pid_namespace(|| checker(&path)));
    let outcome = wait(checker, Duration::from_secs(60));
    write_byte(release[1]);
    assert_eq!(wait(holder, Duration::from_secs(60)), Exit::Code(0));
    if outcome == Exit::Code(SKIP) {
        eprintln!("skipped: cannot make a pid namespace here (needs root)");
        return;
    }
    assert_eq!(
        outcome,
        Exit::Code(0),
        "1: the checker reset a lock a live process of another pid namespace held and took it"
    );
    assert_eq!(c.stats().lock_resets, 0);
    // A fresh segment: the checker above made this one's users span two namespaces.
    a_worker_forked_into_a_new_pid_namespace_is_counted(&dir.0.join("seg2"));
}

/// A worker forked after its parent called `unshare(CLONE_NEWPID)` uses the mapping it
/// inherited (no attach): its lock words hold ids of the new namespace, so from its first lock
/// on, nobody trusts a thread id to be dead; a dead-looking owner then times out.
fn a_worker_forked_into_a_new_pid_namespace_is_counted(path: &Path) {
    let c = Cache::create(&Config {
        path: Some(path.to_owned()),
        size_bytes: 1 << 20,
        lock_timeout: Some(Duration::from_millis(50)),
        ..Config::default()
    })
    .unwrap();
    let worker = spawn(|| in_new_pid_namespace(|| c.lock_shard(1).map_or(2, |_| 0)));
    match wait(worker, Duration::from_secs(60)) {
        Exit::Code(SKIP) => return,
        e => assert_eq!(e, Exit::Code(0), "the worker locked shard 1"),
    }
    plant_dead_owner(path, 0);
    let e = c.lock_shard(0).map(drop).unwrap_err();
    assert!(
        e.kind == ErrorKind::Lock && e.message.contains("several pid namespaces"),
        "{e}"
    );
    assert_eq!(c.stats().lock_resets, 0);
}

/// Shard 0's lock word names a thread that does not exist here (no owner-died bit).
fn plant_dead_owner(path: &Path, shard: usize) {
    use std::os::unix::fs::FileExt;
    let dead = spawn(|| 0);
    assert_eq!(wait(dead, Duration::from_secs(10)), Exit::Code(0));
    let c = Cache::attach(path, None).unwrap();
    let at = (shmsesscache::store::layout::HEADER_BYTES + shard * c.geometry().shard_stride) as u64;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&(dead as u32).to_le_bytes(), at).unwrap();
    f.write_all_at(&dead.to_le_bytes(), at + 8).unwrap();
}

/// In a new pid namespace with its own /proc (as `unshare -p -f --mount-proc`): lock shard 0,
/// which the holder of the parent namespace holds. Must time out, saying why, not reset.
fn checker(path: &Path) -> i32 {
    let c = Cache::attach(path, Some(Duration::from_millis(50))).unwrap();
    let locked = c.lock_shard(0).map(drop);
    match locked {
        Ok(()) => 1,
        Err(e) if e.kind == ErrorKind::Lock && e.message.contains("pid namespace") => {
            (c.stats().lock_resets != 0) as i32 * 3
        }
        Err(e) => {
            eprintln!("checker: {e}");
            2
        }
    }
}

/// Run `f` as pid 1 of a new pid namespace with a new mount namespace and /proc mounted
/// for it; its exit code is returned (SKIP when the namespaces cannot be made).
fn in_new_pid_namespace(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: plain system calls in a forked single-threaded child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) != 0 {
            eprintln!("unshare: {}", std::io::Error::last_os_error());
            return SKIP;
        }
        let root = CString::new("/").unwrap();
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            eprintln!(
                "mount --make-rprivate /: {}",
                std::io::Error::last_os_error()
            );
            return SKIP;
        }
    }
    let child = spawn(|| {
        let (target, fstype) = (
            CString::new("/proc").unwrap(),
            CString::new("proc").unwrap(),
        );
        // SAFETY: mounting a fresh proc for the new pid namespace in the private mount one.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            eprintln!("mount proc: {}", std::io::Error::last_os_error());
            return SKIP;
        }
        f()
    });
    match wait(child, Duration::from_secs(50)) {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    }
}

fn pipe() -> [libc::c_int; 2] {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    fds
}

fn write_byte(fd: libc::c_int) {
    // SAFETY: one byte from a local.
    assert_eq!(unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) }, 1);
}

fn read_byte(fd: libc::c_int) {
    let mut b = [0u8];
    // SAFETY: one byte into a local.
    assert_eq!(unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) }, 1);
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let mut r = [0u8; 8];
        shmsesscache::util::random_bytes(&mut r);
        let p = std::env::temp_dir().join(format!("shmsess-pidns-{:016x}", u64::from_ne_bytes(r)));
        fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
