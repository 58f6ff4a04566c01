//! Robust, process-shared mutexes living inside the shared segment.
//!
//! Every shard is guarded by one `pthread_mutex_t` initialised with `PTHREAD_PROCESS_SHARED`
//! and `PTHREAD_MUTEX_ROBUST`. When a process dies holding it, the next locker gets
//! `EOWNERDEAD`: the data may be half written, so the caller must repair the shard *before*
//! `pthread_mutex_consistent`. Unlocking without `consistent` would make the mutex
//! `ENOTRECOVERABLE` for every process forever, so [`Acquired::OwnerDied`] carries the
//! obligation and [`ShardLock::mark_consistent`] is the only way to discharge it.

use std::io;
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
                        let deadline = realtime_deadline(t);
                        libc::pthread_mutex_timedlock(self.mutex, &deadline)
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

/// Initialise a robust, process-shared, error-checking mutex at `mutex`.
///
/// # Safety
/// `mutex` must point to writable memory of `pthread_mutex_t` size and alignment that nobody
/// else uses yet.
unsafe fn init_at(mutex: *mut libc::pthread_mutex_t) -> io::Result<()> {
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

/// `pthread_mutex_timedlock` takes an absolute CLOCK_REALTIME deadline.
fn realtime_deadline(after: Duration) -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
    }
    let nanos = now.tv_nsec as u64 + u64::from(after.subsec_nanos());
    libc::timespec {
        tv_sec: now.tv_sec
            + after.as_secs() as libc::time_t
            + (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (nanos % 1_000_000_000) as _,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_mutex() -> *mut libc::pthread_mutex_t {
        let page = crate::segment::Mapping::anonymous(4096).unwrap();
        let p = page.base() as *mut libc::pthread_mutex_t;
        // Never unmapped: the tests' forked children use it until they exit.
        std::mem::forget(page);
        p
    }

    #[test]
    fn owner_death_is_reported_once_and_recovered() {
        let m = shared_mutex();
        let lock = unsafe { ShardLock::from_ptr(m) };
        lock.init().unwrap();
        // SAFETY: fork in a test; the child only locks and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let l = unsafe { ShardLock::from_ptr(m) };
            let _ = l.lock(None);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
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
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let l = unsafe { ShardLock::from_ptr(m) };
            let _ = l.lock(None);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
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
}
