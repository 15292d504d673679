"""The relu pattern update of the hot loop as one fused pass on the CPU (numba).

After each weight update the step turns the pre-activations ``z = W x`` (R, m, n) into the
signed pattern ``a_r 1{z_ri > 0}`` and counts the bits that changed since the previous
step. In eager PyTorch that is four passes over (R, m, n) (``gt_``, ``mul_``, ``ne``,
``sum``), the count alone as many as the rest of the pattern update; the kernel here does
all of it in one pass that reads ``z`` and the previous pattern and writes the new one.

The values are those of ``z.gt_(0).mul_(a[..., None])`` bit for bit (an inactive entry is
``0.0 * a_r``, a signed zero, as there), so trajectories do not depend on which route ran;
the counts are integers. On CUDA, or where numba is missing, ``sobolev.train`` runs the eager
ops (``fused_available``).
"""

from __future__ import annotations

import torch

try:
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - numba is a dependency; the eager route remains
    numba = None


def fused_available(device: torch.device) -> bool:
    """Whether ``relu_pattern_`` runs fused for tensors on ``device``."""
    return numba is not None and torch.device(device).type == "cpu"


if numba is not None:
    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def _pattern_counted(z, previous, a, counts, chunks):  # pragma: no cover - compiled
        R, n = counts.shape[0], z.shape[1]
        rows = a.shape[0] // R  # m rows a replica
        per = (rows + chunks - 1) // chunks
        partial = np.zeros(R * chunks, np.int64)
        for job in numba.prange(R * chunks):  # (replica, chunk of its rows): threads whatever R
            r, first = job // chunks, job % chunks * per
            c = np.int64(0)
            for row in range(r * rows + first, r * rows + min(rows, first + per)):
                a_r = a[row]
                for i in range(n):
                    p = a_r * (z[row, i] > 0)  # 0.0 * a_r off: the signed zero of gt_().mul_()
                    c += p != previous[row, i]
                    z[row, i] = p
            partial[job] = c
        for r in range(R):
            counts[r] += partial[r * chunks:(r + 1) * chunks].sum()

    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def _pattern(z, a):  # pragma: no cover - compiled
        n_rows, n = z.shape
        for row in numba.prange(n_rows):
            a_r = a[row]
            for i in range(n):
                z[row, i] = a_r * (z[row, i] > 0)


def _as_rows(t: torch.Tensor, what: str) -> "np.ndarray":
    if not t.is_contiguous():  # a reshape would copy and drop the writes
        raise ValueError(f"relu_pattern_: {what} must be contiguous")
    return t.numpy().reshape(-1, t.shape[-1]) if t.dim() > 1 else t.numpy()


def _threads() -> int:
    """numba's pool follows torch's thread setting (a Ray task of one CPU runs one thread); the
    setting is the calling thread's, which is the one that trains."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


class FusedPattern:
    """``relu_pattern_`` bound to fixed buffers (the pattern buffers that trade places, ``a``
    (R, m) and the per-replica float64 counter it adds to): the numpy views and the thread count
    are set once, in the thread that trains, so a step's Python overhead is a few microseconds."""

    def __init__(self, buffers: tuple[torch.Tensor, ...], a_Rm: torch.Tensor, counts_R: torch.Tensor):
        self.views = {id(b): _as_rows(b, "a pattern buffer") for b in buffers}
        self.a, self.counts = _as_rows(a_Rm, "a").reshape(-1), _as_rows(counts_R, "the counter")
        self.threads = _threads()
        # chunks per replica: enough jobs for every thread, each a few rows at least
        self.chunks = max(1, min(-(-self.threads * 4 // max(1, len(self.counts))), a_Rm.shape[1] // 8))

    def __call__(self, z: torch.Tensor, previous: torch.Tensor) -> None:
        """``z <- a_r 1{z > 0}`` in place; the counter += bits that differ from ``previous``."""
        _pattern_counted(self.views[id(z)], self.views[id(previous)], self.a, self.counts, self.chunks)


def relu_pattern_(z_Rmn: torch.Tensor, a_Rm: torch.Tensor, previous_Rmn: torch.Tensor | None = None,
                  counts_R: torch.Tensor | None = None) -> None:
    """In place, ``z <- a_r 1{z_ri > 0}``; with ``previous``, ``counts[r]`` (float64) is added
    the number of entries of replica ``r`` at which the new pattern differs from ``previous``.

    All tensors contiguous on the CPU, ``z``, ``previous`` and ``a`` of one floating dtype."""
    if previous_Rmn is None:
        _threads()
        _pattern(_as_rows(z_Rmn, "z"), _as_rows(a_Rm, "a").reshape(-1))
    else:
        FusedPattern((z_Rmn, previous_Rmn), a_Rm, counts_R)(z_Rmn, previous_Rmn)
