"""Neural tangent (Gram) matrices ``H(t)`` and ``H^inf`` and ``lambda_*``.

Row order (MATH.md): the n values first, then the n blocks of k derivatives,
point-major. Every entry is ``s_ij P_p^T P_q`` with ``P`` the stacked rows
``x_1..x_n, v_11..v_1k, ..., v_n1..v_nk`` and ``i, j`` the points of rows ``p, q``.
"""

from __future__ import annotations

import math

import torch

from .network import Params, check_compatible
from .problem import Problem, effective_data


def _rows(X: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``P`` (n(k+1), D) and the point index of each row (n(k+1),)."""
    n, D, k = V.shape
    P = torch.cat([X, V.transpose(1, 2).reshape(n * k, D)], dim=0)
    point = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(k)]).to(X.device)
    return P, point


def expand_kernel(s: torch.Tensor, X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of a point kernel.

    Args:
        s: a kernel over the points (..., n, n).
        X: effective inputs (n, D).
        V: effective frames (n, D, k).

    Returns:
        ``H = s[point, point] * (P P^T)`` (..., n(k+1), n(k+1)), rows in MATH.md's order.
    """
    P, point = _rows(X, V)
    return s[..., point[:, None], point[None, :]] * (P @ P.T)


def activation_kernel(W_eff: torch.Tensor, a: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The activation kernel of the current weights.

    Args:
        W_eff: effective weights (R, m, D).
        a: output weights (R, m).
        X: effective inputs (n, D).

    Returns:
        ``s_ij = sum_r a_r^2 1{w_r^T x_i > 0} 1{w_r^T x_j > 0}`` (R, n, n).
    """
    Aa = (W_eff @ X.T > 0).to(W_eff.dtype) * a[..., None]
    return Aa.transpose(1, 2) @ Aa


def gram(params: Params, problem: Problem) -> torch.Tensor:
    """``H`` (R, n(k+1), n(k+1)) at the current weights: ``J J^T`` for the residual
    ``(e; S)`` (bias network: ``S`` divided by alpha).

    Args:
        params: ``W`` (R, m, d), ``a`` (R, m), ``b`` (R, m) or None.
        problem: of the same variant, dtype and device.

    Returns:
        ``H`` (R, n(k+1), n(k+1)).
    """
    check_compatible(params, problem)
    X, V, _, _, _ = effective_data(problem)
    return expand_kernel(activation_kernel(params.effective_W(), params.a, X), X, V)


def arccos_kernel(X: torch.Tensor) -> torch.Tensor:
    """``kappa_ij = (pi - theta_ij) / (2 pi)`` (n, n) for unit rows, ``theta_ij`` their angle.

    ``pi - theta = 2 atan2(||x_i + x_j||, ||x_i - x_j||)`` (half-angle formulas), so
    ``kappa_ij = atan2(||x_i + x_j||, ||x_i - x_j||) / pi``: accurate to rounding at every
    angle, where ``arccos(x_i^T x_j)`` loses half the digits for nearly equal or nearly
    opposite points (its derivative is infinite at +-1); ``kappa_ii = 1/2`` exactly.

    Args:
        X: unit rows (n, D).

    Returns:
        ``kappa`` (n, n).
    """
    plus = torch.linalg.vector_norm(X[:, None, :] + X[None, :, :], dim=-1)
    minus = torch.linalg.vector_norm(X[:, None, :] - X[None, :, :], dim=-1)
    return torch.atan2(plus, minus) / math.pi


def gram_infinite(problem: Problem) -> torch.Tensor:
    """``H^inf = E_w[H]`` (n(k+1), n(k+1)), by the arc-cosine closed form
    (on augmented inputs for the bias network). For k = 0 (values only) this is Du et al.'s
    ``H^inf_ij = x_i^T x_j (pi - arccos(x_i^T x_j)) / (2 pi)``.

    Args:
        problem: the instance.

    Returns:
        ``H^inf`` (n(k+1), n(k+1)), in the problem's dtype.
    """
    X, V, _, _, _ = effective_data(problem)
    return expand_kernel(arccos_kernel(X), X, V)


def lambda_star(problem: Problem) -> float:
    """The smallest eigenvalue of the infinite-width Gram matrix.

    Args:
        problem: the instance.

    Returns:
        ``lambda_* = lambda_min(H^inf)``, computed in float64.
    """
    X, V, _, _, _ = effective_data(problem)
    X, V = X.double(), V.double()
    return torch.linalg.eigvalsh(expand_kernel(arccos_kernel(X), X, V)).min().item()
