"""Demos 1 and 2 of the talk on the bundled pretrained EfficientNet-Lite0.

For each photo and target class: plain gradients + max gradients (demo 1) and guided
backpropagation (demo 2), each saved as the talk's four-panel figure.

    python examples/saliency_demo.py --out out/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashtorch.models import load_pretrained
from flashtorch.saliency import Backprop
from flashtorch.utils import ImageNetIndex, apply_transforms, load_image, visualize

HERE = Path(__file__).resolve().parent
CASES = [  # (photo, target class) - two classes per photo shows target_class is honoured
    ("chelsea.jpg", "tabby"),
    ("chelsea.jpg", "Egyptian cat"),
    ("coffee.jpg", "espresso"),
    ("coffee.jpg", "coffee mug"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    args = parser.parse_args()

    model = load_pretrained("efficientnet_lite0")
    backprop = Backprop(model)
    imagenet = ImageNetIndex()
    for photo, name in CASES:
        input_ = apply_transforms(load_image(HERE / "images" / photo))
        target_class = imagenet[name]
        stem = f"{Path(photo).stem}_{name.replace(' ', '_').lower()}"
        for guided, label in ((False, "gradients"), (True, "guided")):
            gradients = backprop.calculate_gradients(input_, target_class, guided=guided)
            max_gradients = backprop.calculate_gradients(
                input_, target_class, take_max=True, guided=guided
            )
            path = args.out / f"{stem}_{label}.png"
            visualize(
                input_,
                gradients,
                max_gradients,
                save_path=path,
                title=f"{label}: {name} ({target_class})",
            )
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
