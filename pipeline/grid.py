"""From a sweep configuration to runs and tasks.

A run is one (cell, data seed, training settings, initialisation seed), identified by its
``run_id`` (:mod:`records.identity`). A task is a batch of runs of one cell and setting trained
together on one device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import psutil
import torch

from records.identity import run_id
from records.schema import CELL_COLUMNS, TRAINING_COLUMNS, Cell
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

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(run_id(self.cell, self.train, s) for s in self.seeds)

    @property
    def task_id(self) -> str:
        digest = hashlib.sha256(",".join(self.run_ids).encode()).hexdigest()[:12]
        return f"{self.cell.label()}-{digest}"


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


def plan(cfg: SweepConfig, *, skip: set[str] = frozenset()) -> tuple[list[TaskSpec], int]:
    """Tasks for every run of the grid not in ``skip`` (run ids), and the grid's run count."""
    tasks, total = [], 0
    for cell in cells(cfg):
        for train in cfg.training_variants():
            todo = [s for s in cfg.seeds.init if run_id(cell, train, s) not in skip]
            total += len(cfg.seeds.init)
            tasks += tasks_for(cfg, cell, train, todo)
    return tasks, total
