"""One invocation of the pipeline (``run`` or ``search``): everything around the training.

:class:`SweepSession` does, once for both commands: the checks before any work (output
directory, its sweep, the tracking server), the layout and manifest, setting unreadable
leftovers aside (said on stderr at once and in the summary), the MLflow parent run, the task
pool on Ray (started only when a task is submitted), keeping each finished task (Parquet
first, then MLflow) or recording its failure, the final sync of MLflow from Parquet, closing
the tracker, and the invocation log. ``run_sweep`` and ``run_search`` only decide what to train.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from records.tables import (ResultsError, archive, check_manifest, prepare, quarantine_corrupt, recover_compaction,
                            write_task)

from .config import SweepConfig
from .errors import one_line
from .grid import TaskSpec
from .lock import OutputLock
from .logqueue import open_tracker
from .pool import TaskPool
from .stop import DEFAULT_GRACE_S, GracefulStop
from .tracking import TrackingError, check_reachable, resolve_uri, runs_link, sync


class SetupError(ValueError):
    """A problem found before any work (exit code 2)."""


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
    exit_code: int = 0  # 128 + the signal number when stopped
    cut_off: int = 0  # runs in flight when the grace time ended

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
        if self.mlflow_error:
            out.append(f"MLflow INCOMPLETE: logging to {self.tracking_uri} failed ({self.mlflow_error}) and stopped; "
                       f"every finished run is in Parquet. When the server answers again, fill MLflow with: "
                       f"python -m pipeline sync {self.config_path or 'CONFIG'} --out {self.out} "
                       f"--tracking-uri {self.tracking_uri}")
        out += [f"set aside: {n}" for n in self.notes]
        out += [f"failed task: {e}" for e in self.errors]
        if self.stopped:
            uri = f" --tracking-uri {self.tracking_uri}" if self.tracking_uri else " --no-mlflow"
            out.append(f"STOPPED by {self.stopped}: every finished run is written; {self.cut_off} runs in flight were "
                       f"cut off. Resume with: python -m pipeline run {self.config_path or 'CONFIG'} --out {self.out}"
                       f"{uri}")
        return out


def git_commit() -> str:
    env = os.environ.get("SOBOLEV_GIT_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_output_dir(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise SetupError(f"output: cannot write to {out} ({probe} is not a writable directory); choose another --out")


def preflight(cfg: SweepConfig, out: Path, tracking_uri: str | None) -> None:
    """Every check that needs no work: output directory, its sweep, the tracking server."""
    check_output_dir(out)
    try:
        check_manifest(out, cfg.fingerprint(), cfg.name)
        if tracking_uri:
            check_reachable(tracking_uri)
    except (ResultsError, TrackingError) as exc:
        raise SetupError(str(exc)) from None


def tracking_uri_of(cfg: SweepConfig, tracking_uri: str | None, mlflow: bool) -> str | None:
    """The tracking URI to use, or None for Parquet only."""
    return resolve_uri(tracking_uri, cfg.tracking.uri) if mlflow and cfg.tracking.enabled else None


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

        with SweepSession(cfg, "run", out=out) as session:
            session.open_tracker(tasks=...)
            session.submit(task); task, tag, result = session.next()

    ``__enter__`` runs every check before any work (:class:`SetupError` on failure) and
    prepares the output; ``__exit__`` syncs MLflow from Parquet (on success), closes the
    tracker and appends the invocation to ``<out>/sweep_log.jsonl``.
    """

    def __init__(self, cfg: SweepConfig, command: str, *, out: str | Path | None = None,
                 tracking_uri: str | None = None, mlflow: bool = True, force: bool = False,
                 address: str | None = None, num_cpus: int | None = None, max_in_flight: int | None = None,
                 wait: float | None = None, grace_s: float = DEFAULT_GRACE_S):
        self.cfg, self.command, self.force = cfg, command, force
        self.wait, self.grace_s = wait, grace_s
        self.out = Path(out) if out else cfg.output_dir()
        self.uri = tracking_uri_of(cfg, tracking_uri, mlflow)
        self._ray = (address, num_cpus, max_in_flight)
        self.report = SweepReport(out=self.out, tracking_uri=self.uri)
        self.commit = git_commit()
        self.tracker = None  # a logqueue.LoggingThread around a tracking.Tracker
        self._pool = None
        self._lock: OutputLock | None = None
        self._queued: list[tuple[TaskSpec, object]] = []
        self._t0 = time.perf_counter()

    def __enter__(self) -> "SweepSession":
        preflight(self.cfg, self.out, self.uri)  # before the lock, which writes
        self._lock = OutputLock(self.out, self.command, wait=self.wait).acquire()  # one writer per output
        try:
            self._prepare()
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
        if self.force:
            archive(self.out)

    def _note_set_aside(self, src: Path, dest: Path, why: str) -> None:
        self.report.notes.append(f"{src.parent.name}/{src.name} -> {dest}: {why}; its runs are recomputed")
        print(f"warning: set aside {src} -> {dest}: {why}; its runs are recomputed", file=sys.stderr)

    def open_tracker(self, **params) -> None:
        """The MLflow parent run of this invocation (``params`` logged on it), before any
        training: a tracking server that cannot be used is a :class:`SetupError`."""
        if not self.uri:
            return
        try:
            self.tracker = open_tracker(self.uri, self.cfg.experiment_name(), self.cfg.name, self.commit, out=self.out,
                                        params=dict(config=self.cfg.model_dump_json(), kind=self.command, **params),
                                        settings=self.cfg.tracking)
            if self.force:
                self.tracker.delete_children()
            self.tracker.logged_run_ids()  # what is logged whole; children cut off mid-log are removed
            self.report.experiment_id = self.tracker.experiment_id
        except Exception as exc:  # noqa: BLE001 - before any training: refuse, with the way out
            raise SetupError(f"tracking: cannot use MLflow at {self.uri} ({one_line(exc)}); fix or start the server, "
                             f"or pass --no-mlflow to write Parquet only and `python -m pipeline sync` later") from None

    # -- the task pool ---------------------------------------------------------------------

    @property
    def pool(self):
        if self._pool is None:
            address, num_cpus, window = self._ray
            init_ray(address, num_cpus)
            self._pool = TaskPool(self.cfg.resources, self.commit, window)
        return self._pool

    def submit(self, task: TaskSpec, tag=None) -> None:
        """Queue ``task``: :meth:`work` submits it when the pool has room (and never after a stop)."""
        self._queued.append((task, tag))

    def work(self, on_result=None) -> None:
        """Run every queued task on Ray, keeping each as it lands (:meth:`keep`) or recording its
        failure, then calling ``on_result(task, tag, result or None)``, which may queue more.

        SIGTERM/SIGINT (pipeline/stop.py): no more submissions; the tasks in flight get ``grace_s``
        to land and are kept; then the rest is cancelled and the report says how to resume."""
        if not self._queued:
            return
        pool, report = self.pool, self.report  # Ray first: GracefulStop must replace Ray's SIGTERM handler
        with GracefulStop(self.grace_s) as stop:
            while (self._queued and not stop) or len(pool):
                while self._queued and not pool.full and not stop:
                    pool.submit(*self._queued.pop(0))
                item = pool.next(timeout=stop.remaining() if stop else 1.0)  # timeouts: to see a signal soon
                if item is None:
                    if stop and not stop.remaining():
                        report.cut_off = pool.cancel()
                        break
                    continue
                task, tag, result, error = item
                if error is not None:
                    report.failed += len(task.seeds)
                    report.errors.append(f"{task.task_id}: {one_line(error)}")
                    result = None
                else:
                    self.keep(task, result)
                if on_result:
                    on_result(task, tag, result)
            if stop:
                report.stopped, report.exit_code = stop.name, stop.exit_code

    def keep(self, task: TaskSpec, result: dict) -> None:
        """Keep a finished task: Parquet first (what resume trusts), then MLflow. If MLflow fails,
        the sweep goes on into Parquet only and the report says MLflow is incomplete (``sync`` fills it)."""
        report = self.report
        t0 = time.perf_counter()
        write_task(self.out, task.task_id, result["runs"], result["curves"])
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
        if self.tracker and exc is None and report.mlflow_complete and not report.stopped:
            try:
                report.synced = sync(self.tracker, self.out)  # runs a crashed driver wrote to Parquet only
            except Exception as err:  # noqa: BLE001 - Parquet is complete; MLflow is reported incomplete
                report.mlflow_error = one_line(err)
        if self.tracker:
            try:
                report.mlflow_skipped = self.tracker.already_logged
                report.wall_time = time.perf_counter() - self._t0
                self.tracker.close("KILLED" if report.stopped else "FINISHED" if exc is None and not report.failed
                                   and report.mlflow_complete else "FAILED", report.lines())
            except Exception as err:  # noqa: BLE001 - the server may be gone; Parquet is complete
                report.mlflow_error = report.mlflow_error or one_line(err)
            # the logging thread reports its failures here, and its time in MLflow
            report.mlflow_error = report.mlflow_error or self.tracker.error
            report.mlflow_time = self.tracker.busy_s
        report.wall_time = time.perf_counter() - self._t0
        try:
            if exc is None:
                self.log_invocation()
        finally:
            self._lock.release()

    def log_invocation(self) -> None:
        """One line per invocation in ``<out>/sweep_log.jsonl``: what it did and how long it took."""
        r = self.report
        line = dict(command=self.command, finished=time.strftime("%FT%T%z"), wall_time=round(r.wall_time, 3),
                    train_time=round(r.train_time, 3), done=r.done, skipped=r.skipped, failed=r.failed,
                    diverged=r.diverged, git_commit=self.commit)
        with open(self.out / "sweep_log.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
