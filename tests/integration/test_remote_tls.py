#!/usr/bin/env python3
"""Integration: the remote tier over TLS (`rediss://`) to a real `redis-server --tls-port` on
127.0.0.1, with a CA and server certificate generated here.

- two hosts verifying Redis's certificate against the CA resume each other's sessions (by IP
  address and by the name `localhost`, each checked against the certificate's SANs);
- a host given another CA refuses the server: nothing crosses, the refusal is counted and
  logged with the reason, and handshakes stay bounded;
- a certificate from that CA for another name is refused;
- a TLS Redis that hangs (SIGSTOP) in the middle: handshakes stay bounded.
"""

import argparse
import os
import ssl
import time

from harness.checks import check, finish
from harness.client import client_context
from harness.prefork import Server, one_request
from harness.redis import Cluster, Redis, key_dir, make_ca, request_settled, seg_stats, server_cert, wait_writes

TIMEOUT_MS = 50
# Each handshake here makes at most two remote operations (lookup and store); a wide margin.
BOUND_S = 2 * TIMEOUT_MS / 1000 + 1.0
HANDSHAKES = 6


def host(args, tmp, name, url, ca, backoff_ms=1000, workers=2):
    return Server(args.server, args.certs, workers,
                  ["--tls13-stateful", "--cache-path", os.path.join(tmp, f"{name}.seg"), "--remote", url,
                   "--remote-key", os.path.join(tmp, "key"), "--remote-ca", ca,
                   "--remote-timeout-ms", str(TIMEOUT_MS), "--remote-backoff-ms", str(backoff_ms)])


def seg(tmp, name):
    return os.path.join(tmp, f"{name}.seg")


def stats(args, tmp, name):
    return seg_stats(args.cli, seg(tmp, name))


def timed(port, ctx, session=None):
    t0 = time.monotonic()
    reused = one_request(port, ctx, session)
    return reused, time.monotonic() - t0


def verified(args, tmp, redis, ca, host_in_url):
    ctx12 = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
    ctx13 = client_context(ssl.TLSVersion.TLSv1_3, no_ticket=True)
    url = redis.url_for(host_in_url)
    na, nb = f"{host_in_url}-A", f"{host_in_url}-B"
    with host(args, tmp, na, url, ca) as a, host(args, tmp, nb, url, ca) as b:
        _, _, s12 = request_settled(args.cli, seg(tmp, na), a.port, ctx12)
        got = [one_request(p, ctx12, s12)[0] for p in (b.port, a.port, b.port)]
        _, _, t = request_settled(args.cli, seg(tmp, na), a.port, ctx13)
        uses = [one_request(p, ctx13, t)[0] for p in (b.port, a.port)]
        sa, sb = stats(args, tmp, na), stats(args, tmp, nb)
    check(f"TLS to Redis at {host_in_url}: a TLS 1.2 session from A resumes on B", all(got), str(got))
    check(f"TLS to Redis at {host_in_url}: a TLS 1.3 ticket from A resumes once on B", uses == [True, False],
          str(uses))
    trouble = {k: sa[k] + sb[k] for k in ("remote_errors", "remote_timeouts", "remote_rejected")}
    check(f"TLS to Redis at {host_in_url}: stored and found, no errors",
          sa["remote_stores"] > 0 and sb["remote_hits"] >= 2 and not any(trouble.values()),
          f"A stores {sa['remote_stores']}, B hits {sb['remote_hits']}, {trouble}")
    keys = redis.cli("--scan", "--pattern", "shmsess:*").split()
    check("the values went through TLS into Redis", len(keys) >= 2, f"{len(keys)} keys")


def wrong_ca(args, tmp, redis, other_ca):
    ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
    worst = 0.0
    # One worker each: its breaker sees every failure, so it trips and logs the reason.
    with host(args, tmp, "ca-A", redis.url, other_ca, backoff_ms=1, workers=1) as a, \
            host(args, tmp, "ca-B", redis.url, other_ca, backoff_ms=1, workers=1) as b:
        (_, _, s), t0 = timed(a.port, ctx)
        (on_b, _, _), t1 = timed(b.port, ctx, s)
        worst = max(t0, t1)
        for n in range(HANDSHAKES):
            wait_writes(args.cli, seg(tmp, "ca-A"), n + 1)  # one batch at a time: each its own try
            worst = max(worst, timed(a.port, ctx)[1])
        wait_writes(args.cli, seg(tmp, "ca-A"), HANDSHAKES + 1)
        sa, sb = stats(args, tmp, "ca-A"), stats(args, tmp, "ca-B")
    logs = a.stderr + b.stderr
    check("another CA: Redis's certificate is refused, nothing crosses hosts", not on_b, f"resumed {on_b}")
    check("another CA: the refusals are counted (errors, writes dropped, nothing stored)",
          sa["remote_errors"] >= 3 and sa["remote_dropped"] == HANDSHAKES + 1 and sa["remote_stores"] == 0,
          f"A errors {sa['remote_errors']} dropped {sa['remote_dropped']} stores {sa['remote_stores']}, "
          f"B errors {sb['remote_errors']}")
    check("another CA: the log says why", "certificate refused" in logs,
          next((ln for ln in logs.splitlines() if "remote tier" in ln), "no remote tier line"))
    check("another CA: handshakes stay bounded", worst < BOUND_S, f"slowest {1000 * worst:.0f} ms")


def wrong_name(args, tmp, ca, cert, key):
    """A certificate from the right CA for another name: refused (the URL's IP is checked)."""
    ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
    with Redis(tls=(ca, cert, key)) as other:
        with host(args, tmp, "name-A", other.url, ca, backoff_ms=1, workers=1) as a:
            for n in range(HANDSHAKES):
                wait_writes(args.cli, seg(tmp, "name-A"), n)  # one batch at a time
                one_request(a.port, ctx)
            wait_writes(args.cli, seg(tmp, "name-A"), HANDSHAKES)
            st = stats(args, tmp, "name-A")
    logs = a.stderr
    check("a certificate for another name is refused", st["remote_errors"] >= 3 and st["remote_stores"] == 0
          and "certificate refused" in logs, f"errors {st['remote_errors']} stores {st['remote_stores']}; "
          + next((ln.split("last: ")[-1] for ln in logs.splitlines() if "last: " in ln), logs[-300:]))


def hung(args, tmp, redis, ca):
    ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
    worst, failures = 0.0, []
    with host(args, tmp, "hung-A", redis.url, ca, backoff_ms=1) as a:
        request_settled(args.cli, seg(tmp, "hung-A"), a.port, ctx)  # a pooled TLS connection exists now
        # On a loaded machine that first write may itself have timed out: count from here.
        dropped_before = stats(args, tmp, "hung-A")["remote_dropped"]
        redis.pause()
        try:
            for _ in range(4):
                try:
                    (_, _, s), t = timed(a.port, ctx)
                    worst = max(worst, t)
                    (reused, _, _), t = timed(a.port, ctx, s)
                    worst = max(worst, t)
                except OSError as e:
                    failures.append(repr(e))
            wait_writes(args.cli, seg(tmp, "hung-A"), 5)
        finally:
            redis.resume()
        st = stats(args, tmp, "hung-A")
    check("TLS Redis hung: every handshake completes", not failures, str(failures[:2]))
    check("TLS Redis hung: handshakes stay bounded", worst < BOUND_S,
          f"slowest {1000 * worst:.0f} ms, timeouts {st['remote_timeouts']}")
    check("TLS Redis hung: the writes time out and are counted as dropped",
          st["remote_timeouts"] >= 1 and st["remote_dropped"] - dropped_before == 4,
          f"timeouts {st['remote_timeouts']} dropped {st['remote_dropped']} ({dropped_before} before the hang)")


def tls_cluster(args, tmp, ca, seed_cert, seed_key):
    """A Redis Cluster over TLS reached through a seed named `localhost`: each node's
    certificate is checked against the IP address it announces (the other nodes' certificates
    name only 127.0.0.1, not the seed's name)."""
    certs = [(seed_cert, seed_key)] + [server_cert(tmp, f"node{i}", ca, hosts=("127.0.0.1",)) for i in (1, 2)]
    with Cluster(tls=(ca, certs)) as cluster:
        url = cluster.nodes[0].url_for("localhost")
        extra = ["--remote-key", os.path.join(tmp, "key"), "--remote-ca", ca, "--remote-cluster",
                 "--remote-timeout-ms", "500", "--remote", url]
        ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
        with Server(args.server, args.certs, 1, ["--cache-path", seg(tmp, "cl-A")] + extra) as a, \
                Server(args.server, args.certs, 1, ["--cache-path", seg(tmp, "cl-B")] + extra) as b:
            crossed = []
            for _ in range(9):  # spread over the three nodes' slots
                _, _, s = request_settled(args.cli, seg(tmp, "cl-A"), a.port, ctx)
                crossed.append(one_request(b.port, ctx, s)[0])
            sa = stats(args, tmp, "cl-A")
        logs = a.stderr + b.stderr
    check("TLS cluster: nodes are verified against the IPs they announce; sessions cross hosts",
          all(crossed), f"{crossed}, A errors {sa['remote_errors']}, "
          + next((ln.split("last: ")[-1] for ln in logs.splitlines() if "last: " in ln), "no failure logged"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    with key_dir("shmsess-remote-tls-") as tmp:
        ca, cert, pkey = make_ca(tmp, "good")
        other_ca, _, _ = make_ca(tmp, "other")
        with Redis(password="test-" + os.urandom(6).hex(), tls=(ca, cert, pkey)) as redis:
            verified(args, tmp, redis, ca, "127.0.0.1")
            verified(args, tmp, redis, ca, "localhost")
            wrong_ca(args, tmp, redis, other_ca)
            hung(args, tmp, redis, ca)
        wrong_name(args, tmp, ca, *server_cert(tmp, "name", ca, hosts=("localhost",)))
        tls_cluster(args, tmp, ca, cert, pkey)
    finish()


if __name__ == "__main__":
    main()
