"""The train loop of an earlier commit against the current one, interleaved in one process
(float32, CPU, n=32, d=16, k=4, R=16, m=1024 and 8192), with the minimum over rounds of each job
(robust to load from other processes) and the median of per-round ratios.

    mkdir -p /tmp/old && git archive 371df4a sobolev | tar -x -C /tmp/old && mv /tmp/old/sobolev /tmp/old/sobolev_old
    SOBOLEV_OLD_PATH=/tmp/old PYTHONPATH=. python benchmarks/compare_loop.py ROUNDS THREADS

Jobs: the old hot loop, the new one without and with the per-step flip count (``bench_step.Project``;
on the CPU both take the fused pattern update of ``sobolev.fused``, the first less the count),
and ``train`` for L and 2L steps at one checkpoint per decade (same checkpoints), whose
difference over L is the loop's cost per step."""
import os
import statistics
import sys
import time

sys.path[:0] = [os.environ["SOBOLEV_OLD_PATH"], os.path.dirname(os.path.abspath(__file__))]
import torch

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
import sobolev_old  # noqa: F401,E402  (the package import shadows its train module by the function)

old = sys.modules["sobolev_old.train"]
from bench_step import Project, Setup

from sobolev import TrainConfig, lambda_star, train


def old_bare(s):
    R, m = s.params.R, s.params.m
    dt = s.X.dtype
    ws = old._Workspace(R, m, s.X, s.V, s.y, s.h, frozen=False)
    T = dict(W=s.params.W.clone(), a=s.params.a.clone(), live=torch.ones(R, dtype=dt), applied=torch.zeros(R, dtype=dt),
             thr_eps=torch.zeros(R, dtype=dt), thr_div=torch.full((R,), float("inf"), dtype=dt))
    def run(n):
        for i in range(0, n, 16):
            ws.run(T, s.eta, min(16, n - i))
    return run

def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
for m, L in ((1024, 384), (8192, 128)):
    s = Setup(32, 16, 4, m, 16, torch.device("cpu"))
    lam = lambda_star(s.problem)
    new_cfg = TrainConfig(eps=1e-30, t_max=1e30, t_unit="absolute", checkpoints_per_decade=1, max_steps=L)
    old_cfg = old.TrainConfig(eps=1e-30, t_max=1e30, t_unit="absolute", checkpoints_per_decade=1, max_steps=L)
    import dataclasses
    jobs = {
        "old bare": lambda: old_bare(s)(L),
        "new bare (uncounted)": lambda: Project(s, False).run(L),
        "new step (counted)": lambda: Project(s, True).run(L),
        "old train L": lambda: old.train(s.params, s.problem, old_cfg, lambda_star=lam),
        "old train 2L": lambda: old.train(s.params, s.problem, dataclasses.replace(old_cfg, max_steps=2 * L), lambda_star=lam),
        "new train L": lambda: train(s.params, s.problem, new_cfg, lambda_star=lam),
        "new train 2L": lambda: train(s.params, s.problem, dataclasses.replace(new_cfg, max_steps=2 * L), lambda_star=lam),
    }
    for f in jobs.values():  # warm-up
        pass
    old_bare(s)(32); Project(s, True).run(32)
    res = [{k: timed(f) for k, f in jobs.items()} for _ in range(rounds)]
    mn = {k: min(r[k] for r in res) for k in jobs}
    med = lambda f: statistics.median(f(r) for r in res)
    print(f"\nm={m} R=16 n=32 d=16 k=4, L={L}, {rounds} rounds; ms/step (min over rounds)")
    for k in ("old bare", "new bare (uncounted)", "new step (counted)"):
        print(f"  {k:24s} {mn[k] / L * 1e3:7.3f}")
    for v in ("old", "new"):
        loop = (mn[f"{v} train 2L"] - mn[f"{v} train L"]) / L
        print(f"  {v} train loop per step   {loop * 1e3:7.3f}  overhead vs its bare step (min): "
              f"{loop / (mn[v + ' bare' if v == 'old' else 'new bare (uncounted)'] / L) - 1:+.1%};  median of per-round ratios: "
              f"{med(lambda r: (r[v + ' train 2L'] - r[v + ' train L']) / (r['old bare' if v == 'old' else 'new bare (uncounted)'])) - 1:+.1%}")
    print(f"  new train loop per step over the OLD bare step (min): "
          f"{(mn['new train 2L'] - mn['new train L']) / mn['old bare'] - 1:+.1%}; median of per-round ratios "
          f"{med(lambda r: (r['new train 2L'] - r['new train L']) / r['old bare']) - 1:+.1%}")
    print(f"  new loop / old loop per step (min): {(mn['new train 2L'] - mn['new train L']) / (mn['old train 2L'] - mn['old train L']):.3f}; "
          f"median of per-round ratios {med(lambda r: (r['new train 2L'] - r['new train L']) / (r['old train 2L'] - r['old train L'])):.3f}")
print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
