//! `shmsesscache`: inspect and operate a named session cache segment.
//!
//! Commands: stat, list, flush, create, dump, load, repair (see `shmsesscache --help`).
//!
//! Privileges: a shard lock lives in the segment, which its owner can write, and glibc writes
//! through pointers stored in a robust mutex. So this tool never locks a segment as another
//! user: `stat`, `list` and `dump` read a private, validated copy of the file (no lock at
//! all), and `flush`, `load` and `repair` run as the file's owner (root switches to that user
//! first; anybody else is refused). Exit codes:
//! 0 done, 1 failed (nothing or only part of it could be done, the message says why),
//! 2 bad command line, 3 done in part (some shards were locked too long, or some records were
//! refused). Nothing here ever prints session contents.

mod report;
mod run;
mod text;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use shmsesscache::store::cache::{Cache, Config};
use shmsesscache::store::dumpfile;
use shmsesscache::store::segment::Trust;
use shmsesscache::tls::der;
use shmsesscache::{util, Error};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_PARTIAL: u8 = 3;

/// A failure with its exit code and a message naming the file and the reason.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure(EXIT_FAILED, e.message)
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure(EXIT_USAGE, msg.into())
}

/// The command line after the command name: positional arguments and `--flag [value]`s.
struct Args {
    command: &'static str,
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    /// `valued` lists the flags that take a value; every other `--x` is a switch.
    fn parse(
        command: &'static str,
        raw: &[String],
        switches: &[&str],
        valued: &[&str],
    ) -> Result<Args, Failure> {
        let mut a = Args {
            command,
            positional: Vec::new(),
            flags: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(s) = it.next() {
            if let Some(name) = s.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                if valued.contains(&name) {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| usage(format!("{command}: --{name} needs a value")))?,
                    };
                    a.flags.push((name.to_string(), Some(v)));
                } else if switches.contains(&name) && inline.is_none() {
                    a.flags.push((name.to_string(), None));
                } else {
                    return Err(usage(format!(
                        "{command}: unknown option --{name} (see 'shmsesscache {command} --help')"
                    )));
                }
            } else {
                a.positional.push(s.clone());
            }
        }
        Ok(a)
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn want_positional(&self, n: usize, names: &str) -> Result<(), Failure> {
        if self.positional.len() != n {
            return Err(usage(format!(
                "{}: expected {names}, got {} argument(s) (see 'shmsesscache {} --help')",
                self.command,
                self.positional.len(),
                self.command
            )));
        }
        Ok(())
    }

    fn lock_timeout(&self) -> Result<Option<Duration>, Failure> {
        match self.value("lock-timeout") {
            None => Ok(Some(Duration::from_millis(1000))),
            Some(v) => v
                .parse::<u64>()
                .map(|ms| Some(Duration::from_millis(ms)))
                .map_err(|_| {
                    usage(format!(
                        "{}: --lock-timeout wants milliseconds, not {v:?}",
                        self.command
                    ))
                }),
        }
    }
}

/// Root inspects segments whatever their owner (a server may run as another user); everyone
/// else only their own, like the library itself.
fn trust() -> Trust {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Trust::AnyOwner
    } else {
        Trust::Owner
    }
}

/// A private copy of the segment, for the commands that only read (no lock is taken).
fn read_segment(path: &str) -> Result<Cache, Failure> {
    Ok(Cache::snapshot(Path::new(path), trust())?)
}

/// Attach to the segment to change it, as its owner: root becomes the file's owner first
/// (no supplementary groups, the owner's primary group from the user database, uid; for
/// good), anybody else must be the owner.
fn open_segment_as_owner(a: &Args, path: &str) -> Result<Cache, Failure> {
    let p = Path::new(path);
    let uid = owner_of(p)?;
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    if me != uid {
        if me != 0 {
            return Err(Failure(
                EXIT_FAILED,
                format!(
                    "{path}: owned by uid {uid}, not by you (uid {me}); run '{}' as that user",
                    a.command
                ),
            ));
        }
        let gid = primary_gid(uid);
        become_user(uid, gid).map_err(|e| {
            Failure(
                EXIT_FAILED,
                format!("{path}: cannot switch to its owner uid {uid} gid {gid}: {e}"),
            )
        })?;
    }
    refuse_if_mapped_by_others(p)?;
    Ok(Cache::attach_with(p, a.lock_timeout()?, Trust::Owner)?)
}

/// A root-owned segment can still be written by other users: a root parent (Apache's, nginx's
/// master) maps it and forks workers that switch to their user. Locking it would let those
/// workers write into this process, so a segment that processes of another user (not root)
/// map is refused. Found by reading every process's memory map (`/proc/PID/maps`, the file's
/// device and inode); processes whose map this user may not read are not seen (a non-root
/// user can only meet such mappings through a root parent anyway).
fn refuse_if_mapped_by_others(p: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p)
        .map_err(|e| Failure(EXIT_FAILED, format!("cannot stat {}: {e}", p.display())))?;
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut others = mappers(m.dev(), m.ino())
        .into_iter()
        .filter(|&(_, uid)| uid != me && uid != 0)
        .collect::<Vec<_>>();
    others.dedup_by_key(|&mut (pid, _)| pid);
    let Some(&(pid, uid)) = others.first() else {
        return Ok(());
    };
    Err(Failure(
        EXIT_FAILED,
        format!(
            "{}: mapped by {} process(es) of another user (pid {pid}, uid {uid}), which can write its locks; changing it from here would let them write into this process. Stop that server (its master and workers) first, then run this again",
            p.display(),
            others.len()
        ),
    ))
}

/// (pid, uid) of every process that maps the file with this device and inode.
fn mappers(dev: u64, ino: u64) -> Vec<(u32, u32)> {
    let want = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let maps_it = maps.lines().any(|l| {
            let mut f = l.split_ascii_whitespace().skip(3);
            f.next() == Some(want.as_str())
                && f.next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
        });
        if maps_it {
            let mut uids = process_uids(pid);
            uids.sort_unstable();
            uids.dedup();
            v.extend(uids.into_iter().map(|u| (pid, u)));
        }
    }
    v
}

/// The real, effective, saved and file-system uids of a process.
fn process_uids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| {
                u.split_ascii_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The uid owning the file. Its group is ignored: anybody who can chown a file to a user can
/// also give it group 0 (or any group), which the tool must not take on.
fn owner_of(p: &Path) -> Result<u32, Failure> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p)
        .map_err(|e| Failure(EXIT_FAILED, format!("cannot stat {}: {e}", p.display())))?;
    Ok(m.uid())
}

/// The group to run as for `uid`: its primary group in the user database (`pw_gid`), or the
/// unprivileged overflow group 65534 when the uid has no entry (a container's numeric user).
fn primary_gid(uid: u32) -> u32 {
    const OVERFLOW_GID: u32 = 65534;
    // SAFETY: getpwuid_r writes into `pw` and `buf` (sized as it asks) and sets `found` to
    // &pw or NULL; nothing is kept past this function.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc == 0 && !found.is_null() {
            pw.pw_gid
        } else {
            OVERFLOW_GID
        }
    }
}

/// Drop root for good: no supplementary groups, then gid, then uid; checked.
fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
    let os = || Err(std::io::Error::last_os_error());
    // SAFETY: plain credential calls on this single-threaded process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return os();
        }
        if libc::geteuid() != uid
            || libc::getegid() != gid
            || libc::getgroups(0, std::ptr::null_mut()) != 0
            || (uid != 0 && libc::setuid(0) == 0)
        {
            return Err(std::io::Error::other("the switch did not stick"));
        }
    }
    Ok(())
}

fn cmd_stat(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("stat", raw, &["json", "prometheus"], &["lock-timeout"])?;
    a.want_positional(1, "PATH")?;
    let path = &a.positional[0];
    let cache = read_segment(path)?;
    let now = util::now_unix();
    let snap = report::Snapshot::take(&cache, path, now);
    let out = match (a.has("json"), a.has("prometheus")) {
        (true, true) => return Err(usage("stat: choose one of --json and --prometheus")),
        (true, false) => report::json(&snap),
        (false, true) => report::prometheus(&snap),
        (false, false) => report::human(&snap),
    };
    print!("{out}");
    Ok(0)
}

fn cmd_list(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("list", raw, &[], &["lock-timeout"])?;
    a.want_positional(1, "PATH")?;
    let cache = read_segment(&a.positional[0])?;
    let entries = cache.entries()?;
    println!(
        "{:<64}  {:>5}  {:<20}  {:<20}  {:>5}",
        "ID", "SIZE", "CREATED", "EXPIRES", "SHARD"
    );
    for (shard, e) in &entries {
        println!(
            "{:<64}  {:>5}  {:<20}  {:<20}  {:>5}",
            text::hex(&e.id),
            e.payload_len,
            text::utc(u64::from(e.created)),
            text::utc(u64::from(e.expires)),
            shard
        );
    }
    Ok(0)
}

fn cmd_flush(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("flush", raw, &["expired"], &["lock-timeout"])?;
    a.want_positional(1, "PATH")?;
    let cache = open_segment_as_owner(&a, &a.positional[0])?;
    let when = a.has("expired").then(util::now_unix);
    match cache.flush(when) {
        Ok(n) => {
            println!(
                "removed {n} {}entries from {}",
                if when.is_some() { "expired " } else { "" },
                a.positional[0]
            );
            Ok(0)
        }
        Err(e) => Err(Failure(
            EXIT_PARTIAL,
            format!("{}: flushed in part: {e}", a.positional[0]),
        )),
    }
}

fn cmd_create(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("create", raw, &[], &["size", "slot-bytes", "owner", "dir"])?;
    a.want_positional(1, "NAME or PATH")?;
    let size = text::parse_size(
        a.value("size")
            .ok_or_else(|| usage("create: --size BYTES is required"))?,
    )
    .map_err(|m| usage(format!("create: --size: {m}")))?;
    let unit = match a.value("slot-bytes") {
        None => shmsesscache::store::layout::DEFAULT_UNIT_BYTES,
        Some(v) => v
            .parse()
            .map_err(|_| usage(format!("create: --slot-bytes wants a number, not {v:?}")))?,
    };
    let owner = a
        .value("owner")
        .map(text::parse_owner)
        .transpose()
        .map_err(|m| usage(format!("create: --owner: {m}")))?;
    check_segment_size("create", size, unit)?;
    let path = create_path(&a, owner)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(Failure(
            EXIT_FAILED,
            format!(
                "{}: already exists (inspect it with 'shmsesscache stat', or remove it first)",
                path.display()
            ),
        ));
    }
    let cache = Cache::create(&Config {
        path: Some(path.clone()),
        size_bytes: size,
        unit_bytes: unit,
        owner,
        ..Config::default()
    })?;
    let g = cache.geometry();
    println!(
        "created {}: {} bytes, {} shards x {} slots of {} bytes ({} one-slot sessions of up to {} bytes; larger ones take several slots), mode 0600{}",
        path.display(),
        g.total_bytes,
        g.shard_count,
        g.units_per_shard,
        g.unit_bytes,
        g.capacity_units(),
        g.unit_bytes - shmsesscache::store::layout::ENTRY_HEADER_BYTES,
        owner.map(|(u, gid)| format!(", owner {u}:{gid}")).unwrap_or_default()
    );
    Ok(0)
}

/// The library's own checks name the C fields (`size_bytes`); the operator typed `--size`.
fn check_segment_size(command: &str, size: u64, unit: u32) -> Result<(), Failure> {
    use shmsesscache::store::layout::{
        Geometry, MAX_SEGMENT_BYTES, MAX_UNIT_BYTES, MIN_UNIT_BYTES,
    };
    let Some(min) = Geometry::min_total_bytes(unit) else {
        return Err(usage(format!(
            "{command}: --slot-bytes {unit} is invalid: use a multiple of 8 between {MIN_UNIT_BYTES} and {MAX_UNIT_BYTES}"
        )));
    };
    if size < min {
        return Err(usage(format!(
            "{command}: --size {size} is too small: with {unit}-byte slots a segment needs at least {min} bytes (e.g. --size {}K)",
            min.div_ceil(1024)
        )));
    }
    if size > MAX_SEGMENT_BYTES {
        return Err(usage(format!(
            "{command}: --size {size} is larger than the maximum, {MAX_SEGMENT_BYTES} bytes (1T)"
        )));
    }
    Ok(())
}

/// Where `create` puts the segment. A bare NAME goes into a directory that only the server's
/// user can write (made 0700 if missing), so nobody else can take the name first: root's
/// is the package's /run/shmsesscache, every other user has its own; an explicit
/// PATH in a directory others can write gets a warning saying why that is risky.
fn create_path(a: &Args, owner: Option<(u32, u32)>) -> Result<PathBuf, Failure> {
    let arg = &a.positional[0];
    if arg.contains('/') {
        if a.value("dir").is_some() {
            return Err(usage("create: --dir goes with a NAME, not with a PATH"));
        }
        let path = PathBuf::from(arg);
        if let Some(w) = text::squatting_warning(&path) {
            eprintln!("warning: {w}");
        }
        return Ok(path);
    }
    if arg.is_empty() || arg == "." || arg == ".." {
        return Err(usage(format!("create: {arg:?} is not a segment name")));
    }
    // SAFETY: no preconditions.
    let (uid, gid) = owner.unwrap_or_else(|| unsafe { (libc::geteuid(), libc::getegid()) });
    let dir = a
        .value("dir")
        .map_or_else(|| text::default_segment_dir(uid), PathBuf::from);
    text::private_dir(&dir, uid, gid).map_err(|m| Failure(EXIT_FAILED, m))?;
    Ok(dir.join(arg))
}

fn cmd_dump(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("dump", raw, &[], &["lock-timeout"])?;
    a.want_positional(2, "PATH FILE")?;
    let cache = read_segment(&a.positional[0])?;
    let now = util::now_unix();
    let (entries, err) = cache.export(now);
    let mut bytes = dumpfile::encode(&entries, u64::from(now));
    let written = dumpfile::write_private_file(Path::new(&a.positional[1]), &bytes);
    util::wipe(&mut bytes);
    written?;
    println!(
        "dumped {} live sessions from {} to {} (mode 0600)",
        entries.len(),
        a.positional[0],
        a.positional[1]
    );
    match err {
        None => Ok(0),
        Some(e) => Err(Failure(
            EXIT_PARTIAL,
            format!("{}: dumped in part: {e}", a.positional[0]),
        )),
    }
}

fn cmd_load(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("load", raw, &[], &["lock-timeout"])?;
    a.want_positional(2, "PATH FILE")?;
    let file = Path::new(&a.positional[1]);
    // The dump must be the loader's own (root included): anybody else's could inject
    // sessions, client identities with them. Read before switching to the segment's owner.
    let (mut bytes, readable) = dumpfile::read_private_file(file, Trust::Owner)?;
    let cache = match open_segment_as_owner(&a, &a.positional[0]) {
        Ok(c) => c,
        Err(e) => {
            util::wipe(&mut bytes);
            return Err(e);
        }
    };
    if readable {
        eprintln!(
            "shmsesscache: warning: {} is readable by group or others; it holds session secrets (chmod 600 it)",
            file.display()
        );
    }
    let decoded = dumpfile::decode(&bytes);
    util::wipe(&mut bytes);
    let (records, written) = decoded.map_err(|m| {
        Failure(
            EXIT_FAILED,
            format!("{}: {m}; nothing loaded", file.display()),
        )
    })?;
    let now = util::now_unix();
    let (rep, err) = dumpfile::load_into(&cache, &records, now, &|id, der| {
        der::session_der_matches_id(der, id)
    });
    println!(
        "loaded {} sessions into {} from {} (dumped {}); skipped {} expired, refused {}",
        rep.loaded,
        a.positional[0],
        file.display(),
        text::utc(written),
        rep.expired,
        rep.refused
    );
    match err {
        Some(e) => Err(Failure(
            EXIT_PARTIAL,
            format!("{}: loaded in part: {e}", a.positional[0]),
        )),
        None if rep.refused > 0 => Err(Failure(
            EXIT_PARTIAL,
            format!(
                "{}: {} record(s) were not sessions with their ids",
                file.display(),
                rep.refused
            ),
        )),
        None => Ok(0),
    }
}

fn cmd_repair(raw: &[String]) -> Result<u8, Failure> {
    let a = Args::parse("repair", raw, &["force"], &["lock-timeout"])?;
    a.want_positional(1, "PATH")?;
    let path = &a.positional[0];
    let cache = open_segment_as_owner(&a, path)?;
    let (resets, failed) = cache.repair_all(a.has("force"))?;
    println!(
        "{path}: {} shards checked, {resets} lock(s) re-initialised, {} shard(s) still unusable",
        cache.geometry().shard_count,
        failed.len()
    );
    for (_, e) in &failed {
        eprintln!("shmsesscache: {path}: {e}");
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        Err(Failure(
            EXIT_PARTIAL,
            format!(
                "{path}: {} shard(s) are held by live processes; stop them, or use --force to break their locks",
                failed.len()
            ),
        ))
    }
}

fn main() -> ExitCode {
    // A reader that goes away (`shmsesscache list PATH | head`) ends the tool as it ends `cat`:
    // Rust ignores SIGPIPE, and its print macros then panic on the broken pipe. Every command
    // writes its report after its work is done, so nothing is cut short.
    // SAFETY: restoring a signal's default disposition, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().map(String::as_str) else {
        eprint!("{}", text::MAIN_HELP);
        return ExitCode::from(EXIT_USAGE);
    };
    let rest = &argv[1..];
    if matches!(cmd, "--help" | "-h" | "help") {
        return finish(cmd_help(rest));
    }
    if cmd == "--version" {
        println!("shmsesscache {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // For `run`, what follows `--` is the server's own command line.
    let ours = rest.split(|a| a == "--").next().unwrap_or(&[]);
    if ours.iter().any(|a| a == "--help" || a == "-h") {
        if let Some(h) = text::command_help(cmd) {
            print!("{h}");
            return ExitCode::SUCCESS;
        }
    }
    let result = match cmd {
        "stat" => cmd_stat(rest),
        "list" => cmd_list(rest),
        "flush" => cmd_flush(rest),
        "create" => cmd_create(rest),
        "dump" => cmd_dump(rest),
        "load" => cmd_load(rest),
        "repair" => cmd_repair(rest),
        "run" => run::cmd_run(rest),
        other => Err(unknown_command(other)),
    };
    finish(result)
}

fn finish(result: Result<u8, Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, msg)) => {
            eprintln!("shmsesscache: {msg}");
            ExitCode::from(code)
        }
    }
}

fn unknown_command(name: &str) -> Failure {
    usage(format!(
        "unknown command {name:?}; commands: stat, list, flush, create, dump, load, repair, run (see 'shmsesscache --help')"
    ))
}

/// `help [COMMAND]`: a topic that is no command is a usage error (exit 2), as the command
/// itself would be, not the overview with success: a script's `help stats` must not pass.
fn cmd_help(rest: &[String]) -> Result<u8, Failure> {
    match rest {
        [] => print!("{}", text::MAIN_HELP),
        [topic] => print!(
            "{}",
            text::command_help(topic).ok_or_else(|| unknown_command(topic))?
        ),
        [_, extra, ..] => {
            return Err(usage(format!(
                "help takes one command, not also {extra:?} (shmsesscache help COMMAND)"
            )))
        }
    }
    Ok(0)
}
