//! Fuzz the store/lookup/take/remove/flush API against a model: a lookup returns a miss or
//! exactly the bytes last stored under that id, never anything else.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use shmsesscache::store::cache::{Cache, Config, Found};

fuzz_target!(|data: &[u8]| {
    // Small: one or two shards, so evictions and multi-slot entries happen quickly.
    let cache = Cache::create(&Config {
        size_bytes: 120 << 10,
        ..Config::default()
    })
    .unwrap();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 9000];
    let mut i = 0;
    while i + 3 <= data.len() {
        let (op, id_len, len_byte) = (data[i], data[i + 1] as usize % 40, data[i + 2] as usize);
        i += 3;
        let id: Vec<u8> = data[i..(i + id_len).min(data.len())].to_vec();
        i += id.len();
        match op % 5 {
            0 | 1 => {
                let len = len_byte * if op & 0x80 != 0 { 40 } else { 1 };
                let payload: Vec<u8> = (0..len).map(|k| (k as u8) ^ op).collect();
                match cache.store_at(&id, &payload, 1000, 100_000, 1000) {
                    Ok(()) => {
                        model.insert(id, payload);
                    }
                    Err(_) => assert!(
                        id.is_empty()
                            || id.len() > 32
                            || payload.is_empty()
                            || payload.len() > 8192
                    ),
                }
            }
            2 | 3 => {
                let take = op % 5 == 3;
                match cache.lookup_at(&id, &mut buf, take, 2000) {
                    Ok(Found::Hit { len, .. }) => {
                        assert_eq!(Some(&buf[..len].to_vec()), model.get(&id), "wrong bytes");
                        if take {
                            model.remove(&id);
                        }
                    }
                    Ok(Found::Miss) => {
                        model.remove(&id); // evicted
                    }
                    Ok(Found::BufferTooSmall { .. }) => panic!("9000 bytes always suffice"),
                    Err(_) => assert!(id.is_empty() || id.len() > 32),
                }
            }
            _ => {
                let _ = cache.remove(&id);
                model.remove(&id);
            }
        }
    }
    let s = cache.stats();
    assert!(s.used_units <= s.capacity_units);
    assert_eq!(s.corrupt_dropped, 0);
});
