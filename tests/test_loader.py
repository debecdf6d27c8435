"""DataLoader: coverage, orders, determinism, resume, errors, and batches on every backend.

The labels of the toy datasets are the sample indices, so a batch's labels say
exactly which samples it holds.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import cnnxp
from cnnxp.data import NORMALIZE_MEAN, NORMALIZE_STD, DataLoader


def toy(n: int = 23, h: int = 28, w: int = 28):
    """Images whose pixels encode their index (mod 256), labels equal to the index."""
    images = (np.arange(n, dtype=np.int64)[:, None, None] + np.zeros((1, h, w), np.int64)) % 256
    return images.astype(np.uint8), np.arange(n, dtype=np.int64)


def epoch_order(loader) -> list[int]:
    return [int(v) for _, y in loader for v in cnnxp.to_numpy(y)]


def test_every_sample_once_per_epoch_and_new_order_each_epoch():
    loader = DataLoader(*toy(23), batch_size=5, seed=3)
    orders = [epoch_order(loader) for _ in range(3)]
    for order in orders:
        assert sorted(order) == list(range(23))
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert loader.epoch == 3


def test_same_seed_same_orders_different_seed_different_orders():
    a = DataLoader(*toy(50), batch_size=8, seed=7)
    b = DataLoader(*toy(50), batch_size=8, seed=7)
    c = DataLoader(*toy(50), batch_size=8, seed=8)
    for _ in range(2):
        order_a = epoch_order(a)
        assert order_a == epoch_order(b)
        assert order_a != epoch_order(c)


def test_order_is_the_seeded_host_permutation():
    """The documented contract: epoch k uses the k-th permutation of default_rng(seed)."""
    loader = DataLoader(*toy(30), batch_size=4, seed=11)
    rng = np.random.default_rng(11)
    for _ in range(2):
        assert epoch_order(loader) == rng.permutation(30).tolist()


def test_no_shuffle_keeps_dataset_order():
    loader = DataLoader(*toy(10), batch_size=4, shuffle=False)
    assert epoch_order(loader) == list(range(10))
    assert epoch_order(loader) == list(range(10))


@pytest.mark.parametrize("shuffle", [True, False])
def test_last_partial_batch_and_drop_last(shuffle):
    images, labels = toy(10)
    keep = DataLoader(images, labels, batch_size=4, shuffle=shuffle)
    assert len(keep) == 3
    assert [int(y.shape[0]) for _, y in keep] == [4, 4, 2]
    drop = DataLoader(images, labels, batch_size=4, shuffle=shuffle, drop_last=True)
    assert len(drop) == 2
    batches = list(drop)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 1, 28, 28)] * 2
    assert len({int(v) for _, y in batches for v in cnnxp.to_numpy(y)}) == 8


@pytest.mark.parametrize(("n", "batch_size", "drop_last", "expected"), [
    (10, 5, False, 2), (10, 5, True, 2), (11, 5, False, 3), (11, 5, True, 2),
    (3, 5, False, 1), (3, 5, True, 0), (1, 1, False, 1),
])  # fmt: skip
def test_len(n, batch_size, drop_last, expected):
    loader = DataLoader(*toy(n), batch_size=batch_size, drop_last=drop_last)
    assert len(loader) == expected == len(list(loader))
    assert loader.num_samples == n and loader.batch_size == batch_size


def test_normalisation_values():
    images = np.array([[[0, 255], [128, 1]]], dtype=np.uint8)
    (x, y), *_ = DataLoader(images, np.array([3]), batch_size=1)
    expected = (images.astype(np.float64) / 255 - NORMALIZE_MEAN) / NORMALIZE_STD
    np.testing.assert_allclose(cnnxp.to_numpy(x)[:, 0], expected, rtol=1e-6)
    assert (NORMALIZE_MEAN, NORMALIZE_STD) == (0.1307, 0.3081)


def test_accepts_channel_axis_and_keeps_pixels():
    images, labels = toy(6, 5, 7)
    flat = DataLoader(images, labels, batch_size=6, shuffle=False)
    nchw = DataLoader(images[:, None], labels, batch_size=6, shuffle=False)
    (x1, _), (x2, _) = next(iter(flat)), next(iter(nchw))
    assert tuple(x1.shape) == (6, 1, 5, 7)
    np.testing.assert_array_equal(cnnxp.to_numpy(x1), cnnxp.to_numpy(x2))
    pixels = cnnxp.to_numpy(x1)[:, 0, 2, 3] * NORMALIZE_STD + NORMALIZE_MEAN
    np.testing.assert_allclose(pixels * 255, np.arange(6), atol=1e-4)


def test_state_dict_round_trip_through_npz():
    images, labels = toy(40)
    loader = DataLoader(images, labels, batch_size=6, seed=5)
    epoch_order(loader)
    state = loader.state_dict()
    expected = [epoch_order(loader) for _ in range(2)]

    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        restored = {key: npz[key] for key in npz.files}
    resumed = DataLoader(images, labels, batch_size=6, seed=999)
    resumed.load_state_dict(restored)
    assert resumed.epoch == 1 and resumed.seed == 5
    assert [epoch_order(resumed) for _ in range(2)] == expected
    json.loads(state["rng_state"])  # a JSON string, storable without pickle


def test_state_dict_of_fresh_loader_reproduces_first_epoch():
    a = DataLoader(*toy(12), batch_size=5, seed=2)
    b = DataLoader(*toy(12), batch_size=5, seed=0)
    b.load_state_dict(a.state_dict())
    assert epoch_order(a) == epoch_order(b)


def test_load_state_dict_errors():
    loader = DataLoader(*toy(4), batch_size=2)
    with pytest.raises(ValueError, match="missing key 'rng_state'"):
        loader.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="bad generator state"):
        loader.load_state_dict({"epoch": 1, "rng_state": json.dumps({"bit_generator": "MT19937"})})


def test_iter_draws_the_order_immediately():
    """One iter() is one epoch, even before its first batch is taken."""
    loader = DataLoader(*toy(9), batch_size=3, seed=1)
    it = iter(loader)
    assert loader.epoch == 1
    state = loader.state_dict()
    rest = [int(v) for _, y in it for v in cnnxp.to_numpy(y)]
    other = DataLoader(*toy(9), batch_size=3, seed=1)
    epoch_order(other)
    assert other.state_dict()["rng_state"] == state["rng_state"]
    assert sorted(rest) == list(range(9))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"images": np.zeros((5, 28, 28), np.uint8), "labels": np.zeros(4, np.int64)}, ValueError,
     "5 images but 4 labels"),
    ({"batch_size": 0}, ValueError, r"^DataLoader batch_size must be a positive int, got 0$"),
    ({"batch_size": 2.5}, TypeError, r"^DataLoader batch_size must be an int, got 2\.5 \(float\)$"),
    ({"batch_size": True}, TypeError, r"^DataLoader batch_size must be an int, got True \(bool\)$"),
    ({"seed": -1}, ValueError, r"^DataLoader seed must be an int >= 0, got -1$"),
    ({"images": np.zeros((5, 28 * 28), np.uint8)}, ValueError, r"shape \(N, H, W\) or \(N, C, H, W\), got \(5, 784\)"),
    ({"images": np.zeros((5, 32, 32, 3), np.uint8)}, ValueError,
     r"got \(5, 32, 32, 3\), which looks channels-last \(N, H, W, C\): pass images.transpose\(0, 3, 1, 2\)$"),
    ({"images": np.zeros((5, 28, 28), np.int32)}, TypeError, r"uint8 images \(0..255\) or floating-point ones \(0..1\), got int32"),
    ({"images": np.zeros((5, 3, 8, 8), np.uint8), "mean": (0.5, 0.5)}, ValueError,
     r"^DataLoader mean needs one value or one per channel \(3\), got 2$"),
    ({"labels": np.zeros((5, 1), np.int64)}, ValueError, r"labels of shape \(N,\), got \(5, 1\)"),
    ({"labels": np.zeros(5, np.float32)}, TypeError, "integer class labels"),
    ({"device": "tpu"}, ValueError, "unknown device 'tpu'"),
])  # fmt: skip
def test_bad_arguments(kwargs, error, message):
    """One policy (cnnxp._checks): TypeError for a wrong type (dtype included), ValueError for a wrong value."""
    args = {"images": np.zeros((5, 28, 28), np.uint8), "labels": np.zeros(5, np.int64), "batch_size": 2}
    args.update(kwargs)
    with pytest.raises(error, match=message):
        DataLoader(**args)


def test_channels_and_per_channel_normalisation():
    """Three-channel uint8 images, per-channel mean and std, as torchvision's Normalize computes them."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    x, y = next(iter(DataLoader(images, np.arange(6), batch_size=6, shuffle=False, mean=mean, std=std)))
    expected = (images / np.float32(255) - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    assert x.shape == (6, 3, 5, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    torch = pytest.importorskip("torch")
    reference = (torch.from_numpy(images).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    np.testing.assert_allclose(x, reference.numpy(), rtol=1e-6, atol=1e-6)


def test_float_images_are_taken_as_0_to_1():
    images = np.random.default_rng(1).random((4, 2, 3, 3))  # float64, one value per pixel in [0, 1)
    x, _ = next(iter(DataLoader(images, np.arange(4), batch_size=4, shuffle=False, mean=0.5, std=0.25)))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, ((images - 0.5) / 0.25).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_normalize_matches_the_loader():
    images = np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x, _ = next(iter(DataLoader(images, np.arange(5), batch_size=5, shuffle=False)))
    np.testing.assert_array_equal(cnnxp.data.normalize(images), x)
    rgb = np.random.default_rng(3).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    out = cnnxp.data.normalize(rgb, mean=(0.1, 0.2, 0.3), std=(1, 2, 4))
    np.testing.assert_allclose(out[:, 2], (rgb[:, 2] / 255 - 0.3) / 4, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"^normalize std needs one value or one per channel \(3\), got 2$"):
        cnnxp.data.normalize(rgb, std=(1, 2))


def test_a_three_channel_dataset_trains():
    """Colour images through DataLoader and fit: a network with 3 input channels learns which channel is bright."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 300)
    images = rng.integers(0, 60, (300, 3, 8, 8)).astype(np.uint8)
    images[np.arange(300), labels] += 150
    from cnnxp.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from cnnxp.model import Sequential
    from cnnxp.optim import Adam
    from cnnxp.train import evaluate, fit
    model = Sequential([Conv2D(3, 4, 3, padding=1, seed=0), MaxPool2D(2), ReLU(), Flatten(), Dense(4 * 4 * 4, 3, seed=1)])
    loader = DataLoader(images[:240], labels[:240], batch_size=16, seed=0, mean=(0.3,) * 3, std=(0.3,) * 3)
    fit(model, Adam(model, lr=0.01), loader, epochs=3, progress=False, log=None)
    test = DataLoader(images[240:], labels[240:], batch_size=30, shuffle=False, mean=(0.3,) * 3, std=(0.3,) * 3)
    assert evaluate(model, test).accuracy >= 0.95


def test_device_attribute_and_repr():
    loader = DataLoader(*toy(4), batch_size=2, device="cpu")
    assert loader.device == cnnxp.get_device("cpu")
    assert "device='cpu'" in repr(loader)


def test_foreign_device_object_with_xp():
    strict = pytest.importorskip("array_api_strict")
    loader = DataLoader(*toy(4), batch_size=2, device=strict.Device("device1"), xp=strict)
    x, y = next(iter(loader))
    assert x.device == strict.Device("device1") and y.dtype == strict.int64


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_on_every_backend(backend, shuffle):
    images, labels = toy(10)
    loader = DataLoader(images, labels, batch_size=4, shuffle=shuffle, seed=4, device=backend.device)
    assert loader.device == backend.device
    batches = list(loader)
    assert len(batches) == 3
    for x, y in batches:
        backend.assert_on_backend(x, dtype=backend.xp.float32)
        backend.assert_on_backend(y, dtype=backend.xp.int64)
        assert tuple(x.shape) == (int(y.shape[0]), 1, 28, 28)
    # The same seed gives the same order on this backend as on the host.
    host = DataLoader(images, labels, batch_size=4, shuffle=shuffle, seed=4)
    assert [int(v) for _, y in batches for v in cnnxp.to_numpy(y)] == epoch_order(host)
    x0 = cnnxp.to_numpy(batches[0][0])
    y0 = cnnxp.to_numpy(batches[0][1])
    expected = (images[y0][:, None].astype(np.float32) / 255 - NORMALIZE_MEAN) / NORMALIZE_STD
    np.testing.assert_allclose(x0, expected, rtol=1e-6, atol=1e-6)


def test_accepts_arrays_from_a_backend(backend):
    images, labels = toy(6)
    loader = DataLoader(
        backend.asarray(images, dtype=np.uint8), backend.asarray(labels), batch_size=6, device="cpu"
    )
    x, y = next(iter(loader))
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and y.dtype == np.int64


def test_random_shift_translates_each_image(backend):
    """Each image moves by its own offset of at most ``s`` pixels, filled with background; labels stay."""
    s = 2
    images = np.zeros((40, 9, 9), np.uint8)
    images[:, 4, 4] = 255  # one bright pixel in the centre of each image
    labels = np.arange(40) % 10
    loader = DataLoader(images, labels, batch_size=16, shuffle=False, random_shift=s, seed=3, device=backend.device)
    offsets, start = set(), 0
    for x, y in loader:
        backend.assert_on_backend(x, dtype=backend.xp.float32)
        assert cnnxp.to_numpy(y).tolist() == labels[start:start + y.shape[0]].tolist()
        start += y.shape[0]
        a = cnnxp.to_numpy(x)[:, 0]
        background = (0.0 - NORMALIZE_MEAN) / NORMALIZE_STD
        for img in a:
            bright = np.argwhere(img > 0)
            assert len(bright) == 1  # the pixel moved, nothing else appeared
            dy, dx = bright[0] - 4
            assert abs(dy) <= s and abs(dx) <= s
            offsets.add((int(dy), int(dx)))
            assert np.allclose(img[img <= 0], background)
    assert len(offsets) > 10  # many different shifts, not one per batch
    again = [cnnxp.to_numpy(x) for x, _ in DataLoader(images, labels, batch_size=16, shuffle=False,
                                                        random_shift=s, seed=3)]
    np.testing.assert_array_equal(np.concatenate(again)[:, 0], np.concatenate(
        [cnnxp.to_numpy(x) for x, _ in DataLoader(images, labels, batch_size=16, shuffle=False,
                                                  random_shift=s, seed=3, device=backend.device)])[:, 0])


def test_random_shift_rejects_negative():
    with pytest.raises(ValueError, match=r"^DataLoader random_shift must be an int >= 0, got -1$"):
        DataLoader(*toy(4), batch_size=2, random_shift=-1)
