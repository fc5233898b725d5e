"""Which map to believe? Every registered method on the fine-tuned model, five numbers each.

For the EfficientNet-Lite0 fine-tuned by examples/transfer_learning.py on the synthetic
texture-patch task (ground truth: the patch decides the class), on held-out images:

* pointing game and energy-based pointing game against the patch masks (localisation);
* deletion AUC (lower is better) and insertion AUC (higher is better) of the true class's
  probability (Petsiuk et al. 2018; constant-mean baseline for deletion, blur for insertion);
* the cascading model-parameter randomisation test (Adebayo et al. 2018): Spearman rank
  correlation between the maps of the trained model and of copies randomised from the top -
  the classifier, then the fine-tuned top, then stages 3-4, then the rest. High correlation
  means the map does not depend on what the model learned.

Writes docs/faithfulness.md. Run examples/transfer_learning.py first (it saves the weights).

With ``--vit`` the same columns for the ViT of examples/train_vit.py (run it first), plus the
rank correlation between the maps of two classes and a Grad-CAM layer comparison, written as
the page's transformer section (each mode keeps the other's part of the page).

Run:  python examples/faithfulness_table.py           (about 15-30 minutes on 2 CPU cores)
      python examples/faithfulness_table.py --quick   (smoke run, nothing written)
      python examples/faithfulness_table.py --vit     (the transformer section)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _study  # noqa: E402
from _study import EXPENSIVE, ROOT, WEIGHTS, Timer  # noqa: E402

from flashtorch.datasets import SyntheticLocalization  # noqa: E402
from flashtorch.metrics import (  # noqa: E402
    deletion,
    energy_pointing_game,
    insertion,
    model_randomization,
    pointing_game,
)

CASCADE = [
    ["net.classifier"],
    ["net.conv_head", "net.bn2", "net.blocks.6", "net.blocks.5"],
    ["net.blocks.4", "net.blocks.3"],
    ["net.blocks.2", "net.blocks.1", "net.blocks.0", "net.bn1", "net.conv_stem"],
]
CASCADE_LABELS = [
    "classifier",
    "+ fine-tuned top (stages 5-6, head conv)",
    "+ stages 3-4",
    "+ stages 0-2 and stem (all)",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=12, help="held-out images per method")
    p.add_argument(
        "--expensive-images", type=int, default=6, help=f"images for {', '.join(sorted(EXPENSIVE))}"
    )
    p.add_argument("--sanity-images", type=int, default=4)
    p.add_argument("--sanity-expensive-images", type=int, default=2)
    p.add_argument("--step", type=float, default=0.05, help="deletion/insertion step (fraction)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, nothing written")
    p.add_argument(
        "--vit", action="store_true", help="the transformer section (examples/train_vit.py's ViT)"
    )
    p.add_argument("--vit-dir", type=Path, default=_study.VIT_DIR)
    p.add_argument(
        "--no-layers", dest="layers", action="store_false", help="skip the Grad-CAM layer table"
    )
    p.add_argument(
        "--docs-only", action="store_true", help="rewrite the page from the saved results"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.expensive_images = 2, 1
        args.sanity_images, args.sanity_expensive_images, args.step = 1, 1, 0.25
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    threads = _study.setup_threads(args.threads)
    if args.vit:
        vit_main(args)
        return
    results_path = args.weights.with_name("faithfulness.json")
    if args.docs_only:
        summary = json.loads(results_path.read_text())
        write_doc(args, summary)
        return
    model, saved = _study.load_finetuned(args.weights)
    test = SyntheticLocalization(args.images, seed=2)
    x, y, masks = test.stack()
    chance = float(masks.float().mean())
    methods = args.methods or (_study.all_methods() + list(_study.REFERENCES))
    rows, details = [], []
    for method in methods:
        expensive = method in EXPENSIVE
        n = args.expensive_images if expensive else args.images
        k = args.sanity_expensive_images if expensive else args.sanity_images
        row, detail = score_method(model, x, y, masks, method, n, k, CASCADE, args.step)
        rows.append(row)
        details.append(detail)
    if args.quick:
        print("quick run: nothing written")
        return
    summary = {
        "images": args.images,
        "expensive_images": args.expensive_images,
        "sanity_images": args.sanity_images,
        "sanity_expensive_images": args.sanity_expensive_images,
        "step": args.step,
        "threads": threads,
        "val_accuracy": saved["val_accuracy"],
        "chance": chance,
        "rows": rows,
        "details": details,
        "options": {
            m: _study.describe_options(m) for m in _study.CHEAP if m in _study.all_methods()
        },
    }
    results_path.write_text(json.dumps(summary, indent=1))
    write_doc(args, summary)


def score_method(
    model, x, y, masks, method: str, n: int, k: int, cascade, step: float, options=None
) -> tuple[list, list]:
    """One table row and one cascade row of ``method`` on the first ``n`` (``k``) images.

    Row: method, n, pointing game, energy PG, deletion AUC, insertion AUC, rank correlation
    after the first, second and last cascade step, SSIM after the last, k, seconds.
    Detail: method, rank correlation and SSIM after every step, constant maps at the end.
    """
    if options is None:
        options = {} if method in _study.REFERENCES else _study.options_for(method)
    with Timer() as t:
        maps = _study.batched_maps(model, x[:n], y[:n], method, options=options)
        pg = float(pointing_game(maps, masks[:n]).mean())
        en = float(energy_pointing_game(maps, masks[:n]).mean())
        d = float(deletion(model, x[:n], maps, target=y[:n], step=step).auc.mean())
        i = float(insertion(model, x[:n], maps, target=y[:n], step=step).auc.mean())
        sanity = model_randomization(
            model,
            x[:k],
            target=y[:k],
            method=_study.method_callable(method),
            layers=cascade,
            options=options,
            seed=0,
        )
    rho = sanity.spearman.mean(1).tolist()
    ssim_all = float(sanity.ssim[-1].mean())
    row = [method, n, pg, en, d, i, rho[0], rho[1], rho[-1], ssim_all, k, round(t.seconds, 1)]
    flat = sanity.maps[-1].flatten(1)
    constant = int((flat.amax(1) == flat.amin(1)).sum())
    detail = [method] + rho + [float(v) for v in sanity.ssim.mean(1)] + [f"{constant} of {k}"]
    print(
        f"{method:>40}: PG {pg:.3f} EPG {en:.3f} del {d:.3f} ins {i:.3f} "
        f"rho {' '.join(f'{r:.2f}' for r in rho)} ssim {ssim_all:.2f} ({t.seconds:.1f} s)"
    )
    return row, detail


def tables(summary, second: str, labels: list[str], extra=()) -> tuple[str, str]:
    """The main table and the full-cascade table of a results summary.

    Args:
        summary: the saved results (``rows``, ``details``, ``images``, ``chance``).
        second: what the second cascade step randomises (a column header).
        labels: one label per cascade step.
        extra: ``(header, {method: value})`` pairs appended as columns of the main table.
    """
    rows, details, chance = summary["rows"], summary["details"], summary["chance"]
    headers = [
        "method",
        "images",
        "pointing game",
        "energy PG",
        "deletion AUC (lower better)",
        "insertion AUC (higher better)",
        "rank corr., classifier randomised",
        f"rank corr., {second} randomised",
        "rank corr., all randomised",
        "SSIM, all randomised",
        "sanity images",
        "seconds",
    ] + [h for h, _ in extra]
    body = [
        r[:-1] + [f"{r[-1]:.1f}"] + [values.get(r[0], "-") for _, values in extra] for r in rows
    ]
    chance_row = ["chance (patch area)", summary["images"], chance, chance]
    body.append(chance_row + ["-"] * (len(headers) - len(chance_row)))
    table = _study.markdown_table(headers, body)
    cascade = _study.markdown_table(
        ["method"]
        + [f"rank corr. {c}" for c in labels]
        + [f"SSIM {c}" for c in labels]
        + ["constant maps, all randomised"],
        details,
    )
    return table, cascade


def splice(path: Path, head: str | None = None, tail: str | None = None) -> None:
    """Write ``path`` as ``head`` + :data:`VIT_MARKER` + ``tail``, keeping the part not given.

    The CNN run rewrites the head and keeps an existing transformer section; ``--vit`` rewrites
    the section and keeps the head.
    """
    old = path.read_text() if path.exists() else ""
    old_head, found, old_tail = old.partition(VIT_MARKER)
    head = old_head if head is None else head
    tail = (old_tail if found else "") if tail is None else tail
    path.write_text(head.rstrip("\n") + "\n\n" + VIT_MARKER + tail if tail else head)


def write_doc(args, summary) -> None:
    threads, step = summary["threads"], summary["step"]
    table, cascade = tables(summary, "fine-tuned top", CASCADE_LABELS)
    rows, details, chance = summary["rows"], summary["details"], summary["chance"]
    lines = [
        "# Which map to believe: a faithfulness table",
        "",
        "Every registered method, explaining the fine-tuned EfficientNet-Lite0 of "
        "[transfer_learning.md](transfer_learning.md) (held-out accuracy "
        f"{summary['val_accuracy']:.1%}) on held-out images of the synthetic texture-patch task, "
        "where the ground truth is known: only the patch decides the class. Two references "
        "that know nothing about the model calibrate the scale: a random map and the image's "
        "Sobel edges. Produced by `examples/faithfulness_table.py` on "
        f"{threads} CPU thread{'s' if threads > 1 else ''}.",
        "",
        table,
        "",
        "Columns:",
        "",
        "- **pointing game** / **energy PG**: does the map's maximum fall on the patch / what "
        "share of its positive mass does (Zhang et al. 2016; Wang et al. 2020). Chance: "
        f"{chance:.3f}.",
        "- **deletion / insertion AUC**: area under the true class's probability as the "
        f"highest-ranked pixels are removed (set to the mean colour) or restored (from a "
        f"blurred copy), {step:.0%} of the pixels per step (Petsiuk et al. 2018).",
        "- **rank corr.**: Spearman correlation between the absolute maps of the trained model "
        "and of a copy whose layers were re-initialised from the top down "
        "(`flashtorch.metrics.model_randomization`, Adebayo et al. 2018). A method that "
        "explains the model should *lose* its map when the model is destroyed: low is good, "
        "near 1 means the map does not depend on the learned weights. The two references "
        "ignore the model, so theirs is 1 by construction. A constant map (e.g. a CAM that the "
        "ReLU zeroes everywhere) has no ranking; its correlation counts as 0.",
        "",
        "Full cascade (mean over the sanity images):",
        "",
        cascade,
        "",
        "Options used to fit a 2-core CPU (others at their defaults): "
        + "; ".join(
            f"`{m}`: {_study.describe_options(m)}"
            for m in _study.CHEAP
            if m in _study.all_methods()
        )
        + ".",
        "",
        "## Findings",
        "",
        *findings(rows, details, chance),
        "",
        "Reproduce: `python examples/transfer_learning.py && "
        "python examples/faithfulness_table.py`.",
        "",
    ]
    out = args.docs / "faithfulness.md"
    splice(out, head="\n".join(lines))
    print(f"wrote {out}")


def _by(rows, col: int, rev: bool) -> list:
    return sorted(rows, key=lambda r: r[col], reverse=rev)


def _names(items, col: int, fmt: str = ".2f") -> str:
    return ", ".join(f"`{r[0]}` {r[col]:{fmt}}" for r in items)


def ranking_lines(registered) -> list[str]:
    """The best and worst methods by energy, deletion and insertion (two findings)."""
    return [
        f"- Best localisation (energy on the patch): {_names(_by(registered, 3, True)[:3], 3)}; "
        f"lowest: {_names(_by(registered, 3, False)[:3], 3)}.",
        "- Most faithful by deletion (lowest AUC): "
        f"{_names(_by(registered, 4, False)[:3], 4, '.3f')}; by insertion (highest AUC): "
        f"{_names(_by(registered, 5, True)[:3], 5, '.3f')}.",
    ]


def constant_maps_lines(details) -> list[str]:
    """The finding on maps that became constant on the fully randomised model (if any)."""
    empty = [(d[0], d[-1]) for d in details if not str(d[-1]).startswith("0 of")]
    if not empty:
        return []
    return [
        "- Some maps become constant (no ranking, counted as correlation 0) on the fully "
        "randomised model: " + ", ".join(f"`{n}` ({c})" for n, c in empty) + "."
    ]


def findings(rows, details, chance) -> list[str]:
    """Statements read off the table (no claims that the numbers do not support)."""
    registered = [r for r in rows if r[0] not in _study.REFERENCES]
    refs = {r[0]: r for r in rows if r[0] in _study.REFERENCES}
    detail = {d[0]: d for d in details}

    def by(col: int, rev: bool) -> list:
        return _by(registered, col, rev)

    names = _names
    out = ranking_lines(registered)
    blind = [r for r in registered if r[8] > 0.5]
    if blind:
        out.append(
            "- **Fails the randomisation check** (rank correlation above 0.5 with every layer "
            "randomised - the map survives the destruction of the model): "
            + names(sorted(blind, key=lambda r: -r[8]), 8)
            + f" (on {blind[0][10]} images). Their maps are non-negative combinations of the "
            "layer's rectified activations; on a random network such a combination still "
            "lights up high-contrast texture like the patch - a likely reason, not a proof."
        )
    else:
        out.append(
            "- No method fails the full randomisation check: with every layer re-initialised, "
            f"the rank correlation is at most {max(r[8] for r in registered):.2f} for all of them."
        )
    top = sorted(registered, key=lambda r: r[7], reverse=True)
    median = sorted(r[7] for r in registered)[len(registered) // 2]
    out.append(
        "- With the fine-tuned top (classifier, head conv, stages 5-6) randomised but the "
        f"ImageNet stages intact, the most persistent maps are {names(top[:3], 7)} (median "
        f"over all methods {median:.2f}): what they show depends little on the layers that "
        "learned the task."
    )
    sticky = [r for r in registered if r[9] >= 0.6 and r[8] <= 0.3]
    if sticky:
        out.append(
            "- SSIM and rank correlation disagree for "
            + ", ".join(f"`{r[0]}` (SSIM {r[9]:.2f}, rank {r[8]:.2f})" for r in sticky)
            + ": these maps are mostly near zero, and SSIM of maps scaled to [0, 1] rewards "
            "the shared empty background. Read the rank correlation."
        )
    out += constant_maps_lines(details)
    twins = [
        (a[0], b[0])
        for i, a in enumerate(registered)
        for b in registered[i + 1 :]
        if all(abs(a[c] - b[c]) <= 0.005 for c in (2, 3, 4, 5))
    ]
    if twins:
        out.append(
            "- Practically identical scores (all four within 0.005): "
            + ", ".join(f"`{a}` and `{b}`" for a, b in twins)
            + " - on this architecture (a global-average-pooled linear head) their maps "
            "nearly coincide."
        )
    sob = refs.get("Sobel edges (reference, model-blind)")
    if sob is not None:
        beaten = [r[0] for r in registered if r[3] > sob[3]]
        out.append(
            f"- The model-blind Sobel map scores energy {sob[3]:.2f} (chance {chance:.3f}): "
            f"{len(beaten)} of {len(registered)} methods put more energy on the patch than an "
            "edge detector that never looks at the model."
        )
    detail_of = detail
    best = {"energy": by(3, True)[0], "deletion": by(4, False)[0], "insertion": by(5, True)[0]}
    failed = {r[0] for r in blind}
    summary = (
        "- In short: no method is best on every count - "
        + ", ".join(f"{k}: `{r[0]}`" for k, r in best.items())
        + ". "
    )
    passing = [r for r in by(3, True) if r[0] not in failed]
    if passing:
        summary += (
            f"The best-localising method that also passes the randomisation check is "
            f"`{passing[0][0]}` (energy {passing[0][3]:.2f}, rank correlation "
            f"{passing[0][8]:.2f} when fully randomised"
        )
        constant = str(detail_of.get(passing[0][0], ["0 of"])[-1])
        if not constant.startswith("0 of"):
            summary += f"; {constant} of its randomised maps were constant and count as 0"
        summary += ")."
    out.append(summary)
    return out


# --------------------------------------------------------------------------------------------
# Transformer mode (--vit): the ViT of examples/train_vit.py
# --------------------------------------------------------------------------------------------

#: The transformer section of docs/faithfulness.md starts here (written by ``--vit``).
VIT_MARKER = "<!-- transformer section: written by examples/faithfulness_table.py --vit -->\n"
#: The methods of the transformer table (those registered are run; the others are reported).
VIT_METHODS = [
    "gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradcam",
    "attention_rollout",
    "gradient_rollout",
]
#: Methods written for transformers (the floor of issue 13 is on the best of them).
TRANSFORMER_SPECIFIC = ["gradcam", "attention_rollout", "gradient_rollout"]


def vit_cascade(depth: int) -> tuple[list[list[str]], list[str]]:
    """The randomisation cascade of a ``depth``-block ViT, top down, and its labels.

    Head; the final norm and the last block; the block before; the remaining blocks; then
    everything (``""``, the root: patch embedding, position embedding and class token too).
    """
    last = depth - 1
    steps = [["head"], ["norm", f"blocks.{last}"]]
    labels = ["classifier", f"+ final norm, block {last}"]
    if depth > 1:
        steps.append([f"blocks.{last - 1}"])
        labels.append(f"+ block {last - 1}")
    if depth > 2:
        steps.append([f"blocks.{i}" for i in range(last - 2, -1, -1)])
        labels.append(f"+ blocks {last - 2}-0" if last > 2 else "+ block 0")
    steps.append([""])
    labels.append("+ patch/position embeddings, class token (all)")
    return steps, labels


def gradcam_candidates(depth: int) -> list[str | None]:
    """Layers compared for the ViT's Grad-CAM (``None``: the method's default layer)."""
    last = depth - 1
    names: list[str | None] = [None, f"blocks.{last}.norm1", f"blocks.{last}", "norm"]
    names += [f"blocks.{last}.attn", f"blocks.{last}.norm2"]
    for i in range(last - 1, -1, -1):
        names += [f"blocks.{i}.norm1", f"blocks.{i}"]
    return names + ["patch_embed.proj"]


def other_class_correlation(model, x, y, method: str, classes: int) -> float:
    """Mean rank correlation of the maps for the true class and for the next class.

    1.0 means the map does not depend on the explained class at all.
    """
    from flashtorch.metrics import spearman

    a = _study.batched_maps(model, x, y, method).abs()
    b = _study.batched_maps(model, x, (y + 1) % classes, method).abs()
    return float(spearman(a, b).mean())


def compare_gradcam_layers(model, x, y, masks, depth: int) -> list[list]:
    """Pointing game and energy PG of Grad-CAM at each candidate layer.

    Rows: layer (``"default (<name>)"`` for ``None``), pointing game, energy PG, constant maps,
    seconds; a layer the method refuses gets its error message instead of scores.
    """
    from flashtorch.cam import default_layer
    from flashtorch.errors import FlashTorchError

    rows = []
    for layer in gradcam_candidates(depth):
        label = f"`{layer}`"
        if layer is None:
            try:
                label = f"default (`{default_layer(model, x[:1])}`)"
            except FlashTorchError as exc:
                label = f"default (none: {exc})"
        with Timer() as t:
            try:
                options = {} if layer is None else {"layer": layer}
                maps = _study.batched_maps(model, x, y, "gradcam", options=options)
            except FlashTorchError as exc:
                rows.append([label, "-", "-", f"refused ({type(exc).__name__})", "-"])
                print(f"{label:>40}: {exc}")
                continue
        flat = maps.flatten(1)
        constant = int((flat.amax(1) == flat.amin(1)).sum())
        pg = float(pointing_game(maps, masks).mean())
        en = float(energy_pointing_game(maps, masks).mean())
        rows.append([label, pg, en, f"{constant} of {len(x)}", f"{t.seconds:.1f}"])
        print(f"{label:>40}: PG {pg:.3f} EPG {en:.3f} constant {constant} ({t.seconds:.1f} s)")
    return rows


def vit_main(args) -> None:
    threads = torch.get_num_threads()
    results_path = args.vit_dir / "faithfulness.json"
    if args.docs_only:
        write_vit_doc(args, json.loads(results_path.read_text()))
        return
    model, saved = _study.load_vit(args.vit_dir)
    config = saved["config"]
    test = _study.vit_dataset(args.images, seed=2, size=config["img_size"])
    x, y, masks = test.stack()
    chance = float(masks.float().mean())
    registered = set(_study.all_methods())
    wanted = args.methods or (VIT_METHODS + list(_study.REFERENCES))
    missing = [m for m in wanted if m not in registered and m not in _study.REFERENCES]
    cascade, labels = vit_cascade(config["depth"])
    rows, details, other = [], [], {}
    for method in (m for m in wanted if m not in missing):
        row, detail = score_method(
            model, x, y, masks, method, args.images, args.sanity_images, cascade, args.step
        )
        rows.append(row)
        details.append(detail)
        if method not in _study.REFERENCES:
            k = args.sanity_images
            other[method] = other_class_correlation(
                model, x[:k], y[:k], method, config["num_classes"]
            )
            print(f"{method:>40}: rank corr. true vs other class {other[method]:.3f}")
    layers = compare_gradcam_layers(model, x, y, masks, config["depth"]) if args.layers else []
    if missing:
        print(f"not registered, skipped: {', '.join(missing)}")
    if args.quick:
        print("quick run: nothing written")
        return
    summary = {
        "images": args.images,
        "sanity_images": args.sanity_images,
        "step": args.step,
        "threads": threads,
        "model": {k: saved[k] for k in ("config", "data", "val_accuracy", "val", "parameters")},
        "chance": chance,
        "rows": rows,
        "details": details,
        "other_class": other,
        "labels": labels,
        "layers": layers,
        "missing": missing,
        "options": {m: _study.describe_options(m) for m in _study.CHEAP if m in wanted},
    }
    results_path.write_text(json.dumps(summary, indent=1))
    write_vit_doc(args, summary)


def write_vit_doc(args, summary) -> None:
    model = summary["model"]
    config = model["config"]
    threads = summary["threads"]
    table, cascade = tables(
        summary,
        summary["labels"][1].removeprefix("+ ") + " also",
        summary["labels"],
        extra=[("rank corr., true vs other class", summary["other_class"])],
    )
    layer_table = _study.markdown_table(
        ["Grad-CAM layer", "pointing game", "energy PG", "constant maps", "seconds"],
        summary["layers"],
    )
    data = model["data"]
    lines = [
        "",
        "## Transformers: a ViT trained on the synthetic task",
        "",
        "No ImageNet-pretrained vision transformer can be installed offline, so this section "
        "explains the class-token ViT trained from scratch by `examples/train_vit.py` "
        f"([vit.md](vit.md)): {config['depth']} blocks, width {config['embed_dim']}, "
        f"{config['num_heads']} heads, {config['patch_size']} px patches on "
        f"{config['img_size']} px images ({model['parameters'] / 1e6:.2f} M parameters), "
        f"held-out accuracy {model['val_accuracy']:.1%} on {model['val']} images. The task is "
        f"the same texture-patch task at {data['size']} px (patch side "
        f"{data['patch_fraction'][0]:.0%}-{data['patch_fraction'][1]:.0%} of the image, "
        f"{data['periods'][0]:g}-{data['periods'][1]:g} texture periods across it); "
        f"{summary['images']} held-out images (seed 2), {summary['sanity_images']} of them for "
        f"the randomisation and class checks. Produced by `examples/faithfulness_table.py --vit` "
        f"on {threads} CPU thread{'s' if threads > 1 else ''}.",
        "",
        table,
        "",
        "Columns as above; the cascade randomises the classifier, then the final norm and the "
        "last block, then the blocks below, and last the embeddings and the class token. "
        "**rank corr., true vs other class**: Spearman correlation between the maps for the "
        "true class and for another class (the next label) on the same images - 1 means the "
        "map does not depend on which class is explained.",
        "",
        "Full cascade (mean over the sanity images):",
        "",
        cascade,
        "",
    ]
    if summary["options"]:
        lines += [
            "Options: "
            + "; ".join(f"`{m}`: {o}" for m, o in summary["options"].items())
            + " (the CNN table's settings).",
            "",
        ]
    if summary["missing"]:
        lines += [
            "Not in this run (not registered in this checkout): "
            + ", ".join(f"`{m}`" for m in summary["missing"])
            + ".",
            "",
        ]
    if summary["layers"]:
        lines += [
            "### Which layer for Grad-CAM on a ViT",
            "",
            f"Grad-CAM at each candidate layer, same {summary['images']} images:",
            "",
            layer_table,
            "",
        ]
    lines += ["### Findings", "", *vit_findings(summary), ""]
    lines += [
        "Reproduce: `python examples/train_vit.py && python examples/faithfulness_table.py --vit`.",
        "",
    ]
    out = args.docs / "faithfulness.md"
    splice(out, tail="\n".join(lines))
    print(f"wrote {out}")


def vit_findings(summary) -> list[str]:
    """Statements read off the transformer table."""
    rows, details, chance = summary["rows"], summary["details"], summary["chance"]
    registered = [r for r in rows if r[0] not in _study.REFERENCES]
    if not registered:
        return ["- No registered method ran."]
    out = ranking_lines(registered)
    specific = [r for r in registered if r[0] in TRANSFORMER_SPECIFIC]
    if specific:
        best = max(specific, key=lambda r: (r[2], r[3]))
        verdict = "meets" if best[2] >= 0.9 else "**misses**"
        se = (best[2] * (1 - best[2]) / best[1]) ** 0.5
        out.append(
            f"- Best transformer-specific method by pointing game: `{best[0]}` {best[2]:.3f} "
            f"(energy {best[3]:.2f}; chance {chance:.3f}) - it {verdict} the floor of 0.9 "
            f"(on {best[1]} images: steps of {1 / best[1]:.3f}, standard error about {se:.2f}). "
            "The others: "
            + (_names([r for r in specific if r is not best], 2, ".3f") or "none")
            + "."
        )
    blind = [r for r in registered if r[8] > 0.5]
    if blind:
        out.append(
            "- **Fails the randomisation check** (rank correlation above 0.5 with every layer "
            "randomised): "
            + _names(sorted(blind, key=lambda r: -r[8]), 8)
            + f" (on {blind[0][10]} images)."
        )
    else:
        out.append(
            "- No method fails the full randomisation check (rank correlation at most "
            f"{max(r[8] for r in registered):.2f} with every layer randomised)."
        )
    persistent = [r for r in registered if r[7] > 0.5]
    if persistent:
        out.append(
            "- Persistent after the second step (rank correlation above 0.5 with the classifier, "
            "the final norm and the last block randomised): "
            + _names(sorted(persistent, key=lambda r: -r[7]), 7)
            + "."
        )
    headless = [r for r in registered if r[6] >= 0.99]
    if headless:
        out.append(
            "- Unchanged by a random classifier (rank correlation >= 0.99 with the head "
            f"randomised): {_names(headless, 6, '.3f')} - the map never reads the head."
        )
    other = summary["other_class"]
    agnostic = {m: v for m, v in other.items() if v >= 0.99}
    if agnostic:
        line = (
            "- **Class-agnostic**: "
            + ", ".join(f"`{m}` {v:.3f}" for m, v in agnostic.items())
            + " rank correlation between the maps for the true and for another class."
        )
        if "attention_rollout" in agnostic:
            line += (
                " Attention rollout multiplies the attention matrices of the forward pass, "
                "which do not depend on the target, so by construction it draws the same map "
                "for every class: it shows where the model looks, not which evidence speaks "
                "for which class."
            )
        out.append(line)
    dependent = {m: v for m, v in other.items() if v < 0.99}
    if dependent:
        out.append(
            "- Class-dependent (same correlation below 0.99): "
            + ", ".join(f"`{m}` {v:.2f}" for m, v in sorted(dependent.items(), key=lambda i: i[1]))
            + "."
        )
    out += constant_maps_lines(details)
    sob = next((r for r in rows if r[0] == "Sobel edges (reference, model-blind)"), None)
    if sob is not None:
        beaten = [r[0] for r in registered if r[3] > sob[3]]
        out.append(
            f"- The model-blind Sobel map scores energy {sob[3]:.2f} and pointing game "
            f"{sob[2]:.2f}: {len(beaten)} of {len(registered)} methods put more energy on the "
            "patch."
        )
    scored = [r for r in summary["layers"] if isinstance(r[1], float)]
    full = f"{summary['images']} of {summary['images']}"
    working = [r for r in scored if str(r[3]) != full]
    if working:
        top = max(working, key=lambda r: (r[1], r[2]))
        line = (
            f"- Grad-CAM layer: the best pointing game among the layers with a map is at "
            f"{top[0]} ({top[1]:.3f}, energy {top[2]:.2f})"
        )
        default = next((r for r in working if str(r[0]).startswith("default")), None)
        if default is not None and (default[1], default[2]) < (top[1], top[2]):
            line += (
                f"; the default layer {default[0].removeprefix('default ')} scores "
                f"{default[1]:.3f} (energy "
                f"{default[2]:.2f}; chance {chance:.3f})"
            )
        elif default is not None:
            line += f" - the default layer {default[0].removeprefix('default ')}"
        line += "."
        empty = [r[0] for r in scored if str(r[3]) == full]
        if empty:
            line += (
                " Empty maps (every image) at " + ", ".join(str(e) for e in empty) + ": the "
                "head reads only the class token after the last block's attention, so the patch "
                "tokens there get no gradient. That is the measured reason for the default: the "
                "last block's `norm1` is the last layer whose map is not empty (pytorch-grad-cam's "
                "advice)"
            )
            if default is not None and (default[1], default[2]) < (top[1], top[2]):
                line += (
                    "; it is not the best-localising layer on this model, where earlier blocks "
                    "point at the patch more often"
                )
            line += "."
        out.append(line)
    return out


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
