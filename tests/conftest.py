import os

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Tolerances per dtype, in one place.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@pytest.fixture(params=[False, True], ids=["nobias", "bias"])
def bias(request):
    return request.param


@pytest.fixture(scope="session")
def work_log(tmp_path_factory):
    """A file every training task appends its run ids to (pipeline/task.py's test-only
    SOBOLEV_WORK_LOG), set before Ray starts so the workers inherit it."""
    path = tmp_path_factory.mktemp("work") / "work.log"
    path.touch()
    os.environ["SOBOLEV_WORK_LOG"] = str(path)
    return path


@pytest.fixture(scope="session")
def local_ray(work_log):
    """One real local Ray for the in-process pipeline tests."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# The default run is the fast tests; integration tests carry @pytest.mark.slow (registered in
# pyproject.toml) and run with `-m slow`, or with the rest under `--all`. Any explicit `-m`
# expression takes over from this default.
def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", default=False,
                     help="run every test, the slow integration tests too (default: those marked slow are left out)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_report_header(config):
    if not (config.getoption("--all") or config.getoption("markexpr")):
        return "tests marked slow are left out: `-m slow` runs them, `--all` runs everything"


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """configs/smoke.yaml, run once by the real CLI (an embedded local Ray, Parquet only) into a
    temporary directory: the notebooks' input and the estimate's measured task times."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("smoke") / "results"
    # always an embedded local Ray; no test's work log (this sweep is nobody's count)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SOBOLEV_WORK_LOG")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "configs/smoke.yaml", "--out", str(out),
                           "--no-mlflow", "--no-progress"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (f"smoke sweep failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert any((out / "runs").glob("*.parquet")) and any((out / "curves").glob("*.parquet"))
    return out


@pytest.fixture(scope="session")
def pg_mlflow(tmp_path_factory):
    """A real `mlflow server` on a throwaway PostgreSQL cluster, with MLflow's basic-auth app, as
    deploy/tracking/ runs it (tests/tracking_server.py), and a non-admin account ``sweeper`` made
    by deploy/tracking/create_account.py: ``.uri``, ``.user``, ``.password``, ``.server``."""
    import secrets
    import types

    from tracking_server import postgres_bin, tracking_server

    if postgres_bin() is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql, "
                    "or set SOBOLEV_PG_BIN to their directory")
    with tracking_server(tmp_path_factory.mktemp("pg_mlflow"), durable=False) as server:
        password = secrets.token_urlsafe(16)
        server.create_user("sweeper", password)
        yield types.SimpleNamespace(uri=server.uri, user="sweeper", password=password, server=server)
