#!/usr/bin/env python
"""Speed of the attention methods against the raw limit, on timm ``vit_small_patch16_224``.

The floor (issue 13, item 7): ``gradient_rollout`` at batch 16 on the CPU costs at most 1.15x
the raw limit - forward + ``torch.autograd.grad`` of the target scores w.r.t. the input,
parameters frozen - of the same model with attention computed **unfused** (timm
``fused_attn=False``: the probabilities materialised, as any method that reads them needs).

Candidates, side by side in one process, interleaved rounds (the conventions of
``flashbench.harness``: warm-up round, round-robin starting one candidate later each round,
median, ``gc`` frozen and disabled around each call, glibc heap kept):

* ``limit (unfused attention)`` - the floor's reference;
* ``limit (fused attention)`` - the same with timm's default ``fused_attn=True``, for context;
* ``gradient_rollout`` - flashtorch on the model as a user has it (fused attention on, trainable
  parameters); its capture computes the attention explicitly;
* with ``--forward``: ``forward (unfused attention)`` (no gradients) and ``attention_rollout``.

The model has random weights (``pretrained=False``: nothing is downloaded).

Usage::

    python benchmarks/bench_rollout.py                          # batch 16, 5 rounds, wall clock
    python benchmarks/bench_rollout.py --threads 1 --clock cpu  # on a machine shared with others
    python benchmarks/bench_rollout.py --quick                  # a tiny ViT, seconds
    python benchmarks/bench_rollout.py --rebuild results/cpu-rollout.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from flashbench.harness import cosine, keep_heap, rel_noise, time_rounds  # noqa: E402
from flashbench.limits import forward_only, raw_limit  # noqa: E402
from flashbench.models import build_vit as build_model  # noqa: E402

FLOOR = 1.15
LIMIT = "limit (unfused attention)"


def set_fused(model: nn.Module, fused: bool) -> nn.Module:
    """Set timm's ``fused_attn`` on every attention module (of a private copy)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    return model


def frozen(model: nn.Module, fused: bool) -> nn.Module:
    """A private eval-mode copy with frozen parameters and the given attention path."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return set_fused(net, fused)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from flashtorch import METHODS

    heap = keep_heap() if args.malloc == "heap" else "default allocator"
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model_name = "tiny" if args.quick else args.model
    model = build_model(model_name)
    size = 32 if args.quick else 224
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g)
    classes = model.num_classes
    idx = torch.randint(0, classes, (args.batch,), generator=g)
    user_fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    unfused, fused = frozen(model, False), frozen(model, True)
    grad_rollout = METHODS["gradient_rollout"](model)
    candidates: dict[str, Callable[[], Any]] = {
        LIMIT: lambda: raw_limit(unfused, x, idx),
        "limit (fused attention)": lambda: raw_limit(fused, x, idx),
        "gradient_rollout": lambda: grad_rollout(x, target=idx),
    }
    if args.forward:
        att_rollout = METHODS["attention_rollout"](model)
        candidates["forward (unfused attention)"] = lambda: forward_only(unfused, x)
        candidates["attention_rollout"] = lambda: att_rollout(x, target=idx)
    log(f"{model_name}, batch {args.batch}, {threads} thread(s), {args.clock} clock, {heap}")
    times, outputs = time_rounds(candidates, args.rounds, args.clock, log)
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == user_fused
    medians = {n: statistics.median(v) for n, v in times.items()}
    base = medians[LIMIT]
    forward_base = medians.get("forward (unfused attention)")
    rows = []
    for n, med in medians.items():
        ref = forward_base if n == "attention_rollout" and forward_base else base
        rows.append(
            {
                "candidate": n,
                "ms_per_image": 1000 * med / args.batch,
                "x_limit": med / ref,
                "limit": "forward (unfused attention)" if ref is forward_base else LIMIT,
                "noise": rel_noise(times[n]),
            }
        )
    # the rollout on the unfused model must equal the one on the fused model (same math)
    same = METHODS["gradient_rollout"](set_fused(copy.deepcopy(model), False))(x, target=idx)
    agreement = cosine(outputs["gradient_rollout"].maps, same.maps)
    ratio = medians["gradient_rollout"] / base
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "allocator": heap,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "model": model_name,
        "batch": args.batch,
        "rounds": args.rounds,
        "clock": args.clock,
        "times_s": times,
        "rows": rows,
        "gradient_rollout_x_limit": ratio,
        "floor": FLOOR,
        "floor_pass": ratio <= FLOOR,
        "cosine_fused_vs_unfused_model": agreement,
    }


def paired_ratios(report: dict[str, Any]) -> list[float]:
    """``gradient_rollout`` / limit within each round (same round, adjacent in time)."""
    times = report["times_s"]
    return [a / b for a, b in zip(times["gradient_rollout"], times[LIMIT])]


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Attention methods on {report['model']}, batch {report['batch']}, CPU",
        "",
        f"{report['date']}; {m['processor']}, {m['cpu_count']} logical cores, "
        f"{m['threads']} torch thread(s), {report['clock']} clock "
        f"({'time.process_time: CPU seconds of the process' if report['clock'] == 'cpu' else 'time.perf_counter'}), "  # noqa: E501
        f"{report['rounds']} interleaved rounds after a warm-up round, medians; torch "
        f"{m['torch']}; {m['allocator']}; load average at the end {m['load_average']}.",
        "Random weights. The limit is forward + `torch.autograd.grad` to the input with frozen "
        "parameters.",
        "",
        "| candidate | ms / image | × limit | limit | noise (MAD) |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['candidate']} | {r['ms_per_image']:.1f} | {r['x_limit']:.3f} | "
            f"{r['limit']} | {100 * r['noise']:.1f} % |"
        )
    verdict = "PASS" if report["floor_pass"] else "FAIL"
    paired = paired_ratios(report)
    lines += [
        "",
        f"Floor: `gradient_rollout` ≤ {report['floor']}× the limit with unfused attention: "
        f"**{report['gradient_rollout_x_limit']:.3f}× — {verdict}** (ratio of medians; "
        f"per round, against the limit of the same round: "
        f"{', '.join(f'{r:.3f}' for r in paired)}).",
        f"`gradient_rollout` on the fused model vs on the same model with `fused_attn=False`: "
        f"cosine {report['cosine_fused_vs_unfused_model']:.6f} (smallest over the batch).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--malloc", choices=("heap", "default"), default="heap")
    p.add_argument(
        "--forward",
        action="store_true",
        help="also time attention_rollout against a gradient-free forward",
    )
    p.add_argument("--quick", action="store_true", help="a tiny ViT (smoke run)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default="cpu-rollout")
    p.add_argument(
        "--rebuild", metavar="FILE.json", help="rewrite the Markdown of a saved report (no timing)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rebuild:
        path = Path(args.rebuild)
        md = to_markdown(json.loads(path.read_text()))
        path.with_suffix(".md").write_text(md)
        print(md)
        return 0
    report = run(args)
    md = to_markdown(report)
    print(md)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
        (out / f"{args.name}.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
