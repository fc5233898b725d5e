"""Load a model from a spec string: :func:`load_model`, and the file / factory helpers.

The spec forms and their resolution live in one registry, :mod:`flashtorch.models.sources`
(``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:WEIGHTS]``, ``hf:PATH``, TorchScript and pickled
files, ``package.module:factory[:WEIGHTS]``, the bundled ``efficientnet_lite0``);
:func:`load_model` is its thin wrapper returning the model alone (FlashTorch 0.1.x's API).

A state dict alone (``.pth``) carries no architecture: give it with one, as ``ARCH:path`` or
``load_model(arch_spec, weights=path)``. Weight files are always read with
``torch.load(..., weights_only=True)``, which cannot run code from the file; unpickling a whole
model can, so it happens only when the caller says ``trust_pickle=True``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MissingDependencyError, ModelLoadError
from .pretrained import BUNDLED

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
    pretrained: bool = False,
) -> nn.Module:
    """Load a model from a spec string (see the module docstring for the forms).

    A thin wrapper of :func:`flashtorch.models.resolve_model` that returns the model alone;
    random weights are announced with a ``UserWarning``.

    Args:
        spec: bundled name, ``torchvision:NAME[:WEIGHTS]``, ``timm:NAME[:WEIGHTS]``,
            ``hf:PATH``, ``package.module:factory[:WEIGHTS]``, or the path of a TorchScript /
            pickled model.
        weights: a state dict file for the architecture in ``spec`` (same as ``spec:WEIGHTS``).
        trust_pickle: allow unpickling a whole model object from a file (this runs code from
            the file: only for files you trust). Weight files never need it.
        device: where to put the model (default: where it loads, the CPU).
        model_kwargs: keyword arguments for the architecture constructor
            (``torchvision.models.get_model``, ``timm.create_model`` or the factory), e.g.
            ``{"num_classes": 10}``.
        pretrained: torchvision / timm: the default pretrained weights, from the local cache.

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadError: unknown name (the message suggests close names), missing file, a state
            dict without an architecture, a pickled model without ``trust_pickle``, weights
            that do not fit the architecture or are not in the local cache.
        MissingDependencyError: ``timm:``, ``torchvision:`` or ``hf:`` without that package.

    Example:
        >>> model = load_model("torchvision:resnet18")        # random weights  # doctest: +SKIP
        >>> model = load_model("timm:resnet18:ckpt.pth")      # doctest: +SKIP
        >>> model = load_model("scripted.ts")                  # doctest: +SKIP
    """
    from .sources import resolve_model

    loaded = resolve_model(
        spec,
        pretrained=pretrained,
        weights=weights,
        trust_pickle=trust_pickle,
        device=device,
        model_kwargs=model_kwargs,
        warn=False,
    )
    if loaded.notice:
        warnings.warn(loaded.notice, UserWarning, stacklevel=2)
    return loaded.model


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _close(name: str, candidates: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def _factory_model(
    module_name: str, attr: str, kwargs: dict[str, Any], forms: str = ""
) -> nn.Module:
    spec = f"{module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import {module_name!r} for {spec!r} ({exc}); is the package installed and "
            "on sys.path? Bundled names, 'torchvision:NAME', 'timm:NAME' and 'hf:PATH' need no "
            f"import{'; ' + forms if forms else ''}"
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
        "file, and not 'torchvision:NAME', 'timm:NAME', 'hf:PATH' or 'package.module:factory'."
        + hint
    )


__all__ = ["load_model"]
