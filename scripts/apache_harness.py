"""Run Debian's Apache httpd (mpm_prefork, mod_ssl) in the foreground on a loopback port with a
generated configuration, as the Apache integration test and `make bench` need it.

Nothing here touches the system's Apache configuration: ServerRoot, logs, pid file, runtime
files and the session segment all live in a throw-away directory.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import prefork_harness
from prefork_harness import free_port

READY_TIMEOUT = 20.0
IO_TIMEOUT = 10.0


def apache_binary():
    for b in ("/usr/sbin/apache2", "/usr/sbin/httpd"):
        if os.access(b, os.X_OK):
            return b
    return shutil.which("apache2") or shutil.which("httpd")


def modules_dir():
    out = subprocess.run(["apxs", "-q", "LIBEXECDIR"], capture_output=True, text=True)
    d = out.stdout.strip()
    return d if out.returncode == 0 and d else "/usr/lib/apache2/modules"


CONFIG = """\
ServerRoot "{root}"
ServerName 127.0.0.1:{port}
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}"
ErrorLog "{root}/error.log"
# The pid on every line: the test matches each session's store with the lookups that found it.
ErrorLogFormat "[%P] [%l] [%m] %M"
LogLevel warn ssl:{ssl_level} socache_shmsess:info
# An flock mutex leaves a file per mutex (ssl-cache.<pid>): with a provider that is safe for
# concurrent use mod_ssl creates no "ssl-cache" mutex, so no such file.
Mutex flock:{root} ssl-cache
{user}
LoadModule mpm_prefork_module {mods}/mod_mpm_prefork.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule status_module {mods}/mod_status.so
LoadModule dir_module {mods}/mod_dir.so
LoadModule socache_shmcb_module {mods}/mod_socache_shmcb.so
LoadModule ssl_module {mods}/mod_ssl.so
LoadModule socache_shmsess_module "{module}"
StartServers {workers}
MinSpareServers {workers}
MaxSpareServers {workers}
ServerLimit {max_workers}
MaxRequestWorkers {max_workers}
MaxConnectionsPerChild {max_conn}
KeepAlive Off
DocumentRoot "{root}/htdocs"
DirectoryIndex index.html
ExtendedStatus On
<Location /server-status>
    SetHandler server-status
</Location>
SSLSessionCache {cache}
SSLSessionCacheTimeout 300
SSLSessionTickets off
SSLProtocol -all +TLSv1.2 +TLSv1.3
SSLEngine on
SSLCertificateFile "{certs}/server.pem"
SSLCertificateKeyFile "{certs}/server.key"
{extra}
"""


class Apache:
    """One httpd: `with Apache(module, certs, "shmsess:(8M)") as a: ... a.port ...`.

    `cache` is the SSLSessionCache argument (e.g. "shmsess", "shmcb:/path(512000)"). A
    `root` may be passed to reuse a directory (and a named segment in it) across runs."""

    def __init__(self, module, certs, cache, workers=4, max_conn=8, root=None, ssl_level="trace2",
                 max_workers=None, port=None, env=None, extra=""):
        self.module = os.path.abspath(module)
        self.certs = os.path.abspath(certs)
        self.cache = cache
        self.workers = workers
        self.max_workers = max_workers or max(16, workers)
        self.max_conn = max_conn
        self.own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="shmsess-apache-")
        self.ssl_level = ssl_level
        self.proc = None
        self.port = port
        self.env = env
        self.extra = extra

    def start(self):
        os.makedirs(os.path.join(self.root, "htdocs"), exist_ok=True)
        with open(os.path.join(self.root, "htdocs", "index.html"), "w") as f:
            f.write("hello\n")
        # Children run as www-data when started as root: they must reach the document root.
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(self.root, "htdocs"), 0o755)
        # mod_ssl's session id context is derived from "servername:port": a restart that
        # should resume old sessions keeps its port.
        self.port = self.port or free_port()
        user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
        conf = CONFIG.format(root=self.root, port=self.port, mods=modules_dir(), module=self.module,
                             workers=self.workers, max_workers=self.max_workers, max_conn=self.max_conn,
                             cache=self.cache.format(root=self.root), certs=self.certs, user=user,
                             ssl_level=self.ssl_level, extra=self.extra)
        conf_path = os.path.join(self.root, "httpd.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        open(self.error_log_path(), "a").close()
        self.log_offset = os.path.getsize(self.error_log_path())
        # A session of its own: on shutdown prefork signals its whole process group, which
        # would otherwise include the test.
        self.proc = subprocess.Popen([apache_binary(), "-f", conf_path, "-DFOREGROUND"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, **(self.env or {})})
        self._wait_ready()
        return self

    def _wait_ready(self):
        # Readiness: the TLS handshake on the port completes (the listener exists before the
        # children do; a completed handshake means a child is accepting).
        deadline = time.monotonic() + READY_TIMEOUT
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        while True:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read()
                raise RuntimeError(f"httpd exited with {self.proc.returncode}: {out}\n{self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as raw:
                    with ctx.wrap_socket(raw, server_hostname="localhost"):
                        return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"httpd not ready after {READY_TIMEOUT}s\n{self.error_log()}")
                # Polling a port that is not yet open: the socket error is the signal.
                time.sleep(0.05)

    def graceful(self):
        """`apachectl graceful` (SIGUSR1), returning once the new generation says it runs: its
        own "resuming normal operations" line in the error log is the signal."""
        marker = "resuming normal operations"
        seen = self.error_log().count(marker)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + READY_TIMEOUT
        while self.error_log().count(marker) <= seen:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"httpd did not come back from a graceful restart\n{self.error_log()}")
            # The log is written by httpd as it goes; re-reading it is the only signal it gives.
            time.sleep(0.05)

    def error_log_path(self):
        return os.path.join(self.root, "error.log")

    def error_log(self):
        """This run's part of the error log."""
        try:
            with open(self.error_log_path(), errors="replace") as f:
                f.seek(self.log_offset)
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def cleanup(self):
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# One no-ticket context per protocol version, shared with the other harnesses.
client_context = prefork_harness.session_context


def s_client_chain(port, count, groups, sess_dir):
    """`openssl s_client -tls1_3 -groups GROUPS`, `count` + 1 times, each offering the ticket
    the previous one left (-sess_in/-sess_out): what a client whose first key share is not a
    group the server accepts sees (a HelloRetryRequest on every handshake). Returns the list of
    "New"/"Reused" words and the path of the first session file."""
    words = []
    prev = None
    for i in range(count + 1):
        out_path = os.path.join(sess_dir, f"sess{i}.pem")
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-groups", groups,
               "-no_ticket", "-ign_eof", "-sess_out", out_path]
        if prev:
            cmd += ["-sess_in", prev]
        # A request, read to the server's close: the NewSessionTicket arrives before the end.
        res = subprocess.run(cmd, input="GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", capture_output=True,
                             text=True, timeout=30)
        m = re.search(r"^(New|Reused), ", res.stdout, re.M)
        words.append(m.group(1) if m else "none")
        prev = out_path
    return words, os.path.join(sess_dir, "sess0.pem")


def s_client_offer(port, groups, sess_in):
    """One s_client -tls1_3 offering the session in `sess_in`: "New" or "Reused"."""
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-groups", groups,
                          "-no_ticket", "-ign_eof", "-sess_in", sess_in],
                         input="GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", capture_output=True, text=True,
                         timeout=30)
    m = re.search(r"^(New|Reused), ", res.stdout, re.M)
    return m.group(1) if m else "none"


def get(port, ctx, path="/index.html", session=None):
    """One connection, one HTTP/1.0 GET read to EOF (so a TLS 1.3 ticket has arrived).
    Returns (status, body, session_reused, session)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw:
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
            return status, body.decode(errors="replace"), tls.session_reused, tls.session


SESSION_LOG = re.compile(r"^\[(\d+)\] \[trace2\] \[ssl\] .*Inter-Process Session Cache: "
                         r"request=(GET|SET|REM) status=(\w+) id=([0-9A-Fa-f]+)", re.M)


def session_events(log):
    """mod_ssl's debug lines about the session cache: a list of (pid, request, status, id)."""
    return [(int(m.group(1)), m.group(2), m.group(3), m.group(4).upper()) for m in SESSION_LOG.finditer(log)]


def status_auto(port, ctx):
    """/server-status?auto as a dict (the TLS session cache keys included)."""
    status, body, _, _ = get(port, ctx, "/server-status?auto")
    if status != 200:
        raise RuntimeError(f"/server-status?auto gave {status}")
    out = {}
    for line in body.splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v.strip()
        elif line.strip():
            out[line.strip()] = ""
    return out
