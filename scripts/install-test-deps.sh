#!/bin/sh
# Install the Debian packages the integration tests run against: Apache httpd with mod_ssl and
# apxs (the socache provider test), redis-server and redis-sentinel (the second tier), nginx with nginx-dev and the
# libraries its configure checks for (the nginx modules), Debian's dynamic stream and mail
# modules of nginx (ours load after them), pyflakes3 (make lint's Python check), the man page
# checkers (mandoc, groff), the packaging tools (debhelper, dpkg-dev, fakeroot, lintian: make
# deb, make test-deb), and the servers the drop-in is tested against (hitch, nsd, lighttpd,
# proftpd with mod_tls, dovecot's imap-login; gdb traces a root master's lock calls). Does
# nothing when they are there; installs them as root; otherwise names what is missing and fails.
set -eu
need=""
for p in apache2 apache2-dev redis-server redis-sentinel redis-tools nginx nginx-dev libpcre2-dev zlib1g-dev \
         libnginx-mod-stream libnginx-mod-mail pyflakes3 \
         mandoc groff-base debhelper dpkg-dev fakeroot lintian \
         hitch nsd lighttpd proftpd-core proftpd-mod-crypto dovecot-imapd gdb; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages:$need (run 'make test-deps' as root, or apt-get install them)" >&2
    exit 1
fi
echo "installing$need" >&2
apt-get update -qq
# Debian's postinst may try to start the services; the tests run their own instances on
# loopback with throw-away configurations, so stop any that did start.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
for svc in apache2 redis-server redis-sentinel nginx hitch nsd lighttpd proftpd dovecot; do
    if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
