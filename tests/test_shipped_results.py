"""The shipped study (results/cpu_study) is what this commit's code computes: tasks re-made from
their recorded rows (``pipeline.grid.task_of_record``) and trained again give the stored runs and
curves bit for bit. The study was produced at the commit its rows record (``git_commit``); a later
change to the training code must keep this test passing or the study must be produced again."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.grid import task_of_record
from pipeline.task import execute
from records.schema import RUNS_SCHEMA, conform
from records.tables import read_table

pytestmark = pytest.mark.slow  # re-makes and trains tasks of the shipped study

STUDY = Path(__file__).parents[1] / "results" / "cpu_study"
VOLATILE = {"wall_time", "task_wall_time", "created_at", "git_commit", "device"}  # when, where, which commit


@pytest.fixture(scope="module")
def study():
    if not (STUDY / "runs").exists():
        pytest.skip("results/cpu_study is not in this checkout")
    return read_table(STUDY, "runs").to_pandas(), read_table(STUDY, "curves").to_pandas()


def cheapest_tasks(runs: pd.DataFrame) -> list[str]:
    """The cheapest task (sum of m x steps) of each kind: L2 (k = 0), Sobolev without bias, with
    bias, and the frozen control."""
    runs = runs.assign(cost=runs.m * runs.steps)
    kinds = {"L2": runs.k == 0, "sobolev": (runs.k > 0) & ~runs.bias & (runs["mode"] == "relu"),
             "bias": runs.bias, "frozen": runs["mode"] == "frozen"}
    return [runs[sel].groupby("task_id").cost.sum().idxmin() for sel in kinds.values() if sel.any()]


def test_the_shipped_study_is_reproduced_bit_for_bit(study):
    runs, curves = study
    tasks = cheapest_tasks(runs)
    assert len(tasks) >= 3
    for task_id in tasks:
        stored = runs[runs.task_id == task_id].sort_values("run_id").reset_index(drop=True)
        result = execute(task_of_record(stored.iloc[0].to_dict()))
        again = conform(pa.Table.from_pylist(result["runs"]), RUNS_SCHEMA).to_pandas()
        again = again.sort_values("run_id").reset_index(drop=True)
        keep = [c for c in stored.columns if c not in VOLATILE]
        assert list(again.run_id) == list(stored.run_id), task_id
        pd.testing.assert_frame_equal(again[keep], stored[keep], check_exact=True, obj=task_id)
        mine = curves[curves.run_id.isin(stored.run_id)].sort_values(["run_id", "step"]).reset_index(drop=True)
        new = pd.DataFrame(result["curves"]).sort_values(["run_id", "step"]).reset_index(drop=True)
        assert len(new) == len(mine) > 0
        for col in mine.columns:
            np.testing.assert_array_equal(new[col].to_numpy(), mine[col].to_numpy(), err_msg=f"{task_id}: {col}")
