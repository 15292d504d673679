"""MLflow tracking: one experiment per sweep, a parent run per sweep invocation and a
child run per training run (configuration as params; run_id, sweep and git commit as
tags; the summary as metrics; checkpoint curves as metric histories, batched).

Only the driver logs, one run at a time, so an SQLite store never sees concurrent
writers ("database is locked"). Parquet is written before MLflow: MLflow can always be
refilled from Parquet (:func:`sync`), never the other way round.
"""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from .grid import CELL_FIELDS, TRAINING_FIELDS

PARAM_FIELDS = CELL_FIELDS + TRAINING_FIELDS + ("seed",)
TAG_FIELDS = ("run_id", "sweep", "git_commit", "status", "stopped_by", "device", "task_id")
CURVE_METRICS = ("loss", "rel_loss", "e_sq", "S_sq", "lambda_min", "H_drift", "max_weight_move", "flip_fraction",
                 "bound", "lin_dist", "flips", "jump_norm", "eta")
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100


class TrackingError(RuntimeError):
    """The tracking server cannot be used (one line: what and the fix)."""


def resolve_uri(cli_uri: str | None, config_uri: str | None) -> str:
    """``--tracking-uri``, else the config's, else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory (where ``mlflow ui`` looks)."""
    uri = cli_uri or config_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when nobody answers at ``uri``."""
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
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise TrackingError(f"tracking: cannot write the MLflow database in {parent}; pass --tracking-uri "
                                f"with a writable location or --no-mlflow")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) or isinstance(v, bool)


class Tracker:
    """A parent run for this sweep invocation; :meth:`log` adds one child per training run."""

    def __init__(self, uri: str, experiment: str, sweep: str, git_commit: str, params: dict):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        from mlflow.tracking import MlflowClient

        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        self.sweep, self.git_commit = sweep, git_commit
        parent = self.client.create_run(self.experiment_id, run_name=f"{sweep} {time.strftime('%F %T')}",
                                        tags={"sweep": sweep, "git_commit": git_commit, "kind": "sweep"})
        self.parent_id = parent.info.run_id
        self.logged: set[str] = set()  # run_ids with a whole child run (see logged_run_ids)
        self._batch(self.parent_id, params={k: str(v)[:500] for k, v in params.items()})

    def _batch(self, mlflow_id: str, metrics=(), params=None, tags=None) -> None:
        from mlflow.entities import Metric, Param, RunTag

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

    def log(self, runs: list[dict], curves: dict[str, list]) -> None:
        """One child run per record of ``runs``, with its rows of ``curves``; a run already
        logged whole (see :meth:`logged_run_ids`) is skipped, so none is logged twice."""
        by_run: dict[str, list[int]] = {}
        for i, rid in enumerate(curves["run_id"]):
            by_run.setdefault(rid, []).append(i)
        now = int(time.time() * 1000)
        for rec in runs:
            if rec["run_id"] in self.logged:
                continue
            tags = {f: rec[f] for f in TAG_FIELDS} | {"kind": "run", "mlflow.parentRunId": self.parent_id}
            name = (f"n{rec['n']}-k{rec['k']}-m{rec['m']}-delta{rec['delta']:g}-"
                    f"{'bias' if rec['bias'] else 'nobias'}-seed{rec['seed']}")
            child = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            metrics = [(f, float(v), now, 0) for f, v in rec.items()
                       if f not in PARAM_FIELDS and f not in TAG_FIELDS and _finite(v)]
            for i in by_run.get(rec["run_id"], []):
                step = int(curves["step"][i])
                metrics += [(f"curve.{f}", float(curves[f][i]), now, step) for f in CURVE_METRICS
                            if _finite(curves[f][i])]
            self._batch(child.info.run_id, metrics=metrics, params={f: rec[f] for f in PARAM_FIELDS})
            self.client.set_terminated(child.info.run_id, "FINISHED" if rec["status"] != "diverged" else "FAILED")
            self.logged.add(rec["run_id"])

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


def sync(tracker: Tracker, out: Path) -> int:
    """Log every run that is in Parquet but not yet in MLflow; return how many."""
    import pyarrow.compute as pc

    from .results import read_table

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
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())
