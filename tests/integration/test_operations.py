#!/usr/bin/env python3
"""Integration: the `shmsesscache` tool against named segments used by the example server.

Covers create (mode, owner, refusal to overwrite), stat (human, --json, --prometheus), list
(ids carry the generator's prefix, nothing secret), a server restart on the same segment,
dump/flush/load (a warm restart, and a move into a bigger segment), damaged or loose dump
files, exit codes and --help. Each check prints PASS/FAIL; the run ends with
"N passed, M failed" and exits non-zero if anything failed.
"""

import argparse
import ctypes
import json
import mmap
import signal
import struct
import os
import re
import shutil
import ssl
import stat
import subprocess
import tempfile

from harness.checks import check, finish
from harness import process
from harness.client import client_context
from harness.prefork import Server, one_request

PREFIX = "web1"
SIZE = 2 << 20
SESSIONS = 12


class Ops:
    def __init__(self, args, workdir):
        self.args = args
        self.dir = workdir

    def cli(self, *argv):
        p = subprocess.run([self.args.cli, *argv], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def stat_json(self, path):
        rc, out, err = self.cli("stat", path, "--json")
        if rc != 0:
            raise RuntimeError(f"stat --json failed ({rc}): {err}")
        return json.loads(out)

    def listing(self, path):
        rc, out, err = self.cli("list", path)
        if rc != 0:
            raise RuntimeError(f"list failed ({rc}): {err}")
        lines = out.splitlines()
        return lines[0], [line.split() for line in lines[1:]]

    def server(self, path, size=SIZE, extra=()):
        return Server(self.args.server, self.args.certs, 2,
                      ["--tls13-stateful", "--cache-path", path, "--cache-size", str(size),
                       "--id-prefix", PREFIX, *extra])


def fresh_sessions(port, version, n):
    """n new sessions (each a full handshake), as the client keeps them."""
    ctx = client_context(version, no_ticket=True)
    out = []
    for _ in range(n):
        reused, _, sess = one_request(port, ctx)
        if reused:
            raise RuntimeError("a first connection was resumed")
        out.append(sess)
    return ctx, out


def resumed_count(port, ctx, sessions):
    """Offer each saved session once; returns how many resumed and the sessions to use next
    (TLS 1.3 tickets are single-use: the client keeps the new one)."""
    n, nxt = 0, []
    for s in sessions:
        reused, _, new = one_request(port, ctx, s)
        n += bool(reused)
        nxt.append(new)
    return n, nxt


def help_and_errors(ops):
    for cmd in ("stat", "list", "flush", "create", "dump", "load", "repair"):
        rc, out, _ = ops.cli(cmd, "--help")
        check(f"'{cmd} --help' prints its manual", rc == 0 and "NAME" in out and "SYNOPSIS" in out and cmd in out)
    rc, out, _ = ops.cli("--help")
    check("'--help' documents the exit codes", rc == 0 and "EXIT STATUS" in out)
    rc, _, err = ops.cli("frobnicate")
    check("an unknown command exits 2", rc == 2 and "unknown command" in err, err.strip())
    rc, _, err = ops.cli("stat")
    check("a missing argument exits 2", rc == 2, err.strip())
    missing = os.path.join(ops.dir, "missing.sess")
    rc, _, err = ops.cli("stat", missing)
    check("a missing segment exits 1 naming the file", rc == 1 and missing in err, err.strip())
    junk = os.path.join(ops.dir, "junk.sess")
    with open(junk, "wb") as f:
        f.write(os.urandom(8192))
    os.chmod(junk, 0o600)
    rc, _, err = ops.cli("stat", junk)
    check("a file that is not a segment exits 1 with the reason", rc == 1 and junk in err and "magic" in err, err.strip())


def create_and_inspect(ops):
    path = os.path.join(ops.dir, "main.sess")
    owner = ["--owner", "root:root"] if os.geteuid() == 0 else []
    rc, out, err = ops.cli("create", path, "--size", "2M", *owner)
    check("create makes the segment", rc == 0 and os.path.exists(path), (out + err).strip())
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    check("create makes it 0600", mode == 0o600, oct(mode))
    rc, _, err = ops.cli("create", path, "--size", "2M")
    check("create refuses an existing path", rc == 1 and "already exists" in err, err.strip())
    link = os.path.join(ops.dir, "link.sess")
    os.symlink(path, link)
    rc, _, err = ops.cli("stat", link)
    check("stat refuses a symlink", rc == 1 and "symbolic link" in err, err.strip())

    with ops.server(path) as srv:
        ctx12, s12 = fresh_sessions(srv.port, ssl.TLSVersion.TLSv1_2, SESSIONS)
        ctx13, s13 = fresh_sessions(srv.port, ssl.TLSVersion.TLSv1_3, SESSIONS)
        # The generator's prefix is visible to TLS 1.2 clients: the session id is in clear.
        ids = [s.id for s in s12]
        check("TLS 1.2 session ids carry the host/worker prefix at full length",
              all(i.startswith(PREFIX.encode() + b"w") and len(i) == 32 for i in ids),
              repr(ids[0][:8]))
        workers = {i[len(PREFIX) + 1:len(PREFIX) + 2] for i in ids}
        check("each worker adds its own number to the prefix", len(workers) >= 2, repr(workers))
        n12, s12 = resumed_count(srv.port, ctx12, s12)
        check("the sessions resume", n12 == SESSIONS, f"{n12}/{SESSIONS}")
        st = ops.stat_json(path)
        header, rows = ops.listing(path)
        rc, human, _ = ops.cli("stat", path)
        rc_p, prom, _ = ops.cli("stat", path, "--prometheus")

    pre = PREFIX.encode().hex() + "77"  # "w"
    check("list: one line per live entry, matching stat's entries",
          len(rows) == st["entries"] == 2 * SESSIONS, f"{len(rows)} lines, entries={st['entries']}")
    check("list: every id (TLS 1.2 and 1.3) carries the prefix",
          all(len(r[0]) == 64 and r[0].startswith(pre) for r in rows), rows[0][0] if rows else "")
    check("list: id, size, created, expires, shard — never the contents",
          header.split() == ["ID", "SIZE", "CREATED", "EXPIRES", "SHARD"]
          and all(len(r) == 5 and 100 < int(r[1]) < 1000 and r[2].endswith("Z") for r in rows))
    check("stat --json: counters of all processes",
          st["lookup_hits"] >= SESSIONS and st["stores"] == 2 * SESSIONS
          and st["ids_generated"] >= 2 * SESSIONS and st["id_collisions"] == 0
          and abs(st["hit_ratio"] - st["lookup_hits"] / (st["lookup_hits"] + st["lookup_misses"])) < 1e-6,
          f"hits={st['lookup_hits']} stores={st['stores']} ids={st['ids_generated']}")
    check("stat --json: ages of the entries",
          0 < st["oldest_created_unix"] <= st["newest_created_unix"] <= st["now_unix"]
          and st["earliest_expiry_unix"] > st["now_unix"] and 7000 < st["avg_time_left_s"] <= 7200,
          f"avg_time_left_s={st['avg_time_left_s']}")
    check("stat --json: per-shard usage",
          st["min_shard_used_slots"] <= st["avg_shard_used_slots"] <= st["max_shard_used_slots"] <= st["slots_per_shard"])
    check("stat: human-readable report", rc == 0 and re.search(r"hit ratio \d+\.\d%", human) and "time left" in human)
    # Every promise the statistics watch has its line: names, HelloRetryRequests, early data,
    # refused hits (apart from hits), lock contention.
    lines = {"hits refused": rf"{st.get('lookup_refused', 0)} hits refused \(hit ratio",
             "names": rf"names +{st['sni_mismatch']} refused",
             "HRR": rf"{st['hrr_resumed']} resumed after a HelloRetryRequest",
             "early data": rf"early data +{st['anti_replay_skipped']} TLS 1.3 lookups skipped",
             "contention": rf"lock contention +{st['lock_contended']} waits"}
    missing = [k for k, pat in lines.items() if not re.search(pat, human)]
    check("stat: lines for refused hits, server names, HRR, early data and lock contention", not missing,
          f"missing {missing}")
    samples = dict(re.findall(r'^(shmsesscache_\w+)\{segment="[^"]+"\} (\S+)$', prom, re.M))
    check("stat --prometheus: text exposition format",
          rc_p == 0 and int(samples.get("shmsesscache_lookup_hits_total", -1)) == st["lookup_hits"]
          and "# TYPE shmsesscache_entries gauge" in prom and len(samples) > 30, f"{len(samples)} samples")
    return path, (ctx12, s12), (ctx13, s13)


def restart_dump_flush_load(ops, path, tls12, tls13):
    ctx12, s12 = tls12
    ctx13, s13 = tls13
    # A restarted server attaches to the segment and resumes its clients' sessions.
    with ops.server(path) as srv:
        n, s12 = resumed_count(srv.port, ctx12, s12)
    check("a server restarted on the named segment resumes the old sessions", n == SESSIONS, f"{n}/{SESSIONS}")

    dump = os.path.join(ops.dir, "sessions.dump")
    rc, out, err = ops.cli("dump", path, dump)
    check("dump writes the live sessions", rc == 0 and f"dumped {2 * SESSIONS} " in out, (out + err).strip())
    check("dump file is 0600", stat.S_IMODE(os.lstat(dump).st_mode) == 0o600)
    rc, out, _ = ops.cli("flush", path, "--expired")
    check("flush --expired keeps live entries", rc == 0 and "removed 0" in out and ops.stat_json(path)["entries"] == 2 * SESSIONS, out.strip())
    rc, out, _ = ops.cli("flush", path)
    check("flush empties the segment", rc == 0 and ops.stat_json(path)["entries"] == 0, out.strip())
    with ops.server(path) as srv:
        n, _ = resumed_count(srv.port, ctx12, s12)
    check("after flush the old sessions are gone", n == 0, f"{n} resumed")

    # Damaged and loose dump files load nothing.
    ops.cli("flush", path)
    bad = os.path.join(ops.dir, "bad.dump")
    with open(dump, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x40
    with open(bad, "wb") as f:
        f.write(data)
    os.chmod(bad, 0o600)
    rc, _, err = ops.cli("load", path, bad)
    check("a damaged dump is refused whole", rc == 1 and "nothing loaded" in err and ops.stat_json(path)["entries"] == 0, err.strip())
    loose = os.path.join(ops.dir, "loose.dump")
    shutil.copy(dump, loose)
    os.chmod(loose, 0o622)
    rc, _, err = ops.cli("load", path, loose)
    check("a dump others can write is refused", rc == 1 and "writable by group or others" in err, err.strip())

    # Warm restart: load the dump back, the clients resume.
    rc, out, err = ops.cli("load", path, dump)
    check("load puts the sessions back", rc == 0 and f"loaded {2 * SESSIONS} " in out, (out + err).strip())
    with ops.server(path) as srv:
        n, s12 = resumed_count(srv.port, ctx12, s12)
    check("after load the TLS 1.2 sessions resume again (warm restart)", n == SESSIONS, f"{n}/{SESSIONS}")

    # Moving to a bigger segment: create, load, start the server on it; TLS 1.3 tickets resume.
    big = os.path.join(ops.dir, "big.sess")
    rc, _, err = ops.cli("create", big, "--size", "8M")
    rc2, out, err2 = ops.cli("load", big, dump)
    check("load into a bigger segment", rc == 0 and rc2 == 0 and f"loaded {2 * SESSIONS} " in out, (err + out + err2).strip())
    with ops.server(big, size=8 << 20) as srv:
        n13, _ = resumed_count(srv.port, ctx13, s13)
        n12, _ = resumed_count(srv.port, ctx12, s12)
        stats = srv.stop()
    check("the bigger segment's server resumes TLS 1.3 and TLS 1.2 sessions",
          n13 == SESSIONS and n12 == SESSIONS, f"TLS 1.3 {n13}/{SESSIONS}, TLS 1.2 {n12}/{SESSIONS}")
    check("the server's stats line carries every field, including the new ones",
          stats and "ids_generated" in stats and "avg_time_left_s" in stats and stats["taken"] == SESSIONS,
          str(stats)[:200])
    # A segment of another size is refused by the server rather than silently reused.
    proc = subprocess.run([ops.args.server, "--listen", "127.0.0.1:0", "--workers", "1",
                           "--cert", os.path.join(ops.args.certs, "server.pem"),
                           "--key", os.path.join(ops.args.certs, "server.key"),
                           "--cache-path", big, "--cache-size", str(SIZE)],
                          capture_output=True, text=True, timeout=30)
    check("a server asking for another size refuses the segment", proc.returncode != 0 and big in proc.stderr,
          proc.stderr.strip()[:200])
    if os.geteuid() == 0:
        os.chown(big, 65534, 65534)
        rc, out, err = ops.cli("stat", big, "--json")
        check("root inspects a segment owned by the server's user",
              rc == 0 and json.loads(out)["entries"] >= SESSIONS, err.strip())
    return dump


NOBODY = 65534
HEADER_BYTES = 4096


def dead_pid():
    """A pid that names no process or thread any more."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def hold_shard0_lock_stopped(path):
    """A process that takes shard 0's robust mutex in the segment file and stops (SIGSTOP)
    while holding it: a worker stopped in a debugger. Returns its pid once it is stopped."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(path, os.O_RDWR)
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
            buf = (ctypes.c_char * len(mm)).from_buffer(mm)
            libc = ctypes.CDLL(None)
            if libc.pthread_mutex_lock(ctypes.c_void_p(ctypes.addressof(buf) + HEADER_BYTES)) != 0:
                os._exit(3)
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)  # readiness: it stopped holding the lock
    if not os.WIFSTOPPED(status):
        raise RuntimeError(f"the lock holder did not stop (status {status:#x})")
    return pid


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def plant_stale_owner(path):
    """Shard 0's lock word says 'held by thread T' (no owner-died bit) and T does not exist:
    a segment on persistent storage after a reboot."""
    tid = dead_pid()
    with open(path, "r+b") as f:
        f.seek(HEADER_BYTES)
        f.write(struct.pack("<I", tid))
        f.seek(HEADER_BYTES + 8)
        f.write(struct.pack("<i", tid))


def map_and_become_nobody(path):
    """What Apache's children do: inherit (here: map) root's segment, then run as nobody.
    Returns the pid once it runs as nobody with the mapping."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fd = os.open(path, os.O_RDWR)
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(w, b"x")
            signal.pause()
            mm.close()
        finally:
            os._exit(0)
    os.close(w)
    ready = os.read(r, 1)
    os.close(r)
    if ready != b"x":
        raise RuntimeError("the mapping child did not start")
    return pid


def root_never_locks_a_segment_workers_write(ops, dump):
    """A root-owned segment mapped by processes of another user (Apache's layout): root's
    stat reads a copy, root's flush and load are refused while they map it."""
    if os.geteuid() != 0:
        print("SKIP root_never_locks_a_segment_workers_write: needs root")
        return
    seg = os.path.join(ops.dir, "rootowned.sess")
    rc, _, err = ops.cli("create", seg, "--size", "2M")
    rc2, _, err2 = ops.cli("load", seg, dump)
    check("root-owned segment created and loaded while nobody else maps it", rc == 0 and rc2 == 0, (err + err2).strip())
    worker = map_and_become_nobody(seg)
    try:
        rc_f, _, err_f = ops.cli("flush", seg)
        rc_l, _, err_l = ops.cli("load", seg, dump)
        rc_s, out_s, _ = ops.cli("stat", seg, "--json")
        check("root's flush and load refuse a root-owned segment that a nobody process maps",
              rc_f == 1 and rc_l == 1 and "mapped by 1 process(es) of another user" in err_f
              and f"uid {NOBODY}" in err_l, f"flush rc={rc_f} load rc={rc_l} {err_f.strip()[:160]}")
        # nginx's and Apache's segments are like this one: the fix is to stop the server, never
        # to recreate the segment for another owner (their root master makes it at start).
        check("the refusal says to stop the server, and does not recommend create --owner",
              "Stop that server" in err_f and "--owner" not in err_f, err_f.strip()[-200:])
        check("root's stat still reads it (a copy, no lock)",
              rc_s == 0 and json.loads(out_s)["entries"] == 2 * SESSIONS, f"rc={rc_s}")
    finally:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)
    rc, out, err = ops.cli("flush", seg)
    check("once no other user maps it, root's flush works", rc == 0 and f"removed {2 * SESSIONS} " in out, (out + err).strip())


def proc_status(pid):
    """The Uid, Gid and Groups lines of /proc/PID/status, as lists of strings."""
    with open(f"/proc/{pid}/status") as f:
        lines = dict(line.rstrip("\n").split(":", 1) for line in f if ":" in line)
    return {k: lines.get(k, "").split() for k in ("Uid", "Gid", "Groups")}


def credentials_while_waiting(ops, seg):
    """Root's flush of nobody's segment, caught while it waits for the held shard 0 lock: it
    runs as nobody with nobody's own group and no supplementary groups, even though the file's
    group is root's (anybody who can chown a file to a user can give it any group)."""
    os.chown(seg, NOBODY, 0)
    flush = subprocess.Popen([ops.args.cli, "flush", seg, "--lock-timeout", "600000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def switched():
            creds = proc_status(flush.pid)
            return creds if creds["Uid"][:1] == [str(NOBODY)] else None

        # Readiness: the switch to the owner happens before the wait for the lock (polled: the
        # process's credentials announce nothing).
        creds = process.poll_until(switched, 30, alive=lambda: flush.poll() is None) or proc_status(flush.pid)
        check("root's flush of nobody's segment runs as nobody's uid and group, no supplementary groups, "
              "whatever the file's group",
              creds["Uid"] == [str(NOBODY)] * 4 and creds["Gid"] == [str(NOBODY)] * 4 and creds["Groups"] == [],
              f"{creds} (exit {flush.poll()})")
    finally:
        flush.kill()
        flush.wait()
        os.chown(seg, NOBODY, NOBODY)


def root_never_locks_a_users_segment(ops, dump):
    """Root and a segment owned by the server's user (nobody): root's reads take no lock,
    root's changes run as nobody, a dump of another user is refused, and locks nobody can take
    again are re-initialised (automatically, or by 'repair')."""
    if os.geteuid() != 0:
        print("SKIP root_never_locks_a_users_segment: needs root (it switches to nobody)")
        return
    d = os.path.join(ops.dir, "priv")
    os.mkdir(d, 0o700)
    seg = os.path.join(d, "nobody.sess")
    rc, _, err = ops.cli("create", seg, "--size", "2M", "--owner", f"{NOBODY}:{NOBODY}")
    check("root creates a segment for nobody", rc == 0 and os.stat(seg).st_uid == NOBODY, err.strip())
    # flush as root runs as nobody: nobody cannot enter the 0700 root directory.
    rc, _, err = ops.cli("flush", seg)
    check("flush run by root switches to the segment's owner first",
          rc == 1 and "Permission denied" in err, f"rc={rc} {err.strip()}")
    os.chmod(ops.dir, 0o711)  # nobody may now reach the segment (and nothing else: all 0600)
    os.chmod(d, 0o711)
    rc, out, err = ops.cli("load", seg, dump)
    check("root loads its own dump into nobody's segment (as nobody)",
          rc == 0 and f"loaded {2 * SESSIONS} " in out, (out + err).strip())
    foreign = os.path.join(ops.dir, "foreign.dump")
    shutil.copy(dump, foreign)
    os.chmod(foreign, 0o600)
    os.chown(foreign, NOBODY, NOBODY)
    rc, _, err = ops.cli("load", seg, foreign)
    check("root refuses a dump owned by another user", rc == 1 and f"owned by uid {NOBODY}" in err, err.strip())

    holder = hold_shard0_lock_stopped(seg)
    try:
        before = file_bytes(seg)
        # A lock timeout of 10 minutes: any wait for the held lock would hit the 60 s limit.
        rc, out, err = ops.cli("stat", seg, "--json", "--lock-timeout", "600000")
        st = json.loads(out) if rc == 0 else {}
        rc_l, out_l, _ = ops.cli("list", seg, "--lock-timeout", "600000")
        out_dump = os.path.join(ops.dir, "held.dump")
        rc_d, out_d, err_d = ops.cli("dump", seg, out_dump, "--lock-timeout", "600000")
        after = file_bytes(seg)
        check("stat, list and dump as root read nobody's segment without waiting for a held lock",
              rc == 0 and st.get("entries") == 2 * SESSIONS and rc_l == 0
              and len(out_l.splitlines()) == 2 * SESSIONS + 1 and rc_d == 0 and f"dumped {2 * SESSIONS} " in out_d,
              f"stat rc={rc} entries={st.get('entries')} list rc={rc_l} dump rc={rc_d} {err.strip()} {err_d.strip()}")
        check("root's stat, list and dump leave the segment byte-identical, mutexes included (no lock taken)",
              before == after, f"{sum(a != b for a, b in zip(before, after))} bytes changed")
        rc, _, err = ops.cli("repair", seg, "--lock-timeout", "100")
        check("repair leaves a lock held by a live (stopped) process alone and says so",
              rc == 3 and "held by live processes" in err, f"rc={rc} {err.strip()[:200]}")
        credentials_while_waiting(ops, seg)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    rc, out, err = ops.cli("repair", seg)
    st = ops.stat_json(seg)
    check("after the holder died, repair recovers its lock (EOWNERDEAD), nothing to reset",
          rc == 0 and "0 lock(s) re-initialised" in out and st["lock_owner_died"] == 1
          and st["entries"] == 2 * SESSIONS, (out + err).strip())

    timeouts = st["lock_timeouts"]  # one, from the repair that met the stopped holder
    plant_stale_owner(seg)
    rc, out, err = ops.cli("flush", seg, "--expired")
    st = ops.stat_json(seg)
    check("a stale lock word (owner gone, no owner-died bit) is reset by the next locker",
          rc == 0 and st["lock_resets"] == 1 and st["lock_timeouts"] == timeouts and st["entries"] == 2 * SESSIONS,
          f"rc={rc} resets={st['lock_resets']} timeouts={st['lock_timeouts']}-{timeouts} {err.strip()}")
    plant_stale_owner(seg)
    rc, out, err = ops.cli("repair", seg)
    st = ops.stat_json(seg)
    check("repair re-initialises a stale lock at once, counted",
          rc == 0 and "1 lock(s) re-initialised" in out and st["lock_resets"] == 2
          and st["entries"] == 2 * SESSIONS, (out + err).strip())
    rc, human, _ = ops.cli("stat", seg)
    check("stat shows the re-initialised locks", rc == 0 and "2 locks re-initialised" in human)


def repair_after_a_reboot(ops):
    """A segment file kept across a reboot: a lock word names a thread of the last boot, whose
    id a live, unrelated process (pid 1) has now. The segment records the boot it was used
    under, so the first process to attach (here: repair) re-initialises every held lock."""
    seg = os.path.join(ops.dir, "reboot.sess")
    rc, _, err = ops.cli("create", seg, "--size", "2M")
    check("segment for the reboot test created", rc == 0, err.strip())
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = int(f.read().strip().replace("-", ""), 16)
    recorded = struct.pack("<QQ", boot >> 64, boot & (2**64 - 1))
    page0 = file_bytes(seg)[:HEADER_BYTES]
    at = page0.find(recorded)
    check("the segment records the boot it is used under", at >= 0, "boot id not found in page 0")
    with open(seg, "r+b") as f:
        if at >= 0:  # "another boot": flip a bit of the recorded id
            f.seek(at)
            f.write(bytes([recorded[0] ^ 1]))
        f.seek(HEADER_BYTES)
        f.write(struct.pack("<I", 1))
        f.seek(HEADER_BYTES + 8)
        f.write(struct.pack("<i", 1))
    rc, out, err = ops.cli("repair", seg, "--lock-timeout", "100")
    st = ops.stat_json(seg)
    check("after a reboot, repair re-initialises a lock naming a live, unrelated pid",
          rc == 0 and "1 lock(s) re-initialised" in out and st["lock_resets"] == 1,
          f"rc={rc} {(out + err).strip()[:300]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="shmsess-ops-")
    ops = Ops(args, workdir)
    try:
        for t in (help_and_errors,):
            t(ops)
        state = create_and_inspect(ops)
        dump = restart_dump_flush_load(ops, *state)
        root_never_locks_a_users_segment(ops, dump)
        root_never_locks_a_segment_workers_write(ops, dump)
        repair_after_a_reboot(ops)
    except Exception as e:  # a crash is a failure, not an abort
        check("scenario ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
