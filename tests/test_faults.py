"""Faults of long runs (pipeline/faults.py, pipeline/session.py): a disk that fills up, a task out of
memory, a task that hangs. The slow tests use real parts: a small tmpfs mounted for the test, a real
memory limit on the Ray worker (RLIMIT_AS, pipeline/task.py's SOBOLEV_TASK_MEMORY_CAP), a task that
sleeps past its time limit (SOBOLEV_TASK_DELAY), the real CLI, Parquet and an SQLite MLflow store.
Each ends with the same command run again: every run exactly once in Parquet and MLflow."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pipeline_helpers import mlflow_children, tiny_config
from test_reliability import DEADLINE, check_once, cli_env, run_argv, sweep, trained

from pipeline.driver import Progress
from pipeline.errors import DISK_FULL_EXIT, DiskFull, is_disk_full
from pipeline.estimate import run_steps, task_seconds
from pipeline.faults import (LIMIT_FACTOR, LIMIT_FLOOR_S, OUT_OF_MEMORY, TIME_LIMIT, TaskTimeLimit, task_fault,
                             time_limit, time_limit_s)
from pipeline.grid import plan
from records.schema import FAILED
from records.tables import read_table

MiB = 2**20


# -- unit: what a fault is, the time limit, the split, the progress bar ---------------------------

def test_faults_are_told_apart():
    assert task_fault(MemoryError()) == OUT_OF_MEMORY
    assert task_fault(TaskTimeLimit("past its time limit of 3 s")) == TIME_LIMIT
    try:  # torch's own words for a failed allocation (a real one: more than any machine has)
        import torch
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        assert task_fault(exc) == OUT_OF_MEMORY, exc
    assert task_fault(ValueError("a bug")) is None and task_fault(RuntimeError("worker died")) is None
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError("[errno 28] Error writing bytes to file"))  # pyarrow's way
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(None)


def test_time_limit_interrupts_a_sleep_and_leaves_no_alarm():
    t0 = time.monotonic()
    with pytest.raises(TaskTimeLimit, match="past its time limit of 0.2 s"):
        with time_limit(0.2):
            time.sleep(30)
    assert time.monotonic() - t0 < 5
    with time_limit(0.2):
        pass
    time.sleep(0.4)  # the alarm of a task that finished in time never fires later
    with time_limit(math.inf):
        time.sleep(0.01)


def test_time_limit_derived_from_the_estimate_unless_given():
    cfg = tiny_config()
    task = plan(cfg)[0][0]
    assert time_limit_s(cfg, task) >= LIMIT_FLOOR_S
    steps = run_steps(task.cell, task.train)  # a step costing 100 s: the limit is LIMIT_FACTOR times the task's
    cal = dict(a=100.0, b=0.0, task=0.0, eig=0.0)
    limit = time_limit_s(cfg, task, cal=cal)
    assert limit == LIMIT_FACTOR * task_seconds(cfg, task, cal) >= LIMIT_FACTOR * 100.0 * steps > LIMIT_FLOOR_S
    assert time_limit_s(cfg, task, 7.5) == 7.5
    assert time_limit_s(tiny_config(resources=dict(task_timeout_s=42)), task) == 42.0


def test_halves_keep_run_ids_and_split_the_batch():
    cfg = tiny_config(seeds=dict(init=5), resources=dict(replicas_per_task=5))
    task = plan(cfg)[0][0]
    a, b = task.halves()
    assert (a.seeds, b.seeds) == ((0, 1, 2), (3, 4))
    assert a.run_ids + b.run_ids == task.run_ids and len({task.task_id, a.task_id, b.task_id}) == 3
    single = a.halves()[1]
    assert single.seeds == (2,) and single.halves() == (single,)  # one seed: retried as it is


def test_progress_never_passes_its_total():
    """Weights that rounding to 0.1 s (the old bar) summed to more than their total, a retry that
    splits a task, and a failed task: the bar's count stays within the total and ends on it."""
    cfg = tiny_config(seeds=dict(init=4), resources=dict(replicas_per_task=2))
    tasks, _ = plan(cfg)
    weights = {t.task_id: 0.16 for t in tasks}
    p = Progress(tasks, weights)
    assert round(sum(round(w, 1) for w in weights.values()), 1) > round(p.total, 1)  # the old overshoot
    seen = []
    for t in tasks[:-1]:
        for half in t.halves():  # retried at half the replicas: the halves land
            seen.append(p.landed(half))
            assert p.done <= p.total
    seen.append(p.landed(tasks[-1]))
    assert p.done == p.total and all(s >= 0 for s in seen) and p.landed(tasks[0]) == 0


def test_disk_full_names_path_free_space_and_resume(tmp_path):
    err = DiskFull(tmp_path / "out", "python -m pipeline run c.yaml --out x --no-mlflow")
    text = str(err)
    assert text.startswith("disk full: no space left writing ") and str(tmp_path / "out") in text
    assert re.search(r"\(\d+\.\d (KiB|MiB|GiB|TiB) free there\)", text) and text.endswith("--no-mlflow")
    assert "\n" not in text


# -- slow: real faults --------------------------------------------------------------------------

@contextlib.contextmanager
def small_fs(path: Path, kib: int):
    """A tmpfs of ``kib`` KiB mounted at ``path`` (a real file system that fills up); yields a
    function that grows it (``mount -o remount,size=``), as freeing space would."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a {kib} KiB tmpfs at {path} ({mount.stderr.strip() or mount.returncode}): the "
                    f"disk-full test needs a small real file system, which takes root or CAP_SYS_ADMIN")
    try:
        yield lambda size: subprocess.run(["mount", "-o", f"remount,size={size}k", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def the_one_line(text: str, word: str) -> str:
    lines = [x for x in text.splitlines() if word in x.lower()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("full", ["output", "mlflow"])
def test_disk_full_stops_with_one_line_then_the_same_command_finishes_every_run_once(tmp_path, full):
    """A sweep of 8 tasks whose output (a 200 KiB tmpfs: a task's two files take about 33 KiB) or SQLite
    MLflow store (a 1600 KiB tmpfs: the empty store takes 930 KiB, each of the 12 runs about 100 KiB)
    fills up: exit code 4, one line naming the path, the free space and the resume command, no
    traceback, every file whole; after the file system grows, that command finishes the sweep with
    every run once in Parquet and MLflow."""
    cfg, cfg_path, ids = sweep(tmp_path, f"full{full}", grid=dict(n=[4]))
    small = tmp_path / "small"
    with small_fs(small, 200 if full == "output" else 1600) as grow:
        out = small / "out" if full == "output" else tmp_path / "out"
        db = small / "mlflow.db" if full == "mlflow" else tmp_path / "mlflow.db"
        uri = f"sqlite:///{db}"
        first = subprocess.run(run_argv(cfg_path, out, uri), env=cli_env(tmp_path), capture_output=True, text=True,
                               timeout=DEADLINE, cwd=tmp_path)
        text = first.stdout + first.stderr
        assert first.returncode == DISK_FULL_EXIT, text[-3000:]
        line = the_one_line(text, "disk full")
        assert f"no space left writing {out if full == 'output' else db}" in line and "free there" in line
        assert "Traceback" not in text and "MLflow INCOMPLETE" not in text
        for f in [*(out / "runs").glob("*"), *(out / "curves").glob("*")]:
            assert not f.name.startswith("."), f"a temporary file was left: {f}"
            pq.read_metadata(f)  # whole
        written = read_table(out, "runs").column("run_id").to_pylist()
        assert len(set(written)) == len(written) and 0 < len(written) <= len(ids)
        if full == "output":
            assert len(written) < len(ids)
        logged = {rid for rid, r in mlflow_children(uri, cfg.experiment_name()).items() if r.info.status != "RUNNING"}
        if full == "mlflow":  # the tasks may all have landed in Parquet before the store filled: MLflow lacks runs
            assert len(logged) < len(written)
        resume = line.split("resume with: ", 1)[1]
        assert resume == f"python -m pipeline run {cfg_path} --out {out} --tracking-uri {uri}"

        grow(20 * 1024)
        argv = [*run_argv(cfg_path, out, uri)[:3], *shlex.split(resume)[3:], "--num-cpus", "2", "--no-progress"]
        again = subprocess.run(argv, env=cli_env(tmp_path), capture_output=True, text=True, timeout=DEADLINE,
                               cwd=tmp_path)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert f"{len(written)} skipped (already in Parquet)" in again.stdout
        if full == "mlflow":  # the resume logs what MLflow lacked from Parquet
            assert f"({len(set(written) - logged)} runs synced from Parquet)" in again.stdout
        check_once(cfg, ids, out, uri)
        assert set(trained(tmp_path)) == ids


@pytest.mark.slow
def test_a_hung_task_is_retried_at_half_the_replicas_then_recorded_failed_and_resume_trains_it(tmp_path):
    """Four seeds in tasks of two; every task holding seed 0 sleeps 600 s (a hang) and the time
    limit is 5 s: the task (0, 1) is cut off and retried as (0) and (1); (1) trains, (0) hangs again
    and is recorded as failed, with the reason, in the runs table and on the MLflow parent run. The
    sweep goes on (seeds 2, 3), exits 1; `status` counts the failure; the same command without the
    hang trains seed 0 only, and every run is then once in Parquet and MLflow."""
    cfg, cfg_path, ids = sweep(tmp_path, "hang", grid=dict(n=[4], m=[16], bias=[False]), seeds=dict(init=4))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [*run_argv(cfg_path, out, uri), "--task-timeout", "5"]
    t0 = time.monotonic()
    first = subprocess.run(argv, env=cli_env(tmp_path, SOBOLEV_TASK_DELAY=600, SOBOLEV_TASK_DELAY_SEED=0),
                           capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)
    assert first.returncode == 1, (first.stdout + first.stderr)[-3000:]
    assert time.monotonic() - t0 < 300  # the hangs were cut at their limit
    assert "3 done (0 diverged)" in first.stdout and "1 failed" in first.stdout
    assert "retried task:" in first.stdout and "time limit" in first.stdout
    runs = {r["seed"]: r for r in read_table(out, "runs").to_pylist()}
    assert sorted(runs) == [0, 1, 2, 3] and runs[0]["status"] == FAILED
    assert runs[0]["failure_reason"].startswith("time limit: ") and "past its time limit of 5 s" in \
        runs[0]["failure_reason"] and "after a retry at half the replicas" in runs[0]["failure_reason"]
    assert [json.loads(runs[s]["batch_seeds"]) for s in range(4)] == [[0], [1], [2, 3], [2, 3]]
    assert all(runs[s]["status"] != FAILED and runs[s]["failure_reason"] is None for s in (1, 2, 3))
    assert sorted(trained(tmp_path)) == sorted(runs[s]["run_id"] for s in (1, 2, 3))
    children = mlflow_children(uri, cfg.experiment_name())
    assert set(children) == {runs[s]["run_id"] for s in (1, 2, 3)}
    failed_list = parent_artifact(uri, cfg.experiment_name(), "failed_runs.json")
    assert [(f["run_id"], f["seed"]) for f in failed_list] == [(runs[0]["run_id"], 0)]
    assert failed_list[0]["reason"] == runs[0]["failure_reason"]
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", cfg_path, "--out", str(out)], env=cli_env(tmp_path),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "3 of 4 runs done" in status.stdout and "1 of the pending runs are recorded as failed" in status.stdout

    mark = len(trained(tmp_path))
    again = subprocess.run(argv, env=cli_env(tmp_path), capture_output=True, text=True, timeout=DEADLINE,
                           cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "1 done (0 diverged), 3 skipped" in again.stdout
    assert trained(tmp_path)[mark:] == [runs[0]["run_id"]]
    final = check_once(cfg, ids, out, uri)
    assert FAILED not in final.column("status").to_pylist()
    assert list((out / "_superseded").glob("failed-*/runs/failed-*.parquet"))  # the failure is kept aside


@pytest.mark.slow
def test_a_task_out_of_memory_is_retried_at_half_the_replicas_then_recorded_failed(tmp_path):
    """A real memory limit (RLIMIT_AS: a worker may map 650 MiB more than it had at its first task),
    tasks of 4 replicas. Measured here in a Ray worker, a task maps about 100 MiB plus 190 MiB per
    replica at m = 2^20 and 760 MiB per replica at m = 2^22. So at m = 2^20 four replicas (about 860
    MiB) fail and two (about 480 MiB) train; at m = 2^22 two replicas fail again, and their runs are
    recorded as failed. The sweep goes on, and the same command without the limit trains the failed
    runs only."""
    cfg, cfg_path, ids = sweep(tmp_path, "oom", grid=dict(n=[6], m=[2**20, 2**22], bias=[False]),
                               seeds=dict(init=4), resources=dict(replicas_per_task=4), training=dict(max_steps=5))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = run_argv(cfg_path, out, uri)
    first = subprocess.run(argv, env=cli_env(tmp_path, SOBOLEV_TASK_MEMORY_CAP=650 * MiB), capture_output=True,
                           text=True, timeout=DEADLINE, cwd=tmp_path)
    text = first.stdout + first.stderr
    assert first.returncode == 1, text[-3000:]
    assert "4 done (0 diverged)" in first.stdout and "4 failed" in first.stdout, first.stdout
    runs = {(r["m"], r["seed"]): r for r in read_table(out, "runs").to_pylist()}
    for seed in range(4):
        ok, bad = runs[(2**20, seed)], runs[(2**22, seed)]
        half = [0, 1] if seed < 2 else [2, 3]
        assert ok["status"] != FAILED and json.loads(ok["batch_seeds"]) == half  # trained at half the replicas
        assert bad["status"] == FAILED and bad["failure_reason"].startswith(OUT_OF_MEMORY + ": ")
        assert "after a retry at half the replicas" in bad["failure_reason"] and json.loads(bad["batch_seeds"]) == half
    assert first.stdout.count("retried task:") == 2
    assert set(mlflow_children(uri, cfg.experiment_name())) == {runs[(2**20, s)]["run_id"] for s in range(4)}
    assert len(parent_artifact(uri, cfg.experiment_name(), "failed_runs.json")) == 4

    mark = len(trained(tmp_path))
    again = subprocess.run(argv, env=cli_env(tmp_path), capture_output=True, text=True, timeout=DEADLINE,
                           cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert sorted(trained(tmp_path)[mark:]) == sorted(runs[(2**22, s)]["run_id"] for s in range(4))
    check_once(cfg, ids, out, uri)


def parent_artifact(uri: str, experiment: str, name: str):
    """The JSON artifact ``name`` of the experiment's parent run that has one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    for run in client.search_runs([exp.experiment_id], "tags.kind = 'sweep'"):
        if name in [a.path for a in client.list_artifacts(run.info.run_id)]:
            return json.loads(Path(client.download_artifacts(run.info.run_id, name)).read_text())
    raise AssertionError(f"no parent run of {experiment} has {name}")
