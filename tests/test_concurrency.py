"""Concurrency and stops on real components: the output lock (pipeline/lock.py), MLflow
de-duplication and stale parents (pipeline/logqueue.py), a graceful SIGTERM (pipeline/stop.py),
and a tracking server that hangs (a real `mlflow server`, SIGSTOPped: the kernel still accepts
connections, nobody answers). Every sweep ends with each run exactly once in Parquet and MLflow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pipeline_helpers import free_port, log_from_two_drivers, mlflow_children
from test_reliability import DEADLINE, check_once, cli_env, kill_group, run_argv, start_mlflow_server, sweep, trained

from pipeline.lock import LOCK_NAME, LockHeld, OutputLock
from pipeline.logqueue import CLOCK_SKEW_MS, Guard, degrade_after_s, open_tracker
from pipeline.task import execute
from pipeline.tracking import Tracker

HOLD = r"""
import select, sys, time
from pipeline.lock import OutputLock
lock = OutputLock(sys.argv[1], "holder").acquire()
print("held", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))  # until told to release (a line), or the time is over
print(time.time(), flush=True)  # just before the release
lock.release()
"""


def _holder(out: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_lock_refuses_names_holder_waits_and_takes_over_a_dead_holders_lock(tmp_path, capsys):
    out = tmp_path / "out"
    holder = _holder(out, 60)
    try:
        with pytest.raises(LockHeld) as exc:
            OutputLock(out).acquire()
        msg = str(exc.value)
        assert "\n" not in msg and f"pid {holder.pid} on host {os.uname().nodename}" in msg and "since 20" in msg
        assert "--wait" in msg
        with pytest.raises(LockHeld, match="waited 0.3 s"):
            OutputLock(out, wait=0.3, poll_s=0.05).acquire()
    finally:
        holder.kill()  # SIGKILL: no release, the record stays; the kernel drops the flock
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    (out / "runs").mkdir()
    leftover = out / "runs" / ".t1.parquet.4242.tmp"  # what records.tables.atomic_write leaves when killed
    leftover.write_bytes(b"half")
    kept = out / "runs" / "t0.parquet"
    kept.write_bytes(b"x")
    capsys.readouterr()
    with OutputLock(out) as lock:
        err = capsys.readouterr().err
        assert f"taking over the lock of {out} from `holder` (pid {holder.pid}" in err
        assert "that process is gone" in err
        assert lock.removed == [leftover] and not leftover.exists() and kept.exists()
    assert (out / LOCK_NAME).read_text() == ""  # a clean release leaves no record

    holder = _holder(out, DEADLINE)  # a live holder, told to finish once the waiter waits: --wait starts when it does

    class ReleaseOnWait:  # the waiter's stream: the holder is let go once the waiter says it waits
        text = ""

        def write(self, text):
            if text.startswith("waiting for"):
                holder.stdin.write("release\n")
                holder.stdin.flush()
            self.text += text

        def flush(self):
            pass

    said = ReleaseOnWait()
    with OutputLock(out, wait=float("inf"), poll_s=0.05, stream=said):
        acquired = time.time()
    released = float(holder.stdout.readline())
    holder.wait()
    assert f"waiting for `holder` (pid {holder.pid}" in said.text and "taking over" not in said.text
    assert released < acquired  # taken once the holder let go, not before: ordered, on any load


def _results(cfg, n_tasks=2):
    from pipeline.grid import plan

    return [execute(t) for t in plan(cfg)[0][:n_tasks]]


@pytest.mark.slow  # two MLflow trackers logging real tasks, in threads
def test_two_trackers_same_experiment_each_run_once_and_stale_parents_marked_killed(tmp_path):
    """Two drivers with different outputs log the same runs into one SQLite experiment, one after
    the other and at once: each run_id ends with exactly one whole child. A parent left RUNNING by
    a dead driver is marked KILLED with a note and its cut-off child deleted; a live driver's
    parent and its in-progress child are left alone."""
    cfg, _, _ = sweep(tmp_path, "dedup", grid=dict(n=[4], m=[16], bias=[False]), seeds=dict(init=4))
    uri, exp = f"sqlite:///{tmp_path / 'mlflow.db'}", cfg.experiment_name()
    results = _results(cfg)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    old = Tracker(uri, exp, cfg.name, "old", params={})  # a driver that died mid-log
    old.parent()  # made (as when a driver logs its first child)
    old.client.log_batch(old.parent_id, tags=_tags({"driver.host": os.uname().nodename, "driver.pid": dead_pid,
                                                    "driver.out": str(tmp_path / "o0"), "driver.heartbeat": 0}))
    cut = old.client.create_run(old.experiment_id, tags={"kind": "run", "run_id": "cut",
                                                         "mlflow.parentRunId": old.parent_id}).info.run_id
    live = Tracker(uri, exp, cfg.name, "live", params={})  # another live driver (this process)
    live.parent()
    live.client.log_batch(live.parent_id, tags=_tags({"driver.host": os.uname().nodename, "driver.pid": os.getpid(),
                                                      "driver.out": str(tmp_path / "o9"),
                                                      "driver.heartbeat": int(time.time())}))
    busy = live.client.create_run(live.experiment_id, tags={"kind": "run", "run_id": "busy",
                                                            "mlflow.parentRunId": live.parent_id}).info.run_id

    a = open_tracker(uri, exp, cfg.name, "a", params={}, out=tmp_path / "o1")
    a.logged_run_ids()
    status = {r: a.client.get_run(r).info for r in (old.parent_id, live.parent_id)}
    assert status[old.parent_id].status == "KILLED" and status[live.parent_id].status == "RUNNING"
    note = a.client.get_run(old.parent_id).data.tags["note"]
    assert f"pid {dead_pid} on {os.uname().nodename}) is gone" in note
    assert a.client.get_run(busy).info.lifecycle_stage == "active"
    assert a.client.get_run(cut).info.lifecycle_stage == "deleted"

    b = open_tracker(uri, exp, cfg.name, "b", params={}, out=tmp_path / "o2")
    b.logged_run_ids()
    log_from_two_drivers(a, b, results)
    children = {k: v for k, v in mlflow_children(uri, exp).items() if k != "busy"}  # asserts each run_id once
    assert set(children) == {r["run_id"] for res in results for r in res["runs"]}
    assert all(c.info.status == "FINISHED" for c in children.values())


def test_refresh_sees_again_a_child_it_saw_logged_but_not_yet_terminated(tmp_path):
    """A child's ``logged_at`` is in its metrics batch and it is whole only once terminated (the next
    call): a refresh that sees it still RUNNING must find it again after the termination, even when it
    was logged longer ago than the clock-skew margin; one older than any call can take (its driver
    is gone) does not hold refreshes back."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = Tracker(uri, "refresh", "s", "other", params={})
    other.parent()
    now = int(time.time() * 1000)

    def child(run_id, logged_at):
        c = other.client.create_run(other.experiment_id, tags={"kind": "run", "run_id": run_id,
                                                               "mlflow.parentRunId": other.parent_id})
        other.client.log_metric(c.info.run_id, "logged_at", float(logged_at), timestamp=logged_at)
        return c.info.run_id

    late = child("late", now - 2 * CLOCK_SKEW_MS)  # between the batch and its termination
    child("cut", now - 1000 * degrade_after_s() - 2 * CLOCK_SKEW_MS)  # never terminated: cut off
    guard = Guard(Tracker(uri, "refresh", "s", "mine", params={}), None)
    guard.since = 0
    guard.refresh()
    assert "late" not in guard.others and "cut" not in guard.others
    assert guard.since == now - 2 * CLOCK_SKEW_MS  # held back to the late child, not to the cut one
    other.client.set_terminated(late, "FINISHED")
    guard.refresh()
    assert set(guard.others) == {"late"}
    assert guard.since > now - CLOCK_SKEW_MS  # nothing holds it back any more


def _tags(d):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in d.items()]


def _wait_for(cond, what: str, proc: subprocess.Popen | None = None, log: Path | None = None, timeout=DEADLINE):
    deadline = time.time() + timeout
    while not cond():
        assert proc is None or proc.poll() is None, f"ended before {what}: " + (log.read_text()[-3000:] if log else "")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # three CLI drivers on a local Ray
def test_second_driver_on_the_same_output_is_refused_or_waits(tmp_path):
    """Driver A runs; B on the same output exits 2 at once naming A; C with --wait starts when A
    ends and finds everything done. Each run trained once, once in Parquet and MLflow."""
    cfg, cfg_path, ids = sweep(tmp_path, "overlap", grid=dict(n=[4]))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = cli_env(tmp_path, SOBOLEV_TASK_DELAY=1)
    with open(tmp_path / "a.log", "w") as log:
        a = subprocess.Popen(run_argv(cfg_path, out, uri), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        _wait_for(lambda: (out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text(), "A's lock", a,
                  tmp_path / "a.log")
        b = subprocess.run(run_argv(cfg_path, out, uri), env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        assert b.returncode == 2, b.stderr[-2000:]
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by `run` (pid {a.pid} on host" in lines[0], lines
        c = subprocess.run(run_argv(cfg_path, out, uri) + ["--wait"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=DEADLINE)
        a.wait(timeout=DEADLINE)
    finally:
        kill_group(a)
    assert a.returncode == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert c.returncode == 0, c.stderr[-3000:]
    assert f"waiting for `run` (pid {a.pid}" in c.stderr
    assert f"0 done (0 diverged), {len(ids)} skipped" in c.stdout
    assert sorted(trained(tmp_path)) == sorted(ids)
    check_once(cfg, ids, out, uri)


def _parents(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")


@pytest.mark.slow  # a CLI driver stopped mid-sweep, then resumed
def test_sigterm_mid_sweep_stops_gracefully_then_resume_finishes(tmp_path):
    """SIGTERM to a driver mid-sweep: it submits nothing more, lands what finishes within the grace
    time, marks its MLflow parent KILLED, prints the resume command and exits 143. The printed
    command finishes the sweep: every run once, no parent left RUNNING."""
    cfg, cfg_path, ids = sweep(tmp_path, "sigterm", grid=dict(n=[4, 6]))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(run_argv(cfg_path, out, uri) + ["--grace", "30"],
                                  env=cli_env(tmp_path, SOBOLEV_TASK_DELAY=1.5), cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: any((out / "runs").glob("*.parquet")), "a first task", driver, tmp_path / "first.log")
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=60)
    finally:
        kill_group(driver)
    text = (tmp_path / "first.log").read_text()
    assert driver.returncode == 143, text[-3000:]
    assert "SIGTERM received: submitting no more tasks" in text
    at_stop = set(trained(tmp_path))
    from records.tables import done_run_ids

    landed = done_run_ids(out)
    assert landed == at_stop and 0 < len(landed) < len(ids), "not mid-sweep, or a finished task was not written"
    # what was in flight landed within the grace time: the driver did not wait it out and cut tasks off
    assert "0 runs in flight were cut off" in text, text[-3000:]
    resume = re.search(r"Resume with: (python -m pipeline run .*)$", text, re.M)
    assert resume, text[-3000:]
    assert [p.info.status for p in _parents(uri, cfg.experiment_name())] == ["KILLED"]
    argv = [sys.executable if a == "python" else a for a in resume.group(1).split()] + ["--num-cpus", "2"]
    again = subprocess.run(argv, env=cli_env(tmp_path), capture_output=True, text=True, timeout=DEADLINE,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(landed)} skipped" in again.stdout
    assert sorted(trained(tmp_path)) == sorted(ids)  # nothing trained twice
    check_once(cfg, ids, out, uri)
    assert sorted(p.info.status for p in _parents(uri, cfg.experiment_name())) == ["FINISHED", "KILLED"]


@pytest.mark.slow  # a real mlflow server, stopped mid-sweep; sync
def test_hanging_tracking_server_degrades_in_bounded_time_then_sync_fills(tmp_path):
    """The MLflow server is SIGSTOPped mid-sweep (connections accepted, never answered): with the
    environment's HTTP settings (logqueue.degrade_after_s) the driver warns and finishes into Parquet
    (exit 3) while the server stays stopped; with the server resumed, `sync` fills MLflow. How long
    a call waits against that bound is a timing figure: benchmarks/bench_degrade.py prints it."""
    cfg, cfg_path, ids = sweep(tmp_path, "hang", grid=dict(n=[4]))
    out, port = tmp_path / "out", free_port()
    uri = f"http://127.0.0.1:{port}"
    http = dict(MLFLOW_HTTP_REQUEST_TIMEOUT=2, MLFLOW_HTTP_REQUEST_MAX_RETRIES=1,
                MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=0, MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=0.1)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in http.items():
            mp.setenv(k, str(v))
        bound = degrade_after_s()
    assert bound == pytest.approx(2 * 2 + 0.1)
    server = start_mlflow_server(port, tmp_path / "server.db", tmp_path / "artifacts")
    log_path = tmp_path / "run.log"
    try:
        with open(log_path, "w") as log:
            env = cli_env(tmp_path, SOBOLEV_TASK_DELAY=1.5, **http)
            driver = subprocess.Popen(run_argv(cfg_path, out, uri), env=env, cwd=tmp_path, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: any((out / "runs").glob("*.parquet")), "a first task", driver, log_path)
            os.killpg(server.pid, signal.SIGSTOP)
            # bounded: DEADLINE (240 s) is far below what one call waits under MLflow's own limits (about 20 min)
            _wait_for(lambda: "warning: MLflow logging failed" in log_path.read_text(), "the warning", driver, log_path)
            driver.wait(timeout=DEADLINE)  # the server is still stopped: every call it had in flight gave up
        finally:
            kill_group(driver) if driver.poll() is None else None
        text = log_path.read_text()
        assert driver.returncode == 3, text[-3000:]
        assert "MLflow INCOMPLETE" in text
        check_once(cfg, ids, out, None)
        os.killpg(server.pid, signal.SIGCONT)
        synced = subprocess.run([sys.executable, "-m", "pipeline", "sync", cfg_path, "--out", str(out),
                                 "--tracking-uri", uri], env=cli_env(tmp_path), capture_output=True, text=True,
                                timeout=DEADLINE, cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr[-3000:]
        check_once(cfg, ids, out, uri)
        parents = _parents(uri, cfg.experiment_name())
        assert all(p.info.status != "RUNNING" for p in parents), [(p.info.run_name, p.info.status, p.data.tags)
                                                                   for p in parents]
    finally:
        try:
            os.killpg(server.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        kill_group(server)


@pytest.mark.slow  # the GPU check script: benchmarks and a CLI sweep
def test_gpu_check_script_runs_its_steps_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh with GPU_CHECK_DEVICE=cpu: the benchmarks (arguments parsed only), a tiny
    sweep through the CLI with replicas auto, the memory model, and the study's four kinds of task
    (small shapes) with an eigvalsh and an eigh, in its one table."""
    _, cfg_path, ids = sweep(tmp_path, "gpucheck", grid=dict(n=[4], m=[16], bias=[False]), seeds=dict(init=2))
    root = Path(__file__).resolve().parents[1]
    env = cli_env(tmp_path, GPU_CHECK_DEVICE="cpu", GPU_CHECK_QUICK=1, GPU_CHECK_CONFIG=cfg_path,
                  GPU_CHECK_LOGS=tmp_path / "logs", PYTHON=sys.executable, PYTHONPATH=root)
    p = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("| ") and "| cpu |" in ln]
    names = [r.split("|")[1].strip() for r in rows]
    assert names[:2] == ["bench_step", "bench_loop"], p.stdout
    assert any(n.startswith(f"sweep gpucheck: {len(ids)} runs") for n in names), p.stdout
    assert sum(n.startswith("memory ") for n in names) == 3, p.stdout
    kinds = [n.split(":")[0] for n in names if n.startswith("study ")]
    assert kinds == ["study L2 k=0", "study Sobolev k=4", "study bias k=4", "study frozen control k=4",
                     "study eigvalsh N=64 float64", "study eigh N=64 float64"], p.stdout
    assert all("| ok" in r or "model " in r for r in rows), p.stdout


STUCK = r"""
import os, sys
from pipeline.stop import GracefulStop
with GracefulStop(0.2, hard_exit_after_s=1.0) as stop:
    r, w = os.pipe()
    print("ready", flush=True)
    os.read(r, 1)  # a main thread blocked for good (as in ray.wait once Ray's processes are gone)
"""


def test_stop_exits_by_itself_when_the_main_thread_is_stuck():
    """SIGTERM to a process whose main thread never returns to the submit loop: the watchdog exits
    143 once the grace time and the hard-exit margin are over, saying how to resume."""
    p = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    assert time.monotonic() - t0 >= 1.0  # not before the grace time and the margin were over
    assert "SIGTERM received" in err and "did not stop within 1.2 s" in err and "run the same command again" in err


OPEN = r"""
import json, sys, time
import mlflow.tracking, pipeline.tracking  # imported before the start: what follows is the store's opening
from pipeline.logqueue import open_tracker
print("ready", flush=True)
sys.stdin.readline()  # both processes are let go at once
entered = time.time()
t = open_tracker(sys.argv[1], "race", "race", "c", params={}, out=None)
opened = time.time()
t.tracker.parent()  # made, as by the first child logged
t.close()
print("opened", t.error)
print(json.dumps(dict(entered=entered, opened=opened)))
"""


@pytest.mark.slow  # two processes importing MLflow and creating its store
def test_two_drivers_creating_one_new_sqlite_store_at_once_both_succeed(tmp_path):
    """Two processes open the same new SQLite MLflow store at the same instant (the race that made
    the second driver fail in SQLite's schema creation): creation is serialised, both succeed. They
    really race: each starts opening before the other has its store open (else the test fails)."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:  # both have imported MLflow, however long that took
        assert p.stdout.readline().strip() == "ready", p.communicate(timeout=60)[1][-2000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "opened None" in out, err[-2000:]
    spans = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert max(s["entered"] for s in spans) < min(s["opened"] for s in spans), f"did not race: {spans}"
    assert len(_parents(uri, "race")) == 2


def test_resolve_waits_for_another_drivers_child_logged_but_not_yet_whole(tmp_path):
    """Two drivers log one run at once; the other's child was logged first but is terminated only
    after this driver's check began (its driver looked before ours was whole, so only this check
    can see both): the check waits for it, then deletes our own later child."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    other = Tracker(uri, "wait", "s", "other", params={})
    other.parent()
    now = int(time.time() * 1000)
    theirs = other.client.create_run(other.experiment_id, tags={"kind": "run", "run_id": "r1",
                                                                "mlflow.parentRunId": other.parent_id}).info.run_id
    other.client.log_metric(theirs, "logged_at", float(now - 100), timestamp=now - 100)
    me = Tracker(uri, "wait", "s", "mine", params={})
    me.parent()
    ours = me.client.create_run(me.experiment_id, tags={"kind": "run", "run_id": "r1",
                                                         "mlflow.parentRunId": me.parent_id}).info.run_id
    me.client.log_metric(ours, "logged_at", float(now), timestamp=now)
    me.client.set_terminated(ours)
    guard = Guard(me, None)
    later = threading.Timer(1.0, other.client.set_terminated, args=(theirs,))
    later.start()
    t0 = time.monotonic()
    assert guard.resolve(["r1"]) == 1
    later.join()
    assert time.monotonic() - t0 >= 0.9
    assert me.client.get_run(ours).info.lifecycle_stage == "deleted"
    assert me.client.get_run(theirs).info.lifecycle_stage == "active"
