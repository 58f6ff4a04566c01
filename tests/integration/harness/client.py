"""The client side of every harness: loopback ports, Python TLS contexts, one HTTP/1.0 request
read to EOF, and `openssl s_client`.

Everything talks to 127.0.0.1 only, with bounded counts and timeouts.
"""

import re
import socket
import ssl
import subprocess

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0
S_CLIENT_TIMEOUT = 30


def free_port():
    """A loopback port nothing listens on now (for servers that cannot be told to pick one)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def client_context(version=None, no_ticket=False):
    """A context that verifies nothing (the test certificates are self-signed) and speaks only
    `version` if one is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
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


def http_get(port, ctx, path="/", session=None):
    """One connection, one HTTP/1.0 GET read to EOF (so a TLS 1.3 ticket has arrived).
    Returns (status, body bytes, session_reused, session)."""
    with socket.create_connection((HOST, port), timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
            return status, body, tls.session_reused, tls.session


def s_client(port, *args, input="", stdin=None, timeout=S_CLIENT_TIMEOUT):
    """`openssl s_client -connect 127.0.0.1:PORT ARGS...` fed `input` (or the file `stdin`):
    what it printed on stdout."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", *args],
                         input=None if stdin else input, stdin=stdin, capture_output=True, text=True,
                         timeout=timeout)
    return out.stdout


def resumption_words(s_client_out):
    """The "New"/"Reused" word of each handshake s_client reported, in order."""
    return re.findall(r"^(New|Reused), ", s_client_out, re.M)
