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

    #[inline]
    pub fn point(p: FaultPoint) {
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
