//! The command-line tool behaves like other Unix tools when the reader of its output goes away
//! (`shmsesscache list PATH | head`, `shmsesscache stat --help | head`): it stops quietly,
//! killed by SIGPIPE as `cat` would be, instead of panicking with "failed printing to stdout:
//! Broken pipe". The reader's end is closed before the tool writes, so the first write fails
//! every time, not only when the output outgrows the pipe buffer.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const CLI: &str = env!("CARGO_BIN_EXE_shmsesscache");

/// Runs the tool with its standard output on a pipe nobody reads; returns (signal, exit code,
/// standard error).
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two new descriptors we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = Command::new(CLI)
        .args(args)
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("run the CLI");
    (
        out.status.signal(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet_stop(args: &[&str]) {
    let (signal, code, stderr) = run_into_closed_pipe(args);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{args:?}: {stderr}"
    );
    assert!(
        signal == Some(libc::SIGPIPE) || code == Some(0),
        "{args:?}: signal {signal:?}, exit code {code:?}, stderr {stderr}"
    );
}

#[test]
fn help_into_a_closed_pipe_stops_quietly() {
    assert_quiet_stop(&["--help"]);
    assert_quiet_stop(&["stat", "--help"]);
    assert_quiet_stop(&["--version"]);
}

#[test]
fn list_and_stat_into_a_closed_pipe_stop_quietly() {
    let mut r = [0u8; 8];
    shmsesscache::util::random_bytes(&mut r);
    let dir = std::env::temp_dir().join(format!("shmsess-pipe-{:016x}", u64::from_ne_bytes(r)));
    std::fs::create_dir(&dir).unwrap();
    let seg = dir.join("seg");
    let seg = seg.to_str().unwrap();
    let made = Command::new(CLI)
        .args(["create", seg, "--size", "1M"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_quiet_stop(&["list", seg]);
    assert_quiet_stop(&["stat", seg]);
    assert_quiet_stop(&["stat", "--json", seg]);
    std::fs::remove_dir_all(&dir).unwrap();
}
