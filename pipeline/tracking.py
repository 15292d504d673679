"""MLflow tracking: one experiment per sweep, a parent run per sweep invocation that did
something and a child run per training run (configuration as params; run_id, sweep and git
commit as tags; the summary as metrics; checkpoint curves as metric histories, batched).

What the UI shows is decided here: readable unique names (:func:`child_run_name`,
:func:`parent_run_name`), a child's start and end are its training's (so "Duration" is the
training time, :func:`child_times`), curves carry flow time ``curve.t_lambda = t lambda_*`` and
the theorem's bound as a relative quantity ``curve.bound_rel = exp(-lambda_* t)`` next to
``curve.rel_loss`` (:func:`child_metrics`), and the parent run carries the full configuration,
the closing summary and (searches) the thresholds table as artifacts.

How much of each curve goes to MLflow is a setting (``tracking.curve_points``, :func:`curve_rows`):
a server's time per child grows with the metric values it stores, and the full curves are in
Parquet anyway (and, with ``tracking.curve_artifact``, in a ``curves.csv`` on each child).

Credentials never go in a URI (:func:`check_uri` refuses one that carries a password, and every
message shows URIs through :func:`redact`): MLflow reads them from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``), a database's from ``PGPASSWORD`` or
``~/.pgpass``; :func:`check_reachable` tries them before any work.

Only the driver logs, one run at a time, so an SQLite store never sees concurrent
writers ("database is locked"). Parquet is written before MLflow: MLflow can always be
refilled from Parquet (:func:`sync`), never the other way round.
"""

from __future__ import annotations

import base64
import csv
import datetime
import io
import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from records.schema import CELL_COLUMNS, TRAINING_COLUMNS
from records.tables import read_table

from .config import CURVE_POINTS
from .uris import redact, uri_problem

PARAM_FIELDS = (*CELL_COLUMNS, *TRAINING_COLUMNS)
TAG_FIELDS = ("run_id", "sweep", "git_commit", "status", "stopped_by", "trend", "device", "task_id")
CURVE_METRICS = ("loss", "rel_loss", "rel_loss_interval_max", "value_rel", "deriv_rel", "lambda_min", "H_drift",
                 "H_drift_2", "max_weight_move", "flip_fraction", "bound", "lin_dist", "flips_gross", "flips_net",
                 "flips_distinct", "jump_norm", "jump_energy", "eta")
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
_MAX_PARAM_CHARS = 500  # a longer param would be cut by MLflow: it becomes an artifact of the parent instead
# MLflow 3's UI opens an experiment on its GenAI overview unless the link asks for the runs table;
# the tag marks the experiment as classical ML for the UI's own experiment lists
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(RuntimeError):
    """The tracking server cannot be used (one line: what and the fix)."""


def resolve_uri(cli_uri: str | None, config_uri: str | None) -> str:
    """``--tracking-uri``, else the config's, else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory (where ``mlflow ui`` looks)."""
    uri = cli_uri or config_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_uri(uri: str) -> None:
    """Refuse, in one line, a tracking URI with a :func:`uri_problem` (shown :func:`redact`-ed)."""
    problem = uri_problem(uri)
    if problem:
        raise TrackingError(f"tracking: {redact(uri)!r} {problem[0]}; {problem[1]}")


def auth_headers() -> dict[str, str]:
    """The ``Authorization`` header MLflow's client sends, from the same variables and in the same
    order (a user name and password, else a token)."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


LOGIN_TIMEOUT_S = 30.0  # the first store request of a server just started can take seconds (its database)


def _check_login(uri: str, timeout: float) -> None:
    """One authenticated read (the experiments the account may see), as every call of a sweep is:
    a login the server refuses is found here, before any work."""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=auth_headers()), timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(f"tracking: the MLflow server at {uri} did not answer a first request "
                            f"({getattr(exc, 'reason', exc)}); check the server, or pass --no-mlflow") from None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    given = bool(auth_headers())
    if code == 401 and given:
        who = f"user {user!r}" if user and os.environ.get("MLFLOW_TRACKING_PASSWORD") else "MLFLOW_TRACKING_TOKEN"
        raise TrackingError(f"tracking: the MLflow server at {uri} refused the login of {who} (HTTP 401: wrong "
                            f"user name or password); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                            f"to an account of that server (its admin creates one), or pass --no-mlflow")
    if code == 401:
        raise TrackingError(f"tracking: the MLflow server at {uri} asks for a login (HTTP 401); set "
                            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment (never in "
                            f"the URI), or pass --no-mlflow")
    if code == 403:
        raise TrackingError(f"tracking: the MLflow server at {uri} does not let {user or 'this login'!r} read "
                            f"experiments (HTTP 403); ask its admin for READ permission, or pass --no-mlflow")
    raise TrackingError(f"tracking: the MLflow server at {uri} answered a first request with HTTP {code}; check "
                        f"the server's log, or pass --no-mlflow")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training or any file written, on a malformed URI, when nobody answers,
    and when the server refuses the login in the environment (:func:`auth_headers`)."""
    check_uri(uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise urllib.error.URLError(f"HTTP {resp.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"tracking: no MLflow server answers at {uri} ({getattr(exc, 'reason', exc)}); start one with "
                f"`mlflow server --host 127.0.0.1 --port PORT --backend-store-uri sqlite:///mlflow.db`, or pass "
                f"--no-mlflow to write Parquet only and `python -m pipeline sync` later") from None
        _check_login(uri, LOGIN_TIMEOUT_S)
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise TrackingError(f"tracking: cannot write the MLflow database in {parent}; pass --tracking-uri "
                                f"with a writable location or --no-mlflow")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) or isinstance(v, bool)


def runs_link(uri: str, experiment_id: str) -> str:
    """How to open the sweep's runs table (not MLflow 3's GenAI overview) for this store."""
    path = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{path}"


def chart_link(uri: str, experiment_id: str, run_ids: list[str],
               keys: tuple[str, ...] = ("curve.rel_loss", "curve.bound_rel")) -> str:
    """MLflow's metric page for ``run_ids``: ``keys`` against "Relative time" (= t lambda_*, see
    :func:`child_metrics`) on a log scale (the UI's own route, ``Utils.getMetricPageRoute``)."""
    q = urllib.parse.quote
    return (f"{uri.rstrip('/')}/#/metric?runs={q(json.dumps(run_ids))}&metric={q(json.dumps(keys[0]))}"
            f"&experiments={q(json.dumps([experiment_id]))}&plot_metric_keys={q(json.dumps(list(keys)))}"
            f"&plot_layout={q('{}')}&x_axis=relative&y_axis_scale=log&line_smoothness=1&show_point=false"
            f"&deselected_curves={q('[]')}&last_linear_y_axis_range={q('[]')}")


def child_run_name(rec: dict) -> str:
    """Unique within a sweep (its runs share d, target, delta_2 and training), widest fields first,
    no separators the UI would break a line at: e.g. ``n16-k2-m4096-d0.5-bias-s3``."""
    data = f"-data{rec['data_seed']}" if rec.get("data_seed") else ""
    return (f"n{rec['n']}-k{rec['k']}-m{rec['m']}-d{rec['delta']:g}-{'bias' if rec['bias'] else 'nobias'}"
            f"-s{rec['seed']}{data}")


def parent_run_name(sweep: str, kind: str, number: int, when: float | None = None) -> str:
    """``#3 run smoke 12-01 22:40:05``: the number first, so that names cut short still differ."""
    return f"#{number} {kind} {sweep} {time.strftime('%m-%d %H:%M:%S', time.localtime(when))}"


def child_times(rec: dict, span: tuple[float, float] | None = None) -> tuple[int, int]:
    """Start and end (ms since the epoch) of the run's training: its task's span when the task
    has just come back, else (from Parquet) its end ``created_at`` less the task's wall time. The
    seeds of one task train together as a batch, so they share their start and end."""
    if span is not None:
        start, end = span
    else:
        end = datetime.datetime.fromisoformat(rec["created_at"]).timestamp()
        start = end - float(rec["task_wall_time"])
    return int(start * 1000), int(end * 1000)


CURVE_DECADES = 3  # the sampled points span this many decades of flow time before a run's end


def curve_rows(t: list[float], rows: list[int], points: int | None) -> list[int]:
    """Which checkpoints of a run's curve go to MLflow: of ``rows`` (indices into the curves, with
    flow times ``t[i]``), every one when ``points`` is None, else at most ``points``: the first
    (t = 0), the last, and for each of ``points - 1`` flow times log-spaced over the run's last
    :data:`CURVE_DECADES` decades (from its first positive checkpoint if that is later; ends
    included), the row nearest to it in log t. The early decay and the late approach to the floor
    or the bound both show, on the UI's linear "Relative time" axis too. Returned in step order."""
    rows = sorted(rows, key=lambda i: t[i])  # flow time grows with the step
    if points is None or len(rows) <= points:
        return rows
    positive = [i for i in rows if t[i] > 0 and math.isfinite(t[i])]
    chosen = {rows[0], rows[-1]}
    if len(positive) > 1 and points > 2:
        logs = [math.log(t[i]) for i in positive]
        hi = logs[-1]
        lo, gaps = max(logs[0], hi - CURVE_DECADES * math.log(10)), points - 2
        for j in range(gaps + 1):
            target = lo + (hi - lo) * j / gaps
            chosen.add(positive[min(range(len(logs)), key=lambda q: (abs(logs[q] - target), q))])
    return [i for i in rows if i in chosen]


def curves_csv(curves: dict[str, list], rows: list[int]) -> str:
    """A run's full curves (every checkpoint, every column but run_id) as CSV, for ``curve_artifact``."""
    cols = [c for c in curves if c != "run_id"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for i in rows:
        w.writerow([repr(v) if isinstance(v, float) else v for v in (curves[c][i] for c in cols)])
    return buf.getvalue()


def child_metrics(rec: dict, curves: dict[str, list], rows: list[int], start_ms: int, end_ms: int) -> list[tuple]:
    """(key, value, timestamp, step) of the run's summary (at its end) and its checkpoint curves.

    A curve point's step is its gradient step, and its timestamp is the run's start plus ``t lambda_*``
    seconds, so that the UI's "Relative time" axis reads flow time in units of 1/lambda_* (the
    points are logged after training: their real times would say nothing). ``curve.t_lambda`` (that
    flow time, for a chart's "metric" x axis) and ``curve.bound_rel`` (the theorem's bound on
    ``rel_loss``, ``exp(-lambda_* t)``) are logged at every checkpoint too."""
    metrics = [(f, float(v), end_ms, 0) for f, v in rec.items()
               if f not in PARAM_FIELDS and f not in TAG_FIELDS and _finite(v)]
    lam = rec.get("lambda_star")
    for i in rows:
        step, t = int(curves["step"][i]), curves["t"][i]
        flow = _finite(lam) and _finite(t)
        when = start_ms + round(1000 * t * lam) if flow else end_ms
        metrics += [(f"curve.{f}", float(curves[f][i]), when, step) for f in CURVE_METRICS if _finite(curves[f][i])]
        if flow:
            metrics += [("curve.t_lambda", float(t * lam), when, step),
                        ("curve.bound_rel", math.exp(-lam * t), when, step)]
    return metrics


class Tracker:
    """:meth:`log` adds one child per training run under a parent run for this invocation; the
    parent is made only when there is something to log, so a rerun with nothing to do adds none."""

    def __init__(self, uri: str, experiment: str, sweep: str, git_commit: str, params: dict,
                 curve_points: int | None = CURVE_POINTS, curve_artifact: bool = False):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # else two lines per run
        # MLflow takes a second or more to import: only where it is used (here, in _batch and in
        # logqueue._tags), so that `--help`, `status` and `--no-mlflow` sweeps stay light
        from mlflow.tracking import MlflowClient

        check_uri(uri)
        artifacts = None
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            # next to the database, not in whatever directory the sweep was started from
            artifacts = (db.parent / "mlartifacts").resolve().as_uri()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifacts, tags=EXPERIMENT_KIND)
        if exp is not None and exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        self.sweep, self.git_commit = sweep, git_commit
        self.kind = str(params.get("kind", "run"))
        self.params = params
        # how much of each curve goes to MLflow (config.Tracking's settings; None: every checkpoint)
        self.curve_points, self.curve_artifact = curve_points, curve_artifact
        self.parent_id: str | None = None  # made by parent() when the first child is logged
        self.parent_tags: dict = {}  # more tags for the parent (the driver's liveness record, logqueue.Guard)
        self._parent_lock = threading.Lock()  # log() may run in several threads (logqueue.LoggingThread)
        self.logged: set[str] = set()  # run_ids with a whole child run (see logged_run_ids)
        self.already_logged = 0  # runs handed to log() that an earlier invocation had logged already

    def parent(self) -> str:
        """The parent run of this invocation (made on first use): short params, and every
        longer one (the configuration) whole as a JSON artifact."""
        with self._parent_lock:
            return self._parent()

    def _parent(self) -> str:
        if self.parent_id is None:
            number = 1 + len(self.client.search_runs([self.experiment_id], "tags.kind = 'sweep'", max_results=5000))
            run = self.client.create_run(self.experiment_id, run_name=parent_run_name(self.sweep, self.kind, number),
                                         tags={"sweep": self.sweep, "git_commit": self.git_commit, "kind": "sweep",
                                               **self.parent_tags})
            self.parent_id = run.info.run_id
            short = {k: v for k, v in self.params.items() if k != "config" and len(str(v)) <= _MAX_PARAM_CHARS}
            self._batch(self.parent_id, params=short)
            for k, v in self.params.items():
                if k not in short:
                    self.client.log_text(self.parent_id, str(v), f"{k}.json")
        return self.parent_id

    def add_artifact(self, name: str, text: str) -> None:
        """A text file on the parent run, if there is one (nothing logged: nothing to attach to)."""
        if self.parent_id is not None:
            self.client.log_text(self.parent_id, text, name)

    def _batch(self, mlflow_id: str, metrics=(), params=None, tags=None) -> None:
        from mlflow.entities import Metric, Param, RunTag  # as in __init__: MLflow only where it is used

        params = [Param(k, str(v)) for k, v in (params or {}).items()]
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        metrics = list(metrics)
        while metrics or params or tags:
            self.client.log_batch(mlflow_id, metrics=[Metric(*m) for m in metrics[:_MAX_METRICS]],
                                  params=params[:_MAX_PARAMS], tags=tags[:_MAX_TAGS])
            metrics, params, tags = metrics[_MAX_METRICS:], params[_MAX_PARAMS:], tags[_MAX_TAGS:]

    def logged_run_ids(self) -> set[str]:
        """run_id tags of the child runs logged whole (terminated), remembered so that :meth:`log`
        never logs one twice. A child still RUNNING was cut off mid-log (its driver or the server
        died): it is deleted, so that the run is logged again, whole. A child of a parent still
        RUNNING (another live driver's; logqueue.Guard marks dead drivers' parents KILLED) is left."""
        ids, token = set(), None
        live = {r.info.run_id for r in self.client.search_runs(
            [self.experiment_id], "tags.kind = 'sweep' AND attributes.status = 'RUNNING'", max_results=1000)}
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string="tags.kind = 'run'",
                                           max_results=5000, page_token=token)
            for r in page:
                if r.info.status in ("RUNNING", "SCHEDULED"):
                    if r.data.tags.get("mlflow.parentRunId") in live:
                        continue
                    self.client.delete_run(r.info.run_id)
                else:
                    ids.add(r.data.tags.get("run_id"))
            token = page.token
            if not token:
                self.logged = ids
                return set(ids)

    def log(self, runs: list[dict], curves: dict[str, list], span: tuple[float, float] | None = None) -> None:
        """One child run per record of ``runs``, with its rows of ``curves``, timed by the task's
        ``span`` when given (see :func:`child_times`); a run already logged whole (see
        :meth:`logged_run_ids`) is skipped, so none is logged twice."""
        by_run: dict[str, list[int]] = {}
        for i, rid in enumerate(curves["run_id"]):
            by_run.setdefault(rid, []).append(i)
        for rec in runs:
            if rec["run_id"] in self.logged:
                self.already_logged += 1
                continue
            tags = {f: rec[f] for f in TAG_FIELDS} | {"kind": "run", "mlflow.parentRunId": self.parent()}
            start, end = child_times(rec, span)
            child = self.client.create_run(self.experiment_id, start_time=start, run_name=child_run_name(rec),
                                           tags=tags)
            # when the child was logged (its start and end are the training's): de-duplication
            # between drivers (logqueue.Guard) orders children by it; a child counts once terminated
            now_ms = int(time.time() * 1000)
            rows = by_run.get(rec["run_id"], [])
            sent = curve_rows(curves["t"], rows, self.curve_points)
            metrics = [*child_metrics(rec, curves, sent, start, end), ("logged_at", float(now_ms), now_ms, 0)]
            self._batch(child.info.run_id, metrics=metrics, params={f: rec[f] for f in PARAM_FIELDS})
            if self.curve_artifact:  # before the termination: a terminated child is whole
                every = sorted(rows, key=lambda i: curves["step"][i])
                self.client.log_text(child.info.run_id, curves_csv(curves, every), "curves.csv")
            self.client.set_terminated(child.info.run_id, "FINISHED" if rec["status"] != "diverged" else "FAILED",
                                       end_time=end)
            self.logged.add(rec["run_id"])

    def delete_children(self) -> None:
        """Delete every child run of the experiment (a forced recomputation logs them anew)."""
        for r in self.client.search_runs([self.experiment_id], filter_string="tags.kind = 'run'", max_results=50000):
            self.client.delete_run(r.info.run_id)

    def close(self, status: str = "FINISHED", summary: list[str] | None = None) -> None:
        """End the parent run (if one was made), with the closing summary as ``summary.txt``."""
        if self.parent_id is None:
            return
        if summary:
            self.add_artifact("summary.txt", "\n".join(summary) + "\n")
        self.client.set_terminated(self.parent_id, status)


def sync(tracker: Tracker, out: Path) -> int:
    """Log every run that is in Parquet but not yet in MLflow; return how many."""
    runs = read_table(out, "runs")
    missing = set(runs.column("run_id").to_pylist()) - tracker.logged_run_ids()
    if not missing:
        return 0
    keep = pa_set(missing)
    runs = runs.filter(pc.is_in(runs.column("run_id"), keep))
    curves = read_table(out, "curves")
    curves = curves.filter(pc.is_in(curves.column("run_id"), keep))
    tracker.log(runs.to_pylist(), curves.to_pydict())
    return runs.num_rows


def pa_set(values):
    return pa.array(sorted(values), type=pa.string())
