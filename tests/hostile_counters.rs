//! Counters at their maximum (a hostile or long-lived segment: they wrap, and any owner's
//! process can write them) must not make the statistics code overflow. Run in debug too
//! (`make test-rust`), where an overflowing `+` panics instead of wrapping.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shmsesscache::ffi::{shmsess_stats, shmsess_stats_hit_ratio};
use shmsesscache::store::cache::{Cache, Config};
use shmsesscache::store::layout::{ShardHeader, GLOBALS_OFFSET, HEADER_BYTES};

#[test]
fn hit_ratio_of_maximal_counters_does_not_overflow() {
    // SAFETY: shmsess_stats is plain integers; all-zero is a valid value.
    let mut s: shmsess_stats = unsafe { std::mem::zeroed() };
    s.struct_size = std::mem::size_of::<shmsess_stats>() as u32;
    s.lookup_hits = u64::MAX;
    s.lookup_misses = u64::MAX;
    let r = shmsess_stats_hit_ratio(&s);
    assert!((r - 0.5).abs() < 1e-9, "{r}");
    s.lookup_misses = 0;
    assert_eq!(shmsess_stats_hit_ratio(&s), 1.0);
    // A struct whose size says it does not hold the counters is not read past its size.
    s.struct_size = 16;
    assert_eq!(shmsess_stats_hit_ratio(&s), 0.0);
}

#[test]
fn stat_of_a_segment_whose_counters_are_all_ones_does_not_panic() {
    let mut r = [0u8; 8];
    shmsesscache::util::random_bytes(&mut r);
    let dir = std::env::temp_dir().join(format!("shmsess-ovf-{:016x}", u64::from_ne_bytes(r)));
    fs::create_dir(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("seg");
    let cache = Cache::create(&Config {
        path: Some(path.clone()),
        size_bytes: 1 << 20,
        lock_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    })
    .unwrap();
    let geo = *cache.geometry();
    drop(cache);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Every global counter, and every shard's counters.
    f.write_all_at(
        &[0xff; HEADER_BYTES - GLOBALS_OFFSET],
        GLOBALS_OFFSET as u64,
    )
    .unwrap();
    let counters = std::mem::offset_of!(ShardHeader, counters);
    let n = std::mem::size_of::<ShardHeader>() - counters;
    for idx in 0..geo.shard_count {
        let at = HEADER_BYTES + idx * geo.shard_stride + counters;
        f.write_all_at(&vec![0xff; n], at as u64).unwrap();
    }
    drop(f);
    for format in [None, Some("--json"), Some("--prometheus")] {
        let out = Command::new(env!("CARGO_BIN_EXE_shmsesscache"))
            .arg("stat")
            .args(format)
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "stat {format:?}: {:?} {err}",
            out.status
        );
    }
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
