# shmsesscache — build, test and demo. `make demo` and `make test` work on a fresh machine
# with Rust, gcc, python3, OpenSSL 3 headers (libssl-dev) and valgrind.

# Where `make install` puts things. LIBDIR may be outside PREFIX (Debian's multiarch
# /usr/lib/x86_64-linux-gnu); the pkg-config file is rebuilt whenever these change.
PREFIX    ?= /usr/local
LIBDIR    ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR    ?= $(PREFIX)/bin
MANDIR    ?= $(PREFIX)/share/man
CARGO     ?= cargo
CC        ?= gcc
BUILD     := build
PROFILE   := release
TARGETDIR := target/$(PROFILE)
CFLAGS    ?= -O2 -g
WARN      := -Wall -Wextra -Werror
SOVERSION := 0
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

LIB_SO    := $(BUILD)/libshmsesscache.so
LIB_A     := $(BUILD)/libshmsesscache.a
PC        := $(BUILD)/shmsesscache.pc
SERVER    := $(BUILD)/prefork_server
# The small server docs/c-api.md walks through (built with the warnings as errors, tested).
MINIMAL   := $(BUILD)/minimal_server
HARNESS   := $(BUILD)/c_harness
CONTRACT  := $(BUILD)/c_contract
# The TLS server/client pair over memory BIOs (contexts, handshakes) that the C tests and
# bench/handshake.c share; the tests add testlib (checks, recorded outcomes, forked workers).
TLSPAIR   := tests/c/tlspair.c tests/c/tlspair.h
TESTLIB   := tests/c/testlib.c tests/c/testlib.h $(TLSPAIR)
FAULT_SERVER := $(BUILD)/fault/prefork_server
RUST_SRC  := $(wildcard src/*.rs src/*/*.rs src/bin/*/*.rs) Cargo.toml build.rs
CLI       := $(BUILD)/shmsesscache
# Every function the header declares: each gets a man3 name (a link to libshmsesscache.3).
API_SED   := s/^[a-z].*[ *]\(shmsess_[a-z0-9_]*\)(.*/\1/p
API_FUNCTIONS := $(shell sed -n '$(API_SED)' include/shmsesscache.h)
# Where the modules built in $(BUILD) look for libshmsesscache.so.0 at run time: the build tree,
# then LIBDIR. Empty: no rpath (the Debian packages, whose library is in the linker's path).
MODULE_RPATH ?= $(CURDIR)/$(BUILD):$(LIBDIR)
comma := ,
PRELOAD   := $(BUILD)/libshmsesscache_preload.so
# Installed in a directory of its own under LIBDIR: it is no library to link against (it has
# no SONAME), so it stays out of the linker's path; `shmsesscache run` looks there.
PRELOAD_DIR = $(LIBDIR)/shmsesscache
# `shmsesscache run` looks for the preload at this path relative to its own directory (so a
# DESTDIR copy finds its own): given to every cargo build, each of which builds the tool.
export SHMSESS_PRELOAD_RELDIR := $(shell realpath -m --relative-to=$(BINDIR) $(PRELOAD_DIR))

# $(BUILD)/NAME.settings holds VALUE and changes only when VALUE does: a target built from make
# variables depends on it, so it is rebuilt when they change (mtimes alone cannot tell).
define settings_file
$(BUILD)/$(1).settings: FORCE
	@mkdir -p $(BUILD)
	@echo '$(2)' | cmp -s - $$@ || echo '$(2)' > $$@
endef
# A `make install PREFIX=/opt/x` after a `make install` must not install the first PREFIX's .pc.
$(eval $(call settings_file,pc-paths,$(PREFIX) $(LIBDIR) $(INCLUDEDIR)))
$(eval $(call settings_file,preload-dir,$(SHMSESS_PRELOAD_RELDIR)))
$(eval $(call settings_file,module-rpath,$(MODULE_RPATH)))
# A module only loads into the nginx it was built for, and an upgraded nginx-dev unpacks files
# with the package's dates, which may be older than the module.
$(eval $(call settings_file,nginx-dev,$(shell dpkg-query -W -f='$${Version}' nginx-dev 2>/dev/null)))

.PHONY: all lib header check-header lint lint-fmt lint-clippy lint-python fmt test test-rust test-c test-integration test-remote test-apache test-fuzz fuzz demo bench install \
        apache-module install-apache-module test-deps clean nginx-module install-nginx-module test-nginx \
        test-man test-install deb test-deb test-dropin test-docs

all: $(LIB_SO) $(LIB_A) $(PC) $(SERVER) $(MINIMAL) $(CLI) $(PRELOAD)

$(TARGETDIR)/libshmsesscache.so: $(RUST_SRC) $(BUILD)/preload-dir.settings
	$(CARGO) build --release --lib --bins
	@touch $@

$(LIB_SO): $(TARGETDIR)/libshmsesscache.so
	@mkdir -p $(BUILD)
	cp $(TARGETDIR)/libshmsesscache.so $(LIB_SO).$(SOVERSION)
	ln -sf libshmsesscache.so.$(SOVERSION) $(LIB_SO)
	cp $(TARGETDIR)/libshmsesscache.a $(LIB_A)

$(LIB_A): $(LIB_SO)

# The operator's command-line tool (stat, list, flush, create, dump, load).
$(CLI): $(LIB_SO)
	cp $(TARGETDIR)/shmsesscache $(CLI)

# The drop-in for servers nobody rebuilds (LD_PRELOAD; `shmsesscache run`, docs/dropin.md).
# It finds libshmsesscache.so.0 beside it in build/, one directory up once installed. Loaded
# into other people's servers, so its GOT is read-only (full RELRO) whoever builds it;
# SHMSESS_CC_OPT/SHMSESS_LD_OPT add the Debian package's dpkg-buildflags (fortify), as for
# the nginx module.
# Its interposed functions carry libssl.so.3's version (OPENSSL_3.0.0), so a reference of
# another version (a libssl 1.1 a plugin brings) never binds to them; the list of names is the
# source's INTERPOSED macro.
$(BUILD)/preload.map: preload/shmsesscache_preload.c | $(BUILD)
	{ printf 'OPENSSL_3.0.0 {\n  global:\n'; \
	  sed -n '/^#define INTERPOSED(X)/,/[^\\]$$/p' $< | grep -o 'X([A-Za-z_0-9]*)' | sed 's/X(\(.*\))/    \1;/'; \
	  printf '  local: *;\n};\n'; } > $@.new && mv $@.new $@
$(PRELOAD): preload/shmsesscache_preload.c include/shmsesscache.h $(LIB_SO) $(BUILD)/preload.map
	$(CC) $(CFLAGS) $(SHMSESS_CC_OPT) $(WARN) -fPIC -shared -fvisibility=hidden -Iinclude $< -o $@ \
	  -L$(BUILD) -lshmsesscache -lssl -lcrypto -ldl -pthread $(SHMSESS_LD_OPT) \
	  -Wl,--version-script=$(BUILD)/preload.map \
	  -Wl,-rpath,'$$ORIGIN:$$ORIGIN/..' -Wl,-z,nodelete -Wl,-z,relro,-z,now

# libdir and includedir relative to ${prefix} when they are under it (as pkg-config files do).
pc_path = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))
$(PC): shmsesscache.pc.in Cargo.toml $(BUILD)/pc-paths.settings
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(call pc_path,$(LIBDIR))|' \
	  -e 's|@INCLUDEDIR@|$(call pc_path,$(INCLUDEDIR))|' -e 's|@VERSION@|$(VERSION)|' $< > $@

$(SERVER): c-examples/prefork_server.c include/shmsesscache.h $(LIB_SO)
	$(CC) $(CFLAGS) $(WARN) -Iinclude $< -o $@ -L$(BUILD) -lshmsesscache -lssl -lcrypto -Wl,-rpath,'$$ORIGIN'

$(MINIMAL): c-examples/minimal_server.c include/shmsesscache.h $(LIB_SO)
	$(CC) $(CFLAGS) $(WARN) -Iinclude $< -o $@ -L$(BUILD) -lshmsesscache -lssl -lcrypto -Wl,-rpath,'$$ORIGIN'

$(HARNESS): tests/c/harness.c $(TESTLIB) include/shmsesscache.h $(LIB_SO)
	$(CC) $(CFLAGS) $(WARN) -Iinclude $< $(filter %.c,$(TESTLIB)) -o $@ -L$(BUILD) -lshmsesscache -lssl -lcrypto -Wl,-rpath,'$$ORIGIN'

# The OpenSSL contract under real behaviour: HRR, SNI callbacks, housekeeping, early data, reloads.
$(CONTRACT): tests/c/contract.c $(TESTLIB) include/shmsesscache.h $(LIB_SO)
	$(CC) $(CFLAGS) $(WARN) -Iinclude $< $(filter %.c,$(TESTLIB)) -o $@ -L$(BUILD) -lshmsesscache -lssl -lcrypto -Wl,-rpath,'$$ORIGIN'

# A program written only against OpenSSL, run under the drop-in (test-c sets LD_PRELOAD).
$(BUILD)/c_dropin: tests/c/dropin.c $(TESTLIB) include/shmsesscache.h $(LIB_SO)
	$(CC) $(CFLAGS) $(WARN) -Iinclude $< $(filter %.c,$(TESTLIB)) -o $@ -L$(BUILD) -lshmsesscache -lssl -lcrypto -Wl,-rpath,'$$ORIGIN'

# A daemon whose descriptor 2 is a data file by the time the drop-in speaks.
$(BUILD)/c_dropin_fd2: tests/c/dropin_fd2.c
	$(CC) $(CFLAGS) $(WARN) $< -o $@ -lssl -lcrypto

# A program whose SSL_* are another library's (GnuTLS's compat layer, a bundled libssl 1.1),
# linked to a stand-in for it: the drop-in must pass them through untouched.
$(BUILD)/libforeign_ssl.so: tests/c/foreign_ssl_lib.c
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared $< -o $@
$(BUILD)/c_foreign_ssl: tests/c/foreign_ssl.c $(BUILD)/libforeign_ssl.so
	$(CC) $(CFLAGS) $(WARN) $< -o $@ -L$(BUILD) -lforeign_ssl -Wl,-rpath,'$$ORIGIN'
# The same stand-in versioned as libssl 1.1, reached through a plugin the host dlopens later.
$(BUILD)/libforeign_ssl11.so: tests/c/foreign_ssl_lib.c tests/c/foreign_ssl11.map
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared $< -o $@ -Wl,--version-script=tests/c/foreign_ssl11.map
$(BUILD)/foreign_ssl_plugin.so: tests/c/foreign_ssl_plugin.c $(BUILD)/libforeign_ssl11.so
	$(CC) $(CFLAGS) $(WARN) -DPLUGIN -fPIC -shared $< -o $@ -L$(BUILD) -lforeign_ssl11
$(BUILD)/c_foreign_ssl_plugin: tests/c/foreign_ssl_plugin.c $(BUILD)/foreign_ssl_plugin.so
	$(CC) $(CFLAGS) $(WARN) $< -o $@ -ldl

# Regenerate the committed header from src/ffi/.
header:
	$(CARGO) run -q --example gen_header > include/shmsesscache.h.new
	mv include/shmsesscache.h.new include/shmsesscache.h

# Fails if the committed header is not what cbindgen generates now.
check-header:
	@mkdir -p $(BUILD)
	@$(CARGO) run -q --example gen_header > $(BUILD)/shmsesscache.h.check
	@diff -u include/shmsesscache.h $(BUILD)/shmsesscache.h.check && echo "header in sync" || { echo "include/shmsesscache.h is out of date: run 'make header'"; exit 1; }

test: lint all test-docs test-rust test-c test-man test-install test-integration test-remote test-apache test-nginx test-deb \
      test-dropin test-fuzz
	@echo "all tests passed"

# The lint gate, first in `make test`: rustfmt's check (the crate and fuzz/, its own
# workspace), clippy with every warning an error (all targets, the fault-injection feature and
# the release profile, as test-rust builds them), the header check, and pyflakes over the
# Python (tests/integration, bench, scripts: an undefined name in a failure path would only
# show the day that path runs). `make -k lint` runs them all when one fails; `make fmt` mends
# what the first finds.
RUST_MANIFESTS := Cargo.toml fuzz/Cargo.toml
PYTHON_DIRS    := tests/integration bench scripts

lint: lint-fmt lint-clippy check-header lint-python

lint-fmt:
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "rustfmt is missing: rustup component add rustfmt" >&2; exit 1; }
	@for m in $(RUST_MANIFESTS); do \
	  $(CARGO) fmt --manifest-path $$m --all --check || { echo "$$m: rustfmt would change the lines above: run 'make fmt'" >&2; exit 1; }; \
	done; echo "rustfmt: formatted"

lint-clippy:
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "clippy is missing: rustup component add clippy" >&2; exit 1; }
	$(CARGO) clippy --release --all-targets --features fault-injection -- -D warnings
	$(CARGO) clippy --release --all-targets -- -D warnings

lint-python:
	@command -v pyflakes3 >/dev/null 2>&1 || { echo "pyflakes3 is missing: apt-get install pyflakes3 (make test-deps)" >&2; exit 1; }
	pyflakes3 $(PYTHON_DIRS)

fmt:
	for m in $(RUST_MANIFESTS); do $(CARGO) fmt --manifest-path $$m --all || exit 1; done

# Release (what ships) and debug: debug builds check integer overflow and debug assertions,
# which release builds skip (a wrapping sum over hostile shared memory only panics there).
test-rust:
	$(CARGO) test --release --features fault-injection
	$(CARGO) test --features fault-injection --lib --bins --tests

# Programs built against the 0.1 and 0.2 headers' structs, run with this library.
OLD_ABI := $(BUILD)/c_old_abi_v1 $(BUILD)/c_old_abi_v2
$(BUILD)/c_old_abi_v%: tests/c/old_abi.c $(LIB_SO)
	$(CC) $(CFLAGS) $(WARN) -DOLD_HEADER=$* -DEXPECTED_VERSION='"$(VERSION)"' $< -o $@ -L$(BUILD) -lshmsesscache -Wl,-rpath,'$$ORIGIN'

# dlopen, install, dlclose, then SSL_CTX_free: the library must stay loaded (-z nodelete).
$(BUILD)/c_unload: tests/c/unload.c
	$(CC) $(CFLAGS) $(WARN) $< -o $@ -ldl -lssl -lcrypto

VALGRIND := valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-possibly-lost=no

DROPIN_LOG := $(CURDIR)/$(BUILD)/c_dropin.log
DROPIN_ENV := LD_PRELOAD=$(CURDIR)/$(PRELOAD) SHMSESS_PRELOAD_LOG=$(DROPIN_LOG) SHMSESS_PRELOAD_NO_TICKETS=1 \
  SHMSESS_PRELOAD_IGNORE_UNEXPECTED_EOF=1

test-c: $(HARNESS) $(CONTRACT) $(OLD_ABI) $(BUILD)/c_unload $(BUILD)/c_dropin $(BUILD)/c_foreign_ssl $(BUILD)/c_dropin_fd2 $(PRELOAD) \
        $(BUILD)/c_foreign_ssl_plugin \
        $(BUILD)/certs/server.pem
	$(BUILD)/c_unload $(CURDIR)/$(LIB_SO).$(SOVERSION) $(BUILD)/certs
	for t in $(OLD_ABI); do $(VALGRIND) $$t || exit 1; done
	$(VALGRIND) --trace-children=no $(HARNESS) $(BUILD)/certs
	$(VALGRIND) --trace-children=no $(CONTRACT) $(BUILD)/certs
	rm -f $(DROPIN_LOG)
	$(DROPIN_ENV) $(VALGRIND) --trace-children=no $(BUILD)/c_dropin $(BUILD)/certs $(DROPIN_LOG)
	$(DROPIN_ENV) SHMSESS_PRELOAD_FORCE=1 $(VALGRIND) --trace-children=no $(BUILD)/c_dropin $(BUILD)/certs $(DROPIN_LOG) --force
	rm -f $(DROPIN_LOG)
	$(DROPIN_ENV) $(VALGRIND) $(BUILD)/c_foreign_ssl $(DROPIN_LOG)
	# LD_LIBRARY_PATH, not an $$ORIGIN rpath: valgrind flags ld.so's reading of one in dlopen.
	$(DROPIN_ENV) LD_LIBRARY_PATH=$(CURDIR)/$(BUILD) $(VALGRIND) $(BUILD)/c_foreign_ssl_plugin $(CURDIR)/$(BUILD)/foreign_ssl_plugin.so
	LD_PRELOAD=$(CURDIR)/$(PRELOAD) $(VALGRIND) --log-file=$(BUILD)/c_dropin_fd2.valgrind $(BUILD)/c_dropin_fd2 $(BUILD)/certs $(BUILD)/c_dropin_fd2.data \
	  || { cat $(BUILD)/c_dropin_fd2.valgrind; exit 1; }

# LD_PRELOAD shim that makes accept, fork and waitpid fail or stall on request (tests only).
FAULT_SHIM := $(BUILD)/fault_shim.so
$(FAULT_SHIM): tests/c/fault_shim.c
	$(CC) $(CFLAGS) $(WARN) -shared -fPIC $< -o $@ -ldl

test-integration: all $(FAULT_SERVER) $(FAULT_SHIM) $(BUILD)/certs/server.pem
	python3 tests/integration/test_prefork.py --server $(SERVER) --certs $(BUILD)/certs
	python3 tests/integration/test_example_server.py --server $(SERVER) --certs $(BUILD)/certs --shim $(FAULT_SHIM)
	python3 tests/integration/test_minimal_server.py --server $(MINIMAL) --certs $(BUILD)/certs
	python3 tests/integration/test_operations.py --server $(SERVER) --cli $(CLI) --certs $(BUILD)/certs
	python3 tests/integration/test_worker_kills.py --server $(FAULT_SERVER) --certs $(BUILD)/certs

# Debian packages the tests need beyond the build (apache2, apache2-dev, redis-server): installed
# when missing and running as root, otherwise a clear message.
test-deps:
	sh scripts/install-test-deps.sh

# mod_socache_shmsess, the Apache httpd socache provider (apache/), built with apxs against
# apache2-dev. Linked to libshmsesscache.so.0, found in build/ or, once installed, $(LIBDIR)
# (MODULE_RPATH).
APXS       ?= apxs
APACHE_MOD := $(BUILD)/mod_socache_shmsess.so
define apxs_build
	@command -v $(APXS) >/dev/null 2>&1 || { echo "apxs not found: install apache2-dev (make test-deps)" >&2; exit 1; }
	@mkdir -p $(1)
	cp apache/mod_socache_shmsess.c $(1)/
	cd $(1) && $(APXS) -c -Wc,-Wall -Wc,-Wextra -Wc,-Werror -I$(CURDIR)/include -L$(CURDIR)/$(BUILD) -lshmsesscache \
	  $(if $(2),-Wl$(comma)-Wl$(comma)-rpath$(comma)$(2)) mod_socache_shmsess.c >apxs.log 2>&1 || { cat apxs.log; exit 1; }
endef

apache-module: $(APACHE_MOD)

$(APACHE_MOD): apache/mod_socache_shmsess.c include/shmsesscache.h $(LIB_SO) $(BUILD)/module-rpath.settings
	$(call apxs_build,$(BUILD)/apache,$(MODULE_RPATH))
	cp $(BUILD)/apache/.libs/mod_socache_shmsess.so $@

# Installs the module into Apache's module directory, linked to $(LIBDIR) only (run
# `make install` for the library itself).
install-apache-module: $(LIB_SO)
	$(call apxs_build,$(BUILD)/apache-install,$(LIBDIR))
	install -m 0644 $(BUILD)/apache-install/.libs/mod_socache_shmsess.so $(DESTDIR)$$($(APXS) -q LIBEXECDIR)/

# ngx_http_shmsess_module, ngx_stream_shmsess_module and ngx_mail_shmsess_module (nginx/),
# dynamic modules for the installed nginx (configured with Debian's nginx-dev flags, plus its
# stream and mail) or, with NGINX_SRC=DIR, for that nginx source tree. Linked to
# libshmsesscache.so.0, found in build/ or, once installed, $(LIBDIR) (MODULE_RPATH).
NGINX_SRC ?=
NGINX_MOD := $(BUILD)/nginx/ngx_http_shmsess_module.so
NGINX_MODULES_DIR ?= /usr/lib/nginx/modules

nginx-module: $(NGINX_MOD)

NGINX_MOD_SRC := $(wildcard nginx/*.c nginx/*.h) nginx/config

$(NGINX_MOD): $(NGINX_MOD_SRC) scripts/build-nginx-module.sh include/shmsesscache.h \
              $(LIB_SO) $(BUILD)/module-rpath.settings $(if $(NGINX_SRC),FORCE,$(BUILD)/nginx-dev.settings)
	SHMSESS_LIBDIR=$(CURDIR)/$(BUILD) SHMSESS_RPATH=$(MODULE_RPATH) \
	  scripts/build-nginx-module.sh $(CURDIR)/$(BUILD)/nginx $(NGINX_SRC)

# Installs the modules into nginx's module directory, linked to $(LIBDIR) only (run
# `make install` for the library itself).
install-nginx-module: $(LIB_SO)
	SHMSESS_LIBDIR=$(CURDIR)/$(BUILD) SHMSESS_RPATH=$(LIBDIR) \
	  scripts/build-nginx-module.sh $(CURDIR)/$(BUILD)/nginx-install $(NGINX_SRC)
	install -d $(DESTDIR)$(NGINX_MODULES_DIR)
	install -m 0644 $(BUILD)/nginx-install/ngx_*_shmsess_module.so $(DESTDIR)$(NGINX_MODULES_DIR)/

test-nginx: test-deps all $(FAULT_SERVER) $(BUILD)/certs/server.pem
	$(MAKE) --no-print-directory nginx-module
	python3 tests/integration/test_nginx.py --module $(NGINX_MOD) --cli $(CLI) --certs $(BUILD)/certs \
	  --fault-lib $(BUILD)/fault
	python3 tests/integration/test_nginx_stream.py --module $(NGINX_MOD) --cli $(CLI) --certs $(BUILD)/certs

FORCE:

# The drop-in under Debian's own servers (scripts/dropin_harness.py), each with and without it.
test-dropin: test-deps all $(BUILD)/certs/server.pem
	python3 tests/integration/test_dropin.py --cli $(CLI) --certs $(BUILD)/certs

# Two example servers ("hosts") sharing a throw-away redis-server on 127.0.0.1.
test-remote: test-deps all $(BUILD)/certs/server.pem
	python3 tests/integration/test_remote.py --server $(SERVER) --cli $(CLI) --certs $(BUILD)/certs
	python3 tests/integration/test_remote_hostile.py --server $(SERVER) --cli $(CLI) --certs $(BUILD)/certs
	python3 tests/integration/test_remote_tls.py --server $(SERVER) --cli $(CLI) --certs $(BUILD)/certs
	python3 tests/integration/test_remote_cluster.py --server $(SERVER) --cli $(CLI) --certs $(BUILD)/certs
	python3 tests/integration/test_remote_sentinel.py --server $(SERVER) --cli $(CLI) --certs $(BUILD)/certs

test-apache: test-deps all $(FAULT_SERVER) $(BUILD)/certs/server.pem
	$(MAKE) --no-print-directory apache-module
	python3 tests/integration/test_apache.py --module $(APACHE_MOD) --cli $(CLI) --certs $(BUILD)/certs \
	  --fault-lib $(BUILD)/fault
	python3 tests/integration/test_apache_fleet.py --module $(APACHE_MOD) --certs $(BUILD)/certs

# The example server linked against a fault-injection build of the library (tests only: it
# dies inside critical sections when SHMSESS_TEST_FAULT says so).
$(FAULT_SERVER): c-examples/prefork_server.c include/shmsesscache.h $(RUST_SRC)
	$(CARGO) build --release --lib --features fault-injection --target-dir target/fault
	@mkdir -p $(BUILD)/fault
	cp target/fault/release/libshmsesscache.so $(BUILD)/fault/libshmsesscache.so.$(SOVERSION)
	ln -sf libshmsesscache.so.$(SOVERSION) $(BUILD)/fault/libshmsesscache.so
	$(CC) $(CFLAGS) $(WARN) -Iinclude $< -o $@ -L$(BUILD)/fault -lshmsesscache -lssl -lcrypto -Wl,-rpath,'$$ORIGIN'

# libFuzzer targets (fuzz/) on stable Rust: SanitizerCoverage passes, no nightly needed.
# `make fuzz` runs each for FUZZ_SECONDS; `make test` runs a short smoke of each.
FUZZ_SECONDS ?= 300
FUZZ_TARGET  := x86_64-unknown-linux-gnu
FUZZ_BIN     := fuzz/target/$(FUZZ_TARGET)/release
FUZZ_FLAGS   := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
                -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
                -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks

fuzz-build:
	cd fuzz && RUSTFLAGS="$(FUZZ_FLAGS)" $(CARGO) build --release --target $(FUZZ_TARGET)

define run_fuzz
	@mkdir -p fuzz/corpus/$(1) fuzz/artifacts
	$(FUZZ_BIN)/$(1) -max_total_time=$(2) -rss_limit_mb=2048 -print_final_stats=1 \
	  -artifact_prefix=fuzz/artifacts/$(1)- fuzz/corpus/$(1) 2>&1 | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked" ; test $${PIPESTATUS[0]} -eq 0
endef

fuzz: SHELL := /bin/bash
fuzz: fuzz-build
	$(call run_fuzz,api_ops,$(FUZZ_SECONDS))
	$(call run_fuzz,segment_bytes,$(FUZZ_SECONDS))

test-fuzz: SHELL := /bin/bash
test-fuzz: fuzz-build
	$(call run_fuzz,api_ops,10)
	$(call run_fuzz,segment_bytes,10)

$(BUILD)/certs/server.pem: scripts/make-certs.sh
	scripts/make-certs.sh $(BUILD)/certs

demo: all $(BUILD)/certs/server.pem
	python3 scripts/demo.py --server $(SERVER) --certs $(BUILD)/certs

# The endurance run (never part of `make test`; BENCHMARKS.md, "Endurance"): nginx, Apache and
# two example servers on one Redis for SOAK_MINUTES under load, with worker kills, reloads,
# CLI reads, flushes and a Redis restart; exits non-zero when its verdict fails.
# `make soak-leak` runs it for one minute against a copy of the example server that leaks a
# descriptor per connection (built under /tmp, bench/soak_leak.sh; SOAK_FAULT=crash: whose
# workers abort): that verdict must fail.
.PHONY: soak soak-leak
SOAK_MINUTES ?= 10
SOAK_ARGS = --cli $(CLI) --certs $(BUILD)/certs --nginx-module $(NGINX_MOD) --apache-module $(APACHE_MOD)
soak: test-deps all $(BUILD)/certs/server.pem
	$(MAKE) --no-print-directory apache-module
	$(MAKE) --no-print-directory nginx-module
	python3 bench/soak.py --minutes $(SOAK_MINUTES) --server $(SERVER) $(SOAK_ARGS) --json $(BUILD)/soak.json

soak-leak: test-deps all $(BUILD)/certs/server.pem
	$(MAKE) --no-print-directory apache-module
	$(MAKE) --no-print-directory nginx-module
	sh bench/soak_leak.sh $(BUILD) $(SOAK_ARGS)

# Benchmarks (never part of `make test`): see BENCHMARKS.md. BENCH_ARGS e.g. "--runs 3".
BENCH_ARGS ?=
$(BUILD)/bench/handshake: bench/handshake.c $(TLSPAIR) include/shmsesscache.h $(LIB_SO)
	@mkdir -p $(BUILD)/bench
	$(CC) $(CFLAGS) $(WARN) -Iinclude -Itests/c $< $(filter %.c,$(TLSPAIR)) -o $@ -L$(BUILD) -lshmsesscache -lssl -lcrypto \
	  -Wl,-rpath,'$$ORIGIN/..'

$(BUILD)/bench/loadgen: bench/loadgen.c
	@mkdir -p $(BUILD)/bench
	$(CC) $(CFLAGS) $(WARN) $< -o $@ -lssl -lcrypto

# The capacity probe: full handshakes, then each kept session offered once up to the ServerHello.
$(BUILD)/bench/capacity: bench/capacity.c
	@mkdir -p $(BUILD)/bench
	$(CC) $(CFLAGS) $(WARN) $< -o $@ -lssl -lcrypto

bench: all $(BUILD)/certs/server.pem $(BUILD)/bench/handshake $(BUILD)/bench/loadgen $(BUILD)/bench/capacity
	$(CARGO) build --release --example bench_ops --example bench_tiers --example bench_threads
	sh bench/install-deps.sh
	$(MAKE) --no-print-directory apache-module
	$(MAKE) --no-print-directory nginx-module
	python3 bench/run.py $(BENCH_ARGS)

# The library, header, pkg-config file, tool and man pages. Outside the linker's default paths
# (PREFIX=/usr/local is inside on Debian; /opt is not) programs need an rpath or an ld.so.conf.d
# entry: see docs/c-api.md. Run `ldconfig` after installing into a system directory.
install: all
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3
	install -m 0644 $(LIB_SO).$(SOVERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libshmsesscache.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libshmsesscache.so
	install -m 0644 $(LIB_A) $(DESTDIR)$(LIBDIR)/
	install -m 0644 include/shmsesscache.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0644 $(PC) $(DESTDIR)$(LIBDIR)/pkgconfig/
	install -m 0755 $(CLI) $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(PRELOAD_DIR)
	install -m 0644 $(PRELOAD) $(DESTDIR)$(PRELOAD_DIR)/
	install -m 0644 man/shmsesscache.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/libshmsesscache.3 $(DESTDIR)$(MANDIR)/man3/
	for f in $(API_FUNCTIONS); do ln -sf libshmsesscache.3 $(DESTDIR)$(MANDIR)/man3/$$f.3; done

# Debian packages into build/deb/ (docs/packages.md): dpkg-buildpackage runs debian/rules, which
# runs this Makefile with PREFIX=/usr, the multiarch LIBDIR, BUILD=build/debian and no module
# rpath. Needs debhelper, dpkg-dev, apache2-dev and nginx-dev (make test-deps) and Rust on
# PATH. MAKEFLAGS is dropped so that variables given to this make do not reach the packaging.
DEB_DIR := $(BUILD)/deb
deb:
	@mkdir -p $(DEB_DIR)
	rm -f $(DEB_DIR)/*.deb $(DEB_DIR)/*.buildinfo $(DEB_DIR)/*.changes
	pva=$$(dpkg-parsechangelog -S Source)_$$(dpkg-parsechangelog -S Version)_$$(dpkg --print-architecture); \
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL dpkg-buildpackage -us -uc -b \
	  --buildinfo-file=$(DEB_DIR)/$$pva.buildinfo --buildinfo-option=-u$(DEB_DIR) \
	  --changes-file=$(DEB_DIR)/$$pva.changes --changes-option=-u$(DEB_DIR)

# Builds the packages, installs them, runs Debian's nginx and Apache with them, purges them.
# As root only, and it changes the system while it runs: see tests/integration/test_deb.py.
test-deb: test-deps $(BUILD)/certs/server.pem
	python3 tests/integration/test_deb.py --certs $(BUILD)/certs

# The man pages against the header and the tool's own help, and through mandoc's and groff's
# checkers.
# Every relative link and #anchor of README.md and docs/*.md resolves (reads files only).
test-docs:
	python3 tests/integration/test_docs.py

test-man: test-deps $(CLI)
	python3 tests/integration/test_man.py --cli $(CLI) --header include/shmsesscache.h --man man

# `make install` into throw-away DESTDIRs (PREFIX changes, LIBDIR, a program built with pkg-config).
test-install: all
	python3 tests/integration/test_install.py

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
