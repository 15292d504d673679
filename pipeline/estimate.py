"""The ``--dry-run`` price of a sweep: its runs, its tasks, and what they cost on this machine and on
rented GPUs, in seconds for any grid up to a million runs.

The model, which :func:`estimate_lines` prints with its assumptions:

- **Steps of a run**: the step is ``step_factor / lambda_max(H(t))`` and the flow-time budget
  ``t_max / lambda_*``, so a run takes at most ``STEP_MARGIN * t_max * (lambda_max / lambda_*) /
  step_factor`` steps (``lambda_max(H(t))`` wanders above ``lambda_max(H^inf)``: the margin), capped
  by ``max_steps``. Runs that reach ``eps`` stop earlier: every figure is an upper bound.
- **The spectra** ``lambda_*, lambda_max`` of ``H^inf``, per instance (:class:`Spectra`): exact where
  cheap (measured here within a time budget, smallest first) or cached (``spectra.json`` beside the
  calibration, keyed by the instance); otherwise fitted over ``n`` from the measured instances of the
  same ``(d, k, delta, bias)``; with no such instance, Proposition 1's bound.
- **A step** of ``R`` replicas (:func:`step_traffic`): four GEMMs over the ``(R, m, n)`` activation
  patterns, ``8 R m n D`` FLOPs (``D = d + bias``; frozen mode two, ``4 R m n D``), and
  ``PATTERN_PASSES`` passes over the patterns (``R m n`` elements each), plus a fixed cost per step.
- **Checkpoints** (``checkpoints_per_decade`` a decade of steps, and one at the stop): one
  ``eigvalsh`` of ``H`` (``N = n (k+1)``) per replica; at the start ``lambda_*`` and ``H(0)``'s
  ``eigh`` (about 3 eigvalsh) per replica.
- **This machine**: ``a + b R m n D`` seconds a step and the fixed cost of a task, timed once on real
  training of three shapes (the error on a fourth printed), and the eigvalsh time per ``N^3``,
  cached under ``~/.cache/sobolev-scaling/`` (or ``$SOBOLEV_CACHE``).
- **GPUs**: a step takes the larger of its FLOPs at an assumed share of the documented peak, its
  pattern passes at an assumed share of the documented bandwidth, and the launch latency of its
  kernels (:data:`GPUS`, :data:`GEMM_FRACTION`, ...; not measured here: ``benchmarks/gpu_check.sh``
  prints the measured figures beside them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import sobolev
from records.schema import Cell
from sobolev.ntk import gram_infinite
from sobolev.problem import alpha_beta, make_problem
from sobolev.settings import TrainConfig, checkpoint_steps
from sobolev.theory import augmented_separation, prop1_lower_bound

from .config import SweepConfig
from .grid import TaskSpec, cells, replicas_per_task
from .task import execute
from .widthsearch import ladder


@dataclasses.dataclass(frozen=True)
class GPU:
    """A GPU a user would rent: documented peaks (dense, per GPU)."""

    name: str
    float64: float  # FLOP/s of float64 GEMMs (cuBLAS runs DGEMM on the FP64 tensor cores)
    float32: float  # FLOP/s of float32 without tensor cores (PyTorch leaves TF32 off for matmuls by default)
    bandwidth: float  # bytes/s of the device memory
    memory: float  # bytes


GPUS = (
    # NVIDIA H100 Tensor Core GPU datasheet, SXM5: FP64 Tensor Core 67 TFLOPS, FP32 67 TFLOPS, 80 GB HBM3, 3.35 TB/s
    GPU("H100", 67e12, 67e12, 3.35e12, 80e9),
    # NVIDIA H200 Tensor Core GPU datasheet, SXM: the H100's GH100 compute (FP64 Tensor Core 67 TFLOPS,
    # FP32 67 TFLOPS) with 141 GB HBM3e at 4.8 TB/s
    GPU("H200", 67e12, 67e12, 4.8e12, 141e9),
)
# Assumed, not measured here (benchmarks/gpu_check.sh measures them where a GPU is lent):
GEMM_FRACTION = 0.25  # share of peak FLOP/s in the step's GEMMs: skinny (n and D <= a few hundred), batched over R
BANDWIDTH_FRACTION = 0.7  # share of peak bandwidth in the elementwise passes over the patterns
GPU_STEP_LATENCY = 150e-6  # seconds a step's ~20 kernel launches take from Python (the loop never syncs)
GPU_EIGH_RATE = 0.5e12  # FLOP/s of one float64 eigvalsh (4/3 N^3; cuSOLVER's tridiagonal reduction is memory-bound)
GPU_TASK_FIXED = 5.0  # seconds a task spends outside its steps: CUDA context, the instance, the records
# Per element of the (R, m, n) patterns, per step of the eager rules (sobolev.patterns, as a GPU runs them):
# passes of the working dtype and bytes of bool. relu: read by the two GEMMs of the step, written by the
# pre-activation GEMM, threshold and sign (2 each), the signed change (3) and its GEMM into dG (1), the flip
# count (3 and a sum), and the bits seen flipping (4 bool bytes); frozen: the two GEMMs' reads
PATTERN_PASSES = {"relu": (16, 4), "frozen": (2, 0)}
WEIGHT_PASSES = {"relu": 5, "frozen": 3}  # reads and writes of W (R, m, D) a step
STEP_FLOPS = {"relu": 8, "frozen": 4}  # x R m n D: the GEMMs of a step (sobolev.step.Workspace, ReluPatterns)


def step_traffic(R, m, n, D, *, relu, float64):
    """FLOPs and bytes of device memory moved by one step of ``R`` replicas (arrays broadcast)."""
    flops = np.where(relu, STEP_FLOPS["relu"], STEP_FLOPS["frozen"]) * R * m * n * D
    size = np.where(float64, 8, 4)
    per_element = np.where(relu, PATTERN_PASSES["relu"][0] * size + PATTERN_PASSES["relu"][1],
                           PATTERN_PASSES["frozen"][0] * size + PATTERN_PASSES["frozen"][1])
    weights = np.where(relu, WEIGHT_PASSES["relu"], WEIGHT_PASSES["frozen"]) * size * R * m * D
    return flops, per_element * R * m * n + weights


def gpu_step_seconds(gpu: GPU, R, m, n, D, *, relu, float64):
    """The model's seconds of one step of ``R`` replicas on ``gpu`` (arrays broadcast): the device
    busy (the larger of its GEMMs' FLOPs and its passes over the patterns, at the assumed shares of
    the peaks), and the wall (at least the launch latency)."""
    flops, moved = step_traffic(R, m, n, D, relu=relu, float64=float64)
    busy = np.maximum(flops / (np.where(float64, gpu.float64, gpu.float32) * GEMM_FRACTION),
                      moved / (gpu.bandwidth * BANDWIDTH_FRACTION))
    return busy, np.maximum(busy, GPU_STEP_LATENCY)


def gpu_eigvalsh_seconds(N):
    """The model's seconds of one float64 eigvalsh of size ``N`` on a GPU."""
    return (4 / 3) * np.asarray(N, dtype=np.float64) ** 3 / GPU_EIGH_RATE


# lambda_max(H) moves between the checkpoints where the step is refreshed: on configs/smoke.yaml runs took
# up to 1.12 times t_budget * lambda_max(H^inf) / step_factor steps
STEP_MARGIN = 1.25
SPECTRA_BUDGET_S = 8.0  # seconds a dry-run spends measuring spectra it has not cached
START_EIGH = 3.0  # H(0)'s eigh with eigenvectors, in eigvalsh of the same size
# (n, k, d, m, replicas) timed for the calibration; the last one is held out to measure its error
SHAPES = ((8, 1, 6, 256, 1), (8, 2, 6, 4096, 4), (16, 2, 6, 16384, 4), (16, 1, 6, 2048, 4))
CALIBRATION_STEPS = (50, 400)  # the two step counts timed per shape
CHECKPOINT_STEPS = 3.0  # a checkpoint's O(m) diagnostics (residual, H's activation kernel, flips), in steps
DEFAULT = dict(a=4e-4, b=4e-10, task=0.02, eig=1e-9)  # relative task weights for the progress bar before calibration


class Instance(NamedTuple):
    """What fixes a problem instance, hence ``H^inf``."""

    n: int
    d: int
    k: int
    delta: float
    bias: bool
    target: str
    delta_2: float
    data_seed: int

    @property
    def N(self) -> int:
        return self.n * (self.k + 1)

    def key(self) -> str:
        # the version: an instance is what make_problem of this code draws
        return json.dumps([sobolev.__version__, *self], separators=(",", ":"))


def instance_of(cell: Cell) -> Instance:
    return Instance(cell.n, cell.d, cell.k, float(cell.delta), bool(cell.bias), cell.target, float(cell.delta_2),
                    cell.data_seed)


def cache_dir() -> Path:
    return Path(os.environ.get("SOBOLEV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "sobolev-scaling")


def cache_file() -> Path:
    return cache_dir() / "calibration.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, value: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only means measuring again next time


def measure_spectrum(inst: Instance) -> tuple[float, float]:
    """``(lambda_min, lambda_max)`` of the instance's ``H^inf``, in float64 (as a task computes
    ``lambda_*``), with one thread: small eigendecompositions gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = make_problem(inst.n, inst.d, inst.k, inst.delta, bias=inst.bias, target=inst.target,
                         seed=inst.data_seed, delta_2=inst.delta_2, dtype=torch.float64)
        ev = torch.linalg.eigvalsh(gram_infinite(p))
    finally:
        torch.set_num_threads(threads)
    return ev[0].item(), ev[-1].item()


def bound_spectrum(inst: Instance) -> tuple[float, float]:
    """Bounds that hold for every instance: ``lambda_* >=`` Proposition 1's bound (on the augmented
    data with bias, as ``pipeline.task.instance_metrics``), ``lambda_max <= trace(H^inf) = N/2``."""
    sep, tilt = ((augmented_separation(inst.delta, inst.k), alpha_beta(inst.k)[0] * inst.delta_2) if inst.bias
                 else (inst.delta, inst.delta_2))
    return prop1_lower_bound(inst.n, inst.k, sep, tilt), inst.N / 2


def _measure_cost(inst: Instance) -> float:
    """Rough seconds to measure an instance: placing n points, then an N^3 eigendecomposition."""
    return 2e-3 * inst.n + 3e-10 * inst.N ** 3


def _group(inst: Instance) -> tuple:
    return inst.d, inst.k, inst.delta, inst.bias, inst.target, inst.delta_2


class _GroupFit(NamedTuple):
    """``log lambda_* = p0 + p1 log n`` and ``lambda_max = a + b n`` over one group's measured ``n``."""

    p0: float
    p1: float
    a: float
    b: float

    @classmethod
    def of(cls, n: np.ndarray, lam_star: np.ndarray, lam_max: np.ndarray, pooled_p1: float = 0.0) -> "_GroupFit":
        if len(set(n.tolist())) >= 2:
            p1, p0 = np.polyfit(np.log(n), np.log(lam_star), 1)
            b, a = np.polyfit(n, lam_max, 1)
            return cls(float(p0), float(p1), float(a), float(b))
        # one width: lambda_* scaled with the other groups' exponent, lambda_max proportional to n (at
        # most linear in n: the trace is n(k+1)/2), which errs on the high side
        n0 = float(n[0])
        return cls(float(np.log(lam_star.mean()) - pooled_p1 * np.log(n0)), pooled_p1, 0.0, float(lam_max.max() / n0))

    def predict(self, n: float) -> tuple[float, float]:
        return math.exp(self.p0 + self.p1 * math.log(n)), max(0.5, self.a + self.b * n)  # H_ii = 1/2


class Spectra:
    """``lambda_*`` and ``lambda_max`` of ``H^inf`` for the instances of a grid: exact from the cache or
    measured now (cheapest first, one instance per group and ``n`` before the other data seeds, until
    ``budget_s`` is spent; ``None``: all), else fitted over ``n`` within the instance's group, else
    Proposition 1's bound. New measurements are added to the cache."""

    def __init__(self, instances, budget_s: float | None = SPECTRA_BUDGET_S, *, measure: bool = True):
        self.path = cache_dir() / "spectra.json"
        instances = list(dict.fromkeys(instances))
        cached = _read_json(self.path)
        self.exact: dict[Instance, tuple[float, float]] = {i: tuple(cached[i.key()]) for i in instances
                                                          if i.key() in cached}
        self.from_cache = len(self.exact)
        # one instance per group and width first (they feed the fit), then the other data seeds; cheapest first
        seen = {(_group(i), i.n) for i in self.exact}
        order = []
        for i in sorted((i for i in instances if i not in self.exact), key=_measure_cost):
            order.append(((_group(i), i.n) in seen, _measure_cost(i), i))
            seen.add((_group(i), i.n))
        order.sort(key=lambda x: x[:2])
        t0, slowdown = time.perf_counter(), 1.0
        new = {}
        for _, cost, i in order if measure else ():
            left = math.inf if budget_s is None else budget_s - (time.perf_counter() - t0)
            if left <= 0:
                break
            if cost * slowdown > left:
                continue  # would overrun the budget: a cheaper one may still fit
            t1 = time.perf_counter()
            new[i] = measure_spectrum(i)
            slowdown = max(slowdown, (time.perf_counter() - t1) / cost)  # this machine, now, against the rough cost
        self.measured_now, self.measure_s = len(new), time.perf_counter() - t0
        if new:
            _write_json(self.path, {**_read_json(self.path), **{i.key(): list(v) for i, v in new.items()}})
        self.exact.update(new)
        self._fit()
        self.values = {i: self._value(i) for i in instances}

    def _fit(self) -> None:
        groups: dict[tuple, list[tuple[Instance, tuple[float, float]]]] = {}
        for i, v in self.exact.items():
            groups.setdefault(_group(i), []).append((i, v))
        arrays = {g: tuple(np.array(x, dtype=float) for x in zip(*[(i.n, *v) for i, v in members]))
                  for g, members in groups.items()}
        slopes = [_GroupFit.of(*a).p1 for a in arrays.values() if len(set(a[0].tolist())) >= 2]
        pooled = float(np.median(slopes)) if slopes else 0.0
        self.fits = {g: _GroupFit.of(*a, pooled_p1=pooled) for g, a in arrays.items()}
        # the fit checked: each group with three widths or more refitted without its largest n, which it predicts
        self.check: list[float] = []
        for n, lam_star, lam_max in arrays.values():
            widths = sorted(set(n.tolist()))
            if len(widths) < 3:
                continue
            keep = n < widths[-1]
            fit = _GroupFit.of(n[keep], lam_star[keep], lam_max[keep])
            s, x = fit.predict(widths[-1])
            self.check += list((x / s) / (lam_max[~keep] / lam_star[~keep]))
        self.bound_over = [(b[1] / b[0]) / (v[1] / v[0]) for i, v in self.exact.items() for b in [bound_spectrum(i)]]

    def _value(self, inst: Instance) -> tuple[float, float, str]:
        if inst in self.exact:
            return (*self.exact[inst], "exact")
        bound = bound_spectrum(inst)
        fit = self.fits.get(_group(inst))
        if fit is None:
            return (*bound, "bound")
        lam_star, lam_max = fit.predict(inst.n)
        if lam_max / lam_star > bound[1] / bound[0]:  # never beyond what the theorem allows
            return (*bound, "bound")
        return lam_star, lam_max, "fit"

    def counts(self) -> dict[str, int]:
        out = dict(exact=0, fit=0, bound=0)
        for v in self.values.values():
            out[v[2]] += 1
        return out


def steps_bound(t_max, in_lambda_star, lam_star, lam_max, step_factor, max_steps):
    """``STEP_MARGIN x t_budget x lambda_max / step_factor`` steps, capped at ``max_steps`` (``t_budget``:
    ``t_max / lambda_*`` where ``t_max`` is in units of ``1/lambda_*``); arrays broadcast."""
    t_budget = np.where(in_lambda_star, t_max / lam_star, t_max)
    return np.minimum(max_steps, np.ceil(STEP_MARGIN * t_budget * lam_max / step_factor)).astype(np.int64)


def run_steps(cell: Cell, tr: TrainConfig, spectra: Spectra | None = None) -> int:
    """Upper bound on the gradient steps of one run of ``cell`` with training settings ``tr`` (the
    instance's spectrum measured if not cached, unless ``spectra`` has it)."""
    inst = instance_of(cell)
    spectra = spectra if spectra is not None and inst in spectra.values else Spectra([inst], budget_s=None)
    lam_star, lam_max, _ = spectra.values[inst]
    return int(steps_bound(tr.t_max, tr.t_unit == "lambda_star", lam_star, lam_max, tr.step_factor, tr.max_steps))


def step_size(n: int, m: int, D: int, replicas: int) -> float:
    """The work of one batched step, in the calibration's unit: R m n D (its GEMMs; the rest is O(R n k D))."""
    return replicas * m * n * D


def machine_task_seconds(cal: dict, R, m, n, D, N, steps, ckpts):
    """This machine's seconds of a task of ``R`` replicas (arrays broadcast) with the step costs ``cal``:
    its fixed cost, ``lambda_*`` and ``H(0)``'s eigh at the start and an eigvalsh of ``H`` (size ``N``) per
    replica at each of ``ckpts`` checkpoints, and ``steps`` steps plus the checkpoints' diagnostics."""
    eig = cal.get("eig", DEFAULT["eig"]) * N ** 3
    step = cal["a"] + cal["b"] * step_size(n, m, D, R)
    return cal["task"] + (1 + START_EIGH * R + ckpts * R) * eig + (steps + CHECKPOINT_STEPS * ckpts) * step


# ---- this machine


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


def _time_eigvalsh(N: int = 320, repeats: int = 3) -> float:
    """Seconds per N^3 of a float64 eigvalsh on one thread (as the checkpoints run it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        A = torch.randn(N, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        A = A @ A.T
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.linalg.eigvalsh(A)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best / N ** 3


def calibrate(cfg: SweepConfig, threads: int) -> dict:
    """Fit ``task + steps * (a + b * size)`` to real tasks of three shapes, measure its error on a
    fourth shape, and time an eigvalsh. A shape's cost a step is the difference between tasks of
    ``CALIBRATION_STEPS`` steps (both the best of two), so the task's fixed cost and most
    checkpoints cancel."""
    lo, hi = CALIBRATION_STEPS

    def best(shape, steps):
        return min(_time_task(*shape, steps=steps, cfg=cfg) for _ in range(2))

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _time_task(*SHAPES[0], steps=5, cfg=cfg)  # warm-up: first-call costs are not per-step costs
        fit, held_out = SHAPES[:-1], SHAPES[-1]
        times = [(best(s, lo), best(s, hi)) for s in fit]
        xs = [step_size(n, m, d, r) for n, _, d, m, r in fit]
        ys = [(t_hi - t_lo) / (hi - lo) for t_lo, t_hi in times]
        fixed = max(0.0, min(t_lo - lo * y for (t_lo, _), y in zip(times, ys)))
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = max(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 0.0)
        a = max(my - b * mx, 0.0)
        n, k, d, m, r = held_out
        measured = best(held_out, hi)
        predicted = fixed + hi * (a + b * step_size(n, m, d, r))
    finally:
        torch.set_num_threads(old)
    return dict(a=a, b=b, task=fixed, eig=_time_eigvalsh(), error=abs(predicted - measured) / measured,
                threads=threads, when=time.strftime("%F %T"), machine=_machine(), load=round(os.getloadavg()[0], 2))


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}|{os.cpu_count()}cpu|{cpu}|torch{torch.__version__}"


def calibration(cfg: SweepConfig, *, measure: bool = True, refresh: bool = False) -> dict | None:
    """This machine's cached calibration for the config's threads per task and dtype; measured (a few
    seconds) and cached on first use or with ``refresh`` (else None when ``measure`` is false)."""
    threads = max(1, int(cfg.resources.num_cpus))
    path, key = cache_file(), f"{_machine()}|{threads}threads|{cfg.training_variants()[0].dtype}"
    cached = _read_json(path)
    if (key in cached and "eig" in cached[key] and not refresh) or not measure:
        return cached.get(key)
    cached = {**_read_json(path), key: calibrate(cfg, threads)}
    _write_json(path, cached)
    return cached[key]


# ---- the grid, priced


@dataclasses.dataclass
class Price:
    """The priced grid, one row per (cell, training setting): ``rows`` of arrays."""

    runs: int
    cells: int
    variants: int
    seeds: int
    tasks: int
    rows: dict[str, np.ndarray]
    spectra: Spectra
    machine: dict  # seconds in all, longest task
    gpu: dict[str, dict]  # per kind: busy seconds, wall seconds (summed), longest task
    largest: dict  # the largest task's per-step FLOPs and bytes


def _variant_arrays(variants: list[TrainConfig]) -> dict[str, np.ndarray]:
    return dict(
        t_max=np.array([v.t_max for v in variants]), star=np.array([v.t_unit == "lambda_star" for v in variants]),
        max_steps=np.array([v.max_steps for v in variants]), step_factor=np.array([v.step_factor for v in variants]),
        relu=np.array([v.mode == "relu" for v in variants]),
        bytes=np.array([torch.empty((), dtype=getattr(torch, v.dtype)).element_size() for v in variants]),
        float64=np.array([v.dtype == "float64" for v in variants]))


def _checkpoints(steps: np.ndarray, variant: np.ndarray, variants: list[TrainConfig]) -> np.ndarray:
    """Checkpoints of a run of ``steps`` steps: the log-spaced ones up to it, and its stop."""
    out = np.empty(len(steps), dtype=np.int64)
    for j, v in enumerate(variants):
        grid = checkpoint_steps(v.max_steps, v.checkpoints_per_decade)
        sel = variant == j
        out[sel] = np.searchsorted(grid, steps[sel], side="right") + 1
    return out


def price(cfg: SweepConfig, *, cal: dict | None = None, budget_s: float | None = SPECTRA_BUDGET_S,
          measure: bool = True) -> Price:
    """Every (cell, training setting) of the grid with its steps, tasks and their cost, computed over
    arrays (no task is built): seconds for a million runs."""
    variants = cfg.training_variants()
    cell_list = cells(cfg)
    seeds = len(cfg.seeds.init)
    instances = list(dict.fromkeys(instance_of(c) for c in cell_list))
    spectra = Spectra(instances, budget_s, measure=measure)
    inst_index = {i: j for j, i in enumerate(instances)}
    # replicas per task depend on the shape and the setting, not on delta or the data seed
    shapes = {}
    for c in cell_list:
        shapes.setdefault((c.n, c.d, c.k, c.m, c.bias), c)
    R_of = {(s, j): replicas_per_task(cfg, c, v) for s, c in shapes.items() for j, v in enumerate(variants)}
    # rows: (cell, variant)
    ci = np.repeat(np.arange(len(cell_list)), len(variants))
    vi = np.tile(np.arange(len(variants)), len(cell_list))
    n = np.array([c.n for c in cell_list])[ci]
    k = np.array([c.k for c in cell_list])[ci]
    m = np.array([c.m for c in cell_list], dtype=np.float64)[ci]
    D = np.array([c.d + c.bias for c in cell_list])[ci]
    ii = np.array([inst_index[instance_of(c)] for c in cell_list])[ci]
    lam = np.array([spectra.values[i][:2] for i in instances])
    R = np.array([R_of[(c.n, c.d, c.k, c.m, c.bias), j] for c in cell_list for j in range(len(variants))])
    va = {f: x[vi] for f, x in _variant_arrays(variants).items()}
    lam_star, lam_max = lam[ii, 0], lam[ii, 1]
    steps = steps_bound(va["t_max"], va["star"], lam_star, lam_max, va["step_factor"], va["max_steps"])
    ckpts = _checkpoints(steps, vi, variants)
    N = (n * (k + 1)).astype(np.float64)
    full, rest = seeds // R, seeds % R
    rows = dict(n=n, k=k, m=m, D=D, R=R, steps=steps, ckpts=ckpts, N=N, ratio=lam_max / lam_star,
                source=np.array([spectra.values[i][2] for i in instances])[ii], full=full, rest=rest,
                relu=va["relu"], max_steps=va["max_steps"])

    def both(task_seconds):
        """Summed over every task of every row (full batches and the remainder), and the longest."""
        a, b = task_seconds(R), task_seconds(np.maximum(rest, 1))
        total = [full * x + (rest > 0) * y for x, y in zip(a, b)]
        return [t.sum() for t in total], max(float(a[-1].max()), float(b[-1].max()))

    cal = cal or DEFAULT

    def machine(r):
        return [machine_task_seconds(cal, r, m, n, D, N, steps, ckpts)]

    (work,), longest = both(machine)
    gpu = {}
    eig_g = gpu_eigvalsh_seconds(N)
    for g in GPUS:
        def on_gpu(r, g=g):
            busy_step, wall_step = gpu_step_seconds(g, r, m, n, D, relu=va["relu"], float64=va["float64"])
            eig = (ckpts * r + 1 + START_EIGH * r) * eig_g
            work = steps + CHECKPOINT_STEPS * ckpts
            return [work * busy_step + eig, work * wall_step + eig + GPU_TASK_FIXED]

        (busy, wall), longest_g = both(on_gpu)
        gpu[g.name] = dict(busy=busy, wall=wall, longest=longest_g)
    flops, moved = step_traffic(R, m, n, D, relu=va["relu"], float64=va["float64"])
    big = int(np.argmax(flops))
    largest = dict(R=int(R[big]), n=int(n[big]), m=int(m[big]), D=int(D[big]), flops=float(flops[big]),
                   bytes=float(moved[big]))
    tasks = int((full + (rest > 0)).sum())
    return Price(runs=len(cell_list) * len(variants) * seeds, cells=len(cell_list), variants=len(variants),
                 seeds=seeds, tasks=tasks, rows=rows, spectra=spectra, machine=dict(work=work, longest=longest),
                 gpu=gpu, largest=largest)


def task_seconds(cfg: SweepConfig, task: TaskSpec, cal: dict, spectra: Spectra | None = None, *,
                 steps: int | None = None) -> float:
    """Upper bound on one task's time on this machine (its replicas step together), at the steps
    :func:`run_steps` bounds (or ``steps``)."""
    c, r = task.cell, len(task.seeds)
    steps = run_steps(c, task.train, spectra) if steps is None else steps
    ckpts = len(checkpoint_steps(steps, task.train.checkpoints_per_decade)) + 1
    return float(machine_task_seconds(cal, r, c.m, c.n, c.d + c.bias, c.n * (c.k + 1), steps, ckpts))


def task_weights(cfg: SweepConfig, tasks: list[TaskSpec]) -> dict[str, float]:
    """Estimated seconds per task (relative weights for a progress bar's ETA); never calibrates, and
    measures spectra for a second at most (the rest cached, fitted or bounded)."""
    cal = calibration(cfg, measure=False) or DEFAULT
    spectra = Spectra([instance_of(t.cell) for t in tasks], budget_s=1.0)
    return {t.task_id: task_seconds(cfg, t, cal, spectra) for t in tasks}


def search_plan_config(cfg: SweepConfig) -> SweepConfig:
    """The grid a search could evaluate at most: every width of its ladder, every seed and extra seed."""
    s = cfg.search
    seeds = list(cfg.seeds.init) + list(range(max(cfg.seeds.init) + 1, max(cfg.seeds.init) + 1 + s.extra_seeds))
    grid = cfg.grid.model_copy(update=dict(m=list(ladder(s.m_min, s.m_max, s.resolution))))
    return cfg.model_copy(update=dict(grid=grid, seeds=cfg.seeds.model_copy(update=dict(init=seeds))))


def _hours(seconds: float) -> str:
    if seconds >= 2 * 365 * 86400:
        return f"{seconds / (365 * 86400):.3g} years"
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.3g} days"
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.3g} min" if seconds >= 60 \
        else f"{seconds:.3g} s"


def _range(values) -> str:
    values = list(values)
    return f"{min(values):.2g} to {max(values):.2g}" if values else "none measured"


GPU_COUNTS = (1, 8)


def estimate_lines(cfg: SweepConfig, out, *, search: bool = False, num_cpus: int | None = None,
                   recalibrate: bool = False, exact_spectra: bool = False) -> list[str]:
    g = cfg.grid
    head = []
    if search:
        head = [f"search: at most every width of the ladder m={cfg.search.m_min}..{cfg.search.m_max} for every "
                f"seed and extra seed (an upper bound: a search evaluates a fraction of it)"]
        cfg = search_plan_config(cfg)
    cal = calibration(cfg, refresh=recalibrate)
    p = price(cfg, cal=cal, budget_s=None if exact_spectra else SPECTRA_BUDGET_S)
    rows, sp, r = p.rows, p.spectra, cfg.resources
    threads = max(1, int(r.num_cpus))
    cpus = num_cpus or os.cpu_count() or 1
    slots = max(1, int(cpus // r.num_cpus))
    counts = sp.counts()
    capped = int((rows["steps"] >= rows["max_steps"]).sum())
    per_gpu = max(1, int(1 // r.num_gpus)) if r.num_gpus > 0 else 1
    replicas = sorted(set(rows["R"].tolist()))
    packed = "/".join(map(str, replicas)) if len(replicas) <= 4 else f"{replicas[0]} to {replicas[-1]}"
    eps = min(t.eps for t in cfg.training_variants())
    lines = head + [
        f"sweep {cfg.name}: {p.cells // len(cfg.seeds.data)} cells x {len(cfg.seeds.data)} data seeds x "
        f"{p.variants} training setting(s) x {p.seeds} seeds = {p.runs:,} runs "
        f"(n={g.n}, k={g.k}, m={g.m}, delta={g.delta}, bias={g.bias})",
        f"tasks: {p.tasks:,} ({r.num_cpus:g} CPU, {r.num_gpus:g} GPU each; replicas per task: {r.replicas_per_task}"
        f"{'' if r.replicas_per_task != 'auto' else ', ' + packed})",
        f"spectra of H^inf (lambda_max/lambda_* sets the steps), per instance: {counts['exact']} exact "
        f"({sp.from_cache} cached, {sp.measured_now} measured now in {sp.measure_s:.1f} s), {counts['fit']} fitted "
        f"over n within their (d, k, delta, bias) (lambda_* ~ n^p, lambda_max ~ a + b n; refitted without each "
        f"group's largest n, predicted/true ratio {_range(sp.check)}), {counts['bound']} from Proposition 1's bound "
        f"(lambda_* >= delta/(100 n^2), lambda_max <= n(k+1)/2: {_range(sp.bound_over)} times the measured "
        f"ratios); --exact-spectra measures every one into {sp.path}",
        f"lambda_max/lambda_*: {rows['ratio'].min():.3g} to {rows['ratio'].max():.3g}",
        f"steps per run: at most {rows['steps'].min()} to {rows['steps'].max()} "
        f"(median {int(np.median(rows['steps']))})"
        f": {STEP_MARGIN:g} x t_max x lambda_max/lambda_* / step_factor, capped at max_steps ({capped:,} of "
        f"{len(rows['steps']):,} cells x settings); runs stop earlier at eps={eps:g}, so every time "
        f"below is an upper bound",
        f"per step: {STEP_FLOPS['relu']} R m n (d+bias) FLOPs in relu mode ({STEP_FLOPS['frozen']} frozen) and "
        f"{PATTERN_PASSES['relu'][0]} ({PATTERN_PASSES['frozen'][0]}) passes over the R x m x n patterns (and "
        f"{PATTERN_PASSES['relu'][1]} bytes of flags an element) on a GPU; the largest "
        f"task (R={p.largest['R']}, n={p.largest['n']}, m={p.largest['m']}, d+bias={p.largest['D']}): "
        f"{p.largest['flops'] / 1e9:.3g} GFLOP and {p.largest['bytes'] / 1e9:.3g} GB a step; one eigvalsh of "
        f"H (N = n(k+1), up to {int(rows['N'].max())}) per replica at each of up to {rows['ckpts'].max()} "
        f"checkpoints",
        f"this machine: up to about {_hours(p.machine['work'])} of task time, longest task "
        f"{_hours(p.machine['longest'])}; {cpus} CPUs = {slots} task(s) at once: up to about "
        f"{_hours(max(p.machine['work'] / slots, p.machine['longest']))} plus Ray's start-up ({threads} thread(s) "
        f"a task; step cost {cal['a'] * 1e6:.3g} us + {cal['b'] * 1e12:.3g} ps x R m n (d+bias), measured "
        f"{cal['when']} at load {cal.get('load', '?')} (now {os.getloadavg()[0]:.1f}), "
        f"{100 * cal['error']:.0f}% error on a held-out shape; --recalibrate measures again); on a cluster of C "
        f"such CPUs: about the larger of {_hours(p.machine['work'] * r.num_cpus)}/C and {_hours(p.machine['longest'])}",
        f"GPUs ({per_gpu} task(s) per GPU, as num_gpus={r.num_gpus:g} asks"
        f"{'' if r.num_gpus else ' none: priced at one a GPU'}"
        f"; assumed, not measured here: {100 * GEMM_FRACTION:.0f}% of peak FLOP/s in these small batched GEMMs, "
        f"{100 * BANDWIDTH_FRACTION:.0f}% of peak bandwidth, {GPU_STEP_LATENCY * 1e6:.0f} us of kernel launches a "
        f"step, eigvalsh at {GPU_EIGH_RATE / 1e12:g} TFLOP/s, {GPU_TASK_FIXED:g} s a task; "
        f"benchmarks/gpu_check.sh measures them):",
    ]
    for gpu in GPUS:
        c = p.gpu[gpu.name]
        dtype = "float64" if cfg.training_variants()[0].dtype == "float64" else "float32"
        peak = gpu.float64 if dtype == "float64" else gpu.float32
        walls = [max(c["busy"] / G, c["wall"] / (G * per_gpu), c["longest"]) for G in GPU_COUNTS]
        lines.append(
            f"  {gpu.name} ({dtype} peak {peak / 1e12:g} TFLOP/s, {gpu.bandwidth / 1e12:g} TB/s): "
            + ", ".join(f"{G} GPU{'s' if G > 1 else ''} {_hours(w)}" for G, w in zip(GPU_COUNTS, walls))
            + f" ({_hours(c['busy'])} of GPU time; longest task {_hours(c['longest'])}; G GPUs: about "
              f"{_hours(max(c['busy'], c['wall'] / per_gpu))}/G while that exceeds the longest task)")
    return lines + [f"output: {out}"]
