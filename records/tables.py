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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .identity import run_ids_of_records
from .schema import CELL_COLUMNS, CURVES_SCHEMA, FAILED, RENAMED_COLUMNS, RUNS_SCHEMA, TABLES, TRAINING_COLUMNS, conform

MANIFEST = "sweep.json"
QUARANTINE = "_corrupt"
# the files of a task the pipeline could not train (rows with status FAILED, no curves): the next
# invocation moves them aside (:func:`supersede_failed`) and trains their runs again
FAILED_PREFIX = "failed-"
# the rows of the runs table that are trained runs (not a failure the next invocation retries)
TRAINED = ~pc.field("status").isin([FAILED])


class ResultsError(ValueError):
    """A results directory that cannot be used as it is (one line: what and the fix)."""


def atomic_write(table: pa.Table, path: Path, compression: str = "snappy") -> None:
    """``table`` as the Parquet file ``path``, whole or not at all: written under a dot-prefixed
    temporary name (which readers skip), synced, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression=compression)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: give its space back, leave nothing half
        raise
    os.replace(tmp, path)


def write_task(out: Path, task_id: str, runs: list[dict], curves: dict[str, list]) -> None:
    """Both tables of one finished task; curves first, so a run row never exists without
    its curves (the runs table is what resume reads). If the runs file cannot be written (a full
    disk), the curves file is removed again: the task is not done, and nothing of it is left."""
    curves_file = out / "curves" / f"{task_id}.parquet"
    atomic_write(pa.Table.from_pydict(curves, schema=CURVES_SCHEMA), curves_file)
    try:
        atomic_write(pa.Table.from_pylist(runs, schema=RUNS_SCHEMA), out / "runs" / f"{task_id}.parquet")
    except BaseException:
        curves_file.unlink(missing_ok=True)
        raise


def write_failed(out: Path, task_id: str, runs: list[dict]) -> None:
    """The rows of a task the pipeline could not train (status ``FAILED``, with the reason) as
    ``runs/failed-<task_id>.parquet``, beside an empty curves file of the same name."""
    write_task(out, FAILED_PREFIX + task_id, runs, {c: [] for c in CURVES_SCHEMA.names})


def supersede_failed(out: Path) -> list[str]:
    """Move the files of failed tasks to ``<out>/_superseded/failed-<time>/``, so that their runs
    are trained again and written once; returns the run ids they held."""
    files = [f for t in TABLES for f in table_files(out, t) if f.name.startswith(FAILED_PREFIX)]
    if not files:
        return []
    ids = pa.concat_tables([pq.read_table(f, columns=["run_id"]) for f in files if f.parent.name == "runs"]
                           or [pa.table({"run_id": pa.array([], pa.string())})]).column("run_id").to_pylist()
    dest = out / "_superseded" / f"failed-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    for f in sorted(files, key=lambda f: f.parent.name == "runs"):  # curves first: never a curves file alone
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.replace(f, dest / f.parent.name / f.name)
    return ids


MANIFEST_VERSION = 2  # 2: the fingerprint leaves out training settings at their default


def check_manifest(out: Path, fingerprint: str, sweep: str | None = None) -> bool:
    """Refuse a directory of another sweep configuration, without writing; True if ``out``
    already holds this sweep's manifest. A manifest of version 1 (its fingerprint hashed every
    setting, so any added setting changed it) is matched by the sweep's name."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return False
    old = json.loads(manifest.read_text())
    if old.get("version", 1) < MANIFEST_VERSION and sweep is not None and old.get("sweep") == sweep:
        return True
    if old.get("fingerprint") != fingerprint:
        raise ResultsError(
            f"output: {out} holds results of another sweep configuration (sweep {old.get('sweep')!r}, "
            f"fingerprint {old.get('fingerprint')}, this one {fingerprint}); choose another --out")
    return True


def prepare(out: Path, fingerprint: str, sweep: str) -> None:
    """Create the layout and the manifest; refuse a directory of another sweep configuration."""
    manifest = out / MANIFEST
    if check_manifest(out, fingerprint, sweep) and json.loads(manifest.read_text()).get("version") == MANIFEST_VERSION:
        return
    for t in TABLES:
        (out / t).mkdir(parents=True, exist_ok=True)
    old = json.loads(manifest.read_text()) if manifest.exists() else {}
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(dict(sweep=sweep, fingerprint=fingerprint, version=MANIFEST_VERSION,
                                   created=old.get("created", time.strftime("%FT%T%z")))))
    os.replace(tmp, manifest)


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


def table_files(out: Path, table: str) -> list[Path]:
    """The finished files of a table (dot-prefixed temporaries excluded)."""
    path = Path(out) / table
    return sorted(f for f in path.glob("*.parquet") if not f.name.startswith((".", "_"))) if path.is_dir() else []


def read_table(out: Path, table: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """A whole table (``columns`` of it; rows matching the pyarrow expression ``filter``), in the
    current schema: files written by an older version, which lack newer columns, read with
    those columns at their default (``records.schema.conform``). Rows come in file-name order,
    each file's rows in their order; dot- and underscore-prefixed files are not read.

    One dataset scan per schema version (:func:`read_files`), so that tens of thousands of task
    files read in seconds."""
    schema = TABLES[table]
    unknown = [c for c in columns or () if c not in schema.names]
    if unknown:
        raise KeyError(f"{table} has no column(s) {unknown}")
    return read_files(table_files(out, table), schema, columns, filter)


def read_files(files: list[Path], schema: pa.Schema, columns: list[str] | None = None, filter=None) -> pa.Table:
    """The rows of Parquet ``files`` in ``schema`` (``columns`` of it; those matching ``filter``), in
    the order of ``files``: what :func:`read_files_one_by_one` gives, read as one dataset scan per
    physical schema (the files of one version of the code share theirs).

    The files are grouped by their schema, read from their footers only. In a group whose
    columns have the current names and types the scan reads only the columns asked for and
    applies ``filter`` as it reads; a group of an older version that lacks a column the filter
    uses is read whole, conformed (``records.schema.conform``), then filtered. A scan of a dataset
    made from a list of files returns their rows in that order (pyarrow's dataset guide); groups
    are interleaved back into it by each row's file."""
    wanted = pa.schema([schema.field(c) for c in columns]) if columns else schema
    if not files:
        return wanted.empty_table()
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    fragments = list(dataset.get_fragments())  # in the order of files
    groups: dict[pa.Schema, list[int]] = {}
    for i, fragment in enumerate(fragments):
        groups.setdefault(fragment.physical_schema.remove_metadata(), []).append(i)
    several = len(groups) > 1
    parts, files_of_rows = [], []
    for physical, members in groups.items():
        part, local = _scan_group(dataset, [fragments[i] for i in members], physical, schema, wanted, filter,
                                  order=several)
        parts.append(part)
        if several:
            files_of_rows.append(np.asarray(members, dtype=np.int64)[local])
    if not several:
        return parts[0]
    whole = pa.concat_tables(parts)
    index = np.concatenate(files_of_rows)
    if len(index) > 1 and not (index[1:] >= index[:-1]).all():
        whole = whole.take(np.argsort(index, kind="stable"))  # stable: a file's rows keep their order
    return whole


def _physical_name(name: str, physical: pa.Schema) -> str | None:
    """The name column ``name`` has in files of schema ``physical`` (an old name, see
    ``RENAMED_COLUMNS``), or None where they lack it."""
    if name in physical.names:
        return name
    return next((old for old, new in RENAMED_COLUMNS.items() if new == name and old in physical.names), None)


def _scan_group(dataset, fragments, physical: pa.Schema, schema: pa.Schema, wanted: pa.Schema, filter, *,
                order: bool):
    """One scan of ``fragments`` (files of schema ``physical``): the rows in ``wanted``, and with
    ``order`` each row's fragment (an index into ``fragments``, numpy), else None."""
    group = ds.FileSystemDataset(fragments, schema=physical, format=dataset.format, filesystem=dataset.filesystem)
    pushed = filter is None or _filter_applies(fragments, physical, schema, filter, dataset)
    target = wanted if pushed else schema
    read = [p for p in (_physical_name(c, physical) for c in target.names) if p is not None]
    # where a filter applies as it reads, how many rows each file gives is known only from the scan:
    # it says (its own column; it slows the scan, so only then)
    tagged = order and pushed and filter is not None
    scanned = group.to_table(columns=read + ["__fragment_index"] * tagged, filter=filter if pushed else None)
    local = None
    if tagged:
        local = scanned.column("__fragment_index").to_numpy()
        scanned = scanned.drop_columns(["__fragment_index"])
    elif order:
        local = np.repeat(np.arange(len(fragments)), [f.metadata.num_rows for f in fragments])
    part = conform(scanned, target)
    if not pushed:  # the filter on the conformed rows: a column the files lack at its default, as it reads
        part = part.append_column("__row", pa.array(np.arange(part.num_rows))).filter(filter)
        if local is not None:
            local = local[part.column("__row").to_numpy()]
        part = part.select(wanted.names)
    return part, local


def _filter_applies(fragments, physical: pa.Schema, schema: pa.Schema, filter, dataset) -> bool:
    """Whether ``filter`` uses only columns the files of ``physical`` hold under their current name
    and type (then it can be applied as they are read): pyarrow refuses to bind it otherwise."""
    same = pa.schema([f for f in physical if f.name in schema.names and schema.field(f.name).type == f.type])
    try:
        ds.FileSystemDataset(fragments[:1], schema=same, format=dataset.format,
                             filesystem=dataset.filesystem).scanner(columns=[], filter=filter)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return True


def read_files_one_by_one(files: list[Path], schema: pa.Schema, columns: list[str] | None = None,
                          filter=None) -> pa.Table:
    """The reference route of :func:`read_files`: each file read whole, conformed, filtered, then
    concatenated (slow at thousands of files; the tests and ``benchmarks/bench_read.py`` compare)."""
    parts = []
    for f in files:
        part = conform(pq.read_table(f), schema)
        parts.append(part.filter(filter) if filter is not None else part)
    whole = pa.concat_tables(parts) if parts else schema.empty_table()
    return whole.select(columns) if columns else whole


def done_run_ids(out: Path) -> set[str]:
    """The current run ids of the runs trained in ``out`` (recomputed from each row's recorded
    configuration, so that rows written under an older id rule are recognised; failed rows are
    not done)."""
    rows = read_table(out, "runs", [*CELL_COLUMNS, *TRAINING_COLUMNS], filter=TRAINED).to_pylist()
    return set(run_ids_of_records(rows))


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


COMPACT_JOURNAL = ".compact.json"


def compact(out: Path) -> dict[str, int]:
    """Merge each table's task files into one zstd-compressed file per table (for shipping or
    for a directory of many thousands of tasks); returns the number of files merged per table.

    Crash-safe: a journal names the files being merged; the merged files are written (atomically)
    before any source is deleted, and :func:`recover_compaction` (run here and by every driver at
    start) finishes or undoes a compaction that was cut off, so no row is ever there twice."""
    out = Path(out)
    recover_compaction(out)
    # failed tasks' files stay apart: the next invocation moves them aside whole (supersede_failed)
    sources = {t: [f.name for f in table_files(out, t) if not f.name.startswith(FAILED_PREFIX)] for t in TABLES}
    if max(len(v) for v in sources.values()) <= 1:
        return {t: 0 for t in TABLES}
    name = f"compact-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.parquet"
    journal = out / COMPACT_JOURNAL
    journal.write_text(json.dumps(dict(target=name, sources=sources)))
    for t in ("curves", "runs"):  # curves first, as for a task: a runs row never without its curves
        merged = read_files([out / t / f for f in sources[t]], TABLES[t])
        atomic_write(merged, out / t / name, compression="zstd")
    _finish_compaction(out, json.loads(journal.read_text()))
    return {t: len(v) for t, v in sources.items()}


def _finish_compaction(out: Path, entry: dict) -> None:
    for t, names in entry["sources"].items():
        for f in names:
            (out / t / f).unlink(missing_ok=True)
    (out / COMPACT_JOURNAL).unlink()


def recover_compaction(out: Path) -> str | None:
    """Finish a compaction cut off after both merged files were written (delete the sources it
    names), or undo one cut off before (delete its merged file); say which, or None."""
    journal = Path(out) / COMPACT_JOURNAL
    if not journal.exists():
        return None
    entry = json.loads(journal.read_text())
    targets = [Path(out) / t / entry["target"] for t in TABLES]
    if all(f.exists() for f in targets):
        _finish_compaction(Path(out), entry)
        return f"finished an interrupted compaction into {entry['target']}"
    for f in targets:
        f.unlink(missing_ok=True)
    journal.unlink()
    return f"undid an interrupted compaction into {entry['target']} (its sources are intact)"
