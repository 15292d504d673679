"""Run identity across versions: a setting added with a default keeps every run id, every
results directory and every resume (checked on a directory written by the code before the
settings were defined once: tests/fixtures/results_v1, from tests/fixtures/results_v1.yaml)."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.grid import plan
from records.identity import RUN_ID_VERSION, run_id, run_id_of_record, run_key
from records.schema import Cell
from records.tables import done_run_ids, read_table
from sobolev.settings import TrainConfig

FIXTURE = Path(__file__).parent / "fixtures"


@pytest.fixture
def v1_results(tmp_path):
    out = tmp_path / "results_v1"
    shutil.copytree(FIXTURE / "results_v1", out)
    return out


def test_results_of_an_older_version_are_recognised_as_done(v1_results):
    cfg = load_config(FIXTURE / "results_v1.yaml")
    tasks, total = plan(cfg, skip=done_run_ids(v1_results))
    assert total == 4 and tasks == []  # nothing to recompute
    runs = read_table(v1_results, "runs").to_pylist()
    # the recorded (version 1) ids differ from today's, which are recomputed from each row
    assert {r["run_id"] for r in runs}.isdisjoint(done_run_ids(v1_results))
    assert {run_id_of_record(r) for r in runs} == {rid for t in plan(cfg)[0] for rid in t.run_ids}
    # columns that did not exist then read with their documented default
    assert all(r["batch_seeds"] is None for r in runs)


@pytest.mark.slow  # a resume on a local Ray
def test_resume_of_an_older_directory_trains_nothing(local_ray, work_log, v1_results):
    from pipeline.driver import run_sweep

    cfg = load_config(FIXTURE / "results_v1.yaml")
    before = len(work_log.read_text().splitlines())
    report = run_sweep(cfg, out=v1_results, mlflow=False, progress=False)
    assert (report.done, report.skipped, report.failed) == (0, 4, 0)
    assert len(work_log.read_text().splitlines()) == before


@pytest.mark.slow  # a subprocess training, into Parquet and MLflow, with a patched setting
def test_a_defaulted_setting_added_in_one_place_reaches_yaml_parquet_mlflow_and_train(monkeypatch, tmp_path):
    """Add a field to sobolev.TrainConfig (the one definition) and rebuild what derives from it in a
    fresh interpreter: the YAML accepts it, the schema and MLflow params carry it, train receives it,
    and with its default every existing run id (and the v1 directory's resume) is unchanged."""
    import subprocess

    code = f'''
import dataclasses, sys, typing
sys.path[:0] = {sys.path!r}
import sobolev.settings as T

@dataclasses.dataclass(frozen=True)
class TrainConfig(T.TrainConfig):
    warmup: float = T._setting(1.0, "the new setting (floats are positive); 1.0 keeps today's behaviour")

T.TrainConfig = TrainConfig
import sobolev
sobolev.TrainConfig = TrainConfig
# only now what builds a TrainConfig at import (train's default) and fills the fields' cache, so that
# the validation sees the new field
import sobolev.loop
assert "warmup" in T.train_config_fields() and sobolev.loop.train.__defaults__[0].warmup == 1.0
try:
    TrainConfig(warmup=0.0)
    raise AssertionError("warmup=0.0 was not validated")
except ValueError as exc:
    assert "warmup" in str(exc), exc
seen = []
real_train = sobolev.loop.train
def spy(params, problem, config, **kw):
    seen.append(config.warmup)
    return real_train(params, problem, config, **kw)
import pipeline.task
pipeline.task.train = spy

from pipeline.config import load_config, parse_config
from pipeline.grid import plan
from records.identity import run_id_of_record
from records.tables import done_run_ids
from records.schema import RUNS_SCHEMA
from pipeline.tracking import PARAM_FIELDS
from pipeline.task import execute
import yaml
assert "warmup" in RUNS_SCHEMA.names and "warmup" in PARAM_FIELDS
cfg = load_config("{FIXTURE / 'results_v1.yaml'}")
assert cfg.training.warmup == 1.0
tasks, total = plan(cfg, skip=done_run_ids("{FIXTURE / 'results_v1'}"))
assert tasks == [] and total == 4, "a defaulted setting must keep existing ids"
data = yaml.safe_load(open("{FIXTURE / 'results_v1.yaml'}"))
data["training"]["warmup"] = 0.5
other = parse_config(data)
assert other.training_variants()[0].warmup == 0.5
ids = {{r for t in plan(other)[0] for r in t.run_ids}}
assert ids.isdisjoint({{r for t in plan(cfg)[0] for r in t.run_ids}}), "a non-default value is another run"
result = execute(plan(other)[0][0])
rec = result["runs"][0]
assert rec["warmup"] == 0.5 and seen == [0.5] and run_id_of_record(rec) == rec["run_id"]
from records.tables import read_table, write_task
from pathlib import Path
out = Path("{tmp_path}")
for t in ("runs", "curves"):
    (out / t).mkdir()
write_task(out, "t", result["runs"], result["curves"])
assert read_table(out, "runs").column("warmup").to_pylist() == [0.5] * len(result["runs"])
from pipeline.tracking import Tracker
from mlflow.tracking import MlflowClient
uri = "sqlite:///{tmp_path}/mlflow.db"
tracker = Tracker(uri, "warmup", "warmup", "test", params={{}})
tracker.log(result["runs"], result["curves"])
child = MlflowClient(uri).search_runs([tracker.experiment_id], "tags.kind = 'run'")[0]
assert child.data.params["warmup"] == "0.5"
print("ok")
'''
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-3000:]


# (cell, training settings off their default, seed) -> run_id. The first four are runs of the shipped
# study (results/widths, written by the pipeline); the last two have the optional cell fields off
# their default. An id that changes is a decision (a new RUN_ID_VERSION, with old ids still recognised
# as done), never an accident: every results directory's resume and every cross-sweep reuse hang on them.
SHIPPED = dict(d=16, delta=0.5, bias=False)
STUDY = dict(eps=1e-10, dtype="float64", max_steps=1_000_000)
PINNED_RUN_IDS = [
    (dict(SHIPPED, n=128, k=2, m=1024), dict(STUDY, t_max=24.0), 0, "97bc3104cba02dc21236"),
    (dict(SHIPPED, n=64, k=0, m=512, delta=0.25), dict(STUDY, t_max=192.0), 0, "53b617202c5ba1d27347"),
    (dict(SHIPPED, n=16, k=2, m=1024, bias=True), dict(STUDY, t_max=48.0), 0, "74f2ee501c7e91d9d78e"),
    (dict(SHIPPED, n=16, k=2, m=256), dict(STUDY, t_max=192.0, step_factor=0.25), 0, "b2c09502d8f1ed20a156"),
    (dict(n=8, k=1, d=6, m=64, delta=0.5, bias=False, target="teacher", delta_2=0.1, data_seed=3), {}, 5,
     "2e2411e0181c18ef02f2"),
    (dict(n=4, k=0, d=5, m=16, delta=0.3, bias=True, data_seed=1), dict(step_factor=0.5, max_steps=300), 2,
     "1c3fa10e110a0fe0efcd"),
]


@pytest.mark.parametrize("cell, settings, seed, expected", PINNED_RUN_IDS)
def test_known_runs_keep_their_ids(cell, settings, seed, expected):
    assert run_id(Cell(**cell), TrainConfig(**settings), seed) == expected


def test_a_run_id_is_the_hash_of_its_key_spelled_out():
    """The id's definition, by an independent route: the SHA-256 of the key written out by hand."""
    cell, train = Cell(n=16, k=0, d=16, m=1024, delta=0.5, bias=False), TrainConfig(mode="frozen", t_max=6.0)
    key = ('{"bias": false, "d": 16, "delta": 0.5, "k": 0, "m": 1024, "mode": "frozen", "n": 16, "seed": 0, '
           '"t_max": 6.0, "version": 2}')
    assert RUN_ID_VERSION == 2 and run_key(cell, train, 0) == json.loads(key)
    assert run_id(cell, train, 0) == hashlib.sha256(key.encode()).hexdigest()[:20]


def test_the_shipped_study_keeps_its_recorded_ids():
    """Every run of the shipped study, read from its Parquet, has the id the pipeline recorded."""
    runs = read_table(Path(__file__).parents[1] / "results" / "widths", "runs").to_pylist()
    assert len(runs) > 1000 and all(run_id_of_record(r) == r["run_id"] for r in runs)
