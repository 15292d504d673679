"""MLflow logging throughput: child runs per second to a local ``mlflow server``, the driver's
serial logging (before) against pipeline/logqueue.py's logging thread (after), side by side.

    PYTHONPATH=. python benchmarks/bench_logging.py [--runs 1000] [--workers 8] [--server-workers 4]

Starts ``mlflow server`` on 127.0.0.1 (a fresh SQLite store in a temporary directory), trains one
real task and replicates its records under fresh run_ids (each child: the run's params, tags,
summary metrics and its checkpoint curves, as a sweep logs them), then logs ``--runs`` children

- before: ``Tracker.log`` task by task, in the caller (what the driver did: ~3 HTTP calls per run,
  one after the other, the driver blocked meanwhile);
- after: ``LoggingThread.log`` task by task (returns at once) and the time until the queue is
  drained, with its de-duplication searches and parent heartbeat.

Prints runs/s for both, and the time the caller spent in ``log`` (the driver's critical path).
And the server's own ceiling, measured beside them: the requests per second it answers on
``GET /health`` (no store access) over the same number of connections. A child is three
requests (``create_run``, ``log_batch``, ``update_run``: the REST API has nothing smaller), so
no client logs more than a third of that many children a second to this server.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def tasks_of(n_runs: int, per_task: int = 16) -> list[tuple[list[dict], dict]]:
    """``n_runs`` child records in tasks of ``per_task``, cloned from one real task."""
    from pipeline.grid import plan
    from pipeline.task import execute
    from pipeline_helpers import tiny_config

    cfg = tiny_config(grid=dict(n=[4], m=[16], bias=[False]), seeds=dict(init=per_task),
                      resources=dict(replicas_per_task=per_task))
    res = execute(plan(cfg)[0][0])
    out, i = [], 0
    while i < n_runs:
        runs, curves = [], {k: [] for k in res["curves"]}
        for rec in res["runs"][: min(per_task, n_runs - i)]:
            new = f"bench-{i:07d}"
            runs.append(dict(rec, run_id=new))
            for j, rid in enumerate(res["curves"]["run_id"]):
                if rid == rec["run_id"]:
                    for k in curves:
                        curves[k].append(new if k == "run_id" else res["curves"][k][j])
            i += 1
        out.append((runs, curves))
    return out


def server_ceiling(uri: str, connections: int, seconds: float = 5.0) -> float:
    """Requests per second the server answers on ``/health`` over ``connections`` connections."""
    import threading

    import requests

    done, stop = [0] * connections, time.perf_counter() + seconds

    def worker(i):
        with requests.Session() as s:
            while time.perf_counter() < stop:
                s.get(f"{uri}/health", timeout=30).raise_for_status()
                done[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8, help="the logging thread's HTTP connections")
    ap.add_argument("--server-workers", type=int, default=4, help="mlflow server --workers")
    args = ap.parse_args()
    from pipeline.logqueue import bound_http_calls, open_tracker
    from pipeline.tracking import Tracker
    from pipeline_helpers import free_port, wait_http

    bound_http_calls()
    tasks = tasks_of(args.runs)
    n_metrics = sum(len(r) for r in tasks[0][0][0]) + len(tasks[0][1]["run_id"]) // len(tasks[0][0])
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers",
             str(args.server_workers), "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
             "--default-artifact-root", f"{tmp}/artifacts"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_http(f"{uri}/health", timeout=120)
            ceiling = server_ceiling(uri, args.workers)
            rows = []
            # before: serial, in the caller
            t = Tracker(uri, "bench-before", "bench", "bench", params={})
            t.logged_run_ids()
            t0 = time.perf_counter()
            for runs, curves in tasks:
                t.log(runs, curves)
            wall = time.perf_counter() - t0
            t.close()
            rows.append(("before: Tracker.log in the driver, serial", wall, wall))
            # after: the logging thread
            lt = open_tracker(uri, "bench-after", "bench", "bench", params={}, workers=args.workers)
            lt.logged_run_ids()
            t0 = time.perf_counter()
            for runs, curves in tasks:
                lt.log(runs, curves)
            enqueue = time.perf_counter() - t0
            lt.close()
            wall = time.perf_counter() - t0
            assert lt.error is None, lt.error
            assert lt.logged_count == args.runs, (lt.logged_count, args.runs)
            rows.append((f"after: LoggingThread, {args.workers} connections", wall, enqueue))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{args.runs} child runs (~{n_metrics} metric values each) to mlflow server --workers "
          f"{args.server_workers} on 127.0.0.1 (SQLite store)")
    print(f"| {'':44} | runs/s | wall s | driver blocked in log(), s |")
    print(f"|{'-' * 46}|-------:|-------:|---------------------------:|")
    for name, wall, blocked in rows:
        print(f"| {name:44} | {args.runs / wall:6.0f} | {wall:6.1f} | {blocked:26.3f} |")
    print(f"speed-up {rows[0][1] / rows[1][1]:.1f}x (target: >= 100 runs/s after)")
    print(f"the server's ceiling: {ceiling:.0f} requests/s on GET /health over {args.workers} connections, so at "
          f"most {ceiling / 3:.0f} children/s at 3 requests a child; the logging thread reached "
          f"{args.runs / rows[1][1] / (ceiling / 3):.0%} of it")


if __name__ == "__main__":
    main()
