"""``python -m pipeline {run,sync,plan} ...``: parse arguments, call library functions."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .driver import SetupError, preflight, run_sweep
from .estimate import estimate_lines
from .tracking import Tracker, TrackingError, check_reachable, resolve_uri, sync


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
    se = sub.add_parser("search", help="search each cell's critical width (the config's 'search' section)")
    se.add_argument("config")
    se.add_argument("--out")
    se.add_argument("--tracking-uri")
    se.add_argument("--no-mlflow", action="store_true")
    se.add_argument("--address")
    se.add_argument("--num-cpus", type=int)
    se.add_argument("--no-progress", action="store_true")
    sy = sub.add_parser("sync", help="log to MLflow every run that is in Parquet but not in MLflow")
    sy.add_argument("config")
    sy.add_argument("--out")
    sy.add_argument("--tracking-uri")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        out = args.out or str(cfg.output_dir())
        if args.command == "sync":
            uri = resolve_uri(args.tracking_uri, cfg.tracking.uri)
            check_reachable(uri)
            tracker = Tracker(uri, cfg.experiment_name(), cfg.name, "sync", params={"sync": out, "kind": "sync"})
            n = sync(tracker, __import__("pathlib").Path(out))
            tracker.close()
            print(f"synced {n} runs from {out} to {uri}")
            return 0
        if args.command == "search":
            if cfg.search is None:
                raise ConfigError(f"{args.config}: search: no 'search' section; add one (see configs/cpu_study.yaml)")
            from .search import run_search

            report, table = run_search(cfg, out=out, tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow,
                                       address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress)
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
                           progress=not args.no_progress)
    except (ConfigError, SetupError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report.config_path = args.config
    print("\n".join(report.lines()))
    # 0: all done; 1: some tasks failed; 2: bad input (above); 3: all in Parquet, MLflow incomplete (run `sync`)
    return 1 if report.failed else 3 if not report.mlflow_complete else 0
