"""Reading a results directory written by the pipeline.

Layout: ``<out>/runs/*.parquet`` (one row per training run) and ``<out>/curves/*.parquet``
(one row per checkpoint of each run), one file per finished task.  Files whose names start
with ``.`` or ``_`` (partial writes, metadata) or do not end in ``.parquet`` (``*.tmp``) are
ignored, so a directory can be read while the pipeline is still writing to it.

The columns read by default derive from the schema (``records.schema``) and from what each
registered criterion declares it reads (:class:`analysis.success.Criterion`), never from a list here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import pandas as pd
import pyarrow.dataset as ds

from records.schema import CURVES_SCHEMA, PROVENANCE_COLUMNS, RUNS_SCHEMA, TABLES
from records.tables import read_table, table_files

from .columns import MissingColumnError, require_columns
from .success import declared_columns

__all__ = ["CURVE_COLUMNS", "CURVE_KEYS", "DEFAULT_COLUMNS", "RUN_COLUMNS", "MissingColumnError", "Results",
           "curve_columns", "load_curves", "load_results", "load_runs", "require_columns", "run_columns"]

# A checkpoint is one row of the curves table per run and step.
CURVE_KEYS = ("run_id", "step")
# ``columns=DEFAULT_COLUMNS``: what :func:`run_columns` / :func:`curve_columns` say when the table is read.
DEFAULT_COLUMNS = "default"


def run_columns() -> tuple[str, ...]:
    """The runs columns the loaders read by default, in the schema's order: every column of the schema
    (identity, cell, training settings, summary, instance) but the provenance (how a run was made, not
    what it is or measured), and any provenance column a registered criterion declares it reads
    (:func:`analysis.success.declared_columns`). So a new setting or summary field is read with no edit here."""
    declared = set(declared_columns()[0])
    return tuple(c for c in RUNS_SCHEMA.names if c not in PROVENANCE_COLUMNS or c in declared)


def curve_columns() -> tuple[str, ...]:
    """The curves columns the loaders read by default, in the schema's order: the keys ``run_id, step``
    and the curves columns the registered criteria declare they read (the curves are the large table,
    so not every column). A declared column the schema does not have is left to the judge's own error."""
    wanted = {*CURVE_KEYS, *declared_columns()[1]}
    return tuple(c for c in CURVES_SCHEMA.names if c in wanted)


# The defaults with the criteria registered at import (a criterion registered later is read too:
# the loaders ask :func:`run_columns` / :func:`curve_columns` at each call).
RUN_COLUMNS = run_columns()
CURVE_COLUMNS = curve_columns()


class Results(NamedTuple):
    runs: pd.DataFrame
    curves: pd.DataFrame


def _wanted(table: str, columns: Sequence[str] | str | None) -> list[str] | None:
    """The columns to read: the default of ``table``, all (None) or ``columns`` without repeats."""
    if isinstance(columns, str):
        if columns != DEFAULT_COLUMNS:
            raise TypeError(f"columns={columns!r}: pass a list of column names, None (all) or DEFAULT_COLUMNS")
        columns = run_columns() if table == "runs" else curve_columns()
    return None if columns is None else list(dict.fromkeys(columns))


def _read(out: str | Path, table: str, columns: Sequence[str] | str | None,
          filter_expr: ds.Expression | None = None) -> pd.DataFrame:
    """Every finished Parquet file of ``<out>/<table>`` as one table, in the pipeline's schema
    (``records.schema``): files written before a column existed read with its documented default.
    ``columns=None`` reads every column; one the schema does not know raises
    :class:`MissingColumnError`."""
    if not (Path(out) / table).is_dir():
        raise FileNotFoundError(f"no results directory {Path(out) / table}")
    if not table_files(Path(out), table):
        raise FileNotFoundError(f"no finished .parquet files in {Path(out) / table}")
    columns = _wanted(table, columns)
    unknown = [c for c in columns or () if c not in TABLES[table].names]
    if unknown:
        raise MissingColumnError(f"{table} table has no column(s) {unknown}; the pipeline writes "
                                 f"{TABLES[table].names}")
    return read_table(Path(out), table, columns or None, filter_expr).to_pandas()


def load_runs(out: str | Path, columns: Sequence[str] | str | None = DEFAULT_COLUMNS) -> pd.DataFrame:
    """The runs table of results directory ``out`` (``<out>/runs``), one row per run.

    Reads ``columns`` (default :func:`run_columns`: the schema's and what the criteria declare; ``None`` for all).
    Raises if a ``run_id`` appears twice: a run counted twice would inflate a cell's seeds.
    """
    runs = _read(out, "runs", columns)
    if "run_id" in runs.columns:
        dup = runs["run_id"][runs["run_id"].duplicated()]
        if len(dup):
            raise ValueError(f"{len(dup)} duplicated run_id(s) in {out}/runs, e.g. {dup.iloc[0]!r}")
    return runs


def load_curves(out: str | Path, columns: Sequence[str] | str | None = DEFAULT_COLUMNS,
                run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The curves table of ``out`` (``<out>/curves``): one row per checkpoint of each run,
    sorted by ``run_id, step``.  Reads ``columns`` (default :func:`curve_columns`: the keys and what the
    criteria declare; ``None`` for all).  ``run_ids`` restricts the read to those runs (read-time filter,
    so a notebook can look at a few runs of a large study cheaply)."""
    filter_expr = None if run_ids is None else ds.field("run_id").isin(list(run_ids))
    curves = _read(out, "curves", columns, filter_expr)
    order = [c for c in CURVE_KEYS if c in curves.columns]
    return curves.sort_values(order, ignore_index=True) if order else curves


def load_results(out: str | Path, run_columns: Sequence[str] | str | None = DEFAULT_COLUMNS,
                 curve_columns: Sequence[str] | str | None = DEFAULT_COLUMNS) -> Results:
    """Both tables of results directory ``out`` as ``Results(runs, curves)`` (columns as in
    :func:`load_runs` and :func:`load_curves`)."""
    return Results(load_runs(out, run_columns), load_curves(out, curve_columns))
