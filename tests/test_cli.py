"""The command line: bad input is refused with exit code 2 and one line naming the
field, before anything is written or Ray starts; --dry-run estimates and runs nothing."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import free_port, tiny_dict, write_yaml

import sobolev
from pipeline.config import ConfigError, load_config, parse_config

SECRET = "pa55-w0rd-in-a-uri"  # must never be printed

# Each case: a config (dict, or raw text), extra CLI args, and what the error must name.
# Run in one fresh interpreter, so that "Ray not started" is observable.
CHECKER = r"""
import contextlib, io, json, os, sys
import ray
from pipeline.cli import main
results = []
for case in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(case["argv"])
        except SystemExit as exc:  # argparse's own errors (bad option values)
            code = exc.code
    results.append(dict(code=code, err=err.getvalue(), out=out.getvalue(), ray=ray.is_initialized()))
print(json.dumps(results))
"""


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    good = tiny_dict()
    other = tmp / "other_sweep"
    other.mkdir()
    (other / "sweep.json").write_text(json.dumps(dict(sweep="elsewhere", fingerprint="0123456789abcdef")))
    blocker = tmp / "a_file"
    blocker.write_text("not a directory")
    port = free_port()  # nothing listens here

    def cfg(name, data):
        path = tmp / f"{name}.yaml"
        if isinstance(data, str):
            path.write_text(data)
            return str(path)
        return write_yaml(path, data)

    return [
        ("malformed", [cfg("malformed", "name: x\ngrid: {n: [4,\n")], "malformed YAML"),
        ("missing", [str(tmp / "nope.yaml")], "no such config file"),
        ("unknown", [cfg("unknown", tiny_dict(colour="blue"))], "colour: unknown key"),
        ("wrongtype", [cfg("wrongtype", tiny_dict(grid=dict(m="wide")))], "grid.m"),
        ("empty", [cfg("empty", tiny_dict(grid=dict(n=[])))], "grid.n"),
        ("k_ge_d", [cfg("k_ge_d", tiny_dict(grid=dict(k=[5])))], "k=5 must be < d=5"),
        ("delta0", [cfg("delta0", tiny_dict(grid=dict(delta=[0.0])))], "grid.delta"),
        ("delta3", [cfg("delta3", tiny_dict(grid=dict(delta=[3.0])))], "grid.delta"),
        ("unreachable", [cfg("unreachable", tiny_dict(grid=dict(n=[40], delta=[1.3]), d=3))], "beyond the separation"),
        ("negseed", [cfg("negseed", tiny_dict(seeds=dict(init=[-3])))], "seeds.init"),
        ("step0", [cfg("step0", tiny_dict(training=dict(step_factor=0)))], "training.step_factor"),
        ("unwritable", [cfg("unwritable", good), "--out", str(blocker / "out")], "output: cannot write"),
        ("other_sweep", [cfg("other", good), "--out", str(other)], "another sweep configuration"),
        ("no_server", [cfg("noserver", good), "--out", str(tmp / "ns"), "--tracking-uri",
                       f"http://127.0.0.1:{port}"], "--no-mlflow"),
        # the five of issue 13 (eps: 1e-6 is accepted: test_numeric_strings_are_numbers)
        ("uri_scheme", [cfg("uri1", good), "--tracking-uri", "htp://127.0.0.1:5000"], "not a tracking URI"),
        ("uri_words", [cfg("uri2", good), "--tracking-uri", "not a uri"], "not a tracking URI"),
        ("proc_out", [cfg("proc", good), "--out", "/proc/x"], "output: cannot write to /proc/x"),
        ("cpus_neg", [cfg("cpus1", good), "--num-cpus", "-1"], "--num-cpus: -1 CPUs"),
        ("cpus_zero", [cfg("cpus0", good), "--num-cpus", "0"], "--num-cpus: 0 CPUs"),
        ("grace_neg", [cfg("grace", good), "--grace", "-1"], "--grace: -1.0 is not a number of seconds >= 0"),
        ("timeout0", [cfg("timeout", good), "--task-timeout", "0"], "--task-timeout: 0.0 is not a number of seconds"),
        ("timeout_cfg", [cfg("timeout_cfg", tiny_dict(resources=dict(task_timeout_s=-5)))],
         "resources.task_timeout_s"),
        ("seeds0", [cfg("seeds0", tiny_dict(seeds=dict(init=0)))], "seeds.init: a count of seeds must be >= 1; give a count or a list of seeds (got 0)"),
        # credentials belong in the environment; the password is never shown (checked below)
        ("uri_password", [cfg("uri3", good), "--tracking-uri", f"http://u:{SECRET}@127.0.0.1:{port}"],
         "carries credentials"),
        ("config_uri_password", [cfg("uri4", tiny_dict(tracking=dict(uri=f"http://u:{SECRET}@127.0.0.1:5000")))],
         "tracking.uri: carries credentials"),
        ("curve_points", [cfg("points", tiny_dict(tracking=dict(curve_points=1)))], "tracking.curve_points"),
    ]


def test_bad_inputs_exit_2_one_line_nothing_written_no_ray(tmp_path):
    cases = _cases(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    argv = [dict(argv=["run", *args] + ([] if "--num-cpus" in args else ["--num-cpus", "1"])
                 + ([] if "--out" in args else ["--out", str(tmp_path / "o")])
                 + ([] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]))
            for _, args, _ in cases]
    proc = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(argv)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (name, _, field), res in zip(cases, results):
        lines = res["err"].strip().splitlines()
        assert res["code"] == 2, (name, res)
        assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], (name, lines)
        assert "(got 0) (got 0)" not in lines[0] and len(lines[0]) < 400, (name, lines)
        assert SECRET not in res["err"] + res["out"], (name, lines)
        assert not res["ray"], name
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.slow  # the CLI in subprocesses, timing this machine's calibration
def test_dry_run_estimates_once_per_machine_and_runs_nothing(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(resources=dict(num_gpus=0.5)))
    env = dict(os.environ, SOBOLEV_CACHE=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "pipeline", "run", cfg, "--out", str(tmp_path / "out"), "--dry-run"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "8 cells x 1 data seeds x 1 training setting(s) x 3 seeds = 24 runs" in proc.stdout
    assert "tasks: 16" in proc.stdout and "this machine: up to about" in proc.stdout
    assert "error on a held-out shape" in proc.stdout
    assert "GPUs (2 task(s) per GPU" in proc.stdout and "  H100 " in proc.stdout
    cache = tmp_path / "cache" / "calibration.json"
    calibrated = cache.read_text()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert again.returncode == 0 and cache.read_text() == calibrated  # not timed again

    def machine(text):
        return next(line for line in text.splitlines() if line.startswith("this machine")).split(" (")[0]

    assert machine(again.stdout) == machine(proc.stdout)  # the same time: the same calibration and spectra
    assert "4 exact (4 cached, 0 measured now" in again.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_numeric_strings_are_numbers(tmp_path):
    """`eps: 1e-6` is a string to YAML 1.1 (no dot): every float field takes it as the number."""
    path = tmp_path / "c.yaml"
    path.write_text(write_yaml(tmp_path / "base.yaml", tiny_dict()) and (tmp_path / "base.yaml").read_text()
                    .replace("eps: 1.0e-06", "eps: 1e-6").replace("delta:\n  - 0.5", "delta:\n  - 5e-1"))
    assert "eps: 1e-6" in path.read_text() and "5e-1" in path.read_text()
    cfg = load_config(path)
    assert cfg.training.eps == 1e-6 and cfg.grid.delta == [0.5]
    cfg = parse_config(tiny_dict(training=dict(step_factor="1", t_max=" 3e0"), resources=dict(num_cpus="2"),
                                 delta_fail="1e-1"))
    got = (cfg.training.step_factor, cfg.training.t_max, cfg.resources.num_cpus, cfg.delta_fail)
    assert got == (1.0, 3.0, 2.0, 0.1)
    with pytest.raises(ConfigError, match="training.eps: not a number; write it like 1.0e-6"):
        parse_config(tiny_dict(training=dict(eps="tiny")))


@pytest.mark.slow  # the CLI's help and version in subprocesses
def test_help_version_every_option_explained():
    from pipeline.cli import _parser

    top = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0
    for word in ("run", "search", "sync", "status", "submit", "exit codes:", "  3  every run in Parquet"):
        assert word in top.stdout, word
    assert " plan" not in top.stdout
    version = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"python -m pipeline {sobolev.__version__}"
    parser = _parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


@pytest.mark.slow  # the status and search CLIs in subprocesses
def test_status_per_cell_and_search_dry_run(tmp_path):
    from pipeline.grid import plan
    from pipeline.task import execute
    from records.tables import prepare, write_task

    data = tiny_dict(grid=dict(n=[4], m=[16, 32], bias=[False]),
                     search=dict(m_min=16, m_max=64, extra_seeds=2))
    path, out = write_yaml(tmp_path / "c.yaml", data), tmp_path / "out"
    cfg = load_config(path)
    tasks, total = plan(cfg)
    prepare(out, cfg.fingerprint(), cfg.name)
    result = execute(tasks[0])
    write_task(out, tasks[0].task_id, result["runs"], result["curves"])
    proc = subprocess.run([sys.executable, "-m", "pipeline", "status", path, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = tasks[0].cell.label()
    row = next(line.split() for line in proc.stdout.splitlines() if line.strip().startswith(first))
    done = len(tasks[0].seeds)
    assert row[1:5] == ["3", str(done), "0", str(3 - done)] and row[5] == result["runs"][0]["created_at"]
    assert f"{done} of {total} runs done" in proc.stdout
    env = dict(os.environ, SOBOLEV_CACHE=str(tmp_path / "cache"))
    dry = subprocess.run([sys.executable, "-m", "pipeline", "search", path, "--out", str(tmp_path / "s"),
                          "--dry-run"], capture_output=True, text=True, timeout=300, env=env)
    assert dry.returncode == 0, dry.stderr
    # every width of the ladder 16, 32, 64 for 3 seeds + 2 extra: an upper bound on the search's runs
    assert "search: at most every width" in dry.stdout and "1 cells x" not in dry.stdout
    assert "3 cells x 1 data seeds x 1 training setting(s) x 5 seeds = 15 runs" in dry.stdout
    assert not (tmp_path / "s").exists()


def test_progress_weights_follow_measured_task_times():
    """The progress bar counts estimated task-seconds: each task's steps, bounded from above by the
    estimate (checked against the steps it really trains), times a per-step cost that grows with the
    batch's size, so the big task weighs more. How close the estimated ratio comes to the measured one
    (within a factor of 3) is a timing figure: benchmarks/bench_estimate.py prints it."""
    from pipeline.estimate import run_steps, task_weights
    from pipeline.grid import plan
    from pipeline.task import execute

    cfg = parse_config(tiny_dict(grid=dict(n=[6], m=[16, 4096], bias=[False]), seeds=dict(init=2),
                                 training=dict(eps=1e-30, t_max=3.0, max_steps=300)))
    tasks, _ = plan(cfg)
    weights = task_weights(cfg, tasks)
    for t in tasks:
        steps = max(rec["steps"] for rec in execute(t)["runs"])
        assert 0 < steps <= run_steps(t.cell, t.train), (t.cell.m, steps, run_steps(t.cell, t.train))
    small, big = sorted(tasks, key=lambda t: t.cell.m)
    estimated = weights[big.task_id] / weights[small.task_id]
    assert estimated > 1, estimated
