"""How one invocation runs, as one validated, frozen object: :class:`RunOptions`.

The sweep configuration (:class:`pipeline.config.SweepConfig`) says what is trained; these say
where the results go and how the driver behaves. The CLI builds them once from its arguments;
``run_sweep``, ``run_search`` and ``SweepSession`` take them as they are. Library callers and
tests may pass the same fields as keywords (``run_sweep(cfg, out=..., progress=False)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .config import SweepConfig
from .errors import SetupError
from .stop import DEFAULT_GRACE_S
from .tracking import check_uri, resolve_uri


@dataclass(frozen=True)
class RunOptions:
    """``out``: the results directory (None: the config's ``output``); ``tracking_uri`` (None: the
    config's, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``); ``mlflow``: log to MLflow;
    ``force``: recompute runs already in Parquet; ``address``: a Ray cluster (None: ``RAY_ADDRESS``,
    else a local Ray of ``num_cpus`` CPUs); ``max_in_flight``: tasks submitted at once (None: twice
    the task slots); ``wait``: seconds to queue behind another writer of ``out`` (None: refuse);
    ``grace_s``: on SIGTERM/SIGINT, how long running tasks may take to land; ``progress``: a bar;
    ``task_timeout``: a task's time limit in seconds (None: the config's, else derived from its
    estimate, see ``pipeline.faults``)."""

    out: Path | None = None
    tracking_uri: str | None = None
    mlflow: bool = True
    force: bool = False
    address: str | None = None
    num_cpus: int | None = None
    max_in_flight: int | None = None
    wait: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    progress: bool = True
    task_timeout: float | None = None

    def __post_init__(self):
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        for name, flag in (("num_cpus", "--num-cpus"), ("max_in_flight", "max_in_flight")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SetupError(f"{flag}: {value!r} is not a count >= 1; pass a count >= 1 (or leave it out)")
        _seconds("--grace", self.grace_s, allow_zero=True)
        if self.wait is not None:
            _seconds("--wait", self.wait, allow_zero=True, allow_inf=True)
        if self.task_timeout is not None:
            _seconds("--task-timeout", self.task_timeout, allow_inf=True)
        if self.tracking_uri:
            check_uri(self.tracking_uri)

    def output(self, cfg: SweepConfig) -> Path:
        """The results directory: ``out``, else the config's ``output``."""
        return self.out if self.out is not None else cfg.output_dir()

    def tracking(self, cfg: SweepConfig) -> str | None:
        """The tracking URI to use, or None for Parquet only."""
        return resolve_uri(self.tracking_uri, cfg.tracking.uri) if self.mlflow and cfg.tracking.enabled else None

    def replace(self, **changes) -> "RunOptions":
        return dataclasses.replace(self, **changes)


def _seconds(flag: str, value, *, allow_zero: bool = False, allow_inf: bool = False) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
          and (value >= 0 if allow_zero else value > 0) and (allow_inf or math.isfinite(value)))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise SetupError(f"{flag}: {value!r} is not a number of seconds {bound}; pass SECONDS {bound}")


def options_of(options: RunOptions | None, keywords: dict) -> RunOptions:
    """``options``, or a :class:`RunOptions` of ``keywords`` (one of the two)."""
    if options is not None and keywords:
        raise TypeError(f"pass RunOptions or keywords, not both (got {sorted(keywords)})")
    return options if options is not None else RunOptions(**keywords)
