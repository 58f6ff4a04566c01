#!/bin/bash
# Build ngx_http_shmsess_module.so, ngx_stream_shmsess_module.so and ngx_mail_shmsess_module.so
# the way nginx builds dynamic modules: configure an nginx
# source tree with the flags the target binary was built with (so the module's signature
# matches it) plus --add-dynamic-module, then `make modules`.
#
#   build-nginx-module.sh OUT_DIR [SRC_DIR]
#
# SRC_DIR defaults to Debian's nginx-dev tree (/usr/share/nginx/src, headers and configure
# only, with its configure flags in conf_flags). Another tree (NGINX_SRC) is configured with
# its own conf_flags if it has one, else with NGINX_CONF_FLAGS (default --with-compat
# --with-http_ssl_module). The tree is copied: configure writes into it.
# SHMSESS_INCLUDE, SHMSESS_LIBDIR, SHMSESS_RPATH: see nginx/config. SHMSESS_MODULE_DIR: the
# module source (default nginx/ of this checkout). SHMSESS_CC_OPT, SHMSESS_LD_OPT: more compiler
# and linker flags (the Debian package's hardening flags from dpkg-buildflags).
set -euo pipefail
out=$1
src=${2:-/usr/share/nginx/src}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$src/configure" ]; then
    echo "no nginx source tree in $src: install nginx-dev (make test-deps) or set NGINX_SRC" >&2
    exit 1
fi

NGX_CONF_FLAGS=()
if [ -f "$src/conf_flags" ]; then
    # shellcheck disable=SC1091
    . "$src/conf_flags"
else
    read -r -a NGX_CONF_FLAGS <<<"${NGINX_CONF_FLAGS:---with-compat --with-http_ssl_module}"
fi

# Debian's nginx has stream and mail as dynamic modules (libnginx-mod-stream, -mail), but
# nginx-dev's conf_flags lack them (nginx -V has them): without them no stream or mail module
# is configured.
for flag in --with-stream=dynamic --with-stream_ssl_module --with-mail=dynamic --with-mail_ssl_module; do
    case " ${NGX_CONF_FLAGS[*]} " in
        *" ${flag%%=*}"[=\ ]*) ;;
        *) NGX_CONF_FLAGS+=("$flag") ;;
    esac
done

tree=$out/tree
rm -rf "$tree"
mkdir -p "$out"
cp -r "$src" "$tree"
cd "$tree"
export SHMSESS_INCLUDE=${SHMSESS_INCLUDE:-$here/include}
export SHMSESS_LIBDIR=${SHMSESS_LIBDIR:-$here/build}
./configure "${NGX_CONF_FLAGS[@]}" --with-cc-opt="-Wall -Wextra -Werror -Wno-unused-parameter ${SHMSESS_CC_OPT:-}" \
    ${SHMSESS_LD_OPT:+--with-ld-opt="$SHMSESS_LD_OPT"} \
    --add-dynamic-module="${SHMSESS_MODULE_DIR:-$here/nginx}" >"$out/configure.log" 2>&1 \
    || { tail -30 "$out/configure.log"; exit 1; }
# Only this project's modules: `make modules` would also build nginx's own dynamic stream and
# mail modules, whose sources nginx-dev does not ship. Stream and mail only where the tree was
# configured with them.
targets=()
for m in http stream mail; do
    if grep -q "^objs/ngx_${m}_shmsess_module.so:" objs/Makefile; then
        targets+=("objs/ngx_${m}_shmsess_module.so")
    fi
done
make -f objs/Makefile "${targets[@]}" >"$out/make.log" 2>&1 || { tail -40 "$out/make.log"; exit 1; }
cp "${targets[@]}" "$out/"
