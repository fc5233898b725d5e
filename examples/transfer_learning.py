"""Demo 3 of the talk, reproducible on a laptop CPU: what does fine-tuning change in the maps?

1. Fine-tune the bundled ImageNet-pretrained EfficientNet-Lite0 on the synthetic localisation
   dataset (four texture classes, decided only by a small patch; flashtorch.datasets): a new
   4-class head plus the last two stages, on features of stage 4 cached once per image.
2. Explain both models on the same held-out images with every registered method and score the
   maps against the patch masks (pointing game, energy-based pointing game). The pretrained
   model is explained for its own top-1 ImageNet class, the fine-tuned one for the true label.
3. Write docs/images/compare_models.png (flashtorch.plot.compare_models) and
   docs/transfer_learning.md, and save the fine-tuned weights to
   out/transfer_learning/efficientnet_lite0_synthetic.pt for examples/faithfulness_table.py.

Run:  python examples/transfer_learning.py            (about 10-20 minutes on 2 CPU cores)
      python examples/transfer_learning.py --quick    (a smoke run: small sizes, no docs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _study  # noqa: E402
from _study import CACHE_AT, EXPENSIVE, ROOT, TRAINABLE, WEIGHTS, Timer  # noqa: E402

from flashtorch.datasets import CLASSES, SyntheticLocalization  # noqa: E402
from flashtorch.finetune import fine_tune  # noqa: E402
from flashtorch.metrics import energy_pointing_game, pointing_game  # noqa: E402
from flashtorch.models import load_pretrained  # noqa: E402
from flashtorch.plot.compare import compare_models  # noqa: E402
from flashtorch.utils.imagenet import ImageNetIndex  # noqa: E402

FIGURE_METHODS = ["gradient", "guided", "gradcam"]
FIGURE = "compare_models.png"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=int, default=1200, help="training images")
    p.add_argument("--val", type=int, default=400, help="held-out images for the accuracy")
    p.add_argument("--eval", type=int, default=16, help="held-out images scored per method")
    p.add_argument(
        "--eval-expensive", type=int, default=6, help=f"images for {', '.join(sorted(EXPENSIVE))}"
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers rendering images")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--quick", action="store_true", help="tiny sizes, nothing written to docs/")
    p.add_argument(
        "--docs-only",
        action="store_true",
        help="redraw the figure and rewrite the page from the saved weights and results",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.val, args.eval, args.eval_expensive, args.epochs = 96, 32, 2, 1, 2
        if args.weights == WEIGHTS:  # never overwrite the real run's weights with a smoke run
            args.weights = WEIGHTS.with_name("quick_smoke.pt")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    threads = _study.setup_threads(args.threads)
    results_path = args.weights.with_suffix(".json")
    test = SyntheticLocalization(max(args.eval, 4), seed=2)
    x, y, masks = test.stack(range(max(args.eval, 4)))
    pretrained = load_pretrained()
    if args.docs_only:
        tuned, _ = _study.load_finetuned(args.weights)
        summary = json.loads(results_path.read_text())
        make_figure(args, pretrained, tuned, x, y, masks)
        write_doc(args, summary)
        return

    train = SyntheticLocalization(args.train, seed=0)
    val = SyntheticLocalization(args.val, seed=1)
    print(f"fine-tuning {', '.join(TRAINABLE)} on {args.train} images ({threads} threads)")
    result = fine_tune(
        pretrained,
        train,
        val=val,
        num_classes=len(CLASSES),
        trainable=TRAINABLE,
        cache_at=CACHE_AT,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=0,
        num_workers=args.workers,
        log=print,
    )
    load = os.getloadavg()[1] if hasattr(os, "getloadavg") else float("nan")
    tuned = result.model
    n_trainable = sum(
        p.numel() for name in TRAINABLE for p in tuned.get_submodule(name).parameters()
    )
    print(
        f"held-out accuracy {result.val_accuracy:.4f} after {result.seconds:.1f} s "
        f"({result.cache_seconds:.1f} s caching features)"
    )
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": tuned.state_dict(),
            "num_classes": len(CLASSES),
            "head": result.head,
            "trainable": TRAINABLE,
            "val_accuracy": result.val_accuracy,
            "history": result.history,
            "seconds": result.seconds,
        },
        args.weights,
    )

    chance = float(masks[: args.eval].float().mean())
    models = {"pretrained": (pretrained, None), "fine-tuned": (tuned, y)}
    methods = _study.all_methods() + list(_study.REFERENCES)
    rows = []
    for method in methods:
        n = args.eval_expensive if method in EXPENSIVE else args.eval
        scores: dict[str, tuple[float, float]] = {}
        with Timer() as t:
            for name, (model, target) in models.items():
                maps = _study.batched_maps(
                    model, x[:n], None if target is None else target[:n], method
                )
                scores[name] = (
                    float(pointing_game(maps, masks[:n]).mean()),
                    float(energy_pointing_game(maps, masks[:n]).mean()),
                )
        (pg0, en0), (pg1, en1) = scores["pretrained"], scores["fine-tuned"]
        rows.append([method, n, pg0, pg1, en0, en1, round(t.seconds, 1)])
        print(
            f"{method:>40}: pointing {pg0:.3f} -> {pg1:.3f}, energy {en0:.3f} -> {en1:.3f} "
            f"({n} images, {t.seconds:.1f} s)"
        )

    if args.quick:
        print("quick run: docs not written")
        return
    summary = {
        "train": args.train,
        "val": args.val,
        "eval": args.eval,
        "eval_expensive": args.eval_expensive,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "threads": threads,
        "load_average": load,
        "val_accuracy": result.val_accuracy,
        "seconds": result.seconds,
        "cache_seconds": result.cache_seconds,
        "history": result.history,
        "n_trainable": n_trainable,
        "chance": chance,
        "rows": rows,
        "options": {
            m: _study.describe_options(m) for m in _study.CHEAP if m in _study.all_methods()
        },
    }
    results_path.write_text(json.dumps(summary, indent=1))
    make_figure(args, pretrained, tuned, x, y, masks)
    write_doc(args, summary)


def make_figure(args, pretrained, tuned, x, y, masks) -> None:
    compare_models(
        {"pretrained": pretrained, "fine-tuned": tuned},
        x[:4],
        target={"pretrained": None, "fine-tuned": y[:4]},
        methods=FIGURE_METHODS,
        options={m: _study.options_for(m) for m in FIGURE_METHODS},
        masks=masks[:4],
        class_names={"pretrained": ImageNetIndex().names, "fine-tuned": CLASSES},
        title="Pretrained vs fine-tuned EfficientNet-Lite0 on the synthetic texture-patch task",
        panel_size=1.9,
        save_path=args.docs / "images" / FIGURE,
        dpi=80,
    )
    # Noisy gradient maps make large PNGs: a 256-colour palette keeps the page light.
    from PIL import Image

    path = args.docs / "images" / FIGURE
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def references_line(rows, chance) -> str:
    ref = {r[0]: r for r in rows if r[0] in _study.REFERENCES}
    rnd = ref["random map (reference)"]
    sob = ref["Sobel edges (reference, model-blind)"]
    line = (
        f"- References: the random map scores pointing {rnd[3]:.2f} / energy {rnd[5]:.2f} "
        f"(chance {chance:.2f}); the Sobel edge map, which ignores the model, scores pointing "
        f"{sob[3]:.2f} / energy {sob[5]:.2f}."
    )
    if max(sob[3], sob[5]) > 2 * chance:
        line += (
            " The patch is a high-contrast texture, so a map that knows nothing about the model "
            "already finds it more often than chance: a localisation score alone does not prove "
            "that a map explains the model - see [faithfulness.md](faithfulness.md) for the "
            "randomisation check."
        )
    return line


def write_doc(args, summary) -> None:
    rows, chance = summary["rows"], summary["chance"]
    registered = [r for r in rows if r[0] not in _study.REFERENCES]
    gains = sorted(registered, key=lambda r: r[5] - r[4], reverse=True)
    best = max(registered, key=lambda r: (r[3], r[5]))
    worse = [r[0] for r in registered if r[5] < r[4] - 0.02]
    history = _study.markdown_table(
        ["epoch", "loss", "train acc.", "held-out acc.", "seconds"],
        [
            [
                int(h["epoch"]),
                h["loss"],
                h["train_accuracy"],
                h.get("val_accuracy", float("nan")),
                f"{h['seconds']:.1f}",
            ]
            for h in summary["history"]
        ],
    )
    table = _study.markdown_table(
        [
            "method",
            "images",
            "pointing game before",
            "after",
            "energy before",
            "after",
            "seconds (both models)",
        ],
        [r[:6] + [f"{r[6]:.1f}"] for r in rows]
        + [["chance (patch area)", summary["eval"], chance, chance, chance, chance, "-"]],
    )
    options = "\n".join(f"- `{m}`: {o}" for m, o in summary["options"].items())
    threads = summary["threads"]
    lines = [
        "# Transfer learning: what fine-tuning changes in the maps",
        "",
        "Demo 3 of the FlashTorch talk compared a pretrained network with the same network "
        "fine-tuned on flowers. This is the reproducible version, on the CPU, with ground truth: "
        "`examples/transfer_learning.py` fine-tunes the bundled ImageNet-pretrained "
        "EfficientNet-Lite0 on `flashtorch.datasets.SyntheticLocalization` - textured scenes "
        "with distractor shapes whose class (stripes, checkerboard, dots, rings) is decided only "
        "by one small square patch - and scores every method's maps against the patch masks.",
        "",
        "## Fine-tuning",
        "",
        f"- trained: {', '.join(f'`{t}`' for t in TRAINABLE)} "
        f"({summary['n_trainable'] / 1e6:.2f} M parameters; the new head has {len(CLASSES)} "
        "classes); everything else frozen",
        f"- features of `{CACHE_AT}` (frozen trunk) computed once per image and reused "
        "(`fine_tune(..., cache_at=...)`)",
        f"- {summary['train']} training images (seed 0), {summary['val']} held-out images "
        f"(seed 1), {summary['epochs']} epochs, AdamW lr {summary['lr']:g} with cosine decay, "
        f"batch {summary['batch_size']}",
        f"- **held-out accuracy {summary['val_accuracy']:.1%}**, "
        f"**{summary['seconds'] / 60:.1f} min** in total on {threads} CPU "
        f"thread{'s' if threads > 1 else ''}, of which {summary['cache_seconds']:.0f} s "
        "rendering the images and running the frozen trunk once. The machine was shared "
        f"(5-minute load average {summary['load_average']:.1f} on "
        f"{os.cpu_count()} cores during the run), so an idle machine is faster.",
        "",
        history,
        "",
        "## The maps, side by side",
        "",
        f"![pretrained vs fine-tuned](images/{FIGURE})",
        "",
        "Held-out images (seed 2); the white square is the class patch, the circle the map's "
        "maximum (filled: it falls on the patch - a pointing-game hit). The pretrained model is "
        "explained for its own top-1 ImageNet class, the fine-tuned model for the true label. "
        "Produced with `flashtorch.plot.compare_models`.",
        "",
        "## Pointing game and energy, before and after",
        "",
        f"Mean over {summary['eval']} held-out images ({summary['eval_expensive']} for "
        f"{', '.join(sorted(EXPENSIVE))}). Pointing game (Zhang et al. 2016): the share of maps "
        "whose maximum lies on the patch (ties share the hit). Energy-based pointing game (Wang "
        "et al. 2020): the share of the map's positive mass on the patch. Chance for both is "
        f"the patch's share of the image, {chance:.3f}.",
        "",
        table,
        "",
        "Options used to fit a 2-core CPU (everything else at the method's defaults):",
        "",
        options,
        "",
        "## What the numbers say",
        "",
        "- Largest gain in energy on the patch: "
        + ", ".join(f"`{r[0]}` ({r[4]:.2f} -> {r[5]:.2f})" for r in gains[:3])
        + ".",
        f"- Best localisation after fine-tuning: `{best[0]}` (pointing game {best[3]:.2f}, "
        f"energy {best[5]:.2f}, on {best[1]} images).",
        "- Still at chance after fine-tuning (energy within 0.02 of the patch area): "
        + (", ".join(f"`{r[0]}`" for r in registered if abs(r[5] - chance) <= 0.02) or "none")
        + ".",
        "- Methods whose energy on the patch *fell* after fine-tuning: "
        + (", ".join(f"`{m}`" for m in worse) if worse else "none")
        + ".",
        references_line(rows, chance),
        f"- Sample size: with {summary['eval']} images a pointing-game value moves in steps of "
        f"{1 / summary['eval']:.2f} (1/{summary['eval_expensive']} for the expensive methods); "
        "read differences of a few steps as noise, and the before/after contrast as the result.",
        "",
        "Reproduce: `python examples/transfer_learning.py` (writes this page, the figure, "
        f"`{WEIGHTS.relative_to(ROOT).as_posix()}` and its `.json` results; "
        "`--docs-only` redraws the page and figure from them).",
        "",
    ]
    out = args.docs / "transfer_learning.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
