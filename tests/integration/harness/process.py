"""The servers the harnesses run, as child processes: started (by default in a session of their
own), their output read line by line, waited for, stopped with a signal and a bounded wait.

What every harness needs from a child lives here once:
- `spawn`: the child in a session of its own, so the signals prefork servers send to their
  process group on shutdown never reach the test;
- `Lines`: a pipe read on a thread of its own, so the child never blocks on a full pipe and a
  test can wait for a line the child prints (its own readiness signal) without polling;
- `stop` (a signal, a bounded wait, then SIGKILL) and `kill`;
- `poll_until` / `wait_until`: the one polling loop, for states a child announces nowhere else;
- `children`: a process's children, from the process table;
- `LogFile`: the part of a log file this run wrote (Apache and nginx log to files), and
  `ServerRoot`, the directory such a server keeps its files in.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

STOP_TIMEOUT = 20.0
# How often `poll_until` asks again, for a state the child announces nowhere else.
POLL_S = 0.05


def spawn(cmd, env=None, own_session=True, split_stderr=False):
    """`cmd` as a child with its output read by `Lines`: returns (Popen, stdout lines, stderr
    lines); stderr is merged into stdout (and the two are the same `Lines`) unless
    `split_stderr`. `env` is added to this process's environment."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=own_session,
                            env={**os.environ, **(env or {})})
    out = Lines(proc.stdout)
    return proc, out, Lines(proc.stderr) if split_stderr else out


def stop(proc, sig=signal.SIGTERM, timeout=STOP_TIMEOUT, kill_group=False):
    """Send `sig` to `proc` if it still runs and wait up to `timeout` seconds for it to exit;
    past that SIGKILL it (its whole process group with `kill_group`: a child in a session of
    its own whose workers must not outlive it) and reap it. Returns True if it exited in
    time."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        kill(proc, kill_group)
        return False


def kill(proc, group=False):
    """SIGKILL `proc` (its whole process group with `group`) if it still runs, and reap it."""
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


def poll_until(ready, timeout, alive=lambda: True):
    """Ask `ready()` every POLL_S until it returns something true, and return that; None after
    `timeout` seconds or once `alive()` is false. Only for states the child announces nowhere
    else (a port that opens, a pid file, a process that goes, a counter)."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value or not alive() or time.monotonic() > deadline:
            return value
        time.sleep(POLL_S)


def wait_until(ready, timeout, what, alive=lambda: True):
    """`poll_until`, raising RuntimeError naming `what` where it gives up."""
    value = poll_until(ready, timeout, alive)
    if value:
        return value
    raise RuntimeError(f"{what}: " + ("the process exited" if not alive() else f"not after {timeout} s"))


def children(pid):
    """The pids of `pid`'s children, from the process table."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


class Lines:
    """The lines of a text stream, read to its end on a daemon thread as they come."""

    def __init__(self, stream):
        self._lines = []
        self._taken = set()
        self._ended = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        with stream:
            for line in stream:
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for(self, text, timeout, start=False):
        """The first line containing `text` (starting with it, with `start`) that no earlier
        call returned, waiting up to `timeout` seconds for it; None if it did not come by then
        or the stream ended first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for i in range(seen, len(self._lines)):
                    line = self._lines[i]
                    if i not in self._taken and (line.startswith(text) if start else text in line):
                        self._taken.add(i)
                        return line
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    return None
                self._cond.wait(left)

    def wait_end(self, timeout):
        """Wait up to `timeout` seconds for the stream to end (every writer closed it)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def text(self):
        """Everything read so far."""
        with self._cond:
            return "".join(self._lines)


class LogFile:
    """A log file that a server appends to; `text()` is what this run wrote (from the size it
    had at `mark()`)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0

    def mark(self):
        open(self.path, "a").close()
        self.offset = os.path.getsize(self.path)

    def text(self):
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.offset)
                return f.read()
        except OSError:
            return ""


class ServerRoot:
    """The base of a server whose files (configuration, error.log, pid file, a named segment)
    live in one directory: a throw-away one unless `root` is given, to reuse a directory (and
    a named segment in it) across runs. A subclass provides `start()` (which calls
    `self.log.mark()`) and `stop()`; `with` starts and stops it, `cleanup()` removes a
    throw-away directory."""

    def __init__(self, root, prefix):
        self.own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix=prefix)
        self.log = LogFile(os.path.join(self.root, "error.log"))

    def error_log_path(self):
        return self.log.path

    def error_log(self):
        """This run's part of the error log."""
        return self.log.text()

    def cleanup(self):
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
