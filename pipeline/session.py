"""One invocation of the pipeline (``run`` or ``search``): everything around the training.

:class:`SweepSession` does, once for both commands: the checks before any work (output
directory, its sweep, the tracking server), the layout and manifest, setting unreadable
leftovers aside (said on stderr at once and in the summary), the MLflow parent run, the task
pool on Ray (started only when a task is submitted), keeping each finished task (Parquet
first, then MLflow), retrying a task out of memory or time at half the replicas and recording
the runs it still cannot train as failed, stopping on a full disk, the final sync of MLflow from
Parquet, closing the tracker, and the invocation log. ``run_sweep`` and ``run_search`` only
decide what to train (their plan is made before the session opens).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from records.tables import (archive, check_manifest, done_run_ids, prepare, quarantine_corrupt, recover_compaction,
                            supersede_failed, write_failed, write_task)

from .config import SweepConfig
from .destinations import check_job_destinations, check_output_dir, job_working_dir, uri_path
from .errors import DISK_FULL_EXIT, DiskFull, ResultsError, SetupError, TrackingError, is_disk_full, one_line
from .estimate import DEFAULT, calibration
from .faults import task_fault, time_limit_s
from .grid import TaskSpec
from .lock import OutputLock
from .logqueue import open_tracker
from .options import RunOptions
from .pool import TaskPool
from .stop import GracefulStop
from .tracking import check_reachable, runs_link, sync

__all__ = ["SetupError", "SweepReport", "SweepSession", "init_ray", "preflight", "resume_command"]


@dataclass
class SweepReport:
    grid_runs: int = 0
    tasks: int = 0
    done: int = 0
    skipped: int = 0
    diverged: int = 0
    failed: int = 0
    synced: int = 0
    wall_time: float = 0.0
    spans: list[tuple[float, float]] = field(default_factory=list)
    started: float = field(default_factory=time.time)  # epoch seconds, comparable with the task spans
    parquet_time: float = 0.0
    mlflow_time: float = 0.0
    out: Path = Path(".")
    tracking_uri: str | None = None
    experiment_id: str | None = None  # for the direct link to the runs table
    mlflow_skipped: int = 0  # trained runs whose MLflow child already existed (another --out, same experiment)
    quarantined: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was set aside, and why
    errors: list[str] = field(default_factory=list)
    mlflow_error: str | None = None  # set when MLflow logging stopped; Parquet is still complete
    config_path: str | None = None  # for the `sync` command the summary suggests
    stopped: str | None = None  # "SIGTERM"/"SIGINT" when a signal stopped the sweep (pipeline/stop.py)
    exit_code: int = 0  # 128 + the signal number when stopped; DISK_FULL_EXIT on a full disk
    cut_off: int = 0  # runs in flight when the grace time ended
    command: str = "run"  # for the resume command the summary gives
    retried: int = 0  # tasks retried at half the replicas (out of memory or time)
    retries: list[str] = field(default_factory=list)  # which, and why
    disk_full: DiskFull | None = None  # set when a write ran out of space: the sweep stopped

    @property
    def mlflow_complete(self) -> bool:
        return self.mlflow_error is None

    @property
    def train_time(self) -> float:
        """Wall time during which at least one task was training (the union of task spans)."""
        total, end = 0.0, -math.inf
        for a, b in sorted(self.spans):
            total += max(0.0, b - max(a, end))
            end = max(end, b)
        return total

    def lines(self) -> list[str]:
        share = 1 - self.train_time / self.wall_time if self.wall_time else 0.0
        out = [f"sweep finished in {self.wall_time:.1f} s: {self.done} done ({self.diverged} diverged), "
               f"{self.skipped} skipped (already in Parquet), {self.failed} failed, of {self.grid_runs} runs",
               f"training {self.train_time:.1f} s of the wall time (some task training); everything else "
               f"(Ray, MLflow, Parquet, start-up) {100 * share:.0f}%",
               f"results: {self.out / 'runs'} and {self.out / 'curves'} (Parquet)"]
        if not (self.done or self.failed or self.synced or self.tasks) and self.grid_runs:
            out.insert(0, f"nothing to do: all {self.grid_runs} runs are already in Parquet"
                          + (" and MLflow (no MLflow run added)" if self.tracking_uri else ""))
        if self.mlflow_skipped:
            out.append(f"MLflow: {self.mlflow_skipped} runs trained here were already logged in experiment "
                       f"{self.experiment_id} (by a sweep with another --out?); not logged again")
        if self.tracking_uri and self.experiment_id:
            out.append(f"MLflow runs: {runs_link(self.tracking_uri, self.experiment_id)}"
                       + (f" ({self.synced} runs synced from Parquet)" if self.synced else ""))
        if self.mlflow_error and not self.disk_full:  # after a full disk, the resume command fills MLflow
            out.append(f"MLflow INCOMPLETE: logging to {self.tracking_uri} failed ({self.mlflow_error}) and stopped; "
                       f"every finished run is in Parquet. When the server answers again, fill MLflow with: "
                       f"python -m pipeline sync {self.config_path or 'CONFIG'} --out {self.out} "
                       f"--tracking-uri {self.tracking_uri}")
        out += [f"set aside: {n}" for n in self.notes]
        out += [f"retried task: {r}" for r in self.retries]
        out += [f"failed task: {e}" for e in self.errors]
        if self.failed:
            out.append(f"{self.failed} runs recorded as failed (status 'failed', failure_reason, in {self.out / 'runs'})"
                       f"; the same command trains them again: {self.resume_command()}")
        if self.stopped:
            out.append(f"STOPPED by {self.stopped}: every finished run is written; {self.cut_off} runs in flight were "
                       f"cut off. Resume with: {self.resume_command()}")
        if self.disk_full:
            out.append(f"DISK FULL: {self.disk_full.with_resume(self.resume_command()).detail}")
        return out

    def resume_command(self) -> str:
        return resume_command(self.command, self.config_path, self.out, self.tracking_uri)


def resume_command(command: str, config_path: str | None, out: Path, tracking_uri: str | None) -> str:
    """The command that resumes an invocation: the same sweep, output and tracking store."""
    uri = f" --tracking-uri {tracking_uri}" if tracking_uri else " --no-mlflow"
    return f"python -m pipeline {command} {config_path or 'CONFIG'} --out {out}{uri}"


def git_commit() -> str:
    env = os.environ.get("SOBOLEV_GIT_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def preflight(cfg: SweepConfig, out: Path, tracking_uri: str | None) -> None:
    """Every check that needs no work: output directory (and, under a Ray job, not inside its
    temporary working directory), its sweep, the tracking server."""
    check_output_dir(out)
    check_job_destinations(out, tracking_uri, job_working_dir())
    try:
        check_manifest(out, cfg.fingerprint(), cfg.name)
        if tracking_uri:
            check_reachable(tracking_uri)
    except (ResultsError, TrackingError) as exc:
        raise SetupError(str(exc)) from None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else start
    an embedded local Ray."""
    import ray  # Ray takes seconds to import: only a sweep that trains needs it

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # "local", not None: ray.init(None) joins the cluster named in <tmp>/ray/ray_current_cluster,
        # which a `ray start` cluster that died without `ray stop` leaves behind (a hang, or with
        # num_cpus a crash)
        ray.init(address="local", log_to_driver=True, include_dashboard=False, num_cpus=num_cpus or None)


class SweepSession:
    """The frame of one invocation; use as a context manager::

        plan = plan_sweep(cfg)                       # what to train: the config alone
        with SweepSession(cfg, "run", RunOptions(out=out)) as session:
            tasks = plan.tasks(skip=session.done_run_ids())
            session.open_tracker(tasks=len(tasks))
            session.submit(task); session.work(on_result)

    ``__enter__`` runs every check before any work (:class:`SetupError` on failure) and
    prepares the output; ``__exit__`` syncs MLflow from Parquet (on success), closes the
    tracker and appends the invocation to ``<out>/sweep_log.jsonl``. A full disk, at any
    point, stops the session (:class:`DiskFull` before any work; later ``report.disk_full``).
    """

    def __init__(self, cfg: SweepConfig, command: str, options: RunOptions | None = None):
        self.cfg, self.command = cfg, command
        self.options = options = options or RunOptions()
        self.out = options.output(cfg)
        self.uri = options.tracking(cfg)
        self.report = SweepReport(out=self.out, tracking_uri=self.uri, command=command)
        self.commit = git_commit()
        self.tracker = None  # a logqueue.LoggingThread around a tracking.Tracker
        self._pool = None
        self._lock: OutputLock | None = None
        self._queued: list[tuple[TaskSpec, object]] = []
        self._retries: set[str] = set()  # task ids of the halves of a task retried once already
        self._failed: list[dict] = []  # the runs recorded as failed: run_id, task_id, seed, reason
        self._cal: dict | None = None  # this machine's step costs, for the tasks' time limits
        self._full_at: float | None = None  # time.monotonic() when the disk was found full
        self.retrying: list[str] = []  # run ids an earlier invocation recorded as failed
        self._t0 = time.perf_counter()

    def __enter__(self) -> "SweepSession":
        preflight(self.cfg, self.out, self.uri)  # before the lock, which writes
        # one writer per output; a full disk here is a DiskFull, as for every write into the output
        self._lock = self.write(OutputLock(self.out, self.command, wait=self.options.wait).acquire)
        try:
            self.write(self._prepare)
        except BaseException:
            self._lock.release()
            raise
        return self

    def _prepare(self) -> None:
        prepare(self.out, self.cfg.fingerprint(), self.cfg.name)
        recovered = recover_compaction(self.out)
        if recovered:
            self.report.notes.append(recovered)
            print(f"note: {recovered}", file=sys.stderr)
        self.report.quarantined = quarantine_corrupt(self.out, on_move=self._note_set_aside)
        self.retrying = supersede_failed(self.out)  # runs an earlier invocation could not train: again
        if self.options.force:
            archive(self.out)

    def done_run_ids(self) -> set[str]:
        """The runs already trained in the output (what a plan skips)."""
        return done_run_ids(self.out)

    def _note_set_aside(self, src: Path, dest: Path, why: str) -> None:
        self.report.notes.append(f"{src.parent.name}/{src.name} -> {dest}: {why}; its runs are recomputed")
        print(f"warning: set aside {src} -> {dest}: {why}; its runs are recomputed", file=sys.stderr)

    def open_tracker(self, **params) -> None:
        """The MLflow parent run of this invocation (``params`` logged on it), before any
        training: a tracking server that cannot be used is a :class:`SetupError` (a full disk
        under an SQLite store a :class:`DiskFull`)."""
        if self.retrying:
            print(f"note: {len(self.retrying)} runs recorded as failed by an earlier invocation are trained again",
                  file=sys.stderr)
        if not self.uri:
            return
        # MLflow logs every failed database call with its traceback (a full disk: 40 lines); the
        # pipeline states each failure in one line (warning, summary)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        try:
            self.tracker = open_tracker(self.uri, self.cfg.experiment_name(), self.cfg.name, self.commit, out=self.out,
                                        params=dict(config=self.cfg.model_dump_json(), kind=self.command, **params),
                                        settings=self.cfg.tracking)
            if self.options.force:
                self.tracker.delete_children()
            self.tracker.logged_run_ids()  # what is logged whole; children cut off mid-log are removed
            self.report.experiment_id = self.tracker.experiment_id
        except Exception as exc:  # noqa: BLE001 - before any training: refuse, with the way out
            if is_disk_full(exc) or is_disk_full(getattr(self.tracker, "failure", None)):
                raise DiskFull(uri_path(self.uri) or self.uri) from None
            raise SetupError(f"tracking: cannot use MLflow at {self.uri} ({one_line(exc)}); fix or start the server, "
                             f"or pass --no-mlflow to write Parquet only and `python -m pipeline sync` later") from None

    # -- the task pool ---------------------------------------------------------------------

    @property
    def pool(self):
        if self._pool is None:
            init_ray(self.options.address, self.options.num_cpus)
            self._pool = TaskPool(self.cfg.resources, self.commit, self.options.max_in_flight)
        return self._pool

    def submit(self, task: TaskSpec, tag=None) -> None:
        """Queue ``task``: :meth:`work` submits it when the pool has room (and never after a stop)."""
        self._queued.append((task, tag))

    def time_limit(self, task: TaskSpec) -> float:
        """The task's time limit in seconds (pipeline.faults)."""
        if self.options.task_timeout is None and self.cfg.resources.task_timeout_s is None and self._cal is None:
            self._cal = calibration(self.cfg, measure=False) or DEFAULT
        return time_limit_s(self.cfg, task, self.options.task_timeout, self._cal)

    def _halted(self, stop: GracefulStop) -> bool:
        self._check_tracker()
        return bool(stop) or self.report.disk_full is not None

    def _grace_left(self, stop: GracefulStop) -> float:
        left = [stop.remaining()] if stop else []
        if self._full_at is not None:
            left.append(max(0.0, self._full_at + self.options.grace_s - time.monotonic()))
        return min(left) if left else self.options.grace_s

    def _check_tracker(self) -> None:
        """A full disk under the SQLite store stops the sweep as a full output does."""
        if self.tracker is not None and self.report.disk_full is None and is_disk_full(self.tracker.failure):
            self.note_disk_full(DiskFull(uri_path(self.uri) or self.uri))

    def note_disk_full(self, err: DiskFull) -> None:
        """Stop submitting: nothing more can be written (the summary says where, and how to resume)."""
        if self.report.disk_full is None:
            self.report.disk_full, self._full_at = err, time.monotonic()

    def work(self, on_result=None) -> None:
        """Run every queued task on Ray, keeping each as it lands (:meth:`keep`) or retrying it
        (out of memory or time: once, at half the replicas) or recording its runs as failed, then
        calling ``on_result(task, tag, result or None)``, which may queue more.

        SIGTERM/SIGINT (pipeline/stop.py) or a full disk: no more submissions; the tasks in flight
        get ``grace_s`` to land and are kept; then the rest is cancelled and the report says how
        to resume."""
        if not self._queued:
            return
        pool, report = self.pool, self.report  # Ray first: GracefulStop must replace Ray's SIGTERM handler
        with GracefulStop(self.options.grace_s) as stop:
            while (self._queued and not self._halted(stop)) or len(pool):
                while self._queued and not pool.full and not self._halted(stop):
                    task, tag = self._queued.pop(0)
                    pool.submit(task, tag, self.time_limit(task))
                halted = self._halted(stop)
                item = pool.next(timeout=self._grace_left(stop) if halted else 1.0)  # timeouts: to see a stop soon
                if item is None:
                    if halted and not self._grace_left(stop):
                        report.cut_off += pool.cancel()
                        break
                    continue
                task, tag, result, error = item
                if error is not None and self._retry(task, tag, error):
                    continue
                try:
                    if error is not None:
                        self._record_failed(task, error)
                        result = None
                    else:
                        self.keep(task, result)
                except DiskFull as full:  # this task's runs are not written: they are trained on resume
                    self.note_disk_full(full)
                    report.cut_off += len(task.seeds)
                    continue
                if on_result:
                    on_result(task, tag, result)
            if stop:
                report.stopped, report.exit_code = stop.name, stop.exit_code

    def _retry(self, task: TaskSpec, tag, error: BaseException) -> bool:
        """Queue ``task`` again at half the replicas if it ran out of memory or time for the first time."""
        fault = task_fault(error)
        if fault is None or task.task_id in self._retries or self.report.disk_full is not None:
            return False
        halves = task.halves()
        self._retries.update(h.task_id for h in halves)
        self._queued[:0] = [(h, tag) for h in halves]
        self.report.retried += 1
        self.report.retries.append(f"{task.task_id}: {fault} ({one_line(error)}); its {len(task.seeds)} runs "
                                   f"again as {len(halves)} task(s) of {len(halves[0].seeds)} replicas")
        print(f"warning: task {self.report.retries[-1]}", file=sys.stderr, flush=True)
        return True

    def _record_failed(self, task: TaskSpec, error: BaseException) -> None:
        """Write ``task``'s runs as failed, with the reason, to Parquet (the next invocation
        trains them again); MLflow gets the list when the session closes."""
        fault = task_fault(error)
        reason = f"{fault or 'task failed'}: {one_line(error)}"
        if task.task_id in self._retries:
            reason += f" (at {len(task.seeds)} replicas, after a retry at half the replicas)"
        self.write(write_failed, self.out, task.task_id, task.failed_records(reason, self.commit))
        self.report.failed += len(task.seeds)
        self.report.errors.append(f"{task.task_id}: {reason}")
        self._failed += [dict(run_id=rid, task_id=task.task_id, seed=int(seed), reason=reason)
                         for rid, seed in zip(task.run_ids, task.seeds)]

    def write(self, write, *args):
        """``write(*args)`` into the output; a full disk is a :class:`DiskFull` (the write left nothing half)."""
        try:
            return write(*args)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(self.out) from None
            raise

    def keep(self, task: TaskSpec, result: dict) -> None:
        """Keep a finished task: Parquet first (what resume trusts), then MLflow. If MLflow fails,
        the sweep goes on into Parquet only and the report says MLflow is incomplete (``sync`` fills it)."""
        report = self.report
        t0 = time.perf_counter()
        self.write(write_task, self.out, task.task_id, result["runs"], result["curves"])
        t1 = time.perf_counter()
        report.parquet_time += t1 - t0
        if self.tracker and report.mlflow_complete:
            try:
                self.tracker.log(result["runs"], result["curves"], result.get("span"))
                report.mlflow_time += time.perf_counter() - t1
            except Exception as exc:  # noqa: BLE001 - never lose the sweep to the tracking server
                report.mlflow_error = one_line(exc)
                print(f"warning: MLflow logging failed ({report.mlflow_error}); going on with Parquet only",
                      file=sys.stderr)
        report.done += len(result["runs"])
        report.diverged += sum(r["status"] == "diverged" for r in result["runs"])
        report.spans.append(result["span"])

    # -- closing ---------------------------------------------------------------------------

    def __exit__(self, exc_type, exc, tb) -> None:
        report = self.report
        self._check_tracker()
        whole = exc is None and report.disk_full is None
        if self.tracker and whole and report.mlflow_complete and not report.stopped:
            try:
                report.synced = sync(self.tracker, self.out)  # runs a crashed driver wrote to Parquet only
            except Exception as err:  # noqa: BLE001 - Parquet is complete; MLflow is reported incomplete
                report.mlflow_error = one_line(err)
        if self.tracker:
            try:
                if self._failed and whole:  # what could not be trained, on the invocation's parent run
                    self.tracker.add_artifact("failed_runs.json", json.dumps(self._failed, indent=1), create=True)
                report.mlflow_skipped = self.tracker.already_logged
                report.wall_time = time.perf_counter() - self._t0
                ok = exc is None and not report.failed and report.mlflow_complete and report.disk_full is None
                self.tracker.close("KILLED" if report.stopped else "FINISHED" if ok else "FAILED", report.lines())
            except Exception as err:  # noqa: BLE001 - the server may be gone; Parquet is complete
                report.mlflow_error = report.mlflow_error or one_line(err)
            # the logging thread reports its failures here, and its time in MLflow
            report.mlflow_error = report.mlflow_error or self.tracker.error
            report.mlflow_time = self.tracker.busy_s
            self._check_tracker()
        report.wall_time = time.perf_counter() - self._t0
        try:
            if exc is None:
                self.write(self.log_invocation)
        except DiskFull as full:
            self.note_disk_full(full)
        finally:
            self._lock.release()
        if report.disk_full is not None and not report.exit_code:
            report.exit_code = DISK_FULL_EXIT

    def log_invocation(self) -> None:
        """One line per invocation in ``<out>/sweep_log.jsonl``: what it did and how long it took."""
        r = self.report
        line = dict(command=self.command, finished=time.strftime("%FT%T%z"), wall_time=round(r.wall_time, 3),
                    train_time=round(r.train_time, 3), done=r.done, skipped=r.skipped, failed=r.failed,
                    diverged=r.diverged, retried=r.retried, git_commit=self.commit)
        with open(self.out / "sweep_log.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
