"""The capacity part of `make bench` (bench/run.py --only capacity): how many sessions each
server's cache keeps in the same memory, measured with real servers.

Method: K full handshakes on a fresh server, then each kept session offered once by a client
that reads the ServerHello and drops, so the probe stores nothing (bench/capacity.c); tickets
off. "Kept" is what resumes after K far beyond what fits; the "≥ 99% point" the largest K
(on a grid of 2.5% steps below the kept figure) at which at least 99% of the K resume. TLS
1.3 counts clients: each client offers the last of the tickets its full handshake got.

Servers: nginx `ssl_session_cache shared:SSL:<size>` and `shmsess_session_cache anonymous
<size>` (ngx_http_shmsess_module), Apache httpd `SSLSessionCache shmcb:(<bytes>)` and
`shmsess:(<size>)` (mod_socache_shmsess), all with their memory set to the same size.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import apache as apache_harness  # noqa: E402
from harness import nginx as nginx_harness  # noqa: E402

MIB = 1 << 20
# Full handshakes per MiB for the "kept" run: well beyond what any of the caches keeps.
OVERFILL_PER_MIB = {"1.2": 6500, "1.3": 6500, "1.2+cert": 3000}
# The "≥ 99% point" search: fractions of the kept figure, largest first.
GRID = [1.05 - 0.025 * i for i in range(17)]


def nginx_cache(kind, mib):
    if kind == "shmsess":
        return nginx_harness.shmsess_cache("anonymous", f"{mib}m")
    return f"    ssl_session_cache shared:SSL:{mib}m;"


def apache_cache(kind, mib):
    if kind == "shmsess":
        return f"shmsess:({mib}M)"
    return "shmcb:{root}/scache(%d)" % (mib * MIB)


# Each server: how to start it with `mib` MiB of cache, asking client certificates or not.
def nginx_server(a, kind):
    module = os.path.join(a.build, "nginx", "ngx_http_shmsess_module.so")

    def start(mib, cert):
        verify = (f"    ssl_verify_client optional_no_ca;\n    ssl_client_certificate \"{os.path.abspath(a.certs)}/client.pem\";"
                  if cert else "")
        return nginx_harness.Nginx(module, a.certs, nginx_cache(kind, mib) + "\n" + verify, workers=a.nginx_workers,
                                   status=False, log_level="warn")
    return start


def apache_server(a, kind):
    module = os.path.join(a.build, "mod_socache_shmsess.so")

    def start(mib, cert):
        verify = (f"SSLVerifyClient optional_no_ca\nSSLCACertificateFile \"{os.path.abspath(a.certs)}/client.pem\""
                  if cert else "")
        return apache_harness.Apache(module, a.certs, apache_cache(kind, mib), workers=a.apache_workers, max_conn=0,
                                     ssl_level="warn", extra=verify)
    return start


def servers(a):
    """{name: start(mib, cert)} for the servers installed here."""
    out = {}
    if os.access(nginx_harness.NGINX, os.X_OK) and os.path.exists(
            os.path.join(a.build, "nginx", "ngx_http_shmsess_module.so")):
        out["nginx shared:SSL"] = nginx_server(a, "shared")
        out["nginx shmsess"] = nginx_server(a, "shmsess")
    else:
        print("nginx or its module is missing: no nginx capacity figures", file=sys.stderr)
    if apache_harness.apache_binary() and os.path.exists(os.path.join(a.build, "mod_socache_shmsess.so")):
        out["Apache shmcb"] = apache_server(a, "shmcb")
        out["Apache shmsess"] = apache_server(a, "shmsess")
    else:
        print("Apache httpd or its module is missing: no Apache capacity figures", file=sys.stderr)
    return out


def probe(a, start, mib, mode, count):
    """One fresh server, `count` full handshakes, every session offered once: the probe's JSON."""
    proto, cert = mode.split("+")[0], mode.endswith("+cert")
    argv = [os.path.join(a.build, "bench", "capacity"), None, str(count), str(a.capacity_clients), proto]
    if cert:
        argv += [os.path.join(a.certs, "client.pem"), os.path.join(a.certs, "client.key")]
    with start(mib, cert) as server:
        argv[1] = str(server.port)
        # Bounded: every socket operation of the probe has a 5 s timeout; a handshake takes ms.
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60 + count / 50)
    server.cleanup()
    if out.returncode != 0:
        raise RuntimeError(f"capacity probe failed: {out.stderr}")
    r = json.loads(out.stdout)
    if r["failed"] > count // 100:
        raise RuntimeError(f"capacity probe: {r['failed']} of {count} connections failed: {r}")
    return r


def kept_and_99(a, start, mib, mode, search):
    """Sessions kept after overfilling, and (if `search`) the largest K with ≥ 99% resumed."""
    over = probe(a, start, mib, mode, OVERFILL_PER_MIB[mode] * mib)
    row = {"kept": over["resumed"], "overfill": over["count"], "seconds": over["seconds"]}
    if over["resumed"] > 0.9 * over["count"]:
        print(f"  capacity: {over['resumed']} of {over['count']} resumed: not overfilled, raise OVERFILL_PER_MIB",
              file=sys.stderr)
    if search:
        for f in GRID:
            k = int(over["resumed"] * f)
            r = probe(a, start, mib, mode, k)
            if r["resumed"] >= 0.99 * r["offered"] and r["offered"] >= 0.99 * k:
                row.update(point_99=k, point_99_resumed=r["resumed"])
                break
    return row


MODES = {"1.2": "TLS 1.2", "1.3": "TLS 1.3 (clients)", "1.2+cert": "TLS 1.2, P-256 client certificate"}


def capacity(a):
    """Rows {server, mib, mode, kept, per_mib, point_99?}: every server, size and mode."""
    res = []
    for mib in a.capacity_mib:
        for mode in a.capacity_modes:
            for name, start in servers(a).items():
                row = kept_and_99(a, start, mib, mode, search=mib == a.capacity_mib[0])
                row.update(server=name, mib=mib, mode=mode, per_mib=row["kept"] / mib)
                print(f"  capacity {mib} MiB {MODES[mode]:34} {name:18} kept {row['kept']:6} "
                      f"({row['per_mib']:6.0f}/MiB)"
                      + (f"  >=99% up to {row['point_99']}" if "point_99" in row else ""), file=sys.stderr, flush=True)
                res.append(row)
    return res


def lines(rows):
    """The summary table of the capacity part."""
    out = ["13. capacity (K full handshakes, each kept session offered once): sessions kept per MiB "
           "(kept at N MiB), largest K with >= 99% resumed"]
    for x in rows:
        point = f"  >=99% up to {x['point_99']}" if "point_99" in x else ""
        out.append(f"   {x['mib']} MiB {MODES[x['mode']]:34} {x['server']:18} {x['per_mib']:6.0f}/MiB "
                   f"({x['kept']}){point}")
    return out
