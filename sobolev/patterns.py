"""Activation-pattern rules: what the step uses as ``a_r 1{w_r^T x_i > 0}``, and the flips it makes.

``relu`` (:class:`ReluPatterns`) recomputes the pattern after every step (the true dynamics);
``frozen`` (:class:`FrozenPatterns`) keeps the pattern of t = 0 (the linearised, NTK model),
whose residual follows ``(I - eta H(0))^s r(0)``. Both run on every device with eager PyTorch
ops. A faster rule of a mode for some devices (``sobolev.fused``, the CPU's numba route)
comes in front of them through :func:`prefer`; ``sobolev.rules.pattern_rule`` chooses.
"""

from __future__ import annotations

import numpy as np
import torch

from .state import Data, StartState, move_rows


def signed_pattern(W: torch.Tensor, a: torch.Tensor, XT: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The signed activation pattern, one GEMM over all replicas' rows at once, then two
    in-place passes.

    Args:
        W: weights (R, m, D), contiguous.
        a: output weights (R, m).
        XT: the effective inputs, transposed (D, n).
        out: a buffer (R, m, n), contiguous.

    Returns:
        ``out``, holding ``a_r 1{w_r^T x_i > 0}`` (R, m, n).
    """
    torch.mm(W.view(-1, W.shape[2]), XT, out=out.view(-1, XT.shape[1]))
    return out.gt_(0).mul_(a[..., None])


class PatternRule:
    """The signed activation pattern the step uses, and the flips it makes.

    ``current`` holds the pattern of the current weights (its transpose ``current_T``);
    ``advance`` is called after every weight update, on the device, and adds the bits that
    changed to the per-replica counter ``flips_gross``. A new mode is a subclass (constructed
    from the weights, ``a``, the pattern of t = 0 and the data), an entry of ``PATTERN_RULES``
    and a value of ``Mode``."""

    moves = True  # the pattern (hence H(t)) changes with the weights
    # (Ra, n, D): what the last update of the pattern changed grad_x f(x_i) by, at the weights it was
    # made at, (A_new - A_old)^T W; the step reads it to measure what the flips put into ||r||^2
    dG: torch.Tensor
    current: torch.Tensor
    current_T: torch.Tensor
    flips_gross: torch.Tensor  # (Ra,) float64 (exact integers), cumulative

    @classmethod
    def available(cls, device: torch.device) -> bool:
        """Whether the rule runs for tensors on ``device``."""
        return True

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

    def distinct_since_row(self, rows: np.ndarray) -> np.ndarray:
        """For the active rows ``rows``: the pattern bits (neuron, point) that flipped at least once
        since the rows' last call (int64), which starts their count again. Against the gross count of
        the same steps, it tells many bits flipping once from a few flipping back and forth."""
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
        self.dG = W.new_zeros(W.shape[0], Aa0.shape[2], W.shape[2])  # nothing flips

    def advance(self, keep: bool = False) -> None:
        pass

    def net_since_check(self, W):
        zeros = np.zeros(len(self.current))
        return zeros.astype(np.int64), zeros

    def flipped_from_start(self, start, a):
        return torch.zeros(len(self.current), dtype=torch.float64, device=self.current.device)

    def distinct_since_row(self, rows):
        return np.zeros(len(rows), dtype=np.int64)

    def drop(self, holes, movers, n_keep) -> None:
        move_rows(self, holes, movers, n_keep, ("current", "flips_gross", "dG"))
        self.current_T = self.current.transpose(1, 2)


class ReluPatterns(PatternRule):
    """The pattern of the current weights, recomputed after every step (the true dynamics), with
    eager PyTorch ops on any device.

    Two pattern buffers trade places every step, and the bits that changed are counted per
    replica (exact integers): the previous pattern is overwritten in place by the indicator of
    the changed bits (a float sum of 0/1 is exact below 2^24), except on the last step before a
    check, when the net count still reads it and the indicator goes to a bool buffer. The
    pattern of the last check (the net count's snapshot) is a third pattern buffer.

    The GEMM of the pre-activations, the trading of the buffers and the jump of a check are
    those of every relu rule; a subclass (``sobolev.fused``) replaces the pattern update and
    the counts (``_start_counts``, ``_update``, ``net_since_check``, ``flipped_from_start``,
    ``drop``)."""

    def __init__(self, W: torch.Tensor, a: torch.Tensor, Aa0: torch.Tensor, data: Data):
        self.XT, self.V_rows = data.XT, data.XVT[:, 1:].contiguous()
        self.current, self.spare = Aa0, torch.empty_like(Aa0)
        self.dG = W.new_zeros(W.shape[0], Aa0.shape[2], W.shape[2])
        self._start_counts(Aa0)
        self.flips_gross = torch.zeros(len(Aa0), dtype=torch.float64, device=Aa0.device)
        self.bind(W, a)

    def _start_counts(self, Aa0: torch.Tensor) -> None:
        """The state of the flip counts, from the pattern of t = 0 (R, m, n)."""
        R, m, n = Aa0.shape
        self.snapshot = Aa0.clone()
        self.changed = torch.empty(Aa0.shape, dtype=torch.bool, device=Aa0.device)
        # a float sum of 0/1 counts exactly while the count fits the mantissa
        self.in_place = Aa0.dtype == torch.float64 or m * n <= 2**24
        self.step_flips = torch.zeros(R, dtype=Aa0.dtype, device=Aa0.device)
        self.step_flips_kept = torch.zeros(R, dtype=torch.int64, device=Aa0.device)
        self.diff = torch.empty_like(Aa0)  # the signed change of the pattern at a step
        self.seen = torch.zeros(Aa0.shape, dtype=torch.bool, device=Aa0.device)  # bits flipped since the row

    def bind(self, W: torch.Tensor, a: torch.Tensor) -> None:
        # views made once, not per step: the pattern GEMM over all replicas' rows
        self.W, self.W2, self.a3 = W, W.view(-1, W.shape[2]), a[..., None]
        self.current_T = self.current.transpose(1, 2)

    def advance(self, keep: bool = False) -> None:
        previous, new = self.current, self.spare
        torch.mm(self.W2, self.XT, out=new.view(-1, new.shape[2]))
        self._update(previous, new, keep)
        self.current, self.spare = new, previous
        self.current_T = new.transpose(1, 2)

    def _update(self, previous: torch.Tensor, new: torch.Tensor, keep: bool) -> None:
        """``new``: pre-activations (R, m, n) in, the signed pattern out; ``flips_gross`` += the
        bits that differ from ``previous``, which the eager route may overwrite unless ``keep``."""
        new.gt_(0).mul_(self.a3)  # a_r != 0: the signed patterns differ exactly where the bits do
        torch.bmm(torch.sub(new, previous, out=self.diff).transpose(1, 2), self.W, out=self.dG)
        self.seen.logical_or_(self.diff != 0)
        if keep or not self.in_place:
            torch.sum(torch.ne(previous, new, out=self.changed), (1, 2), out=self.step_flips_kept)
            self.flips_gross.add_(self.step_flips_kept)
        else:
            torch.sum(previous.ne_(new), (1, 2), out=self.step_flips)
            self.flips_gross.add_(self.step_flips)

    def _jump(self, dA: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """``||V^T dA^T W||`` per replica (R,) float64, for the patterns' change ``dA`` (R, m, n)."""
        dG = dA.transpose(1, 2) @ W  # (R, n, D)
        return torch.bmm(self.V_rows, dG.permute(1, 2, 0)).double().pow(2).sum((0, 1)).sqrt()  # V_i^T dG_i

    def net_since_check(self, W):
        # the net count compares the pattern of the interval's last step start, P(W_{s-1}),
        # with the previous check's: kept as it was recorded (the trajectory fixture)
        last_used = self.spare
        dA = torch.sub(last_used, self.snapshot, out=self.snapshot)
        jump = self._jump(dA, W)
        flips = torch.ne(dA, 0, out=dA).sum(1).double().sum(1).cpu().numpy().astype(np.int64)  # <= m a point
        self.snapshot, self.spare = last_used, dA
        return flips, jump.cpu().numpy()

    def flipped_from_start(self, start, a):
        Aa0 = signed_pattern(start.W0, a, self.XT, self.spare)  # the spare is free between steps
        return torch.ne(self.current, Aa0, out=Aa0).sum(1).double().sum(1)  # counts <= m per point: exact

    def distinct_since_row(self, rows):
        ix = torch.as_tensor(rows, dtype=torch.long, device=self.seen.device)
        counts = self.seen[ix].sum((1, 2)).cpu().numpy().astype(np.int64)
        self.seen[ix] = False
        return counts

    def drop(self, holes, movers, n_keep) -> None:
        move_rows(self, holes, movers, n_keep, ("current", "snapshot", "flips_gross", "dG", "seen"))
        self.changed, self.diff = self.changed[:n_keep], self.diff[:n_keep]
        self.step_flips, self.step_flips_kept = self.step_flips[:n_keep], self.step_flips_kept[:n_keep]
        self.spare = self.spare[:n_keep]


# keys: Mode. Each mode's rules, the preferred first: ``sobolev.rules.pattern_rule`` takes the first
# one available on the device. The eager rules here run on every device.
PATTERN_RULES: dict[str, list[type[PatternRule]]] = {"relu": [ReluPatterns], "frozen": [FrozenPatterns]}


def prefer(mode: str, rule: type[PatternRule]) -> None:
    """Puts ``rule`` in front of ``mode``'s rules: it runs wherever it is ``available``.

    Args:
        mode: a value of ``Mode``.
        rule: a ``PatternRule`` subclass (constructed as the others).
    """
    if rule not in PATTERN_RULES[mode]:
        PATTERN_RULES[mode].insert(0, rule)
