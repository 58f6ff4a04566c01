#!/usr/bin/env python3
"""The man pages against what they describe: libshmsesscache.3 against include/shmsesscache.h
(every declared function in its SYNOPSIS with the header's exact prototype and in its NAME
line, every status code and flag named), shmsesscache.1 against the tool's own help (every
command the tool dispatches has a section, every option a command's --help names is in that
section or in OPTIONS, and no option is described that the help does not know), and both
through `mandoc -Tlint` and `groff -man -ww` without a message.

Each check prints PASS/FAIL; the run ends with "N passed, M failed".
"""

import argparse
import os
import re
import subprocess

from harness.checks import check, finish

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def render(page):
    """The page as plain text (mandoc, no overstrike, one long line per paragraph)."""
    out = subprocess.run(["mandoc", "-Tascii", "-Owidth=1000", page], capture_output=True, text=True, check=True)
    return re.sub(r".\x08", "", out.stdout)


def sections(text, level):
    """{heading: body} of a rendered page: level 0 for .SH (no indent), 3 for .SS."""
    found, name = {}, None
    for line in text.splitlines():
        if re.match(r"^ {%d}\S" % level, line) and not line.startswith(" " * (level + 1)):
            name = line.strip()
            found[name] = ""
        elif name is not None:
            found[name] += line + "\n"
    return found


def squash(s):
    return " ".join(s.split())


def lint(page):
    """mandoc's and groff's complaints about a page, as one string ('' when clean)."""
    mandoc = subprocess.run(["mandoc", "-Tlint", "-Wall", page], capture_output=True, text=True)
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], capture_output=True, text=True,
                           env=dict(os.environ, LC_ALL="C.UTF-8"))
    return (mandoc.stdout + mandoc.stderr + groff.stderr).strip()


def header_declarations(header):
    """(function name, prototype) of every function the header declares, and the typedef'd
    callback types, whitespace squashed."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", open(header).read(), flags=re.S)
    protos = re.findall(r"^((?:enum |const |struct )*[a-z_0-9]+ \**(shmsess_[a-z_0-9]+)\([^;]*\);)", text, re.M)
    typedefs = re.findall(r"^(typedef \w+ \(\*(shmsess_\w+_fn)\)\([^;]*\);)", text, re.M)
    names = re.findall(r"^\s*(SHMSESS_[A-Z0-9_]+)(?: = \d+)?,?$", text, re.M)
    defines = re.findall(r"^#define (SHMSESS_[A-Z0-9_]+) ", text, re.M)
    return ([(n, squash(p)) for p, n in protos], [(n, squash(p)) for p, n in typedefs], names + defines)


def check_api_page(page, header):
    functions, typedefs, constants = header_declarations(header)
    check("the header declares functions, callback types and constants (parser sanity)",
          len(functions) >= 20 and len(typedefs) == 3 and len(constants) >= 20,
          f"{len(functions)} functions, {len(typedefs)} typedefs, {len(constants)} constants")
    text = render(page)
    top = sections(text, 0)
    synopsis = squash(top.get("SYNOPSIS", ""))
    wrong = [n for n, proto in functions + typedefs if proto not in synopsis]
    check("libshmsesscache.3 SYNOPSIS: every function and callback type with the header's prototype",
          not wrong, f"missing or different: {wrong}")
    names = set(re.findall(r"\w+", top.get("NAME", "")))
    unnamed = [n for n, _ in functions if n not in names]
    check("libshmsesscache.3 NAME lists every function (whatis, the man3 links)", not unnamed, f"missing: {unnamed}")
    body = squash(text)
    absent = [c for c in constants if c not in body]
    check("libshmsesscache.3 names every status code and flag of the header", not absent, f"missing: {absent}")
    documented = set(re.findall(r"\bshmsess_[a-z0-9_]+(?=\()", synopsis))
    extra = sorted(documented - {n for n, _ in functions})
    check("libshmsesscache.3 SYNOPSIS has no function the header lacks", not extra, f"extra: {extra}")


def cli_help(cli, *args):
    out = subprocess.run([cli, *args], capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout + out.stderr


def cli_commands(cli):
    """The commands the tool dispatches (its error for an unknown one lists them) and those its
    help's SYNOPSIS shows."""
    _, err = cli_help(cli, "no-such-command")
    dispatched = re.search(r"commands: ([a-z, ]+)", err)
    dispatched = dispatched.group(1).replace(" ", "").split(",") if dispatched else []
    _, main = cli_help(cli, "--help")
    synopsis = main.split("DESCRIPTION")[0]
    shown = [c for c in re.findall(r"^\s+shmsesscache ([a-z]+)\b", synopsis, re.M)]
    return dispatched, shown, main


def check_cli_page(page, cli):
    dispatched, shown, main_help = cli_commands(cli)
    check("the tool names its commands (parser sanity)", len(dispatched) >= 7, str(dispatched))
    check("the help's SYNOPSIS shows every command the tool dispatches", sorted(shown) == sorted(dispatched),
          f"shown {shown}, dispatched {dispatched}")
    text = render(page)
    top = sections(text, 0)
    commands = sections(top.get("COMMANDS", ""), 3)
    synopsis = squash(top.get("SYNOPSIS", ""))
    check("shmsesscache.1 has a section for every command, and no other",
          sorted(commands) == sorted(dispatched), f"sections {sorted(commands)}")
    check("shmsesscache.1 SYNOPSIS shows every command",
          all(f"shmsesscache {c} " in synopsis + " " for c in dispatched), synopsis[:200])
    common = set(OPTION.findall(top.get("OPTIONS", "")))
    for cmd in dispatched:
        code, own_help = cli_help(cli, cmd, "--help")
        helped = set(OPTION.findall(own_help)) - {"--help"}
        described = set(OPTION.findall(commands.get(cmd, "")))
        lacking = sorted(helped - described - common)
        unknown = sorted(described - helped)
        check(f"shmsesscache.1 '{cmd}': every option of '{cmd} --help' described, none it lacks",
              code == 0 and not lacking and not unknown, f"not described {lacking}, unknown to the help {unknown}")
    main_options = set(OPTION.findall(main_help))
    check("shmsesscache.1 describes every option of the main help",
          main_options <= set(OPTION.findall(text)), str(sorted(main_options - set(OPTION.findall(text)))))
    exit_codes = set(re.findall(r"^\s{4}(\d)\s", main_help.split("EXIT STATUS")[-1], re.M))
    page_codes = set(re.findall(r"^\s+(\d)\s", top.get("EXIT STATUS", ""), re.M))
    check("shmsesscache.1 EXIT STATUS lists the help's exit codes", exit_codes and exit_codes == page_codes,
          f"help {sorted(exit_codes)}, page {sorted(page_codes)}")
    code, version = cli_help(cli, "--version")
    check("shmsesscache.1 carries the tool's version", code == 0 and version.split()[-1] in text.splitlines()[-1],
          f"{version.strip()} / {text.splitlines()[-1].strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--header", required=True)
    ap.add_argument("--man", required=True, help="directory of shmsesscache.1 and libshmsesscache.3")
    args = ap.parse_args()
    pages = [os.path.join(args.man, p) for p in ("shmsesscache.1", "libshmsesscache.3")]
    for page in pages:
        complaints = lint(page)
        check(f"{os.path.basename(page)}: mandoc -Tlint -Wall and groff -man -ww say nothing", not complaints,
              complaints[:800])
    check_api_page(pages[1], args.header)
    check_cli_page(pages[0], args.cli)
    finish()


if __name__ == "__main__":
    main()
