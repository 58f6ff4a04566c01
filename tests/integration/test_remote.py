#!/usr/bin/env python3
"""Integration: two "hosts" (two example servers, each with its own segment) sharing one
throw-away redis-server on 127.0.0.1 as the second tier.

Each check prints PASS/FAIL; the run ends with "N passed, M failed" and exits non-zero if
anything failed.
"""

import argparse
import os
import socket
import ssl
import subprocess
import time

from harness.checks import check, finish
from harness.client import client_context
from harness.prefork import Server, one_request
from harness.redis import Redis, key_dir, new_key, request_settled, seg_stats, write_key

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
TIMEOUT_MS = 50
BACKOFF_MS = 1000
# A handshake may wait for at most a few remote operations (a lookup, a store, a delete), each
# bounded by TIMEOUT_MS, connect included. The bound checked is far above that and far below what an
# unbounded wait on a hung Redis would take (forever) or a TCP timeout (minutes).
HANDSHAKE_BOUND_S = 1.5


class Fleet:
    """Two hosts, A and B, with named segments (so the CLI can read their counters) and the
    same Redis and key file."""

    def __init__(self, args, tmp, redis, tier=True, key=None):
        self.args, self.tmp = args, tmp
        self.hosts = {}
        for name in ("A", "B"):
            extra = ["--tls13-stateful", "--cache-path", os.path.join(tmp, f"{name}.seg")]
            if tier:
                extra += ["--remote", redis.url, "--remote-key", key or os.path.join(tmp, "key"),
                          "--remote-timeout-ms", str(TIMEOUT_MS), "--remote-backoff-ms", str(BACKOFF_MS)]
            self.hosts[name] = Server(args.server, args.certs, 2, extra)

    def __enter__(self):
        for h in self.hosts.values():
            h.start()
        return self

    def __exit__(self, *exc):
        for h in self.hosts.values():
            h.stop()
        for name in self.hosts:
            try:
                os.unlink(os.path.join(self.tmp, f"{name}.seg"))
            except FileNotFoundError:
                pass

    def port(self, name):
        return self.hosts[name].port

    def stats(self, name):
        return seg_stats(self.args.cli, os.path.join(self.tmp, f"{name}.seg"))

    def request(self, name, ctx, session=None):
        """one_request to host `name`; if it made a new session, returns once the host's
        writer has stored it in Redis (stores are queued off the handshake path)."""
        return request_settled(self.args.cli, os.path.join(self.tmp, f"{name}.seg"), self.port(name), ctx, session)


def across_hosts(args, tmp, redis):
    with Fleet(args, tmp, redis) as fl:
        ctx12 = client_context(TLS12, no_ticket=True)
        _, _, s12 = fl.request("A", ctx12)
        order = ["B", "A", "B", "B", "A"]
        got = [one_request(fl.port(h), ctx12, s12)[0] for h in order]
        check("TLS 1.2: a session made on host A resumes on B and back", all(got), f"{list(zip(order, got))}")

        ctx13 = client_context(TLS13, no_ticket=True)
        _, _, s13 = fl.request("A", ctx13)
        chain = []
        for h in ["B", "A", "B", "A", "B"]:
            reused, _, s13 = fl.request(h, ctx13, s13)
            chain.append(reused)
        check("TLS 1.3 stateful: each new ticket resumes on the other host", all(chain), str(chain))

        _, _, t = fl.request("A", ctx13)
        uses = [one_request(fl.port(h), ctx13, t)[0] for h in ("B", "A", "B")]
        check("TLS 1.3: a ticket from A resumes once on B, then nowhere", uses == [True, False, False], str(uses))
        _, _, t = fl.request("A", ctx13)
        uses = [one_request(fl.port(h), ctx13, t)[0] for h in ("A", "B", "A")]
        check("TLS 1.3: a ticket resumed on A (its own host) is gone on B too", uses == [True, False, False],
              str(uses))

        a, b = fl.stats("A"), fl.stats("B")
        check("statistics: the hosts stored to the tier and found each other's sessions",
              a["remote_stores"] > 0 and b["remote_hits"] >= 3 and a["remote_hits"] >= 1,
              f"A stores {a['remote_stores']} hits {a['remote_hits']}, B hits {b['remote_hits']}")
        check("statistics: the refused replay is counted", a["remote_replays_refused"] + b["remote_replays_refused"] >= 1,
              f"A {a['remote_replays_refused']} B {b['remote_replays_refused']}")
        check("statistics: no errors, timeouts or rejected values",
              all(x[k] == 0 for x in (a, b) for k in ("remote_errors", "remote_timeouts", "remote_rejected")), "")
        human = subprocess.run([args.cli, "stat", os.path.join(tmp, "B.seg")], capture_output=True, text=True).stdout
        check("shmsesscache stat shows the remote tier", f"remote tier       {b['remote_stores']} stored, "
              f"{b['remote_hits']} hits" in human, " / ".join(ln for ln in human.splitlines() if ln.startswith("remote")))
        keys = redis.cli("--scan", "--pattern", "shmsess:*").split()

        def value(key):
            return subprocess.run(["redis-cli", "-p", str(redis.port), "-a", redis.password, "--no-auth-warning",
                                   "--raw", "GET", key], capture_output=True).stdout.rstrip(b"\n")
        # Used tickets' keys hold a tombstone ("SSR1:used"); every other value is sealed.
        sealed = [k for k in keys if value(k) != b"SSR1:used"]
        raw = value(sealed[0]) if sealed else b""
        check("what Redis holds is sealed, not DER",
              sealed and all(value(k)[:4] == b"SSR2" for k in sealed) and b"\x30\x82" not in raw[:4],
              f"{len(keys)} keys ({len(sealed)} sealed), value starts {raw[:4]!r}")
        keys = sealed or keys
        ttl = int(redis.cli("PTTL", keys[0]).strip()) if keys else -1
        check("Redis expires the values with the sessions", 0 < ttl <= 7200 * 1000, f"PTTL {ttl} ms")


def offer(port, ctx, session, name):
    """One connection offering `session` with server name `name`: was it resumed?"""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while tls.recv(4096):
                pass
            return tls.session_reused


def hrr_and_names_through_the_tier(args, tmp, redis):
    """Host B accepts only P-256, so a client whose first key share is X25519 (Python's) gets a
    HelloRetryRequest there, and OpenSSL looks the ticket up twice; a ticket offered for another
    server name is refused without being consumed in Redis."""
    seg = {n: os.path.join(tmp, f"{n}.hrr.seg") for n in ("A", "B")}
    common = ["--tls13-stateful", "--remote", redis.url, "--remote-key", os.path.join(tmp, "key"),
              "--remote-timeout-ms", str(TIMEOUT_MS)]
    a = Server(args.server, args.certs, 2, common + ["--cache-path", seg["A"]])
    b = Server(args.server, args.certs, 2, common + ["--cache-path", seg["B"], "--groups", "P-256"])
    with a, b:
        ctx13 = client_context(TLS13, no_ticket=True)
        _, _, t = request_settled(args.cli, seg["A"], a.port, ctx13)
        uses = [one_request(b.port, ctx13, t)[0] for _ in range(2)]
        check("TLS 1.3 through a HelloRetryRequest: a ticket from A resumes on B (from Redis), once",
              uses == [True, False], str(uses))
        _, _, t = request_settled(args.cli, seg["A"], a.port, ctx13)
        wrong = offer(a.port, ctx13, t, "other.test")
        right = offer(a.port, ctx13, t, "localhost")
        check("a ticket offered for another server name is refused and still resumes for its own, "
              "with the tier", not wrong and right, f"other name: {wrong}, own name: {right}")
    for p in seg.values():
        os.unlink(p)


def without_tier(args, tmp, redis):
    with Fleet(args, tmp, redis, tier=False) as fl:
        ctx12 = client_context(TLS12, no_ticket=True)
        _, _, s12 = one_request(fl.port("A"), ctx12)
        on_b = one_request(fl.port("B"), ctx12, s12)[0]
    check("contrast, no tier: a session from A does not resume on B", not on_b, f"resumed {on_b}")


def tampering(args, tmp, redis):
    with Fleet(args, tmp, redis) as fl:
        ctx12 = client_context(TLS12, no_ticket=True)
        _, _, s = fl.request("A", ctx12)
        key = "shmsess:" + s.id.hex()
        cmd = ["redis-cli", "-p", str(redis.port), "-a", redis.password, "--no-auth-warning", "--raw"]
        value = subprocess.run(cmd + ["GET", key], capture_output=True).stdout.rstrip(b"\n")
        check("the session is in Redis under its id", len(value) > 40, f"{len(value)} bytes")
        pos = len(value) // 2
        flipped = value[pos] ^ 0x01 or value[pos] ^ 0x02  # argv cannot carry a NUL byte
        subprocess.run(cmd[:-1] + ["SETRANGE", key, str(pos)] + [bytes([flipped])], check=True, capture_output=True)
        after = subprocess.run(cmd + ["GET", key], capture_output=True).stdout.rstrip(b"\n")
        check("one byte of the value flipped with redis-cli", len(after) == len(value) and
              sum(x != y for x, y in zip(after, value)) == 1, "")
        on_b = one_request(fl.port("B"), ctx12, s)[0]
        b = fl.stats("B")
        check("a tampered value is refused, never resumed", not on_b and b["remote_rejected"] == 1,
              f"resumed {on_b}, rejected {b['remote_rejected']}")
        on_a = one_request(fl.port("A"), ctx12, s)[0]
        check("the host that made it still resumes it from shared memory", on_a, "")


def key_rotation(args, tmp, redis):
    old, new = new_key(), new_key()
    write_key(os.path.join(tmp, "old"), old)
    write_key(os.path.join(tmp, "rotated"), new, old)
    write_key(os.path.join(tmp, "other"), new_key())
    segs = {name: os.path.join(tmp, f"rot-{name}.seg") for name in ("old", "rotated", "other")}
    a, b, c = (Server(args.server, args.certs, 2, ["--tls13-stateful", "--remote", redis.url, "--remote-key",
                                                   os.path.join(tmp, name), "--cache-path", segs[name]])
               for name in ("old", "rotated", "other"))
    with a, b, c:
        ctx12 = client_context(TLS12, no_ticket=True)
        _, _, s_old = request_settled(args.cli, segs["old"], a.port, ctx12)
        _, _, s_new = request_settled(args.cli, segs["rotated"], b.port, ctx12)
        _, _, s_new2 = request_settled(args.cli, segs["rotated"], b.port, ctx12)
        old_on_b = one_request(b.port, ctx12, s_old)[0]
        new_on_a = one_request(a.port, ctx12, s_new)[0]
        on_other = one_request(c.port, ctx12, s_new2)[0]
    for seg in segs.values():
        os.unlink(seg)
    check("rotation: a host with [new, old] resumes sessions sealed with the old key", old_on_b, "")
    check("rotation: sessions sealed with the new key do not open with the old one alone", not new_on_a, "")
    check("a host with an unrelated key resumes nothing from the tier", not on_other, "")


def never_stored(args, tmp, redis):
    """A TLS 1.3 ticket issued while Redis was down (its store never reached Redis) is not
    refused later for being missing there."""
    with Fleet(args, tmp, redis) as fl:
        ctx13 = client_context(TLS13, no_ticket=True)
        redis.stop()
        _, _, t = one_request(fl.port("A"), ctx13)
        redis.start()
        uses = [one_request(fl.port(h), ctx13, t)[0] for h in ("A", "A", "B")]
        a = fl.stats("A")
    check("a TLS 1.3 ticket whose store never reached Redis resumes once on its host, then nowhere",
          uses == [True, False, False], f"{uses}, replays refused {a['remote_replays_refused']}")


def full_redis(args, tmp, redis):
    """Redis out of memory (maxmemory reached, noeviction): a TLS 1.3 ticket can still be read
    from it but not swapped for a tombstone. Read from Redis on another host, it is refused,
    since every host could read and resume it again."""
    with Fleet(args, tmp, redis) as fl:
        ctx13 = client_context(TLS13, no_ticket=True)
        _, _, t = fl.request("A", ctx13)
        redis.cli("CONFIG", "SET", "maxmemory", "1")
        try:
            uses = [one_request(fl.port("B"), ctx13, t)[0] for _ in range(3)]
        finally:
            redis.cli("CONFIG", "SET", "maxmemory", "0")
        b = fl.stats("B")
    check("Redis out of memory: a ticket read from it but not consumed there is refused, every time",
          uses == [False, False, False], f"uses on B {uses}, unconfirmed {b['remote_unconfirmed']}")
    check("Redis out of memory: the refusals are counted as unconfirmed", b["remote_unconfirmed"] >= 1,
          f"unconfirmed {b['remote_unconfirmed']}")


def restart(args, tmp, redis):
    """Redis restarted (data lost) under pooled connections."""
    with Fleet(args, tmp, redis) as fl:
        ctx12 = client_context(TLS12, no_ticket=True)
        for _ in range(4):  # every worker of both hosts has a pooled connection now
            for h in ("A", "B"):
                fl.request(h, ctx12)
        redis.stop()
        redis.start()
        before = {h: fl.stats(h)["remote_errors"] + fl.stats(h)["remote_timeouts"] for h in ("A", "B")}
        crossed = []
        for _ in range(4):
            _, _, s = fl.request("A", ctx12)
            crossed.append(one_request(fl.port("B"), ctx12, s)[0])
        after = {h: fl.stats(h)["remote_errors"] + fl.stats(h)["remote_timeouts"] for h in ("A", "B")}
    check("Redis restarted: sessions cross hosts again at once", all(crossed), str(crossed))
    check("Redis restarted: stale pooled connections are replaced without a failure", before == after,
          f"errors+timeouts before {before} after {after}")


def outage(args, tmp, redis):
    """Redis down (stopped), then hung (SIGSTOP), then back: handshakes never fail and never
    wait long; resumption falls back to each host's own memory; the tier comes back alone."""
    with Fleet(args, tmp, redis) as fl:
        ctx12 = client_context(TLS12, no_ticket=True)
        worst = 0.0
        failures = []

        def timed(host, session=None):
            nonlocal worst
            t0 = time.monotonic()
            try:
                r = one_request(fl.port(host), ctx12, session)
            except OSError as e:
                failures.append(repr(e))
                return False, None
            worst = max(worst, time.monotonic() - t0)
            return r[0], r[2]

        before = fl.request("A", ctx12)[2]
        check("before the outage: A's session resumes on B", timed("B", before)[0], "")

        for phase, stop, start in (("stopped", redis.stop, redis.start), ("hung", redis.pause, redis.resume)):
            stop()
            local, remote = [], []
            for _ in range(8):
                _, s = timed("A")
                local.append(timed("A", s)[0])
                remote.append(timed("B", s)[0])
            check(f"Redis {phase}: every handshake completes", not failures, str(failures[:3]))
            check(f"Redis {phase}: sessions still resume on the host that made them", all(local), str(local))
            check(f"Redis {phase}: ... and not on the other host (no tier to carry them)", not any(remote),
                  str(remote))
            check(f"Redis {phase}: no handshake waited long", worst < HANDSHAKE_BOUND_S,
                  f"slowest {1000 * worst:.0f} ms (remote timeout {TIMEOUT_MS} ms)")
            start()
            # Back: the hosts find the tier again by themselves once their back-off ends. Each
            # try is a real client connection; bounded by a deadline of several back-offs.
            deadline = time.monotonic() + 10 * BACKOFF_MS / 1000
            back, tries = False, 0
            while not back and time.monotonic() < deadline:
                _, s = timed("A")
                back = timed("B", s)[0]
                tries += 1
            check(f"Redis {phase} then back: the tier resumes by itself", back, f"after {tries} tries")
            # The operator who saw the tier skipped sees it end (the server logs up to info).
            said = [h.err.wait_for("remote tier: working again", 2.0) for h in fl.hosts.values()]
            check(f"Redis {phase} then back: a host logs that the tier works again", any(said),
                  repr([h.err.text()[-300:] for h in fl.hosts.values()]))
        a, b = fl.stats("A"), fl.stats("B")
        trouble = {k: a[k] + b[k] for k in ("remote_errors", "remote_timeouts", "remote_skipped")}
        check("statistics: the outage shows as errors, timeouts and skipped operations",
              all(v > 0 for v in trouble.values()), str(trouble))


def fleet_without_stateful_tickets(args, tmp, redis):
    """--remote without --tls13-stateful: TLS 1.3 clients get stateless tickets that never reach
    Redis, so they cannot cross hosts; the server says so at start instead of losing them
    silently."""
    extra = ["--remote", redis.url, "--remote-key", os.path.join(tmp, "key")]
    with Server(args.server, args.certs, 1, extra) as plain, \
            Server(args.server, args.certs, 1, ["--tls13-stateful", *extra]) as stateful:
        warned = plain.err.wait_for("without --tls13-stateful", 5.0)
        check("--remote without --tls13-stateful warns at start, naming the fix",
              warned is not None and "add --tls13-stateful" in warned, plain.err.text()[-300:])
        check("... and with --tls13-stateful it does not",
              stateful.err.wait_for("without --tls13-stateful", 1.0) is None, stateful.err.text()[-300:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    with key_dir("shmsess-remote-") as tmp:
        # AUTH: the server requires a password; the URL carries it.
        with Redis(password="test-" + os.urandom(6).hex()) as redis:
            across_hosts(args, tmp, redis)
            hrr_and_names_through_the_tier(args, tmp, redis)
            without_tier(args, tmp, redis)
            tampering(args, tmp, redis)
            key_rotation(args, tmp, redis)
            never_stored(args, tmp, redis)
            full_redis(args, tmp, redis)
            restart(args, tmp, redis)
            outage(args, tmp, redis)
            fleet_without_stateful_tickets(args, tmp, redis)
    finish()


if __name__ == "__main__":
    main()
