"""Start build/prefork_server, drive it with real TLS clients, stop it and read its statistics.

Shared by the integration tests (tests/integration) and `make demo` (scripts/demo.py).
Everything talks to 127.0.0.1 only, with bounded counts and timeouts.
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import time

READY_TIMEOUT = 15.0
IO_TIMEOUT = 10.0


class Server:
    """The example prefork server as a child process. Use as a context manager."""

    def __init__(self, binary, certs, workers=4, extra=()):
        self.cmd = [binary, "--listen", "127.0.0.1:0", "--workers", str(workers),
                    "--cert", os.path.join(certs, "server.pem"),
                    "--key", os.path.join(certs, "server.key"), *extra]
        self.proc = None
        self.port = None
        self.stats = None
        self.stderr = ""

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Readiness is the server's own "ready HOST:PORT" line, not a sleep.
        deadline = time.monotonic() + READY_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("ready "):
                self.port = int(line.strip().rsplit(":", 1)[1])
                return self
            if line == "" and self.proc.poll() is not None:
                break
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        self.proc.kill()
        raise RuntimeError(f"server did not become ready: {line!r} {err}")

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return sorted(int(p) for p in out.stdout.split())

    def stop(self):
        """SIGTERM, wait, and parse the final "stats ..." line."""
        if self.proc is None or self.proc.poll() is not None:
            return self.stats
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise RuntimeError("server did not stop within 20 s of SIGTERM")
        self.stderr = err
        for line in out.splitlines():
            if line.startswith("stats "):
                self.stats = parse_stats(line)
        return self.stats

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port():
    """A loopback port nothing listens on now (for servers that cannot be told to pick one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_stats(line):
    return {k: (int(v) if v.isdigit() else v) for k, v in re.findall(r"(\w+)=(\S+)", line)}


def client_context(version, no_ticket=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    if no_ticket:
        # TLS 1.2: ask for a session id instead of a ticket, so the server's cache is used.
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


_session_contexts = {}


def session_context(version):
    """One no-ticket client context per protocol version, kept for the whole run: a session can
    only be offered through the context that made it (TLS 1.2 then uses session ids, so the
    server's cache)."""
    if version not in _session_contexts:
        _session_contexts[version] = client_context(version, no_ticket=True)
    return _session_contexts[version]


def one_request(port, ctx, session=None):
    """One connection and one HTTP/1.0 request. Returns (reused, worker_pid, new_session)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            body = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                body += chunk
            # Read to EOF so the TLS 1.3 NewSessionTicket has been processed.
            m = re.search(rb"worker=(\d+) reused=(\d)", body)
            if not m:
                raise RuntimeError(f"unexpected response {body!r}")
            return tls.session_reused, int(m.group(1)), tls.session


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
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-reconnect", *extra],
                         input="", capture_output=True, text=True, timeout=60)
    return re.findall(r"^(New|Reused), ", out.stdout, re.M)


def summarize(results):
    reused = sum(1 for r, _ in results if r)
    pids = sorted({p for _, p in results})
    reused_pids = sorted({p for r, p in results if r})
    return reused, pids, reused_pids
