"""What the page computes, without gradio: models from the command line, explanations, files.

:class:`Explainer` holds the models named on the command line (and nothing else: the page
chooses among them by name, never by a spec or path), checks every upload (size in bytes,
pixels, that it is an image) and runs the library's public API: :func:`flashtorch.attribute`,
:func:`flashtorch.models.list_layers`, :func:`flashtorch.cam.default_layer`,
:func:`flashtorch.scaling.scale_maps` and the overlay helpers of :mod:`flashtorch.report`.
Everything it refuses raises a :class:`~flashtorch.errors.FlashTorchError` whose message is
what the page shows.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ImageLoadError, InputError, LayerError, MethodError, TargetError

#: The bundled example photos (``examples/images`` of the repository).
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples" / "images"
#: Largest upload, in megabytes, unless the command line says otherwise.
DEFAULT_MAX_UPLOAD_MB = 10.0
#: Largest upload, in pixels (width x height), unless the command line says otherwise.
DEFAULT_MAX_PIXELS = 25_000_000
#: The choice of the target menu that means "each image's top prediction".
TOP_PREDICTION = "top prediction"
#: The choice of the layer menu that means "the CAM's default layer".
DEFAULT_LAYER = "default"
#: How many clicks' PNG / NPY files are kept in :attr:`Explainer.out_dir`.
KEEP_RESULTS = 32
#: Methods the page preselects.
DEFAULT_METHODS = ("gradcam",)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def example_images() -> dict[str, Path]:
    """The bundled example photos by file name (empty when the folder is absent)."""
    if not EXAMPLES_DIR.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(EXAMPLES_DIR.iterdir())
        if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    }


@dataclass
class ModelEntry:
    """One model of the command line: the loaded model and what the page needs of it."""

    name: str
    model: torch.nn.Module
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None
    device: torch.device
    cam_layers: list[str] = field(default_factory=list)
    default_layer: str | None = None
    #: the random-weights / zero-head announcement of the model source, or ``None``.
    notice: str | None = None
    #: the attention methods (rollout...) this model supports; ``None`` until probed.
    attention_methods: list[str] | None = None


@dataclass
class MapOutput:
    """One method's map for one image, ready to show and download."""

    method: str
    target: int | None
    target_label: str
    layer: str | None
    seconds: float
    raw: np.ndarray  # (C, H, W) float32, the method's map as it is
    overlay: np.ndarray  # (H, W, 3) uint8, the map over the image
    panel: np.ndarray  # (H, W', 3) uint8: overlay | raw map | colour bar
    png_path: Path | None = None
    npy_path: Path | None = None


@dataclass
class ExplainResult:
    """What one click of **Explain** gives: the input as the model saw it, top-5, maps."""

    model: str
    image: np.ndarray  # (H, W, 3) uint8, the resized and cropped input
    top5: list[tuple[int, str, float]]
    maps: list[MapOutput]

    def caption(self, item: MapOutput) -> str:
        """The caption of a map: method, class, layer and time."""
        layer = f", layer {item.layer}" if item.layer else ""
        return f"{item.method}: {item.target_label}{layer} ({item.seconds:.3f} s)"


def _class_label(entry: ModelEntry, index: int) -> str:
    names = entry.class_names
    if names is not None and 0 <= index < len(names):
        return f"{names[index]} ({index})"
    return f"class {index}"


def class_choices(entry: ModelEntry) -> list[str]:
    """The target menu: the top prediction, then every class as ``"name (index)"``."""
    if entry.class_names is None:
        return [TOP_PREDICTION]
    return [TOP_PREDICTION] + [_class_label(entry, i) for i in range(len(entry.class_names))]


def parse_class_choice(entry: ModelEntry, choice: str | int | None) -> int | None:
    """A target menu choice (``"tabby (281)"``, ``281``, ``"281"``, a top-5 label) -> index.

    Raises:
        TargetError: not a class of this model.
    """
    if choice is None or choice == "" or choice == TOP_PREDICTION:
        return None
    if isinstance(choice, bool):
        raise TargetError(f"unknown class {choice!r}")
    if isinstance(choice, int):
        index = choice
    else:
        text = str(choice).strip()
        if text.isdigit():
            index = int(text)
        else:
            start = text.rfind("(")
            end = text.find(")", start)
            inside = text[start + 1 : end] if 0 <= start < end else ""
            if not inside.isdigit():
                raise TargetError(
                    f"unknown class {choice!r}; pick one from the list (it reads 'name (index)')"
                )
            index = int(inside)
    count = len(entry.class_names) if entry.class_names is not None else None
    if index < 0 or (count is not None and index >= count):
        raise TargetError(f"class index {index} is out of range for {entry.name}")
    return index


def _colour_bar(height: int, cmap: str, width: int = 14) -> np.ndarray:
    from matplotlib import colormaps

    levels = np.linspace(1.0, 0.0, height, dtype=np.float32)
    rgb = colormaps[cmap](levels)[:, :3]
    bar = np.repeat(rgb[:, None, :], width, axis=1)
    return np.round(bar * 255.0).astype(np.uint8)


def _heat(level: np.ndarray, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    rgb = colormaps[cmap](level)[..., :3]
    return np.round(rgb * 255.0).astype(np.uint8)


class Explainer:
    """The models of the command line and the page's computations on them.

    Args:
        models: model specs for :func:`flashtorch.models.resolve_model` (from the command line
            only); the first is the default.
        device: where the models run.
        max_upload_mb: largest upload in megabytes.
        max_pixels: largest upload in pixels (width x height).
        out_dir: where the PNG / NPY downloads are written (default: a new temporary folder).
        cmap: the colour map of the overlays.
        pretrained: ``torchvision:`` / ``timm:`` specs load their default pretrained weights
            from the local cache (as ``flashtorch explain --pretrained``).
        trust_pickle: allow a whole pickled model file among ``models`` (the command line's
            ``--trust-pickle``; the page never names a file).
        runs: run directories (or folders of runs) the Runs tab may browse (the command
            line's ``--runs``); see :class:`~flashtorch.app.runs.RunBrowser`.

    Raises:
        ModelLoadError: a spec that does not resolve.
        InputError: a limit that is not positive, or a ``runs`` root that is not a folder.
    """

    def __init__(
        self,
        models: Sequence[str] = ("efficientnet_lite0",),
        *,
        device: str | torch.device = "cpu",
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        out_dir: str | os.PathLike[str] | None = None,
        cmap: str = "jet",
        pretrained: bool = False,
        trust_pickle: bool = False,
        runs: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        from ..models import resolve_model
        from .runs import RunBrowser

        if not max_upload_mb > 0:
            raise InputError(f"max_upload_mb must be positive, got {max_upload_mb!r}")
        if not max_pixels >= 1:
            raise InputError(f"max_pixels must be at least 1, got {max_pixels!r}")
        specs = list(dict.fromkeys(str(m) for m in models)) or ["efficientnet_lite0"]
        self.device = torch.device(device)
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.max_upload_mb = float(max_upload_mb)
        self.max_pixels = int(max_pixels)
        self.cmap = cmap
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="flashtorch-"))
        self.runs = RunBrowser(runs, cmap=cmap, max_pixels=self.max_pixels)
        self._lock = threading.Lock()
        self._count = 0
        self.models: dict[str, ModelEntry] = {}
        for spec in specs:
            loaded = resolve_model(
                spec, pretrained=pretrained, trust_pickle=trust_pickle, device=self.device
            )
            cfg = loaded.config
            self.models[spec] = ModelEntry(
                spec,
                loaded.model,
                cfg.size,
                tuple(cfg.mean),
                tuple(cfg.std),
                cfg.class_names,
                self.device,
                notice=loaded.notice,
            )

    # ----------------------------------------------------------------------------------------
    # What the menus offer
    # ----------------------------------------------------------------------------------------

    @property
    def model_names(self) -> list[str]:
        """The models of the command line, the default first."""
        return list(self.models)

    def entry(self, name: str | None) -> ModelEntry:
        """The model called ``name`` (one of :attr:`model_names`).

        Raises:
            InputError: any other name (the page cannot load a model of its own).
        """
        if name is None or name == "":
            return next(iter(self.models.values()))
        try:
            return self.models[name]
        except (KeyError, TypeError):
            raise InputError(
                f"unknown model {name!r}; this server offers {', '.join(self.models)} "
                "(models are chosen on the command line: flashtorch serve --model M)"
            ) from None

    @staticmethod
    def method_names() -> list[str]:
        """The registered methods that take an image classifier (attention methods excluded)."""
        from .. import METHODS
        from ..cli import register_methods

        register_methods()
        return [n for n, cls in METHODS.items() if not getattr(cls, "needs_attention", False)]

    def layers(self, name: str | None) -> tuple[list[str], str | None]:
        """The layers a CAM can read as a map, and the CAM's default among them.

        Computed once per model (one forward pass of :func:`~flashtorch.models.list_layers`
        and one of :func:`~flashtorch.cam.default_layer`).
        """
        entry = self.entry(name)
        if not entry.cam_layers:
            from ..cam import default_layer
            from ..models import list_layers

            size = (1, 3, entry.size, entry.size)
            rows = list_layers(entry.model, size, layouts=True)
            entry.cam_layers = [n for n, _kind, _shape, layout in rows if layout]
            try:
                x = torch.zeros(size, device=entry.device)
                entry.default_layer = default_layer(entry.model, x)
            except LayerError:
                entry.default_layer = None
        return entry.cam_layers, entry.default_layer

    def layer_choices(self, name: str | None) -> list[tuple[str, str]]:
        """The layer menu, ``(shown, value)`` pairs: the default first (marked), then the rest."""
        names, default = self.layers(name)
        first = f"{DEFAULT_LAYER} ({default})" if default else DEFAULT_LAYER
        return [(first, DEFAULT_LAYER)] + [(n, n) for n in names]

    def warm_up(self, methods: Sequence[str] = ("gradient", "guided", "gradcam")) -> None:
        """Run ``methods`` once per model on a grey image, so that the first click is fast.

        Also fills each model's layer menu (:meth:`layers`). Nothing is written.
        """
        from .. import attribute

        for name, entry in self.models.items():
            self.layers(name)
            x = torch.zeros(1, 3, entry.size, entry.size, device=entry.device)
            for method in methods:
                if method in self.method_names():
                    attribute(entry.model, x, method=method)

    # ----------------------------------------------------------------------------------------
    # Transformers and method options (what each model supports, the Options accordion)
    # ----------------------------------------------------------------------------------------

    def model_methods(self, name: str | None) -> list[str]:
        """The methods the page offers for model ``name``, in registry order.

        :meth:`method_names` (every method that takes an image classifier) plus the attention
        methods (``attention_rollout``, ``gradient_rollout``...) that this model supports:
        each is tried once on a grey image (cached); a model without global self-attention (a
        CNN, a windowed transformer) refuses it with a :class:`~flashtorch.errors.MethodError`
        and is not offered it.
        """
        from .. import METHODS

        entry = self.entry(name)
        if entry.attention_methods is None:
            entry.attention_methods = self._probe_attention(entry)
        supported = set(self.method_names()) | set(entry.attention_methods)
        return [n for n in METHODS if n in supported]

    @staticmethod
    def _probe_attention(entry: ModelEntry) -> list[str]:
        import warnings

        from .. import METHODS, attribute
        from ..errors import FlashTorchError

        x = torch.zeros(1, 3, entry.size, entry.size, device=entry.device)
        found = []
        for name, cls in METHODS.items():
            if not getattr(cls, "needs_attention", False):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    attribute(entry.model, x, method=name)
            except FlashTorchError:
                continue
            found.append(name)
        return found

    def notices(self) -> dict[str, str]:
        """The models' announcements (random weights, an all-zero head), by model name."""
        return {name: e.notice for name, e in self.models.items() if e.notice}

    @staticmethod
    def option_specs(methods: Sequence[str]) -> list[OptionSpec]:
        """The options the page offers for ``methods`` (see :func:`option_specs`)."""
        return [spec for method in methods for spec in option_specs(method)]

    @staticmethod
    def parse_options(
        methods: Sequence[str], values: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """The page's option values -> ``explain(options=...)`` for the chosen ``methods``.

        Args:
            methods: the chosen methods.
            values: option values by :attr:`OptionSpec.key` (``"smoothgrad.n_samples"``); an
                empty value, or the default, leaves the method's default.

        Returns:
            ``{method: {option: value}}`` with only the options that differ from the defaults.

        Raises:
            MethodError: a value of the wrong type (a fraction for a whole number...). Values
                of the right type that the method refuses raise when it runs.
        """
        if isinstance(methods, str):
            methods = [methods]
        out: dict[str, dict[str, Any]] = {}
        for method in dict.fromkeys(methods):
            chosen: dict[str, Any] = {}
            for spec in option_specs(method):
                if spec.key in values:
                    value = spec.convert(values[spec.key])
                    if value is not None and value != spec.default:
                        chosen[spec.name] = value
            if chosen:
                out[method] = chosen
        return out

    # ----------------------------------------------------------------------------------------
    # Uploads
    # ----------------------------------------------------------------------------------------

    def check_upload(self, path: str | os.PathLike[str] | None) -> Path:
        """Check an uploaded file: present, within the size and pixel limits, an image.

        Raises:
            InputError: no file, or over the size limit.
            ImageLoadError: not an image, or over the pixel limit.
        """
        from ..utils.image import probe_image

        if path is None or str(path) == "":
            raise InputError("upload an image or pick an example first")
        file = Path(path)
        if not file.is_file():
            raise InputError("the uploaded file is gone; upload it again")
        size = file.stat().st_size
        if size > self.max_upload_bytes:
            raise InputError(
                f"the upload is {size / 1024 / 1024:.1f} MB, over this server's limit of "
                f"{self.max_upload_mb:g} MB (flashtorch serve --max-upload-mb)"
            )
        try:
            probe_image(file, max_pixels=self.max_pixels)
        except ImageLoadError as exc:
            raise ImageLoadError(
                f"{_short(exc, file)} (only images are accepted: JPEG, PNG, WebP...)"
            ) from None
        return file

    def example(self, name: str | None) -> Path:
        """The bundled example called ``name`` (a file name of :func:`example_images`).

        Raises:
            InputError: any other name (no path from the page is opened).
        """
        examples = example_images()
        if name not in examples:
            raise InputError(f"unknown example {name!r}; pick one of {', '.join(examples)}")
        return examples[str(name)]

    def load(self, entry: ModelEntry, path: Path) -> torch.Tensor:
        """The upload as the model's normalised ``(1, 3, S, S)`` input (limits enforced)."""
        from ..utils import apply_transforms
        from ..utils.image import load_image

        try:
            image = load_image(path, max_pixels=self.max_pixels)
        except ImageLoadError as exc:
            raise ImageLoadError(_short(exc, path)) from None
        x = apply_transforms(image, size=entry.size, mean=entry.mean, std=entry.std)
        return x.detach().to(entry.device)

    # ----------------------------------------------------------------------------------------
    # Explain
    # ----------------------------------------------------------------------------------------

    def explain(
        self,
        image: str | os.PathLike[str] | None,
        model: str | None = None,
        methods: Sequence[str] = DEFAULT_METHODS,
        target: str | int | None = None,
        layer: str | None = None,
        *,
        write_files: bool = True,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> ExplainResult:
        """Explain the model's decision on one image with several methods.

        Args:
            image: the uploaded (or example) file.
            model: one of :attr:`model_names` (``None``: the default).
            methods: registry names.
            target: a choice of :func:`class_choices`, a class index, or ``None`` (the top
                prediction).
            layer: a CAM layer (one of :meth:`layers`), or ``None`` / ``"default ..."``.
            write_files: write each map's overlay PNG and raw ``.npy`` for download.
            options: per-method options (``{"smoothgrad": {"n_samples": 8}}``).
            progress: called as ``progress(done, total, method)`` before each method.

        Returns:
            An :class:`ExplainResult`.

        Raises:
            FlashTorchError: anything the page must say (bad upload, unknown method or class,
                a method that refuses the model).
        """
        from .. import attribute
        from ..report import overlay_rgb
        from ..scaling import scale_maps
        from ..utils import denormalize

        entry = self.entry(model)
        if isinstance(methods, str):
            methods = [methods]
        names = list(dict.fromkeys(methods))
        if not names:
            raise MethodError("choose at least one method")
        offered = self.model_methods(entry.name)
        for name in names:
            if name not in offered:
                raise MethodError(f"unknown method {name!r}; choose from {', '.join(offered)}")
        names.sort(key=offered.index)  # the registry's order, whatever the order of the clicks
        index = parse_class_choice(entry, target)
        layer_name = None
        if layer and layer != DEFAULT_LAYER:
            cam_layers, _ = self.layers(entry.name)
            if layer not in cam_layers:
                raise LayerError(
                    f"unknown layer {layer!r} for {entry.name}; pick one from the list"
                )
            layer_name = str(layer)
        path = self.check_upload(image)
        x = self.load(entry, path)
        with torch.no_grad():
            from .._targets import explained_output

            logits = explained_output(entry.model(x))
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 2):
            raise InputError(f"{entry.name} does not return (B, classes) logits")
        probs = torch.softmax(logits.float(), dim=1)[0].cpu()
        values, indices = probs.topk(min(5, probs.numel()))
        top5 = [(int(i), _class_label(entry, int(i)), float(v)) for v, i in zip(values, indices)]
        shown = denormalize(x.cpu(), entry.mean, entry.std).clamp(0, 1)[0]
        rgb = np.round(shown.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)

        outputs: list[MapOutput] = []
        for done, name in enumerate(names):
            if progress is not None:
                progress(done, len(names), name)
            opts = dict((options or {}).get(name, {}))
            from .. import get_method

            if get_method(name).needs_layer and layer_name is not None:
                opts.setdefault("layer", layer_name)
            t0 = time.perf_counter()
            res = attribute(entry.model, x, target=index, method=name, **opts)
            if entry.device.type == "cuda":
                torch.cuda.synchronize(entry.device)
            seconds = time.perf_counter() - t0
            res = res.cpu()
            raw = res.maps[0].float()
            tgt = None if res.targets is None else int(res.targets[0])
            used_layer = None
            if get_method(name).needs_layer:
                used_layer = layer_name or self.layers(entry.name)[1]
            level = scale_maps(_reduce(raw), "percentile").numpy()
            overlay = overlay_rgb(shown, raw, self.cmap)
            panel = _panel(
                overlay, _heat(level, self.cmap), _colour_bar(overlay.shape[0], self.cmap)
            )
            label = _class_label(entry, tgt) if tgt is not None else "custom target"
            outputs.append(
                MapOutput(name, tgt, label, used_layer, seconds, raw.numpy(), overlay, panel)
            )
        result = ExplainResult(entry.name, rgb, top5, outputs)
        if write_files:
            self._write(path, result)
        return result

    def _write(self, path: Path, result: ExplainResult) -> None:
        from ..plot._common import atomic_write_bytes
        from ..report import encode_png

        with self._lock:
            self._count += 1
            folder = self.out_dir / f"{self._count:05d}"
            stale = self.out_dir / f"{self._count - KEEP_RESULTS:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        if stale.is_dir():  # gradio serves its own copies; keep only the latest here
            for file in stale.iterdir():
                file.unlink(missing_ok=True)
            stale.rmdir()
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40] or "image"
        for item in result.maps:
            name = f"{stem}_{item.method}" + (f"_t{item.target}" if item.target is not None else "")
            item.png_path = atomic_write_bytes(folder / f"{name}.png", encode_png(item.overlay))
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(item.raw, dtype=np.float32))
            item.npy_path = atomic_write_bytes(folder / f"{name}.npy", buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Method options, read off the registry
# --------------------------------------------------------------------------------------------

#: Constructor arguments that are not the page's options: the model and its running mode, the
#: layer (the layer menu chooses it), and arguments that take objects rather than values.
_NOT_OPTIONS = frozenset(
    {"model", "eval_mode", "fast", "amp", "layer", "call", "reshape", "mean", "std", "base",
     "base_options"}
)  # fmt: skip


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method as the page offers it: a keyword of the method's constructor.

    Attributes:
        method: the registry name.
        name: the keyword (``n_samples``).
        kind: ``bool``, ``int``, ``float`` or ``str`` (the type of the default).
        default: the constructor's default.
        annotation: the constructor's annotation, as text (``"int | Sequence[int]"``).
    """

    method: str
    name: str
    kind: type
    default: Any
    annotation: str = ""

    @property
    def key(self) -> str:
        """``"method.name"``: the option's key in :meth:`Explainer.parse_options`."""
        return f"{self.method}.{self.name}"

    def convert(self, value: Any) -> Any:
        """A value from the page (a number box gives floats, a text box text) -> the option.

        Returns ``None`` for an empty value (the default applies).

        Raises:
            MethodError: not a value of :attr:`kind`.
        """
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        what = f"{self.method} option {self.name}"
        if self.kind is bool:
            if isinstance(value, str):
                text = value.strip().lower()
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise MethodError(f"{what} is true or false, got {value!r}")
                return text in ("true", "1", "yes")
            return bool(value)
        if self.kind in (int, float):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise MethodError(f"{what} must be a number, got {value!r}") from None
            if self.kind is float:
                return number
            if not number.is_integer():
                raise MethodError(f"{what} must be a whole number, got {value!r}")
            return int(number)
        text = str(value).strip()
        if "int" in self.annotation and text.lstrip("+-").isdigit():
            return int(text)  # e.g. rollout's token: "auto", "cls" or a token index
        return text


def option_specs(method: str) -> list[OptionSpec]:
    """The options of ``method`` the page offers: its constructor's keywords with a plain default.

    Read off the registry (``inspect.signature`` of :func:`flashtorch.get_method`'s class):
    every keyword whose default is a ``bool``, ``int``, ``float`` or ``str`` (IG's ``steps``,
    SmoothGrad's ``n_samples`` and ``noise``, Score-CAM's ``internal_batch_size``, a CAM's
    ``relu`` and ``interpolation``, occlusion's ``window``...), except the model's running
    mode and the layer (:data:`_NOT_OPTIONS`). Keywords without such a default (``None``,
    tensors, sequences) are left to the library's default.

    Raises:
        MethodError: an unknown method.
    """
    import inspect

    from .. import get_method

    cls = get_method(method)
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    specs = []
    for p in params:
        if p.name in _NOT_OPTIONS or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        default = p.default
        kind = next((t for t in (bool, int, float, str) if type(default) is t), None)
        if kind is None:
            continue
        annotation = p.annotation if isinstance(p.annotation, str) else str(p.annotation)
        specs.append(OptionSpec(cls.name or method, p.name, kind, default, annotation))
    return specs


def _reduce(raw: torch.Tensor) -> torch.Tensor:
    from ..report import reduce_map

    return reduce_map(raw)


def _panel(*parts: np.ndarray, gap: int = 6) -> np.ndarray:
    height = parts[0].shape[0]
    white = np.full((height, gap, 3), 255, dtype=np.uint8)
    pieces: list[np.ndarray] = []
    for part in parts:
        if pieces:
            pieces.append(white)
        pieces.append(part)
    return np.concatenate(pieces, axis=1)


def _short(exc: BaseException, path: Path) -> str:
    """The library's message about ``path`` without the server's temporary path in it."""
    text = str(exc).replace(repr(str(path)), "the upload").replace(str(path), "the upload")
    return text.replace(" (cannot identify image file the upload)", "")


__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_METHODS",
    "EXAMPLES_DIR",
    "TOP_PREDICTION",
    "ExplainResult",
    "Explainer",
    "MapOutput",
    "ModelEntry",
    "OptionSpec",
    "class_choices",
    "example_images",
    "option_specs",
    "parse_class_choice",
]
