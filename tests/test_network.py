import math

import pytest
import torch
from conftest import RTOL

from sobolev import Params, forward, init_params, loss_and_grad, make_problem
from sobolev.problem import alpha_beta


def autograd_loss(W, a, b, problem):
    """The loss of the true network, built by autograd: input gradient with
    create_graph, then the Sobolev loss; parameters W (R, m, d), b (R, m) or None."""
    k = problem.k
    x = problem.x.clone().requires_grad_(True)
    if b is None:
        pre, scale = torch.einsum("rmd,nd->rmn", W, x), 1.0
    else:
        alpha, beta = alpha_beta(k)
        pre, scale = alpha * torch.einsum("rmd,nd->rmn", W, x) + beta * b[..., None], alpha
    f = torch.einsum("rm,rmn->rn", a, torch.relu(pre))
    (gx,) = torch.autograd.grad(f.sum(), x, create_graph=True)  # replicas independent: sum is safe
    return f, gx, scale


def autograd_reference(params, problem):
    W = params.W.clone().requires_grad_(True)
    b = None if params.b is None else params.b.clone().requires_grad_(True)
    losses, Fs = [], []
    # per replica, so input gradients do not mix
    total = 0
    for j in range(params.R):
        f, gx, scale = autograd_loss(W[j:j + 1], params.a[j:j + 1], None if b is None else b[j:j + 1], problem)
        F = torch.einsum("nd,ndk->nk", gx, problem.V)
        L = 0.5 * (f[0] - problem.y).pow(2).sum() + 0.5 * ((F - problem.h) / scale).pow(2).sum()
        losses.append(L.detach())
        Fs.append(F.detach())
        total = total + L
    total.backward()
    return torch.stack(losses), W.grad, None if b is None else b.grad, torch.stack(Fs)


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 2), (2, 2), (0, 0), (1, 0)])  # k = 0: plain L2 training
def test_gradient_equals_autograd_float64(bias, seed, k):
    p = make_problem(7, 6, k, 0.4, bias=bias, seed=seed, dtype=torch.float64)
    params = init_params(3, 50, 6, bias=bias, seeds=[seed, seed + 10, seed + 20], dtype=torch.float64)
    # move off initialisation so that residuals are generic
    params = Params(W=params.W * 1.3 + 0.1, a=params.a, b=None if params.b is None else params.b - 0.2)
    L, gW, gb = loss_and_grad(params, p)
    L_ref, gW_ref, gb_ref, F_ref = autograd_reference(params, p)
    tol = RTOL[torch.float64]
    torch.testing.assert_close(L, L_ref, rtol=tol, atol=0)
    torch.testing.assert_close(gW, gW_ref, rtol=tol, atol=tol * gW_ref.abs().max().item())
    if bias:
        torch.testing.assert_close(gb, gb_ref, rtol=tol, atol=tol * gb_ref.abs().max().item())
    else:
        assert gb is None
    torch.testing.assert_close(forward(params, p).F, F_ref, rtol=tol, atol=tol)


def test_gradient_central_finite_differences(bias):
    p = make_problem(5, 5, 2, 0.5, bias=bias, seed=4, dtype=torch.float64)
    params = init_params(1, 20, 5, bias=bias, seeds=[4], dtype=torch.float64)
    _, gW, gb = loss_and_grad(params, p)
    h = 1e-6
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        r, j = torch.randint(0, 20, (1,), generator=gen).item(), torch.randint(0, 5, (1,), generator=gen).item()
        Wp, Wm = params.W.clone(), params.W.clone()
        Wp[0, r, j] += h
        Wm[0, r, j] -= h
        Lp = loss_and_grad(Params(Wp, params.a, params.b), p).loss
        Lm = loss_and_grad(Params(Wm, params.a, params.b), p).loss
        fd = ((Lp - Lm) / (2 * h)).item()
        assert fd == pytest.approx(gW[0, r, j].item(), rel=1e-5, abs=1e-7)
    if bias:
        for r in range(0, 20, 4):
            bp, bm = params.b.clone(), params.b.clone()
            bp[0, r] += h
            bm[0, r] -= h
            fd = ((loss_and_grad(Params(params.W, params.a, bp), p).loss
                   - loss_and_grad(Params(params.W, params.a, bm), p).loss) / (2 * h)).item()
            assert fd == pytest.approx(gb[0, r].item(), rel=1e-5, abs=1e-7)


def test_init_distribution_and_per_seed_reproducibility(bias):
    params = init_params(4, 4096, 5, bias=bias, seeds=[7, 8, 9, 10], dtype=torch.float64)
    assert params.a.abs().allclose(torch.full_like(params.a, 1 / math.sqrt(4096)))
    assert abs(params.W.mean().item()) < 0.02 and abs(params.W.std().item() - 1) < 0.02
    assert abs((params.a > 0).double().mean().item() - 0.5) < 0.02
    if bias:
        assert abs(params.b.std().item() - 1) < 0.03
    alone = init_params(1, 4096, 5, bias=bias, seeds=[9], dtype=torch.float64)
    assert torch.equal(alone.W[0], params.W[2]) and torch.equal(alone.a[0], params.a[2])
    f32 = init_params(1, 4096, 5, bias=bias, seeds=[9], dtype=torch.float32)
    assert torch.equal(f32.W[0], params.W[2].float())


def test_params_validation():
    W = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="Params.a"):
        Params(W=W, a=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="Params.b"):
        Params(W=W, a=torch.zeros(2, 3), b=torch.zeros(3))
    with pytest.raises(ValueError, match="seeds"):
        init_params(3, 4, 5, seeds=[1, 2])


def test_float32_matches_float64(bias):
    p64 = make_problem(6, 5, 2, 0.5, bias=bias, seed=1, dtype=torch.float64)
    par64 = init_params(2, 300, 5, bias=bias, seeds=[1, 2], dtype=torch.float64)
    L64, g64, _ = loss_and_grad(par64, p64)
    L32, g32, _ = loss_and_grad(init_params(2, 300, 5, bias=bias, seeds=[1, 2]), p64.to(torch.float32))
    torch.testing.assert_close(L32.double(), L64, rtol=RTOL[torch.float32], atol=0)
    torch.testing.assert_close(g32.double(), g64, rtol=RTOL[torch.float32], atol=RTOL[torch.float32] * g64.abs().max().item())
