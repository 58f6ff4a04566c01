#!/usr/bin/env python3
"""Integration: Debian's Apache httpd with mod_ssl and mod_socache_shmsess.

A real httpd (mpm_prefork, 4 children, MaxConnectionsPerChild 8 so children are replaced
during every run) in the foreground on a loopback port with a generated configuration. mod_ssl's
trace lines give the pid that stored each session and the pids that found it, so resumption
across children is checked from the server's side, not guessed from the client's.

Each check prints PASS/FAIL; the run ends with "N passed, M failed" and exits non-zero if
anything failed.
"""

import argparse
import json
import os
import socket
import ssl
import stat
import subprocess
import tempfile
import threading

from harness.checks import check, finish, run
from harness.apache import Apache, get, s_client_chain, s_client_offer, session_events, status_auto
from harness.client import session_context as client_context, free_port
from harness.prefork import s_client_reconnect

RECONNECTS = 40
MAX_CONN = 8  # MaxConnectionsPerChild
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


def chain(port, version, count):
    """`count` connections, each offering the session the previous one left (TLS 1.3: the
    newest ticket). Returns (resumed count, first connection resumed?, last session)."""
    ctx = client_context(version)
    session, resumed, first = None, 0, None
    for i in range(count):
        status, _, reused, session_out = get(port, ctx, session=session)
        if status != 200:
            raise RuntimeError(f"GET gave {status}")
        if i == 0:
            first = reused
        resumed += reused
        session = session_out
    return resumed, first, session


def same_session(port, version, count):
    """One full handshake, then `count` connections all offering its session (TLS 1.2)."""
    ctx = client_context(version)
    _, _, _, session = get(port, ctx)
    return sum(get(port, ctx, session=session)[2] for _ in range(count)), session


def cross_child(events):
    """Lookups that found a session stored by another process: (found, found elsewhere, pids)."""
    setter = {}
    found = elsewhere = 0
    pids = set()
    for pid, req, status, sid in events:
        if req == "SET" and status == "OK":
            setter.setdefault(sid, pid)
        elif req == "GET" and status == "FOUND":
            found += 1
            pids.add(pid)
            if setter.get(sid) not in (None, pid):
                elsewhere += 1
    return found, elsewhere, pids


def anonymous_segment(args):
    with Apache(args.module, args.certs, "shmsess") as a:
        # TLS 1.2: one session offered 40 times. Its child serves at most MAX_CONN connections
        # before it is replaced, so at least 40 - MAX_CONN lookups happen in other processes.
        reused12, _ = same_session(a.port, TLS12, RECONNECTS)
        check("TLS 1.2: every reconnection resumes", reused12 == RECONNECTS, f"{reused12}/{RECONNECTS}")
        ev12 = session_events(a.error_log())
        found, elsewhere, pids = cross_child(ev12)
        check("TLS 1.2: resumed in children other than the one that stored the session",
              elsewhere >= RECONNECTS - MAX_CONN, f"{elsewhere} of {found} lookups, in pids {sorted(pids)}")
        check("children were replaced during the run (MaxConnectionsPerChild)", len(pids) > 4, f"{len(pids)} pids")

        # TLS 1.3 with SSLSessionTickets off: stateful tickets, each resumption gets a new one.
        n_before = len(ev12)
        reused13, first13, last = chain(a.port, TLS13, RECONNECTS)
        check("TLS 1.3: every connection after the first resumes", reused13 == RECONNECTS - 1 and not first13,
              f"{reused13}/{RECONNECTS - 1}")
        ev13 = session_events(a.error_log())[n_before:]
        found13, elsewhere13, pids13 = cross_child(ev13)
        # 40 connections, at most MAX_CONN per child: at least 5 children, so at least 4 hand-overs.
        check("TLS 1.3: tickets stored by one child resume in another", elsewhere13 >= RECONNECTS // MAX_CONN - 1,
              f"{elsewhere13} of {found13} lookups, in pids {sorted(pids13)}")

        # Single use across the whole server: the newest ticket resumes once, never twice.
        ctx13 = client_context(TLS13)
        once = get(a.port, ctx13, session=last)[2]
        twice = get(a.port, ctx13, session=last)[2]
        check("TLS 1.3: a ticket resumes once in the whole server, never twice", once and not twice,
              f"first {once}, second {twice}")

        words = s_client_reconnect(a.port, ("-tls1_2",))
        # s_client reconnects without sending a request: its first reconnection may reach
        # another child a moment before mod_ssl has stored the session (same race as nginx).
        s_reused = words.count("Reused")
        check("openssl s_client -reconnect -tls1_2: New, then Reused (at least 4 of 5)",
              len(words) == 6 and words[0] == "New" and s_reused >= 4, " ".join(words))

        # Concurrent clients: no global mutex around the provider, nothing lost.
        outcomes = []

        def worker():
            try:
                outcomes.append(same_session(a.port, TLS12, 10)[0])
            except Exception as e:  # noqa: BLE001 - reported as a failed check below
                outcomes.append(e)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        check("4 concurrent clients: all 40 reconnections resume", outcomes == [10, 10, 10, 10], str(outcomes))
        par = sum(o for o in outcomes if isinstance(o, int))

        ctx12 = client_context(TLS12)
        auto = status_auto(a.port, ctx12)
        resumed_total = reused12 + reused13 + 1 + s_reused + par
        check("mod_status ?auto: the shmsess section is there", auto.get("CacheType") == "SHMSESS" and
              "TLSSessionCacheStatus" in auto, str({k: v for k, v in auto.items() if k.startswith("Cache")}))
        hits = int(auto.get("CacheRetrieveHitCount", -1))
        check("mod_status ?auto: retrieve hits = resumptions the clients saw", hits == resumed_total,
              f"{hits} vs {resumed_total}")
        taken = int(auto.get("CacheSingleUseTakenCount", -1))
        check("mod_status ?auto: every TLS 1.3 resumption took its ticket", taken == reused13 + 1,
              f"taken {taken}, TLS 1.3 resumptions {reused13 + 1}")
        keys = ["CacheSharedMemory", "CacheCurrentEntries", "CacheSubcaches", "CacheIndexesPerSubcaches",
                "CacheIndexUsage", "CacheUsage", "CacheStoreCount", "CacheReplaceCount", "CacheExpireCount",
                "CacheDiscardCount", "CacheRetrieveMissCount", "CacheRemoveHitCount", "CacheRemoveMissCount",
                "CacheTimeLeftOldestAvg"]
        check("mod_status ?auto: every key shmcb reports", all(k in auto for k in keys),
              str([k for k in keys if k not in auto]))
        check("mod_status ?auto: the segment size", auto.get("CacheSharedMemory") == str(8 << 20),
              auto.get("CacheSharedMemory", ""))
        status, html, _, _ = get(a.port, ctx12, "/server-status")
        check("mod_status HTML: the cache section with the hit count",
              status == 200 and "cache type: <b>SHMSESS</b>" in html and
              f"total retrieves since starting: <b>{hits}</b> hit" in html, f"status {status}")
        check("mod_ssl created no global session cache mutex (provider is safe for concurrent use)",
              not [f for f in os.listdir(a.root) if f.startswith("ssl-cache")], str(os.listdir(a.root)))
    a.cleanup()


def shmcb_contrast(args):
    """The same server on shmcb: the checks above that are ours alone do fail there."""
    with Apache(args.module, args.certs, "shmcb:{root}/scache(512000)") as a:
        _, _, last = chain(a.port, TLS13, 2)
        ctx13 = client_context(TLS13)
        twice = [get(a.port, ctx13, session=last)[2] for _ in range(2)]
        files = os.listdir(a.root)
    a.cleanup()
    check("contrast, shmcb: the same TLS 1.3 ticket resumes twice", twice == [True, True], str(twice))
    check("contrast, shmcb: mod_ssl takes its global ssl-cache mutex",
          any(f.startswith("ssl-cache") for f in files), str(files))


def hello_retry_request(args):
    """The server accepts only P-256; the client's first key share is X25519, so every TLS 1.3
    handshake goes through a HelloRetryRequest, and OpenSSL looks the ticket up twice."""
    sess_dir = tempfile.mkdtemp(prefix="shmsess-hrr-")
    with Apache(args.module, args.certs, "shmsess", extra="SSLOpenSSLConfCmd Groups P-256") as a:
        words, first = s_client_chain(a.port, 10, "X25519:P-256", sess_dir)
        auto = status_auto(a.port, client_context(TLS12))
        again = s_client_offer(a.port, "X25519:P-256", first)
        again_direct = s_client_offer(a.port, "P-256", first)
    a.cleanup()
    resumed = words[1:].count("Reused")
    counts = {k: int(auto.get(k, -1)) for k in ("CacheRetrieveHitCount", "CacheRetrieveMissCount",
                                                 "CacheHRRResumedCount")}
    check("mod_status: each resumption through an HRR is one retrieve hit, no miss, one HRR resumption",
          counts == {"CacheRetrieveHitCount": resumed, "CacheRetrieveMissCount": 0, "CacheHRRResumedCount": resumed},
          f"{counts} for {resumed} resumptions")
    check("TLS 1.3 through a HelloRetryRequest (Groups P-256, client X25519:P-256): tickets resume",
          words[0] == "New" and words[1:].count("Reused") == 10, " ".join(words))
    check("... each once: a used ticket offered again is refused, through an HRR or not",
          again == "New" and again_direct == "New", f"{again}, {again_direct}")
    for f in os.listdir(sess_dir):
        os.unlink(os.path.join(sess_dir, f))
    os.rmdir(sess_dir)


VHOSTS = """
<VirtualHost 127.0.0.1:{port}>
ServerName a.test
SSLEngine on
SSLCertificateFile "{certs}/server.pem"
SSLCertificateKeyFile "{certs}/server.key"
</VirtualHost>
<VirtualHost 127.0.0.1:{port}>
ServerName b.test
ServerAlias b2.test
SSLEngine on
SSLCertificateFile "{certs}/server.pem"
SSLCertificateKeyFile "{certs}/server.key"
</VirtualHost>
"""


def get_as(port, ctx, name, session=None):
    """One GET with SNI and Host `name`: (resumed, session)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name, session=session) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
            while tls.recv(65536):
                pass
            return tls.session_reused, tls.session


def retrieves(port):
    auto = status_auto(port, client_context(TLS12))
    return [int(auto.get(k, -1)) for k in ("CacheRetrieveHitCount", "CacheRetrieveMissCount")]


def names_and_vhosts(args):
    """Two name-based vhosts on one port (b.test with the alias b2.test): what mod_ssl resumes
    where, and what mod_status counts. A session offered to another vhost is looked up (mod_ssl
    gives the provider the id, not the vhost's session id context; OpenSSL checks it after the
    retrieve): the provider recognises another vhost's context and leaves the session alone."""
    port = free_port()
    outcome = {}
    with Apache(args.module, args.certs, "shmsess", port=port, ssl_level="warn",
                extra=VHOSTS.format(port=port, certs=os.path.abspath(args.certs))) as a:
        for version in (TLS12, TLS13):
            ctx = client_context(version)
            tag = "1.2" if version == TLS12 else "1.3"
            _, on_b = get_as(port, ctx, "b.test")
            outcome[f"{tag} b.test -> b2.test (same vhost)"] = get_as(port, ctx, "b2.test", on_b)[0]
            _, on_a = get_as(port, ctx, "a.test")
            before = retrieves(port)
            outcome[f"{tag} a.test -> b.test (other vhost)"] = get_as(port, ctx, "b.test", on_a)[0]
            outcome[f"{tag} counted a.test -> b.test as [hit, miss]"] = [
                x - y for x, y in zip(retrieves(port), before)]
            outcome[f"{tag} a.test -> a.test after"] = get_as(port, ctx, "a.test", on_a)[0]
        outcome["sni_mismatch"] = int(status_auto(port, client_context(TLS12)).get("CacheSNIMismatchCount", -1))
    a.cleanup()
    for tag in ("1.2", "1.3"):
        same = outcome[f"{tag} b.test -> b2.test (same vhost)"]
        check(f"TLS {tag}: a session resumes under another name of the same vhost (ServerAlias), as with shmcb",
              same is True, f"resumed {same}")
        other = outcome[f"{tag} a.test -> b.test (other vhost)"]
        check(f"TLS {tag}: a session of vhost a.test offered to vhost b.test does not resume", other is False,
              f"resumed {other}")
        # mod_ssl hands the provider the id only, and OpenSSL refuses a session of another
        # vhost's session id context after the retrieve returned it: the provider recognises
        # the context itself (shmsess_cache_lookup_checked), so the refusal is a miss.
        counted = outcome[f"{tag} counted a.test -> b.test as [hit, miss]"]
        check(f"TLS {tag}: mod_status counts that refused offer as a retrieve miss, not a hit",
              counted == [0, 1], f"[hit, miss] {counted}")
    after = outcome["1.2 a.test -> a.test after"]
    check("TLS 1.2: the session then still resumes on its own vhost", after is True, f"resumed {after}")
    after = outcome["1.3 a.test -> a.test after"]
    check("TLS 1.3: the ticket offered to the other vhost is not used up: it resumes on its own vhost",
          after is True, f"resumed {after}")
    check("mod_status: the two offers to the other vhost are CacheSNIMismatchCount",
          outcome["sni_mismatch"] == 2, f"{outcome['sni_mismatch']}")


def named_segment(args):
    root = tempfile.mkdtemp(prefix="shmsess-apache-")
    try:
        spec = "shmsess:{root}/sessions(8M)"
        with Apache(args.module, args.certs, spec, root=root) as a:
            reused, session = same_session(a.port, TLS12, 5)
            check("named segment: TLS 1.2 sessions resume", reused == 5, f"{reused}/5")
            port = a.port
            # apachectl graceful: a new configuration generation attaches to the same file,
            # and its new children resume what the old ones stored.
            before = {pid for pid, *_ in session_events(a.error_log())} | {a.proc.pid}
            a.graceful()
            after_graceful = [get(a.port, client_context(TLS12), session=session)[2] for _ in range(10)]
            new_pids = {pid for pid, req, st, _ in session_events(a.error_log())
                        if req == "GET" and st == "FOUND"} - before
            check("named segment: sessions survive apachectl graceful, in the new children",
                  all(after_graceful) and new_pids, f"{sum(after_graceful)}/10, new pids {sorted(new_pids)}")
        seg = os.path.join(root, "sessions")
        st = os.lstat(seg)
        check("named segment: the file is 0600 and owned by the user that started httpd",
              stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid(), f"{oct(st.st_mode)} uid {st.st_uid}")
        out = subprocess.run([args.cli, "stat", "--json", seg], capture_output=True, text=True)
        entries = json.loads(out.stdout).get("entries", 0) if out.returncode == 0 else -1
        check("named segment: shmsesscache stat reads Apache's segment", entries >= 1,
              f"entries {entries} {out.stderr.strip()}")

        # A restart attaches to the same file: the session made before it still resumes.
        with Apache(args.module, args.certs, spec, root=root, port=port) as a:
            after = get(a.port, client_context(TLS12), session=session)[2]
        check("named segment: a session survives an httpd restart", after, f"resumed {after}")

        # Another size in the configuration of a stopped httpd: `apache2 -t` (and so a start)
        # refuses it, naming the sizes and how to resize; a running httpd's graceful restart
        # instead falls back to anonymous memory (refused_at_restart).
        a = Apache(args.module, args.certs, "shmsess:{root}/sessions(16M)", root=root, port=free_port())
        a.write_config()
        rc, text = a.config_test()
        check("size changed: apache2 -t refuses it, with the sizes and how to resize",
              rc != 0 and "existing segment has 8388608 bytes" in text and "shmsesscache dump" in text,
              text.strip()[-240:])
    finally:
        subprocess.run(["rm", "-rf", root])


def children_killed_inside_the_cache(args):
    """httpd on a fault-injection build of the library (LD_LIBRARY_PATH wins over the
    module's RUNPATH): while a flag file exists, every pass of a critical-section fault point
    SIGKILLs the child with probability 1/40. httpd replaces the dead; the cache must neither
    hang nor lose its consistency, and resumes everything once the deaths stop."""
    flag = os.path.join(tempfile.mkdtemp(prefix="shmsess-kill-"), "armed")
    os.chmod(os.path.dirname(flag), 0o755)  # children run as www-data and must see the flag
    env = {"LD_LIBRARY_PATH": os.path.abspath(args.fault_lib), "SHMSESS_TEST_FAULT": f"0:40:{flag}"}
    with Apache(args.module, args.certs, "shmsess:(1M)", env=env, max_conn=0, ssl_level="warn") as a:
        ctxs = {v: client_context(v) for v in (TLS12, TLS13)}
        sessions = {TLS12: None, TLS13: None}
        open(flag, "w").close()  # armed only now: the parent's startup is not a target
        served = cut = 0
        for i in range(300):
            v = TLS12 if i % 2 else TLS13
            try:
                _, _, _, sessions[v] = get(a.port, ctxs[v], session=sessions[v])
                served += 1
            except (OSError, ssl.SSLError, ValueError, IndexError):
                cut += 1  # the child serving us died inside the cache: expected here
                sessions[v] = None
        os.unlink(flag)
        check("children killed inside the cache: httpd kept serving", served >= 150 and cut >= 1,
              f"{served} connections served, {cut} cut by a child dying inside the cache")
        reused12, _ = same_session(a.port, TLS12, 20)
        reused13, first, _ = chain(a.port, TLS13, 21)
        check("after the kills stop: every reconnection resumes (TLS 1.2 and 1.3)",
              reused12 == 20 and reused13 == 20, f"TLS 1.2 {reused12}/20, TLS 1.3 {reused13}/20")
        auto = status_auto(a.port, client_context(TLS12))
        recovered = int(auto.get("CacheLockRecoveryCount", 0))
        check("mod_status: the locks of killed children were recovered (and their shards checked)",
              recovered >= 1 and int(auto.get("CacheLockTimeoutCount", -1)) == 0,
              f"recoveries {recovered}, lock timeouts {auto.get('CacheLockTimeoutCount')}")
    a.cleanup()
    os.rmdir(os.path.dirname(flag))


def bad_configuration(args):
    for arg, why in (("shmsess:(12Q)", "invalid size"), ("shmsess:/tmp/x(64M", "expected path(size)")):
        a = Apache(args.module, args.certs, arg)
        try:
            a.start()
            ok, detail = False, "httpd started"
        except RuntimeError as e:
            ok, detail = why in str(e), str(e).splitlines()[0][:160]
        finally:
            a.stop()
            a.cleanup()
        check(f"SSLSessionCache {arg}: httpd refuses to start with a clear message", ok, detail)


# Settings the library refuses at start: `apache2 -t` must refuse them too, naming the fix,
# so that `apache2ctl graceful` (which runs the test first) never restarts into them.
REFUSED_SETTINGS = (
    ("shmsess:(1K)", "too small", "shmsess:("),
    ("shmsess:(1)", "too small", "shmsess:("),
    ("shmsess:(18446744073709551615)", "larger than the maximum", "shmsess:("),
    ("shmsess:(2000G)", "larger than the maximum", "shmsess:("),
    ("shmsess:{root}/adir", "names a directory", "e.g."),
    ("shmsess:{root}/nodir/sess(8M)", "does not exist", "mkdir -p"),
)


def serves(a):
    """httpd runs and completes a handshake and a request."""
    try:
        return a.alive() and get(a.port, client_context(TLS12))[0] == 200
    except OSError:
        return False


def refused_at_configuration_check(args):
    """Running on shmsess:(8M), the operator changes the argument to one the library refuses
    and runs `apache2ctl graceful`: the configuration test refuses it with the fix in the
    message, the restart does not happen, and the running cache keeps its sessions."""
    for arg, why, fix in REFUSED_SETTINGS:
        with Apache(args.module, args.certs, "shmsess:(8M)", ssl_level="warn") as a:
            os.makedirs(os.path.join(a.root, "adir"), exist_ok=True)
            _, session = same_session(a.port, TLS12, 1)
            a.write_config(arg)
            try:
                rc, text = a.operator_graceful()
            except RuntimeError as e:
                rc, text = 0, f"graceful restart: {str(e).splitlines()[0]}"
            message = next((line for line in text.splitlines() if "SSLSessionCache" in line), text.strip()[:200])
            check(f"SSLSessionCache {arg}: apache2 -t refuses it, with the fix", rc != 0 and why in text and
                  fix in message, message[:240])
            up = serves(a)
            resumed = up and get(a.port, client_context(TLS12), session=session)[2]
            check(f"SSLSessionCache {arg}: after apache2ctl graceful httpd still serves, on its cache",
                  up and resumed, f"serving {up}, old session resumed {resumed}")
        a.cleanup()


def refused_at_restart(args):
    """A named segment the library refuses only when it opens it (a loose mode, a full
    filesystem): `apache2 -t` cannot know, so a graceful restart must not take httpd down;
    the new generation serves from an anonymous segment and says so in the error log."""
    root = tempfile.mkdtemp(prefix="shmsess-apache-")
    fs = os.path.join(root, "fs")
    os.makedirs(fs)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9M,mode=0755", "tmpfs", fs]).returncode == 0
    try:
        for case in ("chmod 644", "full filesystem"):
            seg = os.path.join(fs if case == "full filesystem" else root, "sessions")
            if case == "full filesystem" and not mounted:
                check("full filesystem: a tmpfs to fill", False, "mount -t tmpfs failed")
                continue
            with Apache(args.module, args.certs, f"shmsess:{seg}(8M)", root=root, ssl_level="warn") as a:
                check(f"{case}: httpd runs on the named segment", same_session(a.port, TLS12, 2)[0] == 2)
                if case == "chmod 644":
                    os.chmod(seg, 0o644)
                else:
                    # The filesystem fills up, and the configuration moves the segment to a new
                    # file there: the new generation cannot allocate it.
                    subprocess.run(["dd", "if=/dev/zero", f"of={fs}/filler", "bs=1M", "count=16"],
                                   capture_output=True)
                    seg = os.path.join(fs, "moved")
                    a.write_config(f"shmsess:{seg}(8M)")
                try:
                    a.graceful()
                    came_back = True
                except RuntimeError as e:
                    came_back, why = False, str(e).splitlines()[-1][:200]
                log = a.error_log()
                check(f"{case}, graceful: httpd comes back and serves", came_back and serves(a),
                      "" if came_back else f"httpd exited: {why}")
                check(f"{case}, graceful: the error log says the segment was refused and what is used instead",
                      "Using an anonymous segment" in log and seg in log,
                      next((line for line in log.splitlines() if "Using an anonymous" in line), "none")[:300])
                reused = came_back and same_session(a.port, TLS12, 3)[0]
                check(f"{case}, graceful: sessions resume on the anonymous segment", reused == 3, f"{reused}/3")
            for f in ("sessions", "moved", "filler"):
                for d in (root, fs):
                    if os.path.exists(os.path.join(d, f)):
                        os.unlink(os.path.join(d, f))
    finally:
        if mounted:
            subprocess.run(["umount", fs])
        subprocess.run(["rm", "-rf", root])


SCENARIOS = (
    "anonymous_segment", "shmcb_contrast", "hello_retry_request", "names_and_vhosts", "named_segment",
    "children_killed_inside_the_cache", "bad_configuration", "refused_at_configuration_check",
    "refused_at_restart",
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    ap.add_argument("--fault-lib", required=True, help="directory of a fault-injection libshmsesscache.so.0")
    ap.add_argument("--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    args = ap.parse_args()
    run([globals()[name] for name in args.only or SCENARIOS], args)
    finish()


if __name__ == "__main__":
    main()
