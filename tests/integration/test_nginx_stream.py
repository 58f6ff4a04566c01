#!/usr/bin/env python3
"""Integration: Debian's nginx with its dynamic stream and mail modules and
ngx_stream_shmsess_module / ngx_mail_shmsess_module.

A real nginx (master + 2 workers, tickets off) on loopback ports: a stream TLS server that
answers with the worker's pid, one in front of a TCP echo backend, and an implicit-TLS IMAP
proxy with an auth_http endpoint and an IMAP backend made here. Contrasts run the same checks
on nginx's own `ssl_session_cache shared:` in the stream block, where the checks that are ours
alone fail.

Each check prints PASS/FAIL; the run ends with "N passed, M failed" and exits non-zero if
anything failed.
"""

import argparse
import json
import os
import signal
import ssl
import subprocess
import tempfile

from harness.checks import check, finish
from harness.client import resumption_words, s_client
from harness.client import session_context as client_context
from harness.nginx import Nginx, get, made_on_and_stored, parse_prometheus, same_session
from harness.nginx_stream import (MAIL_MODULES, MAIL_PORTS, STREAM_MODULES, STREAM_PORTS, Peer,
                                  auth_http_for, echo_line, fake_imap, imap_greeting, imap_login_noop,
                                  mail_block, stream_block, stream_worker, tls_exchange)
from harness.prefork import one_request, summarize
from harness.redis import Redis, new_key, write_key

RECONNECTS = 39
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
VERSIONS = ((TLS12, "TLS 1.2"), (TLS13, "TLS 1.3"))


def cache_line(segment="anonymous", size="8m"):
    return f"    shmsess_session_cache {segment} {size};"


NGINX_STREAM_SHARED = "    ssl_session_cache shared:STREAM:10m;"


class Modules:
    """The .so files: this project's http module (the harness's http server is its
    readiness signal), stream and mail modules, after Debian's."""

    def __init__(self, http_module):
        self.http = http_module
        here = os.path.dirname(os.path.abspath(http_module))
        self.stream = STREAM_MODULES + (os.path.join(here, "ngx_stream_shmsess_module.so"),)
        self.mail = MAIL_MODULES + (os.path.join(here, "ngx_mail_shmsess_module.so"),)


def stream_nginx(mods, certs, backend, cache, http="", ports=STREAM_PORTS, status=None, **kw):
    """nginx with the stream block; its http server (the harness's readiness signal) has the
    status location of `status` (True: http's cache, "stream": the stream block's)."""
    return Nginx(mods.http, certs, http, modules=mods.stream, main=stream_block(cache, backend),
                 ports=ports, status=bool(http) if status is None else status, **kw)


def echo(port, ctx, session=None):
    reused, data, new = tls_exchange(port, ctx, session, b"ping shmsess\n")
    return reused, data, new


def ticket_twice(fn, port):
    ctx = client_context(TLS13)
    ticket = fn(port, ctx)[2]
    return [fn(port, ctx, ticket)[0] for _ in range(2)]


def stream_resumption(mods, args, backend):
    """Both stream servers on one anonymous cache: TLS 1.2 and 1.3 resumed across both
    workers, behind the echo backend too; a TLS 1.3 ticket resumes once; reload."""
    resumed = 0
    with stream_nginx(mods, args.certs, backend.port, cache_line(), status="stream") as n:
        ret, echo_port = n.ports["return"], n.ports["echo"]
        for version, name in VERSIONS:
            results, _ = same_session(ret, version, RECONNECTS, request=stream_worker)
            reused, _, reused_pids = summarize(results)
            resumed += reused
            check(f"stream, {name}: >= {RECONNECTS - 1}/{RECONNECTS} reconnections resume, in both workers",
                  reused >= RECONNECTS - 1 and len(reused_pids) == 2,
                  f"{reused}/{RECONNECTS} resumed by workers {reused_pids}")
            results, _ = same_session(echo_port, version, RECONNECTS, request=echo)
            reused = sum(r for r, _ in results)
            resumed += reused
            echoed = sum(a == b"ping shmsess\n" for _, a in results)
            check(f"stream in front of a TCP echo backend, {name}: >= {RECONNECTS - 1}/{RECONNECTS} resume, "
                  "every echo comes back", reused >= RECONNECTS - 1 and echoed == RECONNECTS,
                  f"{reused}/{RECONNECTS} resumed, {echoed} echoes")
        twice = ticket_twice(stream_worker, ret)
        resumed += sum(twice)
        check("stream, TLS 1.3: a ticket resumes once in the whole server, never twice", twice == [True, False],
              str(twice))
        status, body = get(n.port, "/sessions")
        st = parse_prometheus(body)
        check("shmsess_status stream (in an http location): the stream cache's lookup hits = the resumptions "
              "the clients saw, with # HELP and # TYPE lines and block=\"stream\"",
              status == 200 and st.get("lookup_hits") == resumed
              and "# HELP shmsesscache_lookup_hits_total " in body
              and "# TYPE shmsesscache_lookup_hits_total counter" in body
              and 'shmsesscache_entries{block="stream",segment="anonymous"} ' in body,
              f"status {status}, hits {st.get('lookup_hits')} vs {resumed}")

        _, session = same_session(ret, TLS12, 1, request=stream_worker)
        old = n.worker_pids()
        new = n.reload()
        results, _ = same_session(ret, TLS12, 10, session, request=stream_worker)
        reused, pids, _ = summarize(results)
        check("stream: a session survives nginx -s reload, resumed by the new workers",
              reused == 10 and set(pids) <= set(new) and not set(new) & set(old), f"{reused}/10 by {pids}, old {old}")
        log = n.error_log()
    n.cleanup()
    alerts = [ln for ln in log.splitlines() if "[alert]" in ln or "[emerg]" in ln]
    check("stream: the error log says the cache was installed on both TLS servers, no alerts",
          "installed on 2 TLS server(s) of the stream block" in log and not alerts, alerts[0] if alerts else "")


def hrr_and_server_name(mods, args, backend, cache):
    """With `openssl s_client`: a TLS 1.3 ticket offered with a first key share the server
    does not take (P-384; it asks again for X25519) resumes; one made for "localhost" and
    offered for "other.test" does not. Returns (words after the HRR, words for the other
    name, statistics or {})."""
    with stream_nginx(mods, args.certs, backend.port, cache, status="stream" if "shmsess" in cache else False) as n:
        port, sess = n.ports["return"], os.path.join(n.root, "s.sess")
        s_client(port, "-tls1_3", "-sess_out", sess, "-ign_eof", "-servername", "localhost")
        hrr = resumption_words(s_client(port, "-tls1_3", "-sess_in", sess, "-ign_eof", "-groups", "P-384:X25519",
                                        "-servername", "localhost"))
        s_client(port, "-tls1_3", "-sess_out", sess, "-ign_eof", "-servername", "localhost")
        other = resumption_words(s_client(port, "-tls1_3", "-sess_in", sess, "-ign_eof", "-servername", "other.test"))
        st = n.stats() if n.status else {}
    n.cleanup()
    return hrr, other, st


def stream_hrr_and_server_name(mods, args, backend):
    hrr, other, st = hrr_and_server_name(mods, args, backend, cache_line())
    check("stream, TLS 1.3 after a HelloRetryRequest: the single-use ticket still resumes",
          hrr == ["Reused"] and st.get("hrr_resumed") == 1, f"{hrr}, hrr_resumed {st.get('hrr_resumed')}")
    check("stream: a session made for one server name is not resumed for another",
          other == ["New"] and st.get("sni_mismatch") == 1, f"{other}, sni_mismatch {st.get('sni_mismatch')}")
    _, other, _ = hrr_and_server_name(mods, args, backend, NGINX_STREAM_SHARED)
    check("contrast, shared:STREAM: the session resumes for the other server name", other == ["Reused"], str(other))


def stream_workers_killed(mods, args, backend):
    """SIGKILL each worker in turn while a client keeps reconnecting; nginx respawns them.
    Sessions made before the kills still resume in the new workers, with no lock timeouts."""
    with stream_nginx(mods, args.certs, backend.port, cache_line(), status="stream") as n:
        ret = n.ports["return"]
        _, s12 = same_session(ret, TLS12, 1, request=stream_worker)
        for victim in n.worker_pids():
            os.kill(victim, signal.SIGKILL)
            n.wait_workers([victim])
            stream_worker(ret, client_context(TLS13))  # a full handshake in the new worker
        results, _ = same_session(ret, TLS12, 10, s12, request=stream_worker)
        reused, pids, _ = summarize(results)
        st = n.stats()
    n.cleanup()
    check("stream, workers SIGKILLed: a session made before resumes in the respawned workers, no lock timeouts",
          reused == 10 and len(pids) == 2 and st.get("lock_timeouts") == 0,
          f"{reused}/10 by {pids}, lock timeouts {st.get('lock_timeouts')}")


def stream_contrast(mods, args, backend):
    """nginx's own shared cache in the stream block: the same ticket resumes twice."""
    with stream_nginx(mods, args.certs, backend.port, NGINX_STREAM_SHARED) as n:
        twice = ticket_twice(stream_worker, n.ports["return"])
    n.cleanup()
    check("contrast, stream with ssl_session_cache shared:STREAM: the same TLS 1.3 ticket resumes twice",
          twice == [True, True], str(twice))


def mapped(pid, needle):
    with open(f"/proc/{pid}/maps") as f:
        return needle in f.read()


def one_segment_for_http_and_stream(mods, args, backend):
    """http {} and stream {} naming the same file share one segment; a reload that drops the
    stream block's cache unmaps nothing the http block still uses, and one that drops both
    unmaps it."""
    root = tempfile.mkdtemp(prefix="shmsess-stream-")
    os.chmod(root, 0o755)
    seg = os.path.join(root, "ssl.sess")
    cache = cache_line("{root}/ssl.sess")
    try:
        with stream_nginx(mods, args.certs, backend.port, cache, http=cache, root=root) as n:
            http = same_session(n.port, TLS12, 3, request=one_request)[0]
            stream = same_session(n.ports["return"], TLS12, 3, request=stream_worker)[0]
            out = subprocess.run([args.cli, "stat", "--json", seg], capture_output=True, text=True)
            st = json.loads(out.stdout) if out.returncode == 0 else {}
            check("one segment file for http {} and stream {}: both resume, the segment holds both's sessions",
                  summarize(http)[0] == 3 and summarize(stream)[0] == 3 and st.get("entries", 0) >= 2
                  and st.get("lookup_hits", 0) >= 6,
                  f"http {summarize(http)[0]}/3, stream {summarize(stream)[0]}/3, entries {st.get('entries')}, "
                  f"hits {st.get('lookup_hits')} {out.stderr.strip()}")
            n.main = stream_block("", backend.port)
            still = [p for p in [n.master, *n.reload()] if mapped(p, seg)]
            n.http, n.status = "", False
            gone = [p for p in [n.master, *n.reload()] if mapped(p, seg)]
            check("reloads: without the stream block's cache the http block keeps the segment mapped; "
                  "without both it is unmapped", len(still) == 3 and not gone, f"mapped by {still}, then by {gone}")
    finally:
        subprocess.run(["rm", "-rf", root])


def stream_binary_upgrade(mods, args, backend):
    """A named stream segment: sessions survive a restart and a binary upgrade."""
    root = tempfile.mkdtemp(prefix="shmsess-stream-")
    os.chmod(root, 0o755)
    cache = cache_line("{root}/stream.sess")
    try:
        with stream_nginx(mods, args.certs, backend.port, cache, root=root) as n:
            _, _, s12 = stream_worker(n.ports["return"], client_context(TLS12))
            _, _, t13 = stream_worker(n.ports["return"], client_context(TLS13))
            ports = dict(n.ports)
        with stream_nginx(mods, args.certs, backend.port, cache, root=root, ports=ports, daemon=True) as n2:
            after12 = stream_worker(ports["return"], client_context(TLS12), s12)[0]
            after13, _, t13 = stream_worker(ports["return"], client_context(TLS13), t13)
            new = n2.upgrade()
            up12, pid12, _ = stream_worker(ports["return"], client_context(TLS12), s12)
            up13 = stream_worker(ports["return"], client_context(TLS13), t13)[0]
        check("stream, named segment: sessions survive a restart and a binary upgrade (USR2, QUIT)",
              after12 and after13 and up12 and up13 and pid12 in new,
              f"restart: TLS 1.2 {after12}, TLS 1.3 {after13}; upgrade: TLS 1.2 {up12} (worker {pid12}), "
              f"TLS 1.3 {up13}")
    finally:
        subprocess.run(["rm", "-rf", root])


def stream_two_hosts_on_redis(mods, args, backend):
    """Two nginx "hosts" whose stream blocks share a Redis tier: a session made on one
    resumes on the other; a TLS 1.3 ticket resumes once in the fleet."""
    tmp = tempfile.mkdtemp(prefix="shmsess-stream-redis-")
    os.chmod(tmp, 0o755)
    key = os.path.join(tmp, "key")
    write_key(key, new_key())
    try:
        with Redis() as redis:
            tier = (cache_line() + f"\n    shmsess_remote {redis.url};\n    shmsess_remote_key {key};"
                    "\n    shmsess_remote_timeout 200ms;")
            with stream_nginx(mods, args.certs, backend.port, tier) as a, \
                    stream_nginx(mods, args.certs, backend.port, tier) as b:
                s12 = made_on_and_stored(redis, a.ports["return"], request=stream_worker)
                on_b = [stream_worker(b.ports["return"], client_context(TLS12), s12)[0] for _ in range(3)]
                t13 = made_on_and_stored(redis, a.ports["return"], TLS13, request=stream_worker)
                t13_b = stream_worker(b.ports["return"], client_context(TLS13), t13)[0]
                t13_a = stream_worker(a.ports["return"], client_context(TLS13), t13)[0]
            for n in (a, b):
                n.cleanup()
            with stream_nginx(mods, args.certs, backend.port, cache_line()) as c, \
                    stream_nginx(mods, args.certs, backend.port, cache_line()) as d:
                s = stream_worker(c.ports["return"], client_context(TLS12))[2]
                without = stream_worker(d.ports["return"], client_context(TLS12), s)[0]
            for n in (c, d):
                n.cleanup()
    finally:
        subprocess.run(["rm", "-rf", tmp])
    check("stream, Redis tier: a TLS 1.2 session made on host A resumes on host B", all(on_b), str(on_b))
    check("stream, Redis tier: a TLS 1.3 ticket from A resumes on B, then not again on A", t13_b and not t13_a,
          f"on B {t13_b}, then on A {t13_a}")
    check("contrast, stream without the tier: host B does not resume host A's session", not without,
          f"resumed {without}")


def refused(mods, args, block, text, include=None, status=False):
    """nginx -t on a configuration whose stream or mail block holds `text` (or includes a
    file holding `include`): (return code, stderr, the included file)."""
    make = stream_block if block == "stream" else mail_block
    body = text + ("\n    include {root}/conf.d/*.conf;" if include is not None else "")
    n = Nginx(mods.http, args.certs, "", status=status, modules=getattr(mods, block),
              main=make(body, 1), ports=STREAM_PORTS if block == "stream" else MAIL_PORTS)
    conf = os.path.join(n.root, "conf.d", "shmsess.conf")
    if include is not None:
        os.makedirs(os.path.dirname(conf))
        with open(conf, "w") as f:
            f.write(include)
    n.write_config()
    r = n.command("-t")
    n.cleanup()
    return r.returncode, r.stderr, conf


def same_file_other_size(mods, args, tmp):
    """http {} at 8m and stream {} at 16m naming one file: refused by nginx -t at the stream
    block's directive (a start would create the file for http, then fail for stream); the
    same size in both is accepted."""
    seg = os.path.join(tmp, "same.sess")
    for stream_size, refuse in (("16m", True), ("8m", False)):
        n = Nginx(mods.http, args.certs, cache_line(seg, "8m"), modules=mods.stream,
                  main=stream_block(cache_line(seg, stream_size), 1), ports=STREAM_PORTS)
        n.write_config()
        r = n.command("-t")
        n.cleanup()
        line = next((ln for ln in r.stderr.splitlines() if "[emerg]" in ln), r.stderr.strip())
        if refuse:
            check("nginx -t refuses one segment file named in http {} at 8m and stream {} at 16m, "
                  "at the stream block's directive, creating nothing",
                  r.returncode != 0 and "is also named by \"shmsess_session_cache\" in the http block" in line
                  and "give both the same size" in line and not os.path.exists(seg), line[:300])
        else:
            check("nginx -t accepts one segment file named in http {} and stream {} at one size",
                  r.returncode == 0, line[:300])


def bad_configuration(mods, args):
    tmp = tempfile.mkdtemp(prefix="shmsess-stream-conf-")
    try:
        cases = (
            ("stream", "    shmsess_session_cache anonymous 64k;", "at least 1m"),
            ("stream", "    shmsess_session_cache ssl.sess 8m;", "give an absolute file name"),
            ("stream", "    shmsess_session_cache / 8m;", "names a directory"),
            ("stream", "    shmsess_session_cache /proc/ssl.sess 8m;", "pseudo filesystem"),
            ("stream", f"    shmsess_session_cache {tmp}/missing/ssl.sess 8m;", f"mkdir -p {tmp}/missing"),
            ("stream", "    shmsess_remote_timeout 5ms;", "need \"shmsess_session_cache\" in the stream block"),
            ("stream", cache_line() + "\n    shmsess_remote redis://127.0.0.1:6379/0;", "needs \"shmsess_remote_key\""),
            ("mail", "    shmsess_session_cache anonymous 1025g;", "is larger than the maximum"),
            ("mail", cache_line() + "\n    shmsess_remote_key_prefix x:;",
             "has no effect without \"shmsess_remote\" (and \"shmsess_session_cache\") in the mail block"),
        )
        for block, text, why in cases:
            rc, err, _ = refused(mods, args, block, text)
            line = next((ln for ln in err.splitlines() if why in ln), err.strip())
            check(f"nginx -t refuses {block} {text.strip()!r}: {why}", rc != 0 and why in err, line[:240])
        rc, err, conf = refused(mods, args, "stream", "", include="shmsess_session_cache anonymous 8m;\n"
                                "shmsess_remote_timeout 5ms;\n")
        line = next((ln for ln in err.splitlines() if "has no effect" in ln), err.strip())
        check("nginx -t: an error about a stream directive in conf.d/ names that file and line",
              rc != 0 and line.endswith(f"in {conf}:2"), line[-200:])
        rc, err, _ = refused(mods, args, "stream", cache_line())
        check("nginx -t accepts the stream block's cache", rc == 0, err.strip()[-200:])
        same_file_other_size(mods, args, tmp)
        for status, text, why in (("stream", "", "the stream block has no \"shmsess_session_cache\""),
                                  ("imap", cache_line(), "invalid block \"imap\" in \"shmsess_status\"")):
            rc, err, _ = refused(mods, args, "stream", text, status=status)
            line = next((ln for ln in err.splitlines() if why in ln), err.strip())
            check(f"nginx -t refuses \"shmsess_status {status}\" ({why})", rc != 0 and why in err, line[:240])
    finally:
        subprocess.run(["rm", "-rf", tmp])


def mail_proxy(mods, args):
    """An implicit-TLS IMAP proxy on the shared cache: logins go through auth_http to the
    fake backend; TLS 1.2 and 1.3 resume; a TLS 1.3 ticket resumes once."""
    with Peer(fake_imap) as imap, Peer(auth_http_for(imap.port)) as auth:
        with Nginx(mods.http, args.certs, "", status="mail", modules=mods.mail,
                   main=mail_block(cache_line(), auth.port), ports=MAIL_PORTS) as n:
            port = n.ports["imaps"]
            ctx = client_context(TLS12)
            first = imap_login_noop(port, ctx)
            _, _, session = imap_greeting(port, ctx)
            second = imap_login_noop(port, ctx, session)
            check("mail: IMAP LOGIN through auth_http reaches the backend, on a new and on a resumed session",
                  b"fake-imap-backend" in first[1] and second[0] and b"fake-imap-backend" in second[1]
                  and auth.connections >= 2, f"{first[1]!r}; resumed {second[0]} {second[1]!r}")
            for version, name in VERSIONS:
                results, _ = same_session(port, version, RECONNECTS, request=imap_greeting)
                reused = sum(r for r, _ in results)
                greeted = sum(g.startswith(b"* OK") for _, g in results)
                check(f"mail, {name}: >= {RECONNECTS - 1}/{RECONNECTS} reconnections resume (2 workers)",
                      reused >= RECONNECTS - 1 and greeted == RECONNECTS, f"{reused}/{RECONNECTS}, {greeted} greetings")
            twice = ticket_twice(imap_greeting, port)
            check("mail, TLS 1.3: a ticket resumes once, never twice", twice == [True, False], str(twice))
            st = n.stats()
            check("shmsess_status mail: the mail cache's statistics", st.get("lookup_hits", 0) >= 2 * (RECONNECTS - 1)
                  and st.get("taken", 0) >= RECONNECTS - 1, f"hits {st.get('lookup_hits')}, taken {st.get('taken')}")
            log = n.error_log()
        n.cleanup()
    check("mail: the error log says the cache was installed on the TLS server",
          "installed on 1 TLS server(s) of the mail block" in log, "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True, help="ngx_http_shmsess_module.so; the stream and mail modules beside it")
    ap.add_argument("--cli", required=True)
    ap.add_argument("--certs", required=True)
    args = ap.parse_args()
    mods = Modules(args.module)
    with Peer(echo_line) as backend:
        stream_resumption(mods, args, backend)
        stream_contrast(mods, args, backend)
        stream_hrr_and_server_name(mods, args, backend)
        stream_workers_killed(mods, args, backend)
        one_segment_for_http_and_stream(mods, args, backend)
        stream_binary_upgrade(mods, args, backend)
        stream_two_hosts_on_redis(mods, args, backend)
    bad_configuration(mods, args)
    mail_proxy(mods, args)
    finish()


if __name__ == "__main__":
    main()
