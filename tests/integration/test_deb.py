#!/usr/bin/env python3
"""The Debian packages, end to end: `make deb`, lintian, `dpkg -i`, Debian's own nginx and
Apache httpd configured the Debian way with the packaged modules (a2enmod, a2ensite, a2enconf,
modules-enabled, conf.d) and started the Debian way (`service`), TLS 1.2 session-id resumption
across their workers, then `dpkg --purge` and a look for anything left behind.

THIS CHANGES THE SYSTEM while it runs (root only): it installs the packages, edits /etc/nginx
and /etc/apache2, and starts and stops the system's nginx and apache2 on loopback ports. It
refuses to start when one of the packages is already installed or either server is running,
and whatever happens it stops the servers, purges the packages and puts /etc/nginx and
/etc/apache2 back as they were (a copy taken first), leaving both services stopped.

Each check prints PASS/FAIL; the run ends with "N passed, M failed".
"""

import argparse
import glob
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

from harness.checks import check, finish
from harness.client import client_context, free_port, http_get
from harness.prefork import s_client_reconnect
from harness.process import poll_until

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MULTIARCH = subprocess.run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True,
                           text=True).stdout.strip() or "x86_64-linux-gnu"
CONFIG_TREES = ("/etc/nginx", "/etc/apache2")
SEGMENT_DIR = "/run/shmsesscache"
NGINX_SEGMENT = f"{SEGMENT_DIR}/deb-test-nginx"
APACHE_SEGMENT = f"{SEGMENT_DIR}/deb-test-apache"
# Each server logs, per request, the pid of the worker that served it and whether the TLS
# session was resumed: how the test sees resumption across workers.
NGINX_LOG = "/var/log/nginx/shmsess-deb-test.log"
APACHE_LOG = "/var/log/apache2/shmsess-deb-test.log"
RUN_DIRS = ("/run/nginx", "/run/apache2", "/run/lock/apache2")
PID_FILES = {"nginx": "/run/nginx.pid", "apache2": "/run/apache2/apache2.pid"}
READY_TIMEOUT = 30.0
RECONNECTS = 40


def run(*cmd, timeout=300, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def packages_in_control():
    """The binary packages debian/control declares: the one list of what `make deb` builds."""
    with open(os.path.join(REPO, "debian", "control")) as f:
        return re.findall(r"^Package: (\S+)$", f.read(), re.M)


def installed(pkg):
    out = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg)
    return out.returncode == 0 and out.stdout.startswith("ii")


def known_to_dpkg(pkg):
    """Installed, or removed with its configuration files left (anything but purged)."""
    out = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg)
    return out.returncode == 0 and out.stdout[:2] not in ("un", "pn", "")


def server_running(name):
    try:
        with open(PID_FILES[name]) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_port(port, up=True, timeout=READY_TIMEOUT):
    """Until 127.0.0.1:port accepts (or, with up=False, refuses) a TCP connection: `service`
    returns before the server listens, and announces readiness nowhere else."""
    return bool(poll_until(lambda: accepts(port) == up, timeout))


def deb_files(deb):
    """The regular files and symlinks a .deb installs (directories are shared with others)."""
    out = run("dpkg-deb", "-c", deb).stdout
    return [line.split(None, 5)[5].split(" -> ")[0].lstrip(".") for line in out.splitlines()
            if line[0] in "-l"]


def build(args):
    started = time.monotonic()
    out = run("make", "-C", REPO, "--no-print-directory", "deb", timeout=1800)
    took = time.monotonic() - started
    check("make deb", out.returncode == 0, f"{took:.0f} s" + ("" if out.returncode == 0 else
                                                                 "\n" + out.stdout[-3000:] + out.stderr[-3000:]))
    debs = {}
    for pkg in packages_in_control():
        found = glob.glob(os.path.join(args.deb_dir, f"{pkg}_*.deb"))
        debs[pkg] = found[0] if len(found) == 1 else None
    check("a .deb in build/deb for every package of debian/control", all(debs.values()),
          ", ".join(f"{p}: {os.path.basename(d) if d else 'MISSING'}" for p, d in debs.items()))
    check("nothing written to the checkout's parent directory",
          not glob.glob(os.path.join(os.path.dirname(REPO), "shmsesscache*_*.*")))
    changes = glob.glob(os.path.join(args.deb_dir, "*.changes"))
    lint = run("lintian", "--pedantic", "--info", *changes, timeout=600) if changes else None
    tags = lint.stdout.splitlines() if lint else []
    errors = [t for t in tags if t.startswith("E:")]
    check("lintian --pedantic on the .changes: no error", lint is not None and not errors and
          lint.returncode == 0, "\n".join(t for t in tags if re.match(r"[EWIPX]: ", t)) or "(no tag at all)")
    check_hardening(changes)
    return debs


HARDENING_TAGS = ("hardening-no-bindnow", "hardening-no-fortify-functions", "hardening-no-pie",
                  "hardening-no-relro")


def check_hardening(changes):
    """Every ELF file of the packages is built with Debian's hardening flags. lintian's
    hardening tags are of severity info, which only -I (--display-info) shows: the drop-in's C
    was once built with plain CFLAGS (no BIND_NOW, no fortified functions) unnoticed."""
    lint = run("lintian", "--display-info", "--tags", ",".join(HARDENING_TAGS), *changes, timeout=600)
    unhardened = [t for t in lint.stdout.splitlines() if re.match(r"[EWIPX]: ", t)]
    check("lintian -I: no hardening tag (BIND_NOW, fortified functions, PIE, RELRO) on any ELF file",
          bool(changes) and lint.returncode == 0 and not unhardened, "\n".join(unhardened) or lint.stderr[-500:])


def check_control(debs):
    nginx_abi = re.findall(r"nginx-abi-[\w.+~-]+", run("dpkg-query", "-W", "-f=${Provides}", "nginx").stdout)
    depends = run("dpkg-deb", "-f", debs["libnginx-mod-http-shmsess"], "Depends").stdout
    check("the nginx module depends on the nginx-abi the installed nginx provides",
          nginx_abi and nginx_abi[0] in depends.split(", "), f"nginx provides {nginx_abi}, module: {depends.strip()}")
    apache_api = run("dpkg-query", "-W", "-f=${Provides}", "apache2-bin").stdout
    depends = run("dpkg-deb", "-f", debs["libapache2-mod-socache-shmsess"], "Depends").stdout
    api = re.findall(r"apache2-api-\d+", apache_api)
    check("the Apache provider depends on the apache2-api the installed apache2-bin provides",
          api and api[0] in depends, f"apache2-bin provides {api}, provider: {depends.strip()}")


def check_installed_layout():
    lib = f"/usr/lib/{MULTIARCH}/libshmsesscache.so.0"
    soname = run("readelf", "-d", lib).stdout
    # ldconfig may name it through /lib (usrmerge: the same directory).
    cached = re.findall(r"^\s*libshmsesscache\.so\.0 .*=> (\S+)$", run("ldconfig", "-p").stdout, re.M)
    check(f"{lib} with SONAME libshmsesscache.so.0, known to ldconfig",
          "[libshmsesscache.so.0]" in soname and cached and os.path.samefile(cached[0], lib), str(cached))
    check("-dev symlink libshmsesscache.so -> libshmsesscache.so.0",
          os.readlink(f"/usr/lib/{MULTIARCH}/libshmsesscache.so") == "libshmsesscache.so.0")
    modules = ["/usr/lib/nginx/modules/ngx_http_shmsess_module.so", "/usr/lib/apache2/modules/mod_socache_shmsess.so"]
    rpaths = {m: re.findall(r"R(?:UN)?PATH.*\[(.*)\]", run("readelf", "-d", m).stdout) for m in modules}
    check("the modules carry no rpath (the library is in the linker's path)",
          all(os.path.exists(m) for m in modules) and not any(rpaths.values()), str(rpaths))
    link = "/etc/nginx/modules-enabled/50-mod-http-shmsess.conf"
    check("nginx module enabled through modules-enabled (a link to modules-available)",
          os.path.islink(link) and os.readlink(link) == "/usr/share/nginx/modules-available/mod-http-shmsess.conf",
          os.readlink(link) if os.path.islink(link) else "no link")
    check("/etc/apache2/mods-available/socache_shmsess.load", os.path.exists(
        "/etc/apache2/mods-available/socache_shmsess.load"))
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "p.c"), os.path.join(tmp, "p")
        with open(src, "w") as f:
            f.write('#include <shmsesscache.h>\n#include <stdio.h>\nint main(void) '
                    '{ puts(shmsess_version()); return 0; }\n')
        flags = run("pkg-config", "--cflags", "--libs", "shmsesscache")
        cc = run("cc", src, "-o", exe, *flags.stdout.split())
        ran = run(exe) if cc.returncode == 0 else cc
        check("-dev: a program built with pkg-config (no PKG_CONFIG_PATH, no rpath) runs",
              ran.returncode == 0 and re.match(r"\d+\.\d+\.\d+", ran.stdout),
              flags.stdout.strip() + " " + ran.stdout.strip() + ran.stderr[-300:])
    man = run("man", "-w", "shmsess_cache_create") if shutil.which("man") else None
    check("man pages: libshmsesscache(3) under its function names, shmsesscache(1)",
          os.path.exists("/usr/share/man/man3/libshmsesscache.3.gz")
          and os.path.exists("/usr/share/man/man1/shmsesscache.1.gz")
          and os.path.islink("/usr/share/man/man3/shmsess_cache_create.3.gz")
          and (man is None or man.returncode == 0), man.stdout.strip() if man else "")


def tmpfiles_dir():
    """The tmpfiles.d entry makes /run/shmsesscache 0700 root (postinst runs it only under
    systemd; here it is run by hand, as at boot)."""
    conf = "/usr/lib/tmpfiles.d/shmsesscache.conf"
    tool = shutil.which("systemd-tmpfiles")
    if tool:
        out = run(tool, "--create", conf)
        st = os.stat(SEGMENT_DIR) if os.path.isdir(SEGMENT_DIR) else None
        check("systemd-tmpfiles --create shmsesscache.conf makes /run/shmsesscache 0700 root",
              out.returncode == 0 and st and st.st_mode & 0o7777 == 0o700 and st.st_uid == 0,
              out.stderr.strip() + (f" mode {st.st_mode & 0o7777:o} uid {st.st_uid}" if st else " no directory"))
    else:
        check(f"{conf} installed (no systemd-tmpfiles to run it here)", os.path.exists(conf))
        os.makedirs(SEGMENT_DIR, mode=0o700, exist_ok=True)


def log_size(log):
    return os.path.getsize(log) if os.path.exists(log) else 0


def resumed_pids(log, resumed_word, since):
    """The pids of the workers that served a resumed session, from a server's test log (the
    lines after byte `since`)."""
    with open(log) as f:
        f.seek(since)
        return {fields[0] for fields in (line.split() for line in f) if len(fields) >= 2 and fields[1] == resumed_word}


def resumption(name, port, segment, log, resumed_word):
    """TLS 1.2 session-id resumption: s_client, then RECONNECTS reconnections through Python's
    ssl, each offering the session the previous one left; the server's log says which workers
    resumed them."""
    words = s_client_reconnect(port)
    # s_client reconnects at once, without a request: another worker may look the id up a few
    # microseconds before the first one stored it (see test_prefork.py).
    check(f"{name}: openssl s_client -reconnect -tls1_2 -no_ticket: New then Reused (at least 4 of 5)",
          len(words) == 6 and words[0] == "New" and words[1:].count("Reused") >= 4, " ".join(words))
    ctx = client_context(ssl.TLSVersion.TLSv1_2, no_ticket=True)
    session, reused, since = None, 0, log_size(log)
    for _ in range(RECONNECTS):
        _, _, was_reused, session = http_get(port, ctx, session=session)
        reused += was_reused
    pids = resumed_pids(log, resumed_word, since)
    check(f"{name}: >= {RECONNECTS - 2}/{RECONNECTS} TLS 1.2 reconnections resume, in several workers",
          reused >= RECONNECTS - 2 and len(pids) >= 2, f"{reused}/{RECONNECTS} resumed, by pids {sorted(pids)}")
    stat = run("/usr/bin/shmsesscache", "stat", segment, "--json")
    hits = re.search(r'"lookup_hits":\s*(\d+)', stat.stdout)
    check(f"{name}: the packaged shmsesscache reads the segment: lookup hits >= {reused}",
          stat.returncode == 0 and hits and int(hits.group(1)) >= reused,
          f"lookup_hits {hits.group(1) if hits else '?'}" + stat.stderr.strip())


NGINX_CONF = """\
# shmsesscache package test (tests/integration/test_deb.py): removed when it ends.
shmsess_session_cache {segment} {size};
log_format shmsess_deb_test "$pid $ssl_session_reused";
server {{
    listen 127.0.0.1:{port} ssl reuseport;
    ssl_certificate {certs}/server.pem;
    ssl_certificate_key {certs}/server.key;
    ssl_session_tickets off;
    access_log {log} shmsess_deb_test;
    location / {{ return 200 "served\\n"; }}
    location = /sessions {{ shmsess_status; }}
}}
"""


def nginx(certs):
    port = free_port()
    # Debian's default site listens on port 80 of every address: the test stays on loopback.
    if os.path.lexists("/etc/nginx/sites-enabled/default"):
        os.unlink("/etc/nginx/sites-enabled/default")
    idle = run("nginx", "-t")
    check("nginx -t: the enabled module loads into Debian's nginx and, without shmsess_ directives, changes nothing",
          idle.returncode == 0, idle.stderr.strip())
    conf = "/etc/nginx/conf.d/shmsess-deb-test.conf"
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(segment=NGINX_SEGMENT, size="2048g", port=port, certs=certs, log=NGINX_LOG))
    bad = run("nginx", "-t")
    check("nginx -t refuses a 2048g segment, saying what to write", bad.returncode != 0 and "shmsess" in bad.stderr,
          bad.stderr.strip()[-300:])
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(segment=NGINX_SEGMENT, size="8m", port=port, certs=certs, log=NGINX_LOG))
    good = run("nginx", "-t")
    check("nginx -t accepts Debian's nginx.conf with the packaged module", good.returncode == 0, good.stderr.strip())
    if good.returncode != 0:
        return
    start = run("service", "nginx", "start")
    up = start.returncode == 0 and wait_port(port)
    check("service nginx start: listening on 127.0.0.1", up, start.stdout.strip() + start.stderr.strip())
    if not up:
        return
    # nginx's $ssl_session_reused: "r" for a resumed session.
    resumption("nginx", port, NGINX_SEGMENT, NGINX_LOG, "r")
    _, body, _, _ = http_get(port, client_context(ssl.TLSVersion.TLSv1_2), "/sessions")
    # The library's Prometheus text (the CLI's names), labelled with the block and segment.
    hits = re.search(rb"^shmsesscache_lookup_hits_total(?:\{[^}]*\})? (\d+)", body, re.M)
    check("nginx: shmsess_status serves the statistics", hits and int(hits.group(1)) > 0,
          f"shmsesscache_lookup_hits_total {hits.group(1).decode()}" if hits else body[-300:].decode(errors="replace"))
    stop = run("service", "nginx", "stop")
    check("service nginx stop", stop.returncode == 0 and wait_port(port, up=False), stop.stderr.strip())


APACHE_PORTS = """\
# shmsesscache package test (tests/integration/test_deb.py): restored when it ends.
Listen 127.0.0.1:{port}
"""

APACHE_CONF = """\
# shmsesscache package test (tests/integration/test_deb.py): removed when it ends.
SSLSessionCache shmsess:{segment}(8M)
SSLSessionTickets off
# Children are replaced every 10 connections, so the 40 reconnections reach several of them
# (the event MPM's one child can otherwise serve them all, and resume from its own memory).
MaxConnectionsPerChild 10
"""

APACHE_SITE = """\
<VirtualHost 127.0.0.1:{port}>
    ServerName localhost
    DocumentRoot /var/www/html
    SSLEngine on
    SSLCertificateFile {certs}/server.pem
    SSLCertificateKeyFile {certs}/server.key
    SSLProtocol -all +TLSv1.2 +TLSv1.3
    # Which child served each request and whether it resumed: the test reads it back.
    LogFormat "%P %{{SSL_SESSION_RESUMED}}x" shmsess_deb_test
    CustomLog {log} shmsess_deb_test
</VirtualHost>
"""


def apache(certs):
    port = free_port()
    with open("/etc/apache2/ports.conf", "w") as f:
        f.write(APACHE_PORTS.format(port=port))
    with open("/etc/apache2/conf-available/shmsess-deb-test.conf", "w") as f:
        f.write(APACHE_CONF.format(segment=APACHE_SEGMENT))
    with open("/etc/apache2/sites-available/shmsess-deb-test.conf", "w") as f:
        f.write(APACHE_SITE.format(port=port, certs=certs, log=APACHE_LOG))
    enabled = [run(*cmd) for cmd in (("a2dismod", "-q", "socache_shmsess"), ("a2enmod", "-q", "ssl", "socache_shmsess"),
                                     ("a2dissite", "-q", "000-default"), ("a2ensite", "-q", "shmsess-deb-test"),
                                     ("a2enconf", "-q", "shmsess-deb-test"))]
    check("a2dismod, a2enmod ssl socache_shmsess, a2ensite, a2enconf",
          all(e.returncode == 0 for e in enabled) and os.path.islink("/etc/apache2/mods-enabled/socache_shmsess.load"),
          " | ".join(e.stdout.strip() + e.stderr.strip() for e in enabled))
    test = run("apache2ctl", "configtest")
    check("apache2ctl configtest", test.returncode == 0 and "Syntax OK" in test.stderr, test.stderr.strip())
    if test.returncode != 0:
        return
    start = run("service", "apache2", "start")
    up = start.returncode == 0 and wait_port(port)
    check("service apache2 start: listening on 127.0.0.1", up, start.stdout.strip() + start.stderr.strip())
    if not up:
        return
    # mod_ssl's SSL_SESSION_RESUMED: "Resumed" or "Initial".
    resumption("apache2", port, APACHE_SEGMENT, APACHE_LOG, "Resumed")
    stop = run("service", "apache2", "stop")
    check("service apache2 stop", stop.returncode == 0 and wait_port(port, up=False), stop.stderr.strip())


def purge(pkgs):
    return run("dpkg", "--purge", *pkgs, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def check_purged(debs):
    left = {p: [f for f in deb_files(d) if os.path.lexists(f)] for p, d in debs.items()}
    left = {p: f for p, f in left.items() if f}
    check("dpkg --purge: no file of any package is left", not left, str(left))
    stray = [f for pattern in ("/etc/nginx/modules-enabled/*shmsess*", "/etc/apache2/mods-*/socache_shmsess*",
                               f"/usr/lib/{MULTIARCH}/libshmsesscache*", "/usr/lib/tmpfiles.d/shmsesscache*")
             for f in glob.glob(pattern)]
    check("no module link, load file or library left (modules-enabled, mods-*, LIBDIR)", not stray, str(stray))
    check("dpkg knows none of the packages any more", not [p for p in debs if known_to_dpkg(p)])


def restore(backup, segment_dir_existed, run_dirs_existed):
    for name in ("nginx", "apache2"):
        if server_running(name):
            run("service", name, "stop")
    leftover = [p for p in packages_in_control() if known_to_dpkg(p)]
    if leftover:
        purge(leftover)
    for tree in CONFIG_TREES:
        saved = os.path.join(backup, tree.strip("/"))
        if os.path.isdir(saved):
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(saved, tree, symlinks=True)
    for f in (NGINX_SEGMENT, APACHE_SEGMENT, NGINX_LOG, APACHE_LOG):
        if os.path.lexists(f):
            os.unlink(f)
    for d in RUN_DIRS:
        if d not in run_dirs_existed and os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
    if not segment_dir_existed and os.path.isdir(SEGMENT_DIR) and not os.listdir(SEGMENT_DIR):
        os.rmdir(SEGMENT_DIR)


def preflight():
    """Refuse to touch a system that is in use: the test purges what it installs and stops the
    servers it starts."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (it installs packages and edits /etc/nginx, /etc/apache2)")
    problems += [f"{p} is already installed: the test would purge it"
                 for p in packages_in_control() if known_to_dpkg(p)]
    problems += [f"{s} is running: stop it first (service {s} stop)" for s in PID_FILES if server_running(s)]
    problems += [f"{t} is missing (install nginx and apache2: make test-deps)" for t in CONFIG_TREES
                 if not os.path.isdir(t)]
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--certs", required=True, help="directory with server.pem and server.key (make-certs.sh)")
    ap.add_argument("--deb-dir", default=os.path.join(REPO, "build", "deb"))
    args = ap.parse_args()
    certs = os.path.abspath(args.certs)
    problems = preflight()
    check("the system can be used: root, none of the packages installed, nginx and apache2 stopped",
          not problems, "; ".join(problems))
    if problems:
        finish()
    debs = build(args)
    if not all(debs.values()):
        finish()
    check_control(debs)
    segment_dir_existed = os.path.isdir(SEGMENT_DIR)
    run_dirs_existed = {d for d in RUN_DIRS if os.path.isdir(d)}
    with tempfile.TemporaryDirectory(prefix="shmsess-deb-etc-") as backup:
        for tree in CONFIG_TREES:
            shutil.copytree(tree, os.path.join(backup, tree.strip("/")), symlinks=True)
        try:
            inst = run("dpkg", "-i", *debs.values(), env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            check("dpkg -i of every package", inst.returncode == 0 and all(installed(p) for p in debs),
                  inst.stderr.strip()[-1500:])
            if inst.returncode == 0:
                check_installed_layout()
                tmpfiles_dir()
                nginx(certs)
                apache(certs)
                out = purge(list(debs))
                check("dpkg --purge of every package", out.returncode == 0, out.stderr.strip()[-1500:])
                check_purged(debs)
        finally:
            restore(backup, segment_dir_existed, run_dirs_existed)
        diffs = [run("diff", "-r", "--no-dereference", os.path.join(backup, t.strip("/")), t) for t in CONFIG_TREES]
        check("/etc/nginx and /etc/apache2 are as they were", all(d.returncode == 0 for d in diffs),
              "".join(d.stdout for d in diffs)[-1500:])
    check("nginx and apache2 left stopped", not any(server_running(s) for s in PID_FILES))
    finish()


if __name__ == "__main__":
    main()
