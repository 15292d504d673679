import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.predict import predict_width
from analysis.widths import LAWS_COLUMNS, laws_table, width_thresholds, write_laws
from tests.answer_synth import conv_probability, planted_study, pooled_crossing

LAW = {"c": 2.0, "p": 1.5, "q": 1.0, "r": -0.5}
DOMAIN = {"n_min": 8, "n_max": 128, "k_min": 1, "k_max": 8, "delta_min": 0.25, "delta_max": 0.5, "d_min": 16,
          "d_max": 16, "m_min": 512, "m_max": 16384}
rng = np.random.default_rng(0)
_B = rng.normal(size=(4, 4)) * 0.05
COV = _B @ _B.T + 0.01 * np.eye(4)  # a planted covariance of (c, p, q, r)


def _rows(quantity, method, law, cov, dof, k_group="k>=1", **domain):
    names = list(law)
    return [{"quantity": quantity, "method": method, "term": t, "estimate": law[t], "dof": dof, "horizon": 48.0,
             "criterion": f"{quantity}@48", "eps": 1e-8, "rate": 0.9, "bias": False, "k_group": k_group,
             **{f"cov_{u}": cov[i, j] for j, u in enumerate(names)}, **DOMAIN, **domain, "note": ""}
            for i, t in enumerate(names)]


@pytest.fixture
def laws_dir(tmp_path):
    plain = {"c": 3.0, "p": 2.0, "r": -1.0}
    rows = (_rows("conv", "thresholds", LAW, COV, 10) + _rows("lazy", "drift_law", LAW, COV, np.nan)
            + _rows("conv", "thresholds", plain, COV[np.ix_([0, 1, 3], [0, 1, 3])], 4, "k=0", k_min=0, k_max=0)
            + [{"quantity": "known", "method": "du_2019", "term": "p", "estimate": 6.0}])
    write_laws(pd.DataFrame(rows).reindex(columns=LAWS_COLUMNS), tmp_path)
    return tmp_path


def _closed_form(n, k, delta, law, cov, quantile):
    g = np.array([1.0, np.log(n), np.log(k), np.log(delta)])[: len(law)] if "q" in law else \
        np.array([1.0, np.log(n), np.log(delta)])
    log_m = g @ np.array(list(law.values()))
    half = quantile * np.sqrt(g @ cov @ g)
    return np.exp(log_m), np.exp(log_m - half), np.exp(log_m + half)


def test_inside_the_domain_the_law_and_its_interval(laws_dir):
    out = predict_width(32, 2, 0.3, d=16, quantity="conv", results=laws_dir)
    est, lo, hi = _closed_form(32, 2, 0.3, LAW, COV, stats.t.ppf(0.975, 10))
    assert out.estimate == pytest.approx(est, rel=1e-12) and est == pytest.approx(np.exp(2) * 32**1.5 * 2 / 0.3**0.5)
    assert (out.lo, out.hi) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert not out.beyond_studied and out.note == "" and out.horizon == 48.0 and out.criterion == "conv@48"
    assert out.domain.n == (8, 128) and out.domain.d == 16 and out.domain.m == (512, 16384)
    # a law from a bootstrap (no residual degrees of freedom recorded) takes the normal quantile
    lazy = predict_width(32, 2, 0.3, d=16, quantity="lazy", results=laws_dir / "laws.csv")
    assert lazy.method == "drift_law"
    assert lazy.hi == pytest.approx(_closed_form(32, 2, 0.3, LAW, COV, stats.norm.ppf(0.975))[2], rel=1e-9)
    # k = 0 has its own law, without a k term
    plain = predict_width(16, 0, 0.5, d=16, results=laws_dir)
    assert plain.estimate == pytest.approx(np.exp(3.0) * 16**2 / 0.5)


def test_beyond_the_studied_widths_is_flagged(laws_dir):
    out = predict_width(128, 8, 0.25, d=16, quantity="conv", results=laws_dir)
    assert out.estimate > 16384 and out.beyond_studied
    assert "beyond the largest studied width 16384" in out.note and "beyond the studied widths" in str(out)
    small = predict_width(8, 1, 0.5, d=16, results=laws_dir)
    assert small.estimate < 512 and small.beyond_studied and "below the smallest studied width 512" in small.note


@pytest.mark.parametrize("args,match", [
    (dict(n=200, k=2, delta=0.3, d=16), r"n=200 is outside the studied domain n in \[8, 128\]"),
    (dict(n=32, k=16, delta=0.3, d=16), r"k=16 is outside the studied domain k in \[1, 8\]"),
    (dict(n=32, k=2, delta=0.1, d=16), r"delta=0.1 is outside the studied domain delta in \[0.25, 0.5\]"),
    (dict(n=32, k=2, delta=0.3, d=8), r"d=8 is outside the studied domain d = 16"),
    (dict(n=32, k=2, delta=0.3, d=16, quantity="speed"), r"quantity='speed' is unknown"),
    (dict(n=32, k=2, delta=0.3, d=16, quantity="rate"), r"no law for quantity='rate'.*conv/thresholds"),
    (dict(n=32, k=0, delta=0.3, d=16, quantity="lazy"), r"no law for quantity='lazy'.*k=0"),
])
def test_outside_the_domain_one_line(laws_dir, args, match):
    with pytest.raises(ValueError, match=match) as err:
        predict_width(**args, results=laws_dir)
    assert "\n" not in str(err.value)


def test_default_results_and_a_missing_file(laws_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SOBOLEV_RESULTS", str(laws_dir))
    assert predict_width(32, 2, 0.3, d=16).estimate == pytest.approx(np.exp(2) * 32**1.5 * 2 / 0.3**0.5)
    with pytest.raises(FileNotFoundError, match="write_laws"):
        predict_width(32, 2, 0.3, d=16, results=tmp_path / "empty")


def test_a_planted_study_predicts_its_own_law(tmp_path):
    cells = [dict(n=n, k=k, delta=0.5, m_inf=8 * n**1.5 * k) for n in (8, 16, 32) for k in (1, 2, 4)]
    runs = planted_study(cells, widths=2 ** np.arange(5, 16), instances=4, seeds=8, rng_seed=5, A=30.0, T0=8.0)
    widths = width_thresholds(runs, quantity="conv", horizon=48.0, n_boot=0)
    write_laws(laws_table(runs, widths=widths, quantities=("conv",)), tmp_path)
    out = predict_width(20, 3, 0.5, d=6, results=tmp_path)
    truth = pooled_crossing(lambda m, mi: conv_probability(m, mi, 48.0, slope=3.0, A=30.0, T0=8.0), 8 * 20**1.5 * 3,
                            0.0)
    laws = pd.read_csv(tmp_path / "laws.csv")
    law = laws[laws["quantity"] == "conv"].set_index("term")["estimate"]
    assert out.estimate == pytest.approx(np.exp(law["c"] + law["p"] * np.log(20) + law["q"] * np.log(3)), rel=1e-12)
    assert out.lo < out.estimate < out.hi and abs(np.log(out.estimate / truth)) < 0.3
    assert out.criterion == "conv@48" and out.domain.delta == (0.5, 0.5)
    with pytest.raises(ValueError, match="delta=0.4 is outside"):
        predict_width(20, 3, 0.4, d=6, results=tmp_path)


def test_a_law_per_separation_answers_at_its_separations_only(tmp_path):
    rows = (_rows("lazy", "drift_law", LAW, COV, np.nan, delta=0.25, delta_min=0.25, delta_max=0.25)
            + _rows("lazy", "drift_law", {**LAW, "c": 4.0}, COV, np.nan, delta=0.5, delta_min=0.5, delta_max=0.5))
    write_laws(pd.DataFrame(rows).reindex(columns=LAWS_COLUMNS), tmp_path)
    low = predict_width(16, 2, 0.25, d=16, quantity="lazy", results=tmp_path)
    high = predict_width(16, 2, 0.5, d=16, quantity="lazy", results=tmp_path)
    g = np.array([1.0, np.log(16), np.log(2), np.log(0.25)])
    assert low.estimate == pytest.approx(np.exp(g @ np.array(list(LAW.values()))), rel=1e-9)
    assert high.estimate == pytest.approx(low.estimate * np.exp(2.0 + LAW["r"] * np.log(0.5 / 0.25)), rel=1e-9)
    with pytest.raises(ValueError, match=r"delta=0.35: .* at delta = 0.25, 0.5 only"):
        predict_width(16, 2, 0.35, d=16, quantity="lazy", results=tmp_path)
