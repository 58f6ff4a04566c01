//! The set of live cache handles, so that the C API refuses a freed or foreign pointer instead
//! of using it.
//!
//! Checked on every API call (`shmsess_cache_lookup` and friends run per handshake in servers
//! such as Apache's event MPM, from many threads at once), so it takes no lock: a fixed table
//! of atomic slots, scanned with plain loads. Servers have one or a few caches; the scan stops
//! at the high-water mark.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Most caches alive at once in one process.
pub const MAX_LIVE: usize = 1024;

static SLOTS: [AtomicUsize; MAX_LIVE] = [const { AtomicUsize::new(0) }; MAX_LIVE];
/// One past the highest slot ever used: the scans stop there.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// Record `p` as live. False if `MAX_LIVE` handles are alive already.
pub fn register(p: usize) -> bool {
    debug_assert!(p != 0);
    for (i, slot) in SLOTS.iter().enumerate() {
        if slot
            .compare_exchange(0, p, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            HIGH.fetch_max(i + 1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// Whether `p` is live. Lock-free: loads only.
pub fn is_live(p: usize) -> bool {
    p != 0
        && SLOTS[..HIGH.load(Ordering::Acquire)]
            .iter()
            .any(|s| s.load(Ordering::Acquire) == p)
}

/// Forget `p`. False if it was not live (freed already, or never a handle).
pub fn unregister(p: usize) -> bool {
    p != 0
        && SLOTS[..HIGH.load(Ordering::Acquire)].iter().any(|s| {
            s.compare_exchange(p, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_live_from_register_to_unregister_once() {
        let (a, b) = (0x1000usize, 0x2000usize);
        assert!(!is_live(a));
        assert!(register(a) && register(b));
        assert!(is_live(a) && is_live(b));
        assert!(unregister(a));
        assert!(!is_live(a) && is_live(b));
        assert!(!unregister(a), "a second free is refused");
        assert!(!is_live(0) && !unregister(0));
        assert!(unregister(b));
    }
}
