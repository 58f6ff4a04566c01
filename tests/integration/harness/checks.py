"""PASS/FAIL bookkeeping shared by the integration tests: each check prints one line; `run`
runs scenarios so that one that crashes is a failed check; `finish` prints "N passed, M
failed" and exits non-zero if anything failed."""

import sys

results = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    results["passed" if cond else "failed"] += 1
    print(f"{'PASS' if cond else 'FAIL'} {name}" + (f" — {detail}" if detail else ""), flush=True)
    return cond


def run(scenarios, *args):
    """Call each scenario with `args`; one that raises is a failed check named after it (a
    crash of one scenario is a failure, not an abort of the others)."""
    for scenario in scenarios:
        try:
            scenario(*args)
        except Exception as e:
            check(scenario.__name__, False, f"{type(e).__name__}: {e}")


def finish():
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)
