"""MLflow logging throughput: child runs per second into the two stores a sweep uses, with the
default and the full curve histories, the pipeline's logging thread beside a bare MlflowClient
sending the same payload, all in one run.

    PYTHONPATH=. python benchmarks/bench_logging.py [--runs 300] [--workers 8] [--server-workers 2]
                                                  [--points 16,all] [--no-auth]

Stores: an SQLite file (``sqlite:///...``, written in this process, one writer) and ``mlflow
server --workers 2`` on 127.0.0.1 with a PostgreSQL store and MLflow's basic-auth app, as
deploy/tracking/ runs it (tests/tracking_server.py: a throwaway PostgreSQL cluster, durable
settings). The payload is real: the runs and curves of results/widths (the shipped study),
each logged under fresh run_ids; ``--points`` are the ``tracking.curve_points`` compared (the
first is the default; ``all`` sends every checkpoint).

- bare: ``MlflowClient`` from ``--workers`` threads (SQLite: one), per child ``create_run``
  (its tags), one ``log_batch`` (its metrics and params, built beforehand by the pipeline's own
  functions, untimed) and ``set_terminated``: the least a child takes through MLflow's REST API.
- pipeline: ``logqueue.LoggingThread`` (what a sweep runs), task by task, until its queue is
  drained and the parent run closed: its de-duplication searches and parent run included.

Bare and pipeline alternate in ``--rounds`` rounds (each on its own children; the order flips each
round), so that a shared machine's load moves both alike. Per row: children/s over all rounds, the
median of the rounds' ratios pipeline/bare (1: the client adds nothing to the limit), and the CPU
milliseconds per child spent by this process, the MLflow server's processes and PostgreSQL's
(from the processes' own counters: what 2 cores could reach, 2000 / their sum, does not depend on
what else runs on a shared machine the way wall times do). ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def real_tasks(n_runs: int, study: Path, per_task: int = 16) -> tuple[list[tuple[list[dict], dict]], int]:
    """``n_runs`` child records in tasks of ``per_task``, from the shipped study's runs with the
    median number of checkpoints (a typical run), under fresh run_ids; and that median."""
    import pyarrow.compute as pc

    from records.tables import read_table

    curves = read_table(study, "curves")
    counts = curves.group_by("run_id").aggregate([("step", "count")]).to_pylist()
    typical = sorted(c["step_count"] for c in counts)[len(counts) // 2]
    ids = sorted(c["run_id"] for c in counts if c["step_count"] == typical)[:per_task]
    runs = read_table(study, "runs")
    runs = runs.filter(pc.is_in(runs.column("run_id"), value_set=_strings(ids))).to_pylist()
    curves = curves.filter(pc.is_in(curves.column("run_id"), value_set=_strings(ids))).to_pydict()
    out, i = [], 0
    while i < n_runs:
        batch, cur = [], {k: [] for k in curves}
        for rec in runs[: min(per_task, n_runs - i)]:
            new = f"bench-{time.time_ns()}-{i:07d}"
            batch.append(dict(rec, run_id=new))
            for j, rid in enumerate(curves["run_id"]):
                if rid == rec["run_id"]:
                    for k in cur:
                        cur[k].append(new if k == "run_id" else curves[k][j])
            i += 1
        out.append((batch, cur))
    return out, typical


def _strings(values):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def payloads(tasks, points: int | None) -> list[tuple[dict, list, dict]]:
    """(tags, metrics, params) of every child, as tracking.Tracker.log sends them."""
    from pipeline.tracking import PARAM_FIELDS, TAG_FIELDS, child_metrics, child_times, curve_rows

    out = []
    for runs, curves in tasks:
        by_run: dict[str, list[int]] = {}
        for i, rid in enumerate(curves["run_id"]):
            by_run.setdefault(rid, []).append(i)
        for rec in runs:
            start, end = child_times(rec)
            rows = curve_rows(curves["t"], by_run[rec["run_id"]], points)
            now = int(time.time() * 1000)
            metrics = [*child_metrics(rec, curves, rows, start, end), ("logged_at", float(now), now, 0)]
            out.append(({f: str(rec[f]) for f in TAG_FIELDS} | {"kind": "run"}, metrics,
                        {f: str(rec[f]) for f in PARAM_FIELDS}))
    return out


class Cpu:
    """CPU seconds of this process, of an MLflow server's process tree and of the PostgreSQL
    cluster it talks to (its postmaster and backends), per pid between two snapshots."""

    def __init__(self, server_pid: int | None, server_port: int | None):
        import psutil

        self.me = psutil.Process()
        self.server = psutil.Process(server_pid) if server_pid else None
        self.port = server_port

    def _server_procs(self):
        import psutil

        if self.server is None:
            return [], []
        procs = [self.server, *self.server.children(recursive=True)]
        ports = set()
        for p in procs:
            try:
                ports |= {c.raddr.port for c in p.net_connections("tcp") if c.raddr and c.raddr.port != self.port}
            except psutil.Error:
                pass
        pg = []
        for p in psutil.process_iter(["username"]):
            if p.info["username"] != "postgres":
                continue
            try:
                if any(c.status == "LISTEN" and c.laddr.port in ports for c in p.net_connections("tcp")):
                    pg = [p, *p.children()]
            except psutil.Error:
                pass
        return procs, pg

    @staticmethod
    def _times(procs) -> dict[int, float]:
        import psutil

        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def snapshot(self) -> tuple[dict, dict, float]:
        server, pg = self._server_procs()
        t = self.me.cpu_times()
        return self._times(server), self._times(pg), t.user + t.system

    @staticmethod
    def since(a, b) -> tuple[float, float, float]:
        """(client, server, postgres) CPU seconds from snapshot ``a`` to ``b``."""
        def diff(x, y):
            return sum(v - x.get(pid, 0.0) for pid, v in y.items())

        return b[2] - a[2], diff(a[0], b[0]), diff(a[1], b[1])


def bare(uri: str, experiment: str, children, workers: int) -> float:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(experiment)

    def one(child):
        tags, metrics, params = child
        run = client.create_run(exp, tags=tags)
        for i in range(0, len(metrics), 1000):  # MLflow's limit per log_batch (a full history can pass it)
            client.log_batch(run.info.run_id, metrics=[Metric(*m) for m in metrics[i:i + 1000]],
                             params=[Param(k, v) for k, v in params.items()] if i == 0 else [])
        client.set_terminated(run.info.run_id)

    t0 = time.perf_counter()
    if workers == 1:
        for c in children:
            one(c)
    else:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, children))
    return time.perf_counter() - t0


def pipeline(uri: str, experiment: str, tasks, workers: int, points: int | None) -> float:
    from pipeline.config import Tracking
    from pipeline.logqueue import open_tracker

    settings = Tracking(curve_points="all" if points is None else points)
    lt = open_tracker(uri, experiment, "bench", "bench", params={}, workers=workers, settings=settings)
    lt.logged_run_ids()
    t0 = time.perf_counter()
    for runs, curves in tasks:
        lt.log(runs, curves)
    lt.close()
    wall = time.perf_counter() - t0
    n = sum(len(r) for r, _ in tasks)
    assert lt.error is None, lt.error
    assert lt.logged_count == n, (lt.logged_count, n)
    return wall


def measure(store: str, uri: str, tasks, points_list, workers: int, cpu: Cpu, rounds: int) -> list[dict]:
    """Per history setting, ``rounds`` interleaved rounds of bare then pipeline (the order alternating),
    each on its own tasks: rates over all rounds, and the median of the per-round ratios."""
    import statistics

    rows = []
    bare(uri, f"warm-up-{time.time_ns()}", payloads(tasks[:2], None), workers)  # the server's first requests
    chunks = [tasks[r::rounds] for r in range(rounds)]
    for points in points_list:
        children = [payloads(chunk, points) for chunk in chunks]
        values = sum(len(m) for c in children for _, m, _ in c) / sum(len(c) for c in children)
        row = dict(store=store, history="all" if points is None else f"{points} points", values=values)
        wall = dict(bare=0.0, pipeline=0.0)
        used = dict(bare=[0.0, 0.0, 0.0], pipeline=[0.0, 0.0, 0.0])
        ratios = []
        for r, chunk in enumerate(chunks):
            took = {}
            for kind in (("bare", "pipeline") if r % 2 == 0 else ("pipeline", "bare")):
                exp = f"bench-{kind}-{points}-{time.time_ns()}"
                a = cpu.snapshot()
                took[kind] = (bare(uri, exp, children[r], workers) if kind == "bare"
                              else pipeline(uri, exp, chunk, workers, points))
                b = cpu.snapshot()
                wall[kind] += took[kind]
                used[kind] = [u + x for u, x in zip(used[kind], Cpu.since(a, b))]
            ratios.append(took["bare"] / took["pipeline"])
        n = sum(len(r) for r, _ in tasks)
        for kind in ("bare", "pipeline"):
            row[kind] = n / wall[kind]
            row[f"{kind}_cpu"] = [1000 * x / n for x in used[kind]]
        row["ratio"] = statistics.median(ratios)
        rows.append(row)
    return rows


ACCOUNTS = {"user": "basic-auth, a user account", "admin": "basic-auth, an admin account", "none": "no auth"}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300, help="children logged per measurement (over all rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of bare and pipeline")
    ap.add_argument("--workers", type=int, default=8, help="client threads (HTTP connections) for the server")
    ap.add_argument("--server-workers", type=int, default=2, help="mlflow server --workers")
    ap.add_argument("--points", default=None, help="curve_points compared, e.g. 16,all (default: the config's "
                                                    "default, then all)")
    ap.add_argument("--no-auth", action="store_true", help="the server without the basic-auth app")
    ap.add_argument("--accounts", default="user,admin", help="the basic-auth accounts logged as: user (permissions "
                                                            "checked on every request) and/or admin (not checked)")
    ap.add_argument("--study", default=str(ROOT / "results" / "widths"))
    ap.add_argument("--stores", default="sqlite,postgres")
    args = ap.parse_args()
    import os

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from tracking_server import tracking_server

    from pipeline.config import CURVE_POINTS
    from pipeline.logqueue import bound_http_calls

    bound_http_calls()
    points_list = [None if p == "all" else int(p) for p in (args.points or f"{CURVE_POINTS},all").split(",")]
    tasks, typical = real_tasks(args.runs, Path(args.study))
    print(f"before: {uptime()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in args.stores:
            rows += measure("SQLite file", f"sqlite:///{tmp}/mlflow.db", tasks, points_list, 1, Cpu(None, None),
                            args.rounds)
        if "postgres" in args.stores:
            with tracking_server(Path(tmp) / "server", auth=not args.no_auth, workers=args.server_workers) as server:
                cpu = Cpu(server.proc.pid, server.port)
                for account in (args.accounts.split(",") if server.auth else ["none"]):
                    if account != "none":
                        server.create_user(f"bench-{account}", "bench-password-1", admin=account == "admin")
                        os.environ.update(MLFLOW_TRACKING_USERNAME=f"bench-{account}",
                                          MLFLOW_TRACKING_PASSWORD="bench-password-1")
                    rows += measure(f"PostgreSQL server, {ACCOUNTS[account]}", server.uri, tasks, points_list,
                                    args.workers, cpu, args.rounds)
    print(f"after:  {uptime()}")
    print(f"{args.runs} children per row and client, in {args.rounds} interleaved rounds; payload: the shipped "
          f"study's runs with the median count of checkpoints ({typical}); server: mlflow server --workers "
          f"{args.server_workers}, client threads {args.workers}")
    print("| store | history | values/child | bare children/s | pipeline children/s | pipeline/bare (median of rounds) "
          "| CPU ms/child bare: client, server, PostgreSQL | pipeline: client, server, PostgreSQL "
          "| 2 cores could do (pipeline) |")
    print("|---|---|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        bc, pc = r["bare_cpu"], r["pipeline_cpu"]
        print(f"| {r['store']} | {r['history']} | {r['values']:.0f} | {r['bare']:.1f} | {r['pipeline']:.1f} | "
              f"{r['ratio']:.2f} | {bc[0]:.0f}, {bc[1]:.0f}, {bc[2]:.0f} | {pc[0]:.0f}, {pc[1]:.0f}, "
              f"{pc[2]:.0f} | {2000 / sum(pc):.1f}/s |")


if __name__ == "__main__":
    main()
