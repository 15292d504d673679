"""MLflow logging off the driver's critical path, bounded in time, and safe beside other drivers.

- :class:`LoggingThread` wraps a :class:`~pipeline.tracking.Tracker`: ``log`` only enqueues; a
  thread drains the queue in batches (several HTTP connections at once for a server; one writer
  for an SQLite store, which takes one at a time), so logging never delays submitting tasks.
- Every MLflow HTTP call has a bounded timeout and retry policy (MLflow's own environment
  settings, :func:`bound_http_calls`): a server that accepts connections and never answers
  degrades the sweep to Parquet only after :func:`degrade_after_s` seconds at most, as a dead one.
- Parent runs carry their driver (host, pid, output, heartbeat). A parent left RUNNING by a driver
  that is gone is marked KILLED, with a note, by the next driver of the experiment; only the
  cut-off children of such parents are deleted (a live driver's children are left alone).
- Two live drivers logging the same experiment (different outputs): before a batch, runs another
  driver already logged whole are skipped; after it, a run logged whole by both keeps the child
  that was logged first (metric ``logged_at``; ties: the smaller MLflow id), the later one deletes its own. Each driver
  checks after finishing its children, and waits for another's child of the same run that is logged but not yet
  whole, so the one that must delete always sees the other whole.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import one_line
from .lock import pid_alive, store_creation_lock
from .tracking import Tracker

# MLflow reads these at every request; a user's own setting wins
HTTP_LIMITS = dict(MLFLOW_HTTP_REQUEST_TIMEOUT="10", MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
                   MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0.5")
HEARTBEAT_S = 60.0  # how often a driver refreshes its parent's heartbeat tag
STALE_AFTER_S = 600.0  # a RUNNING parent on another host without a heartbeat for this long is dead
CLOCK_SKEW_MS = 5000  # margin on logged_at comparisons across driver clocks


def bound_http_calls() -> None:
    for k, v in HTTP_LIMITS.items():
        os.environ.setdefault(k, v)


def degrade_after_s() -> float:
    """The longest one MLflow HTTP call can take under the current settings: every attempt timing
    out, plus urllib3's backoff (factor * 2**i before retry i+1, plus jitter) between them."""
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 120))
    retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
    factor = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2))
    jitter = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", 1))
    return (retries + 1) * timeout + sum(min(120.0, factor * 2 ** i) + jitter for i in range(retries))


def open_tracker(uri: str, experiment: str, sweep: str, commit: str, params: dict, out: Path | None = None,
                 workers: int | None = None, settings=None) -> "LoggingThread":
    """A Tracker (store creation serialised, calls bounded), its stale parents reaped, in a thread.
    ``settings``: the sweep's ``config.Tracking`` (how much of each curve goes to MLflow)."""
    bound_http_calls()
    curves = dict(curve_points=settings.points_sent(), curve_artifact=settings.curve_artifact) if settings else {}
    with store_creation_lock(uri):
        try:
            tracker = Tracker(uri, experiment, sweep, commit, params=params, **curves)
        except Exception as exc:  # noqa: BLE001 - re-raised with what happened
            if "OperationalError" in type(exc).__name__ + repr(exc):
                raise RuntimeError(f"the SQLite store {uri} could not be opened ({one_line(exc)}): another process "
                                   f"may be writing it without this version's lock; run again") from None
            raise
    return LoggingThread(tracker, out=out, workers=workers)


class Guard:
    """What other drivers of the experiment do: stale parents, and their children of our runs."""

    def __init__(self, tracker, out: Path | None):
        self.t = tracker
        self.out = str(Path(out).resolve()) if out else ""
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.others: dict[str, tuple[int, str]] = {}  # run_id -> (end_time, MLflow id) whole elsewhere
        self.since = int(time.time() * 1000) - CLOCK_SKEW_MS
        self.reaped: list[str] = []

    def claim(self) -> None:
        """The driver's liveness record, on the parent run when it is made (only an invocation that
        logs something makes one)."""
        self.t.parent_tags.update({"driver.host": self.host, "driver.pid": str(self.pid), "driver.out": self.out,
                                   "driver.heartbeat": str(int(time.time()))})  # tag values are strings

    def heartbeat(self) -> None:
        if self.t.parent_id is not None:
            self.t.client.set_tag(self.t.parent_id, "driver.heartbeat", str(int(time.time())))

    def _dead(self, tags: dict) -> str | None:
        """Why a RUNNING parent's driver is gone, or None when it may be alive."""
        if "driver.pid" not in tags:
            return "its driver (an older version) left no liveness record"
        if self.out and tags.get("driver.out") == self.out:
            return f"it wrote {self.out}, which this driver now holds the lock of"
        pid = int(tags["driver.pid"])
        if tags.get("driver.host") == self.host and not pid_alive(pid):
            return f"its driver (pid {pid} on {self.host}) is gone"
        age = time.time() - float(tags.get("driver.heartbeat", 0))
        if age > STALE_AFTER_S:
            return f"its driver (pid {pid} on {tags.get('driver.host')}) sent no heartbeat for {age:.0f} s"
        return None

    def reap(self) -> None:
        """Mark KILLED, with a note tag, every RUNNING parent of the experiment whose driver is gone."""
        c = self.t.client
        for r in c.search_runs([self.t.experiment_id], "tags.kind = 'sweep' AND attributes.status = 'RUNNING'",
                               max_results=1000):
            if r.info.run_id == self.t.parent_id:
                continue
            why = self._dead(r.data.tags)
            if why:
                c.set_tag(r.info.run_id, "note", f"marked KILLED at {time.strftime('%FT%T%z')} by pid {self.pid} on "
                                                 f"{self.host}: {why}")
                c.set_terminated(r.info.run_id, "KILLED")
                self.reaped.append(r.info.run_id)
                print(f"notice: MLflow run {r.info.run_id} ({r.info.run_name}) was left RUNNING; marked KILLED: {why}",
                      file=sys.stderr, flush=True)

    def refresh(self) -> set[str]:
        """Children of other parents logged whole since the last refresh. A child's start and end
        are its training's (tracking.child_times), so the time it was logged is its metric
        ``logged_at`` (epoch ms, in the batch of its metrics); it is whole once terminated, the
        call after that batch, so a child seen still RUNNING holds the next refresh back to it.
        Returns the run_ids of such children (logged, not yet whole)."""
        now = int(time.time() * 1000)
        flt = (f"tags.kind = 'run' AND metrics.logged_at >= {self.since} AND "
               f"tags.`mlflow.parentRunId` != '{self.t.parent_id}'")
        token, since, pending = None, now - CLOCK_SKEW_MS, set()
        # a child logged before this and still RUNNING is cut off: its driver had longer than any call takes
        cut_off = now - 1000 * degrade_after_s() - CLOCK_SKEW_MS
        while True:
            page = self.t.client.search_runs([self.t.experiment_id], flt, max_results=5000, page_token=token)
            for r in page:
                if r.info.status != "RUNNING":
                    key = (r.data.metrics["logged_at"], r.info.run_id)
                    rid = r.data.tags.get("run_id")
                    self.others[rid] = min(self.others.get(rid, key), key)
                elif r.data.metrics["logged_at"] >= cut_off:
                    # logged, not yet terminated: the next refresh must see it again
                    since = min(since, int(r.data.metrics["logged_at"]))
                    pending.add(r.data.tags.get("run_id"))
            token = page.token
            if not token:
                break
        self.since = since
        return pending

    def resolve(self, run_ids: list[str]) -> int:
        """After logging ``run_ids`` whole: delete our child of each run another driver also logged
        whole and finished first. Returns how many were deleted. Another driver's child of one of
        these runs that is logged but not yet whole is waited for (its termination is its next
        call; at most :func:`degrade_after_s`): it may be the first, and its driver may have
        looked before ours was whole, so that only this check can see both."""
        deadline = time.monotonic() + degrade_after_s()
        wanted = set(run_ids)
        while self.refresh() & wanted and time.monotonic() < deadline:
            time.sleep(0.2)
        deleted = 0
        for rid in (r for r in run_ids if r in self.others):
            mine = self.t.client.search_runs(
                [self.t.experiment_id], f"tags.run_id = '{rid}' AND tags.`mlflow.parentRunId` = '{self.t.parent_id}'")
            for r in mine:
                if (r.data.metrics.get("logged_at", 0), r.info.run_id) > self.others[rid]:
                    self.t.client.delete_run(r.info.run_id)
                    deleted += 1
        return deleted


def _tags(**kv):
    from mlflow.entities import RunTag  # MLflow only where it is used (tracking.Tracker.__init__ says why)

    return [RunTag(k, str(v)) for k, v in kv.items()]


class LoggingThread:
    """A Tracker whose :meth:`log` returns at once. ``error`` is set (and a warning printed) when
    MLflow fails; from then on ``log`` drops, as Parquet holds everything (``sync`` refills)."""

    def __init__(self, tracker, out: Path | None = None, workers: int | None = None, max_batch_runs: int = 2000):
        self.tracker = tracker
        self.guard = Guard(tracker, out)
        self.guard.claim()
        self.guard.reap()
        http = tracker.uri.startswith(("http://", "https://"))
        self.workers = workers or (8 if http else 1)  # SQLite takes one writer at a time
        self.max_batch_runs = max_batch_runs
        self.error: str | None = None
        self.busy_s = 0.0  # time the thread spent in MLflow calls
        self.logged_count = 0
        self.duplicates_removed = 0
        self._q: queue.Queue = queue.Queue()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mlflow-log") if self.workers > 1 else None
        self._progress = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="mlflow-logging", daemon=True)
        self._thread.start()

    def __getattr__(self, name):  # client, experiment_id, parent_id, logged, uri ...
        return getattr(self.tracker, name)

    def log(self, runs: list[dict], curves: dict[str, list], span: tuple[float, float] | None = None) -> None:
        if self.error is None and runs:
            self._q.put((runs, curves, span))

    def _loop(self) -> None:
        last_beat, stop = time.monotonic(), False
        while not stop:
            try:
                items = [self._q.get(timeout=HEARTBEAT_S)]
            except queue.Empty:
                items = []
            # drain what else is queued into one batch: fewer, larger searches
            while items and items[-1] is not None and sum(len(it[0]) for it in items if isinstance(it, tuple)) \
                    < self.max_batch_runs:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            stop = None in items
            batch = [it for it in items if isinstance(it, tuple)]
            if batch and self.error is None:
                self._log_batch(batch)
            if time.monotonic() - last_beat > HEARTBEAT_S and self.error is None:
                self._call(self.guard.heartbeat)
                last_beat = time.monotonic()
            for ev in items:
                if isinstance(ev, threading.Event):
                    ev.set()

    def _call(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - never lose the sweep to the tracking server
            if self.error is None:
                self.error = one_line(exc)
                print(f"warning: MLflow logging failed ({self.error}); going on with Parquet only", file=sys.stderr,
                      flush=True)
        finally:
            self.busy_s += time.perf_counter() - t0
            self._progress = time.monotonic()

    def _log_batch(self, batch: list[tuple[list[dict], dict]]) -> None:
        skip = self.tracker.logged | set(self.guard.others)
        items = []
        for runs, curves, span in batch:
            rows: dict[str, list[int]] = {}
            for i, rid in enumerate(curves["run_id"]):
                rows.setdefault(rid, []).append(i)
            for rec in runs:
                if rec["run_id"] in skip:
                    self.tracker.already_logged += 1
                    continue
                idx = rows.get(rec["run_id"], [])
                items.append(([rec], {k: [v[i] for i in idx] for k, v in curves.items()}, span))
        if not items:
            return
        if self._pool is None:
            for runs, curves, span in items:
                if self.error is None:
                    self._call(self.tracker.log, runs, curves, span)
        else:
            list(self._pool.map(lambda it: self.error is None and self._call(self.tracker.log, *it), items))
        if self.error is None:
            ids = [runs[0]["run_id"] for runs, _, _ in items]
            self.duplicates_removed += self._call(self.guard.resolve, ids) or 0
            self.logged_count += len(items)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued so far is logged (or dropped after an error). With
        ``timeout``: give up when the thread has made no progress for that long."""
        ev, start = threading.Event(), time.monotonic()
        self._q.put(ev)
        while not ev.wait(0.2):
            if not self._thread.is_alive():
                return False
            if timeout is not None and time.monotonic() - max(self._progress, start) > timeout:
                return False
        return True

    def logged_run_ids(self) -> set[str]:
        self.flush(degrade_after_s())
        if self.error:
            raise RuntimeError(self.error)
        return self.tracker.logged_run_ids() | set(self.guard.others)

    def add_artifact(self, name: str, text: str) -> None:
        """A text file on the parent run, once everything queued is logged (the client is the thread's)."""
        self.flush(degrade_after_s())
        if self.error is None:
            self._call(self.tracker.add_artifact, name, text)

    def close(self, status: str = "FINISHED", summary: list[str] | None = None) -> None:
        """Drain the queue (bounded: no progress for :func:`degrade_after_s` is a hang), then end
        the parent run; a tracker that failed is left alone (its parent is reaped later)."""
        drained = self.flush(degrade_after_s() + 1)
        self._q.put(None)
        if not drained and self.error is None:
            self.error = f"TimeoutError: MLflow made no progress for {degrade_after_s():.0f} s"
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.error is None:
            self._call(self.tracker.close, status, summary)
