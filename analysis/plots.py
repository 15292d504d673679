"""Small helpers the notebooks use to draw and tabulate the analysis tables.

Nothing here estimates anything: the helpers evaluate a power law fitted by
:func:`analysis.fits.fit_exponents`, draw a reference slope, label censored thresholds, and put
threshold, rate and per-width tables on matplotlib axes (censored thresholds as triangles at the
bound, never as numbers).  matplotlib is imported lazily, so the rest of the package does not
need it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from records.schema import TRAINING_COLUMNS

from .columns import require_columns
from .defaults import EXPONENT_TERMS, THEORY_EXPONENTS, THRESHOLD_KEYS
from .thresholds import ABOVE, BELOW, NOT_CENSORED

# Markers of the threshold plots: a censored cell is drawn at its bound, pointing the way the
# true threshold lies.
CENSOR_MARKERS = {NOT_CENSORED: "o", ABOVE: "^", BELOW: "v"}


def fitted_power_law(exponents: pd.DataFrame, cells: pd.DataFrame) -> np.ndarray:
    """Evaluate ``exp(c + p log n + q log k + r log delta)`` from the rows of one fit group.

    exponents: rows of one group of a :func:`analysis.fits.fit_exponents` table (columns
    ``term, estimate``); cells: a table with the regressor columns (``n``, ``k``, ``delta``) of the
    terms present.  A term absent from the fit (its regressor did not vary in the fitted cells)
    contributes nothing, so the prediction holds only at that regressor's fitted value.  All NaN
    when the group has no fit.
    """
    require_columns(exponents, ["term", "estimate"], "exponents")
    if exponents["term"].duplicated().any():
        raise ValueError("exponents holds several fit groups; pass the rows of one group")
    est = dict(zip(exponents["term"], exponents["estimate"].astype(float)))
    log_m = np.full(len(cells), est.get("c", np.nan), dtype=float)
    for term, regressor in EXPONENT_TERMS.items():
        if term in est:
            require_columns(cells, [regressor], "cells")
            log_m = log_m + est[term] * np.log(cells[regressor].to_numpy(float))
    return np.exp(log_m)


def anchored_power_law(x, x0: float, y0: float, slope: float) -> np.ndarray:
    """``y0 (x / x0)^slope``: a reference line of the given log-log slope through ``(x0, y0)``."""
    return float(y0) * (np.asarray(x, dtype=float) / float(x0)) ** float(slope)


def threshold_labels(th: pd.DataFrame, value_col: str = "m_star", bound_col: str = "m_bound",
                     fmt: str = "{:.0f}", censor_col: str = "censored") -> pd.Series:
    """Text per threshold row: the value where not censored, ``"> bound"`` where censored above,
    ``"<= bound"`` where censored below (``"n/a"`` where nothing is known).

    Works for any column that grows with ``m*`` and its bound, e.g. ``log10_gap`` with
    ``log10_gap_bound`` from :func:`analysis.thresholds.theory_gap`.
    """
    require_columns(th, [value_col, bound_col, censor_col], "thresholds")

    def label(row) -> str:
        flag, value, bound = row[censor_col], row[value_col], row[bound_col]
        if flag == ABOVE and np.isfinite(bound):
            return "> " + fmt.format(bound)
        if flag == BELOW and np.isfinite(bound):
            return "<= " + fmt.format(bound)
        if flag == NOT_CENSORED and np.isfinite(value):
            return fmt.format(value)
        return "n/a"

    return th.apply(label, axis=1).rename(value_col) if len(th) else pd.Series([], dtype=object, name=value_col)


def exponent_table(exponents: pd.DataFrame, terms: Sequence[str] | None = None, digits: int = 2) -> pd.DataFrame:
    """One display row per fit group of a :func:`analysis.fits.fit_exponents` table.

    ``terms``: the exponents shown; None: those of ``p, q, r`` fitted in some group of the table
    (``p, q`` if none is).  Columns: the group columns, per shown term ``"estimate [lo, hi]"`` (the
    estimate alone when the fit has no degrees of freedom left, ``"-"`` when the term was not
    fitted in that group), ``theory_<term>``,
    (the fit's reference, else :data:`analysis.defaults.THEORY_EXPONENTS` of the group's bias),
    ``n_cells, n_censored`` and a ``note`` that says why a fit or an interval is missing
    ("not enough uncensored cells", "exact fit", "<regressor> constant ...").
    """
    require_columns(exponents, ["term", "estimate", "lo", "hi", "theory", "n_cells", "n_censored", "note"],
                    "exponents")
    stat_cols = {"term", "regressor", "estimate", "se", "lo", "hi", "theory", "theory_in_interval", "n_cells",
                 "n_censored", "dof", "note", "interval_note", "boot_lo", "boot_hi"}
    by = [c for c in exponents.columns if c not in stat_cols]
    if terms is None:
        terms = [t for t in ("p", "q", "r") if t in set(exponents["term"])] or ["p", "q"]
    shown = list(terms)
    rows = []
    groups = exponents.groupby(by, sort=True, dropna=False) if by else [((), exponents)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        fit = group.set_index("term")
        first = group.iloc[0]
        row = dict(zip(by, key))
        notes = []
        fitted = "c" in fit.index and np.isfinite(fit.loc["c", "estimate"])
        if not fitted:
            notes.append(f"not enough uncensored cells ({int(first['n_cells'])} uncensored, "
                         f"{int(first['n_censored'])} censored)")
            if first["note"] and "fewer uncensored cells" not in str(first["note"]):
                notes.append(str(first["note"]))
        elif not any(t in fit.index for t in EXPONENT_TERMS):
            notes.append(f"not enough uncensored cells to fit an exponent ({int(first['n_cells'])} uncensored, "
                         f"{int(first['n_censored'])} censored)")
        elif not np.isfinite(fit.loc["c", "se"] if "se" in fit.columns else np.nan):
            notes.append(str(first.get("interval_note") or "")
                         or "exact fit: as many uncensored cells as parameters, no interval")
        some_term = fitted and any(t in fit.index for t in EXPONENT_TERMS)
        for term in shown:
            if term in fit.index and np.isfinite(fit.loc[term, "estimate"]):
                est, lo, hi = (float(fit.loc[term, c]) for c in ("estimate", "lo", "hi"))
                interval = np.isfinite(lo) and np.isfinite(hi)
                row[term] = f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if interval else f"{est:.{digits}f}"
            else:
                row[term] = "-"
                if some_term:
                    regressor = EXPONENT_TERMS.get(term, term)
                    notes.append(f"{regressor} constant in the uncensored cells ({term} not fitted)")
            theory = fit.loc[term, "theory"] if term in fit.index else np.nan
            if not np.isfinite(theory) and "bias" in row:  # term not fitted in this group: the default reference
                theory = THEORY_EXPONENTS.get(row["bias"], {}).get(term, np.nan)
            row[f"theory_{term}"] = theory
        row["n_cells"] = int(first["n_cells"])
        row["n_censored"] = int(first["n_censored"])
        row["note"] = "; ".join(notes)
        rows.append(row)
    columns = [*by, *shown, *(f"theory_{t}" for t in shown), "n_cells", "n_censored", "note"]
    return pd.DataFrame(rows, columns=columns)


def log_axis(ax, which: str, ticks=None, label: str | None = None) -> None:
    """Make axis ``which`` (``"x"`` or ``"y"``) of ``ax`` logarithmic, ticked at ``ticks`` (the values
    studied, written as numbers, no minor labels) and labelled ``label (log scale)``."""
    from matplotlib.ticker import NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    if ticks is not None and len(ticks):
        getattr(ax, f"set_{which}ticks")(ticks, [f"{v:g}" for v in ticks])
        getattr(ax, f"{which}axis").set_minor_formatter(NullFormatter())
    if label:
        getattr(ax, f"set_{which}label")(label + " (log scale)")


def plot_thresholds(ax, th: pd.DataFrame, x: str, *, m_col: str = "m_star", bound_col: str = "m_bound", color=None,
                    label: str | None = None, interval: bool = True) -> dict:
    """Draw the thresholds of one line (e.g. fixed ``k``, bias, criterion, eps') against column ``x``.

    Uncensored cells: filled circles joined by a line, with the bootstrap interval
    ``m_star_lo..m_star_hi`` (an arrow where the interval is open above, no bar where ``m_star_lo`` is
    NaN: no interval).  Censored cells: hollow
    triangles at ``bound_col``, up for "m* above the largest tested width", down for "at or below
    the smallest".  ``m_col``/``bound_col`` may be any pair that grows with ``m*``, e.g.
    ``log10_gap``/``log10_gap_bound``.  Returns the number of points drawn per censoring flag.
    """
    require_columns(th, [x, m_col, "censored", bound_col], "thresholds")
    th = th.sort_values(x)
    counts = {}
    ok = th[th["censored"] == NOT_CENSORED]
    line = ax.plot(ok[x], ok[m_col], marker=CENSOR_MARKERS[NOT_CENSORED], color=color, label=label, linestyle="-")
    color = line[0].get_color()
    counts[NOT_CENSORED] = len(ok)
    if interval and {"m_star_lo", "m_star_hi"} <= set(th.columns) and m_col == "m_star" and len(ok):
        y = ok[m_col].to_numpy(float)
        has = np.isfinite(ok["m_star_lo"].to_numpy(float))  # NaN: no interval (e.g. one data instance)
        lo = np.minimum(ok["m_star_lo"].to_numpy(float), y)
        hi = ok["m_star_hi"].to_numpy(float)
        closed = has & np.isfinite(hi)
        opened = has & np.isposinf(hi)
        if closed.any():
            ax.errorbar(ok[x].to_numpy(float)[closed], y[closed],
                        yerr=[y[closed] - lo[closed], np.maximum(hi[closed] - y[closed], 0)],
                        fmt="none", ecolor=color, capsize=3, alpha=0.7)
        if opened.any():
            ax.errorbar(ok[x].to_numpy(float)[opened], y[opened],
                        yerr=[y[opened] - lo[opened], y[opened]], lolims=True,
                        fmt="none", ecolor=color, capsize=3, alpha=0.7)
    for flag in (ABOVE, BELOW):
        cens = th[th["censored"] == flag]
        counts[flag] = len(cens)
        if len(cens):
            ax.plot(cens[x], cens[bound_col], linestyle="none", marker=CENSOR_MARKERS[flag], markersize=9,
                    markerfacecolor="none", markeredgecolor=color)
    return counts


def censor_legend_handles():
    """Legend entries explaining the censoring markers of :func:`plot_thresholds`."""
    from matplotlib.lines import Line2D  # matplotlib only where a figure is drawn: `import analysis` stays light

    return [Line2D([], [], linestyle="none", marker="^", markerfacecolor="none", markeredgecolor="gray",
                   label="m* > largest width (censored)"),
            Line2D([], [], linestyle="none", marker="v", markerfacecolor="none", markeredgecolor="gray",
                   label="m* <= smallest width (censored)")]


def plot_success_heatmap(ax, rates: pd.DataFrame, x: str = "n", y: str = "m", annotate: bool = True):
    """Success rate of one (k, bias, criterion, eps') slice as a heatmap, ``y`` (rows, ascending
    upwards) against ``x``, each cell annotated ``successes/trials``.  Returns the image (for a
    colour bar)."""
    require_columns(rates, [x, y, "rate", "successes", "trials"], "rates")
    grid = rates.pivot_table(index=y, columns=x, values="rate", aggfunc="mean").sort_index()
    image = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [str(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(v) for v in grid.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if annotate:
        pos = {(yv, xv): (j, i) for i, yv in enumerate(grid.index) for j, xv in enumerate(grid.columns)}
        for _, row in rates.iterrows():
            j, i = pos[(row[y], row[x])]
            ax.text(j, i, f"{int(row['successes'])}/{int(row['trials'])}", ha="center", va="center",
                    color="white" if row["rate"] < 0.6 else "black", fontsize=8)
    return image


def plot_width_medians(ax, medians: pd.DataFrame, *, color=None, label: str | None = None):
    """Median against ``m`` of one group of a :func:`analysis.scaling.width_medians` or
    :func:`analysis.scaling.loss_floor` table, with the quartiles as error bars; widths flagged
    ``censored`` (a median that is only an upper bound) as hollow markers.  Returns the line."""
    require_columns(medians, ["m", "median"], "medians")
    medians = medians.sort_values("m")
    m, med = medians["m"].to_numpy(float), medians["median"].to_numpy(float)
    line = ax.plot(m, med, marker="o", color=color, label=label)[0]
    if {"q25", "q75"} <= set(medians.columns):
        ax.errorbar(m, med, yerr=[np.maximum(med - medians["q25"].to_numpy(float), 0),
                                  np.maximum(medians["q75"].to_numpy(float) - med, 0)],
                    fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.7)
    if "censored" in medians.columns:
        cens = medians["censored"].astype(bool).to_numpy()
        if cens.any():
            ax.plot(m[cens], med[cens], linestyle="none", marker="o", markersize=10, markerfacecolor="white",
                    markeredgecolor=line.get_color())
    return line


def interval_text(estimate, lo, hi, digits: int = 2) -> pd.Series:
    """``"est [lo, hi]"`` per row; the estimate alone where the interval is missing, ``"-"`` where the
    estimate is."""
    est, lo, hi = (np.asarray(v, dtype=float) for v in (estimate, lo, hi))
    out = []
    for e, a, b in zip(est, lo, hi):
        if not np.isfinite(e):
            out.append("-")
        elif np.isfinite(a) and np.isfinite(b):
            out.append(f"{e:.{digits}f} [{a:.{digits}f}, {b:.{digits}f}]")
        else:
            out.append(f"{e:.{digits}f}")
    return pd.Series(out, dtype=object)


# A threshold cell: THRESHOLD_KEYS and every training setting but ``eps`` (in a thresholds table
# ``eps`` is the tolerance eps', in the runs table the training eps).
PLOT_CELL_KEYS = (*THRESHOLD_KEYS, *(c for c in TRAINING_COLUMNS if c != "eps"))


def logistic_plot_table(th: pd.DataFrame, runs: pd.DataFrame, keys: Sequence[str] = PLOT_CELL_KEYS) -> pd.DataFrame:
    """An :func:`analysis.thresholds.instance_thresholds` table with the columns
    :func:`plot_thresholds` and :func:`threshold_labels` read: ``m_star`` (``m_logistic``), ``censored``
    (``logistic_censored``), ``m_star_lo, m_star_hi`` (``m_lo, m_hi``) and ``m_bound``: the largest
    tested width of the cell (in ``runs``) where censored above, the smallest where censored below.

    Cells are matched on the columns of ``keys`` present in both tables.
    """
    require_columns(th, ["m_logistic", "logistic_censored", "m_lo", "m_hi"], "thresholds")
    require_columns(runs, ["m"], "runs")
    on = [c for c in keys if c in th.columns and c in runs.columns]
    widths = runs.groupby(on, dropna=False)["m"].agg(_m_min="min", _m_max="max").reset_index()
    out = th.drop(columns=["m_star", "censored", "m_bound", "m_star_lo", "m_star_hi"], errors="ignore").merge(
        widths, on=on, how="left")
    flag = out["logistic_censored"]
    bound = np.where(flag == ABOVE, out["_m_max"], np.where(flag == BELOW, out["_m_min"], np.nan))
    return out.drop(columns=["_m_min", "_m_max"]).assign(
        m_star=out["m_logistic"], censored=flag, m_bound=bound.astype(float), m_star_lo=out["m_lo"],
        m_star_hi=out["m_hi"])


def plot_ratio(ax, table: pd.DataFrame, x: str, *, color=None, label: str | None = None,
               ratio_col: str = "ratio"):
    """A ratio (e.g. of :func:`analysis.comparisons.control_comparison`) against ``x`` with its
    interval ``lo..hi`` as error bars where it has one; rows without a ratio are skipped.  Returns
    the line (None when no row has a ratio)."""
    require_columns(table, [x, ratio_col, "lo", "hi"], "ratios")
    table = table[np.isfinite(table[ratio_col].astype(float))].sort_values(x)
    if table.empty:
        return None
    xs, r = table[x].to_numpy(float), table[ratio_col].to_numpy(float)
    line = ax.plot(xs, r, marker="o", color=color, label=label)[0]
    lo, hi = table["lo"].to_numpy(float), table["hi"].to_numpy(float)
    closed = np.isfinite(lo) & np.isfinite(hi)
    if closed.any():
        ax.errorbar(xs[closed], r[closed], yerr=[np.maximum(r[closed] - lo[closed], 0),
                                                 np.maximum(hi[closed] - r[closed], 0)],
                    fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.7)
    return line
