#!/usr/bin/env python3
"""`make demo`: the example prefork server with and without the shared cache, real clients.

1. Starts build/prefork_server (4 workers, anonymous shared segment, stateful TLS 1.3 tickets)
   on 127.0.0.1.
2. Resumes with `openssl s_client -reconnect -tls1_2`, then 50 reconnections each with
   Python's ssl module over TLS 1.2 and TLS 1.3, and reports how many were resumed and by which
   worker pids.
3. Prints the cache statistics, then does the same with --no-cache, and stops everything.
"""

import argparse
import os
import ssl
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness.prefork import Server, reconnect_run, s_client_reconnect, summarize  # noqa: E402

COUNT = 50


def run(server, certs, extra, title):
    print(f"\n=== {title} ===")
    with Server(server, certs, 4, extra) as srv:
        print(f"server on 127.0.0.1:{srv.port}, workers {srv.worker_pids()}")
        words = s_client_reconnect(srv.port)
        print(f"openssl s_client -reconnect -tls1_2 -no_ticket: {' '.join(words)}")
        ratios = {}
        for label, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3", ssl.TLSVersion.TLSv1_3)):
            res = reconnect_run(srv.port, version, COUNT, no_ticket=True)
            reused, pids, reused_pids = summarize(res)
            ratios[label] = reused
            print(f"python {label}: {reused}/{COUNT} connections resumed; served by workers {pids}; "
                  f"resumed by workers {reused_pids}")
        stats = srv.stop()
    if stats and "stores" in stats:
        print("cache statistics:")
        keys = ["stores", "lookup_hits", "lookup_misses", "taken", "replaced", "expired", "evicted",
                "remove_hits", "remove_misses", "too_large", "tls13_stateless_skipped", "lock_owner_died",
                "entries", "used_slots", "capacity_slots", "shards"]
        for k in keys:
            print(f"  {k:24} {stats.get(k)}")
    else:
        print("cache statistics: none (OpenSSL's per-process cache)")
    return ratios


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--certs", required=True)
    a = ap.parse_args()
    shared = run(a.server, a.certs, ["--tls13-stateful"], "shared cache (shmsesscache, anonymous segment)")
    alone = run(a.server, a.certs, ["--tls13-stateful", "--no-cache"], "--no-cache (OpenSSL's cache, one per worker)")
    print("\n=== summary ===")
    for label in shared:
        print(f"{label}: resumed {shared[label]}/{COUNT} with the shared cache, {alone[label]}/{COUNT} without")
    print("Without a shared cache a reconnecting client lands on a worker that never saw its session.")


if __name__ == "__main__":
    main()
