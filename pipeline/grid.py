"""From a sweep configuration to runs and tasks.

A run is one (cell, data seed, initialisation seed) with the sweep's training
settings; its ``run_id`` hashes exactly those fields, so the same run has the same
id on any machine, in any sweep, grid or search. A task is a batch of runs of one
cell trained together on one device.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from .config import SweepConfig

RUN_ID_VERSION = 1  # bump when the meaning of a run's fields changes


@dataclass(frozen=True)
class Cell:
    """One point of the problem grid, with its data seed: one problem instance."""

    n: int
    k: int
    d: int
    m: int
    delta: float
    bias: bool
    target: str
    delta_2: float
    data_seed: int

    def label(self) -> str:
        return (f"n{self.n}-k{self.k}-d{self.d}-m{self.m}-delta{self.delta:g}-"
                f"{'bias' if self.bias else 'nobias'}-data{self.data_seed}")


@dataclass(frozen=True)
class Training:
    mode: str
    eps: float
    t_max: float
    t_unit: str
    max_steps: int
    step_factor: float
    dtype: str
    check_every: int
    checkpoints_per_decade: int
    divergence_factor: float


def run_id(cell: Cell, training: Training, seed: int) -> str:
    key = dict(asdict(cell), **asdict(training), seed=int(seed), version=RUN_ID_VERSION)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TaskSpec:
    """What one Ray task trains: ``seeds`` of one cell as one batch."""

    cell: Cell
    training: Training
    seeds: tuple[int, ...]
    sweep: str
    delta_fail: float

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(run_id(self.cell, self.training, s) for s in self.seeds)

    @property
    def task_id(self) -> str:
        digest = hashlib.sha256(",".join(self.run_ids).encode()).hexdigest()[:12]
        return f"{self.cell.label()}-{digest}"


def training_of(cfg: SweepConfig) -> Training:
    return Training(**cfg.training.model_dump())


def cells(cfg: SweepConfig) -> list[Cell]:
    g = cfg.grid
    return [Cell(n=n, k=k, d=cfg.d_of(n, k), m=m, delta=float(delta), bias=bias, target=cfg.target,
                 delta_2=cfg.delta_2, data_seed=ds)
            for n in g.n for k in g.k for delta in g.delta for bias in g.bias for ds in cfg.seeds.data
            for m in g.m]


def replicas_per_task(cfg: SweepConfig, cell: Cell) -> int:
    """Seeds per task: as configured, or as many as fit the memory budget (``auto``)."""
    if cfg.resources.replicas_per_task != "auto":
        return cfg.resources.replicas_per_task
    import torch

    from sobolev.memory import replicas_that_fit

    budget = (cfg.resources.memory_budget_gb * 2**30 if cfg.resources.memory_budget_gb
              else default_budget_bytes(cfg.resources.num_cpus, cfg.resources.num_gpus))
    fit = replicas_that_fit(int(budget), cell.n, cell.d, cell.k, cell.m, getattr(torch, cfg.training.dtype),
                            bias=cell.bias, mode=cfg.training.mode, check_every=cfg.training.check_every)
    return max(1, min(fit, len(cfg.seeds.init)))


def default_budget_bytes(num_cpus: float, num_gpus: float) -> float:
    """A task's share of a device: 80% of the GPU memory it is given (that of the driver's first
    GPU, else 16 GiB per GPU), or half of the host memory per CPU times its CPUs."""
    import os

    import psutil
    import torch

    if num_gpus > 0:
        total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 16 * 2**30
        return 0.8 * total * min(num_gpus, 1.0)
    return 0.5 * psutil.virtual_memory().total / (os.cpu_count() or 1) * num_cpus


def plan(cfg: SweepConfig, *, skip: set[str] = frozenset()) -> tuple[list[TaskSpec], int]:
    """Tasks for every run of the grid not in ``skip`` (run ids), and the grid's run count."""
    training = training_of(cfg)
    tasks, total = [], 0
    for cell in cells(cfg):
        todo = [s for s in cfg.seeds.init if run_id(cell, training, s) not in skip]
        total += len(cfg.seeds.init)
        per = replicas_per_task(cfg, cell) if todo else 1
        for i in range(0, len(todo), per):
            tasks.append(TaskSpec(cell=cell, training=training, seeds=tuple(todo[i:i + per]), sweep=cfg.name,
                                  delta_fail=cfg.delta_fail))
    return tasks, total


CELL_FIELDS = tuple(f.name for f in fields(Cell))
TRAINING_FIELDS = tuple(f.name for f in fields(Training))
