"""A throw-away redis-server on 127.0.0.1 for the second-tier tests and benchmarks.

Its configuration file, working directory and log live in a temporary directory; nothing is
persisted (no RDB, no AOF). Readiness is the server's own "Ready to accept connections" line.
"""

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

from . import process
from .client import free_port
from .prefork import one_request


def write_key(path, *keys):
    """A key file of mode 0600, one hex key per line (the first seals), rewritten in place if it
    exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(k + "\n" for k in keys))


def new_key():
    """A fresh AES-256 key as 64 hex digits (`openssl rand -hex 32`)."""
    return subprocess.run(["openssl", "rand", "-hex", "32"], capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def key_dir(prefix):
    """A throw-away directory holding `key`, a fresh key file (new_key, mode 0600), removed
    with everything in it at the end: `with key_dir("shmsess-x-") as tmp: ...`."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        write_key(os.path.join(tmp, "key"), new_key())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

READY_TIMEOUT = 15.0


def make_ca(directory, name, hosts=("127.0.0.1", "localhost")):
    """A throw-away CA and a server certificate it signs for `hosts` (IP and DNS SANs), made
    with the openssl command. Returns (ca.pem, server.pem, server.key) paths."""
    ca, ca_key = os.path.join(directory, f"{name}-ca.pem"), os.path.join(directory, f"{name}-ca.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", f"/CN={name} test CA", "-keyout", ca_key, "-out", ca)
    return (ca, *server_cert(directory, name, ca, hosts))


def server_cert(directory, name, ca, hosts):
    """A server certificate for `hosts` signed by the CA `ca` made by make_ca (its key is next
    to it). Returns (server.pem, server.key)."""
    crt, key = os.path.join(directory, f"{name}-server.pem"), os.path.join(directory, f"{name}-server.key")
    csr, ext = os.path.join(directory, f"{name}.csr"), os.path.join(directory, f"{name}.ext")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=redis",
             "-keyout", key, "-out", csr)
    sans = ",".join(("IP:" if h[0].isdigit() else "DNS:") + h for h in hosts)
    with open(ext, "w") as f:
        f.write(f"subjectAltName={sans}\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca[:-len(".pem")] + ".key", "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", crt)
    return crt, key


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def redis_cli(*args, timeout=20):
    """redis-cli ARGS: its output, or RuntimeError with its error output."""
    out = subprocess.run(["redis-cli", *[str(a) for a in args]], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli {args}: {out.stderr}")
    return out.stdout


class Redis:
    """`with Redis(password="pw") as r: ... r.url ... r.cli("KEYS", "*")`. With
    `tls=(ca, cert, key)` it listens only with TLS (`tls-port`) and `url` is `rediss://`."""

    def __init__(self, password=None, port=None, tls=None, extra=""):
        self.password = password
        self.port = port or free_port()
        self.tls = tls
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="shmsess-redis-")
        self.proc = None

    def url_for(self, host="127.0.0.1"):
        auth = f"default:{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/0"

    @property
    def url(self):
        return self.url_for()

    def start(self):
        conf = os.path.join(self.dir, "redis.conf")
        with open(conf, "w") as f:
            if self.tls:
                ca, cert, key = self.tls
                f.write(f"port 0\ntls-port {self.port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
                        f"tls-ca-cert-file {ca}\ntls-auth-clients no\n")
            else:
                f.write(f"port {self.port}\n")
            f.write(f"bind 127.0.0.1\ndir {self.dir}\nsave \"\"\nappendonly no\n"
                    "daemonize no\nprotected-mode yes\nlogfile \"\"\nloglevel notice\n"
                    # Sessions must not be evicted for other data: expire only by their TTL.
                    "maxmemory-policy noeviction\n")
            if self.password:
                f.write(f"requirepass {self.password}\n")
            f.write(self.extra)
        os.chmod(conf, 0o600)
        self.proc, self.log, _ = process.spawn(["redis-server", conf])
        if self.log.wait_for("Ready to accept connections", READY_TIMEOUT) is None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + self.log.text())
        return self

    def client_flags(self):
        """redis-cli's flags for this server's TLS and password."""
        flags = ["--tls", "--cacert", self.tls[0]] if self.tls else []
        return flags + (["-a", self.password, "--no-auth-warning"] if self.password else [])

    def cli(self, *args):
        return redis_cli("-h", "127.0.0.1", "-p", str(self.port), *self.client_flags(), *args)

    def pause(self):
        """A hung server: connections are accepted by the kernel, nothing is answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.stop(self.proc)
            self.log.wait_end(process.STOP_TIMEOUT)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()


class Cluster:
    """A throw-away Redis Cluster of `masters` nodes on 127.0.0.1 (no replicas), created with
    `redis-cli --cluster create`; ready once every node reports cluster_state:ok.
    `with Cluster() as c: ... c.url ... c.nodes[2].stop()`. With `tls=(ca, [(cert, key), ...])`
    the nodes speak only TLS, to clients and to each other, node i with the i-th certificate
    (and `masters` is the number of certificates)."""

    def __init__(self, masters=3, tls=None):
        # A cache: the masters left keep serving their slots when one fails.
        conf = ("cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\n"
                "cluster-require-full-coverage no\n" + ("tls-cluster yes\n" if tls else ""))
        node_tls = [(tls[0], cert, key) for cert, key in tls[1]] if tls else [None] * masters
        # An explicit bus port: the default (port + 10000) needs ports below 55536.
        self.nodes = [Redis(tls=t, extra=conf + f"cluster-port {free_port()}\n") for t in node_tls]

    @property
    def url(self):
        return self.nodes[0].url

    def __enter__(self):
        try:
            for n in self.nodes:
                n.start()
            redis_cli(*self.nodes[0].client_flags(), "--cluster", "create",
                      *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-replicas", "0", "--cluster-yes",
                      timeout=60)
            process.wait_until(lambda: all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes),
                               READY_TIMEOUT, "the cluster did not reach cluster_state:ok")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for n in self.nodes:
            n.stop()
            n.cleanup()


# Longest wait for a host's writer thread to store a new session (normally a millisecond).
SETTLE_S = 5.0


def seg_stats(cli, seg):
    """The statistics of a named segment, from `shmsesscache stat --json`."""
    out = subprocess.run([cli, "stat", "--json", seg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def writes_done(cli, seg):
    """Remote writes a host has finished: stored or dropped (queued writes are neither yet)."""
    st = seg_stats(cli, seg)
    return st["remote_stores"] + st.get("remote_dropped", 0)


def wait_writes(cli, seg, at_least):
    """Wait until the host has finished `at_least` remote writes; the readiness signal is the
    counter, bounded by SETTLE_S. Returns the count."""
    deadline = time.monotonic() + SETTLE_S
    n = writes_done(cli, seg)
    while n < at_least and time.monotonic() < deadline:
        time.sleep(0.002)
        n = writes_done(cli, seg)
    return n


def request_settled(cli, seg, port, ctx, session=None):
    """one_request, then, if it made a new session (a full handshake, or any TLS 1.3 one: a new
    ticket), wait until the host's writer has stored it (or dropped it): stores are queued off
    the handshake path."""
    before = writes_done(cli, seg)
    r = one_request(port, ctx, session)
    if not r[0] or ctx.maximum_version == ssl.TLSVersion.TLSv1_3:
        wait_writes(cli, seg, before + 1)
    return r


class Sentinels:
    """A throw-away master, its replica and `count` sentinels monitoring them as `mymaster`
    (quorum 2), all on 127.0.0.1 and all with the one password `password` (requirepass,
    masterauth, sentinel auth-pass and sentinel-pass). Ready once the replica is in sync and
    every sentinel knows it. `with Sentinels() as s: ... s.url ... s.failover()`."""

    NAME = "mymaster"

    def __init__(self, password="SentinelPW", count=3):
        self.password = password
        self.master = Redis(password=password, extra=f"masterauth {password}\n")
        self.replica = None
        self.ports = [free_port() for _ in range(count)]
        self.dir = tempfile.mkdtemp(prefix="shmsess-sentinel-")
        self.procs = []

    def url_for(self, ports):
        return (f"redis+sentinel://:{self.password}@" + ",".join(f"127.0.0.1:{p}" for p in ports)
                + f"/{self.NAME}/0")

    @property
    def url(self):
        return self.url_for(self.ports)

    def sentinel_cli(self, port, *args):
        return redis_cli("-h", "127.0.0.1", "-p", str(port), "-a", self.password, "--no-auth-warning", *args)

    def master_port(self, port):
        """The master's port as the sentinel on `port` names it."""
        return int(self.sentinel_cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME).split()[1])

    def _start_sentinel(self, port):
        conf = os.path.join(self.dir, f"sentinel-{port}.conf")
        pw = self.password
        with open(conf, "w") as f:
            f.write(f"port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {self.dir}\n"
                    f"requirepass {pw}\nsentinel sentinel-pass {pw}\n"
                    f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 2\n"
                    f"sentinel auth-pass {self.NAME} {pw}\n"
                    f"sentinel down-after-milliseconds {self.NAME} 2000\n"
                    f"sentinel failover-timeout {self.NAME} 10000\n")
        os.chmod(conf, 0o600)  # holds the password; the sentinel rewrites it
        proc, log, _ = process.spawn(["redis-sentinel", conf])
        self.procs.append((proc, log))
        if log.wait_for("+monitor master", READY_TIMEOUT) is None:
            raise RuntimeError("redis-sentinel did not start:\n" + log.text())

    def _ready(self):
        link = "master_link_status:up" in self.replica.cli("INFO", "replication")
        return link and all(str(self.replica.port) in self.sentinel_cli(p, "SENTINEL", "REPLICAS", self.NAME)
                            for p in self.ports)

    def failover(self):
        """SENTINEL FAILOVER at the first sentinel; returns once every sentinel names the
        replica and the old master is its replica, in sync."""
        old, new = self.master, self.replica
        self.sentinel_cli(self.ports[0], "SENTINEL", "FAILOVER", self.NAME)
        process.wait_until(
            lambda: all(self.master_port(p) == new.port for p in self.ports)
            and "master_link_status:up" in old.cli("INFO", "replication"),
            30, "the failover did not complete")
        self.master, self.replica = new, old

    def __enter__(self):
        try:
            self.master.start()
            self.replica = Redis(password=self.password, extra=f"masterauth {self.password}\n"
                                 f"replicaof 127.0.0.1 {self.master.port}\n").start()
            for p in self.ports:
                self._start_sentinel(p)
            process.wait_until(self._ready, 30, "the replica did not sync, or a sentinel does not know it")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for proc, log in self.procs:
            process.stop(proc)
            log.wait_end(process.STOP_TIMEOUT)
        for r in (self.master, self.replica):
            if r:
                r.stop()
                r.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
