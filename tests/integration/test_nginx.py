#!/usr/bin/env python3
"""Integration: Debian's packaged nginx with ngx_http_shmsess_module.

A real nginx (master + 2 workers, in the foreground, tickets off) on a loopback port with a
generated configuration. Every response names the worker that served it, so resumption across
workers is checked from the server's side. Contrasts run the same checks on nginx's own
`ssl_session_cache shared:SSL:10m`, where the checks that are ours alone fail.

Each check prints PASS/FAIL; the run ends with "N passed, M failed" and exits non-zero if
anything failed.
"""

import argparse
import json
import os
import re
import signal
import ssl
import stat
import subprocess
import tempfile
import threading

from harness.checks import check, finish
from harness.client import free_port
from harness.client import session_context as client_context
from harness.nginx import (NGINX_SHARED, Nginx, get, made_on_and_stored, s_client_early, s_client_save,
                           same_session, shmsess_cache)
from harness.prefork import one_request, s_client_reconnect, summarize
from harness.redis import Redis, make_ca, write_key

RECONNECTS = 40
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
# reuseport: the kernel spreads connections over both workers by the client's port, so
# sequential clients reach both (without it one worker may take every connection).
SPREAD = " reuseport"


def resume_across_workers(n, tally):
    for version, name in ((TLS12, "TLS 1.2"), (TLS13, "TLS 1.3")):
        results, _ = same_session(n.port, version, RECONNECTS)
        reused, pids, reused_pids = summarize(results)
        tally["resumed"] += reused
        tally["tls13"] += reused if version == TLS13 else 0
        check(f"{name}: >= {RECONNECTS - 1}/{RECONNECTS} reconnections resume, in both workers",
              reused >= RECONNECTS - 1 and len(reused_pids) == 2,
              f"{reused}/{RECONNECTS} resumed by workers {reused_pids}")


def id_prefixes(n):
    """shmsess_session_id_prefix web3: every session id starts with "web3" and the number of
    the worker that made it (one number per worker). TLS 1.2: a TLS 1.3 client's session
    object holds the ticket apart from a random id of its own, so only TLS 1.2 shows it."""
    by_pid = {}
    for _ in range(20):
        _, pid, session = one_request(n.port, client_context(TLS12))
        by_pid.setdefault(pid, set()).add(session.id[:5])
    tags = sorted(t for ts in by_pid.values() for t in ts)
    check("shmsess_session_id_prefix: ids start with the prefix and the worker's number, one per worker",
          len(by_pid) == 2 and all(len(ts) == 1 for ts in by_pid.values())
          and sorted(tags) == [b"web3\x00", b"web3\x01"], str({p: sorted(ts) for p, ts in by_pid.items()}))


def ticket_twice(n):
    """Offer the same TLS 1.3 ticket twice: [resumed first, resumed second]."""
    ctx = client_context(TLS13)
    _, _, ticket = one_request(n.port, ctx)
    return [one_request(n.port, ctx, ticket)[0] for _ in range(2)]


def early_data_twice(n):
    """Save a TLS 1.3 session with s_client, then offer it twice with 0-RTT data:
    [(resumed, early accepted), (resumed, early accepted)]."""
    req = os.path.join(n.root, "request.txt")
    sess = os.path.join(n.root, "early.sess")
    with open(req, "w") as f:
        f.write("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
    s_client_save(n.port, sess, req)
    return [s_client_early(n.port, sess, req) for _ in range(2)]


def main_server(args):
    """One anonymous cache: resumption in both workers, single use, early data, status page,
    s_client, reload, SIGKILLed workers."""
    tally = {"resumed": 0, "tls13": 0}
    # nginx's own shared cache stays configured, as in many existing configurations: the
    # module recognises nginx's callbacks (and only those) and replaces them.
    http = shmsess_cache() + "\n" + NGINX_SHARED + "\n    shmsess_session_id_prefix web3;"
    with Nginx(args.module, args.certs, http, server="        ssl_early_data on;", listen_opts=SPREAD) as n:
        resume_across_workers(n, tally)
        id_prefixes(n)

        twice = ticket_twice(n)
        tally["resumed"] += sum(twice)
        tally["tls13"] += sum(twice)
        check("TLS 1.3: a ticket resumes once in the whole server, never twice", twice == [True, False], str(twice))

        early = early_data_twice(n)
        tally["resumed"] += sum(r for r, _ in early)
        tally["tls13"] += sum(r for r, _ in early)
        check("ssl_early_data on: 0-RTT accepted once, refused on replay",
              early == [(True, True), (False, False)], f"(resumed, early accepted): {early}")

        words = s_client_reconnect(n.port)
        tally["resumed"] += words.count("Reused")
        check("openssl s_client -reconnect -tls1_2 -no_ticket: New, then Reused x5",
              words == ["New"] + ["Reused"] * 5, " ".join(words))

        st = n.stats()
        check("shmsess_status: lookup hits = resumptions the clients saw",
              st.get("lookup_hits") == tally["resumed"], f"{st.get('lookup_hits')} vs {tally['resumed']}")
        check("shmsess_status: taken = TLS 1.3 resumptions (single use)",
              st.get("taken") == tally["tls13"], f"{st.get('taken')} vs {tally['tls13']}")
        check("shmsess_status: the anonymous segment's size", st.get("size_bytes") == 8 << 20,
              str(st.get("size_bytes")))

        anonymous_reload(n)
        workers_killed(n)
        anonymous_settings_reload(n)
        log = n.error_log()
    n.cleanup()
    # The only alerts expected are the master's notes on the workers this test killed.
    alerts = [ln for ln in log.splitlines() if ("[alert]" in ln or "[emerg]" in ln) and "on signal 9" not in ln]
    check("error log: the cache was installed on the TLS server, no other alerts",
          "installed on 1 TLS server(s)" in log and not alerts, alerts[0] if alerts else "")


def anonymous_reload(n):
    """nginx -s reload: the new cycle's contexts get the anonymous segment made at start."""
    _, session = same_session(n.port, TLS12, 1)
    old = n.worker_pids()
    new = n.reload()
    results, _ = same_session(n.port, TLS12, 10, session)
    reused, _, pids = summarize(results)
    check("anonymous segment: a session survives nginx -s reload, resumed by the new workers",
          reused == 10 and set(pids) <= set(new) and not set(new) & set(old),
          f"{reused}/10 by {pids}, old workers {old}")


def anonymous_settings_reload(n):
    """A reload that changes an anonymous segment's settings (size, id prefix) makes a new
    segment that every new worker shares (they are forked after it), dropping the old one's
    sessions, and says so."""
    n.http = shmsess_cache(size="16m") + "\n" + NGINX_SHARED + "\n    shmsess_session_id_prefix web4;"
    n.reload()
    size = n.stats().get("size_bytes")
    results, _ = same_session(n.port, TLS12, 20)
    reused, _, reused_pids = summarize(results)
    check("anonymous segment: a reload with a new size makes a new segment shared by both new workers",
          size == 16 << 20 and reused >= 19 and len(reused_pids) == 2
          and "sessions of the previous anonymous segment are dropped" in n.error_log(),
          f"size {size}, {reused}/20 resumed by workers {reused_pids}")


def workers_killed(n):
    """SIGKILL a worker four times while two clients keep connecting; nginx respawns it. The
    cache keeps working: every reconnection resumes once the kills stop."""
    stop = threading.Event()
    progress = threading.Condition()
    served, errors = [0], [0]

    def load(version):
        ctx, session = client_context(version), None
        while not stop.is_set():
            try:
                _, _, session = one_request(n.port, ctx, session)
                with progress:
                    served[0] += 1
                    progress.notify_all()
            except (OSError, ssl.SSLError, RuntimeError):
                errors[0] += 1  # a connection the killed worker was serving
                session = None

    def served_more(count):
        with progress:
            target = served[0] + count
            return progress.wait_for(lambda: served[0] >= target, timeout=30)

    threads = [threading.Thread(target=load, args=(v,)) for v in (TLS12, TLS13)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            served_more(10)  # under load: connections are being served when the kill lands
            victim = n.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            n.wait_workers([victim])
        kept_serving = served_more(10)  # after the last kill too
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    check("workers SIGKILLed under load: nginx kept serving", kept_serving and served[0] >= 50,
          f"{served[0]} connections served, {errors[0]} cut")
    r12, _ = same_session(n.port, TLS12, 20)
    r13, _ = same_session(n.port, TLS13, 20)
    reused12, reused13 = summarize(r12)[0], summarize(r13)[0]
    st = n.stats()
    check("after the kills: every reconnection resumes, no lock timeouts",
          reused12 == 20 and reused13 == 20 and st.get("lock_timeouts") == 0,
          f"TLS 1.2 {reused12}/20, TLS 1.3 {reused13}/20, lock timeouts {st.get('lock_timeouts')}")


def workers_killed_inside_the_cache(args):
    """nginx on a fault-injection build of the library (LD_LIBRARY_PATH wins over the
    module's RUNPATH): while a flag file exists, every pass of a critical-section fault point
    SIGKILLs the worker with probability 1/40. The master respawns the dead; the cache must
    neither hang nor lose its consistency, and resumes everything once the deaths stop."""
    flag_dir = tempfile.mkdtemp(prefix="shmsess-kill-")
    os.chmod(flag_dir, 0o755)  # workers run as nobody when started as root and must see the flag
    flag = os.path.join(flag_dir, "armed")
    env = {"LD_LIBRARY_PATH": os.path.abspath(args.fault_lib), "SHMSESS_TEST_FAULT": f"0:40:{flag}"}
    with Nginx(args.module, args.certs, shmsess_cache(size="1m"), env=env,
               pass_env=("SHMSESS_TEST_FAULT",), listen_opts=SPREAD) as n:
        ctxs = {v: client_context(v) for v in (TLS12, TLS13)}
        sessions = {TLS12: None, TLS13: None}
        open(flag, "w").close()  # armed only now: the master's startup is not a target
        served = cut = 0
        for i in range(300):
            v = TLS12 if i % 2 else TLS13
            try:
                _, _, sessions[v] = one_request(n.port, ctxs[v], sessions[v])
                served += 1
            except (OSError, ssl.SSLError, RuntimeError):
                cut += 1  # the worker serving us died inside the cache: expected here
                sessions[v] = None
        os.unlink(flag)
        died = n.error_log().count("exited on signal 9")
        check("workers killed inside the cache: nginx kept serving", served >= 150 and cut >= 1 and died >= 1,
              f"{served} connections served, {cut} cut, {died} workers died")
        n.wait_workers([])
        r12, _ = same_session(n.port, TLS12, 20)
        r13, _ = same_session(n.port, TLS13, 20)
        reused12, reused13 = summarize(r12)[0], summarize(r13)[0]
        st = n.stats()
        check("after the kills inside the cache: every reconnection resumes, locks recovered, no timeouts",
              reused12 == 20 and reused13 == 20 and st.get("lock_owner_died", 0) >= 1
              and st.get("lock_timeouts") == 0,
              f"TLS 1.2 {reused12}/20, TLS 1.3 {reused13}/20, lock owners died {st.get('lock_owner_died')}, "
              f"lock timeouts {st.get('lock_timeouts')}")
    n.cleanup()
    os.rmdir(flag_dir)


def nginx_shared_contrast(args):
    """The same server on nginx's own shared:SSL cache: replays succeed there."""
    with Nginx(args.module, args.certs, NGINX_SHARED, server="        ssl_early_data on;",
               status=False) as n:
        twice = ticket_twice(n)
        early = early_data_twice(n)
    n.cleanup()
    check("contrast, shared:SSL: the same TLS 1.3 ticket resumes twice", twice == [True, True], str(twice))
    check("contrast, shared:SSL: 0-RTT data is accepted again on replay",
          early == [(True, True), (True, True)], str(early))


# Next to the test server: one with `ssl_session_cache off`, and one with the same certificate
# that asks for client certificates (nginx puts the client CA names in its session id context).
MORE_SERVERS = """
    server {{
        listen 127.0.0.1:{port2} ssl;
        ssl_session_cache off;
        location / {{ return 200 "worker=$pid reused=$shmsess_reused early=0\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port3} ssl;
        ssl_client_certificate "{certs}/client.pem";
        ssl_verify_client optional;
        location / {{ return 200 "worker=$pid reused=$shmsess_reused early=0\\n"; }}
    }}
"""


def named_segment(args):
    root = tempfile.mkdtemp(prefix="shmsess-nginx-")
    os.chmod(root, 0o755)
    seg = os.path.join(root, "ssl.sess")
    cache = shmsess_cache("{root}/ssl.sess", "8m")
    try:
        n = Nginx(args.module, args.certs, cache, servers=MORE_SERVERS, root=root)
        n.write_config()
        t = n.command("-t")
        s = n.command("-s", "stop")  # the signaller reads the configuration, finds no master
        check("nginx -t and the nginx -s signaller create no segment",
              t.returncode == 0 and s.returncode != 0 and not os.path.exists(seg),
              f"-t rc {t.returncode}, -s rc {s.returncode}, segment exists: {os.path.exists(seg)}")

        with n:
            results, session12 = same_session(n.port, TLS12, 5)
            check("named segment: TLS 1.2 sessions resume", summarize(results)[0] == 5, f"{summarize(results)[0]}/5")
            _, _, ticket = one_request(n.port, client_context(TLS13))

            off, _ = same_session(n.port2, TLS12, 5)
            check("a server with ssl_session_cache off is left alone (no resumption there)",
                  summarize(off)[0] == 0 and "has \"ssl_session_cache off\": left alone" in n.error_log(),
                  f"{summarize(off)[0]}/5 resumed")

            other = one_request(n.port3, client_context(TLS12), session12)[0]
            check("nginx's session id context is kept: a session is not resumed by a server with "
                  "other client-certificate settings", not other and "installed on 2 TLS server(s)" in n.error_log(),
                  f"resumed there: {other}")

            status_page = get(n.port, "/sessions")[1]
            old = n.worker_pids()
            new = n.reload()
            results, _ = same_session(n.port, TLS12, 5, session12)
            reused, _, pids = summarize(results)
            check("named segment: a session survives nginx -s reload, in the new workers",
                  reused == 5 and set(pids) <= set(new), f"{reused}/5 by {pids}, old {old}")
            port = n.port
        st = os.lstat(seg)
        check("named segment: the file is 0600, owned by the user that started nginx",
              stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid(), f"{oct(st.st_mode)} uid {st.st_uid}")
        out = subprocess.run([args.cli, "stat", "--json", seg], capture_output=True, text=True)
        stats = json.loads(out.stdout) if out.returncode == 0 else {}
        entries = stats.get("entries", 0) if out.returncode == 0 else -1
        check("shmsesscache stat reads nginx's segment", entries >= 2, f"entries {entries} {out.stderr.strip()}")
        # No shmsess_session_id_prefix here: the generator is installed all the same (it picks
        # ids whose shards have room). The full handshakes on ours: a TLS 1.2 session, two TLS
        # 1.3 tickets, one on the third server.
        check("without shmsess_session_id_prefix the library still makes the session ids",
              stats.get("ids_generated", 0) >= 4, f"ids_generated {stats.get('ids_generated')}")
        out = subprocess.run([args.cli, "stat", "--prometheus", seg], capture_output=True, text=True)
        cli, page = metric_lines(out.stdout), metric_lines(status_page)
        check("shmsess_status and shmsesscache stat --prometheus: the same metrics, # HELP and # TYPE lines",
              cli == page and len(page) > 40 and all(name in status_page for name in
                                                     ("# HELP shmsesscache_taken_total ",
                                                      "# TYPE shmsesscache_taken_total counter",
                                                      "# TYPE shmsesscache_entries gauge")),
              f"{len(page)} metrics on the page, {len(cli)} from the tool; only on the page: "
              f"{sorted(set(page) - set(cli))[:3]}, only from the tool: {sorted(set(cli) - set(page))[:3]}")

        # This time as a daemon, as init systems run it: nginx only upgrades its binary then.
        with Nginx(args.module, args.certs, cache, root=root, port=port, daemon=True) as n2:
            after12 = one_request(n2.port, client_context(TLS12), session12)[0]
            after13, _, ticket = one_request(n2.port, client_context(TLS13), ticket)
            check("named segment: TLS 1.2 session and TLS 1.3 ticket survive an nginx restart",
                  after12 and after13, f"TLS 1.2 {after12}, TLS 1.3 {after13}")

            old_master = n2.master
            new = n2.upgrade()
            up12, pid12, _ = one_request(n2.port, client_context(TLS12), session12)
            up13 = one_request(n2.port, client_context(TLS13), ticket)[0]
            check("named segment: sessions survive a binary upgrade (USR2, then QUIT to the old master)",
                  up12 and up13 and pid12 in new and n2.master != old_master,
                  f"TLS 1.2 {up12} (worker {pid12} of new master {n2.master}), TLS 1.3 {up13}")
    finally:
        subprocess.run(["rm", "-rf", root])


def two_hosts_on_redis(args):
    """Two nginx "hosts" with the Redis tier (shmsess_remote, shmsess_remote_key): a session
    made on one resumes on the other; a TLS 1.3 ticket resumes once in the fleet."""
    tmp = tempfile.mkdtemp(prefix="shmsess-nginx-redis-")
    key = os.path.join(tmp, "key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    try:
        with Redis() as redis:
            tier = (shmsess_cache() + f"\n    shmsess_remote {redis.url};\n    shmsess_remote_key {key};"
                    "\n    shmsess_remote_timeout 200ms;")
            with Nginx(args.module, args.certs, tier) as a, Nginx(args.module, args.certs, tier) as b:
                # A stores from a writer thread: offered to B once it is in Redis.
                s12 = made_on_and_stored(redis, a.port)
                on_b = [one_request(b.port, client_context(TLS12), s12)[0] for _ in range(3)]
                t13 = made_on_and_stored(redis, a.port, TLS13)
                t13_b = one_request(b.port, client_context(TLS13), t13)[0]
                t13_a = one_request(a.port, client_context(TLS13), t13)[0]
                sb = b.stats()
            for n in (a, b):
                n.cleanup()
            with Nginx(args.module, args.certs, shmsess_cache()) as c, Nginx(args.module, args.certs, shmsess_cache()) as d:
                _, _, s = one_request(c.port, client_context(TLS12))
                without = one_request(d.port, client_context(TLS12), s)[0]
            for n in (c, d):
                n.cleanup()
    finally:
        subprocess.run(["rm", "-rf", tmp])
    check("Redis tier: a TLS 1.2 session made on host A resumes on host B", all(on_b) and sb.get("remote_hits", 0) >= 1,
          f"{on_b}, B's remote hits {sb.get('remote_hits')}")
    check("Redis tier: a TLS 1.3 ticket from A resumes on B, then not again on A", t13_b and not t13_a,
          f"on B {t13_b}, then on A {t13_a}")
    check("contrast, no tier: host B does not resume host A's session", not without, f"resumed {without}")


def key_rotation_on_reload(args):
    """Host Y seals with key A, host X with key B. Y's key file is rewritten to "B, then A"
    (B seals, A still opens) and Y is reloaded: Y now opens X's sessions, without a restart,
    and still resumes its own. Y runs on a named segment, which the reload attaches again with
    the new keys (the anonymous case is anonymous_settings_reload)."""
    tmp = tempfile.mkdtemp(prefix="shmsess-nginx-rot-")
    key_a, key_b = os.urandom(32).hex(), os.urandom(32).hex()
    x_key, y_key = os.path.join(tmp, "x.key"), os.path.join(tmp, "y.key")
    write_key(x_key, key_b)
    write_key(y_key, key_a)
    try:
        with Redis() as redis:
            tier = f"\n    shmsess_remote {redis.url};\n    shmsess_remote_key "
            # Y on a named segment: the reload attaches it again with the new keys.
            with Nginx(args.module, args.certs, shmsess_cache() + tier + x_key + ";") as x, \
                    Nginx(args.module, args.certs, shmsess_cache("{root}/ssl.sess") + tier + y_key + ";") as y:
                before = one_request(y.port, client_context(TLS12), made_on_and_stored(redis, x.port))[0]
                _, _, own = one_request(y.port, client_context(TLS12))
                write_key(y_key, key_b, key_a)
                y.reload()
                after = one_request(y.port, client_context(TLS12), made_on_and_stored(redis, x.port))[0]
                own_after = one_request(y.port, client_context(TLS12), own)[0]
                log = y.error_log()
            for n in (x, y):
                n.cleanup()
    finally:
        subprocess.run(["rm", "-rf", tmp])
    check("Redis tier: a rotated key file is read again on nginx -s reload (host Y opens host X's "
          "sessions after Y's key file gains X's key; Y's own sessions stay)", not before and after and own_after,
          f"before rotation resumed {before}, after rotation and reload {after}, Y's own {own_after}; "
          + next((ln for ln in log.splitlines() if "[alert]" in ln or "[emerg]" in ln), ""))


def redis_over_tls(args):
    """shmsess_remote rediss:// with shmsess_remote_ca, to a real redis-server --tls-port with
    a CA made here: a session made on host A resumes on host B."""
    tmp = tempfile.mkdtemp(prefix="shmsess-nginx-tls-")
    os.chmod(tmp, 0o755)  # workers run as nobody when started as root
    key = os.path.join(tmp, "key")
    write_key(key, os.urandom(32).hex())
    try:
        ca, cert, cert_key = make_ca(tmp, "redis")
        with Redis(tls=(ca, cert, cert_key)) as redis:
            tier = (shmsess_cache() + f"\n    shmsess_remote {redis.url};\n    shmsess_remote_key {key};"
                    f"\n    shmsess_remote_ca {ca};")
            try:
                with Nginx(args.module, args.certs, tier) as a, Nginx(args.module, args.certs, tier) as b:
                    on_b = one_request(b.port, client_context(TLS12), made_on_and_stored(redis, a.port))[0]
                    hits = b.stats().get("remote_hits")
                for n in (a, b):
                    n.cleanup()
                why = f"resumed on B {on_b}, B's remote hits {hits}"
            except RuntimeError as e:  # nginx refused the configuration
                on_b, hits, why = False, 0, next((ln for ln in str(e).splitlines() if "emerg" in ln), str(e))[:200]
    finally:
        subprocess.run(["rm", "-rf", tmp])
    check("Redis over TLS (rediss:// + shmsess_remote_ca): a session made on host A resumes on host B",
          on_b and hits >= 1, why)


def segment_refused(args):
    """A named segment file of another size: refused when the configuration is read, so a
    reload keeps the running configuration and cache (the master must not exit) and a start
    is refused, both with the library's reason and the way to resize."""
    root = tempfile.mkdtemp(prefix="shmsess-nginx-")
    why = "existing segment has 8388608 bytes with 200-byte slots, but 16777216 bytes"
    try:
        with Nginx(args.module, args.certs, shmsess_cache("{root}/ssl.sess", "8m"), root=root) as n:
            _, _, session = one_request(n.port, client_context(TLS12))
            n.http = shmsess_cache("{root}/ssl.sess", "16m")
            try:
                n.reload()
                said = "reload accepted"
            except RuntimeError as e:  # the signaller read the configuration and refused it
                said = next((ln for ln in str(e).splitlines() if why in ln), str(e)[:200])
            resumed = one_request(n.port, client_context(TLS12), session)[0] and n.master_alive()
        check("reload to a size the segment file does not have: refused with the reason, nginx runs on, "
              "on the previous cache", resumed and "[emerg]" in said and "shmsesscache dump" in said,
              f"resumed {resumed}: {said[:220]}")
        n2 = Nginx(args.module, args.certs, shmsess_cache("{root}/ssl.sess", "16m"), root=root)
        try:
            n2.start()
            refused = "nginx started"
        except RuntimeError as e:
            refused = next((ln for ln in str(e).splitlines() if why in ln), str(e)[:200])
        finally:
            n2.stop()
        check("start with a segment file of another size: refused, with the reason", "[emerg]" in refused and
              why in refused, refused[:220])
    finally:
        subprocess.run(["rm", "-rf", root])


def planted_files(cli, tmp):
    """What may already be at a segment path: a symbolic link, a FIFO, a character device, a
    file that is not a segment, a segment of 16m, one that others can read."""
    os.symlink(os.path.join(tmp, "elsewhere.sess"), os.path.join(tmp, "link.sess"))
    os.mkfifo(os.path.join(tmp, "fifo.sess"), 0o600)
    os.mknod(os.path.join(tmp, "null.sess"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with open(os.open(os.path.join(tmp, "junk.sess"), os.O_CREAT | os.O_WRONLY, 0o600), "wb") as f:
        f.write(os.urandom(8 << 20))
    for name in ("16m.sess", "open.sess"):
        subprocess.run([cli, "create", os.path.join(tmp, name), "--size", "16m"], check=True, capture_output=True)
    os.chmod(os.path.join(tmp, "open.sess"), 0o644)


def bad_configuration(args):
    tmp = tempfile.mkdtemp(prefix="shmsess-nginx-conf-")
    key, bad_key, link = (os.path.join(tmp, n) for n in ("key", "bad.key", "link.key"))
    write_key(key, os.urandom(32).hex())
    write_key(bad_key, "not a key")
    os.symlink(key, link)
    cache = "    shmsess_session_cache anonymous 8m;\n"
    remote = cache + "    shmsess_remote redis://127.0.0.1:6379/0;\n"
    cases = (
        ("    shmsess_session_cache anonymous 12Q;", "invalid size \"12Q\""),
        ("    shmsess_session_cache anonymous 12Q;", "with the suffix k, m or g"),
        ("    shmsess_session_cache anonymous 64k;", "at least 1m"),
        ("    shmsess_session_cache anonymous 1025g;", "is larger than the maximum"),
        ("    shmsess_session_cache anonymous 9223372036854775807;", "is larger than the maximum"),
        ("    shmsess_session_cache ssl.sess 8m;", "give an absolute file name"),
        (cache + "    shmsess_remote http://127.0.0.1:6379;", "expected redis://"),
        (cache + "    shmsess_remote redis://127.0.0.1:6379;", "needs \"shmsess_remote_key\""),
        (cache + "    shmsess_remote_key /nonexistent/key;", "cannot read \"/nonexistent/key\""),
        (cache + f"    shmsess_remote redis://127.0.0.1:notaport/0;\n    shmsess_remote_key {key};",
         "remote URL is not usable"),
        (remote + f"    shmsess_remote_key {bad_key};", "is not a key of 64 hex digits"),
        (remote + f"    shmsess_remote_key {link};", "is a symbolic link, which the library refuses"),
        (remote + f"    shmsess_remote_key {link};", "DIR/..data/NAME"),
        (cache + f"    shmsess_remote rediss://127.0.0.1:6379/0;\n    shmsess_remote_key {key};"
         f"\n    shmsess_remote_ca {tmp}/nonexistent-ca.pem;", "CA"),
        (cache + f"    shmsess_remote_key {key};", "\"shmsess_remote_key\" has no effect without \"shmsess_remote\""),
        (cache + "    shmsess_remote_timeout 5ms;", "\"shmsess_remote_timeout\" has no effect without"),
        (cache + "    shmsess_remote_key_prefix x:;", "\"shmsess_remote_key_prefix\" has no effect without"),
        (cache + f"    shmsess_remote_ca {key};", "\"shmsess_remote_ca\" has no effect without"),
        ("    shmsess_remote_timeout 5ms;\n    shmsess_remote_key_prefix x:;", "need \"shmsess_session_cache\""),
        (remote + f"    shmsess_remote_key {key};\n    shmsess_remote_key_prefix \"\";",
         "empty \"shmsess_remote_key_prefix\""),
        ("", "need \"shmsess_session_cache\""),  # shmsess_status without a cache
        # Segment paths that start would refuse (or that would name a temporary file).
        ("    shmsess_session_cache / 8m;", "names a directory"),
        (f"    shmsess_session_cache {tmp} 8m;", "names a directory"),
        ("    shmsess_session_cache /proc/ssl.sess 8m;", "on proc, a pseudo filesystem"),
        (f"    shmsess_session_cache {tmp}/missing/ssl.sess 8m;", f"the directory {tmp}/missing of segment"),
        (f"    shmsess_session_cache {tmp}/missing/ssl.sess 8m;", f"mkdir -p {tmp}/missing"),
        # Files already at the segment path that start would refuse (planted_files below).
        (f"    shmsess_session_cache {tmp}/link.sess 8m;", "is a symbolic link; refusing to follow it"),
        (f"    shmsess_session_cache {tmp}/fifo.sess 8m;", "fifo.sess is not a regular file: remove it"),
        (f"    shmsess_session_cache {tmp}/null.sess 8m;", "null.sess is not a regular file"),
        (f"    shmsess_session_cache {tmp}/junk.sess 8m;", "not a shmsesscache segment (bad magic); if nothing"),
        (f"    shmsess_session_cache {tmp}/16m.sess 8m;", "existing segment has 16777216 bytes"),
        (f"    shmsess_session_cache {tmp}/16m.sess 8m;", "'shmsesscache create"),
        (f"    shmsess_session_cache {tmp}/open.sess 16m;", "readable by group or others (mode 644)"),
        (f"    shmsess_session_cache {tmp}/{'s' * 240} 8m;", "give a shorter file name"),
    )
    planted_files(args.cli, tmp)
    try:
        for http, why in cases:
            what = " ".join(ln.strip() for ln in http.strip().splitlines()[1:] or http.strip().splitlines()) \
                if http else "shmsess_status without shmsess_session_cache"
            n = Nginx(args.module, args.certs, http, status=not http.startswith("    shmsess_remote_timeout"))
            n.write_config()
            r = n.command("-t")
            n.cleanup()
            line = next((ln for ln in r.stderr.splitlines() if why in ln),
                        next((ln for ln in r.stderr.splitlines() if "[emerg]" in ln), r.stderr.strip()))
            check(f"nginx -t refuses {what!r}: {why}",
                  r.returncode != 0 and why in r.stderr, line[:240])
        # A refused URL is never echoed: it may carry the fleet's password (the library's own
        # URL errors do not echo it either).
        secret = "S3cret" + os.urandom(4).hex()
        for url in (f"redis:/default:{secret}@127.0.0.1:6379/0", f"redis://default:{secret}@127.0.0.1:notaport/0"):
            n = Nginx(args.module, args.certs, cache + f"    shmsess_remote {url};\n    shmsess_remote_key {key};")
            n.write_config()
            r = n.command("-t")
            n.cleanup()
            check(f"nginx -t refuses a bad shmsess_remote URL without printing its password ({url.split(':')[0]}:...)",
                  r.returncode != 0 and secret not in r.stderr, r.stderr.strip()[-200:].replace(secret, "<SECRET>"))
        # Accepted: a size in g, rediss:// with a CA (nothing is connected under -t).
        ca = os.path.join(tmp, "ca.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=test CA", "-keyout", os.path.join(tmp, "ca.key"), "-out", ca],
                       check=True, capture_output=True)
        http = ("    shmsess_session_cache anonymous 1g;\n    shmsess_remote rediss://127.0.0.1:6379/0;\n"
                f"    shmsess_remote_key {key};\n    shmsess_remote_ca {ca};\n    shmsess_remote_key_prefix web:;")
        n = Nginx(args.module, args.certs, http)
        n.write_config()
        r = n.command("-t")
        n.cleanup()
        check("nginx -t accepts a size of 1g and rediss:// with shmsess_remote_ca",
              r.returncode == 0, next((ln for ln in r.stderr.splitlines() if "[emerg]" in ln), "")[:240])
        # The fleet label: checked by the library at -t; only with shmsess_remote.
        for extra, why in ((f"    shmsess_remote redis://127.0.0.1:6379/0;\n    shmsess_remote_key {key};\n"
                            "    shmsess_remote_fleet \"prod eu\";", "fleet label must be"),
                           ("    shmsess_remote_fleet prod-eu;", "has no effect without \"shmsess_remote\"")):
            n = Nginx(args.module, args.certs, cache + extra)
            n.write_config()
            r = n.command("-t")
            n.cleanup()
            check(f"nginx -t refuses {extra.strip().splitlines()[-1]!r}: {why}", r.returncode != 0 and why in r.stderr,
                  next((ln for ln in r.stderr.splitlines() if "[emerg]" in ln), r.stderr.strip())[:240])
        n = Nginx(args.module, args.certs, cache + f"    shmsess_remote redis://127.0.0.1:6379/0;\n"
                  f"    shmsess_remote_key {key};\n    shmsess_remote_fleet prod-eu;")
        n.write_config()
        r = n.command("-t")
        n.cleanup()
        check("nginx -t accepts shmsess_remote_fleet prod-eu", r.returncode == 0,
              next((ln for ln in r.stderr.splitlines() if "[emerg]" in ln), "")[:240])
        # Sentinel: accepted with the master's name, refused (by the library) without it.
        for url, ok in (("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/0", True),
                        ("redis+sentinel://:pw@127.0.0.1:26379", False)):
            n = Nginx(args.module, args.certs, cache + f"    shmsess_remote {url};\n    shmsess_remote_key {key};")
            n.write_config()
            r = n.command("-t")
            n.cleanup()
            check(f"nginx -t {'accepts' if ok else 'refuses'} {url.split('@')[1]}",
                  (r.returncode == 0) == ok and (ok or "master's name" in r.stderr),
                  next((ln for ln in r.stderr.splitlines() if "[emerg]" in ln), "")[:240])
    finally:
        subprocess.run(["rm", "-rf", tmp])


def metric_lines(text):
    """The metric names of a Prometheus text, each with its # HELP and # TYPE lines (a name
    without both is left out)."""
    helped = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    typed = set(re.findall(r"^# TYPE (\S+) (?:counter|gauge)$", text, re.M))
    sampled = set(re.findall(r"^(shmsesscache_\w+)\{", text, re.M))
    return sorted(helped & typed & sampled)


def mapped(pid, needle):
    with open(f"/proc/{pid}/maps") as f:
        return needle in f.read()


def removed_cache_reload(args):
    """A reload to a configuration without shmsess_session_cache unmaps the segment in the
    master and the new workers do not map it (nginx frees its own zone likewise); a reload
    that brings it back maps it again, and it resumes."""
    root = tempfile.mkdtemp(prefix="shmsess-nginx-")
    os.chmod(root, 0o755)
    try:
        for segment, needle in (("{root}/ssl.sess", os.path.join(root, "ssl.sess")),
                                ("anonymous", "/memfd:shmsesscache")):
            with Nginx(args.module, args.certs, shmsess_cache(segment), root=root) as n:
                before = [p for p in [n.master, *n.worker_pids()] if mapped(p, needle)]
                n.http, n.status = "", False
                without = [p for p in [n.master, *n.reload()] if mapped(p, needle)]
                n.http, n.status = shmsess_cache(segment), True
                again = [p for p in [n.master, *n.reload()] if mapped(p, needle)]
                results, _ = same_session(n.port, TLS12, 3)
                reused = summarize(results)[0]
            check(f"reload without shmsess_session_cache ({segment.format(root='ROOT')}): the master unmaps "
                  "the segment and the new workers do not map it; a reload with it maps it again",
                  len(before) == 3 and not without and len(again) == 3 and reused == 3,
                  f"mapped by {len(before)} of master+workers, after the reload without it by {without}, "
                  f"after the reload with it by {len(again)}, resumed {reused}/3")
    finally:
        subprocess.run(["rm", "-rf", root])


# Two name-based virtual hosts on one socket; the default (first) one has the cache off.
VHOSTS_BEHIND_OFF = """
    server {{
        listen 127.0.0.1:{port2} ssl;
        server_name off.test;
        ssl_session_cache off;
        location / {{ return 200 "worker=$pid reused=$shmsess_reused early=0\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port2} ssl;
        server_name vhost-a.test;
    }}
    server {{
        listen 127.0.0.1:{port2} ssl;
        server_name vhost-b.test;
    }}
"""


def status_label_not_utf8(args):
    """A segment path with a byte that is not UTF-8 (a Latin-1 file name): the status page still
    answers, the byte shown as '?' (Prometheus labels are UTF-8; the library refuses others)."""
    root = tempfile.mkdtemp(prefix="shmsess-nginx-")
    try:
        os.chmod(root, 0o755)
        latin1 = "caf\udce9.sess"  # b"caf\xe9.sess" through surrogateescape
        with Nginx(args.module, args.certs, shmsess_cache("{root}/" + latin1, "8m"), root=root) as n:
            status, body = get(n.port, "/sessions")
        check("shmsess_status: a segment path that is not UTF-8 is shown with '?', not a 500",
              status == 200 and 'segment="' + root + '/caf?.sess"' in body,
              f"status {status}, {body[:160]!r}")
    finally:
        subprocess.run(["rm", "-rf", root])


def default_server_off_warns(args):
    """A default server with `ssl_session_cache off` turns resumption off for the virtual
    hosts on its socket: said at warn level, naming the socket and the hosts; a plain-text
    socket with several servers (no TLS there) is not warned about."""
    plain = free_port()
    servers = VHOSTS_BEHIND_OFF + "".join(
        f"    server {{{{ listen 127.0.0.1:{plain}{opts}; server_name {name}; }}}}\n"
        for name, opts in (("plain-a.test", " default_server; ssl_session_cache off"), ("plain-b.test", "")))
    with Nginx(args.module, args.certs, shmsess_cache(), servers=servers, log_level="warn") as n:
        off, _ = same_session(n.port2, TLS12, 3)
        log = n.error_log()
    n.cleanup()
    wrong = next((ln for ln in log.splitlines() if "[warn]" in ln and f"127.0.0.1:{plain}" in ln), "")
    check("no default-server [warn] for a plain-text socket with several servers", not wrong, wrong[:300])
    line = next((ln for ln in log.splitlines() if "[warn]" in ln and f"127.0.0.1:{n.port2}" in ln), "")
    check("a default server with ssl_session_cache off: a [warn] names its socket and the virtual hosts "
          "that resume nothing there", "vhost-a.test" in line and "vhost-b.test" in line
          and "off.test" in line and summarize(off)[0] == 0, line[:300] or "no such [warn] line")


def errors_at_the_directive(args):
    """Errors about http-level directives given in an included file (conf.d/) name that file
    and the directive's line, not the end of the http block in nginx.conf."""
    key = None
    tmp = tempfile.mkdtemp(prefix="shmsess-nginx-confd-")
    try:
        key = os.path.join(tmp, "key")
        write_key(key, os.urandom(32).hex())
        cases = (
            ("shmsess_session_cache anonymous 8m;\nshmsess_remote_timeout 5ms;\n", 2, "has no effect without"),
            (f"shmsess_session_cache anonymous 8m;\n\nshmsess_remote redis://127.0.0.1:notaport/0;\n"
             f"shmsess_remote_key {key};\n", 3, "remote URL is not usable"),
            ("# the cache\nshmsess_session_cache anonymous 8m;\nshmsess_remote redis://127.0.0.1:6379/0;\n",
             3, "needs \"shmsess_remote_key\""),
        )
        for text, line, why in cases:
            n = Nginx(args.module, args.certs, "    include {root}/conf.d/*.conf;")
            os.makedirs(os.path.join(n.root, "conf.d"))
            conf = os.path.join(n.root, "conf.d", "shmsess.conf")
            with open(conf, "w") as f:
                f.write(text)
            n.write_config()
            r = n.command("-t")
            n.cleanup()
            err = next((ln for ln in r.stderr.splitlines() if why in ln), r.stderr.strip())
            check(f"nginx -t: {why!r} points at conf.d/shmsess.conf:{line}",
                  r.returncode != 0 and err.endswith(f"in {conf}:{line}"), err[-200:])
    finally:
        subprocess.run(["rm", "-rf", tmp])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    ap.add_argument("--fault-lib", required=True, help="directory of a fault-injection libshmsesscache.so.0")
    args = ap.parse_args()
    main_server(args)
    workers_killed_inside_the_cache(args)
    nginx_shared_contrast(args)
    named_segment(args)
    two_hosts_on_redis(args)
    key_rotation_on_reload(args)
    redis_over_tls(args)
    segment_refused(args)
    bad_configuration(args)
    removed_cache_reload(args)
    default_server_off_warns(args)
    errors_at_the_directive(args)
    status_label_not_utf8(args)
    finish()


if __name__ == "__main__":
    main()
