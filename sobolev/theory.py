"""The theory's bounds (docs/MATH.md, "The results to test").

Every bound of the paper is an order statement (``Omega``, ``>~``): the constant it hides is
unknown, so these functions return the expression with a constant ``C`` (default 1) and
any comparison with measured widths is one of scalings, not of values. Exponents the
paper's copy leaves illegible are named parameters."""

from __future__ import annotations

import math

import numpy as np

from .problem import alpha_beta


def prop1_lower_bound(n: int, k: int, delta_1: float, delta_2: float = 0.0) -> float:
    """Proposition 1's lower bound on ``lambda_*``.

    Args:
        n, k: points and directions per point.
        delta_1, delta_2: the instance's separation and ``max |v_ij^T x_i|``.

    Returns:
        ``(1 - k delta_2) delta_1 / (100 n^2)``.
    """
    return (1 - k * delta_2) * delta_1 / (100 * n * n)


def augmented_separation(delta_1: float, k: int) -> float:
    """Separation of the bias network's augmented points.

    Args:
        delta_1: the separation of the points (Assumption 2).
        k: directions per point (sets ``alpha, beta``).

    Returns:
        ``min(alpha delta_1, 2 beta)``.
    """
    alpha, beta = alpha_beta(k)
    return min(alpha * delta_1, 2 * beta)


def gamma(y, h, *, bias: bool, k: int) -> float:
    """The targets' size in the theorems.

    Args:
        y: value targets (n,).
        h: derivative targets (n, k).
        bias: the network variant.
        k: directions per point (sets ``alpha``).

    Returns:
        ``||y|| + ||h||`` (no bias) or ``||y|| + ||h / alpha||`` (bias).
    """
    y, h = np.asarray(y, dtype=float), np.asarray(h, dtype=float)
    scale = alpha_beta(k)[0] if bias else 1.0
    return float(np.linalg.norm(y) + np.linalg.norm(h) / scale)


def m_thm(n: int, k: int, gamma: float, lambda_star: float, delta_fail: float, *, p: float = 6.0,
          q: float = 3.0, gamma_exp: float = 2.0, lambda_exp: float = 4.0, delta_exp: float = 3.0,
          C: float = 1.0) -> float:
    """Theorems 1/2: ``m = Omega(n^p k^q gamma^2 / (lambda_*^4 delta^3))``, returned with the
    unknown constant of ``Omega`` set to ``C``.

    ``delta^3`` as in Du et al. (2019), whose proof the paper follows (Markov's inequality
    enters for the weight radius and for ``||H(t) - H(0)||_F``); the paper's copy is illegible
    there. Theorem 2's exponent of k is not legible either: pass ``q``. For k = 0 (plain L2
    training) this is Du et al.'s ``n^p / (lambda_*^4 delta^3)``: no k factor and no gamma
    (their targets are O(1) per point).

    Args:
        n, k, gamma, lambda_star: the instance's numbers.
        delta_fail: the failure probability.
        p, q, gamma_exp, lambda_exp, delta_exp: the exponents.
        C: the constant of ``Omega``.

    Returns:
        The width.
    """
    if k == 0:
        return C * n**p / (lambda_star**lambda_exp * delta_fail**delta_exp)
    return C * n**p * k**q * gamma**gamma_exp / (lambda_star**lambda_exp * delta_fail**delta_exp)


def m_lemma2(n: int, k: int, lambda_star: float, delta_fail: float, *, c: float = 1.0, C: float = 1.0) -> float:
    """Lemma 2: ``m >~ n(k+1) ln(n(k+1)/delta) / lambda_*^c`` gives ``lambda_min(H(0)) >= 3/4 lambda_*``
    with probability ``1 - delta``. The exponent is illegible in the paper's copy; a
    matrix-Chernoff argument with per-neuron norm ``n(k+1)/m`` gives ``c = 1`` (the default).
    ``C`` stands for the unknown constant of ``>~``.

    Args:
        n, k, lambda_star: the instance's numbers.
        delta_fail: the failure probability.
        c: the exponent of ``lambda_*``.
        C: the constant of ``>~``.

    Returns:
        The width.
    """
    N = n * (k + 1)
    return C * N * math.log(N / delta_fail) / lambda_star**c


def weight_radius(n: int, k: int, r0_norm: float, m: int, lambda_star: float, *, C: float = 1.0) -> float:
    """Lemma 4's radius ``R ~ sqrt(n k) ||r(0)|| / (sqrt(m) lambda_*)`` (constant unknown:
    ``C``); for k = 0 Du et al.'s ``sqrt(n) ||r(0)|| / (sqrt(m) lambda_*)``.

    Args:
        n, k, m, lambda_star: the instance's numbers and the width.
        r0_norm: ``||r(0)||``.
        C: the unknown constant.

    Returns:
        The radius.
    """
    return C * math.sqrt(n * max(k, 1)) * r0_norm / (math.sqrt(m) * lambda_star)


def bound_trajectory(t, lambda_star: float, r0_sq: float):
    """Theorem 1's bound on ``||r(t)||^2``.

    Args:
        t: flow times (scalar or array).
        lambda_star, r0_sq: ``lambda_*`` and ``||r(0)||^2``.

    Returns:
        ``exp(-lambda_* t) ||r(0)||^2``, an array of ``t``'s shape.
    """
    return np.exp(-lambda_star * np.asarray(t, dtype=float)) * r0_sq
