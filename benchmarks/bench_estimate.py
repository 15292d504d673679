"""The progress bar's estimated task times against measured ones.

    PYTHONPATH=. python benchmarks/bench_estimate.py [--widths 16,256,1024,4096] [--repeats 3]

The progress bar counts estimated task-seconds (pipeline.estimate.task_weights, from this machine's
calibration cache, or the default figures without one), so its ETA is right when the estimate's
ratio between two tasks is that of their real times. For tasks of one cell at several widths, this
prints each task's estimated and measured time relative to the smallest width (measured: the best of
``--repeats`` interleaved rounds, in this one process, with one torch thread as a task of
``num_cpus: 1`` has), and their quotient ``est/measured``; the target is within a factor of 3.
CPU time is printed beside wall time: on a shared machine it is the steadier of the two.
This was a timed test (tests/test_cli.py); the test keeps what does not depend on time.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pipeline.config import parse_config
from pipeline.estimate import task_weights
from pipeline.grid import plan
from pipeline.task import execute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,256,1024,4096")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    cfg = parse_config(dict(name="bench_estimate", d=5, seeds=dict(init=2, data=[0]),
                            grid=dict(n=[args.n], k=[1], m=widths, delta=[0.5], bias=[False]),
                            training=dict(eps=1e-30, t_max=3.0, max_steps=300),
                            resources=dict(num_cpus=1, replicas_per_task=2)))
    tasks, _ = plan(cfg)
    tasks = sorted(tasks, key=lambda t: t.cell.m)
    weights = task_weights(cfg, tasks)
    print(f"load average {os.getloadavg()[0]:.2f}; n={args.n}, 2 replicas per task, 300 steps, best of "
          f"{args.repeats} interleaved rounds")
    torch.set_num_threads(int(cfg.resources.num_cpus))
    wall = {t.task_id: float("inf") for t in tasks}
    cpu = dict(wall)
    for _ in range(args.repeats):  # the best of the rounds: the first pays one-off costs
        for t in tasks:
            t0, c0 = time.perf_counter(), time.process_time()
            execute(t)
            wall[t.task_id] = min(wall[t.task_id], time.perf_counter() - t0)
            cpu[t.task_id] = min(cpu[t.task_id], time.process_time() - c0)
    ref = tasks[0]
    print("\n| m | estimated s | wall s | CPU s | estimated ratio | wall ratio | CPU ratio | est/wall | est/CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in tasks:
        est = weights[t.task_id] / weights[ref.task_id]
        w, c = wall[t.task_id] / wall[ref.task_id], cpu[t.task_id] / cpu[ref.task_id]
        print(f"| {t.cell.m} | {weights[t.task_id]:.3g} | {wall[t.task_id]:.3g} | {cpu[t.task_id]:.3g} | {est:.3g} | "
              f"{w:.3g} | {c:.3g} | {est / w:.2f} | {est / c:.2f} |")
    print("\ntarget: est/wall within [1/3, 3] for every width")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
