"""The notebooks' results directory: found from the package, not the working directory."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_dir_from_any_working_directory(tmp_path):
    code = "from analysis.paths import results_dir; print(results_dir())"
    for env_value, expected in ((None, ROOT / "results" / "widths"), ("runs/x", ROOT / "runs" / "x"),
                                (str(tmp_path / "abs"), tmp_path / "abs")):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        if env_value:
            env["SOBOLEV_RESULTS"] = env_value
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.strip()) == expected
