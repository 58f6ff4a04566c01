//! Several real processes (fork) on one anonymous segment, as in a prefork server.
//! One #[test] so that nothing forks while another test thread holds a lock.

mod common;

use std::time::Duration;

use common::{id, make, spawn, verify, wait, Exit};
use shmsesscache::store::cache::{Cache, Config, Found};

const LIMIT: Duration = Duration::from_secs(60);

fn new_cache(size: u64) -> Cache {
    Cache::create(&Config {
        size_bytes: size,
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn processes_share_one_segment() {
    workers_see_each_others_entries();
    take_is_exclusive_across_processes();
    concurrent_mixed_load_never_returns_wrong_bytes();
}

fn workers_see_each_others_entries() {
    let cache = new_cache(4 << 20);
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let c = &cache;
            spawn(move || {
                for i in 0..500 {
                    let n = w * 1000 + i;
                    if c.store(&id(n), &make(n, 1), 0, u32::MAX).is_err() {
                        return 2;
                    }
                }
                0
            })
        })
        .collect();
    for pid in writers {
        assert_eq!(wait(pid, LIMIT), Exit::Code(0));
    }
    // Every process, including ones forked now, sees what the others stored.
    let readers: Vec<_> = (0..4u32)
        .map(|r| {
            let c = &cache;
            spawn(move || {
                let mut buf = vec![0u8; 8192];
                for w in 0..4u32 {
                    for i in 0..500 {
                        let n = w * 1000 + i;
                        match c.lookup(&id(n), &mut buf, false) {
                            Ok(Found::Hit { len, .. }) if verify(n, &buf[..len]) => {}
                            _ => return 10 + r as i32,
                        }
                    }
                }
                0
            })
        })
        .collect();
    for pid in readers {
        assert_eq!(
            wait(pid, LIMIT),
            Exit::Code(0),
            "a reader missed an entry another process stored"
        );
    }
    let s = cache.stats();
    assert_eq!(s.entries, 2000);
    assert_eq!(s.lookup_hits, 8000);
}

fn take_is_exclusive_across_processes() {
    let cache = new_cache(1 << 20);
    for n in 0..300 {
        cache.store(&id(n), &make(n, 1), 0, u32::MAX).unwrap();
    }
    // Four processes race to take every entry; each reports the ids it got through a pipe.
    let mut pipes = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..4 {
        let mut fds = [0i32; 2];
        // SAFETY: creating a pipe.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let c = &cache;
        pids.push(spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8192];
            for n in 0..300u32 {
                if let Ok(Found::Hit { len, .. }) = c.lookup(&id(n), &mut buf, true) {
                    if !verify(n, &buf[..len]) {
                        return 3;
                    }
                    got.extend_from_slice(&n.to_le_bytes());
                }
            }
            // SAFETY: writing our result to the pipe.
            let w = unsafe { libc::write(fds[1], got.as_ptr() as *const _, got.len()) };
            if w as usize == got.len() {
                0
            } else {
                4
            }
        }));
        // SAFETY: the parent keeps only the read end.
        unsafe { libc::close(fds[1]) };
        pipes.push(fds[0]);
    }
    for pid in pids {
        assert_eq!(wait(pid, LIMIT), Exit::Code(0));
    }
    let mut taken = vec![0u32; 300];
    for fd in pipes {
        let mut buf = vec![0u8; 4 * 300 + 4];
        // SAFETY: reading what the child wrote (<= 1,200 bytes, in one write).
        let r = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()) };
        for chunk in buf[..r.max(0) as usize].chunks(4) {
            taken[u32::from_le_bytes(chunk.try_into().unwrap()) as usize] += 1;
        }
        unsafe { libc::close(fd) };
    }
    assert!(
        taken.iter().all(|&t| t == 1),
        "every entry must be taken exactly once: {taken:?}"
    );
    assert_eq!(cache.stats().taken, 300);
}

fn concurrent_mixed_load_never_returns_wrong_bytes() {
    // A small segment so stores evict: four processes store, look up and remove at once.
    let cache = new_cache(256 << 10);
    let pids: Vec<_> = (0..4u64)
        .map(|w| {
            let c = &cache;
            spawn(move || {
                let mut rng = common::Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
                let mut buf = vec![0u8; 8192];
                for step in 0..20_000u32 {
                    let n = rng.below(2000) as u32;
                    match rng.below(10) {
                        0..=3 => {
                            let _ = c.store(&id(n), &make(n, step), 0, u32::MAX);
                        }
                        4..=8 => {
                            if let Ok(Found::Hit { len, .. }) = c.lookup(&id(n), &mut buf, false) {
                                if !verify(n, &buf[..len]) {
                                    return 5;
                                }
                            }
                        }
                        _ => {
                            let _ = c.remove(&id(n));
                        }
                    }
                }
                0
            })
        })
        .collect();
    for pid in pids {
        assert_eq!(
            wait(pid, LIMIT),
            Exit::Code(0),
            "a process read bytes nobody stored"
        );
    }
    let s = cache.stats();
    assert!(s.evicted_live > 0 && s.lookup_hits > 0, "{s:?}");
    assert_eq!(
        (s.corrupt_dropped, s.owner_died_recoveries, s.lock_timeouts),
        (0, 0, 0)
    );
}
