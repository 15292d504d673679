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
# # How wide must the network be? Empirical width thresholds against Cocola & Hand (2020)
#
# Theorem 1 (no bias) and Theorem 2 (bias) say that gradient flow on the directional Sobolev loss
# fits any data at rate `exp(-lambda_* t)` once the width exceeds
# `m_thm = Omega(n^6 k^3 gamma^2 / (lambda_*^4 delta^2))` (see `shared/MATH.md`). This notebook reads a
# results directory of the sweep pipeline and measures the empirical threshold `m*(n, k, delta_1, bias)`:
# the smallest tested width from which the success rate over random initialisations stays at or above
# `1 - DELTA_FAIL`. Success has two meanings, both judged at a tolerance `eps'` chosen after the fact:
#
# * **interpolation**: the relative loss `L(t)/L(0)` reached `eps'` within the time budget;
# * **regime**: the theorem's bound `||r(t)||^2 <= exp(-lambda_* t) ||r(0)||^2` and
#   `lambda_min(H(t)) >= lambda_*/2` held at every checkpoint until `eps'` was reached.
#
# Every number below comes from the tested `analysis` package; this notebook only reshapes and plots.
#
# **Censored thresholds.** A cell whose rate never reaches the target at the largest tested width has
# `m* > m_max` (*censored above*, drawn as a hollow ▲ at `m_max`); one that already reaches it at the
# smallest width has `m* <= m_min` (*censored below*, hollow ▼ at `m_min`). Censored cells carry no
# number: tables show them as `> m_max` / `<= m_min`, and the power-law fits leave them out
# (the `n_censored` column says how many).

# %% tags=["parameters"]
import os

from analysis.paths import repo_root, results_dir

RESULTS = os.environ.get("SOBOLEV_RESULTS", "results/cpu_study")  # relative paths: to the repository root
DELTA_FAIL = float(os.environ.get("SOBOLEV_DELTA_FAIL", "0.1"))  # the sweep's delta_fail (m_thm was computed at it)
EPS = None         # tolerances eps'; None: those of analysis.EPS_GRID the runs can judge (>= their training eps)
EPS_PLOT = None    # eps' of the heatmaps and m* figures; None: the eps' with the most uncensored thresholds
DELTA_PLOT = None  # separation shown in the figures; None: the most common one
N_BOOT = 1000      # bootstrap replicates of each threshold interval
FIG_DPI = 80

RESULTS = results_dir(RESULTS)  # relative to the repository root, found from the analysis package
print("results directory:", RESULTS.relative_to(repo_root()) if RESULTS.is_relative_to(repo_root()) else RESULTS)

# %%
# %matplotlib inline
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter
import pandas as pd
from IPython.display import display

from analysis import (CRITERIA, EPS_GRID, THRESHOLD_KEYS, fit_exponents, load_results, loglog_slopes, loss_floor,
                      run_success, success_rates, theory_gap, thresholds)
from analysis.plots import (anchored_power_law, censor_legend_handles, exponent_table, fitted_power_law,
                            plot_success_heatmap, plot_thresholds, plot_width_medians, threshold_labels)

plt.rcParams.update({"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "font.size": 8, "axes.titlesize": 8,
                     "legend.fontsize": 7})
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)
pd.set_option("display.max_colwidth", 200)

# %% [markdown]
# ## The data
#
# One row per training run (`runs`) and one per checkpoint (`curves`). The tolerances `eps'` are limited by
# the training: a run that stopped on reaching its training `eps` says nothing about smaller tolerances,
# so only `eps' >= ` the largest training `eps` is used.

# %%
runs, curves = load_results(RESULTS)
if runs["mode"].nunique() > 1:  # a frozen-pattern control is a different experiment: keep the ReLU runs
    print("modes:", runs["mode"].value_counts().to_dict(), "-> analysing mode == 'relu'")
    runs = runs[runs["mode"] == "relu"]
    curves = curves[curves["run_id"].isin(runs["run_id"])]

train_eps = float(runs["eps"].max())
if EPS is None:
    EPS = [e for e in EPS_GRID if e >= train_eps] or [train_eps]
EPS = sorted(float(e) for e in EPS)
if DELTA_PLOT is None:
    DELTA_PLOT = float(runs["delta"].value_counts().sort_index().idxmax())

seeds = runs.groupby(["n", "k", "delta", "bias", "m"]).size()
print(f"{len(runs)} runs, {len(curves)} checkpoints, {runs.groupby(list(THRESHOLD_KEYS)).ngroups} cells")
for col in ("n", "k", "m", "delta", "bias"):
    print(f"  {col:6s}", sorted(runs[col].unique().tolist()))
print(f"  seeds per (cell, m): {seeds.min()}..{seeds.max()}; training eps {train_eps:g}; "
      f"t_max {sorted(runs['t_max'].unique().tolist())} ({runs['t_unit'].iloc[0]})")
print("  status:", runs["status"].value_counts().to_dict())
print(f"eps' = {EPS}; DELTA_FAIL = {DELTA_FAIL} (target rate {1 - DELTA_FAIL:g}: with {seeds.min()} seeds "
      f"that needs {int(np.ceil((1 - DELTA_FAIL) * seeds.min() - 1e-9))}/{seeds.min()} successes)")

# %%
success = run_success(runs, curves, eps_grid=EPS)
rates = success_rates(success)
th = theory_gap(thresholds(rates, delta_fail=DELTA_FAIL, n_boot=N_BOOT, seed=0), runs)
exps = fit_exponents(th)

counts = (th.assign(uncensored=th["censored"] == "none").groupby(["criterion", "eps"])["uncensored"]
          .agg(["sum", "size"]).rename(columns={"sum": "uncensored", "size": "cells"}))
if EPS_PLOT is None:
    best = counts["uncensored"].groupby("eps").sum()
    EPS_PLOT = float(best[best == best.max()].index.min())
print(f"eps' shown in the figures: {EPS_PLOT:g}; delta shown: {DELTA_PLOT:g}")
display(counts.unstack("criterion"))


# %%
def close(a, b):
    return np.isclose(a.astype(float), b, rtol=1e-9, atol=0)


def values(df, col):
    return sorted(df[col].unique().tolist())


def label_ticks(ax, ticks):
    """Tick a log x axis at the tested values only."""
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def dodge(values_, i, count, factor=1.08):
    """Shift line ``i`` of ``count`` sideways on a log axis so that coinciding markers stay visible."""
    return values_ * factor ** (i - (count - 1) / 2)


def shared_legend(fig, axes, censoring=True):
    """One legend for a row of panels (their distinct entries and the censoring markers), below them."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    for handle in censor_legend_handles() if censoring else []:
        entries[handle.get_label()] = handle
    fig.legend(list(entries.values()), list(entries.keys()), loc="outside lower center", ncols=min(len(entries), 4))


BIASES, KS, NS = values(runs, "bias"), values(runs, "k"), values(runs, "n")
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]

# %% [markdown]
# ## 1. Success probability against width
#
# One figure per criterion at the tolerance `EPS_PLOT`; rows are the bias variants, columns the number of
# directions `k`. Each cell of a heatmap is one `(n, m)`; its colour is the success rate and its label
# `successes/trials`. The threshold is where a column turns (and stays) yellow, i.e. reaches
# `1 - DELTA_FAIL`. Theory predicts the transition moves up steeply with `n` and `k`.

# %%
for criterion in CRITERIA:
    sel = rates[(rates["criterion"] == criterion) & close(rates["eps"], EPS_PLOT) & close(rates["delta"], DELTA_PLOT)]
    fig, axes = plt.subplots(len(BIASES), len(KS), figsize=(2.6 * len(KS) + 1, 2.2 * len(BIASES)), squeeze=False,
                             constrained_layout=True)
    image = None
    for i, bias in enumerate(BIASES):
        for j, k in enumerate(KS):
            ax = axes[i, j]
            part = sel[(sel["bias"] == bias) & (sel["k"] == k)]
            if part.empty:
                ax.set_axis_off()
                continue
            image = plot_success_heatmap(ax, part, x="n", y="m")
            ax.set_title(f"bias={bias}, k={k}")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="success rate")
    fig.suptitle(f"{criterion}: success rate at eps'={EPS_PLOT:g}, delta={DELTA_PLOT:g}")
    plt.show()


# %% [markdown]
# ## 2. Thresholds against `n` and `k`, with the fitted power law and the theorem's slope
#
# `m*` on log-log axes: filled circles are uncensored thresholds with their bootstrap interval over seeds
# (an arrow where the interval is open above), hollow triangles are censored cells at their bound.
# The solid thin line is the power law `log m* = c + p log n + q log k (+ r log delta)` fitted to the
# uncensored cells of that bias variant and criterion (drawn only where it was fitted); its exponents
# are in the panel title. The dashed grey line has the theorem's slope (`n^6`, resp. `k^3`), anchored at
# the first uncensored point: a measured threshold rising more slowly than it means the bound is loose in
# that direction. The theorem's width `m_thm` itself lies many orders of magnitude higher (section 4).

# %%
def exponent_title(fit, terms):
    """Panel title: the fitted exponents or why there are none."""
    row = exponent_table(fit, terms=terms).iloc[0] if len(fit) else None
    if row is None:
        return "no fit"
    shown = ", ".join(f"{t} = {row[t]}" for t in terms if row[t] != "-")
    return "; ".join(part for part in (shown, row["note"]) if part)


def thresholds_against(x, lines, slope, criterion):
    fig, axes = plt.subplots(1, len(BIASES), figsize=(4.2 * len(BIASES) + 0.6, 3.9), squeeze=False,
                             constrained_layout=True)
    for ax, bias in zip(axes[0], BIASES):
        sel = th[(th["criterion"] == criterion) & close(th["eps"], EPS_PLOT) & close(th["delta"], DELTA_PLOT)
                 & (th["bias"] == bias)]
        fit = exps[(exps["bias"] == bias) & (exps["criterion"] == criterion) & close(exps["eps"], EPS_PLOT)]
        term = {"n": "p", "k": "q"}[x]
        anchored = False
        for color, value in zip(COLORS, values(sel, lines)):
            part = sel[sel[lines] == value].sort_values(x)
            plot_thresholds(ax, part, x, color=color, label=f"{lines}={value}")
            grid = pd.DataFrame({x: np.geomspace(part[x].min(), part[x].max(), 20), lines: value,
                                 "delta": DELTA_PLOT})
            if term in set(fit["term"]):
                ax.plot(grid[x], fitted_power_law(fit, grid), color=color, linewidth=0.8, alpha=0.8)
            ok = part[part["censored"] == "none"]
            if len(ok) and not anchored:
                x0, y0 = ok[x].iloc[0], ok["m_star"].iloc[0]
                ax.plot(grid[x], anchored_power_law(grid[x], x0, y0, slope), "--", color="gray",
                        label=f"theorem slope {x}^{slope:g}")
                anchored = True
        if not anchored:
            ax.text(0.5, 0.5, "no uncensored threshold:\ntheorem slope not anchored", transform=ax.transAxes,
                    ha="center", va="center", color="gray")
        ax.set_xscale("log")
        ax.set_yscale("log")
        label_ticks(ax, values(sel, x))
        ax.set_xlabel(x)
        ax.set_ylabel("m*")
        ax.set_title(f"bias={bias}\n" + textwrap.fill("fit: " + exponent_title(fit, ["p", "q"]), 60), fontsize=7)
    shared_legend(fig, axes[0])
    fig.suptitle(f"{criterion}: m* against {x} at eps'={EPS_PLOT:g}, delta={DELTA_PLOT:g}, "
                 f"target rate {1 - DELTA_FAIL:g}")
    plt.show()


for criterion in CRITERIA:
    thresholds_against("n", "k", 6.0, criterion)

# %%
for criterion in CRITERIA:
    thresholds_against("k", "n", 3.0, criterion)

# %% [markdown]
# ## 3. Exponents with intervals
#
# The fitted exponents `p` (of `n`), `q` (of `k`) and, where the sweep varies the separation, `r` (of
# `delta`), with 95% t-intervals, for both criteria, both bias variants and every `eps'`. `theory_*` is the
# theorem's exponent (Theorem 2's exponent of `k` is illegible in our copy; 3 is assumed). A fit needs more
# uncensored cells than parameters; where it has exactly as many, the estimate has no interval; where it has
# fewer, the row says "not enough uncensored cells" instead of a number.

# %%
print("Exponents of the grid threshold m*:")
display(exponent_table(exps))

# %%
print("Exponents of the smooth (logistic) threshold m_logistic, a cross-check of the grid threshold:")
display(exponent_table(fit_exponents(th, m_col="m_logistic")))

print("Exponents of the theorem's own width m_thm over the same cells (lambda_* and gamma vary with n, k):")
cells = th.drop_duplicates(list(THRESHOLD_KEYS))
display(exponent_table(fit_exponents(cells, m_col="m_thm", by=["bias"])))

# %% [markdown]
# ### Thresholds from an adaptive search
#
# `python -m pipeline search` writes one table per search to `<results>/thresholds/` (one row per cell:
# `m_star`, `censored`, the bracket, the widths it evaluated). The same exponent fit reads it; where the
# results directory holds a search, its exponents are shown here beside the grid's.

# %%
searches = sorted((RESULTS / "thresholds").glob("*.parquet")) if (RESULTS / "thresholds").is_dir() else []
for path in searches:
    found = pd.read_parquet(path)
    print(f"{path.name}: {len(found)} cells, criterion {found['criterion'].iloc[0]} at eps'={found['eps'].iloc[0]:g}, "
          f"{int(found['runs_used'].sum())} runs used")
    display(exponent_table(fit_exponents(found, by=["bias", "criterion", "eps"])))
if not searches:
    print("no search thresholds in", RESULTS)

# %% [markdown]
# ## 4. The gap to the theorem's width
#
# `log10(m* / m_thm)`: how many orders of magnitude the measured threshold lies below (negative) the width
# at which Theorem 1/2 guarantees convergence with probability `1 - DELTA_FAIL` (`m_thm` is the median
# over a cell's runs; it depends on the data through `lambda_*` and `gamma`). For censored cells only a
# bound is known: `> x` (threshold above the tested widths, so the gap is at least `x`) or `<= x`.
# In the figure, censored cells are triangles at that bound, and the lines are shifted slightly sideways.

# %%
gap = th.assign(gap=threshold_labels(th, "log10_gap", "log10_gap_bound", "{:+.1f}"),
                m_star_label=threshold_labels(th))
gap_table = gap.pivot_table(index=["bias", "n", "k", "delta"], columns=["criterion", "eps"], values="gap",
                            aggfunc="first")
display(gap_table)

# %%
fig, axes = plt.subplots(1, len(CRITERIA), figsize=(4.2 * len(CRITERIA) + 0.6, 3.6), squeeze=False,
                         constrained_layout=True)
for ax, criterion in zip(axes[0], CRITERIA):
    sel = gap[(gap["criterion"] == criterion) & close(gap["eps"], EPS_PLOT) & close(gap["delta"], DELTA_PLOT)]
    i = 0
    for bias in BIASES:
        for k in KS:
            part = sel[(sel["bias"] == bias) & (sel["k"] == k)]
            if len(part):
                part = part.assign(n=dodge(part["n"], i, len(BIASES) * len(KS)))
                plot_thresholds(ax, part, "n", m_col="log10_gap", bound_col="log10_gap_bound", interval=False,
                                color=COLORS[i % len(COLORS)], label=f"bias={bias}, k={k}")
                i += 1
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    label_ticks(ax, NS)
    ax.set_xlabel("n")
    ax.set_ylabel("log10(m* / m_thm)")
    ax.set_title(f"{criterion}, eps'={EPS_PLOT:g}")
shared_legend(fig, axes[0])
fig.suptitle("Gap to the theorem's width in orders of magnitude (0 = the theorem's width)")
plt.show()

# %% [markdown]
# ## 5. Thresholds as a function of the tolerance `eps'`
#
# Pattern flips leave a loss floor that falls with `m` (MATH.md), so a smaller tolerance needs a wider
# network: `m*` should grow as `eps'` falls (read the figure right to left). Markers as in section 2; the
# lines are shifted slightly sideways so that coinciding markers stay visible.

# %%
for criterion in CRITERIA:
    fig, axes = plt.subplots(1, len(BIASES), figsize=(4.2 * len(BIASES) + 0.6, 3.6), squeeze=False,
                             constrained_layout=True)
    for ax, bias in zip(axes[0], BIASES):
        sel = th[(th["criterion"] == criterion) & (th["bias"] == bias) & close(th["delta"], DELTA_PLOT)]
        i = 0
        for n in NS:
            for k in KS:
                part = sel[(sel["n"] == n) & (sel["k"] == k)]
                if len(part):
                    part = part.assign(eps=dodge(part["eps"], i, len(NS) * len(KS), 1.12))
                    plot_thresholds(ax, part, "eps", color=COLORS[i % len(COLORS)], label=f"n={n}, k={k}")
                    i += 1
        ax.set_xscale("log")
        ax.set_yscale("log")
        label_ticks(ax, EPS)
        ax.set_xlabel("eps'")
        ax.set_ylabel("m*")
        ax.set_title(f"bias={bias}")
    shared_legend(fig, axes[0])
    fig.suptitle(f"{criterion}: m* against eps' (delta={DELTA_PLOT:g})")
    plt.show()

print("m* per cell and eps' (> / <=: censored):")
display(gap.pivot_table(index=["bias", "n", "k", "delta"], columns=["criterion", "eps"], values="m_star_label",
                        aggfunc="first"))

# %% [markdown]
# ## 6. The loss floor against width
#
# The lowest relative loss each run reached (`min_rel_loss`), median and quartiles over seeds, against `m`.
# The jumps of the derivative residual at pattern flips have size about `1/sqrt(m)`, so the floor should
# fall with `m`. Runs that converged stopped at their training `eps` (dotted line), so their floor is only
# bounded above by it: widths where half or more of the runs converged are hollow and left out of the
# log-log slope, which the table reports with its 95% interval per cell.

# %%
floor = loss_floor(runs)
fig, axes = plt.subplots(1, len(BIASES), figsize=(4.2 * len(BIASES) + 0.6, 3.6), squeeze=False,
                         constrained_layout=True)
for ax, bias in zip(axes[0], BIASES):
    sel = floor[(floor["bias"] == bias) & close(floor["delta"], DELTA_PLOT)]
    for i, ((n, k), part) in enumerate(sel.groupby(["n", "k"])):
        plot_width_medians(ax, part, color=COLORS[i % len(COLORS)], label=f"n={n}, k={k}")
    ax.axhline(train_eps, color="gray", linestyle=":", label="training eps")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("m")
    ax.set_ylabel("min_rel_loss (median, IQR)")
    ax.set_title(f"bias={bias}")
shared_legend(fig, axes[0], censoring=False)
fig.suptitle(f"Loss floor against width (delta={DELTA_PLOT:g})")
plt.show()

print("Log-log slope of the loss floor against m (per cell):")
display(loglog_slopes(floor).drop(columns=["expected", "expected_in_interval"]))
