import math

import numpy as np
import pytest

from sobolev import theory


def test_m_thm_scaling_exponents():
    base = theory.m_thm(4, 2, 3.0, 0.1, 0.1)
    assert theory.m_thm(8, 2, 3.0, 0.1, 0.1) / base == pytest.approx(2**6)
    assert theory.m_thm(4, 4, 3.0, 0.1, 0.1) / base == pytest.approx(2**3)
    assert theory.m_thm(4, 2, 3.0, 0.05, 0.1) / base == pytest.approx(2**4)
    assert theory.m_thm(4, 2, 6.0, 0.1, 0.1) / base == pytest.approx(2**2)
    assert theory.m_thm(4, 4, 3.0, 0.1, 0.1, q=2) / theory.m_thm(4, 2, 3.0, 0.1, 0.1, q=2) == pytest.approx(4)
    assert theory.m_thm(4, 2, 3.0, 0.1, 0.05) / base == pytest.approx(2**3)  # delta^3 (Du et al.)
    assert base == pytest.approx(4**6 * 2**3 * 9 / (0.1**4 * 0.1**3))


def test_k_zero_is_du_et_al():
    """k = 0: ``m = n^6 / (lambda_0^4 delta^3)``, whatever gamma; Lemma 2 and 4 stay finite."""
    assert theory.m_thm(4, 0, 3.0, 0.1, 0.1) == pytest.approx(4**6 / (0.1**4 * 0.1**3))
    assert theory.m_thm(4, 0, 30.0, 0.1, 0.1) == theory.m_thm(4, 0, 3.0, 0.1, 0.1)
    assert theory.m_lemma2(4, 0, 0.5, 0.1) == pytest.approx(4 * math.log(40) / 0.5)
    assert theory.weight_radius(4, 0, 2.0, 16, 0.5) == pytest.approx(2 * 2 / (4 * 0.5))
    assert theory.gamma([3.0, 4.0], np.zeros((2, 0)), bias=True, k=0) == pytest.approx(5.0)
    assert theory.augmented_separation(1.0, 0) == pytest.approx(0.5)  # alpha = 1/2 at k = 0


def test_gamma_and_bounds():
    y, h = np.array([3.0, 4.0]), np.array([[0.0, 1.0], [0.0, 0.0]])
    assert theory.gamma(y, h, bias=False, k=2) == pytest.approx(6.0)
    assert theory.gamma(y, h, bias=True, k=2) == pytest.approx(5.0 + 4.0)
    assert theory.prop1_lower_bound(10, 2, 0.5, 0.1) == pytest.approx(0.8 * 0.5 / 10000)
    assert theory.bound_trajectory([0.0, 2.0], 0.5, 3.0) == pytest.approx([3.0, 3.0 * math.exp(-1)])
    assert theory.augmented_separation(1.0, 2) == pytest.approx(0.25)
    assert theory.m_lemma2(4, 1, 0.5, 0.1) == pytest.approx(8 * math.log(80) / 0.5)  # c = 1 by default
    assert theory.m_lemma2(4, 1, 0.5, 0.1, c=2) == pytest.approx(8 * math.log(80) / 0.25)
    assert theory.weight_radius(4, 1, 2.0, 16, 0.5) == pytest.approx(2 * 2 / (4 * 0.5))
