"""Resolve a model specification string to an ``nn.Module`` in eval mode.

Specs (also what the ``flashtorch`` command accepts for ``--model``):

================================  ==========================================================
``efficientnet_lite0``            the bundled ImageNet-pretrained model (offline)
``torchvision:NAME[:WEIGHTS]``    ``torchvision.models.get_model(NAME)``; WEIGHTS is a state
                                  dict file (``.pth``...) or a torchvision weights name
                                  (``DEFAULT``, ``IMAGENET1K_V1``; downloads unless cached)
``timm:NAME[:WEIGHTS]``           ``timm.create_model(NAME)``; WEIGHTS is a state dict file or
                                  a pretrained tag (``pretrained``, ``in1k``...; downloads)
``path/to/model.ts``              a TorchScript archive (``torch.jit.save``)
``path/to/model.pt``              a whole pickled model - only with ``trust_pickle=True``
``package.module:factory[:W]``    import ``package.module``, call ``factory()`` (a class or a
                                  function; a module instance is used as is)
================================  ==========================================================

A state dict alone (``.pth``) carries no architecture: give it with one, as ``ARCH:path`` above
or ``load_model(arch_spec, weights=path)``. Weight files are always read with
``torch.load(..., weights_only=True)``, which cannot run code from the file; unpickling a whole
model can, so it happens only when the caller says ``trust_pickle=True``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MissingDependencyError, ModelLoadError
from .pretrained import BUNDLED, load_pretrained

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".pkl", ".ts", ".jit")
_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?::(?P<rest>.+))?$")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema")
_PREFIXES = ("module.", "_orig_mod.")

Device = torch.device | str | None


def load_model(
    spec: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    device: Device = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Load a model from a spec string (see the module docstring for the forms).

    Args:
        spec: bundled name, ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:WEIGHTS]``,
            ``package.module:factory[:WEIGHTS]``, or the path of a TorchScript / pickled model.
        weights: a state dict file for the architecture in ``spec`` (same as ``spec:WEIGHTS``).
        trust_pickle: allow unpickling a whole model object from a file (this runs code from
            the file: only for files you trust). Weight files never need it.
        device: where to put the model (default: where it loads, the CPU).
        model_kwargs: keyword arguments for the architecture constructor
            (``torchvision.models.get_model``, ``timm.create_model`` or the factory), e.g.
            ``{"num_classes": 10}``.

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: unknown name (the message suggests close names), missing file, a state
            dict without an architecture, a pickled model without ``trust_pickle``, weights
            that do not fit the architecture.
        MissingDependencyError: ``timm:`` or ``torchvision:`` without that package installed.

    Example:
        >>> model = load_model("torchvision:resnet18")        # random weights  # doctest: +SKIP
        >>> model = load_model("timm:resnet18:ckpt.pth")      # doctest: +SKIP
        >>> model = load_model("scripted.ts")                  # doctest: +SKIP
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelLoadError(
            f"model spec must be a string or a path, got {type(spec).__name__}; "
            "to use a model object, pass it directly to flashtorch's methods"
        )
    kwargs = dict(model_kwargs or {})
    text = os.fspath(spec).strip()
    weights_path = None if weights is None else os.fspath(weights)

    if text.lower().replace("-", "_") in BUNDLED:
        if weights_path is not None or kwargs:
            raise ModelLoadError(
                f"{text!r} is the bundled pretrained model; it takes no weights or model_kwargs"
            )
        return load_pretrained(text, device=device)

    path = Path(text).expanduser()
    if path.is_file():
        if weights_path is not None:
            raise ModelLoadError(
                f"weights= is for an architecture spec, but {text!r} is a model file"
            )
        model = _load_model_file(path, trust_pickle=trust_pickle, device=device)
        return _finish(model, device)

    source, _, rest = text.partition(":")
    if source in ("torchvision", "timm"):
        name, _, inline = rest.partition(":")
        weights_path = _one_weights(weights_path, inline or None, text)
        if not name:
            raise ModelLoadError(f"{text!r} names no model; write e.g. '{source}:resnet18'")
        if source == "torchvision":
            model = _torchvision_model(name, weights_path, kwargs)
        else:
            model = _timm_model(name, weights_path, kwargs)
        return _finish(model, device)

    match = _FACTORY.match(text)
    if match is not None:
        weights_path = _one_weights(weights_path, match["rest"], text)
        model = _factory_model(match["module"], match["attr"], kwargs)
        if weights_path is not None:
            _load_weights_into(model, weights_path, text)
        return _finish(model, device)

    if path.suffix.lower() in _WEIGHT_SUFFIXES or os.sep in text or "/" in text:
        raise ModelLoadError(f"model file {text!r} does not exist (resolved to {path.resolve()})")
    raise ModelLoadError(_unknown_name_message(text))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _finish(model: nn.Module, device: Device) -> nn.Module:
    if device is not None:
        model = model.to(device)
    return model.eval()


def _one_weights(keyword: str | None, inline: str | None, spec: str) -> str | None:
    if keyword is not None and inline is not None:
        raise ModelLoadError(
            f"weights given twice: in the spec {spec!r} and as weights={keyword!r}; keep one"
        )
    return keyword if keyword is not None else inline


def _looks_like_file(weights: str) -> bool:
    return (
        Path(weights).suffix.lower() in _WEIGHT_SUFFIXES
        or os.sep in weights
        or "/" in weights
        or Path(weights).expanduser().is_file()
    )


def _close(name: str, candidates: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def _torchvision_model(name: str, weights: str | None, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise MissingDependencyError(
            "'torchvision:' models need torchvision; install it with: pip install torchvision"
        ) from exc
    available = torchvision.models.list_models()
    if name not in available:
        close = _close(name, available)
        hint = f"; did you mean {', '.join(repr(f'torchvision:{c}') for c in close)}?"
        raise ModelLoadError(
            f"torchvision has no model {name!r}"
            + (hint if close else "; see torchvision.models.list_models()")
        )
    if weights is not None and not _looks_like_file(weights):
        try:  # a torchvision weights name; downloads unless already in the torch hub cache
            return torchvision.models.get_model(name, weights=weights, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"could not get torchvision weights {weights!r} for {name!r}: {exc}. Without "
                "network access, download the file elsewhere and pass its path instead"
            ) from exc
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"torchvision could not build {name!r}: {exc}") from exc
    if weights is not None:
        _load_weights_into(model, weights, f"torchvision:{name}")
    return model


def _timm_model(name: str, weights: str | None, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError(
            'timm: models need timm; install it with: pip install "flashtorch[pretrained]"'
        ) from exc
    if not timm.is_model(name):
        close = _close(name.partition(".")[0], timm.list_models())
        hint = f"; did you mean {', '.join(repr(f'timm:{c}') for c in close)}?"
        raise ModelLoadError(
            f"timm has no model {name!r}" + (hint if close else "; see timm.list_models()")
        )
    if weights is not None and not _looks_like_file(weights):
        tagged = name if weights.lower() in ("pretrained", "default") else f"{name}.{weights}"
        try:  # timm's pretrained weights: downloads unless already in the HF cache
            return timm.create_model(tagged, pretrained=True, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"could not get timm pretrained weights {tagged!r}: {exc}. Without network "
                "access, download the file elsewhere and pass its path instead"
            ) from exc
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"timm could not build {name!r}: {exc}") from exc
    if weights is not None:
        _load_weights_into(model, weights, f"timm:{name}")
    return model


def _factory_model(module_name: str, attr: str, kwargs: dict[str, Any]) -> nn.Module:
    spec = f"{module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import {module_name!r} for {spec!r} ({exc}); is the package installed and "
            "on sys.path? Bundled names, 'torchvision:NAME' and 'timm:NAME' need no import"
        ) from exc
    obj: Any = module
    walked = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = _close(part, public)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ModelLoadError(f"{walked!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ModelLoadError(f"{spec!r} is a module instance; it takes no model_kwargs")
        return obj
    if not callable(obj):
        raise ModelLoadError(
            f"{spec!r} is a {type(obj).__name__}, not a model factory; point to a function or "
            "class that returns an nn.Module"
        )
    try:
        model = obj(**kwargs)
    except Exception as exc:
        raise ModelLoadError(f"the factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"the factory {spec!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())


def _load_model_file(path: Path, *, trust_pickle: bool, device: Device) -> nn.Module:
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location=device or "cpu")
        except Exception as exc:
            raise ModelLoadError(f"could not load TorchScript file {path}: {exc}") from exc
    if path.suffix.lower() == ".safetensors":
        raise ModelLoadError(_state_dict_only_message(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _refused_by_weights_only(exc):
            raise ModelLoadError(f"{path} is not a PyTorch model file: {exc}") from exc
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} holds pickled Python objects{_pickled_class(exc)} (a whole model "
                "saved with torch.save(model)?). Unpickling runs code from the file, so "
                "flashtorch refuses by default. If you trust the file, pass trust_pickle=True "
                "(command line: --trust-pickle). Safer: save model.state_dict() and load it "
                "with an architecture, e.g. 'torchvision:NAME:weights.pth'"
            ) from exc
        obj = _unpickle_trusted(path)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a PyTorch model file: {exc}") from exc
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):  # a trusted checkpoint dict holding the model object
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), nn.Module):
                return obj[key]
    if isinstance(obj, Mapping) and _find_state_dict(obj) is not None:
        raise ModelLoadError(_state_dict_only_message(path))
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a model; expected a TorchScript file, a "
        "whole pickled model (trust_pickle=True) or a state dict with an architecture"
    )


def _refused_by_weights_only(exc: pickle.UnpicklingError) -> bool:
    """Whether torch.load refused a Python object in the file (not: the file is no pickle)."""
    return "unsupported global" in str(exc).lower()


def _pickled_class(exc: pickle.UnpicklingError) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f" ({found.group(1)})" if found else ""


def _unpickle_trusted(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as exc:
        raise ModelLoadError(
            f"{path} refers to a class that cannot be imported here ({exc}); make the module "
            "that defined the model importable, or load a state dict with an architecture"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"could not unpickle {path}: {exc}") from exc


def _state_dict_only_message(path: Path) -> str:
    return (
        f"{path} holds weights only (a state dict), no architecture. Give one: "
        f"'torchvision:NAME:{path}', 'timm:NAME:{path}', 'package.module:factory:{path}', or "
        "load_model(arch_spec, weights=path)"
    )


def _is_tensor_mapping(obj: object) -> bool:
    return (
        isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())
    )


def _find_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The state dict in a file: the mapping itself, or under a usual checkpoint key."""
    if _is_tensor_mapping(obj):
        found: dict[str, Tensor] = dict(obj)
    else:
        for key in _NESTED_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                found = dict(obj[key])
                break
        else:
            return None
    for prefix in _PREFIXES:  # DataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in found):
            found = {k[len(prefix) :]: v for k, v in found.items()}
    return found


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise MissingDependencyError(
                "reading .safetensors needs safetensors: pip install safetensors"
            ) from exc
        return load_file(str(path), device="cpu")
    if _is_torchscript(path):
        raise ModelLoadError(
            f"{path} is a TorchScript model, not a state dict; load it on its own: "
            f"load_model({str(path)!r})"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _refused_by_weights_only(exc):
            raise ModelLoadError(f"{path} is not a PyTorch weights file: {exc}") from exc
        raise ModelLoadError(
            f"{path} is not a plain state dict (it holds pickled Python objects, maybe a whole "
            "model). Load it alone with trust_pickle=True if you trust it, or re-save "
            "model.state_dict()"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a PyTorch weights file: {exc}") from exc
    found = _find_state_dict(obj) if isinstance(obj, Mapping) else None
    if found is None:
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return found


def _load_weights_into(model: nn.Module, weights: str, spec: str) -> None:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"weights file {weights!r} for {spec!r} does not exist")
    state_dict = _read_state_dict(path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        expected = set(model.state_dict())
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys, e.g. {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} keys, e.g. {unexpected[:3]}")
        if not detail:
            detail.append(str(exc).splitlines()[-1].strip())
        raise ModelLoadError(
            f"{path.name} does not fit {spec!r}: {'; '.join(detail)}. Check the architecture "
            "name and constructor options (model_kwargs, e.g. num_classes)"
        ) from exc


def _unknown_name_message(name: str) -> str:
    specs: dict[str, list[str]] = {b: [b] for b in BUNDLED}  # bare name -> full specs
    try:
        import torchvision

        for n in torchvision.models.list_models():
            specs.setdefault(n, []).append(f"torchvision:{n}")
    except ImportError:
        pass
    try:
        import timm

        for n in timm.list_models():
            specs.setdefault(n, []).append(f"timm:{n}")
    except ImportError:
        pass
    bare = name.lower().replace("-", "_").rpartition(":")[2]
    shown = [s for c in _close(bare, list(specs), n=6) for s in specs[c]][:6]
    hint = f" Did you mean {', '.join(repr(s) for s in shown)}?" if shown else ""
    return (
        f"unknown model {name!r}: not a bundled model ({', '.join(BUNDLED)}), not an existing "
        "file, and not 'torchvision:NAME', 'timm:NAME' or 'package.module:factory'." + hint
    )


__all__ = ["load_model"]
