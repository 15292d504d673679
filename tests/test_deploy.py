"""The cluster workflows: `python -m pipeline submit` to a head started with Ray's defaults (token
authentication on, as soon as a token exists), what the upload holds, and the deployment files
under deploy/ validated against the schemas their tools use."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.grid import plan
from pipeline.results import read_table
from pipeline_helpers import mlflow_children, start_head, stop_cluster, tiny_config, tiny_dict, write_yaml

REPO = Path(__file__).resolve().parents[1]


def test_upload_holds_the_code_not_results(tmp_path):
    """What `ray job submit --working-dir .` uploads, as Ray itself packs it (.gitignore + .rayignore)."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(REPO), tmp_path / "pkg.zip", include_gitignore=True)
    names = zipfile.ZipFile(tmp_path / "pkg.zip").namelist()
    assert "pipeline/cli.py" in names and "configs/smoke.yaml" in names and "notebooks/analyze.py" in names
    assert not [n for n in names if n.startswith(("results/", ".git/", "runs/")) or n.endswith((".ipynb", ".db"))]
    assert (tmp_path / "pkg.zip").stat().st_size < 2 * 2**20


def test_pipeline_submit_with_rays_default_token_auth(tmp_path):
    """A head started with Ray's defaults where a token exists (as `ray start` or a first `ray.init()`
    leaves it in ~/.ray/auth_token): a plain `ray job submit` is refused; `python -m pipeline submit`
    runs the sweep, records the checkout's commit, and a second submission says there is nothing to do
    and adds no MLflow run."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(var, None)  # Ray's defaults, not the test session's RAY_AUTH_MODE=disabled
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        address = start_head(env, temp)
        plain = subprocess.run([ray_bin, "job", "submit", "--address", address, "--", "true"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and "Authentication required" in plain.stdout + plain.stderr

        cfg = tiny_config(name="job", grid=dict(n=[4], m=[16]))
        cfg_path = write_yaml(tmp_path / "job.yaml", tiny_dict(name="job", grid=dict(n=[4], m=[16])))
        out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
        argv = [sys.executable, "-m", "pipeline", "submit", "--address", address, "--", "run", cfg_path, "--out",
                str(out), "--tracking-uri", uri, "--no-progress"]
        job = submit_when_agent_up(argv, env, tmp_path)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "sweep finished" in job.stdout
        runs = read_table(out, "runs")
        assert runs.num_rows == plan(cfg)[1]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        assert commit and {c.split("+")[0] for c in runs.column("git_commit").to_pylist()} == {commit}
        assert len(mlflow_children(uri, "job")) == runs.num_rows

        again = submit_when_agent_up(argv, env, tmp_path)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert f"nothing to do: all {runs.num_rows} runs are already in Parquet and MLflow" in again.stdout
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("job")
        assert len(client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")) == 1
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def submit_when_agent_up(argv, env, cwd):
    """The head's job agent may come up after the dashboard answers."""
    import time

    for _ in range(30):
        job = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400, cwd=cwd)
        if "No available agent" not in job.stdout + job.stderr:
            return job
        time.sleep(2)
    return job
