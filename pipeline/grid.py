"""From a sweep configuration to runs and tasks.

A run is one (cell, data seed, training settings, initialisation seed), identified by its
``run_id`` (:mod:`records.identity`). A task is a batch of runs of one cell and setting trained
together on one device.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass

import psutil
import torch

import sobolev
from records.identity import run_id
from records.schema import CELL_COLUMNS, FAILED, RUN_COLUMNS, TRAINING_COLUMNS, Cell
from sobolev.memory import replicas_that_fit
from sobolev.settings import TrainConfig

from .config import SweepConfig


def task_of_record(record: dict) -> "TaskSpec":
    """The task that trained a runs-table row, re-made from what the row records (its cell, its
    settings, the seeds of its batch, ``batch_seeds``): executing it again on the same device and
    commit gives the same numbers bit for bit (in float32 a run depends on its batch)."""
    cell = Cell(**{f: record[f] for f in CELL_COLUMNS if f != "seed"})
    train = TrainConfig(**{f: record[f] for f in TRAINING_COLUMNS})
    return TaskSpec(cell=cell, train=train, seeds=tuple(json.loads(record["batch_seeds"])), sweep=record["sweep"],
                    delta_fail=record["delta_fail"])


@dataclass(frozen=True)
class TaskSpec:
    """What one Ray task trains: ``seeds`` of one cell as one batch, with one training setting."""

    cell: Cell
    train: TrainConfig
    seeds: tuple[int, ...]
    sweep: str
    delta_fail: float

    @functools.cached_property  # once per task: the hashes are asked for at every step of its life
    def run_ids(self) -> tuple[str, ...]:
        return tuple(run_id(self.cell, self.train, s) for s in self.seeds)

    @functools.cached_property
    def task_id(self) -> str:
        digest = hashlib.sha256(",".join(self.run_ids).encode()).hexdigest()[:12]
        return f"{self.cell.label()}-{digest}"

    def halves(self) -> tuple["TaskSpec", ...]:
        """The same runs as two tasks of half the replicas each (one task if it has one seed): a
        task that ran out of memory or time is retried so. Run ids do not depend on the batch."""
        if len(self.seeds) < 2:
            return (self,)
        cut = math.ceil(len(self.seeds) / 2)
        return dataclasses.replace(self, seeds=self.seeds[:cut]), dataclasses.replace(self, seeds=self.seeds[cut:])

    def failed_records(self, reason: str, git_commit: str) -> list[dict]:
        """Runs-table rows saying that the pipeline could not train this task's runs, and why
        (status ``failed``, measurements null): the next invocation trains them again."""
        common = dict({c: None for c in RUN_COLUMNS}, sweep=self.sweep, task_id=self.task_id,
                      **dataclasses.asdict(self.cell), **dataclasses.asdict(self.train), status=FAILED,
                      failure_reason=reason, version=sobolev.__version__, git_commit=git_commit,
                      batch_seeds=json.dumps(list(self.seeds)), delta_fail=self.delta_fail,
                      created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        return [dict(common, run_id=rid, seed=int(seed)) for rid, seed in zip(self.run_ids, self.seeds)]


def cells(cfg: SweepConfig) -> list[Cell]:
    g = cfg.grid
    return [Cell(n=n, k=k, d=cfg.d_of(n, k), m=m, delta=float(delta), bias=bias, target=cfg.target,
                 delta_2=cfg.delta_2, data_seed=ds)
            for n in g.n for k in g.k for delta in g.delta for bias in g.bias for ds in cfg.seeds.data
            for m in g.m]


def base_cells(cfg: SweepConfig) -> list[Cell]:
    """The cells without their width (``m = 0``), each once: what a width search runs over."""
    return list(dict.fromkeys(dataclasses.replace(c, m=0) for c in cells(cfg)))


def replicas_per_task(cfg: SweepConfig, cell: Cell, train: TrainConfig) -> int:
    """Seeds per task: as configured, or as many as fit the memory budget (``auto``)."""
    if cfg.resources.replicas_per_task != "auto":
        return cfg.resources.replicas_per_task
    budget = (cfg.resources.memory_budget_gb * 2**30 if cfg.resources.memory_budget_gb
              else default_budget_bytes(cfg.resources.num_cpus, cfg.resources.num_gpus))
    fit = replicas_that_fit(int(budget), cell.n, cell.d, cell.k, cell.m, getattr(torch, train.dtype),
                            bias=cell.bias, mode=train.mode, check_every=train.check_every,
                            eager=cfg.resources.num_gpus > 0)  # a GPU runs the eager pattern rule
    return max(1, min(fit, len(cfg.seeds.init)))


def default_budget_bytes(num_cpus: float, num_gpus: float) -> float:
    """A task's share of a device: 80% of the GPU memory it is given (that of the driver's first
    GPU, else 16 GiB per GPU), or half of the host memory per CPU times its CPUs."""
    if num_gpus > 0:
        total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 16 * 2**30
        return 0.8 * total * min(num_gpus, 1.0)
    return 0.5 * psutil.virtual_memory().total / (os.cpu_count() or 1) * num_cpus


def tasks_for(cfg: SweepConfig, cell: Cell, train: TrainConfig, seeds) -> list[TaskSpec]:
    """``seeds`` of one cell and setting, cut into batches of ``replicas_per_task``."""
    seeds = list(seeds)
    per = replicas_per_task(cfg, cell, train) if seeds else 1
    return [TaskSpec(cell=cell, train=train, seeds=tuple(seeds[i:i + per]), sweep=cfg.name, delta_fail=cfg.delta_fail)
            for i in range(0, len(seeds), per)]


@dataclass(frozen=True)
class RunGroup:
    """The runs of one cell and training setting: every seed, as one task that :meth:`tasks`
    cuts into batches of ``per_task``."""

    whole: TaskSpec
    per_task: int

    def tasks(self, skip: set[str] | frozenset = frozenset()) -> list[TaskSpec]:
        todo = tuple(s for s, rid in zip(self.whole.seeds, self.whole.run_ids) if rid not in skip)
        return [dataclasses.replace(self.whole, seeds=todo[i:i + self.per_task])
                for i in range(0, len(todo), self.per_task)]


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep (cells, training settings, seeds, run ids) and its batching, from the
    validated configuration alone: made before the output, the tracker or Ray are touched."""

    groups: tuple[RunGroup, ...]

    @property
    def grid_runs(self) -> int:
        return sum(len(g.whole.seeds) for g in self.groups)

    def tasks(self, skip: set[str] | frozenset = frozenset()) -> list[TaskSpec]:
        """The tasks of every run not in ``skip`` (run ids, e.g. those already in Parquet)."""
        return [t for g in self.groups for t in g.tasks(skip)]


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    seeds = tuple(cfg.seeds.init)
    groups = []
    for cell in cells(cfg):
        for train in cfg.training_variants():
            whole = TaskSpec(cell=cell, train=train, seeds=seeds, sweep=cfg.name, delta_fail=cfg.delta_fail)
            groups.append(RunGroup(whole, replicas_per_task(cfg, cell, train)))
    return SweepPlan(tuple(groups))


def plan(cfg: SweepConfig, *, skip: set[str] = frozenset()) -> tuple[list[TaskSpec], int]:
    """Tasks for every run of the grid not in ``skip`` (run ids), and the grid's run count."""
    p = plan_sweep(cfg)
    return p.tasks(skip), p.grid_runs
