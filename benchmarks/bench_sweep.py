"""The smoke sweep's wall time, split into training and everything else.

    python benchmarks/bench_sweep.py [--config configs/smoke.yaml]

Runs the sweep from scratch (fresh output directory and SQLite MLflow store, embedded Ray)
and prints: wall time; training time (the union over tasks of the intervals in which a task
was training); the share outside training, split into start-up (until the first task starts
training: Ray, worker processes, MLflow store), Parquet writes, MLflow logging and the rest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.driver import run_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = run_sweep(cfg, out=Path(tmp) / "out", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                           num_cpus=args.num_cpus, progress=False)
        wall = time.perf_counter() - t0
    startup = min(a for a, _ in report.spans) - report.started
    train = report.train_time
    other = wall - train
    print(f"{cfg.name}: {report.done} runs in {report.tasks} tasks; wall {wall:.1f} s")
    print(f"training (some task training): {train:.1f} s = {100 * train / wall:.0f}%")
    print(f"outside training: {other:.1f} s = {100 * other / wall:.0f}% (target <= 20%)")
    print(f"  start-up until the first task trains (Ray, workers, MLflow store): {startup:.1f} s")
    print(f"  Parquet writes {report.parquet_time:.1f} s, MLflow logging {report.mlflow_time:.1f} s "
          f"(both in the driver, overlapping training while tasks run)")


if __name__ == "__main__":
    main()
