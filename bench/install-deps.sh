#!/bin/sh
# What `make bench` needs beyond `make test`: Debian's nginx (the end-to-end comparison) and
# matplotlib (the plots). Installs only what is missing; apt needs root.
set -eu
if ! command -v nginx >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
        # Debian starts the packaged service; the benchmark runs its own nginx on loopback.
        if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
    else
        echo "nginx is missing (run as root to install it); its figures will be skipped" >&2
    fi
fi
# Apache httpd and apache2-dev (the shmcb vs shmsess comparison), as for the tests.
sh "$(dirname "$0")/../scripts/install-test-deps.sh" || echo "Apache figures will be skipped" >&2
if ! python3 -c "import matplotlib" >/dev/null 2>&1; then
    python3 -m pip install -q matplotlib >/dev/null 2>&1 || echo "matplotlib could not be installed: no plots" >&2
fi
