"""Reliability on real components: faults are injected into real processes (Ray workers,
a driver, a Ray node, an MLflow server) or left on disk as a crash leaves them, and each
test checks that the sweep ends with every run exactly once in Parquet and in MLflow.

Fault injection uses only pipeline/task.py's documented test-only settings
(SOBOLEV_FAULT_EXIT_ONCE, SOBOLEV_TASK_DELAY, SOBOLEV_WORK_LOG) and real kills. Bad input
and an unreachable tracking server at start-up are covered by tests/test_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import free_port, mlflow_children, tiny_dict, wait_http, write_yaml

from pipeline.config import parse_config
from pipeline.driver import run_sweep
from pipeline.grid import plan
from pipeline.task import execute
from pipeline.tracking import PARAM_FIELDS, Tracker
from records.schema import TABLES
from records.tables import done_run_ids, prepare, read_table, write_task

DEADLINE = 240  # seconds any one sweep may take here before the test gives up

pytestmark = pytest.mark.slow  # real Ray clusters, MLflow servers and CLI drivers, killed mid-sweep


# -- helpers -----------------------------------------------------------------------------------

def sweep(tmp_path: Path, name: str, **overrides):
    """A tiny sweep: its config, the YAML file for the CLI, every run id of its grid."""
    data = tiny_dict(name=name, **overrides)
    cfg = parse_config(data)
    ids = {rid for t in plan(cfg)[0] for rid in t.run_ids}
    return cfg, write_yaml(tmp_path / f"{name}.yaml", data), ids


def cli_env(tmp_path: Path, **extra) -> dict:
    """The environment of a CLI subprocess: its own work log; no Ray address, delay or fault
    unless asked (the embedded Ray's workers inherit all of it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "SOBOLEV_TASK_DELAY", "SOBOLEV_FAULT_EXIT_ONCE")}
    env.update(RAY_AUTH_MODE="disabled", SOBOLEV_WORK_LOG=str(tmp_path / "work.log"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_argv(cfg_path: str, out: Path, uri: str | None) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", cfg_path, "--out", str(out),
            *(["--tracking-uri", uri] if uri else ["--no-mlflow"]), "--num-cpus", "2", "--no-progress"]


def trained(tmp_path: Path) -> list[str]:
    """Run ids trained so far (one line per trained run, from every task of every process)."""
    log = tmp_path / "work.log"
    return log.read_text().splitlines() if log.exists() else []


def check_once(cfg, ids: set[str], out: Path, uri: str | None):
    """Every run of the grid exactly once in Parquet (curves from exactly one file per run)
    and, with ``uri``, exactly once in MLflow, logged whole."""
    runs = read_table(out, "runs")
    got = runs.column("run_id").to_pylist()
    assert len(got) == len(set(got)), "a run is twice in the runs table"
    assert set(got) == ids
    files = ds.dataset(out / "curves", format="parquet").to_table(columns=["run_id", "__filename"]).to_pylist()
    per_run: dict[str, set] = {}
    for row in files:
        per_run.setdefault(row["run_id"], set()).add(row["__filename"])
    assert set(per_run) == ids
    assert all(len(f) == 1 for f in per_run.values()), "a run's curves come from two files"
    if uri:
        children = mlflow_children(uri, cfg.experiment_name())  # asserts no run_id twice
        assert set(children) == ids
        for rec in runs.to_pylist():
            child = children[rec["run_id"]]
            assert child.info.status == ("FAILED" if rec["status"] == "diverged" else "FINISHED")
            assert {f: child.data.params.get(f) for f in PARAM_FIELDS} == {f: str(rec[f]) for f in PARAM_FIELDS}
            assert child.data.metrics["steps"] == rec["steps"]
    return runs


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    """The processes still alive (zombies count as dead) after ``timeout``; those are killed."""
    def alive():
        out = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.time() + timeout
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    left = alive()
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return left


def read_everything(out: Path) -> int:
    """What any reader does: the whole dataset of each table. Raises on a partial file.
    Returns the number of runs seen."""
    n = 0
    for table, schema in TABLES.items():
        if (out / table).is_dir():
            t = ds.dataset(out / table, format="parquet", schema=schema).to_table()
            if table == "runs":
                ids = t.column("run_id").to_pylist()
                assert len(ids) == len(set(ids))
                n = len(ids)
    return n


def start_mlflow_server(port: int, db: Path, artifacts: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root", str(artifacts)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
    return server


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


# -- 1. worker death -----------------------------------------------------------------------------

def test_worker_death_is_retried_and_every_run_lands_once(tmp_path):
    """A worker process dies mid-task (os._exit(1), SOBOLEV_FAULT_EXIT_ONCE): Ray retries the
    task, the sweep completes, every run once in Parquet and MLflow, trained once.

    Also: a Ray address file left by a cluster that died without `ray stop` (here pointing at a
    port nobody listens on) does not capture the local run."""
    cfg, cfg_path, ids = sweep(tmp_path, "workerdeath", grid=dict(n=[4]))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    fault = tmp_path / "fault"
    fault.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rw", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        (Path(ray_tmp) / "ray").mkdir()
        (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        proc = subprocess.run(run_argv(cfg_path, out, uri), env=cli_env(tmp_path, SOBOLEV_FAULT_EXIT_ONCE=fault,
                                                                      RAY_TMPDIR=ray_tmp),
                              capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (fault / "fired").exists(), "no worker died: the fault was not injected"
    assert f"{len(ids)} done (0 diverged), 0 skipped (already in Parquet), 0 failed" in proc.stdout
    check_once(cfg, ids, out, uri)
    work = trained(tmp_path)
    assert sorted(work) == sorted(ids), "a run was trained twice, or not at all"


# -- 2. driver death -----------------------------------------------------------------------------

def test_driver_killed_mid_sweep_rerun_finishes_without_recomputing(tmp_path):
    """SIGKILL of the driver's whole process group (driver and its embedded Ray) mid-sweep, while
    a reader reads the dataset in a loop; the same command again finishes the sweep."""
    cfg, cfg_path, ids = sweep(tmp_path, "driverdeath", grid=dict(n=[4]))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = run_argv(cfg_path, out, uri)
    reads = 0
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(argv, env=cli_env(tmp_path, SOBOLEV_TASK_DELAY=2), cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + DEADLINE
        while read_everything(out) < 2:  # at least one task in Parquet, the others in flight
            reads += 1
            assert driver.poll() is None, "the driver ended before it could be killed:\n" + \
                (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no task finished in time"
            time.sleep(0.02)
        procs = descendants(driver.pid)
        assert any("raylet" in cmdline(p) for p in procs), "no embedded Ray under the driver"
    finally:
        kill_group(driver)
    stray = wait_gone(procs)
    assert not stray, f"processes of the killed driver still alive: {[p.pid for p in stray]}"

    at_kill = done_run_ids(out)
    assert 0 < len(at_kill) < len(ids), "the kill was not mid-sweep"
    for f in (out / "runs").glob("*.parquet"):
        pq.read_metadata(f)  # a whole file, or none
    for f in (out / "curves").glob("*.parquet"):
        pq.read_metadata(f)
    mark = len(trained(tmp_path))

    with open(tmp_path / "second.log", "w") as log:
        rerun = subprocess.Popen(argv, env=cli_env(tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.time() + DEADLINE
        while rerun.poll() is None:
            read_everything(out)
            reads += 1
            assert time.time() < deadline, "the rerun did not finish in time"
            time.sleep(0.02)
    finally:
        kill_group(rerun)
    text = (tmp_path / "second.log").read_text()
    assert rerun.returncode == 0, text[-3000:]
    assert read_everything(out) == len(ids)
    assert reads > 20, "the reader hardly read while the sweep ran"
    assert f"{len(at_kill)} skipped (already in Parquet)" in text
    again = trained(tmp_path)[mark:]
    assert not set(again) & at_kill, "runs already in Parquet were trained again"
    assert set(again) == ids - at_kill
    check_once(cfg, ids, out, uri)


# -- 3. node loss ------------------------------------------------------------------------------

NODE_LOSS = r"""
import json, sys, threading, time
from pathlib import Path
import psutil, ray
from ray.cluster_utils import Cluster
from pipeline.config import load_config
from pipeline.driver import run_sweep
from records.tables import done_run_ids

cfg_path, out, uri = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1))
worker = cluster.add_node(num_cpus=2)
cluster.wait_for_nodes()
info = {}

def busy(node):
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    found = set()
    for p in raylet.children(recursive=True):
        try:
            if "ray::_remote_execute" in " ".join(p.cmdline()):
                found.add(p.pid)
        except psutil.Error:
            pass
    return found

def in_delay(pid):
    # the main thread sleeps (SOBOLEV_TASK_DELAY, before training): the task is mid-way, certainly
    try:
        return "nanosleep" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False

def remove_worker_node():
    # once a task is in Parquet, remove the worker node while it runs a task still in its delay
    deadline = time.time() + 180
    while time.time() < deadline:
        sleeping = [pid for pid in busy(worker) if in_delay(pid)]
        if sleeping and any((out / "runs").glob("*.parquet")):
            info["cut_off_tasks"] = len(sleeping)
            info["runs_in_parquet_at_removal"] = len(done_run_ids(out))
            # the machine goes: every process on it dies at once (the worker processes too, which
            # on their own could outlive their raylet long enough to finish the task)
            raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
            for p in raylet.children(recursive=True):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            cluster.remove_node(worker, allow_graceful=False)
            return
        time.sleep(0.05)

th = threading.Thread(target=remove_worker_node, daemon=True)
th.start()
report = run_sweep(load_config(cfg_path), out=out, tracking_uri=uri, address=cluster.address, progress=False)
th.join(timeout=10)
info.update(done=report.done, failed=report.failed, errors=report.errors)
print("RESULT " + json.dumps(info), flush=True)
ray.shutdown()
cluster.shutdown()
"""


def test_worker_node_lost_mid_sweep_sweep_completes(tmp_path):
    """A two-node cluster (ray.cluster_utils.Cluster: head 1 CPU, worker 2 CPUs); the worker node
    is removed (its processes SIGKILLed) while it runs a task (seen in the task's delay, through
    /proc/PID/wchan); the sweep completes on the head, every run once."""
    cfg, cfg_path, ids = sweep(tmp_path, "nodeloss", grid=dict(n=[4]))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray_tmp = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # the cluster's files (and address file) stay here
    try:
        proc = subprocess.run([sys.executable, "-c", NODE_LOSS, cfg_path, str(out), uri],
                              env=cli_env(tmp_path, SOBOLEV_TASK_DELAY=1, RAY_TMPDIR=ray_tmp),
                              capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path, start_new_session=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    info = json.loads(lines[-1].removeprefix("RESULT "))
    assert info.get("cut_off_tasks", 0) >= 1, f"the worker node was not removed mid-task: {info}"
    assert info["runs_in_parquet_at_removal"] < len(ids)
    assert (info["done"], info["failed"], info["errors"]) == (len(ids), 0, []), info
    check_once(cfg, ids, out, uri)
    assert set(trained(tmp_path)) == ids


# -- 4. diverging runs ---------------------------------------------------------------------------

def test_diverging_runs_are_recorded_and_the_sweep_goes_on(local_ray, tmp_path):
    """step_factor 50 (stable below 2): the no-bias runs diverge within a few steps, the bias runs
    do not (their ReLUs die and they stop at the step budget). A mixed sweep finishes; diverged
    runs are rows with status 'diverged' and their curves up to the divergence."""
    cfg, _, ids = sweep(tmp_path, "diverge", training=dict(step_factor=50.0, t_max=1e4, max_steps=300))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = run_sweep(cfg, out=out, tracking_uri=uri, progress=False)
    assert (report.done, report.failed) == (len(ids), 0)
    runs = check_once(cfg, ids, out, uri).to_pandas().set_index("run_id")
    diverged = runs[runs["status"] == "diverged"]
    assert report.diverged == len(diverged) > 0
    assert (runs["status"] != "diverged").any(), "not a mixed sweep"
    assert (diverged["stopped_by"] == "divergence").all()
    assert (diverged["steps"] < cfg.training.max_steps).all()
    curves = read_table(out, "curves").to_pandas()
    for rid, rec in diverged.iterrows():
        c = curves[curves["run_id"] == rid].sort_values("step")
        assert c["step"].iloc[0] == 0 and c["rel_loss"].iloc[0] == pytest.approx(1.0)
        assert c["step"].iloc[-1] == rec["steps"]  # the curve runs up to the divergence
        assert c["rel_loss"].iloc[-1] >= cfg.training.divergence_factor  # and shows it
        assert c["rel_loss"].iloc[:-1].map(lambda v: v == v and v < float("inf")).all()


# -- 5. tracking server dies mid-sweep --------------------------------------------------------

def test_mlflow_server_dies_mid_sweep_parquet_complete_then_sync_fills_mlflow(tmp_path):
    """The MLflow server is SIGKILLed while the sweep runs: the sweep completes into Parquet, says
    MLflow is incomplete (exit code 3) and prints the `sync` command; with the server back, that
    command fills MLflow from Parquet, and a later run neither trains nor logs anything twice."""
    cfg, cfg_path, ids = sweep(tmp_path, "serverdeath", grid=dict(n=[4]))
    out, port = tmp_path / "out", free_port()
    uri = f"http://127.0.0.1:{port}"
    db, artifacts = tmp_path / "server.db", tmp_path / "artifacts"
    server, driver = start_mlflow_server(port, db, artifacts), None
    try:
        with open(tmp_path / "run.log", "w") as log:
            # no HTTP retries (MLflow's own setting; the pipeline's default is 2, about 5 s per failed call)
            env = cli_env(tmp_path, SOBOLEV_TASK_DELAY=1.5, MLFLOW_HTTP_REQUEST_MAX_RETRIES=0)
            driver = subprocess.Popen(run_argv(cfg_path, out, uri), env=env, cwd=tmp_path, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + DEADLINE
            # the first task is in Parquet: its MLflow logging starts now, the other tasks are in flight
            while not any((out / "runs").glob("*.parquet")):
                assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                assert time.time() < deadline
                time.sleep(0.05)
        finally:
            kill_group(server)  # the tracking server dies mid-sweep
        driver.wait(timeout=DEADLINE)
    finally:
        kill_group(server)
        if driver is not None and driver.poll() is None:
            kill_group(driver)
    text = (tmp_path / "run.log").read_text()
    assert driver.returncode == 3, text[-3000:]
    assert "warning: MLflow logging failed" in text
    assert f"{len(ids)} done (0 diverged), 0 skipped (already in Parquet), 0 failed" in text
    assert "MLflow INCOMPLETE" in text
    sync_cmd = re.search(r"fill MLflow with: (python -m pipeline sync .*)$", text, re.M)
    assert sync_cmd, text[-3000:]
    assert sync_cmd.group(1).split() == ["python", "-m", "pipeline", "sync", cfg_path, "--out", str(out),
                                         "--tracking-uri", uri]
    check_once(cfg, ids, out, None)  # Parquet is complete
    mark = len(trained(tmp_path))
    assert sorted(trained(tmp_path)) == sorted(ids)

    server = start_mlflow_server(port, db, artifacts)  # the server comes back, same store
    try:
        before = mlflow_children(uri, cfg.experiment_name())
        assert len(before) < len(ids), "MLflow was not left incomplete"
        argv = [sys.executable if a == "python" else a for a in sync_cmd.group(1).split()]
        synced = subprocess.run(argv, env=cli_env(tmp_path), capture_output=True, text=True, timeout=DEADLINE,
                                cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert "synced" in synced.stdout
        check_once(cfg, ids, out, uri)  # whole and once, including any child cut off by the kill

        later = subprocess.run(run_argv(cfg_path, out, uri), env=cli_env(tmp_path), capture_output=True, text=True,
                               timeout=DEADLINE, cwd=tmp_path)
        assert later.returncode == 0, later.stdout[-2000:] + later.stderr[-3000:]
        assert f"0 done (0 diverged), {len(ids)} skipped" in later.stdout
        assert trained(tmp_path)[mark:] == []
        check_once(cfg, ids, out, uri)
    finally:
        kill_group(server)


# -- 7. corrupt leftovers ----------------------------------------------------------------------

def test_corrupt_leftovers_are_set_aside_with_a_message_and_recomputed(tmp_path):
    """An output directory as crashes leave it: task A whole (in Parquet and MLflow, but its MLflow
    child cut off mid-log by a driver kill); task B's runs file truncated (its curves whole, and it
    was logged to MLflow); and a curves file without runs (a task of an earlier batching, cut off
    between its two writes). `python -m pipeline run` names what it sets aside, recomputes only B,
    and ends with every run exactly once in Parquet and MLflow."""
    cfg, cfg_path, ids = sweep(tmp_path, "corrupt", grid=dict(n=[4], m=[16], bias=[False]), seeds=dict(init=4))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    (task_a, task_b), _ = plan(cfg)
    prepare(out, cfg.fingerprint(), cfg.name)
    results = {t.task_id: execute(t) for t in (task_a, task_b)}
    tracker = Tracker(uri, cfg.experiment_name(), cfg.name, "old", params={})
    for t in (task_a, task_b):
        write_task(out, t.task_id, results[t.task_id]["runs"], results[t.task_id]["curves"])
        if t is task_b:
            tracker.log(results[t.task_id]["runs"], results[t.task_id]["curves"])
    # A's first run: its MLflow child created, then the driver died (what Tracker.log does first)
    rec = results[task_a.task_id]["runs"][0]
    tracker.client.create_run(tracker.experiment_id, tags={"kind": "run", "run_id": rec["run_id"]})
    for r in results[task_a.task_id]["runs"][1:]:
        tracker.log([r], results[task_a.task_id]["curves"])
    # B's runs file truncated
    b_runs = out / "runs" / f"{task_b.task_id}.parquet"
    b_runs.write_bytes(b_runs.read_bytes()[: b_runs.stat().st_size // 2])
    # seed 3 alone (an earlier run with replicas_per_task 1): curves written, runs not
    (lone,), _ = plan(parse_config(tiny_dict(name="corrupt", grid=dict(n=[4], m=[16], bias=[False]),
                                             seeds=dict(init=[3]), resources=dict(replicas_per_task=1))))
    lone_curves = execute(lone)["curves"]
    write_task(out, lone.task_id, [], lone_curves)
    (out / "runs" / f"{lone.task_id}.parquet").unlink()
    with pytest.raises(pa.ArrowInvalid):  # what a reader would hit without the set-aside
        read_table(out, "runs")

    proc = subprocess.run(run_argv(cfg_path, out, uri), env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=DEADLINE, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert f"{len(task_b.seeds)} done (0 diverged), {len(task_a.seeds)} skipped" in proc.stdout
    assert sorted(trained(tmp_path)) == sorted(task_b.run_ids)  # only B was recomputed
    check_once(cfg, ids, out, uri)
    assert re.search(rf"set aside .*runs/{task_b.task_id}\.parquet.*unreadable Parquet file", proc.stderr)
    assert re.search(rf"set aside .*curves/{task_b.task_id}\.parquet.*other half", proc.stderr)
    assert re.search(rf"set aside .*curves/{lone.task_id}\.parquet.*curves without a runs file", proc.stderr)
    assert proc.stdout.count("set aside: ") == 3  # and again in the closing summary
    corrupt = out / "_corrupt"
    assert {p.relative_to(corrupt).as_posix() for p in corrupt.rglob("*.parquet")} == {
        f"runs/{task_b.task_id}.parquet", f"curves/{task_b.task_id}.parquet", f"curves/{lone.task_id}.parquet"}
