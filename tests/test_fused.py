import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import RTOL

from sobolev import TrainConfig, init_params, make_problem, train
from sobolev import fused as kernels  # the numba kernels of the fused route (local names "fused" are results)
from sobolev.fused import FusedReluPatterns
from sobolev.patterns import ReluPatterns, signed_pattern
from sobolev.rules import pattern_rule
from sobolev.state import Data


def test_the_cpu_takes_the_fused_route_and_cuda_the_eager_one():
    """numba is a dependency: ``train`` on the CPU must not fall back to the eager ops unnoticed."""
    p = make_problem(4, 3, 1, 0.5, seed=0)
    params = init_params(2, 8, 3, seeds=[0, 1])
    data = Data.of(p)
    Aa0 = signed_pattern(params.W, params.a, data.XT, torch.empty(2, 8, 4))
    assert isinstance(pattern_rule("relu", Aa0.device)(params.W.clone(), params.a, Aa0, data), FusedReluPatterns)
    assert not kernels.fused_available(torch.device("cuda"))
    assert pattern_rule("relu", torch.device("cuda")) is ReluPatterns


def patterns(dtype, R=3, m=37, n=11, seed=0):
    """Pre-activations with exact zeros (the boundary of ``> 0``), ``a = +-1/sqrt(m)``, and a
    previous pattern made the eager way from a perturbed copy."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(R, m, n, generator=g, dtype=dtype)
    z[torch.rand(R, m, n, generator=g) < 0.1] = 0.0
    a = (torch.randint(0, 2, (R, m), generator=g).to(dtype) * 2 - 1) / m ** 0.5
    z_prev = z + 0.3 * torch.randn(R, m, n, generator=g, dtype=dtype)
    previous = z_prev.gt(0).to(dtype).mul_(a[..., None])
    return z, a, previous


def same_bits(x, y):
    view = torch.int64 if x.dtype == torch.float64 else torch.int32
    return torch.equal(x.view(view), y.view(view))  # -0.0 and 0.0 told apart


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_pattern_is_the_eager_pattern_bit_for_bit(dtype):
    z, a, _ = patterns(dtype)
    eager = z.clone().gt_(0).mul_(a[..., None])
    fused = z.clone()
    kernels.relu_pattern_(fused, a)
    assert same_bits(fused, eager)
    assert (eager == 0).any() and (eager.view(-1).signbit() & (eager.view(-1) == 0)).any()  # signed zeros present


@pytest.fixture
def threads(request):
    """torch's (and so numba's) thread count for the test: the chunks of rows per thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def brute_force_words(bits_Rmn: np.ndarray) -> np.ndarray:
    """Bit e % 32 of word e // 32 set where entry e of the replica (row-major) is set."""
    R, flat = bits_Rmn.shape[0], bits_Rmn.reshape(bits_Rmn.shape[0], -1)
    words = np.zeros((R, -(-flat.shape[1] // 32)), dtype=np.uint64)
    for r in range(R):
        for e in np.flatnonzero(flat[r]):
            words[r, e // 32] += 2 ** (e % 32)
    return words


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, n", [(37, 11), (64, 32), (70, 9), (5, 3)])  # tails of a word; none; several blocks
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_fused_count_is_a_brute_force_count(dtype, m, n, threads):
    z, a, previous = patterns(dtype, m=m, n=n, seed=1)
    counts = torch.tensor([5.0, 0.0, 7.0], dtype=torch.float64)  # added to
    words = kernels.pattern_words(previous)
    np.testing.assert_array_equal(words.numpy().view(np.uint32), brute_force_words((previous != 0).numpy()))
    new = z.clone()
    kernels.relu_pattern_(new, a, words, counts)
    assert same_bits(new, z.clone().gt_(0).mul_(a[..., None]))
    bits_new, bits_old = (z > 0).numpy(), (previous != 0).numpy()
    expected = [sum(bits_new[r, j, i] != bits_old[r, j, i] for j in range(z.shape[1]) for i in range(z.shape[2]))
                for r in range(z.shape[0])]
    np.testing.assert_array_equal(counts.numpy(), np.array(expected) + [5, 0, 7])
    assert min(expected) > 0
    # the words follow the pattern
    np.testing.assert_array_equal(words.numpy().view(np.uint32), brute_force_words(bits_new))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, n", [(37, 11), (64, 32)])
def test_net_change_from_the_words_is_the_difference_of_the_float_patterns(dtype, m, n):
    """Three steps' pre-activations: the check's net change ``P1 - P0`` (P1, the pattern the
    ``keep`` step started from), built from the words, bit for bit the float difference (its
    zeros +0, as ``torch.sub`` gives), counted per replica; ``clear`` zeroes it again; the
    snapshot becomes P1's words; ``differ`` counts the bits of P2 that differ from P0."""
    g = torch.Generator().manual_seed(5)
    z0, a, _ = patterns(dtype, m=m, n=n, seed=5)
    z1, z2 = (z0 + 0.4 * torch.randn(z0.shape, generator=g, dtype=dtype) for _ in range(2))
    P = [z.gt(0).to(dtype).mul_(a[..., None]) for z in (z0, z1, z2)]
    words, dA = kernels.pattern_words(P[0]), torch.zeros_like(z0)
    snapshot, start = words.clone(), words.clone()
    buf1, buf2 = z1.clone(), z2.clone()
    kernel = kernels.FusedPattern((buf1, buf2), a, words, torch.zeros(len(a), dtype=torch.float64), snapshot, dA)
    kernel(buf1)
    kernel(buf2, keep=True)
    flips = kernel.net_change()
    expected = P[1] - P[0]
    assert same_bits(dA, expected)
    np.testing.assert_array_equal(flips, (expected != 0).sum((1, 2)).numpy())
    assert flips.dtype == np.int64 and flips.min() > 0
    np.testing.assert_array_equal(snapshot.numpy(), kernels.pattern_words(P[1]).numpy())
    kernel.clear()
    assert same_bits(dA, torch.zeros_like(dA))
    np.testing.assert_array_equal(kernel.differ(start), (P[2] != P[0]).sum((1, 2)).numpy())


def test_fused_refuses_a_strided_tensor():
    z, a, previous = patterns(torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.relu_pattern_(z.transpose(1, 2), a)


FLIP_ENERGY = ("jump_energy", "jump_energy_total", "jump_share", "jump_rate_late", "flow_rate_late")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [6, 32])  # 32: the one-pass route of rows of whole words
def test_train_is_identical_on_the_fused_and_the_eager_route(monkeypatch, dtype, n):
    """Replicas that stop at different times (rows dropped mid-run) and a check on every
    route's boundary: weights, curves and summaries bit for bit the same, except what the flips put
    into ||r||^2, whose change of the input gradients each route sums in its own order (the fused one
    from the flipped bits, the eager one by a GEMM): equal to the dtype's tolerance."""
    p = make_problem(n, 5, 2, 0.5, seed=2, dtype=torch.float64)
    params = init_params(5, 96, 5, seeds=list(range(5)), dtype=torch.float64)
    cfg = TrainConfig(eps=1e-4, t_max=6.0, max_steps=700, check_every=7, dtype=dtype)
    fused = train(params, p, cfg)
    monkeypatch.setattr(kernels, "fused_available", lambda device: False)
    eager = train(params, p, cfg)
    assert same_bits(fused.params.W, eager.params.W)
    assert len(set(fused.summary["steps"])) > 1  # rows were dropped on the way
    for table_f, table_e in ((fused.summary, eager.summary), (fused.curves, eager.curves)):
        assert table_f.keys() == table_e.keys()
        for key in table_f:
            if key in FLIP_ENERGY:
                np.testing.assert_allclose(table_f[key], table_e[key], rtol=RTOL[getattr(torch, dtype)], atol=1e-12,
                                           err_msg=key)
            else:
                np.testing.assert_array_equal(table_f[key], table_e[key], err_msg=key)
    assert np.abs(fused.summary["jump_energy_total"]).max() > 0
    assert fused.summary["flips_gross_total"].sum() > 0


def test_without_numba_the_eager_rule_runs_on_the_cpu():
    """numba missing (its import fails): ``sobolev`` still imports, and ``train`` takes the eager rule."""
    code = (f"import sys; sys.path[:0] = {sys.path!r}; sys.modules['numba'] = None\n"
            "import torch\n"
            "from sobolev import TrainConfig, init_params, make_problem, train\n"
            "from sobolev.patterns import ReluPatterns\n"
            "from sobolev.rules import pattern_rule\n"
            "assert pattern_rule('relu', torch.device('cpu')) is ReluPatterns\n"
            "res = train(init_params(2, 32, 4, seeds=[0, 1]), make_problem(4, 4, 1, 0.5), TrainConfig(max_steps=30))\n"
            "assert res.summary['flips_gross_total'].sum() > 0\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
