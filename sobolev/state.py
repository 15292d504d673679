"""The state of a training run, one row per replica: what the hot loop reads and writes
(:class:`LoopState`), the quantities of t = 0 (:class:`StartState`), the host's bookkeeping
(:class:`HostState`, :class:`Stops`) and the data in the layouts the GEMMs want (:class:`Data`).

Replicas that stop are dropped from the batch in place (:func:`move_rows`): no copy of O(m)
per stop beyond the one row that takes each stopped row's place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .problem import Problem, effective_data


def move_rows(state, holes: np.ndarray, movers: np.ndarray, n_keep: int, names: tuple[str, ...]) -> None:
    """Drops rows of the tensors ``names`` of ``state``, in place.

    Args:
        state: any object with the tensors (R, ...) as attributes ``names``.
        holes: rows (h,) to overwrite, each with a row of ``movers``.
        movers: rows (h,) from the end, all ``>= n_keep``.
        n_keep: rows each tensor keeps (the leading ones, after the moves).
        names: the attributes to cut.
    """
    for name in names:
        tensor = getattr(state, name)
        for dst, src in zip(holes, movers):
            tensor[dst].copy_(tensor[src])
        setattr(state, name, tensor[:n_keep])


@dataclass(eq=False)
class LoopState:
    """What the hot loop reads and writes, one row per active replica: the trained weights,
    the live flags (0 once stopped on the device), the count of applied steps, and the loss
    thresholds of convergence and divergence."""

    W: torch.Tensor  # (Ra, m, D)
    a: torch.Tensor  # (Ra, m)
    live: torch.Tensor  # (Ra,)
    applied: torch.Tensor  # (Ra,)
    loss_converged: torch.Tensor  # (Ra,) eps * L(0)
    loss_diverged: torch.Tensor  # (Ra,) divergence_factor * L(0)

    def drop(self, holes, movers, n_keep) -> None:
        move_rows(self, holes, movers, n_keep, tuple(f.name for f in dataclasses.fields(self)))


@dataclass(eq=False)
class StartState:
    """Per-replica quantities of t = 0 that checkpoints compare against: the weights ``W0``,
    the activation kernel ``s0`` (H(0) = expand(s0)), H(0)'s eigenvalues, eigenvectors and
    the coordinates of r(0) in them (the linearised flow)."""

    W0: torch.Tensor  # (Ra, m, D)
    s0: torch.Tensor  # (Ra, n, n)
    lam0: torch.Tensor  # (Ra, N)
    Q0: torch.Tensor  # (Ra, N, N)
    c0: torch.Tensor  # (Ra, N)

    def drop(self, holes, movers, n_keep) -> None:
        move_rows(self, holes, movers, n_keep, tuple(f.name for f in dataclasses.fields(self)))


@dataclass(eq=False)
class HostState:
    """Per-replica bookkeeping on the host, one row per replica (active, or stopped when it
    is the record of the stops)."""

    replica: np.ndarray
    t: np.ndarray  # flow time reached
    eta: np.ndarray  # current step size
    r0_sq: np.ndarray  # ||r(0)||^2
    e0_sq: np.ndarray  # ||e(0)||^2
    S0_sq: np.ndarray  # ||S(0)||^2
    applied: np.ndarray  # applied steps at the last read
    last_row: np.ndarray  # step of the last checkpoint row (-1 before the first)
    min_rel: np.ndarray  # smallest relative loss seen
    fit: np.ndarray  # (R, 5) sums of the least-squares fit of log(rel loss) against t
    interval_max: np.ndarray  # largest per-step relative loss since the last row
    interval_min: np.ndarray  # smallest per-step relative loss since the last row
    value_interval_max: np.ndarray  # largest per-step ||e||^2 / ||e(0)||^2 since the last row
    deriv_interval_max: np.ndarray  # largest per-step ||S||^2 / ||S(0)||^2 since the last row (NaN for k = 0)
    violation_step: np.ndarray  # first step with ||r||^2 above the bound (-1: none yet)
    violation_t: np.ndarray  # its flow time (inf: none yet)
    flips_net: np.ndarray  # net flips since the last row
    jumps: np.ndarray  # jump norms since the last row
    flips_net_total: np.ndarray
    jumps_total: np.ndarray
    flips_gross_at_row: np.ndarray  # the device's gross flip counter at the last row

    @staticmethod
    def start(r0_sq: np.ndarray, e0_sq: np.ndarray, S0_sq: np.ndarray, eta: np.ndarray) -> "HostState":
        R = len(r0_sq)
        zeros, zeros_int = np.zeros(R), np.zeros(R, dtype=np.int64)
        return HostState(
            replica=np.arange(R), t=np.zeros(R), eta=eta, r0_sq=r0_sq, e0_sq=e0_sq, S0_sq=S0_sq,
            applied=zeros.copy(), last_row=np.full(R, -1, dtype=np.int64), min_rel=np.ones(R),
            fit=np.zeros((R, 5)), interval_max=np.full(R, -np.inf), interval_min=np.full(R, np.inf),
            value_interval_max=np.full(R, -np.inf), deriv_interval_max=np.full(R, -np.inf),
            violation_step=np.full(R, -1, dtype=np.int64), violation_t=np.full(R, np.inf),
            flips_net=zeros_int.copy(), jumps=zeros.copy(), flips_net_total=zeros_int.copy(),
            jumps_total=zeros.copy(), flips_gross_at_row=zeros_int.copy())

    def take(self, index: np.ndarray) -> "HostState":
        return HostState(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def put(self, index: np.ndarray, rows: "HostState") -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name)[index] = getattr(rows, f.name)


@dataclass(eq=False)
class Stops:
    """What is known of each replica once it stops, indexed by replica."""

    host: HostState
    steps: np.ndarray
    stopped_by: np.ndarray
    eps_step: np.ndarray
    eps_t: np.ndarray

    @staticmethod
    def empty(like: HostState) -> "Stops":
        R = len(like.replica)
        return Stops(host=like.take(np.arange(R)), steps=np.zeros(R, dtype=np.int64),
                     stopped_by=np.empty(R, dtype=object), eps_step=np.full(R, -1, dtype=np.int64),
                     eps_t=np.full(R, np.nan))


@dataclass(frozen=True, eq=False)
class Data:
    """The effective (no-bias) data in the layouts the GEMMs want: ``X`` (n, D), ``V``
    (n, D, k), targets, ``XT`` (D, n), ``XVT`` (n, k+1, D) (rows ``x_i, V_i^T``) and ``yh``
    (n, k+1, 1) (``y_i, h_i``)."""

    X: torch.Tensor
    V: torch.Tensor
    y: torch.Tensor
    h: torch.Tensor
    XT: torch.Tensor
    XVT: torch.Tensor
    yh: torch.Tensor

    @staticmethod
    def of(problem: Problem) -> "Data":
        X, V, y, h, _ = effective_data(problem)
        return Data(X=X, V=V, y=y, h=h, XT=X.T.contiguous(),
                    XVT=torch.cat([X[:, None, :], V.transpose(1, 2)], dim=1),
                    yh=torch.cat([y[:, None], h], dim=1)[..., None])

    def residual(self, W: torch.Tensor, Aa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``e = y - f`` (R, n) and ``S = h - F`` (R, n, k) for signed pattern ``Aa``."""
        G = Aa.transpose(1, 2) @ W
        e = self.y - (G * self.X).sum(-1)  # f_i = sum_r a_r 1{.} w_r^T x_i = G_i^T x_i
        return e, self.h - torch.einsum("rnD,nDk->rnk", G, self.V)
