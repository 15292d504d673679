"""The sweep driver: plan the grid, fan it out over Ray, keep every finished task, resume.

A sweep reads in one direction: the plan (cells, run ids, tasks) from the validated config
alone (:func:`pipeline.grid.plan_sweep`), then the session (:class:`pipeline.session.SweepSession`:
checks, lock, results, tracker, Ray), which it shares with the threshold search. This module only
decides what to train: every run of the grid not already in Parquet.
"""

from __future__ import annotations

import sys

from .config import SweepConfig
from .estimate import task_weights
from .grid import TaskSpec, plan_sweep
from .options import RunOptions, options_of
from .session import SetupError, SweepReport, SweepSession, init_ray, preflight

__all__ = ["SetupError", "SweepReport", "init_ray", "preflight", "run_sweep", "Progress"]


def run_sweep(cfg: SweepConfig, options: RunOptions | None = None, **keywords) -> SweepReport:
    """Train every run of the grid not already in the output (one writer per output: ``wait``
    seconds to queue behind another driver, else refuse at once); see :class:`SweepSession`.
    ``options`` or its fields as keywords (``run_sweep(cfg, out=..., progress=False)``)."""
    options = options_of(options, keywords)
    planned = plan_sweep(cfg)
    with SweepSession(cfg, "run", options) as session:
        report = session.report
        tasks = planned.tasks(skip=session.done_run_ids())
        report.grid_runs, report.tasks = planned.grid_runs, len(tasks)
        report.skipped = report.grid_runs - sum(len(t.seeds) for t in tasks)
        session.open_tracker(grid_runs=report.grid_runs, tasks=len(tasks))
        if tasks:
            _fan_out(session, tasks, options.progress)
    return session.report


class Progress:
    """Estimated task-seconds done of ``tasks`` (each run counts its share of its task's estimate,
    once, whether it landed or failed, and however its task was split on a retry): never past the
    total, exactly the total when every run is accounted for."""

    def __init__(self, tasks: list[TaskSpec], weights: dict[str, float]):
        self.share = {rid: weights[t.task_id] / len(t.seeds) for t in tasks for rid in t.run_ids}
        self.total = sum(self.share.values())
        self.done = 0.0

    def landed(self, task: TaskSpec) -> float:
        """Account for ``task``'s runs; returns the increment (estimated seconds)."""
        before = self.done
        for rid in task.run_ids:
            self.done += self.share.pop(rid, 0.0)
        if not self.share:  # every run: the total itself, not a sum that rounding may put above it
            self.done = self.total
        self.done = min(self.done, self.total)
        return self.done - before


def _fan_out(session: SweepSession, tasks, progress: bool) -> None:
    from tqdm import tqdm  # only a sweep that trains draws a bar: `--help` and `status` stay light

    # the bar counts estimated task-seconds, not runs, so its ETA weighs big tasks as they are
    done = Progress(tasks, task_weights(session.cfg, tasks))
    bar = tqdm(total=done.total, unit="est-s", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc=session.cfg.name, mininterval=0.5 if sys.stderr.isatty() else 15.0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
    runs_done, runs_all = 0, sum(len(t.seeds) for t in tasks)

    def landed(task, tag, result) -> None:
        nonlocal runs_done
        runs_done += len(task.seeds)
        bar.set_postfix_str(f"{runs_done}/{runs_all} runs", refresh=False)
        done.landed(task)
        bar.n = done.done  # set, not added: a sum of float steps may round past the total (tqdm warns at >100%)
        bar.update(0)

    for task in tasks:
        session.submit(task)
    try:
        session.work(landed)
    finally:
        bar.close()
