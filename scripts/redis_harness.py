"""A throw-away redis-server on 127.0.0.1 for the second-tier tests and benchmarks.

Its configuration file, working directory and log live in a temporary directory; nothing is
persisted (no RDB, no AOF). Readiness is the server's own "Ready to accept connections" line.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

from prefork_harness import free_port

READY_TIMEOUT = 15.0


class Redis:
    """`with Redis(password="pw") as r: ... r.url ... r.cli("KEYS", "*")`."""

    def __init__(self, password=None, port=None):
        self.password = password
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="shmsess-redis-")
        self.proc = None

    @property
    def url(self):
        auth = f"default:{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self):
        conf = os.path.join(self.dir, "redis.conf")
        with open(conf, "w") as f:
            f.write(f"bind 127.0.0.1\nport {self.port}\ndir {self.dir}\nsave \"\"\nappendonly no\n"
                    "daemonize no\nprotected-mode yes\nlogfile \"\"\nloglevel notice\n"
                    # Sessions must not be evicted for other data: expire only by their TTL.
                    "maxmemory-policy noeviction\n")
            if self.password:
                f.write(f"requirepass {self.password}\n")
        os.chmod(conf, 0o600)
        self.proc = subprocess.Popen(["redis-server", conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Ready to accept connections" in line:
                # Keep draining its log so it never blocks on a full pipe.
                self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)
                return self
        self.stop()
        raise RuntimeError("redis-server did not start:\n" + "".join(seen))

    def cli(self, *args):
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        if self.password:
            cmd += ["-a", self.password, "--no-auth-warning"]
        out = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli {args}: {out.stderr}")
        return out.stdout

    def pause(self):
        """A hung server: connections are accepted by the kernel, nothing is answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_drain", None):
            self._drain.wait(timeout=20)
            self._drain = None

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()
