import numpy as np
import pytest
import torch

from sobolev import TrainConfig, init_params, kernels, make_problem, train
from sobolev.train import Data, ReluPatterns, signed_pattern


def test_the_cpu_takes_the_fused_route_and_cuda_the_eager_one():
    """numba is a dependency: ``train`` on the CPU must not fall back to the eager ops unnoticed."""
    p = make_problem(4, 3, 1, 0.5, seed=0)
    params = init_params(2, 8, 3, seeds=[0, 1])
    data = Data.of(p)
    Aa0 = signed_pattern(params.W, params.a, data.XT, torch.empty(2, 8, 4))
    assert ReluPatterns(params.W.clone(), params.a, Aa0, data).fused
    assert not kernels.fused_available(torch.device("cuda"))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_count_is_a_brute_force_count(dtype):
    z, a, previous = patterns(dtype, seed=1)
    counts = torch.tensor([5.0, 0.0, 7.0], dtype=torch.float64)  # added to
    new = z.clone()
    kernels.relu_pattern_(new, a, previous, counts)
    assert same_bits(new, z.clone().gt_(0).mul_(a[..., None]))
    bits_new, bits_old = (z > 0).numpy(), (previous != 0).numpy()
    expected = [sum(bits_new[r, j, i] != bits_old[r, j, i] for j in range(z.shape[1]) for i in range(z.shape[2]))
                for r in range(z.shape[0])]
    np.testing.assert_array_equal(counts.numpy(), np.array(expected) + [5, 0, 7])
    assert min(expected) > 0


def test_fused_refuses_a_strided_tensor():
    z, a, previous = patterns(torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.relu_pattern_(z.transpose(1, 2), a)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_is_identical_on_the_fused_and_the_eager_route(monkeypatch, dtype):
    """Replicas that stop at different times (rows dropped mid-run) and a check on every
    route's boundary: weights, curves and summaries bit for bit the same."""
    p = make_problem(6, 5, 2, 0.5, seed=2, dtype=torch.float64)
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
            np.testing.assert_array_equal(table_f[key], table_e[key], err_msg=key)
    assert fused.summary["flips_gross_total"].sum() > 0
