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
# # Width thresholds of Sobolev training against Cocola & Hand (2020)
#
# Theorems 1/2 say a two-layer ReLU net of width `m = Omega(n^6 k^3 ...)`, trained by gradient flow on the
# directional Sobolev loss, drives the loss to zero at rate `lambda_*` with probability `1 - delta`. This notebook
# measures the smallest width `m*` at which a fraction `1 - DELTA_FAIL` of the seeds succeeds, per cell
# `(n, k, delta, bias)`, and how it scales (`docs/MATH.md`):
#
# 1. the design of the results directory;
# 2. direct thresholds (logistic fit of success on `log m`, bootstrap over data instances then seeds) per
#    success criterion and tolerance `eps'`, and their exponents `p` (of `n`) and `q` (of `k`);
# 3. the floor law (censored fit of the final loss on `n, k, delta, m`) and the `m*(eps')` it implies;
# 4. how far the exponents move across criteria, tolerances, horizons and left-out data (sensitivity);
# 5. the controls: ReLU against frozen activation patterns, `k = 0` against `k >= 1`, step factors;
# 6. the theorem compared by scaling.
#
# Success criteria (`analysis.criteria()`): `interpolation` (the loss reached `eps'` at some step; optimistic),
# `settled` (it stays `<= eps'` over the last checkpoint interval to the end of the budget), `settled_both` (the
# value and the derivative residuals each settle) and `regime` (the theorem's bound at every step and
# `lambda_min >= lambda_*/2` at the checkpoints, until `eps'` is first reached).
#
# Every number comes from the tested `analysis` package; the notebook only filters, reshapes and plots.
# A section whose data the results directory lacks says so and moves on.

# %% tags=["parameters"]
import os

from analysis.paths import repo_root, results_dir

RESULTS = os.environ.get("SOBOLEV_RESULTS", "results/cpu_study")  # relative paths: to the repository root
DELTA_FAIL = float(os.environ.get("SOBOLEV_DELTA_FAIL", "0.1"))  # the theorem's failure probability
EPS = None       # tolerances eps' of the thresholds; None: 1e-2..1e-5 (those >= the training eps)
EPS_PLOT = None  # eps' of the figures; None: the one with the most uncensored headline thresholds
N_BOOT = int(os.environ.get("SOBOLEV_N_BOOT", "200"))  # bootstrap replicates (instances, then seeds)
FIG_DPI = 80

RESULTS = results_dir(RESULTS)  # relative to the repository root, found from the analysis package
print("results directory:", RESULTS.relative_to(repo_root()) if RESULTS.is_relative_to(repo_root()) else RESULTS)

# %%
# %matplotlib inline
import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from matplotlib.ticker import NullFormatter

from analysis import (EXPERIMENT_SETTINGS, beside_thresholds, control_comparison, criteria, criterion, fit_exponents,
                      fit_floor_law, floor_exponents, floor_group_columns, instance_thresholds, load_results,
                      loglog_slopes, loss_floor, run_success, sensitivity_summary, sensitivity_table, theorem_exponents,
                      theory_gap, threshold_ratio)
from analysis.comparisons import CONTROL_CELL, THEOREM_CAVEAT
from analysis.plots import (anchored_power_law, censor_legend_handles, exponent_table, interval_text,
                            logistic_plot_table, plot_ratio, plot_thresholds, plot_width_medians, threshold_labels)
from analysis.sensitivity import SENSITIVITY_EPS

plt.rcParams.update({"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "figure.figsize": (8, 5), "font.size": 10,
                     "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 10, "xtick.labelsize": 10,
                     "ytick.labelsize": 10})
pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 40)
pd.set_option("display.max_colwidth", 90)
pd.set_option("display.max_rows", 120)
# the censored fit's Newton steps overflow harmlessly in replicates it then marks as failed
warnings.filterwarnings("ignore", category=RuntimeWarning, module="analysis.floorlaw")
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
CRITERIA = list(criteria())
NOT_HERE = "not in this results directory"

# %% [markdown]
# ## 1. The design
#
# Runs of a different training (any setting but `eps` and `check_every`: `mode`, horizon `t_max`, `step_factor`, ...)
# are different experiments: every success table below keeps them apart as strata, and the headline experiment is
# one of them.

# %%
runs, curves = load_results(RESULTS)  # the columns the schema and the criteria declare
STRATA = list(EXPERIMENT_SETTINGS)
train_eps = float(runs["eps"].max())
if EPS is None:
    EPS = [e for e in SENSITIVITY_EPS if e >= train_eps] or [train_eps]
EPS = sorted(float(e) for e in EPS)
HORIZON = float(runs["t_max"].max())
STEP = 1.0 if (runs["step_factor"] == 1.0).any() else float(runs["step_factor"].mode().iloc[0])
runs = runs.assign(k_group=np.where(runs["k"] == 0, "k=0", "k>=1"))


def listed(v):
    return ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in sorted(v.unique()))


design = runs.groupby(["bias", *STRATA, "k_group"]).agg(
    runs=("run_id", "size"), cells=("run_id", lambda v: runs.loc[v.index].groupby(["n", "k", "delta"]).ngroups),
    n=("n", listed), k=("k", listed), delta=("delta", listed), m=("m", listed),
    instances=("data_seed", "nunique"), seeds=("seed", "nunique"))
print(f"{len(runs)} runs, {len(curves)} checkpoints; training eps {sorted(runs['eps'].unique().tolist())}; "
      f"t_max in units of {runs['t_unit'].iloc[0]}; status {runs['status'].value_counts().to_dict()}")
print("Runs per part of the study:")
display(design)
print(f"eps' = {EPS}; DELTA_FAIL = {DELTA_FAIL} (target rate {1 - DELTA_FAIL:g}); N_BOOT = {N_BOOT}")
print(f"headline experiment: no bias, mode relu, t_max {HORIZON:g}, step_factor {STEP:g}, k >= 1")
print("criteria:")
for name in CRITERIA:
    print(f"  {name:14s} {criterion(name).doc}")

# %%
success = run_success(runs, curves, eps_grid=EPS, criteria=CRITERIA, strata=STRATA)


def headline_filter(df, k_min=1):
    return df[(~df["bias"].astype(bool)) & (df["mode"] == "relu") & (df["t_max"] == HORIZON)
              & (df["step_factor"] == STEP) & (df["k"] >= k_min)]


def close(a, b):
    return np.isclose(a.astype(float), b, rtol=1e-9, atol=0)


def values(df, col):
    return sorted(df[col].unique().tolist())


def log_axis(ax, which, ticks=None, label=None):
    """A log axis labelled (and ticked at the tested values)."""
    getattr(ax, f"set_{which}scale")("log")
    if ticks is not None:
        getattr(ax, f"set_{which}ticks")(ticks, [f"{v:g}" for v in ticks])
        getattr(ax, f"{which}axis").set_minor_formatter(NullFormatter())
    if label:
        getattr(ax, f"set_{which}label")(label + " (log scale)")


def shared_legend(fig, axes, censoring=True):
    entries = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    for handle in censor_legend_handles() if censoring else []:
        entries[handle.get_label()] = handle
    if entries:
        fig.legend(list(entries.values()), list(entries.keys()), loc="outside lower center", ncols=min(len(entries), 3))


# %% [markdown]
# ## 2. Direct thresholds of the headline experiment
#
# `m*` per cell, criterion and `eps'`: where a Firth logistic fit of success on `log m` crosses `1 - DELTA_FAIL`,
# with a percentile interval from a bootstrap over data instances, then seeds (`analysis.instance_thresholds`; a
# cell with one instance gets no interval: the scatter between instances is not measured). A crossing outside
# the tested widths is censored and shown as a bound (`> m_max`, `<= m_min`), never as a number.

# %%
head_success = headline_filter(success)
if head_success.empty:
    th = pd.DataFrame()
    print("headline experiment (no bias, relu, k >= 1):", NOT_HERE)
else:
    th = logistic_plot_table(instance_thresholds(head_success, runs, delta_fail=DELTA_FAIL, n_boot=N_BOOT, seed=0),
                             runs)
    th = th.assign(label=threshold_labels(th).to_numpy())
    counts = th.assign(uncensored=th["censored"] == "none").groupby(["criterion", "eps"])["uncensored"].sum()
    if EPS_PLOT is None:
        best = counts.groupby("eps").sum()
        EPS_PLOT = float(best[best == best.max()].index.min())
    print(f"eps' of the figures: {EPS_PLOT:g}. m* per cell (> / <=: censored at the tested widths):")
    display(th.pivot_table(index=["n", "k", "delta"], columns=["criterion", "eps"], values="label", aggfunc="first"))
    print(f"Intervals at eps'={EPS_PLOT:g} and why some are missing:")
    display(th[close(th["eps"], EPS_PLOT)][["n", "k", "delta", "criterion", "eps", "m_logistic", "m_lo", "m_hi",
                                            "n_instances", "trials_near", "interval_note"]].round(
        {"m_logistic": 1, "m_lo": 1, "m_hi": 1}))

# %%
if len(th):
    exps = fit_exponents(th, m_col="m_logistic", terms=("p", "q", "r"))
    print("Exponents of the direct threshold m* (log m* = c + p log n + q log k + r log delta), 95% intervals:")
    display(exponent_table(exps))
else:
    exps = pd.DataFrame()


# %%
def thresholds_against(x, lines, slope):
    """m* against ``x`` at EPS_PLOT, one panel per criterion, one line per value of ``lines``; the theorem's slope
    drawn (dashed) through the first uncensored point for scale."""
    sel = th[close(th["eps"], EPS_PLOT)]
    rows = int(np.ceil(len(CRITERIA) / 2))
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.6 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, CRITERIA):
        part_c = sel[sel["criterion"] == name]
        anchored = False
        for i, (key, part) in enumerate(part_c.groupby(lines)):
            if part[x].nunique() < 2:
                continue
            key = key if isinstance(key, tuple) else (key,)
            plot_thresholds(ax, part, x, color=COLORS[i % len(COLORS)],
                            label=", ".join(f"{c}={v:g}" for c, v in zip(lines, key)))
            ok = part[part["censored"] == "none"]
            if len(ok) and not anchored:
                grid = np.geomspace(part[x].min(), part[x].max(), 20)
                ax.plot(grid, anchored_power_law(grid, ok[x].iloc[0], ok["m_star"].iloc[0], slope), "--",
                        color="gray", label=f"theorem's slope {x}^{slope:g} (scale only)")
                anchored = True
        fit = exps[(exps["criterion"] == name) & close(exps["eps"], EPS_PLOT)]
        row = exponent_table(fit, terms=["p", "q"]).iloc[0] if len(fit) else None
        text = "no fit" if row is None else f"p = {row['p']}, q = {row['q']} {row['note']}"
        log_axis(ax, "x", values(part_c, x), x)
        log_axis(ax, "y", None, "m*")
        ax.set_title(f"{name}\n" + textwrap.fill(text, 70), fontsize=10)
    for ax in axes.flat[len(CRITERIA):]:
        ax.set_axis_off()
    shared_legend(fig, axes)
    fig.suptitle(f"Headline m* against {x} at eps'={EPS_PLOT:g}, target rate {1 - DELTA_FAIL:g}")
    plt.show()


for x, lines, slope in (("n", ["k", "delta"], 6.0), ("k", ["n", "delta"], 3.0)):
    if len(th) and th.groupby(lines)[x].nunique().max() > 1:
        thresholds_against(x, lines, slope)
    else:
        print(f"m* against {x}: a sweep over {x} is {NOT_HERE}")

# %% [markdown]
# ### Thresholds from an adaptive search
#
# `python -m pipeline search` writes one table per search to `<results>/thresholds/`; where present, its exponents
# are shown here.

# %%
searches = sorted((RESULTS / "thresholds").glob("*.parquet")) if (RESULTS / "thresholds").is_dir() else []
for path in searches:
    found = pd.read_parquet(path)
    print(f"{path.name}: {len(found)} cells, criterion {found['criterion'].iloc[0]} at eps'={found['eps'].iloc[0]:g}")
    display(exponent_table(fit_exponents(found, by=["bias", *(c for c in STRATA if c in found), "criterion", "eps"])))
if not searches:
    print("search thresholds:", NOT_HERE)

# %% [markdown]
# ## 3. The floor law
#
# The final relative loss of every run, fitted as `log L = c + a_n log n + a_k log k + a_delta log delta + a_m log m`
# (+ normal scatter) by censored maximum likelihood: a run that stopped at its training `eps` only says its loss
# is at most `eps`. One law per group (bias, mode, step factor, horizon, `k = 0` against `k >= 1`), intervals from
# a bootstrap over data instances, then seeds. The floor falls with the width where `a_m < 0`; the law then puts
# `m*(eps') ~ n^(-a_n/a_m) k^(-a_k/a_m) delta^(-a_delta/a_m)` at every `eps'`.

# %%
law = fit_floor_law(runs, n_boot=N_BOOT, seed=0)
group_cols = floor_group_columns(law)
law = law.assign(value=interval_text(law["estimate"], law["lo"], law["hi"], 3).to_numpy())
print("Floor law coefficients per group, 95% intervals:")
display(law.pivot_table(index=group_cols, columns="term", values="value", aggfunc="first")
        .join(law.groupby(group_cols)[["n_runs", "n_instances", "n_censored", "note"]].first()))
floor_exps = floor_exponents(law.drop(columns="value"))
floor_exps = floor_exps.assign(
    value=interval_text(floor_exps["estimate"], floor_exps["lo"], floor_exps["hi"]).to_numpy())
print("Exponents of m*(eps') implied by the floor law (p = -a_n/a_m, q = -a_k/a_m, r = -a_delta/a_m):")
display(floor_exps.pivot_table(index=group_cols, columns="term", values="value", aggfunc="first"))

# %%
head_runs = headline_filter(runs)
if len(head_runs):
    floor = loss_floor(head_runs)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for i, ((n, k, delta), part) in enumerate(floor.groupby(["n", "k", "delta"])):
        plot_width_medians(ax, part, color=COLORS[i % len(COLORS)], label=f"n={n}, k={k}, delta={delta:g}")
    ax.axhline(train_eps, color="gray", linestyle=":", label="training eps")
    log_axis(ax, "x", values(floor, "m"), "m")
    log_axis(ax, "y", None, "min_rel_loss (median, IQR)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Headline loss floor against width (hollow: half the runs stopped at the training eps)")
    plt.show()
    print("Log-log slope of the loss floor against m (per cell):")
    display(loglog_slopes(floor).drop(columns=["expected", "expected_in_interval"]))

# %%
if len(th):
    beside = beside_thresholds(law.drop(columns="value"), th)
    print(f"Direct m* (logistic) beside the floor law's m*(eps') at the same rate, headline cells, eps'={EPS_PLOT:g}:")
    display(beside[close(beside["eps"], EPS_PLOT)][["n", "k", "delta", "criterion", "eps", "label", "m_lo", "m_hi",
                                                    "m_star_floor",
                    "m_star_floor_lo", "m_star_floor_hi", "floor_note"]].round(
                        {"m_star_floor": 1, "m_star_floor_lo": 1, "m_star_floor_hi": 1}))
    both = beside[(beside["censored"] == "none") & np.isfinite(beside["m_star_floor"])]
    fig, ax = plt.subplots(figsize=(7.5, 5.5), layout="constrained")
    for i, (name, part) in enumerate(both.groupby("criterion")):
        ax.scatter(part["m_star"], part["m_star_floor"], color=COLORS[i % len(COLORS)], label=name)
    if len(both):
        lims = np.array([both[["m_star", "m_star_floor"]].min().min(), both[["m_star", "m_star_floor"]].max().max()])
        ax.plot(lims, lims, "k--", linewidth=0.8, label="equal")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no cell with both estimates uncensored", transform=ax.transAxes, ha="center")
    log_axis(ax, "x", None, "direct m* (logistic)")
    log_axis(ax, "y", None, "floor-law m*(eps')")
    ax.set_title("Two routes to the threshold (every eps', uncensored cells)")
    plt.show()

# %% [markdown]
# ## 4. Sensitivity: what holds across the reasonable analyses
#
# The exponents `p, q` of the ReLU runs (`k >= 1`, step factor `STEP`) under every registered criterion, every
# `eps'` in 1e-2..1e-5, every horizon in the data, and with the smallest `n`, the largest `n` or one data instance
# left out; threshold route (logistic thresholds, then the fit) and floor-law route. The summary gives the range
# of each exponent over all of them: the statement the data support whichever reasonable choice is made.

# %%
sens_runs = runs[(runs["mode"] == "relu") & (runs["step_factor"] == STEP) & (runs["k"] >= 1)]
if sens_runs.empty:
    sens = pd.DataFrame()
    print("sensitivity:", NOT_HERE)
else:
    sens = sensitivity_table(sens_runs.drop(columns="k_group"), curves, criteria=CRITERIA, delta_fail=DELTA_FAIL,
                             floor_n_boot=N_BOOT)
    print(f"{len(sens)} exponent estimates; variants {values(sens, 'variant')}; horizons {values(sens, 'horizon')}")
    summary = sensitivity_summary(sens)
    display(summary.drop(columns=["statement"]).round(2))
    for _, row in summary.iterrows():
        said = row["statement"] if row["n_variants"] else f"{row['term']}: no estimate in any variant"
        print(f"  [{row['source']}, bias={row['bias']}] {said}")

# %%
if len(sens):
    terms = [t for t in ("p", "q") if sens.loc[sens["term"] == t, "estimate"].notna().any()]
    fig, axes = plt.subplots(1, max(len(terms), 1), figsize=(6.5 * max(len(terms), 1), 7), squeeze=False,
                             layout="constrained")
    for ax, term in zip(axes[0], terms):
        part = sens[(sens["term"] == term) & sens["estimate"].notna()].reset_index(drop=True)
        names = values(part, "criterion")
        for (name, bias), rows_ in part.groupby(["criterion", "bias"]):
            color = COLORS[names.index(name) % len(COLORS)]
            y = rows_.index.to_numpy()
            est, lo, hi = (rows_[c].to_numpy(float) for c in ("estimate", "lo", "hi"))
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.errorbar(est[ok], y[ok], xerr=[est[ok] - lo[ok], hi[ok] - est[ok]], fmt="none", ecolor=color,
                        alpha=0.6)
            ax.plot(est, y, "s" if bias else "o", color=color, label=f"{name} ({'bias' if bias else 'no bias'})")
        ax.axvline(6 if term == "p" else 3, color="gray", linestyle=":", label="theorem's exponent")
        ax.set_yticks([])
        ax.set_xlabel(f"{term} (estimate, 95% interval); theorem: {6 if term == 'p' else 3}")
        ax.set_ylabel("variant x horizon x eps' x bias")
        ax.set_title(f"Exponent {term} across {len(part)} analyses")
    shared_legend(fig, axes, censoring=False)
    plt.show()

# %% [markdown]
# ## 5. Controls
#
# - **ReLU against frozen patterns** (`mode = frozen`: the activation patterns of `t = 0`, the NTK-linearised
#   flow): the ratio of the geometric-mean final loss frozen/ReLU per cell and width; well below 1 means the floor
#   of the ReLU runs is the flip floor. The threshold ratio does the same for `m*`.
# - **`k = 0` against `k >= 1`** at the same `n`: what Sobolev training costs in width (threshold ratio
#   `m*(k) / m*(0)`) and in loss floor.
# - **Step factors**: a result of the gradient flow does not move when the step shrinks.
#
# Intervals: bootstrap over data instances, then seeds (none with one instance).

# %%
CTRL_CELL = (*CONTROL_CELL, *STRATA)
ctrl_eps = EPS_PLOT if EPS_PLOT is not None else EPS[0]


def show_control(name, floor_ratio, th_ratio):
    print(f"{name}: loss-floor ratio per cell and width")
    display(floor_ratio.drop(columns=["factor"]).round(3))
    if th_ratio is not None:
        print(f"{name}: threshold ratio at eps'={ctrl_eps:g}")
        shown = th_ratio[close(th_ratio["eps"], ctrl_eps)]
        display(shown.round({"m_reference": 1, "m_other": 1, "ratio": 2, "lo": 2, "hi": 2}))
    keys = [c for c in ("n", "k", "delta", "bias", *STRATA)
            if c in floor_ratio.columns and floor_ratio[c].nunique() > 1]
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    groups = floor_ratio.groupby(keys) if keys else [((), floor_ratio)]
    for i, (key, part) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        plot_ratio(ax, part, "m", color=COLORS[i % len(COLORS)],
                   label=", ".join(f"{c}={v}" for c, v in zip(keys, key)) or None)
    ax.axhline(1, color="black", linewidth=0.8)
    log_axis(ax, "x", values(floor_ratio, "m"), "m")
    log_axis(ax, "y", None, f"final loss ratio {floor_ratio['other'].iloc[0]} / {floor_ratio['reference'].iloc[0]}")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(name)
    plt.show()


if {"relu", "frozen"} <= set(runs["mode"]):
    sel = runs[runs["step_factor"] == STEP]
    show_control("frozen / relu", control_comparison(sel, factor="mode", reference="relu", other="frozen",
                                                      cell=CTRL_CELL, n_boot=N_BOOT),
                 threshold_ratio(success[success["step_factor"] == STEP], runs, factor="mode", reference="relu",
                                 other="frozen", delta_fail=DELTA_FAIL, n_boot=N_BOOT))
else:
    print("frozen-pattern control:", NOT_HERE)

# %%
k0 = runs[(runs["k"] == 0) & (runs["mode"] == "relu") & (runs["step_factor"] == STEP)]
if len(k0):
    sel = runs[(runs["mode"] == "relu") & (runs["step_factor"] == STEP) & runs["n"].isin(k0["n"].unique())]
    for k in [k for k in values(sel, "k") if k >= 1]:
        both = sel[sel["k"].isin([0, k])]
        show_control(f"k={k} / k=0", control_comparison(both, factor="k", reference=0, other=k, cell=CTRL_CELL,
                                                        n_boot=N_BOOT),
                     threshold_ratio(success[success["run_id"].isin(both["run_id"])], runs, factor="k", reference=0,
                                     other=k, delta_fail=DELTA_FAIL, n_boot=N_BOOT))
else:
    print("k = 0 control:", NOT_HERE, "(no plain L2 training runs)")

# %%
others = [s for s in values(runs, "step_factor") if s != STEP]
for s in others:
    show_control(f"step factor {s:g} / {STEP:g}",
                 control_comparison(runs, factor="step_factor", reference=STEP, other=s, cell=CTRL_CELL, n_boot=N_BOOT),
                 None)
if not others:
    print("step-factor control:", NOT_HERE)

# %% [markdown]
# ## 6. The theorem compared by scaling
#
# The theorem's width `m_thm` depends on `n, k` and on the data through `lambda_*` and `gamma`; its exponents over
# the studied cells (`analysis.theorem_exponents`) are set beside the measured ones. The theorem's constant is
# unknown (the pipeline takes `C = 1`), so only exponents compare; the gap `log10(m* / m_thm)` below inherits that
# constant, and "orders of magnitude below `m_thm`" holds only with this caveat.

# %%
thm_runs = headline_filter(runs)
if len(thm_runs):
    thm = theorem_exponents(thm_runs.drop(columns="k_group"))
    print("Exponents of m_thm over the headline cells:", thm["caveat"].iloc[0])
    display(exponent_table(thm))
if len(exps):
    print(f"Measured exponents of m* at eps'={EPS_PLOT:g} (direct thresholds):")
    display(exponent_table(exps[close(exps["eps"], EPS_PLOT)]))
    print("Floor-law exponents of the headline group:")
    display(floor_exps[(~floor_exps["bias"].astype(bool)) & (floor_exps["mode"] == "relu")
                       & (floor_exps["t_max"] == HORIZON) & (floor_exps["step_factor"] == STEP)
                       & (floor_exps["k_group"] == "k>=1")][["term", "value", "note"]])
if len(th):
    gap = theory_gap(th, thm_runs)
    gap = gap.assign(gap=threshold_labels(gap, "log10_gap", "log10_gap_bound", "{:+.1f}").to_numpy())
    print(f"log10(m* / m_thm) per cell ({THEOREM_CAVEAT}):")
    display(gap.pivot_table(index=["n", "k", "delta"], columns=["criterion", "eps"], values="gap", aggfunc="first"))
    sel = gap[close(gap["eps"], EPS_PLOT)]
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for i, ((name, k, delta), part) in enumerate(sel.groupby(["criterion", "k", "delta"])):
        plot_thresholds(ax, part, "n", m_col="log10_gap", bound_col="log10_gap_bound", interval=False,
                        color=COLORS[i % len(COLORS)], label=f"{name}, k={k}, delta={delta:g}")
    log_axis(ax, "x", values(sel, "n"), "n")
    ax.set_ylabel("log10(m* / m_thm)")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + censor_legend_handles(), loc="center left",
              bbox_to_anchor=(1.01, 0.5), fontsize=10)
    ax.set_title(textwrap.fill(f"Gap to the theorem's width at eps'={EPS_PLOT:g} ({THEOREM_CAVEAT})", 70))
    plt.show()
