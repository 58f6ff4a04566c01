#!/bin/sh
# Self-signed certificates for the demo and the tests: a server (RSA 2048), a second virtual
# host (EC P-256) and a client certificate (EC P-256) and a large one (RSA 4096). Never use them for anything else.
set -eu
dir=${1:?usage: make-certs.sh DIR}
mkdir -p "$dir"
umask 077
gen() { # name subject keyopts...
    name=$1; subj=$2; shift 2
    openssl req -x509 -nodes -days 30 -subj "$subj" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$dir/$name.key" -out "$dir/$name.pem" "$@" 2>/dev/null
}
gen server /CN=localhost -newkey rsa:2048
gen vhost2 /CN=vhost2.localhost -newkey ec -pkeyopt ec_paramgen_curve:P-256
gen client /CN=test-client -newkey ec -pkeyopt ec_paramgen_curve:P-256
# A client certificate with a 4096-bit key: its sessions (about 1.6 KB) exceed the 1 KiB
# stack buffer of the callbacks, so the tests exercise the large-session path.
gen bigclient /CN=big-test-client -newkey rsa:4096
echo "certificates in $dir"
