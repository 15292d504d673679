"""Reading results at cluster scale: 50,000 runs as the driver writes them, then after ``compact``.

    PYTHONPATH=. python benchmarks/bench_read.py [--runs 50000] [--per-task 16] [--checkpoints 40]
                                                 [--old-share 0.1] [--repeats 3]

Writes ``--runs`` synthetic runs in a temporary directory the way the driver does: one Parquet file
per task of ``--per-task`` runs in ``runs/`` and one with their ``--checkpoints`` curve rows each in
``curves/`` (the current schemas, values drawn at random by column type; ``--old-share`` of the
tasks written by "an older version", without the ``threads`` column, so that two schema versions
are read). Then, for each read, times the per-file route (each file read, conformed and filtered
alone: ``records.tables.read_files_one_by_one``, what ``read_table`` did before) and
``read_table`` (one dataset scan per schema version) side by side, best of ``--repeats``
interleaved rounds, after checking that both give the same table. Then ``compact`` and the same
reads again. Prints a Markdown table and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from records.schema import CURVES_SCHEMA, RUNS_SCHEMA, TABLES, TRAINING_DEFAULTS
from records.tables import MANIFEST, compact, done_run_ids, read_files_one_by_one, read_table, table_files


def _column(field: pa.Field, rows: int, rng: np.random.Generator, ids: np.ndarray) -> pa.Array:
    if field.name == "run_id":
        return pa.array(ids)
    if field.name in TRAINING_DEFAULTS:  # valid settings: resume re-makes each run's id from them
        return pa.array([TRAINING_DEFAULTS[field.name]] * rows, type=field.type)
    plausible = dict(n=[8, 16, 32, 64, 128, 256], k=[0, 1, 2, 4, 8, 16], d=[32], m=[256 << i for i in range(9)],
                     delta=[0.25, 0.5], bias=[False, True], target=["random"], delta_2=[0.0], data_seed=[0, 1, 2, 3],
                     seed=list(range(16)), status=["converged", "budget", "diverged"])
    if field.name in plausible:
        return pa.array(rng.choice(np.array(plausible[field.name], dtype=object), rows).tolist(), type=field.type)
    if pa.types.is_string(field.type):
        return pa.array(rng.choice(["relu", "frozen", "float64", "converged", "budget", "paper"], rows))
    if pa.types.is_int64(field.type):
        return pa.array(rng.integers(0, 10**6, rows))
    if pa.types.is_boolean(field.type):
        return pa.array(rng.random(rows) < 0.5)
    return pa.array(rng.standard_normal(rows))


def write_results(out: Path, runs: int, per_task: int, checkpoints: int, old_share: float, seed: int = 0) -> int:
    """The directory the driver would leave; returns the number of task files per table."""
    rng = np.random.default_rng(seed)
    for t in TABLES:
        (out / t).mkdir(parents=True)
    (out / MANIFEST).write_text('{"sweep": "bench", "fingerprint": "0", "version": 2}')
    ids = np.array([f"{i:020x}" for i in rng.permutation(runs)])
    run_table = pa.table([_column(f, runs, rng, ids) for f in RUNS_SCHEMA], schema=RUNS_SCHEMA)
    curve_table = pa.table([_column(f, runs * checkpoints, rng, np.repeat(ids, checkpoints)) for f in CURVES_SCHEMA],
                           schema=CURVES_SCHEMA)
    tasks = -(-runs // per_task)
    old = set(rng.choice(tasks, round(old_share * tasks), replace=False).tolist())
    for j in range(tasks):
        name = f"n8-k1-d32-m{256 << (j % 9)}-task{j:05d}-{rng.integers(16**12):012x}.parquet"
        r = run_table.slice(j * per_task, per_task)
        c = curve_table.slice(j * per_task * checkpoints, per_task * checkpoints)
        pq.write_table(c, out / "curves" / name)
        pq.write_table(r.drop_columns(["threads"]) if j in old else r, out / "runs" / name)
    return tasks


def _timed(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


READS = [  # (label, table, columns, filter)
    ("runs, whole", "runs", None, None),
    ("curves, whole", "curves", None, None),
    ("runs, 4 columns, m = 2048", "runs", ["run_id", "m", "status", "final_rel_loss"], ds.field("m") == 2048),
    ("curves, 3 columns, step >= 900000", "curves", ["run_id", "step", "rel_loss"], ds.field("step") >= 900_000),
]


def _same(a: pa.Table, b: pa.Table) -> bool:
    return a.schema.equals(b.schema) and a.num_rows == b.num_rows and a.to_pandas().equals(b.to_pandas())


def bench(out: Path, repeats: int, stage: str) -> list[str]:
    rows = []
    for label, table, columns, filter in READS:
        files = table_files(out, table)
        old_s = new_s = float("inf")
        for _ in range(repeats):  # interleaved rounds: both routes see the same machine
            args = (table, columns, filter)
            t_old, old = _timed(lambda a=args, f=files: read_files_one_by_one(f, TABLES[a[0]], *a[1:]), 1)
            t_new, new = _timed(lambda a=args: read_table(out, *a), 1)
            old_s, new_s = min(old_s, t_old), min(new_s, t_new)
        assert _same(old, new), f"{label}: the two routes differ"
        rows.append(f"| {stage} | {label} | {len(files):,} | {new.num_rows:,} | {old_s:.2f} | {new_s:.2f} | "
                    f"{old_s / new_s:.1f}x |")
    t_ids, ids = _timed(lambda: done_run_ids(out), 1)
    rows.append(f"| {stage} | `done_run_ids` (resume) | {len(table_files(out, 'runs')):,} | {len(ids):,} | | "
                f"{t_ids:.2f} | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50_000)
    ap.add_argument("--per-task", type=int, default=16)
    ap.add_argument("--checkpoints", type=int, default=40)
    ap.add_argument("--old-share", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_read-"))
    try:
        out = tmp / "out"
        t0 = time.perf_counter()
        tasks = write_results(out, args.runs, args.per_task, args.checkpoints, args.old_share)
        print(f"wrote {args.runs:,} runs ({args.runs * args.checkpoints:,} curve rows) in {tasks:,} task files per "
              f"table, {args.old_share:.0%} of them without the threads column, in {time.perf_counter() - t0:.0f} s; "
              f"load average {os.getloadavg()[0]:.2f}")
        rows = bench(out, args.repeats, "task files")
        t_compact, _ = _timed(lambda: compact(out), 1)
        rows += bench(out, args.repeats, "after compact")
        print("\n| files | read | files | rows | per file s | one scan per schema s | speed-up |")
        print("|---|---|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
        print(f"\ncompact: {t_compact:.1f} s; load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
