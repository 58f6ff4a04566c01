//! Processes killed (SIGKILL) inside critical sections while others keep working; panics inside
//! critical sections. Needs the test-only fault hooks: `cargo test --features fault-injection`.
#![cfg(feature = "fault-injection")]

mod common;

use std::time::{Duration, Instant};

use common::{id, make, spawn, verify, wait, Exit, Rng, SharedFlag};
use shmsesscache::fault::{self, FaultAction, ALL_POINTS};
use shmsesscache::store::cache::{Cache, Config, Found};

const KILLS: u32 = 1000;
const IDS: u64 = 400;

#[test]
fn crashes_inside_critical_sections_are_recovered() {
    thousand_kills_under_load();
    panic_inside_a_critical_section_is_repaired();
    a_panic_inside_a_repair_leaves_the_shard_usable();
}

/// Random operations; returns 0, or 3 if a lookup returned bytes that nobody stored.
fn random_ops(c: &Cache, rng: &mut Rng, ops: u32) -> i32 {
    let mut buf = vec![0u8; 8192];
    for _ in 0..ops {
        let n = rng.below(IDS) as u32;
        match rng.below(10) {
            0..=3 => {
                let _ = c.store(&id(n), &make(n, rng.next() as u32), 0, u32::MAX);
            }
            4..=7 => {
                if let Ok(Found::Hit { len, .. }) = c.lookup(&id(n), &mut buf, rng.below(4) == 0) {
                    if !verify(n, &buf[..len]) {
                        return 3;
                    }
                }
            }
            _ => {
                let _ = c.remove(&id(n));
            }
        }
    }
    0
}

fn thousand_kills_under_load() {
    // Small: few shards, so kills, repairs and the steady workers collide often.
    let cache = Cache::create(&Config {
        size_bytes: 200 << 10,
        lock_timeout: Some(Duration::from_secs(10)),
        ..Config::default()
    })
    .unwrap();
    let stop = SharedFlag::new();
    let steady: Vec<_> = (0..2u64)
        .map(|w| {
            let (c, stop) = (&cache, &stop);
            spawn(move || {
                let mut rng = Rng(0xabcdef ^ (w + 7));
                while stop.get() == 0 {
                    let r = random_ops(c, &mut rng, 100);
                    if r != 0 {
                        return r;
                    }
                }
                0
            })
        })
        .collect();

    let started = Instant::now();
    let mut rng = Rng(0x1234_5678);
    let (mut kills, mut spawned) = (0u32, 0u32);
    let mut kills_at = [0u32; ALL_POINTS.len()];
    while kills < KILLS {
        assert!(
            spawned < 20 * KILLS,
            "too few fault points are reached: {kills} kills in {spawned} processes"
        );
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "kill loop too slow: {kills} kills"
        );
        let which = rng.below(ALL_POINTS.len() as u64) as usize;
        let point = ALL_POINTS[which];
        let nth = 1 + rng.below(3);
        let seed = rng.next();
        let c = &cache;
        let pid = spawn(move || {
            fault::arm(point, nth, FaultAction::Kill);
            random_ops(c, &mut Rng(seed | 1), 60)
        });
        spawned += 1;
        match wait(pid, Duration::from_secs(30)) {
            Exit::Signal(libc::SIGKILL) => {
                kills += 1;
                kills_at[which] += 1;
            }
            Exit::Code(0) => {} // the armed point was not reached often enough
            other => panic!("a killer child ended with {other:?} (3: it read bytes nobody stored)"),
        }
    }
    stop.set(1);
    for pid in steady {
        assert_eq!(
            wait(pid, Duration::from_secs(30)),
            Exit::Code(0),
            "a steady worker read wrong bytes or failed"
        );
    }
    // A second death during repair: one process dies holding a shard lock, the next one to
    // take that lock dies while repairing the shard, the one after that must still recover.
    let mut repair_kills = 0;
    for n in 0..20u32 {
        let c = &cache;
        let first = spawn(move || {
            fault::arm(fault::FaultPoint::AfterLock, 1, FaultAction::Kill);
            let _ = c.store(&id(n), &make(n, 99), 0, u32::MAX);
            0
        });
        assert_eq!(
            wait(first, Duration::from_secs(30)),
            Exit::Signal(libc::SIGKILL)
        );
        let second = spawn(move || {
            fault::arm(fault::FaultPoint::MidRepair, 1, FaultAction::Kill);
            let _ = c.lookup(&id(n), &mut [0u8; 8192], false);
            0
        });
        assert_eq!(
            wait(second, Duration::from_secs(30)),
            Exit::Signal(libc::SIGKILL),
            "did not die in the repair"
        );
        kills += 2;
        repair_kills += 1;
    }
    kills_at[4] += repair_kills;
    // Lock every shard once so that the last deaths are recovered too.
    let entries = cache.entries().unwrap();
    let mut buf = vec![0u8; 8192];
    for (_, e) in &entries {
        let n = u32::from_le_bytes(e.id[..4].try_into().unwrap());
        if let Found::Hit { len, .. } = cache.lookup(&e.id, &mut buf, false).unwrap() {
            assert!(
                verify(n, &buf[..len]),
                "entry {n} survived the crashes damaged"
            );
        }
    }
    let s = cache.stats();
    // Every kill happened while holding exactly one shard lock, so each left exactly one
    // EOWNERDEAD for the next locker, which counts it (and repairs, or dies trying).
    assert_eq!(s.owner_died_recoveries, u64::from(kills), "{s:?}");
    assert_eq!((s.lock_timeouts, s.lock_errors), (0, 0), "{s:?}");
    assert!(s.used_units <= s.capacity_units);
    // Every point was reached, MidRepair included: a second death during a repair.
    for (p, k) in ALL_POINTS.iter().zip(kills_at) {
        assert!(k > 0, "no process died at {p:?}: {kills_at:?}");
    }
    eprintln!(
        "{kills} kills in {spawned} processes ({:?} per point {kills_at:?}), {:?}; recoveries {}, entries dropped as damaged {}",
        ALL_POINTS,
        started.elapsed(),
        s.owner_died_recoveries,
        s.corrupt_dropped
    );
}

fn panic_inside_a_critical_section_is_repaired() {
    let cache = Cache::create(&Config {
        size_bytes: 256 << 10,
        ..Config::default()
    })
    .unwrap();
    for n in 0..50 {
        cache.store(&id(n), &make(n, 1), 0, u32::MAX).unwrap();
    }
    fault::arm(fault::FaultPoint::MidWrite, 1, FaultAction::Panic);
    let r = std::panic::catch_unwind(|| cache.store(&id(1000), &make(1000, 1), 0, u32::MAX));
    assert!(r.is_err(), "the injected panic should have fired");
    fault::disarm();
    // The next operation on that shard repairs it; everything stored before is intact.
    let mut buf = vec![0u8; 8192];
    for n in 0..50 {
        match cache.lookup(&id(n), &mut buf, false).unwrap() {
            Found::Hit { len, .. } => assert!(verify(n, &buf[..len])),
            Found::Miss | Found::BufferTooSmall { .. } => panic!("entry {n} lost"),
        }
    }
    assert_eq!(
        cache.lookup(&id(1000), &mut buf, false).unwrap(),
        Found::Miss,
        "the half-written entry is not served"
    );
    let s = cache.stats();
    assert_eq!(s.dirty_repairs, 1, "{s:?}");
    assert_eq!(s.owner_died_recoveries, 0);
}

/// A process dies holding a shard lock; the next locker panics while repairing the shard
/// (EOWNERDEAD). The mutex must stay usable: before the fix it was unlocked without
/// `pthread_mutex_consistent` and every later lock failed with ENOTRECOVERABLE.
fn a_panic_inside_a_repair_leaves_the_shard_usable() {
    let cache = Cache::create(&Config {
        size_bytes: 256 << 10,
        lock_timeout: Some(Duration::from_secs(10)),
        ..Config::default()
    })
    .unwrap();
    for n in 0..50 {
        cache.store(&id(n), &make(n, 1), 0, u32::MAX).unwrap();
    }
    let c = &cache;
    let dead = spawn(move || {
        fault::arm(fault::FaultPoint::AfterLock, 1, FaultAction::Kill);
        let _ = c.store(&id(7), &make(7, 2), 0, u32::MAX);
        0
    });
    assert_eq!(
        wait(dead, Duration::from_secs(30)),
        Exit::Signal(libc::SIGKILL)
    );
    let mut buf = vec![0u8; 8192];
    fault::arm(fault::FaultPoint::MidRepair, 1, FaultAction::Panic);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.lookup(&id(7), &mut buf, false)
    }));
    fault::disarm();
    assert!(
        r.is_err(),
        "the injected panic inside the repair should have fired"
    );
    // The next locker repairs the shard again (it is still dirty) and works; so does every
    // later one.
    for n in 0..50 {
        match cache.lookup(&id(n), &mut buf, false) {
            Ok(Found::Hit { len, .. }) => assert!(verify(n, &buf[..len]), "entry {n} damaged"),
            Ok(other) => panic!("entry {n} lost: {other:?}"),
            Err(e) => panic!("entry {n}: {e}"),
        }
    }
    let s = cache.stats();
    assert_eq!((s.lock_errors, s.lock_timeouts), (0, 0), "{s:?}");
    assert_eq!(s.owner_died_recoveries, 1, "{s:?}");
    assert_eq!(
        s.dirty_repairs, 1,
        "the interrupted repair was done again: {s:?}"
    );
}
