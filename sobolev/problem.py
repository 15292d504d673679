"""Problem instances: unit inputs, direction frames, targets, measured separation.

Everything the networks see goes through :func:`effective_data`, which maps the
bias network onto the no-bias network on augmented data (MATH.md, "Network with
bias"): ``x~ = (alpha x, beta)``, ``V~ = [V; 0]``, targets ``(y, h / alpha)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

TARGETS = ("random", "teacher")


def alpha_beta(k: int) -> tuple[float, float]:
    """The bias network's input scales: ``alpha = 1/(2k)``, ``beta = sqrt(1 - alpha^2)``.

    For k = 0 (values only, no derivative residual to rescale) ``alpha = 1/2`` as for k = 1:
    the paper's choice keeps ``k alpha <= 1/2``, which any alpha satisfies at k = 0, and 1/2
    keeps the augmented inputs' geometry continuous in k.

    Args:
        k: directions per point.

    Returns:
        ``(alpha, beta)``.
    """
    alpha = 1.0 / (2 * max(k, 1))
    return alpha, math.sqrt(1.0 - alpha * alpha)


def _unit_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


@dataclass(frozen=True, eq=False)
class Problem:
    """Data of one instance: ``x`` (n, d) unit rows, ``V`` (n, d, k) orthonormal
    frames, targets ``y`` (n,) and ``h`` (n, k); ``bias`` selects the network variant.
    ``k = 0`` (``V`` (n, d, 0), ``h`` (n, 0)) is plain L2 training of the values.

    Built by :func:`make_problem` or directly from user tensors (validated here).
    """

    x: torch.Tensor
    V: torch.Tensor
    y: torch.Tensor
    h: torch.Tensor
    bias: bool = False

    def __post_init__(self) -> None:
        x, V, y, h = self.x, self.V, self.y, self.h
        if not all(isinstance(t, torch.Tensor) for t in (x, V, y, h)):
            raise TypeError("Problem: x, V, y, h must be torch tensors")
        if x.ndim != 2:
            raise ValueError(f"Problem.x: expected shape (n, d), got {tuple(x.shape)}")
        n, d = x.shape
        if n < 2:
            raise ValueError(f"Problem.x: need at least n=2 points, got n={n}")
        if V.ndim != 3 or V.shape[:2] != (n, d):
            raise ValueError(f"Problem.V: expected shape (n, d, k) = ({n}, {d}, k), got {tuple(V.shape)}")
        k = V.shape[2]
        if not 0 <= k < d:
            raise ValueError(f"Problem.V: need 0 <= k < d, got k={k}, d={d}")
        if y.shape != (n,):
            raise ValueError(f"Problem.y: expected shape ({n},), got {tuple(y.shape)}")
        if h.shape != (n, k):
            raise ValueError(f"Problem.h: expected shape ({n}, {k}), got {tuple(h.shape)}")
        if not x.is_floating_point() or any(t.dtype != x.dtype for t in (V, y, h)):
            raise ValueError("Problem: x, V, y, h must share one floating dtype")
        if any(t.device != x.device for t in (V, y, h)):
            raise ValueError("Problem: x, V, y, h must be on one device")
        tol = _unit_tol(x.dtype)
        norm_err = (x.double().norm(dim=1) - 1).abs().max().item()
        if norm_err > tol:
            raise ValueError(f"Problem.x: rows must have unit norm (max deviation {norm_err:.2e} > {tol:.0e}); normalise x")
        Vd = V.double()
        eye = torch.eye(k, dtype=torch.float64, device=V.device)
        gram_err = (Vd.transpose(1, 2) @ Vd - eye).abs().amax().item() if k else 0.0
        if gram_err > tol * 10:
            raise ValueError(f"Problem.V: frames V_i must have orthonormal columns (max |V^T V - I| = {gram_err:.2e}); orthonormalise them (e.g. torch.linalg.qr)")
        for name, t in (("x", x), ("V", V), ("y", y), ("h", h)):
            if not torch.isfinite(t).all():
                raise ValueError(f"Problem.{name}: contains non-finite values")

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def d(self) -> int:
        return self.x.shape[1]

    @property
    def k(self) -> int:
        return self.V.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def delta_1(self) -> float:
        """Measured separation: Assumption 1 (no bias) or Assumption 2 (bias)."""
        return separation(self.x, bias=self.bias)

    @property
    def delta_2(self) -> float:
        """``max_{i,j} |v_ij^T x_i|``."""
        if self.k == 0:
            return 0.0
        return torch.einsum("nd,ndk->nk", self.x.double(), self.V.double()).abs().max().item()

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Problem":
        """The same problem in ``dtype`` on ``device``. A problem made in a lower precision than
        ``dtype`` is refused: its unit norms hold only to that precision."""
        if dtype is not None and torch.finfo(dtype).eps < torch.finfo(self.dtype).eps:
            raise ValueError(f"Problem.to: the problem is {self.dtype} and {dtype} is asked for: its unit norms and "
                             f"frames hold only to {self.dtype}; make it in {dtype} (make_problem(..., dtype={dtype}))")
        conv = lambda t: t.to(dtype=dtype or t.dtype, device=device or t.device)  # noqa: E731
        return Problem(x=conv(self.x), V=conv(self.V), y=conv(self.y), h=conv(self.h), bias=self.bias)


class EffectiveData(NamedTuple):
    """The no-bias view of a problem: ``X`` (n, D), ``V`` (n, D, k), targets ``y`` (n,),
    ``h`` (n, k), and ``alpha`` (the derivative scale; 1 without bias)."""

    X: torch.Tensor
    V: torch.Tensor
    y: torch.Tensor
    h: torch.Tensor
    alpha: float


def effective_data(problem: Problem) -> EffectiveData:
    """The no-bias view of ``problem``, which the networks and kernels compute on.

    Args:
        problem: the instance, ``x`` (n, d), ``V`` (n, d, k), ``y`` (n,), ``h`` (n, k).

    Returns:
        ``EffectiveData``: ``X`` (n, D), ``V`` (n, D, k), ``y`` (n,), ``h`` (n, k), ``alpha``;
        ``D = d`` and the problem's own tensors without bias, ``D = d + 1``,
        ``X = (alpha x, beta)``, ``V = [V; 0]`` and ``h / alpha`` with bias.
    """
    if not problem.bias:
        return EffectiveData(problem.x, problem.V, problem.y, problem.h, 1.0)
    alpha, beta = alpha_beta(problem.k)
    x, V = problem.x, problem.V
    X = torch.cat([alpha * x, torch.full_like(x[:, :1], beta)], dim=1)
    Vt = torch.cat([V, torch.zeros_like(V[:, :1, :])], dim=1)
    return EffectiveData(X, Vt, problem.y, problem.h / alpha, alpha)


def separation(x: torch.Tensor, *, bias: bool) -> float:
    """The separation of unit points.

    Args:
        x: unit rows (n, d).
        bias: ``True``: Assumption 2 (plain distances); ``False``: Assumption 1 (distances to
            ``+-x_j``).

    Returns:
        ``min_{i != j} ||x_i - x_j||``, and with ``bias=False`` also over ``||x_i + x_j||``.
    """
    x = x.double()
    n = x.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    dist = torch.cdist(x, x)[off]
    if not bias:
        dist = torch.minimum(dist, torch.cdist(x, -x)[off])
    return dist.min().item()


def max_separation(n: int, d: int, *, bias: bool) -> float:
    """An upper bound on the separation ``n`` unit points in ``R^d`` can have.

    With bias (plain distances): the regular simplex, ``sqrt(2n/(n-1))``, optimal for
    ``n <= d+1``; Rankin's bound ``sqrt(2)`` beyond. Without bias (distances to
    ``+-x_j``): lines, so at most ``sqrt(2)`` (orthonormal points, ``n <= d``) and the
    Welch bound ``max |x_i^T x_j| >= sqrt((n-d)/(d(n-1)))`` beyond.

    Args:
        n, d: points and dimension.
        bias: which separation (see :func:`separation`).

    Returns:
        The bound.
    """
    if bias:
        return math.sqrt(2 * n / (n - 1)) if n <= d + 1 else math.sqrt(2.0)
    if n <= d:
        return math.sqrt(2.0)
    c = math.sqrt((n - d) / (d * (n - 1)))
    return math.sqrt(2 - 2 * c)


def _random_unit(num: int, d: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(num, d, generator=gen, dtype=torch.float64)
    return z / z.norm(dim=1, keepdim=True)


PLACEMENT_CANDIDATES, PLACEMENT_TRIES = 1024, 12  # random candidates per try, tries per point


def cap_share_bound(delta: float, d: int) -> float:
    """An upper bound on the share of the unit sphere in ``R^d`` within distance ``delta`` of a point.

    The cap of angle ``theta = 2 asin(delta/2)`` has share ``int_0^theta sin^(d-2) / int_0^pi
    sin^(d-2)``; for ``theta <= pi/2`` the integrand is at most ``sin^(d-2)(theta)``, and the
    denominator is ``sqrt(pi) Gamma((d-1)/2) / Gamma(d/2)``.

    Args:
        delta: the distance (chord), ``<= sqrt(2)`` for a bound below 1.
        d: the dimension, ``>= 2``.

    Returns:
        The bound (1 where ``theta > pi/2``).
    """
    theta = 2 * math.asin(min(delta / 2, 1.0))
    if theta > math.pi / 2 or d < 2:
        return 1.0
    if theta == 0:
        return 0.0
    return min(1.0, math.exp(math.log(theta) + (d - 2) * math.log(math.sin(theta)) + math.lgamma(d / 2)
                             - 0.5 * math.log(math.pi) - math.lgamma((d - 1) / 2)))


def placement_failure_bound(n: int, d: int, delta: float, *, bias: bool) -> float:
    """An upper bound on the probability that :func:`make_problem` finds no placement (raises).

    A candidate is rejected when it lies within ``delta`` of a placed point (or, without bias,
    of its antipode): at most ``(n-1)`` caps (twice that without bias) of :func:`cap_share_bound`.
    A point fails when all its ``PLACEMENT_TRIES * PLACEMENT_CANDIDATES`` candidates are
    rejected; a union bound over the points gives the bound.

    Args:
        n, d: points and dimension.
        delta: the separation.
        bias: which separation (as for :func:`separation`).

    Returns:
        The bound, in [0, 1].
    """
    reject = min(1.0, (n - 1) * (1 if bias else 2) * cap_share_bound(delta, d))
    if reject >= 1.0:
        return 1.0
    if reject == 0.0:
        return 0.0
    return min(1.0, math.exp(math.log(n) + PLACEMENT_TRIES * PLACEMENT_CANDIDATES * math.log(reject)))


def _place_points(n: int, d: int, delta: float, bias: bool, gen: torch.Generator,
                  candidates: int = PLACEMENT_CANDIDATES,
                  tries_per_point: int = PLACEMENT_TRIES) -> torch.Tensor | None:
    """A planted pair at exactly ``delta``, then uniform points kept only when farther
    than ``delta`` from every placed point; ``None`` when the budget runs out."""
    x1 = _random_unit(1, d, gen)[0]
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    u = u - (u @ x1) * x1
    u = u / u.norm()
    theta = 2 * math.asin(delta / 2)
    x2 = math.cos(theta) * x1 + math.sin(theta) * u
    pts = [x1, x2]
    while len(pts) < n:
        P = torch.stack(pts)
        for _ in range(tries_per_point):
            C = _random_unit(candidates, d, gen)
            dist = torch.cdist(C, P)
            if not bias:
                dist = torch.minimum(dist, torch.cdist(C, -P))
            ok = (dist > delta).all(dim=1).nonzero()
            if len(ok):
                pts.append(C[ok[0, 0]])
                break
        else:
            return None
    return torch.stack(pts)


def _frames(x: torch.Tensor, k: int, delta_2: float, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal ``V_i`` (d, k) with ``v_ij^T x_i = +-delta_2`` for every column."""
    n, d = x.shape
    if k == 0:
        return torch.zeros(n, d, 0, dtype=torch.float64)
    Z = torch.randn(n, d, k, generator=gen, dtype=torch.float64)
    Z = Z - x[:, :, None] * torch.einsum("nd,ndk->nk", x, Z)[:, None, :]
    U, _ = torch.linalg.qr(Z)  # orthonormal, orthogonal to x_i
    if delta_2 == 0:
        return U
    signs = torch.randint(0, 2, (n, k), generator=gen).double() * 2 - 1
    t = delta_2 * signs  # V_i^T x_i = t_i, ||t_i||^2 = k delta_2^2 < 1
    tt = t.pow(2).sum(1)
    # M = (I - t t^T)^{1/2} so that V^T V = M^T M + t t^T = I
    M = torch.eye(k, dtype=torch.float64) - ((1 - torch.sqrt(1 - tt)) / tt)[:, None, None] * t[:, :, None] * t[:, None, :]
    return U @ M + x[:, :, None] * t[:, None, :]


def _teacher_targets(x: torch.Tensor, V: torch.Tensor, gen: torch.Generator, width: int = 64):
    """A random wide tanh network ``f*(x) = sum_j c_j tanh(u_j^T x) / sqrt(width)``;
    values and ``V^T grad f*`` in closed form."""
    d = x.shape[1]
    U = torch.randn(width, d, generator=gen, dtype=torch.float64)
    c = torch.randn(width, generator=gen, dtype=torch.float64) / math.sqrt(width)
    z = torch.tanh(x @ U.T)  # (n, width)
    y = z @ c
    grad = ((1 - z * z) * c) @ U  # (n, d)
    h = torch.einsum("nd,ndk->nk", grad, V)
    return y, h


def make_problem(n: int, d: int, k: int, delta: float, *, bias: bool = False, target: str = "random",
                 seed: int = 0, delta_2: float = 0.0, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Problem:
    """A random instance whose measured separation ``delta_1`` equals ``delta``.

    Two points are planted at separation exactly ``delta`` and the others drawn
    uniformly on the sphere, redrawn until every other pair is farther. Frames are
    orthogonal to their point (``delta_2 = 0``) or tilted to ``|v_ij^T x_i| = delta_2``.
    Targets are scaled to unit mean square per entry, so ``gamma`` grows like
    ``sqrt(n)`` for both target kinds. Generated in float64 on the CPU from ``seed``,
    then cast, so the instance does not depend on ``dtype`` or ``device`` beyond rounding.

    Args:
        n, d, k: points, input dimension, directions per point (``0 <= k < d``).
        delta: the separation ``delta_1`` (at most :func:`max_separation`).
        bias: the network variant (and which separation).
        target: ``'random'`` (Gaussian targets) or ``'teacher'`` (a wide tanh network's values
            and derivatives).
        seed: of the instance.
        delta_2: ``|v_ij^T x_i|`` of every frame column (``< 1/k``).
        dtype, device: of the returned tensors.

    Returns:
        ``Problem`` with ``x`` (n, d), ``V`` (n, d, k), ``y`` (n,), ``h`` (n, k).
    """
    if n < 2:
        raise ValueError(f"n={n}: need at least 2 points")
    if k < 0:
        raise ValueError(f"k={k}: need k >= 0 directions (0: plain L2 training of the values)")
    if k >= d:
        raise ValueError(f"k={k}: need k < d={d} (directions orthogonal to the point); raise d or lower k")
    if not delta > 0:
        raise ValueError(f"delta={delta}: the separation must be > 0")
    limit = max_separation(n, d, bias=bias)
    if delta > limit:
        raise ValueError(f"delta={delta}: {n} points in d={d} dimensions allow at most {limit:.6g} "
                         f"({'Assumption 2' if bias else 'Assumption 1, distance to +-x_j'}); lower delta or raise d")
    if not 0 <= delta_2 < (1 / k if k else math.inf):
        raise ValueError(f"delta_2={delta_2}: need 0 <= delta_2 < 1/k = {1 / k:.6g}")
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: expected one of {TARGETS}")
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(3):
        x = _place_points(n, d, delta, bias, gen)
        if x is not None:
            break
    else:
        raise ValueError(f"delta={delta}: could not place {n} points in d={d} dimensions with that separation by "
                         f"random placement (upper bound {limit:.6g}); lower delta or raise d")
    perm = torch.randperm(n, generator=gen)  # the planted pair at random indices
    x = x[perm]
    V = _frames(x, k, delta_2, gen)
    if target == "random":
        y = torch.randn(n, generator=gen, dtype=torch.float64)
        h = torch.randn(n, k, generator=gen, dtype=torch.float64)
    else:
        y, h = _teacher_targets(x, V, gen)
        scale = math.sqrt(n * (k + 1) / (y.pow(2).sum() + h.pow(2).sum()).item())
        y, h = y * scale, h * scale
    conv = lambda t: t.to(dtype=dtype, device=device)  # noqa: E731
    return Problem(x=conv(x), V=conv(V), y=conv(y), h=conv(h), bias=bias)
