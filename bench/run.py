#!/usr/bin/env python3
"""`make bench`: every benchmark side by side in one run, on this machine.

1. handshake cost of the cache (bench/handshake.c: memory BIOs, one process)
2. cache operations, 1/2/4 processes, sharded vs one lock, copy vs i2d/d2i (examples/bench_ops.rs)
3. end to end over loopback: build/prefork_server with shmsesscache, the same server with
   OpenSSL's per-process cache (--no-cache), and nginx (`ssl_session_cache shared:SSL:10m`,
   `ssl_session_tickets off`), 2 and 4 workers, TLS 1.2 and 1.3, one load generator
   (bench/loadgen.c) for all
4. density of real sessions (part of 1) against the documented figures of nginx and shmcb
5. lookup cost as the cache fills and grows (part of 2)
7. Several hosts (the Redis tier): the cost of a lookup per tier and of the new-session
   callback with the tier (writes queued, or awaited) and without it (examples/bench_tiers.rs),
   and two example servers ("hosts", 2 workers each) behind a load generator that picks a
   host at random for every connection, with the tier and without it
6. Apache httpd side by side: the same httpd (mpm_prefork, 4 children), the same load,
   `SSLSessionCache shmcb` vs `shmsess` (both 8 MiB) vs `none`, TLS 1.2 and 1.3
12. Two Apache hosts through one redis-server (`--only apache-fleet`): this provider with
   `ShmsessRemote` vs Debian's `mod_socache_redis`, a load generator picking a host at random
   per connection; handshakes/s and the servers' CPU per 1,000 resumed, runs interleaved
8. nginx side by side: the same nginx binary (Debian's) and workers, the same load,
   `shmsess_session_cache` (ngx_http_shmsess_module) vs `ssl_session_cache shared:SSL:10m` vs
   `ssl_session_cache off`, TLS 1.2 and 1.3: resumed and full handshakes/s and the server's
   CPU (master + workers, from /proc/PID/stat) per 1,000 resumed handshakes

11. The drop-in (`shmsesscache run`): Debian's hitch (4 workers, an HTTP backend on loopback)
   under the drop-in (`--no-tickets`) against hitch alone and against build/prefork_server
   linked with the library (4 workers), and that server with --no-cache under the drop-in
   (the drop-in's own cost, same server): resumed handshakes/s and the server's CPU (master +
   workers; hitch's backend not counted) per 1,000 resumed handshakes, TLS 1.2 and 1.3
13. capacity (bench/capacity.py): sessions each cache keeps in the same memory, nginx
   `shared:SSL` and Apache `shmcb` against shmsesscache in both, TLS 1.2, TLS 1.3 and
   client-certificate sessions, at 1 and 8 MiB (--capacity-mib)

`--only apache` (or another part: handshake, ops, e2e, tiers) runs just that part and keeps the
others' figures from the existing results.json.

Writes bench/results.json and bench/*.png, prints a table. Every figure is the median of
--runs runs, with the runs interleaved so that drift on a shared machine hits all alike.
Servers listen on 127.0.0.1 only; every run is bounded in time.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import apache as apache_harness  # noqa: E402
from harness import nginx as nginx_harness  # noqa: E402
from harness import nginx_stream as nginx_stream_harness  # noqa: E402
from harness.client import free_port  # noqa: E402
from harness.prefork import Server  # noqa: E402
from harness import process  # noqa: E402
from harness import dropin as dropin_harness  # noqa: E402
from harness.redis import Redis, write_key  # noqa: E402
import capacity as capacity_part  # noqa: E402

# Documented densities (shared/reference/anchors.md), sessions of ~160 bytes per MiB.
ANCHOR_DENSITY = {"nginx (64-bit)": 2700, "Apache shmcb": 4650, "HAProxy shctx": 4000, "stud": 1700}


def median(v):
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    ng = shutil.which("nginx")
    ngv = subprocess.run([ng, "-v"], capture_output=True, text=True).stderr.strip() if ng else "not installed"
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(), "openssl": ossl, "nginx": ngv}


def listening(port):
    """The port accepts a TCP connection (nginx prints nothing when ready)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Nginx:
    def __init__(self, certs, workers):
        self.dir = tempfile.mkdtemp(prefix="shmsess-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes {workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/body;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {os.path.abspath(certs)}/server.pem;
        ssl_certificate_key {os.path.abspath(certs)}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets off;
        ssl_session_timeout 2h;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
        self.proc, self.out, _ = process.spawn(["nginx", "-p", self.dir, "-c", conf])

    def __enter__(self):
        try:
            process.wait_until(lambda: listening(self.port), 15.0, "nginx did not start listening",
                               alive=lambda: self.proc.poll() is None)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        process.stop(self.proc, kill_group=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def summary(loads, **labels):
    """One result row: the labels, then medians over the loadgen runs (and the runs)."""
    return {**labels,
            "median_handshakes_per_s": median([r["handshakes_per_s"] for r in loads]),
            "median_resumed_fraction": median([r["resumed_fraction"] for r in loads]),
            "failed": sum(r["failed"] for r in loads),
            "runs": [r["handshakes_per_s"] for r in loads]}


def loadgen(build, port, procs, secs, proto):
    out = subprocess.run([os.path.join(build, "bench", "loadgen"), str(port), str(procs), str(secs), proto],
                         capture_output=True, text=True, timeout=secs + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr}")
    return json.loads(out.stdout)


def end_to_end(a):
    servers = ["shmsesscache", "openssl-per-process", "nginx-shared"]
    if not shutil.which("nginx"):
        print("nginx is not installed: its end-to-end figures are skipped", file=sys.stderr)
        servers.remove("nginx-shared")
    res = []
    for workers in (2, 4):
        for proto in ("1.2", "1.3"):
            runs = {s: [] for s in servers}
            for _ in range(a.runs):
                for s in servers:
                    if s == "nginx-shared":
                        with Nginx(a.certs, workers) as ng:
                            r = loadgen(a.build, ng.port, a.clients, a.e2e_seconds, proto)
                    else:
                        extra = ["--tls13-stateful"] + (["--no-cache"] if s == "openssl-per-process" else [])
                        with Server(os.path.join(a.build, "prefork_server"), a.certs, workers, extra) as srv:
                            r = loadgen(a.build, srv.port, a.clients, a.e2e_seconds, proto)
                    runs[s].append(r)
            for s in servers:
                row = summary(runs[s], server=s, workers=workers, protocol=f"TLS {proto}")
                print(f"  e2e {workers} workers TLS {proto} {s:22} {row['median_handshakes_per_s']:8.0f} hs/s "
                      f"resumed {100 * row['median_resumed_fraction']:5.1f}%", file=sys.stderr, flush=True)
                res.append(row)
    return res


APACHE_CACHES = {"shmsess": "shmsess:(8M)", "shmcb": "shmcb:{root}/scache(8388608)", "none": "none"}


def apache(a):
    """The same httpd and load with each session cache; medians of interleaved runs."""
    module = os.path.join(a.build, "mod_socache_shmsess.so")
    if not (apache_harness.apache_binary() and os.path.exists(module)):
        print("Apache httpd or the module is missing: its figures are skipped", file=sys.stderr)
        return []
    res = []
    for proto in ("1.2", "1.3"):
        runs = {c: [] for c in APACHE_CACHES}
        for _ in range(a.runs):
            for name, spec in APACHE_CACHES.items():
                # No trace logging and no child recycling: only the cache differs.
                with apache_harness.Apache(module, a.certs, spec, workers=a.apache_workers, max_conn=0,
                                           ssl_level="warn") as httpd:
                    r = loadgen(a.build, httpd.port, a.clients, a.e2e_seconds, proto)
                httpd.cleanup()
                runs[name].append(r)
        for name in APACHE_CACHES:
            row = summary(runs[name], cache=name, workers=a.apache_workers, protocol=f"TLS {proto}")
            print(f"  apache TLS {proto} {name:8} {row['median_handshakes_per_s']:8.0f} hs/s "
                  f"resumed {100 * row['median_resumed_fraction']:5.1f}%", file=sys.stderr, flush=True)
            res.append(row)
    return res


NGINX_CACHES = {"shmsess": nginx_harness.shmsess_cache("anonymous", "10m"),
                "shared:SSL": nginx_harness.NGINX_SHARED, "off": nginx_harness.NO_CACHE}


def cpu_seconds(pids):
    """User + system CPU seconds the processes have used so far (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: its CPU is lost, which only flatters that run
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def nginx_row(runs, **labels):
    row = summary(runs, **labels)
    resumed = [r["handshakes"] * r["resumed_fraction"] for r in runs]
    row["median_resumed_per_s"] = median([r["handshakes_per_s"] * r["resumed_fraction"] for r in runs])
    row["median_full_per_s"] = median([r["handshakes_per_s"] * (1 - r["resumed_fraction"]) for r in runs])
    row["median_cpu_ms_per_1000_handshakes"] = median(
        [1e6 * r["server_cpu_s"] / r["handshakes"] for r in runs if r["handshakes"]])
    per_resumed = [1e6 * r["server_cpu_s"] / n for r, n in zip(runs, resumed) if n >= 1]
    row["median_cpu_ms_per_1000_resumed"] = median(per_resumed) if per_resumed else None
    row["cpu_ms_per_1000_resumed_runs"] = [round(c, 1) for c in per_resumed]
    return row


def interleaved_nginx(a, caches, start, port_of, what):
    """The same load on nginx with each of `caches` ({name: configuration text}): `start(text)`
    makes the Nginx, `port_of(ng)` the port to load. Runs interleaved (cache A, B, C, A, B,
    C, ...), so a slower moment of the machine is shared; medians per cache and protocol."""
    res = []
    for proto in ("1.2", "1.3"):
        runs = {c: [] for c in caches}
        for _ in range(a.runs):
            for name, text in caches.items():
                with start(text) as ng:
                    pids = [ng.proc.pid] + ng.worker_pids()
                    before = cpu_seconds(pids)
                    r = loadgen(a.build, port_of(ng), a.clients, a.e2e_seconds, proto)
                    r["server_cpu_s"] = cpu_seconds(pids) - before
                ng.cleanup()
                runs[name].append(r)
        for name in caches:
            row = nginx_row(runs[name], cache=name, workers=a.nginx_workers, protocol=f"TLS {proto}")
            cpu = row["median_cpu_ms_per_1000_resumed"]
            print(f"  {what} TLS {proto} {name:10} {row['median_handshakes_per_s']:8.0f} hs/s "
                  f"resumed {row['median_resumed_per_s']:7.0f}/s "
                  f"cpu/1000 resumed {'-' if cpu is None else f'{cpu:.0f} ms'}", file=sys.stderr, flush=True)
            res.append(row)
    return res


def nginx(a):
    """The same nginx and load with each session cache of the http block."""
    module = os.path.join(a.build, "nginx", "ngx_http_shmsess_module.so")
    if not (os.access(nginx_harness.NGINX, os.X_OK) and os.path.exists(module)):
        print("nginx or the module is missing (make nginx-module): its figures are skipped", file=sys.stderr)
        return []

    def start(http):
        return nginx_harness.Nginx(module, a.certs, http, workers=a.nginx_workers, status=False, log_level="warn")
    return interleaved_nginx(a, NGINX_CACHES, start, lambda ng: ng.port, "nginx")


STREAM_CACHES = {"shmsess": "    shmsess_session_cache anonymous 10m;",
                 "shared:STREAM": "    ssl_session_cache shared:STREAM:10m;", "off": nginx_harness.NO_CACHE}


def nginx_stream(a):
    """The same load on nginx's stream block (the server that answers and closes) with each
    session cache of the stream block; the http block has none."""
    here = os.path.join(a.build, "nginx")
    http_module, stream_module = (os.path.join(here, f"ngx_{m}_shmsess_module.so") for m in ("http", "stream"))
    debian = [m for m in nginx_stream_harness.STREAM_MODULES if os.path.exists(m)]
    if not (os.access(nginx_harness.NGINX, os.X_OK) and os.path.exists(stream_module) and debian):
        print("nginx's stream module (libnginx-mod-stream) or ours (make nginx-module) is missing: "
              "the stream figures are skipped", file=sys.stderr)
        return []

    def start(cache):
        return nginx_harness.Nginx(http_module, a.certs, "", workers=a.nginx_workers, status=False,
                                   log_level="warn", modules=(*debian, stream_module),
                                   main=nginx_stream_harness.stream_block(cache, 1),
                                   ports=nginx_stream_harness.STREAM_PORTS)
    return interleaved_nginx(a, STREAM_CACHES, start, lambda ng: ng.ports["return"], "stream")


def dropin_server(a, name, workers):
    """A started server for the drop-in part: (context manager, pids whose CPU counts)."""
    if name.startswith("example server"):
        dropped_in = name == "example server + drop-in"
        extra = ["--tls13-stateful"] + (["--no-cache"] if dropped_in else [])
        srv = Server(os.path.join(a.build, "prefork_server"), a.certs_for_nobody, workers, extra)
        if dropped_in:
            # The same server without its own shmsess_install: the drop-in installs instead.
            srv.cmd = [os.path.join(a.build, "shmsesscache"), "run", "--", *srv.cmd]
        if os.geteuid() == 0:
            # Its workers never drop root, and the drop-in serves no root process: both
            # variants run as nobody.
            srv.cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *srv.cmd]
        srv.start()
        return srv, lambda: [srv.proc.pid] + process.children(srv.proc.pid)
    cli = os.path.join(a.build, "shmsesscache") if name == "hitch + drop-in" else None
    h = dropin_harness.Hitch(cli=cli, run_args=["--no-tickets"] if cli else [], certs=a.certs)
    h.http_backend = True
    h.start()
    return h, h.session_pids


def dropin(a):
    """hitch under the drop-in, hitch alone, the example server linked with the library: the
    same load, runs interleaved; CPU of the server's processes per 1,000 resumed handshakes."""
    if not shutil.which("hitch"):
        print("hitch is not installed (make test-deps): the drop-in figures are skipped", file=sys.stderr)
        return []
    names = ["hitch + drop-in", "hitch alone", "example server (linked)", "example server + drop-in"]
    res = []
    a.certs_for_nobody = tempfile.mkdtemp(prefix="shmsess-bench-certs-")
    for f in ("server.pem", "server.key"):  # the throw-away test key, readable by nobody
        shutil.copy(os.path.join(a.certs, f), a.certs_for_nobody)
        os.chmod(os.path.join(a.certs_for_nobody, f), 0o644)
    os.chmod(a.certs_for_nobody, 0o755)
    for proto in ("1.2", "1.3"):
        runs = {n: [] for n in names}
        for _ in range(a.runs):
            for name in names:
                srv, pids = dropin_server(a, name, 4)
                try:
                    before = cpu_seconds(pids())
                    r = loadgen(a.build, srv.port, a.clients, a.e2e_seconds, proto)
                    r["server_cpu_s"] = cpu_seconds(pids()) - before
                finally:
                    srv.__exit__()
                runs[name].append(r)
        for name in names:
            row = nginx_row(runs[name], server=name, workers=4, protocol=f"TLS {proto}")
            cpu = row["median_cpu_ms_per_1000_resumed"]
            print(f"  drop-in TLS {proto} {name:24} {row['median_handshakes_per_s']:8.0f} hs/s "
                  f"resumed {row['median_resumed_per_s']:7.0f}/s "
                  f"cpu/1000 resumed {'-' if cpu is None else f'{cpu:.0f} ms'}", file=sys.stderr, flush=True)
            res.append(row)
    shutil.rmtree(a.certs_for_nobody, ignore_errors=True)
    return res


def tiers(a):
    """Lookup cost per tier, then two hosts with and without the tier."""
    if not shutil.which("redis-server"):
        print("redis-server is missing: the tier figures are skipped", file=sys.stderr)
        return {}
    tmp = tempfile.mkdtemp(prefix="shmsess-bench-")
    key = os.path.join(tmp, "key")
    write_key(key, os.urandom(32).hex())
    out = {"two_hosts": []}
    try:
        with Redis() as redis:
            res = subprocess.run([a.tiers, redis.url, key, str(a.seconds), str(a.runs)], capture_output=True,
                                 text=True, check=True)
            out["lookup"] = json.loads(res.stdout)
            redis.cli("FLUSHALL")
            server = os.path.join(a.build, "prefork_server")
            for proto in ("1.2", "1.3"):
                runs = {"tier": [], "no tier": []}
                for _ in range(a.runs):
                    for mode in runs:
                        extra = ["--tls13-stateful"]
                        if mode == "tier":
                            extra += ["--remote", redis.url, "--remote-key", key]
                        with Server(server, a.certs, 2, extra) as h1, Server(server, a.certs, 2, extra) as h2:
                            r = loadgen(a.build, f"{h1.port},{h2.port}", a.clients, a.e2e_seconds, proto)
                        runs[mode].append(r)
                for mode, rs in runs.items():
                    row = summary(rs, mode=mode, protocol=f"TLS {proto}", hosts=2, workers_per_host=2)
                    print(f"  two hosts TLS {proto} {mode:8} {row['median_handshakes_per_s']:8.0f} hs/s "
                          f"resumed {100 * row['median_resumed_fraction']:5.1f}%", file=sys.stderr, flush=True)
                    out["two_hosts"].append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def apache_fleet_caches(redis, key):
    """What the two Apache hosts share in the fleet part: this provider with its Redis tier, or
    Debian's mod_socache_redis. {name: (SSLSessionCache argument, directives, more modules)}."""
    return {
        "shmsess+redis": ("shmsess:(8M)", f"ShmsessRemote {redis.url}\nShmsessRemoteKey {key}\n", ()),
        "mod_socache_redis": (f"redis:127.0.0.1:{redis.port}", "",
                              (("socache_redis_module", "mod_socache_redis.so"),)),
    }


def apache_fleet(a):
    """Two Apache hosts (mpm_prefork, a.apache_workers children each, one `ServerName` so that
    mod_ssl's session id contexts match) behind a load generator that picks a host at random
    for every connection, sharing one redis-server: this tier vs mod_socache_redis, runs
    interleaved; handshakes/s and the servers' CPU (parents + children) per 1,000 resumed."""
    module = os.path.join(a.build, "mod_socache_shmsess.so")
    redis_mod = os.path.join(apache_harness.modules_dir(), "mod_socache_redis.so")
    if not (apache_harness.apache_binary() and os.path.exists(module) and os.path.exists(redis_mod)
            and shutil.which("redis-server")):
        print("Apache httpd, the module, mod_socache_redis or redis-server is missing: the Apache fleet "
              "figures are skipped", file=sys.stderr)
        return []
    tmp = tempfile.mkdtemp(prefix="shmsess-bench-fleet-")
    key = os.path.join(tmp, "key")
    write_key(key, os.urandom(32).hex())
    res = []
    try:
        with Redis() as redis:
            caches = apache_fleet_caches(redis, key)
            for proto in ("1.2", "1.3"):
                runs = {c: [] for c in caches}
                for _ in range(a.runs):
                    for name, (spec, extra, modules) in caches.items():
                        redis.cli("FLUSHALL")
                        runs[name].append(apache_fleet_run(a, module, spec, extra, modules, proto))
                for name in caches:
                    row = nginx_row(runs[name], cache=name, hosts=2, workers=a.apache_workers,
                                    protocol=f"TLS {proto}")
                    cpu = row["median_cpu_ms_per_1000_resumed"]
                    print(f"  apache fleet TLS {proto} {name:17} {row['median_handshakes_per_s']:8.0f} hs/s "
                          f"resumed {100 * row['median_resumed_fraction']:5.1f}% "
                          f"cpu/1000 resumed {'-' if cpu is None else f'{cpu:.0f} ms'}", file=sys.stderr, flush=True)
                    res.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def apache_fleet_run(a, module, spec, extra, modules, proto):
    """One loadgen run against two fresh hosts: its result, with the hosts' CPU seconds."""
    hosts = []
    try:
        for _ in range(2):
            hosts.append(apache_harness.Apache(module, a.certs, spec, workers=a.apache_workers, max_conn=0,
                                               ssl_level="warn", server_name="fleet.test:443", extra=extra,
                                               modules=modules).start())
        pids = [p for h in hosts for p in [h.proc.pid] + process.children(h.proc.pid)]
        before = cpu_seconds(pids)
        r = loadgen(a.build, ",".join(str(h.port) for h in hosts), a.clients, a.e2e_seconds, proto)
        r["server_cpu_s"] = cpu_seconds(pids) - before
        return r
    finally:
        for h in hosts:
            h.stop()
            h.cleanup()


def apache_fleet_lines(rows):
    """The summary lines of the Apache fleet part (12)."""
    lines = [f"12. two Apache hosts through Redis, {rows[0]['workers']} prefork children each: handshakes/s "
             "(resumed), server CPU ms per 1,000 resumed"]
    for x in rows:
        cpu = x["median_cpu_ms_per_1000_resumed"]
        lines.append(f"   {x['protocol']} {x['cache']:17} {x['median_handshakes_per_s']:7.0f} "
                     f"({100 * x['median_resumed_fraction']:5.1f}%)  {'-' if cpu is None else f'{cpu:6.0f}'}")
    return lines


def plots(r, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    made = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, codec in zip(axes, ("copy", "der")):
        for lock, style in (("sharded", "o-"), ("one_lock", "s--")):
            pts = [o for o in r["ops"]["ops"] if o["codec"] == codec and o["locking"] == lock]
            ax.plot([p["procs"] for p in pts], [p["median_pairs_per_s"] / 1000 for p in pts], style,
                    label="shmsesscache (sharded)" if lock == "sharded" else "same code, one lock (shmcb/nginx design)")
        ax.set_title("store+lookup, " + ("raw copies" if codec == "copy" else "with i2d/d2i"))
        ax.set_xlabel("processes")
        ax.set_ylabel("thousand pairs/s")
        ax.set_xticks([1, 2, 4])
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(f"{r['machine']['cores']} cores, {r['machine']['openssl']} (median of {r['runs']} runs)", fontsize=9)
    fig.tight_layout()
    p = os.path.join(outdir, "ops.png")
    fig.savefig(p, dpi=100)
    made.append(p)

    rows = r["end_to_end"]
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        servers = sorted({x["server"] for x in rows}, key=["shmsesscache", "nginx-shared", "openssl-per-process"].index)
        for ax, proto in zip(axes, ("TLS 1.2", "TLS 1.3")):
            groups = [(w, [x for x in rows if x["workers"] == w and x["protocol"] == proto]) for w in (2, 4)]
            width = 0.8 / len(servers)
            for i, s in enumerate(servers):
                xs = [g + i * width for g in range(len(groups))]
                ys = [next(x["median_handshakes_per_s"] for x in grp if x["server"] == s) for _, grp in groups]
                rs = [next(x["median_resumed_fraction"] for x in grp if x["server"] == s) for _, grp in groups]
                bars = ax.bar(xs, ys, width, label=s)
                for b, rr in zip(bars, rs):
                    ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{100 * rr:.0f}%", ha="center",
                            va="bottom", fontsize=7)
            ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
            ax.set_xticklabels([f"{w} workers" for w, _ in groups])
            ax.set_title(f"{proto}: handshakes/s over loopback (label: resumed)")
            ax.set_ylabel("handshakes/s")
            ax.legend(fontsize=8)
        fig.suptitle(f"{r['machine']['cores']} cores, {r['machine']['openssl']}, {r['machine']['nginx']}, "
                     f"{r['clients']} client processes (median of {r['runs']} runs)", fontsize=9)
        fig.tight_layout()
        p = os.path.join(outdir, "end_to_end.png")
        fig.savefig(p, dpi=100)
        made.append(p)
    return made


def nginx_lines(rows, title):
    """The summary lines of one nginx part (8, 10)."""
    lines = [f"{title}, {rows[0]['workers']} workers: handshakes/s (resumed), resumed/s, full/s, "
             "server CPU ms per 1,000 resumed (per 1,000 handshakes)"]
    for x in rows:
        cpu = x["median_cpu_ms_per_1000_resumed"]
        lines.append(f"   {x['protocol']} {x['cache']:13} {x['median_handshakes_per_s']:7.0f} "
                     f"({100 * x['median_resumed_fraction']:5.1f}%)  {x['median_resumed_per_s']:7.0f}  "
                     f"{x['median_full_per_s']:7.0f}  {'-' if cpu is None else f'{cpu:6.0f}'} "
                     f"({x['median_cpu_ms_per_1000_handshakes']:.0f})")
    return lines


def table(r):
    lines = [f"machine: {r['machine']['cores']} cores, {r['machine']['cpu']}, {r['machine']['openssl']}, "
             f"{r['machine']['nginx']}; medians of {r['runs']} runs", ""]
    hs = r["handshake"]["handshakes"]
    lines.append("1. resumed handshakes/s in one process (memory BIOs)")
    for proto in ("TLS 1.2", "TLS 1.3"):
        v = {x["mode"]: x["median_per_s"] for x in hs if x["protocol"] == proto}
        lines.append(f"   {proto}: OpenSSL internal {v['internal']:7.0f}  shmsesscache {v['shmsesscache']:7.0f} "
                     f"({v['shmsesscache'] / v['internal']:.3f}x internal)  no cache {v['none']:6.0f} "
                     f"(shmsesscache {v['shmsesscache'] / v['none']:.1f}x)")
    lines.append("2. store+lookup pairs/s (thousands), lock wait ns per pair")
    for codec in ("copy", "der"):
        for procs in (1, 2, 4):
            v = {x["locking"]: x for x in r["ops"]["ops"] if x["codec"] == codec and x["procs"] == procs}
            s, o = v["sharded"], v["one_lock"]
            lines.append(f"   {codec:4} {procs} procs: sharded {s['median_pairs_per_s'] / 1e3:7.1f}k "
                         f"(wait {s['median_wait_ns_per_pair']:7.0f} ns)  one lock {o['median_pairs_per_s'] / 1e3:7.1f}k "
                         f"(wait {o['median_wait_ns_per_pair']:7.0f} ns)  ratio {s['median_pairs_per_s'] / o['median_pairs_per_s']:.2f}")
    lines.append("3. end to end over loopback, handshakes/s (resumed)")
    for x in r["end_to_end"]:
        lines.append(f"   {x['workers']} workers {x['protocol']} {x['server']:22} {x['median_handshakes_per_s']:7.0f} "
                     f"({100 * x['median_resumed_fraction']:5.1f}%)")
    lines.append("4. density, sessions per MiB")
    for d in r["handshake"]["density"]:
        lines.append(f"   {d['protocol']}{' + client cert' if d['client_cert'] else '':15} {d['der_bytes']:4} bytes, "
                     f"{d['slots']} slot(s): {d['per_mib']:6.0f}/MiB")
    lines.append("   documented: " + ", ".join(f"{k} ~{v}" for k, v in ANCHOR_DENSITY.items()))
    lines.append("5. lookup ns as the cache fills / grows; memory floor (one random 200-byte read, same "
                 "spread) ns; lookup minus floor")
    for key, label in (("fill", "fill_pct"), ("size", "sessions")):
        for x in r["ops"][key]:
            lines.append(f"   {key} {x[label]:>8}{'%' if key == 'fill' else ' '}: lookup {x['median_lookup_ns']:6.0f}  "
                         f"floor {x['median_memory_floor_ns']:6.0f}  own work {x['median_lookup_ns'] - x['median_memory_floor_ns']:6.0f}"
                         f"  hits {100 * x['hit_fraction']:.1f}%")
    if r.get("apache"):
        lines.append(f"6. Apache httpd {r['apache'][0]['workers']} prefork children, handshakes/s (resumed)")
        for x in r["apache"]:
            lines.append(f"   {x['protocol']} SSLSessionCache {x['cache']:8} {x['median_handshakes_per_s']:7.0f} "
                         f"({100 * x['median_resumed_fraction']:5.1f}%)")
    for key, title in (("nginx", "8. nginx"), ("nginx_stream", "10. nginx stream block")):
        if r.get(key):
            lines += nginx_lines(r[key], title)
    if r.get("apache_fleet"):
        lines += apache_fleet_lines(r["apache_fleet"])
    if r.get("tiers", {}).get("lookup"):
        t = r["tiers"]["lookup"]
        lines.append("7. lookup cost per tier (ns, median): " + ", ".join(
            f"{k} {t[k]['median_ns']:.0f}" for k in ("local_hit", "remote_hit", "miss", "local_store") if k in t))
        if "new_session_async" in t:
            base = t["new_session_local"]["median_ns"]
            lines.append("   new-session callback (ns, median): " + ", ".join(
                f"{name} {t[k]['median_ns']:.0f} ({t[k]['median_ns'] / base:.2f}x)" for name, k in (
                    ("no tier", "new_session_local"), ("tier, queued", "new_session_async"),
                    ("tier, SET awaited", "new_session_sync"))))
        for x in r["tiers"]["two_hosts"]:
            lines.append(f"   two hosts {x['protocol']} {x['mode']:8} {x['median_handshakes_per_s']:7.0f} "
                         f"({100 * x['median_resumed_fraction']:5.1f}%)")
    for x in r.get("dropin", []):
        if x is r["dropin"][0]:
            lines.append("11. the drop-in: resumed/s and server CPU per 1,000 resumed (ms), 4 workers")
        cpu = x["median_cpu_ms_per_1000_resumed"]
        lines.append(f"   {x['protocol']} {x['server']:24} {x['median_resumed_per_s']:7.0f}/s "
                     f"({100 * x['median_resumed_fraction']:5.1f}% resumed)  cpu {'-' if cpu is None else f'{cpu:.0f}'}")
    if r.get("capacity"):
        lines += capacity_part.lines(r["capacity"])
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--certs", default=os.path.join(ROOT, "build", "certs"))
    ap.add_argument("--ops", default=os.path.join(ROOT, "target", "release", "examples", "bench_ops"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="per in-process measurement")
    ap.add_argument("--e2e-seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--apache-workers", type=int, default=4)
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--tiers", default=os.path.join(ROOT, "target", "release", "examples", "bench_tiers"))
    ap.add_argument("--threads-bench", default=os.path.join(ROOT, "target", "release", "examples", "bench_threads"))
    ap.add_argument("--capacity-mib", type=int, nargs="+", default=[1, 8],
                    help="cache sizes of the capacity part; the >= 99%% search runs at the first")
    ap.add_argument("--capacity-modes", nargs="+", default=list(capacity_part.MODES), choices=list(capacity_part.MODES))
    ap.add_argument("--capacity-clients", type=int, default=2, help="client processes of the capacity probe")
    ap.add_argument("--only", choices=["handshake", "ops", "e2e", "apache", "tiers", "threads", "nginx", "stream", "dropin",
                                       "apache-fleet", "capacity"],
                    help="run one part; the others keep their figures from results.json")
    a = ap.parse_args()
    parts = [a.only] if a.only else ["handshake", "ops", "e2e", "apache", "tiers", "threads", "nginx", "stream", "dropin",
                                     "apache-fleet", "capacity"]
    r = {}
    if a.only and os.path.exists(os.path.join(a.out, "results.json")):
        with open(os.path.join(a.out, "results.json")) as f:
            r = json.load(f)
    r.update({"machine": machine(), "runs": a.runs, "clients": a.clients,
              "commands": "make bench (bench/run.py --runs %d --seconds %g --e2e-seconds %g --clients %d)"
                          % (a.runs, a.seconds, a.e2e_seconds, a.clients)})
    if "handshake" in parts:
        print("handshake cost and density ...", file=sys.stderr, flush=True)
        out = subprocess.run([os.path.join(a.build, "bench", "handshake"), a.certs, str(a.seconds), str(a.runs)],
                             capture_output=True, text=True, check=True)
        r["handshake"] = json.loads(out.stdout)
    if "ops" in parts:
        print("cache operations ...", file=sys.stderr, flush=True)
        out = subprocess.run([a.ops, str(a.seconds), str(a.runs)], capture_output=True, text=True, check=True)
        r["ops"] = json.loads(out.stdout)
    if "e2e" in parts:
        print("end to end ...", file=sys.stderr, flush=True)
        r["end_to_end"] = end_to_end(a)
    if "apache" in parts:
        print("Apache httpd: shmcb vs shmsess ...", file=sys.stderr, flush=True)
        r["apache"] = apache(a)
    if "tiers" in parts:
        print("several hosts: the Redis tier ...", file=sys.stderr, flush=True)
        r["tiers"] = tiers(a)
    if "threads" in parts:
        print("threads of one process ...", file=sys.stderr, flush=True)
        out = subprocess.run([a.threads_bench, str(a.seconds), str(a.runs)], capture_output=True, text=True,
                             check=True)
        r["threads"] = json.loads(out.stdout)
    if "nginx" in parts:
        print("nginx: shmsess_session_cache vs shared:SSL vs off ...", file=sys.stderr, flush=True)
        r["nginx"] = nginx(a)
    if "stream" in parts:
        print("nginx stream: shmsess_session_cache vs shared:STREAM vs off ...", file=sys.stderr, flush=True)
        r["nginx_stream"] = nginx_stream(a)
    if "dropin" in parts:
        print("the drop-in: hitch under it, hitch alone, the linked example server ...", file=sys.stderr, flush=True)
        r["dropin"] = dropin(a)
    if "apache-fleet" in parts:
        print("two Apache hosts through Redis: shmsess+redis vs mod_socache_redis ...", file=sys.stderr, flush=True)
        r["apache_fleet"] = apache_fleet(a)
    if "capacity" in parts:
        print("capacity: sessions kept per MiB, nginx and Apache ...", file=sys.stderr, flush=True)
        r["capacity"] = capacity_part.capacity(a)
    r["anchor_density"] = ANCHOR_DENSITY
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(r, f, indent=1)
    r["plots"] = plots(r, a.out)
    print(table(r))
    print(f"\nwrote {os.path.join(a.out, 'results.json')} and {', '.join(r['plots']) or 'no plots'}")


if __name__ == "__main__":
    main()
