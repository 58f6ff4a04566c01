"""nginx's stream and mail blocks for the integration tests of ngx_stream_shmsess_module and
ngx_mail_shmsess_module: the blocks (run by harness.nginx.Nginx, with Debian's dynamic stream
and mail modules loaded), the loopback peers they talk to (a TCP echo backend, a fake IMAP
server, a tiny auth_http endpoint) and TLS clients for them.

Everything listens on 127.0.0.1, answers a bounded number of bytes per connection and stops
with the test; the peers' readiness is their listening socket, bound before they are used.
"""

import os
import re
import socket
import ssl
import threading

from .client import IO_TIMEOUT
from .nginx import DEBIAN_MODULES

STREAM_MODULES = (os.path.join(DEBIAN_MODULES, "ngx_stream_module.so"),)
MAIL_MODULES = (os.path.join(DEBIAN_MODULES, "ngx_mail_module.so"),)

# A stream block: `cache` is its session cache line(s); "return" answers with the worker's
# pid and whether the session was resumed, "echo" is TLS in front of a TCP echo backend.
# Braces for nginx are doubled: harness.nginx fills {certs}, {root} and {port_NAME} in.
STREAM = """
stream {{{{
{cache}
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_timeout 300s;
    # A client whose first key share is another group (P-384) gets a HelloRetryRequest.
    ssl_ecdh_curve X25519:prime256v1;
    ssl_certificate "{{certs}}/server.pem";
    ssl_certificate_key "{{certs}}/server.key";
    map $ssl_session_reused $shmsess_reused {{{{ r 1; default 0; }}}}
    server {{{{
        listen 127.0.0.1:{{port_return}} ssl reuseport;
        return "worker=$pid reused=$shmsess_reused\\n";
    }}}}
    server {{{{
        listen 127.0.0.1:{{port_echo}} ssl reuseport;
        proxy_pass 127.0.0.1:{backend};
    }}}}
}}}}
"""

STREAM_PORTS = ("return", "echo")


def stream_block(cache, backend_port):
    return STREAM.format(cache=cache, backend=backend_port)


# A mail block: an IMAP proxy with implicit TLS; logins are checked by `auth_http`, which
# sends them to the IMAP backend it names. (nginx 1.22's mail listen has no reuseport: which
# worker accepts is the kernel's choice, and IMAP does not say which one did.)
MAIL = """
mail {{{{
{cache}
    server_name mail.test;
    auth_http 127.0.0.1:{auth}/auth;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_timeout 300s;
    ssl_certificate "{{certs}}/server.pem";
    ssl_certificate_key "{{certs}}/server.key";
    server {{{{
        listen 127.0.0.1:{{port_imaps}} ssl;
        protocol imap;
    }}}}
}}}}
"""

MAIL_PORTS = ("imaps",)


def mail_block(cache, auth_port):
    return MAIL.format(cache=cache, auth=auth_port)


class Peer:
    """A loopback TCP server answering each connection in a thread with `serve(conn)`. Bound
    and listening when constructed (that is its readiness); `close()` stops it."""

    def __init__(self, serve):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.serve = serve
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            conn.settimeout(IO_TIMEOUT)
            try:
                self.serve(conn)
            except OSError:
                pass  # the proxy gave up on the connection: nothing to answer

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_line(conn, limit=4096):
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def echo_line(conn):
    """The echo backend: one line back, then close (so nginx closes the client side cleanly)."""
    conn.sendall(read_line(conn))


def fake_imap(conn):
    """An IMAP server that takes any LOGIN and answers NOOP with a line naming itself. nginx
    sends the user name and password as literals ("LOGIN {4}", "+ go ahead", "user {6}", ...):
    a line ending in "}" is continued, the command runs once its last line is in."""
    conn.sendall(b"* OK fake IMAP ready\r\n")
    while True:
        line = read_line(conn)
        while line.rstrip().endswith(b"}"):
            conn.sendall(b"+ go ahead\r\n")
            line += read_line(conn)
        if not line:
            return
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].strip().upper()
        if command.startswith(b"LOGIN"):
            conn.sendall(tag + b" OK LOGIN completed\r\n")
        elif command == b"NOOP":
            conn.sendall(b"* fake-imap-backend\r\n" + tag + b" OK NOOP completed\r\n")
        else:
            conn.sendall(b"* BYE\r\n" + tag + b" OK LOGOUT completed\r\n")
            return


def auth_http_for(backend_port):
    """nginx's auth_http protocol: every login is accepted and sent to the backend."""
    def serve(conn):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        conn.sendall(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
                     b"Auth-Port: %d\r\n\r\n" % backend_port)
    return serve


def close_notify(tls):
    """Answer the server's close_notify with ours, as a well-behaved client does: nginx's
    stream and mail servers wait for it, and a connection that ends without it is an
    "unexpected EOF" to OpenSSL, which then removes the session from the cache (TLS 1.2) or
    the ticket (TLS 1.3), with nginx's own cache as with this one. Returns (resumed,
    session), read before the TLS object goes."""
    result = tls.session_reused, tls.session
    try:
        tls.unwrap()
    except (OSError, ssl.SSLError):
        pass  # the server already closed the TCP connection
    return result


def read_until(tls, marker=None, limit=65536):
    """What the server sends until `marker` is in it, or to EOF (at most `limit` bytes)."""
    data = b""
    while len(data) < limit and (marker is None or marker not in data):
        try:
            chunk = tls.recv(4096)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        data += chunk
    return data


def tls_exchange(port, ctx, session=None, send=b""):
    """One TLS connection to a stream server: send `send`, read to EOF (the server closes;
    reading processes the TLS 1.3 tickets). Returns (resumed, data, new session)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            if send:
                tls.sendall(send)
            data = read_until(tls)
            reused, session = close_notify(tls)
            return reused, data, session


def stream_worker(port, ctx, session=None):
    """The "return" server: (resumed, worker pid, new session)."""
    reused, data, new = tls_exchange(port, ctx, session)
    m = re.search(rb"worker=(\d+) reused=(\d)", data)
    if not m:
        raise RuntimeError(f"unexpected answer {data!r}")
    return reused, int(m.group(1)), new


def imap_greeting(port, ctx, session=None):
    """Implicit-TLS IMAP: the greeting, then LOGOUT. Returns (resumed, greeting, session)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            greeting = read_line(tls)
            tls.sendall(b"a1 LOGOUT\r\n")
            read_until(tls, b"a1 OK")
            reused, session = close_notify(tls)
            return reused, greeting, session


def imap_login_noop(port, ctx, session=None):
    """LOGIN through the proxy (auth_http, then the backend), NOOP, LOGOUT: the backend's
    NOOP line and whether the session was resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            read_line(tls)
            tls.sendall(b"a1 LOGIN user secret\r\n")
            login = read_line(tls)
            tls.sendall(b"a2 NOOP\r\n")
            noop = read_line(tls) + read_line(tls)
            tls.sendall(b"a3 LOGOUT\r\n")
            noop += read_until(tls, b"a3 OK")
            return close_notify(tls)[0], login + noop
