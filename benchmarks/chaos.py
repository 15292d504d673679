"""How much a run's outcome depends on rounding: the same runs (same instance, same seeds)
trained in one batch of 8 replicas and in two batches of 4, in float32 and in float64.

    PYTHONPATH=. python benchmarks/chaos.py [--cells 6] [--m 1024]

The batches compute each replica's step with different GEMM shapes, so float32 rounding
differs; ReLU pattern flips amplify it. Prints, per dtype: the share of runs whose final and
minimum relative loss differ between the two batchings by more than 1e-6 relative, the
largest difference in log10, and the wall time per run (float64 against float32). This is the
evidence behind the study's dtype (README, "Reading the results").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sobolev import TrainConfig, init_params, make_problem, train


def outcomes(problem, m: int, seeds: list[int], batch: int, dtype: torch.dtype, cfg: TrainConfig):
    finals, minima = [], []
    for i in range(0, len(seeds), batch):
        part = seeds[i:i + batch]
        res = train(init_params(len(part), m, problem.d, bias=problem.bias, seeds=part, dtype=dtype), problem, cfg)
        finals.append(res.summary["final_rel_loss"])
        minima.append(res.summary["min_rel_loss"])
    return np.concatenate(finals), np.concatenate(minima)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=6, help="problem instances (n, k vary over them)")
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--t-max", type=float, default=12.0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    shapes = [(8, 2), (16, 2), (16, 4), (8, 1), (32, 2), (16, 1)][: args.cells]
    seeds = list(range(8))
    table = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        cfg = TrainConfig(eps=1e-12, t_max=args.t_max, max_steps=100_000, dtype=name)
        diff_final, diff_min, logd, wall = [], [], [], 0.0
        for j, (n, k) in enumerate(shapes):
            problem = make_problem(n, 12, k, 0.5, bias=False, target="random", seed=j, dtype=dtype)
            t0 = time.perf_counter()
            f8, m8 = outcomes(problem, args.m, seeds, 8, dtype, cfg)
            wall += time.perf_counter() - t0
            f4, m4 = outcomes(problem, args.m, seeds, 4, dtype, cfg)
            diff_final.append(np.abs(f8 - f4) > 1e-6 * np.abs(f8))
            diff_min.append(np.abs(m8 - m4) > 1e-6 * np.abs(m8))
            logd.append(np.abs(np.log10(f8) - np.log10(f4)))
        table[name] = (np.concatenate(diff_final).mean(), np.concatenate(diff_min).mean(),
                       np.concatenate(logd).max(), wall / (len(shapes) * len(seeds)))
    print(f"{len(shapes)} instances x {len(seeds)} seeds, m={args.m}, no bias, d=12, t_max={args.t_max:g}/lambda_*; "
          f"batch of 8 against two batches of 4")
    print(f"{'dtype':8s} {'final differs':>14s} {'min differs':>12s} {'max |dlog10 final|':>19s} {'s/run (batch 8)':>16s}")
    for name, (f, mn, lg, w) in table.items():
        print(f"{name:8s} {f:14.0%} {mn:12.0%} {lg:19.3g} {w:16.3f}")
    print(f"float64 / float32 time per run: {table['float64'][3] / table['float32'][3]:.2f}")


if __name__ == "__main__":
    main()
