"""The CPU's relu pattern rule (:class:`FusedReluPatterns`): the pattern update of the hot loop
and the flip counts, as fused passes (numba).

After each weight update the step turns the pre-activations ``z = W x`` (R, m, n) into the
signed pattern ``a_r 1{z_ri > 0}`` and counts the bits that changed since the previous
step. In eager PyTorch that is four passes over (R, m, n) (``gt_``, ``mul_``, ``ne``,
``sum``), the count alone as many as the rest of the pattern update, and comparing with the
previous float pattern streams a second (R, m, n) array that falls out of the core's cache.
Here the bits of the last pattern are kept packed, 32 to a word (``pattern_words``: 1/32 of
a float32 pattern), and each block of 32 rows is compared word by word (one vector compare
and the move of its mask per 32 entries, ``_positive_mask32``; ``popcnt`` of the xor) right
before it becomes the pattern, while it is in L1. When n is a multiple of 32 a word lies in
one row and the same vector compare also writes the pattern (``_pattern_word32``): one pass.

The values are those of ``z.gt_(0).mul_(a[..., None])`` bit for bit (an inactive entry is
``0.0 * a_r``, a signed zero, as there), so trajectories do not depend on which route ran;
the counts are integers. The net count of a check and its jump come from the words too:
the bits that differ from the last check's, and the difference of the two patterns written
only there into a buffer that is zero otherwise (``FusedPattern.net_change``); the flips
since t = 0 of a checkpoint are the bits that differ from the words of t = 0. On CUDA, or
where numba is missing, the eager rule ``sobolev.patterns.ReluPatterns`` runs
(``fused_available``). This module registers its rule on import (``sobolev.rules``); without
it, the eager rule runs everywhere.

No array expressions inside the ``parallel=True`` kernels: numba makes each one (an
``np.zeros``, a slice's ``sum``) a parallel region of its own, 1-3 us a launch, which cost
20-45 us a step before they were written as loops.

The kernels run on numba's ``workqueue`` threading layer, not its OpenMP one: once numba's
OpenMP pool has run, MKL's ``eigvalsh`` in the same process (``lambda_*``, the spectra of
``H(t)`` that set the step size) returned different last bits than before it, so a run re-made
as the first task of a fresh process differed from the same run re-made after another task
(docs/FINDINGS.md, "Reproducibility"; ``tests/test_shipped_results.py``). The OpenMP layer
was 2-8% faster per step on an idle machine (BENCHMARKS.md, section 2); reproducibility is
worth more.
"""

from __future__ import annotations

import torch

from .patterns import ReluPatterns, prefer
from .state import move_rows

try:
    import numba
    import numpy as np
except ImportError:  # pragma: no cover - numba is a dependency; the eager route remains
    numba = None
else:
    # before any parallel kernel runs in the process: the layer is chosen at the first launch
    numba.config.THREADING_LAYER = "workqueue"


def fused_available(device: torch.device) -> bool:
    """Whether the fused kernels run for tensors on ``device``."""
    return numba is not None and torch.device(device).type == "cpu"


if numba is not None:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    def _compare32(context, builder, sig, args):
        """Loads the 32 entries ``flat[start:start + 32]`` (``args[:2]``) and compares them with
        0: their pointer as a vector, the vector type and the <32 x i1> of ``> 0``."""
        array = context.make_array(sig.args[0])(context, builder, args[0])
        vector = ir.VectorType(context.get_value_type(sig.args[0].dtype), 32)
        pointer = builder.bitcast(builder.gep(array.data, [args[1]]), vector.as_pointer())
        greater = builder.fcmp_ordered(">", builder.load(pointer, align=1), ir.Constant(vector, None))
        return pointer, vector, greater

    @intrinsic
    def _positive_mask32(typingctx, flat, start):  # pragma: no cover - compiled
        """The 32 bits ``flat[start + j] > 0`` as one uint32 (bit j): one vector compare and a
        move of its mask (``vcmpps`` + ``kmov``/``movmsk`` on x86), where a loop of shifts and
        ors over the entries would not vectorise. ``flat`` 1-D contiguous float, 32 entries from
        ``start`` in bounds."""
        def codegen(context, builder, sig, args):
            _, _, greater = _compare32(context, builder, sig, args)
            return builder.bitcast(greater, ir.IntType(32))
        return types.uint32(flat, start), codegen

    @intrinsic
    def _pattern_word32(typingctx, flat, start, a_r):  # pragma: no cover - compiled
        """``_positive_mask32`` and, in the same pass, the 32 entries become the pattern of one
        row: ``a_r`` where positive, else ``a_r * 0.0`` (the signed zero that ``a_r * (z > 0)``
        gives), bit for bit what the row loop writes."""
        def codegen(context, builder, sig, args):
            pointer, vector, greater = _compare32(context, builder, sig, args)
            a = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
            off = builder.fmul(a, ir.Constant(vector.element, 0.0))
            lanes = ir.Constant(ir.VectorType(ir.IntType(32), 32), None)  # all lanes from element 0

            def splat(x):
                first = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
                return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), lanes)

            builder.store(builder.select(greater, splat(a), splat(off)), pointer, align=1)
            return builder.bitcast(greater, ir.IntType(32))
        return types.uint32(flat, start, a_r), codegen

    @intrinsic
    def _popcount(typingctx, x):  # pragma: no cover - compiled
        """The number of set bits of an unsigned integer, as int64 (``popcnt``)."""
        def codegen(context, builder, sig, args):
            bits = builder.ctpop(args[0])
            return bits if bits.type.width == 64 else builder.zext(bits, ir.IntType(64))
        return types.int64(x), codegen

    @intrinsic
    def _lowest_bit(typingctx, x):  # pragma: no cover - compiled
        """The index of the lowest set bit of a non-zero unsigned integer, as int64 (``tzcnt``)."""
        def codegen(context, builder, sig, args):
            index = builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))  # 1: x = 0 is not asked
            return index if index.type.width == 64 else builder.zext(index, ir.IntType(64))
        return types.int64(x), codegen

    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def _pattern_counted(z, words, a, counts, chunks):  # pragma: no cover - compiled
        R, n = counts.shape[0], z.shape[1]
        rows = a.shape[0] // R  # m rows a replica
        flat = z.reshape(-1)
        blocks = (rows + 31) // 32  # 32 rows: 32 n entries, n words
        per = (blocks + chunks - 1) // chunks
        partial = np.empty(R * chunks, np.int64)
        for job in numba.prange(R * chunks):  # (replica, chunk of its blocks): threads whatever R
            r, first = job // chunks, job % chunks * per
            start = r * rows * n  # the replica's first entry; its words count from there
            c = np.int64(0)
            for b in range(first, min(blocks, first + per)):
                lo, hi = 32 * b, min(rows, 32 * b + 32)
                if n % 32 == 0:  # a word lies in one row: compare, count and write in one pass
                    for row in range(lo, hi):
                        a_r = a[r * rows + row]
                        for w in range(row * n // 32, (row + 1) * n // 32):
                            mask = _pattern_word32(flat, start + 32 * w, a_r)
                            c += _popcount(mask ^ words[r, w])
                            words[r, w] = mask
                    continue
                # the flips of the block, counted before its entries become the pattern
                for w in range(lo * n // 32, hi * n // 32):
                    mask = _positive_mask32(flat, start + 32 * w)
                    c += _popcount(mask ^ words[r, w])
                    words[r, w] = mask
                tail = hi * n % 32  # only the replica's last entries, in a word of their own
                if tail:
                    w, mask = hi * n // 32, np.uint32(0)
                    for j in range(tail):
                        mask |= np.uint32(flat[start + 32 * w + j] > 0) << np.uint32(j)
                    c += _popcount(np.uint32(mask) ^ words[r, w])
                    words[r, w] = mask
                for row in range(r * rows + lo, r * rows + hi):
                    a_r = a[row]
                    for i in range(n):
                        z[row, i] = a_r * (z[row, i] > 0)  # 0.0 * a_r off: the signed zero of gt_().mul_()
            partial[job] = c
        for r in range(R):
            total = np.int64(0)
            for q in range(r * chunks, (r + 1) * chunks):
                total += partial[q]
            counts[r] += total

    @numba.njit(parallel=True, cache=True, boundscheck=False)
    def _pattern(z, a):  # pragma: no cover - compiled
        n_rows, n = z.shape
        for row in numba.prange(n_rows):
            a_r = a[row]
            for i in range(n):
                z[row, i] = a_r * (z[row, i] > 0)

    @numba.njit(cache=True, boundscheck=False)
    def _net_change(used, snapshot, changed, a, dA, n):  # pragma: no cover - compiled
        R, m = used.shape[0], a.shape[0] // used.shape[0]
        counts = np.empty(R, np.int64)
        for r in range(R):
            c = np.int64(0)
            for w in range(used.shape[1]):
                x = used[r, w] ^ snapshot[r, w]
                changed[r, w] = x
                snapshot[r, w] = used[r, w]
                c += _popcount(x)
                while x:  # the set bits, lowest first
                    b = _lowest_bit(x)
                    x &= x - np.uint32(1)
                    e = 32 * w + b  # entry of the replica: row e // n
                    a_r = a[r * m + e // n]
                    # a_r - (0 a_r) = a_r and (0 a_r) - a_r = -a_r, exactly
                    dA[r * m * n + e] = a_r if (used[r, w] >> b) & 1 else -a_r
            counts[r] = c
        return counts

    @numba.njit(cache=True, boundscheck=False)
    def _clear_changed(changed, dA, m, n):  # pragma: no cover - compiled
        for r in range(changed.shape[0]):
            for w in range(changed.shape[1]):
                x = changed[r, w]
                while x:
                    dA[r * m * n + 32 * w + _lowest_bit(x)] = 0.0
                    x &= x - np.uint32(1)

    @numba.njit(cache=True, boundscheck=False)
    def _flip_gradient(before, after, a, W, dG, seen):  # pragma: no cover - compiled
        """``dG[r, i] = sum over the bits (row, i) of replica r that flipped of +-a_row W[row]`` (+ when
        the bit turned on): ``(A_after - A_before)^T W``, from the words, in a fixed order; the flipped
        bits are or-ed into ``seen``."""
        R, n, D = dG.shape
        m = a.shape[0] // R
        for r in range(R):
            for i in range(n):
                for c in range(D):
                    dG[r, i, c] = 0.0
            for w in range(before.shape[1]):
                x = before[r, w] ^ after[r, w]
                seen[r, w] |= x
                while x:
                    b = _lowest_bit(x)
                    x &= x - np.uint32(1)
                    e = 32 * w + b
                    row, i = r * m + e // n, e % n
                    s = a[row] if (after[r, w] >> b) & 1 else -a[row]
                    for c in range(D):
                        dG[r, i, c] += s * W[row, c]

    @numba.njit(cache=True, boundscheck=False)
    def _words_differ(x, y):  # pragma: no cover - compiled
        counts = np.empty(x.shape[0], np.int64)
        for r in range(x.shape[0]):
            c = np.int64(0)
            for w in range(x.shape[1]):
                c += _popcount(x[r, w] ^ y[r, w])
            counts[r] = c
        return counts


def _as_rows(t: torch.Tensor, what: str) -> "np.ndarray":
    if not t.is_contiguous():  # a reshape would copy and drop the writes
        raise ValueError(f"sobolev.fused: {what} must be contiguous")
    return t.numpy().reshape(-1, t.shape[-1]) if t.dim() > 1 else t.numpy()


def _threads() -> int:
    """numba's pool follows torch's thread setting (a Ray task of one CPU runs one thread); the
    setting is the calling thread's, which is the one that trains."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


def _chunks(threads: int, R: int, blocks: int) -> int:
    """Chunks of a replica's blocks of rows: enough jobs for every thread."""
    return max(1, min(-(-threads * 4 // max(1, R)), blocks))


def pattern_words(pattern_Rmn: torch.Tensor) -> torch.Tensor:
    """The bits ``1{pattern != 0}`` packed 32 to a word (R, ceil(m n / 32)), entry ``e`` of a
    replica (flat, row-major) at bit ``e % 32`` of word ``e // 32``: the state ``FusedPattern``
    compares each step with. int32 (torch has no general uint32), read as uint32."""
    R = pattern_Rmn.shape[0]
    bits = pattern_Rmn.ne(0).reshape(R, -1).cpu().numpy()
    padded = np.zeros((R, -(-bits.shape[1] // 32) * 32), dtype=bool)
    padded[:, :bits.shape[1]] = bits
    packed = np.packbits(padded, axis=1, bitorder="little").view("<u4").astype(np.uint32)
    return torch.from_numpy(packed.view(np.int32)).to(pattern_Rmn.device)


class FusedPattern:
    """The pattern update and the flip counts bound to fixed buffers: the float pattern
    buffers that trade places, ``a`` (R, m), the words of the last pattern's bits
    (``pattern_words``, updated in place), the per-replica float64 counter the steps add to,
    and for the net count of a check the words of the last check's pattern and the net change
    ``dA`` (R, m, n), zero between checks. The numpy views and the thread count are set once,
    in the thread that trains, so a step's Python overhead is a few microseconds."""

    def __init__(self, buffers: tuple[torch.Tensor, ...], a_Rm: torch.Tensor, words: torch.Tensor,
                 counts_R: torch.Tensor, snapshot_words: torch.Tensor | None = None, dA: torch.Tensor | None = None,
                 W: torch.Tensor | None = None, dG: torch.Tensor | None = None, seen: torch.Tensor | None = None):
        self.views = {id(b): _as_rows(b, "a pattern buffer") for b in buffers}
        self.a, self.counts = _as_rows(a_Rm, "a").reshape(-1), _as_rows(counts_R, "the counter")
        self.words = _as_rows(words, "the words").view(np.uint32)
        self.R, self.m = a_Rm.shape
        self.block_chunks = _chunks(_threads(), self.R, -(-self.m // 32))
        if dA is not None:
            self.snapshot_words = _as_rows(snapshot_words, "the snapshot's words").view(np.uint32)
            self.dA, self.n = _as_rows(dA, "dA").reshape(-1), dA.shape[2]
            # the words of the pattern each interval's last step started from; the changed bits
            self.used, self.changed = self.words.copy(), np.zeros_like(self.words)
        self.dG = None
        if dG is not None:  # the change of grad_x f that each update makes, from the bits that flipped
            self.W_rows, self.dG = _as_rows(W, "W"), dG.numpy()
            if not dG.is_contiguous():
                raise ValueError("sobolev.fused: dG must be contiguous")
            self.before = self.words.copy()
            self.seen = _as_rows(seen, "the seen words").view(np.uint32)  # the bits flipped since the last row

    def __call__(self, z: torch.Tensor, keep: bool = False) -> None:
        """``z <- a_r 1{z > 0}`` in place; the counter += bits that differ from ``words``, which
        become those of ``z``; ``keep``: the words before are kept for ``net_change``."""
        if keep:
            np.copyto(self.used, self.words)
        if self.dG is not None:
            np.copyto(self.before, self.words)
        _pattern_counted(self.views[id(z)], self.words, self.a, self.counts, self.block_chunks)
        if self.dG is not None:
            _flip_gradient(self.before, self.words, self.a, self.W_rows, self.dG, self.seen)

    def uncounted(self, z: torch.Tensor) -> None:
        """``z <- a_r 1{z > 0}`` in place, for one of the bound buffers, with no count and the
        words left as they are (the bare step that ``benchmarks/bench_loop.py`` times against)."""
        _pattern(self.views[id(z)], self.a)

    def net_change(self) -> "np.ndarray":
        """The bits at which the pattern the last ``keep`` step started from differs from the
        snapshot, per replica (int64 (R,)); ``dA`` is their difference (``+-a_r`` there, zero
        elsewhere) until ``clear``, and the snapshot becomes that pattern."""
        return _net_change(self.used, self.snapshot_words, self.changed, self.a, self.dA, self.n)

    def clear(self) -> None:
        """``dA`` back to zero."""
        _clear_changed(self.changed, self.dA, self.m, self.n)

    def distinct(self, rows: "np.ndarray") -> "np.ndarray":
        """The bits of ``rows`` that flipped since their last call (int64), which clears them."""
        counts = _words_differ(self.seen[rows], np.zeros_like(self.seen[rows]))
        self.seen[rows] = 0
        return counts

    def differ(self, other_words: torch.Tensor) -> "np.ndarray":
        """The bits at which the current pattern differs from ``other_words``, per replica."""
        return _words_differ(self.words, _as_rows(other_words, "the words").view(np.uint32))


def relu_pattern_(z_Rmn: torch.Tensor, a_Rm: torch.Tensor, words: torch.Tensor | None = None,
                  counts_R: torch.Tensor | None = None) -> None:
    """In place, ``z <- a_r 1{z_ri > 0}``; with ``words`` (the previous pattern's
    ``pattern_words``), ``counts[r]`` (float64) is added the number of entries of replica ``r``
    at which the new bits differ from the words', and the words become the new bits.

    All tensors contiguous on the CPU, ``z`` and ``a`` of one floating dtype."""
    if words is None:
        _threads()
        _pattern(_as_rows(z_Rmn, "z"), _as_rows(a_Rm, "a").reshape(-1))
    else:
        FusedPattern((z_Rmn,), a_Rm, words, counts_R)(z_Rmn)


class FusedReluPatterns(ReluPatterns):
    """The relu rule on the CPU: the pattern update and every flip count from the fused passes
    above. The bits of the current pattern, of the last check's and of t = 0 are kept as words
    (``pattern_words``), and the third pattern buffer ``dA`` holds a check's net change (zero
    between checks); the eager rule's bool and float count buffers are not allocated. Values
    and counts are bit for bit the eager rule's (``tests/test_fused.py``)."""

    @classmethod
    def available(cls, device: torch.device) -> bool:
        return fused_available(device)

    def _start_counts(self, Aa0: torch.Tensor) -> None:
        # the bits of the current pattern, of the last check's and of t = 0, 32 to a word
        self.words = pattern_words(Aa0)
        self.snapshot_words, self.start_words = self.words.clone(), self.words.clone()
        self.seen_words = torch.zeros_like(self.words)  # the bits that flipped since the last checkpoint row
        self.dA = torch.zeros_like(Aa0)  # the net change of a check; zero between checks

    def bind(self, W: torch.Tensor, a: torch.Tensor) -> None:
        super().bind(W, a)
        self.kernel = FusedPattern((self.current, self.spare), a, self.words, self.flips_gross,
                                   self.snapshot_words, self.dA, W, self.dG, self.seen_words)

    def _update(self, previous: torch.Tensor, new: torch.Tensor, keep: bool) -> None:
        self.kernel(new, keep)

    def net_since_check(self, W):
        # from the words: dA is non-zero at the few changed bits only
        flips = self.kernel.net_change()
        jump = self._jump(self.dA, W)
        self.kernel.clear()
        return flips, jump.cpu().numpy()

    def flipped_from_start(self, start, a):
        return torch.from_numpy(self.kernel.differ(self.start_words)).double()

    def distinct_since_row(self, rows):
        return self.kernel.distinct(np.asarray(rows))

    def drop(self, holes, movers, n_keep) -> None:
        move_rows(self, holes, movers, n_keep,
                  ("current", "flips_gross", "words", "snapshot_words", "start_words", "dG", "seen_words"))
        self.dA = self.dA[:n_keep]
        self.spare = self.spare[:n_keep]


prefer("relu", FusedReluPatterns)
