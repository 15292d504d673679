"""The training loop: gradient flow on the directional Sobolev loss, as gradient descent over R replicas at once.

The hot loop (``sobolev.step.Workspace``) runs three GEMMs per step (pre-activations, input
gradients, weight gradient) and a few O(R n k d) operations on preallocated buffers, with no
host-device synchronisation: per-step losses go to a device buffer and per-step
pattern flips to a device counter, both read every ``check_every`` steps, where the
stopping rules and the per-step diagnostics (bound violation, interval extremes of
the loss) are applied. Diagnostics that build ``H`` (O(n^2 k^2 m)) run only at
log-spaced checkpoints and at each replica's stop. Nothing of size O(m) is copied
while training (``sobolev.memory`` counts what is allocated).

Where the rest lives: the settings (``sobolev.settings``), the result record
(``sobolev.record``), the run's state (``sobolev.state``), the activation-pattern rules of the
modes (``sobolev.patterns``, ``sobolev.fused``; chosen in ``sobolev.rules``) and the step
(``sobolev.step``, whose readable reference is ``sobolev.network.loss_and_grad``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .late import LateState
from .late import summarise as summarise_late
from .network import Params, check_compatible
from .ntk import expand_kernel
from .ntk import lambda_star as _lambda_star
from .patterns import signed_pattern
from .problem import Problem
from .record import CURVE_FIELDS, NUMPY_TYPE, SUMMARY_FIELDS, TrainResult
from .rules import pattern_rule
from .settings import TrainConfig, checkpoint_steps
from .state import Data, HostState, LoopState, StartState, Stops
from .step import Workspace


def torch_dtype(config: TrainConfig) -> torch.dtype:
    """The working dtype of ``config`` as a torch dtype (``torch.float32`` or ``torch.float64``)."""
    return getattr(torch, config.dtype)


def bound_tolerance(dtype: torch.dtype) -> float:
    """Relative slack of the check ``||r||^2 <= exp(-lambda_* t) ||r(0)||^2``: the loss is a sum
    of n(k+1) rounded squares (float32: about 1e-7 relative each, summed pairwise), so 1e-5
    (about 100 ulps) in float32 and 1e-12 in float64 separate a violation from rounding.

    Args:
        dtype: the working dtype.

    Returns:
        The relative slack: 1e-12 in float64, 1e-5 otherwise.
    """
    return 1e-12 if dtype == torch.float64 else 1e-5


def _where(mask: np.ndarray | None, x: np.ndarray, fill: float) -> np.ndarray:
    """``x`` where ``mask``, else ``fill``; ``mask`` None: all of ``x`` (bit for bit what an
    all-true mask gives, without the pass)."""
    return x if mask is None else np.where(mask, x, fill)


def train(params: Params, problem: Problem, config: TrainConfig = TrainConfig(), *,
          lambda_star: float | None = None) -> TrainResult:
    """Gradient descent from ``params`` on ``problem`` until each replica converges
    (relative loss <= eps), exhausts its budget (flow time or steps) or diverges.

    Runs in ``config.dtype``: the problem and the weights are cast to it (``.to``) when they
    differ (a problem only down: ``Problem.to`` refuses to raise its precision), and the
    result's weights are in it.

    Args:
        params: initial weights of R replicas, ``W`` (R, m, d), ``a`` (R, m), ``b`` (R, m) or None.
        problem: the instance, ``x`` (n, d), ``V`` (n, d, k), ``y`` (n,), ``h`` (n, k); its
            ``bias`` must match the params'.
        config: the training settings.
        lambda_star: ``lambda_min(H^inf)``, which sets the time unit and the bound (default:
            computed from the cast problem).

    Returns:
        The summary (one array (R,) per ``SUMMARY_FIELDS`` entry), the curves (one row per
        replica and checkpoint, ``CURVE_FIELDS``) and the final weights.
    """
    dtype = torch_dtype(config)
    if problem.dtype != dtype:
        problem = problem.to(dtype=dtype)
    if params.W.dtype != dtype:
        params = Params(*(None if v is None else v.to(dtype) for v in (params.W, params.a, params.b)))
    check_compatible(params, problem)
    lam_star = _lambda_star(problem) if lambda_star is None else float(lambda_star)
    run = _Run(params, Data.of(problem), config, lam_star)
    while run.active:
        run.interval()
    return run.result(params.a.clone(), problem.bias)


class _Run:
    """One call of ``train``: the batch's device and host state, and what it records."""

    def __init__(self, params: Params, data: Data, cfg: TrainConfig, lam_star: float):
        self.cfg, self.data, self.lam_star = cfg, data, lam_star
        X, V = data.X, data.V
        R, m, n = params.R, params.m, X.shape[0]
        dtype, device = X.dtype, X.device
        W, a = params.effective_W().clone(), params.a.clone()
        Aa0 = signed_pattern(W, a, data.XT, torch.empty(R, m, n, dtype=dtype, device=device))
        s0 = Aa0.transpose(1, 2) @ Aa0
        e0, S0 = data.residual(W, Aa0)
        r0 = torch.cat([e0, S0.reshape(R, -1)], dim=1)
        lam0, Q0, c0 = _eigen_start(s0, r0, X, V)
        r0_sq = r0.double().pow(2).sum(1).cpu().numpy()
        if not np.all(r0_sq > 0):
            raise ValueError("train: a replica starts with zero residual; nothing to fit")
        self.lam0 = lam0.cpu().numpy()
        loss0 = r0_sq / 2
        on_device = lambda v: torch.as_tensor(v, dtype=dtype, device=device)  # noqa: E731
        # lam0 copied even in float64: the batch moves its rows in place, self.lam0 must not follow
        self.start = StartState(W0=W.clone(), s0=s0, lam0=lam0.to(dtype, copy=True), Q0=Q0, c0=c0)
        self.loop = LoopState(W=W, a=a, live=torch.ones(R, dtype=dtype, device=device),
                              applied=torch.zeros(R, dtype=dtype, device=device),
                              loss_converged=on_device(cfg.eps * loss0),
                              loss_diverged=on_device(cfg.divergence_factor * loss0))
        self.pattern = pattern_rule(cfg.mode, device)(W, a, Aa0, data)
        self.host = HostState.start(r0_sq, e0.double().pow(2).sum(1).cpu().numpy(),
                                    S0.double().pow(2).sum((1, 2)).cpu().numpy(), cfg.step_factor / self.lam0[:, -1])
        self.stops = Stops.empty(self.host)
        self.late, self.late_stops = LateState.start(R), LateState.start(R)
        self.zero_start = not (np.all(self.host.e0_sq > 0) and np.all(self.host.S0_sq > 0))
        self.ws = Workspace(R, data)
        self.out_W = torch.empty_like(W)
        self.rows: list[dict[str, np.ndarray]] = []
        self.schedule = checkpoint_steps(cfg.max_steps, cfg.checkpoints_per_decade)
        self.checkpoints = set(self.schedule.tolist())
        self.t_budget = cfg.flow_time_budget(lam_star)
        self.tolerance = bound_tolerance(dtype)
        self.step = 0
        self.eta: torch.Tensor | None = None  # host.eta on the device
        self.checkpoint(np.arange(R), np.zeros(R, dtype=np.int64))

    def _zero_start_divisions(self):
        """The context of the divisions by a residual part at t = 0: where one starts at zero
        (k = 0: no derivatives) 0/0 is expected; elsewhere no context (it costs as much as the
        divisions)."""
        return np.errstate(divide="ignore", invalid="ignore") if self.zero_start else contextlib.nullcontext()

    @property
    def active(self) -> bool:
        return len(self.host.replica) > 0

    def interval(self) -> None:
        """Steps up to the next check, then the stopping rules, checkpoint rows and stops."""
        cfg, host, step = self.cfg, self.host, self.step
        Ra = len(host.replica)
        later = self.schedule[self.schedule > step]
        next_checkpoint = int(later[0]) if len(later) else cfg.max_steps
        to_t_max = int(np.ceil((self.t_budget - host.t) / host.eta - 1e-9).min())
        n_steps = max(1, min(cfg.check_every, next_checkpoint - step, cfg.max_steps - step, to_t_max))
        if self.eta is None:  # the step sizes change at checkpoints and when rows are dropped
            self.eta = torch.as_tensor(host.eta, dtype=self.data.X.dtype, device=self.data.X.device)
        losses = self.ws.run(self.loop, self.pattern, self.eta, n_steps)
        # every check: one read of the loss buffer and the step counters (the only sync)
        loss = losses.cpu().numpy()  # (Ra, n_steps): loss at W_step .. W_{step+n_steps-1}
        applied = self.loop.applied.cpu().numpy().copy()  # on the CPU .numpy() aliases the live counter
        n_live = np.rint(applied - host.applied).astype(np.int64)  # steps applied this interval
        host.applied = applied
        ended = n_live < n_steps  # the loss at index n_live stopped the replica on the device
        converged = ended.copy()
        if ended.any():
            loss_stop = loss[np.arange(Ra), np.minimum(n_live, n_steps - 1)]
            converged &= loss_stop <= self.loop.loss_converged.cpu().numpy()  # the device's own test
        parts = self.ws.parts[:, :n_steps].cpu().numpy()  # (2, n_steps, Ra): 1/2 ||e||^2, 1/2 ||S||^2
        self._per_step(loss, parts, n_live, converged)
        host.t = host.t + n_live * host.eta
        own_steps = step + n_live
        self.step = step = step + n_steps
        flips_net, jumps = self.pattern.net_since_check(self.loop.W)
        self.late.record_injection(self.ws.flip_energy.cpu().numpy() / host.r0_sq, host.t, self.lam_star)
        self.ws.flip_energy.zero_()
        host.flips_net += flips_net
        host.flips_net_total += flips_net
        host.jumps += jumps
        host.jumps_total += jumps
        out_of_time = ~ended & (host.t >= self.t_budget * (1 - 1e-12))
        out_of_steps = ~ended & (step >= cfg.max_steps)
        stop = ended | out_of_time | out_of_steps
        if step in self.checkpoints:
            self.checkpoint(np.arange(Ra), own_steps)
        elif stop.any():
            self.checkpoint(np.flatnonzero(stop), own_steps[stop])
        if stop.any():
            reasons = np.select([ended & ~converged, converged, out_of_time], ["divergence", "eps", "t_max"],
                                "max_steps")
            self._stop(stop, own_steps, reasons, converged)

    def _per_step(self, loss: np.ndarray, parts: np.ndarray, n_live: np.ndarray, converged: np.ndarray) -> None:
        """The interval's per-step losses (and their value and derivative ``parts``), at flow
        times ``t + eta j``: the rate fit, the smallest loss, the interval extremes and the
        first violation of the bound."""
        host, n_steps = self.host, loss.shape[1]
        j = np.arange(n_steps)[None, :]
        t_steps = host.t[:, None] + host.eta[:, None] * j
        # the relative loss and its value and derivative parts, (3, Ra, n_steps) in C order
        q = np.empty((3, *loss.shape))
        q[0], q[1:] = loss, parts.transpose(0, 2, 1)
        q[1:] *= 2
        start = np.stack([host.r0_sq / 2, host.e0_sq, host.S0_sq])[:, :, None]
        with self._zero_start_divisions():
            q /= start
        rel = q[0]
        # masks of the steps that count; None where all do (no replica stopped, no row in the
        # interval: the usual check), which skips their passes and gives the same numbers
        full = bool((n_live == n_steps).all())
        fit_mask = None if full else (j < n_live[:, None]) | (converged[:, None] & (j == n_live[:, None]))
        host.min_rel = np.minimum(host.min_rel, _where(fit_mask, rel, np.inf).min(1))
        # rel in C order, masked or not (the losses come in the device's column order): numpy's
        # vectorised log rounds an entry differently depending on the order it meets it in
        lt = np.log(_where(fit_mask, rel, 1.0))
        count = np.full((1, len(rel)), n_steps) if full else fit_mask.sum(1)[None]
        terms = np.stack([t_steps, t_steps**2, lt, t_steps * lt])  # (4, Ra, n_steps): each row as summed alone
        host.fit += np.concatenate([count, _where(fit_mask, terms, 0.0).sum(2)]).T
        # every loss at weights the replica had (up to its stop); the interval starts after its last row
        had = None if full else j <= n_live[:, None]
        self.late.record_steps(t_steps, rel, host.eta, had, self.lam_star)
        after_row = None if (host.last_row < self.step).all() else self.step + j > host.last_row[:, None]
        in_interval = after_row if had is None else had if after_row is None else had & after_row
        q = np.where(np.isnan(q) & (start > 0), np.inf, q)  # NaN from divergence
        high = _where(in_interval, q, -np.inf).max(2)
        host.interval_max = np.maximum(host.interval_max, high[0])
        host.value_interval_max = np.maximum(host.value_interval_max, high[1])
        host.deriv_interval_max = np.maximum(host.deriv_interval_max, high[2])
        host.interval_min = np.minimum(host.interval_min, _where(in_interval, q[0], np.inf).min(1))
        bound = np.exp(-self.lam_star * t_steps) * host.r0_sq[:, None]
        violated = ~(2 * loss.astype(np.float64) <= bound * (1 + self.tolerance))  # NaN violates
        violated = violated if had is None else had & violated
        if violated.any():
            first = violated.argmax(1)
            self._record_violation(np.arange(len(first)), violated.any(1), self.step + first,
                                   t_steps[np.arange(len(first)), first])

    def _record_violation(self, sel: np.ndarray, violated: np.ndarray, steps: np.ndarray, times: np.ndarray) -> None:
        """The first violation of the bound of active rows ``sel`` (where ``violated``), at
        ``steps``, ``times``; later ones are not recorded."""
        new = violated & (self.host.violation_step[sel] < 0)
        self.host.violation_step[sel[new]] = steps[new]
        self.host.violation_t[sel[new]] = times[new]

    def checkpoint(self, sel: np.ndarray, steps: np.ndarray) -> None:
        """Checkpoint rows for active rows ``sel`` at their current weights (reached at
        ``steps``)."""
        host, m, n = self.host, self.loop.W.shape[1], self.data.X.shape[0]
        # a replica that stopped on the first step after a check has not moved since its last row
        steps = np.asarray(steps, dtype=np.int64)
        fresh = steps != host.last_row[sel]
        sel, steps = sel[fresh], steps[fresh]
        if not len(sel):
            return
        host.last_row[sel] = steps
        ix = torch.as_tensor(sel, dtype=torch.long, device=self.data.X.device)
        t = host.t[sel]
        row = dict(replica=host.replica[sel], step=steps, t=t, eta=host.eta[sel], **self._measure(sel, ix, t))
        r0_sq, r_sq = host.r0_sq[sel], row["e_sq"] + row["S_sq"]
        bound = np.exp(-self.lam_star * t) * r0_sq
        with self._zero_start_divisions():
            row.update(value_rel=row["e_sq"] / host.e0_sq[sel], deriv_rel=row["S_sq"] / host.S0_sq[sel])
        rel = r_sq / r0_sq
        rel_or_inf = np.where(np.isnan(rel), np.inf, rel)
        gross = self.pattern.flips_gross[ix].cpu().numpy().astype(np.int64)
        row.update(
            loss=r_sq / 2, rel_loss=rel, rel_loss_interval_max=np.maximum(host.interval_max[sel], rel_or_inf),
            rel_loss_interval_min=np.minimum(host.interval_min[sel], rel_or_inf), bound=bound,
            bound_held=r_sq <= bound * (1 + self.tolerance), flips_gross=gross - host.flips_gross_at_row[sel],
            flips_net=host.flips_net[sel].copy(), jump_norm=host.jumps[sel].copy(),
            flip_fraction=row["flip_fraction"] / (m * n), jump_energy=self.late.take_row(sel),
            flips_distinct=self.pattern.distinct_since_row(sel))
        row.update(value_rel_interval_max=np.maximum(host.value_interval_max[sel], row["value_rel"]),
                   deriv_rel_interval_max=np.maximum(host.deriv_interval_max[sel], row["deriv_rel"]))
        host.interval_max[sel], host.interval_min[sel] = -np.inf, np.inf
        host.value_interval_max[sel], host.deriv_interval_max[sel] = -np.inf, -np.inf
        host.flips_gross_at_row[sel] = gross
        host.flips_net[sel] = 0
        host.jumps[sel] = 0
        host.min_rel[sel] = np.minimum(host.min_rel[sel], np.nan_to_num(rel, nan=np.inf))
        self._record_violation(sel, ~row["bound_held"], steps, t)
        if self.pattern.moves:  # H(t) changes: the step follows lambda_max(H(t))
            good = np.isfinite(row["lambda_max"]) & (row["lambda_max"] > 0)
            host.eta[sel[good]] = self.cfg.step_factor / row["lambda_max"][good]
            self.eta = None
        self.rows.append(row)

    def _measure(self, sel: np.ndarray, ix: torch.Tensor, t: np.ndarray) -> dict[str, np.ndarray]:
        """The O(m) and O(n^2 k^2) diagnostics of rows ``sel`` (``ix`` on the device) at their current weights. The
        O(m) work runs on all active rows, in place (no weights copied); only the O(n^2 k^2)
        work is on ``ix``."""
        data, start, W = self.data, self.start, self.loop.W
        X, V = data.X, data.V
        Aa = self.pattern.current
        e, S = data.residual(W, Aa)
        e, S = e[ix], S[ix]
        e_sq, S_sq = e.double().pow(2).sum(1), S.double().pow(2).sum((1, 2))
        s = (Aa.transpose(1, 2) @ Aa)[ix]
        dH = expand_kernel(s - start.s0[ix], X, V).double()
        with _lapack_threads():
            ev = torch.linalg.eigvalsh(expand_kernel(s, X, V).double())
            drift_2 = torch.linalg.eigvalsh(dH).abs().amax(1)  # ||H(t) - H(0)||_2
        drift = dH.pow(2).sum((1, 2)).sqrt()
        move = torch.linalg.vector_norm(W - start.W0, dim=2).amax(dim=1)[ix].double()
        flipped = self.pattern.flipped_from_start(start, self.loop.a)[ix]
        # distance to the linearised flow exp(-H(0) t) r(0), in H(0)'s eigenbasis
        r = torch.cat([e, S.reshape(len(ix), -1)], dim=1)
        lin = torch.exp(-start.lam0[ix] * torch.as_tensor(t, dtype=X.dtype, device=X.device)[:, None])
        lin = lin * start.c0[ix]
        qr = (start.Q0[ix].transpose(1, 2) @ r[..., None])[..., 0]
        r0_sq = self.host.r0_sq[sel]
        host = lambda v: v.cpu().numpy()  # noqa: E731
        return dict(e_sq=host(e_sq), S_sq=host(S_sq), lambda_min=host(ev[:, 0]), lambda_max=host(ev[:, -1]),
                    H_drift=host(drift), H_drift_2=host(drift_2), max_weight_move=host(move),
                    flip_fraction=host(flipped),
                    lin_dist=host((qr - lin).double().norm(dim=1)) / np.sqrt(r0_sq))

    def _stop(self, stop: np.ndarray, own_steps: np.ndarray, reasons: np.ndarray, converged: np.ndarray) -> None:
        """Records the stopped rows (weights into the result, host state into the stops) and
        drops them from the batch."""
        host, stops = self.host, self.stops
        sel = np.flatnonzero(stop)
        reps = host.replica[sel]
        for j, rep in zip(sel, reps):
            self.out_W[rep].copy_(self.loop.W[j])
        stops.steps[reps] = own_steps[sel]
        stops.stopped_by[reps] = reasons[sel]
        stops.eps_step[reps] = np.where(converged[sel], own_steps[sel], -1)
        stops.eps_t[reps] = np.where(converged[sel], host.t[sel], np.nan)
        stops.host.put(reps, host.take(sel))
        self.late_stops.put(reps, self.late.take(sel))
        # the last remaining rows move into the stopped rows' places: one row copy per stop
        order = np.flatnonzero(~stop)
        n_keep = len(order)
        holes = np.flatnonzero(stop[:n_keep])
        movers = order[order >= n_keep]
        for part in (self.loop, self.start, self.pattern):
            part.drop(holes, movers, n_keep)
        self.pattern.bind(self.loop.W, self.loop.a)
        order = np.arange(n_keep)
        order[holes] = movers
        self.host = host.take(order)
        self.late = self.late.take(order)
        self.ws = Workspace(n_keep, self.data)
        self.eta = None

    def result(self, a: torch.Tensor, bias: bool) -> TrainResult:
        curves = {f: np.concatenate([row[f] for row in self.rows]).astype(NUMPY_TYPE[kind])
                  for f, kind in CURVE_FIELDS.items()}
        order = np.lexsort((curves["step"], curves["replica"]))
        curves = {f: v[order] for f, v in curves.items()}
        summary = _summarise(curves, self.stops, self.lam0, self.lam_star)
        summary.update(summarise_late(self.late_stops, summary["status"], self.lam_star))
        R, rep = len(self.lam0), curves["replica"]
        late = curves["t"] >= summary["late_start"][rep]  # the checkpoints of the late window
        summary.update(max_H_drift_2=_per_replica(curves, "H_drift_2", np.max, R), lambda_min_late=np.array(
            [np.min(curves["lambda_min"][(rep == j) & late], initial=np.inf) for j in range(R)]) / self.lam_star)
        summary = {f: np.asarray(summary[f]).astype(NUMPY_TYPE[kind]) for f, kind in SUMMARY_FIELDS.items()}
        return TrainResult(summary=summary, curves=curves, params=Params.from_effective(self.out_W, a, bias),
                           lambda_star=self.lam_star, config=self.cfg)


def _summarise(curves: dict[str, np.ndarray], stops: Stops, lam0: np.ndarray, lam_star: float) -> dict[str, np.ndarray]:
    rep, R = curves["replica"], len(lam0)
    last = np.r_[np.flatnonzero(np.diff(rep)), len(rep) - 1]  # final checkpoint of each replica
    per = lambda f, red: _per_replica(curves, f, red, R)  # noqa: E731
    final = stops.host
    cnt, st, stt, sy, sty = final.fit.T
    var = cnt * stt - st**2
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where((cnt >= 3) & (var > 0), (cnt * sty - st * sy) / var, np.nan)
    decay = -slope / 2  # ||r||^2 ~ exp(-2 lambda t)
    stopped = stops.stopped_by.astype(str)
    status = np.where(stopped == "divergence", "diverged", np.where(stopped == "eps", "converged", "budget"))
    lam_held = per("lambda_min", lambda v: bool(np.all(v >= lam_star / 2)))
    bound_held = per("bound_held", np.all)
    values = dict(
        status=status, stopped_by=stopped, steps=stops.steps, t=final.t, steps_to_eps=stops.eps_step,
        t_to_eps=stops.eps_t, final_rel_loss=curves["rel_loss"][last],
        min_rel_loss=np.minimum(final.min_rel, per("rel_loss", np.nanmin)), value_rel_final=curves["value_rel"][last],
        deriv_rel_final=curves["deriv_rel"][last], loss0=final.r0_sq / 2, r0_sq=final.r0_sq, decay_rate=decay,
        rate_ratio=decay / lam_star, lambda_min_H0=lam0[:, 0], lambda_max_H0=lam0[:, -1],
        min_lambda_ratio=per("lambda_min", np.min) / lam_star, max_weight_move=per("max_weight_move", np.max),
        flip_fraction=curves["flip_fraction"][last], max_H_drift=per("H_drift", np.max), bound_held=bound_held,
        lambda_held=lam_held, regime_held=bound_held & lam_held, bound_violation_step=final.violation_step,
        bound_violation_t=final.violation_t, flips_gross_total=per("flips_gross", np.sum),
        flips_net_total=final.flips_net_total, jump_norm_total=final.jumps_total,
        lin_dist_final=curves["lin_dist"][last],
    )
    return values


def _per_replica(curves: dict[str, np.ndarray], field: str, reduce, R: int) -> np.ndarray:
    """``reduce`` of a curve's values per replica (R,)."""
    rep = curves["replica"]
    return np.array([reduce(curves[field][rep == j]) for j in range(R)])


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
