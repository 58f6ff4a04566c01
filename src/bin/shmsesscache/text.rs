//! Help texts and the small formatting and parsing helpers of the command-line tool.

pub const MAIN_HELP: &str = "\
NAME
    shmsesscache - inspect and operate a shared TLS session cache segment

SYNOPSIS
    shmsesscache stat   PATH [--json | --prometheus]
    shmsesscache list   PATH
    shmsesscache flush  PATH [--expired]
    shmsesscache create NAME|PATH --size BYTES [--slot-bytes N] [--owner USER[:GROUP]] [--dir DIR]
    shmsesscache dump   PATH FILE
    shmsesscache load   PATH FILE
    shmsesscache repair PATH [--force]
    shmsesscache run    [--size SIZE] [--path PATH] [--no-tickets] [--ignore-unexpected-eof]
                        [--log FILE] [--force] [--only NAMES] -- PROGRAM [ARGS...]
    shmsesscache COMMAND --help

DESCRIPTION
    PATH is a named segment: the file a server gives in shmsess_options.path (for example
    /dev/shm/myserver.sess). Anonymous segments live only inside the server's processes; read
    their statistics through the server (the example server prints them on SIGUSR1).

    The segment is checked like a server checks it: a symlink, a file writable by group or
    others, or a file of another format or layout is refused.

    Locks: the shard locks live in the segment, which its owner can write, and locking them
    would let that user write into this process. So stat, list and dump take no lock: they
    read a private copy of the file and check every entry in it (checksum, placement); run as
    root they read segments of any owner. flush, load and repair change the segment as its
    owner: run as root they switch to the file's owner first (its uid, its primary group from
    the user database, no supplementary groups; the file's group is ignored); anybody else
    must be the owner. They refuse a segment that processes of another user (not root) map, as
    Apache's and nginx's workers map their root-owned segment: stop that server first. They
    take one shard lock at a time, for as long as a lookup takes: running servers are not
    disturbed.

    Session contents (master secrets) are never printed. dump writes them to a 0600 file.

COMMON OPTIONS
    --lock-timeout MS   flush, load, repair: longest wait for one shard's lock (default 1000);
                        a shard held longer by a stuck process is left out and the command
                        exits 3. Accepted and ignored by stat, list and dump.
    --help              the manual of a command.

EXIT STATUS
    0  done
    1  failed: the file is missing, not a segment, refused for its owner or mode, or an
       operating-system call failed; the message names the file and the reason
    2  bad command line
    3  done in part: some shards could not be locked in time, or some records of a dump were
       refused (the message says how many)
";

const RUN_HELP: &str = "\
NAME
    shmsesscache run - start a server that was not built for the cache, with the drop-in

SYNOPSIS
    shmsesscache run [--size SIZE] [--path PATH] [--no-tickets] [--ignore-unexpected-eof]
                     [--log FILE] [--force] [--only NAMES] -- PROGRAM [ARGS...]

DESCRIPTION
    Checks the settings as the library would (a bad value is refused here, with the fix,
    before PROGRAM starts; a --path segment is created or attached once, so a file of another
    size or owner is found now), then execs PROGRAM with libshmsesscache_preload.so added to
    LD_PRELOAD and the settings in SHMSESS_PRELOAD_* variables. Inside the server the drop-in
    installs the shared cache on each server SSL_CTX at its first SSL_new, keeping the
    session id context the server set; client contexts are never touched. If the cache cannot
    be made, the server runs as it would without it and the reason is logged once. A process
    running as root is never served by the cache (its workers that dropped root are).

    A systemd unit can set the same variables with Environment= instead (docs/dropin.md).

OPTIONS
    --size SIZE               segment size (bytes, or 512K, 64M, 1G; default 8M)
                              (SHMSESS_PRELOAD_SIZE)
    --path PATH               a named segment (absolute path), mapped when each process
                              starts: needed when the server execs its workers (dovecot);
                              read it with 'shmsesscache stat PATH'. Default: anonymous, made
                              by the process that makes the first server SSL_CTX, shared
                              with the children it forks (SHMSESS_PRELOAD_PATH)
    --no-tickets              SSL_OP_NO_TICKET on the server contexts it installs on:
                              stateful, single-use TLS 1.3 tickets; for servers whose ticket
                              keys differ per process (SHMSESS_PRELOAD_NO_TICKETS=1)
    --ignore-unexpected-eof   SSL_OP_IGNORE_UNEXPECTED_EOF: a client dropping TCP without
                              close_notify keeps its session (SHMSESS_PRELOAD_IGNORE_UNEXPECTED_EOF=1)
    --log FILE                the drop-in's and library's messages (default: stderr)
                              (SHMSESS_PRELOAD_LOG)
    --force                   also install on contexts where the server set its own session
                              callbacks or turned its session cache off (SHMSESS_PRELOAD_FORCE=1)
    --only NAMES              act only in processes running these programs (basenames of
                              their executables, comma-separated, e.g. imap-login,pop3-login):
                              every other process maps no segment and is left alone
                              (SHMSESS_PRELOAD_ONLY)

ENVIRONMENT
    SHMSESS_PRELOAD_LIB       the preload to use instead of the one next to this program
                              (or in ../lib/shmsesscache or
                              ../lib/TRIPLET/shmsesscache beside it)

EXIT STATUS
    PROGRAM's, once it started; 1 if a setting was refused or PROGRAM could not be started;
    2 bad command line.
";

const REPAIR_HELP: &str = "\
NAME
    shmsesscache repair - make every shard of a segment usable again

SYNOPSIS
    shmsesscache repair PATH [--force] [--lock-timeout MS]

DESCRIPTION
    Takes every shard's lock once, as the file's owner. A lock nobody can take again (held
    by a thread that no longer exists, e.g. a segment on persistent storage after a reboot;
    left not recoverable; damaged) is re-initialised, and the shard is repaired: entries that
    do not verify are dropped and counted. Servers do this by themselves when they meet such
    a lock; repair does it for every shard at once.

    A lock held by a live process (stopped in a debugger, SIGSTOPped) is left alone and
    reported (exit 3). --force breaks it anyway: only when that process will never run again
    inside the cache (stop or kill it first), since it would then no longer be alone in the
    shard.
";

const STAT_HELP: &str = "\
NAME
    shmsesscache stat - statistics of a session cache segment

SYNOPSIS
    shmsesscache stat PATH [--json | --prometheus] [--lock-timeout MS]

DESCRIPTION
    Prints the segment's geometry, how full it is (in all and per shard: min/avg/max slots
    used), lookups and the hit ratio, stores, removals, expiries and evictions of live
    sessions, crash recoveries, lock trouble, refused sessions, generated session ids, and the
    ages of the live entries (oldest, newest, time left before they expire). Counters add up
    the work of every process since the segment was created.

    Reading it:
      evicted (live) > 0     the segment is too small: live sessions were pushed out before
                             they expired. Make it bigger (docs/operating.md, 'Size the segment').
      hit ratio low          clients are not coming back, or the sessions were lost: see
                             docs/operating.md, 'Sessions are not resumed'.
      lock owner died > 0    a process died inside the cache; the shard was checked and
                             repaired (corrupt dropped says how many entries did not verify).
      lock timeouts > 0      a live process held a lock too long (stopped in a debugger?).
      per shard max = slots  at least one shard is full.

    --json          one JSON object (same numbers, plus derived ratios), for scripts.
    --prometheus    the Prometheus text exposition format (counters end in _total), for a
                    node_exporter textfile collector or a scrape handler.
";

const LIST_HELP: &str = "\
NAME
    shmsesscache list - the live entries of a session cache segment

SYNOPSIS
    shmsesscache list PATH [--lock-timeout MS]

DESCRIPTION
    One line per live entry: the session id in hex, the session's size in bytes, when it was
    created and when it expires (UTC), and the shard that holds it. Never the contents.
    With a session id prefix (shmsess_options.session_id_prefix) every id starts with it.
    Entries past their expiry that nobody has looked up since are listed until a lookup,
    a store or 'flush --expired' frees them.
";

const FLUSH_HELP: &str = "\
NAME
    shmsesscache flush - remove entries from a session cache segment

SYNOPSIS
    shmsesscache flush PATH [--expired] [--lock-timeout MS]

DESCRIPTION
    Removes every entry (clients then make full handshakes), or with --expired only those
    past their expiry. Freed slots are zeroed. Safe while servers run.
";

const CREATE_HELP: &str = "\
NAME
    shmsesscache create - pre-create a named session cache segment

SYNOPSIS
    shmsesscache create NAME --size BYTES [--slot-bytes N] [--owner USER[:GROUP]] [--dir DIR]
    shmsesscache create PATH --size BYTES [--slot-bytes N] [--owner USER[:GROUP]]

DESCRIPTION
    Creates the segment file with mode 0600 (never following a symlink; it appears under its
    name only once fully initialised, with all its space reserved, so a full filesystem is an
    error now and not a crash later), for example from an init script before the server
    starts. The server must then ask for the same size and slot size, or it refuses the file.
    Fails if the file exists.

    A NAME (no slash) is created in the directory of the user who will own the segment (the
    --owner user, else you): /run/shmsesscache for root (the package makes it), and
    /run/shmsesscache-USER for any other user, or --dir DIR. The directory is made 0700 and
    owned by that user if it is missing, and refused if somebody else owns it or others can
    write it: only the server's user can create names there, so no other local user can take
    the name first and keep the server from starting, as anybody can in /dev/shm. A PATH is
    used as given (with a warning if others can write its directory). The command prints the
    path to give the server.

    --size BYTES      segment size; suffixes K, M, G (powers of 1024) are accepted: 64M.
    --slot-bytes N    bytes per slot, multiple of 8 in 64..4096 (default 200: one slot per
                      typical session; 600 suits sessions with client certificates).
    --owner U[:G]     give the file (and a new directory) to this user (and group), by name or
                      number: the user the server runs as, when root creates it.
    --dir DIR         where a NAME goes (default /run/shmsesscache for root, else
                      /run/shmsesscache-USER). One directory per server user: it belongs to
                      that user.
";

const DUMP_HELP: &str = "\
NAME
    shmsesscache dump - save the live sessions of a segment to a file

SYNOPSIS
    shmsesscache dump PATH FILE [--lock-timeout MS]

DESCRIPTION
    Writes every live session (DER, with its creation and expiry time) to FILE, created 0600
    through a temporary file renamed into place. FILE holds master secrets: keep it on a
    private file system and remove it after loading. With 'load' it carries sessions across a
    reboot or into a bigger segment (a warm restart: clients resume instead of making full
    handshakes).
";

const LOAD_HELP: &str = "\
NAME
    shmsesscache load - put the sessions of a dump into a segment

SYNOPSIS
    shmsesscache load PATH FILE [--lock-timeout MS]

DESCRIPTION
    Stores the sessions of FILE (made by 'dump') into the segment PATH, which may be of
    another size. Sessions that have expired are skipped; the others keep their own creation
    and expiry times. The file is checked whole before anything is stored (checksums, format,
    each record a session with its id): a damaged file loads nothing. FILE must be a regular
    file that neither group nor others can write (else anybody could inject sessions), and
    owned by the user running load (root too: a dump of another user is refused). Run as
    root, load reads FILE as root, then switches to the segment's owner to store.
";

pub fn command_help(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "stat" => STAT_HELP,
        "list" => LIST_HELP,
        "flush" => FLUSH_HELP,
        "create" => CREATE_HELP,
        "dump" => DUMP_HELP,
        "load" => LOAD_HELP,
        "repair" => REPAIR_HELP,
        "run" => RUN_HELP,
        _ => return None,
    })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
pub fn utc(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A duration in seconds as "2h 3m 4s" (largest two units).
pub fn duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A wait in nanoseconds as "0 ms", "1.234 ms" or "2.5 s".
pub fn nanos(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.1} s", ns as f64 / 1e9)
    } else {
        format!("{:.3} ms", ns as f64 / 1e6)
    }
}

/// "8388608", "64M", "512K", "1G" (powers of 1024; an optional "iB"/"B" is accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size (examples: 8388608, 512K, 64M, 1G)"))
}

/// "www-data", "www-data:www-data", "33:33" to (uid, gid); a user alone gets its own group.
pub fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let (uid, user_gid) = lookup_user(user)?;
    let gid = match group {
        None => user_gid,
        Some(g) => lookup_group(g)?,
    };
    Ok((uid, gid))
}

fn lookup_user(u: &str) -> Result<(u32, u32), String> {
    let c = std::ffi::CString::new(u).map_err(|_| format!("bad user name {u:?}"))?;
    // SAFETY: getpwnam with a valid C string; we copy the two fields out at once (the tool is
    // single-threaded, so the static buffer is not shared).
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if !pw.is_null() {
        // SAFETY: non-NULL result of getpwnam.
        return Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) });
    }
    match u.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(format!("no user {u:?}")),
    }
}

fn lookup_group(g: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(g).map_err(|_| format!("bad group name {g:?}"))?;
    // SAFETY: as in lookup_user.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if !gr.is_null() {
        // SAFETY: non-NULL result of getgrnam.
        return Ok(unsafe { (*gr).gr_gid });
    }
    g.parse::<u32>().map_err(|_| format!("no group {g:?}"))
}

/// Where `shmsesscache create NAME` puts root's segments (the package's tmpfiles.d entry
/// makes it, 0700 root, for the masters of nginx and Apache).
pub const DEFAULT_SEGMENT_DIR: &str = "/run/shmsesscache";

/// Where `create NAME` puts the segments of `uid` without `--dir`: root's go into
/// [`DEFAULT_SEGMENT_DIR`]; any other user gets `/run/shmsesscache-USER` (the uid where the
/// user has no name), since root's directory must stay root's: given to www-data, root's own
/// servers could no longer create their segments there, and the package's directory refuses
/// every other owner.
pub fn default_segment_dir(uid: u32) -> std::path::PathBuf {
    if uid == 0 {
        return DEFAULT_SEGMENT_DIR.into();
    }
    format!(
        "{DEFAULT_SEGMENT_DIR}-{}",
        user_name(uid).unwrap_or_else(|| uid.to_string())
    )
    .into()
}

/// The login name of `uid`, if the user database has one made of ordinary characters.
fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid; the name is copied out at once (the tool is single-threaded).
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-NULL result of getpwuid: pw_name is a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
        .to_str()
        .ok()?;
    let ordinary = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    (!name.is_empty() && !name.starts_with('.') && name.chars().all(ordinary))
        .then(|| name.to_owned())
}

/// Make `dir` (one level) a directory that only `uid` can write: created 0700 and given to
/// uid:gid if missing; an existing one must be a real directory (not a symlink) owned by
/// `uid` that group and others cannot write.
pub fn private_dir(dir: &std::path::Path, uid: u32, gid: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let d = dir.display();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create the directory {d}: {e} (choose another with --dir, or run as root)"))?;
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {d} to uid {uid}: {e}"))?;
            std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat {d}: {e}"))?
        }
        Err(e) => return Err(format!("cannot stat {d}: {e}")),
    };
    if !meta.file_type().is_dir() {
        return Err(format!(
            "{d} is not a directory (a symlink is not followed)"
        ));
    }
    let squat = "anybody who can write there can create the segment's name first (name squatting) or swap files";
    if meta.uid() != uid {
        return Err(format!(
            "{d} is owned by uid {}, not by uid {uid} who will own the segment: {squat}. Use a directory of that user (--dir)",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{d} is writable by group or others (mode {:o}): {squat}. Make it 0700 (chmod 700 {d}) or use another (--dir)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A warning when other users can create files next to `path` (e.g. /dev/shm, /tmp).
pub fn squatting_warning(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let m = std::fs::metadata(dir).ok()?;
    (m.mode() & 0o022 != 0).then(|| {
        format!(
            "{} is writable by other users (mode {:o}): any local user can create {} there before the server does and keep it from starting (name squatting). Prefer a directory only the server's user can write: 'shmsesscache create NAME --owner USER' uses {DEFAULT_SEGMENT_DIR}-USER ({DEFAULT_SEGMENT_DIR} for root)",
            dir.display(),
            m.mode() & 0o7777,
            path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").is_err() && parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(parse_owner("0:0").unwrap(), (0, 0));
        assert_eq!(parse_owner("root").unwrap(), (0, 0));
        assert!(parse_owner("no-such-user-here").is_err());
    }
}
