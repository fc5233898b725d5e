"""What the calling convention's guardrails (flashtorch._guards) cost on a CPU call.

resnet50 (random weights), batch 1, 224 px, the ``gradient`` method, one torch thread. Timed in
process CPU time (robust to other processes on a shared machine), calls interleaved:

* full calls with the maps check on and off, and the guard pieces on their own (maps check,
  the per-call contexts, the inference-tensor test of the first parameter);
* ``eval_mode=False`` calls with the dropout watch (a ``TorchFunctionMode``) on and off - the
  only path on which it runs.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/guards_overhead.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import flashtorch._guards as guards
from flashtorch import METHODS


class _NoWatch:
    seen = None

    def __enter__(self) -> _NoWatch:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


def _per_call(fn, n: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(1, 3, args.size, args.size)
    check, watch = guards.check_maps, guards.DropoutWatch

    def timed(method, patch) -> float:
        patch()
        try:
            t = time.process_time()
            method(x, 1)
            return time.process_time() - t
        finally:
            guards.check_maps, guards.DropoutWatch = check, watch

    def no_check() -> None:
        guards.check_maps = lambda *a, **k: None

    def no_watch() -> None:
        guards.DropoutWatch = _NoWatch  # type: ignore[misc, assignment]

    method = METHODS["gradient"](model)
    train = METHODS["gradient"](model, eval_mode=False)
    for m in (method, method, train):
        m(x, 1)
    on, off, w_on, w_off = [], [], [], []
    for _ in range(args.rounds):
        on.append(timed(method, lambda: None))
        off.append(timed(method, no_check))
        w_on.append(timed(train, lambda: None))
        w_off.append(timed(train, no_watch))
    call = statistics.median(off)
    maps = torch.randn(1, 3, args.size, args.size)

    def contexts() -> None:
        with guards.outermost_call(), guards.leave_inference_mode():
            pass

    pieces = {
        "maps check": _per_call(lambda: check("gradient", maps), 500),
        "call contexts": _per_call(contexts, 500),
        "first-parameter test": _per_call(lambda: next(model.parameters()).is_inference(), 500),
    }
    print(f"gradient, resnet50, batch 1, {args.size} px, CPU, 1 thread, {args.rounds} rounds")
    print(f"  call, guards on:         {statistics.median(on) * 1e3:8.1f} ms (median)")
    print(f"  call, maps check off:    {call * 1e3:8.1f} ms")
    for name, s in pieces.items():
        print(f"  {name + ':':<24} {s * 1e6:8.1f} us  ({100 * s / call:.3f} % of a call)")
    total = sum(pieces.values())
    print(f"  all guard pieces:        {total * 1e6:8.1f} us  ({100 * total / call:.3f} %)")
    print(f"  eval_mode=False, watch on:  {statistics.median(w_on) * 1e3:8.1f} ms")
    print(f"  eval_mode=False, watch off: {statistics.median(w_off) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
