"""Command line: see `python scripts/train.py --help`; the program lives in cnnxp/cli/train.py."""

import os
import sys

# Run from a fresh clone without installing: put the repository root, not scripts/, on the path
# (scripts/inspect.py would otherwise shadow the standard library's inspect module).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.path.dirname(_here))

if __name__ == "__main__":
    try:
        from cnnxp.cli import train_main
    except KeyboardInterrupt:  # Ctrl-C while Python loads: nothing started, nothing to say
        try:  # but under mpiexec the other processes would wait for this one in MPI's start-up
            from cnnxp.cli.parallel import abort_before_start

            abort_before_start(130)
        except BaseException:
            pass
        sys.exit(130)
    sys.exit(train_main())
