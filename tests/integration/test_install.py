#!/usr/bin/env python3
"""`make install` into throw-away DESTDIRs: where each file goes for PREFIX and LIBDIR, that the
pkg-config file follows a PREFIX changed between two installs (it used to keep the first one),
and that a C program built with `pkg-config --cflags --libs` against the installed tree runs.

Nothing is installed on the system: every install goes below a temporary DESTDIR.
Each check prints PASS/FAIL; the run ends with "N passed, M failed".
"""

import argparse
import os
import subprocess
import tempfile

from harness.checks import check, finish

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include <shmsesscache.h>
int main(void) {
    shmsess_options opts;
    shmsess_cache *cache = NULL;
    if (shmsess_options_init(&opts) != SHMSESS_OK) return 1;
    if (shmsess_cache_create(&opts, &cache) != SHMSESS_OK) { puts(shmsess_last_error()); return 1; }
    printf("version %s\n", shmsess_version());
    shmsess_cache_free(cache);
    return 0;
}
"""


def make_install(destdir, *variables):
    out = subprocess.run(["make", "-C", REPO, "--no-print-directory", "install", f"DESTDIR={destdir}", *variables],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-3000:])
    return out.returncode == 0


def pc_fields(pc_dir):
    """prefix, libdir and includedir of the shmsesscache.pc in pc_dir, as pkg-config reads them."""
    env = dict(os.environ, PKG_CONFIG_PATH=pc_dir)
    env.pop("PKG_CONFIG_SYSROOT_DIR", None)
    fields = {}
    for name in ("prefix", "libdir", "includedir"):
        out = subprocess.run(["pkg-config", f"--variable={name}", "shmsesscache"], capture_output=True, text=True,
                             env=env)
        fields[name] = out.stdout.strip() if out.returncode == 0 else None
    return fields


def installed(destdir, prefix, libdir):
    """The files every install must have, relative to DESTDIR."""
    return [f"{libdir}/libshmsesscache.so.0", f"{libdir}/libshmsesscache.so", f"{libdir}/libshmsesscache.a",
            f"{libdir}/pkgconfig/shmsesscache.pc", f"{prefix}/include/shmsesscache.h", f"{prefix}/bin/shmsesscache",
            f"{prefix}/share/man/man1/shmsesscache.1", f"{prefix}/share/man/man3/libshmsesscache.3",
            f"{prefix}/share/man/man3/shmsess_cache_create.3", f"{libdir}/shmsesscache/libshmsesscache_preload.so"]


def linked_to(ldd_output, soname):
    """The real paths ldd resolved `soname` to."""
    return [os.path.realpath(line.split("=>")[1].split("(")[0].strip())
            for line in ldd_output.splitlines() if soname in line and "=>" in line]


def missing(destdir, files):
    return [f for f in files if not os.path.lexists(destdir + f)]


def prefix_change(tmp):
    """Two installs in a row with different PREFIXes: the second .pc must have the second."""
    first, second = os.path.join(tmp, "first"), os.path.join(tmp, "second")
    ok = make_install(first, "PREFIX=/opt/shmsess-first") and make_install(second, "PREFIX=/opt/shmsess-second")
    check("make install PREFIX=A, then PREFIX=B: both succeed", ok)
    if not ok:
        return
    pc = pc_fields(f"{second}/opt/shmsess-second/lib/pkgconfig")
    check("the second install's .pc has the second PREFIX",
          pc.get("prefix") == "/opt/shmsess-second" and pc.get("libdir") == "/opt/shmsess-second/lib",
          f"prefix={pc.get('prefix')} libdir={pc.get('libdir')}")
    gone = missing(second, installed(second, "/opt/shmsess-second", "/opt/shmsess-second/lib"))
    check("library, header, .pc, tool and man pages installed under PREFIX", not gone, f"missing {gone}")


def libdir_layout(tmp):
    """PREFIX=/usr LIBDIR=/usr/lib/<multiarch>: the Debian layout, and a program built from it."""
    dest = os.path.join(tmp, "multiarch")
    libdir = "/usr/lib/x86_64-linux-gnu"
    ok = make_install(dest, "PREFIX=/usr", f"LIBDIR={libdir}")
    check("make install PREFIX=/usr LIBDIR=/usr/lib/x86_64-linux-gnu succeeds", ok)
    if not ok:
        return
    gone = missing(dest, installed(dest, "/usr", libdir))
    check("the library and the .pc are in LIBDIR, the rest under PREFIX", not gone, f"missing {gone}")
    pc_dir = f"{dest}{libdir}/pkgconfig"
    pc = pc_fields(pc_dir)
    check("the .pc's libdir is LIBDIR, its includedir PREFIX/include",
          pc["libdir"] == libdir and pc["includedir"] == "/usr/include", str(pc))
    # pkg-config's sysroot rewrites -I and -L to the DESTDIR copy, as a packager's build would.
    env = dict(os.environ, PKG_CONFIG_PATH=pc_dir, PKG_CONFIG_SYSROOT_DIR=dest)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "shmsesscache"], capture_output=True, text=True,
                           env=env)
    check("pkg-config --cflags --libs shmsesscache (PKG_CONFIG_PATH)", flags.returncode == 0 and
          f"-L{dest}{libdir}" in flags.stdout, flags.stdout.strip() + flags.stderr.strip())
    src, exe = os.path.join(tmp, "prog.c"), os.path.join(tmp, "prog")
    with open(src, "w") as f:
        f.write(PROGRAM)
    cc = subprocess.run(["cc", src, "-o", exe, *flags.stdout.split(), "-lssl", "-lcrypto"], capture_output=True,
                        text=True)
    check("a C program builds with those flags", cc.returncode == 0, cc.stderr[-500:])
    if cc.returncode != 0:
        return
    run = subprocess.run([exe], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, LD_LIBRARY_PATH=dest + libdir))
    ldd = subprocess.run(["ldd", exe], capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=dest + libdir)).stdout
    check("it runs against the installed libshmsesscache.so.0 (SONAME)",
          run.returncode == 0 and run.stdout.startswith("version ") and f"{dest}{libdir}/libshmsesscache.so.0" in ldd,
          run.stdout.strip() + run.stderr.strip())
    # The installed tool finds the installed preload (in LIBDIR/shmsesscache, LIBDIR the
    # multiarch one), which finds the installed library one directory up ($ORIGIN/..).
    env = {k: v for k, v in os.environ.items() if k != "SHMSESS_PRELOAD_LIB"}
    run = subprocess.run([f"{dest}/usr/bin/shmsesscache", "run", "--", "sh", "-c", 'echo "$LD_PRELOAD"; ldd "${LD_PRELOAD##*:}"'],
                         capture_output=True, text=True, timeout=30, env=env)
    check("the installed 'shmsesscache run' preloads the installed drop-in, linked to the installed library",
          run.returncode == 0 and f"{dest}{libdir}/shmsesscache/libshmsesscache_preload.so" in run.stdout
          and os.path.realpath(f"{dest}{libdir}/libshmsesscache.so.0") in linked_to(run.stdout, "libshmsesscache.so.0"),
          (run.stdout + run.stderr).strip()[-400:])


def libdir_elsewhere(tmp):
    """LIBDIR neither PREFIX/lib nor the multiarch directory (PREFIX/lib64 here): the installed
    'shmsesscache run' still finds the drop-in it was installed with."""
    dest = os.path.join(tmp, "lib64")
    ok = make_install(dest, "PREFIX=/opt/shm", "LIBDIR=/opt/shm/lib64")
    check("make install PREFIX=/opt/shm LIBDIR=/opt/shm/lib64 succeeds", ok)
    if not ok:
        return
    env = {k: v for k, v in os.environ.items() if k != "SHMSESS_PRELOAD_LIB"}
    run = subprocess.run([f"{dest}/opt/shm/bin/shmsesscache", "run", "--", "sh", "-c", 'echo "$LD_PRELOAD"'],
                         capture_output=True, text=True, timeout=30, env=env)
    check("with LIBDIR=PREFIX/lib64 the installed 'shmsesscache run' finds the installed drop-in",
          run.returncode == 0 and f"{dest}/opt/shm/lib64/shmsesscache/libshmsesscache_preload.so" in run.stdout,
          (run.stdout + run.stderr).strip()[-400:])


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()
    with tempfile.TemporaryDirectory(prefix="shmsess-install-") as tmp:
        prefix_change(tmp)
        libdir_layout(tmp)
        libdir_elsewhere(tmp)
    finish()


if __name__ == "__main__":
    main()
