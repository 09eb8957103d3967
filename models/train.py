"""Training the LSTM: stateful truncated back-propagation through time, AdamW, dropout and
weight decay, early stopping on a validation fold, fixed seeds, a progress bar.

Why stateful: online the model runs one step per grid row forever, carrying (h, c). So it is
trained the same way: the training rows are cut into ``batch`` contiguous streams that are
run side by side, ``lookback`` rows at a time, with the state carried (detached) from one
chunk to the next. The first chunk of every stream is burn-in (no loss), like the online
warm-up. Every epoch shifts the streams by a random offset. Validation runs the model over
the validation rows after a burn-in of ``4 * lookback`` rows before them.

Losses (targets from :mod:`models.targets`, standardised by training statistics):
QLIKE for the variance head (``v / exp(s) + s``), squared error for the drift head, summed
with weight ``drift_weight``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from models.features import Normalizer
from models.lstm import LSTMNet, StepModule


@dataclass
class TrainConfig:
    """Hyperparameters. ``lookback`` is the truncated-BPTT length (rows) and the warm-up."""

    hidden: int = 32
    layers: int = 1
    dropout: float = 0.1
    lookback: int = 64
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_epochs: int = 60
    patience: int = 8
    min_epochs: int = 3
    drift_weight: float = 1.0
    skip: bool = True
    arch: str = "plain"  # plain | correction (models.baseline_inputs)
    corr_l2: float = 1.0  # correction arch: L2 penalty on the (standardised) corrections
    corr_l2_drift: float | None = None  # ... on the drift correction, if not the same (None)
    # correction arch: plain (the drift itself, L2 towards zero drift) | correction (of the OFI regression's drift);
    # plain by default: it beats zero drift and the OFI regression out of market (docs/forecaster.md, 2026-12-05)
    drift_head: str = "plain"
    base: str = "auto"  # correction arch: the variance baseline (auto = chosen on training rows)
    val_frac: float = 0.15
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scales:
    """Standardisation of the targets, from training rows: drift / drift_scale (bp),
    (var + var_floor) / var_scale (bp^2)."""

    drift_scale: float
    var_scale: float
    var_floor: float

    @classmethod
    def fit(cls, drift: np.ndarray, var: np.ndarray, var_floor: float) -> "Scales":
        d = drift[np.isfinite(drift)]
        v = var[np.isfinite(var)]
        ds = float(d.std()) if len(d) > 1 else 1.0
        vs = float((v + var_floor).mean()) if len(v) else 1.0
        return cls(ds if ds > 1e-9 else 1.0, vs if vs > 0 else 1.0, var_floor)


@dataclass
class FitResult:
    net: LSTMNet
    normalizer: Normalizer
    scales: Scales
    cfg: TrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = float("nan")
    seconds: float = 0.0

    def step_module(self) -> StepModule:
        return StepModule(self.net.cpu().eval(), self.normalizer.mean, self.normalizer.std, self.normalizer.clip,
                          self.scales.drift_scale, self.scales.var_scale)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(drift bp, variance bp^2) for every row of the raw feature matrix X, running the
        network from a zero state over all rows (as the online forecaster would)."""
        z = self.normalizer.transform(X).astype(np.float32)
        out = run_sequence(self.net, z).astype(np.float64)
        mu, lv = out[:, 0] * self.scales.drift_scale, out[:, 1]
        oc = self.net.offset_cols
        if oc is None:
            lv = lv + math.log(self.scales.var_scale)
        else:  # correction: the standardised offset log(V_best / var_scale) and the scale cancel
            if self.net.drift_offset:
                mu = mu + X[:, oc[0]]
            lv = lv + X[:, oc[1]]
        return mu, np.exp(lv)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


@torch.no_grad()
def run_sequence(net: LSTMNet, z: np.ndarray, state=None, chunk: int = 20000) -> np.ndarray:
    """Standardised outputs (T, 2) of ``net`` over ``z`` (T, F) in eval mode, batch 1."""
    was = net.training
    net.eval()
    outs = []
    for i in range(0, len(z), chunk):
        y, state = net(torch.from_numpy(np.ascontiguousarray(z[i : i + chunk]))[None], state)
        outs.append(y[0].numpy())
    net.train(was)
    return np.concatenate(outs) if outs else np.zeros((0, 2), np.float32)


def _loss(out: torch.Tensor, yd: torch.Tensor, yv: torch.Tensor, m: torch.Tensor, w: float,
          off: torch.Tensor | None = None, l2: float = 0.0, l2_drift: float | None = None) -> tuple[torch.Tensor, float, float]:
    """QLIKE + w * drift MSE (standardised). ``off``: the baselines' standardised outputs that
    the correction ``out`` is added to; ``l2`` penalises the correction's size (``l2_drift``
    the drift correction's, if given)."""
    corr = out
    if off is not None:
        out = out + off
    s = out[..., 1]
    q = yv * torch.exp(-s) + s
    e = (out[..., 0] - yd) ** 2
    n = m.sum().clamp(min=1.0)
    ql = (q * m).sum() / n
    mse = (e * m).sum() / n
    loss = ql + w * mse
    ld = l2 if l2_drift is None else l2_drift
    if off is not None and (l2 > 0 or ld > 0):
        loss = loss + ((ld * corr[..., 0] ** 2 + l2 * corr[..., 1] ** 2) * m).sum() / n
    return loss, float(ql.detach()), float(mse.detach())


@contextlib.contextmanager
def _bar(enabled: bool, total: int, label: str):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), transient=False) as p:
        task = p.add_task("", total=total)
        yield (p, task)


def fit(X: np.ndarray, drift: np.ndarray, var: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
        stream_end: int, cfg: TrainConfig, var_floor: float, *, stream_start: int = 0, warmup: int = 0,
        progress: bool = False, label: str = "train", init: tuple[LSTMNet, Normalizer, Scales] | None = None,
        offset_cols: tuple[int, int] | None = None, mask_cols: tuple[int, ...] | list[int] = (),
        normalizer: Normalizer | None = None, scales: Scales | None = None,
        row_weight: np.ndarray | None = None) -> FitResult:
    """Train on the raw feature matrix ``X`` (all rows of the series) and targets.

    Args:
        train_rows / val_rows: boolean masks of the rows whose targets enter the training /
            validation loss (the caller excludes rows whose horizon crosses into later data).
        stream_end: training streams cover rows [stream_start, stream_end) (the validation
            rows come after it).
        var_floor: added to variance targets (bp^2), see :func:`models.targets.variance_floor`.
        init: (network, normaliser, scales) to fine-tune instead of a fresh model (their
            normalisation and scales are kept).
        offset_cols: correction architecture: the columns of X holding the baselines' drift
            (bp) and log variance (log bp^2); the network learns the correction on top of them
            (zero-initialised, L2 ``cfg.corr_l2`` towards no correction). With
            ``cfg.drift_head == "plain"`` only the variance is a correction: the drift head
            predicts the standardised drift itself (no OFI-regression offset); its L2
            (``cfg.corr_l2_drift``, default ``cfg.corr_l2``) then pulls it towards zero
            drift, the drift forecast's "no forecast".
        mask_cols: columns the network does not see (normalised to 0: mean 0, std 1e30).
        normalizer / scales: use these instead of fitting them on the training rows (several
            markets, each standardised on its own rows before they are stacked:
            :mod:`models.multimarket`).
        row_weight: per-row weights of the training and validation losses (default 1).
    """
    t_start = time.perf_counter()
    set_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    rng = np.random.default_rng(cfg.seed)
    fit_rows = np.zeros(len(X), bool)
    fit_rows[stream_start:stream_end] = True
    if init is None:
        if normalizer is not None:
            norm = normalizer
        else:
            norm = Normalizer.fit(X[fit_rows & np.all(np.isfinite(X), axis=1)])
            for j in mask_cols:
                norm.mean[j], norm.std[j] = 0.0, 1e30
        sc = scales if scales is not None else Scales.fit(drift[train_rows], var[train_rows], var_floor)
        net = LSTMNet(X.shape[1], cfg.hidden, cfg.layers, cfg.dropout, cfg.skip, offset_cols=offset_cols,
                      drift_head=cfg.drift_head)
    else:
        net, norm, sc = init
        net = copy.deepcopy(net)
        net.drop.p = cfg.dropout
    Z = norm.transform(X).astype(np.float32)
    yd = np.where(np.isfinite(drift), drift / sc.drift_scale, 0.0).astype(np.float32)
    yv = np.where(np.isfinite(var), (var + sc.var_floor) / sc.var_scale, 1.0).astype(np.float32)
    mtr = (train_rows & np.isfinite(drift) & np.isfinite(var)).astype(np.float32)
    mva = (val_rows & np.isfinite(drift) & np.isfinite(var)).astype(np.float32)
    if row_weight is not None:  # e.g. every market weighing alike in a multi-market fit
        mtr *= row_weight.astype(np.float32)
        mva *= row_weight.astype(np.float32)
    oc = net.offset_cols
    offt = None
    if oc is not None:
        off = np.column_stack([X[:, oc[0]] / sc.drift_scale, X[:, oc[1]] - math.log(sc.var_scale)])
        if not net.drift_offset:  # drift head "plain": the drift is predicted outright
            off[:, 0] = 0.0
        offt = torch.from_numpy(np.nan_to_num(off).astype(np.float32))
    if warmup:
        mtr[:warmup] = 0.0
        mva[:warmup] = 0.0
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    L = cfg.lookback
    Zt, ydt, yvt, mtrt = (torch.from_numpy(a) for a in (Z, yd, yv, mtr))
    val_idx = np.flatnonzero(mva > 0)
    if len(val_idx):
        v_lo = max(0, int(val_idx[0]) - 4 * L)
        v_hi = int(val_idx[-1]) + 1
    best = (math.inf, 0, copy.deepcopy(net.state_dict()))
    if offt is not None and len(val_idx) and init is None:
        # epoch 0 = no correction (the best baseline itself): kept unless training beats it
        out0 = torch.from_numpy(run_sequence(net, Z[v_lo:v_hi]))
        sl = slice(v_lo, v_hi)
        vl0, _, _ = _loss(out0, ydt[sl], yvt[sl], torch.from_numpy(mva[sl]), cfg.drift_weight, offt[sl], 0.0)
        best = (float(vl0), 0, copy.deepcopy(net.state_dict()))
    history: list[dict] = []
    bad = 0
    with _bar(progress, cfg.max_epochs, label) as bar:
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            off = int(rng.integers(0, L))
            span = stream_end - stream_start - off
            B = max(1, min(cfg.batch, span // (2 * L)))
            Tb = span // B
            if Tb < 2:
                raise ValueError(f"not enough training rows ({span}) for lookback {L}")
            idx = torch.from_numpy(stream_start + off + np.arange(B * Tb).reshape(B, Tb))
            state = None
            tl = tq = tm = 0.0
            nb = 0
            for t0 in range(0, Tb, L):
                ii = idx[:, t0 : t0 + L]
                out, state = net(Zt[ii], state)
                state = (state[0].detach(), state[1].detach())
                if t0 == 0:
                    continue  # burn-in chunk: state only
                m = mtrt[ii]
                if float(m.sum()) == 0.0:
                    continue
                loss, q, e = _loss(out, ydt[ii], yvt[ii], m, cfg.drift_weight,
                                   None if offt is None else offt[ii], cfg.corr_l2, cfg.corr_l2_drift)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                tl += float(loss.detach())
                tq += q
                tm += e
                nb += 1
            rec = {"epoch": epoch, "train_loss": tl / max(nb, 1), "train_qlike": tq / max(nb, 1), "train_mse": tm / max(nb, 1)}
            if len(val_idx):
                out = torch.from_numpy(run_sequence(net, Z[v_lo:v_hi]))
                sl = slice(v_lo, v_hi)
                vl, vq, vm = _loss(out, ydt[sl], yvt[sl], torch.from_numpy(mva[sl]), cfg.drift_weight,
                                   None if offt is None else offt[sl], 0.0)
                rec.update(val_loss=float(vl), val_qlike=vq, val_mse=vm)
                score = float(vl)
            else:
                score = rec["train_loss"]
            history.append(rec)
            if score < best[0] - 1e-6:
                best = (score, epoch, copy.deepcopy(net.state_dict()))
                bad = 0
            else:
                bad += 1
            if bar is not None:
                p, task = bar
                p.update(task, advance=1, description=f"loss {rec['train_loss']:.4f} val {rec.get('val_loss', float('nan')):.4f} best@{best[1]}")
            if epoch >= cfg.min_epochs and bad >= cfg.patience:
                break
    net.load_state_dict(best[2])
    net.eval()
    return FitResult(net, norm, sc, cfg, history, best[1], best[0], time.perf_counter() - t_start)
