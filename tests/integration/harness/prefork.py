"""Start build/prefork_server, drive it with real TLS clients, stop it and read its statistics.

Shared by the integration tests (tests/integration) and `make demo` (scripts/demo.py).
Everything talks to 127.0.0.1 only, with bounded counts and timeouts.
"""

import os
import re
import socket

from . import process
from .client import HOST, IO_TIMEOUT, client_context, http_get, resumption_words, s_client

READY_TIMEOUT = 15.0


class Server:
    """The example prefork server as a child process, with `env` added to its environment. Use
    as a context manager.

    Unlike the other harnesses' servers it stays in the test's session unless `own_session`: it
    signals only its own workers, and an interrupted test takes it down with it. In a session
    of its own, `kill()` ends its workers with it."""

    def __init__(self, binary, certs, workers=4, extra=(), env=None, own_session=False):
        self.cmd = [binary, "--listen", "127.0.0.1:0", "--workers", str(workers),
                    "--cert", os.path.join(certs, "server.pem"),
                    "--key", os.path.join(certs, "server.key"), *extra]
        self.env = env
        self.own_session = own_session
        self.proc = None
        self.port = None
        self.stats = None
        self.stderr = ""

    def start(self):
        self.proc, self.out, self.err = process.spawn(self.cmd, env=self.env, own_session=self.own_session,
                                                      split_stderr=True)
        # Readiness is the server's own "ready HOST:PORT" line, not a sleep.
        line = self.out.wait_for("ready ", READY_TIMEOUT, start=True)
        if line is not None:
            self.port = int(line.strip().rsplit(":", 1)[1])
            return self
        exited = self.proc.poll() is not None
        self.kill()
        self.err.wait_end(READY_TIMEOUT)
        raise RuntimeError(f"server did not become ready: {self.out.text()!r} {self.err.text() if exited else ''}")

    def worker_pids(self):
        return process.children(self.proc.pid)

    def kill(self):
        """SIGKILL, to the whole process group if the server has a session of its own."""
        process.kill(self.proc, group=self.own_session)

    def stop(self):
        """SIGTERM, wait, and parse the final "stats ..." line."""
        if self.proc is None or self.proc.poll() is not None:
            return self.stats
        in_time = process.stop(self.proc)
        # The output ends once the workers have gone too (they hold the pipes).
        self.out.wait_end(process.STOP_TIMEOUT)
        self.err.wait_end(process.STOP_TIMEOUT)
        if not in_time:
            raise RuntimeError(f"server did not stop within {process.STOP_TIMEOUT:.0f} s of SIGTERM")
        self.stderr = self.err.text()
        for line in self.out.text().splitlines():
            if line.startswith("stats "):
                self.stats = parse_stats(line)
        return self.stats

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def parse_stats(line):
    return {k: (int(v) if v.isdigit() else v) for k, v in re.findall(r"(\w+)=(\S+)", line)}


def one_request(port, ctx, session=None):
    """One connection and one HTTP/1.0 request. Returns (reused, worker_pid, new_session)."""
    _, body, reused, new_session = http_get(port, ctx, session=session)
    m = re.search(rb"worker=(\d+) reused=(\d)", body)
    if not m:
        raise RuntimeError(f"unexpected response {body!r}")
    return reused, int(m.group(1)), new_session


class HeldConnection:
    """A TLS connection whose handshake is done and whose request is not sent yet. The server's
    workers serve one connection at a time, so the worker that accepted it can take no other
    connection until `release()` (or `close()`): what makes the test choose the worker."""

    def __init__(self, port, ctx):
        raw = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        try:
            self.tls = ctx.wrap_socket(raw, server_hostname="localhost")  # returns once a worker answered
        except BaseException:
            raw.close()
            raise

    def release(self):
        """Send the request, read the answer to EOF, close. Returns the worker's pid."""
        with self.tls:
            self.tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := self.tls.recv(65536):
                data += chunk
        m = re.search(rb"worker=(\d+)", data)
        if not m:
            raise RuntimeError(f"unexpected response {data!r}")
        return int(m.group(1))

    def close(self):
        self.tls.close()


def resume_in_other_worker(port, version, workers):
    """Leave a session in one worker and offer it to another, chosen, not left to accept():
    hold all workers but one, make the session in the free one (the maker), hold the maker,
    release one held worker (the other) and resume there. Returns (reused, maker, other, taker):
    taker == other != maker unless the server does not serve one connection per worker."""
    ctx = client_context(version, no_ticket=True)
    held = []
    try:
        held = [HeldConnection(port, ctx) for _ in range(workers - 1)]
        _, maker, session = one_request(port, ctx)
        held.append(HeldConnection(port, ctx))  # the maker is the only worker free to take it
        other = held.pop(0).release()
        reused, taker, _ = one_request(port, ctx, session)  # the other is the only one free now
        return reused, maker, other, taker
    finally:
        for h in held:
            h.close()


def reconnect_run(port, version, count, no_ticket=False):
    """Connect `count` times, each time offering the session the previous connection left.
    Returns a list of (reused, worker_pid)."""
    ctx = client_context(version, no_ticket)
    session = None
    results = []
    for _ in range(count):
        reused, pid, new_session = one_request(port, ctx, session)
        results.append((reused, pid))
        session = new_session
    return results


def s_client_reconnect(port, extra=("-tls1_2", "-no_ticket")):
    """`openssl s_client -reconnect`: one full handshake then five reconnections with the same
    session. Returns the list of "New"/"Reused" words, in order."""
    return resumption_words(s_client(port, "-reconnect", *extra, timeout=60))


def summarize(results):
    reused = sum(1 for r, _ in results if r)
    pids = sorted({p for _, p in results})
    reused_pids = sorted({p for r, p in results if r})
    return reused, pids, reused_pids
