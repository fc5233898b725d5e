#!/usr/bin/env python
"""Speed of Grad-CAM on a vision transformer's tokens against pytorch-grad-cam and the limit.

The floor (issue 13, item 7): flashtorch ``gradcam`` reading the layer's tokens by their layout
is no slower than pytorch-grad-cam's ``GradCAM`` with its ``reshape_transform`` on the same
layer (ratio <= 1.0 in one run), on timm ``vit_small_patch16_224`` (random weights:
``pretrained=False``, nothing is downloaded) at batch 16 on the CPU.

Candidates, side by side in one process, interleaved rounds (the conventions of
``flashbench.harness``: a warm-up call each, round-robin starting one candidate later each
round, median, ``gc`` frozen and disabled around each call, glibc heap kept):

* ``limit (to the layer)`` - forward + ``torch.autograd.grad`` of the target scores w.r.t. the
  layer's output, made a leaf so that nothing before it builds a graph: the least work a
  gradient CAM can do;
* ``flashtorch gradcam`` - ``GradCAM(model, "blocks.11.norm1")``: the tokens read as a
  ``1 + 14 x 14`` grid by their layout (the model's own default layer: the same call as
  ``layer=None`` once the default is remembered);
* ``pytorch-grad-cam GradCAM`` - ``GradCAM(model, [model.blocks[-1].norm1],
  reshape_transform=...)`` with the reshape of its ViT tutorial (class token dropped, 14 x 14).

Both methods run on the model as a user has it (trainable parameters, fused attention). The
maps' agreement (smallest per-image Pearson correlation) is reported next to the timings.

Usage::

    python benchmarks/bench_vit_cam.py --threads 1 --clock cpu   # -> results/cpu-vit-cam.*
    python benchmarks/bench_vit_cam.py --quick                   # a tiny ViT, seconds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from flashbench.harness import keep_heap, rel_noise, time_rounds  # noqa: E402
from flashbench.limits import layer_limit  # noqa: E402
from flashbench.models import build_vit as build_model  # noqa: E402

FLOOR = 1.0
OURS = "flashtorch gradcam"
PEER = "pytorch-grad-cam GradCAM"
LIMIT = "limit (to the layer)"


def pgc_reshape(prefix: int, h: int, w: int) -> Callable[[Tensor], Tensor]:
    """pytorch-grad-cam's ViT ``reshape_transform``: drop the prefix, lay the grid out."""

    def reshape(t: Tensor) -> Tensor:
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def correlation(a: Tensor, b: Tensor) -> float:
    """Smallest per-image Pearson correlation of two map batches."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    return min(float(torch.corrcoef(torch.stack([u, v]))[0, 1]) for u, v in zip(a, b))


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from flashtorch.cam import GradCAM

    heap = keep_heap() if args.malloc == "heap" else "default allocator"
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model_name = "tiny" if args.quick else args.model
    model = build_model(model_name)
    size = 32 if args.quick else 224
    grid = size // model.patch_embed.patch_size[0]
    prefix = model.num_prefix_tokens
    layer = f"blocks.{len(model.blocks) - 1}.norm1"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g)
    idx = torch.randint(0, model.num_classes, (args.batch,), generator=g)
    ours = GradCAM(model, layer)
    peer = pgc.GradCAM(
        model, [model.get_submodule(layer)], reshape_transform=pgc_reshape(prefix, grid, grid)
    )
    targets = [ClassifierOutputTarget(int(i)) for i in idx]
    frozen = build_model(model_name)
    frozen.load_state_dict(model.state_dict())
    for p in frozen.parameters():
        p.requires_grad_(False)
    candidates: dict[str, Callable[[], Any]] = {
        LIMIT: lambda: layer_limit(frozen, layer, x, idx),
        OURS: lambda: ours(x, target=idx).maps,
        PEER: lambda: torch.from_numpy(peer(x, targets)),
    }
    log(
        f"{model_name}, batch {args.batch}, {size}x{size}, layer {layer}, {threads} thread(s), "
        f"{args.clock} clock, {args.rounds} rounds"
    )
    try:
        times, outputs = time_rounds(candidates, args.rounds, args.clock, log)
    finally:
        peer.activations_and_grads.release()
    med = {n: statistics.median(t) for n, t in times.items()}
    per_image = {n: 1000 * m / args.batch for n, m in med.items()}
    ratio = med[OURS] / med[PEER]
    per_round = [a / b for a, b in zip(times[OURS], times[PEER])]
    agreement = correlation(outputs[OURS][:, 0], outputs[PEER])
    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_name,
        "batch": args.batch,
        "size": size,
        "layer": layer,
        "layout": ours.layer_layout.describe() if ours.layer_layout else "reshape=",
        "threads": threads,
        "clock": args.clock,
        "rounds": args.rounds,
        "heap": heap,
        "torch": torch.__version__,
        "pytorch_grad_cam": getattr(pgc, "__version__", "1.5.x"),
        "cpu": platform.processor() or platform.machine(),
        "ms_per_image": per_image,
        "noise": {n: rel_noise(t) for n, t in times.items()},
        "times_s": times,
        "ratio_to_peer": ratio,
        "per_round_ratio": per_round,
        "ratio_to_limit": med[OURS] / med[LIMIT],
        "peer_ratio_to_limit": med[PEER] / med[LIMIT],
        "min_correlation": agreement,
        "floor": FLOOR,
        "passed": ratio <= FLOOR,
    }
    return report


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Grad-CAM on ViT tokens: flashtorch vs pytorch-grad-cam ({r['model']}, CPU)",
        "",
        f"{r['date']}; batch {r['batch']}, {r['size']}x{r['size']}, layer `{r['layer']}` "
        f"({r['layout']}), random weights; {r['threads']} thread(s), {r['clock']} clock, "
        f"{r['rounds']} interleaved rounds (median), {r['heap']}; torch {r['torch']}.",
        "",
        "| candidate | ms / image | x limit | noise |",
        "| --- | ---: | ---: | ---: |",
    ]
    lim = r["ms_per_image"][LIMIT]
    for n, ms in r["ms_per_image"].items():
        lines.append(f"| {n} | {ms:.1f} | {ms / lim:.2f} | {100 * r['noise'][n]:.1f} % |")
    verdict = "PASS" if r["passed"] else "FAIL"
    lines += [
        "",
        f"* flashtorch / pytorch-grad-cam: **{r['ratio_to_peer']:.3f}** (floor <= {FLOOR}): "
        f"{verdict}; per round: " + ", ".join(f"{v:.3f}" for v in r["per_round_ratio"]) + ".",
        f"* smallest per-image correlation of the two maps: {r['min_correlation']:.5f}.",
        "* pytorch-grad-cam backpropagates to the input (it sets `requires_grad` on it) and "
        "through every parameter; flashtorch's graph starts at the layer.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--malloc", choices=("heap", "default"), default="heap")
    p.add_argument("--quick", action="store_true", help="a tiny ViT, batch 2, 2 rounds")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--name", default="cpu-vit-cam")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = min(args.batch, 2), min(args.rounds, 2)
    report = run(args)
    text = markdown(report)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{args.name}.md").write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
