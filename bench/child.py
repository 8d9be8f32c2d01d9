"""Run one workload in this (fresh) process and print its result as JSON on the last line.

Usage: python bench/child.py SUITE.WORKLOAD [key=value ...]   (run.py does this for you)
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

# The code under test: the checkout, or the tree run.py exported with --rev.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _BENCH)
sys.path.insert(1, os.environ.get("ORCHESTRIX_BENCH_CODE") or os.path.dirname(_BENCH))

from workloads.common import NotLanded  # noqa: E402

EXIT_NOT_LANDED = 3


def _param(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, value


def main(argv: list[str]) -> int:
    """Run the named workload with its parameters; print one JSON line."""
    suite, _, name = argv[0].partition(".")
    params = dict(_param(a) for a in argv[1:])
    try:
        workload = getattr(importlib.import_module(f"workloads.{suite}"), name)
        result = workload(**params)
    except NotLanded as exc:
        print(json.dumps({"not_landed": str(exc)}))
        return EXIT_NOT_LANDED
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    result["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
