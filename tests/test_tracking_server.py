"""The pipeline against a real PostgreSQL-backed `mlflow server` with MLflow's basic-auth app, as
deploy/tracking/ runs it (the session fixture ``pg_mlflow``, tests/tracking_server.py): every run
logged once with the default curve sampling and the full curves as an artifact, no password in any
printed line or MLflow field, de-duplication across two drivers, and a refused login stopping the
sweep before any work with one line."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from pipeline_helpers import log_from_two_drivers, mlflow_children
from test_reliability import DEADLINE, check_once, cli_env, sweep

from pipeline.config import CURVE_POINTS
from pipeline.logqueue import open_tracker
from pipeline.task import execute
from records.tables import read_table

pytestmark = pytest.mark.slow


@pytest.fixture
def login(pg_mlflow, monkeypatch):
    """This process logged in as the sweep's account (MLflow's client reads the environment)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", pg_mlflow.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", pg_mlflow.password)
    return pg_mlflow


def _cli(tmp_path, cfg_path, out, uri, user, password, *extra):
    env = cli_env(tmp_path, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    return subprocess.run([sys.executable, "-m", "pipeline", "run", cfg_path, "--out", str(out), "--tracking-uri",
                           uri, "--num-cpus", "2", "--no-progress", *extra], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=DEADLINE)


def _everything_mlflow_holds(client, exp_id, tmp_path) -> str:
    """Every param, tag and text artifact of every run of the experiment, as one text."""
    parts = []
    for r in client.search_runs([exp_id], max_results=1000):
        parts += [*r.data.params.values(), *r.data.tags.values(), r.info.run_name or ""]
        for a in client.list_artifacts(r.info.run_id):
            if not a.is_dir:
                parts.append(open(client.download_artifacts(r.info.run_id, a.path, str(tmp_path))).read())
    return "\n".join(parts)


def test_sweep_logs_every_run_once_sampled_curves_and_artifact_no_password_anywhere(login, tmp_path):
    cfg, cfg_path, ids = sweep(tmp_path, "pgtrip", grid=dict(n=[4, 6], m=[16], bias=[False]),
                               tracking=dict(curve_artifact=True))
    out, uri = tmp_path / "out", login.uri
    proc = _cli(tmp_path, cfg_path, out, uri, login.user, login.password)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert login.password not in proc.stdout + proc.stderr
    runs = check_once(cfg, ids, out, uri)  # every run exactly once, params and status as in Parquet
    curves = read_table(out, "curves").to_pandas()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment_name())
    sampled = 0
    for rid, child in mlflow_children(uri, cfg.experiment_name()).items():
        mine = curves[curves.run_id == rid].sort_values("step")
        history = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "curve.rel_loss")}
        steps = sorted(history)
        # at most curve_points checkpoints, the first and the last among them, each with its Parquet value
        assert len(steps) == min(CURVE_POINTS, len(mine)) and set(steps) <= set(mine.step)
        assert steps[0] == mine.step.iloc[0] and steps[-1] == mine.step.iloc[-1]
        for row in mine[mine.step.isin(steps)].itertuples():
            assert history[row.step] == pytest.approx(row.rel_loss, rel=1e-12)
        sampled += len(mine) > len(steps)
        # the full curves, every checkpoint and column, as the child's artifact
        (tmp_path / rid).mkdir()
        with open(client.download_artifacts(child.info.run_id, "curves.csv", str(tmp_path / rid))) as fh:
            table = list(csv.DictReader(fh))
        assert [int(r["step"]) for r in table] == mine.step.tolist()
        for col in ("t", "rel_loss", "bound", "flips_net", "jump_norm"):
            assert [float(r[col]) for r in table] == pytest.approx(mine[col].tolist(), rel=1e-15, nan_ok=True)
    assert sampled, "no run had more checkpoints than curve_points: the sampling was not exercised"
    assert len(runs) == len(ids)
    assert login.password not in _everything_mlflow_holds(client, exp.experiment_id, tmp_path / "dl")


def test_two_drivers_log_the_same_runs_each_run_once(login, tmp_path):
    """Two drivers (different outputs) log the same runs into one experiment of the PostgreSQL
    store: one after the other (the second has not seen the first's children), then both at once."""
    cfg, _, _ = sweep(tmp_path, "pgdedup", grid=dict(n=[4], m=[16], bias=[False]), seeds=dict(init=4))
    from pipeline.grid import plan

    results = [execute(t) for t in plan(cfg)[0][:2]]
    a = open_tracker(login.uri, cfg.experiment_name(), cfg.name, "a", params={}, out=tmp_path / "o1",
                     settings=cfg.tracking)
    b = open_tracker(login.uri, cfg.experiment_name(), cfg.name, "b", params={}, out=tmp_path / "o2",
                     settings=cfg.tracking)
    a.logged_run_ids()
    b.logged_run_ids()
    log_from_two_drivers(a, b, results)
    children = mlflow_children(login.uri, cfg.experiment_name())  # asserts each run_id once
    assert set(children) == {r["run_id"] for res in results for r in res["runs"]}
    assert all(c.info.status == "FINISHED" for c in children.values())


def test_refused_login_and_credentials_in_the_uri_stop_before_any_work_in_one_line(pg_mlflow, tmp_path):
    """A wrong password, no login, and a URI carrying the password (even the right one): exit 2,
    one line naming the fix, the password nowhere in the output, nothing trained or written."""
    _, cfg_path, _ = sweep(tmp_path, "pglogin", grid=dict(n=[4], m=[16], bias=[False]))
    host = pg_mlflow.uri.removeprefix("http://")
    cases = [
        ("wrong", pg_mlflow.uri, pg_mlflow.user, "not-" + pg_mlflow.password,
         f"refused the login of user '{pg_mlflow.user}'"),
        ("none", pg_mlflow.uri, "", "", "asks for a login"),
        ("in_uri", f"http://{pg_mlflow.user}:{pg_mlflow.password}@{host}", "", "", "carries credentials"),
    ]
    for name, uri, user, password, said in cases:
        out = tmp_path / f"out-{name}"
        proc = _cli(tmp_path, cfg_path, out, uri, user, password)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: tracking: ") and said in lines[0], (name, lines)
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in lines[0], (name, lines)
        assert pg_mlflow.password not in proc.stdout + proc.stderr, name
        assert not out.exists(), name  # refused before the output was made
        assert not (tmp_path / "work.log").exists() or not (tmp_path / "work.log").read_text(), name
    # `sync` checks the login the same way
    env = cli_env(tmp_path, MLFLOW_TRACKING_USERNAME=pg_mlflow.user, MLFLOW_TRACKING_PASSWORD="Wr0ng-pw-4711")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "sync", cfg_path, "--out", str(tmp_path / "x"),
                           "--tracking-uri", pg_mlflow.uri], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "refused the login" in proc.stderr and "Wr0ng-pw-4711" not in proc.stdout + proc.stderr
