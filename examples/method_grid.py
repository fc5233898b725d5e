"""Every registered method side by side on the bundled pretrained model and sample photos.

python examples/method_grid.py --out docs/images/methods_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashtorch import METHODS, attribute, available_methods
from flashtorch.models import load_pretrained
from flashtorch.plot import attribution_grid
from flashtorch.utils import ImageNetIndex, apply_transforms, load_image

HERE = Path(__file__).resolve().parent
OPTIONS = {
    "smoothgrad": {"n_samples": 25},
    "smoothgrad_sq": {"n_samples": 25},
    "vargrad": {"n_samples": 25},
    "integrated_gradients": {"steps": 32},
    "occlusion": {"window": 32, "stride": 16},
    "scorecam": {"internal_batch_size": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/methods_grid.png"))
    parser.add_argument("--photos", nargs="+", default=["chelsea.jpg", "coffee.jpg"])
    # the bundled model is a CNN: the attention methods (transformers only) are left out
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[
            m for m in available_methods() if not getattr(METHODS[m], "needs_attention", False)
        ],
    )
    args = parser.parse_args()

    model = load_pretrained()
    x = apply_transforms([load_image(HERE / "images" / p) for p in args.photos])
    results = {m: attribute(model, x, method=m, **OPTIONS.get(m, {})) for m in args.methods}
    attribution_grid(
        x, results, class_names=ImageNetIndex().names, panel_size=2.0, save_path=args.out
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
