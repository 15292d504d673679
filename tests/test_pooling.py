"""Runs of different training settings are never pooled, for any setting: one added to
``sobolev.TrainConfig`` (its one definition) reaches the loaders, the success tables, the thresholds,
the floor law and the search's thresholds table with no other edit.

The setting is added in a fresh interpreter, before anything derives from ``TrainConfig``, as a
user would add it: a field with a default and a doc (``_setting``). Two arms of runs differ only in
it (and in what it did to their losses); every table keeps them apart, each arm's rows equal to that
arm analysed alone.
"""

import subprocess
import sys

CODE = '''
import dataclasses, sys, types
sys.path[:0] = {path!r}
import sobolev
import sobolev.settings as T


@dataclasses.dataclass(frozen=True)
class TrainConfig(T.TrainConfig):
    warmup: float = T._setting(1.0, "the new setting (floats are positive); 1.0 keeps today's behaviour")


T.TrainConfig = sobolev.TrainConfig = TrainConfig
assert "warmup" in T.train_config_fields() and TrainConfig().warmup == 1.0
try:  # the validation sees the new field: nothing filled the fields' cache before the patch
    TrainConfig(warmup=0.0)
    raise AssertionError("warmup=0.0 was not validated")
except ValueError as exc:
    assert "warmup" in str(exc), exc

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analysis import (fit_floor_law, instance_thresholds, load_results, run_success, success_rates,
                      thresholds)
from tests.analysis_synth import floor_curves, planted_floor_runs, write_results

out = Path({tmp!r})

# two arms, the same cells, instances and seeds; the short warmup raises the floor (c = -2 against -3)
design = dict(ns=(4, 8, 16), ks=(1, 2), widths=2 ** np.arange(6, 13), instances=2, seeds=3, tau=0.3,
              sigma=0.3, train_eps=1e-6)
arms = {{w: planted_floor_runs(law={{"c": c, "n": 2.0, "k": 1.0, "m": -1.5}}, rng_seed=i, warmup=w, **design)
        for i, (w, c) in enumerate([(1.0, -3.0), (0.5, -2.0)])}}
arms[0.5]["run_id"] = "w" + arms[0.5]["run_id"]
both = pd.concat(arms.values(), ignore_index=True)
write_results(out, both, floor_curves(both))
runs, curves = load_results(out)  # the default columns: the new setting and settled_both's curve columns
assert "warmup" in runs.columns and set(runs["warmup"]) == {{0.5, 1.0}}
CRITERIA = ("interpolation", "settled_both")
EPS = (1e-2, 1e-3)

# success tables: mixing the arms in a cell is refused; kept apart, each arm's rows are its own
try:
    run_success(runs, curves, eps_grid=EPS, criteria=CRITERIA)
    raise AssertionError("runs differing only in warmup were pooled")
except ValueError as exc:
    assert "'warmup'" in str(exc), exc


def alone(w):
    return runs[runs["warmup"] == w]


def part(table, w):
    return table[table["warmup"] == w].reset_index(drop=True)


success = run_success(runs, curves, eps_grid=EPS, criteria=CRITERIA, strata=("warmup",))
rates = success_rates(success)
th = thresholds(rates, delta_fail=0.1, n_boot=0)
inst = instance_thresholds(success, runs, delta_fail=0.1, n_boot=0)
law = fit_floor_law(runs, n_boot=0)
for w in (1.0, 0.5):
    own = run_success(alone(w), curves, eps_grid=EPS, criteria=CRITERIA, strata=("warmup",))
    pd.testing.assert_frame_equal(part(rates, w), success_rates(own))
    pd.testing.assert_frame_equal(part(th, w), thresholds(success_rates(own), delta_fail=0.1, n_boot=0))
    pd.testing.assert_frame_equal(part(inst, w), instance_thresholds(own, runs, delta_fail=0.1, n_boot=0))
    assert (part(rates, w)["trials"] == design["instances"] * design["seeds"]).all()
    own_law = fit_floor_law(alone(w), n_boot=0)
    pd.testing.assert_frame_equal(part(law, w).drop(columns="draws"), own_law.drop(columns="draws"))
# the arms' answers differ, so a pooled table would have been wrong for both
assert part(law, 1.0).set_index("term").loc["c", "estimate"] < part(law, 0.5).set_index("term").loc["c", "estimate"]

# the search: one search per (cell, training setting), one row each in its thresholds table
from pipeline.search import _Searches, thresholds_table, write_thresholds
from pipeline_helpers import tiny_config

cfg = tiny_config(grid=dict(n=[4], k=[1], m=[16], bias=[False], warmup=[1.0, 0.5]),
                  search=dict(m_min=8, m_max=128, gallop_octaves=1, eps=0.05, extra_seeds=2, chunk=2))
(out / "search" / "runs").mkdir(parents=True)
state = _Searches(cfg, types.SimpleNamespace(out=out / "search"))
assert sorted(t.warmup for _, t in state.searches) == [0.5, 1.0]
m_star = {{1.0: 32, 0.5: 64}}  # planted: a run succeeds from this width on
for (cell, train), search in state.searches.items():
    while (req := search.next_request()) is not None:
        i, seeds = req
        search.record(i, {{s: state.widths[i] >= m_star[train.warmup] for s in seeds}})
table = thresholds_table(cfg, state)
pq_table = pq.read_table(write_thresholds(out / "search", cfg, table)).to_pandas()
assert len(pq_table) == 2 and pq_table.set_index("warmup")["m_star"].to_dict() == m_star, pq_table
print("ok")
'''


def test_runs_differing_only_in_a_setting_added_in_one_place_are_never_pooled(tmp_path):
    code = CODE.format(path=sys.path, tmp=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-3000:]
