import math

import pytest
import torch

from sobolev import Problem, TrainConfig, init_params, make_problem, max_separation, train
from sobolev.problem import effective_data, separation


@pytest.mark.parametrize("n,d,k,delta", [(8, 6, 2, 0.5), (16, 10, 4, 0.1), (4, 5, 1, 1.2), (32, 8, 3, 0.05)])
def test_measured_separation_equals_request(n, d, k, delta, bias):
    p = make_problem(n, d, k, delta, bias=bias, seed=3, dtype=torch.float64)
    assert p.delta_1 == pytest.approx(delta, rel=1e-6)
    # independent route: brute force over all pairs
    x = p.x
    vals = []
    for i in range(n):
        for j in range(n):
            if i != j:
                vals.append((x[i] - x[j]).norm().item())
                if not bias:
                    vals.append((x[i] + x[j]).norm().item())
    assert min(vals) == pytest.approx(delta, rel=1e-6)
    assert torch.allclose(x.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-12)


def test_frames_orthonormal_and_orthogonal(bias):
    p = make_problem(12, 7, 3, 0.3, bias=bias, seed=0, dtype=torch.float64)
    VtV = p.V.transpose(1, 2) @ p.V
    assert torch.allclose(VtV, torch.eye(3, dtype=torch.float64).expand_as(VtV), atol=1e-12)
    assert p.delta_2 < 1e-12


def test_tilted_frames_reach_delta_2():
    p = make_problem(10, 8, 3, 0.3, seed=0, delta_2=0.2, dtype=torch.float64)
    VtV = p.V.transpose(1, 2) @ p.V
    assert torch.allclose(VtV, torch.eye(3, dtype=torch.float64).expand_as(VtV), atol=1e-12)
    proj = torch.einsum("nd,ndk->nk", p.x, p.V).abs()
    assert torch.allclose(proj, torch.full_like(proj, 0.2), atol=1e-12)
    assert p.delta_2 == pytest.approx(0.2, rel=1e-9)


def test_same_seed_same_problem_any_dtype():
    a = make_problem(8, 6, 2, 0.4, seed=5, dtype=torch.float64)
    b = make_problem(8, 6, 2, 0.4, seed=5, dtype=torch.float32)
    c = make_problem(8, 6, 2, 0.4, seed=6, dtype=torch.float64)
    assert torch.allclose(a.x, b.x.double(), atol=1e-7)
    assert not torch.allclose(a.x, c.x)


@pytest.mark.parametrize("target", ["random", "teacher"])
def test_targets_unit_mean_square(target):
    ms = []
    for n in (8, 32):
        p = make_problem(n, 10, 2, 0.2, target=target, seed=1, dtype=torch.float64)
        ms.append(((p.y.pow(2).sum() + p.h.pow(2).sum()) / (n * 3)).item())
    # teacher targets are scaled exactly; random ones only in expectation
    assert all(0.4 < v < 2.0 for v in ms)
    if target == "teacher":
        assert ms == pytest.approx([1.0, 1.0], rel=1e-9)


def test_teacher_derivatives_match_autograd():
    from sobolev.problem import _teacher_targets

    p = make_problem(6, 5, 2, 0.3, seed=2, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    y, h = _teacher_targets(p.x, p.V, g1)
    U = torch.randn(64, 5, generator=g2, dtype=torch.float64)
    c = torch.randn(64, generator=g2, dtype=torch.float64) / 8
    x = p.x.clone().requires_grad_(True)
    f = torch.tanh(x @ U.T) @ c
    (grad,) = torch.autograd.grad(f.sum(), x)
    assert torch.allclose(f, y, atol=1e-12)
    assert torch.allclose(torch.einsum("nd,ndk->nk", grad, p.V), h, atol=1e-12)


@pytest.mark.parametrize("kwargs,field", [
    (dict(n=8, d=4, k=4, delta=0.1), "k="),
    (dict(n=8, d=4, k=-1, delta=0.1), "k="),
    (dict(n=8, d=6, k=2, delta=0.0), "delta="),
    (dict(n=8, d=6, k=2, delta=-0.3), "delta="),
    (dict(n=8, d=6, k=2, delta=1.5), "delta="),  # above sqrt(2) without bias
    (dict(n=40, d=3, k=1, delta=1.3), "delta="),  # Welch bound for 40 lines in R^3
    (dict(n=8, d=6, k=2, delta=0.3, delta_2=0.5), "delta_2="),
    (dict(n=8, d=6, k=2, delta=0.3, target="zeros"), "target="),
])
def test_impossible_requests_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_problem(**kwargs)


def test_separation_limits():
    assert max_separation(4, 3, bias=True) == pytest.approx(math.sqrt(8 / 3))  # tetrahedron
    assert max_separation(3, 3, bias=False) == pytest.approx(math.sqrt(2))
    # a regular tetrahedron reaches the bias limit: the bound is attained
    t = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64) / math.sqrt(3)
    assert separation(t, bias=True) == pytest.approx(max_separation(4, 3, bias=True))


def test_problem_from_user_tensors_validated():
    p = make_problem(5, 4, 2, 0.5, seed=0, dtype=torch.float64)
    q = Problem(x=p.x, V=p.V, y=p.y, h=p.h, bias=True)
    assert q.n == 5 and q.k == 2 and q.bias
    with pytest.raises(ValueError, match="Problem.x"):
        Problem(x=p.x * 2, V=p.V, y=p.y, h=p.h)
    with pytest.raises(ValueError, match="Problem.V"):
        Problem(x=p.x, V=p.V * 2, y=p.y, h=p.h)
    with pytest.raises(ValueError, match="Problem.h"):
        Problem(x=p.x, V=p.V, y=p.y, h=p.h[:, :1])
    with pytest.raises(ValueError, match="Problem.y"):
        Problem(x=p.x, V=p.V, y=p.y[:3], h=p.h)


def test_effective_data_is_unit_and_scaled():
    p = make_problem(6, 5, 2, 0.5, bias=True, seed=0, dtype=torch.float64)
    X, V, y, h, alpha = effective_data(p)
    assert alpha == 0.25
    assert torch.allclose(X.norm(dim=1), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(h, p.h / 0.25)
    assert torch.all(V[:, -1, :] == 0)


def test_k_zero_is_values_only(bias):
    p = make_problem(6, 4, 0, 0.5, bias=bias, seed=0, dtype=torch.float64)
    assert p.k == 0 and p.V.shape == (6, 4, 0) and p.h.shape == (6, 0) and p.delta_2 == 0.0
    assert p.delta_1 == pytest.approx(0.5)
    X, V, y, h, alpha = effective_data(p)
    assert V.shape == (6, 4 + bias, 0) and h.shape == (6, 0)
    assert alpha == (0.5 if bias else 1.0)  # alpha = 1/(2 max(k, 1))
    assert torch.allclose(X.norm(dim=1), torch.ones(6, dtype=torch.float64))
    Problem(x=p.x, V=p.V, y=p.y, h=p.h)  # user tensors with k = 0 validate
    assert make_problem(6, 4, 0, 0.5, target="teacher", seed=1).h.shape == (6, 0)


def test_to_a_higher_precision_is_refused_with_the_fix():
    p32 = make_problem(6, 5, 2, 0.5, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"make_problem\(\.\.\., dtype=torch.float64\)"):
        p32.to(dtype=torch.float64)
    with pytest.raises(ValueError, match="Problem.to"):  # train casts with Problem.to: the same line
        train(init_params(1, 8, 5, seeds=0), p32, TrainConfig(dtype="float64", max_steps=2))
    p64 = make_problem(6, 5, 2, 0.5, seed=0, dtype=torch.float64)
    assert torch.equal(p64.to(dtype=torch.float32).x, p32.x)  # down is a plain cast


@pytest.mark.parametrize("d,delta", [(3, 0.5), (3, 1.2), (6, 0.4), (6, 1.0), (12, 0.9), (32, 1.3)])
def test_cap_share_bound_is_above_monte_carlo(d, delta):
    """The cap share bound against Monte Carlo: uniform points on the sphere (a million) within
    ``delta`` of a pole, with a 5-sigma allowance for the sampling error."""
    from sobolev.problem import cap_share_bound

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(10**6, d, generator=gen, dtype=torch.float64)
    share = ((z / z.norm(dim=1, keepdim=True) - torch.eye(d, dtype=torch.float64)[0]).norm(dim=1) <= delta)
    p = share.double().mean().item()
    assert cap_share_bound(delta, d) >= p - 5 * math.sqrt(max(p, 1e-6) / 10**6)
    assert cap_share_bound(delta, d) <= max(10 * p, 1e-5) or d == 3  # not vacuous


def test_placement_failure_bound_is_tiny_only_where_placement_never_fails(bias):
    """Where random placement gives up (make_problem raises), the bound does not claim it cannot;
    where the bound is below 1e-30, placement succeeds for every seed tried."""
    from sobolev.problem import placement_failure_bound

    for n, d, delta in [(20, 3, 0.81), (40, 4, 0.867), (20, 5, 1.043)] if not bias else \
            [(20, 3, 0.99), (40, 4, 1.202), (20, 5, 1.344)]:
        with pytest.raises(ValueError, match="could not place"):
            make_problem(n, d, 1, delta, bias=bias, seed=0)
        assert placement_failure_bound(n, d, delta, bias=bias) == 1.0
    for n, d, delta in [(64, 32, 0.5), (16, 6, 0.5), (256, 32, 0.25), (8, 8, 0.6)]:
        assert placement_failure_bound(n, d, delta, bias=bias) < 1e-30
        for seed in range(3):
            make_problem(n, d, 1, delta, bias=bias, seed=seed)
