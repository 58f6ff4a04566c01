//! Robust, process-shared mutexes living inside the shared segment.
//!
//! Every shard is guarded by one `pthread_mutex_t` initialised with `PTHREAD_PROCESS_SHARED`
//! and `PTHREAD_MUTEX_ROBUST`. When a process dies holding it, the next locker gets
//! `EOWNERDEAD`: the data may be half written, so the caller must repair the shard *before*
//! `pthread_mutex_consistent`. Unlocking without `consistent` would make the mutex
//! `ENOTRECOVERABLE` for every process forever, so [`Acquired::OwnerDied`] carries the
//! obligation and [`ShardLock::mark_consistent`] is the only way to discharge it.

use std::io;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// What a successful acquisition found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Normal acquisition.
    Clean,
    /// The previous owner died inside the critical section. The caller holds the lock,
    /// must repair what it guards and then call [`ShardLock::mark_consistent`].
    OwnerDied,
}

/// Why a lock could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockError {
    /// Not acquired within the configured time (a live owner is stuck, e.g. SIGSTOPped).
    Timeout,
    /// The mutex was unlocked by a recovering owner that did not call `consistent`.
    /// Only a segment rebuilt from scratch can fix that; we never produce it ourselves.
    NotRecoverable,
    /// Any other errno from pthreads (EINVAL on a garbage mutex, for instance).
    Os(i32),
    /// The mutex is not one we initialised (damaged segment): locking it could make glibc
    /// abort the process, so it is refused.
    Corrupt,
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Timeout => write!(f, "timed out waiting for a shard lock"),
            LockError::NotRecoverable => {
                write!(f, "shard lock is not recoverable (ENOTRECOVERABLE)")
            }
            LockError::Os(e) => {
                write!(f, "shard lock failed: {}", io::Error::from_raw_os_error(*e))
            }
            LockError::Corrupt => {
                write!(f, "shard lock is damaged (not a mutex this library made)")
            }
        }
    }
}

/// A view of a `pthread_mutex_t` that lives in shared memory. It does not own the memory.
pub struct ShardLock {
    mutex: *mut libc::pthread_mutex_t,
}

impl ShardLock {
    /// # Safety
    /// `mutex` must point to a `pthread_mutex_t`-sized, suitably aligned region of a mapping
    /// that outlives this value.
    pub unsafe fn from_ptr(mutex: *mut libc::pthread_mutex_t) -> Self {
        ShardLock { mutex }
    }

    /// Initialise the mutex in place. Only the creator of a segment calls this, before any
    /// other process can see the segment.
    pub fn init(&self) -> io::Result<()> {
        // SAFETY: self.mutex points into the mapping (see from_ptr).
        unsafe { init_at(self.mutex) }
    }

    /// A segment may come from a damaged or hostile file: glibc aborts the process (an
    /// assertion in its priority-protocol code) when asked to lock a mutex whose kind word has
    /// bits we never set. So the kind must be exactly what `init` writes.
    fn kind_ok(&self) -> bool {
        match expected_kind() {
            // SAFETY: the mutex lies inside the mapping; KIND_OFFSET is within its size.
            Some(k) => unsafe {
                std::ptr::read_volatile((self.mutex as *const u8).add(KIND_OFFSET) as *const i32)
                    == k
            },
            None => true,
        }
    }

    /// Take the lock, waiting at most `timeout` (`None`: wait as long as it takes).
    pub fn lock(&self, timeout: Option<Duration>) -> Result<Acquired, LockError> {
        if !self.kind_ok() {
            return Err(LockError::Corrupt);
        }
        // SAFETY: self.mutex points to an initialised process-shared mutex (see from_ptr).
        let rc = unsafe {
            match timeout {
                None => libc::pthread_mutex_lock(self.mutex),
                Some(t) => {
                    // A fast path: most acquisitions are uncontended.
                    let rc = libc::pthread_mutex_trylock(self.mutex);
                    if rc == libc::EBUSY {
                        let deadline = monotonic_deadline(t);
                        pthread_mutex_clocklock(self.mutex, libc::CLOCK_MONOTONIC, &deadline)
                    } else {
                        rc
                    }
                }
            }
        };
        classify(rc)
    }

    /// Try once without waiting. `Ok(None)`: somebody else holds it.
    pub fn try_lock(&self) -> Result<Option<Acquired>, LockError> {
        if !self.kind_ok() {
            return Err(LockError::Corrupt);
        }
        // SAFETY: as in lock().
        let rc = unsafe { libc::pthread_mutex_trylock(self.mutex) };
        if rc == libc::EBUSY {
            return Ok(None);
        }
        classify(rc).map(Some)
    }

    /// Declare the guarded state repaired after [`Acquired::OwnerDied`]. Must be called while
    /// holding the lock, before [`ShardLock::unlock`].
    pub fn mark_consistent(&self) -> Result<(), LockError> {
        // SAFETY: as in lock(); the caller holds the mutex.
        let rc = unsafe { libc::pthread_mutex_consistent(self.mutex) };
        if rc == 0 {
            Ok(())
        } else {
            Err(LockError::Os(rc))
        }
    }

    pub fn unlock(&self) {
        // SAFETY: as in lock(); the caller holds the mutex. An error here (EPERM: not the
        // owner) would be a bug in this crate; there is nothing better to do than ignore it.
        unsafe {
            libc::pthread_mutex_unlock(self.mutex);
        }
    }
}

/// Who holds a mutex, as its lock word says (read without locking it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Unlocked, or a layout this build cannot read.
    Free,
    /// Held by thread `tid`, which exists (it may be stopped, or busy).
    Live(i32),
    /// Held by thread `tid`, which this process cannot check: the id was written in another
    /// pid namespace, or possibly was (see `users.rs`). Treated as alive: never reset
    /// automatically.
    Unchecked(i32),
    /// Held by thread `tid`, which does not exist, and the kernel never marked it dead: a
    /// stale word (a segment on persistent storage after a reboot, or hostile bytes). Nobody
    /// will ever unlock it.
    Stale(i32),
    /// Its owner died and the kernel said so: the next locker gets `EOWNERDEAD`.
    OwnerDied,
    /// Unlocked by a recovering owner that never declared it consistent: every lock fails
    /// with `ENOTRECOVERABLE`.
    NotRecoverable,
    /// Its kind word is not what `init` writes (damaged or hostile bytes): never locked.
    Damaged,
}

impl Holder {
    /// Nobody can ever take the mutex again as it is: only a reset helps.
    pub fn is_unusable(self) -> bool {
        matches!(
            self,
            Holder::Stale(_) | Holder::NotRecoverable | Holder::Damaged
        )
    }
}

/// glibc's robust futex word: the owner's TID and two flag bits (linux/futex.h).
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
/// glibc: `__owner` (after `__lock` and `__count`) holds this once the mutex is not recoverable.
const OWNER_OFFSET: usize = 8;
const PTHREAD_MUTEX_NOTRECOVERABLE: u32 = (i32::MAX - 1) as u32;

impl ShardLock {
    /// Read the lock word (glibc on 64-bit Linux: `__lock` is the first word) and, if it names
    /// an owner, whether that thread exists. A TID is only meaningful in the pid namespace
    /// (and boot) it was written in: without `tids_checkable` (see `users.rs`) an owner is
    /// [`Holder::Unchecked`], never stale.
    pub fn holder(&self, tids_checkable: bool) -> Holder {
        if expected_kind().is_none() {
            return Holder::Free;
        }
        if !self.kind_ok() {
            return Holder::Damaged;
        }
        let word = self.word(0);
        let tid = (word & FUTEX_TID_MASK) as i32;
        if self.word(OWNER_OFFSET) == PTHREAD_MUTEX_NOTRECOVERABLE {
            Holder::NotRecoverable
        } else if word & FUTEX_OWNER_DIED != 0 {
            Holder::OwnerDied
        } else if tid == 0 {
            Holder::Free
        } else if !tids_checkable {
            Holder::Unchecked(tid)
        } else if thread_exists(tid) {
            Holder::Live(tid)
        } else {
            Holder::Stale(tid)
        }
    }

    /// The 32-bit word at byte `offset` of the mutex, read atomically (other processes change
    /// it concurrently).
    fn word(&self, offset: usize) -> u32 {
        // SAFETY: offset is one of the glibc field offsets below, inside the mutex, 4-aligned.
        unsafe {
            (*((self.mutex as *const u8).add(offset) as *const std::sync::atomic::AtomicU32))
                .load(SeqCst)
        }
    }

    /// Make the mutex a fresh, unlocked one and wake whoever sleeps on it. Only for a mutex
    /// nobody can legitimately hold (stale owner, not recoverable, damaged) or that an operator
    /// decided to break; the caller serialises resets (the segment's recovery word) and repairs
    /// what the mutex guards before trusting it.
    pub fn reset(&self) -> io::Result<()> {
        // SAFETY: the mutex lies inside the mapping; the old bytes (hostile list pointers
        // included) are zeroed before glibc initialises it.
        unsafe {
            std::ptr::write_bytes(
                self.mutex as *mut u8,
                0,
                std::mem::size_of::<libc::pthread_mutex_t>(),
            );
            init_at(self.mutex)?;
            // Waiters sleep on the lock word (a shared futex): let them retry now rather than
            // at the end of their timeout.
            libc::syscall(
                libc::SYS_futex,
                self.mutex as *mut u32,
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
        Ok(())
    }
}

/// Whether a thread with this id exists in our pid namespace. `kill(tid, 0)` finds
/// processes (EPERM: it exists but is somebody else's); since Linux 6.9 it no longer finds a
/// thread that is not its process's leader, which `/proc/TID` still does.
fn thread_exists(tid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(tid, 0) };
    if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
        return true;
    }
    std::path::Path::new(&format!("/proc/{tid}")).exists()
}

/// Initialise a robust, process-shared, error-checking mutex at `mutex`.
///
/// # Safety
/// `mutex` must point to writable memory of `pthread_mutex_t` size and alignment that nobody
/// else uses yet.
unsafe fn init_at(mutex: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: an attribute object is plain data until pthread_mutexattr_init fills it; it is
    // set up, used and destroyed on this stack only. The mutex memory is the caller's promise.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        check(libc::pthread_mutexattr_init(&mut attr))?;
        let result = (|| {
            check(libc::pthread_mutexattr_setpshared(
                &mut attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))?;
            check(libc::pthread_mutexattr_setrobust(
                &mut attr,
                libc::PTHREAD_MUTEX_ROBUST,
            ))?;
            // Error checking makes a relock by the same thread an error instead of a hang.
            check(libc::pthread_mutexattr_settype(
                &mut attr,
                libc::PTHREAD_MUTEX_ERRORCHECK,
            ))?;
            check(libc::pthread_mutex_init(mutex, &attr))
        })();
        libc::pthread_mutexattr_destroy(&mut attr);
        result
    }
}

/// glibc on 64-bit Linux: `__kind` follows `__lock`, `__count`, `__owner`, `__nusers`.
#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
const KIND_OFFSET: usize = 16;
#[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
const KIND_OFFSET: usize = 0;

/// The kind word `init_at` produces, read off a scratch mutex; `None` where the layout is not
/// known (then no check is made).
fn expected_kind() -> Option<i32> {
    if cfg!(not(all(
        target_os = "linux",
        target_env = "gnu",
        target_pointer_width = "64"
    ))) {
        return None;
    }
    static KIND: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| {
        // SAFETY: a zeroed local mutex, initialised, read and destroyed here.
        unsafe {
            let mut m: libc::pthread_mutex_t = std::mem::zeroed();
            init_at(&mut m).ok()?;
            let k = std::ptr::read(
                (&m as *const libc::pthread_mutex_t as *const u8).add(KIND_OFFSET) as *const i32,
            );
            libc::pthread_mutex_destroy(&mut m);
            Some(k)
        }
    })
}

fn classify(rc: i32) -> Result<Acquired, LockError> {
    match rc {
        0 => Ok(Acquired::Clean),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        libc::ETIMEDOUT => Err(LockError::Timeout),
        libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
        e => Err(LockError::Os(e)),
    }
}

fn check(rc: i32) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

extern "C" {
    /// glibc >= 2.30 (POSIX 2024): `pthread_mutex_timedlock` with the clock named. The libc
    /// crate does not declare it.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// The clock the timed lock waits on. Monotonic: a wall-clock step (NTP, an operator's
/// `date -s`) neither stretches nor cuts a wait.
pub const LOCK_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// An absolute deadline `after` from now on [`LOCK_CLOCK`], as `pthread_mutex_clocklock`
/// takes it.
pub fn monotonic_deadline(after: Duration) -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe {
        libc::clock_gettime(LOCK_CLOCK, &mut now);
    }
    let nanos = now.tv_nsec as u64 + u64::from(after.subsec_nanos());
    let secs = (after.as_secs() as libc::time_t).saturating_add((nanos / 1_000_000_000) as _);
    libc::timespec {
        tv_sec: now.tv_sec.saturating_add(secs),
        tv_nsec: (nanos % 1_000_000_000) as _,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_mutex() -> *mut libc::pthread_mutex_t {
        let page = crate::store::segment::Mapping::anonymous(4096).unwrap();
        let p = page.base() as *mut libc::pthread_mutex_t;
        // Never unmapped: the tests' forked children use it until they exit.
        std::mem::forget(page);
        p
    }

    /// A child process takes the lock at `m` and exits holding it; returns once it is gone.
    fn die_holding(m: *mut libc::pthread_mutex_t) {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let l = unsafe { ShardLock::from_ptr(m) };
            let _ = l.lock(None);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }

    #[test]
    fn owner_death_is_reported_once_and_recovered() {
        let m = shared_mutex();
        let lock = unsafe { ShardLock::from_ptr(m) };
        lock.init().unwrap();
        // SAFETY: fork in a test; the child only locks and exits.
        die_holding(m);
        assert_eq!(lock.lock(None), Ok(Acquired::OwnerDied));
        lock.mark_consistent().unwrap();
        lock.unlock();
        assert_eq!(
            lock.lock(Some(Duration::from_millis(100))),
            Ok(Acquired::Clean)
        );
        lock.unlock();
    }

    #[test]
    fn trylock_sees_owner_death() {
        let m = shared_mutex();
        let lock = unsafe { ShardLock::from_ptr(m) };
        lock.init().unwrap();
        die_holding(m);
        assert_eq!(lock.try_lock(), Ok(Some(Acquired::OwnerDied)));
        lock.mark_consistent().unwrap();
        lock.unlock();
    }

    #[test]
    fn timed_lock_times_out_on_a_live_owner() {
        let m = shared_mutex();
        let lock = unsafe { ShardLock::from_ptr(m) };
        lock.init().unwrap();
        let mut fds = [0i32; 2];
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let l = unsafe { ShardLock::from_ptr(m) };
            let _ = l.lock(None);
            unsafe {
                libc::write(fds[1], b"x".as_ptr() as *const _, 1);
                libc::pause();
                libc::_exit(0)
            };
        }
        let mut b = [0u8; 1];
        unsafe { libc::read(fds[0], b.as_mut_ptr() as *mut _, 1) };
        assert_eq!(
            lock.lock(Some(Duration::from_millis(30))),
            Err(LockError::Timeout)
        );
        assert_eq!(lock.try_lock(), Ok(None));
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        assert_eq!(
            lock.lock(Some(Duration::from_secs(5))),
            Ok(Acquired::OwnerDied)
        );
        lock.mark_consistent().unwrap();
        lock.unlock();
    }

    fn now_on(clock: libc::clockid_t) -> libc::timespec {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(clock, &mut t) };
        t
    }

    #[test]
    fn the_timed_lock_deadline_is_on_the_monotonic_clock() {
        // The monotonic clock counts from boot, the real-time clock from 1970: a deadline 5 s
        // ahead on one is decades away from the other, so this tells them apart.
        assert_eq!(LOCK_CLOCK, libc::CLOCK_MONOTONIC);
        let d = monotonic_deadline(Duration::from_secs(5));
        let ahead = d.tv_sec - now_on(libc::CLOCK_MONOTONIC).tv_sec;
        assert!(
            (4..=5).contains(&ahead),
            "deadline {ahead} s ahead of CLOCK_MONOTONIC"
        );
        assert!((0..1_000_000_000).contains(&d.tv_nsec));
        // A sub-second carry lands in tv_sec.
        let d = monotonic_deadline(Duration::from_nanos(999_999_999));
        assert!((0..1_000_000_000).contains(&d.tv_nsec));
    }

    /// Fork a child that exits at once; its pid names no thread afterwards.
    fn dead_tid() -> i32 {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        pid
    }

    #[test]
    fn a_stale_owner_word_is_told_from_a_live_owner_and_reset() {
        let m = shared_mutex();
        let lock = unsafe { ShardLock::from_ptr(m) };
        lock.init().unwrap();
        assert_eq!(lock.holder(true), Holder::Free);
        // What a segment from before a reboot holds: an owner TID, no owner-died bit.
        let tid = dead_tid();
        unsafe {
            (*(m as *const std::sync::atomic::AtomicU32)).store(tid as u32, SeqCst);
            *((m as *mut u8).add(OWNER_OFFSET) as *mut i32) = tid;
        }
        assert_eq!(lock.holder(true), Holder::Stale(tid));
        // Unless thread ids cannot be checked (another pid namespace wrote them, maybe).
        assert_eq!(lock.holder(false), Holder::Unchecked(tid));
        assert!(!Holder::Unchecked(tid).is_unusable());
        assert_eq!(
            lock.lock(Some(Duration::from_millis(20))),
            Err(LockError::Timeout)
        );
        lock.reset().unwrap();
        assert_eq!(lock.holder(true), Holder::Free);
        assert_eq!(
            lock.lock(Some(Duration::from_millis(20))),
            Ok(Acquired::Clean)
        );
        let me = unsafe { libc::gettid() };
        assert_eq!(lock.holder(true), Holder::Live(me));
        lock.unlock();
    }

    #[test]
    fn a_mutex_left_inconsistent_is_seen_as_not_recoverable_and_reset() {
        let m = shared_mutex();
        let lock = unsafe { ShardLock::from_ptr(m) };
        lock.init().unwrap();
        die_holding(m);
        assert_eq!(lock.holder(true), Holder::OwnerDied);
        assert_eq!(lock.lock(None), Ok(Acquired::OwnerDied));
        lock.unlock(); // without mark_consistent: what a panic in the repair used to do
        assert_eq!(lock.holder(true), Holder::NotRecoverable);
        assert_eq!(lock.try_lock(), Err(LockError::NotRecoverable));
        lock.reset().unwrap();
        assert_eq!(lock.try_lock(), Ok(Some(Acquired::Clean)));
        lock.unlock();
    }
}
