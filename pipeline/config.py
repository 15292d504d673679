"""The sweep configuration: one YAML file, validated once into frozen models.

Every error is a :class:`ConfigError` with one line naming the field and the fix;
the CLI turns it into exit code 2 before anything is written or Ray is started.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import math
import os
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from analysis.success import criterion as success_criterion
from records.identity import non_default_settings
from sobolev.problem import make_problem, max_separation, placement_failure_bound
from sobolev.settings import TrainConfig

from .errors import ConfigError
from .uris import redact, uri_problem


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)


PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


def _nonempty_unique(values: list, field: str) -> list:
    if not values:
        raise ValueError(f"{field} must list at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"{field} has repeated values")
    return values


class Seeds(_Frozen):
    """``init``: initialisation seeds of every cell (a list, or a count meaning 0..count-1);
    ``data``: seeds of the problem instances (each gives its own instance per cell)."""

    init: Union[int, list[int]] = 8
    data: list[int] = [0]

    @field_validator("init")
    @classmethod
    def _init(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError("a count of seeds must be >= 1; give a count or a list of seeds")
            return list(range(v))
        return cls._data(v, "init")

    @field_validator("data")
    @classmethod
    def _data(cls, v, field="data"):
        if any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0; use non-negative integers")
        return _nonempty_unique(v, field if isinstance(field, str) else "data")


def _number(v):
    """Wherever a float is expected, an integer or a numeric string is taken as that number:
    YAML reads ``1e-6`` (no dot) as a string, and ``1`` as an integer."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ValueError("not a number; write it like 1.0e-6 or 0.001") from None
    return v


def _float_fields(model_fields: dict) -> tuple[str, ...]:
    return tuple(name for name, (ann, _) in model_fields.items() if ann is float)


_TRAINING_HINTS = typing.get_type_hints(TrainConfig)
# The training settings: the fields of sobolev.TrainConfig, with its types and defaults; the
# checks of TrainConfig.__post_init__ run on every value (see _train_config).
_TRAINING_FIELDS = {f.name: (_TRAINING_HINTS[f.name], f.default) for f in dataclasses.fields(TrainConfig)}
TRAINING_FIELDS = tuple(_TRAINING_FIELDS)


def _train_config(values: dict, where: str) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValueError as exc:
        msg = str(exc)
        field = next((f for f in TRAINING_FIELDS if msg.startswith(f"TrainConfig.{f}=")), None)
        raise ValueError(f"{where}.{field}: {msg.split(': ', 1)[-1]} (got {values.get(field)!r})" if field
                         else f"{where}: {msg}") from None


def _training_model():
    def check(self):
        _train_config(self.model_dump(), "training")
        return self

    return create_model(
        "Training", __base__=_Frozen, __doc__="The training settings of every run (sobolev.TrainConfig's fields).",
        __validators__=dict(
            _numbers=field_validator(*_float_fields(_TRAINING_FIELDS), mode="before")(lambda cls, v: _number(v)),
            _check=model_validator(mode="after")(check)),
        **_TRAINING_FIELDS)


Training = _training_model()


class _ProblemGrid(_Frozen):
    """The grid axes: every combination is one cell, trained over every seed. ``k = 0`` is plain
    L2 training of the values (the control of what the derivatives add)."""

    n: list[PosInt]
    k: list[NonNegInt]
    m: list[PosInt]
    delta: list[float]
    bias: list[bool] = [False, True]

    @field_validator("delta", mode="before")
    @classmethod
    def _numbers(cls, v):
        return [_number(x) for x in v] if isinstance(v, list) else v

    @field_validator("n", "k", "m", "delta", "bias")
    @classmethod
    def _lists(cls, v, info):
        return _nonempty_unique(v, info.field_name)

    @field_validator("delta")
    @classmethod
    def _delta(cls, v):
        for x in v:
            if not (math.isfinite(x) and 0 < x <= 2):
                raise ValueError(f"delta={x} must be in (0, 2] (a distance between unit vectors)")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if min(v) < 2:
            raise ValueError("n must be >= 2 (separation needs a pair of points)")
        return v

    def training_axes(self) -> dict[str, list]:
        """The training settings listed as grid axes (e.g. ``mode: [relu, frozen]``)."""
        return {f: getattr(self, f) for f in TRAINING_FIELDS if getattr(self, f) is not None}


def _grid_model():
    """The problem axes, plus any training setting as an axis: a list under ``grid:`` for a
    field of ``training`` trains every cell under each value (paired controls on the same
    instances and seeds)."""
    axes = {f: (Optional[list[ann]], None) for f, (ann, _) in _TRAINING_FIELDS.items()}

    def numbers(cls, v):
        return [_number(x) for x in v] if isinstance(v, list) else v

    def lists(cls, v, info):
        return v if v is None else _nonempty_unique(v, info.field_name)

    floats = tuple(f for f, (ann, _) in _TRAINING_FIELDS.items() if ann is float)
    return create_model("Grid", __base__=_ProblemGrid, __doc__=_grid_model.__doc__, __validators__=dict(
        _axis_numbers=field_validator(*floats, mode="before")(numbers),
        _axis_lists=field_validator(*TRAINING_FIELDS)(lists)), **axes)


Grid = _grid_model()


class Resources(_Frozen):
    """Per Ray task: CPUs (torch threads match), GPUs (fractional allowed), replicas
    (seeds of one cell trained as one batch; ``auto`` packs to ``memory_budget_gb``), Ray's
    retries of a task whose worker died, and the time limit of a task in seconds
    (``task_timeout_s``; default: derived from its estimate, see ``pipeline.faults``)."""

    num_cpus: Annotated[float, Field(gt=0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    replicas_per_task: Union[PosInt, Literal["auto"]] = "auto"
    memory_budget_gb: Annotated[float, Field(gt=0)] | None = None
    max_retries: NonNegInt = 3
    task_timeout_s: Annotated[float, Field(gt=0)] | None = None

    @field_validator("num_cpus", "num_gpus", "memory_budget_gb", "task_timeout_s", mode="before")
    @classmethod
    def _float(cls, v):
        return _number(v)


CURVE_POINTS = 8  # the default of Tracking.curve_points; benchmarks/plot_curve_points.py shows what it keeps


class Tracking(_Frozen):
    """MLflow: ``experiment`` (default: the sweep name); ``uri`` overrides
    ``MLFLOW_TRACKING_URI`` and the default ``sqlite:///mlflow.db`` (credentials never go in it:
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``); ``enabled: false`` writes
    Parquet only. ``curve_points``: at most this many checkpoints of each curve go to MLflow as
    metric history, log-spaced in flow time (``all``: every checkpoint); a server's time per run
    grows with the values it stores. The full curves are always in Parquet; ``curve_artifact:
    true`` also attaches them to each MLflow run as ``curves.csv``. Neither changes any result."""

    experiment: str | None = None
    uri: str | None = None
    enabled: bool = True
    curve_points: Union[Annotated[int, Field(ge=2)], Literal["all"]] = CURVE_POINTS
    curve_artifact: bool = False

    @field_validator("uri")
    @classmethod
    def _uri(cls, v):
        if v is None:
            return v
        problem = uri_problem(v)
        if problem:  # shown redacted: a password never reaches a message
            raise ValueError(f"{problem[0]} (got {redact(v)!r}); {problem[1]}")
        return v

    @field_validator("curve_points", mode="before")
    @classmethod
    def _points(cls, v):
        if v != "all" and (not isinstance(v, int) or isinstance(v, bool) or v < 2):
            raise ValueError("must be a count of checkpoints >= 2, or 'all' to send every checkpoint")
        return v

    def points_sent(self) -> int | None:
        """How many checkpoints of a curve go to MLflow (None: all)."""
        return None if self.curve_points == "all" else self.curve_points


class Search(_Frozen):
    """The adaptive threshold search (``python -m pipeline search``): for each cell of the grid
    (its ``m`` list is not used), the smallest width on the ladder ``m_min * 2^(i/resolution)``
    whose success rate over ``seeds.init`` reaches ``1 - delta_fail`` under ``criterion`` at
    tolerance ``eps``. It steps up ``gallop_octaves`` at a time until a width meets the target,
    bisects in log m, confirms one step above, and gives ``extra_seeds`` more seeds to widths
    whose outcomes disagree. Seeds are evaluated ``chunk`` at a time, stopping a width as soon
    as its outcome is certain."""

    m_min: PosInt = 16
    m_max: PosInt = 8192
    resolution: Literal[1, 2, 4] = 1
    gallop_octaves: PosInt = 2
    criterion: str = "interpolation"
    eps: Annotated[float, Field(gt=0, lt=1)] = 1e-3
    extra_seeds: NonNegInt = 8
    chunk: PosInt | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _float(cls, v):
        return _number(v)

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v):
        success_criterion(v)  # one line listing the known criteria if unknown
        return v

    @model_validator(mode="after")
    def _range(self):
        if self.m_max < self.m_min:
            raise ValueError(f"m_max={self.m_max} must be >= m_min={self.m_min}")
        return self


_D_RULE_NODES = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Name, ast.Constant,
                 ast.Load, ast.Call, ast.UnaryOp, ast.USub)


@lru_cache(maxsize=4096)
def _check_placeable(n: int, d: int, k: int, delta: float, bias: bool, target: str, data_seed: int,
                     delta_2: float) -> None:
    """Build the instance once: a separation below the theoretical limit can still be out of
    reach of random placement, and that must surface here, not in a task. Not built where
    placement fails with probability below 1e-30 (``sobolev.problem.placement_failure_bound``,
    e.g. every instance of configs/paper.yaml): building hundreds of large instances took
    minutes, and the check could not fail there."""
    if placement_failure_bound(n, d, delta, bias=bias) < 1e-30:
        return
    try:
        make_problem(n, d, k, delta, bias=bias, target=target, seed=data_seed, delta_2=delta_2, dtype=torch.float64)
    except ValueError as exc:
        raise ValueError(f"grid.delta: delta={delta} cannot be reached by random placement of n={n} points in d={d} "
                         f"dimensions (bias={bias}, data seed {data_seed}); lower delta or raise d") from exc


def _check_d_rule(rule: str) -> None:
    try:
        tree = ast.parse(rule, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"d={rule!r} is not an expression in n and k (e.g. 'k + 4' or '2*k')") from exc
    for node in ast.walk(tree):
        if not isinstance(node, _D_RULE_NODES):
            raise ValueError(f"d={rule!r}: only integers, n, k, + - * //, max() and min() are allowed")
        if isinstance(node, ast.Name) and node.id not in ("n", "k", "max", "min"):
            raise ValueError(f"d={rule!r}: unknown name {node.id!r}; use n and k")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in ("max", "min")):
            raise ValueError(f"d={rule!r}: only max() and min() may be called")


def eval_d(rule: int | str, n: int, k: int) -> int:
    if isinstance(rule, int):
        return rule
    return int(eval(compile(ast.parse(rule, mode="eval"), "<d>", "eval"), {"__builtins__": {}},  # noqa: S307
                    {"n": n, "k": k, "max": max, "min": min}))


class SweepConfig(_Frozen):
    """A whole sweep. ``d`` is an integer or a rule in ``n`` and ``k`` (e.g. ``"k + 4"``)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    grid: Grid
    d: Union[PosInt, str] = "max(2*k, 8)"
    target: Literal["random", "teacher"] = "random"
    delta_2: Annotated[float, Field(ge=0)] = 0.0
    seeds: Seeds = Seeds()
    training: Training = Training()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    output: str = "runs/{name}"
    search: Search | None = None
    delta_fail: Annotated[float, Field(gt=0, lt=1)] = 0.1

    @field_validator("delta_2", "delta_fail", mode="before")
    @classmethod
    def _float(cls, v):
        return _number(v)

    @field_validator("d")
    @classmethod
    def _d(cls, v):
        if isinstance(v, str):
            _check_d_rule(v)
        return v

    @model_validator(mode="after")
    def _cells(self):
        both = sorted(set(self.grid.training_axes()) & self.training.model_fields_set)
        if both:
            raise ValueError(f"grid.{both[0]}: also set under training; keep the list in grid or the value in training")
        variants = self.training_variants()
        eps = max(t.eps for t in variants)
        if self.search and self.search.eps < eps:
            raise ValueError(f"search.eps: {self.search.eps:g} is below training.eps={eps:g}, where runs "
                             f"stop; raise search.eps or lower training.eps")
        for n in self.grid.n:
            for k in self.grid.k:
                try:
                    d = eval_d(self.d, n, k)
                except Exception as exc:  # noqa: BLE001 - a rule that fails for some cell
                    raise ValueError(f"d: rule {self.d!r} fails at n={n}, k={k}: {exc}") from exc
                if k >= d:
                    raise ValueError(f"d: k={k} must be < d={d} (at n={n}); raise d or drop k={k} from grid.k")
                if k and self.delta_2 >= 1 / k:
                    raise ValueError(f"delta_2: {self.delta_2} must be < 1/k = {1 / k:.4g} for k={k}; lower delta_2")
                for bias in self.grid.bias:
                    limit = max_separation(n, d, bias=bias)
                    for delta in self.grid.delta:
                        if delta > limit:
                            raise ValueError(
                                f"grid.delta: delta={delta} is beyond the separation {n} points in d={d} dimensions "
                                f"allow ({limit:.4g}, bias={bias}); lower delta or raise d")
                        for data_seed in self.seeds.data:
                            _check_placeable(n, d, k, delta, bias, self.target, data_seed, self.delta_2)
        return self

    def d_of(self, n: int, k: int) -> int:
        return eval_d(self.d, n, k)

    def output_dir(self) -> Path:
        return Path(self.output.format(name=self.name))

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def training_variants(self) -> list[TrainConfig]:
        """The training settings of the sweep's runs: ``training`` with each combination of the
        training axes of ``grid`` (a single one when the grid lists none)."""
        base, axes = self.training.model_dump(), self.grid.training_axes()
        return [_train_config({**base, **dict(zip(axes, combo))}, "grid")
                for combo in itertools.product(*axes.values())]

    def run_defining(self) -> dict:
        """What every run of this sweep shares (not the grid, resources, tracking or output): a
        results directory belongs to one such setting. Training settings at their default are left
        out, so that adding a setting with a default keeps the fingerprint (as it keeps run ids)."""
        return dict(name=self.name, d=self.d, target=self.target, delta_2=self.delta_2,
                    training=non_default_settings(self.training.model_dump()))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.run_defining(), sort_keys=True).encode()).hexdigest()[:16]


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if str(p).replace("_", "a").isalnum())
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key; remove it or check its spelling"
    if err["type"] == "missing":
        return f"{loc}: required field missing; add it"
    got = err.get("input")
    short = not isinstance(got, (dict, list)) or len(repr(got)) < 60
    shown = f" (got {got!r})" if short and "(got " not in msg else ""  # some messages name the value already
    return f"{loc}: {msg}{shown}" if loc else msg


def parse_config(data: object, *, source: str = "config") -> SweepConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_one_line(exc)}") from None


def load_config(path: str | os.PathLike, **overrides) -> SweepConfig:
    """Read and validate a YAML sweep file; ``overrides`` replace top-level keys."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file; pass the path of a YAML sweep file (see configs/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: malformed YAML{where}: {getattr(exc, 'problem', exc)}; fix the syntax") from None
    if isinstance(data, dict):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(data, source=str(p))
