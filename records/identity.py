"""Run identity: what a run is, and the id it has on any machine, in any sweep, grid or search.

A run is one (cell, data seed, training settings, initialisation seed). Its ``run_id`` is a
versioned hash of an explicit key (:func:`run_key`): the cell, the seed, and the training
settings that differ from ``TrainConfig``'s defaults. So adding a setting with a default keeps
every existing id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from sobolev.settings import TrainConfig

from .schema import CELL_COLUMNS, TRAINING_COLUMNS, TRAINING_DEFAULTS, Cell, column_default

# 2: settings at their default and optional cell fields at theirs are left out of the key
RUN_ID_VERSION = 2


def non_default_settings(settings: dict) -> dict:
    """The training settings that differ from ``TrainConfig``'s defaults.

    Args:
        settings: training setting name -> value (e.g. ``dataclasses.asdict`` of a ``TrainConfig``).

    Returns:
        The entries of ``settings`` whose value is not the default.
    """
    return {f: v for f, v in settings.items() if v != TRAINING_DEFAULTS[f]}


def run_key(cell: Cell, train: TrainConfig, seed: int) -> dict:
    """What identifies a run.

    Args:
        cell: the problem cell and its data seed.
        train: the training settings.
        seed: the initialisation seed.

    Returns:
        The cell's fields (optional ones only when not at their default), the training settings
        not at their default, the seed and :data:`RUN_ID_VERSION`.
    """
    cell_fields = {f: v for f, v in asdict(cell).items() if v != column_default(f)}
    return dict(cell_fields, **non_default_settings(asdict(train)), seed=int(seed), version=RUN_ID_VERSION)


def run_id(cell: Cell, train: TrainConfig, seed: int) -> str:
    """The id of a run: the first 20 hex digits of the SHA-256 of :func:`run_key` as sorted JSON."""
    return hashlib.sha256(json.dumps(run_key(cell, train, seed), sort_keys=True).encode()).hexdigest()[:20]


def run_ids_of_records(records: list[dict]) -> list[str]:
    """:func:`run_id_of_record` of each record, the key of each (cell, settings) built once: the
    runs of a results directory share few, so resume reads 50,000 rows in about a second.

    Args:
        records: rows of the runs table (column name -> value).

    Returns:
        Their current run ids, in order.
    """
    bases: dict[tuple, dict] = {}
    out = []
    for record in records:
        shared = tuple((f, record.get(f)) for f in (*CELL_COLUMNS, *TRAINING_COLUMNS) if f != "seed")
        key = bases.get(shared)
        if key is None:
            cell, train, _ = _identity_of_record(record)
            key = bases[shared] = run_key(cell, train, 0)
        key["seed"] = int(record["seed"])
        out.append(hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20])
    return out


def _identity_of_record(record: dict) -> tuple[Cell, TrainConfig, int]:
    def value(f):
        v = record.get(f)
        return column_default(f) if v is None else v

    cell = Cell(**{f: value(f) for f in CELL_COLUMNS if f != "seed"})
    return cell, TrainConfig(**{f: value(f) for f in TRAINING_COLUMNS}), value("seed")


def run_id_of_record(record: dict) -> str:
    """The current ``run_id`` of a runs-table row, from its recorded cell, seed and settings (a
    row written by an older version may carry an older id; columns it lacks take their default).

    Args:
        record: a row of the runs table (column name -> value).

    Returns:
        The run's id under the current :data:`RUN_ID_VERSION`.
    """
    return run_id(*_identity_of_record(record))
