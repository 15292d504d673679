"""The README and docs/: a first screen that reads in a minute, sentences under about 40 words
(scripts/sentences.py), relative links that resolve inside the project, and .ci/run doing what
the README says (its install command, then its test commands)."""

import importlib.util
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIRST_SCREEN = 40  # lines
MOST_WORDS = 40


def _sentences_module():
    spec = importlib.util.spec_from_file_location("sentences", ROOT / "scripts" / "sentences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sentences = _sentences_module()


def _readme() -> list[str]:
    return (ROOT / "README.md").read_text().splitlines()


def _bash_blocks(lines: list[str]) -> list[list[str]]:
    blocks, current = [], None
    for line in lines:
        if line.startswith("```bash"):
            current = []
        elif line.startswith("```") and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line.split("  #")[0].strip())
    return blocks


def test_the_readme_first_screen_holds_question_install_test_main_job_and_finding():
    lines = _readme()
    screen = "\n".join(lines[:FIRST_SCREEN])
    assert len(lines) <= 2 * FIRST_SCREEN, f"README.md has {len(lines)} lines; move detail to docs/"
    assert "?" in "\n".join(lines[:5]), "the question comes first"
    for needed in ('pip install torch==2.13.0 -e ".[dev]"', "python -m pytest -q", "python -m pytest -q -m slow",
                   "python -m pipeline run configs/smoke.yaml", "## Finding"):
        assert needed in screen, f"{needed!r} is not on the README's first {FIRST_SCREEN} lines"
    start = lines.index("## Finding") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    finding = [line for line in lines[start:end] if line.strip()]
    assert 0 < len(finding) <= 8, f"the finding takes {len(finding)} lines; at most 8"
    assert "](docs/FINDINGS.md" in "\n".join(finding), "the finding links to the whole one"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_sentence_over_about_40_words(path):
    long = [(n, no, s[:120]) for n, no, s in sentences.sentences(path) if n > MOST_WORDS]
    assert not long, f"{path.name}: sentences over {MOST_WORDS} words (line, words): {long}"


def test_sentence_counter_splits_where_a_reader_does():
    text = ("# A heading\n\nOne sentence, e.g. `x` here, with i.e. more. Then `code` starts one? "
            "Yes! (A bracket.)\n\n- an item\n  continued.\n- another\n\n| a b | c |\n|---|---|\n| d | e f g |\n"
            "```bash\nnot counted at all\n```\n")
    found = [s for _, unit in sentences.units(text) for s in sentences.split_sentences(unit)]
    assert found == ["A heading", "One sentence, e.g. `x` here, with i.e. more.", "Then `code` starts one?", "Yes!",
                     "(A bracket.)", "an item continued.", "another", "a b", "c", "d", "e f g"]
    assert sentences.words("a `python -m x` b, 3 -- (c)") == 7


def test_sentence_script_fails_on_a_long_sentence(tmp_path):
    md = tmp_path / "long.md"
    md.write_text("Short one. Word " + " ".join(["word"] * MOST_WORDS) + ".\n")
    assert sentences.main([str(md)]) == 1
    md.write_text("Short one. Word " + " ".join(["word"] * (MOST_WORDS - 1)) + ".\n")
    assert sentences.main([str(md)]) == 0


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_project(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    links = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    for target in links:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.is_relative_to(ROOT), f"{path.name}: {target} points outside the project"
        assert dest.exists(), f"{path.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            slugs = {_slug(line.lstrip("#")) for line in dest.read_text().splitlines() if line.startswith("#")}
            assert anchor in slugs, f"{path.name}: no heading #{anchor} in {dest.name}"


def test_nothing_points_outside_the_project():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    hits = [f for f in tracked if f.endswith((".md", ".py", ".ipynb", ".yaml", ".toml"))
            and (ROOT / f).is_file() and re.search(r"shared/MATH\.md|\.\./shared\b", (ROOT / f).read_text())]
    assert hits == [], hits


def test_ci_runs_the_readme_install_then_its_test_commands():
    readme = [cmd for block in _bash_blocks(_readme()) for cmd in block if cmd]
    install = next(c for c in readme if "pip install" in c)
    tests = [c for c in readme if c.startswith("python -m pytest")]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    pip = install.split("&&")[-1].strip().replace("pip install", "pip install -q")
    assert pip in ci, f".ci/run does not run the README's install command {pip!r}"
    steps = [ci.index(pip)] + [next(i for i, line in enumerate(ci) if line.startswith(t)) for t in tests]
    assert steps == sorted(steps) and len(tests) >= 2, (tests, steps)


def _law(laws, quantity, method, k_group, term, delta=None):
    sel = (laws["quantity"] == quantity) & (laws["method"] == method) & (laws["k_group"] == k_group) \
        & (laws["term"] == term) & (~laws["bias"].astype(bool))
    sel &= laws["delta"].isna() if delta is None else np.isclose(laws["delta"], delta)
    (row,) = laws[sel].itertuples()
    return f"{row.estimate:.2f} [{row.lo:.2f}, {row.hi:.2f}]"


def test_the_readme_numbers_are_the_shipped_studys():
    """Each number of the README's finding, written from results/widths (laws.csv, widths.csv and the
    runs), appears there as written: a re-made study with other numbers fails here until the README
    says them."""
    from analysis.widths import read_laws
    from records.tables import read_table

    study = ROOT / "results" / "widths"
    laws, widths = read_laws(study), pd.read_csv(study / "widths.csv")
    readme = (ROOT / "README.md").read_text()
    runs = read_table(study, "runs", ["run_id"]).num_rows
    assert f"{runs:,} float64 runs" in readme
    assert f"`m_conv ~ n^{_law(laws, 'conv', 'thresholds', 'k=0', 'p')}`" in readme
    lazy = f"n^{_law(laws, 'lazy', 'drift_law', 'k>=1', 'p', 0.5)} k^{_law(laws, 'lazy', 'drift_law', 'k>=1', 'q', 0.5)}"
    assert f"`m_lazy ~ {lazy}` at `delta = 0.5`" in readme

    def width(subset, quantity, horizon, **cell):
        sel = (widths["subset"] == subset) & (widths["quantity"] == quantity) & (widths["method"] == "thresholds") \
            & (widths["horizon"] == horizon) & ~widths["bias"].astype(bool)
        for c, v in cell.items():
            sel &= widths[c] == v
        return widths[sel]

    plain = width("main", "conv", 192.0, k=0)
    plain = plain[(plain["censored"] == "none") & (plain["n"] <= 64)]["estimate"]
    assert f"needs `m` of {plain.min():.0f} to {plain.max():.0f} up to `n = 64`" in readme
    (late,) = width("main", "conv", 192.0, n=32, k=2, delta=0.5)["label"]
    (later,) = width("long", "conv", 768.0, n=32, k=2, delta=0.5)["label"]
    assert f"needs `m {late}` by 192, but `m = {later}` by 768" in readme
    rate = width("main", "rate", 192.0, k=0)
    rate = rate[rate["censored"] == "none"]["estimate"]
    assert f"`k = 0` from `m` of {rate.min():.0f} to {rate.max():.0f}" in readme
    above = width("main", "rate", 192.0)
    above = above[above["k"] >= 1]
    assert (above["censored"] == "above").all() and "`k >= 1` at no studied width (to 4,096)" in readme
    assert above["m_max"].max() == 4096
