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
import pyarrow.dataset as ds

from records.schema import TABLES
from records.tables import TRAINED, read_table, table_files

# Columns the analysis functions use, plus those a notebook needs to tell runs apart; the
# loaders read these unless told otherwise.
RUN_COLUMNS = (
    "run_id", "sweep", "n", "k", "d", "m", "delta", "bias", "target", "delta_2", "data_seed", "seed", "mode",
    "eps", "t_max", "t_unit", "max_steps", "step_factor", "checkpoints_per_decade", "divergence_factor", "dtype",
    "status", "stopped_by", "steps", "t", "min_rel_loss", "final_rel_loss", "value_rel_final", "deriv_rel_final",
    "decay_rate", "rate_ratio", "lambda_min_H0", "min_lambda_ratio", "max_weight_move", "flip_fraction",
    "bound_held", "lambda_held", "bound_violation_t", "flips_gross_total", "flips_net_total", "lambda_star",
    "m_thm", "prop1_bound",
)
CURVE_COLUMNS = ("run_id", "step", "t", "rel_loss", "rel_loss_interval_max", "value_rel", "deriv_rel",
                 "bound_held", "lambda_min")


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


def _read(out: str | Path, table: str, columns: Sequence[str] | None,
          filter_expr: ds.Expression | None = None) -> pd.DataFrame:
    """Every finished Parquet file of ``<out>/<table>`` as one table, in the pipeline's schema
    (``records.schema``): files written before a column existed read with its documented default.
    ``columns=None`` reads every column; one the schema does not know raises
    :class:`MissingColumnError`."""
    if not (Path(out) / table).is_dir():
        raise FileNotFoundError(f"no results directory {Path(out) / table}")
    if not table_files(Path(out), table):
        raise FileNotFoundError(f"no finished .parquet files in {Path(out) / table}")
    unknown = [c for c in columns or () if c not in TABLES[table].names]
    if unknown:
        raise MissingColumnError(f"{table} table has no column(s) {unknown}; the pipeline writes "
                                 f"{TABLES[table].names}")
    return read_table(Path(out), table, list(columns) if columns else None, filter_expr).to_pandas()


def load_runs(out: str | Path, columns: Sequence[str] | None = RUN_COLUMNS) -> pd.DataFrame:
    """The runs table of results directory ``out`` (``<out>/runs``), one row per run.

    Reads ``columns`` (default :data:`RUN_COLUMNS`, those the analysis uses; ``None`` for all).
    Rows of runs the pipeline could not train (status ``failed``: out of memory, time limit; the
    next invocation retries them) are not results and are left out.
    Raises if a ``run_id`` appears twice: a run counted twice would inflate a cell's seeds.
    """
    runs = _read(out, "runs", columns, TRAINED)
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
    curves = _read(out, "curves", columns, filter_expr)
    order = [c for c in ("run_id", "step") if c in curves.columns]
    return curves.sort_values(order, ignore_index=True) if order else curves


def load_results(out: str | Path, run_columns: Sequence[str] | None = RUN_COLUMNS,
                 curve_columns: Sequence[str] | None = CURVE_COLUMNS) -> Results:
    """Both tables of results directory ``out`` as ``Results(runs, curves)``."""
    return Results(load_runs(out, run_columns), load_curves(out, curve_columns))
