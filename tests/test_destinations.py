"""Where an invocation may write (pipeline/destinations.py): under `submit`, nothing into the job's
temporary working directory, refused on the client before uploading and on the driver of a Ray job.
(The end-to-end refusals, against a real Ray head, are in tests/test_deploy.py.)"""

import json
import os

import pytest
from pipeline_helpers import tiny_config

from pipeline.destinations import check_job_destinations, check_output_dir, check_submittable, job_working_dir
from pipeline.errors import SetupError
from pipeline.options import RunOptions


def test_submit_needs_an_absolute_output_and_a_named_store(tmp_path):
    cfg = tiny_config()
    ok = RunOptions(out=tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    for command in ("run", "search", "sync", "status"):
        check_submittable(command, cfg, ok)
    check_submittable("run", cfg, RunOptions(out=tmp_path, tracking_uri="http://mlflow:5000"))
    check_submittable("run", cfg, RunOptions(out=tmp_path, mlflow=False))
    check_submittable("run", tiny_config(tracking=dict(uri="http://mlflow:5000")), RunOptions(out=tmp_path))
    check_submittable("status", cfg, RunOptions(out=tmp_path))  # reads only: no store
    cases = [
        (cfg, RunOptions(out="runs/x", mlflow=False), "output: runs/x is relative: under submit"),
        (cfg, RunOptions(mlflow=False), "output: runs/tiny is relative"),  # the config's default output
        (cfg, RunOptions(out=tmp_path), "tracking: no --tracking-uri and no tracking.uri in the config"),
        (cfg, RunOptions(out=tmp_path, tracking_uri="sqlite:///mlflow.db"), "tracking: sqlite:///mlflow.db is a "
                                                                            "relative path"),
    ]
    for config, options, words in cases:
        with pytest.raises(SetupError) as err:
            check_submittable("run", config, options)
        assert str(err.value).startswith(words) and "\n" not in str(err.value), err.value
        assert "absolute path on storage the head keeps" in str(err.value)
    os.environ["MLFLOW_TRACKING_URI"] = "http://client-side:5000"  # the job does not see the client's environment
    try:
        with pytest.raises(SetupError, match="no --tracking-uri"):
            check_submittable("run", cfg, RunOptions(out=tmp_path))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]


def test_the_driver_of_a_ray_job_refuses_its_working_directory(tmp_path, monkeypatch):
    job = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job.mkdir(parents=True)
    monkeypatch.chdir(job)
    env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}})}
    assert job_working_dir(env) == job.resolve()
    assert job_working_dir({}) is None
    assert job_working_dir({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}})}) is None
    check_job_destinations(tmp_path / "out", f"sqlite:///{tmp_path / 'm.db'}", job)
    check_job_destinations(tmp_path / "out", "http://mlflow:5000", job)
    check_job_destinations(job / "out", None, None)  # not under a job: anything goes
    with pytest.raises(SetupError, match=r"^output: runs/x would be inside the job's temporary working directory"):
        check_job_destinations(__import__("pathlib").Path("runs/x"), None, job)
    with pytest.raises(SetupError, match=r"^tracking: the MLflow store sqlite:///.*mlflow.db would be inside"):
        check_job_destinations(tmp_path / "out", f"sqlite:///{job / 'mlflow.db'}", job)


def test_the_output_probe_writes_nothing(tmp_path):
    check_output_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SetupError, match="cannot write to .*file/out"):
        check_output_dir(tmp_path / "file" / "out")
