//! Fuzz attaching to damaged segment files: the input overwrites bytes of a valid segment image
//! (header included; the CRC is recomputed when the input asks for it, so the geometry checks
//! behind it are reached). Attaching must fail cleanly or every operation must stay in bounds,
//! finish, and never return bytes that were not stored.
#![no_main]
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shmsesscache::store::cache::{Cache, Config, Found};
use shmsesscache::store::layout::{header_crc, SegmentHeader};

const SIZE: u64 = 96 << 10;

fn payload(n: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..(60 + n as usize * 7))
        .map(|k| (k as u8).wrapping_mul(n | 1))
        .collect();
    v[0] = n;
    v
}

fn template() -> &'static (PathBuf, Vec<u8>) {
    static T: OnceLock<(PathBuf, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shmsess-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("template");
        let _ = std::fs::remove_file(&p);
        let c = Cache::create(&Config {
            path: Some(p.clone()),
            size_bytes: SIZE,
            ..Config::default()
        })
        .unwrap();
        for n in 0..120u8 {
            c.store(&[n; 32], &payload(n), 0, u32::MAX).unwrap();
        }
        drop(c);
        (dir.join("case"), std::fs::read(&p).unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let (path, image) = template();
    let mut img = image.clone();
    // Input: [flags] then (offset u16 le, byte) triples.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    for t in rest.chunks_exact(3) {
        let off = u16::from_le_bytes([t[0], t[1]]) as usize * if flags & 2 != 0 { 1 } else { 3 };
        if off < img.len() {
            img[off] = t[2];
        }
    }
    if flags & 1 != 0 {
        // SAFETY: the image starts with a SegmentHeader.
        let mut h: SegmentHeader =
            unsafe { std::ptr::read_unaligned(img.as_ptr() as *const SegmentHeader) };
        h.header_crc = header_crc(&h);
        unsafe { std::ptr::write_unaligned(img.as_mut_ptr() as *mut SegmentHeader, h) };
    }
    if flags & 4 != 0 {
        img.truncate(img.len() - (flags as usize >> 3) * 512);
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(&img).unwrap();
    drop(f);
    let Ok(c) = Cache::attach(path, Some(Duration::from_millis(1))) else {
        return;
    };
    let mut buf = vec![0u8; 9000];
    for n in 0..120u8 {
        if let Ok(Found::Hit { len, .. }) = c.lookup(&[n; 32], &mut buf, n % 7 == 0) {
            assert_eq!(
                &buf[..len],
                payload(n).as_slice(),
                "bytes that were never stored"
            );
        }
    }
    for n in 0..40u8 {
        let _ = c.store(&[n.wrapping_add(200); 32], &payload(n), 0, u32::MAX);
        let _ = c.remove(&[n; 32]);
    }
    let _ = c.entries();
    let _ = c.flush(Some(1));
    let _ = c.stats();
});
