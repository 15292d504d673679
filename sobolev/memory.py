"""How much memory a training task takes, to pack replicas onto a device.

A task is ``init_params`` and ``train`` for ``R`` replicas of one cell ``(n, d, k, m)``.
The model counts what ``sobolev.train`` (``sobolev.loop``) allocates (``D = d + 1`` with bias, ``N = n (k+1)``,
``s`` bytes per element), per replica:

- the caller's weights ``W, a`` (and ``b``): ``s (m D + m)``;
- held for the whole run: the trained ``W``, its start ``W0`` and the result ``out_W``
  (``3 s m D``), ``a``, and the signed patterns ``a_r 1{w_r^T x_i > 0}`` of the current
  step, of the previous step and of the last check, with a byte per entry for the flip
  counts (``3 s m n + m n``: off the CPU the bool indicator of the bits that changed; on the
  CPU five arrays of the patterns' bits packed 32 to a word, ``sobolev.fused``, 5/8 of a
  byte, and the third pattern is the net change of a check; in frozen mode only the pattern
  of t = 0, which it steps with), plus ``H(0)``'s eigenvectors (``s N^2``), each step's
  squared residuals between two checks (``s N c_e`` at ``check_every = c_e``) and O(n k d)
  buffers;
- on top of that, the largest temporary: at a checkpoint the float64 ``H`` and the copy
  LAPACK works on (``16 N^2``), or ``W - W0`` and its row norms (``s m (D + 1)``; the bias
  network's result split back into ``W, b`` is as large).

Activations are not stored per step (the hot loop reuses two pattern buffers) and nothing
of size O(m) is copied when replicas stop, so there is no further term. The start, where
``H(0)`` is decomposed with eigenvectors (LAPACK's workspace, ``16 N^2`` once) before
``W0``, the other two patterns and the other late buffers exist, is a second candidate for
the peak.

The counts are allocated bytes, which is what ``torch.cuda.max_memory_allocated`` reports
(the CUDA context and library handles come on top). On the CPU the resident peak is up to
``s m D`` per replica lower, since ``out_W`` is only written as replicas stop.
"""

from __future__ import annotations

import torch

from .settings import MODES, TrainConfig


def _phases(n: int, d: int, k: int, m: int, dtype: torch.dtype, bias: bool, mode: str,
            check_every: int, eager: bool) -> list[tuple[int, int]]:
    """``(bytes per replica, bytes per task)`` at each candidate peak: the start, the run."""
    if mode not in MODES:
        raise ValueError(f"memory: mode={mode!r}: expected one of {MODES}")
    if min(n, d, m) < 1 or k < 0:
        raise ValueError(f"memory: need n, d, m >= 1 and k >= 0, got n={n}, d={d}, k={k}, m={m}")
    s = torch.empty((), dtype=dtype).element_size()
    D, N, c = d + int(bias), n * (k + 1), k + 1
    relu = mode == "relu"  # frozen mode steps with the pattern of t = 0: no more patterns
    inputs = s * (m * D + m)
    # held from the start: W, a, the pattern of t = 0, s0, r(0), the small buffers, the
    # squared residuals, losses and loss parts of the steps between two checks
    early = s * (m * D + m + m * n + n * n + N * (1 + check_every) + 2 * n * D + 2 * n * c + 3 * check_every + 1)
    # held once H(0) is decomposed: W0, out_W (and the spare and snapshot patterns with the
    # byte per entry of the flip counts), Q0, lam0, c0, flags and counters
    late = s * (2 * m * D + N * N + 2 * N + 4) + (2 * s * m * n + m * n if relu else 0) + 8 * 4
    # the flips' injection: the change of the input gradients, the move of (f, F) and its half-difference;
    # the eager relu rule (off the CPU) also holds the signed change of a step and the bits flipped since a row
    late += s * (n * D + 2 * N) + 8 + (s * m * n + m * n if relu and eager else 0)
    data = s * 4 * n * D * (c + 1)  # X, V, their stacked copies, targets
    start = (inputs + early + 16 * N * N, data + 16 * N * N)
    run = (inputs + early + late + max(16 * N * N, s * m * (D + 1)), data)
    return [start, run]


def bytes_per_replica(n: int, d: int, k: int, m: int, dtype: torch.dtype = torch.float32, *,
                      bias: bool = False, mode: str = "relu", check_every: int = TrainConfig().check_every,
                      eager: bool = False) -> int:
    """The bytes one more replica adds to the peak of a task (of more than a few replicas).

    Args:
        n, d, k, m: the cell: points, input dimension, directions per point, width.
        dtype: the working dtype.
        bias, mode, check_every: the network variant and the training settings that change
            what is allocated.
        eager: the eager relu rule runs (off the CPU, or without numba), which holds two more
            buffers of the pattern's size than the CPU's fused rule.

    Returns:
        Bytes per replica.
    """
    return max(per for per, _ in _phases(n, d, k, m, dtype, bias, mode, check_every, eager))


def task_bytes(R: int, n: int, d: int, k: int, m: int, dtype: torch.dtype = torch.float32, *,
               bias: bool = False, mode: str = "relu", check_every: int = TrainConfig().check_every,
               eager: bool = False) -> int:
    """Peak bytes of a task training ``R`` replicas of the cell ``(n, d, k, m)``.

    Args:
        R: replicas trained together.
        n, d, k, m, dtype, bias, mode, check_every, eager: as for :func:`bytes_per_replica`.

    Returns:
        Bytes at the task's peak (the start or the run, whichever is larger).
    """
    return max(R * per + fixed for per, fixed in _phases(n, d, k, m, dtype, bias, mode, check_every, eager))


def replicas_that_fit(budget_bytes: int, n: int, d: int, k: int, m: int, dtype: torch.dtype = torch.float32, *,
                      bias: bool = False, mode: str = "relu", check_every: int = TrainConfig().check_every,
               eager: bool = False) -> int:
    """The most replicas of the cell ``(n, d, k, m)`` one task can train within a memory budget.

    Args:
        budget_bytes: the task's share of the device's memory.
        n, d, k, m, dtype, bias, mode, check_every, eager: as for :func:`bytes_per_replica`.

    Returns:
        The largest ``R`` with ``task_bytes(R, ...) <= budget_bytes`` (0 when not even one
        replica fits).
    """
    phases = _phases(n, d, k, m, dtype, bias, mode, check_every, eager)
    return max(0, min(int((budget_bytes - fixed) // per) for per, fixed in phases))
