#!/usr/bin/env python3
"""Integration: two hosts (example servers) sharing a real 3-master Redis Cluster on 127.0.0.1
(`redis-server --cluster-enabled yes`, `redis-cli --cluster create`), the URL naming one seed
node (host A) or a dead port and then two nodes (host B: several seeds, the first one down),
and `--remote-cluster`:

- sessions cross hosts (>= 38 of 39 resumptions), their keys spread over all three masters;
- a TLS 1.3 ticket resumes once in the pair;
- one master killed: every handshake still completes within the bound, and the masters left
  keep carrying sessions (`cluster-require-full-coverage no`, as a cache should run).
"""

import argparse
import os
import ssl
import time

from harness.checks import check, finish
from harness.client import client_context, free_port
from harness.prefork import Server, one_request
from harness.redis import Cluster, key_dir, request_settled, seg_stats, wait_writes, writes_done

TIMEOUT_MS = 50
# A handshake makes at most two remote operations here (lookup, take); a wide margin.
BOUND_S = 2 * TIMEOUT_MS / 1000 + 1.0
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    with key_dir("shmsess-cluster-") as tmp:
        with Cluster(3) as cluster:
            segs = {h: os.path.join(tmp, f"{h}.seg") for h in "AB"}
            # B's first seed is a port nothing listens on: its workers start without a map and
            # must get it from the next seed.
            seeds = ",".join([f"127.0.0.1:{free_port()}"] + [f"127.0.0.1:{n.port}" for n in cluster.nodes[:2]])
            urls = {"A": cluster.url, "B": f"redis://{seeds}/0"}
            hosts = {h: Server(args.server, args.certs, 2,
                               ["--tls13-stateful", "--cache-path", segs[h], "--remote", urls[h],
                                "--remote-cluster", "--remote-key", os.path.join(tmp, "key"),
                                "--remote-timeout-ms", str(TIMEOUT_MS), "--remote-backoff-ms", "1"])
                     for h in "AB"}
            with hosts["A"], hosts["B"]:
                run(args, cluster, hosts, segs)
    finish()


def run(args, cluster, hosts, segs):
    ctx12 = client_context(TLS12, no_ticket=True)
    ctx13 = client_context(TLS13, no_ticket=True)
    crossed = []
    for i in range(39):
        made, other = ("A", "B") if i % 2 == 0 else ("B", "A")
        _, _, s = request_settled(args.cli, segs[made], hosts[made].port, ctx12)
        crossed.append(one_request(hosts[other].port, ctx12, s)[0])
    check("cluster: sessions cross hosts", sum(crossed) >= 38, f"{sum(crossed)}/39 resumed on the other host")
    per_node = [int(n.cli("DBSIZE").strip()) for n in cluster.nodes]
    check("cluster: the keys are spread over the three masters", all(k > 0 for k in per_node), str(per_node))

    _, _, t = request_settled(args.cli, segs["A"], hosts["A"].port, ctx13)
    uses = [one_request(hosts[h].port, ctx13, t)[0] for h in ("B", "A", "B")]
    check("cluster: a TLS 1.3 ticket from A resumes once on B, then nowhere", uses == [True, False, False], str(uses))
    a, b = seg_stats(args.cli, segs["A"]), seg_stats(args.cli, segs["B"])
    check("cluster: no errors or timeouts while all masters are up",
          all(x[k] == 0 for x in (a, b) for k in ("remote_errors", "remote_timeouts", "remote_dropped")),
          " ".join(f"{k}={a[k] + b[k]}" for k in ("remote_errors", "remote_timeouts", "remote_dropped")))

    cluster.nodes[2].stop()
    worst, failures, resumed = 0.0, [], []
    written = {h: writes_done(args.cli, segs[h]) for h in "AB"}
    for i in range(12):
        made, other = ("A", "B") if i % 2 == 0 else ("B", "A")
        try:
            t0 = time.monotonic()
            _, _, s = one_request(hosts[made].port, ctx12)
            t1 = time.monotonic()
            wait_writes(args.cli, segs[made], written[made] + 1)  # stored (or dropped) by now
            written[made] += 1
            resumed.append(one_request(hosts[other].port, ctx12, s)[0])
            worst = max(worst, t1 - t0, time.monotonic() - t1)
        except OSError as e:
            failures.append(repr(e))
    check("cluster, one master killed: every handshake completes", not failures, str(failures[:2]))
    check("cluster, one master killed: handshakes stay bounded", worst < BOUND_S,
          f"slowest {1000 * worst:.0f} ms (remote timeout {TIMEOUT_MS} ms)")
    # About two thirds of the sessions hash to the masters still up.
    check("cluster, one master killed: the other masters keep carrying sessions across hosts", sum(resumed) >= 1,
          f"{sum(resumed)}/12 resumed on the other host")


if __name__ == "__main__":
    main()
