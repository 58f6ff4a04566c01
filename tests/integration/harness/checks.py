"""PASS/FAIL bookkeeping shared by the integration tests: each check prints one line; `finish`
prints "N passed, M failed" and exits non-zero if anything failed."""

import sys

results = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    results["passed" if cond else "failed"] += 1
    print(f"{'PASS' if cond else 'FAIL'} {name}" + (f" — {detail}" if detail else ""), flush=True)
    return cond


def finish():
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)
