//! Helpers for the multi-process tests: self-checking entry data, fork with a result code,
//! a shared flag page.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// A 32-byte id for number `n`.
pub fn id(n: u32) -> [u8; 32] {
    let mut id = [0x5au8; 32];
    id[..4].copy_from_slice(&n.to_le_bytes());
    id
}

/// Entry data for (n, version): sizes from 60 to ~2,100 bytes, the id inside (as in DER), and
/// a pattern derived from (n, version) so any torn or mixed-up copy is detected.
pub fn make(n: u32, version: u32) -> Vec<u8> {
    let h = n.wrapping_mul(2_654_435_761) ^ version.wrapping_mul(40_503);
    let len = match h % 10 {
        0 => 2100,
        1 | 2 => 560,
        _ => 60 + (h as usize % 130),
    };
    let mut d: Vec<u8> = (0..len)
        // Wrapping: versions are random u32s (debug builds check overflow).
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(n.wrapping_mul(7))
                .wrapping_add(version.wrapping_mul(13)) as u8
        })
        .collect();
    d[..4].copy_from_slice(&n.to_le_bytes());
    d[4..8].copy_from_slice(&version.to_le_bytes());
    d[8..40].copy_from_slice(&id(n));
    d
}

/// True if `data` is exactly what `make(n, v)` produced for the version it claims.
pub fn verify(n: u32, data: &[u8]) -> bool {
    if data.len() < 40 {
        return false;
    }
    let v = u32::from_le_bytes(data[4..8].try_into().unwrap());
    data == make(n, v).as_slice()
}

/// Fork; the child runs `f` and exits with its return value (never returns here).
pub fn spawn(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` and _exits; tests fork from a single thread.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: terminating the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Wait for `pid`, failing the test if it has not ended within `limit` (a hung process).
pub fn wait(pid: libc::pid_t, limit: Duration) -> Exit {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFSIGNALED(status) {
                return Exit::Signal(libc::WTERMSIG(status));
            }
            return Exit::Code(libc::WEXITSTATUS(status));
        }
        if Instant::now() > deadline {
            // SAFETY: killing our own hung child before failing.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("process {pid} hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One page of anonymous shared memory for flags between processes.
pub struct SharedFlag(shmsesscache::store::segment::Mapping);

impl SharedFlag {
    pub fn new() -> SharedFlag {
        SharedFlag(
            shmsesscache::store::segment::Mapping::anonymous(4096).expect("mmap of one page"),
        )
    }
    fn word(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the page is mapped, zero-initialised and page aligned.
        unsafe { &*(self.0.base() as *const std::sync::atomic::AtomicU32) }
    }
    pub fn get(&self) -> u32 {
        self.word().load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn set(&self, v: u32) {
        self.word().store(v, std::sync::atomic::Ordering::SeqCst)
    }
}

/// A small xorshift generator: reproducible per seed, no dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
