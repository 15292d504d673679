import pytest
import torch
from conftest import RTOL

from sobolev import Params, gram, init_params, loss_and_grad, make_problem
from sobolev.fused import FusedReluPatterns
from sobolev.patterns import ReluPatterns, signed_pattern
from sobolev.state import Data, LoopState
from sobolev.step import Workspace


@pytest.mark.parametrize("rule", [ReluPatterns, FusedReluPatterns], ids=["eager", "fused"])
def test_workspace_steps_are_steps_of_loss_and_grad(rule, bias):
    """``Workspace.run``, the hot loop, against its readable reference in float64: each step's
    loss is ``loss_and_grad``'s at the weights it starts from, and the weights it leaves are
    ``W - eta * grad_W`` (and ``b - eta * grad_b``), over steps whose patterns flip."""
    R, m, steps = 3, 48, 4
    p = make_problem(6, 5, 2, 0.5, bias=bias, seed=4, dtype=torch.float64)
    params = init_params(R, m, 5, bias=bias, seeds=[3, 4, 5], dtype=torch.float64)
    eta = 2.0 / torch.linalg.eigvalsh(gram(params, p))[:, -1]  # twice the default step: flips within a few steps
    data = Data.of(p)
    W, a = params.effective_W().clone(), params.a.clone()
    Aa0 = signed_pattern(W, a, data.XT, torch.empty(R, m, 6, dtype=torch.float64))
    pattern = rule(W, a, Aa0, data)
    state = LoopState(W=W, a=a, live=torch.ones(R, dtype=torch.float64), applied=torch.zeros(R, dtype=torch.float64),
                      loss_converged=torch.zeros(R, dtype=torch.float64),
                      loss_diverged=torch.full((R,), torch.inf, dtype=torch.float64))
    losses = Workspace(R, data).run(state, pattern, eta, steps)

    ref = params
    for s in range(steps):
        lg = loss_and_grad(ref, p)
        torch.testing.assert_close(losses[:, s], lg.loss, rtol=RTOL[torch.float64], atol=0)
        step = eta[:, None, None] * lg.grad_W
        ref = Params(W=ref.W - step, a=ref.a, b=None if ref.b is None else ref.b - eta[:, None] * lg.grad_b)
    scale = ref.effective_W().abs().max().item()
    torch.testing.assert_close(state.W, ref.effective_W(), rtol=0, atol=RTOL[torch.float64] * scale)
    assert torch.equal(state.applied, torch.full((R,), float(steps), dtype=torch.float64))
    assert pattern.flips_gross.min() > 0  # the pattern moved: every step's advance was exercised
