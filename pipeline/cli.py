"""python -m pipeline: sweeps of two-layer ReLU networks trained on the directional Sobolev loss
(Cocola & Hand 2020), on a local Ray or a Ray cluster, into Parquet and MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.report import report_results
from records.tables import MANIFEST, compact
from sobolev import __version__

from .config import load_config
from .destinations import check_submittable
from .driver import preflight, run_sweep
from .errors import BAD_INPUT, DISK_FULL_EXIT, ConfigError, DiskFull, SetupError, print_error
from .estimate import estimate_lines
from .lock import OutputLock
from .logqueue import open_tracker
from .notebooks import NAMES, execute_notebooks
from .options import RunOptions
from .search import run_search
from .session import resume_command
from .status import status_lines
from .stop import DEFAULT_GRACE_S
from .submit import REPO, submit
from .tracking import check_reachable, sync

EXIT_CODES = f"""exit codes:
  0  done: every run in Parquet and MLflow
  1  some runs failed after their retries: recorded as failed (status 'failed', failure_reason) in the runs
     table and listed in the summary; rerun the same command to train them again
  2  bad input (config, options, output directory, tracking URI): one line on stderr, nothing written
  3  every run in Parquet, MLflow incomplete: run `python -m pipeline sync CONFIG` when the server answers
  {DISK_FULL_EXIT}  disk full (the output or the MLflow store): every finished run is written whole; one line names the
     path, the free space and the resume command; free space and run it
  130/143  stopped by SIGINT/SIGTERM: every finished run is written; the summary prints the resume command"""

EXAMPLES = """examples:
  python -m pipeline run configs/smoke.yaml --dry-run
  python -m pipeline run configs/smoke.yaml
  python -m pipeline status configs/smoke.yaml
  python -m pipeline submit --address http://HEAD:8265 -- run configs/paper.yaml --out /shared/paper \\
      --tracking-uri http://MLFLOW:5000
  python -m pipeline notebooks --results /data/smoke"""


class _Parser(argparse.ArgumentParser):
    """Bad options give one line (and exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; pass a count >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} CPUs: pass a count >= 1 (or leave it out for all CPUs)")
    return value


def _common(p: argparse.ArgumentParser, *, ray: bool = True, mlflow: bool = True) -> None:
    p.add_argument("config", help="YAML sweep file (see configs/)")
    p.add_argument("--out", help="results directory (default: the config's 'output', e.g. runs/NAME)")
    if mlflow:
        p.add_argument("--tracking-uri", help="MLflow tracking URI: http://HOST:PORT or sqlite:///PATH.db (default: "
                                              "the config's, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    if ray:
        p.add_argument("--no-mlflow", action="store_true",
                       help="write Parquet only (fill MLflow later with `python -m pipeline sync`)")
        p.add_argument("--dry-run", action="store_true",
                       help="print the grid, the tasks and the estimated time for the config's resources; run nothing")
        p.add_argument("--recalibrate", action="store_true",
                       help="with --dry-run: time this machine again (else the cached calibration is used)")
        p.add_argument("--exact-spectra", action="store_true",
                       help="with --dry-run: compute every instance's spectrum (minutes for large n k) into the cache, "
                            "instead of fitting those not measured within seconds")
        p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--num-cpus", type=positive_int, metavar="N", help="CPUs of the local Ray (default: all)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                       help=f"on SIGTERM/SIGINT, wait this long for running tasks to land (default {DEFAULT_GRACE_S:g})")
        p.add_argument("--task-timeout", type=float, metavar="SECONDS",
                       help="a task's time limit (default: the config's resources.task_timeout_s, else 10 times its "
                            "estimate, at least 600 s); a task past it, or out of memory, is retried once at half "
                            "the replicas, then recorded as failed")
    if mlflow:  # every command that writes the output or the tracking store holds the output's lock
        p.add_argument("--wait", nargs="?", type=float, const=float("inf"), metavar="SECONDS",
                       help="if another process writes the same --out, wait for it (at most SECONDS) instead of "
                            "exiting 2")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pipeline", description=__doc__, epilog=f"{EXIT_CODES}\n\n{EXAMPLES}",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run (or resume) a sweep: every cell of the grid, every seed",
                         epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(run)
    run.add_argument("--force", action="store_true", help="recompute runs already in Parquet (old files are archived)")
    se = sub.add_parser("search", help="search each cell's critical width (the config's 'search' section)",
                        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(se)
    co = sub.add_parser("compact", help="merge a results directory's task files into one file per table")
    co.add_argument("out", help="the results directory (e.g. runs/smoke); run it when no sweep writes into it")
    sy = sub.add_parser("sync", help="log to MLflow every run that is in Parquet but not in MLflow")
    _common(sy, ray=False)
    st = sub.add_parser("status", help="per cell: runs done, diverged, pending, and the last activity")
    _common(st, ray=False, mlflow=False)
    _report_parser(sub)
    sb = sub.add_parser("submit", help="`ray job submit` a pipeline command to a running Ray cluster "
                                       "(auth token, git commit and upload handled)",
                        usage="python -m pipeline submit [--address URL] [--no-wait] -- COMMAND ARGS...")
    sb.add_argument("--address", help="the head's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    sb.add_argument("--no-wait", action="store_true", help="return once the job is submitted; follow it with "
                                                          "`ray job logs --follow JOB_ID`")
    sb.add_argument("pipeline_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS",
                    help="the pipeline command the job runs, e.g. -- run configs/paper.yaml --out /shared/paper "
                         "--tracking-uri http://MLFLOW:5000 (checked here before anything is uploaded: an absolute "
                         "--out and a named tracking store, on storage the head keeps)")
    nb = sub.add_parser("notebooks", help="execute the analysis notebooks into their .ipynb (from any directory)")
    nb.add_argument("names", nargs="*", default=list(NAMES), metavar="NAME",
                    help=f"which notebooks (default: {' '.join(NAMES)})")
    nb.add_argument("--results", help="the results directory they read (default: SOBOLEV_RESULTS, else "
                                      "results/widths of this checkout)")
    nb.add_argument("--into", help="write the executed .ipynb files into this directory (default: beside the .py)")
    return p


def run_options(args) -> RunOptions:
    """The run options of ``args``, validated once (a bad one is bad input: exit 2)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731 - commands take subsets
    return RunOptions(out=Path(args.out) if args.out else None, tracking_uri=get("tracking_uri"),
                      mlflow=not get("no_mlflow", False), force=get("force", False), address=get("address"),
                      num_cpus=get("num_cpus"), wait=get("wait"), grace_s=get("grace", DEFAULT_GRACE_S),
                      progress=not get("no_progress", False), task_timeout=get("task_timeout"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    cfg = options = None
    try:
        if args.command == "compact":
            return _compact(Path(args.out))
        if args.command == "submit":
            return _submit(args)
        if args.command == "notebooks":
            return _notebooks(args)
        cfg = load_config(args.config)
        options = run_options(args)
        out = options.output(cfg)
        if args.command == "status":
            print("\n".join(status_lines(cfg, out)))
            return 0
        if args.command == "sync":  # reads the results only
            return _sync(cfg, options)
        if args.command == "search" and cfg.search is None:
            raise ConfigError(f"{args.config}: search: no 'search' section; add one (see configs/search.yaml)")
        if args.dry_run:
            preflight(cfg, out, None)
            print("\n".join(estimate_lines(cfg, out, search=args.command == "search",
                                             num_cpus=args.num_cpus, recalibrate=args.recalibrate,
                                             exact_spectra=args.exact_spectra)))
            return 0
        if args.command == "search":
            return _search(cfg, args, options)
        report = run_sweep(cfg, options)
    except BAD_INPUT as exc:
        print_error(exc)
        return 2
    except DiskFull as exc:  # before any work: the layout, the lock or the MLflow store
        resume = resume_command(args.command, args.config, options.output(cfg), options.tracking(cfg))
        print_error(exc.with_resume(resume))
        return DISK_FULL_EXIT
    report.config_path = args.config
    print("\n".join(report.lines()))
    return exit_code(report)


def exit_code(report) -> int:
    """0 all done; 1 some tasks failed; 3 all in Parquet, MLflow incomplete; 130/143 stopped by a signal."""
    return report.exit_code or (1 if report.failed else 3 if not report.mlflow_complete else 0)


def _sync(cfg, options: RunOptions) -> int:
    """Fill MLflow from Parquet, holding the output (no sweep writes it meanwhile)."""
    uri, out = options.tracking(cfg), options.output(cfg)
    check_reachable(uri)
    with OutputLock(out, "sync", wait=options.wait):
        tracker = open_tracker(uri, cfg.experiment_name(), cfg.name, "sync", params={"sync": str(out), "kind": "sync"},
                               out=out, settings=cfg.tracking)
        n = sync(tracker, out)
        tracker.close()
    if tracker.error:
        print(f"MLflow INCOMPLETE: sync to {uri} failed ({tracker.error}); run the same command again", file=sys.stderr)
        return 3
    print(f"synced {n} runs from {out} to {uri}")
    return 0


def _search(cfg, args, options: RunOptions) -> int:
    report, table = run_search(cfg, options)
    report.config_path = args.config
    print(table[["n", "k", "delta", "bias", "m_star", "censored", "runs_used", "confirmed", "note"]]
          .to_string(index=False))
    print("\n".join(report.lines()))
    if report.disk_full is None:
        print(f"thresholds: {report.out / 'thresholds'}")
    return exit_code(report)


def _submit(args) -> int:
    """Check the command the job will run as the job would, before anything is uploaded: the
    config, the options, and that nothing would be written into the job's temporary working
    directory (pipeline.destinations); then ``ray job submit`` it."""
    rest = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    if not rest or rest[0] not in ("run", "search", "sync", "status"):
        raise SetupError("submit: name the pipeline command after --, e.g. `python -m pipeline submit "
                         "--address http://HEAD:8265 -- run configs/paper.yaml --out /shared/x`")
    inner = _parser().parse_args(rest)  # bad options: one line, exit 2, as for a local command
    cfg = load_config(inner.config)
    check_submittable(inner.command, cfg, run_options(inner))
    config = Path(inner.config).resolve()
    if config.is_relative_to(REPO):  # the job finds the uploaded copy from its working directory
        rest = [str(config.relative_to(REPO)) if a == inner.config else a for a in rest]
    return submit(args.address, rest, wait=not args.no_wait)


def _notebooks(args) -> int:
    try:
        written = execute_notebooks(args.names, results=args.results, into=args.into)
    except RuntimeError as exc:
        print_error(exc)
        return 1
    print("\n".join(f"executed: {p}" for p in written))
    return 0


def _compact(out: Path) -> int:
    if not (out / MANIFEST).exists():
        raise SetupError(f"compact: {out} is not a results directory (no {MANIFEST}); pass the --out of a sweep")
    merged = compact(out)
    print(f"compacted {out}: " + ", ".join(f"{n} {t} files into one" if n else f"{t} already one file"
                                           for t, n in merged.items()))
    return 0


# --------------------------------------------------------------------------------------------
# report: the study's shipped tables (analysis.report), from a finished results directory


def _report_parser(sub) -> None:
    rp = sub.add_parser("report", help="write a study's tables (laws.csv, widths.csv, horizons.csv, ...) from "
                                       "its results directory (analysis.report)")
    rp.add_argument("out", help="the results directory (e.g. results/widths); run it when no sweep writes into it")
    rp.add_argument("--to", metavar="DIR", help="write the tables here (default: OUT, next to runs/ and curves/)")
    rp.add_argument("--horizons", type=float, nargs="+", default=[48.0, 96.0, 192.0], metavar="T",
                    help="horizons T, 2T, 4T in units of 1/lambda_* (default 48 96 192)")
    rp.add_argument("--long-horizons", type=float, nargs="+", default=[384.0, 768.0], metavar="T",
                    help="the long part's extra horizons (default 384 768)")
    rp.add_argument("--drift-horizon", type=float, default=24.0, metavar="T", help="horizon of m_lazy (default 24)")
    rp.add_argument("--eps", type=float, default=1e-8, help="tolerance eps' of m_conv and m_rate (default 1e-8)")
    rp.add_argument("--delta-fail", type=float, default=0.1, help="widths at success rate 1 - delta_fail (0.1)")
    rp.add_argument("--n-boot", type=int, default=400, help="bootstrap replicates (default 400)")


def _report(args) -> int:
    try:
        written = report_results(args.out, args.to, horizons=args.horizons, long_horizons=args.long_horizons,
                                 drift_horizon=args.drift_horizon, eps=args.eps, delta_fail=args.delta_fail,
                                 n_boot=args.n_boot)
    except (OSError, ValueError) as exc:
        print(f"error: report: {exc}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {path}" for path in written.values()))
    return 0
