//! Whose thread ids the shard locks' words hold: the boot and the pid namespace of the
//! processes using a segment ([`Users`] in the segment's globals).
//!
//! A robust mutex's word holds its owner's thread id as the *owner's* pid namespace numbers
//! it. A process in another pid namespace (containers sharing `/dev/shm` or an IPC namespace)
//! would find that id dead, or naming some unrelated thread of its own; after a reboot a lock
//! word left in a file on persistent storage names a thread of a machine that no longer runs,
//! possibly reused by a live process now. So an owner is judged stale by its thread id only
//! by a process of the recorded boot and pid namespace while nobody from another namespace
//! uses the segment; a new boot makes every lock word stale at once.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::store::layout::Users;

/// This system's boot id (`/proc/sys/kernel/random/boot_id`, a UUID that changes at every
/// boot), as two words; `None` if it cannot be read. Read once: it cannot change while the
/// process lives.
pub fn this_boot() -> Option<[u64; 2]> {
    static BOOT: std::sync::OnceLock<Option<[u64; 2]>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        parse_boot_id(&text)
    })
}

/// "0f1e2d3c-…" (32 hex digits, dashes anywhere) to two words; never all zero (zero means
/// "unknown" in the segment).
fn parse_boot_id(text: &str) -> Option<[u64; 2]> {
    let hex: String = text.trim().chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let v = u128::from_str_radix(&hex, 16).ok()?;
    (v != 0).then_some([(v >> 64) as u64, v as u64])
}

/// The inode of this process's pid namespace (`/proc/self/ns/pid`); `None` if it cannot be
/// read. Not cached: a child forked after `unshare(CLONE_NEWPID)` lives in another one.
pub fn this_pid_ns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .ok()
        .map(|m| m.ino())
        .filter(|&i| i != 0)
}

/// Forks of this process's ancestors and itself since it started (with this library loaded):
/// a child forked after `unshare(CLONE_NEWPID)` runs in another pid namespace than the
/// process that attached, on the same mapping, so a cache checks again after a fork.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, SeqCst);
}

/// Start counting forks (once per process; inherited by children).
pub fn count_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    ONCE.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(count_fork_in_child));
    });
}

/// How many forks [`count_forks`] has seen in this process's line.
pub fn forks() -> u64 {
    FORKS.load(Relaxed)
}

impl Users {
    /// After a fork: if this process runs in another pid namespace than the users', mark the
    /// segment as used from several (its lock words may now hold this namespace's ids).
    pub fn rejoin_after_fork(&self) {
        if let (Some(ns), Some(boot)) = (this_pid_ns(), this_boot()) {
            if self.boot() == boot && self.pid_ns.load(SeqCst) != ns {
                self.mixed_ns.store(1, SeqCst);
            }
        }
    }

    /// The recorded boot id (all zero: unknown).
    pub fn boot(&self) -> [u64; 2] {
        [self.boot_id[0].load(SeqCst), self.boot_id[1].load(SeqCst)]
    }

    /// Record `boot` and `ns` as the users' (the caller holds the recovery word). The boot id
    /// is written last: a reader that sees it complete sees the namespace too.
    pub fn record(&self, boot: [u64; 2], ns: u64) {
        self.pid_ns.store(ns, SeqCst);
        self.mixed_ns.store(0, SeqCst);
        self.boot_id[0].store(boot[0], SeqCst);
        self.boot_id[1].store(boot[1], SeqCst);
    }

    /// Whether this process may judge a lock word's thread id: `Err` says why not.
    pub fn tids_checkable(&self) -> Result<(), String> {
        let boot = this_boot()
            .ok_or("this system's boot id (/proc/sys/kernel/random/boot_id) cannot be read")?;
        let ns = this_pid_ns()
            .ok_or("this process's pid namespace (/proc/self/ns/pid) cannot be read")?;
        if self.boot() != boot {
            return Err("the segment's users were recorded under another boot".into());
        }
        if self.mixed_ns.load(SeqCst) != 0 {
            return Err("processes of several pid namespaces use this segment, so a thread id in a lock word may be one of another namespace".into());
        }
        let theirs = self.pid_ns.load(SeqCst);
        if theirs != ns {
            return Err(format!("this process runs in pid namespace {ns}, the segment's users in {theirs}, so a thread id in a lock word means nothing here"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_parse_and_are_read() {
        assert_eq!(
            parse_boot_id("00112233-4455-6677-8899-aabbccddeeff\n"),
            Some([0x0011_2233_4455_6677, 0x8899_aabb_ccdd_eeff])
        );
        assert_eq!(parse_boot_id("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(parse_boot_id("0011"), None);
        assert!(this_boot().is_some(), "this Linux has a boot id");
        assert!(this_pid_ns().is_some(), "this Linux has pid namespaces");
    }
}
