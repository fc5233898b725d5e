"""The model-source registry: every form of model spec, one table, one resolver.

Each source turns a spec string into a :class:`LoadedModel`: the model (in eval mode) *and* its
:class:`DataConfig` (input size, mean/std, interpolation, crop, class names), the way timm's
``pretrained_cfg`` / ``resolve_data_config`` do. The command line (``--model``), the report,
dataset runs and :func:`~flashtorch.models.load_model` all resolve specs here.

================================  ==========================================================
``efficientnet_lite0``            the bundled ImageNet-pretrained model (offline)
``torchvision:NAME[:WEIGHTS]``    ``torchvision.models.get_model(NAME)``; WEIGHTS is a weights
                                  name (``DEFAULT``, ``IMAGENET1K_V1``) read from the local
                                  torch hub cache, or a state dict file (``.pth``...)
``timm:NAME[:WEIGHTS]``           ``timm.create_model(NAME)``; WEIGHTS is a pretrained tag
                                  (``pretrained``, ``a1_in1k``...) read from the local
                                  Hugging Face / torch hub cache, or a state dict file
``hf:PATH``                       a Hugging Face ``transformers`` image classifier: a folder
                                  saved with ``save_pretrained`` (weights and, if present,
                                  ``preprocessor_config.json``), or a ``config.json`` alone
                                  (random weights)
``path/to/model.ts``              a TorchScript archive (``torch.jit.save``)
``path/to/model.pt``              a whole pickled model - only with ``trust_pickle=True``
``package.module:factory[:W]``    import ``package.module``, call ``factory()`` (a class or a
                                  function; a module instance is used as is); ``W``: a state
                                  dict file
================================  ==========================================================

Nothing is ever downloaded: pretrained torchvision / timm weights come from the local cache
(``pretrained=True``, command line ``--pretrained``, or ``:WEIGHTS``), else the message says
which file to fetch and where to put it. An architecture built without weights has **random
weights**, and that is announced: a ``UserWarning`` (one ``flashtorch: warning:`` line on the
command line) that also names a classification head that is all zero at initialisation
(torchvision's ViTs), for which every map is exactly zero.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingDependencyError, ModelLoadError
from .pretrained import BUNDLED, IMAGENET_MEAN, IMAGENET_STD

Device = torch.device | str | None

_PIP_PRETRAINED = 'pip install "flashtorch[pretrained]"'
_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?::(?P<rest>.+))?$")
#: prefixes people type for the sources above (answered with the accepted forms).
_ALIASES = {
    "tv": "torchvision",
    "torchvision.models": "torchvision",
    "huggingface": "hf",
    "hf_hub": "hf",
    "hf-hub": "hf",
    "transformers": "hf",
    "pytorch-image-models": "timm",
}


# --------------------------------------------------------------------------------------------
# What a source returns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """The input a model expects, in timm's ``resolve_data_config`` terms.

    flashtorch's own image pipeline (:func:`~flashtorch.utils.apply_transforms`, used by the
    command line and runs) uses :attr:`size`, :attr:`mean` and :attr:`std` (shorter side resized
    to the size, centre crop); :attr:`interpolation` and :attr:`crop_pct` say what the weights
    were evaluated with, for pipelines of your own.

    Attributes:
        input_size: ``(channels, height, width)``.
        mean: per-channel mean, for inputs scaled to [0, 1].
        std: per-channel standard deviation.
        interpolation: resize filter (``"bilinear"``, ``"bicubic"``...).
        crop_pct: centre-crop fraction of the resized image (``input / resize``).
        class_names: the class of each output index, when known.
        origin: where these values come from (weights metadata, a preprocessor file, or
            ImageNet defaults when the source carries none).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    class_names: tuple[str, ...] | None = field(default=None, repr=False)
    origin: str = "ImageNet defaults"

    @property
    def size(self) -> int:
        """The input side (the width of :attr:`input_size`)."""
        return int(self.input_size[-1])

    def to_dict(self) -> dict[str, Any]:
        """The dictionary timm's ``resolve_data_config`` returns (``input_size``, ``mean``...)."""
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
        }

    def describe(self) -> str:
        """One line: size, mean/std, interpolation, crop and origin."""
        mean = ", ".join(f"{v:.3g}" for v in self.mean)
        std = ", ".join(f"{v:.3g}" for v in self.std)
        classes = f", {len(self.class_names)} class names" if self.class_names else ""
        return (
            f"{self.input_size[1]} x {self.input_size[2]}, mean ({mean}), std ({std}), "
            f"{self.interpolation}, crop {self.crop_pct:.3g}{classes} ({self.origin})"
        )


@dataclass(frozen=True)
class LoadedModel:
    """A model resolved from a spec, with its data config and where its weights came from.

    Attributes:
        model: the model, in eval mode.
        config: the :class:`DataConfig` its inputs need.
        spec: the spec it was resolved from.
        source: the registry key of the source (``"torchvision"``, ``"hf"``...).
        weights: where the weights came from (``"random"``, a file, a weights name...).
        notice: the random-weights / zero-head announcement, or ``None``.
    """

    model: nn.Module
    config: DataConfig
    spec: str
    source: str
    weights: str
    notice: str | None = None

    @property
    def random_weights(self) -> bool:
        """Whether the architecture was built without trained weights."""
        return self.weights == "random"


@dataclass(frozen=True)
class ModelSource:
    """One entry of :data:`SOURCES`.

    Attributes:
        name: the registry key.
        form: the spec form, as ``--help`` shows it.
        summary: what it loads.
        prefix: the spec prefix (``"timm:"``), or ``None`` for sources recognised otherwise.
    """

    name: str
    form: str
    summary: str
    prefix: str | None
    load: Callable[[str, str, _Options], LoadedModel] = field(repr=False)
    config: Callable[[str], DataConfig] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Options:
    pretrained: bool
    weights: str | None
    trust_pickle: bool
    device: Device
    kwargs: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _imagenet_names() -> tuple[str, ...]:
    from ..utils.imagenet import ImageNetIndex

    return tuple(ImageNetIndex().names)


def _names_for(num_outputs: int | None) -> tuple[str, ...] | None:
    return _imagenet_names() if num_outputs == 1000 else None


def _num_outputs(model: nn.Module) -> int | None:
    for module in reversed(list(model.modules())):
        if isinstance(module, nn.Linear):
            return int(module.out_features)
    return None


def zero_head(model: nn.Module) -> str | None:
    """The name of the model's last linear layer when its weight is all zero, else ``None``.

    Such a head (torchvision's ViTs start with one) gives every class the same logit, so every
    gradient-based map is exactly zero.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        return None
    name, module = last
    weight = module.weight
    if weight.is_meta or weight.numel() == 0:
        return None
    return name if not bool(weight.detach().any()) else None


def _notice(spec: str, model: nn.Module, random: bool, how: str) -> str | None:
    head = zero_head(model)
    parts = []
    if random:
        parts.append(
            f"{spec} has random weights (untrained: its maps show the architecture, not what a "
            f"trained model looks at); for trained weights {how}"
        )
    if head is not None:
        parts.append(
            f"its classification head {head!r} is all zero, so every class gets the same logit "
            "and every map is exactly zero"
        )
    return "; ".join(parts) if parts else None


def _finish(model: nn.Module, device: Device) -> nn.Module:
    if device is not None:
        model = model.to(device)
    return model.eval()


def _split_weights(rest: str, keyword: str | None, spec: str) -> tuple[str, str | None]:
    name, _, inline = rest.partition(":")
    if keyword is not None and inline:
        raise ModelLoadError(
            f"weights given twice: in the spec {spec!r} and as weights={keyword!r}; keep one"
        )
    return name, keyword if keyword is not None else (inline or None)


def _close(name: str, candidates: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def _hub_checkpoint(url: str) -> Path:
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _config_from_model(model: nn.Module, origin_default: str) -> DataConfig:
    """A data config read off the model object itself (timm's ``pretrained_cfg``...)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        return _timm_config(cfg, _num_outputs(model), "the model's pretrained_cfg")
    config = DataConfig(class_names=_names_for(_num_outputs(model)), origin=origin_default)
    size = getattr(model, "input_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        config = replace(config, input_size=(3, size, size), origin="the model's input_size")
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list)):
        config = replace(
            config,
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            origin="the model's input_size / mean / std",
        )
    return config


# --------------------------------------------------------------------------------------------
# Bundled
# --------------------------------------------------------------------------------------------


def _bundled_config(_rest: str) -> DataConfig:
    return DataConfig(
        input_size=(3, 224, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bicubic",
        crop_pct=0.882,
        class_names=_imagenet_names(),
        origin="bundled EfficientNet-Lite0 (ImageNet-normalised input)",
    )


def _load_bundled(spec: str, rest: str, opts: _Options) -> LoadedModel:
    from .pretrained import load_pretrained

    if opts.weights is not None or opts.kwargs:
        raise ModelLoadError(
            f"{spec!r} is the bundled pretrained model; it takes no weights or model_kwargs"
        )
    model = load_pretrained(rest, device=opts.device)
    return LoadedModel(model, _bundled_config(rest), spec, "bundled", "bundled (ImageNet)")


# --------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError as exc:
        raise MissingDependencyError(
            "'torchvision:' models need torchvision; install it with: pip install torchvision"
        ) from exc
    return torchvision


def _torchvision_name(torchvision: Any, name: str) -> str:
    available = torchvision.models.list_models()
    if not name:
        raise ModelLoadError("'torchvision:' names no model; write e.g. 'torchvision:resnet18'")
    if name not in available:
        close = _close(name, available)
        hint = f"; did you mean {', '.join(repr(f'torchvision:{c}') for c in close)}?"
        raise ModelLoadError(
            f"torchvision has no model {name!r}"
            + (hint if close else "; see torchvision.models.list_models()")
        )
    return name


def _torchvision_weights_enum(torchvision: Any, name: str, weights: str) -> Any:
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"torchvision has no pretrained weights for {name!r}") from exc
    key = weights.rpartition(".")[2]
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    if key not in enum.__members__:
        raise ModelLoadError(
            f"torchvision has no weights {weights!r} for {name!r}; choose DEFAULT or one of "
            f"{', '.join(members)} (or give a state dict file)"
        )
    return enum[key]


def _torchvision_default(torchvision: Any, name: str) -> Any:
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _torchvision_config_of(entry: Any, num_outputs: int | None, origin: str) -> DataConfig:
    if entry is None:
        return DataConfig(class_names=_names_for(num_outputs), origin="ImageNet defaults")
    t = entry.transforms()
    crop = getattr(t, "crop_size", None) or [224]
    resize = getattr(t, "resize_size", None) or crop
    interpolation = getattr(t, "interpolation", None)
    categories = entry.meta.get("categories")
    names = None
    if categories and (num_outputs is None or num_outputs == len(categories)):
        names = _imagenet_names() if len(categories) == 1000 else tuple(categories)
    return DataConfig(
        input_size=(3, int(crop[0]), int(crop[-1])),
        mean=tuple(float(v) for v in getattr(t, "mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in getattr(t, "std", IMAGENET_STD)),
        interpolation=str(getattr(interpolation, "value", interpolation or "bilinear")),
        crop_pct=float(crop[0]) / float(resize[0]),
        class_names=names,
        origin=origin,
    )


def _torchvision_config(rest: str) -> DataConfig:
    torchvision = _torchvision()
    name, _, weights = rest.partition(":")
    name = _torchvision_name(torchvision, name)
    if weights and not _looks_like_file(weights):
        entry = _torchvision_weights_enum(torchvision, name, weights)
        return _torchvision_config_of(entry, None, f"torchvision {entry} transforms")
    entry = _torchvision_default(torchvision, name)
    return _torchvision_config_of(entry, None, f"torchvision {entry} transforms")


def _load_torchvision(spec: str, rest: str, opts: _Options) -> LoadedModel:
    torchvision = _torchvision()
    name, weights = _split_weights(rest, opts.weights, spec)
    name = _torchvision_name(torchvision, name)
    if weights is None and opts.pretrained:
        weights = "DEFAULT"
    kwargs = opts.kwargs
    if weights is not None and not _looks_like_file(weights):
        entry = _torchvision_weights_enum(torchvision, name, weights)
        cached = _hub_checkpoint(entry.url)
        if not cached.is_file():
            raise ModelLoadError(
                f"torchvision's {entry} weights for {name!r} are not in the local cache "
                f"({cached}); flashtorch never downloads. Fetch {entry.url} on a machine with "
                "network access and put it there, or give the file: "
                f"'torchvision:{name}:path/to/weights.pth'"
            )
        try:
            model = torchvision.models.get_model(name, weights=entry, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load torchvision weights {entry} for {name!r} from {cached}: {exc}"
            ) from exc
        model = _finish(model, opts.device)
        config = _torchvision_config_of(entry, _num_outputs(model), f"torchvision {entry}")
        return LoadedModel(
            model, config, spec, "torchvision", str(entry), _notice(spec, model, False, "")
        )
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"torchvision could not build {name!r}: {exc}") from exc
    if weights is not None:
        from .loading import _load_weights_into

        _load_weights_into(model, weights, f"torchvision:{name}")
    model = _finish(model, opts.device)
    entry = _torchvision_default(torchvision, name)
    config = _torchvision_config_of(
        entry, _num_outputs(model), f"torchvision {entry} transforms" if entry else "defaults"
    )
    how = (
        f"add --pretrained (pretrained=True: {entry} from the local torch hub cache) or "
        f"give them: 'torchvision:{name}:WEIGHTS' (a weights name or a .pth file)"
    )
    random = weights is None
    return LoadedModel(
        model,
        config,
        spec,
        "torchvision",
        weights or "random",
        _notice(spec, model, random, how),
    )


# --------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------


def _timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError(
            f"timm: models need timm; install it with: {_PIP_PRETRAINED}"
        ) from exc
    return timm


def _timm_name(timm: Any, name: str) -> str:
    if not name:
        raise ModelLoadError("'timm:' names no model; write e.g. 'timm:resnet18'")
    if not timm.is_model(name):
        close = _close(name.partition(".")[0], timm.list_models())
        hint = f"; did you mean {', '.join(repr(f'timm:{c}') for c in close)}?"
        raise ModelLoadError(
            f"timm has no model {name!r}" + (hint if close else "; see timm.list_models()")
        )
    return name


def _timm_config(cfg: Mapping[str, Any] | Any, num_outputs: int | None, origin: str) -> DataConfig:
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    size = tuple(int(v) for v in (get("input_size") or (3, 224, 224)))
    return DataConfig(
        input_size=(size[0], size[1], size[2]),
        mean=tuple(float(v) for v in (get("mean") or IMAGENET_MEAN)),
        std=tuple(float(v) for v in (get("std") or IMAGENET_STD)),
        interpolation=str(get("interpolation") or "bicubic"),
        crop_pct=float(get("crop_pct") or 0.875),
        class_names=_names_for(num_outputs if num_outputs is not None else get("num_classes")),
        origin=origin,
    )


def _timm_config_only(rest: str) -> DataConfig:
    timm = _timm()
    name, _, tag = rest.partition(":")
    arch = _timm_name(timm, name)
    tagged = arch if not tag or tag.lower() in ("pretrained", "default") else f"{arch}.{tag}"
    cfg = timm.models.get_pretrained_cfg(tagged)
    if cfg is None:
        raise ModelLoadError(f"timm has no pretrained config for {tagged!r}")
    return _timm_config(cfg, None, f"timm pretrained_cfg of {tagged}")


def _timm_cached_file(timm: Any, tagged: str) -> tuple[Path | None, list[str]]:
    """A local copy of timm's pretrained weights for ``tagged``, and where it was looked for."""
    cfg = timm.models.get_pretrained_cfg(tagged)
    if cfg is None:
        raise ModelLoadError(
            f"timm has no pretrained weights {tagged!r}; see timm.list_pretrained()"
        )
    looked: list[str] = []
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file), looked
    if cfg.hf_hub_id:
        lookup: Callable[..., Any] | None
        try:
            from huggingface_hub import try_to_load_from_cache as lookup
        except ImportError:
            lookup = None
        repo = cfg.hf_hub_id.partition("@")[0]
        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if not filename:
                continue
            looked.append(f"the Hugging Face cache ({repo}/{filename})")
            if lookup is not None:
                found = lookup(repo, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found), looked
    if cfg.url:
        cached = _hub_checkpoint(cfg.url)
        looked.append(str(cached))
        if cached.is_file():
            return cached, looked
    return None, looked


def _load_timm(spec: str, rest: str, opts: _Options) -> LoadedModel:
    timm = _timm()
    name, weights = _split_weights(rest, opts.weights, spec)
    name = _timm_name(timm, name)
    if weights is None and opts.pretrained:
        weights = "pretrained"
    kwargs = opts.kwargs
    if weights is not None and not _looks_like_file(weights):
        tagged = name if weights.lower() in ("pretrained", "default") else f"{name}.{weights}"
        found, looked = _timm_cached_file(timm, tagged)
        if found is None:
            raise ModelLoadError(
                f"timm's pretrained weights {tagged!r} are not in the local cache (looked in "
                f"{'; '.join(looked) or 'nowhere'}); flashtorch never downloads. Run "
                f"timm.create_model({tagged!r}, pretrained=True) once on a machine with "
                f"network access, or give the file: 'timm:{name}:path/to/weights.pth'"
            )
        try:
            model = timm.create_model(
                tagged, pretrained=True, pretrained_cfg_overlay={"file": str(found)}, **kwargs
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load timm weights {tagged!r} from {found}: {exc}"
            ) from exc
        model = _finish(model, opts.device)
        config = _timm_config(
            model.pretrained_cfg, _num_outputs(model), f"timm pretrained_cfg of {tagged}"
        )
        return LoadedModel(
            model, config, spec, "timm", f"{tagged} ({found})", _notice(spec, model, False, "")
        )
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"timm could not build {name!r}: {exc}") from exc
    if weights is not None:
        from .loading import _load_weights_into

        _load_weights_into(model, weights, f"timm:{name}")
    model = _finish(model, opts.device)
    config = _timm_config(
        getattr(model, "pretrained_cfg", {}) or {},
        _num_outputs(model),
        f"timm pretrained_cfg of {name}",
    )
    how = (
        "add --pretrained (pretrained=True: timm's default weights from the local cache) "
        f"or give them: 'timm:{name}:TAG' or 'timm:{name}:weights.pth'"
    )
    random = weights is None
    return LoadedModel(
        model,
        config,
        spec,
        "timm",
        weights or "random",
        _notice(spec, model, random, how),
    )


# --------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------

_HF_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
#: PIL resample codes, as transformers' image processors store them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(
            "'hf:' models need Hugging Face transformers; install it with: pip install transformers"
        ) from exc
    return transformers


def _hf_paths(rest: str) -> tuple[Path, Path]:
    """``(folder, config.json)`` of an ``hf:`` spec, or a precise error."""
    if not rest:
        raise ModelLoadError("'hf:' names no folder; write 'hf:path/to/saved_model'")
    path = Path(rest).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ModelLoadError(
                f"hf: folder {rest!r} has no config.json; save the model there with "
                "model.save_pretrained(folder), or give a config.json file"
            )
        return path, config
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ModelLoadError(
                f"hf: {rest!r} is a file but not a config.json; give the folder saved with "
                "save_pretrained or its config.json"
            )
        return path.parent, path
    raise ModelLoadError(
        f"hf: {rest!r} is not a local folder or config.json (resolved to {path.resolve()}); "
        "flashtorch never downloads: save the model with model.save_pretrained(folder) (or "
        "`hf download REPO --local-dir folder`) and give 'hf:folder'"
    )


def _hf_config(folder: Path, config: Any, num_outputs: int | None) -> DataConfig:
    size = getattr(config, "image_size", 224)
    if isinstance(size, (list, tuple)):
        height, width = int(size[0]), int(size[-1])
    else:
        height = width = int(size)
    channels = int(getattr(config, "num_channels", 3))
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation, crop_pct = "bilinear", 1.0
    origin = "config.json image_size, ImageNet mean/std (no preprocessor_config.json)"
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        try:
            pre = json.loads(processor.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{processor} is not readable JSON: {exc}") from exc
        mean = tuple(float(v) for v in pre.get("image_mean", mean))
        std = tuple(float(v) for v in pre.get("image_std", std))
        interpolation = _RESAMPLE.get(pre.get("resample"), interpolation)
        crop = pre.get("crop_size") if pre.get("do_center_crop") else None
        sizes = pre.get("size")
        if isinstance(crop, Mapping):
            height, width = int(crop.get("height", height)), int(crop.get("width", width))
        elif isinstance(sizes, Mapping) and "height" in sizes:
            height, width = int(sizes["height"]), int(sizes.get("width", sizes["height"]))
        if pre.get("crop_pct"):
            crop_pct = float(pre["crop_pct"])
        origin = "preprocessor_config.json"
    labels = getattr(config, "id2label", None) or {}
    names: tuple[str, ...] | None = None
    if labels and not all(str(v) == f"LABEL_{k}" for k, v in labels.items()):
        names = tuple(str(labels[k]) for k in sorted(labels, key=int))
    elif num_outputs == 1000:
        names = _imagenet_names()
    return DataConfig(
        input_size=(channels, height, width),
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=crop_pct,
        class_names=names,
        origin=origin,
    )


def _hf_read_config(transformers: Any, config_path: Path) -> Any:
    try:
        raw = json.loads(config_path.read_text())
        model_type = raw.pop("model_type")
        return transformers.AutoConfig.for_model(model_type, **raw)
    except KeyError as exc:
        raise ModelLoadError(
            f"{config_path} names no model_type; is it a transformers config.json?"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"could not read {config_path} as a transformers config: {exc}"
        ) from exc


def _hf_config_only(rest: str) -> DataConfig:
    folder, config_path = _hf_paths(rest)
    config = _hf_read_config(_transformers(), config_path)
    return _hf_config(folder, config, getattr(config, "num_labels", None))


def _load_hf(spec: str, rest: str, opts: _Options) -> LoadedModel:
    if opts.weights is not None:
        raise ModelLoadError(
            f"{spec!r}: an hf: model takes its weights from its folder (save_pretrained), "
            "not weights="
        )
    folder, config_path = _hf_paths(rest)
    transformers = _transformers()
    auto = transformers.AutoModelForImageClassification
    has_weights = (
        config_path.name == "config.json"
        and config_path.parent == folder
        and any((folder / f).is_file() for f in _HF_WEIGHTS)
    )
    config = _hf_read_config(transformers, config_path)
    try:
        if has_weights:
            model = auto.from_pretrained(str(folder), local_files_only=True, **opts.kwargs)
        else:
            if opts.pretrained:
                raise ModelLoadError(
                    f"{spec!r} holds no weights (no {' / '.join(_HF_WEIGHTS[:2])} beside "
                    "its config.json), but pretrained weights were asked for; save the model "
                    "with model.save_pretrained(folder)"
                )
            for key, value in opts.kwargs.items():
                setattr(config, key, value)
            model = auto.from_config(config)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not build an image classifier from {config_path}: {exc}"
        ) from exc
    model = _finish(model, opts.device)
    data = _hf_config(folder, model.config, _num_outputs(model))
    how = "save the trained model with model.save_pretrained(folder) and give 'hf:folder'"
    random = not has_weights
    return LoadedModel(
        model,
        data,
        spec,
        "hf",
        "random" if random else str(folder),
        _notice(spec, model, random, how),
    )


# --------------------------------------------------------------------------------------------
# Files and factories
# --------------------------------------------------------------------------------------------


def _looks_like_file(weights: str) -> bool:
    from .loading import _WEIGHT_SUFFIXES

    return (
        Path(weights).suffix.lower() in _WEIGHT_SUFFIXES
        or os.sep in weights
        or "/" in weights
        or Path(weights).expanduser().is_file()
    )


def _load_file(spec: str, rest: str, opts: _Options) -> LoadedModel:
    from .loading import _is_torchscript, _load_model_file

    path = Path(rest).expanduser()
    if opts.weights is not None:
        raise ModelLoadError(f"weights= is for an architecture spec, but {rest!r} is a model file")
    scripted = _is_torchscript(path)
    model = _finish(
        _load_model_file(path, trust_pickle=opts.trust_pickle, device=opts.device), opts.device
    )
    kind = "torchscript" if scripted else "file"
    what = "TorchScript file" if scripted else "pickled model"
    config = _config_from_model(model, f"ImageNet defaults (a {what} carries no preprocessing)")
    return LoadedModel(model, config, spec, kind, str(path), _notice(spec, model, False, ""))


def _load_factory(spec: str, rest: str, opts: _Options) -> LoadedModel:
    from .loading import _factory_model, _load_weights_into

    match = _FACTORY.match(rest)
    assert match is not None  # checked by _source_of
    weights = match["rest"]
    if weights is not None and opts.weights is not None:
        raise ModelLoadError(
            f"weights given twice: in the spec {spec!r} and as weights={opts.weights!r}; keep one"
        )
    weights = weights if weights is not None else opts.weights
    model = _factory_model(match["module"], match["attr"], opts.kwargs, _accepted_forms())
    if weights is not None:
        _load_weights_into(model, weights, rest)
    elif opts.pretrained:
        raise ModelLoadError(
            f"--pretrained / pretrained=True applies to torchvision:, timm: and hf: models; the "
            f"factory {match['module']}:{match['attr']} loads its own weights, or give a state "
            f"dict file: '{match['module']}:{match['attr']}:weights.pth'"
        )
    model = _finish(model, opts.device)
    config = _config_from_model(model, "ImageNet defaults (the factory's model has no config)")
    return LoadedModel(
        model,
        config,
        spec,
        "factory",
        weights or "as the factory built it",
        _notice(spec, model, False, ""),
    )


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

#: Every model source, in the order specs are matched.
SOURCES: dict[str, ModelSource] = {
    s.name: s
    for s in (
        ModelSource(
            "bundled",
            "efficientnet_lite0",
            "the bundled ImageNet-pretrained EfficientNet-Lite0 (offline)",
            None,
            _load_bundled,
            _bundled_config,
        ),
        ModelSource(
            "torchvision",
            "torchvision:NAME[:WEIGHTS]",
            "a torchvision architecture; WEIGHTS: DEFAULT, IMAGENET1K_V1... (local "
            "cache) or a .pth file",
            "torchvision:",
            _load_torchvision,
            _torchvision_config,
        ),
        ModelSource(
            "timm",
            "timm:NAME[:WEIGHTS]",
            "a timm architecture; WEIGHTS: pretrained or a tag (local cache) or a .pth file",
            "timm:",
            _load_timm,
            _timm_config_only,
        ),
        ModelSource(
            "hf",
            "hf:PATH",
            "a Hugging Face transformers image classifier: a save_pretrained folder "
            "or a config.json",
            "hf:",
            _load_hf,
            _hf_config_only,
        ),
        ModelSource(
            "file",
            "PATH.ts | PATH.pt",
            "a TorchScript file, or a whole pickled model (trust_pickle)",
            None,
            _load_file,
        ),
        ModelSource(
            "factory",
            "package.module:factory[:WEIGHTS]",
            "import the module and call the factory; WEIGHTS: a state dict file",
            None,
            _load_factory,
        ),
    )
}


def _accepted_forms() -> str:
    return "accepted forms: " + ", ".join(s.form for s in SOURCES.values())


def _source_of(text: str) -> tuple[ModelSource, str]:
    """The source of a spec and the rest of the spec after its prefix."""
    if text.lower().replace("-", "_") in BUNDLED:
        return SOURCES["bundled"], text
    if Path(text).expanduser().is_file():
        return SOURCES["file"], text
    for source in SOURCES.values():
        if source.prefix and text.startswith(source.prefix):
            return source, text[len(source.prefix) :]
    prefix = text.partition(":")[0]
    if ":" in text and prefix.lower() in _ALIASES:
        right = _ALIASES[prefix.lower()]
        raise ModelLoadError(
            f"unknown model source {prefix + ':'!r} in {text!r}; did you mean "
            f"'{right}:{text.partition(':')[2]}'? {_accepted_forms()}"
        )
    if _FACTORY.match(text):
        return SOURCES["factory"], text
    from .loading import _WEIGHT_SUFFIXES, _unknown_name_message

    if Path(text).suffix.lower() in _WEIGHT_SUFFIXES or os.sep in text or "/" in text:
        raise ModelLoadError(
            f"model file {text!r} does not exist (resolved to {Path(text).resolve()})"
        )
    raise ModelLoadError(_unknown_name_message(text))


def resolve_model(
    spec: str | os.PathLike[str],
    *,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    device: Device = None,
    model_kwargs: Mapping[str, Any] | None = None,
    warn: bool = True,
) -> LoadedModel:
    """Resolve a model spec (see the module docstring) to a model and its data config.

    Args:
        spec: a bundled name, ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:WEIGHTS]``,
            ``hf:PATH``, ``package.module:factory[:WEIGHTS]``, or the path of a TorchScript /
            pickled model.
        pretrained: torchvision / timm: load the architecture's default pretrained weights
            from the local cache (never downloaded); ``hf:``: refuse a folder without weights.
        weights: a state dict file or weights name for the architecture (same as ``:WEIGHTS``).
        trust_pickle: allow unpickling a whole model object (runs code from the file).
        device: where to put the model (default: where it loads, the CPU).
        model_kwargs: keyword arguments for the architecture constructor, e.g.
            ``{"num_classes": 10}`` (for ``hf:``, config attributes).
        warn: announce random weights and a zero classification head with a ``UserWarning``.

    Returns:
        A :class:`LoadedModel` (``.model`` in eval mode, ``.config`` its :class:`DataConfig`).

    Raises:
        ModelLoadError: unknown source or name (the message lists the accepted forms or close
            names), missing file or factory, weights not in the local cache or not fitting.
        MissingDependencyError: the source's library (torchvision, timm, transformers) is
            not installed.

    Example:
        >>> loaded = resolve_model("torchvision:resnet18")  # warns: random  # doctest: +SKIP
        >>> loaded.config.size, loaded.config.mean          # doctest: +SKIP
        (224, (0.485, 0.456, 0.406))
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelLoadError(
            f"model spec must be a string or a path, got {type(spec).__name__}; "
            "to use a model object, pass it directly to flashtorch's methods"
        )
    text = os.fspath(spec).strip()
    opts = _Options(
        bool(pretrained),
        None if weights is None else os.fspath(weights),
        trust_pickle,
        device,
        dict(model_kwargs or {}),
    )
    source, rest = _source_of(text)
    loaded = source.load(text, rest, opts)
    if warn and loaded.notice:
        warnings.warn(loaded.notice, UserWarning, stacklevel=2)
    return loaded


def data_config(spec: str) -> DataConfig:
    """The :class:`DataConfig` of a bundled, ``torchvision:``, ``timm:`` or ``hf:`` spec.

    Read from the weights' metadata, without building the model.

    Raises:
        ModelLoadError: the source carries no data config without loading (files and
            factories: load them with :func:`resolve_model`), or the name is unknown.
    """
    source, rest = _source_of(spec.strip())
    if source.config is None:
        raise ModelLoadError(
            f"no known preprocessing for {spec!r} without loading it; known: "
            f"{', '.join(BUNDLED)}, 'timm:NAME', 'torchvision:NAME', 'hf:PATH'. Use "
            "resolve_model(spec).config, or the mean/std your model was trained with"
        )
    return source.config(rest)


def with_size(config: DataConfig, size: int | None) -> DataConfig:
    """``config`` with a square input side of ``size`` (unchanged for ``None``)."""
    if not size:
        return config
    return replace(config, input_size=(config.input_size[0], int(size), int(size)))


__all__ = [
    "SOURCES",
    "DataConfig",
    "LoadedModel",
    "ModelSource",
    "data_config",
    "resolve_model",
    "with_size",
    "zero_head",
]
