"""Feature-visualisation benchmark: quality and speed on the pretrained EfficientNet-Lite0.

Measures the targets of issue 4 and prints them:

1. Class renders: ``class_logit(c)`` at 224 px, 256 steps (Fourier + decorrelated colour +
   Lucid's transforms, Adam 0.05) for espresso (967), great grey owl (24) and tabby (281), for
   several seeds. Target: the model gives each render its class with probability >= 0.9.
2. Channel renders: channels 0-7 of the middle block ``net.blocks.3`` in one batched run
   (128 px, 256 steps). Targets: each image's own channel has the highest mean activation among
   the layer's channels, and more than that channel's highest mean activation on any sample
   photo (examples/images, at 128 and 224 px).
3. Side by side with Lucent (``torch-lucent`` 0.1.8, when importable) on the same objectives,
   sizes and steps: seconds per step, and the objective on the final (untransformed) image.
   Note that Lucent's ``render_vis`` upsamples images smaller than 224 px to 224 before the
   model, so its 128 px channel renders run the network at 224 px.

Usage::

    python benchmarks/bench_activmax.py [--steps 256] [--seeds 0 1] [--no-lucent] [--json out]

Runs take about a minute per class render on a 2-core CPU under load (18 s idle).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import types
from pathlib import Path

import torch

from flashtorch._surgery import LayerRecorder
from flashtorch.activmax import channel, class_logit, render
from flashtorch.activmax.render import make_normalizer
from flashtorch.models import load_pretrained
from flashtorch.utils import ImageNetIndex, apply_transforms

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "examples" / "images").glob("*.jpg"))
CLASSES = (967, 24, 281)
LAYER = "net.blocks.3"


def _prob(model, images: torch.Tensor, c: int) -> tuple[float, int, float]:
    """Probability of class c, the top class, and the logit of c on untransformed images."""
    with torch.no_grad():
        logits = model(make_normalizer("imagenet")(images))
    p = logits.softmax(1)[0]
    return float(p[c]), int(p.argmax()), float(logits[0, c])


def _channel_means(model, images: torch.Tensor) -> torch.Tensor:
    with LayerRecorder(model, LAYER) as rec, torch.no_grad():
        model(make_normalizer("imagenet")(images))
        return rec.output.mean((2, 3))


def _lucent():
    """Import Lucent 0.1.8 with shims for its import-time dependencies (benchmark only)."""
    try:
        if "IPython" not in sys.modules:  # lucent.misc.io imports IPython.display at import
            ipy = types.ModuleType("IPython")
            disp = types.ModuleType("IPython.display")
            ipy.display = disp  # type: ignore[attr-defined]
            sys.modules.setdefault("IPython", ipy)
            sys.modules.setdefault("IPython.display", disp)
        import kornia
        import kornia.geometry.transform as kgt

        # Lucent 0.1.8 calls kornia<=0.4's top-level names.
        if not hasattr(kornia, "get_rotation_matrix2d"):
            kornia.get_rotation_matrix2d = kgt.get_rotation_matrix2d
        if not hasattr(kornia, "warp_affine"):
            kornia.warp_affine = kgt.warp_affine
        from lucent.optvis import objectives, param, render

        return objectives, param, render
    except Exception as exc:  # any import failure means: skip the comparison
        print(f"Lucent not available ({type(exc).__name__}: {exc}); skipping the comparison")
        return None


def lucent_render(lucent, model, objective, size: int, batch: int, steps: int, seed: int):
    objectives, param, render_mod = lucent
    torch.manual_seed(seed)
    import numpy as np

    np.random.seed(seed)
    t = time.perf_counter()
    out = render_mod.render_vis(
        model,
        objective,
        lambda: param.image(size, batch=batch),
        thresholds=(steps,),
        progress=False,
        show_image=False,
        preprocess=True,
    )
    dt = time.perf_counter() - t
    images = torch.from_numpy(out[-1]).permute(0, 3, 1, 2).contiguous()
    return images, dt


def main() -> None:
    parser = argparse.ArgumentParser(description="flashtorch activmax benchmark")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--classes", type=int, nargs="+", default=list(CLASSES))
    parser.add_argument("--no-lucent", action="store_true")
    parser.add_argument("--no-channels", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    args = parser.parse_args()

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, steps={args.steps}"
    )
    model = load_pretrained("efficientnet_lite0")
    names = ImageNetIndex()
    lucent = None if args.no_lucent else _lucent()
    results: dict = {"steps": args.steps, "class": [], "channel": {}, "lucent": {}}
    # warm-up (first-call allocations and kernel selection are not part of the per-step cost)
    render(model, class_logit(0), param=224, steps=2, progress=False)
    if lucent is not None:
        lucent_render(lucent, model, lucent[0].channel("labels", 0), 224, 1, 2, 0)

    # 1. class renders ---------------------------------------------------------------------
    print("\n== class_logit(c), 224 px ==")
    for c in args.classes:
        for seed in args.seeds:
            t = time.perf_counter()
            images, history = render(
                model, class_logit(c), param=224, steps=args.steps, seed=seed, progress=False
            )
            dt = time.perf_counter() - t
            p, top, logit = _prob(model, images, c)
            ok = p >= 0.9 and top == c
            results["class"].append(dict(cls=c, seed=seed, p=p, top=top, logit=logit, seconds=dt))
            print(
                f"{names[c]:>15} ({c:3d}) seed {seed}: p={p:.3f} top={top:4d} "
                f"logit={logit:6.2f}  {dt:6.1f} s ({1000 * dt / args.steps:.0f} ms/step)  "
                f"{'OK' if ok else 'MISS'}"
            )
            if lucent is not None and seed == args.seeds[0]:
                objectives = lucent[0]
                l_images, l_dt = lucent_render(
                    lucent, model, objectives.channel("labels", c), 224, 1, args.steps, seed
                )
                lp, ltop, llogit = _prob(model, l_images, c)
                results["lucent"].setdefault("class", []).append(
                    dict(cls=c, seed=seed, p=lp, top=ltop, logit=llogit, seconds=l_dt)
                )
                print(
                    f"{'Lucent':>15} ({c:3d}) seed {seed}: p={lp:.3f} top={ltop:4d} "
                    f"logit={llogit:6.2f}  {l_dt:6.1f} s ({1000 * l_dt / args.steps:.0f} "
                    "ms/step)"
                )
    probs = [r["p"] for r in results["class"]]
    print(f"min probability over {len(probs)} class renders: {min(probs):.3f} (target >= 0.9)")

    # 2. channel renders -------------------------------------------------------------------
    if not args.no_channels:
        print(f"\n== channel({LAYER!r}, 0..7), 128 px, one batched run ==")
        t = time.perf_counter()
        images, _ = render(
            model, channel(LAYER, list(range(8))), param=128, steps=args.steps, progress=False
        )
        dt = time.perf_counter() - t
        means = _channel_means(model, images)
        own = means[range(8), range(8)]
        photo_max = torch.full((means.shape[1],), -float("inf"))
        for size in (128, 224):
            x = apply_transforms([str(p) for p in PHOTOS], size, mean=(0.0,) * 3, std=(1.0,) * 3)
            photo_max = torch.maximum(photo_max, _channel_means(model, x).max(0).values)
        argmax_ok = means.argmax(1).tolist() == list(range(8))
        beats = (own > photo_max[:8]).tolist()
        print(f"{dt:.1f} s ({1000 * dt / args.steps:.0f} ms/step)")
        print("channel        : " + " ".join(f"{c:6d}" for c in range(8)))
        print("render (own)   : " + " ".join(f"{v:6.1f}" for v in own.tolist()))
        others = [torch.cat([means[i, :i], means[i, i + 1 :]]).max().item() for i in range(8)]
        print("best other     : " + " ".join(f"{v:6.1f}" for v in others))
        print("best photo     : " + " ".join(f"{v:6.1f}" for v in photo_max[:8].tolist()))
        print(
            f"own channel is the top channel of every render: {argmax_ok}; "
            f"beats every photo: {all(beats)} {beats}"
        )
        results["channel"] = dict(
            seconds=dt,
            own=own.tolist(),
            photo_max=photo_max[:8].tolist(),
            argmax_ok=argmax_ok,
            beats_photos=beats,
        )
        if lucent is not None:
            objectives = lucent[0]
            obj = sum(objectives.channel(LAYER.replace(".", "_"), i, batch=i) for i in range(8))
            l_images, l_dt = lucent_render(lucent, model, obj, 128, 8, args.steps, 0)
            l_own = _channel_means(model, l_images)[range(8), range(8)]
            print(
                f"Lucent: {l_dt:.1f} s ({1000 * l_dt / args.steps:.0f} ms/step; runs the model "
                "at 224 px)"
            )
            print("Lucent (own)   : " + " ".join(f"{v:6.1f}" for v in l_own.tolist()))
            results["lucent"]["channel"] = dict(seconds=l_dt, own=l_own.tolist())

    if lucent is not None and results["lucent"].get("class"):
        ours = {r["cls"]: r for r in results["class"] if r["seed"] == args.seeds[0]}
        print("\n== flashtorch vs Lucent (same objective, size, steps, seed) ==")
        for r in results["lucent"]["class"]:
            o = ours[r["cls"]]
            print(
                f"class {r['cls']:3d}: ms/step {1000 * o['seconds'] / args.steps:5.0f} vs "
                f"{1000 * r['seconds'] / args.steps:5.0f}; logit {o['logit']:6.2f} vs "
                f"{r['logit']:6.2f}; p {o['p']:.3f} vs {r['p']:.3f}"
            )
        if results["channel"] and "channel" in results["lucent"]:
            o, r = results["channel"], results["lucent"]["channel"]
            print(
                f"channels 0-7: ms/step {1000 * o['seconds'] / args.steps:5.0f} vs "
                f"{1000 * r['seconds'] / args.steps:5.0f}; mean own activation "
                f"{sum(o['own']) / 8:6.2f} vs {sum(r['own']) / 8:6.2f}"
            )

    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
