import pytest
import torch

from conftest import RTOL
from sobolev import gram, gram_infinite, init_params, lambda_star, make_problem
from sobolev.problem import alpha_beta
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


def test_gram_infinite_is_monte_carlo_mean(bias):
    p = make_problem(4, 5, 2, 0.6, bias=bias, seed=0, dtype=torch.float64)
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
