"""The LSTM: a training network (``nn.LSTM`` over sequences) and the exported one-step module
(``nn.LSTMCell`` per layer, TorchScript) with the same weights.

Two heads on the last layer's hidden state (one ``Linear(hidden, 2)``):

* drift: the expected mid log return over the horizon, in units of the training drift
  scale (so the loss is O(1)); the exported module outputs basis points;
* variance: the log of the realised variance over the horizon, relative to the training
  variance scale; trained with QLIKE (``v / exp(s) + s``, minimised at ``exp(s) = E[v]``, the
  loss consistent for variance forecasts of Patton 2011); the exported module outputs
  ``log(variance in bp^2)``.

Inputs of the training network are normalised features (:class:`models.features.Normalizer`
applied outside); the exported module normalises raw features itself, with the training
statistics baked in as buffers.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

DRIFT_HEADS = ("correction", "plain")  # correction architecture: what its drift head predicts (LSTMNet)


class LSTMNet(nn.Module):
    """Sequence model for training: ``forward(z [B, T, F], state) -> (out [B, T, 2], state)``."""

    def __init__(self, n_features: int, hidden: int = 32, layers: int = 1, dropout: float = 0.1, skip: bool = True,
                 offset_cols: tuple[int, int] | None = None, drift_head: str = "correction") -> None:
        super().__init__()
        self.n_features, self.hidden, self.layers, self.dropout_p, self.use_skip = n_features, hidden, layers, dropout, skip
        # correction architecture: the outputs are corrections added to the raw input columns
        # offset_cols = (drift bp, log variance bp^2) of the baselines (models.baseline_inputs)
        self.offset_cols = tuple(int(c) for c in offset_cols) if offset_cols is not None else None
        # correction architecture, drift head: "correction" = a correction of the OFI regression's
        # drift (offset_cols[0] added to it); "plain" = the drift itself, as the plain LSTM
        # predicts it (no offset; training's L2 pulls it towards zero drift); the variance head
        # stays a correction
        if drift_head not in DRIFT_HEADS:
            raise ValueError(f"drift_head must be one of {DRIFT_HEADS}, got {drift_head!r}")
        self.drift_head = drift_head
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 2)
        # linear skip path from the (normalised) features to both heads: the LSTM learns the
        # nonlinear, recurrent correction to a log-linear (HAR-like) model
        self.skip = nn.Linear(n_features, 2, bias=False) if skip else None
        with torch.no_grad():  # start both heads at the unconditional answer
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            if self.skip is not None:
                self.skip.weight.zero_()
            if self.offset_cols is not None:  # correction: start at exactly no correction
                self.head.weight.zero_()

    def forward(self, z: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.lstm(z, state)
        y = self.head(self.drop(out))
        if self.skip is not None:
            y = y + self.skip(z)
        return y, state

    @property
    def drift_offset(self) -> bool:
        """True when the drift output is added to the baselines' drift column (offset_cols[0])."""
        return self.offset_cols is not None and self.drift_head == "correction"

    def arch(self) -> dict:
        d = {"n_features": self.n_features, "hidden": self.hidden, "layers": self.layers, "dropout": self.dropout_p,
             "skip": self.use_skip, "kind": "plain"}
        if self.offset_cols is not None:
            d.update(kind="correction", offset_cols=list(self.offset_cols), drift_head=self.drift_head)
        return d


class StepModule(nn.Module):
    """The exported model: raw features in, (drift bp, log variance bp^2) out, one grid step
    per call with the recurrent state passed in and out.

    ``y = head(h) + skip(z) + raw(x)``: ``raw`` is a fixed linear map of the raw (not
    normalised) inputs, zero for the plain LSTM; for the correction architecture it copies
    the baselines' drift (bp) and log variance (log bp^2) columns to the outputs, so the
    network's part is the correction (with ``drift_head="plain"`` only the log variance
    column: the drift output is the network's own, in bp).

    ``forward(x [F] float32, h [L, H], c [L, H]) -> (y [2], h', c')``; ``forward_seq(X [T, F],
    h, c) -> (Y [T, 2], h', c')`` runs the very same step in a loop (so a backtest's batch
    forecasts equal the online ones); ``params()`` returns the weights in a fixed order (for
    fine-tuning and the numba backend)."""

    def __init__(self, net: LSTMNet, mean: np.ndarray, std: np.ndarray, clip: float, drift_scale: float,
                 var_scale: float) -> None:
        super().__init__()
        F, H, L = net.n_features, net.hidden, net.layers
        self.register_buffer("mean", torch.tensor(np.asarray(mean), dtype=torch.float32))
        self.register_buffer("inv_std", torch.tensor(1.0 / np.asarray(std), dtype=torch.float32))
        self.clip = float(clip)
        self.cells = nn.ModuleList([nn.LSTMCell(F if i == 0 else H, H) for i in range(L)])
        self.head = nn.Linear(H, 2)
        self.skip = nn.Linear(F, 2, bias=False)  # zero when the network has no skip path
        self.raw = nn.Linear(F, 2, bias=False)  # baseline offsets (correction architecture), else zero
        with torch.no_grad():
            self.skip.weight.zero_()
            self.raw.weight.zero_()
            if net.offset_cols is not None:
                if net.drift_offset:
                    self.raw.weight[0, net.offset_cols[0]] = 1.0
                self.raw.weight[1, net.offset_cols[1]] = 1.0
            if net.skip is not None:
                ws = net.skip.weight.detach().clone()
                ws[0] *= drift_scale
                self.skip.weight.copy_(ws)
            for i, cell in enumerate(self.cells):
                cell.weight_ih.copy_(getattr(net.lstm, f"weight_ih_l{i}"))
                cell.weight_hh.copy_(getattr(net.lstm, f"weight_hh_l{i}"))
                cell.bias_ih.copy_(getattr(net.lstm, f"bias_ih_l{i}"))
                cell.bias_hh.copy_(getattr(net.lstm, f"bias_hh_l{i}"))
            # fold the output scaling into the head: y0 * drift_scale, y1 + log(var_scale)
            w = net.head.weight.detach().clone()
            b = net.head.bias.detach().clone()
            w[0] *= drift_scale
            b[0] *= drift_scale
            if net.offset_cols is None:  # correction: the offset column is log V_best itself
                b[1] += math.log(var_scale)
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)
        self.n_layers = L
        self.hidden = H

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        z = torch.clamp((x - self.mean) * self.inv_std, -self.clip, self.clip).unsqueeze(0)
        r = self.raw(x.unsqueeze(0))
        if self.n_layers == 1:
            h1, c1 = self.cells[0](z, (h, c))
            return (self.head(h1) + self.skip(z) + r)[0], h1, c1
        hs: List[Tensor] = []
        cs: List[Tensor] = []
        inp = z
        i = 0
        for cell in self.cells:
            h1, c1 = cell(inp, (h[i : i + 1], c[i : i + 1]))
            hs.append(h1)
            cs.append(c1)
            inp = h1
            i += 1
        return (self.head(inp) + self.skip(z) + r)[0], torch.cat(hs, 0), torch.cat(cs, 0)

    @torch.jit.export
    def forward_seq(self, X: Tensor, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        out: List[Tensor] = []
        for t in range(X.shape[0]):
            y, h, c = self.forward(X[t], h, c)
            out.append(y)
        if len(out) == 0:
            return torch.zeros(0, 2), h, c
        return torch.stack(out, 0), h, c

    @torch.jit.export
    def params(self) -> List[Tensor]:
        """[mean, inv_std, (w_ih, w_hh, b_ih, b_hh) per layer, head_w, head_b, skip_w, raw_w]."""
        out: List[Tensor] = [self.mean, self.inv_std]
        for cell in self.cells:
            out += [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        out += [self.head.weight, self.head.bias, self.skip.weight, self.raw.weight]
        return out


def net_from_params(params: list[Tensor], arch: dict) -> tuple[LSTMNet, np.ndarray, np.ndarray]:
    """Rebuild a training network (output scaling folded into its head as exported) and the
    normalisation (mean, std) from :meth:`StepModule.params`, e.g. to fine-tune a model."""
    L = int(arch["layers"])
    oc = arch.get("offset_cols")
    net = LSTMNet(int(arch["n_features"]), int(arch["hidden"]), L, float(arch.get("dropout", 0.0)), bool(arch.get("skip", False)),
                  offset_cols=tuple(oc) if oc is not None else None, drift_head=str(arch.get("drift_head", "correction")))
    mean = params[0].detach().double().numpy()
    std = 1.0 / params[1].detach().double().numpy()
    with torch.no_grad():
        for i in range(L):
            w_ih, w_hh, b_ih, b_hh = params[2 + 4 * i : 6 + 4 * i]
            getattr(net.lstm, f"weight_ih_l{i}").copy_(w_ih)
            getattr(net.lstm, f"weight_hh_l{i}").copy_(w_hh)
            getattr(net.lstm, f"bias_ih_l{i}").copy_(b_ih)
            getattr(net.lstm, f"bias_hh_l{i}").copy_(b_hh)
        net.head.weight.copy_(params[2 + 4 * L])
        net.head.bias.copy_(params[3 + 4 * L])
        if net.skip is not None:
            net.skip.weight.copy_(params[4 + 4 * L])
    return net, mean, std


# ----------------------------------------------------------------------------------------
# numba backend: the same step on a flat float32 weight buffer
# ----------------------------------------------------------------------------------------
def pack_params(params: list[Tensor], layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Flatten :meth:`StepModule.params` for :func:`nb_step`: (weights float32, layout int64)
    layout = [F, H, L, off_mean, off_inv_std, (off_wih, off_whh, off_b) per layer, off_hw, off_hb, off_skip, off_raw]
    (the two LSTM biases are summed; models saved before the raw path get a zero one)."""
    arrs: list[np.ndarray] = []
    offs: list[int] = []
    pos = 0

    def add(a: np.ndarray) -> None:
        nonlocal pos
        a = np.ascontiguousarray(a, dtype=np.float32).ravel()
        offs.append(pos)
        arrs.append(a)
        pos += a.size

    p = [t.detach().float().numpy() for t in params]
    F = p[0].shape[0]
    H = p[3].shape[1]
    add(p[0])
    add(p[1])
    for i in range(layers):
        w_ih, w_hh, b_ih, b_hh = p[2 + 4 * i : 6 + 4 * i]
        add(w_ih)
        add(w_hh)
        add(b_ih + b_hh)
    add(p[2 + 4 * layers])
    add(p[3 + 4 * layers])
    add(p[4 + 4 * layers] if len(p) > 4 + 4 * layers else np.zeros((2, F), np.float32))
    add(p[5 + 4 * layers] if len(p) > 5 + 4 * layers else np.zeros((2, F), np.float32))
    layout = np.array([F, H, layers] + offs, dtype=np.int64)
    return np.concatenate(arrs), layout


# the numba step lives in models/lstm_step.py (no torch import: a cached forecaster runs without torch)
from models.lstm_step import _sigmoid, nb_step  # noqa: E402,F401
