#!/bin/sh
# `make soak-leak`: shows that the soak can fail. It builds, under /tmp, a copy of the example
# server with a fault added after its accept(), runs the soak against it for SOAK_LEAK_MINUTES
# (default 1), and succeeds only if the soak's verdict fails. SOAK_FAULT chooses the fault:
# "fd" (the default) leaks one descriptor (a dup of its stderr) per accepted connection;
# "crash" makes each worker abort() at its 300th connection.
# The product is untouched: the patched source lives in the temporary directory.
# Usage: sh bench/soak_leak.sh BUILD_DIR SOAK_ARGS... (the Makefile passes them).
set -eu
build=$(realpath "$1")
shift
dir=$(mktemp -d /tmp/shmsess-soak-leak.XXXXXX)
trap 'rm -rf "$dir"' EXIT
case "${SOAK_FAULT:-fd}" in
  fd) fault='if (fd >= 0 \&\& dup(2) < 0) perror("soak leak");' ;;
  crash) fault='static unsigned soak_served; if (fd >= 0 \&\& ++soak_served == 300) abort(); /* soak leak */' ;;
  *) echo "soak-leak: SOAK_FAULT is fd or crash" >&2; exit 2 ;;
esac
sed "s|^\( *\)int fd = accept(lfd, NULL, NULL);|&\n\1$fault|" c-examples/prefork_server.c > "$dir/prefork_server.c"
grep -q 'soak leak' "$dir/prefork_server.c" || { echo "soak-leak: the accept() line of c-examples/prefork_server.c moved: update bench/soak_leak.sh" >&2; exit 1; }
${CC:-cc} -O2 -g -Iinclude "$dir/prefork_server.c" -o "$dir/prefork_server" -L"$build" -lshmsesscache -lssl -lcrypto \
  -Wl,-rpath,"$build"
if python3 bench/soak.py --minutes "${SOAK_LEAK_MINUTES:-1}" --server "$dir/prefork_server" "$@"; then
  echo "soak-leak: the verdict PASSED against a server with the fault ${SOAK_FAULT:-fd}: the soak is blind to it" >&2
  exit 1
fi
echo "soak-leak: the verdict failed against the server with the fault ${SOAK_FAULT:-fd}, as it must"
