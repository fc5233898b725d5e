"""FlashTorch 0.1.3's ``create_saliency_maps_for_torchvision_models`` notebook, as a script.

Guided-backprop saliency maps of one photo with every torchvision architecture the notebook
used, through the same helper. The notebook loaded ImageNet weights
(``model_module(pretrained=True)``); offline, the architectures get random weights, so the
maps show each architecture's gradient structure rather than what a trained network sees.

    python examples/tutorial_torchvision_models.py --out out/ [--models alexnet,resnet50]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torchvision.models as models

from flashtorch.saliency import Backprop
from flashtorch.utils import apply_transforms, load_image

HERE = Path(__file__).resolve().parent
MODELS = [
    "alexnet",
    "vgg19",
    "vgg19_bn",
    "resnet50",
    "resnet152",
    "squeezenet1_1",
    "densenet121",
    "densenet201",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mnasnet1_0",
]


def random_model(model_module):
    """``model_module(pretrained=True)`` offline: the architecture with seeded random weights."""
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's note that init_weights' default changes
        warnings.simplefilter("ignore", FutureWarning)
        return model_module(weights=None)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--size", type=int, default=224, help="input side (Inception: 299)")
    args = parser.parse_args(argv)
    written: list[Path] = []

    # In [7]: the notebook's peacock; class 84 (peacock) as its target
    image = load_image(str(HERE / "images" / "chelsea.jpg"))

    # Prepare inputs to be used later
    img = apply_transforms(image, args.size)

    # In [9]: a wrapper to help out visualization
    def visualize_helper(model_module, tensor=img, k=84):
        model = random_model(model_module)
        backprop = Backprop(model)
        path = args.out / f"torchvision_{model_module.__name__}.png"
        with warnings.catch_warnings():  # random weights: the prediction is not the peacock
            warnings.filterwarnings("ignore", "The predicted class does not equal")
            backprop.visualize(tensor, k, guided=True, save_path=path)
        written.append(path)
        print(f"wrote {path}")

    for name in args.models.split(","):
        if name == "inception_v3":
            # In [27]: the notebook's 299-px input (flashtorch no longer requires it)
            img_299 = apply_transforms(image, size=round(args.size * 299 / 224))
            visualize_helper(models.inception_v3, img_299)
        else:
            visualize_helper(getattr(models, name))
    return written


if __name__ == "__main__":
    main()
