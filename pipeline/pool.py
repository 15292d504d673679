"""A bounded window of Ray tasks: submit task specs, take results as they finish.

One ``ray.wait`` per finished task (never ``ray.get`` over a list in a loop); a task that
raises comes back as its exception, so one failure never stops a sweep.
"""

from __future__ import annotations

import math

import torch

from .faults import time_limit
from .grid import TaskSpec
from .task import execute


def _remote_execute(task: TaskSpec, num_cpus: float, commit: str, limit_s: float = math.inf) -> dict:
    import ray  # (here and below) Ray takes seconds to import: only a sweep that trains needs it

    torch.set_num_threads(max(1, int(num_cpus)))
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    with time_limit(limit_s):  # raises faults.TaskTimeLimit in the task, which the driver retries
        return execute(task, device=device, git_commit=commit)


class TaskPool:
    def __init__(self, resources, commit: str, window: int | None = None):
        import ray

        self._ray = ray
        self._num_cpus = resources.num_cpus
        self._commit = commit
        self._remote = ray.remote(_remote_execute).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=resources.max_retries,
            retry_exceptions=False)
        slots = math.ceil(ray.cluster_resources().get("CPU", 1) / resources.num_cpus)
        # enough in flight to keep every slot busy, few enough to keep the driver and object store small
        self.window = window or max(4, 2 * slots)
        self._in_flight: dict = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    @property
    def full(self) -> bool:
        return len(self._in_flight) >= self.window

    def submit(self, task: TaskSpec, tag=None, limit_s: float = math.inf) -> None:
        """Start ``task`` on Ray, to raise ``faults.TaskTimeLimit`` after ``limit_s`` seconds."""
        self._in_flight[self._remote.remote(task, self._num_cpus, self._commit, limit_s)] = (task, tag)

    def next(self, timeout: float | None = None) -> tuple[TaskSpec, object, dict | None, BaseException | None] | None:
        """Block until a task finishes: (task, tag, result, None) or (task, tag, None, error);
        None if none finished within ``timeout`` seconds."""
        ready, _ = self._ray.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if not ready:
            return None
        task, tag = self._in_flight.pop(ready[0])
        try:
            return task, tag, self._ray.get(ready[0]), None
        except Exception as exc:  # noqa: BLE001 - reported by the caller, the sweep goes on
            return task, tag, None, exc

    def cancel(self) -> int:
        """Cancel every task in flight (a graceful stop's end); returns how many runs they held."""
        runs = 0
        for ref, (task, _) in list(self._in_flight.items()):
            self._ray.cancel(ref, force=True)
            runs += len(task.seeds)
        self._in_flight.clear()
        return runs
