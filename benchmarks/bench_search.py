"""The adaptive search against the full grid, on the cells of configs/search.yaml.

    python benchmarks/bench_search.py [--grid results/widths] [--out runs/search_bench]

Runs (or resumes) the search into its own output directory, then compares per cell, with the
same seeds (``seeds.init``), the search's ``m*`` with the grid's (analysis.thresholds on the
grid's runs, same criterion and eps'), and the runs and wall time each used. The grid's wall
time is read from ``<grid>/sweep_log.jsonl`` (written by the driver at every ``pipeline run``);
without such a line it is reported as unknown.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import load_results, run_success, success_rates, thresholds
from pipeline.config import load_config
from pipeline.search import run_search


def grid_thresholds(grid: Path, cfg) -> pd.DataFrame:
    res = load_results(grid)
    runs = res.runs[res.runs["seed"].isin(cfg.seeds.init)]
    s = cfg.search
    ok = run_success(runs, res.curves, eps_grid=(s.eps,), criteria=(s.criterion,))
    return thresholds(success_rates(ok), delta_fail=cfg.delta_fail, n_boot=0)


def grid_wall_time(grid: Path) -> float:
    """The grid's wall time, summed over the `pipeline run` invocations the driver itself logged
    (``<grid>/sweep_log.jsonl``); NaN if it logged none."""
    log = grid / "sweep_log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    walls = [rec["wall_time"] for rec in lines if rec.get("command") == "run" and "git_commit" in rec]
    return float(sum(walls)) if walls else np.nan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/search.yaml")
    ap.add_argument("--grid", default="results/widths")
    ap.add_argument("--out", default="runs/search_bench")
    ap.add_argument("--num-cpus", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    report, search = run_search(cfg, out=args.out, mlflow=False, num_cpus=args.num_cpus, progress=False)
    search_wall = time.perf_counter() - t0
    grid = grid_thresholds(Path(args.grid), cfg)
    keys = ["n", "k", "delta", "bias"]
    both = grid.merge(search, on=keys, suffixes=("_grid", "_search"))
    ladder = sorted({w for ws in search["widths"] for w in json.loads(ws)} | set(cfg.grid.m))

    def step(row) -> float:
        """Distance in grid steps (log2 of m, censored below = m_min, above = one step past m_max)."""
        def pos(m, c):
            if c == "below":
                return 0.0
            if c == "above":
                return math.log2(max(ladder)) + 1 - math.log2(min(ladder))
            return math.log2(m) - math.log2(min(ladder))
        return abs(pos(row["m_star_grid"], row["censored_grid"]) - pos(row["m_star_search"], row["censored_search"]))

    both["steps_apart"] = both.apply(step, axis=1)
    same = (both["steps_apart"] == 0).mean()
    grid_runs = len(load_results(Path(args.grid)).runs.query("seed in @cfg.seeds.init"))
    grid_wall = grid_wall_time(Path(args.grid))
    print(f"cells: {len(both)}; criterion {cfg.search.criterion} at eps'={cfg.search.eps:g}, target rate "
          f"{1 - cfg.delta_fail:g}, seeds {len(cfg.seeds.init)}")
    print(f"same m* as the grid: {same:.1%} of cells; within one grid step: {(both['steps_apart'] <= 1).mean():.1%}; "
          f"largest gap {both['steps_apart'].max():g} steps")
    print(f"runs: search used {int(search['runs_used'].sum())} ({int(search['runs_trained'].sum())} trained this "
          f"time), grid {grid_runs}: ratio {search['runs_used'].sum() / grid_runs:.3f}")
    print(f"wall time: search {search_wall:.0f} s, grid {grid_wall:.0f} s: ratio {search_wall / grid_wall:.3f}")
    print("cells that differ:")
    cols = keys + ["m_star_grid", "censored_grid", "m_star_search", "censored_search", "note"]
    print(both.loc[both["steps_apart"] > 0, cols].to_string(index=False))


if __name__ == "__main__":
    main()
