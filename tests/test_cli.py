"""The command line: bad input is refused with exit code 2 and one line naming the
field, before anything is written or Ray starts; --dry-run estimates and runs nothing."""

import json
import subprocess
import sys
from pathlib import Path

from pipeline_helpers import free_port, tiny_dict, write_yaml

# Each case: a config (dict, or raw text), extra CLI args, and what the error must name.
# Run in one fresh interpreter, so that "Ray not started" is observable.
CHECKER = r"""
import contextlib, io, json, os, sys
import ray
from pipeline.cli import main
results = []
for case in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(case["argv"])
    results.append(dict(code=code, err=err.getvalue(), ray=ray.is_initialized()))
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
    ]


def test_bad_inputs_exit_2_one_line_nothing_written_no_ray(tmp_path):
    cases = _cases(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    argv = [dict(argv=["run", *args, "--num-cpus", "1"] + ([] if "--out" in args else ["--out", str(tmp_path / "o")])
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
        assert not res["ray"], name
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_dry_run_estimates_and_runs_nothing(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict())
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", cfg, "--out", str(tmp_path / "out"), "--dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 cells x 3 seeds = 24 runs" in proc.stdout
    assert "tasks: 16" in proc.stdout and "FLOPs" in proc.stdout and "GPU-hours" in proc.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
