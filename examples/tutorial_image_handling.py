"""FlashTorch 0.1.3's ``image_handling`` notebook, cell by cell, as a script.

Loads a photo, turns it into a model input (``apply_transforms``, here at 299 px as in the
notebook), and draws the original, the transformed tensor and the denormalised tensor. The
notebook's ``dalmatian.jpg`` is replaced by a photo that ships with flashtorch.

    python examples/tutorial_image_handling.py --out out/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashtorch.plot import save_figure
from flashtorch.plot._common import new_figure
from flashtorch.utils import apply_transforms, denormalize, format_for_plotting, load_image

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--photo", type=Path, default=HERE / "images" / "chelsea.jpg")
    parser.add_argument("--size", type=int, default=299, help="side of the input tensor")
    args = parser.parse_args(argv)

    # In [3]
    image = load_image(str(args.photo))

    print(type(image))
    print(image.mode)

    # In [6]
    input_image = apply_transforms(image, args.size)  # can take custom size (default=224)

    print(type(input_image))
    print(input_image.shape)

    # In [4], [9], [11]: the notebook's three plots, side by side in one figure
    denormalized = denormalize(input_image)
    fig = new_figure((12, 4))
    panels = (
        (image, "Original image"),
        # imshow clips the normalised values to [0, 1], as in the notebook
        (format_for_plotting(input_image).clamp(0, 1), "Transformed image"),
        (format_for_plotting(denormalized).clamp(0, 1), "Denormalized image"),
    )
    for i, (picture, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(picture)
        ax.set_title(title)
        ax.set_axis_off()
    path = save_figure(fig, args.out / "image_handling.png")
    print(f"wrote {path}")
    return [path]


if __name__ == "__main__":
    main()
