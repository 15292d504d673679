"""Gradient flow on the directional Sobolev loss, as gradient descent over R replicas at once.

The hot loop runs three GEMMs per step (pre-activations, input gradients, weight
gradient) and a few O(R n k d) operations on preallocated buffers, with no
host-device synchronisation: per-step losses go to a device buffer and per-step
pattern flips to a device counter, both read every ``check_every`` steps, where the
stopping rules and the per-step diagnostics (bound violation, interval extremes of
the loss) are applied. Diagnostics that build ``H`` (O(n^2 k^2 m)) run only at
log-spaced checkpoints and at each replica's stop. Nothing of size O(m) is copied
while training (``sobolev.memory`` counts what is allocated).

Modes (``PatternRule``): ``relu`` is the true dynamics; ``frozen`` keeps the activation
patterns of t = 0 (the linearised, NTK model), whose residual follows
``(I - eta H(0))^s r(0)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from . import kernels
from .network import Params, _check
from .ntk import expand_kernel
from .ntk import lambda_star as _lambda_star
from .problem import Problem, effective_data

Mode = Literal["relu", "frozen"]
TimeUnit = Literal["lambda_star", "absolute"]
DType = Literal["float32", "float64"]
MODES: tuple[str, ...] = typing.get_args(Mode)
STATUSES = ("converged", "budget", "diverged")


def _setting(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training call: the single definition of each setting, its type and
    its default (``train_config_fields`` lists them). Integers must be >= 1, floats positive
    and finite, choices one of their ``Literal`` values."""

    mode: Mode = _setting("relu", "activation patterns: 'relu' recomputes them every step (the true "
                                  "dynamics), 'frozen' keeps those of t = 0 (the linearised NTK model)")
    eps: float = _setting(1e-6, "a replica converges (and stops) at relative loss L(t)/L(0) <= eps")
    t_max: float = _setting(12.0, "flow-time budget, in units of t_unit")
    t_unit: TimeUnit = _setting("lambda_star", "unit of t_max: 'lambda_star' (1/lambda_*, comparable across "
                                               "instances) or 'absolute' flow time")
    max_steps: int = _setting(100_000, "step budget per replica")
    step_factor: float = _setting(1.0, "step size eta = step_factor / lambda_max(H(t)), refreshed at checkpoints")
    check_every: int = _setting(16, "steps between host reads of the device buffers (stopping rules); "
                                    "changes only the net flip counts, no trajectory")
    checkpoints_per_decade: int = _setting(8, "log-spaced checkpoints (rows of the curves) per decade of steps")
    divergence_factor: float = _setting(1e6, "a replica diverges (and stops) at loss > divergence_factor * L(0)")
    dtype: DType = _setting("float32", "working dtype: train casts the problem and the weights to it")

    def __post_init__(self) -> None:
        for name, (kind, _, _) in train_config_fields().items():
            object.__setattr__(self, name, _validated(name, kind, getattr(self, name)))
        if self.eps >= 1:
            raise ValueError(f"TrainConfig.eps={self.eps!r}: a relative loss tolerance must be < 1")
        if self.divergence_factor <= 1:
            raise ValueError(f"TrainConfig.divergence_factor={self.divergence_factor!r}: must be > 1")

    def flow_time_budget(self, lambda_star: float) -> float:
        return self.t_max / lambda_star if self.t_unit == "lambda_star" else self.t_max

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@functools.cache
def _config_fields() -> tuple[tuple[str, tuple[object, object, str]], ...]:
    hints = typing.get_type_hints(TrainConfig)
    return tuple((f.name, (hints[f.name], f.default, f.metadata["doc"])) for f in dataclasses.fields(TrainConfig))


def train_config_fields() -> dict[str, tuple[object, object, str]]:
    """``name -> (type, default, doc)`` of every ``TrainConfig`` setting, in declaration order;
    the type is ``int``, ``float`` or a ``typing.Literal`` of the allowed strings."""
    return dict(_config_fields())


def _validated(name: str, kind, value):
    """``value`` checked against the setting's type (ints as int, floats as float)."""
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise ValueError(f"TrainConfig.{name}={value!r}: expected one of {typing.get_args(kind)}")
        return value
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if kind is int:
        if not (number and float(value).is_integer() and value >= 1):
            raise ValueError(f"TrainConfig.{name}={value!r}: must be an integer >= 1")
        return int(value)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"TrainConfig.{name}={value!r}: must be a positive finite number")
    return float(value)


def checkpoint_steps(max_steps: int, per_decade: int) -> np.ndarray:
    """Log-spaced steps ``0, 1, 2, ...`` (``round(10^(i/per_decade))``) up to ``max_steps``.

    The grid does not depend on ``max_steps`` beyond the cut, so the step-size refreshes
    (made at checkpoints) and hence the trajectory do not either. Each replica also
    gets a checkpoint at its own stop."""
    i = np.arange(int(math.ceil(math.log10(max(max_steps, 1)) * per_decade)) + 1)
    grid = np.unique(np.round(10.0 ** (i / per_decade)).astype(np.int64))
    return np.concatenate([[0], grid[grid <= max_steps]])


# One place for the output columns and their Python types (the pipeline's Parquet schema).
# Counts of pattern flips: "gross" sums the bits that changed between consecutive steps
# (every step); "net" counts the bits that differ between the patterns of consecutive
# checks (every check_every steps; back-and-forth flips within a check cancel; the patterns
# compared are those the last step before each check started from, as first recorded).
SUMMARY_FIELDS: dict[str, type] = {
    "status": str, "stopped_by": str, "steps": int, "t": float, "steps_to_eps": int, "t_to_eps": float,
    "final_rel_loss": float, "min_rel_loss": float, "value_rel_final": float, "deriv_rel_final": float,
    "loss0": float, "r0_sq": float, "decay_rate": float, "rate_ratio": float, "lambda_min_H0": float,
    "lambda_max_H0": float, "min_lambda_ratio": float, "max_weight_move": float, "flip_fraction": float,
    "max_H_drift": float, "bound_held": bool, "lambda_held": bool, "regime_held": bool,
    "bound_violation_step": int, "bound_violation_t": float, "flips_gross_total": int, "flips_net_total": int,
    "jump_norm_total": float, "lin_dist_final": float,
}
CURVE_FIELDS: dict[str, type] = {
    "replica": int, "step": int, "t": float, "eta": float, "loss": float, "rel_loss": float,
    "rel_loss_interval_max": float, "rel_loss_interval_min": float, "e_sq": float, "S_sq": float,
    "value_rel": float, "deriv_rel": float, "value_rel_interval_max": float, "deriv_rel_interval_max": float, "lambda_min": float, "lambda_max": float, "H_drift": float,
    "max_weight_move": float, "flip_fraction": float, "bound": float, "bound_held": bool, "lin_dist": float,
    "flips_gross": int, "flips_net": int, "jump_norm": float,
}
_NUMPY_TYPE = {int: np.int64, float: np.float64, bool: np.bool_, str: str}


@dataclass(frozen=True, eq=False)
class TrainResult:
    """``summary``: one array (R,) per ``SUMMARY_FIELDS`` entry. ``curves``: long format, one
    row per (replica, checkpoint), ``CURVE_FIELDS``; column ``replica`` indexes the batch.
    ``params``: final weights, in the config's dtype."""

    summary: dict[str, np.ndarray]
    curves: dict[str, np.ndarray]
    params: Params
    lambda_star: float
    config: TrainConfig = field(repr=False)


def bound_tolerance(dtype: torch.dtype) -> float:
    """Relative slack of the check ``||r||^2 <= exp(-lambda_* t) ||r(0)||^2``: the loss is a sum
    of n(k+1) rounded squares (float32: about 1e-7 relative each, summed pairwise), so 1e-5
    (about 100 ulps) in float32 and 1e-12 in float64 separate a violation from rounding."""
    return 1e-12 if dtype == torch.float64 else 1e-5


# ---------------------------------------------------------------------------------------
# State


def _where(mask: np.ndarray | None, x: np.ndarray, fill: float) -> np.ndarray:
    """``x`` where ``mask``, else ``fill``; ``mask`` None: all of ``x`` (bit for bit what an
    all-true mask gives, without the pass)."""
    return x if mask is None else np.where(mask, x, fill)


def _move_rows(state, holes: np.ndarray, movers: np.ndarray, n_keep: int, names: tuple[str, ...]) -> None:
    """Drops rows of the tensors ``names`` of ``state``: the rows ``movers`` (from the end) go
    into ``holes``, then every tensor is cut to ``n_keep`` rows; no copy of the batch."""
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
        _move_rows(self, holes, movers, n_keep, tuple(f.name for f in dataclasses.fields(self)))


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
        _move_rows(self, holes, movers, n_keep, tuple(f.name for f in dataclasses.fields(self)))


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


def signed_pattern(W: torch.Tensor, a: torch.Tensor, XT: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a_r 1{w_r^T x_i > 0}`` (R, m, n) for contiguous ``W``, written into ``out``: one GEMM
    over all replicas' rows at once, then two in-place passes."""
    torch.mm(W.view(-1, W.shape[2]), XT, out=out.view(-1, XT.shape[1]))
    return out.gt_(0).mul_(a[..., None])


# ---------------------------------------------------------------------------------------
# Activation-pattern rules: what the step uses as a_r 1{w_r^T x_i > 0}


class PatternRule:
    """The signed activation pattern the step uses, and the flips it makes.

    ``current`` holds the pattern of the current weights (its transpose ``current_T``);
    ``advance`` is called after every weight update, on the device, and adds the bits that
    changed to the per-replica counter ``flips_gross``. A new mode is a subclass (constructed
    from the weights, ``a``, the pattern of t = 0 and the data), an entry of ``PATTERN_RULES``
    and a value of ``Mode``."""

    moves = True  # the pattern (hence H(t)) changes with the weights
    current: torch.Tensor
    current_T: torch.Tensor
    flips_gross: torch.Tensor  # (Ra,) float64 (exact integers), cumulative

    def advance(self, keep: bool = False) -> None:
        """After a weight update; ``keep``: the previous pattern is still needed (a check follows)."""
        raise NotImplementedError

    def net_since_check(self, W: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Bits that differ from the last check's pattern, and the jump they put into the
        derivative residual ``||V^T (A_now - A_then)^T W||``; the pattern becomes the snapshot."""
        raise NotImplementedError

    def flipped_from_start(self, start: StartState, a: torch.Tensor) -> torch.Tensor:
        """Bits (R,) float64 that differ from the pattern of t = 0."""
        raise NotImplementedError

    def drop(self, holes, movers, n_keep) -> None:
        raise NotImplementedError

    def bind(self, W: torch.Tensor, a: torch.Tensor) -> None:
        """Called when the batch's rows change (replicas dropped)."""
        self.current_T = self.current.transpose(1, 2)


class FrozenPatterns(PatternRule):
    """The patterns of t = 0 throughout: nothing flips."""

    moves = False

    def __init__(self, W: torch.Tensor, a: torch.Tensor, Aa0: torch.Tensor, data: Data):
        self.current, self.current_T = Aa0, Aa0.transpose(1, 2)
        self.flips_gross = torch.zeros(len(Aa0), dtype=torch.float64, device=Aa0.device)

    def advance(self, keep: bool = False) -> None:
        pass

    def net_since_check(self, W):
        zeros = np.zeros(len(self.current))
        return zeros.astype(np.int64), zeros

    def flipped_from_start(self, start, a):
        return torch.zeros(len(self.current), dtype=torch.float64, device=self.current.device)

    def drop(self, holes, movers, n_keep) -> None:
        _move_rows(self, holes, movers, n_keep, ("current", "flips_gross"))
        self.current_T = self.current.transpose(1, 2)


class ReluPatterns(PatternRule):
    """The pattern of the current weights, recomputed after every step (the true dynamics).

    Two pattern buffers trade places every step, and the bits that changed are counted per
    replica (exact integers). On the CPU that is one fused pass (``sobolev.kernels``) that
    compares with the previous pattern's bits, packed 32 to a word, and adds to the counter
    itself; the patterns of the last check (net flips) and of t = 0 are kept as words too,
    and the third pattern buffer holds a check's net change; elsewhere the eager ops, where the previous pattern is overwritten in place by the indicator of the
    changed bits (a float sum of 0/1 is exact below 2^24), except on the last step before a
    check, when the net count still reads it and the indicator goes to a bool buffer, and the
    snapshot is a third pattern buffer."""

    def __init__(self, W: torch.Tensor, a: torch.Tensor, Aa0: torch.Tensor, data: Data):
        self.XT, self.V_rows = data.XT, data.XVT[:, 1:].contiguous()
        self.current, self.spare = Aa0, torch.empty_like(Aa0)
        self.fused = kernels.fused_available(Aa0.device)
        R, m, n = Aa0.shape
        if self.fused:
            # the bits of the current pattern, of the last check's and of t = 0, 32 to a word
            self.words = kernels.pattern_words(Aa0)
            self.snapshot_words, self.start_words = self.words.clone(), self.words.clone()
            self.dA = torch.zeros_like(Aa0)  # the net change of a check; zero between checks
        else:
            self.snapshot = Aa0.clone()
            self.changed = torch.empty(Aa0.shape, dtype=torch.bool, device=Aa0.device)
            # a float sum of 0/1 counts exactly while the count fits the mantissa
            self.in_place = Aa0.dtype == torch.float64 or m * n <= 2**24
            self.step_flips = torch.zeros(R, dtype=Aa0.dtype, device=Aa0.device)
            self.step_flips_kept = torch.zeros(R, dtype=torch.int64, device=Aa0.device)
        self.flips_gross = torch.zeros(R, dtype=torch.float64, device=Aa0.device)
        self.bind(W, a)

    def bind(self, W: torch.Tensor, a: torch.Tensor) -> None:
        # views made once, not per step: the pattern GEMM over all replicas' rows
        self.W2, self.a3 = W.view(-1, W.shape[2]), a[..., None]
        self.current_T = self.current.transpose(1, 2)
        if self.fused:
            self.kernel = kernels.FusedPattern((self.current, self.spare), a, self.words, self.flips_gross,
                                               self.snapshot_words, self.dA)

    def advance(self, keep: bool = False) -> None:
        previous, new = self.current, self.spare
        torch.mm(self.W2, self.XT, out=new.view(-1, new.shape[2]))
        if self.fused:
            self.kernel(new, keep)
        else:
            new.gt_(0).mul_(self.a3)  # a_r != 0: the signed patterns differ exactly where the bits do
            if keep or not self.in_place:
                torch.sum(torch.ne(previous, new, out=self.changed), (1, 2), out=self.step_flips_kept)
                self.flips_gross.add_(self.step_flips_kept)
            else:
                torch.sum(previous.ne_(new), (1, 2), out=self.step_flips)
                self.flips_gross.add_(self.step_flips)
        self.current, self.spare = new, previous
        self.current_T = new.transpose(1, 2)

    def net_since_check(self, W):
        # the net count compares the pattern of the interval's last step start, P(W_{s-1}),
        # with the previous check's: kept as it was recorded (the trajectory fixture)
        if self.fused:  # from the words: dA is non-zero at the few changed bits only
            flips, dA = self.kernel.net_change(), self.dA
        else:
            last_used = self.spare
            dA = torch.sub(last_used, self.snapshot, out=self.snapshot)
        dG = dA.transpose(1, 2) @ W  # (R, n, D)
        jump = torch.bmm(self.V_rows, dG.permute(1, 2, 0)).double().pow(2).sum((0, 1)).sqrt()  # V_i^T dG_i
        if self.fused:
            self.kernel.clear()
        else:
            flips = torch.ne(dA, 0, out=dA).sum(1).double().sum(1).cpu().numpy().astype(np.int64)  # <= m a point
            self.snapshot, self.spare = last_used, dA
        return flips, jump.cpu().numpy()

    def flipped_from_start(self, start, a):
        if self.fused:
            return torch.from_numpy(self.kernel.differ(self.start_words)).double()
        Aa0 = signed_pattern(start.W0, a, self.XT, self.spare)  # the spare is free between steps
        return torch.ne(self.current, Aa0, out=Aa0).sum(1).double().sum(1)  # counts <= m per point: exact

    def drop(self, holes, movers, n_keep) -> None:
        if self.fused:
            names = ("current", "flips_gross", "words", "snapshot_words", "start_words")
            _move_rows(self, holes, movers, n_keep, names)
            self.dA = self.dA[:n_keep]
        else:
            _move_rows(self, holes, movers, n_keep, ("current", "snapshot", "flips_gross"))
            self.changed = self.changed[:n_keep]
            self.step_flips, self.step_flips_kept = self.step_flips[:n_keep], self.step_flips_kept[:n_keep]
        self.spare = self.spare[:n_keep]


PATTERN_RULES: dict[str, type[PatternRule]] = {"relu": ReluPatterns, "frozen": FrozenPatterns}  # keys: Mode


# ---------------------------------------------------------------------------------------
# The hot loop


class Workspace:
    """Preallocated buffers of the hot loop for ``Ra`` active replicas.

    Per step: the input gradients ``G_i = grad_x f(x_i)`` (R, n, D) (one GEMM), then per
    point ``(f_i, F_i) = G_i^T (x_i, V_i)`` and back ``u_i = (x_i, V_i) (e_i, dF_i)`` as GEMMs
    batched over the n points, the weight gradient ``Aa u`` fused into the update (one GEMM),
    and the pattern rule's update of the activation pattern (one GEMM in relu mode). The
    per-point products are laid out (n, k+1, R), the orientation in which these small GEMMs
    run at full speed.
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

    def run(self, state: LoopState, pattern: PatternRule, eta: torch.Tensor, n_steps: int) -> torch.Tensor:
        """``n_steps`` gradient steps of the live replicas; returns their losses (Ra, n_steps)
        at the weights each step started from. Their parts ``1/2 ||e||^2`` and ``1/2 ||S||^2``
        are then in ``parts[:, :n_steps]`` (2, n_steps, Ra)."""
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
        for j in range(n_steps):
            torch.bmm(pattern.current_T, W, out=G)  # G_i = grad_x f(x_i)
            torch.bmm(XVT, GT, out=res).sub_(yh)  # (f_i - y_i, F_i - h_i): the gradient's sign
            loss = torch.sum(torch.addcmul(self.zero, res, res, value=0.5, out=half_sq[j]), (0, 1), out=losses[j])
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


# ---------------------------------------------------------------------------------------
# The training run


def train(params: Params, problem: Problem, config: TrainConfig = TrainConfig(), *,
          lambda_star: float | None = None) -> TrainResult:
    """Gradient descent from ``params`` on ``problem`` until each replica converges
    (relative loss <= eps), exhausts its budget (flow time or steps) or diverges.

    Runs in ``config.dtype``: the problem and the weights are cast to it (``.to``) when they
    differ (a problem only down: ``Problem.to`` refuses to raise its precision), and the
    result's weights are in it. ``lambda_star`` (default: computed from the
    cast problem) sets the time unit and the bound."""
    dtype = config.torch_dtype
    if problem.dtype != dtype:
        problem = problem.to(dtype=dtype)
    if params.W.dtype != dtype:
        params = Params(*(None if v is None else v.to(dtype) for v in (params.W, params.a, params.b)))
    _check(params, problem)
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
        self.pattern = PATTERN_RULES[cfg.mode](W, a, Aa0, data)
        self.host = HostState.start(r0_sq, e0.double().pow(2).sum(1).cpu().numpy(),
                                    S0.double().pow(2).sum((1, 2)).cpu().numpy(), cfg.step_factor / self.lam0[:, -1])
        self.stops = Stops.empty(self.host)
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
            flip_fraction=row["flip_fraction"] / (m * n))
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
        with _lapack_threads():
            ev = torch.linalg.eigvalsh(expand_kernel(s, X, V).double())
        drift = expand_kernel(s - start.s0[ix], X, V).double().pow(2).sum((1, 2)).sqrt()
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
                    H_drift=host(drift), max_weight_move=host(move), flip_fraction=host(flipped),
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
        self.ws = Workspace(n_keep, self.data)
        self.eta = None

    def result(self, a: torch.Tensor, bias: bool) -> TrainResult:
        curves = {f: np.concatenate([row[f] for row in self.rows]).astype(_NUMPY_TYPE[kind])
                  for f, kind in CURVE_FIELDS.items()}
        order = np.lexsort((curves["step"], curves["replica"]))
        curves = {f: v[order] for f, v in curves.items()}
        summary = _summarise(curves, self.stops, self.lam0, self.lam_star)
        return TrainResult(summary=summary, curves=curves, params=Params.from_effective(self.out_W, a, bias),
                           lambda_star=self.lam_star, config=self.cfg)


def _summarise(curves: dict[str, np.ndarray], stops: Stops, lam0: np.ndarray, lam_star: float) -> dict[str, np.ndarray]:
    rep, R = curves["replica"], len(lam0)
    last = np.r_[np.flatnonzero(np.diff(rep)), len(rep) - 1]  # final checkpoint of each replica
    per = lambda f, red: np.array([red(curves[f][rep == j]) for j in range(R)])  # noqa: E731
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
    return {f: np.asarray(values[f]).astype(_NUMPY_TYPE[kind]) for f, kind in SUMMARY_FIELDS.items()}


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
