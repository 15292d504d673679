"""One task: train the seeds of one cell as a batch and return plain records.

No Ray, MLflow or file output here beyond the documented test-only hooks, so the
driver (or a test) can call :func:`execute` directly.

Test-only settings (environment variables, read by the task; none is set outside the tests):
- ``SOBOLEV_WORK_LOG=<path>``: append one line per trained run (its run_id), to count training work.
- ``SOBOLEV_FAULT_EXIT_ONCE=<dir>``: the first task to start creates ``<dir>/fired`` and kills its
  own worker process with ``os._exit(1)`` before training (a worker death, which Ray retries).
- ``SOBOLEV_TASK_DELAY=<seconds>``: sleep before training (to kill a driver or node mid-sweep, or,
  longer than the task's time limit, a task that hangs).
- ``SOBOLEV_TASK_DELAY_SEED=<seed>``: only tasks whose batch holds this seed sleep (so that the
  retry of a hung task at half the replicas hangs in one half only).
- ``SOBOLEV_TASK_MEMORY_CAP=<bytes>``: a real memory limit: while a task runs, its process may map
  at most this many bytes more than it had when its first task started (``RLIMIT_AS``, restored
  after each task; a worker process runs many tasks and keeps some memory it freed mapped, so the
  limit is counted from one fixed point, as a memory limit on the worker would be). An allocation
  beyond it fails as out of memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import resource
import time

import numpy as np
import torch

import sobolev
from records.schema import CURVE_COLUMNS, INSTANCE_COLUMNS
from sobolev import init_params, lambda_star, make_problem, theory, train
from sobolev.problem import alpha_beta

from .grid import TaskSpec

_MAPPED_AT_FIRST_TASK: list[int] = []  # SOBOLEV_TASK_MEMORY_CAP's fixed point, once per process


@contextlib.contextmanager
def _test_hooks(task: TaskSpec):
    marker_dir = os.environ.get("SOBOLEV_FAULT_EXIT_ONCE")
    if marker_dir:
        try:
            fd = os.open(os.path.join(marker_dir, "fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            os._exit(1)
        except FileExistsError:
            pass
    delay = float(os.environ.get("SOBOLEV_TASK_DELAY", "0") or 0)
    only = os.environ.get("SOBOLEV_TASK_DELAY_SEED")
    if delay and (not only or int(only) in task.seeds):
        time.sleep(delay)
    cap = int(os.environ.get("SOBOLEV_TASK_MEMORY_CAP", "0") or 0)
    if not cap:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if not _MAPPED_AT_FIRST_TASK:
        with open("/proc/self/statm") as fh:  # the first field: the pages mapped now
            _MAPPED_AT_FIRST_TASK.append(int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE"))
    resource.setrlimit(resource.RLIMIT_AS, (_MAPPED_AT_FIRST_TASK[0] + cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def instance_metrics(problem, lam: float, delta_fail: float) -> dict:
    """The instance's measured quantities and the theory's numbers for it."""
    n, k, bias = problem.n, problem.k, problem.bias
    delta_1, delta_2 = problem.delta_1, problem.delta_2
    gamma = theory.gamma(problem.y.double().cpu().numpy(), problem.h.double().cpu().numpy(), bias=bias, k=k)
    # Proposition 1 holds for the no-bias network; the bias network is it on augmented data
    # (separation min(alpha delta_1, 2 beta), tilt alpha delta_2)
    sep, tilt = ((theory.augmented_separation(delta_1, k), alpha_beta(k)[0] * delta_2) if bias
                 else (delta_1, delta_2))
    values = dict(lambda_star=lam, delta_1=delta_1, delta_2_measured=delta_2, gamma=gamma,
                  m_thm=theory.m_thm(n, k, gamma, lam, delta_fail), prop1_bound=theory.prop1_lower_bound(n, k, sep, tilt))
    assert values.keys() == INSTANCE_COLUMNS.keys()
    return values


def execute(task: TaskSpec, *, device: str = "cpu", git_commit: str = "unknown") -> dict:
    """Train ``task``: ``{"runs": [record, ...], "curves": {column: list}, "span": (start, end)}``
    (``span`` in seconds since the epoch, to split a sweep's wall time into training and the rest)."""
    with _test_hooks(task):
        started = time.time()
        start = time.perf_counter()
        c, tr = task.cell, task.train
        dtype = getattr(torch, tr.dtype)
        problem = make_problem(c.n, c.d, c.k, c.delta, bias=c.bias, target=c.target, seed=c.data_seed,
                               delta_2=c.delta_2, dtype=dtype, device=device)
        lam = lambda_star(problem)
        params = init_params(len(task.seeds), c.m, c.d, bias=c.bias, seeds=list(task.seeds), dtype=dtype,
                             device=device)
        result = train(params, problem, tr, lambda_star=lam)
    wall = time.perf_counter() - start
    run_ids = task.run_ids
    common = dict(sweep=task.sweep, task_id=task.task_id, **dataclasses.asdict(c), **dataclasses.asdict(tr),
                  **instance_metrics(problem, lam, task.delta_fail),
                  device=str(device), task_wall_time=wall, wall_time=wall / len(task.seeds),
                  version=sobolev.__version__, git_commit=git_commit, batch_seeds=json.dumps(list(task.seeds)),
                  delta_fail=task.delta_fail, threads=torch.get_num_threads(),
                  created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    runs = []
    for j, seed in enumerate(task.seeds):
        rec = dict(common, run_id=run_ids[j], seed=int(seed))
        rec.update({f: _plain(v[j]) for f, v in result.summary.items()})
        runs.append(rec)
    cur = result.curves
    curves = {f: _plain_list(cur[f]) for f in CURVE_COLUMNS if f != "run_id"}
    curves["run_id"] = [run_ids[j] for j in cur["replica"]]
    log = os.environ.get("SOBOLEV_WORK_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write("".join(f"{r}\n" for r in run_ids))
    return dict(runs=runs, curves=curves, span=(started, time.time()))


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _plain_list(a: np.ndarray) -> list:
    return a.tolist()
