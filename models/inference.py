"""Running an exported model: a stateful one-step predictor for the live loop and a batch path
for backtests that yields exactly the same numbers.

Backends (same artifact, a TorchScript file; see docs/forecaster.md for the measurements):

* ``"torchscript"``: the frozen scripted module. ``step`` calls its
  ``forward``; ``batch`` calls ``forward_seq``, which loops over the very same step inside
  TorchScript, so both paths give bit-identical outputs.
* ``"numba"``: the weights read from the module (``params()``) and one LSTM step as a numba
  kernel in float32 (about 10x less per-call overhead than TorchScript at this size).
  ``batch`` calls the same compiled step row by row, so it too is bit-identical to ``step``;
  against the TorchScript backend it agrees to float32 rounding (~1e-6 relative).

The forecaster's ``"torchscript_async"`` and ``"numba_async"`` backends
(:class:`models.forecaster.AsyncLstmForecaster`, :mod:`models.step_worker`) run the whole grid
step, this module's step included, on a worker thread; they are not backends of this class.

Threads: torch's intra-op thread count is process-wide (``torch.set_num_threads``), so this
module does not set it unless asked (``threads=`` given): the user's setting (or torch's
default) applies. A one-row step of a model this small is not split across threads anyway.

Outputs are ``(drift_bp, logvar_bp2)``: the expected mid log return over the horizon in basis
points and the log of the expected realised variance over the horizon in bp^2.
"""

from __future__ import annotations

import numpy as np

from models.lstm_step import nb_step

BACKENDS = ("numba", "torchscript")


class StatefulPredictor:
    """Carries the LSTM state (h, c) from one grid step to the next.

    ``module`` is the TorchScript module; with the numba backend it may be None when
    ``packed`` = (weights float32, layout int64) of :func:`models.lstm.pack_params` is given,
    and then torch is not imported at all. ``threads``: when given, ``torch.set_num_threads(threads)``
    is called -- process-wide in torch, so only at the caller's explicit request (default None:
    left alone)."""

    def __init__(self, module, arch: dict, clip: float, backend: str = "numba",
                 threads: int | None = None, packed: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if module is None and (backend != "numba" or packed is None):
            raise ValueError("a predictor without its TorchScript module needs backend='numba' and packed weights")
        if threads is not None and module is not None:
            import torch

            torch.set_num_threads(threads)
        self.module = module
        self.backend = backend
        self.layers = int(arch["layers"])
        self.hidden = int(arch["hidden"])
        self.n_features = int(arch["n_features"])
        self.clip = float(clip)
        if backend == "numba":
            if packed is None:
                from models.lstm import pack_params

                packed = pack_params(list(module.params()), self.layers)
            self.W, self.layout = packed
            self._buf = np.zeros(4 * self.hidden + max(self.n_features, self.hidden) + self.n_features, np.float32)
            self._out = np.zeros(2, np.float32)
        self.reset()

    def reset(self) -> None:
        L, H = self.layers, self.hidden
        if self.backend == "numba":
            self.h = np.zeros((L, H), np.float32)
            self.c = np.zeros((L, H), np.float32)
        else:
            import torch

            self.h = torch.zeros(L, H)
            self.c = torch.zeros(L, H)

    def step(self, x: np.ndarray) -> tuple[float, float]:
        """One grid step from a raw feature row (float64[F]); returns (drift_bp, logvar_bp2)."""
        if self.backend == "numba":
            out = self._out
            nb_step(x, self.W, self.layout, self.clip, self.h, self.c, out, self._buf)
            return float(out[0]), float(out[1])
        import torch

        with torch.inference_mode():
            y, self.h, self.c = self.module.forward(torch.from_numpy(np.asarray(x, np.float32)), self.h, self.c)
        return float(y[0]), float(y[1])

    def batch(self, X: np.ndarray) -> np.ndarray:
        """Run rows of X (T x F) from the current state, carrying it on; returns (T, 2)."""
        X = np.asarray(X, dtype=np.float64)
        if self.backend == "numba":
            out = np.empty((len(X), 2), np.float32)
            o, W, lay, clip, h, c, buf = self._out, self.W, self.layout, self.clip, self.h, self.c, self._buf
            for t in range(len(X)):
                nb_step(X[t], W, lay, clip, h, c, o, buf)
                out[t] = o
            return out.astype(np.float64)
        import torch

        with torch.inference_mode():
            Y, self.h, self.c = self.module.forward_seq(torch.from_numpy(X.astype(np.float32)), self.h, self.c)
        return Y.numpy().astype(np.float64)


def predict_batch(module, arch: dict, clip: float, X: np.ndarray, backend: str = "numba") -> np.ndarray:
    """Forecasts for a whole feature matrix from a zero state (what a forecaster fed the same
    rows online produces, step by step). Returns (T, 2): drift bp, log variance bp^2."""
    return StatefulPredictor(module, arch, clip, backend).batch(X)
