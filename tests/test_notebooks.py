"""The analysis notebooks run end to end on a real (smoke) results directory, and each paired
``.ipynb`` holds the same cells as its ``.py``.

Run as a script to re-execute the notebooks into their ``.ipynb`` (outputs included) on a results
directory: ``python tests/test_notebooks.py results/cpu_study``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("analyze", "dynamics")
CELL_TIMEOUT = 300  # seconds per cell
MAX_IPYNB_BYTES = 2_500_000  # the study's outputs at 80 dpi: analyze 1.5 MB, dynamics 1.9 MB
# Figures each notebook draws on the smoke sweep (fewer would mean a section silently drew nothing).
MIN_IMAGES = {"analyze": 6, "dynamics": 14}


def execute(name: str, results: str | Path, cwd: Path = NOTEBOOKS):
    """Execute ``notebooks/<name>.py`` with ``SOBOLEV_RESULTS=results`` from ``cwd``; return the notebook."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute(env={**os.environ, "SOBOLEV_RESULTS": str(results)})
    return nb


def outputs(nb, kind: str) -> list:
    """Every output of the code cells: ``kind='image'`` the PNGs, ``'text'`` the texts, ``'error'`` the errors."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if kind == "error" and out.output_type == "error":
                found.append(f"{out.ename}: {out.evalue}")
            elif kind == "image" and "image/png" in out.get("data", {}):
                found.append(out["data"]["image/png"])
            elif kind == "text":
                if out.output_type == "stream":
                    found.append(out.text)
                elif "text/plain" in out.get("data", {}):
                    found.append(out["data"]["text/plain"])
    return found


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """The smoke sweep, run once by the real CLI into a temporary directory."""
    out = tmp_path_factory.mktemp("smoke") / "results"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always an embedded local Ray
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "configs/smoke.yaml", "--out", str(out),
                           "--no-mlflow", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (f"smoke sweep failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert any((out / "runs").glob("*.parquet")) and any((out / "curves").glob("*.parquet"))
    return out


@pytest.fixture(scope="module")
def executed(smoke_results):
    """Both notebooks executed on the smoke results (from notebooks/, as Jupyter would)."""
    done = {}
    for name in NAMES:
        try:
            done[name] = execute(name, smoke_results)
        except nbclient.exceptions.CellExecutionError as err:
            pytest.fail(f"notebooks/{name}.py: a cell failed on the smoke sweep:\n{err}")
    return done


@pytest.mark.slow  # executes both notebooks on a smoke sweep run by the CLI
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_smoke_sweep(executed, name):
    nb = executed[name]
    assert outputs(nb, "error") == []
    images = outputs(nb, "image")
    assert len(images) >= MIN_IMAGES[name], f"{name}: only {len(images)} figures"
    text = "\n".join(outputs(nb, "text"))
    assert "results directory:" in text


@pytest.mark.slow  # executes both notebooks on a smoke sweep run by the CLI
def test_analyze_prints_exponents_and_handles_censored_cells(executed):
    text = "\n".join(outputs(executed["analyze"], "text"))
    assert "Runs per part of the study" in text
    for name in ("interpolation", "settled", "settled_both", "regime"):  # every registered criterion
        assert name in text
    assert "Exponents of the direct threshold m*" in text
    for column in ("theory_p", "n_censored", "note"):
        assert column in text
    # the smoke sweep leaves most thresholds censored: the table says so instead of failing
    assert "not enough uncensored cells" in text
    assert f"> {max(load_config(ROOT / 'configs/smoke.yaml').grid.m)}" in text  # censored thresholds shown as bounds, not numbers
    assert "Log-log slope of the loss floor" in text
    assert "Floor law coefficients per group" in text and "implied by the floor law" in text
    assert "beside the floor law's m*(eps')" in text
    assert "variants (intervals within" in text  # the sensitivity statement
    # the smoke sweep has no frozen runs, no k = 0 and one step factor: the controls say so instead of failing
    for control in ("frozen-pattern control", "k = 0 control", "step-factor control"):
        assert f"{control}: not in this results directory" in text
    assert "the theorem's constant is unknown, compare exponents only" in text


@pytest.mark.slow  # executes both notebooks on a smoke sweep run by the CLI
def test_dynamics_reports_slopes_and_rates(executed):
    text = "\n".join(outputs(executed["dynamics"], "text"))
    assert "Log-log slope of the weight movement against m (Lemma 4: -1/2)" in text
    assert "max_weight_move" in text and "expected_in_interval" in text
    assert "flip_fraction" in text and "jump_norm_total" in text
    assert "flips_gross_total" in text and "flips_net_total" in text and "flip_ratio" in text
    assert "deriv_rel_final" in text and "value_rel_final" in text
    assert "Log-log slope of the H drift against m" in text
    assert "frozen-pattern control for this cell: not in this results directory" in text
    assert "prop1_ratio" in text


@pytest.mark.parametrize("name", NAMES)
def test_results_path_resolves_from_the_root_and_from_notebooks(name, tmp_path, monkeypatch):
    """The parameters cell finds the repository root from either directory; absolute paths pass through."""
    first = next(c for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if c.cell_type == "code")
    assert "RESULTS = os.environ.get(\"SOBOLEV_RESULTS\", \"results/cpu_study\")" in first.source
    monkeypatch.delenv("SOBOLEV_RESULTS", raising=False)
    for cwd in (ROOT, NOTEBOOKS):
        monkeypatch.chdir(cwd)
        scope: dict = {}
        exec(compile(first.source, f"{name}-parameters", "exec"), scope)  # noqa: S102 - our own notebook cell
        assert scope["RESULTS"] == ROOT / "results" / "cpu_study"
        assert 0 < scope["DELTA_FAIL"] < 1 and scope["EPS"] is None
    monkeypatch.setenv("SOBOLEV_RESULTS", str(tmp_path))
    scope = {}
    exec(compile(first.source, f"{name}-parameters", "exec"), scope)  # noqa: S102
    assert scope["RESULTS"] == tmp_path


@pytest.mark.slow
def test_the_documented_notebook_command_works_from_any_directory(smoke_results, tmp_path):
    """`python -m pipeline notebooks`, as the documentation gives it, run from a directory that is not
    the repository: it finds the notebooks from the package and executes them into their .ipynb."""
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert "python -m pipeline notebooks --results /data/smoke" in docs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "notebooks", "analyze", "--results", str(smoke_results),
                           "--into", "executed"], cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nb = jupytext.read(elsewhere / "executed" / "analyze.ipynb")
    assert outputs(nb, "error") == [] and len(outputs(nb, "image")) >= MIN_IMAGES["analyze"]
    assert f"results directory: {smoke_results}" in "\n".join(outputs(nb, "text"))
    bad = subprocess.run([sys.executable, "-m", "pipeline", "notebooks", "analyse"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: notebooks: no notebook 'analyse'")


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_in_sync_with_py(name):
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    ipynb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")

    def cells(nb):
        return [(c.cell_type, c.source.strip()) for c in nb.cells]

    assert cells(ipynb) == cells(py), (f"notebooks/{name}.ipynb is out of date: run "
                                       f"`jupytext --sync notebooks/{name}.py` (or re-execute it)")
    assert (NOTEBOOKS / f"{name}.ipynb").stat().st_size < MAX_IPYNB_BYTES


def main(argv: list[str]) -> None:
    """Execute both notebooks on results directory ``argv[0]`` and write them into their ``.ipynb``."""
    if len(argv) != 1:
        sys.exit("usage: python tests/test_notebooks.py RESULTS_DIR")
    for name in NAMES:
        nb = execute(name, argv[0])
        jupytext.write(nb, NOTEBOOKS / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb ({(NOTEBOOKS / f'{name}.ipynb').stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
