import subprocess
import sys

from pipeline_helpers import tiny_config

from pipeline.grid import cells, plan
from records.identity import run_id, run_id_of_record


def test_plan_covers_grid_once_and_skips_done():
    cfg = tiny_config()
    tasks, total = plan(cfg)
    assert total == 2 * 1 * 2 * 1 * 2 * 3  # n, k, m, delta, bias, seeds
    ids = [r for t in tasks for r in t.run_ids]
    assert len(ids) == total == len(set(ids))
    assert all(len(t.seeds) <= 2 for t in tasks)  # replicas_per_task
    done = set(ids[:5])
    rest, total2 = plan(cfg, skip=done)
    assert total2 == total
    assert {r for t in rest for r in t.run_ids} == set(ids) - done


def test_run_id_depends_on_run_not_on_sweep_or_resources():
    a, b = tiny_config(), tiny_config(name="other", resources=dict(num_cpus=2, replicas_per_task=3))
    ids_a = {r for t in plan(a)[0] for r in t.run_ids}
    ids_b = {r for t in plan(b)[0] for r in t.run_ids}
    assert ids_a == ids_b
    c = tiny_config(training=dict(step_factor=0.5))
    assert not ids_a & {r for t in plan(c)[0] for r in t.run_ids}


def test_run_id_same_in_another_process():
    cfg = tiny_config()
    cell = cells(cfg)[0]
    here = run_id(cell, cfg.training_variants()[0], 2)
    code = ("from pipeline.grid import cells; from records.identity import run_id; from pipeline_helpers import tiny_config; "
            "c = tiny_config(); print(run_id(cells(c)[0], c.training_variants()[0], 2))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": ":".join(sys.path), "PYTHONHASHSEED": "123"}).stdout.strip()
    assert here == there


def test_auto_replicas_follow_the_memory_model():
    import torch

    from sobolev.memory import task_bytes

    cfg = tiny_config(resources=dict(replicas_per_task="auto", memory_budget_gb=0.001), seeds=dict(init=64),
                      grid=dict(m=[64, 4096]))
    tasks, total = plan(cfg)
    assert sum(len(t.seeds) for t in tasks) == total
    budget = 0.001 * 2**30
    for t in tasks:
        c = t.cell
        R = len(t.seeds)
        assert task_bytes(R, c.n, c.d, c.k, c.m, torch.float32, bias=c.bias) <= budget or R == 1
    small = [t for t in tasks if t.cell.m == 64]
    large = [t for t in tasks if t.cell.m == 4096]
    # small cells take all their seeds in one task, large ones are split
    assert all(len(t.seeds) == 64 for t in small) and max(len(t.seeds) for t in large) < 64


def test_training_axes_in_the_grid_pair_every_setting_with_the_same_cells_and_seeds():
    cfg = tiny_config(grid=dict(mode=["relu", "frozen"], step_factor=[1.0, 0.5]))
    tasks, total = plan(cfg)
    assert total == 4 * plan(tiny_config())[1]
    settings = {(t.train.mode, t.train.step_factor) for t in tasks}
    assert settings == {("relu", 1.0), ("relu", 0.5), ("frozen", 1.0), ("frozen", 0.5)}
    # the relu, step 1.0 runs are the very runs of the sweep without the axes
    base = {r for t in plan(tiny_config())[0] for r in t.run_ids}
    assert base == {r for t in tasks if (t.train.mode, t.train.step_factor) == ("relu", 1.0) for r in t.run_ids}


def test_run_id_of_a_record_is_its_run_id():
    from pipeline.task import execute

    cfg = tiny_config(grid=dict(n=[4], m=[16], bias=[False]), training=dict(max_steps=5))
    task = plan(cfg)[0][0]
    for rec, rid in zip(execute(task)["runs"], task.run_ids):
        assert rec["run_id"] == rid == run_id_of_record(rec)
