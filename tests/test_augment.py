"""cnnxp.data.augment: RandomShift, RandomAffine and parse_augment, on every backend.

RandomAffine is checked against a plain-Python bilinear reference that redraws the
transform's random numbers from a second generator with the same seed, and against
fixed draws (a stub generator) whose pictures are known: np.rot90, whole-pixel moves, zooms.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import cnnxp
from cnnxp.data import Compose, DataLoader, RandomAffine, RandomFlip, RandomShift, parse_augment
from cnnxp.data.augment import AFFINE_DEFAULTS

FORMS = ("expected none, N or shift:N (whole-pixel shifts), affine or affine:DEGREES,PIXELS,SCALE, flip, "
         "or several joined by + (shift:2+flip)")


class FixedDraws:
    """A stand-in for a numpy Generator whose ``uniform`` always returns its ``high`` (or ``low``) bound."""

    def __init__(self, pick: str = "high"):
        self.pick = pick

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.full(size, high if self.pick == "high" else low, dtype=np.float64)


def pixels(n=4, c=1, h=9, w=12, seed=0):
    """A float32 batch of pixel values 0..255 with no zeros (so background is easy to tell)."""
    return np.random.default_rng(seed).integers(1, 256, (n, c, h, w)).astype(np.float32)


def host(x):
    return np.asarray(cnnxp.to_numpy(x), dtype=np.float64)


def reference_affine(images, degrees, translate, scale, seed):
    """Plain loops: inverse-map every output pixel, bilinear interpolation, background 0 outside.

    The random numbers are drawn in the order RandomAffine draws them: the angles (n), the
    zooms (n), then the shifts (2, n), rows before columns.
    """
    rng = np.random.default_rng(seed)
    n, c, h, w = images.shape
    angles = np.deg2rad(rng.uniform(-degrees, degrees, n))
    zooms = rng.uniform(1.0 - scale, 1.0 + scale, n)
    shifts = rng.uniform(-translate, translate, (2, n))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = np.zeros(images.shape, dtype=np.float64)
    for i in range(n):
        cos, sin, zoom = math.cos(angles[i]), math.sin(angles[i]), zooms[i]
        ty, tx = shifts[0, i], shifts[1, i]
        for y in range(h):
            for x in range(w):
                # Undo the shift (in output pixels), then the rotation and the zoom about the centre.
                dy, dx = y - ty - cy, x - tx - cx
                sy = cy + (cos * dy + sin * dx) / zoom
                sx = cx + (-sin * dy + cos * dx) / zoom
                y0, x0 = math.floor(sy), math.floor(sx)
                fy, fx = sy - y0, sx - x0
                for yy, xx, weight in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                       (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[i, :, y, x] += weight * images[i, :, yy, xx].astype(np.float64)
    return out


# --- RandomAffine --------------------------------------------------------------------------------


def test_affine_with_zero_bounds_is_the_identity(backend):
    x = pixels(5, 2, 9, 12)
    out = RandomAffine(0, 0, 0)(backend.asarray(x, dtype=np.float32), np.random.default_rng(1))
    backend.assert_on_backend(out, dtype=backend.xp.float32)
    np.testing.assert_array_equal(cnnxp.to_numpy(out), x)


@pytest.mark.parametrize(("degrees", "translate", "scale", "seed"), [
    (30.0, 0.0, 0.0, 1), (0.0, 2.5, 0.0, 2), (0.0, 0.0, 0.3, 3), (25.0, 1.5, 0.2, 4), (170.0, 4.0, 0.5, 5),
])  # fmt: skip
def test_affine_matches_the_plain_reference(backend, degrees, translate, scale, seed):
    x = pixels(4, 2, 9, 12, seed=seed)  # not square, two channels moved alike
    out = RandomAffine(degrees, translate, scale)(backend.asarray(x, dtype=np.float32), np.random.default_rng(seed))
    backend.assert_on_backend(out, dtype=backend.xp.float32)
    assert tuple(out.shape) == x.shape
    expected = reference_affine(x, degrees, translate, scale, seed)
    np.testing.assert_allclose(host(out), expected, rtol=1e-5, atol=1e-3)
    assert not np.allclose(host(out), x)  # it did move something


def test_affine_draws_only_what_the_reference_draws():
    """After one batch the generator is where the reference's is: the next epoch's draws line up."""
    rng, other = np.random.default_rng(9), np.random.default_rng(9)
    RandomAffine(10, 1, 0.1)(pixels(6), rng)
    for size in (6, 6, (2, 6)):
        other.uniform(size=size)
    assert rng.bit_generator.state == other.bit_generator.state


@pytest.mark.parametrize(("pick", "k"), [("high", 1), ("low", -1)])
@pytest.mark.parametrize("size", [7, 8])
def test_affine_quarter_turn_is_rot90(backend, pick, k, size):
    """+90 degrees turns the picture counter-clockwise as displayed (row 0 at the top), like np.rot90."""
    x = pixels(3, 1, size, size, seed=size)
    out = RandomAffine(90, 0, 0)(backend.asarray(x, dtype=np.float32), FixedDraws(pick))
    np.testing.assert_allclose(host(out), np.rot90(x, k=k, axes=(2, 3)), atol=1e-3)


def _dot(h=9, w=9, at=(4, 4), value=255.0):
    x = np.zeros((1, 1, h, w), np.float32)
    x[0, 0][at] = value
    return x


def test_affine_translate_moves_a_pixel_down_and_right(backend):
    out = host(RandomAffine(0, 2, 0)(backend.asarray(_dot(at=(3, 4)), dtype=np.float32), FixedDraws("high")))[0, 0]
    expected = np.zeros((9, 9))
    expected[5, 6] = 255
    np.testing.assert_allclose(out, expected, atol=1e-3)
    out = host(RandomAffine(0, 2, 0)(backend.asarray(_dot(at=(3, 4)), dtype=np.float32), FixedDraws("low")))[0, 0]
    expected = np.zeros((9, 9))
    expected[1, 2] = 255
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_affine_half_pixel_shift_spreads_bilinearly(backend):
    out = host(RandomAffine(0, 0.5, 0)(backend.asarray(_dot(value=100), dtype=np.float32), FixedDraws()))[0, 0]
    expected = np.zeros((9, 9))
    expected[4:6, 4:6] = 25
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_affine_pixels_leaving_the_image_become_background(backend):
    x = np.full((1, 1, 6, 6), 200, np.float32)
    out = host(RandomAffine(0, 2, 0)(backend.asarray(x, dtype=np.float32), FixedDraws()))[0, 0]
    assert np.all(out[:2] == 0) and np.all(out[:, :2] == 0)
    np.testing.assert_allclose(out[2:, 2:], 200, atol=1e-3)


@pytest.mark.parametrize(("pick", "zoom"), [("high", 1.5), ("low", 0.5)])
def test_affine_zoom_moves_pixels_away_from_or_towards_the_centre(backend, pick, zoom):
    """A pixel 2 rows below the centre lands ``2 * zoom`` rows below it; the centre stays."""
    x = _dot(at=(6, 4)) + _dot(at=(4, 4), value=50)  # 9x9: the centre is (4, 4)
    out = host(RandomAffine(0, 0, 0.5)(backend.asarray(x, dtype=np.float32), FixedDraws(pick)))[0, 0]
    assert out[4 + round(2 * zoom), 4] == pytest.approx(255, abs=1e-3)
    assert out[4, 4] == pytest.approx(50, abs=1e-3)
    if zoom > 1:  # (6, 4) reads source row 4 + 2/1.5: a third of row 6, two thirds of the empty row 5
        assert out[6, 4] == pytest.approx(255 / 3, abs=1e-3)


def test_affine_shifts_in_output_pixels_after_rotating_and_zooming(backend):
    """As in torchvision: a shift of 2 moves the picture by 2 pixels whatever the zoom and rotation."""
    x = _dot(h=13, w=13, at=(6, 6))  # the centre: rotation and zoom keep it where it is
    out = host(RandomAffine(90, 2, 0.5)(backend.asarray(x, dtype=np.float32), FixedDraws("high")))[0, 0]
    assert np.unravel_index(np.argmax(out), out.shape) == (8, 8)
    assert out[8, 8] == pytest.approx(255, abs=1e-3)


def test_affine_same_seed_same_pictures_on_every_backend(backend):
    x = pixels(8, 1, 28, 28, seed=11)
    transform = RandomAffine(*AFFINE_DEFAULTS)
    on_host = cnnxp.to_numpy(transform(x, np.random.default_rng(5)))
    here = transform(backend.asarray(x, dtype=np.float32), np.random.default_rng(5))
    backend.assert_on_backend(here, dtype=backend.xp.float32)
    np.testing.assert_allclose(host(here), on_host, rtol=1e-6, atol=1e-4)
    other = cnnxp.to_numpy(transform(x, np.random.default_rng(6)))
    assert not np.allclose(other, on_host)
    # every image gets its own draw: identical inputs come out different
    same = np.repeat(x[:1], 8, axis=0)
    out = host(transform(backend.asarray(same, dtype=np.float32), np.random.default_rng(5)))
    assert len({out[i].tobytes() for i in range(8)}) == 8


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"degrees": -1}, ValueError, "RandomAffine degrees must be a finite number in [0, 180), got -1.0"),
    ({"degrees": 180}, ValueError, "RandomAffine degrees must be a finite number in [0, 180), got 180.0"),
    ({"degrees": 400.5}, ValueError, "RandomAffine degrees must be a finite number in [0, 180), got 400.5"),
    ({"degrees": float("nan")}, ValueError, "RandomAffine degrees must be a finite number in [0, 180), got nan"),
    ({"translate": -0.5}, ValueError, "RandomAffine translate must be a finite number in [0, inf), got -0.5"),
    ({"translate": float("nan")}, ValueError, "RandomAffine translate must be a finite number in [0, inf), got nan"),
    ({"translate": float("inf")}, ValueError, "RandomAffine translate must be a finite number in [0, inf), got inf"),
    ({"scale": 1}, ValueError, "RandomAffine scale must be a finite number in [0, 1), got 1.0"),
    ({"scale": 1.5}, ValueError, "RandomAffine scale must be a finite number in [0, 1), got 1.5"),
    ({"scale": -0.1}, ValueError, "RandomAffine scale must be a finite number in [0, 1), got -0.1"),
    ({"degrees": "10"}, TypeError, "RandomAffine degrees must be a number, got '10' (str)"),
    ({"translate": None}, TypeError, "RandomAffine translate must be a number, got None (NoneType)"),
    ({"scale": True}, TypeError, "RandomAffine scale must be a number, got True (bool)"),
    ({"degrees": False}, TypeError, "RandomAffine degrees must be a number, got False (bool)"),
])  # fmt: skip
def test_affine_rejects_bad_bounds(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        RandomAffine(**kwargs)


def test_affine_accepts_numpy_numbers_and_keeps_floats():
    t = RandomAffine(np.int64(10), np.float32(1.5), 0)
    assert (t.degrees, t.translate, t.scale) == (10.0, 1.5, 0.0)
    assert all(type(v) is float for v in (t.degrees, t.translate, t.scale))
    assert repr(t) == "RandomAffine(degrees=10, translate=1.5, scale=0)"
    assert RandomAffine(179.5, 0, 0.99).degrees == 179.5


# --- RandomShift ---------------------------------------------------------------------------------


def _shifted(img, dy, dx):
    """``img`` moved by (dy, dx) whole pixels (down, right), background 0 moving in."""
    h, w = img.shape[-2:]
    out = np.zeros_like(img)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_shift_keeps_every_image_a_shifted_copy(backend):
    s = 2
    x = pixels(40, 2, 7, 9, seed=3)
    out = host(RandomShift(s)(backend.asarray(x, dtype=np.float32), np.random.default_rng(8)))
    # The documented draw: offsets in 0..2s per image (rows, then columns); the move is s - offset.
    offsets = np.random.default_rng(8).integers(0, 2 * s + 1, size=(40, 2))
    moves = set()
    for i in range(40):
        dy, dx = s - offsets[i]
        np.testing.assert_array_equal(out[i], _shifted(x[i], int(dy), int(dx)), err_msg=f"image {i}")
        moves.add((int(dy), int(dx)))
    assert len(moves) > 15  # 25 possible moves, each image its own


@pytest.mark.parametrize("s", [9, 12, 10**6])
def test_shift_beyond_the_image_is_background_and_cheap(s):
    """Moves of the image's size or more leave background; the padding stays image-sized, so a
    million pixels costs what nine do (it used to pad by the bound: gigabytes)."""
    x = pixels(30, 1, 7, 9, seed=4)
    out = RandomShift(s)(x.astype(np.float32), np.random.default_rng(5))
    moves = s - np.random.default_rng(5).integers(0, 2 * s + 1, size=(30, 2))
    h, w = x.shape[-2:]
    for i, (dy, dx) in enumerate(moves):
        gone = abs(dy) >= h or abs(dx) >= w
        expected = np.zeros_like(x[i]) if gone else _shifted(x[i], int(dy), int(dx))
        np.testing.assert_array_equal(out[i], expected, err_msg=f"image {i}")


def test_affine_shifts_too_large_for_float32_give_background():
    x = pixels(8, 1, 28, 28, seed=6).astype(np.float32)
    for translate in (1e39, 1e300):
        out = RandomAffine(10, translate, 0.1)(x, np.random.default_rng(7))
        assert np.all(out == 0)
    # below the clamp nothing changes: a shift of 300 pixels is the plain reference's
    np.testing.assert_allclose(RandomAffine(10, 300.0, 0.1)(x, np.random.default_rng(7)),
                               reference_affine(x, 10, 300.0, 0.1, 7), rtol=1e-5, atol=1e-3)


def test_shift_zero_returns_the_batch_and_draws_nothing():
    x = pixels(3)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert RandomShift(0)(x, rng) is x
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("value", [-1, 1.5, True, "2", None])
def test_shift_rejects_bad_pixels(value):
    if value == -1:
        error, message = ValueError, "RandomShift pixels must be an int >= 0, got -1"
    else:
        error, message = TypeError, f"RandomShift pixels must be an int, got {value!r} ({type(value).__name__})"
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        RandomShift(value)


def test_shift_spec_and_repr():
    assert RandomShift(np.int64(3)).spec() == "shift:3" and repr(RandomShift(3)) == "RandomShift(3)"


# --- RandomFlip and Compose ---------------------------------------------------------------------


def test_flip_mirrors_exactly_the_drawn_images(backend):
    images = pixels(n=6)
    flip = RandomFlip()
    draws = flip.draw(np.random.default_rng(3), 6)
    assert draws.shape == (6, 1) and set(draws[:, 0]) == {0, 1}  # this seed mirrors some, not all
    out = flip.apply(backend.asarray(images), draws)
    backend.assert_on_backend(out)
    expected = np.where(draws[:, 0, None, None, None] == 1, images[..., ::-1], images)
    np.testing.assert_array_equal(host(out), expected)
    mirrored = flip(backend.asarray(images), np.random.default_rng(3))  # call = apply(draw)
    np.testing.assert_array_equal(host(mirrored), expected)


def test_flip_mirrors_about_half_of_many_images():
    draws = RandomFlip().draw(np.random.default_rng(0), 10_000)
    assert 4_800 < int(draws.sum()) < 5_200


def test_compose_applies_in_order_with_each_transforms_own_draws(backend):
    images = pixels(n=5)
    shift, flip = RandomShift(2), RandomFlip()
    both = Compose(shift, flip)
    draws = both.draw(np.random.default_rng(9), 5)
    rng = np.random.default_rng(9)  # the same numbers, drawn transform by transform
    by_hand = flip.apply(shift.apply(images, shift.draw(rng, 5)), flip.draw(rng, 5))
    assert draws.shape == (5, shift.draws + flip.draws)
    np.testing.assert_array_equal(host(both.apply(backend.asarray(images), draws)), by_hand)
    # a data-parallel loader hands each process its rows of the draws: rows apply alone alike
    part = both.apply(backend.asarray(images[2:4]), draws[2:4])
    np.testing.assert_array_equal(host(part), by_hand[2:4])


def test_compose_spec_round_trips_and_refuses_what_cannot_draw():
    t = parse_augment("Shift:2 + FLIP")
    assert type(t) is Compose and t.spec() == "shift:2+flip" and repr(t) == "Compose(RandomShift(2), RandomFlip())"
    assert parse_augment(t.spec()).spec() == "shift:2+flip"
    assert type(parse_augment("flip")) is RandomFlip and parse_augment("none+flip").spec() == "flip"
    assert parse_augment("affine:5,1,0.1+flip").spec() == "affine:5,1,0.1+flip"
    with pytest.raises(TypeError, match=r"^Compose takes one or more transforms with draw, apply and draws"):
        Compose(lambda images, rng: images)
    with pytest.raises(TypeError, match=r"^Compose takes one or more transforms"):
        Compose()


# --- parse_augment -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["none", "NONE", " none ", "0", 0, "shift:0", "Shift:0"])
def test_parse_augment_off(text):
    assert parse_augment(text) is None


@pytest.mark.parametrize(("text", "kind", "values", "spec"), [
    ("1", RandomShift, (1,), "shift:1"),
    (3, RandomShift, (3,), "shift:3"),
    ("12", RandomShift, (12,), "shift:12"),
    ("shift:2", RandomShift, (2,), "shift:2"),
    (" SHIFT:4 ", RandomShift, (4,), "shift:4"),
    ("affine", RandomAffine, (12.0, 2.0, 0.12), "affine:12,2,0.12"),
    ("Affine", RandomAffine, (12.0, 2.0, 0.12), "affine:12,2,0.12"),
    ("affine:10,1.5,0.1", RandomAffine, (10.0, 1.5, 0.1), "affine:10,1.5,0.1"),
    ("affine:0,0,0", RandomAffine, (0.0, 0.0, 0.0), "affine:0,0,0"),
    ("affine: 5 , 0.25 ,0.05", RandomAffine, (5.0, 0.25, 0.05), "affine:5,0.25,0.05"),
    ("affine:12.0,2.00,1.2e-1", RandomAffine, (12.0, 2.0, 0.12), "affine:12,2,0.12"),
])  # fmt: skip
def test_parse_augment_forms_and_spec_round_trip(text, kind, values, spec):
    t = parse_augment(text)
    assert type(t) is kind
    if kind is RandomShift:
        assert (t.pixels,) == values
    else:
        assert (t.degrees, t.translate, t.scale) == values
    assert t.spec() == spec
    again = parse_augment(t.spec())
    assert type(again) is kind and again.spec() == spec and vars(again) == vars(t)


def test_affine_default_spec_is_the_documented_recipe():
    assert AFFINE_DEFAULTS == (12.0, 2.0, 0.12)
    assert RandomAffine(*AFFINE_DEFAULTS).spec() == "affine:12,2,0.12"


@pytest.mark.parametrize("text", [
    "bogus", "", "shift", "shift:", "shift:-1", "-1", "1.5", "shift:1.5", "affine:", "affine:1,2",
    "affine:1,2,0.1,4", "affine1,2,0.1", "rotate:10", "flips", "shift:2+", "+flip", "shift:2+blur",
])  # fmt: skip
def test_parse_augment_rejects_other_forms(text):
    shown = str(text).strip().lower()
    with pytest.raises(ValueError, match=f"^{re.escape(f'bad augmentation {shown!r}: {FORMS}')}$"):
        parse_augment(text)


@pytest.mark.parametrize(("text", "reason"), [
    ("affine:200,0,0", "RandomAffine degrees must be a finite number in [0, 180), got 200.0"),
    ("affine:10,-1,0", "RandomAffine translate must be a finite number in [0, inf), got -1.0"),
    ("affine:10,1,1", "RandomAffine scale must be a finite number in [0, 1), got 1.0"),
    ("affine:nan,1,0.1", "RandomAffine degrees must be a finite number in [0, 180), got nan"),
])  # fmt: skip
def test_parse_augment_names_the_bad_bound(text, reason):
    with pytest.raises(ValueError, match=f"^{re.escape(f'bad augmentation {text!r}: {reason}')}$"):
        parse_augment(text)


def test_parse_augment_non_numbers_in_affine():
    with pytest.raises(ValueError, match=r"^bad augmentation 'affine:a,1,0\.1': "):
        parse_augment("affine:a,1,0.1")


@pytest.mark.parametrize("transform", [RandomAffine(179.999999, 0, 0), RandomAffine(0, 0, 0.9999999)])
def test_spec_of_a_bound_near_its_limit_parses_back(transform):
    again = parse_augment(transform.spec())
    assert (again.degrees, again.translate, again.scale) == (transform.degrees, transform.translate, transform.scale)


# --- in the DataLoader ---------------------------------------------------------------------------


def _digits(n=20, h=10, w=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w)).astype(np.uint8)
    return images, (np.arange(n) * 7) % 10


def test_loader_with_affine_matches_the_transform_by_hand(backend):
    """Epoch 1: the order is the seed's first permutation, then each batch's draws, in batch order."""
    images, labels = _digits(20)
    transform = RandomAffine(15, 1.5, 0.1)
    loader = DataLoader(images, labels, batch_size=8, seed=4, device=backend.device, augment=transform)
    assert loader.augment is transform and "augment=RandomAffine(degrees=15" in repr(loader)
    rng = np.random.default_rng(4)
    order = rng.permutation(20)
    batches = list(loader)
    assert len(batches) == 3
    for b, (x, y) in enumerate(batches):
        backend.assert_on_backend(x, dtype=backend.xp.float32)
        backend.assert_on_backend(y, dtype=backend.xp.int64)
        rows = order[8 * b:8 * (b + 1)]
        np.testing.assert_array_equal(cnnxp.to_numpy(y), labels[rows])  # labels untouched
        by_hand = transform(images[rows][:, None].astype(np.float32), rng)
        expected = (by_hand / 255.0 - cnnxp.data.NORMALIZE_MEAN) / cnnxp.data.NORMALIZE_STD
        np.testing.assert_allclose(host(x), expected, rtol=1e-5, atol=1e-5)


def test_loader_random_shift_is_augment_random_shift(backend):
    images, labels = _digits(20)
    a = DataLoader(images, labels, batch_size=6, seed=2, device=backend.device, random_shift=2)
    b = DataLoader(images, labels, batch_size=6, seed=2, device=backend.device, augment=RandomShift(2))
    assert repr(a.augment) == "RandomShift(2)"
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(cnnxp.to_numpy(xa), cnnxp.to_numpy(xb))
            np.testing.assert_array_equal(cnnxp.to_numpy(ya), cnnxp.to_numpy(yb))


def test_loader_resumes_augmented_epochs_exactly(backend):
    images, labels = _digits(30)

    def make(seed):
        return DataLoader(images, labels, batch_size=8, seed=seed, device=backend.device,
                          augment=RandomAffine(*AFFINE_DEFAULTS))

    loader = make(6)
    list(loader)
    state = loader.state_dict()
    following = [[(cnnxp.to_numpy(x), cnnxp.to_numpy(y)) for x, y in loader] for _ in range(2)]
    resumed = make(99)
    resumed.load_state_dict(state)
    for epoch in following:
        again = [(cnnxp.to_numpy(x), cnnxp.to_numpy(y)) for x, y in resumed]
        assert len(again) == len(epoch)
        for (xa, ya), (xb, yb) in zip(epoch, again, strict=True):
            np.testing.assert_array_equal(xb, xa)
            np.testing.assert_array_equal(yb, ya)
    assert not np.array_equal(following[0][0][0], following[1][0][0])


def test_loader_without_shuffle_still_augments_each_epoch_differently():
    images, labels = _digits(8)
    loader = DataLoader(images, labels, batch_size=8, shuffle=False, augment=RandomAffine(20, 1, 0.1))
    (x1, y1), (x2, y2) = next(iter(loader)), next(iter(loader))
    np.testing.assert_array_equal(y1, labels)
    np.testing.assert_array_equal(y2, labels)
    assert not np.array_equal(x1, x2)


def test_loader_augment_errors():
    images, labels = _digits(4)
    with pytest.raises(ValueError, match=r"^DataLoader: give random_shift or augment, not both "
                                         r"\(random_shift=N is augment=RandomShift\(N\)\)$"):
        DataLoader(images, labels, 2, random_shift=1, augment=RandomShift(1))
    for bad in ("affine", 3, [RandomShift(1)]):
        with pytest.raises(TypeError, match=f"^{re.escape(f'DataLoader augment must be a callable transform(pixels, rng), got {bad!r}')}$"):
            DataLoader(images, labels, 2, augment=bad)
    # random_shift=0 is "off", so an augment beside it is fine
    assert isinstance(DataLoader(images, labels, 2, random_shift=0, augment=RandomShift(1)).augment, RandomShift)
