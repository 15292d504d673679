"""Training-loop benchmark: the full ``train`` loop (stopping checks, per-check diagnostics,
checkpoints) against the bare hot-loop step, in one process.

    PYTHONPATH=. python benchmarks/bench_loop.py                 # float32, CPU, 2 threads
    PYTHONPATH=. python benchmarks/bench_loop.py --device cuda   # adds n=64, d=32, m=8192, R=256

No replica stops early (eps and the time budget out of reach), so ``train`` runs exactly
``max_steps`` steps of all R replicas. With ``T(L, c)`` the time of ``train`` for ``L`` steps
at ``c`` checkpoints per decade:

- loop cost per step: ``(T(2L, 1) - T(L, 1)) / L`` for ``L = 1024``, where both runs have
  the same checkpoints (0, 1, 10, 100, 1000 and the stop), so setup and checkpoints cancel;
  against the bare step (``_Workspace.run`` in chunks of ``check_every``, nothing else),
  timed the same way: the loop's per-step overhead;
- cost of one checkpoint: ``(T(L, 8) - T(L, 1))`` over the difference in checkpoint count;
  with it, the checkpoint diagnostics' share at the default schedule for runs of 10^3 to
  10^6 steps.

Runs are interleaved over rounds; each figure is the median of its per-round values. On CUDA it also checks that the
hot loop never synchronises with the host (``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
import torch

from bench_step import Project, Setup, sync
from sobolev import TrainConfig, lambda_star, train
from sobolev.train import checkpoint_steps

CPU_SHAPES = [(32, 16, 4, m, 16) for m in (1024, 8192)]  # (n, d, k, m, R)
CUDA_SHAPES = CPU_SHAPES + [(64, 32, 4, 8192, 256)]
L = 1024


def n_checkpoints(steps: int, per_decade: int) -> int:
    grid = checkpoint_steps(steps, per_decade)
    return len(grid) + int(steps not in grid)  # and the stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, float32; "
          f"load average {os.getloadavg()[0]:.2f}")
    for n, d, k, m, R in CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES:
        s = Setup(n, d, k, m, R, device)
        lam = lambda_star(s.problem)
        cfg = TrainConfig(eps=1e-30, t_max=1e30, t_unit="absolute")

        def run_train(steps, per_decade):
            c = dataclasses.replace(cfg, max_steps=steps, checkpoints_per_decade=per_decade)
            res = train(s.params, s.problem, c, lambda_star=lam)
            assert np.all(res.summary["steps"] == steps), "a replica stopped early"

        def run_bare(steps):
            Project(s).run(steps)

        if device.type == "cuda":
            bare = Project(s)
            bare.run(2)
            torch.cuda.set_sync_debug_mode("error")  # raises on any synchronising call
            bare.run(3 * cfg.check_every)
            torch.cuda.set_sync_debug_mode("default")
            print("hot loop: no host-device synchronisation in 48 steps")

        jobs = {"bare L": lambda: run_bare(L), "bare 2L": lambda: run_bare(2 * L),
                "train L, 1/decade": lambda: run_train(L, 1), "train 2L, 1/decade": lambda: run_train(2 * L, 1),
                "train L, 8/decade": lambda: run_train(L, 8)}
        run_train(16, 8)  # warm-up
        times = {name: [] for name in jobs}
        for _ in range(args.rounds):
            for name, job in jobs.items():
                sync(device)
                t = time.perf_counter()
                job()
                sync(device)
                times[name].append(time.perf_counter() - t)
        # per round, then the median: load from other processes that comes and goes hits
        # the runs of one round alike
        rounds = [dict(zip(times, r)) for r in zip(*times.values())]
        bare = statistics.median((r["bare 2L"] - r["bare L"]) / L for r in rounds)
        loop = statistics.median((r["train 2L, 1/decade"] - r["train L, 1/decade"]) / L for r in rounds)
        overhead = statistics.median((r["train 2L, 1/decade"] - r["train L, 1/decade"]) / (r["bare 2L"] - r["bare L"])
                                     for r in rounds) - 1
        assert n_checkpoints(2 * L, 1) == n_checkpoints(L, 1)
        extra = n_checkpoints(L, 8) - n_checkpoints(L, 1)
        ckpt = statistics.median((r["train L, 8/decade"] - r["train L, 1/decade"]) / extra for r in rounds)
        t = {name: statistics.median(v) for name, v in times.items()}
        print(f"\nn={n} d={d} k={k} m={m} R={R}")
        print(f"  bare step                 {bare * 1e3:8.3f} ms/step  ({1 / bare:7.0f} steps/s)")
        print(f"  train loop                {loop * 1e3:8.3f} ms/step  ({1 / loop:7.0f} steps/s): "
              f"overhead {overhead:+.1%}")
        print(f"  one checkpoint            {ckpt * 1e3:8.3f} ms  (= {ckpt / bare:.1f} bare steps)")
        print(f"  train, {L} steps, default schedule ({n_checkpoints(L, 8)} checkpoints): "
              f"{t['train L, 8/decade'] / L * 1e3:.3f} ms/step, {t['train L, 8/decade'] / (L * bare) - 1:+.1%} "
              f"over bare (setup included)")
        shares = ", ".join(f"10^{e}: {n_checkpoints(10**e, 8) * ckpt / (10**e * bare):.1%}" for e in range(3, 7))
        print(f"  checkpoints at the default schedule, share of a run of that many steps: {shares}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
