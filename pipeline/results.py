"""Parquet results: a ``runs`` table (one row per run) and a ``curves`` table (one row
per checkpoint of a run), one file per finished task in each of ``<out>/runs`` and
``<out>/curves``, written atomically (a dot-prefixed temporary name, then a rename),
so every reader (pyarrow.dataset, pandas, DuckDB) sees whole files only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

F64, I64, STR, BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()

RUNS_SCHEMA = pa.schema([
    ("run_id", STR), ("sweep", STR), ("task_id", STR),
    # the cell and the run's seeds
    ("n", I64), ("k", I64), ("d", I64), ("m", I64), ("delta", F64), ("bias", BOOL), ("target", STR),
    ("delta_2", F64), ("data_seed", I64), ("seed", I64),
    # training settings
    ("mode", STR), ("eps", F64), ("t_max", F64), ("t_unit", STR), ("max_steps", I64), ("step_factor", F64),
    ("dtype", STR), ("check_every", I64), ("checkpoints_per_decade", I64), ("divergence_factor", F64),
    # outcome (sobolev.train summary)
    ("status", STR), ("stopped_by", STR), ("steps", I64), ("t", F64), ("steps_to_eps", I64), ("t_to_eps", F64),
    ("final_rel_loss", F64), ("min_rel_loss", F64), ("loss0", F64), ("r0_sq", F64), ("decay_rate", F64),
    ("rate_ratio", F64), ("lambda_min_H0", F64), ("lambda_max_H0", F64), ("min_lambda_ratio", F64),
    ("max_weight_move", F64), ("flip_fraction", F64), ("max_H_drift", F64), ("bound_held", BOOL),
    ("lambda_held", BOOL), ("regime_held", BOOL), ("flips_total", F64), ("jump_norm_total", F64),
    ("lin_dist_final", F64),
    # the instance and the theory
    ("lambda_star", F64), ("delta_1", F64), ("delta_2_measured", F64), ("gamma", F64), ("m_thm", F64),
    ("prop1_bound", F64),
    # provenance
    ("device", STR), ("wall_time", F64), ("task_wall_time", F64), ("version", STR), ("git_commit", STR),
    ("created_at", STR),
])

CURVES_SCHEMA = pa.schema([
    ("run_id", STR), ("step", I64), ("t", F64), ("eta", F64), ("loss", F64), ("rel_loss", F64), ("e_sq", F64),
    ("S_sq", F64), ("lambda_min", F64), ("lambda_max", F64), ("H_drift", F64), ("max_weight_move", F64),
    ("flip_fraction", F64), ("bound", F64), ("bound_held", BOOL), ("lin_dist", F64), ("flips", F64),
    ("jump_norm", F64),
])

TABLES = {"runs": RUNS_SCHEMA, "curves": CURVES_SCHEMA}
MANIFEST = "sweep.json"
QUARANTINE = "_corrupt"


class ResultsError(ValueError):
    """A results directory that cannot be used as it is (one line: what and the fix)."""


def _atomic_write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_task(out: Path, task_id: str, runs: list[dict], curves: dict[str, list]) -> None:
    """Both tables of one finished task; curves first, so a run row never exists without
    its curves (the runs table is what resume reads)."""
    _atomic_write(pa.Table.from_pydict(curves, schema=CURVES_SCHEMA), out / "curves" / f"{task_id}.parquet")
    _atomic_write(pa.Table.from_pylist(runs, schema=RUNS_SCHEMA), out / "runs" / f"{task_id}.parquet")


def check_manifest(out: Path, fingerprint: str) -> bool:
    """Refuse a directory of another sweep configuration, without writing; True if ``out``
    already holds this sweep's manifest."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return False
    old = json.loads(manifest.read_text())
    if old.get("fingerprint") != fingerprint:
        raise ResultsError(
            f"output: {out} holds results of another sweep configuration (sweep {old.get('sweep')!r}, "
            f"fingerprint {old.get('fingerprint')}, this one {fingerprint}); choose another --out")
    return True


def prepare(out: Path, fingerprint: str, sweep: str) -> None:
    """Create the layout and the manifest; refuse a directory of another sweep configuration."""
    if check_manifest(out, fingerprint):
        return
    for t in TABLES:
        (out / t).mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(dict(sweep=sweep, fingerprint=fingerprint, created=time.strftime("%FT%T%z"))))
    os.replace(tmp, (out / MANIFEST))


def quarantine_corrupt(out: Path, on_move: Callable[[Path, Path, str], None] | None = None) -> list[Path]:
    """Move aside, to ``<out>/_corrupt/`` where no reader looks, and return where to:

    - every unreadable Parquet file (e.g. truncated by a crash of an older version), together
      with the other table's file of the same task, so that the task is recomputed whole: a run
      row never exists without its curves, and no old curves are left to duplicate the new ones;
    - every curves file without a runs file (a task cut off between its two writes): its runs
      are not done, and their recomputation, batched differently, would duplicate its rows.

    ``on_move(source, destination, reason)`` is called for each file moved."""
    def files(t: str) -> list[Path]:
        return sorted((out / t).glob("*.parquet")) if (out / t).is_dir() else []

    reasons: dict[str, tuple[str, str]] = {}  # file name -> (table of the bad file, why)
    for t in TABLES:
        for f in files(t):
            try:
                pq.read_metadata(f)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside, none is guessed at
                reasons.setdefault(f.name, (t, f"unreadable Parquet file ({type(exc).__name__}: {str(exc)[:120]})"))
    have_runs = {f.name for f in files("runs")}
    for f in files("curves"):
        if f.name not in have_runs:
            reasons.setdefault(f.name, ("curves", "curves without a runs file (a task cut off between its two files)"))
    moved = []
    for name in sorted(reasons):
        bad_table, why = reasons[name]
        for t in TABLES:
            f = out / t / name
            if f.exists():
                dest = out / QUARANTINE / t
                dest.mkdir(parents=True, exist_ok=True)
                os.replace(f, dest / name)
                moved.append(dest / name)
                if on_move:
                    on_move(f, dest / name, why if t == bad_table else f"the other half of {bad_table}/{name}: {why}")
    return moved


def dataset(out: Path, table: str) -> ds.Dataset:
    return ds.dataset(out / table, format="parquet", schema=TABLES[table])


def read_table(out: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    path = Path(out) / table
    if not path.is_dir() or not any(path.glob("*.parquet")):
        return TABLES[table].empty_table().select(columns or TABLES[table].names)
    return dataset(Path(out), table).to_table(columns=columns)


def done_run_ids(out: Path) -> set[str]:
    return set(read_table(out, "runs", ["run_id"]).column("run_id").to_pylist())


def archive(out: Path) -> Path | None:
    """Move all finished results aside (for a forced recomputation); they are kept, not deleted."""
    files = [f for t in TABLES for f in (out / t).glob("*.parquet")]
    if not files:
        return None
    dest = out / "_superseded" / time.strftime("%Y%m%dT%H%M%S")
    for f in files:
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.replace(f, dest / f.parent.name / f.name)
    return dest
