"""Training-loop benchmark: the full ``train`` loop (stopping checks, per-check diagnostics,
checkpoints) against the bare hot-loop step, in one process.

    PYTHONPATH=. python benchmarks/bench_loop.py                 # float32, CPU, 2 threads
    PYTHONPATH=. python benchmarks/bench_loop.py --device cuda   # adds n=64, d=32, m=8192, R=256

No replica stops early (eps and the time budget out of reach), so ``train`` runs exactly
``max_steps`` steps of all R replicas. With ``T(L, c)`` the time of ``train`` for ``L`` steps
at ``c`` checkpoints per decade:

- loop cost per step: ``(T(2L, 1) - T(L, 1)) / L``, with ``L`` 1024 or 4096 (about 2 s of
  steps), where both runs have the same checkpoints (0, 1, 10, 100, 1000 and the stop), so
  setup and checkpoints cancel; against the bare step (``_Workspace.run`` in chunks of
  ``check_every``, nothing else), timed the same way: the loop's per-step overhead. Part of
  it, the net flip and jump accounting of each check, is also timed on its own. Both the bare
  step recomputes the pattern after each update but, unlike ``train``, does not count the
  flips of every step (``bench_step.UncountedPatterns``), so the overhead includes that count;
- cost of one checkpoint: ``(T(L, 8) - T(L, 1))`` over the difference in checkpoint count;
  with it, the checkpoint diagnostics' share at the default schedule for runs of 10^3 to
  10^6 steps.

Runs are interleaved over rounds; each figure is the median of its per-round values. On
CUDA it also checks that the hot loop never synchronises with the host
(``torch.cuda.set_sync_debug_mode("error")``).
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


def n_checkpoints(steps: int, per_decade: int) -> int:
    grid = checkpoint_steps(steps, per_decade)
    return len(grid) + int(steps not in grid)  # and the stop


def timed(device, job) -> float:
    sync(device)
    t = time.perf_counter()
    job()
    sync(device)
    return time.perf_counter() - t


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

        bare = Project(s, count_flips=False)
        bare.run(2 * cfg.check_every)
        if device.type == "cuda":
            hot = Project(s)  # train's hot loop, with the per-step flip count
            hot.run(2 * cfg.check_every)
            torch.cuda.set_sync_debug_mode("error")  # raises on any synchronising call
            hot.run(3 * cfg.check_every)
            torch.cuda.set_sync_debug_mode("default")
            print("hot loop (with the per-step flip count): no host-device synchronisation in 48 steps")
        step_s = timed(device, lambda: bare.run(4 * cfg.check_every)) / (4 * cfg.check_every)
        L = 4096 if step_s < 5e-4 else 1024
        assert n_checkpoints(2 * L, 1) == n_checkpoints(L, 1)

        # the net flip and jump accounting of one check, on its own, from the bare loop's state
        bare.run(cfg.check_every)
        fj = statistics.median(timed(device, lambda: bare.pattern.net_since_check(bare.state.W)) for _ in range(20))

        jobs = {"bare L": lambda: Project(s, False).run(L), "bare 2L": lambda: Project(s, False).run(2 * L),
                "train L, 1/decade": lambda: run_train(L, 1), "train 2L, 1/decade": lambda: run_train(2 * L, 1),
                "train L, 8/decade": lambda: run_train(L, 8)}
        run_train(16, 8)  # warm-up
        rounds = [{name: timed(device, job) for name, job in jobs.items()} for _ in range(args.rounds)]
        # per round, then the median: load from other processes that comes and goes hits
        # the runs of one round alike
        med = lambda f: statistics.median(f(r) for r in rounds)  # noqa: E731
        bare_s = med(lambda r: (r["bare 2L"] - r["bare L"]) / L)
        loop_s = med(lambda r: (r["train 2L, 1/decade"] - r["train L, 1/decade"]) / L)
        overhead = med(lambda r: (r["train 2L, 1/decade"] - r["train L, 1/decade"]) / (r["bare 2L"] - r["bare L"])) - 1
        extra = n_checkpoints(L, 8) - n_checkpoints(L, 1)
        ckpt = med(lambda r: (r["train L, 8/decade"] - r["train L, 1/decade"]) / extra)
        all_in = med(lambda r: r["train L, 8/decade"] / L)
        print(f"\nn={n} d={d} k={k} m={m} R={R}  (L = {L})")
        print(f"  bare step                 {bare_s * 1e3:8.3f} ms/step  ({1 / bare_s:7.0f} steps/s)")
        print(f"  train loop                {loop_s * 1e3:8.3f} ms/step  ({1 / loop_s:7.0f} steps/s): "
              f"overhead {overhead:+.1%}")
        print(f"    of which net flip/jump accounting  {fj * 1e3:.3f} ms per check of {cfg.check_every} steps "
              f"= {fj / cfg.check_every / bare_s:+.1%}")
        print(f"  one checkpoint            {ckpt * 1e3:8.3f} ms  (= {ckpt / bare_s:.1f} bare steps)")
        print(f"  train, {L} steps, default schedule ({n_checkpoints(L, 8)} checkpoints): "
              f"{all_in * 1e3:.3f} ms/step, {all_in / bare_s - 1:+.1%} over bare (setup included)")
        shares = ", ".join(f"10^{e}: {n_checkpoints(10**e, 8) * ckpt / (10**e * bare_s):.1%}" for e in range(3, 7))
        print(f"  checkpoints at the default schedule, share of a run of that many steps: {shares}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
