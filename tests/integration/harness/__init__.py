"""The integration tests' harness: real servers on loopback, real clients, and the checks.

- `checks`: PASS/FAIL lines and the closing "N passed, M failed";
- `process`: starting, watching and stopping the servers' processes;
- `client`: TLS client contexts, one HTTP request, `openssl s_client`;
- `prefork`: build/prefork_server (c-examples/prefork_server.c);
- `apache`, `nginx`: Debian's httpd and nginx with this project's modules;
- `nginx_stream`: nginx's stream and mail blocks, and the echo, IMAP and auth_http peers and
  the clients their tests use;
- `dropin`: Debian's hitch, nsd, lighttpd, proftpd and dovecot, plain or under
  `shmsesscache run`, a resuming client, and a gdb trace of a process's segment locks;
- `redis`: throw-away redis-server instances and clusters, and the second tier's key files.

The tests run as `python3 tests/integration/test_X.py`, so this directory's parent is on
sys.path and `from harness.prefork import Server` needs nothing more; `bench/run.py` and
`scripts/demo.py` put tests/integration on sys.path first.
"""
