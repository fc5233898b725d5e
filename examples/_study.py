"""Shared pieces of examples/transfer_learning.py and examples/faithfulness_table.py.

Not part of the library: the study's settings (which blocks to train, where to cache features,
cheaper options for the expensive methods on a small CPU) and two reference "methods" that know
nothing about the model - a random map and the image's Sobel edges.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flashtorch
import flashtorch.cam  # noqa: F401  (registers the CAM family)
import flashtorch.saliency  # noqa: F401  (registers the gradient family)
from flashtorch.attribution import METHODS
from flashtorch.metrics._maps import as_maps

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "out" / "transfer_learning" / "efficientnet_lite0_synthetic.pt"

#: Fine-tune the last two stages, the 1x1 head convolution and a new classifier ...
TRAINABLE = ["net.blocks.5", "net.blocks.6", "net.conv_head", "net.bn2", "net.classifier"]
#: ... on features of stage 4 (112 x 14 x 14), computed once per image.
CACHE_AT = "net.blocks.4"

#: Cheaper settings for the costly methods (a 2-core CPU); used only if a method accepts them.
CHEAP: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 16, "internal_batch_size": 16},
    "smoothgrad": {"n_samples": 10, "internal_batch_size": 20},
    "smoothgrad_sq": {"n_samples": 10, "internal_batch_size": 20},
    "vargrad": {"n_samples": 10, "internal_batch_size": 20},
    "occlusion": {"window": 32, "stride": 16, "internal_batch_size": 64},
    # Score-CAM needs one forward pass per channel: the 320 channels of the last block instead
    # of the 1280 of the head convolution (both 7 x 7).
    "scorecam": {"layer": "net.blocks.6", "internal_batch_size": 64},
}
#: Methods run on fewer images because each image costs hundreds of forward passes.
EXPENSIVE = {"occlusion", "scorecam"}


def setup_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (default: torch's own choice).

    On a machine shared with other jobs, ``--threads 1`` is often several times faster than
    more threads fighting for the same cores.
    """
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def all_methods() -> list[str]:
    """Every registered method, in registration order."""
    return flashtorch.available_methods()


def options_for(method: str) -> dict[str, Any]:
    """The cheap options of ``method`` that its constructor accepts."""
    wanted = CHEAP.get(method, {})
    params = inspect.signature(METHODS[method].__init__).parameters
    return {k: v for k, v in wanted.items() if k in params}


def describe_options(method: str) -> str:
    opts = options_for(method)
    return (
        ", ".join(f"{k}={v}" for k, v in opts.items() if k != "internal_batch_size") or "defaults"
    )


def random_map(model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
    """Reference: uniform noise, seeded (knows nothing about the model or the image)."""
    gen = torch.Generator().manual_seed(0)
    b, _, h, w = inputs.shape
    return torch.rand(b, 1, h, w, generator=gen)


def sobel_map(model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
    """Reference: the image's Sobel edge magnitude (knows nothing about the model)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.T]).unsqueeze(1).to(inputs)
    g = F.conv2d(inputs.detach().mean(1, keepdim=True), k, padding=1)
    return g.pow(2).sum(1, keepdim=True).sqrt()


REFERENCES: dict[str, Callable[[nn.Module, Tensor, Any], Tensor]] = {
    "random map (reference)": random_map,
    "Sobel edges (reference, model-blind)": sobel_map,
}


def method_callable(method: str) -> str | Callable[[nn.Module, Tensor, Any], Tensor]:
    """A registry name, or the reference function of that label."""
    return REFERENCES.get(method, method)


def compute_maps(
    model: nn.Module,
    inputs: Tensor,
    target: Any,
    method: str,
    options: dict[str, Any] | None = None,
) -> Tensor:
    """``(B, 1, H, W)`` maps of ``method`` (a registry name or a reference label).

    ``options`` are the method's keyword options (default: :func:`options_for`).
    """
    fn = REFERENCES.get(method)
    if fn is not None:
        return as_maps(fn(model, inputs, target), size=tuple(inputs.shape[-2:]))
    opts = options_for(method) if options is None else options
    result = flashtorch.attribute(model, inputs, target=target, method=method, **opts)
    return as_maps(result, size=tuple(inputs.shape[-2:]))


def batched_maps(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | None,
    method: str,
    batch: int = 8,
    options: dict[str, Any] | None = None,
) -> Tensor:
    """:func:`compute_maps` over chunks of ``batch`` images (bounded memory)."""
    out = []
    for start in range(0, len(inputs), batch):
        t = None if target is None else target[start : start + batch]
        out.append(compute_maps(model, inputs[start : start + batch], t, method, options))
    return torch.cat(out)


def load_finetuned(path: Path = WEIGHTS) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned EfficientNet-Lite0 written by examples/transfer_learning.py."""
    from flashtorch.finetune import replace_head
    from flashtorch.models import load_pretrained

    if not path.exists():
        raise SystemExit(
            f"{path} not found: run `python examples/transfer_learning.py` first (it fine-tunes "
            "the model and saves the weights there)"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = load_pretrained()
    replace_head(model, int(saved["num_classes"]), saved["head"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


# --------------------------------------------------------------------------------------------
# The small vision transformer of examples/train_vit.py
# --------------------------------------------------------------------------------------------

VIT_DIR = ROOT / "out" / "vit_synthetic"
#: The synthetic task at 64 px for an 8 px-patch ViT: a class patch of 29-38 px (3.6-4.8 tokens
#: a side; smaller patches did not train within a few CPU minutes) and 3-5 texture periods
#: across it (at least 5.8 px a period: coarser than the 224 px default, which would alias).
VIT_DATA: dict[str, Any] = {"size": 64, "patch_fraction": (0.45, 0.6), "periods": (3.0, 5.0)}
#: A class-token ViT small enough to train from scratch in minutes on one CPU thread.
VIT_CONFIG: dict[str, Any] = {
    "img_size": 64,
    "patch_size": 8,
    "embed_dim": 96,
    "depth": 4,
    "num_heads": 3,
    "mlp_ratio": 2.0,
    "num_classes": 4,
}


def vit_dataset(length: int, seed: int, size: int | None = None, **changes: Any):
    """``SyntheticLocalization`` with the ViT study's settings (:data:`VIT_DATA`, ``changes``)."""
    from flashtorch.datasets import SyntheticLocalization

    data = {**VIT_DATA, **changes}
    if size is not None:
        data["size"] = size
    return SyntheticLocalization(length, seed=seed, **data)


def build_vit(config: dict[str, Any], seed: int = 0) -> nn.Module:
    """A timm ``VisionTransformer`` (class token) from ``config``, initialised from ``seed``."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VisionTransformer(**config)
    return model.eval()


def load_vit(directory: Path = VIT_DIR) -> tuple[nn.Module, dict[str, Any]]:
    """The ViT trained by examples/train_vit.py, in eval mode, and its saved summary."""
    import json

    weights, info = directory / "vit.pt", directory / "vit.json"
    if not weights.exists() or not info.exists():
        raise SystemExit(
            f"{weights} not found: run `python examples/train_vit.py` first (it trains the ViT "
            "and saves the weights there)"
        )
    summary = json.loads(info.read_text())
    model = build_vit(summary["config"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), summary
