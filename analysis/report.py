"""The width study's report: every table the study ships, from its runs and curves, in one call.

:func:`study_report` splits the runs into the study's parts (:func:`split_study`) and computes, with the
tested functions of :mod:`analysis.widths`, :mod:`analysis.survival` and :mod:`analysis.mechanism`:

- ``widths``: the three widths per cell (:func:`analysis.widths.widths_table`): ``conv``, ``rate`` and
  ``rate_soft`` measured directly at each horizon ``T`` from the main part's runs; ``lazy`` measured
  directly at the drift horizon over every run observed that long (the ``drift`` pool), and from the
  drift law solved for ``lambda_*/4`` (``extrapolated`` beyond the studied widths); the same at the long
  part's horizons, for the step-factor cells, and for the bias part.
- ``laws``: the rows of ``laws.csv`` (:func:`analysis.widths.laws_table`) at the study's horizon, the
  drift law's own coefficients (``quantity = "drift"``: ``drift / lambda_* ~ n^a k^b delta^c m^-e``) and
  the bias part's laws.  Every number a reader quotes is a row of it.
- ``horizons``: each width and law exponent at ``T, 2T, 4T`` (and the long horizons on the long part),
  with ``moves_later`` (:func:`analysis.widths.mark_moves`); ``choice``: the horizon the rule of
  :func:`analysis.widths.study_horizon` picks per part.
- ``step``: the step-factor check: the same cells and widths at each step factor, success fractions
  with Wilson intervals at each horizon (their widths are rows of ``widths``, ``subset = "step"``).
- ``mechanism``: ``late_rate`` against ``lambda_min_late`` and ``jump_rate_late``, and the jumps'
  scaling law (:func:`analysis.mechanism.fit_mechanism`), per ``k`` group.
- ``survival``: the fraction converged to ``eps'`` by flow time, per cell and width
  (:func:`analysis.survival.survival_table`), with the counts still converging or on a plateau.

Pooling across budgets.  Runs of different ``t_max`` are different run ids, and the success module
refuses to pool them.  Judged at a horizon ``T`` no longer than each run's budget, a run's budget
beyond ``T`` does not matter: trajectories are prefixes of each other up to their stop.
:func:`pool_through` pools such runs deliberately: it relabels ``t_max`` to ``T`` ("observed through
T"), keeps the original in ``t_max_run``, and keeps one run per trajectory.  The same initialisation
seed on the same data under the same settings is one trajectory, whatever its budget: counting it once
per part would count one sample several times.

A horizon beyond a part's budget is not an error: its rows are NaN with a note (``label`` "not
observed").  Runs whose outcome at ``T`` is unknown (stopped early without a conclusion) are left
out and counted in the row's note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from records.schema import CELL_COLUMNS, TRAINING_COLUMNS

from .defaults import CELL_KEYS, CONFIDENCE, THRESHOLD_KEYS, UNDEFINED
from .floorlaw import K_GROUP, add_k_group
from .known import known_laws
from .load import load_curves, load_runs, require_columns
from .mechanism import EXPECTED, fit_mechanism
from .success import run_success, success_rates
from .survival import SURVIVAL_COLUMNS, survival_table
from .timed import TIME_SLACK, budget_horizon, observed_through, time_to, timed_name
from .widths import (DEFAULT_EPS, DRIFT, HORIZON_COLUMNS, LAWS_COLUMNS, LAWS_FILE, WIDTH_COLUMNS, drift_law, laws_table,
                     mark_moves, read_laws, study_horizon, widths_table, write_laws)

SUBSETS = ("main", "long", "drift", "step", "bias")
RATE_QUANTITIES = ("conv", "rate", "rate_soft")
MECHANISM_TERMS = ("lambda_min_late", "jump_rate_late")
# late_rate ~ 2 lambda_min / lambda_* - jump_rate_late holds for the late window's lambda_min as for the run's
MECHANISM_EXPECTED = {**EXPECTED, "lambda_min_late": EXPECTED["min_lambda_ratio"]}
JUMP_COLUMNS = ("jump_energy_total", "jump_rate_late")
# the curves the report reads (rate_soft and lazy at a horizon need the loss, the drift and the spectrum)
REPORT_CURVE_COLUMNS = ("run_id", "step", "t", "rel_loss", "H_drift_2", "lambda_min")
SURVIVAL_TIMES = (1.5, 3, 6, 12, 24, 48, 96, 192, 384, 768)
NOT_OBSERVED = "not observed"

DESIGN_COLUMNS = ["subset", "bias", "step_factor", "t_max", K_GROUP, "runs", "cells", "n", "k", "delta", "m",
                  "instances", "seeds"]
WIDTHS_COLUMNS = ["subset", *THRESHOLD_KEYS, K_GROUP, "step_factor", *WIDTH_COLUMNS]
HORIZONS_COLUMNS = ["subset", *HORIZON_COLUMNS]
CHOICE_COLUMNS = ["subset", "horizons", "chosen", "moving", "note"]
STEP_COLUMNS = [*THRESHOLD_KEYS, "m", "step_factor", "quantity", "criterion", "horizon", "eps", "trials", "successes",
                "rate", "rate_lo", "rate_hi", "note"]
MECHANISM_COLUMNS = ["fit", "bias", K_GROUP, "term", "regressor", "estimate", "lo", "hi", "se", "expected",
                     "expected_in_interval", "n_runs", "n_instances", "r2", "note"]
SURVIVAL_CSV_COLUMNS = ["subset", *CELL_KEYS, *SURVIVAL_COLUMNS]
# the drift law's coefficients in laws.csv, named as the issue writes the law: drift/lambda_* ~ n^a k^b delta^c m^-e
DRIFT_TERMS = {"c": ("intercept", "1"), "n": ("a", "n"), "k": ("b", "k"), "delta": ("c", "delta"), "m": ("e", "m"),
               "sigma": ("sigma", "")}
FILES = {"widths": "widths.csv", "laws": LAWS_FILE, "horizons": "horizons.csv", "choice": "horizon_choice.csv",
         "step": "step.csv", "mechanism": "mechanism.csv", "survival": "survival.csv", "design": "design.csv"}
META_FILE = "report.json"


@dataclass(frozen=True)
class ReportSettings:
    """What the report is computed at: horizons ``T`` (1/lambda_*) of the main part, the long part's
    extra horizons, ``eps'``, the drift horizon, the bias part's horizons, ``delta_fail`` (widths at
    rate ``1 - delta_fail``), the survival curves' flow times, and the bootstrap."""

    horizons: tuple[float, ...] = (48.0, 96.0, 192.0)
    long_horizons: tuple[float, ...] = (384.0, 768.0)
    eps: float = DEFAULT_EPS
    drift_horizon: float = 24.0
    # the drift law is fitted where it is used, over the wide nets, apart per separation: at delta = 0.25 the
    # drift's slope in m flattens from about -0.6 below m = 512 to about -0.2 above 2048 (one power law in
    # m and delta over every width put m_lazy inside the studied widths where the measurement says beyond)
    drift_min_width: int = 1024
    drift_by: tuple[str, ...] = ("delta",)
    bias_horizons: tuple[float, ...] = (12.0, 24.0, 48.0)
    delta_fail: float = 0.1
    survival_times: tuple[float, ...] = SURVIVAL_TIMES
    n_boot: int = 400
    seed: int = 0
    confidence: float = CONFIDENCE

    def __post_init__(self) -> None:
        for name in ("horizons", "long_horizons", "bias_horizons", "survival_times"):
            values = tuple(float(v) for v in getattr(self, name))
            if not all(np.isfinite(v) and v > 0 for v in values):
                raise ValueError(f"{name}={values}: flow times must be positive and finite (units of 1/lambda_*)")
            object.__setattr__(self, name, tuple(sorted(values)))
        if not self.horizons:
            raise ValueError("horizons=(): give at least one flow time T, e.g. (48, 96, 192)")
        if not (isinstance(self.drift_min_width, (int, np.integer)) and self.drift_min_width >= 1):
            raise ValueError(f"drift_min_width={self.drift_min_width!r}: the smallest width the drift law is fitted "
                             f"over, an integer >= 1 (e.g. 1024)")
        object.__setattr__(self, "drift_by", tuple(self.drift_by))
        if not set(self.drift_by) <= {"delta"}:
            raise ValueError(f"drift_by={self.drift_by}: the drift law can be fitted apart per separation only "
                             f"(laws.csv has a delta column, no other cell column): ('delta',) or ()")
        if not (np.isfinite(self.drift_horizon) and self.drift_horizon > 0):
            raise ValueError(f"drift_horizon={self.drift_horizon}: a positive flow time in units of 1/lambda_*")
        if not 0 < self.delta_fail < 1:
            raise ValueError(f"delta_fail={self.delta_fail}: a failure probability in (0, 1), e.g. 0.1")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps={self.eps}: a relative-loss tolerance in (0, 1), e.g. 1e-8")
        if self.n_boot < 0:
            raise ValueError(f"n_boot={self.n_boot}: a number of bootstrap replicates >= 0")


class StudyParts(dict):
    """The study's parts by name (:data:`SUBSETS`), each a runs frame (possibly empty), with ``budget``:
    the flow-time budget each part is observed through."""

    def __init__(self, frames: dict[str, pd.DataFrame], budget: dict[str, float]):
        super().__init__(frames)
        self.budget = budget


@dataclass(frozen=True)
class StudyReport:
    """The tables of the study (see the module docstring), ``horizon``: the study's horizon (the rule's
    choice on the main part; the longest main horizon, said in ``notes``, when no horizon is stable),
    ``notes``: sentences on what could not be computed and why, and the number and
    :func:`runs_fingerprint` of the runs it was computed from."""

    settings: ReportSettings
    design: pd.DataFrame
    widths: pd.DataFrame
    laws: pd.DataFrame
    horizons: pd.DataFrame
    choice: pd.DataFrame
    step: pd.DataFrame
    mechanism: pd.DataFrame
    survival: pd.DataFrame
    horizon: float
    notes: tuple[str, ...] = field(default=())
    n_runs: int = 0
    fingerprint: str = ""

    def tables(self) -> dict[str, pd.DataFrame]:
        """The shipped tables by name (the keys of :data:`FILES`)."""
        return {name: getattr(self, name) for name in FILES}


# --------------------------------------------------------------------------------------------
# The parts of the study


def _budget(runs: pd.DataFrame) -> pd.Series:
    return budget_horizon(runs) if len(runs) else pd.Series(dtype=float)


def trajectory_keys(runs: pd.DataFrame) -> list[str]:
    """The columns that make a run one trajectory whatever its budget: the cell, the data and
    initialisation seeds, and every training setting but ``t_max`` (those of ``runs``)."""
    return [c for c in (*CELL_COLUMNS, *TRAINING_COLUMNS) if c in runs.columns and c != "t_max"]


def pool_through(runs: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """The runs whose budget reaches ``horizon`` (1/lambda_*), pooled as "observed through ``horizon``".

    ``t_max`` becomes ``horizon`` (``t_unit`` ``lambda_star``) so that runs of different budgets share a
    cell, ``t_max_run`` keeps each run's own budget, and of several runs of one trajectory
    (:func:`trajectory_keys`) the one with the shortest budget is kept (it is observed through ``horizon``
    at least as finely as the others).  Judge the result at ``horizon`` or earlier only: beyond it the runs'
    budgets differ.
    """
    require_columns(runs, ["t_max", "lambda_star", "run_id"], "runs")
    budget = _budget(runs)
    reach = budget >= horizon * (1 - TIME_SLACK)
    # the budgets of the kept rows only: an empty frame assigned a longer Series would take its index
    kept = runs.loc[reach].assign(t_max_run=budget[reach].to_numpy())
    # the shortest budget: a run stopped at T recorded its drift and spectrum up to T exactly, a longer one
    # only at its checkpoints before T (log-spaced: up to 6% lower in the width study)
    kept = kept.sort_values(["t_max_run", "run_id"], kind="stable")
    kept = kept.drop_duplicates(trajectory_keys(kept), keep="first").sort_index()
    return kept.assign(t_max=float(horizon), **({"t_unit": "lambda_star"} if "t_unit" in kept.columns else {}))


def split_study(runs: pd.DataFrame, settings: ReportSettings = ReportSettings()) -> StudyParts:
    """The study's parts.

    - ``main``: no bias, ReLU patterns, step factor 1, budget ``max(horizons)`` (else the longest budget
      below it, else the shortest above: the part the widths at ``T`` are read from);
    - ``long``: the same training with the longest budget beyond the main part's;
    - ``drift``: every no-bias, step-factor-1 ReLU run observed through the drift horizon, pooled
      (:func:`pool_through`);
    - ``step``: the cells and widths run at a step factor other than 1 at the main budget, with the
      step-factor-1 runs of the same cells and widths;
    - ``bias``: the bias runs (step factor 1), at their longest budget.
    """
    require_columns(runs, ["bias", "step_factor", "t_max", "lambda_star", "m", *THRESHOLD_KEYS], "runs")
    relu = runs["mode"] == "relu" if "mode" in runs.columns else pd.Series(True, index=runs.index)
    bias = runs["bias"].astype(bool)
    unit = np.isclose(runs["step_factor"].astype(float), 1.0)
    budget = _budget(runs)
    plain = runs[relu & ~bias & unit]
    budgets = sorted(set(budget[plain.index].round(9)))
    frames = {name: runs.iloc[0:0] for name in SUBSETS}
    spans = {name: np.nan for name in SUBSETS}
    if budgets:
        target = max(settings.horizons)
        below = [b for b in budgets if b <= target * (1 + TIME_SLACK)]
        main_budget = max(below) if below else min(budgets)
        frames["main"] = plain[np.isclose(budget[plain.index], main_budget)]
        spans["main"] = main_budget
        longer = [b for b in budgets if b > main_budget * (1 + TIME_SLACK)]
        if longer:
            frames["long"] = plain[np.isclose(budget[plain.index], max(longer))]
            spans["long"] = max(longer)
        frames["drift"] = pool_through(plain, settings.drift_horizon)
        spans["drift"] = settings.drift_horizon if len(frames["drift"]) else np.nan
        at_main = runs[relu & ~bias & np.isclose(budget, main_budget)]
        other = at_main[~np.isclose(at_main["step_factor"].astype(float), 1.0)]
        if len(other):
            key = [*THRESHOLD_KEYS, "m"]
            same = pd.MultiIndex.from_frame(at_main[key]).isin(pd.MultiIndex.from_frame(other[key]))
            frames["step"] = at_main[same]
            spans["step"] = main_budget
    with_bias = runs[relu & bias & unit]
    if len(with_bias):
        longest = float(budget[with_bias.index].max())
        frames["bias"] = with_bias[np.isclose(budget[with_bias.index], longest)]
        spans["bias"] = longest
    return StudyParts(frames, spans)


def _listed(values: pd.Series) -> str:
    return ", ".join(f"{v:g}" for v in sorted(values.unique()))


def study_design(parts: StudyParts) -> pd.DataFrame:
    """Per part, bias, step factor, budget and ``k`` group: the runs, cells, values of ``n, k, delta, m``,
    data instances and initialisation seeds (:data:`DESIGN_COLUMNS`)."""
    rows = []
    for name in SUBSETS:
        frame = parts[name]
        if frame.empty:
            continue
        frame = add_k_group(frame)
        keys = ["bias", "step_factor", "t_max", K_GROUP]
        for key, g in frame.groupby(keys, sort=True):
            rows.append({"subset": name, **dict(zip(keys, key)), "runs": len(g),
                         "cells": g.groupby(list(THRESHOLD_KEYS)).ngroups, "n": _listed(g["n"]), "k": _listed(g["k"]),
                         "delta": _listed(g["delta"]), "m": _listed(g["m"]), "instances": g["data_seed"].nunique(),
                         "seeds": g["seed"].nunique()})
    return pd.DataFrame(rows, columns=DESIGN_COLUMNS)


# --------------------------------------------------------------------------------------------
# Widths and laws at one horizon


def _observed(runs: pd.DataFrame, horizon: float, eps: float | None = None) -> tuple[pd.DataFrame, str]:
    """The runs whose outcome at ``horizon`` is known, and a note counting those left out.  With ``eps``
    (``conv`` and ``rate``, judged at ``eps'``), a run that stopped at a training eps above ``eps'`` before
    ``horizon`` without reaching ``eps'`` is unknown too (``analysis.timed.reached_by``)."""
    if eps is None:
        known = observed_through(runs, horizon)
    else:
        done = time_to(runs, eps) <= horizon * (1 + TIME_SLACK)
        known = observed_through(runs, horizon, done)
    dropped = int((~known).sum())
    note = (f"{dropped} run(s) stopped before T={horizon:g}/lambda_* without a conclusion (at a training eps above "
            f"eps', or at max_steps): outcome unknown, left out") if dropped else ""
    return runs[known], note


# the criteria judged at eps' (the others read the run's own record up to its stop)
AT_EPS = ("conv", "rate")


def _placeholder(runs: pd.DataFrame, quantities: Sequence[str], horizon: float, eps: float, delta_fail: float,
                 note: str, strata: Sequence[str] = ()) -> pd.DataFrame:
    """NaN width rows (label "not observed") for every cell of ``runs`` and quantity, with ``note``."""
    keys = [*THRESHOLD_KEYS, *strata]
    cells = runs.groupby(keys, dropna=False)["m"].agg(m_min="min", m_max="max", n_widths="nunique").reset_index()
    parts = []
    for q in quantities:
        parts.append(cells.assign(quantity=q, method="thresholds", criterion=timed_name(q, horizon),
                                  horizon=float(horizon), eps=eps, target=1 - delta_fail, censored=UNDEFINED,
                                  label=NOT_OBSERVED, extrapolated=False, note=note))
    return pd.concat(parts, ignore_index=True).reindex(columns=[*keys, *WIDTH_COLUMNS]) if parts else pd.DataFrame()


def _with_note(table: pd.DataFrame, note: str) -> pd.DataFrame:
    if not note or table.empty:
        return table
    old = table["note"].fillna("").astype(str)
    return table.assign(note=np.where(old == "", note, old + "; " + note))


@dataclass(frozen=True)
class AtHorizon:
    """The widths and laws of one part at one horizon (``laws`` empty where not computed)."""

    horizon: float
    widths: pd.DataFrame
    laws: pd.DataFrame
    drift: pd.DataFrame | None = None


def part_at_horizon(runs: pd.DataFrame, curves: pd.DataFrame | None, horizon: float, quantities: Sequence[str], *,
                    settings: ReportSettings, strata: Sequence[str] = (), laws: bool = True,
                    theorem: bool = False, known: bool = False) -> AtHorizon:
    """:func:`analysis.widths.widths_table` (and :func:`analysis.widths.laws_table`) of ``runs`` at
    ``horizon``; a horizon beyond the runs' budget gives "not observed" rows, never an error."""
    s = settings
    empty = pd.DataFrame(columns=LAWS_COLUMNS)
    if runs.empty:
        return AtHorizon(horizon, pd.DataFrame(columns=[*THRESHOLD_KEYS, *strata, *WIDTH_COLUMNS]), empty)
    budget = float(_budget(runs).min())
    if budget < horizon * (1 - TIME_SLACK):
        note = f"T={horizon:g}/lambda_* is beyond the runs' budget {budget:g}/lambda_*: not observed"
        return AtHorizon(horizon, _placeholder(runs, quantities, horizon, s.eps, s.delta_fail, note, strata), empty)
    widths, tables, drift = [], [], None
    for i, q in enumerate(quantities):
        # widths_table's seeds per quantity, so that the widths are those of one widths_table call
        seen, note = _observed(runs, horizon, s.eps if q in AT_EPS else None)
        if seen.empty:
            widths.append(_placeholder(runs, [q], horizon, s.eps, s.delta_fail, note, strata))
            continue
        law = None
        if q == "lazy":
            wide = seen[seen["m"] >= s.drift_min_width]
            drift = law = drift_law(wide, curves, horizon=horizon, by=("bias", *s.drift_by, *strata), n_boot=s.n_boot,
                                    seed=s.seed, confidence=s.confidence)
        w = widths_table(seen, curves, horizon=horizon, eps=s.eps, delta_fail=s.delta_fail, quantities=(q,),
                         strata=strata, drift=law, n_boot=s.n_boot, seed=s.seed + i, confidence=s.confidence)
        widths.append(_with_note(w, note))
        if laws:
            tables.append(_with_note(laws_table(seen, curves, widths=w, drift=law, horizon=horizon, eps=s.eps,
                                                delta_fail=s.delta_fail, quantities=(q,), strata=strata,
                                                theorem=theorem, known=known, n_boot=s.n_boot, seed=s.seed,
                                                confidence=s.confidence), note))
    table = pd.concat(tables, ignore_index=True) if tables else empty
    return AtHorizon(horizon, pd.concat(widths, ignore_index=True), table, drift)


def horizon_rows(at: Sequence[AtHorizon], terms: Sequence[str] = ("p", "q", "r"),
                 strata: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of :func:`analysis.widths.horizon_table` built from widths and laws already computed at
    each horizon (the same table, without computing them twice), ``moves_later`` by
    :func:`analysis.widths.mark_moves`.  Horizons without laws (not observed) are left out."""
    parts = []
    for a in at:
        if a.laws.empty:
            continue
        parts.append(add_k_group(a.widths).assign(kind="width", term="", horizon=a.horizon))
        parts.append(a.laws[a.laws["term"].isin(terms)].assign(kind="exponent", horizon=a.horizon, censored="",
                                                               label=""))
    at_k = HORIZON_COLUMNS.index(K_GROUP) + 1
    columns = [*HORIZON_COLUMNS[:at_k], *strata, *HORIZON_COLUMNS[at_k:]]
    if not parts:
        return pd.DataFrame(columns=columns)
    return mark_moves(pd.concat(parts, ignore_index=True).reindex(columns=columns))


def _choice_row(subset: str, table: pd.DataFrame, horizons: Sequence[float]) -> dict:
    checked = sorted(table["horizon"].unique()) if len(table) else []
    row = {"subset": subset, "horizons": ", ".join(f"{h:g}" for h in (checked or horizons)), "chosen": np.nan}
    if len(checked) < 2:
        return {**row, "moving": "", "note": f"fewer than two observed horizons among {list(horizons)}: no choice"}
    choice = study_horizon(table)
    return {**row, "chosen": np.nan if choice.horizon is None else choice.horizon,
            "moving": ", ".join(f"{h:g}: {int(v)}" for h, v in choice.moving.items()), "note": choice.note}


# --------------------------------------------------------------------------------------------
# The drift law's own coefficients, the step-factor check, the mechanism and the survival curves


def drift_law_rows(law: pd.DataFrame | None, runs: pd.DataFrame, horizon: float) -> pd.DataFrame:
    """The drift law's coefficients as rows of ``laws.csv`` (``quantity = "drift"``, ``method =
    "drift_law"``): ``log(max ||H(t) - H(0)||_2 / lambda_*) = intercept + a log n + b log k + c log delta
    - e log m``, i.e. ``drift ~ n^a k^b delta^c m^-e`` (``e = -a_m``, its interval flipped), ``sigma`` the
    run-to-run scatter, per ``bias`` and ``k`` group, with the studied domain."""
    if law is None or law.empty:
        return pd.DataFrame(columns=LAWS_COLUMNS)
    rows = []
    groups = [c for c in ("bias", K_GROUP, "delta") if c in law.columns]
    data = add_k_group(runs)
    for key, g in law.groupby(groups, sort=True, dropna=False):
        key = dict(zip(groups, key if isinstance(key, tuple) else (key,)))
        sel = np.logical_and.reduce([data[c] == v for c, v in key.items()])
        cells = data[sel]
        domain = {"n_min": cells["n"].min(), "n_max": cells["n"].max(), "k_min": cells["k"].min(),
                  "k_max": cells["k"].max(), "delta_min": cells["delta"].min(), "delta_max": cells["delta"].max(),
                  "d_min": cells["d"].min() if "d" in cells else np.nan,
                  "d_max": cells["d"].max() if "d" in cells else np.nan,
                  "m_min": cells["m"].min(), "m_max": cells["m"].max()}
        n_cells = cells.groupby(list(THRESHOLD_KEYS)).ngroups
        for _, r in g.iterrows():
            term, regressor = DRIFT_TERMS.get(r["term"], (r["term"], r["term"]))
            flip = -1.0 if r["term"] == "m" else 1.0
            lo, hi = (flip * r["hi"], flip * r["lo"]) if flip < 0 else (r["lo"], r["hi"])
            rows.append({"quantity": "drift", "method": DRIFT, "term": term, "regressor": regressor,
                         "estimate": flip * r["estimate"], "lo": lo, "hi": hi, "se": r["se"], "dof": np.nan,
                         "horizon": float(horizon), "criterion": f"max ||H(t) - H(0)||_2 / lambda_* until {horizon:g}",
                         "eps": np.nan, "rate": np.nan, **key, "n_cells": n_cells, "n_censored": 0, **domain,
                         "theory": np.nan,
                         "note": "; ".join(filter(None, [str(r["note"] or ""), str(r["interval_note"] or ""),
                                                         f"{int(r['n_runs'])} runs, {int(r['n_instances'])} data "
                                                         f"instances"]))})
    return pd.DataFrame(rows).reindex(columns=LAWS_COLUMNS)


def check_lazy_law(widths: pd.DataFrame) -> pd.DataFrame:
    """``widths`` with the drift law's ``m_lazy`` checked against the measured one, cell by cell: where the
    measurement says more than the largest studied width while the law's solve lies inside the studied
    widths, or where both exist and the solve lies outside the measured interval, the law's row says so in
    ``note`` (a drift that stops falling as a power of ``m`` makes the law's solve too small)."""
    require_columns(widths, ["quantity", "method", "estimate", "lo", "hi", "censored", "m_min", "m_max", "note"],
                    "widths")
    keys = [c for c in widths.columns if c in (*THRESHOLD_KEYS, "step_factor", "subset", "horizon")]
    lazy = widths[widths["quantity"] == "lazy"]
    direct = lazy[lazy["method"] == "thresholds"].set_index(keys)
    out = widths.copy()
    for i, row in lazy[lazy["method"] == DRIFT].iterrows():
        key = tuple(row[k] for k in keys)
        if key not in direct.index or not np.isfinite(row["estimate"]):
            continue
        d = direct.loc[key]
        d = d.iloc[0] if isinstance(d, pd.DataFrame) else d
        said = ""
        if d["censored"] == "above" and row["estimate"] <= d["m_max"]:
            said = (f"contradicted by the measurement: the law's solve {row['estimate']:.0f} lies inside the studied "
                    f"widths, the measured m_lazy is > {d['m_max']:g}")
        elif d["censored"] == "below" and row["estimate"] > d["m_min"]:
            said = (f"contradicted by the measurement: the law's solve {row['estimate']:.0f} lies above the smallest "
                    f"studied width, the measured m_lazy is <= {d['m_min']:g}")
        elif d["censored"] == "none" and np.isfinite(d["lo"]) and not d["lo"] <= row["estimate"] <= d["hi"]:
            said = f"outside the measured interval [{d['lo']:.0f}, {d['hi']:.0f}]"
        if said:
            out.loc[i, "note"] = "; ".join(filter(None, [str(row["note"] or ""), said]))
    return out


def step_fractions(runs: pd.DataFrame, curves: pd.DataFrame | None, horizons: Sequence[float], *,
                   quantities: Sequence[str] = RATE_QUANTITIES, eps: float = DEFAULT_EPS,
                   confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Success fractions of ``quantities`` at each horizon per cell, width and step factor, with Wilson
    intervals (seeds pooled over data instances) (:data:`STEP_COLUMNS`).  Horizons beyond the runs'
    budget are left out; runs whose outcome at ``T`` is unknown are left out and counted in ``note``."""
    require_columns(runs, ["step_factor"], "runs")
    parts = []
    if runs.empty:
        return pd.DataFrame(columns=STEP_COLUMNS)
    budget = float(_budget(runs).min())
    for h in horizons:
        if budget < h * (1 - TIME_SLACK):
            continue
        for q in quantities:
            seen, note = _observed(runs, h, eps if q in AT_EPS else None)
            success = run_success(seen, curves, eps_grid=[eps], criteria=[timed_name(q, h)], strata=("step_factor",))
            parts.append(success_rates(success, confidence).assign(quantity=q, horizon=float(h), note=note))
    if not parts:
        return pd.DataFrame(columns=STEP_COLUMNS)
    out = pd.concat(parts, ignore_index=True).reindex(columns=STEP_COLUMNS)
    return out.sort_values([*THRESHOLD_KEYS, "quantity", "horizon", "m", "step_factor"], ignore_index=True)


def mechanism_table(runs: pd.DataFrame, *, terms: Sequence[str] = MECHANISM_TERMS,
                    jump_cols: Sequence[str] = JUMP_COLUMNS, n_boot: int = 400, seed: int = 0,
                    confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The mechanism's fits per ``bias`` and ``k`` group (:data:`MECHANISM_COLUMNS`): ``fit = "late_rate"``,
    the regression of ``late_rate`` on ``terms`` (expected ``2`` for a ``lambda_min`` term, ``-1`` for the
    jump rate), and ``fit = "jumps:<col>"``, the scaling law ``col ~ n^a k^b delta^c m^a_m`` of each jump
    measure of ``jump_cols`` over the runs where it is positive (the others counted in ``note``)."""
    if runs.empty:
        return pd.DataFrame(columns=MECHANISM_COLUMNS)
    data = add_k_group(runs).drop(columns=[c for c in ("mode", "step_factor", "t_max") if c in runs.columns])
    rows = []
    for j, col in enumerate(jump_cols):
        mech = fit_mechanism(data, terms=terms, by=("bias", K_GROUP), jump_col=col, n_boot=n_boot, seed=seed + j,
                             confidence=confidence)
        if j == 0:
            reg = mech.regression.assign(fit="late_rate", regressor=mech.regression["term"], se=np.nan)
            expected = reg["term"].map(MECHANISM_EXPECTED).astype(float)
            inside = (reg["lo"] <= expected) & (expected <= reg["hi"])
            rows.append(reg.assign(expected=expected, expected_in_interval=inside))
        jumps = mech.jumps.drop(columns=["draws"])
        jumps = jumps.assign(fit=f"jumps:{col}", regressor=jumps["term"].where(jumps["term"] != "c", "1"),
                             expected=np.nan, expected_in_interval=False, r2=np.nan,
                             note=[("; ".join(filter(None, [str(a or ""), str(b or "")])))
                                   for a, b in zip(jumps["note"], jumps["interval_note"])])
        rows.append(jumps)
    return pd.concat(rows, ignore_index=True).reindex(columns=MECHANISM_COLUMNS)


def survival_rows(runs: pd.DataFrame, subset: str, settings: ReportSettings, budget: float) -> pd.DataFrame:
    """:func:`analysis.survival.survival_table` of one part at the settings' times up to its budget."""
    times = [t for t in settings.survival_times if t <= budget * (1 + TIME_SLACK)]
    if runs.empty or not times:
        return pd.DataFrame(columns=SURVIVAL_CSV_COLUMNS)
    table = survival_table(runs, settings.eps, times, n_boot=settings.n_boot, seed=settings.seed,
                           confidence=settings.confidence)
    return table.assign(subset=subset).reindex(columns=SURVIVAL_CSV_COLUMNS)


# --------------------------------------------------------------------------------------------
# The report


def _stack(frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    kept = [f.reindex(columns=columns) for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=list(columns))


def _widths_rows(at: AtHorizon, subset: str, step_factor: float | None = None) -> pd.DataFrame:
    w = add_k_group(at.widths) if len(at.widths) else at.widths
    w = w.assign(subset=subset)
    if step_factor is not None:
        w = w.assign(step_factor=step_factor)
    return w.reindex(columns=WIDTHS_COLUMNS)


def study_report(runs: pd.DataFrame, curves: pd.DataFrame | None, *, horizons: Sequence[float] = (48, 96, 192),
                 long_horizons: Sequence[float] = (384, 768), eps: float = DEFAULT_EPS, drift_horizon: float = 24,
                 delta_fail: float = 0.1, bias_horizons: Sequence[float] = (12, 24, 48),
                 survival_times: Sequence[float] = SURVIVAL_TIMES, n_boot: int = 400, seed: int = 0,
                 confidence: float = CONFIDENCE) -> StudyReport:
    """Every table of the width study (see the module docstring).

    Args:
        runs: the runs table (every column: :func:`analysis.load.load_runs` with ``columns=None``).
        curves: the curves table with ``run_id, step, t, rel_loss, H_drift_2, lambda_min``.
        horizons: ``T, 2T, 4T`` (1/lambda_*): the main part's horizons; the widths are read at each, the
            laws at the one the horizon rule picks (the longest observed when none is stable).
        long_horizons: the long part's extra horizons (it is read at ``horizons`` too).
        eps: the tolerance ``eps'`` of ``conv`` and ``rate``.
        drift_horizon: the horizon of ``lazy`` and of the drift law; whether ``lazy`` still moves after it
            is checked on the main part at ``drift_horizon * 2^i`` up to ``max(horizons)``.
        delta_fail: widths at success rate ``1 - delta_fail``.
        bias_horizons: the bias part's horizons (its laws at the longest observed).
        survival_times: flow times of the survival table (up to each part's budget).
        n_boot, seed, confidence: the bootstraps.

    Returns:
        A :class:`StudyReport`.
    """
    s = ReportSettings(horizons=tuple(horizons), long_horizons=tuple(long_horizons), eps=eps,
                       drift_horizon=drift_horizon, bias_horizons=tuple(bias_horizons), delta_fail=delta_fail,
                       survival_times=tuple(survival_times), n_boot=n_boot, seed=seed, confidence=confidence)
    if runs.empty:
        raise ValueError("runs is empty: the report needs the runs of a study (analysis.load_runs(out, None))")
    parts = split_study(runs, s)
    notes = [f"part {name!r}: no runs in these results" for name in SUBSETS if parts[name].empty]

    def at(part: str, hs, quantities, **kw) -> list[AtHorizon]:
        return [part_at_horizon(parts[part], curves, h, quantities, settings=s, **kw) for h in hs]

    # the main part at T, 2T, 4T, and the horizon the rule picks there
    main = at("main", s.horizons, RATE_QUANTITIES)
    main_h = horizon_rows(main)
    choice = [_choice_row("main", main_h, s.horizons)]
    observed = [a.horizon for a in main if not a.laws.empty]
    study_h = float(choice[0]["chosen"])
    if not np.isfinite(study_h):
        study_h = max(observed) if observed else np.nan
        notes.append(f"no stable horizon on the main part ({choice[0]['note']}); its laws are read at "
                     f"{study_h:g}/lambda_*" if observed else
                     "the main part is observed at none of the horizons: no laws of conv, rate, rate_soft")
    # the long part at every horizon up to its budget
    long_hs = [*s.horizons, *(h for h in s.long_horizons if h > max(s.horizons))]
    long_ = at("long", long_hs, RATE_QUANTITIES)
    long_h = horizon_rows(long_)
    choice.append(_choice_row("long", long_h, long_hs))
    # lazy at the drift horizon over the pool, and whether it still moves after it (main part)
    (lazy,) = at("drift", [s.drift_horizon], ("lazy",), theorem=True)
    lazy_hs = [s.drift_horizon * 2**i for i in range(8) if s.drift_horizon * 2**i <= max(s.horizons) * (1 + 1e-9)]
    lazy_h = horizon_rows(at("main", lazy_hs, ("lazy",)))
    choice.append(_choice_row("drift", lazy_h, lazy_hs))
    # the step-factor check
    step_at = at("step", s.horizons, RATE_QUANTITIES, strata=("step_factor",), laws=False)
    step = step_fractions(parts["step"], curves, s.horizons, eps=s.eps, confidence=s.confidence)
    # the bias part, as far as its budget goes
    bias_at = at("bias", s.bias_horizons, RATE_QUANTITIES)
    (bias_lazy,) = at("bias", [s.drift_horizon], ("lazy",))
    bias_seen = [a for a in bias_at if not a.laws.empty]
    # laws.csv: the study's horizon (with m_thm's exponents), lazy and the drift law, bias, the published laws
    laws = []
    at_study = next((a for a in main if a.horizon == study_h and not a.laws.empty), None)
    if at_study is not None:
        for q in RATE_QUANTITIES:
            seen, note = _observed(parts["main"], study_h, s.eps if q in AT_EPS else None)
            w = at_study.widths[at_study.widths["quantity"] == q]
            if len(w) and not (w["label"] == NOT_OBSERVED).all():
                laws.append(_with_note(laws_table(seen, curves, widths=w, horizon=study_h, eps=s.eps,
                                                  delta_fail=s.delta_fail, quantities=(q,), theorem=True, known=False,
                                                  n_boot=s.n_boot, seed=s.seed, confidence=s.confidence), note))
    laws += [lazy.laws, drift_law_rows(lazy.drift, parts["drift"], s.drift_horizon)]
    laws += [bias_seen[-1].laws] if bias_seen else []
    laws += [bias_lazy.laws, drift_law_rows(bias_lazy.drift, parts["bias"], s.drift_horizon), known_laws()]
    widths = _stack([*(_widths_rows(a, "main", 1.0) for a in main),
                     *(_widths_rows(a, "long", 1.0) for a in long_),
                     _widths_rows(lazy, "drift", 1.0), *(_widths_rows(a, "step") for a in step_at),
                     *(_widths_rows(a, "bias", 1.0) for a in [*bias_at, bias_lazy])], WIDTHS_COLUMNS)
    widths = check_lazy_law(widths) if len(widths) else widths
    horizons_t = _stack([main_h.assign(subset="main"), long_h.assign(subset="long"), lazy_h.assign(subset="drift")],
                        HORIZONS_COLUMNS)
    survival = _stack([survival_rows(parts[name], name, s, parts.budget[name]) for name in ("main", "long", "bias")],
                      SURVIVAL_CSV_COLUMNS)
    return StudyReport(settings=s, design=study_design(parts), widths=widths, laws=_stack(laws, LAWS_COLUMNS),
                       horizons=horizons_t, choice=pd.DataFrame(choice, columns=CHOICE_COLUMNS), step=step,
                       mechanism=mechanism_table(parts["main"], n_boot=s.n_boot, seed=s.seed, confidence=s.confidence),
                       survival=survival, horizon=float(study_h), notes=tuple(notes), n_runs=len(runs),
                       fingerprint=runs_fingerprint(runs))


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def runs_fingerprint(runs: pd.DataFrame) -> str:
    """A digest of the runs a report was computed from (their sorted ``run_id``): a report read back is
    checked against the runs at hand with it."""
    require_columns(runs, ["run_id"], "runs")
    return hashlib.sha256("\n".join(sorted(runs["run_id"].astype(str))).encode()).hexdigest()[:16]


def write_report(report: StudyReport, out: str | os.PathLike) -> dict[str, Path]:
    """Write the report's tables into directory ``out`` as the CSVs of :data:`FILES` (``laws.csv`` by
    :func:`analysis.widths.write_laws`) and :data:`META_FILE` (the settings, the study's horizon, the notes
    and the runs' fingerprint), each atomically.  Returns the files written by table name (``meta`` too)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in report.tables().items():
        if name == "laws":
            written[name] = write_laws(table, out / FILES[name])
        else:
            written[name] = _write_csv(table, out / FILES[name])
    meta = {"settings": dataclasses.asdict(report.settings), "horizon": report.horizon, "notes": list(report.notes),
            "n_runs": report.n_runs, "fingerprint": report.fingerprint}
    tmp = out / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, out / META_FILE)
    written["meta"] = out / META_FILE
    return written


class StaleReportError(ValueError):
    """A report on disk was computed from other runs than those at hand."""


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    table = pd.read_csv(path)
    require_columns(table, columns, f"report table {path}")
    for col in ("bias", "extrapolated", "rises_with_m", "moves_later", "expected_in_interval"):
        if col in table.columns and table[col].dtype == object:
            table[col] = table[col].map({True: True, False: False, "True": True, "False": False})
    for col in ("note", "label", "censored", "grid_censored", "term", "regressor", "criterion", "method"):
        if col in table.columns:
            table[col] = table[col].astype(object).fillna("")
    return table


def has_report(path: str | os.PathLike) -> bool:
    """Whether directory ``path`` holds a report written by :func:`write_report`."""
    return (Path(path) / META_FILE).is_file()


def read_report(path: str | os.PathLike, runs: pd.DataFrame | None = None) -> StudyReport:
    """The report :func:`write_report` wrote into directory ``path``.  With ``runs``, it must have been
    computed from exactly these runs (:func:`runs_fingerprint`), else :class:`StaleReportError` (one line:
    rerun ``python -m pipeline report``)."""
    path = Path(path)
    if not has_report(path):
        raise FileNotFoundError(f"no report in {path} (no {META_FILE}): write it with `python -m pipeline report "
                                f"{path}`")
    meta = json.loads((path / META_FILE).read_text())
    if runs is not None and runs_fingerprint(runs) != meta["fingerprint"]:
        raise StaleReportError(f"the report in {path} was computed from {meta['n_runs']} other runs than the "
                               f"{len(runs)} at hand: rerun `python -m pipeline report {path}`")
    columns = {"design": DESIGN_COLUMNS, "widths": WIDTHS_COLUMNS, "laws": LAWS_COLUMNS, "horizons": HORIZONS_COLUMNS,
               "choice": CHOICE_COLUMNS, "step": STEP_COLUMNS, "mechanism": MECHANISM_COLUMNS,
               "survival": SURVIVAL_CSV_COLUMNS}
    tables = {name: (read_laws(path / FILES[name]) if name == "laws" else _read_table(path / FILES[name], cols))
              for name, cols in columns.items()}
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["settings"].items()}
    return StudyReport(settings=ReportSettings(**settings), horizon=float(meta["horizon"]),
                       notes=tuple(meta["notes"]), n_runs=int(meta["n_runs"]), fingerprint=meta["fingerprint"],
                       **tables)


def report_results(results: str | os.PathLike, out: str | os.PathLike | None = None, **kwargs) -> dict[str, Path]:
    """Read results directory ``results`` (every runs column; the curves the report reads), compute
    :func:`study_report` (``kwargs``) and write its tables into ``out`` (default ``results``): what
    ``python -m pipeline report`` runs."""
    ReportSettings(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()})  # bad input
    out = Path(results if out is None else out)
    out.mkdir(parents=True, exist_ok=True)  # an unwritable destination fails here, before any work
    runs = load_runs(results, None)
    curves = load_curves(results, REPORT_CURVE_COLUMNS)
    return write_report(study_report(runs, curves, **kwargs), out)
