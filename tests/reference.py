"""Independent references for the tests: plain loops, and a directional finite-difference check.

Nothing here calls cnnxp's ops: the loops are written from the definitions.
"""

from __future__ import annotations

import numpy as np


def conv2d_loops(x, w, b, stride, padding):
    """Cross-correlation by loops over batch, filters and output positions (float64)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp_ = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xp_[:, :, padding:padding + h, padding:padding + wd] = x
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(n):
        for f in range(o):
            for r in range(oh):
                for s in range(ow):
                    window = xp_[i, :, r * stride:r * stride + kh, s * stride:s * stride + kw]
                    out[i, f, r, s] = np.sum(window * w[f]) + (0.0 if b is None else b[f])
    return out


def conv2d_loops_backward(x, w, g, stride, padding):
    """Gradients of ``sum(conv2d_loops(x, w, b) * g)`` w.r.t. x, w and b, by the same loops (float64)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp_ = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xp_[:, :, padding:padding + h, padding:padding + wd] = x
    dxp = np.zeros_like(xp_)
    dw = np.zeros(w.shape)
    for i in range(n):
        for f in range(o):
            for r in range(g.shape[2]):
                for s in range(g.shape[3]):
                    rows, cols = slice(r * stride, r * stride + kh), slice(s * stride, s * stride + kw)
                    dw[f] += g[i, f, r, s] * xp_[i, :, rows, cols]
                    dxp[i, :, rows, cols] += g[i, f, r, s] * w[f]
    return dxp[:, :, padding:padding + h, padding:padding + wd], dw, g.sum(axis=(0, 2, 3))


def pool2d_loops(x, k, stride, padding, mode):
    """Max pooling (padding -inf, first maximum) or average pooling (zero padding counted) by loops.

    Returns the output and, for max pooling, the gradient of ``sum(out * g)`` w.r.t. x for a
    given upstream ``g`` through a closure.
    """
    n, c, h, w = x.shape
    fill = -np.inf if mode == "max" else 0.0
    xp_ = np.full((n, c, h + 2 * padding, w + 2 * padding), fill)
    xp_[:, :, padding:padding + h, padding:padding + w] = x
    oh = (h + 2 * padding - k) // stride + 1
    ow = (w + 2 * padding - k) // stride + 1
    out = np.zeros((n, c, oh, ow))
    where = {}
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for s in range(ow):
                    win = xp_[i, ch, r * stride:r * stride + k, s * stride:s * stride + k]
                    if mode == "max":
                        flat = int(np.argmax(win))  # first maximum in row-major order
                        out[i, ch, r, s] = win.flat[flat]
                        where[(i, ch, r, s)] = (r * stride + flat // k - padding, s * stride + flat % k - padding)
                    else:
                        out[i, ch, r, s] = win.mean()

    def grad(g):
        dx = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
        for (i, ch, r, s), (a, bb) in where.items() if mode == "max" else []:
            dx[i, ch, a + padding, bb + padding] += g[i, ch, r, s]
        if mode == "avg":
            for i in range(n):
                for ch in range(c):
                    for r in range(oh):
                        for s in range(ow):
                            dx[i, ch, r * stride:r * stride + k, s * stride:s * stride + k] += g[i, ch, r, s] / k**2
        return dx[:, :, padding:padding + h, padding:padding + w]

    return out, grad


def tie_free(rng, shape, gap=1e-2):
    """Values whose pairwise gaps are at least ``gap``: a shuffled arithmetic sequence (no max-pool ties,
    and finite differences of size << gap never change which element wins)."""
    size = int(np.prod(shape))
    values = (np.arange(size) - size / 2) * gap
    return rng.permutation(values).reshape(shape)


def directional_check(f, arrays, analytic, rng, eps=1e-6):
    """Compare analytic gradients with central differences along one random direction per array.

    ``f()`` returns the scalar loss (a float) using the current contents of ``arrays``
    (NumPy float64 arrays modified in place); ``analytic`` is the list of gradients.
    Returns the largest relative error.
    """
    worst = 0.0
    for a, g in zip(arrays, analytic, strict=True):
        v = rng.standard_normal(a.shape)
        a += eps * v
        up = f()
        a -= 2 * eps * v
        down = f()
        a += eps * v
        numeric = (up - down) / (2 * eps)
        exact = float(np.sum(np.asarray(g) * v))
        worst = max(worst, abs(numeric - exact) / max(1e-8, abs(numeric), abs(exact)))
    return worst
