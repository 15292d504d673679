"""The layers sobolev < records < analysis < pipeline < notebooks (scripts/import_graph.py), and
the light imports they allow: the results tables and the analysis without torch, numba, Ray or MLflow."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "import_graph.py"
HEAVY = ("torch", "numba", "ray", "mlflow")


def graph(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_project_has_no_upward_import_no_cycle_and_no_project_import_inside_a_function():
    result = graph()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no violation" in result.stdout and "VIOLATION" not in result.stderr
    assert "records   -> sobolev" in result.stdout and "analysis  -> records" in result.stdout


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files, violation", [
    ({"sobolev/a.py": "from records import b\n", "records/b.py": ""}, "upward: sobolev.a -> records.b"),
    ({"records/a.py": "from .b import x\n", "records/b.py": "from .a import y\n"}, "cycle: records.a -> records.b"),
    ({"analysis/a.py": "def f():\n    from pipeline.b import x\n", "pipeline/b.py": "from analysis.a import f\n"},
     "cycle through imports inside functions"),
    ({"pipeline/a.py": "def f():\n    from . import b\n", "pipeline/b.py": ""},
     "inside a function: pipeline.a -> pipeline.b"),
])
def test_a_planted_violation_fails_the_check(tmp_path, files, violation):
    write(tmp_path, {"sobolev/__init__.py": "", "records/__init__.py": "", **files})
    result = graph("--root", str(tmp_path))
    assert result.returncode == 1 and violation in result.stderr, result.stdout + result.stderr


def test_annotations_under_type_checking_are_no_cycle(tmp_path):
    write(tmp_path, {"records/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from .b import x\n",
                     "records/b.py": "from .a import y\n"})
    result = graph("--root", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["analysis", "records", "records.tables", "records.identity", "sobolev.settings",
                                    "sobolev.record"])
def test_import_loads_no_heavy_library(module):
    code = f"import sys; import {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"import {module} loads {result.stdout.strip()}"


def test_no_package_imports_another_modules_private_names():
    """A name with a leading underscore stays in its module: what another module needs is public
    (named, documented) in the module that owns it."""
    import ast

    found = []
    for package in ("sobolev", "records", "analysis", "pipeline"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found
