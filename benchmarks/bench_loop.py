"""Training-loop benchmark: the ``train`` loop with its per-step and per-check diagnostics
against the bare hot-loop step, side by side in one process.

    PYTHONPATH=. python benchmarks/bench_loop.py                 # float32, CPU, 2 threads
    PYTHONPATH=. python benchmarks/bench_loop.py --device cuda   # adds n=64, d=32, m=8192, R=256

No replica stops (eps and the time budget out of reach). Figures:

- loop overhead: ``train``'s own loop (``sobolev.loop._Run``, the object ``train`` steps)
  runs check intervals of ``check_every`` steps, each timed on its own: the steps with the
  per-step flip count, the host reads, the per-step accounting of the losses (rate fit,
  interval extremes, value and derivative parts, the bound) and the net flip and jump count
  of the check. Each interval is paired with ``check_every`` bare steps timed right before
  it (``Workspace.run`` with the pattern update less the count, ``bench_step.Project``: the
  hot loop before the diagnostics, which also sums the loss's parts once per call). Both run
  from step 1024 on, past the checkpoints 1, 10, 100 and 1000 (one per decade; an interval
  that would end on a checkpoint runs untimed). The overhead is the median over pairs of
  (interval / bare) - 1: load from other processes that comes and goes hits both halves of a
  pair alike, where medians of separately timed runs move by 20-40% on a shared VM; the
  quartiles of the pair ratios show the spread. The interval splits into its steps
  (``Workspace.run``: the per-step count) and the host work of the check;
- one checkpoint: ``_Run.checkpoint`` of every row (the O(m) and O(n^2 k^2) diagnostics,
  eigenvalues of H(t)), the median of ``--rounds`` calls; with it, the checkpoints' share at
  the default schedule for runs of 10^3 to 10^6 steps.

On CUDA it also checks that the hot loop never synchronises with the host
(``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from bench_step import Project, Setup, sync

from sobolev import TrainConfig, lambda_star
from sobolev.loop import _Run
from sobolev.settings import checkpoint_steps
from sobolev.state import Data

CPU_SHAPES = [(32, 16, 4, m, 16) for m in (1024, 8192)]  # (n, d, k, m, R)
CUDA_SHAPES = CPU_SHAPES + [(64, 32, 4, 8192, 256)]


def n_checkpoints(steps: int, per_decade: int) -> int:
    grid = checkpoint_steps(steps, per_decade)
    return len(grid) + int(steps not in grid)  # and the stop


def timed(device, job) -> float:
    sync(device)
    t = time.perf_counter()
    job()
    sync(device)
    return time.perf_counter() - t


class TimedSteps:
    """Wraps a ``Workspace.run`` to time the steps of each interval apart from its host work."""

    def __init__(self, run: _Run, device):
        self.run, self.device, self.seconds = run, device, 0.0
        self.inner = run.ws.run
        run.ws.run = self

    def __call__(self, *args):
        sync(self.device)
        t = time.perf_counter()
        out = self.inner(*args)
        sync(self.device)
        self.seconds += time.perf_counter() - t
        return out


def paired(s: Setup, cfg: TrainConfig, lam: float, pairs: int, device) -> dict[str, np.ndarray]:
    """Per pair: the bare steps, the ``train`` interval and its steps alone, in seconds per step."""
    run = _Run(s.params, Data.of(s.problem), cfg, lam)
    bare = Project(s, count_flips=False)
    while run.step < 1024:
        run.interval()
    bare.run(1024)
    steps = TimedSteps(run, device)
    out = {"bare": [], "train": [], "steps": []}
    c = cfg.check_every
    while len(out["bare"]) < pairs:
        if any(run.step < p <= run.step + c for p in run.checkpoints):
            run.interval()  # a checkpoint: not an interval like the others
            continue
        out["bare"].append(timed(device, lambda: bare.run(c)) / c)
        steps.seconds = 0.0
        out["train"].append(timed(device, run.interval) / c)
        out["steps"].append(steps.seconds / c)
    return {k: np.array(v) for k, v in out.items()}


def checkpoint_seconds(s: Setup, cfg: TrainConfig, lam: float, rounds: int, device) -> float:
    """One checkpoint of every row, between intervals past step 1024 (none of the schedule's)."""
    run = _Run(s.params, Data.of(s.problem), cfg, lam)
    while run.step < 1024:
        run.interval()
    every = np.arange(len(run.host.replica))
    times = []
    for i in range(rounds + 1):
        run.interval()
        times.append(timed(device, lambda: run.checkpoint(every, np.full(len(every), run.step, np.int64))))
    assert len(run.rows) > 1 + rounds, "a checkpoint was not taken"
    return statistics.median(times[1:])  # the first one warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=200, help="paired intervals per shape")
    ap.add_argument("--rounds", type=int, default=5, help="checkpoints timed per shape")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, float32; "
          f"load average {os.getloadavg()[0]:.2f}")
    for n, d, k, m, R in CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES:
        s = Setup(n, d, k, m, R, device)
        lam = lambda_star(s.problem)
        cfg = TrainConfig(eps=1e-30, t_max=1e30, t_unit="absolute", max_steps=10**8, checkpoints_per_decade=1)
        if device.type == "cuda":
            hot = Project(s)  # train's hot loop, with the per-step flip count
            hot.run(2 * cfg.check_every)
            torch.cuda.set_sync_debug_mode("error")  # raises on any synchronising call
            hot.run(3 * cfg.check_every)
            torch.cuda.set_sync_debug_mode("default")
            print("hot loop (with the per-step flip count): no host-device synchronisation in 48 steps")
        t = paired(s, cfg, lam, args.pairs, device)
        ratio = t["train"] / t["bare"]
        q1, med, q3 = np.quantile(ratio, [0.25, 0.5, 0.75]) - 1
        bare_s = float(np.median(t["bare"]))
        count = float(np.median(t["steps"] / t["bare"])) - 1
        host = float(np.median((t["train"] - t["steps"]) / t["bare"]))
        ckpt = checkpoint_seconds(s, cfg, lam, args.rounds, device)
        print(f"\nn={n} d={d} k={k} m={m} R={R}  ({len(ratio)} pairs of {cfg.check_every} steps)")
        print(f"  bare step                 {bare_s * 1e3:8.3f} ms/step  ({1 / bare_s:7.0f} steps/s)")
        print(f"  train loop                {np.median(t['train']) * 1e3:8.3f} ms/step: overhead {med:+.1%} "
              f"(median of pairs; quartiles {q1:+.1%}, {q3:+.1%})")
        print(f"    of which the steps (per-step flip count) {count:+.1%}, the host work of a check {host:+.1%}")
        print(f"  one checkpoint            {ckpt * 1e3:8.3f} ms  (= {ckpt / bare_s:.1f} bare steps)")
        shares = ", ".join(f"10^{e}: {n_checkpoints(10**e, 8) * ckpt / (10**e * bare_s):.1%}" for e in range(3, 7))
        print(f"  checkpoints at the default schedule, share of a run of that many steps: {shares}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
