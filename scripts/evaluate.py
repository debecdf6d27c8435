"""Command line: see `python scripts/evaluate.py --help`; the program lives in cnnxp/cli/evaluate.py."""

import os
import sys

# Run from a fresh clone without installing: put the repository root, not scripts/, on the path
# (scripts/inspect.py would otherwise shadow the standard library's inspect module).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))

from cnnxp.cli import evaluate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(evaluate_main())
