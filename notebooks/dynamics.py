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
# # Convergence in time, the drift of `H(t)`, and what keeps a run on a plateau
#
# The proof of Theorem 1 (Cocola & Hand 2020; `docs/MATH.md`) runs: at large width `lambda_min(H(0)) >= 3/4
# lambda_*` (Lemma 2); `H(t)` stays within `lambda_*/4` of `H(0)` (Lemma 4), so `lambda_min(H(t)) >= lambda_*/2`
# and `||r(t)||^2 <= exp(-lambda_* t) ||r(0)||^2`. Per run, outcomes are bimodal: a run either reaches the
# stopping tolerance or sits on a plateau, and which depends on the horizon. This notebook shows:
#
# 1. the loss curves of one cell against the bound (every seed at a few widths);
# 2. survival curves: the fraction of runs converged to `eps'` by flow time `t`, per cell and width, with
#    instance-then-seed intervals, and how many runs are still converging or on a plateau at their horizon;
# 3. the drift `max_t ||H(t) - H(0)||_2 / lambda_*` against width, its law, and `m_lazy`;
# 4. the mechanism: each run's late decay rate against `2 lambda_min(H)/lambda_*` minus the rate at which the
#    activation flips put loss back, and the jumps' scaling;
# 5. the bias network.
#
# Every number comes from the tested `analysis` package (`analysis.report`, `analysis.survival`,
# `analysis.widths`, `analysis.mechanism`); the notebook reads the results, filters, reshapes and plots.

# %% tags=["parameters"]
import os

from analysis.paths import repo_root, results_dir

RESULTS = os.environ.get("SOBOLEV_RESULTS", "results/widths")  # relative paths: to the repository root
DELTA_FAIL = float(os.environ.get("SOBOLEV_DELTA_FAIL", "0.1"))  # the theorem's failure probability
EPS = 1e-8            # the tolerance eps' of the survival curves
HORIZONS = (48, 96, 192)
DRIFT_HORIZON = 24    # the horizon of the drift law
CELL = None           # dict(n=..., k=..., delta=...) of the loss curves; None: no bias, k >= 1, most widths
N_WIDTHS = 3          # widths of that cell shown (spread over the tested ones)
N_BOOT = int(os.environ.get("SOBOLEV_N_BOOT", "400"))
FIG_DPI = 80

RESULTS = results_dir(RESULTS)  # relative to the repository root, found from the analysis package
print("results directory:", RESULTS.relative_to(repo_root()) if RESULTS.is_relative_to(repo_root()) else RESULTS)

# %%
# %matplotlib inline
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from analysis import (
    THRESHOLD_KEYS,
    drift_law,
    drift_ratios,
    drift_until,
    fit_mechanism,
    load_curves,
    load_runs,
    plot_mechanism,
    plot_survival,
    survival_table,
    width_medians,
    widths_table,
)
from analysis.floorlaw import add_k_group
from analysis.plots import interval_text, log_axis
from analysis.report import MECHANISM_TERMS, REPORT_CURVE_COLUMNS, ReportSettings, split_study

plt.rcParams.update({"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "figure.figsize": (8, 5), "font.size": 10,
                     "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8, "xtick.labelsize": 9,
                     "ytick.labelsize": 9})
pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 40)
pd.set_option("display.max_rows", 200)
warnings.filterwarnings("ignore", category=RuntimeWarning)  # bootstrap replicates that fail are counted, not fatal
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]

runs = add_k_group(load_runs(RESULTS, None))
curves = load_curves(RESULTS, REPORT_CURVE_COLUMNS)
settings = ReportSettings(horizons=HORIZONS, drift_horizon=DRIFT_HORIZON, eps=EPS, delta_fail=DELTA_FAIL,
                          n_boot=N_BOOT)
parts = split_study(runs, settings)
main = parts["main"]
print(f"{len(runs)} runs, {len(curves)} checkpoints; parts: "
      + ", ".join(f"{name} {len(parts[name])} runs (budget {parts.budget[name]:g}/lambda_*)"
                  for name in parts if len(parts[name])))
print(f"trend at the end of each main run: {main['trend'].value_counts().to_dict()}")


def cells_of(frame):
    return frame[list(THRESHOLD_KEYS)].drop_duplicates().sort_values(list(THRESHOLD_KEYS)).to_dict("records")


def in_cell(frame, cell):
    return frame[np.logical_and.reduce([np.isclose(frame[c], v) if c == "delta" else frame[c] == v
                                        for c, v in cell.items()])]


def name(cell):
    return ", ".join(f"{c}={v:g}" if not isinstance(v, (bool, np.bool_)) else f"{c}={v}" for c, v in cell.items())


# %% [markdown]
# ## 1. Loss curves of one cell against the theorem's bound
#
# The relative loss `L(t)/L(0) = ||r(t)||^2 / ||r(0)||^2` of every seed of one data instance at a few widths,
# against flow time in units of `1/lambda_*`, with the bound `exp(-lambda_* t)` (dashed) and `eps'` (dotted).
# Runs end either at the stopping tolerance or level off on a plateau; the plateau, not the bound, decides `m_conv`.

# %%
widths_per_cell = main.groupby(list(THRESHOLD_KEYS))["m"].nunique().reset_index(name="widths")
if CELL is None and len(widths_per_cell):
    pool = widths_per_cell[widths_per_cell["k"] >= 1] if (widths_per_cell["k"] >= 1).any() else widths_per_cell
    best = pool.sort_values(["widths", "n", "delta"], ascending=[False, True, False]).iloc[0]
    CELL = {c: best[c].item() if hasattr(best[c], "item") else best[c] for c in THRESHOLD_KEYS}
if CELL is None:
    print("loss curves: no main part in this results directory")
else:
    cell_runs = in_cell(main, CELL)
    ws = sorted(cell_runs["m"].unique().tolist())
    ws = [ws[i] for i in np.unique(np.round(np.linspace(0, len(ws) - 1, N_WIDTHS)).astype(int))]
    cell_runs = cell_runs[cell_runs["m"].isin(ws) & (cell_runs["data_seed"] == cell_runs["data_seed"].min())]
    c = curves[curves["run_id"].isin(cell_runs["run_id"])].merge(
        cell_runs[["run_id", "m", "seed", "lambda_star", "trend"]], on="run_id")
    c = c.assign(t_units=c["t"] * c["lambda_star"])
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for color, m in zip(COLORS, ws):
        for j, (_, curve) in enumerate(c[c["m"] == m].groupby("seed")):
            curve = curve[curve["rel_loss"] > 0]
            ax.plot(curve["t_units"], curve["rel_loss"], color=color, linewidth=0.9, alpha=0.75,
                    label=f"m={m}" if j == 0 else None)
    t = np.linspace(0, c["t_units"].max(), 200)
    ax.plot(t, np.exp(-t), "k--", label="exp(-lambda_* t)")
    ax.axhline(EPS, color="gray", linestyle=":", label=f"eps' = {EPS:g}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(c["rel_loss"][c["rel_loss"] > 0].min() / 3, 1e-16))
    ax.set_xlabel("t * lambda_*")
    ax.set_ylabel("L(t) / L(0), every seed (log scale)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"{name(CELL)}: one data instance, every seed")
    plt.show()
    print("trend per width:", cell_runs.groupby("m")["trend"].value_counts().unstack(fill_value=0).to_dict("index"))

# %% [markdown]
# ## 2. Survival curves: converged by flow time `t`
#
# Per cell and width, the fraction of runs whose relative loss reached `eps'` by `t` (`analysis.survival`),
# with the instance-then-seed interval (never narrower than Wilson's). A line ends at its runs' horizon: no
# extrapolation. The table counts, at each run's horizon, the runs not converged: still `converging` (late rate
# at least `0.1 lambda_*`) or on a `plateau`.

# %%
TIMES = np.geomspace(0.5, max(parts.budget["main"], 1.0), 40) if len(main) else np.array([])


def survival_figure(frame, title, times, ncols=4):
    cells = cells_of(frame)
    if not cells or not len(times):
        print(f"{title}: no runs")
        return None
    table = survival_table(frame, EPS, times, n_boot=N_BOOT)
    rows = int(np.ceil(len(cells) / ncols))
    fig, axes = plt.subplots(rows, min(ncols, len(cells)), figsize=(3.6 * min(ncols, len(cells)), 3.1 * rows),
                             squeeze=False, layout="constrained", sharey=True)
    for ax, cell in zip(axes.flat, cells):
        part = in_cell(table, cell)
        plot_survival(ax, part)
        for h in HORIZONS:
            ax.axvline(h, color="gray", linestyle=":", linewidth=0.7)
        ax.set_xscale("log")
        ax.set_title(name({c: cell[c] for c in ("n", "k", "delta")}))
        ax.legend(loc="upper left", fontsize=7, ncols=2)
    for ax in axes.flat[len(cells):]:
        ax.set_axis_off()
    fig.suptitle(f"{title}: fraction converged to eps'={EPS:g} by t (dotted: the horizons {HORIZONS})")
    plt.show()
    return table


surv = {}
for group, frame in main.groupby("k_group"):
    surv[group] = survival_figure(frame, f"main part, {group}", TIMES)

# %%
for group, table in surv.items():
    if table is None:
        continue
    last = table.sort_values("t").groupby([*THRESHOLD_KEYS, "m"]).last().reset_index()
    last = last.assign(at_horizon=[f"{c:.0f}/{n}" + (f" {cv}c" if cv else "") + (f" {p}p" if p else "")
                                   for c, n, cv, p in zip(last["converged"].fillna(-1), last["n_runs"],
                                                          last["n_converging"], last["n_plateau"])])
    print(f"{group}: at the runs' horizon {last['horizon'].min():g}/lambda_*: converged / runs, and of the others "
          f"c still converging, p on a plateau:")
    display(last.pivot_table(index=["n", "k", "delta"], columns="m", values="at_horizon", aggfunc="first"))

# %%
long_ = parts["long"]
if len(long_):
    survival_figure(long_, "long part", np.geomspace(0.5, parts.budget["long"], 48))
else:
    print("long part: not in this results directory")

# %% [markdown]
# ## 3. The drift of `H(t)` and `m_lazy`
#
# `max_t ||H(t) - H(0)||_2 / lambda_*` up to the drift horizon, per run of the drift pool (every no-bias run
# observed that long, one run per trajectory), against `m`, with the drift law
# `log drift = c + a log n + b log k + c_delta log delta - e log m` fitted by `analysis.widths.drift_law`
# (instance-then-seed bootstrap), Lemma 4's `1/4` and the `m_lazy` it implies (`analysis.widths.lazy_from_drift`),
# beside the width where the drift is measured below `1/4` for a fraction `1 - DELTA_FAIL` of the runs.

# %%
pool = parts["drift"]
if pool.empty:
    print(f"drift: no run observed through {DRIFT_HORIZON}/lambda_* (budgets: "
          f"{sorted(runs['t_max'].unique().tolist())}): not observed")
else:
    law = drift_law(pool, curves, horizon=DRIFT_HORIZON, n_boot=N_BOOT)
    shown_law = law.assign(value=interval_text(law["estimate"], law["lo"], law["hi"], 3).to_numpy())
    print(f"The drift law at {DRIFT_HORIZON}/lambda_* (a_m = -e):")
    display(shown_law.pivot_table(index=["bias", "k_group"], columns="term", values="value", aggfunc="first")
            .join(law.groupby(["bias", "k_group"])[["n_runs", "n_instances", "note"]].first()))
    lazy = widths_table(pool, curves, horizon=DRIFT_HORIZON, quantities=("lazy",), delta_fail=DELTA_FAIL, drift=law,
                        n_boot=N_BOOT)
    print("m_lazy, measured and from the drift law:")
    display(lazy.pivot_table(index=["n", "k", "delta"], columns="method", values="label", aggfunc="first"))
    # both up to the drift horizon (the runs' own records cover their whole budget)
    ratio = pool.assign(drift_ratio=drift_ratios(pool, curves, DRIFT_HORIZON),
                        lambda_ratio=drift_until(pool, curves, DRIFT_HORIZON)["lambda_ratio"])
    med = width_medians(ratio, ["drift_ratio", "lambda_ratio"])
    deltas = sorted(ratio["delta"].unique())
    fig, axes = plt.subplots(1, len(deltas), figsize=(6.5 * len(deltas), 4.8), squeeze=False, layout="constrained")
    for ax, delta in zip(axes[0], deltas):
        part = med[(med["quantity"] == "drift_ratio") & np.isclose(med["delta"], delta)]
        for i, ((n, k), line) in enumerate(part.groupby(["n", "k"])):
            color = COLORS[i % len(COLORS)]
            ax.errorbar(line["m"], line["median"], yerr=[line["median"] - line["q25"], line["q75"] - line["median"]],
                        marker="o", capsize=2, color=color, label=f"n={n}, k={k}")
            g = law[(law["k_group"] == ("k=0" if k == 0 else "k>=1")) & ~law["bias"].astype(bool)].set_index("term")
            if "m" in g.index and np.isfinite(g.loc["m", "estimate"]):
                mm = np.geomspace(line["m"].min(), line["m"].max(), 20)
                x = {"n": n, "k": k, "delta": delta}
                log_d = g.loc["c", "estimate"] + g.loc["m", "estimate"] * np.log(mm) + sum(
                    g.loc[t, "estimate"] * np.log(x[t]) for t in ("n", "k", "delta") if t in g.index)
                ax.plot(mm, np.exp(log_d), "--", color=color, linewidth=0.9)
        ax.axhline(0.25, color="black", linestyle=":", label="1/4 (Lemma 4)")
        log_axis(ax, "x", sorted(part["m"].unique()), "m")
        log_axis(ax, "y", None, "max ||H(t) - H(0)||_2 / lambda_* (median, IQR)")
        ax.set_title(f"delta={delta:g}: drift until {DRIFT_HORIZON}/lambda_* (dashed: the drift law's median)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    plt.show()
    lam = med[med["quantity"] == "lambda_ratio"]
    print(f"min lambda_min(H(t)) / lambda_* until {DRIFT_HORIZON}/lambda_* (median), per width (Lemma 4: >= 1/2):")
    display(lam.pivot_table(index=["n", "k", "delta"], columns="m", values="median").round(2))

# %% [markdown]
# ## 4. The mechanism: the flow against the flips
#
# Between flips the residual follows `dr/dt = -H r`, which removes `||r||^2` at a rate of at least
# `2 lambda_min(H)`; each flip of an activation pattern makes the derivative residual jump. Per run,
# `late_rate ~ 2 lambda_min_late / lambda_* - jump_rate_late` (the late window: the last doubling of flow time).
# `analysis.mechanism.fit_mechanism` regresses `late_rate` on both, with an instance-then-seed interval; the
# expected coefficients are `2` and `-1`. The jumps' scaling law is fitted over the runs with positive jumps.

# %%
if main.empty:
    print("mechanism: no main part")
else:
    mech = fit_mechanism(main.drop(columns=["mode", "step_factor", "t_max"]), terms=MECHANISM_TERMS,
                         by=("bias", "k_group"), jump_col="jump_energy_total", n_boot=N_BOOT)
    reg = mech.regression.assign(value=interval_text(mech.regression["estimate"], mech.regression["lo"],
                                                     mech.regression["hi"]).to_numpy())
    print("late_rate = c + b1 lambda_min_late + b2 jump_rate_late (expected b1 = 2, b2 = -1):")
    display(reg.pivot_table(index=["bias", "k_group"], columns="term", values="value", aggfunc="first")
            .join(reg.groupby(["bias", "k_group"])[["r2", "n_runs", "n_instances", "note"]].first()))
    jumps = mech.jumps.assign(value=interval_text(mech.jumps["estimate"], mech.jumps["lo"], mech.jumps["hi"]))
    print("The jumps' scaling: log jump_energy_total = c + a_n log n + a_k log k + a_delta log delta + a_m log m:")
    display(jumps.pivot_table(index=["k_group"], columns="term", values="value", aggfunc="first")
            .join(jumps.groupby("k_group")[["n_runs", "note"]].first()))
    groups = sorted(main["k_group"].unique())
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 5), squeeze=False, layout="constrained")
    for ax, group in zip(axes[0], groups):
        # plot_mechanism draws late_rate against 2 min_lambda_ratio - jump_rate_late: the late window's lambda_min
        part = main[main["k_group"] == group]
        points = plot_mechanism(ax, part.assign(min_lambda_ratio=part["lambda_min_late"]))
        ax.set_xlabel(r"$2\,\lambda_{\min,\mathrm{late}}/\lambda_* - $ jump rate (late window)")
        ax.set_title(f"{group}: each run's late rate against the flow-and-jumps prediction")
        ax.legend(loc="lower right")
        fig.colorbar(points, ax=ax, label="log2 m")
    plt.show()
    print("Medians per trend and width (what sits on a plateau): late_rate, lambda_min_late, jump_rate_late")
    med = width_medians(main, ["late_rate", "lambda_min_late", "jump_rate_late"], by=["k_group", "trend"])
    display(med.pivot_table(index=["k_group", "trend", "quantity"], columns="m", values="median").round(3))

# %% [markdown]
# ## 5. The bias network
#
# Survival curves of the bias part (its budget is shorter: a flow time costs several times the steps), and its
# drift against width.

# %%
bias = parts["bias"]
if bias.empty:
    print("bias part: not in this results directory")
else:
    survival_figure(bias, "bias part", np.geomspace(0.5, parts.budget["bias"], 32))
    if parts.budget["bias"] >= DRIFT_HORIZON:
        ratio = bias.assign(drift_ratio=drift_ratios(bias, curves, DRIFT_HORIZON))
        display(width_medians(ratio, ["drift_ratio"]).pivot_table(index=["n", "k", "delta"], columns="m",
                                                                   values="median").round(3))
    else:
        print(f"bias drift at {DRIFT_HORIZON}/lambda_*: beyond its budget {parts.budget['bias']:g}: not observed")
