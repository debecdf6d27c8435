"""Peak resident memory of a full Fashion-MNIST LeNet-5 training epoch.

Loads the 60,000 training images (IDX files, e.g. Debian's
/usr/share/datasets/fashion-mnist/), trains LeNet-5 for one epoch through
`cnnxp.train.fit` and prints the process's peak resident set size (``ru_maxrss``)
with the time taken. Run it under ``/usr/bin/time -v`` for an outside view of
the same number ("Maximum resident set size").

Examples
--------
    /usr/bin/time -v python scripts/measure_memory.py --data-dir /usr/share/datasets/fashion-mnist
    python scripts/measure_memory.py --batch-size 1024 --limit-mb 600
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

# scripts/ holds an inspect.py; keep it from shadowing the standard library's module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import cnnxp  # noqa: E402
from cnnxp.data import DataLoader, load_dataset  # noqa: E402
from cnnxp.models import lenet5  # noqa: E402
from cnnxp.optim import SGD  # noqa: E402
from cnnxp.train import fit  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None,
                   help="directory with the IDX files (default: the usual search, which includes Debian's "
                        "/usr/share/datasets/fashion-mnist for fashion-mnist)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit-mb", type=float, default=600.0, help="fail (exit 1) above this peak")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    images, labels = load_dataset(args.dataset, "train", data_dir=args.data_dir, download=False)
    after_load = peak_rss_mb()
    model = lenet5(seed=0, device=args.device)
    loader = DataLoader(images, labels, batch_size=args.batch_size, shuffle=True, seed=0, device=args.device)
    opt = SGD(model, lr=0.05, momentum=0.9)
    start = time.perf_counter()
    history = fit(model, opt, loader, epochs=1, progress=False, log=None)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    result = {
        "dataset": args.dataset, "images": int(images.shape[0]), "batch_size": args.batch_size,
        "device": args.device, "seconds": seconds, "images_per_second": images.shape[0] / seconds,
        "peak_rss_mb_after_loading": after_load, "peak_rss_mb": peak, "limit_mb": args.limit_mb,
        "conv_chunk_bytes": cnnxp.get_device("cpu").blocks.conv_chunk_bytes,
        "last_epoch": {k: v for k, v in history.rows[-1].items() if isinstance(v, (int, float, str))}
        if getattr(history, "rows", None) else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if peak > args.limit_mb:
        print(f"peak resident memory {peak:.0f} MB is above the {args.limit_mb:.0f} MB limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
