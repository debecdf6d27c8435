"""The processes tests/test_distributed.py starts: ``mpiexec -n 2 python -m mpi4py tests/mpi_worker.py JOB OUT``.

Also run in one plain process for the reference. ``JOB`` is a JSON object: the model, optimizer,
dtype, number of samples, batch size and epochs, the device and the communicator's backend, and
the faults to play (a rank that raises, a rank that stalls, a per-rank seed, local BatchNorm).
Each process writes ``OUT.<rank>.npz``: its state dict, its history and its sharded evaluation
(and, for ``"collectives": true``, what the communicator's collectives gave on the job's device).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import cnnxp  # noqa: E402
from cnnxp import distributed  # noqa: E402
from cnnxp.data import DataLoader, RandomAffine, load_dataset  # noqa: E402
from cnnxp.models import fashion_cnn, lenet5  # noqa: E402
from cnnxp.optim import SGD, Adam  # noqa: E402
from cnnxp.train import evaluate, fit  # noqa: E402


def main(job: dict, out: str, comm) -> None:
    x, y = load_dataset("mnist-sample", "train")
    x, y = x[:job["samples"]], y[:job["samples"]]
    xt, yt = load_dataset("mnist-sample", "test")
    xt, yt = xt[:job.get("test_samples", 150)], yt[:job.get("test_samples", 150)]
    device = job.get("device", "cpu")
    model = (fashion_cnn if job["model"] == "fashion" else lenet5)(seed=0).to(device, dtype=job["dtype"])
    opt = Adam(model, 1e-3) if job["optimizer"] == "adam" else SGD(model, 0.01, momentum=0.9)
    augment = RandomAffine(10, 1, 0.1) if job.get("augment") else None
    seed = 3 + (comm.rank if job.get("seed_per_rank") else 0)
    loader = DataLoader(x, y, job["batch"], seed=seed, augment=augment, comm=comm, device=device)
    test_loader = DataLoader(xt, yt, 64, shuffle=False, comm=comm, device=device)
    checked = collectives(comm, model.device) if job.get("collectives") else {}
    if job.get("fault") == "stall_before" and comm.rank == 1:
        time.sleep(3600)  # before the optimizer is wrapped: the others wait in its exchange of objects
    if comm.size > 1 or job.get("wrap"):  # "wrap": through the communicator even alone (NCCL with one process)
        opt = distributed.DistributedOptimizer(opt, comm, local_batchnorm=job.get("local_batchnorm", False))
    fault = job.get("fault")
    if fault and comm.rank == 1:
        original = opt.step

        def step():
            original()
            if fault == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            time.sleep(3600)  # "stall": the others must not wait forever

        opt.step = step
    history = fit(model, opt, loader, job["epochs"], progress=False, log=None)
    result = evaluate(model, test_loader, return_predictions=True)
    arrays = {f"model/{k}": cnnxp.to_numpy(v) for k, v in model.state_dict().items()}
    np.savez(f"{out}.{comm.rank}.npz", **arrays, **checked, train_loss=np.array([r["train_loss"] for r in history]),
             eval=np.array([result.loss, result.accuracy, result.num_samples]), confusion=result.confusion,
             predictions=result.predictions, labels=result.labels)


def collectives(comm, device) -> dict:
    """Each dtype's allreduce and broadcast on ``device``, on a stream other than the default one:
    what came back, next to what should have (the sum over ranks of ``rank + 1 + arange``)."""
    xp, n, size = device.xp, 1000, comm.size
    results = {}
    with device.activate():
        stream = getattr(getattr(xp, "cuda", None), "Stream", None)
        context = stream(non_blocking=True) if stream is not None else None
        if context is not None:
            context.__enter__()
        for dtype in ("float32", "float64", "int32", "int64"):
            x = xp.arange(n, dtype=getattr(xp, dtype)) + (comm.rank + 1)
            summed = comm.allreduce(x)
            sent = comm.broadcast(xp.full(n, comm.rank + 7, dtype=getattr(xp, dtype)), root=0)
            results[f"allreduce/{dtype}"] = cnnxp.to_numpy(summed)
            results[f"broadcast/{dtype}"] = cnnxp.to_numpy(sent)
            expected = np.arange(n, dtype=dtype) * size + size * (size + 1) // 2
            results[f"expected/{dtype}"] = expected
        if context is not None:
            context.__exit__(None, None, None)
    return results


if __name__ == "__main__":
    comm = distributed.init(json.loads(sys.argv[1]).get("backend", "auto"))
    try:
        main(json.loads(sys.argv[1]), sys.argv[2], comm)
    except Exception as exc:  # as train.py does: say it, then end every process (none is left waiting)
        print(f"rank {comm.rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        comm.abort(1)
