"""The adaptive threshold search: every cell of the grid (and training setting) searches its
critical width at once; the driver submits each cell's next widths as results arrive.

Runs are the grid's runs (same ``run_id``), written to the same ``runs``/``curves`` tables and
MLflow, so a search reuses whatever a grid or an earlier search already computed, and a
grid reuses the search's runs. The answer per cell goes to ``<out>/thresholds/``. The frame
(checks, Parquet, MLflow, summary) is :class:`pipeline.session.SweepSession`.
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
import pyarrow.compute as pc

from analysis.defaults import ABOVE, BELOW
from analysis.success import criterion
from records.identity import run_id, run_id_of_record
from records.schema import THRESHOLD_SETTING_COLUMNS, THRESHOLDS_SCHEMA, Cell
from records.tables import atomic_write, read_table
from sobolev.settings import TrainConfig

from .config import SweepConfig
from .errors import one_line
from .grid import base_cells, tasks_for
from .session import SweepReport, SweepSession
from .stop import DEFAULT_GRACE_S
from .widthsearch import WidthSearch, ladder


def seed_successes(cfg: SweepConfig, runs: list[dict], curves: pd.DataFrame | None) -> dict[int, bool]:
    """seed -> success under the search's criterion, for the runs of one cell and width."""
    df = pd.DataFrame(runs)
    ok = criterion(cfg.search.criterion).judge(df, curves, cfg.search.eps)
    return dict(zip(df["seed"].astype(int), ok.astype(bool)))


class _Searches:
    """The searches of every (cell, training setting), and the runs already in Parquet."""

    def __init__(self, cfg: SweepConfig, session: SweepSession):
        s = cfg.search
        self.cfg, self.session = cfg, session
        self.widths = ladder(s.m_min, s.m_max, s.resolution)
        base = tuple(cfg.seeds.init)
        extra = tuple(range(max(base) + 1, max(base) + 1 + s.extra_seeds))
        chunk = s.chunk or max(1, math.ceil(len(base) / 2))
        self.searches = {(c, t): WidthSearch(widths=self.widths, seeds=base, extra=extra, target=1 - cfg.delta_fail,
                                             chunk=chunk, gallop=s.gallop_octaves * s.resolution)
                         for c in base_cells(cfg) for t in cfg.training_variants()}
        self.trained = dict.fromkeys(self.searches, 0)
        self.started = {key: time.perf_counter() for key in self.searches}
        self.finished: dict[tuple[Cell, TrainConfig], float] = {}
        done = read_table(session.out, "runs").to_pylist()
        self.done_runs = {run_id_of_record(r): r for r in done}
        self.needs_curves = criterion_needs_curves(cfg)

    def curves_of(self, records: list[dict]) -> pd.DataFrame | None:
        if not self.needs_curves or not records:
            return None
        table = read_table(self.session.out, "curves")
        ids = pa.array([r["run_id"] for r in records], type=pa.string())
        return table.filter(pc.is_in(table.column("run_id"), ids)).to_pandas()

    def advance(self, key) -> None:
        """Submit what the search of ``key`` asks for, answering from Parquet where possible."""
        search = self.searches[key]
        cell, train = key
        while True:
            req = search.next_request()
            if req is None:
                if search.done and key not in self.finished:
                    self.finished[key] = time.perf_counter() - self.started[key]
                return
            i, seeds = req
            at_width = dataclasses.replace(cell, m=self.widths[i])
            have = [self.done_runs[rid] for rid in (run_id(at_width, train, s) for s in seeds) if rid in self.done_runs]
            if have:
                self.session.report.skipped += len(have)
                search.record(i, seed_successes(self.cfg, have, self.curves_of(have)))
            todo = [s for s in seeds if run_id(at_width, train, s) not in self.done_runs]
            if todo:
                for task in tasks_for(self.cfg, at_width, train, todo):
                    self.session.submit(task, tag=(key, i))
                return

    def record(self, key, i: int, task, result: dict | None) -> None:
        if result is None:  # the cell cannot be decided without these runs: failures, and the summary says so
            self.searches[key].record(i, {seed: False for seed in task.seeds})
            return
        self.trained[key] += len(task.seeds)
        curves = pd.DataFrame(result["curves"]) if self.needs_curves else None
        self.searches[key].record(i, seed_successes(self.cfg, result["runs"], curves))


def criterion_needs_curves(cfg: SweepConfig) -> bool:
    return criterion(cfg.search.criterion).needs_curves


def run_search(cfg: SweepConfig, *, out: str | Path | None = None, tracking_uri: str | None = None,
               mlflow: bool = True, address: str | None = None, num_cpus: int | None = None,
               progress: bool = True, wait: float | None = None,
               grace_s: float = DEFAULT_GRACE_S) -> tuple[SweepReport, pd.DataFrame]:
    if cfg.search is None:
        raise ValueError("search: the configuration has no 'search' section; add one (see configs/search.yaml)")
    from tqdm import tqdm  # only a search that trains draws a bar: `--help` and `status` stay light

    session = SweepSession(cfg, "search", out=out, tracking_uri=tracking_uri, mlflow=mlflow, address=address,
                           num_cpus=num_cpus, wait=wait, grace_s=grace_s)
    with session:
        session.open_tracker()
        state = _Searches(cfg, session)
        bar = tqdm(total=len(state.searches), unit="cell", disable=not progress, file=sys.stderr,
                   desc=f"{cfg.name} search", mininterval=0.5 if sys.stderr.isatty() else 15.0)
        try:
            for key in state.searches:
                state.advance(key)
            bar.update(len(state.finished))

            def landed(task, tag, result) -> None:
                key, i = tag
                state.record(key, i, task, result)
                before = len(state.finished)
                state.advance(key)
                bar.update(len(state.finished) - before)

            session.work(landed)
        finally:
            bar.close()
        table = thresholds_table(cfg, state)
        path = write_thresholds(session.out, cfg, table)
        if session.tracker:
            try:
                session.tracker.add_artifact(f"thresholds/{path.stem}.csv", table.to_csv(index=False))
            except Exception as exc:  # noqa: BLE001 - the thresholds are in Parquet; MLflow is reported incomplete
                session.report.mlflow_error = session.report.mlflow_error or one_line(exc)
        session.report.grid_runs = int(table["runs_used"].sum())
    return session.report, table


def write_thresholds(out: Path, cfg: SweepConfig, table: pd.DataFrame) -> Path:
    s = cfg.search
    path = out / "thresholds" / f"search-{s.criterion}-eps{s.eps:g}-m{s.m_min}-{s.m_max}-r{s.resolution}.parquet"
    path.parent.mkdir(exist_ok=True)
    atomic_write(pa.Table.from_pandas(table, schema=THRESHOLDS_SCHEMA, preserve_index=False), path)
    return path


def thresholds_table(cfg: SweepConfig, state: _Searches) -> pd.DataFrame:
    rows = []
    for (c, train), search in state.searches.items():
        r = search.result()
        note = []
        if r["escalated"]:
            note.append(f"outcomes disagreed: {cfg.search.extra_seeds} more seeds at {r['escalated']}")
        if r["top_unconfirmed"]:
            note.append("m* is the largest width: not confirmed above")
        if r["censored"] == BELOW:
            note.append("m_min already meets the target")
        if r["censored"] == ABOVE:
            note.append("m_max does not meet the target")
        rows.append(dict(
            **{f: v for f, v in dataclasses.asdict(c).items() if f != "m"},
            **{THRESHOLD_SETTING_COLUMNS[f]: v for f, v in dataclasses.asdict(train).items()},
            criterion=cfg.search.criterion, eps=cfg.search.eps, target_rate=1 - cfg.delta_fail,
            m_star=float(r["m_star"]) if r["m_star"] else math.nan, censored=r["censored"],
            m_lo=float(r["m_lo"]) if r["m_lo"] else math.nan, m_hi=float(r["m_hi"]) if r["m_hi"] else math.nan,
            widths=json.dumps(r["widths"]), rates=json.dumps([round(x, 4) for x in r["rates"]]),
            runs_used=r["runs_used"], runs_trained=state.trained[(c, train)], confirmed=r["confirmed"],
            escalated=json.dumps(r["escalated"]), note="; ".join(note),
            wall_time=state.finished.get((c, train), math.nan)))
    return pd.DataFrame(rows)
