"""The results tables' columns, defined once and derived from their sources.

- the problem cell (:class:`Cell`) and the seed,
- the training settings (the fields of :class:`sobolev.TrainConfig`),
- the training summary and curves (``sobolev.record.SUMMARY_FIELDS`` / ``CURVE_FIELDS``),
- the instance's measured quantities and the theory's numbers (:data:`INSTANCE_COLUMNS`),
- provenance (:data:`PROVENANCE_COLUMNS`).

The pipeline writes with these schemas, the analysis reads with them, and the tests build
their synthetic tables from them. Importing this module needs pyarrow and numpy (through
``sobolev.settings`` and ``sobolev.record``), not torch, Ray, MLflow or pandas.

A results directory written before a column existed still reads: :func:`conform` fills the
missing column with its documented default (:func:`column_default`): a training setting with
the default of ``TrainConfig`` (the behaviour the old code had), anything else with null.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import pyarrow as pa

from sobolev.record import CURVE_FIELDS, SUMMARY_FIELDS
from sobolev.settings import TrainConfig


@dataclass(frozen=True)
class Cell:
    """One point of the problem grid, with its data seed: one problem instance."""

    n: int
    k: int
    d: int
    m: int
    delta: float
    bias: bool
    target: str = "random"
    delta_2: float = 0.0
    data_seed: int = 0

    def label(self) -> str:
        return (f"n{self.n}-k{self.k}-d{self.d}-m{self.m}-delta{self.delta:g}-"
                f"{'bias' if self.bias else 'nobias'}-data{self.data_seed}")


_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _python_type(annotation) -> type:
    """The column type of a dataclass annotation (a ``Literal`` of strings is a string)."""
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation


def _fields_of(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: _python_type(hints[f.name]) for f in dataclasses.fields(cls)}


IDENTITY_COLUMNS: dict[str, type] = dict(run_id=str, sweep=str, task_id=str)
CELL_COLUMNS: dict[str, type] = {**_fields_of(Cell), "seed": int}
TRAINING_COLUMNS: dict[str, type] = _fields_of(TrainConfig)
INSTANCE_COLUMNS: dict[str, type] = dict(lambda_star=float, delta_1=float, delta_2_measured=float, gamma=float,
                                         m_thm=float, prop1_bound=float)
# ``batch_seeds``: the initialisation seeds trained together in the run's task (a JSON list).
# In float32 a run's trajectory depends on its batch (rounding), so this is what re-makes it exactly.
# ``delta_fail``: the failure probability ``m_thm`` was computed at. ``threads``: the CPU threads the task
# trained with (a GEMM's summation order, hence the last bits, may follow it; null where not recorded).
PROVENANCE_COLUMNS: dict[str, type] = dict(device=str, wall_time=float, task_wall_time=float, version=str,
                                           git_commit=str, created_at=str, batch_seeds=str, delta_fail=float,
                                           threads=int)
RUN_COLUMNS: dict[str, type] = {**IDENTITY_COLUMNS, **CELL_COLUMNS, **TRAINING_COLUMNS, **SUMMARY_FIELDS,
                                **INSTANCE_COLUMNS, **PROVENANCE_COLUMNS}
CURVE_COLUMNS: dict[str, type] = {"run_id": str, **{f: t for f, t in CURVE_FIELDS.items() if f != "replica"}}
# One row per searched (cell, training settings) (``python -m pipeline search``): the cell without its
# width and seed, every training setting, and the search's answer.
SEARCH_COLUMNS: dict[str, type] = dict(
    criterion=str, eps=float, target_rate=float, m_star=float, censored=str, m_lo=float, m_hi=float, widths=str,
    rates=str, runs_used=int, runs_trained=int, confirmed=bool, escalated=str, note=str, wall_time=float)
# A setting whose name the search's answer uses (``eps``: there the search's tolerance eps') is written
# ``train_<name>``. Setting name -> its column in the thresholds table.
THRESHOLD_SETTING_COLUMNS: dict[str, str] = {f: f"train_{f}" if f in SEARCH_COLUMNS else f for f in TRAINING_COLUMNS}
THRESHOLD_COLUMNS: dict[str, type] = {
    **{f: t for f, t in CELL_COLUMNS.items() if f not in ("m", "seed")},
    **{THRESHOLD_SETTING_COLUMNS[f]: t for f, t in TRAINING_COLUMNS.items()},
    **SEARCH_COLUMNS,
}


def arrow_schema(columns: dict[str, type]) -> pa.Schema:
    """The Arrow schema of ``columns`` (name -> ``str``, ``int``, ``float`` or ``bool``), in order."""
    return pa.schema([(name, _ARROW[t]) for name, t in columns.items()])


RUNS_SCHEMA = arrow_schema(RUN_COLUMNS)
CURVES_SCHEMA = arrow_schema(CURVE_COLUMNS)
THRESHOLDS_SCHEMA = arrow_schema(THRESHOLD_COLUMNS)
TABLES = {"runs": RUNS_SCHEMA, "curves": CURVES_SCHEMA}

TRAINING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_CELL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Cell) if f.default is not dataclasses.MISSING}


def column_default(name: str):
    """The value a column takes in a file written before it existed: a training setting or an
    optional cell field its default (what the older code did), anything else null."""
    return TRAINING_DEFAULTS.get(name, _CELL_DEFAULTS.get(name))


# Columns renamed since results were first written: old name -> current name.
RENAMED_COLUMNS = {"flips_total": "flips_net_total", "flips": "flips_net"}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order: renamed columns under their current
    name (:data:`RENAMED_COLUMNS`), missing columns filled with :func:`column_default`, present
    ones cast to their type (a column this version does not know is dropped)."""
    names = [RENAMED_COLUMNS.get(c, c) if RENAMED_COLUMNS.get(c) not in table.column_names else c
             for c in table.column_names]
    table = table.rename_columns(names)
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.array([column_default(field.name)] * table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)
