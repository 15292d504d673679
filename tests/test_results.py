import json
import os

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import tiny_config

from pipeline.grid import plan
from pipeline.task import execute
from records.schema import CURVES_SCHEMA, RUNS_SCHEMA
from records.tables import ResultsError, done_run_ids, prepare, quarantine_corrupt, read_table, write_task


@pytest.fixture(scope="module")
def one_task():
    cfg = tiny_config()
    task = plan(cfg)[0][0]
    return cfg, task, execute(task)


def test_task_records_match_schema(one_task, tmp_path):
    cfg, task, result = one_task
    prepare(tmp_path, cfg.fingerprint(), cfg.name)
    write_task(tmp_path, task.task_id, result["runs"], result["curves"])
    assert done_run_ids(tmp_path) == set(task.run_ids)
    runs, curves = read_table(tmp_path, "runs"), read_table(tmp_path, "curves")
    assert runs.schema.equals(RUNS_SCHEMA) and curves.schema.equals(CURVES_SCHEMA)
    assert set(curves.column("run_id").to_pylist()) == set(task.run_ids)
    # three readers see the same directory as one dataset
    assert len(pd.read_parquet(tmp_path / "runs")) == len(task.seeds)
    assert ds.dataset(tmp_path / "curves").count_rows() == curves.num_rows
    assert duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/runs/*.parquet')").fetchall()[0][0] == len(task.seeds)
    assert not [f for f in os.listdir(tmp_path / "runs") if f.startswith(".")]  # no temporary left


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_run_is_remade_bit_for_bit_from_its_record(dtype):
    """Every run records its cell, settings and batch (``batch_seeds``): re-making its task from the
    record alone and training it again on the same device gives identical numbers, bit for bit."""
    from pipeline.grid import task_of_record

    task = plan(tiny_config(training=dict(dtype=dtype)))[0][0]
    first = execute(task)
    volatile = ["wall_time", "task_wall_time", "created_at"]
    runs = pd.DataFrame(first["runs"]).drop(columns=volatile)
    for rec in first["runs"]:
        again = execute(task_of_record(rec))
        # DataFrame.equals: exact, with NaN equal to NaN
        assert pd.DataFrame(again["runs"]).drop(columns=volatile).equals(runs)
        assert pd.DataFrame(again["curves"]).equals(pd.DataFrame(first["curves"]))


def test_temporary_files_are_invisible_to_readers(one_task, tmp_path):
    cfg, task, result = one_task
    prepare(tmp_path, cfg.fingerprint(), cfg.name)
    write_task(tmp_path, task.task_id, result["runs"], result["curves"])
    # a writer killed mid-write leaves only a dot-prefixed temporary
    (tmp_path / "runs" / ".half-written.parquet.123.tmp").write_bytes(b"PAR1 garbage")
    assert ds.dataset(tmp_path / "runs").count_rows() == len(task.seeds)
    assert len(pd.read_parquet(tmp_path / "runs")) == len(task.seeds)


def test_truncated_file_is_quarantined(one_task, tmp_path):
    cfg, task, result = one_task
    prepare(tmp_path, cfg.fingerprint(), cfg.name)
    write_task(tmp_path, task.task_id, result["runs"], result["curves"])
    good = tmp_path / "runs" / f"{task.task_id}.parquet"
    bad = tmp_path / "runs" / "truncated.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(pa.ArrowInvalid):
        pq.read_metadata(bad)
    moved = quarantine_corrupt(tmp_path)
    assert [p.name for p in moved] == ["truncated.parquet"]
    assert (tmp_path / "_corrupt" / "runs" / "truncated.parquet").exists()
    assert done_run_ids(tmp_path) == set(task.run_ids)


def test_manifest_refuses_other_sweep(tmp_path):
    a = tiny_config()
    prepare(tmp_path, a.fingerprint(), a.name)
    assert json.loads((tmp_path / "sweep.json").read_text())["sweep"] == "tiny"
    prepare(tmp_path, a.fingerprint(), a.name)  # same sweep: fine
    b = tiny_config(training=dict(eps=1e-2))
    with pytest.raises(ResultsError, match="another sweep configuration"):
        prepare(tmp_path, b.fingerprint(), b.name)


def test_empty_results_read_as_empty_tables(tmp_path):
    assert read_table(tmp_path, "runs").num_rows == 0
    assert done_run_ids(tmp_path) == set()
    assert isinstance(read_table(tmp_path, "curves", ["run_id"]), pa.Table)


def _three_tasks(tmp_path):
    from records.tables import table_files

    cfg = tiny_config(grid=dict(n=[4], m=[16, 64], bias=[False]), training=dict(max_steps=20))
    prepare(tmp_path, cfg.fingerprint(), cfg.name)
    tasks = plan(cfg)[0]
    for task in tasks:
        result = execute(task)
        write_task(tmp_path, task.task_id, result["runs"], result["curves"])
    assert len(table_files(tmp_path, "runs")) == len(tasks) > 1
    return cfg, {r for t in tasks for r in t.run_ids}


def test_compact_merges_files_keeping_every_row_once_and_resume(tmp_path):
    from pipeline.cli import main
    from records.tables import table_files

    cfg, ids = _three_tasks(tmp_path)
    keys = {"runs": ["run_id"], "curves": ["run_id", "step"]}
    rows = lambda t: read_table(tmp_path, t).to_pandas().sort_values(keys[t], ignore_index=True)  # noqa: E731
    before = {t: rows(t) for t in keys}
    assert main(["compact", str(tmp_path)]) == 0
    for t in ("runs", "curves"):
        assert len(table_files(tmp_path, t)) == 1
        assert pq.read_metadata(table_files(tmp_path, t)[0]).row_group(0).column(0).compression == "ZSTD"
        pd.testing.assert_frame_equal(rows(t), before[t])
    assert done_run_ids(tmp_path) == ids and plan(cfg, skip=done_run_ids(tmp_path))[0] == []
    assert main(["compact", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("cut_after", ["curves", "runs"])
def test_interrupted_compaction_is_undone_or_finished(tmp_path, cut_after):
    from records.tables import COMPACT_JOURNAL, atomic_write, recover_compaction, table_files

    _, ids = _three_tasks(tmp_path)
    sources = {t: [f.name for f in table_files(tmp_path, t)] for t in ("runs", "curves")}
    # replay compact() by hand up to the cut: the journal, then the merged file(s) written so far
    (tmp_path / COMPACT_JOURNAL).write_text(json.dumps(dict(target="compact-x.parquet", sources=sources)))
    for t in ("curves", "runs")[: 1 if cut_after == "curves" else 2]:
        atomic_write(read_table(tmp_path, t), tmp_path / t / "compact-x.parquet")
    note = recover_compaction(tmp_path)
    assert ("undid" if cut_after == "curves" else "finished") in note
    runs = read_table(tmp_path, "runs").column("run_id").to_pylist()
    assert sorted(runs) == sorted(ids)  # every run exactly once
    assert not (tmp_path / COMPACT_JOURNAL).exists()


def test_failed_rows_are_not_results_and_are_set_aside_for_the_retry(tmp_path):
    """A task the pipeline could not train is recorded as rows with status 'failed' and the reason
    (files named failed-<task>); done_run_ids, load_runs and compact leave them out, old files read
    with a null reason, and supersede_failed moves them aside whole so the retry writes each run once."""
    from analysis.load import load_runs
    from records.schema import FAILED
    from records.tables import FAILED_PREFIX, TRAINED, compact, supersede_failed, table_files, write_failed

    cfg, ids = _three_tasks(tmp_path)
    lost = plan(cfg)[0][0]
    for t in ("runs", "curves"):  # the task is not done: its files go, a failure record comes
        (tmp_path / t / f"{lost.task_id}.parquet").unlink()
    write_failed(tmp_path, lost.task_id, lost.failed_records("out of memory: MemoryError: ", "abc"))
    assert {f.name for f in table_files(tmp_path, "curves")} >= {f"{FAILED_PREFIX}{lost.task_id}.parquet"}
    rows = read_table(tmp_path, "runs").to_pylist()
    failed = [r for r in rows if r["status"] == FAILED]
    assert sorted(r["run_id"] for r in failed) == sorted(lost.run_ids)
    assert {r["failure_reason"] for r in failed} == {"out of memory: MemoryError: "}
    assert {r["failure_reason"] for r in rows if r["status"] != FAILED} == {None}  # written before the column: null
    assert all(r["lambda_star"] is None and r["seed"] in lost.seeds for r in failed)
    assert done_run_ids(tmp_path) == ids - set(lost.run_ids)
    assert read_table(tmp_path, "runs", filter=TRAINED).num_rows == len(ids) - len(lost.seeds)
    assert set(load_runs(tmp_path)["run_id"]) == ids - set(lost.run_ids)
    trained = len(table_files(tmp_path, "runs")) - 1
    assert compact(tmp_path) == {"runs": trained, "curves": trained}  # the failed task's files stay apart
    assert len(table_files(tmp_path, "runs")) == 2
    assert sorted(supersede_failed(tmp_path)) == sorted(lost.run_ids)
    assert not [f for t in ("runs", "curves") for f in table_files(tmp_path, t) if f.name.startswith(FAILED_PREFIX)]
    assert len(list((tmp_path / "_superseded").glob("failed-*/*/*.parquet"))) == 2
    assert read_table(tmp_path, "runs").num_rows == len(ids) - len(lost.seeds) and supersede_failed(tmp_path) == []


@pytest.fixture(scope="module")
def mixed_versions(tmp_path_factory):
    """A results directory of three schema versions, their files interleaved in name order: the
    fixture of an older version (tests/fixtures/results_v1), tasks of the current one, and copies
    of those without the ``threads`` column (the version before it)."""
    import shutil
    from pathlib import Path

    from pipeline.config import load_config
    from records.tables import table_files

    fixture = Path(__file__).parent / "fixtures"
    out = tmp_path_factory.mktemp("mixed")
    for t in ("runs", "curves"):
        shutil.copytree(fixture / "results_v1" / t, out / t)
    cfg = load_config(fixture / "results_v1.yaml", training=dict(eps=1e-6, t_max=2.0, max_steps=30))
    for task in plan(cfg)[0]:
        result = execute(task)
        write_task(out, task.task_id, result["runs"], result["curves"])
        runs = pa.Table.from_pylist(result["runs"], schema=RUNS_SCHEMA).drop_columns(["threads"])
        curves = pa.Table.from_pydict(result["curves"], schema=CURVES_SCHEMA)
        pq.write_table(runs, out / "runs" / f"{task.task_id[:-3]}zzz.parquet")
        pq.write_table(curves, out / "curves" / f"{task.task_id[:-3]}zzz.parquet")
    v1 = {f.name for f in (fixture / "results_v1" / "runs").iterdir()}
    version = [0 if f.name in v1 else 1 if f.name.endswith("zzz.parquet") else 2 for f in table_files(out, "runs")]
    assert len(version) == 6 and sum(a != b for a, b in zip(version, version[1:])) >= 4  # interleaved by name
    return out


READS = [  # (table, columns, filter): pushed down in every version, in some only, renamed, missing in some
    ("runs", None, None),
    ("curves", None, None),
    ("runs", ["run_id", "m", "threads", "flips_net_total"], None),
    ("runs", ["seed", "run_id"], ds.field("m") == 16),
    ("runs", ["run_id", "status"], ds.field("threads").is_null()),
    ("runs", None, ds.field("flips_net_total") > 0),
    ("curves", ["run_id", "step", "flips_net"], (ds.field("step") > 3) & (ds.field("flips_net") >= 0)),
    ("curves", ["step", "run_id"], ds.field("rel_loss_interval_max").is_null()),
    ("runs", ["run_id"], ds.field("m") > 10**6),
]


@pytest.mark.parametrize("table,columns,filter", READS)
def test_read_table_scans_per_schema_version_as_the_per_file_route_reads(mixed_versions, table, columns, filter):
    """One dataset scan per schema version gives what reading, conforming and filtering each file
    alone gives: the same values, row order, column order and types."""
    from records.schema import TABLES
    from records.tables import read_files_one_by_one, table_files

    got = read_table(mixed_versions, table, columns, filter)
    want = read_files_one_by_one(table_files(mixed_versions, table), TABLES[table], columns, filter)
    assert got.schema.equals(want.schema)
    pd.testing.assert_frame_equal(got.to_pandas(), want.to_pandas(), check_exact=True)
    if table == "runs" and columns is None and filter is None:
        assert got.num_rows == 12 and got.column("threads").null_count == 8  # v1 rows and the copies' rows


def test_run_ids_of_records_are_each_rows_own_id(mixed_versions):
    """Resume's batch route (each (cell, settings) key built once) against the row-by-row one, on
    rows of three schema versions (the older ones carry older ids and lack columns)."""
    from records.identity import run_id_of_record, run_ids_of_records

    rows = read_table(mixed_versions, "runs").to_pylist()
    assert run_ids_of_records(rows) == [run_id_of_record(r) for r in rows]
    assert len(set(run_ids_of_records(rows))) == 8  # the v1 runs, and the current ones twice
