"""The command-line programs behind ``scripts/train.py``, ``scripts/evaluate.py`` and ``scripts/inspect.py``.

One module per program (`train`, `evaluate`, `inspect`), each with its parser and its
steps, and what they share: `common` (errors, one-line notes, argument types, device,
checkpoint loading, pictures, JSON), `datasets` (the splits, and the dataset a run without
``--dataset`` takes), `config` (train.py's settings: the recipe with the flags over it, or a
resumed run's), `runs` (run folders: one live run each, and what stays in them when a run
stops), `stop` (Ctrl-C and SIGTERM), `report` (metrics and pictures) and `parallel` (train.py
under an MPI launcher).

Each ``*_main(argv)`` parses its arguments, does its work and returns the exit
status, so tests call them in-process. Bad arguments end with one line on stderr
(``train.py: error: ...``) and status 2 before any training starts; Ctrl-C (SIGTERM) during
training saves the last finished epoch and returns 130 (143); a diverged run ends with one
line and 1; a reader of stdout that went away ends a program quietly with 141.
"""

from .common import DEFAULTS
from .evaluate import evaluate_main, evaluate_parser
from .inspect import inspect_main, inspect_parser
from .train import OLDER_DEFAULTS, RESUMED_KEYS, train_main, train_parser

__all__ = ["train_main", "evaluate_main", "inspect_main", "train_parser", "evaluate_parser", "inspect_parser",
           "DEFAULTS", "RESUMED_KEYS", "OLDER_DEFAULTS"]
