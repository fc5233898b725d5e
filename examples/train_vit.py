"""Train a small vision transformer from scratch on the synthetic localisation task.

No ImageNet-pretrained ViT can be installed offline, so the transformer studies
(examples/faithfulness_table.py --vit) explain a timm ``VisionTransformer`` with a class token
trained here on :class:`flashtorch.datasets.SyntheticLocalization` at 64 px (settings in
``examples/_study.py``: ``VIT_DATA``, ``VIT_CONFIG``). Training images use seed 0, the held-out
accuracy seed 1 (the faithfulness table uses seed 2). Training runs in stages: texture images
(seed 3, the patch fills the image) first, then cosine cycles on the task images. Every training
image is rendered once and shown in a random one of its eight flips and quarter turns each epoch
(the four textures keep their class under all of them).

Saves ``out/vit_synthetic/vit.pt`` (the state dict) and ``vit.json`` (config, data settings,
accuracy, per-epoch history, seconds). A later run reuses them when the saved config and
training settings match, and continues a saved run with fewer task cycles;
``--retrain`` forces training. Writes docs/vit.md (the measured accuracy and time).

Run:  python examples/train_vit.py             (one CPU thread; see docs/vit.md for the time)
      python examples/train_vit.py --quick     (a smoke run of a tiny model, nothing in docs/)
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
from _study import ROOT, VIT_CONFIG, VIT_DATA, VIT_DIR, Timer  # noqa: E402

from flashtorch.finetune import fine_tune  # noqa: E402

QUICK_CONFIG: dict[str, Any] = {
    **VIT_CONFIG,
    "img_size": 32,
    "embed_dim": 24,
    "depth": 1,
    "num_heads": 2,
}


#: The first stage: the same classes with a patch of 90-100 % of the image side, so that every
#: token sees texture. Trained from scratch on the task images alone, the ViT stayed at chance
#: (loss ln 4) for several epochs; the texture images teach texture features quickly, the task
#: images then where to look.
TEXTURE_DATA: dict[str, tuple[float, float]] = {"patch_fraction": (0.9, 1.0), "periods": (4.0, 7.0)}


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
    p.add_argument("--train", type=int, default=3000, help="training images (seed 0)")
    p.add_argument("--val", type=int, default=500, help="held-out images (seed 1)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per cycle on the task images")
    p.add_argument(
        "--task-cycles", type=int, default=5, help="cosine cycles of --epochs on the task images"
    )
    p.add_argument("--texture-train", type=int, default=2000, help="texture images (seed 3)")
    p.add_argument(
        "--texture-epochs", type=int, default=4, help="epochs on the texture images, first"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    p.add_argument("--out", type=Path, default=VIT_DIR, help="where weights and JSON go")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where vit.md is written")
    p.add_argument("--retrain", action="store_true", help="train even if a cached run matches")
    p.add_argument("--quick", action="store_true", help="a tiny model on a few images (smoke)")
    args = p.parse_args(argv)
    args.config = dict(VIT_CONFIG)
    if args.quick:
        args.train, args.val, args.epochs, args.batch_size = 32, 16, 1, 16
        args.texture_train, args.texture_epochs = 16, 1
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
        "texture_data": {k: list(v) for k, v in TEXTURE_DATA.items()},
        "texture_train": args.texture_train,
        "texture_epochs": args.texture_epochs,
        "train": args.train,
        "val": args.val,
        "epochs": args.epochs,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "task_cycles": args.task_cycles,
    }


def cached(out: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The saved summary in ``out`` if its weights exist and its settings equal ``wanted``."""
    info, weights = out / "vit.json", out / "vit.pt"
    if not (info.exists() and weights.exists()):
        return None
    summary = json.loads(info.read_text())
    return summary if all(summary.get(k) == v for k, v in wanted.items()) else None


def resumable(out: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """A saved run in ``out`` equal to ``wanted`` but for fewer task cycles, or ``None``.

    Every stage is one seeded :func:`~flashtorch.finetune.fine_tune` call, so continuing such a
    run gives the weights a run with all the cycles at once would give.
    """
    same = {k: v for k, v in wanted.items() if k != "task_cycles"}
    summary = cached(out, same)
    if summary is None or summary.get("task_cycles", 0) >= wanted["task_cycles"]:
        return None
    return summary


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Render the data, train, save weights and summary; returns the summary."""
    wanted = settings(args)
    size = args.config["img_size"]
    model = _study.build_vit(args.config, seed=args.seed)
    history, seconds, done = [], 0.0, 0
    previous = None if args.retrain else resumable(args.out, wanted)
    if previous is not None:  # the same run with fewer task cycles: continue it
        model.load_state_dict(torch.load(args.out / "vit.pt", weights_only=True))
        history, seconds = previous["history"], previous["train_seconds"]
        done = 1 + previous["task_cycles"]
        print(f"continuing {args.out / 'vit.pt'} after {previous['task_cycles']} task cycle(s)")
    with Timer() as render:
        if done == 0:
            texture = _study.vit_dataset(args.texture_train, seed=3, size=size, **TEXTURE_DATA)
            xt, yt, _ = texture.stack()
        else:
            xt, yt = torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
        x, y, _ = _study.vit_dataset(args.train, seed=0, size=size).stack()
        xv, yv, _ = _study.vit_dataset(args.val, seed=1, size=size).stack()
    print(
        f"training a ViT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) "
        f"on {size} px images: {args.texture_epochs} epochs on {args.texture_train} texture "
        f"images, then {args.task_cycles} x {args.epochs} on {args.train} task images; "
        f"{torch.get_num_threads()} thread(s); rendering took "
        f"{render.seconds:.1f} s"
    )
    accuracy = history[-1]["val_accuracy"] if history else None
    stages = [("texture", Dihedral(xt, yt), args.texture_epochs)]
    stages += [
        ("task" if c == 0 else f"task {c + 1}", Dihedral(x, y), args.epochs)
        for c in range(args.task_cycles)
    ]
    for stage, data, epochs in stages[done:]:
        if not epochs:
            continue
        result = fine_tune(
            model,
            data,
            val=torch.utils.data.TensorDataset(xv, yv),
            trainable=[""],  # the whole model, from scratch
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            copy=False,
            log=lambda line, stage=stage: print(f"{stage}: {line}"),
        )
        history += [{"stage": stage, **row} for row in result.history]
        seconds += result.seconds
        accuracy = result.val_accuracy
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "vit.pt")
    summary = {
        **wanted,
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_accuracy": accuracy,
        "history": history,
        "train_seconds": seconds,
        "render_seconds": render.seconds + (previous or {}).get("render_seconds", 0.0),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[1] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "continued_after": previous["task_cycles"] if previous is not None else None,
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
    if not args.quick:
        write_doc(args.docs / "vit.md", summary)
    return summary


def notes(summary: dict[str, Any]) -> list[str]:
    """Remarks read off the run: how it was trained, whether accuracy was still rising."""
    out = []
    if summary.get("continued_after"):
        out.append(
            f"- This run continued a saved run of {summary['continued_after']} task cycle(s) "
            "(`--task-cycles`); every stage is one seeded `fine_tune` call, so that gives the "
            "weights of one run with all cycles (tested on the `--quick` model)."
        )
    last = [h["val_accuracy"] for h in summary["history"][-3:]]
    if len(last) == 3 and last[0] < last[1] < last[2]:
        out.append(
            "- The held-out accuracy still rose in each of the last three epochs: more task "
            "cycles (`--task-cycles`) would train a better model, at the cost of more CPU time."
        )
    return [*out, ""] if out else []


def write_doc(path: Path, summary: dict[str, Any]) -> None:
    """docs/vit.md: the model, the data, the training run and its figures."""
    config, data, texture = summary["config"], summary["data"], summary["texture_data"]
    history = _study.markdown_table(
        ["stage", "epoch", "loss", "train acc.", "held-out acc.", "seconds"],
        [
            [
                h["stage"],
                int(h["epoch"]),
                h["loss"],
                h["train_accuracy"],
                h["val_accuracy"],
                f"{h['seconds']:.1f}",
            ]
            for h in summary["history"]
        ],
    )
    threads = summary["threads"]
    load = summary.get("load_average")
    lines = [
        "# A small vision transformer for the transformer studies",
        "",
        "No ImageNet-pretrained ViT can be installed offline, so the transformer rows of "
        "[faithfulness.md](faithfulness.md) explain a ViT trained from scratch on the "
        "synthetic texture-patch task (`flashtorch.datasets.SyntheticLocalization`: the class - "
        "stripes, checkerboard, dots or rings - is decided only by one square patch among "
        "distractor shapes). `examples/train_vit.py` trains it on the CPU and caches it in "
        f"`{VIT_DIR.relative_to(ROOT).as_posix()}/` (`vit.pt`, `vit.json`); nothing is "
        "downloaded.",
        "",
        "## Model",
        "",
        f"timm `VisionTransformer` with a class token (`global_pool='token'`): "
        f"{config['img_size']} px input, {config['patch_size']} px patches "
        f"({(config['img_size'] // config['patch_size']) ** 2} patch tokens + 1 class token), "
        f"{config['depth']} blocks, width {config['embed_dim']}, {config['num_heads']} heads, "
        f"MLP ratio {config['mlp_ratio']:g}, {summary['parameters'] / 1e6:.2f} M parameters.",
        "",
        "## Data",
        "",
        f"- task: {data['size']} px images, patch side {data['patch_fraction'][0]:.0%}-"
        f"{data['patch_fraction'][1]:.0%} of the image ({data['periods'][0]:g}-"
        f"{data['periods'][1]:g} texture periods across it); {summary['train']} training "
        f"images (seed 0), {summary['val']} held-out images (seed 1); the faithfulness table "
        "uses seed 2",
        f"- first: {summary['texture_train']} texture images (seed 3) "
        f"whose patch covers {texture['patch_fraction'][0]:.0%}-"
        f"{texture['patch_fraction'][1]:.0%} of the side ({texture['periods'][0]:g}-"
        f"{texture['periods'][1]:g} periods), so that every token sees texture, "
        f"{summary['texture_epochs']} epochs, then the task images. Trained on the "
        "task images alone, the ViT stayed at chance (loss ln 4) for the first epochs of every "
        "setting tried (a few CPU minutes each); the texture images teach texture features "
        "fast, the task images then where to look",
        "- every image in a random one of its 8 flips / quarter turns each epoch (the textures "
        "keep their class under all of them)",
        "",
        "## Training",
        "",
        f"AdamW (lr {summary['lr']:g}, weight decay {summary['weight_decay']:g}), cosine decay, "
        f"{summary['texture_epochs']} epochs on the texture images, then "
        f"{summary['task_cycles']} x {summary['epochs']} on the task images (cosine restarted), "
        f"batch {summary['batch_size']}, seed {summary['seed']} "
        "(`flashtorch.finetune.fine_tune` with every module trainable).",
        "",
        f"- **held-out accuracy {summary['val_accuracy']:.1%}** ({summary['val']} images)",
        f"- **{summary['train_seconds'] / 60:.1f} min** of training on {threads} CPU "
        f"thread{'s' if threads > 1 else ''} (plus {summary['render_seconds']:.0f} s rendering "
        f"the images), torch {summary['torch']}, on a {summary['cpus']}-core machine shared "
        "with other jobs"
        + (f" (5-minute load average {load:.1f} at the end of the run)" if load else "")
        + ": an idle machine is faster.",
        "",
        history,
        "",
        *notes(summary),
        "Reproduce: `python examples/train_vit.py` (reuses the cached weights when the settings "
        "match; `--retrain` trains again; `--quick` is a seconds-long smoke run of a tiny model "
        "that writes nothing here).",
        "",
    ]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
