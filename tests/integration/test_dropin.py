"""The drop-in against Debian's own servers: resumption without it (the contrast) and under
`shmsesscache run`, TLS 1.3 tickets once each, a worker killed under load, a reload, and the
root master never locking the segment, and a root s_server served as alone (lock calls traced with gdb).

    python3 tests/integration/test_dropin.py --cli build/shmsesscache --certs build/certs [--only hitch,nsd]
"""

import argparse
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time

from harness.checks import check, finish
from harness import dropin as dh

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
RECONNECTS = 20


def contrast(kind, args):
    with kind(certs=args.certs) as s:
        n = dh.resumed_of(s, TLS12, RECONNECTS)
    check(f"{kind.name} alone (the contrast): TLS 1.2 without tickets mostly misses across its workers",
          n < RECONNECTS - 1, f"{n}/{RECONNECTS}")
    return n


def segment_stats(cli, path):
    out = subprocess.run([cli, "stat", path, "--json"], capture_output=True, text=True, timeout=30)
    import json
    return json.loads(out.stdout) if out.returncode == 0 else {}


def test_resumption(kind, args):
    alone = contrast(kind, args)
    seg_dir = os.path.join("/run", "shmsesscache-test")
    os.makedirs(seg_dir, mode=0o700, exist_ok=True)
    seg = os.path.join(seg_dir, f"{kind.name}-{os.getpid()}.sess")
    with kind(cli=args.cli, run_args=["--path", seg, "--no-tickets", "--size", "8M"], certs=args.certs) as s:
        n12 = dh.resumed_of(s, TLS12, RECONNECTS)
        n13 = dh.resumed_of(s, TLS13, 10)
        first, second = dh.replayed_ticket_resumes(s)
        check(f"{kind.name}: TLS 1.2 without tickets resumes across workers under the drop-in",
              n12 >= RECONNECTS - 1, f"{n12}/{RECONNECTS} (alone: {alone}/{RECONNECTS})")
        check(f"{kind.name}: TLS 1.3 stateful tickets resume", n13 >= 9, f"{n13}/10")
        check(f"{kind.name}: a TLS 1.3 ticket resumes once", first and not second,
              f"first {first}, replay {second}")
        st = segment_stats(args.cli, seg)
        check(f"{kind.name}: 'shmsesscache stat' reads the drop-in's segment",
              st.get("lookup_hits", 0) >= n12 and st.get("taken", 0) >= 1,
              f"hits {st.get('lookup_hits')}, taken {st.get('taken')}")
        if kind.root_master:
            root_master_never_locks(s, kind, seg)
        killed_under_load(s, kind)
        reload_keeps_sessions(s, kind)
        # A server that closes every descriptor and drops root (proftpd) gets the lines on stderr.
        log = s.dropin_log() + "".join(l + "\n" for l in s.server_output().splitlines() if "drop-in[" in l)
        check(f"{kind.name}: the drop-in logged its install, no warnings",
              "installed on a server context" in log and "warning" not in log,
              log.strip().splitlines()[-1] if log.strip() else "empty log")
    os.unlink(seg)
    if not kind.needs_named_segment:
        anonymous_segment_made_once(kind, args)
    if "--force" in kind.dropin_args:
        left_alone_without_force(kind, args)


def left_alone_without_force(kind, args):
    """A server that turned its session cache off is left as it is, and the log says why."""
    s = kind(cli=args.cli, run_args=["--no-tickets"], certs=args.certs)
    s.dropin_args = []
    s.run_args = ["--no-tickets"]
    with s:
        n = dh.resumed_of(s, TLS12, RECONNECTS)
        log = s.dropin_log()
    check(f"{kind.name}: without --force the drop-in leaves its cache-off contexts alone and says so",
          n < RECONNECTS - 1 and "turned its session cache off (cache mode 0x" in log
          and "--force" in log, f"{n}/{RECONNECTS}; log: {log.strip().splitlines()[:1]}")


def memfd_segments(pids):
    """{inode: {pids}} of the anonymous segments (memfd "shmsesscache") these processes map,
    and the pids that were still there to be read (a child per connection comes and goes)."""
    found, read = {}, set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                lines = f.readlines()
            for line in lines:
                if "/memfd:shmsesscache" in line:
                    found.setdefault(line.split()[4], set()).add(pid)
            if lines:  # a child that is exiting (or a zombie) has an empty map: not read
                read.add(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found, read


def anonymous_segment_made_once(kind, args):
    """Without --path, behind `timeout` (a process in between that never serves TLS): one
    anonymous segment, made by the server's master, mapped by every process that serves."""
    with kind(cli=args.cli, run_args=["--no-tickets"], certs=args.certs, wrapper=["timeout", "300"]) as s:
        n12 = dh.resumed_of(s, TLS12, RECONNECTS)
        workers = set(s.workers())
        segs, alive = memfd_segments(s.session_pids())
        workers &= alive
        check(f"{kind.name}: anonymous segment (behind timeout): sessions resume across workers",
              n12 >= RECONNECTS - 1, f"{n12}/{RECONNECTS}")
        check(f"{kind.name}: one anonymous segment, mapped by every worker, none by timeout",
              len(segs) == 1 and workers <= next(iter(segs.values()), set())
              and s.proc.pid not in next(iter(segs.values()), set()),
              f"segments {[sorted(v) for v in segs.values()]}, workers {sorted(workers)}, timeout {s.proc.pid}")


def root_master_never_locks(s, kind, seg):
    """gdb counts the shard-lock calls in the root master through handshakes and a reload, and
    in one unprivileged worker through the same handshakes (the control: tracing sees locks)."""
    master, worker = s.master_pid(), s.workers()[0]
    traces = [dh.LockTrace(master, seg), dh.LockTrace(worker, seg)]
    done = 0
    while done < 40:  # enough for the kernel to hand the traced worker some
        dh.resumed_of(s, TLS12, 4)
        done += 5
    s.reload()
    dh.resumed_of(s, TLS12, 4)
    in_master, in_worker = (t.stop() for t in traces)
    check(f"{kind.name}: the root master never locks the segment (traced with gdb), a worker does",
          in_master == 0 and in_worker > 0, f"master {in_master} lock calls, worker {in_worker}")


class RootSServer(dh.TLSServer):
    """`openssl s_server -www` as root: one process that handles TLS itself, with OpenSSL's own
    session cache (it resumes every session without the drop-in)."""
    name = "s_server"
    payload = b"GET / HTTP/1.0\r\n\r\n"

    def command(self):
        return ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-www", "-no_ticket", "-quiet",
                "-cert", os.path.join(self.certs, "server.pem"), "-key", os.path.join(self.certs, "server.key")]


def root_server_never_locks(args):
    """A root process that handles TLS itself under the drop-in (named segment, so the
    segment is mapped in it): it resumes as it would without the drop-in (its own cache), and
    gdb sees no lock call on the segment through those handshakes. A drop-in that served it
    would resume 0/5 (the library's root rule refuses its callbacks) or, without that rule
    too, lock the segment."""
    seg = os.path.join("/run", "shmsesscache-test", f"root-{os.getpid()}.sess")
    with RootSServer(cli=args.cli, run_args=["--path", seg, "--no-tickets"], certs=args.certs) as s:
        trace = dh.LockTrace(s.proc.pid, seg)
        n = dh.resumed_of(s, TLS12, 5)
        locks = trace.stop()
        log = s.dropin_log()
    os.unlink(seg)
    check("a root process serving TLS under the drop-in resumes as alone (5/5), never locks the segment, says so",
          n == 5 and locks == 0 and "runs as root" in log, f"resumed {n}/5, {locks} lock calls on the segment")


def killed_under_load(s, kind):
    stop, counter = threading.Event(), [0, 0]
    t = threading.Thread(target=dh.load, args=(s, stop, counter), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while counter[0] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = []
    while not victims and time.monotonic() < deadline + 10:  # a child per connection may be between
        victims = s.workers()
    os.kill(victims[0], signal.SIGKILL)
    before = counter[0]
    deadline = time.monotonic() + 10
    while counter[0] < before + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(10)
    n = dh.resumed_of(s, TLS12, RECONNECTS)
    check(f"{kind.name}: after a worker was SIGKILLed under load, sessions resume",
          n >= RECONNECTS - 1 and s.proc.poll() is None,
          f"{n}/{RECONNECTS}; {counter[0]} connections under load, {counter[1]} failed")


def reload_keeps_sessions(s, kind):
    ctx = dh.client_context(TLS12, True)
    _, session = dh.connect(s, ctx)
    old = set(s.workers())
    s.reload()
    reused = 0
    for _ in range(RECONNECTS):
        r, session = dh.connect(s, ctx, session)
        reused += bool(r)
    check(f"{kind.name}: a session from before a reload ({s.reload_signal.name}) resumes after it",
          reused >= RECONNECTS - 1 and s.proc.poll() is None,
          f"{reused}/{RECONNECTS}, new workers {sorted(set(s.workers()) - old)}")


def run_refuses_bad_settings(args):
    """A bad setting is refused before PROGRAM starts, with the fix; set directly in the
    environment (a unit's Environment=) the server still starts, without the cache, and says
    why once."""
    import tempfile
    marker = os.path.join(tempfile.mkdtemp(prefix="shmsess-run-"), "started")
    open_dir = tempfile.mkdtemp(prefix="shmsess-0777-")
    os.chmod(open_dir, 0o777)  # every user may write it, not sticky
    cases = [(["--size", "1K"], "needs at least 56000 bytes (e.g. --size 55K)"), (["--size", "lots"], "examples: 8388608, 512K, 64M, 1G"),
             (["--size", more_than_memory()], "more than the memory this machine has available"),
             (["--path", "relative.sess"], "give an absolute path"),
             (["--path", os.path.join(open_dir, "x.sess")], "is writable by every user and not sticky"),
             (["--log", "/nonexistent-dir/x.log"], "--log /nonexistent-dir/x.log")]
    for flags, fix in cases:
        out = subprocess.run([args.cli, "run", *flags, "--", "touch", marker], capture_output=True, text=True,
                             timeout=30)
        check(f"run {' '.join(flags)}: refused before the program starts, with the fix",
              out.returncode in (1, 2) and fix in out.stderr and not os.path.exists(marker),
              f"exit {out.returncode}: {out.stderr.strip()}")
        if os.path.exists(marker):  # started: the next case must not see this one's marker
            os.unlink(marker)
    env = dict(os.environ, SHMSESS_PRELOAD_LIB="/nonexistent/libshmsesscache_preload.so")
    out = subprocess.run([args.cli, "run", "--", "touch", marker], capture_output=True, text=True, env=env,
                         timeout=30)
    check("run: a missing preload is refused before the program starts",
          out.returncode == 1 and "SHMSESS_PRELOAD_LIB" in out.stderr and not os.path.exists(marker),
          out.stderr.strip())
    shutil.rmtree(open_dir)
    preload = os.path.join(os.path.dirname(args.cli), "libshmsesscache_preload.so")
    for variables, why in (({"SHMSESS_PRELOAD_SIZE": "1K"}, "minimum is"),
                           ({"SHMSESS_PRELOAD_SIZE": more_than_memory()}, "MemAvailable"),
                           ({"SHMSESS_PRELOAD_SIZE": " -1"}, "is not a size"),
                           ({"SHMSESS_PRELOAD_PATH": "relative.sess"}, "give an absolute path")):
        set_directly_refused(args, preload, variables, why)


def more_than_memory():
    """A size the library must refuse: twice this machine's MemAvailable (in whole GiB)."""
    with open("/proc/meminfo") as f:
        kib = next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:"))
    return f"{2 * kib // (1 << 20) + 1}G"


def set_directly_refused(args, preload, variables, why):
    """Set in the environment (a unit's Environment=), a bad value leaves hitch serving with its
    own caches (sessions mostly miss across its 4 workers), the reason logged once per process."""
    s = dh.Hitch(certs=args.certs)
    s.env = lambda: dict(os.environ, LD_PRELOAD=preload, SHMSESS_PRELOAD_LOG=s.log, **variables)
    with s:
        n = dh.resumed_of(s, TLS12, 5)
        log = s.dropin_log()
    check(f"{variables} set directly: the server serves without the cache, the reason logged once per process",
          n < 5 and "no shared session cache, the server runs with its own" in log and why in log
          and len(set(re.findall(r"drop-in\[(\d+)\]", log))) == len(log.strip().splitlines()),
          f"resumed {n}/5; {log.strip().splitlines()[:1]}")


def run_bounded(cmd, env=None, timeout=15):
    """(exit code, stderr) of `cmd`, or (None, why) when it is still running after `timeout` s."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        return out.returncode, out.stderr
    except subprocess.TimeoutExpired:
        return None, f"still running after {timeout} s"


def log_that_is_not_a_file(args):
    """A log path that is a FIFO (or any other non-file) blocks nobody: `run --log` refuses it
    with the fix, and set directly the program starts at once, its lines on stderr."""
    import tempfile
    d = tempfile.mkdtemp(prefix="shmsess-fifo-")
    fifo = os.path.join(d, "log")
    os.mkfifo(fifo, 0o600)
    marker = os.path.join(d, "started")
    rc, err = run_bounded([args.cli, "run", "--log", fifo, "--", "touch", marker])
    check("run --log FIFO: refused at once, before the program starts, with the fix",
          rc == 1 and "not a regular file" in err and not os.path.exists(marker), f"exit {rc}: {err.strip()}")
    preload = os.path.join(os.path.dirname(args.cli), "libshmsesscache_preload.so")
    env = dict(os.environ, LD_PRELOAD=preload, SHMSESS_PRELOAD_LOG=fifo)
    rc, err = run_bounded(["touch", marker], env=env)
    check("SHMSESS_PRELOAD_LOG=FIFO: the program starts at once, the drop-in says why on stderr",
          rc == 0 and os.path.exists(marker) and "not a regular file" in err, f"exit {rc}: {err.strip()}")
    for f in (marker, fifo):
        if os.path.exists(f):
            os.unlink(f)
    os.rmdir(d)


def maps_path(pid, path):
    with open(f"/proc/{pid}/maps") as f:
        return any(line.rstrip().endswith(path) for line in f)


def only_named_programs_map_the_segment(args):
    """--only sleep: of a shell that starts `sleep` and then execs `cat` (a stand-in for
    dovecot's imap-login, listed, and the imap process that execs after login, not listed),
    only sleep maps the named segment; cat, under the same LD_PRELOAD and variables, does not."""
    seg = os.path.join("/run", "shmsesscache-test", f"only-{os.getpid()}.sess")
    proc = subprocess.Popen([args.cli, "run", "--path", seg, "--only", "sleep", "--", "sh", "-c", "sleep 30 & exec cat"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sleeper, deadline = None, time.monotonic() + 10
    try:
        while time.monotonic() < deadline and sleeper is None:  # until sh has exec'd cat
            kids = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            if "sleep" in kids and dh.cmdline(proc.pid).startswith("cat"):
                sleeper = int(kids[kids.index("sleep") - 1])
            else:
                time.sleep(0.05)
        ok = sleeper is not None and maps_path(sleeper, seg) and not maps_path(proc.pid, seg)
        said = f"sleep {sleeper} maps it: {sleeper and maps_path(sleeper, seg)}; cat {proc.pid} maps it: {maps_path(proc.pid, seg)}"
    except (FileNotFoundError, ProcessLookupError) as e:
        ok, said = False, f"{e}; {proc.stderr.read1().decode() if proc.poll() is not None else ''}"
    finally:
        if sleeper:
            os.kill(sleeper, signal.SIGKILL)
        proc.kill()
        proc.wait()
    check("--only: the segment is mapped by the programs named, not by another program under the same environment",
          ok, said)
    if os.path.exists(seg):
        os.unlink(seg)


def unexpected_eof(args):
    """--ignore-unexpected-eof: a client that drops TCP without close_notify keeps its
    session (OpenSSL otherwise treats the EOF as fatal and removes it from the shared cache)."""
    results = {}
    for flag in ([], ["--ignore-unexpected-eof"]):
        with dh.Hitch(cli=args.cli, run_args=["--no-tickets", *flag], certs=args.certs) as s:
            results[bool(flag)] = dh.resumed_after_drops(s, 10)
    check("hitch: --ignore-unexpected-eof keeps the sessions of clients that drop TCP without close_notify",
          results[True] >= 9 and results[False] <= 1,
          f"with it {results[True]}/10, without {results[False]}/10")


def hello_retry_request(args):
    """A TLS 1.3 ticket offered with a key share the server does not accept (it takes only
    P-256): the server asks again (HelloRetryRequest) and the ticket still resumes, once."""
    seg = os.path.join("/run", "shmsesscache-test", f"hrr-{os.getpid()}.sess")
    s = dh.Hitch(cli=args.cli, run_args=["--no-tickets", "--path", seg], certs=args.certs)
    s.http_backend, s.groups = True, "P-256"
    with s:
        ticket = os.path.join(s.dir, "ticket.pem")
        dh.s_client_tls13(s, "-sess_out", ticket)
        first = dh.s_client_tls13(s, "-sess_in", ticket, "-groups", "X25519:P-256")
        again = dh.s_client_tls13(s, "-sess_in", ticket, "-groups", "X25519:P-256")
        st = segment_stats(args.cli, seg)
    os.unlink(seg)
    words = [re.findall(r"^(New|Reused), ", o, re.M) for o in (first, again)]
    check("hitch: a TLS 1.3 ticket resumes through a HelloRetryRequest, once",
          words == [["Reused"], ["New"]] and st.get("hrr_resumed") == 1,
          f"{words}, hrr_resumed {st.get('hrr_resumed')}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cli", required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--only", default=",".join(dh.SERVERS))
    args = p.parse_args()
    args.cli = os.path.abspath(args.cli)
    args.certs = os.path.abspath(args.certs)
    # Named segments go in a directory of root's (a fresh machine has none: /run is a tmpfs).
    os.makedirs(os.path.join("/run", "shmsesscache-test"), mode=0o700, exist_ok=True)
    run_refuses_bad_settings(args)
    log_that_is_not_a_file(args)
    only_named_programs_map_the_segment(args)
    root_server_never_locks(args)
    if "hitch" in args.only.split(","):
        unexpected_eof(args)
        hello_retry_request(args)
    for name in args.only.split(","):
        test_resumption(dh.SERVERS[name], args)
    try:
        os.rmdir(os.path.join("/run", "shmsesscache-test"))  # only when no other run uses it
    except OSError:
        pass
    finish()


if __name__ == "__main__":
    main()
