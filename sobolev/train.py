"""Gradient flow on the directional Sobolev loss, as gradient descent over R replicas at once.

The hot loop runs three GEMMs per step (pre-activations, input gradients, weight
gradient) on preallocated buffers, with no host-device synchronisation: per-step
losses go to a device buffer that is read every ``check_every`` steps, where the
stopping rules are applied. Diagnostics that build ``H`` (O(n^2 k^2 m)) run only at
log-spaced checkpoints and at each replica's stop.

Modes: ``relu`` is the true dynamics; ``frozen`` keeps the activation patterns of
t = 0 (the linearised, NTK model), whose residual follows ``(I - eta H(0))^s r(0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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

    mode: str = "relu"
    eps: float = 1e-4
    t_max: float = 12.0
    t_unit: str = "lambda_star"
    max_steps: int = 200_000
    step_factor: float = 1.0
    check_every: int = 16
    checkpoints_per_decade: int = 8
    divergence_factor: float = 1e6

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TrainConfig.mode={self.mode!r}: expected one of {MODES}")
        if self.t_unit not in ("lambda_star", "absolute"):
            raise ValueError(f"TrainConfig.t_unit={self.t_unit!r}: expected 'lambda_star' or 'absolute'")
        for name in ("eps", "t_max", "step_factor", "divergence_factor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name}={v!r}: must be a positive finite number")
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


SUMMARY_FIELDS = (
    "status", "stopped_by", "steps", "t", "steps_to_eps", "t_to_eps", "final_rel_loss", "min_rel_loss",
    "loss0", "r0_sq", "decay_rate", "rate_ratio", "lambda_min_H0", "lambda_max_H0", "min_lambda_ratio",
    "max_weight_move", "flip_fraction", "max_H_drift", "bound_held", "lambda_held", "regime_held",
    "flips_total", "jump_norm_total", "lin_dist_final",
)
CURVE_FIELDS = (
    "replica", "step", "t", "eta", "loss", "rel_loss", "e_sq", "S_sq", "lambda_min", "lambda_max",
    "H_drift", "max_weight_move", "flip_fraction", "bound", "bound_held", "lin_dist", "flips",
    "jump_norm",
)


class _Batch:
    """Device state of the active replicas; rows are dropped as replicas stop."""

    def __init__(self, tensors: dict[str, torch.Tensor], host: dict[str, np.ndarray]):
        self.t, self.h = tensors, host

    def __len__(self) -> int:
        return len(self.h["replica"])

    def keep(self, rows: np.ndarray) -> None:
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.t["W"].device)
        self.t = {k: v.index_select(0, idx).contiguous() for k, v in self.t.items()}
        self.h = {k: v[rows] for k, v in self.h.items()}


def train(params: Params, problem: Problem, config: TrainConfig = TrainConfig(), *,
          lambda_star: float | None = None) -> TrainResult:
    """Gradient descent from ``params`` on ``problem`` until each replica converges
    (relative loss <= eps), exhausts its budget (flow time or steps) or diverges."""
    _check(params, problem)
    cfg = config
    X, V, y, h, _ = effective_data(problem)
    n, D, k = V.shape
    R, m = params.R, params.m
    dt = X.dtype
    lam_star = _lambda_star(problem) if lambda_star is None else float(lambda_star)
    t_budget = cfg.flow_time_budget(lam_star)
    frozen = cfg.mode == "frozen"
    XT = X.T.contiguous()

    W = params.effective_W().clone()
    a = params.a.clone()
    Aa0 = (W @ XT > 0).to(dt) * a[..., None]  # (R, m, n)
    s0 = Aa0.transpose(1, 2) @ Aa0

    def residual(Wb, Aab):
        G = Aab.transpose(1, 2) @ Wb
        e = y - (G * X).sum(-1)  # f_i = sum_r a_r 1{.} w_r^T x_i = G_i^T x_i
        S = h - torch.einsum("rnD,nDk->rnk", G, V)
        return e, S

    e0, S0 = residual(W, Aa0)
    r0 = torch.cat([e0, S0.reshape(R, n * k)], dim=1)
    H0 = expand_kernel(s0, X, V)
    lam0, Q0 = torch.linalg.eigh(H0.double())
    c0 = (Q0.transpose(1, 2) @ r0.double()[..., None])[..., 0]
    r0_sq = r0.double().pow(2).sum(1).cpu().numpy()
    if not np.all(r0_sq > 0):
        raise ValueError("train: a replica starts with zero residual; nothing to fit")
    lam0_np = lam0.cpu().numpy()
    eta0 = cfg.step_factor / lam0_np[:, -1]

    loss0 = r0_sq / 2
    batch = _Batch(
        dict(W=W, W0=W.clone(), a=a, Aa0=Aa0, Aa_snap=Aa0.clone(), s0=s0, Q0=Q0.to(dt), lam0=lam0.to(dt),
             c0=c0.to(dt), live=torch.ones(R, dtype=dt, device=X.device),
             applied=torch.zeros(R, dtype=dt, device=X.device),
             thr_eps=torch.as_tensor(cfg.eps * loss0, dtype=dt, device=X.device),
             thr_div=torch.as_tensor(cfg.divergence_factor * loss0, dtype=dt, device=X.device)),
        dict(replica=np.arange(R), t=np.zeros(R), eta=eta0, r0_sq=r0_sq, applied=np.zeros(R),
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
        """Checkpoint rows for active rows ``sel`` at their current weights."""
        T, Hh = batch.t, batch.h
        ix = torch.as_tensor(sel, dtype=torch.long, device=X.device)
        Wb, ab = T["W"].index_select(0, ix), T["a"].index_select(0, ix)
        Aa = T["Aa0"].index_select(0, ix) if frozen else (Wb @ XT > 0).to(dt) * ab[..., None]
        e, S = residual(Wb, Aa)
        e_sq, S_sq = e.double().pow(2).sum(1), S.double().pow(2).sum((1, 2))
        s = Aa.transpose(1, 2) @ Aa
        ds = s - T["s0"].index_select(0, ix)
        ev = torch.linalg.eigvalsh(expand_kernel(s, X, V).double())
        drift = expand_kernel(ds, X, V).double().pow(2).sum((1, 2)).sqrt()
        move = (Wb - T["W0"].index_select(0, ix)).double().norm(dim=2).amax(dim=1)
        flipfrac = ((Aa != 0) != (T["Aa0"].index_select(0, ix) != 0)).double().mean((1, 2))
        t = Hh["t"][sel]
        # distance to the linearised flow exp(-H(0) t) r(0), in H(0)'s eigenbasis
        r = torch.cat([e, S.reshape(len(sel), n * k)], dim=1)
        lin = torch.exp(-T["lam0"].index_select(0, ix) * torch.as_tensor(t, dtype=dt, device=X.device)[:, None])
        lin = lin * T["c0"].index_select(0, ix)
        qr = (T["Q0"].index_select(0, ix).transpose(1, 2) @ r[..., None])[..., 0]
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
    ws = _Workspace(R, m, n, D, dt, X.device)
    ckpt_set = set(schedule.tolist())
    while len(batch):
        Ra, T, Hh = len(batch), batch.t, batch.h
        later = schedule[schedule > step]
        next_ckpt = int(later[0]) if len(later) else cfg.max_steps
        to_tmax = int(np.ceil((t_budget - Hh["t"]) / Hh["eta"] - 1e-9).min())
        n_steps = max(1, min(cfg.check_every, next_ckpt - step, cfg.max_steps - step, to_tmax))
        eta_t = torch.as_tensor(Hh["eta"], dtype=dt, device=X.device)
        losses = ws.run(T, XT, X, V, y, h, eta_t, n_steps, frozen)
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
            fl, jn = ws.flips_and_jumps(T, V)
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
            out_W[torch.as_tensor(reps, device=X.device)] = T["W"][torch.as_tensor(sel, device=X.device)]
            final["steps"][reps] = own_steps[sel]
            final["t"][reps] = Hh["t"][sel]
            final["stopped_by"][reps] = np.select([div[sel], conv[sel], out_of_time[sel]],
                                                  ["divergence", "eps", "t_max"], "max_steps")
            final["eps_step"][reps] = np.where(conv[sel], own_steps[sel], -1)
            final["eps_t"][reps] = np.where(conv[sel], Hh["t"][sel], np.nan)
            for key in ("min_rel", "fit", "flips_total", "jumps_total"):
                final[key][reps] = Hh[key][sel]
            keep = np.flatnonzero(~stop)
            batch.keep(keep)
            ws = ws.resized(len(keep))

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


class _Workspace:
    """Preallocated buffers of the hot loop for ``Ra`` active replicas."""

    def __init__(self, Ra: int, m: int, n: int, D: int, dtype, device):
        self.shape = (Ra, m, n, D, dtype, device)
        self.Aa = torch.empty(Ra, m, n, dtype=dtype, device=device)
        self.G = torch.empty(Ra, n, D, dtype=dtype, device=device)
        self.losses = torch.empty(0, Ra, dtype=dtype, device=device)  # (steps, Ra): rows contiguous

    def resized(self, Ra: int) -> "_Workspace":
        return _Workspace(Ra, *self.shape[1:])

    def run(self, T, XT, X, V, y, h, eta, n_steps: int, frozen: bool) -> torch.Tensor:
        Ra, m, n, D = self.shape[:4]
        if self.losses.shape[0] < n_steps:
            self.losses = torch.empty(n_steps, Ra, dtype=self.Aa.dtype, device=self.Aa.device)
        W, a3, Aa, G = T["W"], T["a"][..., None], self.Aa, self.G
        live, applied, thr_eps, thr_div = T["live"], T["applied"], T["thr_eps"], T["thr_div"]
        if frozen:
            Aa = T["Aa0"]
        W2 = W.view(Ra * m, D)
        Z2 = self.Aa.view(Ra * m, n)
        for j in range(n_steps):
            if not frozen:
                torch.mm(W2, XT, out=Z2)  # pre-activations, then the signed pattern in place
                Aa.gt_(0).mul_(a3)
            torch.bmm(Aa.transpose(1, 2), W, out=G)
            e = (G * X).sum(-1) - y  # f - y
            dF = torch.einsum("rnD,nDk->rnk", G, V) - h
            loss = torch.add(e.square().sum(1), dF.square().sum((1, 2)), out=self.losses[j]).mul_(0.5)
            # a replica stops on the device at relative loss <= eps or on divergence (NaN fails both tests)
            live.mul_(torch.logical_and(loss > thr_eps, loss <= thr_div))
            applied.add_(live)
            u = e[..., None] * X + torch.einsum("nDk,rnk->rnD", V, dF)
            W.baddbmm_(Aa, u.mul_((eta * live)[:, None, None]), alpha=-1)
        return self.losses[:n_steps].T

    def flips_and_jumps(self, T, V) -> tuple[np.ndarray, np.ndarray]:
        """Pattern bits flipped since the last check, and the norm of the jump they put
        into the derivative residual, ``||V^T (A_now - A_then)^T W||`` (net over the interval)."""
        dA = self.Aa - T["Aa_snap"]
        flips = (dA != 0).sum((1, 2))
        jump = torch.einsum("rnD,nDk->rnk", dA.transpose(1, 2) @ T["W"], V).double().pow(2).sum((1, 2)).sqrt()
        T["Aa_snap"].copy_(self.Aa)
        return flips.cpu().numpy().astype(float), jump.cpu().numpy()
