"""FlashTorch 0.1.3's ``visualize_saliency_with_backprop`` notebook, cell by cell, as a script.

``Backprop(model).visualize(input_, target_class, guided=True)``: the input, the guided
gradients across RGB channels, the max gradients and their overlay, for three photos. The
notebook's AlexNet pretrained on ImageNet is replaced by the bundled pretrained
EfficientNet-Lite0 (offline), and its owl, peacock and toucan by photos that ship with
flashtorch.

    python examples/tutorial_saliency_backprop.py --out out/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashtorch.models import load_pretrained
from flashtorch.plot import save_figure
from flashtorch.saliency import Backprop
from flashtorch.utils import ImageNetIndex, apply_transforms, load_image

HERE = Path(__file__).resolve().parent
PHOTOS = [("chelsea.jpg", "Egyptian cat"), ("coffee.jpg", "espresso"), ("rocket.jpg", "missile")]


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--photos", type=int, default=len(PHOTOS), help="how many photos")
    args = parser.parse_args(argv)
    written = []

    # In [5]
    image = load_image(str(HERE / "images" / PHOTOS[0][0]))

    # In [7]: models.alexnet(pretrained=True) in the notebook
    model = load_pretrained()

    # In [9]
    backprop = Backprop(model)

    # In [11]
    # Transform the input image to a tensor
    owl = apply_transforms(image)

    # Set a target class from ImageNet task: 285 (Egyptian cat), what the model sees here
    target_class = ImageNetIndex()[PHOTOS[0][1]]

    # Ready to roll!
    fig = backprop.visualize(owl, target_class, guided=True)
    written.append(save_figure(fig, args.out / "saliency_backprop_0.png"))

    # In [14], [16]: two more photos
    for i, (photo, name) in enumerate(PHOTOS[1 : args.photos], start=1):
        tensor = apply_transforms(load_image(str(HERE / "images" / photo)))
        written.append(args.out / f"saliency_backprop_{i}.png")
        backprop.visualize(tensor, ImageNetIndex()[name], guided=True, save_path=written[-1])
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
