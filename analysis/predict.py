"""What the shipped study predicts for a new problem: the width at which training converges
(``conv``), converges at the theorem's rate (``rate``, ``rate_soft``) or stays in the proof's lazy
regime (``lazy``), from the laws in ``results/<study>/laws.csv`` (:func:`analysis.widths.laws_table`).

    >>> predict_width(32, 2, 0.5, d=16, quantity="conv")   # doctest: +SKIP
    WidthPrediction(quantity='conv', estimate=..., lo=..., hi=..., horizon=48.0, ...)

The laws are measured on a domain (ranges of ``n, k, delta``, one ``d``, a range of widths): a
problem outside it is refused with one line naming the argument; a width beyond the studied widths
is returned flagged (``beyond_studied``), as an extrapolation of the law, not a measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .defaults import CONFIDENCE
from .floorlaw import K_GROUP
from .paths import results_dir
from .widths import DIRECT, DRIFT, LAW_TERMS, LAWS_FILE, QUANTITIES, read_laws

# The law each quantity is predicted from by default: the drift law covers widths the study did not
# reach; the others are measured thresholds.
DEFAULT_METHOD = {"conv": DIRECT, "rate": DIRECT, "rate_soft": DIRECT, "lazy": DRIFT}
_DOMAIN_SLACK = 1e-9


@dataclass(frozen=True)
class StudiedDomain:
    """The ranges a law was measured on (``d`` a single value; ``m`` the studied widths)."""

    n: tuple[float, float]
    k: tuple[float, float]
    delta: tuple[float, float]
    d: float
    m: tuple[float, float]


@dataclass(frozen=True)
class WidthPrediction:
    """A predicted width: ``estimate`` with its interval ``lo, hi`` (on ``log m``, from the law's
    covariance), the ``horizon`` (1/lambda_*; NaN: each run's own) and criterion it was measured at,
    the law's ``domain``, ``beyond_studied`` (the estimate lies outside the studied widths: an
    extrapolation of the law) and a ``note``."""

    quantity: str
    method: str
    estimate: float
    lo: float
    hi: float
    horizon: float
    criterion: str
    eps: float
    rate: float
    domain: StudiedDomain
    beyond_studied: bool
    note: str

    def __str__(self) -> str:
        interval = f" [{self.lo:.3g}, {self.hi:.3g}]" if np.isfinite(self.lo) else ""
        text = f"m_{self.quantity} ~ {self.estimate:.3g}{interval}"
        return f"{text} (beyond the studied widths: {self.note})" if self.beyond_studied else text


def _check_inside(name: str, value: float, lo: float, hi: float, source) -> None:
    if not (lo * (1 - _DOMAIN_SLACK) <= value <= hi * (1 + _DOMAIN_SLACK)):
        raise ValueError(f"{name}={value:g} is outside the studied domain {name} in [{lo:g}, {hi:g}] of {source}; "
                         f"the laws are not extrapolated in {name}")


def predict_width(n: float, k: int, delta: float, *, d: int, quantity: str = "conv", bias: bool = False,
                  results: str | os.PathLike | None = None, method: str | None = None,
                  confidence: float = CONFIDENCE) -> WidthPrediction:
    """The width the shipped study predicts for ``n`` points, ``k`` directions, separation ``delta``.

    Args:
        n, k, delta, d: the problem (``d`` must be the study's input dimension).
        quantity: ``conv`` (converges to the laws' ``eps'`` by their horizon), ``rate`` (at the theorem's
            rate until then), ``rate_soft`` (late rate >= lambda_*/2) or ``lazy`` (Lemma 4's regime).
        bias: the network variant.
        results: a results directory holding ``laws.csv`` (default: the shipped study,
            :func:`analysis.paths.results_dir`), or the file itself.
        method: ``thresholds`` or ``drift_law`` (default: :data:`DEFAULT_METHOD` of the quantity).
        confidence: of the interval (``t`` quantile with the law's residual degrees of freedom, normal for
            a bootstrap law).

    Returns:
        A :class:`WidthPrediction`.

    Raises:
        ValueError: an unknown quantity, a problem outside the studied domain (naming the argument and
            the domain), or no law for this quantity, bias and ``k`` group.
        FileNotFoundError: no ``laws.csv`` there.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity={quantity!r} is unknown; use one of {QUANTITIES}")
    source = results_dir(results)
    source = source if source.suffix == ".csv" else source / LAWS_FILE
    laws = read_laws(source)
    method = method or DEFAULT_METHOD[quantity]
    group = "k=0" if k == 0 else "k>=1"
    rows = laws[(laws["quantity"] == quantity) & (laws["method"] == method) & (laws["bias"] == bias)
                & (laws[K_GROUP] == group)]
    if rows.empty:
        have = sorted({f"{q}/{m}/bias={b}/{g}" for q, m, b, g in
                       laws[laws["quantity"].isin(QUANTITIES)][["quantity", "method", "bias", K_GROUP]].itertuples(
                           index=False)})
        raise ValueError(f"{source} has no law for quantity={quantity!r}, method={method!r}, bias={bias}, {group}; "
                         f"it has {have}")
    if "delta" in rows.columns and rows["delta"].notna().any():  # a law per separation: only at those
        at = np.isclose(rows["delta"].astype(float), float(delta))
        if not at.any():
            fitted = ", ".join(f"{v:g}" for v in sorted(rows["delta"].dropna().unique()))
            raise ValueError(f"delta={delta:g}: the {quantity} law of {source} ({method}) is fitted apart per "
                             f"separation, at delta = {fitted} only; ask one of those")
        rows = rows[at]
    first = rows.iloc[0]
    domain = StudiedDomain(n=(first["n_min"], first["n_max"]), k=(first["k_min"], first["k_max"]),
                           delta=(first["delta_min"], first["delta_max"]), d=first["d_min"],
                           m=(first["m_min"], first["m_max"]))
    if not (first["d_min"] == first["d_max"] == d):
        raise ValueError(f"d={d} is outside the studied domain d = {first['d_min']:g} of {source}; the laws hold at "
                         f"the study's input dimension only")
    for name, value, (lo, hi) in (("n", n, domain.n), ("k", k, domain.k), ("delta", delta, domain.delta)):
        _check_inside(name, float(value), float(lo), float(hi), source)
    law = rows.set_index("term")
    if "c" not in law.index or not np.isfinite(law.loc["c", "estimate"]):
        raise ValueError(f"the {quantity} law of {source} ({method}, bias={bias}, {group}) has no fit: "
                         f"{law['note'].iloc[0]}")
    x = {"c": 1.0, "p": np.log(n), "q": np.log(k) if k > 0 else 0.0, "r": np.log(delta)}
    present = [t for t in LAW_TERMS if t in law.index and np.isfinite(law.loc[t, "estimate"])]
    g = np.array([x[t] for t in present])
    log_m = float(sum(law.loc[t, "estimate"] * x[t] for t in present))
    cov = law.loc[present, [f"cov_{t}" for t in present]].to_numpy(float)
    var = float(g @ cov @ g)
    dof = float(law.loc["c", "dof"])
    quantile = stats.t.ppf(0.5 + confidence / 2, dof) if np.isfinite(dof) and dof > 0 else stats.norm.ppf(
        0.5 + confidence / 2)
    half = quantile * np.sqrt(var) if np.isfinite(var) and var >= 0 else np.nan
    estimate = float(np.exp(log_m))
    lo, hi = (float(np.exp(log_m - half)), float(np.exp(log_m + half))) if np.isfinite(half) else (np.nan, np.nan)
    notes = [] if np.isfinite(half) else ["no interval: the law has no covariance (exact fit)"]
    beyond = not (domain.m[0] <= estimate <= domain.m[1])
    if estimate > domain.m[1]:
        notes.append(f"beyond the largest studied width {domain.m[1]:g}: an extrapolation of the law")
    elif estimate < domain.m[0]:
        notes.append(f"below the smallest studied width {domain.m[0]:g}: an extrapolation of the law")
    return WidthPrediction(quantity=quantity, method=method, estimate=estimate, lo=lo, hi=hi,
                           horizon=float(first["horizon"]), criterion=str(first["criterion"]), eps=float(first["eps"]),
                           rate=float(first["rate"]), domain=domain, beyond_studied=beyond, note="; ".join(notes))
