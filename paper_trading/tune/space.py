"""The search space: a YAML mapping from dotted config paths to distributions.

Example (``config/tune.yaml``)::

    strategy.pricing.gamma: {log_uniform: [0.1, 100]}     # float, sampled on a log scale
    strategy.pricing.k: {uniform: [0.05, 2.0]}             # float, linear scale
    strategy.controls.levels: {int: [1, 5]}                # integer, both ends included
    strategy.controls.refresh_tolerance_ticks: {log_int: [1, 50]}
    strategy.pricing.model: {choice: [glft, avellaneda_stoikov]}

Each value may also carry ``step`` (uniform / int only). Every check happens here, before
any trial runs, and every error names the space file and the path:

* the path must name a field of the config (:class:`bot.config.Config`), not a section;
* a range must not be empty (low < high), a log range must be positive, a choice must list
  at least one value;
* every range end and every choice must be accepted by the config itself: the base config
  with that single value applied is validated with pydantic (so ``gamma: {uniform: [-1, 1]}``
  is refused because the config refuses ``gamma: -1``).

Combinations are not checked (a value may be valid alone and invalid with another sampled
value, e.g. ``order_size`` above ``max_inventory``); such a trial fails with the config's
message and the study goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bot.config import Config, with_overrides
from bot.errors import ConfigError

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")


@dataclass(frozen=True)
class Param:
    """One dimension: ``path`` (dotted config path), ``kind`` (one of :data:`KINDS`),
    ``low``/``high`` (range ends, both included, in the field's own unit), ``step``
    (optional grid step), ``choices`` (for ``choice``)."""

    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple = ()

    @property
    def log(self) -> bool:
        return self.kind in ("log_uniform", "log_int")

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind in ("int", "log_int"):
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self, points: int) -> list:
        """Values for the grid sampler: every choice, every integer (at most ``points``,
        evenly spread), or ``points`` floats evenly spread (geometrically on a log scale)."""
        if self.kind == "choice":
            return list(self.choices)
        lo, hi = self.low, self.high
        if self.kind in ("int", "log_int"):
            step = int(self.step or 1)
            vals = list(range(int(lo), int(hi) + 1, step))
            if len(vals) <= points:
                return vals
            idx = sorted({round(i * (len(vals) - 1) / (points - 1)) for i in range(points)})
            return [vals[i] for i in idx]
        if points == 1:
            return [lo]
        if self.log:
            return [float(lo * (hi / lo) ** (i / (points - 1))) for i in range(points)]
        return [float(lo + (hi - lo) * i / (points - 1)) for i in range(points)]


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str = "(space)"

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.params]

    def distributions(self) -> dict:
        return {p.path: p.distribution() for p in self.params}

    def grid(self, points: int) -> dict[str, list]:
        return {p.path: p.grid(points) for p in self.params}

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every parameter through an Optuna trial; {dotted path: value}."""
        out = {}
        for p in self.params:
            if p.kind == "choice":
                out[p.path] = trial.suggest_categorical(p.path, list(p.choices))
            elif p.kind in ("int", "log_int"):
                out[p.path] = trial.suggest_int(p.path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                out[p.path] = trial.suggest_float(p.path, float(p.low), float(p.high), step=p.step, log=p.log)
        return out


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _submodel(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def check_path(path: str, where: str) -> None:
    """ConfigError unless ``path`` names a leaf field of :class:`Config`."""
    model: type[BaseModel] = Config
    parts = path.split(".")
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the top level"
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(f"{where}: {path}: unknown config path ({here} has: {', '.join(_field_names(model))})")
        sub = _submodel(fields[part].annotation)
        if i < len(parts) - 1:
            if sub is None:
                raise ConfigError(f"{where}: {path}: unknown config path ({'.'.join(parts[: i + 1])} is a value, not a section)")
            model = sub
        elif sub is not None:
            raise ConfigError(f"{where}: {path}: is a section, not a value (it has: {', '.join(_field_names(sub))})")


def _number(v, path: str, where: str, integer: bool):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(f"{where}: {path}: range ends must be finite numbers, got {v!r}")
    if integer and not (isinstance(v, int) or float(v).is_integer()):
        raise ConfigError(f"{where}: {path}: an int range needs whole numbers, got {v!r}")
    return int(v) if integer else float(v)


def parse_param(path: str, spec: Any, where: str) -> Param:
    check_path(path, where)
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: {path}: expected a mapping like {{uniform: [low, high]}} ({', '.join(KINDS)}), got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "step"]
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{where}: {path}: give exactly one of {', '.join(KINDS)} (and optionally step), got keys {list(spec)}")
    kind = kinds[0]
    val = spec[kind]
    if kind == "choice":
        if "step" in spec:
            raise ConfigError(f"{where}: {path}: step does not apply to a choice")
        if not isinstance(val, list) or not val:
            raise ConfigError(f"{where}: {path}: choice needs a non-empty list of values, got {val!r}")
        if len(set(map(repr, val))) != len(val):
            raise ConfigError(f"{where}: {path}: choice lists a value twice: {val!r}")
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in val):
            raise ConfigError(f"{where}: {path}: choice values must be strings, numbers, booleans or null, got {val!r}")
        return Param(path, kind, choices=tuple(val))
    if not isinstance(val, list) or len(val) != 2:
        raise ConfigError(f"{where}: {path}: {kind} needs [low, high], got {val!r}")
    integer = kind in ("int", "log_int")
    lo, hi = (_number(v, path, where, integer) for v in val)
    if not lo < hi:
        raise ConfigError(f"{where}: {path}: empty range [{val[0]}, {val[1]}] (low must be below high)")
    if kind.startswith("log") and lo <= 0:
        raise ConfigError(f"{where}: {path}: a log range must be positive, got [{val[0]}, {val[1]}]")
    step = spec.get("step")
    if step is not None:
        if kind.startswith("log"):
            raise ConfigError(f"{where}: {path}: step does not apply to a log range")
        step = _number(step, path, where, integer)
        if step <= 0 or step > hi - lo:
            raise ConfigError(f"{where}: {path}: step {step} must be positive and at most high - low ({hi - lo})")
    return Param(path, kind, lo, hi, step)


def validate_against(space: Space, base: Config) -> None:
    """Apply every range end and every choice alone to ``base`` and validate the result;
    ConfigError naming the path and the value the config refuses."""
    for p in space.params:
        values = list(p.choices) if p.kind == "choice" else [p.low, p.high]
        for v in values:
            try:
                with_overrides(base, **{p.path: v}) if v is not None else _with_none(base, p.path)
            except ConfigError as e:
                reason = str(e).split(": ", 2)[-1]
                raise ConfigError(f"{space.source}: {p.path}: value {v!r} is rejected by the config: {reason}") from None


def _with_none(base: Config, path: str) -> Config:
    from bot.config import config_from_dict

    data = base.model_dump()
    node = data
    *parents, last = path.split(".")
    for k in parents:
        node = node[k]
    node[last] = None
    return config_from_dict(data, "(search space)")


def apply_params(base: Config, values: dict[str, Any]) -> Config:
    """``base`` with {dotted path: value} applied and validated (ConfigError if refused)."""
    from bot.config import config_from_dict

    data = base.model_dump()
    for path, v in values.items():
        node = data
        *parents, last = path.split(".")
        for k in parents:
            node = node[k]
        node[last] = v
    return config_from_dict(data, "(trial parameters)")


def parse_space(data: Any, where: str) -> Space:
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: a search space is a non-empty mapping of dotted config paths to ranges, got {type(data).__name__}")
    return Space(tuple(parse_param(str(path), spec, where) for path, spec in data.items()), where)


def load_space(path: str | Path, base: Config) -> Space:
    """Read, parse and validate a space file against ``base``; ConfigError on any problem."""
    from bot.config import read_yaml_file

    space = parse_space(read_yaml_file(path, "search space file"), str(path))
    validate_against(space, base)
    return space
