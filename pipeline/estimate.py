"""The ``--dry-run`` estimate: grid size, tasks, and the time they take on the resources asked for.

A run takes at most ``t_budget * lambda_max / step_factor`` steps (``lambda_max(H(0)) ~
lambda_max(H^inf)``, the step being ``step_factor / lambda_max``), capped by ``max_steps``; runs
that reach ``eps`` stop earlier, so step counts are upper bounds. A task's time is its steps times
this machine's cost of one batched training step, ``a + b * R n (k+1) m (d+bias)`` seconds for
``R`` replicas, plus a fixed cost per task. ``a``, ``b`` and the fixed cost are measured once per
machine and thread count by timing :func:`sobolev.train` on three shapes, checked on a fourth
(the calibration error printed), and cached under ``~/.cache/sobolev-scaling/`` (or
``$SOBOLEV_CACHE``); ``--dry-run`` never re-times on a later call.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

import torch

from records.schema import Cell
from sobolev.ntk import arccos_kernel, expand_kernel
from sobolev.problem import effective_data, make_problem
from sobolev.settings import TrainConfig

from .config import SweepConfig
from .grid import TaskSpec, cells, plan
from .task import execute
from .widthsearch import ladder

GPU_FLOPS = 20e12  # an assumed sustained float32 rate for one data-centre GPU on these GEMM shapes
GPU_STEP_LATENCY = 100e-6  # kernel launches of one batched step: small shapes are latency-bound on a GPU
# (n, k, d, m, replicas) timed for the calibration; the last one is held out to measure its error
SHAPES = ((8, 1, 6, 256, 1), (8, 2, 6, 4096, 4), (16, 2, 6, 16384, 4), (16, 1, 6, 2048, 4))
CALIBRATION_STEPS = 120
# lambda_max(H) moves between the checkpoints where the step is refreshed: on configs/smoke.yaml runs took
# up to 1.12 times t_budget * lambda_max(H^inf) / step_factor steps
STEP_MARGIN = 1.25
DEFAULT = dict(a=4e-4, b=4e-10, task=0.02)  # relative task weights for the progress bar before any calibration


@lru_cache(maxsize=None)
def _spectrum(n, d, k, delta, bias, target, delta_2, data_seed) -> tuple[float, float]:
    p = make_problem(n, d, k, delta, bias=bias, target=target, seed=data_seed, delta_2=delta_2, dtype=torch.float64)
    X, V, _, _, _ = effective_data(p)
    ev = torch.linalg.eigvalsh(expand_kernel(arccos_kernel(X), X, V))
    return ev[0].item(), ev[-1].item()


def run_steps(cell: Cell, tr: TrainConfig) -> int:
    """Upper bound on the gradient steps of one run of ``cell`` with training settings ``tr``."""
    lam_star, lam_max = _spectrum(cell.n, cell.d, cell.k, cell.delta, cell.bias, cell.target, cell.delta_2,
                                  cell.data_seed)
    t_budget = tr.t_max / lam_star if tr.t_unit == "lambda_star" else tr.t_max
    return min(tr.max_steps, math.ceil(STEP_MARGIN * t_budget * lam_max / tr.step_factor))


def step_size(n: int, k: int, d: int, m: int, bias: bool, replicas: int) -> float:
    """The work of one batched step, in the calibration's unit: R n (k+1) m (d+bias)."""
    return replicas * n * (k + 1) * m * (d + bias)


def run_flops(cell: Cell, tr: TrainConfig) -> tuple[float, int]:
    """Upper bound on one run's FLOPs (for the GPU figure), and its number of steps."""
    steps = run_steps(cell, tr)
    D = cell.d + cell.bias
    return steps * 6 * cell.n * (cell.k + 1) * cell.m * D, steps


def _time_task(n: int, k: int, d: int, m: int, replicas: int, steps: int, cfg: SweepConfig) -> float:
    """Seconds of one real task (:func:`pipeline.task.execute`: the instance, lambda_*, training with
    its checkpoints, the records) that takes exactly ``steps`` steps."""
    # no replica stops before its step budget
    train = dataclasses.replace(cfg.training_variants()[0], eps=1e-300, t_max=1e9, t_unit="absolute", max_steps=steps,
                                step_factor=1.0, divergence_factor=1e30)
    cell = Cell(n=n, k=k, d=d, m=m, delta=0.5, bias=False, target="random", delta_2=0.0, data_seed=0)
    task = TaskSpec(cell=cell, train=train, seeds=tuple(range(replicas)), sweep="calibration", delta_fail=0.1)
    t0 = time.perf_counter()
    execute(task)
    return time.perf_counter() - t0


def calibrate(cfg: SweepConfig, threads: int) -> dict:
    """Fit ``task + steps * (a + b * size)`` to real tasks of three shapes (1 and CALIBRATION_STEPS
    steps), and measure its error on a fourth shape."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _time_task(*SHAPES[0], steps=5, cfg=cfg)  # warm-up: first-call costs are not per-step costs
        fit, held_out = SHAPES[:-1], SHAPES[-1]
        fixed = min(_time_task(*s, steps=1, cfg=cfg) for s in fit)
        xs = [step_size(n, k, d, m, False, r) for n, k, d, m, r in fit]
        ys = [(_time_task(*s, steps=CALIBRATION_STEPS, cfg=cfg) - fixed) / CALIBRATION_STEPS for s in fit]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = max(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 0.0)
        a = max(my - b * mx, 0.0)
        n, k, d, m, r = held_out
        measured = _time_task(*held_out, steps=CALIBRATION_STEPS, cfg=cfg)
        predicted = fixed + CALIBRATION_STEPS * (a + b * step_size(n, k, d, m, False, r))
    finally:
        torch.set_num_threads(old)
    return dict(a=a, b=b, task=fixed, error=abs(predicted - measured) / measured, threads=threads,
                when=time.strftime("%F %T"), machine=_machine(), load=round(os.getloadavg()[0], 2))


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}|{os.cpu_count()}cpu|{cpu}|torch{torch.__version__}"


def cache_file() -> Path:
    root = os.environ.get("SOBOLEV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "sobolev-scaling"
    return Path(root) / "calibration.json"


def calibration(cfg: SweepConfig, *, measure: bool = True, refresh: bool = False) -> dict | None:
    """This machine's cached calibration for the config's threads per task and dtype; measured (a few
    seconds) and cached on first use or with ``refresh`` (else None when ``measure`` is false)."""
    threads = max(1, int(cfg.resources.num_cpus))
    path, key = cache_file(), f"{_machine()}|{threads}threads|{cfg.training_variants()[0].dtype}"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if (key in cached and not refresh) or not measure:
        return cached.get(key)
    cached[key] = calibrate(cfg, threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only means calibrating again next time
    return cached[key]


def task_seconds(cfg: SweepConfig, task: TaskSpec, cal: dict) -> float:
    """Upper bound on one task's time on this machine (its replicas step together)."""
    c = task.cell
    return cal["task"] + run_steps(c, task.train) * (cal["a"] + cal["b"] * step_size(c.n, c.k, c.d, c.m, c.bias,
                                                                                  len(task.seeds)))


def task_weights(cfg: SweepConfig, tasks: list[TaskSpec]) -> dict[str, float]:
    """Estimated seconds per task (relative weights for a progress bar's ETA); never calibrates."""
    cal = calibration(cfg, measure=False) or DEFAULT
    return {t.task_id: task_seconds(cfg, t, cal) for t in tasks}


def search_plan_config(cfg: SweepConfig) -> SweepConfig:
    """The grid a search could evaluate at most: every width of its ladder, every seed and extra seed."""
    s = cfg.search
    seeds = list(cfg.seeds.init) + list(range(max(cfg.seeds.init) + 1, max(cfg.seeds.init) + 1 + s.extra_seeds))
    grid = cfg.grid.model_copy(update=dict(m=list(ladder(s.m_min, s.m_max, s.resolution))))
    return cfg.model_copy(update=dict(grid=grid, seeds=cfg.seeds.model_copy(update=dict(init=seeds))))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.3g} min" if seconds >= 60 \
        else f"{seconds:.3g} s"


def estimate_lines(cfg: SweepConfig, out, *, search: bool = False, num_cpus: int | None = None,
                   recalibrate: bool = False) -> list[str]:
    g = cfg.grid
    head = []
    if search:
        head = [f"search: at most every width of the ladder m={cfg.search.m_min}..{cfg.search.m_max} for every "
                f"seed and extra seed (an upper bound: a search evaluates a fraction of it)"]
        cfg = search_plan_config(cfg)
    tasks, total = plan(cfg)
    cell_list = [(c, t) for c in cells(cfg) for t in cfg.training_variants()]
    threads = max(1, int(cfg.resources.num_cpus))
    cal = calibration(cfg, refresh=recalibrate)
    secs = [task_seconds(cfg, t, cal) for t in tasks]
    flops = sum(run_flops(t.cell, t.train)[0] * len(t.seeds) for t in tasks)
    gpu = flops / GPU_FLOPS + sum(run_steps(t.cell, t.train) for t in tasks) * GPU_STEP_LATENCY
    cpus = num_cpus or os.cpu_count() or 1
    slots = max(1, int(cpus // cfg.resources.num_cpus))
    work, longest = sum(secs), max(secs)
    r = cfg.resources
    lines = head + [
        f"sweep {cfg.name}: {len(cell_list)} cells x {len(cfg.seeds.init)} seeds = {total} runs "
        f"(n={g.n}, k={g.k}, m={g.m}, delta={g.delta}, bias={g.bias}, data seeds={cfg.seeds.data})",
        f"tasks: {len(tasks)} ({r.num_cpus:g} CPU, {r.num_gpus:g} GPU each; replicas per task: {r.replicas_per_task})",
        f"gradient steps per run: at most {min(run_steps(c, t) for c, t in cell_list)} to "
        f"{max(run_steps(c, t) for c, t in cell_list)} (the flow-time budget; runs reaching eps="
        f"{min(t.eps for _, t in cell_list):g} stop earlier)",
        f"task time: up to about {_hours(work)} in all, longest task {_hours(longest)} (every run at its step "
        f"budget; {threads} thread(s) per task; "
        f"this machine's step cost measured {cal['when']} at load {cal.get('load', '?')} (now "
        f"{os.getloadavg()[0]:.1f}), {100 * cal['error']:.0f}% error on a held-out shape; other work on the "
        f"machine slows tasks down: --recalibrate measures again)",
        f"wall clock here ({cpus} CPUs = {slots} task(s) at once): up to about "
        f"{_hours(max(work / slots, longest))}, "
        f"plus Ray's start-up",
        f"on a cluster with C CPUs of this speed: up to about the larger of {_hours(work * r.num_cpus)} / C and "
        f"{_hours(longest)}",
    ]
    if r.num_gpus > 0:
        per_gpu = max(1, int(1 // r.num_gpus))
        lines.append(f"on G GPUs ({per_gpu} task(s) per GPU), at an assumed {GPU_FLOPS / 1e12:.0f} TFLOP/s and "
                     f"{GPU_STEP_LATENCY * 1e6:.0f} us per step (not measured here): about {_hours(gpu)}/G")
    return lines + [f"output: {out}"]
