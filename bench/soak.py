#!/usr/bin/env python3
"""`make soak` (issue 24, Endurance): nginx, Apache httpd and two example servers joined by a
Redis tier, run together for N minutes (SOAK_MINUTES, default 10) under a mixed TLS 1.2/1.3
load, with worker SIGKILLs, reloads, CLI reads, flushes and a Redis restart at intervals.

It reports per server: handshakes, errors by kind, the resumption ratio per interval, RSS and
descriptor drift per process (first vs last window, from /proc), and the lock recoveries of
each named segment; then a verdict, exit status 1 if it fails:
- no crash: no worker died that the soak did not kill, no crash line in any log, every
  master still runs at the end;
- no hang: every connection (connect, handshake, request, answer) within HANG_BOUND_S;
- no descriptor growth: each process seen in both windows has no more descriptors at its
  quietest in the last window than in the first (and the workers' mean likewise);
- bounded RSS: each such process (and the workers' mean) at most RSS_GROWTH x first + RSS_SLACK.

Not a test (it is not in `make test`): its figures go into BENCHMARKS.md ("Endurance").
Everything listens on 127.0.0.1; the load is SOAK_THREADS client threads per server.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))

from harness import process  # noqa: E402
from harness.apache import Apache  # noqa: E402
from harness.client import client_context, http_get  # noqa: E402
from harness.nginx import Nginx  # noqa: E402
from harness.prefork import Server  # noqa: E402
from harness.redis import Redis, new_key, write_key  # noqa: E402

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
# A connection slower than this (connect to answer read) is a hang; the client's socket
# timeout (harness.client.IO_TIMEOUT, 10 s) turns one that never answers into a timeout error,
# also counted as a hang.
HANG_BOUND_S = 5.0
# Per process seen in both windows: last-window RSS <= RSS_GROWTH x first-window RSS + RSS_SLACK,
# of its anonymous RSS (RssAnon, the heap, where a leak shows): the shared segment's pages
# (RssShmem) grow as a worker touches more of the cache and the libraries' (RssFile) as it runs
# more of their code, neither a leak. VmRSS, all of them, is reported beside it.
RSS_GROWTH = 1.10
RSS_SLACK_KB = 1024
# Of the connections that offer a session, this share offers none (a new client).
NEW_CLIENT_SHARE = 0.2
SAMPLE_S = 2.0
# A process's samples from its first seconds are left out of the windows: a worker opens its
# Redis connection and allocates its first handshakes' memory then (a step, not a leak).
WARM_S = 5.0
# Client errors this soon after a SIGKILL of one of that server's workers are the killed
# worker's connections (a reset or EOF): reported apart from the others.
KILL_GRACE_S = 2.0
CRASH_WORDS = ("panicked", "core dumped", "Segmentation fault", "Aborted", "abort()", "double free",
               "AddressSanitizer", "stack smashing")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    p.add_argument("--server", required=True, help="build/prefork_server (or a patched copy)")
    p.add_argument("--cli", required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--nginx-module", required=True)
    p.add_argument("--apache-module", required=True)
    p.add_argument("--threads", type=int, default=int(os.environ.get("SOAK_THREADS", "2")),
                   help="client threads per server (the example servers share theirs)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


class Schedule:
    """The disruptions' periods in seconds, scaled down for short runs so that a 1-minute
    soak still does each at least once."""

    def __init__(self, duration):
        self.kill = min(15.0, duration / 6)
        self.cli = min(10.0, duration / 6)
        self.reload = min(60.0, duration / 2.5)
        self.flush = min(60.0, duration / 2.5)
        # Redis restarts fall between the two windows (a worker without its Redis connection
        # would have one descriptor fewer in that window).
        self.redis = min(180.0, duration * 0.3)
        # Resumption is reported per bucket: per minute, per 10 s in a short run.
        self.bucket = 60.0 if duration >= 180 else 10.0
        # RSS and descriptors: the first and the last window are compared.
        self.window = min(60.0, duration / 4)


class Record:
    """What the clients and the disruptions saw, per server, under one lock."""

    def __init__(self, start, bucket):
        self.start = start
        self.bucket = bucket
        self.lock = threading.Lock()
        self.servers = {}
        self.kills = {}  # server -> [(monotonic time, pid)]
        self.events = []  # (seconds since start, what, detail)

    def server(self, name):
        return self.servers.setdefault(name, {"handshakes": 0, "full": 0, "resumed": 0, "offered": 0,
                                              "errors": {}, "errors_after_kill": 0, "latencies": [],
                                              "buckets": {}, "hangs": 0})

    def connection(self, name, t0, latency, offered, reused):
        with self.lock:
            s = self.server(name)
            s["handshakes"] += 1
            s["resumed" if reused else "full"] += 1
            s["latencies"].append(latency)
            if latency > HANG_BOUND_S:
                s["hangs"] += 1
            if offered:
                s["offered"] += 1
                b = s["buckets"].setdefault(int((t0 - self.start) // self.bucket), [0, 0])
                b[0] += 1
                b[1] += int(bool(reused))

    def error(self, name, t0, kind):
        with self.lock:
            s = self.server(name)
            s["errors"][kind] = s["errors"].get(kind, 0) + 1
            if kind == "timeout":
                s["hangs"] += 1
            if any(0 <= t0 - t <= KILL_GRACE_S or 0 <= t - t0 <= KILL_GRACE_S for t, _ in self.kills.get(name, ())):
                s["errors_after_kill"] += 1

    def killed(self, name, pid):
        with self.lock:
            self.kills.setdefault(name, []).append((time.monotonic(), pid))

    def killed_pids(self, name):
        with self.lock:
            return {pid for _, pid in self.kills.get(name, ())}

    def event(self, what, detail=""):
        with self.lock:
            self.events.append((round(time.monotonic() - self.start, 1), what, detail))
        print(f"[{time.monotonic() - self.start:6.1f} s] {what} {detail}", flush=True)


def error_kind(e):
    """A short name for a client-side failure (no addresses, no data)."""
    if isinstance(e, TimeoutError) or "timed out" in str(e):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return f"ssl: {e.reason or type(e).__name__}"
    if isinstance(e, OSError):
        return type(e).__name__
    return f"{type(e).__name__}: {str(e)[:60]}"


class Fleet:
    """The servers under the soak, started and stopped together: nginx, Apache, and example
    servers A and B on one Redis, each with a named segment the CLI reads."""

    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="shmsess-soak-")
        self.nginx = Nginx(args.nginx_module, args.certs, "    shmsess_session_cache {root}/nginx.sess 8m;",
                           workers=2, log_level="notice")
        self.apache = Apache(args.apache_module, args.certs, "shmsess:{root}/apache.sess(8M)", workers=4,
                             max_conn=0, ssl_level="warn")
        self.redis = Redis()
        self.key = os.path.join(self.tmp, "remote.key")
        write_key(self.key, new_key())
        self.example = {}

    def start(self):
        self.redis.start()
        self.nginx.start()
        self.apache.start()
        for name in ("example-a", "example-b"):
            seg = os.path.join(self.tmp, f"{name}.sess")
            self.example[name] = Server(self.args.server, self.args.certs, 3,
                                        ["--cache-path", seg, "--tls13-stateful", "--remote", self.redis.url,
                                         "--remote-key", self.key], own_session=True).start()
        return self

    def segments(self):
        """{server: named segment path}."""
        segs = {"nginx": os.path.join(self.nginx.root, "nginx.sess"),
                "apache": os.path.join(self.apache.root, "apache.sess")}
        segs.update({name: os.path.join(self.tmp, f"{name}.sess") for name in self.example})
        return segs

    def targets(self):
        """(server name, port, path) of every server a client can reach."""
        return [("nginx", self.nginx.port, "/"), ("apache", self.apache.port, "/index.html"),
                *[(name, s.port, "/") for name, s in self.example.items()]]

    def masters(self):
        """{server: pid of the process that forks its workers}."""
        return {"nginx": self.nginx.master, "apache": self.apache.proc.pid,
                **{name: s.proc.pid for name, s in self.example.items()}, "redis": self.redis.proc.pid}

    def workers(self, name):
        if name == "redis":
            return []
        return process.children(self.masters()[name])

    def masters_alive(self):
        return {"nginx": self.nginx.master_alive(), "apache": self.apache.alive(),
                **{name: s.proc.poll() is None for name, s in self.example.items()}}

    def restart_redis(self):
        port = self.redis.port
        self.redis.stop()
        self.redis.cleanup()
        self.redis = Redis(port=port).start()

    def logs(self):
        """{server: everything it logged this run}."""
        return {"nginx": self.nginx.error_log() + self.nginx.stderr_text(), "apache": self.apache.error_log(),
                **{name: s.out.text() + s.err.text() for name, s in self.example.items()}}

    def stop(self):
        for s in self.example.values():
            try:
                s.stop()
            except RuntimeError as e:
                print(f"example server: {e}", file=sys.stderr)
        self.apache.stop()
        self.nginx.stop()
        self.redis.stop()
        self.redis.cleanup()

    def cleanup(self):
        self.apache.cleanup()
        self.nginx.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def client_loop(targets, record, stop, seed):
    """One client thread: connections to `targets` (picked at random each time: the example
    servers A and B share a thread, so a session made on one is offered to the other through
    Redis), TLS 1.2 or 1.3 at random, offering the session the previous connection of that
    version left unless this connection plays a new client."""
    rng = random.Random(seed)
    ctx = {v: client_context(v, no_ticket=True) for v in (TLS12, TLS13)}
    sessions = {}
    while not stop.is_set():
        name, port, path = rng.choice(targets)
        version = rng.choice((TLS12, TLS13))
        offer = sessions.get(version) if rng.random() >= NEW_CLIENT_SHARE else None
        t0 = time.monotonic()
        try:
            status, _, reused, session = http_get(port, ctx[version], path, session=offer)
            if status != 200:
                raise RuntimeError(f"HTTP status {status}")
        except Exception as e:  # every failure is counted by kind; the loop goes on
            record.error(name, t0, error_kind(e))
            sessions.pop(version, None)
            continue
        record.connection(name, t0, time.monotonic() - t0, offer is not None, reused)
        sessions[version] = session


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# The workers' mean fewest descriptors may differ by this between the windows: nginx's workers
# vary by one from one life to the next (a short run failed on "nginx workers: mean
# descriptors 10.00 -> 10.67"; nginx passes each worker the channel sockets of its siblings as
# they are respawned). A leak grows without bound; each process is also judged by itself.
ROLE_FD_STEP = 1.0
# The example servers' workers open up to two connections to Redis (the handshake's lookups
# and the writer thread's stores), each when first needed and again after Redis came back: a
# worker has 0, 1 or 2 of them at any time. They are counted apart, and bounded by this.
MAX_REDIS_CONNECTIONS = 2


TCP_ESTABLISHED = "01"


def tcp_sockets(redis_port, server_ports):
    """From /proc/net/tcp, the inodes of (the sockets connected to Redis, the established
    connections clients made to the servers). The latter are the load in flight, left out of
    the descriptor count so that its fewest is the process's own; a connection a server
    leaks is left by the client and so no longer established (CLOSE_WAIT): still counted."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    port = lambda address: int(address.split(":")[1], 16)  # noqa: E731
    return ({r[9] for r in rows if port(r[2]) == redis_port},
            {r[9] for r in rows if port(r[1]) in server_ports and r[3] == TCP_ESTABLISHED})


def proc_sample(pid, redis_inodes=frozenset(), client_inodes=frozenset()):
    """(age in s, anonymous RSS kB, VmRSS kB, open descriptors other than connections to
    Redis and clients' connections in flight, connections to Redis) of `pid`, or None once
    it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        kb = {k: int(v) for k, v in re.findall(r"^(VmRSS|RssAnon):\s+(\d+)", status, re.M)}
        with open(f"/proc/{pid}/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / CLOCK_TICKS
        with open("/proc/uptime") as f:
            age = float(f.read().split()[0]) - started
        fd_dir = f"/proc/{pid}/fd"
        links = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        sockets = [link[8:-1] for link in links if link.startswith("socket:[")]
        to_redis = sum(1 for inode in sockets if inode in redis_inodes)
        in_flight = sum(1 for inode in sockets if inode in client_inodes)
        return age, kb["RssAnon"], kb["VmRSS"], len(links) - to_redis - in_flight, to_redis
    except (OSError, KeyError, IndexError, ValueError):
        return None


def sampler(fleet, record, stop, samples):
    """Every SAMPLE_S: RSS and descriptors of every master and worker, from /proc."""
    while not stop.wait(SAMPLE_S):
        t = time.monotonic() - record.start
        to_redis, in_flight = tcp_sockets(fleet.redis.port, {port for _, port, _ in fleet.targets()})
        for name, master in fleet.masters().items():
            for role, pids in (("master", [master]), ("worker", fleet.workers(name))):
                for pid in pids:
                    s = proc_sample(pid, to_redis, in_flight)
                    if s:
                        samples.append((t, name, role, pid, *s))


class Disruptions:
    """The operator's and the crash's actions at their intervals, one at a time."""

    def __init__(self, fleet, record, schedule, rng, cli):
        self.fleet, self.record, self.schedule, self.rng, self.cli_path = fleet, record, schedule, rng, cli
        self.cli_runs = {}  # "stat ok", "flush refused (mapped by another user)", ...
        self.stats = {}  # server -> the segment's last `stat --json`
        self.first_stats = {}

    def run(self, stop, duration):
        due = {"kill": self.schedule.kill, "cli": self.schedule.cli / 2, "reload": self.schedule.reload / 2,
               "flush": self.schedule.flush * 0.75, "redis": duration * 0.4}
        period = {"kill": self.schedule.kill, "cli": self.schedule.cli, "reload": self.schedule.reload,
                  "flush": self.schedule.flush, "redis": self.schedule.redis}
        while True:
            what = min(due, key=due.get)
            if stop.wait(max(0.0, self.record.start + due[what] - time.monotonic())):
                return
            try:
                getattr(self, what)()
            except Exception as e:  # a failed disruption is reported, and fails the verdict
                self.record.event(f"{what} FAILED", f"{type(e).__name__}: {str(e)[:300]}")
                self.count(f"{what} failed")
            due[what] += period[what]

    def count(self, what):
        self.cli_runs[what] = self.cli_runs.get(what, 0) + 1

    def kill(self):
        """SIGKILL one worker of each server (a crash in the middle of whatever it did), never
        its oldest: that one lives until the next reload (the example servers have none, so
        theirs lives the whole run), and a leak in a worker shows in its own first and last
        window, not only in the workers' mean."""
        for name in ("nginx", "apache", *self.fleet.example):
            pids = sorted(self.fleet.workers(name), key=lambda p: -(proc_sample(p) or (0,))[0])
            if len(pids) < 2:
                continue
            pid = self.rng.choice(pids[1:])
            self.record.killed(name, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited on its own meanwhile (an Apache child after a graceful)
        self.record.event("kill", "one worker of each server")

    def reload(self):
        """nginx -s reload and apachectl graceful (the configuration test first); the example
        server has no reload: SIGUSR1 makes it print its statistics, the operator's read."""
        self.fleet.nginx.reload()
        rc, text = self.fleet.apache.operator_graceful()
        if rc != 0:
            raise RuntimeError(f"apache2 -t failed: {text}")
        for s in self.fleet.example.values():
            s.proc.send_signal(signal.SIGUSR1)
        self.record.event("reload", "nginx -s reload, apache graceful, example SIGUSR1")

    def run_cli(self, *argv):
        t0 = time.monotonic()
        out = subprocess.run([self.cli_path, *argv], capture_output=True, text=True, timeout=60)
        return out, time.monotonic() - t0

    def cli(self):
        """`shmsesscache stat --json` and `list` on every named segment."""
        slowest = 0.0
        for name, seg in self.fleet.segments().items():
            out, took = self.run_cli("stat", "--json", seg)
            slowest = max(slowest, took)
            if out.returncode == 0:
                self.stats[name] = json.loads(out.stdout)
                self.first_stats.setdefault(name, self.stats[name])
                self.count("stat ok")
            else:
                self.count(f"stat rc={out.returncode}")
                self.record.event("stat failed", f"{name}: {out.stderr.strip()[:200]}")
            out, took = self.run_cli("list", seg)
            slowest = max(slowest, took)
            self.count("list ok" if out.returncode == 0 else f"list rc={out.returncode}")
        self.record.event("cli", f"stat+list on {len(self.fleet.segments())} segments, slowest {slowest:.2f} s")

    def flush(self):
        """`shmsesscache flush --expired` on every named segment. nginx's and Apache's are
        mapped by workers of another user (nobody, www-data): the tool refuses those, as
        documented; the example servers' run as root, like the tool."""
        done = []
        for name, seg in self.fleet.segments().items():
            out, _ = self.run_cli("flush", seg, "--expired")
            if out.returncode == 0:
                self.count("flush --expired ok")
                done.append(f"{name}: {out.stdout.strip()}")
            elif "of another user" in out.stderr:
                self.count("flush --expired refused (workers of another user map it)")
            else:
                self.count(f"flush rc={out.returncode}")
                self.record.event("flush failed", f"{name}: {out.stderr.strip()[:200]}")
        self.record.event("flush", "; ".join(done))

    def redis(self):
        t0 = time.monotonic()
        self.fleet.restart_redis()
        self.record.event("redis restart", f"{time.monotonic() - t0:.2f} s")


def window_figures(samples, lo, hi):
    """{(server, role, pid): (median anonymous RSS kB, fewest descriptors, median VmRSS kB)}
    over the samples in [lo, hi] taken after the process's first WARM_S (descriptors without
    the connections to Redis)."""
    by = {}
    for t, name, role, pid, age, rss, vmrss, fds, _ in samples:
        if lo <= t <= hi and age >= WARM_S:
            by.setdefault((name, role, pid), []).append((rss, fds, vmrss))
    return {k: (statistics.median(x[0] for x in v), min(x[1] for x in v), statistics.median(x[2] for x in v))
            for k, v in by.items()}


def rss_bounded(first, last):
    return last <= first * RSS_GROWTH + RSS_SLACK_KB


def drift(samples, duration, window):
    """Per server and role: RSS and descriptors in the first and the last window (per process
    seen in both, and the mean over the role's processes), and the processes over the bounds."""
    first = window_figures(samples, 0, window)
    last = window_figures(samples, duration - window, duration + SAMPLE_S)
    out, failures = {}, []
    most = {}
    for _, name, role, pid, _, _, _, _, to_redis in samples:
        most[name] = max(most.get(name, 0), to_redis)
        line = f"{name} {role} {pid}: {to_redis} connections to Redis"
        if to_redis > MAX_REDIS_CONNECTIONS and name != "redis" and line not in failures:
            failures.append(line)
    out["connections to Redis, most per process"] = most
    for key in sorted(set(first) | set(last)):
        name, role, pid = key
        d = out.setdefault(f"{name} {role}", {"both": 0, "first": [], "last": [], "per_process": []})
        if key in first:
            d["first"].append(first[key])
        if key in last:
            d["last"].append(last[key])
        if key in first and key in last:
            (r0, f0, v0), (r1, f1, v1) = first[key], last[key]
            d["both"] += 1
            d["per_process"].append({"pid": pid, "rss_kb": [r0, r1], "vmrss_kb": [v0, v1], "fds": [f0, f1]})
            if name == "redis":
                continue  # not this project's: reported, not judged
            if f1 > f0:
                failures.append(f"{name} {role} {pid}: descriptors {f0} -> {f1}")
            if not rss_bounded(r0, r1):
                failures.append(f"{name} {role} {pid}: RSS {r0:.0f} -> {r1:.0f} kB")
    for role, d in out.items():
        if "first" in d and d["first"] and d["last"]:
            r0, f0, v0 = (statistics.mean(x[i] for x in d["first"]) for i in (0, 1, 2))
            r1, f1, v1 = (statistics.mean(x[i] for x in d["last"]) for i in (0, 1, 2))
            d["mean"] = {"rss_kb": [round(r0), round(r1)], "vmrss_kb": [round(v0), round(v1)],
                         "fds": [round(f0, 2), round(f1, 2)]}
            if role.startswith("redis"):
                continue  # a restarted Redis is another process, holding more data: not judged
            if f1 > f0 + ROLE_FD_STEP:
                failures.append(f"{role}s: mean descriptors {f0:.2f} -> {f1:.2f}")
            if not rss_bounded(r0, r1):
                failures.append(f"{role}s: mean RSS {r0:.0f} -> {r1:.0f} kB")
        d.pop("first", None), d.pop("last", None)
    return out, failures


def crashes(fleet, record, alive):
    """Every sign of a crash: a master gone, a worker dead that the soak did not kill, a crash
    line in a log."""
    found = [f"{name}: master gone" for name, ok in alive.items() if not ok]
    died = {"nginx": r"worker process (\d+) exited on signal (\d+)",
            "apache": r"child pid (\d+) exit signal [^(]*\((\d+)\)",
            "example": r"worker (\d+) killed by signal (\d+)"}
    for name, text in fleet.logs().items():
        pattern = died["example" if name.startswith("example") else name]
        killed = record.killed_pids(name)
        for pid, sig in re.findall(pattern, text):
            if int(pid) not in killed:
                found.append(f"{name}: worker {pid} died of signal {sig}, not killed by the soak")
        for pid in re.findall(r"worker (\d+) exited with (\d+)", text) if name.startswith("example") else ():
            found.append(f"{name}: worker {pid[0]} exited with {pid[1]}")
        for line in text.splitlines():
            if any(w in line for w in CRASH_WORDS):
                found.append(f"{name}: {line.strip()[:200]}")
    return found


LOCK_FIELDS = ("lock_owner_died", "dirty_repairs", "lock_resets")


def summarize(record, dis, drift_out, duration):
    out = {}
    for name, s in sorted(record.servers.items()):
        lat = sorted(s["latencies"])
        buckets = [(k * record.bucket, v[1] / v[0] if v[0] else None, v[0]) for k, v in sorted(s["buckets"].items())]
        out[name] = {
            "handshakes": s["handshakes"], "per_s": round(s["handshakes"] / duration, 1),
            "full": s["full"], "resumed": s["resumed"], "offered": s["offered"],
            "resumed_of_offered": round(s["resumed"] / s["offered"], 4) if s["offered"] else None,
            "errors": s["errors"], "errors_within_2s_of_a_kill": s["errors_after_kill"],
            "latency_ms": {"p50": round(1000 * lat[len(lat) // 2], 1) if lat else None,
                           "p99": round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None,
                           "max": round(1000 * lat[-1], 1) if lat else None},
            "hangs": s["hangs"],
            "resumption_per_bucket": [{"from_s": int(t), "ratio": None if r is None else round(r, 3), "offered": n}
                                      for t, r, n in buckets],
            "kills": len(record.kills.get(name, ())),
            "locks": {f: [dis.first_stats.get(name, {}).get(f), dis.stats.get(name, {}).get(f)] for f in LOCK_FIELDS},
            "segment": {f: dis.stats.get(name, {}).get(f) for f in ("entries", "capacity", "stores", "hits", "misses")},
        }
    return out


def print_report(summary, drift_out, dis, verdict, schedule, minutes):
    print(f"\n=== soak: {minutes:g} min, resumption per {schedule.bucket:.0f} s, drift windows {schedule.window:.0f} s ===")
    for name, s in summary.items():
        print(f"\n{name}: {s['handshakes']} handshakes ({s['per_s']}/s), {s['resumed']} resumed of {s['offered']} "
              f"offered ({s['resumed_of_offered']}), latency p50 {s['latency_ms']['p50']} ms p99 "
              f"{s['latency_ms']['p99']} ms max {s['latency_ms']['max']} ms, {s['kills']} workers killed")
        print(f"  errors: {s['errors'] or 'none'} ({s['errors_within_2s_of_a_kill']} within {KILL_GRACE_S:.0f} s of a kill)")
        print("  resumed/offered per bucket: " + " ".join(
            f"{b['from_s']}s:{b['ratio']}" for b in s["resumption_per_bucket"]))
        print("  locks (first -> last stat): " + ", ".join(f"{f} {v[0]}->{v[1]}" for f, v in s["locks"].items()))
    print(f"\nRSS (kB) and descriptors, first -> last window (a process's first {WARM_S:g} s left out):")
    for role, d in drift_out.items():
        m = isinstance(d, dict) and d.get("mean")
        if m:
            print(f"  {role:18} mean anon RSS {m['rss_kb'][0]} -> {m['rss_kb'][1]} (VmRSS {m['vmrss_kb'][0]} -> "
                  f"{m['vmrss_kb'][1]}), fds {m['fds'][0]} -> {m['fds'][1]}; "
                  f"{d['both']} process(es) in both windows")
    print(f"  connections to Redis, most per process: {drift_out['connections to Redis, most per process']}"
          f" (bound {MAX_REDIS_CONNECTIONS}; not counted in fds)")
    print(f"\nCLI and operator actions: {dis.cli_runs}")
    print("\nverdict:")
    for what, failures in verdict.items():
        print(f"  {what}: {'PASS' if not failures else 'FAIL'}" + "".join(f"\n    {f}" for f in failures[:20]))


def main():
    args = parse_args()
    duration = args.minutes * 60
    schedule = Schedule(duration)
    fleet = Fleet(args).start()
    record = Record(time.monotonic(), schedule.bucket)
    dis = Disruptions(fleet, record, schedule, random.Random(args.seed), os.path.abspath(args.cli))
    stop, samples = threading.Event(), []
    targets = fleet.targets()
    groups = [[t] for t in targets[:2]] + [targets[2:]]
    threads = [threading.Thread(target=client_loop, args=(g, record, stop, args.seed * 1000 + i), daemon=True)
               for i, g in enumerate(x for x in groups for _ in range(args.threads))]
    threads += [threading.Thread(target=sampler, args=(fleet, record, stop, samples), daemon=True),
                threading.Thread(target=dis.run, args=(stop, duration), daemon=True)]
    record.event("start", f"{len(threads) - 2} client threads, {args.minutes:g} min")
    try:
        for t in threads:
            t.start()
        stop.wait(duration)
        stop.set()
        for t in threads:
            t.join(60)
        record.event("end")
        alive = fleet.masters_alive()
        dis.cli()  # the last statistics, after the load
        crash_list = crashes(fleet, record, alive)
    finally:
        stop.set()
        fleet.stop()
        fleet.cleanup()
    drift_out, drift_failures = drift(samples, duration, schedule.window)
    summary = summarize(record, dis, drift_out, duration)
    verdict = {
        "zero crashes": crash_list,
        f"zero hangs (every connection within {HANG_BOUND_S:g} s)":
            [f"{n}: {s['hangs']} connection(s) over the bound or timed out" for n, s in summary.items() if s["hangs"]],
        f"no descriptor growth, RSS last <= {RSS_GROWTH:g} x first + {RSS_SLACK_KB // 1024} MiB": drift_failures,
        "every disruption done": [k for k in dis.cli_runs if "failed" in k],
    }
    print_report(summary, drift_out, dis, verdict, schedule, args.minutes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"minutes": args.minutes, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "servers": summary, "drift": drift_out, "actions": dis.cli_runs, "events": record.events,
                       "verdict": verdict}, f, indent=1)
    failed = any(verdict.values())
    print(f"\nsoak verdict: {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
