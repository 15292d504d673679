import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sobolev.memory import bytes_per_replica, replicas_that_fit, task_bytes

# (n, d, k, m, R, dtype, bias): the patterns dominate; the n^2 k^2 terms (H) dominate; float64 with bias;
# k = 0
SHAPES = [(32, 16, 4, 8192, 8, "float32", False), (48, 16, 4, 256, 8, "float32", True),
          (16, 8, 2, 16384, 8, "float64", True), (32, 16, 0, 8192, 8, "float32", False)]

# Peak resident memory of a task, in a fresh process: with the allocator returning every
# freed block to the system, peak RSS (VmHWM, reset through clear_refs) minus the RSS
# before the task is the peak of what the task held. A small run of the same shape first
# loads the code paths and the libraries' own buffers.
CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)  # memory does not depend on it; time under load does
from sobolev import TrainConfig, init_params, make_problem, train

def rss():
    f = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(f["VmRSS"].split()[0]) * 1024, int(f["VmHWM"].split()[0]) * 1024

peaks = []
for n, d, k, m, R, dtype, bias in json.loads(sys.argv[1]):
    cfg = TrainConfig(eps=1e-30, t_max=1e9, t_unit="absolute", max_steps=6, check_every=4, dtype=dtype)
    dtype = getattr(torch, dtype)
    p = make_problem(n, d, k, 0.5, bias=bias, seed=0, dtype=dtype)
    train(init_params(1, 8, d, bias=bias, seeds=0, dtype=dtype), p, cfg)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss()[0]
    res = train(init_params(R, m, d, bias=bias, seeds=0, dtype=dtype), p, cfg)
    peaks.append(rss()[1] - base)
    del res
print(json.dumps(peaks))
"""


@pytest.mark.slow  # a subprocess training large shapes to measure their peak memory
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_model_matches_measured_peak_within_25_percent():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    for (n, d, k, m, R, dtype, bias), peak in zip(SHAPES, measured):
        model = task_bytes(R, n, d, k, m, getattr(torch, dtype), bias=bias)
        assert 0.75 * peak <= model <= 1.25 * peak, ((n, d, k, m, R, dtype, bias), model, peak)


def test_replicas_that_fit_is_the_largest_batch_within_budget():
    for budget in (10**6, 10**8, 8 * 2**30):
        for args in ((32, 16, 4, 8192), (64, 24, 8, 16), (4, 10, 1, 65536)):
            R = replicas_that_fit(budget, *args, torch.float32, bias=True)
            assert R == 0 or task_bytes(R, *args, torch.float32, bias=True) <= budget
            assert task_bytes(R + 1, *args, torch.float32, bias=True) > budget


def test_model_scales_as_expected():
    per = bytes_per_replica(32, 16, 4, 8192)
    assert bytes_per_replica(32, 16, 4, 8192, torch.float64) > 1.9 * per  # almost everything is in the dtype
    assert bytes_per_replica(32, 16, 4, 8192, mode="frozen") < per  # no second and third pattern
    # once m dominates: affine in m (the O(n k) and O(N^2) buffers on top), near twice at twice the width
    double, quadruple = bytes_per_replica(32, 16, 4, 16384), bytes_per_replica(32, 16, 4, 32768)
    assert quadruple - double == 2 * (double - per) and double == pytest.approx(2 * per, rel=0.02)
    assert task_bytes(16, 32, 16, 4, 8192) >= 16 * per
    assert replicas_that_fit(10, 32, 16, 4, 8192) == 0
    with pytest.raises(ValueError, match="mode"):
        bytes_per_replica(32, 16, 4, 8192, mode="linear")
    assert bytes_per_replica(32, 16, 0, 8192) < per  # k = 0: values only
