"""Train a small vision transformer from scratch on the synthetic localisation task.

No ImageNet-pretrained ViT can be installed offline, so the transformer studies
(examples/faithfulness_table.py --vit) explain a timm ``VisionTransformer`` with a class token
trained here on :class:`flashtorch.datasets.SyntheticLocalization` at 64 px (settings in
``examples/_study.py``: ``VIT_DATA``, ``VIT_CONFIG``). Training images use seed 0, the held-out
accuracy seed 1 (the faithfulness table uses seed 2); every training image is rendered once and
shown in a random one of its eight flips and quarter turns each epoch (the four textures keep
their class under all of them).

Saves ``out/vit_synthetic/vit.pt`` (the state dict) and ``vit.json`` (config, data settings,
accuracy, per-epoch history, seconds). A later run reuses them when the saved config and
training settings match; ``--retrain`` forces training.

Run:  python examples/train_vit.py             (a few minutes on one CPU thread)
      python examples/train_vit.py --quick     (a smoke run: a tiny model, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _study  # noqa: E402
from _study import VIT_CONFIG, VIT_DATA, VIT_DIR, Timer  # noqa: E402

from flashtorch.finetune import fine_tune  # noqa: E402

QUICK_CONFIG: dict[str, Any] = {
    **VIT_CONFIG,
    "img_size": 32,
    "embed_dim": 24,
    "depth": 1,
    "num_heads": 2,
}


class Dihedral(Dataset):
    """Rendered images and labels, each item in a random one of its 8 flips / quarter turns.

    The draw uses the global RNG, which :func:`flashtorch.finetune.fine_tune` seeds for the
    call, so a training run is reproducible.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        k = int(torch.randint(0, 8, ()))
        image = torch.rot90(self.images[index], k % 4, dims=(1, 2))
        if k >= 4:
            image = image.flip(2)
        return image, int(self.labels[index])


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=int, default=4000, help="training images (seed 0)")
    p.add_argument("--val", type=int, default=500, help="held-out images (seed 1)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    p.add_argument("--out", type=Path, default=VIT_DIR, help="where weights and JSON go")
    p.add_argument("--retrain", action="store_true", help="train even if a cached run matches")
    p.add_argument("--quick", action="store_true", help="a tiny model on a few images (smoke)")
    args = p.parse_args(argv)
    args.config = dict(VIT_CONFIG)
    if args.quick:
        args.train, args.val, args.epochs, args.batch_size = 32, 16, 1, 16
        args.config = dict(QUICK_CONFIG)
        if args.out == VIT_DIR:  # never overwrite the real run with a smoke run
            args.out = VIT_DIR.with_name("vit_synthetic_quick")
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that decides the trained weights (a cached run is reused if it matches)."""
    data = {**VIT_DATA, "size": args.config["img_size"]}
    return {
        "config": args.config,
        "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
        "train": args.train,
        "val": args.val,
        "epochs": args.epochs,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }


def cached(out: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The saved summary in ``out`` if its weights exist and its settings equal ``wanted``."""
    info, weights = out / "vit.json", out / "vit.pt"
    if not (info.exists() and weights.exists()):
        return None
    summary = json.loads(info.read_text())
    return summary if all(summary.get(k) == v for k, v in wanted.items()) else None


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Render the data, train, save weights and summary; returns the summary."""
    wanted = settings(args)
    size = args.config["img_size"]
    with Timer() as render:
        x, y, _ = _study.vit_dataset(args.train, seed=0, size=size).stack()
        val = _study.vit_dataset(args.val, seed=1, size=size)
        xv, yv, _ = val.stack()
    model = _study.build_vit(args.config, seed=args.seed)
    print(
        f"training a ViT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) "
        f"on {args.train} images of {size} px, {args.epochs} epochs, "
        f"{torch.get_num_threads()} thread(s); rendering took {render.seconds:.1f} s"
    )
    result = fine_tune(
        model,
        Dihedral(x, y),
        val=torch.utils.data.TensorDataset(xv, yv),
        trainable=[""],  # the whole model, from scratch
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        copy=False,
        log=print,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), args.out / "vit.pt")
    summary = {
        **wanted,
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_accuracy": result.val_accuracy,
        "history": result.history,
        "train_seconds": result.seconds,
        "render_seconds": render.seconds,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[1] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
    (args.out / "vit.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (or reuse) the ViT; returns the saved summary."""
    args = parse(argv)
    if args.threads:
        _study.setup_threads(args.threads)
    summary = None if args.retrain else cached(args.out, settings(args))
    if summary is not None:
        print(f"reusing {args.out / 'vit.pt'} (same settings; --retrain to train again)")
    else:
        summary = train(args)
    print(
        f"held-out accuracy {summary['val_accuracy']:.4f} ({summary['val']} images), "
        f"trained in {summary['train_seconds']:.1f} s"
    )
    return summary


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
