"""Run ``python -m MODULE ARGS...`` and append the process's peak resident memory (MB) to a file.

Usage: python benchmarks/peak_rss.py OUTPUT_FILE MODULE [ARGS...]
"""

import atexit
import resource
import runpy
import sys

output, module, *rest = sys.argv[1:]


def _report() -> None:
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}\n")


atexit.register(_report)
sys.argv = [module, *rest]
runpy.run_module(module, run_name="__main__")
