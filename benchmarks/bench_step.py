"""Step benchmark: one gradient-descent step on the directional Sobolev loss, the project's
batched hot-loop step against what a user would write, on identical data in one process.

    PYTHONPATH=. python benchmarks/bench_step.py                 # float32, CPU, 2 threads
    PYTHONPATH=. python benchmarks/bench_step.py --device cuda   # adds n=64, d=32, m=8192, R=256

Every implementation does the whole step (loss, gradient, ``W -= eta * grad``) on its own
copy of the same weights. Before timing, one step of each is checked against the closed-form
gradient of ``sobolev.loss_and_grad``. Timing is interleaved (one round runs every
implementation in turn), so that load from other processes hits all of them alike; the
figures are medians over rounds of the time per step and of the per-round ratios (the
minimum shows the noise; on a shared machine run it when nothing else does). GFLOP/s
counts the ``6 R n m d`` FLOPs of the three GEMMs, whichever implementation runs them; the
``bmm`` row runs just those GEMMs and is the practical limit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.func import grad_and_value, jacrev, vmap

from sobolev import Params, TrainConfig, gram, init_params, loss_and_grad, make_problem
from sobolev.fused import FusedReluPatterns
from sobolev.patterns import signed_pattern
from sobolev.problem import effective_data
from sobolev.rules import pattern_rule
from sobolev.state import Data, LoopState
from sobolev.step import Workspace

CPU_SHAPES = [(32, 16, 4, m, R) for m in (1024, 8192) for R in (1, 16)]  # (n, d, k, m, R)
CUDA_SHAPES = CPU_SHAPES + [(64, 32, 4, 8192, 256)]


class Setup:
    """Identical data for every implementation: problem, initial weights and per-replica
    step sizes ``eta_j = 1 / lambda_max(H_j(0))`` (the training default)."""

    def __init__(self, n, d, k, m, R, device):
        self.problem = make_problem(n, d, k, 0.5, seed=0, device=device)
        self.params = init_params(R, m, d, seeds=0, device=device)
        self.X, self.V, self.y, self.h, _ = effective_data(self.problem)
        self.eta = 1.0 / torch.linalg.eigvalsh(gram(self.params, self.problem).double())[:, -1].to(self.X.dtype)


class Impl:
    """One implementation of the step, on its own copy of the weights (``W()``)."""

    name = ""

    def step(self):
        """One step; returns the loss (R,) at the weights it started from."""
        raise NotImplementedError

    def run(self, n_steps: int) -> None:
        for _ in range(n_steps):
            self.step()


class Project(Impl):
    """The hot loop of ``train`` (``sobolev.step.Workspace.run``), timed as ``train`` calls it:
    ``check_every`` steps per call. Every replica stays live (the thresholds never trigger)."""

    name = "project (train hot loop)"

    def __init__(self, s: Setup, count_flips: bool = True):
        R, m = s.params.R, s.params.m
        dev, dt = s.X.device, s.X.dtype
        data = Data.of(s.problem)
        W, a = s.params.W.clone(), s.params.a.clone()
        Aa0 = signed_pattern(W, a, data.XT, torch.empty(R, m, len(s.X), dtype=dt, device=dev))
        self.ws = Workspace(R, data)
        rule = pattern_rule("relu", dev)  # train's own rule on this device
        self.pattern = (rule if count_flips else uncounted(rule))(W, a, Aa0, data)
        self.state = LoopState(W=W, a=a, live=torch.ones(R, dtype=dt, device=dev),
                               applied=torch.zeros(R, dtype=dt, device=dev),
                               loss_converged=torch.zeros(R, dtype=dt, device=dev),
                               loss_diverged=torch.full((R,), float("inf"), dtype=dt, device=dev))
        self.eta = s.eta

    def W(self):
        return self.state.W

    def step(self):
        return self.ws.run(self.state, self.pattern, self.eta, 1)[:, 0]

    def run(self, n_steps: int) -> None:
        chunk = TrainConfig().check_every
        for i in range(0, n_steps, chunk):
            self.ws.run(self.state, self.pattern, self.eta, min(chunk, n_steps - i))


def uncounted(rule):
    """``rule`` (a relu pattern rule) without the per-step flip count: the bare step of
    ``bench_loop.py``, against which the loop's per-step diagnostics are timed. It takes the
    same route as ``train`` (fused on the CPU, through the views ``train``'s kernel binds once,
    eager ops elsewhere), less the count."""

    class UncountedPatterns(rule):
        def advance(self, keep: bool = False) -> None:
            new = self.spare
            torch.mm(self.W2, self.XT, out=new.view(-1, new.shape[2]))
            if isinstance(self, FusedReluPatterns):
                self.kernel.uncounted(new)
            else:
                new.gt_(0).mul_(self.a3)
            self.current, self.spare = new, self.current
            self.current_T = new.transpose(1, 2)

    return UncountedPatterns


class Allocating(Impl):
    """``sobolev.loss_and_grad`` (closed form, fresh tensors every call) and an update."""

    name = "sobolev.loss_and_grad"

    def __init__(self, s: Setup):
        self.p = Params(W=s.params.W.clone(), a=s.params.a)
        self.problem, self.eta = s.problem, s.eta[:, None, None]

    def W(self):
        return self.p.W

    def step(self):
        loss, g, _ = loss_and_grad(self.p, self.problem)
        self.p.W.sub_(self.eta * g)
        return loss


def _sobolev_loss(f, F, y, h):
    return 0.5 * (f - y).pow(2).sum(-1) + 0.5 * (F - h).pow(2).sum((-2, -1))


class NaivePerReplica(Impl):
    """What a user would write: per replica, the input gradient by
    ``autograd.grad(create_graph=True)``, then ``backward()`` for the weight gradient."""

    name = "autograd, per replica"

    def __init__(self, s: Setup):
        self.Ws = [w.clone().requires_grad_() for w in s.params.W]
        self.a, self.X, self.V, self.y, self.h, self.eta = s.params.a, s.X, s.V, s.y, s.h, s.eta

    def W(self):
        return torch.stack([w.detach() for w in self.Ws])

    def step(self):
        losses = []
        for j, w in enumerate(self.Ws):
            x = self.X.detach().requires_grad_()
            f = torch.relu(x @ w.T) @ self.a[j]
            (gx,) = torch.autograd.grad(f.sum(), x, create_graph=True)
            F = torch.einsum("nD,nDk->nk", gx, self.V)
            loss = _sobolev_loss(f, F, self.y, self.h)
            loss.backward()
            with torch.no_grad():
                w -= self.eta[j] * w.grad
            w.grad = None
            losses.append(loss.detach())
        return torch.stack(losses)


class BatchedAutograd(Impl):
    """Autograd on the batched weights (R, m, d) in one graph; the inputs are repeated per
    replica so that the input gradient of each replica's ``f`` stays separate."""

    name = "autograd, batched"

    def __init__(self, s: Setup):
        self.w = s.params.W.clone().requires_grad_()
        self.a, self.X, self.V, self.y, self.h, self.eta = s.params.a, s.X, s.V, s.y, s.h, s.eta

    def W(self):
        return self.w.detach()

    def step(self):
        R = self.w.shape[0]
        x = self.X.expand(R, *self.X.shape).detach().requires_grad_()
        f = (torch.relu(x @ self.w.transpose(1, 2)) @ self.a[..., None])[..., 0]  # (R, n)
        (gx,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        F = torch.einsum("rnD,nDk->rnk", gx, self.V)
        loss = _sobolev_loss(f, F, self.y, self.h)
        loss.sum().backward()
        with torch.no_grad():
            self.w -= self.eta[:, None, None] * self.w.grad
        self.w.grad = None
        return loss.detach()


class Functorch(Impl):
    """``torch.func``: ``vmap`` over replicas of ``grad`` of a loss whose input derivative
    is ``vmap`` over points of ``jacrev``."""

    name = "torch.func (vmap, grad, jacrev)"

    def __init__(self, s: Setup):
        self.w = s.params.W.clone()
        self.a, self.eta = s.params.a, s.eta
        X, V, y, h = s.X, s.V, s.y, s.h

        def f_point(w, a, x):
            return torch.relu(w @ x) @ a

        def loss(w, a):
            f = torch.relu(X @ w.T) @ a
            gx = vmap(jacrev(f_point, argnums=2), in_dims=(None, None, 0))(w, a, X)
            return _sobolev_loss(f, torch.einsum("nD,nDk->nk", gx, V), y, h)

        self.grad_loss = vmap(grad_and_value(loss))

    def W(self):
        return self.w

    def step(self):
        g, loss = self.grad_loss(self.w, self.a)
        self.w -= self.eta[:, None, None] * g
        return loss


class PlainBmm(Impl):
    """The three GEMMs of a step and nothing else: pre-activations ``W X^T``, input
    gradients ``Aa^T W`` and the update ``W -= Aa u`` (``u`` fixed and tiny)."""

    name = "plain bmm (3 GEMMs)"

    def __init__(self, s: Setup):
        R, m, d = s.params.W.shape
        n = s.X.shape[0]
        self.w = s.params.W.clone()
        self.XT = s.X.T.expand(R, d, n)
        self.Z = torch.empty(R, m, n, dtype=s.X.dtype, device=s.X.device)
        self.G = torch.empty(R, n, d, dtype=s.X.dtype, device=s.X.device)
        self.u = torch.full((R, n, d), 1e-12, dtype=s.X.dtype, device=s.X.device)

    def step(self):
        torch.bmm(self.w, self.XT, out=self.Z)
        torch.bmm(self.Z.transpose(1, 2), self.w, out=self.G)
        self.w.baddbmm_(self.Z, self.u, alpha=-1)


def check(s: Setup, impls) -> float:
    """One step of each from the same weights: the losses and the updates must agree with
    the closed form. Returns the largest relative deviation of an update."""
    loss_ref, g_ref, _ = loss_and_grad(s.params, s.problem)
    dW_ref = (s.eta[:, None, None] * g_ref).double()
    worst = 0.0
    for impl in impls:
        W0 = impl.W().clone()
        loss = impl.step()
        dW = (W0 - impl.W()).double()
        err = ((dW - dW_ref).abs().max() / dW_ref.abs().max()).item()
        if not (err < 1e-3 and torch.allclose(loss.double(), loss_ref.double(), rtol=1e-4)):
            raise AssertionError(f"{impl.name}: disagrees with sobolev.loss_and_grad (update rel. error {err:.1e})")
        worst = max(worst, err)
    return worst


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(impls, device, budget_s: float, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each implementation in each of ``rounds`` interleaved rounds;
    each runs enough steps per round to fill ``budget_s / rounds`` split evenly."""
    per_impl = budget_s / rounds / len(impls)
    reps = {}
    for impl in impls:  # warm-up, and the step count per round from its duration
        impl.run(2)
        sync(device)
        t = time.perf_counter()
        impl.run(4)
        sync(device)
        reps[impl.name] = max(1, int(per_impl / max((time.perf_counter() - t) / 4, 1e-6)))
    times = {impl.name: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            k = reps[impl.name]
            sync(device)
            t = time.perf_counter()
            impl.run(k)
            sync(device)
            times[impl.name].append((time.perf_counter() - t) / k)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=24.0, help="seconds of timing per shape")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, float32; "
          f"load average {os.getloadavg()[0]:.2f}")
    for n, d, k, m, R in shapes:
        s = Setup(n, d, k, m, R, device)
        impls = [Project(s), Allocating(s), NaivePerReplica(s), BatchedAutograd(s), Functorch(s)]
        err = check(s, impls)
        impls.append(PlainBmm(s))
        t = bench(impls, device, args.budget, args.rounds)
        ours = t[Project.name]
        flop = 6 * R * n * m * d
        print(f"\nn={n} d={d} k={k} m={m} R={R}  ({flop / 1e6:.0f} MFLOP/step; updates agree to {err:.0e})")
        print(f"  {'implementation':34s} {'ms/step':>9s} {'(min)':>9s} {'x project':>10s} {'GFLOP/s':>8s} {'of bmm':>7s}")
        for name, v in t.items():
            # ratios per round, then their median: rounds are short, so load from other
            # processes that comes and goes hits both sides of a ratio alike
            ratio = statistics.median(a / b for a, b in zip(v, ours))
            of_bmm = statistics.median(a / b for a, b in zip(t[PlainBmm.name], v))
            sec = statistics.median(v)
            print(f"  {name:34s} {sec * 1e3:9.3f} {min(v) * 1e3:9.3f} {ratio:10.2f} {flop / sec / 1e9:8.1f} "
                  f"{of_bmm:7.0%}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
