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
# # How wide? The three widths of Cocola & Hand (2020), measured
#
# Theorem 1 says a two-layer ReLU net of width `m = Omega(n^6 k^3 ...)`, trained by gradient flow on the
# directional Sobolev loss, stays in a lazy regime and fits the data at rate `lambda_*` with probability
# `1 - delta`. The width study (`configs/widths/`, issue 20) measures three widths per cell `(n, k, delta)`,
# each where a fraction `1 - DELTA_FAIL` of the runs gets there (`docs/MATH.md`):
#
# - `m_conv(T)`: the relative loss reached `eps' = 1e-8` by flow time `T` (in units of `1/lambda_*`);
# - `m_rate(T)`: it did so with the bound `||r(t)||^2 <= exp(-lambda_* t) ||r(0)||^2` held at every step until
#   then; `m_rate_soft(T)`: the softer reading, a late decay rate of at least `lambda_*/2`;
# - `m_lazy`: `||H(t) - H(0)||_2 <= lambda_*/4` and `lambda_min(H(t)) >= lambda_*/2` until the drift horizon
#   (Lemmas 2 and 4), measured directly and from the drift law solved for `lambda_*/4`.
#
# Sections: 1. the design; 2. the three widths per cell; 3. their laws `m ~ n^p k^q delta^r` beside `m_thm`'s
# exponents and the published results; 4. the horizon table and the study's horizon; 5. the step-factor check;
# 6. a prediction; 7. the bias network. The loss curves, survival curves, the drift law and the mechanism are in
# `dynamics.ipynb`.
#
# Every number comes from the tested `analysis.report` (the tables `python -m pipeline report` ships next to
# the results: `laws.csv`, `widths.csv`, ...). When those tables were computed from exactly the runs found here,
# with the parameters below, the notebook reads them; otherwise it computes the report itself. A width that
# is never reached is written `> m_max`, one reached at the smallest width `<= m_min`, never as a number; a
# horizon beyond the runs' budget is "not observed".

# %% tags=["parameters"]
import os

from analysis.paths import repo_root, results_dir

RESULTS = os.environ.get("SOBOLEV_RESULTS", "results/widths")  # relative paths: to the repository root
DELTA_FAIL = float(os.environ.get("SOBOLEV_DELTA_FAIL", "0.1"))  # the theorem's failure probability
EPS = 1e-8                   # the tolerance eps' of m_conv and m_rate
HORIZONS = (48, 96, 192)     # T, 2T, 4T in units of 1/lambda_*
LONG_HORIZONS = (384, 768)   # the long part's extra horizons
DRIFT_HORIZON = 24           # the horizon of m_lazy and the drift law
BIAS_HORIZONS = (12, 24, 48)
N_BOOT = int(os.environ.get("SOBOLEV_N_BOOT", "400"))  # bootstrap replicates (instances, then seeds)
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

from analysis import load_curves, load_runs, predict_width
from analysis.plots import censor_legend_handles, interval_text, log_axis, plot_thresholds
from analysis.report import (
    REPORT_CURVE_COLUMNS,
    ReportSettings,
    StaleReportError,
    read_report,
    study_report,
    write_report,
)

plt.rcParams.update({"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "figure.figsize": (8, 5), "font.size": 10,
                     "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 10,
                     "ytick.labelsize": 10})
pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 40)
pd.set_option("display.max_colwidth", 90)
pd.set_option("display.max_rows", 200)
# the censored fits' Newton steps overflow harmlessly in bootstrap replicates they then mark as failed
warnings.filterwarnings("ignore", category=RuntimeWarning)
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
QUANTITIES = ("conv", "rate", "rate_soft")


def as_thresholds(w):
    """A widths table in the column names of analysis.plots.plot_thresholds."""
    return w.rename(columns={"estimate": "m_star", "lo": "m_star_lo", "hi": "m_star_hi", "bound": "m_bound"})


def cell_name(row):
    return f"n={row['n']:g}, k={row['k']:g}, delta={row['delta']:g}"


# %% [markdown]
# ## 1. The design
#
# The parts of the study (`analysis.report.split_study`): `main`, no bias at step factor 1, read at `T, 2T, 4T`;
# `long`, the same seeds of some cells to a longer budget; `drift`, every no-bias run observed through the drift
# horizon, pooled across budgets with one run per trajectory (the same seed at two budgets is one sample);
# `step`, the cells run at step factors 1 and 1/4; `bias`, the bias network.

# %%
runs = load_runs(RESULTS, None)
settings = ReportSettings(horizons=HORIZONS, long_horizons=LONG_HORIZONS, eps=EPS, drift_horizon=DRIFT_HORIZON,
                          bias_horizons=BIAS_HORIZONS, delta_fail=DELTA_FAIL, n_boot=N_BOOT)
try:
    report = read_report(RESULTS, runs)
    if report.settings != settings:
        raise StaleReportError(f"its settings differ from this notebook's parameters ({report.settings})")
    REPORT_READ = True
    print(f"report read from {RESULTS} (laws.csv and its siblings, written by `python -m pipeline report`)")
except (FileNotFoundError, StaleReportError) as exc:
    REPORT_READ = False
    print(f"report computed here: {exc}")
    curves = load_curves(RESULTS, REPORT_CURVE_COLUMNS)
    report = study_report(runs, curves, horizons=HORIZONS, long_horizons=LONG_HORIZONS, eps=EPS,
                          drift_horizon=DRIFT_HORIZON, bias_horizons=BIAS_HORIZONS, delta_fail=DELTA_FAIL,
                          n_boot=N_BOOT)
print(f"{len(runs)} runs; training eps {sorted(runs['eps'].unique().tolist())}, dtype "
      f"{sorted(runs['dtype'].unique().tolist())}, d = {sorted(runs['d'].unique().tolist())}; "
      f"status {runs['status'].value_counts().to_dict()}")
print(f"eps' = {report.settings.eps:g}; target rate 1 - delta_fail = {1 - report.settings.delta_fail:g}; "
      f"N_BOOT = {report.settings.n_boot}; the study's horizon: {report.horizon:g}/lambda_*")
print("Runs per part of the study:")
display(report.design)
for note in report.notes:
    print("note:", note)
W, LAWS = report.widths, report.laws
HORIZON = report.horizon

# %% [markdown]
# ## 2. The three widths per cell
#
# `label`: the logistic threshold with its instance-then-seed interval (`analysis.widths.width_thresholds`),
# `> m_max` where the target is never reached over the studied widths, `<= m_min` where the smallest width
# already reaches it, `(not rising)` for a crossing whose success fraction does not demonstrably rise with `m`
# (left out of the laws). `m_lazy` from the drift law is marked `(extrapolated)` beyond the studied widths.

# %%
main = W[W["subset"] == "main"]
if main["estimate"].notna().any() or main["censored"].isin(["above", "below"]).any():
    print(f"m_conv, m_rate, m_rate_soft at each horizon (main part, eps' = {report.settings.eps:g}):")
    display(main.pivot_table(index=["n", "k", "delta"], columns=["quantity", "horizon"], values="label",
                             aggfunc="first"))
else:
    print("main part:", "; ".join(sorted(set(main["note"]))) or "no runs")
lazy = W[(W["subset"] == "drift") & (W["quantity"] == "lazy")]
if lazy.empty:
    print(f"m_lazy: no run observed through the drift horizon {report.settings.drift_horizon:g}/lambda_*: not observed")
else:
    print(f"m_lazy at the drift horizon {report.settings.drift_horizon:g}/lambda_*: measured (thresholds) and from "
          f"the drift law (drift_law):")
    display(lazy.pivot_table(index=["n", "k", "delta"], columns="method", values="label", aggfunc="first"))
    odd = lazy[(lazy["method"] == "drift_law") & lazy["note"].str.contains("contradicted|outside the measured")]
    if len(odd):
        print(f"Cells where the drift law's m_lazy disagrees with the measured one ({len(odd)} of "
              f"{int((lazy['method'] == 'drift_law').sum())}): the drift does not fall as one power of m there")
        display(odd[["n", "k", "delta", "label", "note"]])
flat = W[(W["subset"].isin(["main", "drift"])) & W["note"].str.contains("does not rise", regex=False)]
if len(flat):
    print("Cells whose success fraction does not rise with m over the studied widths:")
    display(flat[["quantity", "horizon", "n", "k", "delta", "label", "slope", "slope_lo", "slope_hi", "m_min",
                  "m_max"]].round(2))


# %%
def widths_against(x, fixed, title, at=None, where=None):
    """Each width at the study's horizon (m_lazy at the drift horizon) against ``x``, one line per ``fixed``;
    ``at``: other rows of the widths table (``where``: their horizon, for the titles)."""
    at = pd.concat([main[main["horizon"] == HORIZON], lazy]) if at is None else at
    at = at[at.groupby([*fixed, "quantity", "method"])[x].transform("nunique") > 1]
    panels = [("conv", "thresholds"), ("rate", "thresholds"), ("rate_soft", "thresholds"), ("lazy", "thresholds"),
              ("lazy", "drift_law")]
    panels = [p for p in panels if ((at["quantity"] == p[0]) & (at["method"] == p[1])).any()]
    drawable = at["estimate"].notna() | at["censored"].isin(["above", "below"])
    if not panels or not drawable.any():
        print(f"widths against {x}: nothing observed ({'; '.join(sorted(set(at['note'])))[:300]})")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False, layout="constrained")
    for ax, (q, method) in zip(axes[0], panels):
        part = at[(at["quantity"] == q) & (at["method"] == method)]
        for i, (key, line) in enumerate(part.groupby(fixed)):
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{c}={v:g}" for c, v in zip(fixed, key))
            if method == "drift_law":
                ok = line[np.isfinite(line["estimate"])].sort_values(x)
                ax.plot(ok[x], ok["estimate"], "s-", color=COLORS[i % len(COLORS)], label=label,
                        markerfacecolor="none")
                ax.fill_between(ok[x], ok["lo"], ok["hi"], color=COLORS[i % len(COLORS)], alpha=0.12)
            else:
                plot_thresholds(ax, as_thresholds(line), x, color=COLORS[i % len(COLORS)], label=label)
        if len(part):
            ax.axhline(part["m_max"].max(), color="gray", linestyle=":", linewidth=0.8)
        log_axis(ax, "x", sorted(part[x].unique()), x)
        log_axis(ax, "y", None, "width")
        at_t = where or (f"T={HORIZON:g}" if q != "lazy" else f"T={report.settings.drift_horizon:g}")
        ax.set_title(f"m_{q} ({'drift law' if method == 'drift_law' else 'measured'}), {at_t}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles + censor_legend_handles(), labels + [h.get_label() for h in censor_legend_handles()],
               loc="outside lower center", ncols=4)
    fig.suptitle(f"{title} (dotted: the largest studied width; hollow squares: solves of the drift law)")
    plt.show()


widths_against("n", ["k", "delta"], "The widths against n")
widths_against("k", ["n", "delta"], "The widths against k")

# %% [markdown]
# ## 3. The laws, beside the theorem's and the published ones
#
# `log m_x = c + p log n + q log k + r log delta`, fitted over the cells where the width exists (censored cells
# left out and counted), with `k = 0` (plain L2) as its own group: `laws.csv`, the table the README quotes.
# `m_thm`'s exponents are fitted over the same cells (the theorem's constant is unknown: compare exponents only).
# `drift` holds the drift law `||H(t) - H(0)||_2 / lambda_* ~ n^a k^b delta^c m^-e` that `m_lazy`'s law solves.

# %%
shown = LAWS[LAWS["quantity"] != "known"].copy()
shown["value"] = interval_text(shown["estimate"], shown["lo"], shown["hi"]).to_numpy()
# the drift law (and m_lazy's law from it) is fitted apart per separation; the other laws span both
shown["at delta"] = shown["delta"].map(lambda v: "all" if pd.isna(v) else f"{v:g}")
keys = ["quantity", "method", "bias", "k_group", "at delta", "horizon"]


def law_table(rows):
    table = rows.pivot_table(index=keys, columns="term", values="value", aggfunc="first")
    counts = rows.groupby(keys)[["n_cells", "n_censored"]].first()
    notes = rows.groupby(keys)["note"].agg(lambda v: "; ".join(sorted({x for x in v if x}))[:160])
    return table.join(counts).join(notes)


if len(shown):
    print("The laws of the widths, log m = c + p log n + q log k + r log delta, with 95% intervals (laws.csv):")
    display(law_table(shown[shown["quantity"] != "drift"]))
    if (shown["quantity"] == "drift").any():
        print("The drift law, max ||H(t) - H(0)||_2 / lambda_* ~ n^a k^b delta^c m^-e (sigma: the scatter):")
        display(law_table(shown[shown["quantity"] == "drift"]))
else:
    print("laws: none (no horizon observed)")
print("Published laws (analysis.known):")
display(LAWS[LAWS["quantity"] == "known"][["method", "term", "estimate", "note"]])

# %%
exps = LAWS[LAWS["term"].isin(["p", "q"]) & (LAWS["quantity"] != "known") & np.isfinite(LAWS["estimate"])]
if len(exps):
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * max(exps.groupby("term").size().max(), 4) + 2),
                             layout="constrained")
    for ax, term in zip(axes, ("p", "q")):
        part = exps[exps["term"] == term].reset_index(drop=True)
        y = np.arange(len(part))
        lo, hi = part["lo"].to_numpy(float), part["hi"].to_numpy(float)
        est = part["estimate"].to_numpy(float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(est[ok], y[ok], xerr=[est[ok] - lo[ok], hi[ok] - est[ok]], fmt="o", color="black", capsize=3)
        ax.plot(est[~ok], y[~ok], "o", color="gray", markerfacecolor="none", label="no interval")
        refs = ({"Cocola & Hand, Du et al.: 6": 6, "Song & Yang (k=0): 2": 2, "Oymak & Soltanolkotabi: 1": 1}
                if term == "p" else {"Cocola & Hand: 3": 3, "Oymak & Soltanolkotabi: ~1": 1})
        for (name, v), color in zip(refs.items(), COLORS[1:]):
            ax.axvline(v, color=color, linestyle="--", linewidth=1, label=name)
        ax.set_yticks(y, [f"{r.quantity} ({r.method}, {r.k_group}{', bias' if r.bias is True else ''}"
                          f"{'' if pd.isna(r.delta) else f', delta={r.delta:g}'})" for r in part.itertuples()])
        ax.set_xlabel(f"exponent {term} of {'n' if term == 'p' else 'k'} (95% interval)")
        ax.legend(loc="best")
    fig.suptitle(f"Measured exponents beside the theorem's and the published ones (rates at T={HORIZON:g}, "
                 f"lazy at T={report.settings.drift_horizon:g})")
    plt.show()
else:
    print("exponents: none measured (no law with a finite exponent)")

# %% [markdown]
# ## 4. The horizon: `T, 2T, 4T`, and longer on the long part
#
# An entry moves from a horizon to a later one when its censoring changes, when the later width leaves the
# earlier one's interval, or when an exponent changes by at least its half-width (`analysis.widths.mark_moves`).
# The study's horizon is the shortest from which nothing moves (`analysis.widths.study_horizon`); the longest
# horizon cannot be checked and is never chosen. `drift`: whether `m_lazy` and the drift law still move after the
# drift horizon (on the main part's runs).

# %%
print("The horizon rule per part (moving: entries that still move, per horizon):")
display(report.choice)
H = report.horizons
for subset in ("main", "long"):
    part = H[(H["subset"] == subset) & (H["kind"] == "width")]
    if part.empty:
        print(f"{subset} part: no horizon table (fewer than two observed horizons)")
        continue
    part = part.assign(entry=part["label"].where(~part["moves_later"].astype(bool), part["label"] + " *"))
    part = part.astype({"n": int, "k": int})
    print(f"{subset} part: widths per horizon (* : moves later):")
    display(part.pivot_table(index=["quantity", "n", "k", "delta"], columns="horizon", values="entry",
                             aggfunc="first"))
ex = H[H["kind"] == "exponent"].copy()
if len(ex):
    ex["value"] = interval_text(ex["estimate"], ex["lo"], ex["hi"]).to_numpy()
    ex["value"] = ex["value"].where(~ex["moves_later"].astype(bool), ex["value"] + " *")
    ex["at delta"] = ex["delta"].map(lambda v: "all" if pd.isna(v) else f"{v:g}")
    print("Exponents per horizon (* : moves later):")
    display(ex.pivot_table(index=["subset", "quantity", "method", "k_group", "at delta", "term"], columns="horizon",
                           values="value", aggfunc="first"))

# %%
ex_main = H[(H["kind"] == "exponent") & (H["subset"].isin(["main", "long"])) & H["term"].isin(["p", "q"])]
ex_main = ex_main[np.isfinite(ex_main["estimate"].astype(float))]
if len(ex_main):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    for ax, term in zip(axes, ("p", "q")):
        part = ex_main[ex_main["term"] == term]
        for i, (key, line) in enumerate(part.groupby(["subset", "quantity", "k_group"])):
            line = line.sort_values("horizon")
            err = [line["estimate"] - line["lo"], line["hi"] - line["estimate"]]
            ax.errorbar(line["horizon"] * (1 + 0.03 * i), line["estimate"], yerr=np.nan_to_num(err), marker="o",
                        capsize=3, color=COLORS[i % len(COLORS)], label=", ".join(map(str, key)))
        ax.axvline(HORIZON, color="gray", linestyle=":", label="the study's horizon")
        log_axis(ax, "x", sorted(part["horizon"].unique()), "horizon T * lambda_*")
        ax.set_ylabel(f"exponent {term}")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("The laws' exponents against the horizon")
    plt.show()
else:
    print("exponents against the horizon: fewer than two observed horizons with a law")

# %% [markdown]
# ## 5. The step-factor check
#
# The same cells and widths at step factors 1 and 1/4 (`eta = step_factor / lambda_max(H(t))`): a result of the
# gradient flow does not move when the step shrinks. Success fractions with Wilson intervals (seeds pooled over
# the data instances), and the widths per step factor.

# %%
step = report.step
if step.empty:
    print("step-factor check: not in this results directory (no cell run at a step factor other than 1)")
else:
    step = step.assign(value=interval_text(step["rate"], step["rate_lo"], step["rate_hi"]).to_numpy())
    display(step.pivot_table(index=["n", "k", "delta", "quantity", "m"], columns=["horizon", "step_factor"],
                             values="value", aggfunc="first"))
    sw = W[W["subset"] == "step"]
    print("Widths per step factor:")
    display(sw.pivot_table(index=["n", "k", "delta", "quantity"], columns=["horizon", "step_factor"], values="label",
                           aggfunc="first"))
    at = step[step["horizon"] == step["horizon"].max()]
    cells_ = at[["n", "k", "delta"]].drop_duplicates().to_dict("records")
    fig, axes = plt.subplots(len(cells_), len(QUANTITIES), figsize=(4.2 * len(QUANTITIES), 3.6 * len(cells_)),
                             squeeze=False, layout="constrained")
    for row, cell in zip(axes, cells_):
        sel = at[(at["n"] == cell["n"]) & (at["k"] == cell["k"]) & (at["delta"] == cell["delta"])]
        for ax, q in zip(row, QUANTITIES):
            for i, (sf, line) in enumerate(sel[sel["quantity"] == q].groupby("step_factor")):
                line = line.sort_values("m")
                ax.errorbar(line["m"] * (1 + 0.05 * i), line["rate"],
                            yerr=[line["rate"] - line["rate_lo"], line["rate_hi"] - line["rate"]], marker="o",
                            capsize=3, label=f"step factor {sf:g}")
            log_axis(ax, "x", sorted(sel["m"].unique()), "m")
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{q}@{at['horizon'].iloc[0]:g}: {cell_name(cell)}")
            ax.legend(loc="best")
    plt.show()

# %% [markdown]
# ## 6. A prediction
#
# `analysis.predict_width` reads `laws.csv` (here the one shipped in the results directory, or this report's
# written to a temporary directory) and answers with the law's interval, the horizon and the studied domain; a
# width beyond the studied ones is flagged, a problem outside the domain refused in one line.

# %%
import tempfile

laws_dir = RESULTS if REPORT_READ else write_report(report, tempfile.mkdtemp(prefix="report-"))["laws"].parent
d = int(runs["d"].iloc[0])
for quantity, n, k, delta in (("conv", 32, 2, 0.5), ("lazy", 32, 2, 0.5), ("conv", 32, 0, 0.5)):
    try:
        print(f"predict_width({n}, {k}, {delta}, d={d}, quantity={quantity!r}):",
              predict_width(n, k, delta, d=d, quantity=quantity, results=laws_dir))
    except ValueError as exc:
        print(f"predict_width({n}, {k}, {delta}, d={d}, quantity={quantity!r}): {exc}")

# %% [markdown]
# ## 7. The bias network (Theorem 2), as far as the budget allows
#
# Its `lambda_*` is several times smaller, so a flow time costs several times the steps: fewer cells, a shorter
# budget. The same widths and laws, at its own horizons.

# %%
bias_w = W[W["subset"] == "bias"]
if bias_w.empty:
    print("bias part: not in this results directory")
else:
    display(bias_w.pivot_table(index=["n", "k", "delta"], columns=["quantity", "method", "horizon"], values="label",
                               aggfunc="first"))
    seen = bias_w[bias_w["label"] != "not observed"]
    if len(seen):
        last = seen[(seen["quantity"] != "lazy")]["horizon"].max()
        rows = seen[(seen["horizon"] == last) | (seen["quantity"] == "lazy")]
        widths_against("n", ["k", "delta"], f"The bias network's widths against n (rates at T={last:g})", rows,
                       f"bias, T={last:g} (lazy: {report.settings.drift_horizon:g})")
    bias_laws = shown[shown["bias"] == True] if len(shown) else shown
    if len(bias_laws):
        display(bias_laws.pivot_table(index=keys, columns="term", values="value", aggfunc="first"))
    else:
        print("bias laws: none (too few cells with a width)")
