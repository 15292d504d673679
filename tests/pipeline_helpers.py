"""Tiny sweep configurations built from the defaults, and readers of real results."""

from __future__ import annotations

import socket
import time
import urllib.request

import yaml

from pipeline.config import parse_config

TINY = dict(
    name="tiny",
    grid=dict(n=[4, 6], k=[1], m=[16, 64], delta=[0.5], bias=[False, True]),
    d=5,
    seeds=dict(init=3, data=[0]),
    training=dict(t_max=3.0, max_steps=300, eps=1e-6),
    resources=dict(num_cpus=1, replicas_per_task=2),
)


def tiny_dict(**overrides) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def tiny_config(**overrides):
    return parse_config(tiny_dict(**overrides))


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"nothing answered at {url} within {timeout} s")
        time.sleep(0.5)


def mlflow_children(uri: str, experiment: str) -> dict:
    """run_id tag -> MLflow run, for the child (training) runs of an experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'run'", max_results=10000)
    out = {}
    for r in runs:
        assert r.data.tags["run_id"] not in out, "duplicate MLflow run for one run_id"
        out[r.data.tags["run_id"]] = r
    return out


def start_head(env: dict, temp: str, num_cpus: int = 2) -> str:
    """`ray start --head` on free ports (another Ray on this machine may hold the defaults), its
    files under ``temp``; returns the dashboard address once the job API answers."""
    import os
    import shutil
    import subprocess
    import sys

    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    gcs, dash, agent, agent_grpc, metrics, runtime_env = (free_port() for _ in range(6))
    subprocess.run([ray_bin, "start", "--head", f"--port={gcs}", f"--num-cpus={num_cpus}", "--include-dashboard=true",
                    f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
                    f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                    f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, text=True, timeout=180)
    return f"http://127.0.0.1:{dash}"


def stop_cluster(temp: str) -> None:
    """Stop the cluster whose files are under ``temp`` and no other (`ray stop` would also stop
    the session's local_ray): its daemons name that directory on their command lines, and its
    workers exit with their raylet."""
    import contextlib

    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"]) if any(temp in part for part in p.info["cmdline"] or ())]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=30)


def log_from_two_drivers(a, b, results: list[dict]) -> None:
    """Trackers ``a`` and ``b`` (two drivers) log ``results[0]`` one after the other (``b`` has not
    seen ``a``'s children: it logs, then removes its own), then ``results[1]`` both at once."""
    import threading

    first, second = results[0], results[1]
    a.log(first["runs"], first["curves"])
    a.flush()
    b.log(first["runs"], first["curves"])
    b.flush()
    assert b.duplicates_removed == len(first["runs"])
    go = threading.Barrier(2)

    def log(t):
        go.wait()
        t.log(second["runs"], second["curves"])
        t.flush()

    threads = [threading.Thread(target=log, args=(t,)) for t in (a, b)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    a.close()
    b.close()
    assert a.error is None and b.error is None
