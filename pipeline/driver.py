"""The sweep driver: plan the grid, fan it out over Ray, keep every finished task, resume.

The frame (checks before any work, Parquet and MLflow, the closing summary) is
:class:`pipeline.session.SweepSession`, shared with the threshold search; this module only
decides what to train: every run of the grid not already in Parquet.
"""

from __future__ import annotations

import sys
from pathlib import Path

from records.tables import done_run_ids

from .config import SweepConfig
from .estimate import task_weights
from .grid import plan
from .session import SetupError, SweepReport, SweepSession, init_ray, preflight
from .stop import DEFAULT_GRACE_S

__all__ = ["SetupError", "SweepReport", "init_ray", "preflight", "run_sweep"]


def run_sweep(cfg: SweepConfig, *, out: str | Path | None = None, tracking_uri: str | None = None,
              mlflow: bool = True, force: bool = False, address: str | None = None, num_cpus: int | None = None,
              progress: bool = True, max_in_flight: int | None = None, wait: float | None = None,
              grace_s: float = DEFAULT_GRACE_S) -> SweepReport:
    """Train every run of the grid not already in ``out`` (one writer per output: ``wait`` seconds
    to queue behind another driver, else refuse at once); see :class:`SweepSession`."""
    session = SweepSession(cfg, "run", out=out, tracking_uri=tracking_uri, mlflow=mlflow, force=force,
                           address=address, num_cpus=num_cpus, max_in_flight=max_in_flight, wait=wait,
                           grace_s=grace_s)
    with session:
        report = session.report
        tasks, report.grid_runs = plan(cfg, skip=done_run_ids(session.out))
        report.tasks = len(tasks)
        report.skipped = report.grid_runs - sum(len(t.seeds) for t in tasks)
        session.open_tracker(grid_runs=report.grid_runs, tasks=len(tasks))
        if tasks:
            _fan_out(session, tasks, progress)
    return session.report


def _fan_out(session: SweepSession, tasks, progress: bool) -> None:
    from tqdm import tqdm  # only a sweep that trains draws a bar: `--help` and `status` stay light

    # the bar counts estimated task-seconds, not runs, so its ETA weighs big tasks as they are
    work = task_weights(session.cfg, tasks)
    bar = tqdm(total=round(sum(work.values()), 1), unit="est-s", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc=session.cfg.name, mininterval=0.5 if sys.stderr.isatty() else 15.0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
    runs_done, runs_all = 0, sum(len(t.seeds) for t in tasks)

    def landed(task, tag, result) -> None:
        nonlocal runs_done
        runs_done += len(task.seeds)
        bar.set_postfix_str(f"{runs_done}/{runs_all} runs", refresh=False)
        bar.update(round(work[task.task_id], 1))

    for task in tasks:
        session.submit(task)
    try:
        session.work(landed)
    finally:
        bar.close()
