"""The hot loop's gradient step, for all active replicas at once on preallocated buffers.

The readable reference of one step is :func:`sobolev.network.loss_and_grad`: the loss and
``W - eta * grad_W`` it gives are what :meth:`Workspace.run` computes, up to rounding
(``tests/test_step.py`` holds them equal in float64, for every pattern rule).
"""

from __future__ import annotations

import torch

from .patterns import PatternRule
from .state import Data, LoopState


class Workspace:
    """Preallocated buffers of the hot loop for ``Ra`` active replicas.

    Per step: the input gradients ``G_i = grad_x f(x_i)`` (R, n, D) (one GEMM), then per
    point ``(f_i, F_i) = G_i^T (x_i, V_i)`` and back ``u_i = (x_i, V_i) (e_i, dF_i)`` as GEMMs
    batched over the n points, the weight gradient ``Aa u`` fused into the update (one GEMM),
    and the pattern rule's update of the activation pattern (one GEMM in relu mode). The
    per-point products are laid out (n, k+1, R), the orientation in which these small GEMMs
    run at full speed. The same step, written plainly: ``sobolev.network.loss_and_grad``.
    """

    def __init__(self, Ra: int, data: Data):
        n, D = data.X.shape
        k1 = data.XVT.shape[1]
        dtype, device = data.X.dtype, data.X.device
        self.Ra, self.data = Ra, data
        self.G = torch.empty(Ra, n, D, dtype=dtype, device=device)
        self.res = torch.empty(n, k1, Ra, dtype=dtype, device=device)
        self.zero = torch.zeros((), dtype=dtype, device=device)
        self.u = torch.empty(n, Ra, D, dtype=dtype, device=device)
        self.eta_live = torch.empty(Ra, dtype=dtype, device=device)
        self.losses = torch.empty(0, Ra, dtype=dtype, device=device)  # (steps, Ra): rows contiguous
        # each step's halved squared residuals (steps, n, k+1, Ra): on the CPU the value and
        # derivative parts of the loss are summed from them once per call, bit for bit the sums
        # of a call per step (tested); elsewhere a reduction's order may follow its shape, so
        # there the parts are summed per step, as the values must not depend on check_every
        self.half_sq = torch.empty(0, n, k1, Ra, dtype=dtype, device=device)
        self.parts = torch.empty(2, 0, Ra, dtype=dtype, device=device)
        self.parts_per_step = device.type != "cpu"
        # what the flips put into ||r||^2, summed over the steps of a call (float64, zeroed by the loop)
        self.J = torch.empty(n, k1, Ra, dtype=dtype, device=device)
        self.half = torch.empty(n, k1, Ra, dtype=dtype, device=device)
        self.step_energy = torch.empty(Ra, dtype=dtype, device=device)
        self.flip_energy = torch.zeros(Ra, dtype=torch.float64, device=device)

    def run(self, state: LoopState, pattern: PatternRule, eta: torch.Tensor, n_steps: int) -> torch.Tensor:
        """``n_steps`` gradient steps of the live replicas, in place on ``state.W``.

        A replica whose loss reaches ``state.loss_converged`` or passes ``state.loss_diverged``
        stops on the device (``state.live`` 0) and is not stepped further; ``state.applied``
        counts the steps each replica took.

        Args:
            state: the loop's state, ``Ra`` rows.
            pattern: the pattern rule, bound to ``state.W`` and ``state.a``.
            eta: step sizes (Ra,), in the working dtype, on the device.
            n_steps: steps to take.

        Returns:
            The losses (Ra, n_steps) at the weights each step started from. Their parts
            ``1/2 ||e||^2`` and ``1/2 ||S||^2`` are then in ``parts[:, :n_steps]`` (2, n_steps, Ra).
        """
        if self.losses.shape[0] < n_steps:
            dtype, device = self.G.dtype, self.G.device
            self.losses = torch.empty(n_steps, self.Ra, dtype=dtype, device=device)
            self.half_sq = torch.empty(n_steps, *self.res.shape, dtype=dtype, device=device)
            self.parts = torch.empty(2, n_steps, self.Ra, dtype=dtype, device=device)
        W, live, applied = state.W, state.live, state.applied
        converged_at, diverged_at = state.loss_converged, state.loss_diverged
        XVT, yh = self.data.XVT, self.data.yh
        G, res, u, half_sq, eta_live, losses = self.G, self.res, self.u, self.half_sq, self.eta_live, self.losses
        # views made once: the transposes the GEMMs read
        GT, resT, uR = G.permute(1, 2, 0), res.transpose(1, 2), u.transpose(0, 1)
        dGT = pattern.dG.permute(1, 2, 0) if pattern.moves else None
        for j in range(n_steps):
            torch.bmm(pattern.current_T, W, out=G)  # G_i = grad_x f(x_i)
            torch.bmm(XVT, GT, out=res).sub_(yh)  # (f_i - y_i, F_i - h_i): the gradient's sign
            loss = torch.sum(torch.addcmul(self.zero, res, res, value=0.5, out=half_sq[j]), (0, 1), out=losses[j])
            if dGT is not None:  # the last pattern update moved (f, F) by J: with the old pattern, res - J
                self._flip_energy(dGT)
            if self.parts_per_step:
                torch.sum(half_sq[j, :, 0], 0, out=self.parts[0, j])  # 1/2 ||e||^2
                torch.sum(half_sq[j, :, 1:], (0, 1), out=self.parts[1, j])  # 1/2 ||S||^2
            # a replica stops on the device at relative loss <= eps or on divergence (NaN fails both tests)
            live.mul_(torch.logical_and(loss > converged_at, loss <= diverged_at))
            applied.add_(live)
            res.mul_(torch.mul(eta, live, out=eta_live))
            torch.bmm(resT, XVT, out=u)  # u_i = x_i e_i + V_i dF_i, times the replica's step
            W.baddbmm_(pattern.current, uR, alpha=-1)
            pattern.advance(keep=j == n_steps - 1)
        if not self.parts_per_step:
            torch.sum(half_sq[:n_steps, :, 0], 1, out=self.parts[0, :n_steps])
            torch.sum(half_sq[:n_steps, :, 1:], (1, 2), out=self.parts[1, :n_steps])
        return self.losses[:n_steps].T

    def _flip_energy(self, dGT: torch.Tensor) -> None:
        """Adds to ``flip_energy`` what the last pattern update put into ``||r||^2`` at this step's
        weights: ``||res||^2 - ||res - J||^2 = 2 <J, res - J/2>``, with ``J_i = (x_i, V_i)^T dG_i`` the
        move of ``(f_i, F_i)`` and ``dGT`` (n, D, Ra) the change of the input gradients (exact: the
        residual is linear in the pattern at fixed weights)."""
        J = torch.bmm(self.data.XVT, dGT, out=self.J)
        torch.sum(torch.mul(J, torch.sub(self.res, J, alpha=0.5, out=self.half), out=self.half), (0, 1),
                  out=self.step_energy)
        self.flip_energy.add_(self.step_energy, alpha=2)
