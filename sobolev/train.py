"""Gradient flow on the directional Sobolev loss, as gradient descent over R replicas at once.

The hot loop runs three GEMMs per step (pre-activations, input gradients, weight
gradient) and a few O(R n k d) operations on preallocated buffers, with no
host-device synchronisation: per-step losses go to a device buffer that is read
every ``check_every`` steps, where the stopping rules are applied. Diagnostics that
build ``H`` (O(n^2 k^2 m)) run only at log-spaced checkpoints and at each replica's
stop. Nothing of size O(m) is copied while training (``sobolev.memory`` counts what
is allocated).

Modes: ``relu`` is the true dynamics; ``frozen`` keeps the activation patterns of
t = 0 (the linearised, NTK model), whose residual follows ``(I - eta H(0))^s r(0)``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .network import Params, _check
from .ntk import expand_kernel
from .ntk import lambda_star as _lambda_star
from .problem import Problem, effective_data

MODES = ("relu", "frozen")
STATUSES = ("converged", "budget", "diverged")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training call.

    ``t_max`` is the flow-time budget, in units of ``1/lambda_*`` when
    ``t_unit='lambda_star'`` (so that budgets are comparable across instances) or
    absolute when ``t_unit='absolute'``. The step of replica j is
    ``eta_j = step_factor / lambda_max(H_j)``, refreshed at every checkpoint.
    """

    mode: Literal["relu", "frozen"] = "relu"
    eps: float = 1e-6
    t_max: float = 12.0
    t_unit: Literal["lambda_star", "absolute"] = "lambda_star"
    max_steps: int = 100_000
    step_factor: float = 1.0
    check_every: int = 16
    checkpoints_per_decade: int = 8
    divergence_factor: float = 1e6
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TrainConfig.mode={self.mode!r}: expected one of {MODES}")
        if self.t_unit not in ("lambda_star", "absolute"):
            raise ValueError(f"TrainConfig.t_unit={self.t_unit!r}: expected 'lambda_star' or 'absolute'")
        for name in ("eps", "t_max", "step_factor", "divergence_factor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name}={v!r}: must be a positive finite number")
        if self.eps >= 1:
            raise ValueError(f"TrainConfig.eps={self.eps!r}: a relative loss tolerance must be < 1")
        if self.divergence_factor <= 1:
            raise ValueError(f"TrainConfig.divergence_factor={self.divergence_factor!r}: must be > 1")
        for name in ("max_steps", "check_every", "checkpoints_per_decade"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"TrainConfig.{name}={v!r}: must be an integer >= 1")

    def flow_time_budget(self, lambda_star: float) -> float:
        return self.t_max / lambda_star if self.t_unit == "lambda_star" else self.t_max


def checkpoint_steps(max_steps: int, per_decade: int) -> np.ndarray:
    """Log-spaced steps ``0, 1, 2, ...`` (``round(10^(i/per_decade))``) up to ``max_steps``.

    The grid does not depend on ``max_steps`` beyond the cut, so the step-size refreshes
    (made at checkpoints) and hence the trajectory do not either. Each replica also
    gets a checkpoint at its own stop."""
    i = np.arange(int(math.ceil(math.log10(max(max_steps, 1)) * per_decade)) + 1)
    grid = np.unique(np.round(10.0 ** (i / per_decade)).astype(np.int64))
    return np.concatenate([[0], grid[grid <= max_steps]])


@dataclass(frozen=True, eq=False)
class TrainResult:
    """``summary``: one array (R,) per metric. ``curves``: long format, one row per
    (replica, checkpoint), column ``replica`` indexes the batch. ``params``: final weights."""

    summary: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]
    params: Params
    lambda_star: float
    config: TrainConfig = field(repr=False)


# The columns of a run's summary and of its curves, with their types: the pipeline's
# Parquet schema is derived from these (``pipeline.schema``).
SUMMARY_FIELDS: dict[str, type] = dict(
    status=str, stopped_by=str, steps=int, t=float, steps_to_eps=int, t_to_eps=float, final_rel_loss=float,
    min_rel_loss=float, loss0=float, r0_sq=float, decay_rate=float, rate_ratio=float, lambda_min_H0=float,
    lambda_max_H0=float, min_lambda_ratio=float, max_weight_move=float, flip_fraction=float, max_H_drift=float,
    bound_held=bool, lambda_held=bool, regime_held=bool, flips_total=float, jump_norm_total=float,
    lin_dist_final=float,
)
CURVE_FIELDS: dict[str, type] = dict(
    replica=int, step=int, t=float, eta=float, loss=float, rel_loss=float, e_sq=float, S_sq=float,
    lambda_min=float, lambda_max=float, H_drift=float, max_weight_move=float, flip_fraction=float, bound=float,
    bound_held=bool, lin_dist=float, flips=float, jump_norm=float,
)


class _Batch:
    """Device state of the active replicas; rows are dropped as replicas stop."""

    def __init__(self, tensors: dict[str, torch.Tensor], host: dict[str, np.ndarray]):
        self.t, self.h = tensors, host

    def __len__(self) -> int:
        return len(self.h["replica"])

    def drop(self, stopped: np.ndarray) -> None:
        """Drops the rows where ``stopped``, moving the last remaining rows into their places:
        at most one row copy per stopped replica, and no temporary copy of the batch."""
        order = np.flatnonzero(~stopped)
        n_keep = len(order)
        holes = np.flatnonzero(stopped[:n_keep])
        movers = order[order >= n_keep]
        for dst, src in zip(holes, movers):
            for v in self.t.values():
                v[dst].copy_(v[src])
        order = np.arange(n_keep)
        order[holes] = movers
        self.t = {k: v[:n_keep] for k, v in self.t.items()}
        self.h = {k: v[order] for k, v in self.h.items()}


def train(params: Params, problem: Problem, config: TrainConfig = TrainConfig(), *,
          lambda_star: float | None = None) -> TrainResult:
    """Gradient descent from ``params`` on ``problem`` until each replica converges
    (relative loss <= eps), exhausts its budget (flow time or steps) or diverges."""
    _check(params, problem)
    cfg = config
    X, V, y, h, _ = effective_data(problem)
    n, _, k = V.shape
    R, m = params.R, params.m
    dt = X.dtype
    lam_star = _lambda_star(problem) if lambda_star is None else float(lambda_star)
    t_budget = cfg.flow_time_budget(lam_star)
    frozen = cfg.mode == "frozen"
    ws = _Workspace(R, m, X, V, y, h, frozen)

    W = params.effective_W().clone()
    a = params.a.clone()
    Aa0 = _signed_pattern(W, a, ws.XT, torch.empty(R, m, n, dtype=dt, device=X.device))
    s0 = Aa0.transpose(1, 2) @ Aa0

    def residual(Wb, Aab):
        G = Aab.transpose(1, 2) @ Wb
        e = y - (G * X).sum(-1)  # f_i = sum_r a_r 1{.} w_r^T x_i = G_i^T x_i
        S = h - torch.einsum("rnD,nDk->rnk", G, V)
        return e, S

    e0, S0 = residual(W, Aa0)
    r0 = torch.cat([e0, S0.reshape(R, n * k)], dim=1)
    lam0, Q0, c0 = _eigen_start(s0, r0, X, V)
    r0_sq = r0.double().pow(2).sum(1).cpu().numpy()
    if not np.all(r0_sq > 0):
        raise ValueError("train: a replica starts with zero residual; nothing to fit")
    lam0_np = lam0.cpu().numpy()
    eta0 = cfg.step_factor / lam0_np[:, -1]

    loss0 = r0_sq / 2
    # lam0 copied even in float64: the batch moves its rows in place, lam0_np must not follow
    state = dict(W=W, W0=W.clone(), a=a, Aa0=Aa0, s0=s0, Q0=Q0, lam0=lam0.to(dt, copy=True), c0=c0,
                 live=torch.ones(R, dtype=dt, device=X.device), applied=torch.zeros(R, dtype=dt, device=X.device),
                 thr_eps=torch.as_tensor(cfg.eps * loss0, dtype=dt, device=X.device),
                 thr_div=torch.as_tensor(cfg.divergence_factor * loss0, dtype=dt, device=X.device))
    if not frozen:
        state["Aa_snap"] = Aa0.clone()  # the pattern at the last check, for the flip accounting
    batch = _Batch(
        state,
        dict(replica=np.arange(R), t=np.zeros(R), eta=eta0, r0_sq=r0_sq, applied=np.zeros(R),
             last_row=np.full(R, -1, dtype=np.int64),
             min_rel=np.ones(R), fit=np.zeros((R, 5)), flips=np.zeros(R), jumps=np.zeros(R),
             flips_total=np.zeros(R), jumps_total=np.zeros(R)),
    )
    rows: list[dict[str, np.ndarray]] = []
    out_W = torch.empty_like(W)
    final: dict[str, np.ndarray] = dict(steps=np.zeros(R, dtype=np.int64), t=np.zeros(R),
                                        stopped_by=np.empty(R, dtype=object), eps_step=np.full(R, -1),
                                        eps_t=np.full(R, np.nan), min_rel=np.ones(R), fit=np.zeros((R, 5)),
                                        flips_total=np.zeros(R), jumps_total=np.zeros(R))
    schedule = checkpoint_steps(cfg.max_steps, cfg.checkpoints_per_decade)

    def diagnose(sel: np.ndarray, steps: np.ndarray) -> None:
        """Checkpoint rows for active rows ``sel`` at their current weights. The O(m) work
        runs on all active rows, in place (the pattern goes to the workspace, idle between
        intervals), so that no weights are copied; only the O(n^2 k^2) work is on ``sel``."""
        T, Hh = batch.t, batch.h
        # a replica that stopped on the first step after a check has not moved since its last row
        fresh = np.asarray(steps, dtype=np.int64) != Hh["last_row"][sel]
        sel, steps = sel[fresh], np.asarray(steps, dtype=np.int64)[fresh]
        if not len(sel):
            return
        Hh["last_row"][sel] = steps
        ix = torch.as_tensor(sel, dtype=torch.long, device=X.device)
        Aa = T["Aa0"] if frozen else _signed_pattern(T["W"], T["a"], ws.XT, ws.Aa)
        e, S = residual(T["W"], Aa)
        e, S = e[ix], S[ix]
        e_sq, S_sq = e.double().pow(2).sum(1), S.double().pow(2).sum((1, 2))
        s = (Aa.transpose(1, 2) @ Aa)[ix]
        ds = s - T["s0"][ix]
        with _lapack_threads():
            ev = torch.linalg.eigvalsh(expand_kernel(s, X, V).double())
        drift = expand_kernel(ds, X, V).double().pow(2).sum((1, 2)).sqrt()
        move = torch.linalg.vector_norm(T["W"] - T["W0"], dim=2).amax(dim=1)[ix].double()
        if frozen:
            flipfrac = torch.zeros(len(sel), dtype=torch.float64, device=X.device)
        else:
            # a_r != 0, so the signed patterns differ exactly where the pattern bits do; the
            # indicator overwrites the pattern (its last use) rather than taking m n more bytes
            flips = torch.ne(Aa, T["Aa0"], out=Aa).sum(1).double().sum(1)  # counts <= m per point: exact
            flipfrac = flips[ix] / (m * n)
        t = Hh["t"][sel]
        # distance to the linearised flow exp(-H(0) t) r(0), in H(0)'s eigenbasis
        r = torch.cat([e, S.reshape(len(sel), n * k)], dim=1)
        lin = torch.exp(-T["lam0"][ix] * torch.as_tensor(t, dtype=dt, device=X.device)[:, None])
        lin = lin * T["c0"][ix]
        qr = (T["Q0"][ix].transpose(1, 2) @ r[..., None])[..., 0]
        r0_sq = Hh["r0_sq"][sel]
        r_sq = (e_sq + S_sq).cpu().numpy()
        bound = np.exp(-lam_star * t) * r0_sq
        tol = 1e-12 if dt == torch.float64 else 1e-5
        row = dict(
            replica=Hh["replica"][sel], step=np.asarray(steps, dtype=np.int64), t=t, eta=Hh["eta"][sel],
            loss=r_sq / 2, rel_loss=r_sq / r0_sq, e_sq=e_sq.cpu().numpy(), S_sq=S_sq.cpu().numpy(),
            lambda_min=ev[:, 0].cpu().numpy(), lambda_max=ev[:, -1].cpu().numpy(),
            H_drift=drift.cpu().numpy(), max_weight_move=move.cpu().numpy(), flip_fraction=flipfrac.cpu().numpy(),
            bound=bound, bound_held=r_sq <= bound * (1 + tol),
            lin_dist=(qr - lin).double().norm(dim=1).cpu().numpy() / np.sqrt(r0_sq),
            flips=Hh["flips"][sel].copy(), jump_norm=Hh["jumps"][sel].copy(),
        )
        Hh["flips"][sel] = 0
        Hh["jumps"][sel] = 0
        Hh["min_rel"][sel] = np.minimum(Hh["min_rel"][sel], np.nan_to_num(row["rel_loss"], nan=np.inf))
        if not frozen:
            good = np.isfinite(row["lambda_max"]) & (row["lambda_max"] > 0)
            Hh["eta"][sel[good]] = cfg.step_factor / row["lambda_max"][good]
        rows.append(row)

    step = 0
    diagnose(np.arange(R), np.zeros(R))
    ckpt_set = set(schedule.tolist())
    while len(batch):
        Ra, T, Hh = len(batch), batch.t, batch.h
        later = schedule[schedule > step]
        next_ckpt = int(later[0]) if len(later) else cfg.max_steps
        to_tmax = int(np.ceil((t_budget - Hh["t"]) / Hh["eta"] - 1e-9).min())
        n_steps = max(1, min(cfg.check_every, next_ckpt - step, cfg.max_steps - step, to_tmax))
        eta_t = torch.as_tensor(Hh["eta"], dtype=dt, device=X.device)
        losses = ws.run(T, eta_t, n_steps)
        # every check: one read of the loss buffer and the live flags (the only sync)
        L = losses.cpu().numpy()  # (Ra, n_steps): loss at W_step .. W_{step+n_steps-1}
        applied = T["applied"].cpu().numpy().copy()  # on the CPU .numpy() aliases the live counter
        n_live = np.rint(applied - Hh["applied"]).astype(np.int64)  # steps applied this interval
        Hh["applied"] = applied
        ended = n_live < n_steps  # the loss at index n_live stopped the replica on the device
        j = np.arange(n_steps)[None, :]
        L_stop = L[np.arange(Ra), np.minimum(n_live, n_steps - 1)]
        conv = ended & (L_stop <= T["thr_eps"].cpu().numpy())  # the device's own comparison, in its dtype
        div = ended & ~conv
        t_steps = Hh["t"][:, None] + Hh["eta"][:, None] * j
        rel = L.astype(np.float64) / (Hh["r0_sq"][:, None] / 2)
        fit_mask = (j < n_live[:, None]) | (conv[:, None] & (j == n_live[:, None]))
        Hh["min_rel"] = np.minimum(Hh["min_rel"], np.where(fit_mask, rel, np.inf).min(1))
        lt = np.log(np.where(fit_mask, rel, 1.0))
        Hh["fit"] += np.stack([fit_mask.sum(1), (t_steps * fit_mask).sum(1), (t_steps**2 * fit_mask).sum(1),
                               (lt * fit_mask).sum(1), (t_steps * lt * fit_mask).sum(1)], axis=1)
        Hh["t"] = Hh["t"] + n_live * Hh["eta"]
        own_steps = step + n_live
        step += n_steps
        if not frozen:
            fl, jn = ws.flips_and_jumps(T)
            for key, v in (("flips", fl), ("flips_total", fl), ("jumps", jn), ("jumps_total", jn)):
                Hh[key] += v
        out_of_time = ~ended & (Hh["t"] >= t_budget * (1 - 1e-12))
        out_of_steps = ~ended & (step >= cfg.max_steps)
        stop = ended | out_of_time | out_of_steps
        if step in ckpt_set:
            diagnose(np.arange(Ra), own_steps)
        elif stop.any():
            diagnose(np.flatnonzero(stop), own_steps[stop])
        if stop.any():
            sel = np.flatnonzero(stop)
            reps = Hh["replica"][sel]
            for j, rep in zip(sel, reps):
                out_W[rep].copy_(T["W"][j])
            final["steps"][reps] = own_steps[sel]
            final["t"][reps] = Hh["t"][sel]
            final["stopped_by"][reps] = np.select([div[sel], conv[sel], out_of_time[sel]],
                                                  ["divergence", "eps", "t_max"], "max_steps")
            final["eps_step"][reps] = np.where(conv[sel], own_steps[sel], -1)
            final["eps_t"][reps] = np.where(conv[sel], Hh["t"][sel], np.nan)
            for key in ("min_rel", "fit", "flips_total", "jumps_total"):
                final[key][reps] = Hh[key][sel]
            batch.drop(stop)
            ws = ws.resized(len(batch))

    curves = {f: np.concatenate([r[f] for r in rows]) for f in CURVE_FIELDS}
    order = np.lexsort((curves["step"], curves["replica"]))
    curves = {f: v[order] for f, v in curves.items()}
    summary = _summarise(curves, final, lam0_np, lam_star, r0_sq, R)
    return TrainResult(summary=summary, curves=curves,
                       params=Params.from_effective(out_W, params.a.clone(), problem.bias),
                       lambda_star=lam_star, config=cfg)


def _summarise(curves, final, lam0, lam_star, r0_sq, R) -> dict[str, np.ndarray]:
    rep = curves["replica"]
    last = np.r_[np.flatnonzero(np.diff(rep)), len(rep) - 1]  # final checkpoint of each replica
    per = lambda f, red: np.array([red(curves[f][rep == j]) for j in range(R)])  # noqa: E731
    cnt, st, stt, sy, sty = final["fit"].T
    var = cnt * stt - st**2
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where((cnt >= 3) & (var > 0), (cnt * sty - st * sy) / var, np.nan)
    decay = -slope / 2  # ||r||^2 ~ exp(-2 lambda t)
    stopped = final["stopped_by"]
    status = np.where(stopped == "divergence", "diverged", np.where(stopped == "eps", "converged", "budget"))
    lam_min = per("lambda_min", np.min)
    lam_held = per("lambda_min", lambda v: bool(np.all(v >= lam_star / 2)))
    bound_held = per("bound_held", np.all)
    return dict(
        status=status.astype(str), stopped_by=stopped.astype(str), steps=final["steps"].astype(np.int64),
        t=final["t"], steps_to_eps=final["eps_step"].astype(np.int64), t_to_eps=final["eps_t"],
        final_rel_loss=curves["rel_loss"][last], min_rel_loss=np.minimum(final["min_rel"], per("rel_loss", np.nanmin)),
        loss0=r0_sq / 2, r0_sq=r0_sq, decay_rate=decay, rate_ratio=decay / lam_star,
        lambda_min_H0=lam0[:, 0], lambda_max_H0=lam0[:, -1], min_lambda_ratio=lam_min / lam_star,
        max_weight_move=per("max_weight_move", np.max), flip_fraction=curves["flip_fraction"][last],
        max_H_drift=per("H_drift", np.max), bound_held=bound_held.astype(bool), lambda_held=lam_held.astype(bool),
        regime_held=(bound_held & lam_held).astype(bool), flips_total=final["flips_total"],
        jump_norm_total=final["jumps_total"], lin_dist_final=curves["lin_dist"][last],
    )


def _signed_pattern(W: torch.Tensor, a: torch.Tensor, XT: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a_r 1{w_r^T x_i > 0}`` (R, m, n) for contiguous ``W``, written into ``out``: one GEMM
    over all replicas' rows at once, then two in-place passes."""
    torch.mm(W.view(-1, W.shape[2]), XT, out=out.view(-1, XT.shape[1]))
    return out.gt_(0).mul_(a[..., None])


@contextlib.contextmanager
def _lapack_threads():
    """One CPU thread for LAPACK on a batch of small matrices: its threads meet at every
    step of each factorisation, which costs more than they save, and 10-100x more when the
    cores are shared with other processes (measured in BENCHMARKS.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _eigen_start(s0: torch.Tensor, r0: torch.Tensor, X: torch.Tensor, V: torch.Tensor):
    """Eigenvalues of ``H(0)`` (float64), its eigenvectors and ``r(0)`` in their basis (in the
    working dtype). A function of its own so that the float64 eigenvectors are not kept."""
    with _lapack_threads():
        lam0, Q0 = torch.linalg.eigh(expand_kernel(s0, X, V).double())
    c0 = (Q0.transpose(1, 2) @ r0.double()[..., None])[..., 0]
    return lam0, Q0.to(r0.dtype), c0.to(r0.dtype)


class _Workspace:
    """Preallocated buffers of the hot loop for ``Ra`` active replicas, and the data in the
    layouts its GEMMs want.

    Per step: the signed pattern ``Aa`` (R, m, n) (one GEMM), the input gradients
    ``G_i = grad_x f(x_i)`` (R, n, D) (one GEMM), then per point ``(f_i, F_i) = G_i^T (x_i, V_i)``
    and back ``u_i = (x_i, V_i) (e_i, dF_i)`` as GEMMs batched over the n points, and the
    weight gradient ``Aa u`` fused into the update (one GEMM). The per-point products are
    laid out (n, k+1, R), the orientation in which these small GEMMs run at full speed.
    """

    def __init__(self, Ra: int, m: int, X, V, y, h, frozen: bool, Aa: torch.Tensor | None = None):
        n, D, k = V.shape
        dt, dev = X.dtype, X.device
        self.Ra, self.m, self.frozen, self.data = Ra, m, frozen, (X, V, y, h)
        self.XT = X.T.contiguous()
        self.XVT = torch.cat([X[:, None, :], V.transpose(1, 2)], dim=1)  # (n, k+1, D): rows x_i, V_i^T
        self.yh = torch.cat([y[:, None], h], dim=1)[..., None]  # (n, k+1, 1)
        if Aa is None and not frozen:  # frozen mode steps with the batch's Aa0
            Aa = torch.empty(Ra, m, n, dtype=dt, device=dev)
        self.Aa = Aa
        self.G = torch.empty(Ra, n, D, dtype=dt, device=dev)
        self.res = torch.empty(n, k + 1, Ra, dtype=dt, device=dev)
        self.half_sq = torch.empty_like(self.res)
        self.zero = torch.zeros((), dtype=dt, device=dev)
        self.u = torch.empty(n, Ra, D, dtype=dt, device=dev)
        self.eta_live = torch.empty(Ra, dtype=dt, device=dev)
        self.losses = torch.empty(0, Ra, dtype=dt, device=dev)  # (steps, Ra): rows contiguous

    def resized(self, Ra: int) -> "_Workspace":
        """The workspace of the first ``Ra`` rows (the batch keeps its rows at the front),
        sharing the pattern buffer."""
        return _Workspace(Ra, self.m, *self.data, self.frozen, None if self.Aa is None else self.Aa[:Ra])

    def run(self, T, eta: torch.Tensor, n_steps: int) -> torch.Tensor:
        """``n_steps`` gradient steps of the live replicas in ``T``; returns their losses
        (Ra, n_steps) at the weights each step started from."""
        if self.losses.shape[0] < n_steps:
            self.losses = torch.empty(n_steps, self.Ra, dtype=self.G.dtype, device=self.G.device)
        W, live, applied, thr_eps, thr_div = T["W"], T["live"], T["applied"], T["thr_eps"], T["thr_div"]
        Aa = T["Aa0"] if self.frozen else self.Aa
        XT, XVT, yh = self.XT, self.XVT, self.yh
        G, res, u, half_sq, eta_live, losses = self.G, self.res, self.u, self.half_sq, self.eta_live, self.losses
        # views made once: the pattern GEMM over all replicas' rows, the transposes the GEMMs read
        W2, Z2, a3 = W.view(-1, W.shape[2]), Aa.view(-1, Aa.shape[2]), T["a"][..., None]
        AaT, GT, resT, uR = Aa.transpose(1, 2), G.permute(1, 2, 0), res.transpose(1, 2), u.transpose(0, 1)
        for j in range(n_steps):
            if not self.frozen:
                torch.mm(W2, XT, out=Z2)  # pre-activations, then the signed pattern in place
                Aa.gt_(0).mul_(a3)
            torch.bmm(AaT, W, out=G)  # G_i = grad_x f(x_i)
            torch.bmm(XVT, GT, out=res).sub_(yh)  # (f_i - y_i, F_i - h_i): the gradient's sign
            loss = torch.sum(torch.addcmul(self.zero, res, res, value=0.5, out=half_sq), (0, 1), out=losses[j])
            # a replica stops on the device at relative loss <= eps or on divergence (NaN fails both tests)
            live.mul_(torch.logical_and(loss > thr_eps, loss <= thr_div))
            applied.add_(live)
            res.mul_(torch.mul(eta, live, out=eta_live))
            torch.bmm(resT, XVT, out=u)  # u_i = x_i e_i + V_i dF_i, times the replica's step
            W.baddbmm_(Aa, uR, alpha=-1)
        return self.losses[:n_steps].T

    def flips_and_jumps(self, T) -> tuple[np.ndarray, np.ndarray]:
        """Pattern bits flipped since the last check, and the norm of the jump they put
        into the derivative residual, ``||V^T (A_now - A_then)^T W||`` (net over the interval).
        The difference overwrites the snapshot, then the buffers trade places: the current
        pattern becomes the snapshot and the old one the buffer the next step writes into."""
        dA = torch.sub(self.Aa, T["Aa_snap"], out=T["Aa_snap"])
        dG = dA.transpose(1, 2) @ T["W"]  # (R, n, D)
        jump = torch.bmm(self.XVT[:, 1:], dG.permute(1, 2, 0)).double().pow(2).sum((0, 1)).sqrt()  # V_i^T dG_i
        flips = torch.ne(dA, 0, out=dA).sum(1).double().sum(1)  # counts <= m per point: exact
        T["Aa_snap"], self.Aa = self.Aa, dA
        return flips.cpu().numpy(), jump.cpu().numpy()
