"""``python -m pipeline status``: how far a sweep is, per cell, from its results directory alone
(no Ray, no MLflow): runs done (and how many of them diverged), runs still to do, the time of the
cell's last finished run, and what the last invocations reported as failed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from records.identity import run_id_of_record
from records.schema import CELL_COLUMNS, FAILED, TRAINING_COLUMNS
from records.tables import read_table

from .config import SweepConfig
from .grid import plan


def cell_status(cfg: SweepConfig, out: Path) -> pd.DataFrame:
    """One row per grid cell: planned, done, diverged, pending, last (newest ``created_at``), and
    failed (runs the pipeline could not train, pending too: the next invocation retries them)."""
    tasks, _ = plan(cfg)
    table = read_table(out, "runs", [*CELL_COLUMNS, *TRAINING_COLUMNS, "status", "created_at"])
    # indexed by each row's current run id (rows of an older version may carry an older one)
    runs = table.select(["status", "created_at"]).to_pandas().set_index(
        pd.Index([run_id_of_record(r) for r in table.to_pylist()], name="run_id"))
    rows: dict[str, dict] = {}
    for t in tasks:
        row = rows.setdefault(t.cell.label(), dict(cell=t.cell.label(), planned=0, done=0, diverged=0, last="",
                                                   failed=0))
        have = runs.loc[runs.index.intersection(list(t.run_ids))]
        failed = have["status"] == FAILED
        row["planned"] += len(t.seeds)
        row["done"] += int((~failed).sum())
        row["failed"] += int(failed.sum())
        row["diverged"] += int((have["status"] == "diverged").sum())
        row["last"] = max([row["last"], *have.loc[~failed, "created_at"].tolist()])
    table = pd.DataFrame(list(rows.values()))
    table.insert(4, "pending", table.planned - table.done)
    table["last"] = table["last"].replace("", "-")
    return table


def status_lines(cfg: SweepConfig, out: Path) -> list[str]:
    table = cell_status(cfg, out)
    done, planned = int(table.done.sum()), int(table.planned.sum())
    lines = [table.to_string(index=False), "",
             f"{cfg.name}: {done} of {planned} runs done ({int(table.diverged.sum())} diverged), "
             f"{planned - done} pending; cells complete: {int((table.pending == 0).sum())} of {len(table)}"]
    failed = int(table.failed.sum())
    if failed:
        lines.append(f"{failed} of the pending runs are recorded as failed (failure_reason in the runs table); "
                     f"rerun the same command to train them again")
    log = out / "sweep_log.jsonl"
    if log.is_file():
        entries = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        if entries:
            last = entries[-1]
            when = f" finished {last['finished']}" if "finished" in last else ""
            lines.append(f"last invocation: {last.get('command')}{when}: {last.get('done')} done, "
                         f"{last.get('failed')} failed (failed runs are pending: rerun the same command)")
    if not (out / "runs").is_dir():
        lines.append(f"nothing started yet in {out}")
    return lines
