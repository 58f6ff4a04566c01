#!/usr/bin/env python3
"""Integration: the example server under what real clients and a loaded machine do.

- Clients that complete the handshake and drop TCP without close_notify (a browser's unused
  preconnect) keep their sessions: 9 of 9 resume, TLS 1.2 and 1.3.
- Process management, with an LD_PRELOAD shim (tests/c/fault_shim.c) that makes accept, fork
  and waitpid fail or stall on request: a SIGTERM that arrives while the parent is about to
  wait stops it; a SIGTERM that reaches a freshly forked worker is not swallowed; EMFILE from
  accept backs off instead of respawning workers in a loop; a failed fork is retried.

Readiness comes from the server's and the shim's own stderr lines, never from sleeps. Each
check prints PASS/FAIL; the run ends with "N passed, M failed".
"""

import argparse
import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time

from harness.checks import check, finish, run
from harness.client import IO_TIMEOUT, client_context
from harness.prefork import Server, one_request

DROPPED = 9


def handshake_then_drop(port, ctx, session=None):
    """Handshake, wait for the TLS 1.3 ticket, then close TCP without close_notify.
    Returns (reused, session)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    if tls.version() == "TLSv1.3":
        # The server sends its NewSessionTicket right after the handshake: wait until bytes
        # are readable, then let the ssl module process them without blocking.
        select.select([tls], [], [], IO_TIMEOUT)
        tls.setblocking(False)
        try:
            tls.recv(1)
        except ssl.SSLWantReadError:
            pass
    reused, new_session = tls.session_reused, tls.session
    # Python's close() sends no close_notify: the server sees TCP end in the middle of TLS.
    tls.close()
    return reused, new_session


def dropped_connections_keep_sessions(args):
    # One worker: it stores a TLS 1.2 session just after sending its Finished, so with two a
    # client reconnecting at once could reach the other worker a moment before the store (a
    # race of this test, not of real clients). One worker finishes each connection first; what
    # is checked, that the dropped connection does not remove the session from the shared
    # cache, is the same.
    with Server(args.server, args.certs, 1, ["--tls13-stateful"]) as srv:
        for label, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3", ssl.TLSVersion.TLSv1_3)):
            ctx = client_context(version, no_ticket=True)
            resumed = 0
            for _ in range(DROPPED):
                _, session = handshake_then_drop(srv.port, ctx)
                # The next connection offers the dropped connection's session (with a request,
                # so the server's answer says whether it resumed).
                reused, _, _ = one_request(srv.port, ctx, session)
                resumed += reused
            check(f"{label}: clients that drop TCP without close_notify keep their sessions",
                  resumed == DROPPED, f"{resumed}/{DROPPED} resumed")
        stats = srv.stop()
    check("no session was removed for a dropped connection", stats["remove_hits"] == 0,
          f"remove_hits={stats['remove_hits']}")


class Watched(Server):
    """The server with the shim preloaded, started at once, in a session of its own (so that
    `kill()` ends its workers too); its stderr lines are waited for."""

    def __init__(self, args, workers, env):
        shim = {"LD_PRELOAD": args.shim, **{k: str(v) for k, v in env.items()}}
        super().__init__(args.server, args.certs, workers, env=shim, own_session=True)
        self.start()

    def wait_for(self, text, timeout):
        """The first stderr line containing `text` that no earlier call returned, or None after
        `timeout` seconds."""
        return self.err.wait_for(text, timeout)

    def stderr_so_far(self):
        return self.err.text()

    def workers(self):
        return self.worker_pids()

    def stops_within(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


def stop_request_while_about_to_wait(args):
    # The shim stalls a blocking waitpid for 1.5 s and says so: a SIGTERM sent then lands
    # between the parent's stop check and its wait. It must stop the server anyway. (A parent
    # that takes signals with sigtimedwait never makes a blocking waitpid before stopping, so
    # the shim's line may never come: then the signal is sent after at most 2 s.)
    srv = Watched(args, 2, {"SHIM_WAITPID_DELAY_MS": 1500})
    try:
        srv.wait_for("waitpid delayed", 2)
        srv.proc.send_signal(signal.SIGTERM)
        stopped = srv.stops_within(10)
        check("SIGTERM between the stop check and the wait stops the server", stopped,
              "" if stopped else "still running 10 s after SIGTERM")
    finally:
        srv.kill()


def sigterm_to_a_new_worker(args):
    # The first respawned worker stalls 1.5 s right after fork; a SIGTERM sent to it then must
    # end it (default action), not set the parent's stop flag in the child's copy.
    srv = Watched(args, 2, {"SHIM_CHILD_DELAY_MS": 1500, "SHIM_FORK_FAIL_AFTER": 2})
    try:
        os.kill(srv.workers()[0], signal.SIGKILL)
        line = srv.wait_for("delayed", 10)
        pid = int(line.split("child ")[1].split()[0]) if line else None
        if pid:
            os.kill(pid, signal.SIGTERM)
        died = srv.wait_for(f"worker {pid} killed by signal 15", 10) if pid else None
        check("a SIGTERM that reaches a worker before it starts serving ends it", died is not None,
              "" if died else f"worker {pid} still running")
    finally:
        srv.kill()


def emfile_backs_off(args):
    # Every worker's first 5 accept() calls fail with EMFILE.
    srv = Watched(args, 2, {"SHIM_ACCEPT_EMFILE": 5})
    try:
        ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
        _, pid, _ = one_request(srv.port, ctx)
        err = srv.stderr_so_far()
        check("EMFILE from accept: the workers back off and then serve", pid in srv.workers() and "backing off" in err,
              f"served by {pid}")
        check("... without exiting and being respawned", err.count("starting another") == 0,
              f"{err.count('starting another')} respawns")
    finally:
        srv.kill()


def failed_fork_is_retried(args):
    # After the first two workers, the next three forks fail.
    srv = Watched(args, 2, {"SHIM_FORK_FAIL_AFTER": 2, "SHIM_FORK_FAIL": 3})
    try:
        victim = srv.workers()[0]
        os.kill(victim, signal.SIGKILL)
        srv.wait_for(f"worker {victim} killed", 10)
        retried = srv.wait_for(" restarted (pid", 15)
        check("a slot whose fork failed is filled again", retried is not None and len(srv.workers()) == 2,
              f"workers {srv.workers()}")
        retries = srv.stderr_so_far().count("retrying")
        check("... after the failures were reported", retries == 3, f"{retries} retries reported")
    finally:
        srv.kill()


def trickling_clients_do_not_hold_workers(args):
    # Two clients that send a ClientHello one byte at a time occupy both workers; with
    # --client-timeout 1 each is cut after a second, so a normal client is served long before
    # the tricklers would have finished (6 s). SO_RCVTIMEO alone never fires: bytes keep coming.
    with Server(args.server, args.certs, 2, ["--client-timeout", "1"]) as srv:
        stop = threading.Event()
        connected = [threading.Event(), threading.Event()]

        def trickle(i):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=IO_TIMEOUT) as s:
                s.sendall(b"\x16")
                connected[i].set()  # both idle workers take these before the normal client
                for _ in range(20):
                    if stop.wait(0.3):
                        return
                    try:
                        s.sendall(b"\x16")
                    except OSError:
                        return

        ts = [threading.Thread(target=trickle, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for e in connected:
            e.wait(IO_TIMEOUT)
        t0 = time.monotonic()
        _, pid, _ = one_request(srv.port, client_context(ssl.TLSVersion.TLSv1_2))
        waited = time.monotonic() - t0
        stop.set()
        for t in ts:
            t.join()
    check("clients that trickle bytes are cut after --client-timeout: a normal client is served",
          waited < 4.5, f"served after {waited:.1f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--certs", required=True)
    ap.add_argument("--shim", required=True)
    args = ap.parse_args()
    run((dropped_connections_keep_sessions, stop_request_while_about_to_wait, sigterm_to_a_new_worker,
         emfile_backs_off, failed_fork_is_retried, trickling_clients_do_not_hold_workers), args)
    finish()


if __name__ == "__main__":
    main()
