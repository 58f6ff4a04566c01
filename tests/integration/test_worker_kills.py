#!/usr/bin/env python3
"""End to end: the example prefork server under client load while its workers die.

The server is linked against a fault-injection build of the library. While a flag file exists,
every pass of a critical-section fault point kills the worker with probability 1/40
(SHMSESS_TEST_FAULT), and this script also SIGKILLs a random worker every 50 ms. The parent
replaces dead workers. Then the flag is removed and the kills stop: every reconnection but the
first must resume, and the statistics must show the recovered locks. Bounded: a fixed number
of connections, each with a 10 s timeout.
"""

import argparse
import os
import random
import signal
import ssl
import tempfile
import threading
import time

from harness.checks import check, finish
from harness.client import client_context
from harness.prefork import Server, one_request, reconnect_run, summarize


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    flag = tempfile.NamedTemporaryFile(prefix="shmsess-kill-", delete=False)
    flag.close()
    os.environ["SHMSESS_TEST_FAULT"] = f"0:40:{flag.name}"
    try:
        run(args, flag.name)
    except Exception as e:
        check("worker-kill scenario", False, f"{type(e).__name__}: {e}")
    finally:
        if os.path.exists(flag.name):
            os.unlink(flag.name)
    finish()


def run(args, flag):
    srv = Server(args.server, args.certs, 4, ["--tls13-stateful", "--cache-size", str(256 << 10)]).start()
    try:
        stop = threading.Event()
        outside_kills = [0]

        def killer():
            rng = random.Random(7)
            while not stop.wait(0.05):
                pids = srv.worker_pids()
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        outside_kills[0] += 1
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=killer)
        t.start()
        ok = errors = 0
        started = time.monotonic()
        ctxs = [client_context(ssl.TLSVersion.TLSv1_2, True), client_context(ssl.TLSVersion.TLSv1_3, True)]
        sessions = [None, None]
        for i in range(400):
            k = i % 2
            try:
                _, _, sessions[k] = one_request(srv.port, ctxs[k], sessions[k])
                ok += 1
            except (OSError, ssl.SSLError, RuntimeError):
                errors += 1  # the worker serving us was killed: expected here
                sessions[k] = None
        stop.set()
        t.join()
        os.unlink(flag)  # no more injected deaths
        print(f"under kills: {ok} connections served, {errors} cut by a dying worker, "
              f"{outside_kills[0]} outside SIGKILLs, {time.monotonic() - started:.1f} s")
        check("the server kept serving while workers died", ok >= 200, f"{ok}/400 served")

        # The workers still alive were forked before the flag went away but read it on every
        # kill decision, so from now on nobody dies.
        for label, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3 stateful", ssl.TLSVersion.TLSv1_3)):
            res = reconnect_run(srv.port, version, 40, no_ticket=True)
            reused, _, reused_pids = summarize(res)
            check(f"after the kills, {label}: every reconnection but the first resumes", reused == 39,
                  f"{reused}/40 over workers {reused_pids}")
    finally:
        stats = srv.stop()
    check("statistics show the recovered locks", stats is not None and stats["lock_owner_died"] > 0,
          f"lock_owner_died={stats and stats.get('lock_owner_died')} corrupt_dropped={stats and stats.get('corrupt_dropped')} "
          f"lock_timeouts={stats and stats.get('lock_timeouts')}")
    check("no lock was lost for good", stats is not None and stats.get("lock_timeouts", 1) == 0, str(stats))


if __name__ == "__main__":
    main()
