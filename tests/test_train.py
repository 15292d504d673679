import numpy as np
import pytest
import torch

from sobolev import TrainConfig, gram, init_params, lambda_star, make_problem, train
from sobolev.problem import effective_data
from sobolev.train import CURVE_FIELDS, SUMMARY_FIELDS, checkpoint_steps


def frozen_residual(W_eff, W0_eff, a, problem):
    """Residual of the linearised model (patterns of W0), computed directly."""
    X, V, y, h, _ = effective_data(problem)
    act = (W0_eff @ X.T > 0).double() * a[..., None]
    f = torch.einsum("rmn,rmD,nD->rn", act, W_eff, X)
    F = torch.einsum("rmn,rmD,nDk->rnk", act, W_eff, V)
    return torch.cat([y - f, (h - F).reshape(f.shape[0], -1)], dim=1)


@pytest.mark.parametrize("steps", [1, 7, 40])
def test_frozen_mode_follows_linear_recursion(bias, steps):
    p = make_problem(6, 5, 2, 0.4, bias=bias, seed=3, dtype=torch.float64)
    params = init_params(3, 64, 5, bias=bias, seeds=[0, 1, 2], dtype=torch.float64)
    cfg = TrainConfig(mode="frozen", eps=1e-30, t_max=1e9, t_unit="absolute", max_steps=steps, step_factor=0.9,
                      check_every=5)
    res = train(params, p, cfg)
    H0 = gram(params, p)
    r0 = frozen_residual(params.effective_W(), params.effective_W(), params.a, p)
    eta = 0.9 / torch.linalg.eigvalsh(H0)[:, -1]
    M = torch.eye(H0.shape[1], dtype=torch.float64) - eta[:, None, None] * H0
    r_pred = (torch.linalg.matrix_power(M, steps) @ r0[..., None])[..., 0]
    r = frozen_residual(res.params.effective_W(), params.effective_W(), params.a, p)
    torch.testing.assert_close(r, r_pred, rtol=1e-9, atol=1e-9 * r0.abs().max().item())
    assert np.all(res.summary["steps"] == steps)
    np.testing.assert_allclose(res.summary["t"], steps * eta.numpy(), rtol=1e-12)
    # the recorded loss at the final checkpoint is the loss of that residual
    last = res.curves["step"] == steps
    np.testing.assert_allclose(res.curves["loss"][last], 0.5 * r.pow(2).sum(1).numpy(), rtol=1e-9)


def test_relu_mode_wide_fits_far_better_than_narrow():
    p = make_problem(8, 6, 2, 0.5, seed=0, dtype=torch.float64)
    cfg = TrainConfig(mode="relu", eps=1e-12, t_max=12.0)
    med = {}
    for m in (8, 4096):
        res = train(init_params(16, m, 6, seeds=list(range(16)), dtype=torch.float64), p, cfg)
        assert set(res.summary["status"]) <= {"converged", "budget"}
        t_budget = 12.0 / res.lambda_star
        assert np.all(res.summary["t"] >= t_budget * (1 - 1e-9))
        med[m] = np.median(res.summary["final_rel_loss"])
    assert med[4096] * 100 <= med[8]
    # wide networks stay near initialisation: the movement shrinks with m
    assert med[4096] < 1e-2


def test_batch_equals_single_runs(bias):
    p = make_problem(6, 5, 2, 0.4, bias=bias, seed=1, dtype=torch.float64)
    cfg = TrainConfig(eps=1e-3, t_max=6.0, check_every=4)
    seeds = [11, 12, 13]
    batch = train(init_params(3, 128, 5, bias=bias, seeds=seeds, dtype=torch.float64), p, cfg)
    for j, s in enumerate(seeds):
        one = train(init_params(1, 128, 5, bias=bias, seeds=[s], dtype=torch.float64), p, cfg)
        torch.testing.assert_close(one.params.W[0], batch.params.W[j], rtol=1e-9, atol=1e-10)
        for f in ("status", "steps", "steps_to_eps"):
            assert one.summary[f][0] == batch.summary[f][j]
        rows = batch.curves["replica"] == j
        np.testing.assert_allclose(one.curves["loss"], batch.curves["loss"][rows], rtol=1e-9)


def test_converges_and_reports_time_to_eps():
    p = make_problem(6, 5, 1, 0.6, seed=2, dtype=torch.float64)
    res = train(init_params(4, 8192, 5, seeds=[0, 1, 2, 3], dtype=torch.float64), p,
                TrainConfig(eps=1e-3, t_max=50.0, check_every=8))
    s = res.summary
    assert np.all(s["status"] == "converged")
    assert np.all(s["steps_to_eps"] <= s["steps"]) and np.all(s["steps_to_eps"] >= s["steps"] - 8)
    assert np.all(s["final_rel_loss"] <= 1e-3)
    # independent route: stop one replica at exactly steps_to_eps, and one step earlier
    for j in range(2):
        s_eps = int(s["steps_to_eps"][j])
        run = lambda steps: train(init_params(1, 8192, 5, seeds=[j], dtype=torch.float64), p,  # noqa: E731
                                  TrainConfig(eps=1e-30, t_max=50.0, max_steps=steps, check_every=8))
        assert run(s_eps).summary["final_rel_loss"][0] <= 1e-3 < run(s_eps - 1).summary["final_rel_loss"][0]
    assert np.all(s["decay_rate"] > 0)
    assert np.all(s["lambda_held"])  # wide: lambda_min(H(t)) stays above lambda_*/2


def test_divergence_is_a_status_not_an_exception():
    p = make_problem(6, 5, 2, 0.4, seed=0)
    res = train(init_params(2, 64, 5, seeds=[0, 1]), p, TrainConfig(step_factor=50.0, t_max=100.0))
    assert list(res.summary["status"]) == ["diverged", "diverged"]
    assert np.all(res.summary["steps"] < 1000)
    for j in range(2):  # one row per checkpoint, the last at the stop
        steps = res.curves["step"][res.curves["replica"] == j]
        assert len(set(steps)) == len(steps) and steps[-1] == res.summary["steps"][j]


def test_step_budget_status_and_diagnostics_shapes():
    p = make_problem(6, 5, 2, 0.4, seed=0)
    res = train(init_params(3, 256, 5, seeds=[0, 1, 2]), p, TrainConfig(max_steps=30, eps=1e-12))
    assert set(res.summary) == set(SUMMARY_FIELDS)
    assert set(res.curves) == set(CURVE_FIELDS)
    assert list(res.summary["stopped_by"]) == ["max_steps"] * 3
    assert list(res.summary["status"]) == ["budget"] * 3
    steps = res.curves["step"][res.curves["replica"] == 0]
    assert list(steps) == list(checkpoint_steps(30, 8)) + ([30] if 30 not in checkpoint_steps(30, 8) else [])
    assert list(checkpoint_steps(30, 8)) == [0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 24]  # round(10^(i/8))
    c = res.curves
    assert np.all(c["flip_fraction"][c["step"] == 0] == 0) and np.all(c["H_drift"][c["step"] == 0] == 0)
    assert np.all(c["lin_dist"][c["step"] == 0] < 1e-5)
    assert np.all(c["e_sq"] + c["S_sq"] == pytest.approx(2 * c["loss"]))


def test_flip_jump_accounting_matches_direct_count():
    """Flips recorded over all intervals add up to the net pattern change, and the
    jump norms are zero exactly when nothing flipped."""
    p = make_problem(8, 6, 2, 0.5, seed=0, dtype=torch.float64)
    params = init_params(4, 32, 6, seeds=[0, 1, 2, 3], dtype=torch.float64)
    res = train(params, p, TrainConfig(max_steps=200, eps=1e-12, t_max=1e9, check_every=1))
    X = effective_data(p).X
    net = ((params.W @ X.T > 0) != (res.params.W @ X.T > 0)).sum((1, 2)).numpy()
    assert np.all(res.summary["flips_total"] >= net)  # every interval's flips, with back-and-forth
    c = res.curves
    assert np.all((c["flips"] == 0) == (c["jump_norm"] == 0))
    assert res.summary["flips_total"].sum() > 0
    final_frac = net / (32 * 8)
    np.testing.assert_allclose(res.summary["flip_fraction"], final_frac)


def test_lambda_star_budget_unit():
    p = make_problem(6, 5, 2, 0.4, seed=0, dtype=torch.float64)
    res = train(init_params(2, 512, 5, seeds=[0, 1], dtype=torch.float64), p, TrainConfig(t_max=3.0, eps=1e-12))
    assert np.all(res.summary["t"] >= 3.0 / lambda_star(p))
    assert np.all(res.summary["t"] < 3.0 / lambda_star(p) + res.curves["eta"].max() * 1.0001)
