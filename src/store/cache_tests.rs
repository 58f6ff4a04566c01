//! Unit tests of the slot/shard logic through the cache API (single process).

use std::collections::HashMap;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::store::cache::{Cache, Config, Found, Take};
use crate::store::layout::{Geometry, DEFAULT_UNIT_BYTES, MAX_SESSION_BYTES};

const NOW: u32 = 1_800_000_000;

fn cache(size: u64) -> Cache {
    Cache::create(&Config {
        size_bytes: size,
        lock_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    })
    .unwrap()
}

/// A cache with exactly one shard, so tests control what competes for space.
fn one_shard() -> Cache {
    let g = Geometry::plan(1 << 20, DEFAULT_UNIT_BYTES).unwrap();
    let c = cache((4096 + g.shard_stride) as u64);
    assert_eq!(c.geometry().shard_count, 1);
    c
}

fn id(n: u32) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&n.to_le_bytes());
    id[31] = 0xA5;
    id
}

/// Data shaped like session DER: some bytes, the id 15 bytes in, more bytes.
fn der(n: u32, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + n) as u8).collect();
    if len >= 47 {
        d[15..47].copy_from_slice(&id(n));
    }
    d
}

fn get(c: &Cache, n: u32, now: u32) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_SESSION_BYTES];
    match c.lookup_at(&id(n), &mut buf, false, now).unwrap() {
        Found::Hit { len, .. } => Some(buf[..len].to_vec()),
        Found::Miss => None,
        Found::BufferTooSmall { .. } => panic!("buffer too small"),
    }
}

#[test]
fn store_then_lookup_returns_the_same_bytes() {
    let c = cache(1 << 20);
    for n in 0..100 {
        c.store_at(&id(n), &der(n, 160), NOW, NOW + 300, NOW)
            .unwrap();
    }
    for n in 0..100 {
        assert_eq!(get(&c, n, NOW + 1), Some(der(n, 160)), "entry {n}");
    }
    assert_eq!(get(&c, 1000, NOW), None);
    let s = c.stats();
    assert_eq!(
        (s.stores, s.lookup_hits, s.lookup_misses, s.entries),
        (100, 100, 1, 100)
    );
    // Every 160-byte session took exactly one unit: the id inside the DER is not stored twice.
    assert_eq!(s.used_units, 100);
}

#[test]
fn data_without_the_id_inside_is_stored_with_the_id_prepended() {
    let c = cache(1 << 20);
    let data = vec![0x11u8; 170];
    c.store_at(&id(1), &data, NOW, NOW + 60, NOW).unwrap();
    assert_eq!(get(&c, 1, NOW), Some(data));
    assert_eq!(
        c.stats().used_units,
        2,
        "170 + 32 + 16 bytes need two 200-byte units"
    );
}

#[test]
fn store_replaces_an_entry_with_the_same_id() {
    let c = cache(1 << 20);
    c.store_at(&id(7), &der(7, 160), NOW, NOW + 60, NOW)
        .unwrap();
    c.store_at(&id(7), &der(8, 900), NOW, NOW + 60, NOW)
        .unwrap();
    let mut expected = der(8, 900);
    expected[15..47].copy_from_slice(&id(8));
    assert_eq!(get(&c, 7, NOW), Some(expected));
    let s = c.stats();
    assert_eq!((s.replaced, s.entries), (1, 1));
}

#[test]
fn remove_tolerates_unknown_ids_and_wipes_the_slot() {
    let c = one_shard();
    assert!(!c.remove(&id(1)).unwrap());
    c.store_at(&id(2), &der(2, 160), NOW, NOW + 60, NOW)
        .unwrap();
    assert!(c.remove(&id(2)).unwrap());
    assert_eq!(get(&c, 2, NOW), None);
    let s = c.stats();
    assert_eq!(
        (s.remove_hits, s.remove_misses, s.entries, s.used_units),
        (1, 1, 0, 0)
    );
    let g = c.lock_shard(0).unwrap();
    for i in 0..c.geometry().units_per_shard {
        assert!(
            g.unit_bytes_mut(i).iter().all(|&b| b == 0),
            "unit {i} not wiped"
        );
    }
}

#[test]
fn expired_entries_miss_and_are_reclaimed() {
    let c = cache(1 << 20);
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 10, NOW)
        .unwrap();
    assert!(get(&c, 1, NOW + 9).is_some());
    assert_eq!(get(&c, 1, NOW + 10), None);
    let s = c.stats();
    assert_eq!((s.expired, s.entries), (1, 0));
}

#[test]
fn take_returns_the_entry_once() {
    let c = cache(1 << 20);
    c.store_at(&id(3), &der(3, 160), NOW, NOW + 60, NOW)
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(matches!(
        c.lookup_at(&id(3), &mut buf, true, NOW).unwrap(),
        Found::Hit { len: 160, .. }
    ));
    assert_eq!(
        c.lookup_at(&id(3), &mut buf, true, NOW).unwrap(),
        Found::Miss
    );
    assert_eq!(c.stats().taken, 1);
}

#[test]
fn a_conditional_take_removes_only_what_the_predicate_picks() {
    let c = cache(1 << 20);
    // The predicate sees the copied payload: entries whose first byte is odd are single use.
    fn odd_first_byte(p: &[u8]) -> bool {
        p.first().is_some_and(|b| b % 2 == 1)
    }
    let (mut odd, mut even) = (der(1, 160), der(2, 160));
    odd[0] = 1;
    even[0] = 2;
    c.store_at(&id(1), &odd, NOW, NOW + 60, NOW).unwrap();
    c.store_at(&id(2), &even, NOW, NOW + 60, NOW).unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        let r = c.lookup_taking(&id(2), &mut buf, Take::If(odd_first_byte), NOW);
        assert!(matches!(r.unwrap(), Found::Hit { len: 160, .. }));
    }
    let r = c.lookup_taking(&id(1), &mut buf, Take::If(odd_first_byte), NOW);
    assert!(matches!(r.unwrap(), Found::Hit { len: 160, .. }));
    assert_eq!(&buf[..160], &odd[..]);
    let r = c.lookup_taking(&id(1), &mut buf, Take::If(odd_first_byte), NOW);
    assert_eq!(r.unwrap(), Found::Miss);
    assert_eq!(c.stats().taken, 1);
    assert!(get(&c, 2, NOW).is_some());
}

#[test]
fn a_small_buffer_is_reported_and_changes_nothing() {
    let c = cache(1 << 20);
    c.store_at(&id(3), &der(3, 600), NOW, NOW + 60, NOW)
        .unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(
        c.lookup_at(&id(3), &mut buf, true, NOW).unwrap(),
        Found::BufferTooSmall { needed: 600 }
    );
    assert_eq!(get(&c, 3, NOW).map(|v| v.len()), Some(600));
}

#[test]
fn sizes_and_ids_are_checked() {
    let c = cache(1 << 20);
    let e = c
        .store_at(
            &id(1),
            &vec![1u8; MAX_SESSION_BYTES + 1],
            NOW,
            NOW + 60,
            NOW,
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!(c.stats().too_large, 1);
    c.store_at(&id(1), &der(1, MAX_SESSION_BYTES), NOW, NOW + 60, NOW)
        .unwrap();
    assert_eq!(get(&c, 1, NOW), Some(der(1, MAX_SESSION_BYTES)));
    assert_eq!(
        c.store_at(&[], b"x", NOW, NOW + 1, NOW).unwrap_err().kind,
        ErrorKind::Invalid
    );
    assert_eq!(
        c.store_at(&[0u8; 33], b"x", NOW, NOW + 1, NOW)
            .unwrap_err()
            .kind,
        ErrorKind::Invalid
    );
    assert_eq!(
        c.store_at(&[1u8; 4], b"", NOW, NOW + 1, NOW)
            .unwrap_err()
            .kind,
        ErrorKind::Invalid
    );
    assert_eq!(
        c.lookup_at(&[0u8; 33], &mut [0u8; 8], false, NOW)
            .unwrap_err()
            .kind,
        ErrorKind::Invalid
    );
    assert_eq!(c.remove(&[]).unwrap_err().kind, ErrorKind::Invalid);
    // Short ids (not 32 bytes) work too.
    c.store_at(&[9u8], b"short id", NOW, NOW + 60, NOW).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(
        c.lookup_at(&[9u8], &mut buf, false, NOW).unwrap(),
        Found::Hit { len: 8, .. }
    ));
}

#[test]
fn a_full_shard_evicts_the_oldest_live_entry() {
    let c = one_shard();
    let n = c.geometry().units_per_shard as u32;
    for i in 0..n {
        c.store_at(&id(i), &der(i, 160), NOW + i, NOW + 10_000, NOW + i)
            .unwrap();
    }
    assert_eq!(c.stats().evicted_live, 0);
    c.store_at(&id(n), &der(n, 160), NOW + n, NOW + 10_000, NOW + n)
        .unwrap();
    assert_eq!(c.stats().evicted_live, 1);
    assert_eq!(get(&c, 0, NOW + n), None, "the oldest entry goes first");
    for i in 1..=n {
        assert!(get(&c, i, NOW + n).is_some(), "entry {i} should survive");
    }
}

#[test]
fn a_full_shard_reclaims_expired_entries_before_live_ones() {
    let c = one_shard();
    let n = c.geometry().units_per_shard as u32;
    for i in 0..n {
        // Entry 100 expires early; entry 0 is the oldest but still live.
        let expires = if i == 100 { NOW + 50 } else { NOW + 10_000 };
        c.store_at(&id(i), &der(i, 160), NOW + i, expires, NOW + i)
            .unwrap();
    }
    c.store_at(&id(n), &der(n, 160), NOW + 1000, NOW + 10_000, NOW + 1000)
        .unwrap();
    let s = c.stats();
    assert_eq!((s.expired, s.evicted_live), (1, 0));
    assert!(get(&c, 0, NOW + 1000).is_some());
    assert_eq!(get(&c, 100, NOW + 1000), None);
}

#[test]
fn large_entries_find_room_among_small_ones() {
    let c = one_shard();
    let units = c.geometry().units_per_shard as u32;
    for i in 0..units {
        c.store_at(&id(i), &der(i, 160), NOW + i, NOW + 10_000, NOW + i)
            .unwrap();
    }
    // An 8 KiB session needs 42 consecutive units: the oldest 42 small entries make way.
    c.store_at(
        &id(9999),
        &der(9999, 8000),
        NOW + 5000,
        NOW + 10_000,
        NOW + 5000,
    )
    .unwrap();
    assert_eq!(get(&c, 9999, NOW + 5000), Some(der(9999, 8000)));
    let s = c.stats();
    assert_eq!(s.evicted_live, 41, "8000 + 16 bytes take 41 units");
    for i in 0..41 {
        assert_eq!(
            get(&c, i, NOW + 5000),
            None,
            "entry {i} was among the oldest"
        );
    }
    for i in 41..units {
        assert!(get(&c, i, NOW + 5000).is_some(), "entry {i} should survive");
    }
}

#[test]
fn mixed_sizes_under_pressure_never_return_wrong_bytes() {
    // A reference model: a lookup returns either a miss or exactly what was stored last.
    let c = cache(256 << 10);
    let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let sizes = [60usize, 160, 170, 190, 400, 545, 1200, 3000, 8192];
    let mut hits = 0;
    for step in 0..20_000u32 {
        let r = next();
        let n = (r % 3000) as u32;
        match r >> 60 {
            0..=7 => {
                let len = sizes[((r >> 20) % sizes.len() as u64) as usize];
                let mut d = der(n, len);
                d[0] = step as u8;
                c.store_at(&id(n), &d, NOW + step, NOW + 1_000_000, NOW + step)
                    .unwrap();
                model.insert(n, d);
            }
            8..=13 => {
                if let Some(got) = get(&c, n, NOW + step) {
                    assert_eq!(
                        Some(&got),
                        model.get(&n),
                        "wrong bytes for {n} at step {step}"
                    );
                    hits += 1;
                }
            }
            _ => {
                c.remove(&id(n)).unwrap();
                model.remove(&n);
            }
        }
    }
    assert!(hits > 100, "the workload should hit sometimes ({hits})");
    let s = c.stats();
    assert!(s.evicted_live > 0, "the workload should fill the cache");
    assert!(s.used_units <= s.capacity_units);
    assert_eq!(s.corrupt_dropped, 0);
}

#[test]
fn density_of_typical_sessions_is_at_least_5000_per_mib() {
    // Sessions held once the cache is full (it keeps evicting the oldest): the figure an
    // operator sizes a segment by. 160 bytes is a TLS 1.2/1.3 session without client cert.
    let c = cache(4 << 20);
    let capacity = c.stats().capacity_units as u32;
    for n in 0..capacity * 3 / 2 {
        c.store_at(
            &id(n),
            &der(n, 160),
            NOW + n / 1000,
            NOW + 10_000,
            NOW + n / 1000,
        )
        .unwrap();
    }
    let s = c.stats();
    let per_mib = s.entries as f64 / 4.0;
    assert!(s.evicted_live > 0);
    assert!(per_mib >= 5000.0, "only {per_mib} sessions per MiB");
}

#[test]
fn a_corrupted_entry_is_dropped_not_returned() {
    let c = one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    c.store_at(&id(2), &der(2, 160), NOW, NOW + 60, NOW)
        .unwrap();
    {
        let g = c.lock_shard(0).unwrap();
        // Flip a data byte of whichever unit holds entry 1 (units 0 and 1 are the two entries).
        for i in 0..2 {
            let u = g.unit_bytes_mut(i);
            if u[16 + 15..16 + 47] == id(1) {
                u[16 + 100] ^= 0xff;
            }
        }
    }
    assert_eq!(get(&c, 1, NOW), None);
    assert_eq!(get(&c, 2, NOW), Some(der(2, 160)));
    let s = c.stats();
    assert_eq!((s.corrupt_dropped, s.entries), (1, 1));
}

#[test]
fn a_dirty_shard_is_repaired_on_the_next_lock() {
    let c = one_shard();
    for i in 0..10 {
        c.store_at(&id(i), &der(i, 160), NOW, NOW + 60, NOW)
            .unwrap();
    }
    {
        let g = c.lock_shard(0).unwrap();
        // Simulate a writer that died after writing a header but before setting the head
        // tag, and a torn entry: garbage in a free unit and a broken checksum in unit 3.
        g.unit_bytes_mut(200)[..16].fill(0x5a);
        g.unit_bytes_mut(3)[20] ^= 1;
        std::mem::forget(g); // leave the lock held and the shard dirty, as a crash would
        let lock = unsafe { crate::store::lock::ShardLock::from_ptr(c.shard_mutex_for_tests(0)) };
        lock.unlock();
    }
    let s0 = c.stats();
    assert!(get(&c, 0, NOW).is_some());
    let s = c.stats();
    assert_eq!(s.dirty_repairs, s0.dirty_repairs + 1);
    assert_eq!(s.entries, 9, "the torn entry is dropped, the others kept");
    let g = c.lock_shard(0).unwrap();
    assert!(
        g.unit_bytes_mut(200).iter().all(|&b| b == 0),
        "garbage in a free unit is wiped"
    );
}

#[test]
fn flush_removes_all_or_only_expired() {
    let c = cache(1 << 20);
    for i in 0..50 {
        let exp = if i < 20 { NOW + 10 } else { NOW + 1000 };
        c.store_at(&id(i), &der(i, 160), NOW, exp, NOW).unwrap();
    }
    assert_eq!(c.flush(Some(NOW + 100)).unwrap(), 20);
    assert_eq!(c.stats().entries, 30);
    assert_eq!(c.flush(None).unwrap(), 30);
    assert_eq!(c.stats().entries, 0);
}

#[test]
fn export_and_ages_cover_live_verified_entries_only() {
    let c = cache(1 << 20);
    for n in 0..10 {
        c.store_at(&id(n), &der(n, 160), NOW + n, NOW + 100 + n, NOW)
            .unwrap();
    }
    c.store_at(&id(99), &der(99, 160), NOW - 500, NOW - 1, NOW)
        .unwrap(); // already expired
    let (v, err) = c.export(NOW);
    assert!(err.is_none());
    assert_eq!(v.len(), 10, "the expired entry is not exported");
    for e in &v {
        let n = u32::from_le_bytes(e.id[..4].try_into().unwrap());
        assert_eq!(e.data, der(n, 160));
        assert_eq!((e.created, e.expires), (NOW + n, NOW + 100 + n));
    }
    let a = c.ages(NOW);
    assert_eq!(a.live, 10);
    assert_eq!(
        (a.oldest_created, a.newest_created),
        (Some(NOW), Some(NOW + 9))
    );
    assert_eq!(
        (a.earliest_expiry, a.latest_expiry),
        (Some(NOW + 100), Some(NOW + 109))
    );
    assert_eq!(a.time_left_sum, (100..110).sum::<u64>());
    assert_eq!(cache(1 << 20).ages(NOW).oldest_created, None);
}

#[test]
fn contains_counts_nothing() {
    let c = cache(1 << 20);
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 300, NOW)
        .unwrap();
    let before = c.stats();
    assert!(c.contains(&id(1)).unwrap());
    assert!(!c.contains(&id(2)).unwrap());
    assert_eq!(
        c.stats(),
        before,
        "the generator's uniqueness probe must not skew hit ratios"
    );
    assert!(c.contains(&[]).is_err());
}

#[test]
fn full_shard_reports_are_rate_limited_with_counts() {
    let r = crate::store::cache::RateLimit::new(60);
    assert_eq!(
        r.note(3, 1000),
        Some(3),
        "the first event is reported at once"
    );
    assert_eq!(r.note(2, 1010), None);
    assert_eq!(r.note(5, 1059), None);
    assert_eq!(
        r.note(1, 1060),
        Some(8),
        "a minute later, with everything since"
    );
    assert_eq!(r.note(1, 1061), None);
}

#[test]
fn a_wait_for_a_held_lock_is_counted_as_contention() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let c = std::sync::Arc::new(one_shard());
    assert_eq!(c.stats().lock_contended, 0);
    let held = c.lock_shard(0).unwrap();
    let c2 = std::sync::Arc::clone(&c);
    let waiter = std::thread::spawn(move || get(&c2, 1, NOW));
    // Readiness: glibc sets FUTEX_WAITERS in the robust mutex's lock word once a waiter sleeps.
    // SAFETY: the lock word is the mutex's first 32-bit field, inside the mapping.
    let word = unsafe { &*(c.shard_mutex_for_tests(0) as *const AtomicU32) };
    while word.load(Ordering::SeqCst) & 0x8000_0000 == 0 {
        std::thread::yield_now();
    }
    drop(held);
    assert_eq!(waiter.join().unwrap(), None);
    let s = c.stats();
    assert_eq!(s.lock_contended, 1);
    assert!(s.lock_wait_ns > 0);
}

/// Write an owner TID without the owner-died bit into shard `idx`'s lock word, as a segment
/// kept on disk across a reboot (or hostile bytes) would have it.
fn plant_stale_owner(c: &Cache, idx: usize) -> i32 {
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let m = c.shard_mutex_for_tests(idx) as *mut u8;
    // SAFETY: __lock and __owner, the first and third 32-bit words of the mutex.
    unsafe {
        (*(m as *const std::sync::atomic::AtomicU32))
            .store(pid as u32, std::sync::atomic::Ordering::SeqCst);
        *(m.add(8) as *mut i32) = pid;
    }
    pid
}

fn short_timeout_one_shard() -> Cache {
    let g = Geometry::plan(1 << 20, DEFAULT_UNIT_BYTES).unwrap();
    Cache::create(&Config {
        size_bytes: (4096 + g.shard_stride) as u64,
        lock_timeout: Some(Duration::from_millis(20)),
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn a_stale_lock_word_is_reset_once_and_the_shard_repaired() {
    let c = short_timeout_one_shard();
    for i in 0..10 {
        c.store_at(&id(i), &der(i, 160), NOW, NOW + 60, NOW)
            .unwrap();
    }
    plant_stale_owner(&c, 0);
    // The first operation waits one timeout, finds the owner gone, resets and goes on; the
    // others are not delayed at all (no further contention).
    for i in 0..10 {
        assert_eq!(get(&c, i, NOW), Some(der(i, 160)), "entry {i}");
    }
    let s = c.stats();
    assert_eq!(
        (s.lock_resets, s.lock_timeouts, s.lock_errors),
        (1, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        s.lock_contended, 1,
        "only the first operation waited: {s:?}"
    );
    assert_eq!(
        s.dirty_repairs, 1,
        "the shard is repaired after the reset: {s:?}"
    );
}

/// Write `tid` (no owner-died bit) into shard `idx`'s lock word.
fn plant_owner(c: &Cache, idx: usize, tid: i32) {
    let m = c.shard_mutex_for_tests(idx) as *mut u8;
    // SAFETY: __lock and __owner, the first and third 32-bit words of the mutex.
    unsafe {
        (*(m as *const std::sync::atomic::AtomicU32))
            .store(tid as u32, std::sync::atomic::Ordering::SeqCst);
        *(m.add(8) as *mut i32) = tid;
    }
}

#[test]
fn after_a_reboot_every_held_lock_is_reset_even_one_naming_a_live_thread() {
    let mut c = short_timeout_one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    // Pid 1 exists (in every pid namespace): a thread id of the last boot reused by a live,
    // unrelated process. Under the recorded boot it is a live owner: the shard waits.
    plant_owner(&c, 0, 1);
    let e = c.lock_shard(0).map(drop).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lock, "{e}");
    assert_eq!(c.stats().lock_resets, 0);
    // The segment was written under another boot (kept on disk across a reboot).
    c.globals().users.boot_id[0].fetch_xor(1, std::sync::atomic::Ordering::SeqCst);
    c.join_users().unwrap();
    assert_eq!(c.reboot_resets, 1);
    assert_eq!(
        c.globals().users.boot(),
        crate::store::users::this_boot().unwrap(),
        "adopted"
    );
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
    let s = c.stats();
    assert_eq!((s.lock_resets, s.dirty_repairs), (1, 1), "{s:?}");
    assert_eq!(c.repair_all(false).unwrap().0, 1, "repair reports it");
    // Joining again under the same boot resets nothing.
    c.join_users().unwrap();
    assert_eq!(c.stats().lock_resets, 1);
}

#[test]
fn with_users_in_several_pid_namespaces_no_thread_id_is_judged_dead() {
    let c = short_timeout_one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    c.globals()
        .users
        .mixed_ns
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let tid = plant_stale_owner(&c, 0);
    let e = c.lock_shard(0).map(drop).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lock, "{e}");
    assert!(
        e.message.contains(&format!("held by thread id {tid}"))
            && e.message.contains("several pid namespaces")
            && e.message.contains("repair --force"),
        "{e}"
    );
    assert_eq!(c.repair_all(false).unwrap().0, 0, "repair does not either");
    assert_eq!(c.stats().lock_resets, 0);
    // The recovery word of a pid that looks dead is not taken over either (only by age).
    let word = &c.globals().recovery_word;
    let now = u64::from(crate::util::now_unix());
    word.store(now << 32 | tid as u64, std::sync::atomic::Ordering::SeqCst);
    assert!(super::RecoveryWord::take(word, false).is_none());
    assert!(
        super::RecoveryWord::take(word, true).is_some(),
        "dead in our namespace"
    );
    // The operator breaks it.
    assert_eq!(c.repair_all(true).unwrap().0, 1);
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
}

#[test]
fn a_lock_without_a_timeout_still_gets_past_a_stale_owner() {
    let g = Geometry::plan(1 << 20, DEFAULT_UNIT_BYTES).unwrap();
    let c = Cache::create(&Config {
        size_bytes: (4096 + g.shard_stride) as u64,
        lock_timeout: None,
        ..Config::default()
    })
    .unwrap();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    plant_stale_owner(&c, 0);
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
    assert_eq!(c.stats().lock_resets, 1);
}

#[test]
fn an_unrecoverable_lock_is_reset_and_the_shard_repaired() {
    let c = short_timeout_one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    // What a recovering owner that unlocks without pthread_mutex_consistent leaves.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let g = c.lock_shard(0).unwrap();
        std::mem::forget(g);
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let lock = unsafe { crate::store::lock::ShardLock::from_ptr(c.shard_mutex_for_tests(0)) };
    assert_eq!(lock.lock(None), Ok(crate::store::lock::Acquired::OwnerDied));
    lock.unlock();
    assert_eq!(
        lock.holder(true),
        crate::store::lock::Holder::NotRecoverable
    );
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
    let s = c.stats();
    assert_eq!((s.lock_resets, s.lock_errors), (1, 0), "{s:?}");
}

#[test]
fn a_process_that_does_not_own_the_segment_never_locks_it() {
    let mut c = one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    let me = unsafe { libc::geteuid() };
    c.owner_uid = if me == 12345 { 12346 } else { 12345 };
    c.owner_for_good = false;
    let before: Vec<u8> = mutex_bytes(&c);
    let e = c
        .lookup_at(&id(1), &mut [0u8; 512], false, NOW)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Security, "{e}");
    assert!(e.message.contains("owned by uid 1234"), "{e}");
    assert!(c.flush(None).is_err() && c.entries().is_err());
    assert_eq!(mutex_bytes(&c), before, "the mutex was not touched");
    assert_eq!(c.stats().lock_refused_owner, 3);
    // A root-owned segment is locked by anybody its mapping reaches (Apache's children).
    c.owner_uid = 0;
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
}

/// A server that dropped root with `seteuid` only (real and saved uid still 0) must not lock a
/// segment its effective user owns: that user can write the mutex, and the process can become
/// root again.
#[test]
fn a_process_that_can_switch_back_to_root_never_locks_another_users_segment() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to drop privileges with seteuid)");
        return;
    }
    // SAFETY: fork in a test; the child drops its effective uid, tries one store and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = if unsafe { libc::seteuid(65534) } != 0 {
            10
        } else {
            // Anonymous: owned by the effective uid that creates it.
            let c = one_shard();
            match c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW) {
                Ok(()) => 1,
                Err(e) if e.kind == ErrorKind::Security && e.message.contains("seteuid only") => 0,
                Err(_) => 2,
            }
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "1: the store took the lock; 2: another error; 10: seteuid failed"
    );
}

fn mutex_bytes(c: &Cache) -> Vec<u8> {
    let n = std::mem::size_of::<libc::pthread_mutex_t>();
    unsafe { std::slice::from_raw_parts(c.shard_mutex_for_tests(0) as *const u8, n) }.to_vec()
}

#[test]
fn a_shard_of_nothing_but_continuation_tags_takes_a_store() {
    let c = one_shard();
    {
        let g = c.lock_shard(0).unwrap();
        for i in 0..c.geometry().units_per_shard {
            g.set_tag_for_tests(i, crate::store::layout::TAG_CONT);
        }
    }
    // Hostile bytes: no free unit, no head. Used to panic ("a full shard has at least one
    // head"), which a C caller sees as an internal error on every store to this shard.
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
}

#[test]
fn statistics_of_a_damaged_segment_wrap_instead_of_overflowing() {
    let c = cache(1 << 20);
    assert!(c.geometry().shard_count >= 2);
    for idx in 0..2 {
        let h = c.shard_header(idx);
        for ctr in h.counters.iter() {
            ctr.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let s = c.stats();
    assert_eq!(s.stores, u64::MAX.wrapping_add(u64::MAX));
}

/// Log lines seen by `record_log`, with whether shard 0's lock of `LOG_CACHE` was held.
static LOG_LINES: std::sync::Mutex<Vec<(i32, String, bool)>> = std::sync::Mutex::new(Vec::new());
static LOG_MUTEX: std::sync::atomic::AtomicPtr<libc::pthread_mutex_t> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
/// The log sink is global: the tests that install one run one at a time.
static LOG_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

unsafe extern "C" fn record_log(
    level: i32,
    msg: *const std::ffi::c_char,
    _: *mut std::ffi::c_void,
) {
    let m = LOG_MUTEX.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: LOG_MUTEX is NULL or the lock word of a shard of a segment the test keeps
    // mapped while it logs.
    let word = (!m.is_null()).then(|| unsafe { &*(m as *const std::sync::atomic::AtomicU32) });
    let held = word.is_some_and(|w| w.load(std::sync::atomic::Ordering::SeqCst) & 0x3fff_ffff != 0);
    // SAFETY: the library passes a NUL-terminated message, valid during the call.
    let text = unsafe { std::ffi::CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    LOG_LINES.lock().unwrap().push((level, text, held));
}

#[test]
fn recovery_messages_are_logged_after_the_lock_is_released() {
    let _serial = LOG_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let c = one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    c.shard_header(0)
        .dirty
        .store(1, std::sync::atomic::Ordering::Relaxed);
    LOG_MUTEX.store(
        c.shard_mutex_for_tests(0),
        std::sync::atomic::Ordering::SeqCst,
    );
    LOG_LINES.lock().unwrap().clear();
    crate::log::set(
        Some(record_log),
        std::ptr::null_mut(),
        crate::log::Level::Debug,
    );
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
    crate::log::set(None, std::ptr::null_mut(), crate::log::Level::Debug);
    LOG_MUTEX.store(std::ptr::null_mut(), std::sync::atomic::Ordering::SeqCst);
    let lines = LOG_LINES.lock().unwrap().clone();
    let rec: Vec<_> = lines
        .iter()
        .filter(|l| l.1.contains("recovered after a panic"))
        .collect();
    assert_eq!(rec.len(), 1, "{lines:?}");
    assert!(
        !rec[0].2,
        "the callback ran while the shard lock was held: {lines:?}"
    );
}

#[test]
fn lock_timeouts_are_logged_rate_limited() {
    let _serial = LOG_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let c = std::sync::Arc::new(short_timeout_one_shard());
    let held = c.lock_shard(0).unwrap();
    LOG_LINES.lock().unwrap().clear();
    crate::log::set(
        Some(record_log),
        std::ptr::null_mut(),
        crate::log::Level::Debug,
    );
    let c2 = std::sync::Arc::clone(&c);
    // Another thread: the lock is error-checking, a relock by its holder is not a timeout.
    let errs = std::thread::spawn(move || {
        (0..5)
            .map(|i| c2.lookup_at(&id(i), &mut [0u8; 64], false, NOW).is_err())
            .filter(|&e| e)
            .count()
    })
    .join()
    .unwrap();
    crate::log::set(None, std::ptr::null_mut(), crate::log::Level::Debug);
    drop(held);
    assert_eq!(errs, 5);
    assert_eq!(c.stats().lock_timeouts, 5);
    let lines = LOG_LINES.lock().unwrap().clone();
    let errors = lines
        .iter()
        .filter(|l| l.0 == 1 && l.1.contains("timed out"))
        .count();
    assert!(
        errors <= 1,
        "5 timeouts gave {errors} error lines: {lines:?}"
    );
}

#[test]
fn resets_are_serialised_by_the_recovery_word_and_a_left_behind_word_is_taken_over() {
    let c = short_timeout_one_shard();
    c.store_at(&id(1), &der(1, 160), NOW, NOW + 60, NOW)
        .unwrap();
    let word = &c.globals().recovery_word;
    let now = u64::from(crate::util::now_unix());
    let live_pid = u64::from(std::process::id());
    // Another process (alive) is resetting right now: this one does not reset too.
    plant_stale_owner(&c, 0);
    word.store(now << 32 | live_pid, std::sync::atomic::Ordering::Relaxed);
    let e = c
        .lookup_at(&id(1), &mut [0u8; 512], false, NOW)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lock, "{e}");
    assert_eq!(c.stats().lock_resets, 0);
    // The same word, taken an hour ago (a reused pid after a reboot): taken over.
    word.store(
        (now - 3600) << 32 | live_pid,
        std::sync::atomic::Ordering::Relaxed,
    );
    assert_eq!(get(&c, 1, NOW), Some(der(1, 160)));
    assert_eq!(c.stats().lock_resets, 1);
    assert_eq!(
        word.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "released"
    );
}

/// A full shard makes room from its spares (TLS 1.3 tickets issued alongside a later one)
/// before any other live entry, even older ones: the tickets clients offer stay.
#[test]
fn spares_go_before_older_live_entries() {
    let c = one_shard();
    let units = c.geometry().units_per_shard as u32;
    let half = units / 2;
    for n in 0..half {
        // The ticket a client offers (older), then its handshake's spare (newer).
        c.store_ranked(&id(n), &der(n, 160), NOW, NOW + 300, NOW, false)
            .unwrap();
        c.store_ranked(
            &id(units + n),
            &der(units + n, 160),
            NOW + 1,
            NOW + 300,
            NOW,
            true,
        )
        .unwrap();
    }
    for n in half..units {
        c.store_ranked(&id(n), &der(n, 160), NOW + 2, NOW + 300, NOW + 2, false)
            .unwrap();
    }
    let kept = (0..units)
        .filter(|&n| get(&c, n, NOW + 2).is_some())
        .count();
    let spares = (units..units + half)
        .filter(|&n| get(&c, n, NOW + 2).is_some())
        .count();
    assert_eq!(
        (kept, spares),
        (units as usize, 0),
        "(offered tickets kept, spares kept)"
    );
}

/// Spares go first also when a multi-unit entry needs consecutive units.
#[test]
fn a_large_entry_makes_room_from_spares_first() {
    let c = one_shard();
    let units = c.geometry().units_per_shard as u32;
    let spare = |n: u32| n % 8 < 3; // runs of three spares, each a window for a 3-unit entry
    for n in 0..units {
        // The spares newer than the others, so oldest-first alone would spare them.
        let created = NOW + u32::from(spare(n));
        c.store_ranked(&id(n), &der(n, 160), created, NOW + 300, NOW, spare(n))
            .unwrap();
    }
    c.store_at(&id(9999), &der(9999, 500), NOW + 2, NOW + 300, NOW + 2)
        .unwrap();
    assert!(get(&c, 9999, NOW + 2).is_some());
    let lost = (0..units)
        .filter(|&n| !spare(n) && get(&c, n, NOW + 2).is_none())
        .count();
    assert_eq!(
        lost, 0,
        "entries that are not spares evicted for one 3-unit entry"
    );
}
