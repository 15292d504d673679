import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from sobolev import Params, TrainConfig, forward, gram, init_params, lambda_star, loss_and_grad, make_problem, train
from sobolev.patterns import PATTERN_RULES
from sobolev.problem import effective_data
from sobolev.record import CURVE_FIELDS, SUMMARY_FIELDS
from sobolev.settings import MODES, checkpoint_steps, train_config_fields
from sobolev.step import Workspace

FIXTURES = Path(__file__).parent / "fixtures"


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
                      check_every=5, dtype="float64")
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


@pytest.mark.slow  # 16 replicas at m = 4096 to t = 12/lambda_*: over 10 s
def test_relu_mode_wide_fits_far_better_than_narrow():
    p = make_problem(8, 6, 2, 0.5, seed=0, dtype=torch.float64)
    cfg = TrainConfig(mode="relu", eps=1e-12, t_max=12.0, dtype="float64")
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


@pytest.mark.parametrize("bias", [False, pytest.param(True, marks=pytest.mark.slow)],  # with bias: over 30 s
                         ids=["nobias", "bias"])
def test_batch_equals_single_runs(bias):
    p = make_problem(6, 5, 2, 0.4, bias=bias, seed=1, dtype=torch.float64)
    cfg = TrainConfig(eps=1e-3, t_max=6.0, check_every=4, dtype="float64")
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
                TrainConfig(eps=1e-3, t_max=50.0, check_every=8, dtype="float64"))
    s = res.summary
    assert np.all(s["status"] == "converged")
    assert np.all(s["steps_to_eps"] <= s["steps"]) and np.all(s["steps_to_eps"] >= s["steps"] - 8)
    assert np.all(s["final_rel_loss"] <= 1e-3)
    # independent route: stop one replica at exactly steps_to_eps, and one step earlier
    for j in range(2):
        s_eps = int(s["steps_to_eps"][j])
        run = lambda steps: train(init_params(1, 8192, 5, seeds=[j], dtype=torch.float64), p,  # noqa: E731
                                  TrainConfig(eps=1e-30, t_max=50.0, max_steps=steps, check_every=8,
                                                          dtype="float64"))
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
    res = train(params, p, TrainConfig(max_steps=200, eps=1e-12, t_max=1e9, check_every=1, dtype="float64"))
    X = effective_data(p).X
    net = ((params.W @ X.T > 0) != (res.params.W @ X.T > 0)).sum((1, 2)).numpy()
    assert np.all(res.summary["flips_net_total"] >= net)  # every interval's flips, with back-and-forth
    assert np.all(res.summary["flips_gross_total"] >= res.summary["flips_net_total"])
    c = res.curves
    assert np.all((c["flips_net"] == 0) == (c["jump_norm"] == 0))
    assert res.summary["flips_net_total"].sum() > 0
    final_frac = net / (32 * 8)
    np.testing.assert_allclose(res.summary["flip_fraction"], final_frac)


def test_lambda_star_budget_unit():
    p = make_problem(6, 5, 2, 0.4, seed=0, dtype=torch.float64)
    res = train(init_params(2, 512, 5, seeds=[0, 1], dtype=torch.float64), p,
                TrainConfig(t_max=3.0, eps=1e-12, dtype="float64"))
    assert np.all(res.summary["t"] >= 3.0 / lambda_star(p))
    assert np.all(res.summary["t"] < 3.0 / lambda_star(p) + res.curves["eta"].max() * 1.0001)


def test_train_reproduces_the_recorded_trajectories_exactly():
    """Every array recorded before the refactor (tests/fixtures/record_trajectory.py, float64),
    bit for bit; counts renamed since: flips -> flips_net."""
    sys.path.insert(0, str(FIXTURES))
    import record_trajectory

    ref = np.load(FIXTURES / "trajectory_f64.npz")
    rename = {"flips_total": "flips_net_total", "flips": "flips_net"}
    for name, (bias, mode) in record_trajectory.CASES.items():
        problem = make_problem(n=6, d=5, k=2, delta=0.5, bias=bias, target="random", seed=3, dtype=torch.float64)
        params = init_params(3, 64, problem.d, bias=bias, seeds=[0, 1, 2], dtype=torch.float64)
        cfg = TrainConfig(mode=mode, eps=1e-9, t_max=6.0, max_steps=400, check_every=7, dtype="float64")
        res = train(params, problem, cfg, lambda_star=float(ref[f"{name}/lambda_star"]))
        got = {f"{name}/W": res.params.W.numpy(), f"{name}/lambda_star": np.array(res.lambda_star)}
        for part, table in (("summary", res.summary), ("curves", res.curves)):
            got.update({f"{name}/{part}/{f}": table[rename.get(f, f)] for f in map(lambda k: k.split("/")[-1],
                        [k for k in ref.files if k.startswith(f"{name}/{part}/")])})
        keys = [k for k in ref.files if k.startswith(name + "/")]
        assert len(keys) > 40
        for key in keys:
            assert np.array_equal(got[key], ref[key], equal_nan=True), key


def test_outputs_have_exactly_the_declared_fields_and_types():
    p = make_problem(5, 4, 1, 0.5, seed=0)
    res = train(init_params(2, 32, 4, seeds=[0, 1]), p, TrainConfig(max_steps=20))
    assert list(res.summary) == list(SUMMARY_FIELDS) and list(res.curves) == list(CURVE_FIELDS)
    kinds = {int: "i", float: "f", bool: "b", str: "U"}
    for table, fields in ((res.summary, SUMMARY_FIELDS), (res.curves, CURVE_FIELDS)):
        for f, kind in fields.items():
            assert table[f].dtype.kind == kinds[kind], f
            assert len(table[f]) == (2 if table is res.summary else len(res.curves["step"]))


def test_config_fields_types_defaults_and_validation():
    fields = train_config_fields()
    assert list(fields) == [f for f in TrainConfig.__dataclass_fields__]
    assert fields["eps"][:2] == (float, 1e-6) and fields["max_steps"][:2] == (int, 100_000)
    assert typing.get_args(fields["mode"][0]) == MODES == ("relu", "frozen") and set(PATTERN_RULES) == set(MODES)
    assert typing.get_args(fields["dtype"][0]) == ("float32", "float64") and fields["dtype"][1] == "float32"
    assert all(isinstance(doc, str) and doc for _, _, doc in fields.values())
    assert TrainConfig(t_max=12).t_max == 12.0 and isinstance(TrainConfig(t_max=12).t_max, float)
    for bad, match in [(dict(mode="linear"), r"TrainConfig.mode='linear': expected one of"),
                       (dict(dtype="float16"), r"TrainConfig.dtype='float16'"),
                       (dict(eps=0.0), r"TrainConfig.eps=0.0: must be a positive finite number"),
                       (dict(t_max=float("inf")), r"TrainConfig.t_max=inf"),
                       (dict(max_steps=10.5), r"TrainConfig.max_steps=10.5: must be an integer >= 1"),
                       (dict(check_every=True), r"TrainConfig.check_every=True"),
                       (dict(checkpoints_per_decade=0), r"TrainConfig.checkpoints_per_decade=0")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_train_runs_in_the_config_dtype():
    p = make_problem(5, 4, 1, 0.5, seed=0, dtype=torch.float64)
    params = init_params(2, 32, 4, seeds=[0, 1], dtype=torch.float64)
    res32 = train(params, p, TrainConfig(max_steps=10))
    assert res32.params.W.dtype == torch.float32
    same = train(init_params(2, 32, 4, seeds=[0, 1]), p.to(dtype=torch.float32), TrainConfig(max_steps=10))
    assert torch.equal(res32.params.W, same.params.W)  # the cast is all the difference
    assert train(params, p, TrainConfig(max_steps=10, dtype="float64")).params.W.dtype == torch.float64


def brute_force(params: Params, problem, res, steps: int):
    """One replica trained by a plain loop of ``loss_and_grad`` steps with the step sizes
    ``train`` chose (1 / lambda_max at each of its checkpoints): per-step losses, flow
    times and the number of pattern bits that changed on each step."""
    rows = {int(s): lm for s, lm in zip(res.curves["step"], res.curves["lambda_max"])}
    X = effective_data(problem).X
    W, t, eta = params.W.clone(), 0.0, None
    pattern = W @ X.T > 0
    losses, times, flips, values = [], [], [], []
    for s in range(steps):
        eta = 1.0 / rows[s] if s in rows else eta
        lg = loss_and_grad(Params(W, params.a), problem)
        losses.append(lg.loss.item())
        values.append(0.5 * (forward(Params(W, params.a), problem).f - problem.y).pow(2).sum().item())
        times.append(t)
        W = W - eta * lg.grad_W
        t += eta
        new = W @ X.T > 0
        flips.append(int((new != pattern).sum()))
        pattern = new
    return np.array(losses), np.array(times), np.array(flips), W, np.array(values)


def test_gross_flips_bound_violation_and_interval_max_against_a_plain_loop():
    p = make_problem(6, 5, 2, 0.5, seed=1, dtype=torch.float64)
    params = init_params(1, 16, 5, seeds=[4], dtype=torch.float64)
    cfg = TrainConfig(max_steps=150, eps=1e-30, t_max=1e9, t_unit="absolute", check_every=1, dtype="float64")
    res = train(params, p, cfg)
    losses, times, flips, W, values = brute_force(params, p, res, 150)
    torch.testing.assert_close(res.params.W, W, rtol=1e-9, atol=1e-12)
    c, s = res.curves, res.summary
    assert s["flips_gross_total"][0] == flips.sum() > 0
    bounds = np.exp(-res.lambda_star * times) * 2 * losses[0]
    first = np.flatnonzero(2 * losses > bounds * (1 + 1e-12))[0]  # the narrow net breaks the bound
    assert s["bound_violation_step"][0] == first and s["bound_violation_t"][0] == times[first]
    assert not s["bound_held"][0]
    rel = losses / losses[0]
    value_rel, deriv_rel = values / values[0], (losses - values) / (losses[0] - values[0])
    for i in range(1, len(c["step"])):
        prev, step = c["step"][i - 1], c["step"][i]
        assert c["flips_gross"][i] == flips[prev:step].sum()  # bits changed on the steps prev -> ... -> step
        for name, per_step in (("rel_loss", rel), ("value_rel", value_rel), ("deriv_rel", deriv_rel)):
            window = np.r_[per_step[prev + 1:step], c[name][i]]  # every step after the previous row, and the row
            np.testing.assert_allclose(c[f"{name}_interval_max"][i], window.max(), rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(c["rel_loss_interval_min"][i], np.r_[rel[prev + 1:step], c["rel_loss"][i]].min(),
                                   rtol=1e-12)


PER_STEP_CURVES = ("step", "flips_gross", "rel_loss_interval_max", "rel_loss_interval_min", "value_rel", "deriv_rel",
                   "value_rel_interval_max", "deriv_rel_interval_max", "rel_loss")
PER_STEP_SUMMARY = ("flips_gross_total", "bound_violation_step", "value_rel_final", "deriv_rel_final", "steps")


def test_per_step_diagnostics_do_not_depend_on_check_every_or_batch():
    p = make_problem(6, 5, 2, 0.5, seed=1, dtype=torch.float64)
    cfg = TrainConfig(max_steps=300, eps=1e-5, t_max=1e9, t_unit="absolute", dtype="float64")
    seeds = [4, 5, 6]
    runs = {ce: train(init_params(3, 24, 5, seeds=seeds, dtype=torch.float64), p,
                      TrainConfig(**{**cfg.__dict__, "check_every": ce})) for ce in (1, 16)}
    assert runs[1].summary["flips_gross_total"].min() > 0 and np.any(runs[1].summary["bound_violation_step"] > 0)
    for table, fields in (("curves", PER_STEP_CURVES), ("summary", PER_STEP_SUMMARY)):
        for f in fields:
            a, b = getattr(runs[1], table)[f], getattr(runs[16], table)[f]
            assert np.array_equal(a, b, equal_nan=True), f
    np.testing.assert_allclose(runs[1].summary["bound_violation_t"], runs[16].summary["bound_violation_t"],
                               rtol=1e-12)  # flow time is summed per check: rounding differs
    batch = runs[16]
    for j, seed in enumerate(seeds):  # a replica alone gives the same values as in the batch
        one = train(init_params(1, 24, 5, seeds=[seed], dtype=torch.float64), p, cfg)
        rows = batch.curves["replica"] == j
        for f in PER_STEP_CURVES:
            np.testing.assert_allclose(one.curves[f], batch.curves[f][rows], rtol=1e-9, err_msg=f)
        for f in PER_STEP_SUMMARY:
            np.testing.assert_allclose(one.summary[f], batch.summary[f][j:j + 1], rtol=1e-9, err_msg=f)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_parts_summed_per_step_or_per_check_are_identical(monkeypatch, dtype):
    """The value and derivative parts of the loss: summed once per check from the buffered
    squares (the CPU's route) or once per step (the route off the CPU), every curve and summary
    value bit for bit the same on the CPU."""
    p = make_problem(8, 5, 2, 0.5, seed=2, dtype=torch.float64)
    params = init_params(4, 64, 5, seeds=list(range(4)), dtype=torch.float64)
    cfg = TrainConfig(eps=1e-4, t_max=6.0, max_steps=300, check_every=7, dtype=dtype)
    batched = train(params, p, cfg)
    init = Workspace.__init__

    def per_step(self, *args):
        init(self, *args)
        assert not self.parts_per_step  # the CPU's own route is the batched one
        self.parts_per_step = True

    monkeypatch.setattr(Workspace, "__init__", per_step)
    stepped = train(params, p, cfg)
    for table in ("curves", "summary"):
        a, b = getattr(batched, table), getattr(stepped, table)
        for f in a:
            np.testing.assert_array_equal(a[f], b[f], err_msg=f)
    assert np.all(batched.summary["value_rel_final"] > 0) and np.all(batched.summary["deriv_rel_final"] > 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_batch_twice_is_bitwise_identical(dtype):
    p = make_problem(6, 5, 2, 0.5, seed=2, dtype=getattr(torch, dtype))
    params = init_params(3, 64, 5, seeds=[0, 1, 2], dtype=getattr(torch, dtype))
    a, b = (train(params, p, TrainConfig(max_steps=200, eps=1e-8, dtype=dtype)) for _ in range(2))
    assert torch.equal(a.params.W, b.params.W)
    for f in SUMMARY_FIELDS:
        assert np.array_equal(a.summary[f], b.summary[f], equal_nan=a.summary[f].dtype.kind == "f"), f
    for f in CURVE_FIELDS:
        assert np.array_equal(a.curves[f], b.curves[f], equal_nan=a.curves[f].dtype.kind == "f"), f
