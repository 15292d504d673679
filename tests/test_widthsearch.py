import math

import numpy as np
import pytest

from pipeline.widthsearch import WidthSearch, ladder


def drive(search: WidthSearch, succeeds) -> dict:
    """Answer the search's requests with ``succeeds(width, seed)`` until it is done."""
    for _ in range(1000):
        req = search.next_request()
        if req is None:
            assert search.done
            return search.result()
        i, seeds = req
        search.record(i, {s: bool(succeeds(search.widths[i], s)) for s in seeds})
    raise AssertionError("search did not finish")


def grid_threshold(widths, seeds, succeeds, target):
    """The full grid's answer: smallest width meeting the target with every larger width meeting it."""
    meets = [sum(succeeds(m, s) for s in seeds) >= math.ceil(target * len(seeds) - 1e-9) for m in widths]
    m_star = None
    for i in reversed(range(len(widths))):
        if not meets[i]:
            break
        m_star = widths[i]
    return m_star


def new(widths, **kw):
    kw = dict(seeds=tuple(range(8)), extra=tuple(range(8, 16)), target=0.875, chunk=4, gallop=1) | kw
    return WidthSearch(widths=widths, **kw)


def test_ladder():
    assert ladder(16, 256, 1) == (16, 32, 64, 128, 256)
    assert ladder(16, 64, 4) == (16, 19, 23, 27, 32, 38, 45, 54, 64)
    assert ladder(16, 100, 1) == (16, 32, 64)


@pytest.mark.parametrize("threshold", [16, 32, 128, 512, 4096, 8192])
def test_deterministic_threshold_found_exactly_and_confirmed(threshold):
    widths = ladder(16, 8192, 1)
    res = drive(new(widths), lambda m, s: m >= threshold)
    if threshold == 16:
        assert res["censored"] == "below" and res["m_star"] is None
    else:
        assert res["m_star"] == threshold and res["censored"] == "none"
        assert res["m_lo"] == threshold // 2
    assert res["confirmed"]
    # fewer runs than the grid's 8 seeds x 10 widths
    assert res["runs_used"] < 8 * len(widths)


def test_never_succeeds_is_censored_above():
    res = drive(new(ladder(16, 1024, 1), gallop=2), lambda m, s: False)
    assert res["censored"] == "above" and res["m_star"] is None and res["m_lo"] == 1024


def test_curtailment_one_failure_decides():
    s = new((16, 32), target=1.0)
    i, seeds = s.next_request()
    assert (i, seeds) == (0, (0, 1, 2, 3))
    s.record(0, {0: False, 1: True, 2: True, 3: True})
    i, seeds = s.next_request()
    assert i == 1  # width 16 already failed: no more seeds spent on it


def test_bisection_on_refined_ladder_matches_grid():
    widths = ladder(16, 4096, 4)
    res = drive(new(widths, gallop=4), lambda m, s: m >= 300)
    assert res["m_star"] == min(w for w in widths if w >= 300)
    assert len(res["widths"]) < len(widths) / 2


def test_noisy_success_matches_grid_mostly_and_escalates():
    rng = np.random.default_rng(0)
    widths = ladder(16, 8192, 1)
    agree, close, runs = 0, 0, []
    for cell in range(60):
        log_star = rng.uniform(5, 12)
        table = {(m, s): rng.random() < 1 / (1 + math.exp(-4 * (math.log2(m) - log_star))) for m in widths
                 for s in range(16)}
        succeeds = lambda m, s: table[(m, s)]  # noqa: E731
        res = drive(new(widths), succeeds)
        grid = grid_threshold(widths, range(8), succeeds, 0.875)
        if res["censored"] == "below":
            res["m_star"] = widths[0]
        agree += res["m_star"] == grid
        if res["m_star"] is not None and grid is not None:
            close += abs(math.log2(res["m_star"]) - math.log2(grid)) <= 1
        else:
            close += res["m_star"] == grid
        runs.append(res["runs_used"])
    assert agree >= 0.8 * 60 and close >= 0.95 * 60
    assert np.mean(runs) < 0.6 * 8 * len(widths)
