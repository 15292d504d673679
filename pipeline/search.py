"""The adaptive threshold search: every cell of the grid searches its critical width at
once; the driver submits each cell's next widths as results arrive (``ray.wait``).

Runs are the grid's runs (same ``run_id``), written to the same ``runs``/``curves`` tables and
MLflow, so a search reuses whatever a grid or an earlier search already computed, and a
grid reuses the search's runs. The answer per cell goes to ``<out>/thresholds/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .config import SweepConfig
from .driver import (SetupError, SweepReport, close_tracker, finish_task, git_commit, init_ray, log_invocation,
                     one_line, preflight, start_tracking)
from .grid import Cell, TaskSpec, cells, run_id, training_of
from .lock import OutputLock
from .pool import TaskPool
from .results import _atomic_write, prepare, quarantine_corrupt, read_table
from .widthsearch import WidthSearch, ladder

THRESHOLDS_SCHEMA = pa.schema([
    ("n", pa.int64()), ("k", pa.int64()), ("d", pa.int64()), ("delta", pa.float64()), ("bias", pa.bool_()),
    ("target", pa.string()), ("data_seed", pa.int64()), ("criterion", pa.string()), ("eps", pa.float64()),
    ("target_rate", pa.float64()), ("m_star", pa.float64()), ("censored", pa.string()), ("m_lo", pa.float64()),
    ("m_hi", pa.float64()), ("widths", pa.string()), ("rates", pa.string()), ("runs_used", pa.int64()),
    ("runs_trained", pa.int64()), ("confirmed", pa.bool_()), ("escalated", pa.string()), ("note", pa.string()),
    ("wall_time", pa.float64()),
])


def run_success(cfg: SweepConfig, runs: list[dict], curves: dict[str, list] | pd.DataFrame) -> dict[int, bool]:
    """seed -> success under the search's criterion, for the runs of one cell and width."""
    from analysis.success import interpolation_success, regime_success

    df = pd.DataFrame(runs)
    s = cfg.search
    if s.criterion == "interpolation":
        ok = interpolation_success(df, s.eps)
    else:
        ok = regime_success(df, pd.DataFrame(curves), s.eps)
    return dict(zip(df["seed"].astype(int), ok.astype(bool)))


def _base_cells(cfg: SweepConfig) -> list[Cell]:
    seen = {}
    for c in cells(cfg):
        seen.setdefault(dataclasses.replace(c, m=0), None)
    return list(seen)


def run_search(cfg: SweepConfig, *, out: str | Path | None = None, tracking_uri: str | None = None,
               mlflow: bool = True, wait: float | None = None, **kwargs) -> tuple[SweepReport, pd.DataFrame]:
    """:func:`_run_search` holding ``out`` (pipeline/lock.py), as :func:`pipeline.driver.run_sweep`."""
    if cfg.search is None:
        raise ValueError("search: the configuration has no 'search' section; add one (see configs/cpu_study.yaml)")
    t0 = time.perf_counter()
    out = Path(out) if out else cfg.output_dir()
    uri = start_tracking(cfg, tracking_uri, mlflow)
    preflight(cfg, out, uri)  # before the lock, which writes
    with OutputLock(out, "search", wait=wait):
        return _run_search(cfg, out, uri, t0, **kwargs)


def _run_search(cfg: SweepConfig, out: Path, uri: str | None, t0: float, *, address: str | None = None,
                num_cpus: int | None = None, progress: bool = True) -> tuple[SweepReport, pd.DataFrame]:
    s = cfg.search
    prepare(out, cfg.fingerprint(), cfg.name)
    report = SweepReport(grid_runs=0, out=out, tracking_uri=uri)
    report.quarantined = quarantine_corrupt(out)
    training = training_of(cfg)
    widths = ladder(s.m_min, s.m_max, s.resolution)
    base = tuple(cfg.seeds.init)
    extra = tuple(range(max(base) + 1, max(base) + 1 + s.extra_seeds))
    chunk = s.chunk or max(1, math.ceil(len(base) / 2))
    target = 1 - cfg.delta_fail
    searches = {c: WidthSearch(widths=widths, seeds=base, extra=extra, target=target, chunk=chunk,
                               gallop=s.gallop_octaves * s.resolution) for c in _base_cells(cfg)}
    trained = {c: 0 for c in searches}
    started = {c: time.perf_counter() for c in searches}
    finished: dict[Cell, float] = {}
    done_runs = read_table(out, "runs").to_pandas()
    done_runs = done_runs.set_index("run_id", drop=False) if len(done_runs) else done_runs
    commit = git_commit()
    tracker = None
    pool = None

    def known(cell: Cell, seeds) -> tuple[list[dict], list[int]]:
        """Records already in Parquet, and the seeds still to train."""
        have, todo = [], []
        for seed in seeds:
            rid = run_id(cell, training, seed)
            if len(done_runs) and rid in done_runs.index:
                have.append(done_runs.loc[rid].to_dict())
            else:
                todo.append(seed)
        return have, todo

    def curves_of(records: list[dict]) -> pd.DataFrame | None:
        if s.criterion != "regime" or not records:
            return None
        import pyarrow.compute as pc

        ids = pa.array([r["run_id"] for r in records], type=pa.string())
        table = read_table(out, "curves")
        return table.filter(pc.is_in(table.column("run_id"), ids)).to_pandas()

    def advance(c: Cell) -> None:
        """Submit what the cell's search asks for, answering from Parquet where possible."""
        search = searches[c]
        while True:
            req = search.next_request()
            if req is None:
                if search.done and c not in finished:
                    finished[c] = time.perf_counter() - started[c]
                return
            i, seeds = req
            cell = dataclasses.replace(c, m=widths[i])
            have, todo = known(cell, seeds)
            if have:
                report.skipped += len(have)
                search.record(i, run_success(cfg, have, curves_of(have)))
            if todo:
                nonlocal pool
                if pool is None:
                    init_ray(address, num_cpus)
                    pool = TaskPool(cfg.resources, commit)
                pool.submit(TaskSpec(cell=cell, training=training, seeds=tuple(todo), sweep=cfg.name,
                                     delta_fail=cfg.delta_fail), tag=(c, i))
                return

    from tqdm import tqdm

    bar = tqdm(total=len(searches), unit="cell", disable=not progress, file=sys.stderr, desc=f"{cfg.name} search",
               mininterval=0.5 if sys.stderr.isatty() else 15.0)
    try:
        tracker = start_tracker(cfg, uri, commit, kind="search", out=out)
        for c in searches:
            advance(c)
        bar.update(len(finished))
        while pool is not None and len(pool):
            task, (c, i), result, error = pool.next()
            if error is not None:
                report.failed += len(task.seeds)
                report.errors.append(f"{task.task_id}: {type(error).__name__}: {str(error).strip().splitlines()[-1]}")
                # the cell cannot be decided without these runs: record them as failures, say so
                searches[c].record(i, {seed: False for seed in task.seeds})
            else:
                finish_task(out, tracker, task, result, report)
                trained[c] += len(task.seeds)
                searches[c].record(i, run_success(cfg, result["runs"], result["curves"]))
            before = len(finished)
            advance(c)
            bar.update(len(finished) - before)
    finally:
        bar.close()
        close_tracker(tracker, report)
    table = thresholds_table(cfg, searches, trained, finished)
    name = f"search-{s.criterion}-eps{s.eps:g}-m{s.m_min}-{s.m_max}-r{s.resolution}"
    (out / "thresholds").mkdir(exist_ok=True)
    _atomic_write(pa.Table.from_pandas(table, schema=THRESHOLDS_SCHEMA, preserve_index=False),
                  out / "thresholds" / f"{name}.parquet")
    report.grid_runs = sum(r["runs_used"] for r in table.to_dict("records"))
    report.wall_time = time.perf_counter() - t0
    log_invocation(out, "search", report, commit)
    return report, table


def thresholds_table(cfg: SweepConfig, searches: dict, trained: dict, finished: dict) -> pd.DataFrame:
    rows = []
    for c, search in searches.items():
        r = search.result()
        note = []
        if r["escalated"]:
            note.append(f"outcomes disagreed: {cfg.search.extra_seeds} more seeds at {r['escalated']}")
        if r["top_unconfirmed"]:
            note.append("m* is the largest width: not confirmed above")
        if r["censored"] == "below":
            note.append("m_min already meets the target")
        if r["censored"] == "above":
            note.append("m_max does not meet the target")
        rows.append(dict(
            n=c.n, k=c.k, d=c.d, delta=c.delta, bias=c.bias, target=c.target, data_seed=c.data_seed,
            criterion=cfg.search.criterion, eps=cfg.search.eps, target_rate=1 - cfg.delta_fail,
            m_star=float(r["m_star"]) if r["m_star"] else math.nan, censored=r["censored"],
            m_lo=float(r["m_lo"]) if r["m_lo"] else math.nan, m_hi=float(r["m_hi"]) if r["m_hi"] else math.nan,
            widths=json.dumps(r["widths"]), rates=json.dumps([round(x, 4) for x in r["rates"]]),
            runs_used=r["runs_used"], runs_trained=trained[c], confirmed=r["confirmed"],
            escalated=json.dumps(r["escalated"]), note="; ".join(note), wall_time=finished.get(c, math.nan)))
    return pd.DataFrame(rows)


def start_tracker(cfg, uri, commit, kind, out=None):
    from .logqueue import open_tracker

    if not uri:
        return None
    try:
        tracker = open_tracker(uri, cfg.experiment_name(), cfg.name, commit, out=out,
                               params=dict(config=cfg.model_dump_json(), kind=kind))
        tracker.logged_run_ids()  # what is logged whole; children cut off mid-log are removed
        return tracker
    except Exception as exc:  # noqa: BLE001 - before any training: refuse, with the way out
        raise SetupError(f"tracking: cannot use MLflow at {uri} ({one_line(exc)}); fix or start the server, "
                         f"or pass --no-mlflow to write Parquet only and `python -m pipeline sync` later") from None
