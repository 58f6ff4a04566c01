//! `shmsess_options_check` (used by `nginx -t`): it refuses what `shmsess_cache_create` refuses,
//! with the same message, and makes nothing (no segment file, no connection).

use std::ffi::{CStr, CString};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use shmsesscache::ffi::{
    shmsess_cache, shmsess_cache_create, shmsess_cache_free, shmsess_last_error, shmsess_options,
    shmsess_options_check, shmsess_options_init_sized, shmsess_result,
};

fn last_error() -> String {
    // SAFETY: the library returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(shmsess_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn options() -> shmsess_options {
    // SAFETY: zeroed is a valid start; shmsess_options_init_sized fills it in (the symbol
    // shmsess_options_init would mark it as a 0.1 struct, whose remote fields are not read).
    let mut o: shmsess_options = unsafe { std::mem::zeroed() };
    shmsess_options_init_sized(&mut o, std::mem::size_of::<shmsess_options>());
    o.size_bytes = 1 << 20;
    o
}

/// The check's result and message, then create's (message without the function's name).
fn both(o: &shmsess_options) -> ((shmsess_result, String), (shmsess_result, String)) {
    let checked = shmsess_options_check(o);
    let check_msg = last_error().replacen("shmsess_options_check: ", "", 1);
    let mut cache: *mut shmsess_cache = std::ptr::null_mut();
    let created = shmsess_cache_create(o, &mut cache);
    let create_msg = last_error().replacen("shmsess_cache_create: ", "", 1);
    shmsess_cache_free(cache);
    ((checked, check_msg), (created, create_msg))
}

fn key_file(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn check_refuses_what_create_refuses_with_the_same_message() {
    let dir = std::env::temp_dir().join(format!("shmsess-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("key");
    key_file(&good, &format!("{}\n", "ab".repeat(32)));
    let bad = dir.join("bad.key");
    key_file(&bad, "not a key\n");
    let link = dir.join("link.key");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    let (url, notaport) = (
        c("redis://127.0.0.1:6379/0"),
        c("redis://127.0.0.1:notaport/0"),
    );
    let (good_c, bad_c, link_c) = (
        c(good.to_str().unwrap()),
        c(bad.to_str().unwrap()),
        c(link.to_str().unwrap()),
    );

    let mut too_big = options();
    too_big.size_bytes = (1 << 40) + (1 << 20);
    let mut port = options();
    port.remote_url = notaport.as_ptr();
    port.remote_key_file = good_c.as_ptr();
    let mut contents = options();
    contents.remote_url = url.as_ptr();
    contents.remote_key_file = bad_c.as_ptr();
    let mut symlink = options();
    symlink.remote_url = url.as_ptr();
    symlink.remote_key_file = link_c.as_ptr();
    for (what, o, why) in [
        ("size above 1 TiB", &too_big, "larger than the maximum"),
        ("URL without a port", &port, "remote URL is not usable"),
        ("key file contents", &contents, "not a key of 64 hex digits"),
        ("symlinked key file", &symlink, "symbolic link"),
    ] {
        let ((checked, check_msg), (created, create_msg)) = both(o);
        assert_ne!(
            checked,
            shmsess_result::SHMSESS_OK,
            "{what}: the check passed"
        );
        assert_eq!(checked, created, "{what}");
        assert_eq!(check_msg, create_msg, "{what}");
        assert!(check_msg.contains(why), "{what}: {check_msg}");
    }

    // Valid options pass, and a named segment is not made by the check.
    let seg = dir.join("seg.sess");
    let seg_c = c(seg.to_str().unwrap());
    let mut named = options();
    named.path = seg_c.as_ptr();
    named.remote_url = url.as_ptr();
    named.remote_key_file = good_c.as_ptr();
    assert_eq!(
        shmsess_options_check(&named),
        shmsess_result::SHMSESS_OK,
        "{}",
        last_error()
    );
    assert!(!seg.exists(), "the check made the segment file");
    assert_eq!(
        shmsess_options_check(std::ptr::null()),
        shmsess_result::SHMSESS_ERR_NULL_ARGUMENT
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
