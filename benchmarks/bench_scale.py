"""The driver at scale: thousands of tiny runs through the real driver, pool and Parquet writer.

    PYTHONPATH=. python benchmarks/bench_scale.py [--runs 1000 10000] [--per-task 16] [--num-cpus 2]

Each size is a fresh sweep of tiny runs (m = 4, 5 steps: training costs next to nothing, so the
driver's own work shows) on an embedded local Ray, Parquet only (MLflow is off the critical path:
bench_logging.py), in its own process so that start-up and memory are measured alike. Per size:
wall time, the driver process's CPU time (user + system, its Ray threads included), its peak and
final resident memory, and, sampled as tasks land, resident memory against runs finished; tasks in
flight (the pool's window, counted at every ``next``); Parquet files written.

The driver's marginal cost per run is the difference in driver CPU time between two sizes over the
difference in runs (start-up cancels). 50,000 runs is extrapolated from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ONE = r"""
import json, os, resource, sys, threading, time
from pathlib import Path
import psutil
import pipeline.driver as driver
from pipeline.config import parse_config
from pipeline.pool import TaskPool

runs, per_task, num_cpus, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
seeds = runs // 20  # 20 cells
cfg = parse_config(dict(name="scale", grid=dict(n=[4, 5, 6, 7, 8], k=[1], m=[4, 6], delta=[0.5], bias=[False, True]),
                        d=5, seeds=dict(init=seeds, data=[0]), training=dict(t_max=3.0, max_steps=5, eps=1e-6),
                        resources=dict(num_cpus=1, replicas_per_task=per_task)))
in_flight = []

class CountingPool(TaskPool):  # the real pool; records how many tasks are in flight at each next()
    def next(self, timeout=None):
        in_flight.append(len(self))
        return super().next(timeout)

driver.TaskPool = CountingPool
proc = psutil.Process()
samples = []  # (runs in Parquet, rss MiB)

def sample():
    while not done.is_set():
        files = len(os.listdir(out / "runs")) if (out / "runs").is_dir() else 0
        samples.append((files * per_task, proc.memory_info().rss / 2**20))
        done.wait(1.0)

done = threading.Event()
threading.Thread(target=sample, daemon=True).start()
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
report = driver.run_sweep(cfg, out=out, mlflow=False, num_cpus=num_cpus, progress=False)
wall = time.perf_counter() - t0
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
done.set()
print("RESULT " + json.dumps(dict(
    runs=report.done, tasks=report.tasks, wall=wall,
    cpu=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    train=report.train_time, parquet=report.parquet_time, peak_rss=cpu1.ru_maxrss / 1024,
    rss_end=proc.memory_info().rss / 2**20, in_flight_max=max(in_flight),
    in_flight_mean=sum(in_flight) / len(in_flight),
    files=sum(1 for t in ("runs", "curves") for _ in (out / t).glob("*.parquet")), samples=samples)))
"""


def one(runs: int, per_task: int, num_cpus: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, RAY_AUTH_MODE="disabled")
        p = subprocess.run([sys.executable, "-c", ONE, str(runs), str(per_task), str(num_cpus), f"{tmp}/out"],
                           capture_output=True, text=True, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        sys.exit(f"the {runs}-run sweep failed:\n{p.stderr[-3000:]}")
    return json.loads(line[-1].removeprefix("RESULT "))


def rss_profile(samples: list, runs: int) -> str:
    """Resident memory when a quarter, half, three quarters and all of the runs were in Parquet."""
    marks = []
    for q in (0.25, 0.5, 0.75, 1.0):
        at = [rss for done, rss in samples if done >= q * runs]
        marks.append(f"{at[0]:.0f}" if at else "-")
    return " / ".join(marks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--per-task", type=int, default=16, help="replicas_per_task (configs/paper.yaml: 16)")
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    res = [one(n, args.per_task, args.num_cpus) for n in args.runs]
    print(f"tiny runs (m 4-6, 5 steps), {args.per_task} per task, local Ray with {args.num_cpus} CPUs, Parquet only")
    print("| runs | tasks | wall s | driver CPU s | Parquet write s | in flight max/mean | peak RSS MiB | "
          "RSS at 25/50/75/100% of runs, MiB | Parquet files |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res:
        print(f"| {r['runs']} | {r['tasks']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['parquet']:.1f} | "
              f"{r['in_flight_max']}/{r['in_flight_mean']:.1f} | {r['peak_rss']:.0f} | "
              f"{rss_profile(r['samples'], r['runs'])} | {r['files']} |")
    if len(res) >= 2:
        a, b = res[0], res[-1]
        per_run = (b["cpu"] - a["cpu"]) / (b["runs"] - a["runs"])
        wall_per_run = (b["wall"] - a["wall"]) / (b["runs"] - a["runs"])
        print(f"driver CPU per run (marginal, {a['runs']} -> {b['runs']}): {1e3 * per_run:.2f} ms "
              f"(target <= 2 ms); Parquet writes {1e3 * b['parquet'] / b['runs']:.2f} ms/run; "
              f"wall per run {1e3 * wall_per_run:.2f} ms")
        print(f"50,000 runs: about {50000 * per_run:.0f} s of driver CPU "
              f"({50000 // args.per_task * 2} Parquet files); peak RSS {b['peak_rss']:.0f} MiB at {b['runs']} runs "
              f"against {a['peak_rss']:.0f} MiB at {a['runs']}")


if __name__ == "__main__":
    main()
