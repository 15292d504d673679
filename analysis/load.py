"""Reading a results directory written by the pipeline.

Layout: ``<out>/runs/*.parquet`` (one row per training run) and ``<out>/curves/*.parquet``
(one row per checkpoint of each run), one file per finished task.  Files whose names start
with ``.`` or ``_`` (partial writes, metadata) or do not end in ``.parquet`` (``*.tmp``) are
ignored, so a directory can be read while the pipeline is still writing to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# Full schemas the pipeline writes (the synthetic tables in the tests are built from these).
RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("sweep", pa.string()), ("n", pa.int64()), ("k", pa.int64()),
    ("d", pa.int64()), ("m", pa.int64()), ("delta", pa.float64()), ("bias", pa.bool_()),
    ("target", pa.string()), ("delta_2", pa.float64()), ("data_seed", pa.int64()),
    ("seed", pa.int64()), ("mode", pa.string()), ("eps", pa.float64()), ("t_max", pa.float64()),
    ("t_unit", pa.string()), ("max_steps", pa.int64()), ("step_factor", pa.float64()),
    ("dtype", pa.string()), ("status", pa.string()), ("stopped_by", pa.string()),
    ("steps", pa.int64()), ("t", pa.float64()), ("steps_to_eps", pa.int64()),
    ("t_to_eps", pa.float64()), ("final_rel_loss", pa.float64()), ("min_rel_loss", pa.float64()),
    ("loss0", pa.float64()), ("r0_sq", pa.float64()), ("decay_rate", pa.float64()),
    ("rate_ratio", pa.float64()), ("lambda_min_H0", pa.float64()), ("lambda_max_H0", pa.float64()),
    ("min_lambda_ratio", pa.float64()), ("max_weight_move", pa.float64()),
    ("flip_fraction", pa.float64()), ("max_H_drift", pa.float64()), ("bound_held", pa.bool_()),
    ("lambda_held", pa.bool_()), ("regime_held", pa.bool_()), ("flips_total", pa.float64()),
    ("jump_norm_total", pa.float64()), ("lin_dist_final", pa.float64()),
    ("lambda_star", pa.float64()), ("delta_1", pa.float64()), ("delta_2_measured", pa.float64()),
    ("gamma", pa.float64()), ("m_thm", pa.float64()), ("prop1_bound", pa.float64()),
    ("device", pa.string()), ("wall_time", pa.float64()), ("version", pa.string()),
    ("git_commit", pa.string()),
])
CURVE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step", pa.int64()), ("t", pa.float64()), ("eta", pa.float64()),
    ("loss", pa.float64()), ("rel_loss", pa.float64()), ("e_sq", pa.float64()),
    ("S_sq", pa.float64()), ("lambda_min", pa.float64()), ("lambda_max", pa.float64()),
    ("H_drift", pa.float64()), ("max_weight_move", pa.float64()), ("flip_fraction", pa.float64()),
    ("bound", pa.float64()), ("bound_held", pa.bool_()), ("lin_dist", pa.float64()),
    ("flips", pa.float64()), ("jump_norm", pa.float64()),
])

# Columns the analysis functions use, plus those a notebook needs to tell runs apart; the
# loaders read these unless told otherwise.
RUN_COLUMNS = (
    "run_id", "sweep", "n", "k", "d", "m", "delta", "bias", "target", "data_seed", "seed", "mode",
    "eps", "t_max", "t_unit", "dtype", "status", "min_rel_loss", "final_rel_loss", "decay_rate",
    "rate_ratio", "lambda_min_H0", "min_lambda_ratio", "max_weight_move", "flip_fraction",
    "bound_held", "lambda_held", "lambda_star", "m_thm", "prop1_bound",
)
CURVE_COLUMNS = ("run_id", "step", "t", "rel_loss", "bound_held", "lambda_min")


class MissingColumnError(ValueError):
    """A table lacks a column an analysis step needs."""


class Results(NamedTuple):
    runs: pd.DataFrame
    curves: pd.DataFrame


def require_columns(df: pd.DataFrame, columns: Iterable[str], table: str) -> None:
    """Raise :class:`MissingColumnError` naming every column of ``columns`` absent from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MissingColumnError(f"{table} table lacks column(s) {missing}; it has {list(df.columns)}")


def _table_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"no results directory {directory}")
    files = sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.name.endswith(".parquet") and not p.name.startswith((".", "_"))
    )
    if not files:
        raise FileNotFoundError(f"no finished .parquet files in {directory}")
    return files


def read_table(directory: str | Path, columns: Sequence[str] | None, table: str,
               filter_expr: ds.Expression | None = None) -> pd.DataFrame:
    """Read every finished Parquet file of ``directory`` as one dataset.

    ``columns=None`` reads every column present in any file.  A requested column missing from
    any file raises :class:`MissingColumnError` naming the column and a file that lacks it
    (a column present in only some files would otherwise be filled with nulls silently).
    """
    files = _table_files(Path(directory))
    schemas = [pq.read_schema(f) for f in files]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if columns is not None:
        for col in columns:
            lacking = [f.name for f, s in zip(files, schemas) if s.get_field_index(col) < 0]
            if lacking:
                raise MissingColumnError(
                    f"{table} column {col!r} is missing from {len(lacking)} of {len(files)} file(s) "
                    f"in {directory} (e.g. {lacking[0]})")
    dataset = ds.dataset(files, format="parquet", schema=schema)
    return dataset.to_table(columns=None if columns is None else list(columns),
                            filter=filter_expr).to_pandas()


def load_runs(out: str | Path, columns: Sequence[str] | None = RUN_COLUMNS) -> pd.DataFrame:
    """The runs table of results directory ``out`` (``<out>/runs``), one row per run.

    Reads ``columns`` (default :data:`RUN_COLUMNS`, those the analysis uses; ``None`` for all).
    Raises if a ``run_id`` appears twice: a run counted twice would inflate a cell's seeds.
    """
    runs = read_table(Path(out) / "runs", columns, "runs")
    if "run_id" in runs.columns:
        dup = runs["run_id"][runs["run_id"].duplicated()]
        if len(dup):
            raise ValueError(f"{len(dup)} duplicated run_id(s) in {out}/runs, e.g. {dup.iloc[0]!r}")
    return runs


def load_curves(out: str | Path, columns: Sequence[str] | None = CURVE_COLUMNS,
                run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The curves table of ``out`` (``<out>/curves``): one row per checkpoint of each run,
    sorted by ``run_id, step``.  ``run_ids`` restricts the read to those runs (read-time filter,
    so a notebook can look at a few runs of a large study cheaply)."""
    filter_expr = None if run_ids is None else ds.field("run_id").isin(list(run_ids))
    curves = read_table(Path(out) / "curves", columns, "curves", filter_expr)
    order = [c for c in ("run_id", "step") if c in curves.columns]
    return curves.sort_values(order, ignore_index=True) if order else curves


def load_results(out: str | Path, run_columns: Sequence[str] | None = RUN_COLUMNS,
                 curve_columns: Sequence[str] | None = CURVE_COLUMNS) -> Results:
    """Both tables of results directory ``out`` as ``Results(runs, curves)``."""
    return Results(load_runs(out, run_columns), load_curves(out, curve_columns))
