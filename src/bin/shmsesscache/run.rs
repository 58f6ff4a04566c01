//! `shmsesscache run [SETTINGS] -- PROGRAM [ARGS...]`: start a server nobody rebuilt with the
//! drop-in (`libshmsesscache_preload.so`) and its settings in `SHMSESS_PRELOAD_*` variables.
//! Every setting is checked first, as the library checks it (`shmsess_options_check`; a named
//! segment is also created or attached once, which finds a file of another size or owner), so
//! a bad value is refused here, with the fix, before PROGRAM starts.

use std::ffi::{CStr, CString, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use shmsesscache::ffi;

use super::{usage, Args, Failure, EXIT_FAILED};
use crate::text;

/// Where the preload is looked for when SHMSESS_PRELOAD_LIB does not say: next to this
/// program (the build directory) or in `LIBDIR/shmsesscache` beside its `bin` (an installed
/// prefix).
const PRELOAD_NAME: &str = "libshmsesscache_preload.so";

/// The settings, as the variables the preload reads (docs/dropin.md lists them).
struct Settings {
    path: Option<String>,
    size: Option<u64>,
    no_tickets: bool,
    ignore_unexpected_eof: bool,
    force: bool,
    log: Option<PathBuf>,
    /// Program names (basenames of their executables) in which the drop-in acts at all.
    only: Option<String>,
}

pub fn cmd_run(raw: &[String]) -> Result<u8, Failure> {
    let (ours, program) = split_at_dashes(raw)?;
    let a = Args::parse(
        "run",
        ours,
        &["no-tickets", "ignore-unexpected-eof", "force"],
        &["size", "path", "log", "only"],
    )?;
    if !a.positional.is_empty() {
        return Err(usage(format!(
            "run: unexpected {:?} before '--' (the server's command line goes after it: shmsesscache run [SETTINGS] -- PROGRAM [ARGS...])",
            a.positional[0]
        )));
    }
    let s = settings(&a)?;
    if let Some(only) = &s.only {
        warn_if_only_misses(only, &program[0]);
    }
    check_with_library(&s)?;
    let preload = find_preload()?;
    let err = command(&s, &preload, program).exec();
    Err(Failure(
        EXIT_FAILED,
        format!("run: cannot start {:?}: {err}", program[0]),
    ))
}

fn split_at_dashes(raw: &[String]) -> Result<(&[String], &[String]), Failure> {
    let Some(i) = raw.iter().position(|a| a == "--") else {
        return Err(usage(
            "run: the server's command line goes after '--': shmsesscache run [SETTINGS] -- PROGRAM [ARGS...]",
        ));
    };
    if i + 1 == raw.len() {
        return Err(usage("run: no PROGRAM after '--'"));
    }
    Ok((&raw[..i], &raw[i + 1..]))
}

fn settings(a: &Args) -> Result<Settings, Failure> {
    let size = a
        .value("size")
        .map(text::parse_size)
        .transpose()
        .map_err(|m| usage(format!("run: --size: {m}")))?;
    if let Some(n) = size {
        // In the options' words (--size), before the library's (size_bytes).
        super::check_segment_size("run", n, shmsesscache::store::layout::DEFAULT_UNIT_BYTES)?;
    }
    // A relative path is refused by the library's check (SHMSESS_STRICT_SETTINGS), as the
    // preload refuses it: one rule for both.
    let path = a.value("path").map(str::to_string);
    let only = a.value("only").map(only_names).transpose()?;
    Ok(Settings {
        only,
        path,
        size,
        no_tickets: a.has("no-tickets"),
        ignore_unexpected_eof: a.has("ignore-unexpected-eof"),
        force: a.has("force"),
        log: a.value("log").map(PathBuf::from),
    })
}

/// The same checks the preload's `shmsess_cache_create` makes, now, as this user: the options,
/// then a named segment created or attached (and released: the file stays for the server).
fn check_with_library(s: &Settings) -> Result<(), Failure> {
    let path = s
        .path
        .as_deref()
        .map(|p| CString::new(p).map_err(|_| usage("run: --path contains a NUL byte")))
        .transpose()?;
    let mut o = std::mem::MaybeUninit::<ffi::shmsess_options>::zeroed();
    // Writes the defaults into a struct of the size given (an all-zero one is valid too).
    ffi::shmsess_options_init_sized(o.as_mut_ptr(), std::mem::size_of::<ffi::shmsess_options>());
    // SAFETY: zeroed, then initialised just above; every field is an integer or a pointer.
    let mut o = unsafe { o.assume_init() };
    o.path = path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
    if let Some(size) = s.size {
        o.size_bytes = size;
    }
    o.flags |= ffi::SHMSESS_NEVER_LOCK_AS_ROOT | ffi::SHMSESS_STRICT_SETTINGS;
    library_result(ffi::shmsess_options_check(&o))?;
    if path.is_some() {
        let mut cache = std::ptr::null_mut();
        library_result(ffi::shmsess_cache_create(&o, &mut cache))?;
        ffi::shmsess_cache_free(cache);
    }
    if let Some(log) = &s.log {
        check_log(log)?;
    }
    Ok(())
}

/// `--only imap-login,pop3-login`: program names, as the basename of each process's executable.
fn only_names(list: &str) -> Result<String, Failure> {
    let bad = list
        .split(',')
        .find(|n| n.is_empty() || n.contains('/') || n.chars().any(char::is_whitespace));
    match bad {
        None => Ok(list.to_string()),
        Some(n) => Err(usage(format!(
            "run: --only {list:?}: {n:?} is not a program name: give the names of the programs that serve TLS, comma-separated, without a directory (e.g. --only imap-login,pop3-login)"
        ))),
    }
}

/// The preload matches --only against the basename of /proc/self/exe, the real file: a
/// symlink (alternatives, a busybox applet, `ln -s`) listed under its own name would silently
/// get nothing. Said, with the name to list, when PROGRAM is such a link.
fn warn_if_only_misses(only: &str, program: &str) {
    let listed = |name: &str| only.split(',').any(|n| n == name);
    let given = Path::new(program).file_name().and_then(|n| n.to_str());
    let Some(real) = find_in_path(program).and_then(|p| p.canonicalize().ok()) else {
        return;
    };
    let real_name = real.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if given.is_some_and(listed) && !listed(real_name) {
        eprintln!(
            "run: warning: --only lists {:?}, but {program} is {} (a symlink or multi-call binary): the drop-in matches the real executable's name, so list {real_name:?} (e.g. --only {only},{real_name})",
            given.unwrap_or(""),
            real.display()
        );
    }
}

/// PROGRAM as exec would find it: a name with a slash as it is, else the first executable
/// file of that name in PATH.
fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn library_result(r: ffi::shmsess_result) -> Result<(), Failure> {
    if r == ffi::shmsess_result::SHMSESS_OK {
        return Ok(());
    }
    // SAFETY: the library's message for this thread, NUL-terminated, never NULL.
    let msg = unsafe { CStr::from_ptr(ffi::shmsess_last_error()) };
    Err(Failure(
        EXIT_FAILED,
        format!(
            "run: the session cache would not start: {}",
            msg.to_string_lossy()
        ),
    ))
}

/// The log is opened by the preload with O_APPEND|O_CREAT|O_NOFOLLOW|O_NONBLOCK, mode 0600: try
/// the same (O_NONBLOCK: a FIFO without a reader must not hang this check), and refuse what is
/// not a regular file (the preload would write to stderr instead).
fn check_log(log: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| {
        Failure(
            EXIT_FAILED,
            format!(
                "run: --log {}: {why} (give a regular file this user can create or append to, not a symlink, FIFO or device)",
                log.display()
            ),
        )
    };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(log)
        .map_err(|e| match e.raw_os_error() {
            // What O_NONBLOCK gives for a FIFO nobody reads (without it: a hang).
            Some(libc::ENXIO) => refuse("not a regular file (a FIFO or device)".into()),
            _ => refuse(e.to_string()),
        })?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(refuse("not a regular file".into())),
        Err(e) => Err(refuse(e.to_string())),
    }
}

fn find_preload() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os("SHMSESS_PRELOAD_LIB") {
        let p = PathBuf::from(p);
        return usable_preload(&p).then_some(p.clone()).ok_or_else(|| {
            Failure(
                EXIT_FAILED,
                format!(
                    "run: SHMSESS_PRELOAD_LIB={} is not a readable file (unset it to use the one installed with this program)",
                    p.display()
                ),
            )
        });
    }
    let exe = std::env::current_exe()
        .and_then(|e| e.canonicalize())
        .map_err(|e| {
            Failure(
                EXIT_FAILED,
                format!("run: cannot find this program's own path: {e}"),
            )
        })?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    // The build tree; LIBDIR/shmsesscache as the Makefile that built this program had it
    // (relative to BINDIR); LIBDIR being lib or Debian's multiarch lib/TRIPLET.
    let multiarch = format!("../lib/{}-linux-gnu/shmsesscache", std::env::consts::ARCH);
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(option_env!("SHMSESS_PRELOAD_RELDIR").map(|rel| dir.join(rel)));
    dirs.push(dir.join("../lib/shmsesscache"));
    dirs.push(dir.join(multiarch));
    dirs.dedup();
    dirs.iter()
        .map(|d| d.join(PRELOAD_NAME))
        .find(|c| usable_preload(c))
        .and_then(|c| c.canonicalize().ok())
        .ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            Failure(
                EXIT_FAILED,
                format!(
                    "run: {PRELOAD_NAME} is in none of {} (run 'make install', or set SHMSESS_PRELOAD_LIB to its path)",
                    looked.join(", ")
                ),
            )
        })
}

fn usable_preload(p: &Path) -> bool {
    p.is_absolute()
        && std::fs::File::open(p)
            .map(|f| f.metadata().map(|m| m.is_file()).unwrap_or(false))
            .unwrap_or(false)
}

/// PROGRAM with the preload appended to any LD_PRELOAD it already had, and every
/// SHMSESS_PRELOAD_* variable set from the settings (none left over from the caller's
/// environment).
fn command(s: &Settings, preload: &Path, program: &[String]) -> std::process::Command {
    let mut c = std::process::Command::new(&program[0]);
    c.args(&program[1..]);
    let mut ld: OsString = std::env::var_os("LD_PRELOAD").unwrap_or_default();
    if !ld.is_empty() {
        ld.push(":");
    }
    ld.push(preload);
    c.env("LD_PRELOAD", ld);
    let switch = |on: bool| if on { "1" } else { "0" };
    set_or_remove(&mut c, "SHMSESS_PRELOAD_PATH", s.path.clone());
    set_or_remove(
        &mut c,
        "SHMSESS_PRELOAD_SIZE",
        s.size.map(|n| n.to_string()),
    );
    set_or_remove(&mut c, "SHMSESS_PRELOAD_ONLY", s.only.clone());
    set_or_remove(
        &mut c,
        "SHMSESS_PRELOAD_LOG",
        s.log.as_ref().map(|l| absolute(l).display().to_string()),
    );
    c.env("SHMSESS_PRELOAD_NO_TICKETS", switch(s.no_tickets));
    c.env(
        "SHMSESS_PRELOAD_IGNORE_UNEXPECTED_EOF",
        switch(s.ignore_unexpected_eof),
    );
    c.env("SHMSESS_PRELOAD_FORCE", switch(s.force));
    c
}

fn set_or_remove(c: &mut std::process::Command, name: &str, value: Option<String>) {
    match value {
        Some(v) => c.env(name, v),
        None => c.env_remove(name),
    };
}

/// The server may change directory before the preload opens the log: hand it an absolute name.
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_path_buf())
}
