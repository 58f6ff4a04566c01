#!/usr/bin/env python3
"""The links of the documentation: every relative link in README.md and docs/*.md names a file
of the repository, and every `#anchor` (in the same page or another Markdown page) names a
heading of that page, as GitHub makes anchors from headings. Also: each page in docs/ is
reachable from the README, and no page cites a reference file the repository does not have
(the README once cited `004_*.txt`, which lives outside it). A notice-level log line of the
nginx modules is quoted with the level it needs; docs/packages.md lists the packages of
debian/control; a resize recipe (also in the man pages) stops the server before its dump; an
announced example ("for example:") is there.

Cheap (reads files only). Each check prints PASS/FAIL; the run ends with "N passed, M failed".
"""

import argparse
import os
import re

from harness.checks import check, finish

# [text](target): the target up to the closing parenthesis, without a title. Images too.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose_lines(text):
    """The lines of a Markdown page outside fenced code blocks."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def slug(heading):
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (hyphens and
    underscores kept), spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text.replace("`", ""))
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown page has: its headings' slugs, with GitHub's -1, -2 for repeats."""
    seen, found = {}, set()
    for line in prose_lines(open(path, encoding="utf-8").read()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        found.add(s if n == 0 else f"{s}-{n}")
    return found


def links(path):
    """(line number, target) of every link of a page outside code blocks and code spans."""
    out = []
    for no, line in enumerate(prose_lines(open(path, encoding="utf-8").read()), 1):
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            out.append((no, m.group(1)))
    return out


def check_page(root, page, cache):
    rel = os.path.relpath(page, root)
    bad = []
    count = 0
    for no, target in links(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        count += 1
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        if not os.path.exists(dest):
            bad.append(f"{target} (no file {os.path.relpath(dest, root)})")
            continue
        if anchor:
            if not dest.endswith(".md"):
                bad.append(f"{target} (an anchor into a file that is not Markdown)")
                continue
            if dest not in cache:
                cache[dest] = anchors(dest)
            if anchor not in cache[dest]:
                bad.append(f"{target} (no heading #{anchor} in {os.path.relpath(dest, root)})")
    check(f"{rel}: its {count} relative links resolve to files and headings", not bad, "; ".join(bad[:8]))


# A message the nginx modules log below nginx's default level (`error_log FILE;` logs `error`
# and worse), e.g. ngx_log_error(NGX_LOG_NOTICE, log, 0, "shmsess: session cache installed ...
QUIET_LOG = re.compile(r'ngx_log_error\(NGX_LOG_(NOTICE|INFO)\b[^"]*"(shmsess: [^"%]+)')


def quiet_nginx_messages(root):
    """{message start (up to its first format directive): level} of every nginx module message
    logged at notice or info."""
    found = {}
    nginx = os.path.join(root, "nginx")
    for name in sorted(os.listdir(nginx)):
        if name.endswith(".c"):
            source = re.sub(r'"\s*"', "", open(os.path.join(nginx, name), encoding="utf-8").read())
            for level, start in QUIET_LOG.findall(source):
                found[start.strip()] = level.lower()
    return found


def check_quiet_messages(root, pages):
    """A page that tells the reader to look for a notice-level line in the error log says that
    the log must be at that level: with Debian's `error_log /var/log/nginx/error.log;` the line
    never shows."""
    quiet = quiet_nginx_messages(root)
    check("the nginx modules log some messages at notice or info", bool(quiet), str(quiet))
    unsaid = []
    for page in pages:
        for para in re.split(r"\n\s*\n", "\n".join(prose_lines(open(page, encoding="utf-8").read()))):
            flat = " ".join(para.split())
            for start, level in quiet.items():
                if start in flat and level not in flat:
                    unsaid.append(f"{os.path.relpath(page, root)}: {start!r} without {level!r}")
    check("every quoted notice/info line of the nginx modules says the error_log level it needs",
          not unsaid, "; ".join(unsaid))


NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def check_package_list(root):
    """docs/packages.md against debian/control, the one list of the packages: the count it
    gives for `make deb` and its table name every binary package, and no other."""
    control = open(os.path.join(root, "debian", "control"), encoding="utf-8").read()
    packages = re.findall(r"^Package:\s*(\S+)", control, re.M)
    page = open(os.path.join(root, "docs", "packages.md"), encoding="utf-8").read()
    count = re.search(r"`make deb` builds (\w+) packages", page)
    said = count and count.group(1)
    check("docs/packages.md says how many packages make deb builds, as debian/control has",
          said in (str(len(packages)), NUMBERS[len(packages)] if len(packages) < len(NUMBERS) else None),
          f"page: {said}, debian/control: {len(packages)}")
    table = re.findall(r"^\| `([a-z0-9.+-]+)` \|", page, re.M)
    check("docs/packages.md's table lists exactly the packages of debian/control",
          sorted(table) == sorted(packages), f"table {sorted(table)}, control {sorted(packages)}")


def code_blocks(root, pages):
    """(where, [lines]) of every fenced block of the Markdown pages and every .EX block of the
    man pages."""
    for page in pages:
        block, inside = [], False
        for line in open(page, encoding="utf-8").read().splitlines():
            if FENCE.match(line):
                if inside:
                    yield os.path.relpath(page, root), block
                block, inside = [], not inside
            elif inside:
                block.append(line)
    man = os.path.join(root, "man")
    for name in sorted(os.listdir(man)):
        text = open(os.path.join(man, name), encoding="utf-8").read()
        for block in re.findall(r"^\.EX\n(.*?)^\.EE", text, re.M | re.S):
            yield f"man/{name}", block.replace("\\-", "-").splitlines()


def check_resize_recipes(root, pages):
    """A recipe that moves sessions into a new segment (dump, create, load) stops the server
    before the dump (sessions made after it are lost otherwise, and a server on the old size
    refuses the new file) and starts it after the load."""
    wrong = []
    for where, lines in code_blocks(root, pages):
        at = {cmd: next((i for i, ln in enumerate(lines) if f"shmsesscache {cmd} " in ln), None)
              for cmd in ("dump", "create", "load")}
        if None in at.values():
            continue
        stop = next((i for i, ln in enumerate(lines) if re.search(r"\bstop\b", ln)), None)
        start = next((i for i, ln in enumerate(lines) if re.search(r"\bstart\b", ln) and i > at["load"]), None)
        if stop is None or stop > at["dump"] or start is None:
            wrong.append(f"{where}: {' / '.join(ln.strip() for ln in lines)[:160]}")
    check("every dump/create/load recipe stops the server before the dump and starts it after the load",
          not wrong, "; ".join(wrong))


def check_announced_examples(root, pages):
    """A paragraph that ends by announcing an example ("for example:") is followed by one (a
    code block, a list or a table), not by a blank line and prose: c-api.md once ended one
    with "with HAProxy, for example:" and nothing after it."""
    dangling = []
    for page in pages:
        lines = open(page, encoding="utf-8").read().splitlines()
        for i, line in enumerate(lines):
            if re.search(r"(for example|e\.g\.|such as|like this):$", line.strip()):
                after = next((ln for ln in lines[i + 1:] if ln.strip()), "")
                if not re.match(r"\s*(```|~~~|[-*|] |\d+\. |    )", after):
                    dangling.append(f"{os.path.relpath(page, root)}:{i + 1}: {line.strip()[-60:]}")
    check("every 'for example:' is followed by the example", not dangling, "; ".join(dangling))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    root = os.path.abspath(p.parse_args().root)
    docs = os.path.join(root, "docs")
    pages = [os.path.join(root, "README.md")] + sorted(
        os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))
    check("docs/ has pages to check", len(pages) > 1, f"{len(pages) - 1} pages")
    cache = {}
    for page in pages:
        check_page(root, page, cache)
    readme_targets = {os.path.normpath(os.path.join(root, t.partition("#")[0]))
                      for _, t in links(os.path.join(root, "README.md"))}
    unlinked = [os.path.relpath(d, root) for d in pages[1:] if d not in readme_targets]
    check("every page in docs/ is linked from the README", not unlinked, f"not linked: {unlinked}")
    cited = [os.path.relpath(page, root) for page in pages
             if re.search(r"\b00\d_\*?\.txt", open(page, encoding="utf-8").read())]
    check("no page cites a reference file (00N_*.txt) the repository does not have", not cited,
          f"cited in {cited}")
    check_quiet_messages(root, pages)
    check_package_list(root)
    check_resize_recipes(root, pages)
    check_announced_examples(root, pages)
    finish()


if __name__ == "__main__":
    main()
