import json
import os

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.grid import plan
from pipeline.results import (CURVES_SCHEMA, RUNS_SCHEMA, ResultsError, done_run_ids, prepare, quarantine_corrupt,
                              read_table, write_task)
from pipeline.task import execute
from pipeline_helpers import tiny_config


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


def test_records_reproduce_from_configuration_and_seed(one_task):
    _, task, result = one_task
    again = execute(task)
    for a, b in zip(result["runs"], again["runs"]):
        assert a["run_id"] == b["run_id"]
        assert a["final_rel_loss"] == b["final_rel_loss"] and a["steps"] == b["steps"]
    assert result["curves"]["loss"] == again["curves"]["loss"]


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
    with pytest.raises(Exception):
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
