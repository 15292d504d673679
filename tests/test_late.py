"""The late-time record (sobolev/late.py) against independent routes: a plain loop of
``loss_and_grad`` steps (per-step losses, weights and patterns), ``sobolev.gram`` for the spectral
drift, hand-made curves for the rate and the trend rule, and real runs that sit on a plateau or
leave one later."""

import math

import numpy as np
import pytest
import torch

from sobolev import Params, TrainConfig, gram, init_params, lambda_star, loss_and_grad, make_problem, train
from sobolev.late import CONVERGING_RATE, TOLERANCES, LateState, summarise, t_to_field
from sobolev.problem import effective_data
from tests.test_train import brute_force


def _plain_injection(params: Params, problem, res, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step s of a run, what the pattern update after it put into ||r||^2, exactly:
    ||r(W_{s+1}, A_{s+1})||^2 - ||r(W_{s+1}, A_s)||^2, with r(W, A) the residual of the weights W under the
    signed pattern A (the patterns of W_s and W_{s+1}), from a plain loop of loss_and_grad steps; the
    flow time after the step; and the bits (m, n) it flipped. The update after the last step is seen by no
    later step: 0 there."""
    X, V, _, _, _ = effective_data(problem)
    rows = {int(s): lm for s, lm in zip(res.curves["step"], res.curves["lambda_max"])}
    W, a, t, eta = params.W[0].clone(), params.a[0], 0.0, None

    def r_sq(W, A):  # ||(f - y, F - h)||^2 under the signed pattern A (m, n)
        G = A.T @ W  # (n, D): grad_x f(x_i)
        return ((G * X).sum(1) - problem.y).pow(2).sum() + (torch.einsum("nD,nDk->nk", G, V) - problem.h).pow(2).sum()

    out, after_t, flipped = [], [], []
    for s in range(steps):
        eta = 1.0 / rows[s] if s in rows else eta
        A = (W @ X.T > 0).double() * a[:, None]
        W = W - eta * loss_and_grad(Params(W[None], a[None]), problem).grad_W[0]
        t += eta
        A_next = (W @ X.T > 0).double() * a[:, None]
        out.append((r_sq(W, A_next) - r_sq(W, A)).item() if s < steps - 1 else 0.0)
        after_t.append(t)
        flipped.append((A_next != A).numpy())
    return np.array(out), np.array(after_t), np.array(flipped)


def test_times_to_tolerances_late_rate_and_injection_against_a_plain_loop():
    p = make_problem(6, 5, 2, 0.5, seed=2, dtype=torch.float64)
    params = init_params(1, 1024, 5, seeds=[4], dtype=torch.float64)
    steps = 400
    cfg = TrainConfig(max_steps=steps, eps=1e-30, t_max=1e9, t_unit="absolute", check_every=1, dtype="float64")
    res = train(params, p, cfg)
    s, lam = res.summary, res.lambda_star
    losses, times, _, _, _ = brute_force(params, p, res, steps)
    rel = losses / losses[0]
    reached = 0
    for eps in TOLERANCES:  # the first step at or below each tolerance
        hit = np.flatnonzero(rel <= eps)
        expected = times[hit[0]] if len(hit) else np.inf
        np.testing.assert_allclose(s[t_to_field(eps)][0], expected, rtol=1e-12, err_msg=str(eps))
        reached += bool(len(hit))
    assert 0 < reached < len(TOLERANCES)  # some tolerances reached, some not: both branches seen
    # the late window: from the first step at or after tau = the ladder's 2^(j/16)/lambda_* below t_end/2
    t_end = times[-1]
    tau = 2.0 ** (math.floor(16 * math.log2(t_end * lam / 2)) / 16) / lam
    first = np.flatnonzero(times >= tau * (1 - 1e-12))[0]
    late = math.log(rel[first] / rel[-1]) / ((t_end - times[first]) * lam)
    np.testing.assert_allclose(s["late_rate"][0], late, rtol=1e-9)
    # what the flips put into ||r||^2, every step, against the plain loop's
    inject, after, flipped = _plain_injection(params, p, res, steps)
    c = res.curves
    for i in range(1, len(c["step"])):  # the bits that flipped at least once between two rows, and how often
        prev, step = c["step"][i - 1], c["step"][i]
        assert c["flips_distinct"][i] == flipped[prev:step].any(0).sum() <= c["flips_gross"][i]
    assert (c["flips_distinct"] < c["flips_gross"]).any()  # some bits flipped more than once in an interval
    assert np.abs(inject).max() > 0
    r0_sq = 2 * losses[0]
    np.testing.assert_allclose(s["jump_energy_total"][0], inject.sum() / r0_sq, rtol=1e-9, atol=1e-14)
    # the flips after step s are measured at step s + 1, in the check that ends at after[s + 1] (checks of one step)
    in_window = np.r_[after[1:], np.inf] >= times[first]
    eta = np.diff(np.r_[times, after[-1]])
    rate = inject[in_window].sum() / r0_sq / (rel[first:] * eta[first:]).sum() / lam
    np.testing.assert_allclose(s["jump_rate_late"][0], rate, rtol=1e-9, atol=1e-14)
    flow = (inject[in_window].sum() / r0_sq - (rel[-1] - rel[first])) / (rel[first:] * eta[first:]).sum() / lam
    np.testing.assert_allclose(s["flow_rate_late"][0], flow, rtol=1e-9, atol=1e-14)
    assert flow > 0  # the flow (patterns fixed) only removes
    final = res.curves["rel_loss"][-1]
    assert math.isfinite(s["jump_share"][0]) and final < 1


def test_spectral_drift_against_gram():
    p = make_problem(8, 6, 2, 0.5, seed=3, dtype=torch.float64)
    params = init_params(2, 32, 6, seeds=[0, 1], dtype=torch.float64)
    res = train(params, p, TrainConfig(max_steps=60, eps=1e-30, t_max=1e9, t_unit="absolute", dtype="float64"))
    dH = gram(res.params, p) - gram(params, p)
    spectral = torch.linalg.matrix_norm(dH, ord=2).numpy()
    last = [np.flatnonzero(res.curves["replica"] == j)[-1] for j in range(2)]
    np.testing.assert_allclose(res.curves["H_drift_2"][last], spectral, rtol=1e-9)
    np.testing.assert_allclose(res.curves["H_drift"][last], torch.linalg.matrix_norm(dH).numpy(), rtol=1e-9)
    assert np.all(res.curves["H_drift_2"] <= res.curves["H_drift"] * (1 + 1e-12))  # ||.||_2 <= ||.||_F
    for j in range(2):
        rows = res.curves["replica"] == j
        assert res.summary["max_H_drift_2"][j] == res.curves["H_drift_2"][rows].max() > 0


def _record(t_lambda: np.ndarray, rel: np.ndarray, lam: float = 0.5) -> LateState:
    """A late record of one replica fed the curve ``rel`` at flow times ``t_lambda`` (units of
    1/lambda_*), in checks of 7 steps."""
    late = LateState.start(1)
    t = t_lambda / lam
    eta = np.diff(np.r_[t, t[-1] + t[1] - t[0]])
    for i in range(0, len(t), 7):
        late.record_steps(t[None, i:i + 7], rel[None, i:i + 7], eta[i:i + 1], None, lam)
    return late


@pytest.mark.parametrize("rate", [2.0, 0.5, CONVERGING_RATE * 1.5, 0.0, -0.3])
def test_late_rate_and_trend_on_hand_made_curves(rate):
    t = np.linspace(0, 40, 2001)
    noise = 1 + 1e-3 * np.sin(np.arange(len(t)))
    rel = np.exp(-rate * t) * noise
    out = summarise(_record(t, rel), np.array(["budget"]), 0.5)
    np.testing.assert_allclose(out["late_rate"][0], rate, atol=2e-4)
    assert out["trend"][0] == ("converging" if rate >= CONVERGING_RATE else "plateau")
    for eps in TOLERANCES:  # the first step at or below eps, from the curve itself
        hit = np.flatnonzero(rel <= eps)
        np.testing.assert_allclose(out[t_to_field(eps)][0] * 0.5, t[hit[0]] if len(hit) else np.inf, rtol=1e-12)
    for status in ("converged", "diverged"):
        assert summarise(_record(t, rel), np.array([status]), 0.5)["trend"][0] == status


def test_a_real_plateau_and_a_real_transient_by_horizon():
    """Narrow nets (m = 8) on one instance: some replicas sit on a true plateau (a flat loss at every
    horizon), some look stuck at 48/lambda_* and converge by 192/lambda_*: the trend is a statement at
    a horizon, which the longer horizon revises."""
    p = make_problem(8, 8, 2, 0.5, seed=0, dtype=torch.float64)
    lam = lambda_star(p)
    out = {}
    for T in (48.0, 192.0):
        cfg = TrainConfig(eps=1e-10, t_max=T, max_steps=10**6, dtype="float64")
        out[T] = train(init_params(8, 8, 8, seeds=range(8), dtype=torch.float64), p, cfg, lambda_star=lam).summary
    short, long = out[48.0], out[192.0]
    plateau = (short["trend"] == "plateau") & (long["trend"] == "plateau")
    assert plateau.any()
    assert np.all(np.abs(long["late_rate"][plateau]) < CONVERGING_RATE)
    assert np.all(long["final_rel_loss"][plateau] > 1e-5)
    transient = (short["trend"] == "plateau") & (long["trend"] == "converged")
    assert transient.any()
    assert np.all(long["t_to_1e-8"][transient] * lam > 48)
