//! Test-only fault hooks: with the `fault-injection` feature a test can make this process die
//! (SIGKILL) or panic the n-th time it passes a chosen point inside a critical section.
//! Without the feature every hook compiles to nothing.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FaultPoint {
    AfterLock = 1,
    MidWipe = 2,
    MidWrite = 3,
    BeforeHeadTag = 4,
    MidRepair = 5,
    BeforeUnlock = 6,
}

pub const ALL_POINTS: [FaultPoint; 6] = [
    FaultPoint::AfterLock,
    FaultPoint::MidWipe,
    FaultPoint::MidWrite,
    FaultPoint::BeforeHeadTag,
    FaultPoint::MidRepair,
    FaultPoint::BeforeUnlock,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    Kill,
    Panic,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

    static TARGET: AtomicU32 = AtomicU32::new(0);
    static ACTION: AtomicU32 = AtomicU32::new(0);
    static COUNTDOWN: AtomicU64 = AtomicU64::new(0);

    /// Fire `action` the `nth` time (1-based) this process passes `point`.
    pub fn arm(point: FaultPoint, nth: u64, action: FaultAction) {
        COUNTDOWN.store(nth, SeqCst);
        ACTION.store(if action == FaultAction::Kill { 0 } else { 1 }, SeqCst);
        TARGET.store(point as u32, SeqCst);
    }

    pub fn disarm() {
        TARGET.store(0, SeqCst);
    }

    /// `SHMSESS_TEST_FAULT=POINT:N[:FLAGFILE]`: every pass of POINT (0: any point) kills the
    /// process with probability 1/N, while FLAGFILE exists (if given). For end-to-end tests of
    /// a server linked against a fault-injection build; absent in normal builds.
    struct EnvFault {
        point: u32,
        one_in: u64,
        flag: Option<std::ffi::CString>,
    }

    fn env_fault() -> Option<&'static EnvFault> {
        static ENV: std::sync::OnceLock<Option<EnvFault>> = std::sync::OnceLock::new();
        ENV.get_or_init(|| {
            let v = std::env::var("SHMSESS_TEST_FAULT").ok()?;
            let mut it = v.splitn(3, ':');
            let point = it.next()?.parse().ok()?;
            let one_in = it.next()?.parse::<u64>().ok()?.max(1);
            let flag = it.next().and_then(|f| std::ffi::CString::new(f).ok());
            Some(EnvFault {
                point,
                one_in,
                flag,
            })
        })
        .as_ref()
    }

    fn env_point(p: FaultPoint) {
        let Some(f) = env_fault() else { return };
        if f.point != 0 && f.point != p as u32 {
            return;
        }
        static STATE: AtomicU64 = AtomicU64::new(0);
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        let mut x = STATE.load(SeqCst) ^ pid.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        STATE.store(x, SeqCst);
        if x % f.one_in != 0 {
            return;
        }
        if let Some(flag) = &f.flag {
            // SAFETY: access(2) on a valid C string.
            if unsafe { libc::access(flag.as_ptr(), libc::F_OK) } != 0 {
                return;
            }
        }
        // SAFETY: raising a signal at ourselves.
        unsafe { libc::raise(libc::SIGKILL) };
    }

    #[inline]
    pub fn point(p: FaultPoint) {
        env_point(p);
        if TARGET.load(SeqCst) != p as u32 {
            return;
        }
        if COUNTDOWN.fetch_sub(1, SeqCst) == 1 {
            TARGET.store(0, SeqCst);
            if ACTION.load(SeqCst) == 0 {
                // SAFETY: raising a signal at ourselves.
                unsafe { libc::raise(libc::SIGKILL) };
            }
            panic!("injected fault at {p:?}");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{arm, disarm, point};

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_p: FaultPoint) {}
