"""The sweep driver: plan, fan out over Ray, collect into Parquet and MLflow, resume.

Everything that can be checked is checked before Ray starts or anything is written.
Finished tasks are written as they arrive (Parquet first, then MLflow), so a failure
at any point loses nothing that was finished, and a rerun skips it.
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

from .config import SweepConfig
from .grid import TaskSpec, plan
from .lock import OutputLock
from .logqueue import open_tracker
from .pool import TaskPool
from .results import ResultsError, archive, check_manifest, done_run_ids, prepare, quarantine_corrupt, write_task
from .stop import DEFAULT_GRACE_S, GracefulStop
from .tracking import Tracker, TrackingError, check_reachable, resolve_uri, sync


@dataclass
class SweepReport:
    grid_runs: int
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
        if self.tracking_uri:
            ui = (f"mlflow ui --backend-store-uri {self.tracking_uri}" if not self.tracking_uri.startswith("http")
                  else f"open {self.tracking_uri}")
            out.append(f"MLflow: {ui}" + (f" ({self.synced} runs synced from Parquet)" if self.synced else ""))
        if self.mlflow_error:
            out.append(f"MLflow INCOMPLETE: logging to {self.tracking_uri} failed ({self.mlflow_error}) and stopped; "
                       f"every finished run is in Parquet. When the server answers again, fill MLflow with: "
                       f"python -m pipeline sync {self.config_path or 'CONFIG'} --out {self.out} "
                       f"--tracking-uri {self.tracking_uri}")
        out += ([f"set aside: {n}" for n in self.notes] if self.notes else
                [f"set aside: {p} (unreadable, or the rest of a task with an unreadable or missing file); "
                 f"its runs are recomputed" for p in self.quarantined])
        out += [f"failed task: {e}" for e in self.errors]
        if self.stopped:
            uri = f" --tracking-uri {self.tracking_uri}" if self.tracking_uri else " --no-mlflow"
            out.append(f"STOPPED by {self.stopped}: every finished run is written; {self.cut_off} runs in flight were "
                       f"cut off. Resume with: python -m pipeline run {self.config_path or 'CONFIG'} --out {self.out}"
                       f"{uri}")
        return out


class SetupError(ValueError):
    """A problem found before any work (exit code 2)."""


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
        check_manifest(out, cfg.fingerprint())
        if tracking_uri:
            check_reachable(tracking_uri)
    except (ResultsError, TrackingError) as exc:
        raise SetupError(str(exc)) from None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else start
    an embedded local Ray."""
    import ray

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


def run_sweep(cfg: SweepConfig, *, out: str | Path | None = None, tracking_uri: str | None = None,
              mlflow: bool = True, wait: float | None = None, **kwargs) -> SweepReport:
    """:func:`_run_sweep` holding ``out`` (pipeline/lock.py): one writer per output; ``wait``
    seconds to queue behind another holder, else refuse at once (``LockHeld``)."""
    t0 = time.perf_counter()
    out = Path(out) if out else cfg.output_dir()
    uri = start_tracking(cfg, tracking_uri, mlflow)
    preflight(cfg, out, uri)  # before the lock, which writes
    with OutputLock(out, "run", wait=wait):
        return _run_sweep(cfg, out, uri, t0, **kwargs)


def _run_sweep(cfg: SweepConfig, out: Path, uri: str | None, t0: float, *, force: bool = False,
               address: str | None = None, num_cpus: int | None = None, progress: bool = True,
               max_in_flight: int | None = None, grace_s: float = DEFAULT_GRACE_S) -> SweepReport:
    prepare(out, cfg.fingerprint(), cfg.name)
    report = SweepReport(grid_runs=0, out=out, tracking_uri=uri)
    report.quarantined = set_aside_corrupt(out, report)
    if force:
        archive(out)
    done = done_run_ids(out)
    tasks, report.grid_runs = plan(cfg, skip=done)
    report.tasks = len(tasks)
    report.skipped = report.grid_runs - sum(len(t.seeds) for t in tasks)
    commit = git_commit()
    tracker = None
    if uri:
        try:
            tracker = open_tracker(uri, cfg.experiment_name(), cfg.name, commit, out=out,
                                   params=dict(config=cfg.model_dump_json(), grid_runs=report.grid_runs,
                                               tasks=len(tasks)))
            if force:
                _delete_children(tracker)
            tracker.logged_run_ids()  # what is logged whole; children cut off mid-log are removed
        except Exception as exc:  # noqa: BLE001 - before any training: refuse, with the way out
            raise SetupError(f"tracking: cannot use MLflow at {uri} ({one_line(exc)}); fix or start the server, "
                             f"or pass --no-mlflow to write Parquet only and `python -m pipeline sync` later") from None
    try:
        if tasks:
            _fan_out(cfg, tasks, out, tracker, commit, report, address, num_cpus, progress, max_in_flight, grace_s)
        if tracker and report.mlflow_complete and not report.stopped:
            try:
                report.synced = sync(tracker, out)  # runs a crashed driver wrote to Parquet only
            except Exception as exc:  # noqa: BLE001 - Parquet is complete; MLflow is reported incomplete
                report.mlflow_error = one_line(exc)
    finally:
        close_tracker(tracker, report)
    report.wall_time = time.perf_counter() - t0
    log_invocation(out, "run", report, commit)
    return report


def log_invocation(out: Path, command: str, report: SweepReport, commit: str) -> None:
    """One line per invocation in ``<out>/sweep_log.jsonl``: what it did and how long it took."""
    line = dict(command=command, finished=time.strftime("%FT%T%z"), wall_time=round(report.wall_time, 3),
                train_time=round(report.train_time, 3), done=report.done, skipped=report.skipped,
                failed=report.failed, diverged=report.diverged, git_commit=commit)
    with open(out / "sweep_log.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def set_aside_corrupt(out: Path, report: SweepReport) -> list[Path]:
    """Move unreadable leftovers out of the tables (results.quarantine_corrupt), saying so at once
    on stderr and again in the closing summary."""
    def note(src: Path, dest: Path, why: str) -> None:
        report.notes.append(f"{src.parent.name}/{src.name} -> {dest}: {why}; its runs are recomputed")
        print(f"warning: set aside {src} -> {dest}: {why}; its runs are recomputed", file=sys.stderr)

    return quarantine_corrupt(out, on_move=note)


def close_tracker(tracker: Tracker | None, report: SweepReport) -> None:
    if tracker:
        try:
            tracker.close("KILLED" if report.stopped else
                          "FINISHED" if not report.failed and report.mlflow_complete else "FAILED")
        except Exception as exc:  # noqa: BLE001 - the server may be gone; Parquet is complete
            report.mlflow_error = report.mlflow_error or one_line(exc)
        # a LoggingThread (pipeline/logqueue.py) reports its failures here, and its time in MLflow
        report.mlflow_error = report.mlflow_error or getattr(tracker, "error", None)
        report.mlflow_time = getattr(tracker, "busy_s", report.mlflow_time)


def _delete_children(tracker: Tracker) -> None:
    page = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.kind = 'run'", max_results=50000)
    for r in page:
        tracker.client.delete_run(r.info.run_id)


def start_tracking(cfg: SweepConfig, tracking_uri: str | None, mlflow: bool) -> str | None:
    """The tracking URI to use, or None for Parquet only."""
    return resolve_uri(tracking_uri, cfg.tracking.uri) if mlflow and cfg.tracking.enabled else None


def finish_task(out: Path, tracker: Tracker | None, task: TaskSpec, result: dict, report: SweepReport) -> None:
    """Keep a finished task: Parquet first (what resume trusts), then MLflow. If MLflow fails,
    the sweep goes on into Parquet only and the report says MLflow is incomplete (``sync`` fills it)."""
    t0 = time.perf_counter()
    write_task(out, task.task_id, result["runs"], result["curves"])
    t1 = time.perf_counter()
    report.parquet_time += t1 - t0
    if tracker and report.mlflow_complete:
        try:
            tracker.log(result["runs"], result["curves"])
            report.mlflow_time += time.perf_counter() - t1
        except Exception as exc:  # noqa: BLE001 - never lose the sweep to the tracking server
            report.mlflow_error = one_line(exc)
            print(f"warning: MLflow logging failed ({report.mlflow_error}); going on with Parquet only",
                  file=sys.stderr)
    report.done += len(result["runs"])
    report.diverged += sum(r["status"] == "diverged" for r in result["runs"])
    report.spans.append(result["span"])


def _fan_out(cfg, tasks, out, tracker, commit, report, address, num_cpus, progress, max_in_flight,
             grace_s=DEFAULT_GRACE_S) -> None:
    from tqdm import tqdm

    init_ray(address, num_cpus)
    pool = TaskPool(cfg.resources, commit, max_in_flight)
    pending = list(reversed(tasks))
    bar = tqdm(total=sum(len(t.seeds) for t in tasks), unit="run", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc=cfg.name, mininterval=0.5 if sys.stderr.isatty() else 15.0)
    with GracefulStop(grace_s) as stop:  # after init_ray, which installs its own SIGTERM handler
        try:
            while (pending and not stop) or len(pool):
                while pending and not pool.full and not stop:
                    pool.submit(pending.pop())
                item = pool.next(timeout=stop.remaining() if stop else 1.0)  # timeouts: to see a signal soon
                if item is None:
                    if stop and not stop.remaining():
                        report.stopped, report.exit_code = stop.name, stop.exit_code
                        report.cut_off = pool.cancel()
                        break
                    continue
                task, _, result, error = item
                if error is not None:
                    report.failed += len(task.seeds)
                    report.errors.append(f"{task.task_id}: {type(error).__name__}: "
                                         f"{str(error).strip().splitlines()[-1]}")
                else:
                    finish_task(out, tracker, task, result, report)
                bar.update(len(task.seeds))
            if stop and not report.stopped:
                report.stopped, report.exit_code = stop.name, stop.exit_code
        finally:
            bar.close()
