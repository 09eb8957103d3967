"""Walk-forward folds over one or more recordings, and the held-out final segment.

All recordings are put on one timeline in time order (by their first local timestamp;
overlapping recordings are refused). Times are int ns since the epoch (recorded local time).

* The **held-out segment** is the final ``holdout`` fraction of the timeline's total
  duration (the sum of the recordings' spans). It may cover the end of one recording and
  whole later recordings.
* The rest, the **in-sample** part, is cut into ``n_folds`` consecutive folds of equal
  duration; a fold never spans two recordings (where a cut would, the fold is split into one
  segment per recording). A trial backtests its folds in time order and reports the
  objective after each fold to Optuna (for the pruner).

Every segment is backtested from its start: the replay builds the book from the start of
its recording up to the segment start (book states do not depend on our orders), then
replays ``replay.warmup_s`` before the first decision, then trades to the segment end.

Trials never see the held-out data: a worker only holds each recording's events before
:attr:`Plan.cutoff_ns` (see :meth:`Plan.in_sample_limit`), and recordings that lie wholly in
the held-out segment are not loaded by workers at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import ConfigError, DataError


@dataclass(frozen=True)
class Recording:
    """A recording's directory and its span, int ns (first and last local timestamp)."""

    path: str
    first_ns: int
    last_ns: int

    @property
    def span_ns(self) -> int:
        return self.last_ns - self.first_ns


@dataclass(frozen=True)
class Segment:
    """Recorded time [start_ns, end_ns) of recording number ``rec`` (index into Plan.recordings)."""

    rec: int
    start_ns: int
    end_ns: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class Plan:
    recordings: tuple[Recording, ...]
    folds: tuple[tuple[Segment, ...], ...]  # in-sample, in time order
    holdout: tuple[Segment, ...]  # empty when holdout fraction is 0
    cutoff_ns: int  # the held-out segment starts here (recorded local time); max int if none

    def in_sample_limit(self, rec: int) -> int | None:
        """Events of recording ``rec`` a trial may hold: local_ts < this (None = none at all)."""
        r = self.recordings[rec]
        if r.first_ns >= self.cutoff_ns:
            return None
        return min(self.cutoff_ns, r.last_ns + 1)

    def describe(self) -> list[dict]:
        rows = []
        for i, f in enumerate(self.folds):
            for s in f:
                rows.append({"part": f"fold {i}", "recording": self.recordings[s.rec].path, "start_ns": s.start_ns,
                             "end_ns": s.end_ns, "duration_s": round(s.duration_s, 3)})
        for s in self.holdout:
            rows.append({"part": "held-out", "recording": self.recordings[s.rec].path, "start_ns": s.start_ns,
                         "end_ns": s.end_ns, "duration_s": round(s.duration_s, 3)})
        return rows


def _cut(recs: list[Recording], offsets: list[int], t0: int, t1: int) -> tuple[Segment, ...]:
    """Segments covering timeline offsets [t0, t1) (ns from the start of the timeline)."""
    out = []
    for i, r in enumerate(recs):
        a, b = offsets[i], offsets[i] + r.span_ns
        lo, hi = max(a, t0), min(b, t1)
        if hi > lo:
            out.append(Segment(i, r.first_ns + (lo - a), r.first_ns + (hi - a)))
    return tuple(out)


def make_plan(recordings: list[Recording], n_folds: int, holdout: float, min_fold_s: float) -> Plan:
    """Folds and held-out segment; ConfigError when the data is too short for them.

    ``min_fold_s``: the shortest fold allowed, seconds (it must hold the warm-up and some
    decisions)."""
    if n_folds < 1:
        raise ConfigError(f"--folds must be at least 1, got {n_folds}")
    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout must be a fraction in [0, 1), got {holdout}")
    recs = sorted(recordings, key=lambda r: r.first_ns)
    for a, b in zip(recs, recs[1:]):
        if b.first_ns <= a.last_ns:
            raise DataError(f"recordings {a.path} and {b.path} overlap in time; give recordings of one market, one after the other")
    offsets, total = [], 0
    for r in recs:
        offsets.append(total)
        total += r.span_ns
    cut = int(round(total * (1 - holdout)))
    fold_ns = cut // n_folds
    if fold_ns < min_fold_s * 1e9:
        raise ConfigError(f"the in-sample data ({cut / 1e9:.1f} s) is too short for {n_folds} folds of at least {min_fold_s:g} s "
                          "(warm-up plus decisions): use fewer --folds, a smaller --holdout or longer recordings")
    folds = tuple(_cut(recs, offsets, k * fold_ns, cut if k == n_folds - 1 else (k + 1) * fold_ns) for k in range(n_folds))
    held = _cut(recs, offsets, cut, total + 1) if holdout > 0 else ()
    if held:
        cutoff = held[0].start_ns
    else:
        cutoff = 2**63 - 1
    return Plan(tuple(recs), folds, held, cutoff)
