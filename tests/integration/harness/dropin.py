"""Debian's own TLS servers (hitch, nsd, lighttpd, proftpd, dovecot) as throw-away instances
on loopback, started plainly or under `shmsesscache run`, and a client that resumes sessions.

Each server gets a configuration generated here (own directory, pid file, ports on
127.0.0.1), runs in the foreground where it can, and is ready when its TLS port accepts.
Counts and timeouts are bounded.
"""

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

from .client import client_context, free_port

READY_TIMEOUT = 20.0
IO_TIMEOUT = 5.0
WORKERS = 4


def wait_for_port(port, proc, timeout=READY_TIMEOUT):
    """Ready when the port accepts a TCP connection (bounded); the server must still run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


class Backend:
    """hitch's backend: a TCP echo server on loopback (one thread per connection)."""

    def __init__(self, http=False):
        self.http = http
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c):
        if self.http:
            return self._http(c)
        self._echo_bytes(c)

    @staticmethod
    def _http(c):
        """One HTTP/1.0 answer, then close: what bench/loadgen.c reads to EOF."""
        with c:
            c.settimeout(IO_TIMEOUT)
            try:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = c.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            except OSError:
                pass

    @staticmethod
    def _echo_bytes(c):
        with c:
            c.settimeout(IO_TIMEOUT)
            try:
                while data := c.recv(4096):
                    c.sendall(data)
            except OSError:
                pass

    def close(self):
        self.sock.close()


class TLSServer:
    """A server process, plain or under the drop-in. Subclasses say how to configure it."""

    dropin_args = []       # what its recipe adds to `shmsesscache run` (docs/dropin.md)

    payload = b""          # what the client sends after the handshake (to read a reply)
    reload_signal = signal.SIGHUP
    root_master = False    # a process that stays root while unprivileged workers serve
    persistent_workers = True  # False: a child per connection (proftpd, dovecot)
    needs_named_segment = False  # its workers are exec'd: an anonymous segment cannot reach them
    worker_title = None    # the serving processes' command line contains this (dovecot's many kinds)
    name = "server"

    def __init__(self, cli=None, run_args=(), certs=None, wrapper=()):
        self.wrapper = list(wrapper)  # e.g. ["timeout", "300"]: a process in between
        self.cli = cli
        self.run_args = list(run_args) + (self.dropin_args if cli else [])
        self.certs = certs
        self.dir = tempfile.mkdtemp(prefix=f"shmsess-{self.name}-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.proc = None
        self.log = os.path.join(self.dir, "dropin.log")

    def command(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def start(self):
        cmd = self.wrapper + self.command()
        if self.cli:
            cmd = [self.cli, "run", "--log", self.log, *self.run_args, "--", *cmd]
        self.out = open(os.path.join(self.dir, "server.out"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=self.env(),
                                     start_new_session=True)
        try:
            wait_for_port(self.port, self.proc)
        except RuntimeError as e:
            self.stop()
            said = self.server_output()[-2000:] + self.dropin_log()[-1000:]
            self.cleanup()
            raise RuntimeError(f"{self.name}: {e}: {said}") from None
        return self

    def master_pid(self):
        return self.proc.pid

    def session_pids(self):
        out = subprocess.run(["ps", "-o", "pid=", "-s", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def workers(self):
        """Pids of the processes that serve: those of the server's session without children
        (hitch's and lighttpd's workers are the master's children, nsd's the grandchildren)."""
        out = subprocess.run(["ps", "-o", "pid=,ppid=", "-s", str(self.proc.pid)], capture_output=True, text=True)
        pairs = [tuple(int(x) for x in line.split()) for line in out.stdout.splitlines() if line.strip()]
        parents = {pp for _, pp in pairs}
        leaves = [p for p, _ in pairs if p not in parents and p != self.proc.pid]
        return sorted(p for p in leaves if self.worker_title is None or self.worker_title in cmdline(p))

    def reload(self, timeout=15):
        """Send the reload signal and wait until it took: for a server whose workers outlive
        connections, new workers and none of the old ones left (an old worker still in accept()
        takes a connection and then resets it as it leaves: hitch did, twice); then the port
        answering."""
        old = set(self.workers())
        os.kill(self.master_pid(), self.reload_signal)
        deadline = time.monotonic() + timeout

        def took():
            now = set(self.workers())
            return bool(now - old) and not (now & old)
        while self.persistent_workers and time.monotonic() < deadline and not took():
            time.sleep(0.1)
        wait_for_port(self.port, self.proc)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers of a killed master may linger in the session: end them too.
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if getattr(self, "out", None):
            self.out.close()

    def dropin_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def server_output(self):
        with open(os.path.join(self.dir, "server.out")) as f:
            return f.read()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()

    def pem_with_key(self, mode=0o600, owner=None):
        """certificate and key in one file, as hitch and lighttpd take them; `owner` for a
        server that reads it again after dropping root (lighttpd's graceful restart)."""
        path = os.path.join(self.dir, "server-with-key.pem")
        with open(path, "w") as out:
            for part in ("server.key", "server.pem"):
                with open(os.path.join(self.certs, part)) as f:
                    out.write(f.read())
        os.chmod(path, mode)
        if owner:
            shutil.chown(path, owner)
        return path


class Hitch(TLSServer):
    name = "hitch"
    payload = b"ping\n"
    root_master = True
    http_backend = False  # True: the backend answers one HTTP/1.0 request (for bench/loadgen)
    groups = None         # e.g. "P-256": the only key exchange group (ecdh-curve), for HRRs

    def command(self):
        self.backend = Backend(http=self.http_backend)
        config = []
        if self.groups:
            conf = os.path.join(self.dir, "hitch.conf")
            with open(conf, "w") as f:
                f.write(f'ecdh-curve = "{self.groups}"\n')
            config = [f"--config={conf}"]
        return ["hitch", *config, f"--frontend=[127.0.0.1]:{self.port}", f"--backend=[127.0.0.1]:{self.backend.port}",
                f"--workers={WORKERS}", "--user=_hitch", "--tls-protos=TLSv1.2 TLSv1.3",
                f"--pidfile={self.dir}/hitch.pid", self.pem_with_key()]

    def stop(self):
        super().stop()
        if hasattr(self, "backend"):
            self.backend.close()


def dns_query():
    """A DNS-over-TCP query for example.com/A (nsd answers REFUSED: it serves no zone)."""
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
    return struct.pack(">H", len(q)) + q


class Nsd(TLSServer):
    name = "nsd"
    payload = dns_query()

    def command(self):
        conf = os.path.join(self.dir, "nsd.conf")
        d = os.path.join(self.dir, "var")  # written by the nsd user after the drop
        os.mkdir(d)
        shutil.chown(d, "nsd", "nsd")
        with open(conf, "w") as f:
            f.write(f"""server:
    ip-address: 127.0.0.1@{self.port}
    port: {free_port()}
    tls-port: {self.port}
    tls-service-key: {self.certs}/server.key
    tls-service-pem: {self.certs}/server.pem
    server-count: {WORKERS}
    reuseport: no
    username: nsd
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    do-ip6: no
remote-control:
    control-enable: no
""")
        return ["nsd", "-d", "-c", conf]


class Lighttpd(TLSServer):
    """lighttpd turns OpenSSL's server cache off itself: the drop-in needs --force."""
    name = "lighttpd"
    payload = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
    reload_signal = signal.SIGUSR1  # graceful restart
    dropin_args = ["--force"]
    root_master = False             # it drops to www-data before forking its workers

    def command(self):
        d = self.dir
        docs = os.path.join(d, "htdocs")
        os.mkdir(docs)
        with open(os.path.join(docs, "index.html"), "w") as f:
            f.write("hello\n")
        os.chmod(docs, 0o755)
        conf = os.path.join(d, "lighttpd.conf")
        with open(conf, "w") as f:
            f.write(f"""server.modules = ("mod_openssl")
server.bind = "127.0.0.1"
server.port = {self.port}
server.document-root = "{docs}"
server.max-worker = {WORKERS}
server.username = "www-data"
server.groupname = "www-data"
server.pid-file = "{d}/lighttpd.pid"
ssl.engine = "enable"
ssl.pemfile = "{self.pem_with_key(owner="www-data")}"
""")
        return ["lighttpd", "-D", "-f", conf]


class Proftpd(TLSServer):
    """proftpd with mod_tls, implicit FTPS: a child per connection, forked by a master that
    runs as `nobody` with root as its real and saved uid (seteuid only)."""
    name = "proftpd"
    payload = b""  # the server speaks first ("220 ..."), which also brings TLS 1.3 tickets
    persistent_workers = False

    def command(self):
        d = self.dir
        conf = os.path.join(d, "proftpd.conf")
        with open(conf, "w") as f:
            f.write(f"""ServerName "shmsess-test"
ServerType standalone
DefaultServer on
Port {self.port}
DefaultAddress 127.0.0.1
UseIPv6 off
User nobody
Group nogroup
MaxInstances 60
PidFile {d}/proftpd.pid
ScoreboardFile {d}/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
ModulePath /usr/lib/proftpd
LoadModule mod_tls.c
TLSEngine on
TLSProtocol TLSv1.2 TLSv1.3
TLSRSACertificateFile {self.certs}/server.pem
TLSRSACertificateKeyFile {self.certs}/server.key
TLSOptions UseImplicitSSL NoSessionReuseRequired
TLSLog {d}/tls.log
""")
        return ["proftpd", "-n", "-q", "-c", conf]


PRELOAD_VARIABLES = ("LD_PRELOAD SHMSESS_PRELOAD_PATH SHMSESS_PRELOAD_SIZE SHMSESS_PRELOAD_NO_TICKETS "
                     "SHMSESS_PRELOAD_IGNORE_UNEXPECTED_EOF SHMSESS_PRELOAD_FORCE SHMSESS_PRELOAD_LOG "
                     "SHMSESS_PRELOAD_ONLY")


class Dovecot(TLSServer):
    """dovecot's imap-login: forked *and exec'd* per connection (service_count = 1, the
    default), chrooted, as dovenull, with its own ticket keys per process: the drop-in needs a
    named segment, tickets off, and import_environment passing its variables on."""
    name = "dovecot"
    payload = b""  # the server greets first ("* OK ...")
    persistent_workers = False
    needs_named_segment = True
    worker_title = "imap-login"
    # Only the login processes map the segment, not the imap processes of logged-in users.
    dropin_args = ["--only", "imap-login,pop3-login"]

    def command(self):
        d = self.dir
        conf = os.path.join(d, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(f"""base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{self.certs}/server.pem
ssl_key = <{self.certs}/server.key
ssl_min_protocol = TLSv1.2
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
import_environment = TZ {PRELOAD_VARIABLES}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
""")
        return ["dovecot", "-F", "-c", conf]


SERVERS = {"hitch": Hitch, "nsd": Nsd, "lighttpd": Lighttpd, "proftpd": Proftpd, "dovecot": Dovecot}


def connect(server, ctx, session=None):
    """One connection: handshake, the server's payload, one read (so a TLS 1.3 ticket arrives),
    close_notify. Returns (reused, the session to offer next)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            if server.payload:
                tls.sendall(server.payload)
            try:
                tls.recv(4096)
            except (socket.timeout, ssl.SSLError, OSError):
                pass
            reused, new = tls.session_reused, tls.session
            try:
                tls.unwrap()
            except (ssl.SSLError, OSError):
                pass
            return reused, new


def connect_and_drop(server, ctx, session=None):
    """A handshake, the payload and its answer, then TCP closed without close_notify (a
    browser's unused preconnect). Returns (reused, session)."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
    tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    try:
        if server.payload:
            tls.sendall(server.payload)
        try:
            tls.recv(4096)
        except (socket.timeout, ssl.SSLError, OSError):
            pass
        return tls.session_reused, tls.session
    finally:
        # SSLSocket.shutdown drops the TLS layer and shuts the socket down: no close_notify.
        tls.shutdown(socket.SHUT_RDWR)
        tls.close()


def resumed_after_drops(server, count):
    """TLS 1.2 without tickets: a full handshake dropped without close_notify, then `count`
    clean reconnections offering that session, one at a time. How many resumed."""
    ctx = client_context(ssl.TLSVersion.TLSv1_2, True)
    reused = 0
    for _ in range(count):
        _, session = connect_and_drop(server, ctx)
        # The worker must have read the EOF before the session is offered again. Nothing
        # signals it where the session is kept (that is the point), so: a bounded pause.
        time.sleep(0.2)
        r, _ = connect(server, ctx, session)
        reused += bool(r)
    return reused


def resumed_of(server, version, count, no_ticket=True):
    """A client reconnecting `count` times after a first full handshake, each time offering the
    session it holds. Returns how many of the `count` resumed."""
    ctx = client_context(version, no_ticket)
    _, session = connect(server, ctx)
    reused = 0
    for _ in range(count):
        r, new = connect(server, ctx, session)
        reused += bool(r)
        session = new
    return reused


def s_client_tls13(server, *args):
    """`openssl s_client -tls1_3` sending one HTTP/1.0 request and reading until the server
    closes (so the ticket arrives). Returns its output."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_3", "-ign_eof",
                          *args], input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=30)
    return out.stdout


def replayed_ticket_resumes(server, version=ssl.TLSVersion.TLSv1_3):
    """Offer one TLS 1.3 ticket twice: (first resumed, second resumed)."""
    ctx = client_context(version, True)
    _, ticket = connect(server, ctx)
    first, _ = connect(server, ctx, ticket)
    second, _ = connect(server, ctx, ticket)
    return first, second


def load(server, stop, counter):
    """Full handshakes and resumptions until `stop` is set (for kills under load)."""
    ctx = client_context(ssl.TLSVersion.TLSv1_2, True)
    session = None
    while not stop.is_set():
        try:
            _, session = connect(server, ctx, session)
            counter[0] += 1
        except OSError:
            counter[1] += 1
            session = None


def segment_range(pid, path):
    """(start, end) of the mapping of `path` in process `pid`."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            if line.rstrip().endswith(path):
                a, b = line.split()[0].split("-")
                return int(a, 16), int(b, 16)
    raise RuntimeError(f"{path} is not mapped in {pid}")


class LockTrace:
    """gdb attached to `pid`, counting pthread_mutex_lock/trylock calls on a mutex inside the
    segment mapping (every shard lock the library takes goes through one of them). Stopped
    with SIGINT, then it detaches, removing its breakpoints."""

    def __init__(self, pid, path):
        start, end = segment_range(pid, path)
        cond = f"(unsigned long)$rdi >= {start} && (unsigned long)$rdi < {end}"
        script = ["set pagination off", "set confirm off",
                  "handle SIGHUP SIGTERM SIGPIPE SIGCHLD SIGUSR1 SIGUSR2 nostop noprint pass"]
        for n, fn in enumerate(("pthread_mutex_lock", "pthread_mutex_trylock"), 1):
            script += [f'dprintf {fn},"SEGMENT-LOCK\\n"', f"condition {n} {cond}"]
        script += ['printf "TRACING\\n"', "continue", "detach", "quit"]
        args = ["gdb", "-q", "-nx", "-batch", "-p", str(pid)]
        for line in script:
            args += ["-ex", line]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL)
        self.lines = []
        deadline = time.monotonic() + 30
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("TRACING") or time.monotonic() > deadline:
                break
        if not any(l.startswith("TRACING") for l in self.lines):
            raise RuntimeError("gdb did not attach: " + "".join(self.lines[-5:]))

    def stop(self):
        """Number of segment lock calls seen."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        self.lines += out.splitlines()
        return sum(1 for l in self.lines if l.startswith("SEGMENT-LOCK"))
