"""What MLflow's charts keep of a curve at the default ``tracking.curve_points``: the full history
(every checkpoint, as Parquet has it) against the sampled points, for a typical run of the shipped
study (the median count of checkpoints) and its longest, in flow time lambda_* t on a log axis and
on the linear one the UI's "Relative time" uses.

    PYTHONPATH=. python benchmarks/plot_curve_points.py [--study results/widths] [--out docs/curve_points.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default=str(ROOT / "results" / "widths"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "curve_points.png"))
    args = ap.parse_args()
    from pipeline.config import CURVE_POINTS
    from pipeline.tracking import curve_rows
    from records.tables import read_table

    curves = read_table(Path(args.study), "curves").to_pandas()
    runs = read_table(Path(args.study), "runs").to_pandas().set_index("run_id")
    counts = curves.groupby("run_id").size().sort_values(kind="stable")
    picks = {"typical run": counts.index[len(counts) // 2], "longest run": counts.index[-1]}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for row, (label, rid) in enumerate(picks.items()):
        c = curves[curves.run_id == rid].sort_values("step").reset_index(drop=True)
        rec = runs.loc[rid]
        lt = c.t.to_numpy() * rec.lambda_star
        rows = curve_rows(c.t.tolist(), list(range(len(c))), CURVE_POINTS)
        bound_rel = c.bound.to_numpy() / rec.r0_sq
        for col, scale in enumerate(("log", "linear")):
            ax = axes[row, col]
            keep = lt > 0 if scale == "log" else slice(None)
            ax.plot(lt[keep], c.rel_loss.to_numpy()[keep], "-", color="0.6", lw=1, label=f"rel_loss, all {len(c)}")
            ax.plot(lt[keep], c.rel_loss.to_numpy()[keep], ".", color="0.6", ms=4)
            ax.plot(lt[keep], bound_rel[keep], "--", color="0.75", lw=1, label="bound_rel, all")
            sel = [i for i in rows if scale == "linear" or lt[i] > 0]
            ax.plot(lt[sel], c.rel_loss.to_numpy()[sel], "o-", color="C0", ms=5, lw=1.5,
                    label=f"rel_loss, the {len(rows)} sent to MLflow")
            ax.plot(lt[sel], bound_rel[sel], "s--", color="C1", ms=4, lw=1, label="bound_rel, sent")
            ax.set_xscale(scale)
            ax.set_yscale("log")
            ax.set_xlabel("flow time lambda_* t" + (" (the UI's Relative time)" if scale == "linear" else ""))
            ax.set_ylabel("relative loss")
            ax.set_title(f"{label}: n{rec.n} k{rec.k} m{rec.m} delta{rec.delta:g} s{rec.seed}, {rec.stopped_by}",
                         fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"tracking.curve_points = {CURVE_POINTS} (default): log-spaced in flow time, first and last "
                 f"checkpoint always; full curves stay in Parquet", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: {', '.join(f'{k} {v} ({counts[v]} checkpoints)' for k, v in picks.items())}")


if __name__ == "__main__":
    main()
