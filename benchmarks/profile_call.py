#!/usr/bin/env python
"""Where one small-batch call spends its time, next to the raw limit (the per-call overhead).

Interleaved medians of: the raw limit (parameters frozen / requiring grad), flashtorch
``gradient`` exact and ``fast`` with a tensor and a list target, and ``flashtorch.graphed``;
then the host-side pieces of a call on their own (state guard, fast-copy key, input check),
and a ``torch.profiler`` table of the ``fast`` call (CPU self time: syncs, copies, launches).

Usage::

    python benchmarks/profile_call.py [--device cuda] [--model resnet50] [--batch 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

import flashtorch
from flashtorch import METHODS
from flashtorch._fast import ModelState
from flashtorch._surgery import preserved_state
from flashtorch._validate import check_images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up (captures, folding, cuDNN choices)
        f()
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=50)
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.model)(weights=None).eval().to(device)
    frozen = copy.deepcopy(model).requires_grad_(False)
    x = torch.randn(a.batch, 3, 224, 224, device=device)
    idx = torch.randint(0, 1000, (a.batch,), device=device)
    as_list = idx.tolist()

    def limit(net: torch.nn.Module) -> None:
        xx = x.detach().requires_grad_(True)
        torch.autograd.grad(net(xx).gather(1, idx[:, None]).sum(), xx)

    exact = METHODS["gradient"](model)
    fast = METHODS["gradient"](model, fast=True)
    fns: dict[str, Callable[[], object]] = {
        "limit (parameters frozen)": lambda: limit(frozen),
        "limit (parameters require grad)": lambda: limit(model),
        "gradient exact, tensor target": lambda: exact(x, target=idx),
        "gradient exact, list target": lambda: exact(x, target=as_list),
        "gradient fast, tensor target": lambda: fast(x, target=idx),
        "gradient fast, list target": lambda: fast(x, target=as_list),
    }
    if device.type == "cuda":
        g_exact, g_fast = flashtorch.graphed(exact), flashtorch.graphed(fast)
        fns["graphed gradient exact"] = lambda: g_exact(x, target=idx)
        fns["graphed gradient fast"] = lambda: g_fast(x, target=idx)
    print(
        f"# {a.model} batch {a.batch} on {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, medians of {a.rounds} interleaved rounds"
    )
    for k, v in median_ms(fns, device, a.rounds).items():
        print(f"{k:<36} {v:8.3f} ms")

    state = ModelState(model)

    def guard() -> None:
        with preserved_state(model, eval_mode=True):
            pass

    pieces = {
        "preserved_state enter+exit": guard,
        "fast-copy check (ModelState.matches)": lambda: state.matches(model),
        "check_images (finite check: one sync)": lambda: check_images(x),
    }
    print("\n# host-side pieces of a call")
    for k, f in pieces.items():
        for _ in range(20):
            f()
        t0 = time.perf_counter()
        for _ in range(200):
            f()
        print(f"{k:<36} {1e3 * (time.perf_counter() - t0) / 200:8.3f} ms")

    print("\n# torch.profiler: gradient fast, tensor target, 20 calls (CPU self time)")
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(20):
            fast(x, target=idx)
        _sync(device)
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40
        )
    )


if __name__ == "__main__":
    main()
