#!/usr/bin/env python
"""How smooth SmoothGrad's maps are, and how complete Integrated Gradients' are, by setting.

The measurements behind the defaults of ``SmoothGrad`` (``noise``, ``n_samples``) and
``IntegratedGradients`` (``steps``), on the example photos and the bundled pretrained
EfficientNet-Lite0 (``flashtorch.models.load_pretrained``, the ``pretrained`` extra).

SmoothGrad, for each ``noise`` (sigma as a fraction of the input range) and ``n_samples``:

* ``TV ratio``: total variation of the map divided by the plain gradient's. A map is reduced
  to ``(H, W)`` as the figures show it (``max_abs`` over the channels) and scaled to sum 1, so
  the ratio is independent of the map's scale; below 1 is smoother than the gradient. Smilkov
  et al. 2017 judged smoothness by eye; this is a number for the same thing.
* ``seed agreement``: Pearson correlation of the maps of two seeds. It rises towards 1 as the
  ``n_samples`` draws average out; a low value means the map still depends on the draw.
* ``ms / map``: wall time of one call per image, median over the photos (the machine's load
  and thread count are in the header: compare rows, not machines).

Integrated Gradients (Gauss-Legendre rule, the default; baseline ``"zero"``, the mean colour
after normalisation, as the CLI's default): for each ``steps``, the mean over the photos of the
completeness error ``|sum(IG) - (f(x) - f(x'))| / |f(x) - f(x')|`` and the time per map.

Usage::

    python benchmarks/smoothness.py --threads 1            # -> results/cpu-smoothness.{md,json}
    python benchmarks/smoothness.py --quick                # a tiny random CNN, seconds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
PHOTOS = ("chelsea.jpg", "coffee.jpg")
NOISES = (0.05, 0.1, 0.15, 0.2, 0.3)
SAMPLES = (10, 16, 25, 50)
STEPS = (8, 16, 25, 50, 100)


def total_variation(maps: Tensor) -> Tensor:
    """Anisotropic total variation of each ``(B, 1, H, W)`` map scaled to sum 1, ``(B,)``.

    ``sum |m[i+1, j] - m[i, j]| + |m[i, j+1] - m[i, j]|`` over the map ``m = |M| / sum |M|``:
    a pixel-noise map scores high, a smooth blob low, whatever the maps' scale.
    """
    m = maps.abs().double()
    m = m / m.flatten(1).sum(1).clamp_min(1e-300).view(-1, 1, 1, 1)
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().flatten(1).sum(1)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().flatten(1).sum(1)
    return dx + dy


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Pearson correlation of two map batches, ``(B,)``."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def load(quick: bool) -> tuple[nn.Module, Tensor, str]:
    """The model and the photos (a tiny random CNN on random images with ``quick``)."""
    if quick:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        ).eval()
        return (
            model,
            torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
            "tiny random CNN, random 32x32 inputs",
        )
    from flashtorch.models import load_pretrained
    from flashtorch.utils import apply_transforms

    images = HERE.parent / "examples" / "images"
    x = torch.cat([apply_transforms(images / p) for p in PHOTOS])
    return (
        load_pretrained(),
        x,
        "bundled EfficientNet-Lite0 (ImageNet weights), " + ", ".join(PHOTOS) + " at 224x224",
    )


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    from flashtorch.attribution import reduce_channels
    from flashtorch.saliency import Gradient, IntegratedGradients, SmoothGrad

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model, x, what = load(args.quick)
    noises = (0.1, 0.2) if args.quick else tuple(args.noises)
    samples = (4, 8) if args.quick else tuple(args.samples)
    steps = (4, 8) if args.quick else tuple(args.steps)
    with torch.no_grad():
        target = model(x).argmax(1)
    plain = Gradient(model)(x, target=target)
    tv_plain = total_variation(reduce_channels(plain.maps))
    rows = []
    for noise in noises:
        for n in samples:
            maps, secs = [], []
            for seed in (0, 1):
                sg = SmoothGrad(model, n_samples=n, noise=noise, seed=seed)
                out, dt = _timed(lambda sg=sg: sg(x, target=target))
                maps.append(reduce_channels(out.maps))
                secs.append(dt / x.shape[0])
            tv = total_variation(maps[0]) / tv_plain
            agree = correlation(maps[0], maps[1])
            row = {
                "noise": noise,
                "n_samples": n,
                "tv_ratio": [round(float(v), 4) for v in tv],
                "seed_agreement": [round(float(v), 4) for v in agree],
                "ms_per_map": round(1000 * statistics.median(secs), 1),
            }
            rows.append(row)
            log(
                f"noise {noise:<5} n {n:<3} TV ratio {statistics.mean(row['tv_ratio']):.3f} "
                f"seed agreement {statistics.mean(row['seed_agreement']):.3f} "
                f"{row['ms_per_map']} ms"
            )
    ig_rows = []
    for m in steps:
        ig = IntegratedGradients(model, steps=m, baseline="zero")
        out, dt = _timed(lambda ig=ig: ig(x, target=target))
        gap = (out.scores - out.extras["baseline_scores"]).abs().double()
        rel = out.extras["delta"].abs().double() / gap.clamp_min(1e-300)
        ig_rows.append(
            {
                "steps": m,
                "relative_delta": [round(float(v), 5) for v in rel],
                "ms_per_map": round(1000 * dt / x.shape[0], 1),
            }
        )
        log(
            f"IG steps {m:<4} |delta| / |f(x) - f(x')| {float(rel.mean()):.4f} "
            f"{ig_rows[-1]['ms_per_map']} ms"
        )
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "what": what,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "plain_tv": [round(float(v), 4) for v in tv_plain],
        "smoothgrad": rows,
        "integrated_gradients": ig_rows,
    }


def to_markdown(r: dict[str, Any]) -> str:
    mean = statistics.mean
    lines = [
        "# SmoothGrad smoothness and Integrated Gradients completeness (CPU)",
        "",
        f"{r['date']}; {r['what']}; {r['threads']} torch thread(s) on {r['cores']} logical "
        f"cores ({r['cpu']}), load average at the end {r['load_average']}; torch {r['torch']}. "
        "Produced by `benchmarks/smoothness.py`; each figure is the mean over the photos.",
        "",
        "## SmoothGrad (base `gradient`): noise x n_samples",
        "",
        "`TV ratio`: total variation of the `max_abs` map scaled to sum 1, divided by the plain "
        "gradient's (lower = smoother). `seed agreement`: correlation of the maps of seeds 0 "
        "and 1 (1 = the draw no longer matters).",
        "",
        "| noise | n_samples | TV ratio | seed agreement | ms / map |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["smoothgrad"]:
        lines.append(
            f"| {row['noise']} | {row['n_samples']} | {mean(row['tv_ratio']):.3f} | "
            f"{mean(row['seed_agreement']):.3f} | {row['ms_per_map']:.0f} |"
        )
    lines += [
        "",
        "## Integrated Gradients (Gauss-Legendre, baseline `zero`): steps",
        "",
        "| steps | mean \\|delta\\| / \\|f(x) - f(x')\\| | ms / map |",
        "| ---: | ---: | ---: |",
    ]
    for row in r["integrated_gradients"]:
        lines.append(
            f"| {row['steps']} | {mean(row['relative_delta']):.4f} | {row['ms_per_map']:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores)")
    p.add_argument("--noises", type=float, nargs="+", default=NOISES)
    p.add_argument("--samples", type=int, nargs="+", default=SAMPLES)
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    p.add_argument("--quick", action="store_true", help="a tiny random CNN (smoke run)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--name", default="cpu-smoothness")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = to_markdown(report)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / f"{args.name}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
