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
import subprocess

from . import process
from .client import HOST, client_context, free_port, http_get, resumption_words, s_client

READY_TIMEOUT = 20.0


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
ServerName {server_name}
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
{mpm_config}
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule status_module {mods}/mod_status.so
LoadModule dir_module {mods}/mod_dir.so
LoadModule socache_shmcb_module {mods}/mod_socache_shmcb.so
LoadModule ssl_module {mods}/mod_ssl.so
LoadModule socache_shmsess_module "{module}"
{mods_extra}MaxConnectionsPerChild {max_conn}
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


# prefork: `workers` processes. event: `workers` processes of 4 threads each (the writer
# thread and the deadline then run beside handshake threads).
MPM_CONFIG = {
    "prefork": """LoadModule mpm_prefork_module {mods}/mod_mpm_prefork.so
StartServers {workers}
MinSpareServers {workers}
MaxSpareServers {workers}
ServerLimit {max_workers}
MaxRequestWorkers {max_workers}""",
    "event": """LoadModule mpm_event_module {mods}/mod_mpm_event.so
StartServers {workers}
ServerLimit {max_workers}
ThreadsPerChild 4
MaxRequestWorkers {max_threads}
MinSpareThreads 4
MaxSpareThreads {max_threads}""",
}


class Apache(process.ServerRoot):
    """One httpd: `with Apache(module, certs, "shmsess:(8M)") as a: ... a.port ...`.

    `cache` is the SSLSessionCache argument (e.g. "shmsess", "shmcb:/path(512000)"). A
    `root` may be passed to reuse a directory (and a named segment in it) across runs."""

    def __init__(self, module, certs, cache, workers=4, max_conn=8, root=None, ssl_level="trace2",
                 max_workers=None, port=None, env=None, extra="", mpm="prefork", server_name=None,
                 modules=()):
        self.module = os.path.abspath(module)
        self.certs = os.path.abspath(certs)
        self.cache = cache
        self.workers = workers
        self.max_workers = max_workers or max(16, workers)
        self.max_conn = max_conn
        super().__init__(root, "shmsess-apache-")
        self.ssl_level = ssl_level
        self.proc = None
        self.port = port
        self.env = env
        self.extra = extra
        self.mpm = mpm
        # mod_ssl's session id context is "ServerName:port": hosts of one fleet share it.
        self.server_name = server_name
        self.modules = modules  # more (name, file) to load, e.g. ("socache_redis_module", ...)

    def start(self):
        # mod_ssl's session id context is derived from "servername:port": a restart that
        # should resume old sessions keeps its port.
        self.port = self.port or free_port()
        self.write_config()
        self.log.mark()
        # A session of its own: on shutdown prefork signals its whole process group, which
        # would otherwise include the test.
        self.proc, self.out, _ = process.spawn([apache_binary(), "-f", self.conf_path(), "-DFOREGROUND"],
                                               env=self.env)
        self._wait_ready()
        return self

    def conf_path(self):
        return os.path.join(self.root, "httpd.conf")

    def write_config(self, cache=None):
        """Write httpd.conf, with `cache` as the new SSLSessionCache argument if given (a
        running httpd reads it at its next restart)."""
        self.cache = cache or self.cache
        os.makedirs(os.path.join(self.root, "htdocs"), exist_ok=True)
        with open(os.path.join(self.root, "htdocs", "index.html"), "w") as f:
            f.write("hello\n")
        # Children run as www-data when started as root: they must reach the document root.
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(self.root, "htdocs"), 0o755)
        user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
        mods = modules_dir()
        mpm_config = MPM_CONFIG[self.mpm].format(mods=mods, workers=self.workers, max_workers=self.max_workers,
                                                 max_threads=4 * self.max_workers)
        mods_extra = "".join(f"LoadModule {name} {mods}/{so}\n" for name, so in self.modules)
        conf = CONFIG.format(root=self.root, port=self.port, mods=mods, module=self.module, mpm_config=mpm_config,
                             mods_extra=mods_extra, max_conn=self.max_conn, server_name=self.server_name or
                             f"127.0.0.1:{self.port}", cache=self.cache.format(root=self.root), certs=self.certs,
                             user=user, ssl_level=self.ssl_level, extra=self.extra)
        with open(self.conf_path(), "w") as f:
            f.write(conf)

    def config_test(self):
        """`apache2 -t` on the configuration: (exit status, its output)."""
        out = subprocess.run([apache_binary(), "-t", "-f", self.conf_path()], capture_output=True, text=True,
                             env={**os.environ, **(self.env or {})}, timeout=READY_TIMEOUT)
        return out.returncode, out.stdout + out.stderr

    def operator_graceful(self):
        """What `apache2ctl graceful` does: the configuration test, then the graceful restart
        only if it passed. Returns the test's (exit status, output)."""
        rc, text = self.config_test()
        if rc == 0:
            self.graceful()
        return rc, text

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _wait_ready(self):
        # Readiness: the TLS handshake on the port completes (the listener exists before the
        # children do; a completed handshake means a child is accepting). Polling a port that
        # is not yet open: the socket error is the signal.
        try:
            process.wait_until(self._handshakes, READY_TIMEOUT, "httpd not ready",
                               alive=lambda: self.proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e} (exit status {self.proc.returncode}): {self.out.text()}\n{self.error_log()}")

    def _handshakes(self):
        ctx = client_context()
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    return True
        except OSError:
            return False

    def graceful(self):
        """`apachectl graceful` (SIGUSR1), returning once the new generation says it runs: its
        own "resuming normal operations" line in the error log is the signal."""
        marker = "resuming normal operations"
        seen = self.error_log().count(marker)
        self.proc.send_signal(signal.SIGUSR1)
        # The log is written by httpd as it goes; re-reading it is the only signal it gives.
        try:
            process.wait_until(lambda: self.error_log().count(marker) > seen, READY_TIMEOUT,
                               "httpd did not come back from a graceful restart",
                               alive=lambda: self.proc.poll() is None)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.error_log()}")

    def stop(self):
        if self.proc:
            process.stop(self.proc)




def s_client_chain(port, count, groups, sess_dir):
    """`openssl s_client -tls1_3 -groups GROUPS`, `count` + 1 times, each offering the ticket
    the previous one left (-sess_in/-sess_out): what a client whose first key share is not a
    group the server accepts sees (a HelloRetryRequest on every handshake). Returns the list of
    "New"/"Reused" words and the path of the first session file."""
    words = []
    prev = None
    for i in range(count + 1):
        out_path = os.path.join(sess_dir, f"sess{i}.pem")
        words.append(_s_client_get(port, groups, "-sess_out", out_path, *(("-sess_in", prev) if prev else ())))
        prev = out_path
    return words, os.path.join(sess_dir, "sess0.pem")


def s_client_offer(port, groups, sess_in):
    """One s_client -tls1_3 offering the session in `sess_in`: "New" or "Reused"."""
    return _s_client_get(port, groups, "-sess_in", sess_in)


def _s_client_get(port, groups, *args):
    """s_client -tls1_3 -groups GROUPS with a request, read to the server's close (the
    NewSessionTicket arrives before the end): "New", "Reused" or "none"."""
    out = s_client(port, "-tls1_3", "-groups", groups, "-no_ticket", "-ign_eof", *args,
                   input="GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
    words = resumption_words(out)
    return words[0] if words else "none"


def get(port, ctx, path="/index.html", session=None):
    """One connection, one HTTP/1.0 GET read to EOF (so a TLS 1.3 ticket has arrived).
    Returns (status, body, session_reused, session)."""
    status, body, reused, session = http_get(port, ctx, path, session)
    return status, body.decode(errors="replace"), reused, session


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
