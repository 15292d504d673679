import math

import mpmath
import pytest
import torch
from conftest import RTOL

from sobolev import Problem, gram, gram_infinite, init_params, lambda_star, make_problem
from sobolev.ntk import arccos_kernel
from sobolev.problem import alpha_beta, effective_data
from sobolev.theory import prop1_lower_bound


def residual_vector(W, a, b, problem):
    """Stacked residual (e; S) (bias network: S / alpha) of one replica, by autograd."""
    x = problem.x.clone().requires_grad_(True)
    if b is None:
        pre, scale = W @ x.T, 1.0
    else:
        alpha, beta = alpha_beta(problem.k)
        pre, scale = alpha * (W @ x.T) + beta * b[:, None], alpha
    f = a @ torch.relu(pre)
    (gx,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    F = torch.einsum("nd,ndk->nk", gx, problem.V)
    return torch.cat([problem.y - f, ((problem.h - F) / scale).reshape(-1)])


def test_gram_equals_jacobian_product(bias):
    p = make_problem(5, 6, 3, 0.4, bias=bias, seed=2, dtype=torch.float64)
    params = init_params(2, 40, 6, bias=bias, seeds=[3, 4], dtype=torch.float64)
    H = gram(params, p)
    assert H.shape == (2, 5 * 4, 5 * 4)
    for j in range(2):
        if bias:
            fn = lambda W, b: residual_vector(W, params.a[j], b, p)  # noqa: E731
            JW, Jb = torch.autograd.functional.jacobian(fn, (params.W[j], params.b[j]))
            J = torch.cat([JW.reshape(JW.shape[0], -1), Jb], dim=1)
        else:
            JW = torch.autograd.functional.jacobian(lambda W: residual_vector(W, params.a[j], None, p), params.W[j])
            J = JW.reshape(JW.shape[0], -1)
        torch.testing.assert_close(H[j], J @ J.T, rtol=RTOL[torch.float64], atol=1e-12)


def test_gram_symmetric_psd(bias):
    p = make_problem(6, 5, 2, 0.3, bias=bias, seed=1, dtype=torch.float64)
    H = gram(init_params(3, 64, 5, bias=bias, seeds=[0, 1, 2], dtype=torch.float64), p)
    torch.testing.assert_close(H, H.transpose(1, 2))
    assert torch.linalg.eigvalsh(H).min() > -1e-10


@pytest.mark.parametrize("k", [2, 0])
def test_gram_infinite_is_monte_carlo_mean(bias, k):
    p = make_problem(4, 5, k, 0.6, bias=bias, seed=0, dtype=torch.float64)
    R, m = 400, 50
    H = gram(init_params(R, m, 5, bias=bias, seeds=list(range(R)), dtype=torch.float64), p)
    mean, se = H.mean(0), H.std(0) / R**0.5
    Hinf = gram_infinite(p)
    z = (mean - Hinf).abs() / (se + 1e-12)
    zero = se < 1e-12  # structurally zero entries (v orthogonal to x)
    assert torch.all((mean - Hinf).abs()[zero] < 1e-12)
    assert z[~zero].max() < 5.0
    # and the MC estimate is really informative: not everything is within noise of zero
    assert (Hinf.abs() > 10 * se).sum() > Hinf.numel() // 4


@pytest.mark.parametrize("n,d,k,delta", [(8, 6, 2, 0.5), (16, 10, 3, 0.2), (6, 4, 1, 0.05)])
def test_h_inf_positive_definite_above_prop1(n, d, k, delta, bias):
    p = make_problem(n, d, k, delta, bias=bias, seed=0, dtype=torch.float64)
    ev = torch.linalg.eigvalsh(gram_infinite(p))
    lam = lambda_star(p)
    assert lam == pytest.approx(ev.min().item(), rel=1e-12)
    assert lam > 0
    if not bias:  # Proposition 1 is stated for the no-bias network
        assert lam >= prop1_lower_bound(n, k, p.delta_1, p.delta_2)


def test_gram_infinite_k0_is_du_et_al():
    """k = 0: ``H^inf_ij = x_i^T x_j (pi - arccos(x_i^T x_j)) / (2 pi)`` (Du et al. 2019)."""
    p = make_problem(7, 5, 0, 0.5, seed=3, dtype=torch.float64)
    c = p.x @ p.x.T
    torch.testing.assert_close(gram_infinite(p), c * (math.pi - torch.arccos(c.clamp(-1, 1))) / (2 * math.pi),
                               rtol=1e-12, atol=1e-7)  # arccos is only accurate to ~1e-8 near c = +-1


mpmath.mp.dps = 40


def _mp_kappa(a, b):
    """The arc-cosine kernel of two float64 vectors, in 40-digit arithmetic."""
    a, b = [mpmath.mpf(v) for v in a.tolist()], [mpmath.mpf(v) for v in b.tolist()]
    na, nb = mpmath.sqrt(sum(u * u for u in a)), mpmath.sqrt(sum(u * u for u in b))
    c = max(-1, min(1, mpmath.fsum(u * v for u, v in zip(a, b)) / (na * nb)))  # x_i with itself: 1 +- 1e-40
    return (mpmath.pi - mpmath.acos(c)) / (2 * mpmath.pi)


def _mp_lambda_star(problem):
    X, V, _, _, _ = effective_data(problem)
    n, _, k = V.shape
    rows = [(i, X[i]) for i in range(n)] + [(i, V[i, :, j]) for i in range(n) for j in range(k)]
    kappa = [[_mp_kappa(X[i], X[j]) for j in range(n)] for i in range(n)]
    H = mpmath.matrix(len(rows), len(rows))
    for p, (i, u) in enumerate(rows):
        for q, (j, v) in enumerate(rows):
            H[p, q] = kappa[i][j] * mpmath.fsum(mpmath.mpf(s) * mpmath.mpf(t) for s, t in zip(u.tolist(), v.tolist()))
    ev = mpmath.eigsy(H, eigvals_only=True)
    return min(ev), max(ev)  # lambda_*, ||H^inf||_2


def _pair_at(angle: float, problem: Problem) -> Problem:
    """``problem`` with x_1 moved to ``angle`` from x_0 (pi - angle: beyond -x_0), frame refitted."""
    x, V = problem.x.clone(), problem.V.clone()
    u = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    u = u - (u @ x[0]) * x[0]
    x[1] = math.cos(angle) * x[0] + math.sin(angle) * u / u.norm()
    x[1] = x[1] / x[1].norm()
    if problem.k:
        V[1] = torch.linalg.qr(V[1] - x[1][:, None] * (x[1] @ V[1])[None, :])[0]
    return Problem(x=x, V=V, y=problem.y, h=problem.h, bias=problem.bias)


@pytest.mark.parametrize("angle", [1e-6, 1e-3, 1.0, math.pi - 1e-3, math.pi - 1e-6])
def test_arccos_kernel_accurate_at_every_angle(angle):
    x = _pair_at(angle, make_problem(3, 5, 1, 0.8, seed=1, dtype=torch.float64)).x
    K = arccos_kernel(x)
    assert torch.all(K.diagonal() == 0.5)
    ref = _mp_kappa(x[0], x[1])
    assert abs(K[0, 1].item() - ref) / ref < 4e-16 * 4
    assert K[0, 1].item() == K[1, 0].item()


@pytest.mark.parametrize("angle,k,bias", [(None, 2, False), (None, 2, True), (None, 0, False), (1e-3, 1, False),
                                          (1e-3, 1, True), (1e-6, 1, False), (1e-6, 0, False), (1e-6, 1, True),
                                          (math.pi - 1e-6, 1, False)])
def test_lambda_star_against_40_digit_route(angle, k, bias):
    """lambda_min(H^inf) against H^inf built and diagonalised in 40-digit arithmetic from the
    same float64 inputs: 1e-12 relative wherever float64 can hold it; nearly equal points make
    lambda_* ~ angle/(2 pi), and any float64 H^inf (entries rounded to eps ||H||) then limits
    the relative accuracy to about eps ||H|| / lambda_*, which the test allows for."""
    p = make_problem(5, 6, k, 0.5, bias=bias, seed=0, dtype=torch.float64)
    if angle is not None:  # a pair at that angle (pi - 1e-6: nearly opposite)
        p = _pair_at(angle, p)
    ref, norm = _mp_lambda_star(p)
    got = lambda_star(p)
    floor = 8 * 2.0**-52 * float(norm / ref)
    rel = float(abs(got - ref) / ref)
    assert rel <= max(1e-12, floor), (rel, floor)
    if floor < 1e-13:
        assert rel <= 1e-12
