"""FlashTorch 0.1.3's ``activation_maximization`` notebook, cell by cell, as a script.

``GradientAscent(model.features)``: images that maximise chosen filters of VGG16's
convolutions (``visualize``), randomly chosen filters, one filter, the raw output
(``return_output``), DeepDream on a photo and ``optimize``. The notebook used VGG16 pretrained
on ImageNet; offline it gets random weights (the renders show what random filters respond
to), and its ``jay.jpg`` is replaced by a photo that ships with flashtorch.

    python examples/tutorial_activation_maximization.py --out out/ [--img-size 224 --num-iter 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision.models as models

from flashtorch.activmax import GradientAscent
from flashtorch.plot import save_figure

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--img-size", type=int, default=224, help="side of the renders")
    parser.add_argument("--num-iter", type=int, default=30, help="optimisation steps")
    parser.add_argument(
        "--layers",
        default="conv1_2,conv2_1,conv3_1,conv4_1,conv5_1",
        help="which of the notebook's layers to render in In [12]",
    )
    args = parser.parse_args(argv)
    n = args.num_iter
    written: list[Path] = []

    def save(fig, name: str) -> None:
        written.append(save_figure(fig, args.out / f"activmax_{name}.png"))
        print(f"wrote {written[-1]}")

    # In [6]: models.vgg16(pretrained=True) in the notebook
    torch.manual_seed(0)
    model = models.vgg16(weights=None)

    # Print layers and corresponding indicies
    print(list(model.features.named_children()))

    # In [8]
    conv1_2 = model.features[2]
    conv1_2_filters = [17, 33, 34, 57]

    conv2_1 = model.features[5]
    conv2_1_filters = [27, 40, 68, 73]

    conv3_1 = model.features[10]
    conv3_1_filters = [31, 61, 147, 182]

    conv4_1 = model.features[17]
    conv4_1_filters = [238, 251, 338, 495]

    conv5_1 = model.features[24]
    conv5_1_filters = [45, 271, 363, 409]

    # In [10]
    g_ascent = GradientAscent(model.features)

    g_ascent.use_gpu = torch.cuda.is_available()  # the notebook: True (Colab's GPU)
    g_ascent.img_size = args.img_size

    # In [12]
    layers = {
        "conv1_2": (conv1_2, conv1_2_filters),
        "conv2_1": (conv2_1, conv2_1_filters),
        "conv3_1": (conv3_1, conv3_1_filters),
        "conv4_1": (conv4_1, conv4_1_filters),
        "conv5_1": (conv5_1, conv5_1_filters),
    }
    for name in args.layers.split(","):
        layer, filters = layers[name]
        save(g_ascent.visualize(layer, filters, title=name, num_iter=n), name)

    # In [16]
    save(
        g_ascent.visualize(conv5_1, title="Randomly selected filters from conv5_1", num_iter=n),
        "conv5_1_random",
    )

    # In [18]
    save(g_ascent.visualize(conv5_1, 3, title="conv5_1 filter 3", num_iter=n), "conv5_1_3")

    # In [20]
    output = g_ascent.visualize(
        conv5_1, 3, title="conv5_1 filter 3", return_output=True, num_iter=n
    )

    print("num_iter:", len(output))
    print("optimized image:", output[-1].shape)

    # In [23]
    save(
        g_ascent.deepdream(str(HERE / "images" / "chelsea.jpg"), conv5_1, 33, num_iter=n),
        "deepdream",
    )

    # In [25]
    output = g_ascent.optimize(conv5_1, 3, num_iter=n)

    print("num_iter:", len(output))
    print("optimized image:", output[-1].shape)
    return written


if __name__ == "__main__":
    main()
