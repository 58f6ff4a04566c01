//! Refusals an operator meets name what they typed and say how to fix it: the CLI's `--size`,
//! not the C API's `size_bytes`; a segment of another size, how to resize it.

use std::process::Command;
use std::time::Duration;

use shmsesscache::store::cache::{Cache, Config};

const CLI: &str = env!("CARGO_BIN_EXE_shmsesscache");

fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let mut r = [0u8; 8];
    shmsesscache::util::random_bytes(&mut r);
    let dir = std::env::temp_dir().join(format!("shmsess-{tag}-{:016x}", u64::from_ne_bytes(r)));
    std::fs::create_dir(&dir).unwrap();
    dir
}

fn cli(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(CLI).args(args).output().expect("run the CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn create_names_its_own_options_in_refusals() {
    let dir = scratch_dir("msg");
    let seg = dir.join("seg");
    let seg = seg.to_str().unwrap();
    let (code, err) = cli(&["create", seg, "--size", "8"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--size 8 is too small") && !err.contains("size_bytes"),
        "{err}"
    );
    // The size it suggests is one create accepts.
    let suggested = err
        .split("e.g. --size ")
        .nth(1)
        .and_then(|t| t.split(')').next());
    let suggested = suggested.unwrap_or_else(|| panic!("no suggestion in {err}"));
    let (code, err2) = cli(&["create", seg, "--size", suggested]);
    assert_eq!(code, Some(0), "--size {suggested}: {err2}");
    let (code, err) = cli(&[
        "create",
        &format!("{seg}2"),
        "--size",
        "1M",
        "--slot-bytes",
        "7",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--slot-bytes 7") && !err.contains("slot_bytes"),
        "{err}"
    );
    let (code, err) = cli(&["create", &format!("{seg}3"), "--size", "2T"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--size") && !err.contains("size_bytes"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_segment_of_another_size_is_refused_with_the_way_to_resize_it() {
    let dir = scratch_dir("resize");
    let path = dir.join("seg");
    let config = |size| Config {
        path: Some(path.clone()),
        size_bytes: size,
        lock_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    drop(Cache::create(&config(1 << 20)).unwrap());
    let e = match Cache::create(&config(2 << 20)) {
        Ok(_) => panic!("a segment of another size was used"),
        Err(e) => e.message,
    };
    assert!(e.contains("ask for the existing size"), "{e}");
    assert!(
        e.contains("shmsesscache dump") && e.contains("shmsesscache load"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `help` with a topic that is no command, or with more than one, is a usage error (exit 2),
/// as `shmsesscache bogus` is; `help` alone and `help COMMAND` succeed.
#[test]
fn help_refuses_an_unknown_topic() {
    let (code, err) = cli(&["help", "bogus"]);
    assert_eq!(code, Some(2), "help bogus: {err}");
    assert!(err.contains("unknown command \"bogus\""), "{err}");
    let (code, err) = cli(&["help", "stat", "extra"]);
    assert_eq!(code, Some(2), "help stat extra: {err}");
    assert!(err.contains("\"extra\""), "{err}");
    for ok in [
        &["help"][..],
        &["help", "stat"],
        &["--help"],
        &["stat", "--help"],
    ] {
        let out = Command::new(CLI).args(ok).output().unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{ok:?}: {:?}",
            out.status
        );
    }
}

/// `stat`'s "early data" line gives the C advice (SSL_OP_NO_ANTI_REPLAY) only when lookups
/// were skipped: on nginx's or Apache's segments it is always 0, and operators cannot set it.
#[test]
fn the_anti_replay_hint_shows_only_when_lookups_were_skipped() {
    use shmsesscache::store::layout::{Globals, GLOBALS_OFFSET};
    use std::os::unix::fs::FileExt;
    let dir = scratch_dir("replay");
    let path = dir.join("seg");
    drop(
        Cache::create(&Config {
            path: Some(path.clone()),
            size_bytes: 1 << 20,
            ..Config::default()
        })
        .unwrap(),
    );
    let stat = || {
        let out = Command::new(CLI).arg("stat").arg(&path).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("early data"))
            .map(str::to_owned);
        line.unwrap_or_else(|| panic!("no early data line in:\n{text}"))
    };
    let zero = stat();
    assert!(!zero.contains("SSL_OP_NO_ANTI_REPLAY"), "{zero}");
    let skipped = GLOBALS_OFFSET + std::mem::offset_of!(Globals, anti_replay_skipped);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&3u64.to_ne_bytes(), skipped as u64)
        .unwrap();
    let three = stat();
    assert!(
        three.contains(" 3 ") && three.contains("SSL_OP_NO_ANTI_REPLAY"),
        "{three}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `run --only NAME -- NAME` where NAME is a symlink (alternatives, busybox, `ln -s`): the
/// preload matches the real executable's name, so run says which name to list (review F5).
#[test]
fn run_only_warns_about_a_symlinked_program() {
    let dir = scratch_dir("only");
    let napper = dir.join("napper");
    std::os::unix::fs::symlink("/bin/true", &napper).unwrap();
    let preload = dir.join("empty-preload.so"); // never loaded for real: ld.so ignores it
    std::fs::write(&preload, b"").unwrap();
    let run = |only: &str| {
        let out = Command::new(CLI)
            .args(["run", "--only", only, "--", napper.to_str().unwrap()])
            .env("SHMSESS_PRELOAD_LIB", &preload)
            .output()
            .expect("run the CLI");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("napper");
    assert!(
        err.contains("--only lists \"napper\"") && err.contains("list \"true\""),
        "no warning naming the real program: {err}"
    );
    let err = run("napper,true");
    assert!(
        !err.contains("warning"),
        "warned although the real name is listed: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
