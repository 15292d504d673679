"""The sweep driver: plan, fan out over Ray, collect into Parquet and MLflow, resume.

Everything that can be checked is checked before Ray starts or anything is written.
Finished tasks are written as they arrive (Parquet first, then MLflow), so a failure
at any point loses nothing that was finished, and a rerun skips it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import SweepConfig
from .grid import TaskSpec, plan
from .pool import TaskPool
from .results import ResultsError, archive, check_manifest, done_run_ids, prepare, quarantine_corrupt, write_task
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
    out: Path = Path(".")
    tracking_uri: str | None = None
    quarantined: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

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
        out += [f"set aside unreadable file: {p}" for p in self.quarantined]
        out += [f"failed task: {e}" for e in self.errors]
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
    kwargs = dict(log_to_driver=True, include_dashboard=False) if not address else {}
    if not address and num_cpus:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)


def run_sweep(cfg: SweepConfig, *, out: str | Path | None = None, tracking_uri: str | None = None,
              mlflow: bool = True, force: bool = False, address: str | None = None, num_cpus: int | None = None,
              progress: bool = True, max_in_flight: int | None = None) -> SweepReport:
    t0 = time.perf_counter()
    out = Path(out) if out else cfg.output_dir()
    uri = start_tracking(cfg, tracking_uri, mlflow)
    preflight(cfg, out, uri)
    prepare(out, cfg.fingerprint(), cfg.name)
    report = SweepReport(grid_runs=0, out=out, tracking_uri=uri)
    report.quarantined = quarantine_corrupt(out)
    if force:
        archive(out)
    done = done_run_ids(out)
    tasks, report.grid_runs = plan(cfg, skip=done)
    report.tasks = len(tasks)
    report.skipped = report.grid_runs - sum(len(t.seeds) for t in tasks)
    commit = git_commit()
    tracker = None
    if uri:
        tracker = Tracker(uri, cfg.experiment_name(), cfg.name, commit,
                          params=dict(config=cfg.model_dump_json(), grid_runs=report.grid_runs, tasks=len(tasks)))
        if force:
            _delete_children(tracker)
    try:
        if tasks:
            _fan_out(cfg, tasks, out, tracker, commit, report, address, num_cpus, progress, max_in_flight)
        if tracker:
            report.synced = sync(tracker, out)  # runs a crashed driver wrote to Parquet only
    finally:
        if tracker:
            tracker.close("FINISHED" if not report.failed else "FAILED")
    report.wall_time = time.perf_counter() - t0
    return report


def _delete_children(tracker: Tracker) -> None:
    page = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.kind = 'run'", max_results=50000)
    for r in page:
        tracker.client.delete_run(r.info.run_id)


def start_tracking(cfg: SweepConfig, tracking_uri: str | None, mlflow: bool) -> str | None:
    """The tracking URI to use, or None for Parquet only."""
    return resolve_uri(tracking_uri, cfg.tracking.uri) if mlflow and cfg.tracking.enabled else None


def finish_task(out: Path, tracker: Tracker | None, task: TaskSpec, result: dict, report: SweepReport) -> None:
    """Keep a finished task: Parquet first (what resume trusts), then MLflow."""
    write_task(out, task.task_id, result["runs"], result["curves"])
    if tracker:
        tracker.log(result["runs"], result["curves"])
    report.done += len(result["runs"])
    report.diverged += sum(r["status"] == "diverged" for r in result["runs"])
    report.spans.append(result["span"])


def _fan_out(cfg, tasks, out, tracker, commit, report, address, num_cpus, progress, max_in_flight) -> None:
    from tqdm import tqdm

    init_ray(address, num_cpus)
    pool = TaskPool(cfg.resources, commit, max_in_flight)
    pending = list(reversed(tasks))
    bar = tqdm(total=sum(len(t.seeds) for t in tasks), unit="run", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc=cfg.name, mininterval=0.5 if sys.stderr.isatty() else 15.0)
    try:
        while pending or len(pool):
            while pending and not pool.full:
                pool.submit(pending.pop())
            task, _, result, error = pool.next()
            if error is not None:
                report.failed += len(task.seeds)
                report.errors.append(f"{task.task_id}: {type(error).__name__}: {str(error).strip().splitlines()[-1]}")
            else:
                finish_task(out, tracker, task, result, report)
            bar.update(len(task.seeds))
    finally:
        bar.close()
