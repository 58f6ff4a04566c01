"""Run Debian's nginx (master + workers, in the foreground) on a loopback port with a generated
configuration and ngx_http_shmsess_module loaded, as the nginx integration test and
`make bench` need it.

Nothing here touches the system's nginx configuration: prefix, configuration, logs, pid file,
temp paths and the session segment all live in a throw-away directory. Every response says
which worker served it ("worker=PID reused=0|1 early=0|1"), in the format
harness.prefork.one_request reads.
"""

import os
import re
import signal
import ssl
import subprocess

from . import process
from .client import free_port, http_get, resumption_words, s_client, session_context
from .prefork import one_request

READY_TIMEOUT = 20.0
NGINX = "/usr/sbin/nginx"

CONFIG = """\
{modules}load_module "{module}";
daemon {daemon};
master_process on;
worker_processes {workers};
error_log "{root}/error.log" {log_level};
pid "{root}/nginx.pid";
{env}
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path "{root}/tmp/body";
    proxy_temp_path "{root}/tmp/proxy";
    fastcgi_temp_path "{root}/tmp/fastcgi";
    uwsgi_temp_path "{root}/tmp/uwsgi";
    scgi_temp_path "{root}/tmp/scgi";
    keepalive_timeout 0;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    ssl_session_timeout 300s;
    ssl_certificate "{certs}/server.pem";
    ssl_certificate_key "{certs}/server.key";
    map $ssl_session_reused $shmsess_reused {{ r 1; default 0; }}
    map $ssl_early_data $shmsess_early {{ 1 1; default 0; }}
{http}
    server {{
        listen 127.0.0.1:{port} ssl{listen_opts};
{server}
        location / {{ return 200 "worker=$pid reused=$shmsess_reused early=$shmsess_early\\n"; }}
{status}
    }}
{servers}
}}
{main}
"""

# Debian's dynamic stream and mail modules (libnginx-mod-stream, libnginx-mod-mail), which
# this project's stream and mail modules need loaded before them.
DEBIAN_MODULES = "/usr/lib/nginx/modules"

# The cache of each benchmark/test variant: the http-level directives.
def shmsess_cache(segment="anonymous", size="8m"):
    return f"    shmsess_session_cache {segment} {size};"


NGINX_SHARED = "    ssl_session_cache shared:SSL:10m;"
NO_CACHE = "    ssl_session_cache off;"


class Nginx(process.ServerRoot):
    """One nginx: `with Nginx(module, certs, shmsess_cache()) as n: ... n.port ...`.

    `http` goes into the http block (the cache directives), `server` into the test server,
    `servers` after it (more server blocks; "{root}", "{certs}", "{port2}" and "{port3}"
    are filled in). nginx runs in the foreground unless `daemon` (needed for a binary upgrade:
    nginx refuses USR2 while its master's parent is the one that started it). A `root`
    may be passed to reuse a directory (and a named segment in it) across runs."""

    def __init__(self, module, certs, http, workers=2, server="", servers="", root=None, port=None,
                 env=None, pass_env=(), status=True, log_level="info", listen_opts="", daemon=False,
                 modules=(), main="", ports=()):
        self.module = os.path.abspath(module)
        self.certs = os.path.abspath(certs)
        self.http = http
        self.server = server
        self.servers = servers
        self.workers = workers
        super().__init__(root, "shmsess-nginx-")
        self.port = port
        self.port2 = None
        self.port3 = None
        self.env = env
        self.pass_env = pass_env
        self.status = status
        self.log_level = log_level
        self.listen_opts = listen_opts
        self.daemon = daemon
        self.proc = None
        self.master = None  # the master's pid: the child we started, until a binary upgrade
        self.seen_workers = set()
        # More modules loaded before `module`, a main-level text after the http block (a
        # stream or mail block), and more named ports for it ("{port_NAME}" in `main`; a
        # dict gives their numbers, e.g. to restart on the same ports).
        self.modules = modules
        self.main = main
        self.ports = dict(ports) if isinstance(ports, dict) else {name: None for name in ports}

    def conf_path(self):
        return os.path.join(self.root, "nginx.conf")

    def write_config(self):
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        self.port = self.port or free_port()
        self.port2 = self.port2 or free_port()
        self.port3 = self.port3 or free_port()
        self.ports = {name: port or free_port() for name, port in self.ports.items()}
        fill = {"root": self.root, "port2": self.port2, "port3": self.port3, "certs": self.certs,
                **{f"port_{name}": port for name, port in self.ports.items()}}
        conf = CONFIG.format(
            modules="".join(f'load_module "{m}";\n' for m in self.modules), main=self.main.format(**fill),
            module=self.module, daemon="on" if self.daemon else "off", workers=self.workers, root=self.root, log_level=self.log_level,
            env="\n".join(f"env {name};" for name in self.pass_env), certs=self.certs,
            http=self.http.format(**fill), port=self.port, listen_opts=self.listen_opts,
            server=self.server.format(**fill), servers=self.servers.format(**fill),
            status=self.status_location())
        # surrogateescape: a path may hold bytes that are not UTF-8 (nginx paths are bytes)
        with open(self.conf_path(), "w", errors="surrogateescape") as f:
            f.write(conf)

    def argv(self, *args):
        """The nginx command line on this prefix, configuration and error log, then `args`."""
        return [NGINX, "-p", self.root, "-c", self.conf_path(), "-e", self.error_log_path(), *args]

    def command(self, *args):
        """nginx run on this configuration with extra arguments (-t, -s reload)."""
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=30)

    def start(self):
        self.write_config()
        self.log.mark()
        # A session of its own: signals meant for nginx's process group stay there.
        self.proc, self.out, _ = process.spawn(self.argv(), env=self.env)
        self.master = self.proc.pid
        if self.daemon:
            # The started process exits once the daemon runs; the daemon's pid file says who.
            if self.proc.wait(timeout=READY_TIMEOUT) != 0 or not self.read_pid_file():
                raise RuntimeError(f"nginx did not daemonize\n{self.stderr_text()}\n{self.error_log()}")
            self.master = self.read_pid_file()
        self.wait_workers(())
        return self

    def worker_pids(self):
        pids = process.children(self.master)
        self.seen_workers.update(pids)
        return pids

    def master_alive(self, pid=None):
        pid = pid or self.master
        if pid == self.proc.pid:
            return self.proc.poll() is None
        try:  # a daemon is not our child: a zombie counts as gone
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def wait_gone(self, pid, timeout=process.STOP_TIMEOUT):
        # Not our child: no wait() for it, the process table is the signal.
        return process.poll_until(lambda: not self.master_alive(pid), timeout)

    def read_pid_file(self):
        try:
            with open(os.path.join(self.root, "nginx.pid")) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def upgrade(self):
        """Binary upgrade on the fly (daemon mode only): USR2 starts a new master (the same
        binary, exec'd, so nothing mapped is inherited), then QUIT ends the old one. Returns the
        new workers once they answer and the old master is gone; the new master's pid file is
        the signal."""
        old_master, old_workers = self.master, self.worker_pids()
        os.kill(old_master, signal.SIGUSR2)
        def new_master():
            pid = self.read_pid_file()
            return pid if pid != old_master else 0

        # nginx writes the new master's pid file when it runs: polled, no other signal.
        new_master = process.poll_until(new_master, READY_TIMEOUT, alive=self.master_alive)
        if not new_master:
            raise RuntimeError(f"no new master after USR2\n{self.error_log()}")
        self.master = new_master
        pids = self.wait_workers(old_workers)
        os.kill(old_master, signal.SIGQUIT)
        if not self.wait_gone(old_master, READY_TIMEOUT):
            raise RuntimeError("the old master did not quit")
        return pids

    def wait_workers(self, old):
        """Return once `workers` workers not in `old` run, none of `old` is left, and a
        request is answered: nginx's own process list and a served request are the signals."""
        pids = []

        def ready():
            pids[:] = self.worker_pids()
            return len(pids) == self.workers and not set(pids) & set(old) and self._answers()

        # Polling the process table and the port: there is no other signal to wait on.
        if process.poll_until(ready, READY_TIMEOUT, alive=self.master_alive):
            return pids
        if not self.master_alive():
            raise RuntimeError(f"nginx exited with {self.proc.returncode}\n{self.stderr_text()}\n{self.error_log()}")
        self.stop()
        raise RuntimeError(f"nginx not ready after {READY_TIMEOUT}s (workers {pids}, old {sorted(old)})\n"
                           f"{self.error_log()}")

    def _answers(self):
        try:
            one_request(self.port, session_context(ssl.TLSVersion.TLSv1_2))
            return True
        except (OSError, ssl.SSLError, RuntimeError):
            return False

    def reload(self):
        """`nginx -s reload` (the signaller), returning the new workers once the old are gone."""
        old = self.worker_pids()
        self.write_config()
        r = self.command("-s", "reload")
        if r.returncode != 0:
            raise RuntimeError(f"nginx -s reload failed: {r.stderr}")
        return self.wait_workers(old)

    def status_location(self):
        """`status`: True for the http block's cache, a block's name ("stream") for that
        block's, False for none."""
        if not self.status:
            return ""
        block = "" if self.status is True else f" {self.status}"
        return f"        location = /sessions {{ shmsess_status{block}; }}"

    def stats(self):
        """The shmsess_status page as {field: value} (see parse_prometheus)."""
        status, body = get(self.port, "/sessions")
        if status != 200:
            raise RuntimeError(f"/sessions gave {status}: {body}")
        return parse_prometheus(body)

    def stderr_text(self):
        """What nginx wrote to its stdout and stderr (before it opened its error log)."""
        return self.out.text() if self.proc else ""

    def stop(self):
        if self.master and self.proc and self.master != self.proc.pid and self.master_alive():
            os.kill(self.master, signal.SIGTERM)
            if not self.wait_gone(self.master):
                os.kill(self.master, signal.SIGKILL)
        if self.proc:
            process.stop(self.proc, kill_group=True)
        self._kill_orphaned_workers()

    def _kill_orphaned_workers(self):
        """A master that exits on its own (a failed reload) leaves its workers running: end
        those this harness saw, by pid, if they are still nginx workers."""
        for pid in self.seen_workers:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read().startswith(b"nginx: worker"):
                        continue
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # already gone


def same_session(port, version, count, session=None, request=one_request):
    """A full handshake (unless `session` is given), then `count` connections offering its
    session (TLS 1.2; TLS 1.3 offers the newest ticket each time), each one `request(port,
    ctx, session)` -> (resumed, answer, new session). Returns the list of (resumed, answer)
    and the last session."""
    ctx = session_context(version)
    if session is None:
        _, _, session = request(port, ctx)
    results = []
    for _ in range(count):
        reused, answer, new_session = request(port, ctx, session)
        results.append((reused, answer))
        if version == ssl.TLSVersion.TLSv1_3:
            session = new_session
    return results, session


def made_on_and_stored(redis, port, version=ssl.TLSVersion.TLSv1_2, request=one_request):
    """A new session (TLS 1.2) or ticket (TLS 1.3) from the host on `port` (one `request`),
    returned once Redis holds its keys (the host stores them from a writer thread, off the
    handshake: Redis's key count is the readiness signal; a TLS 1.3 full handshake makes two
    tickets)."""
    want = int(redis.cli("DBSIZE")) + (2 if version == ssl.TLSVersion.TLSv1_3 else 1)
    _, _, session = request(port, session_context(version))
    # A host whose writer never stores it fails here, by name, not later as "did not resume".
    process.wait_until(lambda: int(redis.cli("DBSIZE")) >= want, 15, "the new session's keys in Redis")
    return session


def get(port, path):
    """A plain GET over a fresh TLS 1.2 connection: (status, body)."""
    status, body, _, _ = http_get(port, session_context(ssl.TLSVersion.TLSv1_2), path)
    return status, body.decode(errors="replace")


def parse_prometheus(body):
    """{field: value} of the library's Prometheus text (names without "shmsesscache_" and
    "_total", labels dropped; integers as int)."""
    out = {}
    for m in re.finditer(r"^shmsesscache_(\w+)(?:\{[^}]*\})? (\S+)$", body, re.M):
        name, value = m.group(1), m.group(2)
        out[name[:-len("_total")] if name.endswith("_total") else name] = \
            int(value) if value.isdigit() else float(value)
    return out


def s_client_early(port, sess_in, request_file):
    """`openssl s_client -sess_in -early_data`: offer a saved TLS 1.3 session with a request
    as 0-RTT data. Returns (resumed, early data accepted)."""
    out = s_client(port, "-tls1_3", "-sess_in", sess_in, "-early_data", request_file)
    return "Reused" in resumption_words(out), "Early data was accepted" in out


def s_client_save(port, sess_out, request_file):
    """A full TLS 1.3 handshake with `openssl s_client -sess_out`, reading the response (and
    so the ticket) to EOF. Returns the response."""
    with open(request_file) as req:
        return s_client(port, "-tls1_3", "-sess_out", sess_out, "-ign_eof", stdin=req)
