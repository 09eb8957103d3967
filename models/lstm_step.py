"""One LSTM step of an exported mmbot forecaster as a numba kernel (float32), over the packed
weights of :func:`models.lstm.pack_params`. Kept apart from :mod:`models.lstm` so that running a
forecaster whose packed weights are cached (:mod:`models.weights_cache`) does not import torch.

Units: inputs are raw feature rows (float64); outputs drift in basis points and log variance in bp^2.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, fastmath=False)
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@nb.njit(cache=True, nogil=True)
def nb_step(x, W, layout, clip, h, c, out, buf):
    """One step in float32: x float64[F] raw features; h, c float32[L, H] updated in place;
    out float32[2] = (drift bp, log variance bp^2); buf float32[4H + max(F, H) + F] scratch."""
    F = layout[0]
    H = layout[1]
    L = layout[2]
    om = layout[3]
    oi = layout[4]
    inp = buf[4 * H :]
    z0 = buf[4 * H + max(F, H) :]
    for j in range(F):
        z = np.float32((np.float32(x[j]) - W[om + j]) * W[oi + j])
        if z > clip:
            z = np.float32(clip)
        elif z < -clip:
            z = np.float32(-clip)
        inp[j] = z
        z0[j] = z
    n_in = F
    g = buf[: 4 * H]
    for layer in range(L):
        owi = layout[5 + 3 * layer]
        owh = layout[6 + 3 * layer]
        ob = layout[7 + 3 * layer]
        for r in range(4 * H):
            acc = W[ob + r]
            base = owi + r * n_in
            for j in range(n_in):
                acc += W[base + j] * inp[j]
            base = owh + r * H
            for j in range(H):
                acc += W[base + j] * h[layer, j]
            g[r] = acc
        for j in range(H):
            ig = _sigmoid(g[j])
            fg = _sigmoid(g[H + j])
            gg = np.tanh(g[2 * H + j])
            og = _sigmoid(g[3 * H + j])
            cn = fg * c[layer, j] + ig * gg
            c[layer, j] = cn
            h[layer, j] = og * np.tanh(cn)
        for j in range(H):
            inp[j] = h[layer, j]
        n_in = H
    ohw = layout[5 + 3 * L]
    ohb = layout[6 + 3 * L]
    osk = layout[7 + 3 * L]
    orw = layout[8 + 3 * L]
    for r in range(2):
        acc = W[ohb + r]
        for j in range(H):
            acc += W[ohw + r * H + j] * h[L - 1, j]
        sk = np.float32(0.0)
        rw = np.float32(0.0)
        for j in range(F):
            sk += W[osk + r * F + j] * z0[j]
            rw += W[orw + r * F + j] * np.float32(x[j])
        out[r] = acc + sk + rw
