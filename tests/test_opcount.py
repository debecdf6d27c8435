"""The GPU's cost model, measured here: operations, host-to-device copies and reads per training step."""

from __future__ import annotations

import numpy as np
import pytest

import cnnxp
from cnnxp.opcount import BUDGETS, count_ops, count_presets

strict = pytest.importorskip("array_api_strict")


def test_the_counter_counts_what_it_says():
    x = strict.asarray(np.arange(6.0).reshape(2, 3))
    with count_ops() as counts:
        y = x + 1.0  # one kernel
        v = y[0, :]  # a view: the same memory
        w = strict.reshape(y, (3, 2))  # a view too (contiguous)
        t = strict.matrix_transpose(y)  # a view
        c = strict.reshape(t, (6,))  # a copy: not contiguous
        y[1, :] = 0.0  # an update
        y += 2.0  # an in-place update
        host = float(strict.sum(v))  # one kernel, one read back
        moved = strict.asarray(np.ones(3))  # a copy from the host
    assert (counts.ops, counts.views, counts.kernels) == (8, 3, 5)
    assert counts.to_host == 1 and counts.to_device == 1
    assert counts.by_name["Array.__add__"] == 1 and counts.by_name["Array.__setitem__"] == 1
    assert host == 12.0  # v is a view of y's first row: 1, 2, 3, then += 2
    assert w.shape == (3, 2) and c.shape == (6,) and moved.shape == (3,)


def test_the_namespace_is_restored_after_the_block_even_on_error():
    plain_add, plain_zeros = type(strict.asarray(0)).__add__, strict.zeros
    with pytest.raises(RuntimeError), count_ops():
        raise RuntimeError("boom")
    assert type(strict.asarray(0)).__add__ is plain_add and strict.zeros is plain_zeros
    with count_ops() as counts:
        pass
    assert counts.ops == 0


@pytest.fixture(scope="module")
def preset_counts():
    return count_presets(batch_sizes=(64, 1024), models=("lenet5", "fashion"))


@pytest.mark.parametrize("model", ["lenet5", "fashion"])
def test_a_training_step_is_within_its_budget_at_any_batch_size(preset_counts, model):
    rows = [r for r in preset_counts if r["model"] == model]
    small, large = rows
    assert (small["batch"], large["batch"]) == (64, 1024)
    for key in ("ops", "kernels", "views", "to_device", "to_host"):
        assert small[key] == large[key], (key, small[key], large[key])  # no slicing by batch on this device
    budget = BUDGETS[model]
    assert small["kernels"] <= budget["kernels"], small
    assert small["views"] <= budget["views"], small
    assert small["to_device"] == 0 and small["to_host"] == 0


def test_the_readme_loop_is_sync_free():
    """The README's loop (the loss with its default label check) reads nothing back inside a step."""
    from cnnxp.data import DataLoader, load_dataset
    from cnnxp.losses import softmax_cross_entropy
    from cnnxp.models import lenet5
    from cnnxp.optim import Adam

    device = cnnxp.get_device(strict.Device("CPU_DEVICE"), xp=strict)
    images, labels = load_dataset("mnist-sample", "train")
    loader = DataLoader(images[:96], labels[:96], batch_size=32, seed=0, device=device)
    model = lenet5(seed=0, device=device)
    optimizer = Adam(model, lr=1e-3)
    with count_ops() as counts:
        for x, y in loader:  # three batches
            loss, grad = softmax_cross_entropy(model(x), y)
            model.backward(grad, need_input_grad=False)
            optimizer.step()
    assert counts.to_host == 0
    assert counts.to_device == 1  # the epoch's order, once, not once per batch
    assert np.isfinite(float(cnnxp.to_numpy(loss)))
