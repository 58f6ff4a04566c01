//! [`Handle`], what a `shmsess_cache *` points to: the mapped cache, how it behaves inside
//! OpenSSL, this process's session id prefix and the optional Redis tier; and the registry of
//! live handles, so that the C API refuses a freed or foreign pointer instead of using it.
//!
//! The C API hands out `Arc<Handle>` pointers (`shmsess_cache_create`); every `SSL_CTX` it is
//! installed on holds another reference (see `tls::install`), so a cache stays mapped until
//! the caller and every such `SSL_CTX` have let go of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::remote::Remote;
use crate::store::cache::Cache;
use crate::tiers::{Reach, Tiers};

/// How a cache behaves inside OpenSSL (set from `shmsess_options` at creation).
#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    /// Keep OpenSSL's per-process cache in front of the shared one.
    pub keep_internal_cache: bool,
    /// Let a TLS 1.3 stateful ticket resume more than once (default: single use).
    pub tls13_reuse: bool,
    /// Do not store or look up TLS 1.3 sessions at all.
    pub skip_tls13: bool,
    /// Lifetime applied to every stored session instead of the session's own timeout.
    pub session_timeout: Option<u32>,
    /// Session id context to set; `None`: derived from the certificate.
    pub session_id_context: Option<Vec<u8>>,
    /// Leave the SSL_CTX's session id context alone (the caller set one).
    pub keep_session_id_context: bool,
    /// Install the library's session id generator (prefix + CSPRNG, unique in the shared
    /// cache).
    pub generate_ids: bool,
    /// Prefix the generator starts every id with (at most [`MAX_ID_PREFIX`] bytes).
    pub id_prefix: Vec<u8>,
    /// Callbacks in a process whose effective uid is 0 leave the cache alone (the segment is
    /// written by less privileged workers); see `tls::install::served_here`.
    pub never_lock_as_root: bool,
    /// The byte API reaches Redis too (`SHMSESS_BYTE_API_REMOTE`).
    pub byte_api_remote: bool,
}

/// Longest prefix the id generator accepts: at least half of a 32-byte id stays random.
pub const MAX_ID_PREFIX: usize = 16;

/// What a `shmsess_cache*` points to: the mapped cache and how to behave in OpenSSL.
pub struct Handle {
    /// The optional second tier (Redis), shared by hosts. Declared first, so dropped first:
    /// its writer thread finishes (and counts into the segment) before `cache` unmaps it.
    pub remote: Option<Remote>,
    pub cache: Cache,
    pub install: InstallOptions,
    /// The generator's prefix in this process: starts as `install.id_prefix`; a worker may
    /// change it after fork (e.g. to add its own number), which affects only that worker.
    pub id_prefix: RwLock<Vec<u8>>,
}

impl Handle {
    pub fn new(cache: Cache, install: InstallOptions) -> Handle {
        let id_prefix = RwLock::new(install.id_prefix.clone());
        Handle {
            cache,
            install,
            id_prefix,
            remote: None,
        }
    }

    pub fn with_remote(mut self, remote: Option<Remote>) -> Handle {
        self.remote = remote;
        self
    }

    /// The cache's tiers as a caller reaches them: the OpenSSL callbacks use both, the byte
    /// API the segment only (see [`Reach`]).
    pub fn tiers(&self, reach: Reach) -> Tiers<'_> {
        Tiers::new(&self.cache, self.remote.as_ref(), reach)
    }

    /// What the byte API reaches: both tiers with `SHMSESS_BYTE_API_REMOTE`, else the segment.
    pub fn byte_reach(&self) -> Reach {
        if self.install.byte_api_remote && self.remote.is_some() {
            Reach::Both
        } else {
            Reach::LocalOnly
        }
    }
}

// ---- The live handles ----
//
// Checked on every API call (`shmsess_cache_lookup` and friends run per handshake in servers
// such as Apache's event MPM, from many threads at once), so it takes no lock: a fixed table
// of atomic slots, scanned with plain loads. Servers have one or a few caches; the scan stops
// at the high-water mark.

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
