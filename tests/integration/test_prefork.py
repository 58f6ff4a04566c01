#!/usr/bin/env python3
"""Integration: the example prefork server (4 workers) with real clients over loopback.

Each check prints PASS/FAIL; the run ends with the line "N passed, M failed" and exits non-zero
if anything failed.
"""

import argparse
import os
import ssl
import stat
import tempfile

from harness.checks import check, finish, run
from harness.client import client_context
from harness.prefork import (Server, one_request, reconnect_run, resume_in_other_worker, s_client_reconnect,
                             summarize)

RECONNECTS = 40


def cached_runs(args):
    with Server(args.server, args.certs, 4, ["--tls13-stateful"]) as srv:
        for label, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3 stateful", ssl.TLSVersion.TLSv1_3)):
            res = reconnect_run(srv.port, version, RECONNECTS, no_ticket=True)
            reused, pids, reused_pids = summarize(res)
            check(f"{label}: every reconnection but the first resumes",
                  reused == RECONNECTS - 1 and not res[0][0],
                  f"{reused}/{RECONNECTS} resumed")
            # Which worker wins accept() is the kernel's: the test picks the one that resumes.
            reused, maker, other, taker = resume_in_other_worker(srv.port, version, 4)
            check(f"{label}: a session resumes in another worker than the one that made it",
                  reused and taker == other != maker,
                  f"made by {maker}, offered to {other}, served by {taker}, reused={reused}")
        words = s_client_reconnect(srv.port)
        # OpenSSL stores a TLS 1.2 session (new_session_cb) just after flushing its Finished,
        # and s_client reconnects at once without a request: another worker may look the id up
        # a few microseconds before it is stored. Real clients send a request first.
        check("openssl s_client -reconnect -tls1_2: New then Reused (at least 4 of 5)",
              len(words) == 6 and words[0] == "New" and words[1:].count("Reused") >= 4, " ".join(words))
        stats = srv.stop()
    check("statistics: the lookups hit", stats["lookup_hits"] >= 2 * (RECONNECTS - 1) + 4, str(stats))
    check("statistics: TLS 1.3 tickets were single-use", stats["taken"] >= RECONNECTS - 1, f"taken={stats['taken']}")
    return res


def uncached_run(args):
    with Server(args.server, args.certs, 4, ["--no-cache", "--tls13-stateful"]) as srv:
        res = reconnect_run(srv.port, ssl.TLSVersion.TLSv1_2, RECONNECTS, no_ticket=True)
        crossed, maker, other, taker = resume_in_other_worker(srv.port, ssl.TLSVersion.TLSv1_2, 4)
    reused, pids, _ = summarize(res)
    check("--no-cache: workers are separate processes, so resumption is rare",
          reused <= (RECONNECTS - 1) // 2, f"{reused}/{RECONNECTS} resumed over pids {pids}")
    check("--no-cache: a session made by one worker does not resume in another",
          not crossed and taker == other != maker, f"made by {maker}, offered to {other}, served by {taker}")


def stateless_tickets_not_stored(args):
    # Without --tls13-stateful OpenSSL issues stateless tickets: resumption works through the
    # ticket, and the cache must not fill up with sessions nobody will look up.
    with Server(args.server, args.certs, 2) as srv:
        res = reconnect_run(srv.port, ssl.TLSVersion.TLSv1_3, 10)
        stats = srv.stop()
    reused, _, _ = summarize(res)
    check("TLS 1.3 stateless tickets: resumed by ticket, nothing stored",
          reused == 9 and stats["stores"] == 0 and stats["tls13_stateless_skipped"] >= 10,
          f"reused={reused} stores={stats['stores']} skipped={stats['tls13_stateless_skipped']}")


def named_segment_survives_restart(args):
    d = tempfile.mkdtemp(prefix="shmsess-it-")
    path = os.path.join(d, "segment")
    ctx_args = ["--tls13-stateful", "--cache-path", path, "--cache-size", str(2 << 20)]
    with Server(args.server, args.certs, 2, ctx_args) as srv:
        res = reconnect_run(srv.port, ssl.TLSVersion.TLSv1_2, 1, no_ticket=True)
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    check("named segment is created 0600", mode == 0o600, oct(mode))
    # A restarted server attaches to the same segment and resumes the old session.
    ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
    with Server(args.server, args.certs, 2, ctx_args) as srv:
        first_reused, _, session = one_request(srv.port, ctx)
    with Server(args.server, args.certs, 2, ctx_args) as srv:
        reused, _, _ = one_request(srv.port, ctx, session)
    check("a server restarted on the same named segment resumes old sessions",
          reused and not first_reused and len(res) == 1)
    os.unlink(path)
    os.rmdir(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    run((cached_runs, uncached_run, stateless_tickets_not_stored, named_segment_survives_restart), args)
    finish()


if __name__ == "__main__":
    main()
