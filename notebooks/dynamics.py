# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training dynamics against the mechanism of the proof
#
# The proof of Theorem 1 (Cocola & Hand 2020; `docs/MATH.md`) runs: at large width `lambda_min(H(0)) >= 3/4
# lambda_*` (Lemma 2); the weights move by at most `R ~ 1/sqrt(m)` (Lemma 4), so `H(t)` stays within
# `lambda_*/4` of `H(0)` in Frobenius norm and `lambda_min(H(t)) >= lambda_*/2`; hence
# `||r(t)||^2 <= exp(-lambda_* t) ||r(0)||^2`. This notebook checks each step on the recorded runs, and
# measures what the proof does not see: every flip of an activation pattern makes the directional derivative
# jump by about `1/sqrt(m)`, which the gradient ignores. It shows the loss curves against the bound (with the
# largest loss of each checkpoint interval), ReLU against frozen activation patterns, the gross and net pattern
# flips, when the bound first broke, the value and derivative residuals at the end, and the drift of `H(t)`.
#
# Every number comes from the tested `analysis` package or straight from the results tables; the notebook
# only reshapes (e.g. flow time in units of `1/lambda_*`) and plots. Medians are over seeds, with the
# quartiles as error bars; diverged and failed runs are left out of the per-width summaries. The per-width
# figures use one experiment: ReLU runs at the longest horizon and step factor 1 (the frozen control and other
# horizons are in the runs table too, and are kept apart).

# %% tags=["parameters"]
import os

from analysis.paths import repo_root, results_dir

RESULTS = os.environ.get("SOBOLEV_RESULTS", "results/cpu_study")  # relative paths: to the repository root
DELTA_FAIL = float(os.environ.get("SOBOLEV_DELTA_FAIL", "0.1"))  # the theorem's failure probability (section 5)
EPS = None         # tolerances eps' drawn on the loss curves; None: those of analysis.EPS_GRID >= the training eps
CELL = None        # dict(n=..., k=..., delta=..., bias=...) of the loss curves; None: no bias, k >= 1, most widths
N_WIDTHS = 4       # widths of that cell shown (spread over the tested ones)
DELTA_PLOT = None  # separation shown in the per-width figures; None: the most common one
FIG_DPI = 80

RESULTS = results_dir(RESULTS)  # relative to the repository root, found from the analysis package
print("results directory:", RESULTS.relative_to(repo_root()) if RESULTS.is_relative_to(repo_root()) else RESULTS)

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from matplotlib.ticker import NullFormatter

from analysis import (EPS_GRID, RUN_COLUMNS, THRESHOLD_KEYS, load_curves, load_runs, loglog_slopes, rate_vs_theory,
                      width_medians)
from analysis.plots import anchored_power_law, plot_width_medians

plt.rcParams.update({"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "figure.figsize": (8, 5), "font.size": 10,
                     "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 10, "xtick.labelsize": 10,
                     "ytick.labelsize": 10})
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)

# %%
EXTRA_RUN_COLUMNS = ("r0_sq", "max_H_drift", "jump_norm_total", "lin_dist_final", "regime_held")
CURVE_COLUMNS = ("run_id", "step", "t", "rel_loss", "rel_loss_interval_max", "bound", "lambda_min", "H_drift",
                 "lin_dist", "max_weight_move", "flip_fraction", "jump_norm")

all_runs = load_runs(RESULTS, columns=[*RUN_COLUMNS, *EXTRA_RUN_COLUMNS])
HORIZON = float(all_runs["t_max"].max())
STEP = 1.0 if (all_runs["step_factor"] == 1.0).any() else float(all_runs["step_factor"].mode().iloc[0])
runs = all_runs[(all_runs["mode"] == "relu") & (all_runs["t_max"] == HORIZON) & (all_runs["step_factor"] == STEP)]
print(f"{len(all_runs)} runs; modes {all_runs['mode'].value_counts().to_dict()}, horizons "
      f"{sorted(all_runs['t_max'].unique().tolist())}, step factors {sorted(all_runs['step_factor'].unique().tolist())}"
      f" -> per-width figures: mode relu, t_max {HORIZON:g}, step_factor {STEP:g} ({len(runs)} runs)")
train_eps = float(runs["eps"].max())
if EPS is None:
    EPS = [e for e in EPS_GRID if e >= train_eps] or [train_eps]
if DELTA_PLOT is None:
    DELTA_PLOT = float(runs["delta"].value_counts().sort_index().idxmax())
print(f"{len(runs)} runs in {runs.groupby(list(THRESHOLD_KEYS)).ngroups} cells; "
      f"widths {sorted(runs['m'].unique().tolist())}; "
      f"status {runs['status'].value_counts().to_dict()}; training eps {train_eps:g}; eps' drawn {EPS}")

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
BIASES = sorted(runs["bias"].unique().tolist())
shown = runs[np.isclose(runs["delta"], DELTA_PLOT)]


def log_width_axis(ax, widths):
    ax.set_xscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("m (log scale)")


def per_cell(df, draw, title, ylabel, logy=True, refs=()):
    """One panel per bias variant, one line per (n, k) cell at DELTA_PLOT; ``draw(ax, part, color, label)``."""
    fig, axes = plt.subplots(1, len(BIASES), figsize=(max(7.5, 5.5 * len(BIASES) + 0.6), 5), squeeze=False,
                             constrained_layout=True)
    for ax, bias in zip(axes[0], BIASES):
        sel = df[(df["bias"] == bias) & np.isclose(df["delta"], DELTA_PLOT)]
        for i, ((n, k), part) in enumerate(sel.groupby(["n", "k"])):
            draw(ax, part.sort_values("m"), COLORS[i % len(COLORS)], f"n={n}, k={k}")
        for y, style, label in refs:
            ax.axhline(y, color="gray", linestyle=style, linewidth=0.9, label=label)
        log_width_axis(ax, sorted(sel["m"].unique().tolist()))
        if logy:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(ylabel + (" (log scale)" if logy else ""))
        ax.set_title(f"bias={bias}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3))
    fig.suptitle(f"{title} (delta={DELTA_PLOT:g})")
    plt.show()


def draw_with_reference(slope):
    def draw(ax, part, color, label):
        plot_width_medians(ax, part, color=color, label=label)
        if not ax.get_legend_handles_labels()[1].count(f"slope {slope:g}") and len(part):
            m = part["m"].to_numpy(float)
            ax.plot(m, anchored_power_law(m, m[0], part["median"].iloc[0], slope), "--", color="gray",
                    label=f"slope {slope:g}")
    return draw


def medians_of(table, quantity):
    """The rows of one quantity of a width_medians table."""
    return table[table["quantity"] == quantity]


def slope_table(slopes):
    """A loglog_slopes table for display: slope with its 95% interval per cell."""
    out = slopes.assign(slope_ci=[f"{s:.2f} [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else f"{s:.2f}"
                                  for s, lo, hi in zip(slopes["slope"], slopes["lo"], slopes["hi"])])
    keep = [c for c in ("quantity", "n", "k", "delta", "bias", "slope_ci", "n_widths", "expected",
                        "expected_in_interval") if c in out.columns]
    if out["expected"].isna().all():
        keep = keep[:-2]
    return out[keep]


# %% [markdown]
# ## 1. Loss curves of one cell against the theorem's bound
#
# The relative loss `L(t)/L(0) = ||r(t)||^2 / ||r(0)||^2` of every seed at a few widths, against flow time in
# units of `1/lambda_*`, with the theorem's bound `exp(-lambda_* t)` (black dashed; the pipeline's `bound`
# column over `||r(0)||^2`) and the tolerances `eps'` (dotted). Theorem 1 says that at large enough width the
# curves stay below the bound. The other panels follow the proof along the same runs:
# `lambda_min(H(t)) / lambda_*` must stay above 1/2 (Lemma 4; 3/4 at `t = 0` by Lemma 2), the drift
# `||H(t) - H(0)||_F / lambda_*` below 1/4, and the distance to the linearised flow
# `||r(t) - exp(-H(0) t) r(0)|| / ||r(0)||` shows when the network leaves the NTK regime (flips).
# The shaded band of each loss curve reaches up to `rel_loss_interval_max`, the largest loss at any step of the
# interval before each checkpoint: a curve that looks settled at the checkpoints but spikes in between shows it.

# %%
cells = runs.groupby(list(THRESHOLD_KEYS))["m"].nunique().reset_index(name="widths")
if CELL is None:
    pool = cells[~cells["bias"] & (cells["k"] >= 1)] if (~cells["bias"] & (cells["k"] >= 1)).any() else cells
    CELL = pool.sort_values(["widths", "n", "k"], ascending=[False, True, True]).iloc[0][list(THRESHOLD_KEYS)]
    CELL = {c: getattr(v, "item", lambda: v)() for c, v in CELL.items()}
in_cell = np.logical_and.reduce([np.isclose(runs[c], CELL[c]) if c == "delta" else runs[c] == CELL[c]
                                 for c in THRESHOLD_KEYS])
cell_runs = runs[in_cell]
widths = sorted(cell_runs["m"].unique().tolist())
widths = [widths[i] for i in np.unique(np.round(np.linspace(0, len(widths) - 1, N_WIDTHS)).astype(int))]
# one data instance and at most 8 seeds: every line stays readable (and the notebook small)
cell_runs = cell_runs[cell_runs["m"].isin(widths) & (cell_runs["data_seed"] == cell_runs["data_seed"].min())
                      & (cell_runs["seed"] < 8)]
print("cell:", CELL, "| widths shown:", widths, f"| {len(cell_runs)} runs (one data instance, at most 8 seeds)")

cell_curves = load_curves(RESULTS, columns=CURVE_COLUMNS, run_ids=cell_runs["run_id"]).merge(
    cell_runs[["run_id", "m", "seed", "lambda_star", "r0_sq"]], on="run_id")
cell_curves = cell_curves.assign(
    t_units=cell_curves["t"] * cell_curves["lambda_star"],            # flow time in units of 1/lambda_*
    bound_rel=cell_curves["bound"] / cell_curves["r0_sq"],             # exp(-lambda_* t)
    lambda_ratio=cell_curves["lambda_min"] / cell_curves["lambda_star"],
    drift_ratio=cell_curves["H_drift"] / cell_curves["lambda_star"],
)

panels = [("rel_loss", "L(t) / L(0)", True), ("lambda_ratio", "lambda_min(H(t)) / lambda_*", False),
          ("drift_ratio", "||H(t) - H(0)||_F / lambda_*", True),
          ("lin_dist", "distance to the linearised flow", True)]
fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
for ax, (col, label, logy) in zip(axes.flat, panels):
    for color, m in zip(COLORS, widths):
        for j, (_, curve) in enumerate(cell_curves[cell_curves["m"] == m].groupby("seed")):
            curve = curve.dropna(subset=[col])
            if logy:
                curve = curve[curve[col] > 0]
            ax.plot(curve["t_units"], curve[col], color=color, linewidth=0.9, alpha=0.7,
                    label=f"m={m}" if j == 0 else None)
            if col == "rel_loss":
                ax.fill_between(curve["t_units"], curve[col], curve["rel_loss_interval_max"].fillna(curve[col]),
                                step="pre", color=color, alpha=0.15, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("t * lambda_*")
    ax.set_ylabel(label + (" (log scale)" if logy else ""))
axes[0, 0].plot(*cell_curves.sort_values("t_units")[["t_units", "bound_rel"]].to_numpy().T, "k--",
                label="exp(-lambda_* t)")
for e in EPS:
    axes[0, 0].axhline(e, color="gray", linestyle=":", linewidth=0.8)
axes[0, 1].axhline(0.5, color="gray", linestyle="--", label="1/2 (Lemma 4)")
axes[0, 1].axhline(0.75, color="gray", linestyle=":", label="3/4 (Lemma 2)")
axes[1, 0].axhline(0.25, color="gray", linestyle="--", label="1/4 (Lemma 4)")
for ax in axes.flat:
    ax.legend(loc="best")
fig.suptitle("Cell " + ", ".join(f"{c}={CELL[c]}" for c in THRESHOLD_KEYS) + ": every seed at a few widths")
plt.show()

# %% [markdown]
# ### ReLU against frozen activation patterns
#
# The same cell, data and seeds trained with the activation patterns frozen at `t = 0` (`mode = frozen`, the
# NTK-linearised flow, which has no flips): the relative loss of every seed in both modes at the widths of the
# cell, horizon `t_max` as above (seeds checkpoint at different times, so each is drawn on its own). Where the ReLU curve levels off while the frozen one goes on
# falling, the floor is the flips'.

# %%
cell_all = all_runs[np.logical_and.reduce([np.isclose(all_runs[c], CELL[c]) if c == "delta" else all_runs[c] == CELL[c]
                                           for c in THRESHOLD_KEYS])]
cell_all = cell_all[(cell_all["t_max"] == HORIZON) & (cell_all["step_factor"] == STEP) & cell_all["m"].isin(widths)]
if set(cell_all["mode"]) >= {"relu", "frozen"}:
    both = load_curves(RESULTS, columns=["run_id", "t", "rel_loss"], run_ids=cell_all["run_id"]).merge(
        cell_all[["run_id", "m", "mode", "seed", "lambda_star"]], on="run_id")
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for color, m in zip(COLORS, widths):
        for mode, style in (("relu", "-"), ("frozen", "--")):
            for j, (_, curve) in enumerate(both[(both["m"] == m) & (both["mode"] == mode)].groupby("seed")):
                curve = curve[curve["rel_loss"] > 0]
                ax.plot(curve["t"] * curve["lambda_star"], curve["rel_loss"], style, color=color, linewidth=0.9,
                        alpha=0.7, label=f"m={m}, {mode}" if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("t * lambda_*")
    ax.set_ylabel("L(t) / L(0), every seed (log scale)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("ReLU (solid) against frozen patterns (dashed): "
                 + ", ".join(f"{c}={CELL[c]}" for c in THRESHOLD_KEYS))
    plt.show()
else:
    print("frozen-pattern control for this cell: not in this results directory")

# %% [markdown]
# ## 2. The spectrum and the drift of `H(t)` against width
#
# Per cell and width: the median of `lambda_min(H(0)) / lambda_*` (Lemma 2 wants >= 3/4 at large `m`) and of
# `min_t lambda_min(H(t)) / lambda_*` (Lemma 4 wants >= 1/2), then the largest drift `max_t ||H(t) - H(0)||_F`
# relative to `lambda_*` (Lemma 4's condition: below 1/4) on log-log axes, with its fitted slope per cell against
# -1/2 (grey dashed: the drift of weights that move by `~1/sqrt(m)`).

# %%
flow = rate_vs_theory(runs)


def draw_column(column):
    def draw(ax, part, color, label):
        ax.plot(part["m"], part[column], marker="o", color=color, label=label)
    return draw


per_cell(flow, draw_column("lambda0_ratio"), "lambda_min(H(0)) / lambda_*", "median ratio", logy=False,
         refs=[(0.75, ":", "3/4 (Lemma 2)")])
per_cell(flow, draw_column("min_lambda_ratio"), "min_t lambda_min(H(t)) / lambda_*", "median ratio", logy=False,
         refs=[(0.5, "--", "1/2 (Lemma 4)")])

# %%
drift = width_medians(runs.assign(H_drift_ratio=runs["max_H_drift"] / runs["lambda_star"]), ["H_drift_ratio"])
per_cell(drift, draw_with_reference(-0.5), "max_t ||H(t) - H(0)||_F / lambda_*", "median (IQR)",
         refs=[(0.25, "--", "1/4 (Lemma 4)")])
print("Log-log slope of the H drift against m (weights moving by ~1/sqrt(m): -1/2):")
display(slope_table(loglog_slopes(drift, expected={"H_drift_ratio": -0.5})))

# %% [markdown]
# ## 3. How far the weights move
#
# `max_t max_r ||w_r(t) - w_r(0)||` against `m`. Lemma 4 bounds it by a radius `R ~ 1/sqrt(m)`, so on log-log
# axes the medians should fall with slope -1/2 (grey dashed reference, anchored at each panel's first point).
# The table gives the fitted slope per cell with its 95% interval and whether -1/2 lies inside it.

# %%
moves = width_medians(runs, ["max_weight_move", "flip_fraction", "jump_norm_total"])



per_cell(medians_of(moves, "max_weight_move"), draw_with_reference(-0.5), "Largest weight movement",
         "max_r ||w_r(t) - w_r(0)|| (median, IQR)")
print("Log-log slope of the weight movement against m (Lemma 4: -1/2):")
display(slope_table(loglog_slopes(medians_of(moves, "max_weight_move"))))

# %% [markdown]
# ## 4. Flipped activation patterns: gross against net
#
# A pattern `1{w_r^T x_i > 0}` can flip and flip back. `flips_net_total` counts the patterns that differ between
# consecutive checkpoints (summed over the run), `flips_gross_total` every flip at every step. Their ratio says how
# much of the pattern movement is chatter around a boundary, which the checkpoints do not see; both, and the
# accumulated norm of the jumps of the derivative residual the flips caused (`jump_norm_total`), should fall with
# `m`. The tables give the log-log slopes with 95% intervals.

# %%
flips = width_medians(runs.assign(
    flip_ratio=runs["flips_gross_total"] / runs["flips_net_total"].where(runs["flips_net_total"] > 0)),
    ["flips_gross_total", "flips_net_total", "flip_ratio"])


def draw_gross_net(ax, part, color, label):
    plot_width_medians(ax, part[part["quantity"] == "flips_gross_total"], color=color, label=label)
    net = part[part["quantity"] == "flips_net_total"].sort_values("m")
    ax.plot(net["m"], net["median"], marker="s", linestyle=":", color=color)


per_cell(flips, draw_gross_net, "Pattern flips per run: gross (o, solid) and net between checkpoints (s, dotted)",
         "flips (median, IQR of gross)")
per_cell(medians_of(flips, "flip_ratio"), lambda ax, part, color, label: plot_width_medians(
    ax, part, color=color, label=label), "Gross over net flips (runs with net flips)", "gross / net (median, IQR)",
    refs=[(1.0, ":", "1 (every flip seen at the checkpoints)")])
per_cell(medians_of(moves, "flip_fraction"), lambda ax, part, color, label: plot_width_medians(
    ax, part, color=color, label=label), "Fraction of flipped activation patterns at the end",
    "flip fraction (median, IQR)")
per_cell(medians_of(moves, "jump_norm_total"), lambda ax, part, color, label: plot_width_medians(
    ax, part, color=color, label=label), "Accumulated jump norm of the derivative residual",
    "jump_norm_total (median, IQR)")
print("Log-log slopes against m (flips_gross_total, flips_net_total, flip_ratio, flip_fraction, jump_norm_total):")
display(slope_table(loglog_slopes(pd.concat([flips, moves[moves["quantity"].isin(["flip_fraction",
                                                                                   "jump_norm_total"])]]))))

# %% [markdown]
# ## 5. When the theorem's bound first broke
#
# `bound_violation_t * lambda_*`: the flow time (in units of `1/lambda_*`) of the first step at which
# `||r(t)||^2 > exp(-lambda_* t) ||r(0)||^2`, checked at every step, against `m` (median and quartiles over the runs
# that broke it). Theorem 1 says that above its width a fraction `1 - DELTA_FAIL` of the runs never breaks it; the
# second figure gives the share of runs that never did, per cell and width.

# %%
broke = width_medians(runs.assign(violation_time=runs["bound_violation_t"] * runs["lambda_star"]),
                      ["violation_time"])
if len(broke):
    per_cell(broke, lambda ax, part, color, label: plot_width_medians(ax, part, color=color, label=label),
             "First break of the bound, runs that broke it", "bound_violation_t * lambda_* (median, IQR)")
else:
    print("no run broke the bound: nothing to draw")
never = (runs[~runs["status"].isin(["diverged"])].assign(never=lambda r: r["bound_violation_t"].isna())
         .groupby([*THRESHOLD_KEYS, "m"], as_index=False)["never"].mean())
per_cell(never, draw_column("never"), "Share of runs that never broke the bound", "share of runs", logy=False,
         refs=[(1 - DELTA_FAIL, "--", f"1 - DELTA_FAIL = {1 - DELTA_FAIL:g}")])

# %% [markdown]
# ## 6. Value against derivative residual at the end
#
# The Sobolev loss is the sum of the value residual and the directional-derivative residual; `value_rel_final` and
# `deriv_rel_final` are each at the end relative to its own start. One point per run (colour: width); below the
# diagonal the derivative residual has fallen less, relative to its start, than the value residual. `docs/MATH.md`
# expects the derivative part (the one the flips leave behind) to dominate the floor with bias; the figure and the
# table show whether it does in these relative terms. For `k = 0` there is no derivative residual.

# %%
ends = runs.dropna(subset=["value_rel_final", "deriv_rel_final"])
ends = ends[(ends["value_rel_final"] > 0) & (ends["deriv_rel_final"] > 0)]
fig, axes = plt.subplots(1, len(BIASES), figsize=(max(7.5, 5.5 * len(BIASES) + 0.6), 5), squeeze=False,
                         constrained_layout=True)
for ax, bias in zip(axes[0], BIASES):
    sel = ends[ends["bias"] == bias]
    for color, m in zip(COLORS, sorted(sel["m"].unique())):
        part = sel[sel["m"] == m]
        ax.scatter(part["deriv_rel_final"], part["value_rel_final"], s=14, alpha=0.7, color=color, label=f"m={m}")
    if len(sel):
        lims = np.array([sel[["value_rel_final", "deriv_rel_final"]].min().min(),
                         sel[["value_rel_final", "deriv_rel_final"]].max().max()])
        ax.plot(lims, lims, "k--", linewidth=0.8, label="equal")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("deriv_rel_final (log scale)")
    ax.set_ylabel("value_rel_final (log scale)")
    ax.set_title(f"bias={bias}")
handles, labels = axes[0, 0].get_legend_handles_labels()
fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
fig.suptitle("Value against derivative residual at the end, every run")
plt.show()
residuals = width_medians(runs, ["value_rel_final", "deriv_rel_final"])
print("Median final residuals per cell and width (value over derivative):")
display(residuals.pivot_table(index=[*THRESHOLD_KEYS, "m"], columns="quantity", values="median"))

# %% [markdown]
# ## 7. The measured rate against `lambda_*`, and Proposition 1
#
# `rate_ratio` is the fitted decay rate `lambda` of `||r(t)|| ~ exp(-lambda t)` over `lambda_*`: the theorem's
# bound on `||r||^2` needs `lambda >= lambda_*/2`, i.e. a ratio of at least 1/2; the linearised (NTK) flow at
# infinite width decays at least at rate `lambda_*` (ratio 1). The second figure gives the fraction of runs in
# which the bound `exp(-lambda_* t)` and `lambda_min(H(t)) >= lambda_*/2` held at every checkpoint; the theorem
# promises at least `1 - DELTA_FAIL` (dashed) above its width. The last figure sets Proposition 1's lower bound
# `(1 - k delta_2) delta_1 / (100 n^2)` against the computed `lambda_*` (it must lie below the diagonal).

# %%
rate = flow.rename(columns={"rate_ratio": "median", "rate_ratio_q25": "q25", "rate_ratio_q75": "q75"})
per_cell(rate, lambda ax, part, color, label: plot_width_medians(ax, part, color=color, label=label),
         "Measured decay rate over lambda_*", "rate_ratio (median, IQR)", logy=False,
         refs=[(1.0, ":", "1 (lambda_*)"), (0.5, "--", "1/2 (theorem's bound)")])


def draw_held(ax, part, color, label):
    ax.plot(part["m"], part["bound_held_frac"], marker="o", color=color, label=label)
    ax.plot(part["m"], part["lambda_held_frac"], marker="s", linestyle=":", color=color)


per_cell(flow, draw_held, "Runs in the regime: bound held (o), lambda_min >= lambda_*/2 (s, dotted)",
         "fraction of runs", logy=False, refs=[(1 - DELTA_FAIL, "--", f"1 - DELTA_FAIL = {1 - DELTA_FAIL:g}")])

# %%
prop = flow.groupby(list(THRESHOLD_KEYS), as_index=False).agg(
    prop1_ratio=("prop1_ratio", "median"), prop1_held_frac=("prop1_held_frac", "min"))
instances = runs.groupby(list(THRESHOLD_KEYS), as_index=False)[["lambda_star", "prop1_bound"]].median()
fig, ax = plt.subplots(figsize=(4.2, 3.4), constrained_layout=True)
for i, (bias, part) in enumerate(instances.groupby("bias")):
    ax.scatter(part["lambda_star"], part["prop1_bound"], color=COLORS[i], label=f"bias={bias}")
    for _, row in part.iterrows():
        ax.annotate(f"n={row['n']},k={row['k']}", (row["lambda_star"], row["prop1_bound"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
lims = np.array([instances[["lambda_star", "prop1_bound"]].min().min(), instances["lambda_star"].max()])
ax.plot(lims, lims, "k--", linewidth=0.8, label="prop1_bound = lambda_*")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("lambda_* = lambda_min(H^inf)")
ax.set_ylabel("Proposition 1 lower bound")
ax.legend(loc="best")
ax.set_title("Proposition 1 against the computed lambda_*")
plt.show()
print("Proposition 1 bound / lambda_* per cell (<= 1 where it holds):")
display(prop)
