"""The late-time record of a run: what the theorem's statement is judged on, read after the fact.

The theorem says ``||r(t)||^2 <= exp(-lambda_* t) ||r(0)||^2`` for all ``t``: a run should reach
any tolerance, at a rate of at least ``lambda_*``. So, per replica, from the per-step losses
(every step, not the checkpoints):

- ``t_to_<eps'>``: the first flow time at which the relative loss ``L(t)/L(0) = ||r||^2/||r(0)||^2``
  was ``<= eps'``, for each ``eps'`` of :data:`TOLERANCES` (``inf`` when never);
- ``late_rate``: the decay rate of the relative loss over the last doubling of flow time, in units
  of ``lambda_*`` (1 is the theorem's rate; negative when the loss rises):
  ``ln(rel(s_tau) / rel(s_end)) / ((t(s_end) - t(s_tau)) lambda_*)``, with ``s_end`` the run's last
  step and ``s_tau`` the first step at or after ``tau``, the largest time of the ladder
  ``2^(j/16) / lambda_*`` (j an integer) at or before ``t(s_end)/2``;
- ``trend``: ``converged`` (stopped at its training ``eps``), ``diverged``, else ``converging``
  when ``late_rate >= CONVERGING_RATE`` and ``plateau`` below;
- the flips' injection: at every step, what the pattern update of the step before put into
  ``||r||^2``, exactly: ``||r(W, A_new)||^2 - ||r(W, A_old)||^2 = 2 <res, J> - ||J||^2`` at the weights
  ``W`` it was made at (``res = (f - y, F - h)`` under the new pattern, ``J_i = (x_i, V_i)^T dG_i`` the move
  of ``(f_i, F_i)``, ``dG = (A_new - A_old)^T W``; ``sobolev.step.Workspace``), so that every step's change
  of the loss splits into the flow's part (the pattern fixed) and the flips' part. Relative to
  ``||r(0)||^2``: its total (``jump_energy_total``), its share of what the flow removed (``jump_share``:
  injection over injection plus the net fall of the relative loss) and its rate over the late window
  (``jump_rate_late``: injection over the integral of the relative loss over ``[t(s_tau), t(s_end)]``,
  in units of ``lambda_*``; a check's injection is binned at the check's end), and what the flow removed
  over the same window at the same scale (``flow_rate_late``: injection less the change of the relative
  loss, over the same integral). The flow removes ``||r||^2`` at ``2 r^T H r / ||r||^2 >= 2 lambda_min(H)``
  per unit of ``||r||^2``, so ``late_rate`` is about ``flow_rate_late - jump_rate_late``: a run sits on a
  plateau where the flips put back what the flow removes.

The ladder is what makes these exact without keeping every step: per bin of flow time (16 a
doubling, from ``2^-8`` to ``2^16`` in units of ``1/lambda_*``) the first step in it (its time and
relative loss), the integral of the relative loss over its steps (a left Riemann sum with the
steps' own ``eta``) and the injection of the checks that ended in it. Pure numpy, no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

TOLERANCES = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
CONVERGING_RATE = 0.1  # a late rate of at least a tenth of the theorem's: the run is still converging
PER_OCTAVE = 16
LOWEST, HIGHEST = -8, 16  # the ladder's range, in octaves of flow time in units of 1/lambda_*
BINS = (HIGHEST - LOWEST) * PER_OCTAVE + 1  # bin 0 holds everything before 2^LOWEST, t = 0 included
TRENDS = ("converged", "converging", "plateau", "diverged")


def t_to_field(eps: float) -> str:
    """The summary field of the first time at ``eps``: ``t_to_1e-8`` for ``1e-8``."""
    mantissa, exponent = f"{float(eps):.0e}".split("e")
    return f"t_to_{mantissa}e{int(exponent)}"


def ladder_bin(t_lambda: np.ndarray) -> np.ndarray:
    """The ladder bin of flow times ``t_lambda`` (in units of ``1/lambda_*``), as int64 of the same shape:
    bin ``b >= 1`` holds ``[2^((b - 1)/16 + LOWEST), 2^(b/16 + LOWEST))``, bin 0 all earlier times;
    times past the ladder go to its last bin."""
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.floor(PER_OCTAVE * (np.log2(t_lambda) - LOWEST)) + 1
    return np.clip(np.nan_to_num(b, nan=0.0, neginf=0.0), 0, BINS - 1).astype(np.int64)


@dataclass(eq=False)
class LateState:
    """The late-time record of ``R`` replicas (one row each; rows move with the batch's, as
    ``sobolev.state.HostState``'s do)."""

    t_to: np.ndarray  # (R, len(TOLERANCES)) first flow time at each tolerance (inf: not yet)
    first_t: np.ndarray  # (R, BINS) flow time of the first step in each bin (NaN: none)
    first_rel: np.ndarray  # (R, BINS) its relative loss
    rel_dt: np.ndarray  # (R, BINS) sum of rel * eta over the bin's steps
    inject: np.ndarray  # (R, BINS) the flips' injection (relative) of the checks that ended in the bin
    last_bin: np.ndarray  # (R,) bin of the last recorded step (-1: none)
    last_t: np.ndarray  # (R,) flow time of the last recorded step
    last_rel: np.ndarray  # (R,) its relative loss
    inject_row: np.ndarray  # (R,) injection since the last checkpoint row
    inject_total: np.ndarray  # (R,) injection since t = 0

    @staticmethod
    def start(R: int) -> "LateState":
        full = lambda shape, v: np.full(shape, v, dtype=np.float64)  # noqa: E731
        return LateState(t_to=full((R, len(TOLERANCES)), np.inf), first_t=full((R, BINS), np.nan),
                         first_rel=full((R, BINS), np.nan), rel_dt=np.zeros((R, BINS)), inject=np.zeros((R, BINS)),
                         last_bin=np.full(R, -1, dtype=np.int64), last_t=full(R, np.nan), last_rel=full(R, np.nan),
                         inject_row=np.zeros(R), inject_total=np.zeros(R))

    def take(self, index: np.ndarray) -> "LateState":
        return LateState(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def put(self, index: np.ndarray, rows: "LateState") -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name)[index] = getattr(rows, f.name)

    def record_steps(self, t: np.ndarray, rel: np.ndarray, eta: np.ndarray, counted: np.ndarray | None,
                     lambda_star: float) -> None:
        """One check interval's steps.

        Args:
            t: (Ra, s) the flow time of each step (the weights it started from).
            rel: (Ra, s) the relative loss ``||r||^2 / ||r(0)||^2`` there.
            eta: (Ra,) the steps' size.
            counted: (Ra, s) the steps each replica took, a prefix of each row (None: all).
            lambda_star: the instance's ``lambda_*`` (the ladder's unit).
        """
        Ra, s = rel.shape
        mask = np.ones((Ra, s), dtype=bool) if counted is None else counted
        hit = (rel[None] <= np.asarray(TOLERANCES)[:, None, None]) & mask[None]  # (tolerances, Ra, s)
        new = hit.any(2).T & ~np.isfinite(self.t_to)  # (Ra, tolerances)
        if new.any():
            first = hit.argmax(2).T
            rows, cols = np.nonzero(new)
            self.t_to[rows, cols] = t[rows, first[rows, cols]]
        b = ladder_bin(t * lambda_star)
        previous = np.concatenate([self.last_bin[:, None], b[:, :-1]], axis=1)
        entered = (b != previous) & mask  # bins only grow along a row: each is entered once
        rows, cols = np.nonzero(entered)
        self.first_t[rows, b[rows, cols]] = t[rows, cols]
        self.first_rel[rows, b[rows, cols]] = rel[rows, cols]
        rows, cols = np.nonzero(mask)
        np.add.at(self.rel_dt, (rows, b[rows, cols]), rel[rows, cols] * eta[rows])
        n = mask.sum(1)
        took = n > 0
        last = np.maximum(n - 1, 0)
        ix = np.arange(Ra)
        self.last_bin = np.where(took, b[ix, last], self.last_bin)
        self.last_t = np.where(took, t[ix, last], self.last_t)
        self.last_rel = np.where(took, rel[ix, last], self.last_rel)

    def record_injection(self, inject: np.ndarray, t: np.ndarray, lambda_star: float) -> None:
        """The injection (Ra,) of the checks just made (relative to ``||r(0)||^2``), ending at
        flow times ``t`` (Ra,)."""
        inject = np.nan_to_num(inject, nan=0.0)
        self.inject_row += inject
        self.inject_total += inject
        np.add.at(self.inject, (np.arange(len(t)), ladder_bin(t * lambda_star)), inject)

    def take_row(self, sel: np.ndarray) -> np.ndarray:
        """The injection since the last checkpoint row of rows ``sel``, which then starts again."""
        out = self.inject_row[sel].copy()
        self.inject_row[sel] = 0.0
        return out


def summarise(late: LateState, status: np.ndarray, lambda_star: float) -> dict[str, np.ndarray]:
    """The late-time summary of every replica.

    Args:
        late: the record of R replicas (every one stopped).
        status: (R,) ``converged``, ``budget`` or ``diverged``.
        lambda_star: the instance's ``lambda_*``.

    Returns:
        (R,) arrays: ``t_to_<eps'>`` for each of :data:`TOLERANCES`, ``late_rate``, ``trend``,
        ``jump_energy_total``, ``jump_share``, ``jump_rate_late``, ``flow_rate_late``, and ``late_start``,
        the flow time ``t(s_tau)`` where the late window starts.
    """
    R = len(status)
    t_end, rel_end = late.last_t, late.last_rel
    tau_bin = ladder_bin(t_end / 2 * lambda_star)
    ix = np.arange(R)
    # the first step at or after tau: the first non-empty bin from tau's on
    nonempty = np.isfinite(late.first_t) & (np.arange(BINS)[None] >= tau_bin[:, None])
    start = np.where(nonempty.any(1), nonempty.argmax(1), BINS - 1)
    t_s, rel_s = late.first_t[ix, start], late.first_rel[ix, start]
    window = np.arange(BINS)[None] >= start[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        late_rate = np.where(t_end > t_s, np.log(rel_s / rel_end) / ((t_end - t_s) * lambda_star), np.nan)
        integral = (late.rel_dt * window).sum(1) * lambda_star
        jump_rate = (late.inject * window).sum(1) / integral
        flow_rate = ((late.inject * window).sum(1) - (rel_end - rel_s)) / integral
        share = late.inject_total / (late.inject_total + np.maximum(1 - rel_end, 0.0))
    trend = np.where(status == "converged", "converged", np.where(
        status == "diverged", "diverged", np.where(late_rate >= CONVERGING_RATE, "converging", "plateau")))
    out = {t_to_field(eps): late.t_to[:, i] for i, eps in enumerate(TOLERANCES)}
    return dict(out, late_rate=late_rate, trend=trend, jump_energy_total=late.inject_total, jump_share=share,
                jump_rate_late=jump_rate, flow_rate_late=flow_rate, late_start=t_s)
