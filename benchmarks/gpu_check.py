"""The checks of benchmarks/gpu_check.sh that are not benchmarks, each printing table rows
(``ROW|check|result``):

    PYTHONPATH=. python benchmarks/gpu_check.py sweep CONFIG --device cuda   # num_gpus > 0, replicas auto
    PYTHONPATH=. python benchmarks/gpu_check.py memory --device cuda         # model vs max_memory_allocated
    PYTHONPATH=. python benchmarks/gpu_check.py study configs/paper.yaml --device cuda  # the study's GPU tasks

``sweep`` runs CONFIG (the smoke sweep) through ``python -m pipeline run`` with ``resources``
changed to ``num_gpus: 0.25`` (four tasks share the GPU) and ``replicas_per_task: auto`` (packed to
80% of the GPU memory a task is given), Parquet only, and checks that every run finished on the
device asked for. ``memory`` trains shapes on the device and compares ``sobolev.memory.task_bytes``
with the allocated peak (``torch.cuda.max_memory_allocated``; on the CPU there is no allocator peak
to read, so only the model is printed: tests/test_memory.py checks it against the resident peak).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SHAPES = [(32, 16, 4, 8192, 8, "float32", False), (48, 16, 4, 256, 8, "float32", True),
          (16, 8, 2, 16384, 8, "float64", True)]
CUDA_SHAPES = SHAPES + [(64, 32, 4, 8192, 256, "float32", False)]  # (n, d, k, m, R, dtype, bias)


def sweep(config: str, device: str) -> None:
    import pyarrow.compute as pc

    from pipeline.grid import plan
    from records.tables import read_table

    data = yaml.safe_load(Path(config).read_text())
    gpu = device == "cuda"
    data["resources"] = dict(data.get("resources", {}), num_gpus=0.25 if gpu else 0, num_cpus=1,
                             replicas_per_task="auto")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.yaml"
        path.write_text(yaml.safe_dump(data))
        from pipeline.config import load_config

        tasks, runs = plan(load_config(str(path)))
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--out", f"{tmp}/out", "--no-mlflow",
                            "--no-progress"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            print(f"ROW|sweep {data['name']} (num_gpus {data['resources']['num_gpus']}, replicas auto)|FAILED "
                  f"(exit {p.returncode}): {(p.stderr or p.stdout).strip().splitlines()[-1][:200]}")
            return
        table = read_table(Path(tmp) / "out", "runs", ["device", "status"])
    devices = sorted(set(table.column("device").to_pylist()))
    diverged = pc.sum(pc.equal(table.column("status"), "diverged")).as_py() or 0
    ok = table.num_rows == runs and devices == [device]
    print(f"ROW|sweep {data['name']}: {runs} runs in {len(tasks)} tasks (num_gpus "
          f"{data['resources']['num_gpus']}, replicas auto)|{'ok' if ok else 'FAILED'}: {table.num_rows} runs on "
          f"{devices}, {diverged} diverged, {wall:.0f} s")


def memory(device: str) -> None:
    import torch

    from sobolev import TrainConfig, init_params, lambda_star, make_problem, train
    from sobolev.memory import task_bytes

    cuda = device == "cuda"
    for n, d, k, m, R, dt, bias in (CUDA_SHAPES if cuda else SHAPES):
        dtype = getattr(torch, dt)
        model = task_bytes(R, n, d, k, m, dtype, bias=bias, eager=True)
        label = f"memory n={n} d={d} k={k} m={m} R={R} {dt}{' bias' if bias else ''}"
        if not cuda:
            print(f"ROW|{label}|model {model / 2**20:.2f} MiB (no allocator peak on the CPU)")
            continue
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        problem = make_problem(n, d, k, 0.5, bias=bias, seed=0, dtype=dtype, device=device)
        lam = lambda_star(problem)  # the driver's, not the task's: its temporaries are freed before training
        torch.cuda.reset_peak_memory_stats()
        params = init_params(R, m, d, bias=bias, seeds=list(range(R)), dtype=dtype, device=device)
        cfg = TrainConfig(eps=1e-30, t_max=1e9, t_unit="absolute", max_steps=200)  # no replica stops early
        train(params, problem, cfg, lambda_star=lam)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del problem, params
        ratio = model / peak
        print(f"ROW|{label}|model {model / 2**20:.2f} MiB, measured {peak / 2**20:.2f} MiB, model/measured "
              f"{ratio:.2f} ({'ok' if 0.8 <= ratio <= 1.25 else 'OFF by more than 25%'})")


STUDY_STEPS = (100, 1000)  # both on the checkpoint grid at one checkpoint a decade: one checkpoint apart
KINDS = [("L2 k=0", dict(k=0, bias=False, mode="relu")), ("Sobolev k=4", dict(k=4, bias=False, mode="relu")),
         ("bias k=4", dict(k=4, bias=True, mode="relu")), ("frozen control k=4", dict(k=4, bias=False, mode="frozen"))]


def _gpu_model(name: str):
    from pipeline.estimate import GPUS

    return next((g for g in GPUS if g.name in name), GPUS[0])


def study(config: str, device: str, quick: bool = False) -> None:
    import torch

    from pipeline.config import load_config
    from pipeline.estimate import CHECKPOINT_STEPS, gpu_eigvalsh_seconds, gpu_step_seconds
    from pipeline.grid import replicas_per_task
    from records.schema import Cell
    from sobolev import TrainConfig, init_params, lambda_star, make_problem, train
    from sobolev.memory import task_bytes

    cfg = load_config(config)
    cuda = device == "cuda"
    gpu = _gpu_model(torch.cuda.get_device_properties(0).name if cuda else "")
    base = cfg.training_variants()[0]
    dtype = getattr(torch, base.dtype)
    n, m = (8, 512) if quick else (max(cfg.grid.n), max(cfg.grid.m))
    steps = (10, 100) if quick else STUDY_STEPS
    delta = min(cfg.grid.delta)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for label, kind in KINDS:
        k, bias, mode = kind["k"], kind["bias"], kind["mode"]
        d = cfg.d_of(n, k)
        tr = TrainConfig(mode=mode, eps=1e-300, t_max=1e9, t_unit="absolute", divergence_factor=1e30,
                         checkpoints_per_decade=1, dtype=base.dtype)
        cell = Cell(n=n, k=k, d=d, m=m, delta=delta, bias=bias, target=cfg.target, delta_2=cfg.delta_2)
        R = 2 if quick else replicas_per_task(cfg, cell, tr)
        if cuda:
            torch.cuda.empty_cache()
            start = torch.cuda.memory_allocated()
        problem = make_problem(n, d, k, delta, bias=bias, seed=0, dtype=dtype, device=device)
        lam = lambda_star(problem)
        times = []
        for s in steps:
            params = init_params(R, m, d, bias=bias, seeds=list(range(R)), dtype=dtype, device=device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            train(params, problem, dataclasses.replace(tr, max_steps=s), lambda_star=lam)
            sync()
            times.append(time.perf_counter() - t0)
            del params
        measured = (times[1] - times[0]) / (steps[1] - steps[0])
        N = n * (k + 1)
        _, wall = gpu_step_seconds(gpu, R, m, n, d + bias, relu=mode == "relu", float64=base.dtype == "float64")
        checkpoint = CHECKPOINT_STEPS * float(wall) + R * float(gpu_eigvalsh_seconds(N))
        model = float(wall) + checkpoint / (steps[1] - steps[0])
        shape = f"study {label}: n={n} d={d} m={m} R={R} {base.dtype}{' bias' if bias else ''} {mode}"
        timing = (f"{measured * 1e3:.3g} ms a step ({steps[1] - steps[0]} steps and a checkpoint), GPU model "
                  f"({gpu.name}) {model * 1e3:.3g} ms: measured/model {measured / model:.2f}")
        mem = task_bytes(R, n, d, k, m, dtype, bias=bias, mode=mode, check_every=tr.check_every, eager=cuda)
        if cuda:
            peak = torch.cuda.max_memory_allocated() - start
            ratio = mem / peak
            print(f"ROW|{shape}|{'ok' if 0.8 <= ratio <= 1.25 else 'OFF by more than 25%'}: {timing}; memory model "
                  f"{mem / 2**30:.3g} GiB, measured {peak / 2**30:.3g} GiB, model/measured {ratio:.2f}")
        else:
            print(f"ROW|{shape}|ok: {timing}; memory model {mem / 2**30:.3g} GiB (no allocator peak on the CPU)")
        del problem
    N = 64 if quick else max(cfg.grid.n) * (max(cfg.grid.k) + 1)
    A = torch.randn(N, N, dtype=torch.float64, device=device)
    A = A @ A.T
    for name, fn, factor in (("eigvalsh", torch.linalg.eigvalsh, 1.0), ("eigh", torch.linalg.eigh, 3.0)):
        fn(A)  # warm-up: the solver's workspace and first-call costs
        sync()
        t0 = time.perf_counter()
        fn(A)
        sync()
        took = time.perf_counter() - t0
        model = factor * float(gpu_eigvalsh_seconds(N))
        print(f"ROW|study {name} N={N} float64|ok: {took:.3g} s, GPU model ({gpu.name}) {model:.3g} s: measured/model "
              f"{took / model:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=["sweep", "memory", "study"])
    ap.add_argument("config", nargs="?", default="configs/smoke.yaml")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="study: small shapes (the CPU test of the script)")
    args = ap.parse_args()
    if args.check == "study":
        study(args.config, args.device, args.quick)
    else:
        sweep(args.config, args.device) if args.check == "sweep" else memory(args.device)


if __name__ == "__main__":
    main()
