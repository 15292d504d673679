"""How long the pipeline's MLflow client waits on a tracking server that hangs, against the stated bound.

    PYTHONPATH=. python benchmarks/bench_degrade.py              # the HTTP settings of the test (bound 4.1 s)
    PYTHONPATH=. python benchmarks/bench_degrade.py --defaults   # the pipeline's own settings (bound 34 s)

Starts a real ``mlflow server`` on 127.0.0.1, opens a tracker on it as a driver does
(``pipeline.logqueue.open_tracker``, which sets the HTTP limits unless the environment has them),
then SIGSTOPs the server: the kernel still accepts connections, nobody answers. It times ``--calls``
MLflow calls, one after another, until each gives up, and prints each time against
``logqueue.degrade_after_s()`` (every attempt timing out, plus the backoff between them).
The target is a ratio at most 1 (a little over 1 is the client's own overhead on a busy machine).
tests/test_concurrency.py asserted a wall-clock bound on a whole sweep for this; the test now checks
that the sweep degrades and finishes while the server stays stopped, and this script gives the time.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TEST_HTTP = dict(MLFLOW_HTTP_REQUEST_TIMEOUT=2, MLFLOW_HTTP_REQUEST_MAX_RETRIES=1,
                 MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=0, MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, root: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--default-artifact-root", str(root / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            if time.time() > deadline:
                server.kill()
                raise SystemExit("mlflow server did not answer within 120 s")
            time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defaults", action="store_true", help="the pipeline's HTTP limits, not the test's")
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    if not args.defaults:
        os.environ.update({k: str(v) for k, v in TEST_HTTP.items()})
    from pipeline.logqueue import degrade_after_s, open_tracker

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(port, Path(tmp))
        try:
            t = open_tracker(f"http://127.0.0.1:{port}", "bench_degrade", "bench", "c", params={})
            client, exp = t.tracker.client, t.tracker.experiment_id
            bound = degrade_after_s()  # open_tracker has set the limits the environment did not
            os.killpg(server.pid, signal.SIGSTOP)
            print(f"load average {os.getloadavg()[0]:.2f}; settings: "
                  + ", ".join(f"{k}={os.environ[k]}" for k in TEST_HTTP) + f"; bound {bound:.3g} s")
            print("\n| call | gave up after s | bound s | ratio | error |")
            print("|---:|---:|---:|---:|---|")
            for i in range(args.calls):
                t0 = time.perf_counter()
                try:
                    client.search_runs([exp], max_results=1)
                    error = "none: the call returned"
                except Exception as exc:  # noqa: BLE001 - what a driver sees
                    error = type(exc).__name__
                took = time.perf_counter() - t0
                print(f"| {i + 1} | {took:.2f} | {bound:.3g} | {took / bound:.2f} | {error} |")
            print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
        finally:
            try:
                os.killpg(server.pid, signal.SIGCONT)
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
