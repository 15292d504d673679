"""The settings of a training call (:class:`TrainConfig`), importable without torch.

Each setting is defined once here, with its type, default and doc (``train_config_fields``);
the sweep YAML, the results tables' columns, the MLflow params and the run ids derive from it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Mode = Literal["relu", "frozen"]
TimeUnit = Literal["lambda_star", "absolute"]
DType = Literal["float32", "float64"]
MODES: tuple[str, ...] = typing.get_args(Mode)
STATUSES = ("converged", "budget", "diverged")


def _setting(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training call: the single definition of each setting, its type and
    its default (``train_config_fields`` lists them). Integers must be >= 1, floats positive
    and finite, choices one of their ``Literal`` values."""

    mode: Mode = _setting("relu", "activation patterns: 'relu' recomputes them every step (the true "
                                  "dynamics), 'frozen' keeps those of t = 0 (the linearised NTK model)")
    eps: float = _setting(1e-6, "a replica converges (and stops) at relative loss L(t)/L(0) <= eps")
    t_max: float = _setting(12.0, "flow-time budget, in units of t_unit")
    t_unit: TimeUnit = _setting("lambda_star", "unit of t_max: 'lambda_star' (1/lambda_*, comparable across "
                                               "instances) or 'absolute' flow time")
    max_steps: int = _setting(100_000, "step budget per replica")
    step_factor: float = _setting(1.0, "step size eta = step_factor / lambda_max(H(t)), refreshed at checkpoints")
    check_every: int = _setting(16, "steps between host reads of the device buffers (stopping rules); "
                                    "changes only the net flip counts, no trajectory")
    checkpoints_per_decade: int = _setting(8, "log-spaced checkpoints (rows of the curves) per decade of steps")
    divergence_factor: float = _setting(1e6, "a replica diverges (and stops) at loss > divergence_factor * L(0)")
    dtype: DType = _setting("float32", "working dtype: train casts the problem and the weights to it")

    def __post_init__(self) -> None:
        for name, (kind, _, _) in train_config_fields().items():
            object.__setattr__(self, name, _validated(name, kind, getattr(self, name)))
        if self.eps >= 1:
            raise ValueError(f"TrainConfig.eps={self.eps!r}: a relative loss tolerance must be < 1")
        if self.divergence_factor <= 1:
            raise ValueError(f"TrainConfig.divergence_factor={self.divergence_factor!r}: must be > 1")

    def flow_time_budget(self, lambda_star: float) -> float:
        """The flow-time budget in absolute units.

        Args:
            lambda_star: ``lambda_min(H^inf)`` of the problem (the unit when ``t_unit`` is
                ``'lambda_star'``).

        Returns:
            ``t_max / lambda_star``, or ``t_max`` itself when ``t_unit`` is ``'absolute'``.
        """
        return self.t_max / lambda_star if self.t_unit == "lambda_star" else self.t_max


@functools.cache
def _config_fields() -> tuple[tuple[str, tuple[object, object, str]], ...]:
    hints = typing.get_type_hints(TrainConfig)
    return tuple((f.name, (hints[f.name], f.default, f.metadata["doc"])) for f in dataclasses.fields(TrainConfig))


def train_config_fields() -> dict[str, tuple[object, object, str]]:
    """Every ``TrainConfig`` setting, in declaration order.

    Returns:
        ``name -> (type, default, doc)``; the type is ``int``, ``float`` or a
        ``typing.Literal`` of the allowed strings.
    """
    return dict(_config_fields())


def _validated(name: str, kind, value):
    """``value`` checked against the setting's type (ints as int, floats as float)."""
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"TrainConfig.{name}={value!r}: expected one of {typing.get_args(kind)}")
        return value
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if kind is int:
        if not (number and float(value).is_integer() and value >= 1):
            raise ValueError(f"TrainConfig.{name}={value!r}: must be an integer >= 1")
        return int(value)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"TrainConfig.{name}={value!r}: must be a positive finite number")
    return float(value)


def checkpoint_steps(max_steps: int, per_decade: int) -> np.ndarray:
    """Log-spaced steps ``0, 1, 2, ...`` (``round(10^(i/per_decade))``) up to ``max_steps``.

    The grid does not depend on ``max_steps`` beyond the cut, so the step-size refreshes
    (made at checkpoints) and hence the trajectory do not either. Each replica also
    gets a checkpoint at its own stop.

    Args:
        max_steps: the step budget (the last step the grid may hold).
        per_decade: checkpoints per decade of steps.

    Returns:
        The steps, int64 (c,), increasing, starting at 0.
    """
    i = np.arange(int(math.ceil(math.log10(max(max_steps, 1)) * per_decade)) + 1)
    grid = np.unique(np.round(10.0 ** (i / per_decade)).astype(np.int64))
    return np.concatenate([[0], grid[grid <= max_steps]])
