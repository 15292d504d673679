"""``python -m pipeline {run,sync,plan} ...``: parse arguments, call library functions."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .driver import SetupError, preflight, run_sweep
from .estimate import estimate_lines
from .lock import LockHeld, OutputLock
from .logqueue import open_tracker
from .stop import DEFAULT_GRACE_S
from .tracking import TrackingError, check_reachable, resolve_uri, sync


def _add_lock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", nargs="?", type=float, const=float("inf"), metavar="SECONDS",
                   help="if another process writes the same --out, wait for it (at most SECONDS) "
                        "instead of exiting 2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a sweep")
    run.add_argument("config", help="YAML sweep file (see configs/)")
    run.add_argument("--out", help="results directory (default: the config's output)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    run.add_argument("--no-mlflow", action="store_true", help="write Parquet only")
    run.add_argument("--dry-run", action="store_true", help="print the grid, tasks and estimated cost; run nothing")
    run.add_argument("--force", action="store_true", help="recompute runs already in Parquet (old files are archived)")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                     help=f"on SIGTERM/SIGINT, wait this long for running tasks to land (default {DEFAULT_GRACE_S:g})")
    _add_lock_args(run)
    se = sub.add_parser("search", help="search each cell's critical width (the config's 'search' section)")
    se.add_argument("config")
    se.add_argument("--out")
    se.add_argument("--tracking-uri")
    se.add_argument("--no-mlflow", action="store_true")
    se.add_argument("--address")
    se.add_argument("--num-cpus", type=int)
    se.add_argument("--no-progress", action="store_true")
    _add_lock_args(se)
    sy = sub.add_parser("sync", help="log to MLflow every run that is in Parquet but not in MLflow")
    sy.add_argument("config")
    sy.add_argument("--out")
    sy.add_argument("--tracking-uri")
    _add_lock_args(sy)
    return p


def _sync(cfg, out: str, tracking_uri: str | None, wait: float | None) -> int:
    """Fill MLflow from Parquet, holding the output (no sweep writes it meanwhile)."""
    from pathlib import Path

    uri = resolve_uri(tracking_uri, cfg.tracking.uri)
    check_reachable(uri)
    with OutputLock(Path(out), "sync", wait=wait):
        tracker = open_tracker(uri, cfg.experiment_name(), cfg.name, "sync", params={"sync": out}, out=Path(out))
        n = sync(tracker, Path(out))
        tracker.close()
    if tracker.error:
        print(f"MLflow INCOMPLETE: sync to {uri} failed ({tracker.error}); run the same command again", file=sys.stderr)
        return 3
    print(f"synced {n} runs from {out} to {uri}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        out = args.out or str(cfg.output_dir())
        if args.command == "sync":
            return _sync(cfg, out, args.tracking_uri, args.wait)
        if args.command == "search":
            if cfg.search is None:
                raise ConfigError(f"{args.config}: search: no 'search' section; add one (see configs/cpu_study.yaml)")
            from .search import run_search

            report, table = run_search(cfg, out=out, tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow,
                                       address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress,
                                       wait=args.wait)
            report.config_path = args.config
            print(table[["n", "k", "delta", "bias", "m_star", "censored", "runs_used", "confirmed", "note"]]
                  .to_string(index=False))
            print("\n".join(report.lines()))
            print(f"thresholds: {__import__('pathlib').Path(out) / 'thresholds'}")
            return 1 if report.failed else 3 if not report.mlflow_complete else 0
        if args.dry_run:
            preflight(cfg, __import__("pathlib").Path(out), None)
            print("\n".join(estimate_lines(cfg, out)))
            return 0
        report = run_sweep(cfg, out=out, tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow,
                           force=args.force, address=args.address, num_cpus=args.num_cpus,
                           progress=not args.no_progress, wait=args.wait, grace_s=args.grace)
    except (ConfigError, SetupError, TrackingError, LockHeld) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.config_path = args.config
    print("\n".join(report.lines()))
    # 0: all done; 1: some tasks failed; 2: bad input (above); 3: all in Parquet, MLflow incomplete (run `sync`);
    # 130/143: stopped by SIGINT/SIGTERM (the summary prints the resume command)
    return report.exit_code or (1 if report.failed else 3 if not report.mlflow_complete else 0)
