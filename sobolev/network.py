"""The two-layer ReLU network, batched over ``R`` independent replicas.

Shapes: ``W`` (R, m, d), ``a`` (R, m), ``b`` (R, m). The bias network is evaluated as
the no-bias network on augmented data with ``W~ = (W, b)`` (see ``problem.effective_data``);
all formulas below are MATH.md's, written as batched matmuls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .problem import Problem, effective_data


@dataclass(frozen=True, eq=False)
class Params:
    """Trained weights ``W`` (R, m, d), fixed output weights ``a`` (R, m) and, for the
    bias network, biases ``b`` (R, m)."""

    W: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor | None = None

    def __post_init__(self) -> None:
        W, a, b = self.W, self.a, self.b
        if W.ndim != 3:
            raise ValueError(f"Params.W: expected shape (R, m, d), got {tuple(W.shape)}")
        R, m, _ = W.shape
        if a.shape != (R, m):
            raise ValueError(f"Params.a: expected shape ({R}, {m}), got {tuple(a.shape)}")
        if b is not None and b.shape != (R, m):
            raise ValueError(f"Params.b: expected shape ({R}, {m}) or None, got {tuple(b.shape)}")
        for name, t in (("a", a), ("b", b)):
            if t is not None and (t.dtype != W.dtype or t.device != W.device):
                raise ValueError(f"Params.{name}: must match W's dtype and device ({W.dtype}, {W.device})")

    @property
    def R(self) -> int:
        return self.W.shape[0]

    @property
    def m(self) -> int:
        return self.W.shape[1]

    @property
    def d(self) -> int:
        return self.W.shape[2]

    @property
    def bias(self) -> bool:
        return self.b is not None

    def effective_W(self) -> torch.Tensor:
        """``W~`` (R, m, D): ``W`` itself, or ``(W, b)`` for the bias network."""
        return self.W if self.b is None else torch.cat([self.W, self.b[..., None]], dim=2)

    @staticmethod
    def from_effective(W_eff: torch.Tensor, a: torch.Tensor, bias: bool) -> "Params":
        if not bias:
            return Params(W=W_eff, a=a)
        return Params(W=W_eff[..., :-1].contiguous(), a=a, b=W_eff[..., -1].contiguous())

    def select(self, index: Sequence[int] | torch.Tensor) -> "Params":
        idx = torch.as_tensor(index, dtype=torch.long, device=self.W.device)
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return Params(W=pick(self.W), a=pick(self.a), b=pick(self.b))


def replica_seeds(seeds: int | Sequence[int], R: int) -> list[int]:
    """One seed per replica.

    Args:
        seeds: ``R`` seeds, or one int ``seed``.
        R: the number of replicas.

    Returns:
        The sequence as given, or ``seed, seed+1, ..., seed+R-1``.
    """
    if isinstance(seeds, int):
        return [seeds + j for j in range(R)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != R:
        raise ValueError(f"seeds: expected {R} seeds (one per replica), got {len(seeds)}")
    return seeds


def init_params(R: int, m: int, d: int, *, bias: bool = False, seeds: int | Sequence[int] = 0,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Params:
    """MATH.md's initialisation: ``w_r ~ N(0, I_d)``, ``a_r = +-1/sqrt(m)``, ``b_r ~ N(0, 1)``.

    Replica ``j`` is drawn (in float64 on the CPU, then cast) from its own generator
    seeded with ``seeds[j]``, in the order W, a, b: the same seed gives the same replica
    alone or in a batch, and the bias and no-bias networks share ``W`` and ``a``.

    Args:
        R, m, d: replicas, width, input dimension.
        bias: draw the biases ``b`` too.
        seeds: one seed per replica, or the first of ``R`` consecutive ones.
        dtype, device: of the returned tensors.

    Returns:
        ``Params`` with ``W`` (R, m, d), ``a`` (R, m) and ``b`` (R, m) or None.
    """
    if R < 1 or m < 1 or d < 1:
        raise ValueError(f"init_params: need R, m, d >= 1, got R={R}, m={m}, d={d}")
    Ws, As, Bs = [], [], []
    for s in replica_seeds(seeds, R):
        gen = torch.Generator().manual_seed(s)
        Ws.append(torch.randn(m, d, generator=gen, dtype=torch.float64))
        As.append((torch.randint(0, 2, (m,), generator=gen).double() * 2 - 1) / math.sqrt(m))
        if bias:
            Bs.append(torch.randn(m, generator=gen, dtype=torch.float64))
    conv = lambda ts: torch.stack(ts).to(dtype=dtype, device=device)  # noqa: E731
    return Params(W=conv(Ws), a=conv(As), b=conv(Bs) if bias else None)


class Output(NamedTuple):
    f: torch.Tensor  # (R, n) values
    F: torch.Tensor  # (R, n, k) directional derivatives V_i^T grad_x f


def check_compatible(params: Params, problem: Problem) -> None:
    """Raises ``ValueError`` (one line) unless ``params`` and ``problem`` share the network
    variant, the input dimension, the dtype and the device."""
    if params.bias != problem.bias:
        raise ValueError(f"params.bias={params.bias} but problem.bias={problem.bias}: use matching variants")
    if params.d != problem.d:
        raise ValueError(f"params.d={params.d} but problem.d={problem.d}")
    if params.W.dtype != problem.dtype or params.W.device != problem.device:
        raise ValueError(f"params ({params.W.dtype}, {params.W.device}) and problem ({problem.dtype}, "
                         f"{problem.device}) must share dtype and device")


def _effective_forward(W: torch.Tensor, a: torch.Tensor, X: torch.Tensor, V: torch.Tensor):
    """Values ``f`` (R, n), effective derivatives ``V~^T grad f`` (R, n, k) and the
    signed activation ``a_r 1{w_r^T x_i > 0}`` (R, m, n)."""
    Z = W @ X.T  # (R, m, n)
    Aa = (Z > 0).to(W.dtype) * a[..., None]
    f = (Aa * Z).sum(1)
    G = Aa.transpose(1, 2) @ W  # (R, n, D): input gradients
    F = torch.einsum("rnD,nDk->rnk", G, V)
    return f, F, Aa


def forward(params: Params, problem: Problem) -> Output:
    """``f(W, x_i)`` and ``F(W, x_i) = V_i^T grad_x f(W, x_i)`` for every replica.

    For the bias network these are ``g`` and ``V_i^T grad_x g`` (the true network's
    derivatives, not divided by alpha).

    Args:
        params: ``W`` (R, m, d), ``a`` (R, m), ``b`` (R, m) or None.
        problem: ``x`` (n, d), ``V`` (n, d, k), of the same variant, dtype and device.

    Returns:
        ``Output(f, F)``: values ``f`` (R, n) and directional derivatives ``F`` (R, n, k).
    """
    check_compatible(params, problem)
    X, V, _, _, alpha = effective_data(problem)
    f, F, _ = _effective_forward(params.effective_W(), params.a, X, V)
    return Output(f, F * alpha)


class LossGrad(NamedTuple):
    loss: torch.Tensor  # (R,)
    grad_W: torch.Tensor  # (R, m, d)
    grad_b: torch.Tensor | None  # (R, m) or None


def loss_and_grad(params: Params, problem: Problem) -> LossGrad:
    """The directional Sobolev loss (per replica) and its exact gradient
    ``dL/dw_r = a_r sum_i 1{w_r^T x_i > 0} [(f_i - y_i) x_i + V_i (F_i - h_i)]``
    (on augmented data for the bias network, whose derivative residual is divided by alpha).

    The readable reference of the training step (``sobolev.step.Workspace``, tested equal).

    Args:
        params: ``W`` (R, m, d), ``a`` (R, m), ``b`` (R, m) or None.
        problem: ``x`` (n, d), ``V`` (n, d, k), ``y`` (n,), ``h`` (n, k), of the same variant,
            dtype and device.

    Returns:
        ``LossGrad(loss, grad_W, grad_b)``: the loss (R,) ``1/2 ||f - y||^2 + 1/2 ||F - h||^2``, its
        gradient in ``W`` (R, m, d), and in ``b`` (R, m) for the bias network (else None).
    """
    check_compatible(params, problem)
    X, V, y, h, _ = effective_data(problem)
    f, F, Aa = _effective_forward(params.effective_W(), params.a, X, V)
    e, dF = f - y, F - h
    loss = 0.5 * (e.pow(2).sum(1) + dF.pow(2).sum((1, 2)))
    u = e[..., None] * X + torch.einsum("nDk,rnk->rnD", V, dF)
    grad = Aa @ u  # (R, m, D)
    if params.b is None:
        return LossGrad(loss, grad, None)
    return LossGrad(loss, grad[..., :-1], grad[..., -1])
