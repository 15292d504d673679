"""The ``--dry-run`` estimate: grid size, tasks, and the gradient-descent work.

Steps per run are bounded by the flow-time budget: ``t_budget * lambda_max / step_factor``
with ``lambda_max(H(0)) ~ lambda_max(H^inf)``, capped by ``max_steps``; runs that reach
``eps`` stop earlier, so the estimate is an upper bound.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import torch

from sobolev import make_problem
from sobolev.ntk import arccos_kernel, expand_kernel
from sobolev.problem import effective_data
from sobolev.train import checkpoint_steps

from .config import SweepConfig
from .grid import cells, plan

GPU_FLOPS = 20e12  # an assumed sustained float32 rate for one data-centre GPU on these GEMM shapes
GPU_STEP_LATENCY = 100e-6  # kernel launches of one batched step: small shapes are latency-bound on a GPU


@lru_cache(maxsize=None)
def _spectrum(n, d, k, delta, bias, target, delta_2, data_seed) -> tuple[float, float]:
    p = make_problem(n, d, k, delta, bias=bias, target=target, seed=data_seed, delta_2=delta_2, dtype=torch.float64)
    X, V, _, _, _ = effective_data(p)
    ev = torch.linalg.eigvalsh(expand_kernel(arccos_kernel(X), X, V))
    return ev[0].item(), ev[-1].item()


def run_flops(cell, tr) -> tuple[float, int]:
    """Upper bound on one run's FLOPs (training settings ``tr``), and its number of steps."""
    lam_star, lam_max = _spectrum(cell.n, cell.d, cell.k, cell.delta, cell.bias, cell.target, cell.delta_2,
                                  cell.data_seed)
    t_budget = tr.t_max / lam_star if tr.t_unit == "lambda_star" else tr.t_max
    steps = min(tr.max_steps, math.ceil(t_budget * lam_max / tr.step_factor))
    D, N = cell.d + cell.bias, cell.n * (cell.k + 1)
    step = 6 * cell.n * cell.m * D
    ckpt = 4 * cell.n * cell.m * D + 2 * cell.n**2 * cell.m + 10 * N**3
    return steps * step + len(checkpoint_steps(steps, tr.checkpoints_per_decade)) * ckpt, steps


def measured_cpu_flops(threads: int) -> float:
    """This machine's float32 GEMM rate on a training-like shape (a fraction of a second)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(16, 4096, 17), torch.randn(16, 17, 32)
    try:
        torch.bmm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            torch.bmm(a, b)
            reps += 1
        return reps * 2 * a.numel() * 32 / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def estimate_lines(cfg: SweepConfig, out) -> list[str]:
    tasks, total = plan(cfg)
    cell_list = [(c, t) for c in cells(cfg) for t in cfg.training_variants()]
    per_cell = {(c, t): run_flops(c, t) for c, t in cell_list}
    seeds = len(cfg.seeds.init)
    flops = sum(f for f, _ in per_cell.values()) * seeds
    steps = sum(s for _, s in per_cell.values()) * seeds
    task_steps = sum(per_cell[t.cell, t.train][1] for t in tasks)  # a task steps all its replicas at once
    gpu_seconds = flops / GPU_FLOPS + task_steps * GPU_STEP_LATENCY
    biggest = max(per_cell, key=lambda c: per_cell[c][0])
    threads = max(1, int(cfg.resources.num_cpus))
    cpu = measured_cpu_flops(threads)
    g = cfg.grid
    return [
        f"sweep {cfg.name}: {len(cell_list)} cells x {seeds} seeds = {total} runs "
        f"(n={g.n}, k={g.k}, m={g.m}, delta={g.delta}, bias={g.bias}, data seeds={cfg.seeds.data})",
        f"tasks: {len(tasks)} ({cfg.resources.num_cpus:g} CPU, {cfg.resources.num_gpus:g} GPU each; "
        f"replicas per task: {cfg.resources.replicas_per_task})",
        f"gradient steps: at most {steps:.3g} in all; work at most {flops:.3g} FLOPs "
        f"(largest cell {biggest[0].label()}: {per_cell[biggest][0] * seeds:.3g} FLOPs, {per_cell[biggest][1]} steps/run)",
        f"time at this machine's measured {cpu / 1e9:.1f} GFLOP/s ({threads} threads): at most "
        f"{flops / cpu / 3600:.3g} task-hours; on GPUs at an assumed {GPU_FLOPS / 1e12:.0f} TFLOP/s and "
        f"{GPU_STEP_LATENCY * 1e6:.0f} us per task step: at most {gpu_seconds / 3600:.3g} GPU-hours "
        f"(tasks sharing a GPU overlap their latency)",
        f"output: {out}",
    ]
