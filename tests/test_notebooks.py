"""The analysis notebooks run end to end on a real (smoke) results directory, and each paired
``.ipynb`` holds the same cells as its ``.py``.

Run as a script to re-execute the notebooks into their ``.ipynb`` (outputs included) on a results
directory: ``python tests/test_notebooks.py results/widths`` (after ``python -m pipeline report results/widths``, so
that ``analyze`` shows the shipped tables).
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
MAX_IPYNB_BYTES = 2_500_000  # the partial width study's outputs at 80 dpi: analyze 0.6 MB, dynamics 1.0 MB
# Figures each notebook draws on the smoke sweep (fewer would mean a section silently drew nothing).  The smoke
# sweep's budget (12/lambda_*) is shorter than every horizon of the width study: analyze draws the bias part's
# censored widths only; dynamics the loss curves, the survival curves of both parts and the mechanism.
MIN_IMAGES = {"analyze": 1, "dynamics": 4}


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
def executed(smoke_sweep):
    """Both notebooks executed on the smoke results (from notebooks/, as Jupyter would)."""
    done = {}
    for name in NAMES:
        try:
            done[name] = execute(name, smoke_sweep)
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
def test_analyze_reports_what_the_smoke_sweep_cannot_observe(executed):
    text = "\n".join(outputs(executed["analyze"], "text"))
    assert "report computed here: no report in" in text  # no shipped tables next to the smoke sweep
    assert "Runs per part of the study" in text
    # the smoke budget (12/lambda_*) is shorter than every horizon: NaN with a note, never an error
    assert "T=48/lambda_* is beyond the runs' budget 12/lambda_*: not observed" in text
    assert "m_lazy: no run observed through the drift horizon 24/lambda_*: not observed" in text
    assert "the main part is observed at none of the horizons" in text
    for part in ("long", "drift", "step"):
        assert f"part '{part}': no runs in these results" in text
    assert "The laws of the widths" in text and "Published laws" in text
    for paper in ("cocola_hand_2020", "du_2019", "song_yang_2019", "oymak_soltanolkotabi_2020"):
        assert paper in text
    assert "fewer than two observed horizons" in text
    assert "step-factor check: not in this results directory" in text
    assert "predict_width(32, 2, 0.5, d=6, quantity='conv'):" in text and "has no law for quantity='conv'" in text
    # the bias part is observed at 12/lambda_*: its widths are censored bounds, not numbers
    assert f"> {max(load_config(ROOT / 'configs/smoke.yaml').grid.m)}" in text


@pytest.mark.slow  # executes both notebooks on a smoke sweep run by the CLI
def test_dynamics_reports_survival_drift_and_mechanism(executed):
    text = "\n".join(outputs(executed["dynamics"], "text"))
    assert "trend per width" in text
    assert "at the runs' horizon" in text and "still converging" in text
    assert "drift: no run observed through 24/lambda_*" in text
    assert "late_rate = c + b1 lambda_min_late + b2 jump_rate_late (expected b1 = 2, b2 = -1)" in text
    assert "The jumps' scaling" in text and "Medians per trend and width" in text
    assert "long part: not in this results directory" in text


@pytest.mark.parametrize("name", NAMES)
def test_results_path_resolves_from_the_root_and_from_notebooks(name, tmp_path, monkeypatch):
    """The parameters cell finds the repository root from either directory; absolute paths pass through."""
    first = next(c for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if c.cell_type == "code")
    assert "RESULTS = os.environ.get(\"SOBOLEV_RESULTS\", \"results/widths\")" in first.source
    monkeypatch.delenv("SOBOLEV_RESULTS", raising=False)
    for cwd in (ROOT, NOTEBOOKS):
        monkeypatch.chdir(cwd)
        scope: dict = {}
        exec(compile(first.source, f"{name}-parameters", "exec"), scope)  # noqa: S102 - our own notebook cell
        assert scope["RESULTS"] == ROOT / "results" / "widths"
        assert 0 < scope["DELTA_FAIL"] < 1 and scope["EPS"] == 1e-8
    monkeypatch.setenv("SOBOLEV_RESULTS", str(tmp_path))
    scope = {}
    exec(compile(first.source, f"{name}-parameters", "exec"), scope)  # noqa: S102
    assert scope["RESULTS"] == tmp_path


@pytest.mark.slow
def test_the_documented_notebook_command_works_from_any_directory(smoke_sweep, tmp_path):
    """`python -m pipeline notebooks`, as the documentation gives it, run from a directory that is not
    the repository: it finds the notebooks from the package and executes them into their .ipynb."""
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert "python -m pipeline notebooks --results /data/smoke" in docs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "notebooks", "analyze", "--results", str(smoke_sweep),
                           "--into", "executed"], cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    nb = jupytext.read(elsewhere / "executed" / "analyze.ipynb")
    assert outputs(nb, "error") == [] and len(outputs(nb, "image")) >= MIN_IMAGES["analyze"]
    assert f"results directory: {smoke_sweep}" in "\n".join(outputs(nb, "text"))
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
