"""The shipped study (results/widths) is what this commit's code computes, whatever the process.

Two tasks of every kind of run in the study (plain L2, Sobolev, larger k, the drift part's short
horizon, the step-factor check, the long horizon, the bias network) are re-made from their recorded
rows (``pipeline.grid.task_of_record``, at the recorded thread count) and trained again: each in a
fresh process, and all one after another in this one. Every run column except when and where it
ran, and every curve column, must equal the stored row bit for bit. The study was produced at the
commit its rows record (``git_commit``); a later change to the training code must keep this test
passing or the study must be produced again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from pipeline.grid import task_of_record
from pipeline.task import execute
from records.schema import RUNS_SCHEMA, conform
from records.tables import read_table

pytestmark = pytest.mark.slow  # re-trains 14 tasks, 14 of them in processes of their own

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "widths"
VOLATILE = {"wall_time", "task_wall_time", "created_at", "git_commit", "device"}  # when, where, which commit
PER_KIND = 2


def kinds(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """The kinds of run in the study, as masks of the runs table."""
    relu = (runs["mode"] == "relu") & (runs.step_factor == 1.0)
    return {"L2": relu & (runs.k == 0) & (runs.t_max == 192) & ~runs.bias,
            "sobolev": relu & (runs.k == 2) & (runs.t_max == 192) & ~runs.bias,
            "larger k": relu & (runs.k >= 4) & ~runs.bias,
            "short horizon": relu & (runs.t_max == 24) & ~runs.bias,
            "step factor": runs.step_factor != 1.0,
            "long horizon": relu & (runs.t_max > 192),
            "bias": runs.bias}


def sampled_tasks(runs: pd.DataFrame) -> list[str]:
    """Per kind, the cheapest task (sum of m x steps) and one drawn (seed 0) from the cheaper half."""
    runs = runs.assign(cost=runs.m * runs.steps)
    rng = np.random.default_rng(0)
    chosen = []
    for name, sel in kinds(runs).items():
        cost = runs[sel].groupby("task_id").cost.sum().sort_values()
        assert len(cost) >= PER_KIND, f"the study has fewer than {PER_KIND} tasks of kind {name!r}"
        cheap = cost.index[: max(PER_KIND, len(cost) // 2)]
        chosen += [cost.index[0], rng.choice([t for t in cheap if t != cost.index[0]])]
    return chosen


@pytest.fixture(scope="module")
def study():
    if not (STUDY / "runs").exists():
        pytest.skip("results/widths is not in this checkout")
    runs, curves = read_table(STUDY, "runs").to_pandas(), read_table(STUDY, "curves").to_pandas()
    return runs, curves, sampled_tasks(runs)


def _same(stored_runs: pd.DataFrame, stored_curves: pd.DataFrame, result: dict, task_id: str) -> None:
    stored = stored_runs.sort_values("run_id").reset_index(drop=True)
    again = conform(pa.Table.from_pylist(result["runs"]), RUNS_SCHEMA).to_pandas()
    again = again.sort_values("run_id").reset_index(drop=True)
    keep = [c for c in stored.columns if c not in VOLATILE]
    assert list(again.run_id) == list(stored.run_id), task_id
    pd.testing.assert_frame_equal(again[keep], stored[keep], check_exact=True, obj=task_id)
    mine = stored_curves[stored_curves.run_id.isin(stored.run_id)].sort_values(["run_id", "step"])
    new = pd.DataFrame(result["curves"]).sort_values(["run_id", "step"])
    assert len(new) == len(mine) > 0, task_id
    for col in mine.columns:
        np.testing.assert_array_equal(new[col].to_numpy(), mine[col].to_numpy(), err_msg=f"{task_id}: {col}")


def remake(record: dict) -> dict:
    """The task of a runs-table row, trained again at the thread count it recorded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(record["threads"]))
    try:
        return execute(task_of_record(record))
    finally:
        torch.set_num_threads(threads)


def test_every_kind_covered(study):
    runs, _, tasks = study
    assert len(set(tasks)) == len(tasks) >= 12
    kind_of = {name: set(runs.loc[sel, "task_id"]) for name, sel in kinds(runs).items()}
    assert all(len(ids & set(tasks)) >= PER_KIND for ids in kind_of.values())


def test_remade_one_after_another_in_one_process(study):
    runs, curves, tasks = study
    for task_id in tasks:
        rows = runs[runs.task_id == task_id]
        _same(rows, curves, remake(rows.iloc[0].to_dict()), task_id)


_CHILD = """
import json, sys, pickle
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_shipped_results import remake
record = json.loads(sys.stdin.read())
sys.stdout.buffer.write(pickle.dumps(remake(record)))
"""


def test_remade_each_in_a_fresh_process(study):
    """Each task the first of its process; two processes at a time (each at its recorded thread
    count, one here), as the sweep ran them."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    runs, curves, tasks = study
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def fresh(task_id):
        record = runs[runs.task_id == task_id].iloc[0].to_dict()
        text = json.dumps(record, default=lambda v: v.item() if hasattr(v, "item") else str(v))
        return subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"))],
                              input=text.encode(), capture_output=True, env=env, timeout=900)

    with ThreadPoolExecutor(2) as pool:
        for task_id, proc in zip(tasks, pool.map(fresh, tasks)):
            assert proc.returncode == 0, proc.stderr.decode()[-3000:]
            _same(runs[runs.task_id == task_id], curves, pickle.loads(proc.stdout), task_id)
