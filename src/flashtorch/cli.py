"""The ``flashtorch`` command: every method from the shell, figures on disk, an HTML report.

Subcommands::

    flashtorch explain IMAGE|DIR... [--model M] [--method NAME|all] [--target CLASS|INDEX]
                                [--layer L] [--out DIR] [--format png|npy|both] [--device D]
    flashtorch report IMAGE... [--method ...] -o report.html
    flashtorch report --run DIR|URL -o report.html [--storage-option KEY=VALUE]
    flashtorch run SOURCE --method NAME,... --out DIR|URL [--model M] [--target ...] [--overwrite]
    flashtorch classes QUERY
    flashtorch layers [--model M]
    flashtorch methods
    flashtorch activmax --layer L --channels 0-7 [--steps N] [--size PX] [--out DIR]
    flashtorch dream IMAGE --layer L [--channel C] [--steps N] [--out DIR]
    flashtorch serve [--model M ...] [--runs DIR ...] [--host 127.0.0.1] [--port 7860]  (extra: app)

Errors. Every mistake prints ONE line on stderr (``flashtorch: error: ...``) that says what to
do, and no traceback unless ``--debug`` is given. Exit status:

* ``0`` success;
* ``2`` usage errors: a bad option value, an unknown method, class, layer or model name (the
  message suggests close names), a missing image file, no readable image at all, an output
  folder that cannot be created or written (checked *before* any work is done). Inputs that
  are not readable images are skipped with one warning line each, also before any work;
* ``1`` run-time failures: a missing optional dependency, the model failing, an I/O error
  while writing results, anything unexpected;
* ``130`` interrupted (Ctrl-C).

Outputs are written atomically (temporary file + rename): an interrupted run never leaves a
half-written PNG, NPY or HTML file.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__

PROG = "flashtorch"
DEFAULT_MODEL = "efficientnet_lite0"
#: Methods ``flashtorch report`` runs when none are named (those registered are kept).
REPORT_DEFAULT_METHODS = ("gradient", "guided", "smoothgrad", "integrated_gradients", "gradcam")
#: Options the CLI sets on top of a method's own defaults (override with ``--opt``). None: with
#: fewer SmoothGrad samples the maps were barely smoother than plain gradients, and with fewer
#: IG steps the completeness error was large (benchmarks/results/cpu-smoothness.md).
CLI_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {}
#: Show a progress bar only past this many steps.
PROGRESS_THRESHOLD = 3


class CliUsageError(click.UsageError):
    """A usage mistake found by the command itself (exit status 2)."""


# --------------------------------------------------------------------------------------------
# Error reporting and the entry point
# --------------------------------------------------------------------------------------------


def _usage_exceptions() -> tuple[type[BaseException], ...]:
    from .errors import (
        ImageLoadError,
        InputError,
        LayerError,
        MethodError,
        ModelLoadError,
        TargetError,
    )

    return (
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        InputError,
        ImageLoadError,
        TargetError,
        LayerError,
        MethodError,
        ModelLoadError,
    )


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an exception: 2 for usage errors, 130 for Ctrl-C, else 1."""
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return 130
    if isinstance(exc, click.ClickException):
        return int(exc.exit_code)
    if isinstance(exc, _usage_exceptions()):
        return 2
    return 1


def _one_line(text: str) -> str:
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts)


def describe(exc: BaseException) -> str:
    """One line that says what went wrong (and, for usage errors, what to do)."""
    from .errors import FlashTorchError

    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return "interrupted"
    if isinstance(exc, click.UsageError):
        message = exc.format_message()
        if exc.ctx is not None and not isinstance(exc, CliUsageError):
            message += f" (see '{exc.ctx.command_path} --help')"
        return _one_line(message)
    if isinstance(exc, click.ClickException):
        return _one_line(exc.format_message())
    if isinstance(exc, FlashTorchError):
        return _one_line(str(exc))
    if isinstance(exc, FileNotFoundError):
        where = f": {exc.filename}" if exc.filename else ""
        text = str(exc) if not exc.filename else f"no such file or folder{where}"
        return _one_line(text)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return _one_line(f"{exc.strerror}{where}")
    name = type(exc).__name__
    return _one_line(f"{name}: {exc} (run again with --debug for the traceback)")


def _debug_requested(argv: Sequence[str]) -> bool:
    end = list(argv).index("--") if "--" in argv else len(argv)
    return "--debug" in argv[:end]


def _show_warning(debug: bool) -> Callable[..., None]:
    def show(
        message: Any, category: type[Warning], filename: str, lineno: int, *_: Any, **__: Any
    ) -> None:
        ours = f"{os.sep}flashtorch{os.sep}" in filename and issubclass(category, UserWarning)
        ours = ours or category.__name__ == "DecompressionBombWarning"  # PIL's large image
        if debug:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))
        elif ours:
            sys.stderr.write(f"{PROG}: warning: {_one_line(str(message))}\n")

    return show


class _NeverRaised(click.ClickException):
    """Stands in for click's NoArgsIsHelpError on click < 8.2."""


#: click >= 8.2 raises this for a bare group call (older versions print the help and exit 0).
_NO_ARGS_IS_HELP: type[click.ClickException] = getattr(
    click.exceptions, "NoArgsIsHelpError", _NeverRaised
)


def main(args: Sequence[str] | None = None) -> NoReturn:
    """Run the ``flashtorch`` command (the console-script entry point) and exit.

    Args:
        args: the arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = _debug_requested(argv)
    code = 0
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning(debug)
        try:
            result = cli.main(args=argv, prog_name=PROG, standalone_mode=False, obj={"argv": argv})
            code = result if isinstance(result, int) else 0
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except _NO_ARGS_IS_HELP as exc:  # bare `flashtorch`: the help, as click prints it
            sys.stderr.write(exc.format_message() + "\n")
            code = exc.exit_code
        except (Exception, KeyboardInterrupt, click.Abort) as exc:
            if debug:
                traceback.print_exc()
            sys.stderr.write(f"{PROG}: error: {describe(exc)}\n")
            code = exit_code_for(exc)
    sys.stdout.flush()
    sys.exit(code)


# --------------------------------------------------------------------------------------------
# Shared options
# --------------------------------------------------------------------------------------------


def _flag_callback(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value:
            ctx.meta[key] = True
        return value

    return callback


def _common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_flag_callback("flashtorch.debug"),
        help="Show full tracebacks and every warning.",
    )(func)
    func = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_flag_callback("flashtorch.quiet"),
        help="No progress bar and no 'wrote ...' lines.",
    )(func)
    return func


def _model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--trust-pickle",
        is_flag=True,
        help="Allow loading a whole pickled model file (runs code from the file: trusted "
        "files only). Weight files never need it.",
    )(func)
    func = click.option(
        "--device",
        default="auto",
        show_default=True,
        metavar="DEVICE",
        help="cpu, cuda, cuda:N, mps, or auto (cuda when available).",
    )(func)
    func = click.option(
        "--pretrained",
        is_flag=True,
        expose_value=False,
        callback=_flag_callback("flashtorch.pretrained"),
        help="torchvision:/timm: models: load the default pretrained weights from the local "
        "cache (torch hub / Hugging Face; never downloaded). Without it or :WEIGHTS they have "
        "random weights (announced).",
    )(func)
    func = click.option(
        "-m",
        "--model",
        "model_spec",
        default=DEFAULT_MODEL,
        show_default=True,
        metavar="M",
        help="efficientnet_lite0 (bundled, pretrained), torchvision:NAME[:WEIGHTS] (WEIGHTS: "
        "DEFAULT, IMAGENET1K_V1... from the local cache, or a .pth file), "
        "timm:NAME[:WEIGHTS] (pretrained, a tag, or a .pth file), hf:DIR (a transformers "
        "save_pretrained folder, or a config.json: random weights), a TorchScript file, or "
        "package.module:factory[:WEIGHTS.pth].",
    )(func)
    return func


def _out_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--out DIR`` (default ``out``): the folder of a command's files, ``what``."""
    return click.option(
        "-o",
        "--out",
        "out_dir",
        default="out",
        show_default=True,
        metavar="DIR",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Folder for {what}.",
    )


_CMAP_OPTION = click.option(
    "--cmap", default="jet", show_default=True, help="Colour map of the overlays."
)
_ALPHA_OPTION = click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.75,
    show_default=True,
    help="Opacity of the map where it is highest.",
)
_SEED_OPTION = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def _quiet(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("flashtorch.quiet"))


def _info(ctx: click.Context, message: str) -> None:
    if not _quiet(ctx):
        _echo(message)


def _echo(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)


def _progress(ctx: click.Context, total: int, unit: str, desc: str) -> Any:
    from tqdm import tqdm

    disable = True if (_quiet(ctx) or total <= PROGRESS_THRESHOLD) else None
    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        disable=disable,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    __version__, "-V", "--version", prog_name=PROG, message="%(prog)s %(version)s"
)
@_common_options
def cli() -> None:
    """See what a vision model sees: saliency maps, CAMs and feature visualisation.

    The default model is the bundled ImageNet-pretrained EfficientNet-Lite0. Exit status: 0 ok,
    2 usage error (bad option, unknown name, missing file, unwritable output folder), 1 run-time
    failure.
    """


# --------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------


def _usage(message: str) -> NoReturn:
    raise CliUsageError(message)


def resolve_device(spec: str) -> Any:
    """``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` -> a usable ``torch.device``."""
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        _usage(f"unknown device {spec!r}; use cpu, cuda, cuda:N, mps or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            _usage("CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            _usage(f"there is no {device}; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        _usage("MPS is not available on this machine; use --device cpu")
    return device


def register_methods() -> None:
    """Import the method families so that every method is in the registry."""
    import importlib

    for family in ("saliency", "cam"):
        try:
            importlib.import_module(f"{__package__}.{family}")
        except ImportError:  # a family missing from this build: its methods are not offered
            pass


def parse_methods(values: Sequence[str], default: Sequence[str] = ("guided",)) -> list[str]:
    """``--method`` values (repeated and/or comma-separated, ``all``) -> registry names."""
    from . import available_methods, get_method

    register_methods()
    names: list[str] = []
    raw = [v.strip() for value in values for v in value.split(",") if v.strip()] or list(default)
    for name in raw:
        expanded = available_methods() if name.lower() == "all" else [get_method(name).name]
        names.extend(n for n in expanded if n not in names)
    return names


def parse_target(value: str | None) -> int | str | None:
    """``--target``: an integer index, or an ImageNet class name (checked, with suggestions)."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        index = int(text)
        if index < 0:
            _usage(f"--target {value!r}: a class index must be >= 0")
        return index
    _refuse_number(value)
    from .utils import ImageNetIndex

    ImageNetIndex()[text]  # raises ClassNameError with close names
    return text


def _refuse_number(value: str) -> None:
    """A ``--target`` that reads as a number but not as a whole one (``3.7``, ``1e3``)."""
    try:
        float(value)
    except ValueError:
        return
    _usage(f"--target {value!r}: a class index must be a whole number >= 0 (e.g. 281)")


def parse_channels(value: str) -> list[int]:
    """``0-7``, ``3``, ``1,4,9`` or ``0-3,8`` -> a sorted list of channel indices."""
    channels: list[int] = []
    for part in value.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            _usage(f"--channels {value!r}: write indices like 0-7, 3 or 1,4,9")
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo:
            _usage(f"--channels {value!r}: the range {part} is empty; write LOW-HIGH")
        channels.extend(c for c in range(lo, hi + 1) if c not in channels)
    if len(channels) > 256:
        _usage(f"--channels {value!r} selects {len(channels)} channels; at most 256 per run")
    return channels


def _key_values(values: Sequence[str], flag: str, example: str) -> dict[str, Any]:
    """``FLAG KEY=VALUE`` (repeatable) -> a dict; values are Python literals or strings."""
    import ast

    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            _usage(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} {example}")
        try:
            options[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            options[key] = raw.strip()
    return options


def parse_options(values: Sequence[str]) -> dict[str, Any]:
    """``--opt KEY=VALUE`` (repeatable) -> a dict; values are Python literals or strings."""
    return _key_values(values, "--opt", "n_samples=8")


def parse_storage_options(values: Sequence[str]) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` (repeatable) -> the fsspec storage options of a URL.

    Values are Python literals (``anon=True``, ``client_kwargs={'region_name': 'eu-west-1'}``)
    or strings (``profile=prod``).
    """
    return _key_values(values, "--storage-option", "anon=True")


def _storage_options_for(location: str, values: Sequence[str], flag: str) -> dict[str, Any]:
    """The parsed ``--storage-option``s, refused for a local folder."""
    from .runs.store import is_url

    if values and not is_url(location):
        _usage(
            f"--storage-option applies to an fsspec URL (s3://..., gs://...), not to the "
            f"local folder {flag} {location!r}"
        )
    return parse_storage_options(values)


def _accepts(cls: type, key: str) -> bool:
    import inspect

    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    if key in params:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def method_options(
    methods: Sequence[str], options: dict[str, Any], layer: str | None
) -> dict[str, dict[str, Any]]:
    """Per-method constructor options: CLI defaults, then ``--opt`` values that each accepts."""
    from . import get_method

    unused = set(options)
    per_method: dict[str, dict[str, Any]] = {}
    for name in methods:
        cls = get_method(name)
        opts = {k: v for k, v in CLI_METHOD_DEFAULTS.get(name, {}).items() if _accepts(cls, k)}
        for key, value in options.items():
            if _accepts(cls, key) and key != "layer":
                opts[key] = value
                unused.discard(key)
        if getattr(cls, "needs_layer", False) and layer is not None:
            opts["layer"] = layer
        per_method[name] = opts
    if "layer" in options:
        _usage("give the layer with --layer, not --opt layer=...")
    if unused:
        _usage(
            f"no selected method takes the option(s) {', '.join(sorted(unused))}; "
            f"selected: {', '.join(methods)} (see 'flashtorch methods')"
        )
    if layer is not None and not any(getattr(get_method(m), "needs_layer", False) for m in methods):
        _usage(
            f"--layer is for methods that need a layer (CAMs); none of {', '.join(methods)} does"
        )
    return per_method


def check_output_dir(path: Path, hint: str = "choose another with --out") -> Path:
    """Create ``path`` if needed and prove it is writable, or fail with a usage error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".flashtorch-probe-")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        _usage(f"output folder {str(path)!r} is a file; {hint}")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        _usage(f"cannot write to output folder {str(path)!r} ({reason}); {hint}")
    return path


def check_output_file(path: Path) -> Path:
    """Check that a file can be written at ``path`` (its folder exists or can be made)."""
    if path.is_dir():
        _usage(f"output {str(path)!r} is a folder; give a file name such as report.html")
    check_output_dir(path.parent, hint="choose another path with -o")
    return path


def sanitized_stem(path: str) -> str:
    """A file's stem with every run of unsafe characters replaced by ``_``."""
    return re.sub(r"[^\w.+-]+", "_", Path(path).stem) or "image"


def output_stems(paths: Sequence[str], methods: Sequence[str] = ()) -> list[str]:
    """File-name stems for the outputs, made unique (``cat``, ``cat-2``...).

    Unique after sanitising and ignoring case (``a b.jpg``, ``a_b.png`` and ``A_B.jpg`` share
    ``a_b`` otherwise, and case-insensitive file systems would merge them), and such that no
    ``<stem>_<method>`` of one image equals that of another for the given ``methods``
    (``a_guided`` + ``gradcam`` against ``a`` + ``guided_gradcam``). The names, hence
    any collision, are settled here, before anything is written.
    """
    taken: set[str] = set()
    stems = []
    for p in paths:
        base = sanitized_stem(p)
        stem, n = base, 1
        while True:
            keys = {stem.casefold()} | {f"{stem}_{m}".casefold() for m in methods}
            if not keys & taken:
                break
            n += 1
            stem = f"{base}-{n}"
        taken |= keys
        stems.append(stem)
    return stems


def _command_line(ctx: click.Context) -> str:
    obj = ctx.find_root().obj
    args = obj.get("argv") if isinstance(obj, dict) else None
    if args is None:
        args = sys.argv[1:]
    return shlex.join([PROG, *args])


# --------------------------------------------------------------------------------------------
# Model and images
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model with the preprocessing its inputs need."""

    model: Any
    spec: str
    device: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    config: Any = None  # the source's flashtorch.models.DataConfig
    weights: str = ""  # where the weights came from ("random", a file, a weights name...)


def load_cli_model(
    spec: str, device: Any, size: int | None, trust_pickle: bool, pretrained: bool | None = None
) -> LoadedModel:
    """Load ``--model`` on ``device`` with its data config (``--pretrained`` read from the context).

    Random weights and an all-zero classification head are announced by the registry's
    ``UserWarning``, which the command prints as one ``flashtorch: warning:`` line.
    """
    from .models import resolve_model

    if pretrained is None:
        ctx = click.get_current_context(silent=True)
        pretrained = bool(ctx is not None and ctx.meta.get("flashtorch.pretrained"))
    loaded = resolve_model(spec, pretrained=pretrained, trust_pickle=trust_pickle, device=device)
    config = loaded.config
    return LoadedModel(
        loaded.model,
        spec,
        device,
        tuple(config.mean),
        tuple(config.std),
        size or config.size,
        config,
        loaded.weights,
    )


def check_images(paths: Sequence[str]) -> list[str]:
    """Check every image up front (exists, is a file, has an image header), without decoding.

    A bad file thus fails before the model is loaded; the pixels are read batch by batch.
    """
    from .errors import ImageLoadError
    from .utils.image import probe_image

    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"no image file at {p!r}; check the path")
        if path.is_dir():
            raise ImageLoadError(f"{p!r} is a folder, not an image file")
        probe_image(path)  # a regular file, an image header, within the pixel limits
    return list(paths)


#: The files a folder given to ``explain``/``report`` contributes (as ``flashtorch run`` takes).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def _warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def collect_images(args: Sequence[str], exclude: Path | None = None) -> list[str]:
    """IMAGE... arguments -> the readable images, each decoded once here, before any work.

    A folder contributes its image files (by extension, recursively, sorted; hidden files and
    folders are left out). A file that is not an image, or an image that cannot be decoded
    (truncated, corrupt, refused by the decoder's limits), is skipped with one warning line
    each, so one bad file does not stop a whole glob; and since every image is read here, a
    bad one never stops the command half-way, after some outputs are written. Files under
    ``exclude`` (the output folder) are not taken from folders.

    Raises:
        FileNotFoundError: an argument does not exist (a typo is not skipped).
        CliUsageError: no readable image is left.
    """
    from .errors import ImageLoadError
    from .utils import load_image

    skipped: list[str] = []  # one line each, printed once the readable ones are known
    candidates: list[str] = []
    skip = exclude.resolve() if exclude is not None else None
    for arg in args:
        path = Path(arg)
        if not path.exists():
            raise FileNotFoundError(f"no image file at {arg!r}; check the path")
        if not path.is_dir():
            candidates.append(arg)
            continue
        found = 0
        for root, dirs, files in os.walk(path):
            if skip is not None and Path(root).resolve() == skip:
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                file = os.path.join(root, name)
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    candidates.append(file)
                    found += 1
                else:
                    skipped.append(f"{file} is not an image file (by its extension)")
        if not found:
            skipped.append(
                f"folder {arg} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    readable: list[str] = []
    for file in candidates:
        if not Path(file).is_file():
            skipped.append(f"{file} is not a regular file")
            continue
        try:
            load_image(file).close()
        except ImageLoadError as exc:
            skipped.append(_one_line(str(exc)))
            continue
        except Exception as exc:  # any decoder failure (e.g. PIL's DecompressionBombError)
            reason = _one_line(f"{type(exc).__name__}: {exc}")
            skipped.append(f"{file!r} is not a readable image ({reason})")
            continue
        readable.append(file)
    if not readable:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        first = skipped[0] if skipped else "nothing given"
        _usage(f"no readable image: {first}{more}; nothing was written")
    for line in skipped:
        _warn(f"skipped {line}")
    return readable


# --------------------------------------------------------------------------------------------
# Running methods (shared by explain and report)
# --------------------------------------------------------------------------------------------


@dataclass
class MapResult:
    """One method's result for one image."""

    method: str
    maps: Any  # (C, H, W) tensor on the CPU
    target: int | None
    seconds: float
    layer: str | None = None


@dataclass
class ImageResult:
    """Everything computed for one image."""

    path: str
    stem: str
    image: Any  # (3, H, W) in [0, 1], CPU
    top: list[tuple[int, str, float]]
    num_classes: int
    maps: list[MapResult] = field(default_factory=list)


def _class_label(index: int, num_classes: int) -> str:
    if num_classes == 1000:
        from .utils import ImageNetIndex

        return str(ImageNetIndex()[index])
    return f"class {index}"


def _is_logits(output: Any) -> bool:
    import torch

    return isinstance(output, torch.Tensor) and output.dim() == 2


def top_k(logits: Any, k: int = 5) -> list[list[tuple[int, str, float]]]:
    """Per image ``[(index, label, probability), ...]`` of the ``k`` top classes."""
    import torch

    if logits.dim() != 2:
        return [[] for _ in range(logits.shape[0])]
    probs = torch.softmax(logits.detach().float(), dim=1).cpu()
    k = min(k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [
        [(int(i), _class_label(int(i), probs.shape[1]), float(v)) for v, i in zip(vs, ix)]
        for vs, ix in zip(values, indices)
    ]


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def run_methods(
    loaded: LoadedModel,
    paths: Sequence[str],
    methods: Sequence[str],
    options: dict[str, dict[str, Any]],
    target: int | str | None,
    batch_size: int,
    progress: Any,
    on_image: Callable[[ImageResult], None] | None = None,
    skip_inapplicable: bool = False,
) -> Iterator[ImageResult]:
    """Run each method on each image file (in batches); yields one :class:`ImageResult` each.

    ``on_image`` is called with each image's predictions before its maps are computed. With
    ``skip_inapplicable`` (``--method all``) an attention method that refuses the model on the
    first batch (a CNN has no attention; windowed attention) is dropped with a note on stderr
    instead of failing the command; named explicitly, it fails with its message. So is a
    layer method (a CAM) that refuses a TorchScript model when it is built.
    """
    import torch

    from . import get_method
    from ._targets import ResolvedTarget, explained_output
    from .errors import LayerError, MethodError
    from .utils import apply_transforms, denormalize

    instances = {}
    for name in methods:  # construct every method first: bad options fail before any work
        try:
            instances[name] = get_method(name)(loaded.model, **options.get(name, {}))
        except TypeError as exc:
            raise MethodError(f"bad option for method {name!r}: {exc}") from None
        except LayerError as exc:  # a CAM on a TorchScript model: skipped when not named
            if not (skip_inapplicable and get_method(name).needs_layer):
                raise
            click.echo(f"flashtorch: skipped {name}: {exc}", err=True)
            progress.update(len(paths))
    stems = output_stems(paths, methods)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])  # read here, batch by batch
        x = apply_transforms(chunk, size=loaded.size, mean=loaded.mean, std=loaded.std)
        x = x.to(loaded.device)
        with torch.no_grad():
            logits = explained_output(loaded.model(x))  # .logits, ["logits"], [0] or as is
        tops = top_k(logits, 5) if _is_logits(logits) else [[] for _ in chunk]
        num_classes = int(logits.shape[1]) if _is_logits(logits) else 0
        if start == 0 and target is not None:  # a bad class fails before anything is printed
            ResolvedTarget.of(target, len(chunk)).class_indices(logits)
        shown = denormalize(x.cpu(), loaded.mean, loaded.std).clamp(0, 1)
        results = [
            ImageResult(paths[start + i], stems[start + i], shown[i], tops[i], num_classes)
            for i in range(len(chunk))
        ]
        for result in results:
            if on_image is not None:
                on_image(result)
        if start == 0:  # warm-up (lazy initialisation, kernel selection): keeps timings fair
            with warnings.catch_warnings():  # its guardrail warnings would repeat the real call's
                warnings.simplefilter("ignore")
                get_method("gradient")(loaded.model)(x, target=target)
        for name, method in list(instances.items()):
            _sync(loaded.device)
            t0 = time.perf_counter()
            try:
                res = method(x, target=target)
            except MethodError as exc:
                if not (skip_inapplicable and start == 0 and method.needs_attention):
                    raise
                click.echo(f"flashtorch: skipped {name}: {exc}", err=True)
                del instances[name]
                progress.update(len(paths))
                continue
            _sync(loaded.device)
            seconds = (time.perf_counter() - t0) / len(chunk)
            res = res.cpu()
            layer = getattr(method, "layer_name", None) if method.needs_layer else None
            for i, result in enumerate(results):
                tgt = None if res.targets is None else int(res.targets[i])
                result.maps.append(MapResult(name, res.maps[i].float(), tgt, seconds, layer))
            progress.update(len(chunk))
        yield from results


def _format_top(result: ImageResult) -> str:
    lines = [f"{result.path}"]
    for rank, (index, label, prob) in enumerate(result.top, 1):
        lines.append(f"  {rank}. {label:<32} {index:>5}  {prob * 100:6.2f}%")
    return "\n".join(lines)


def _npy_bytes(array: Any) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


_METHOD_OPTION = click.option(
    "--method",
    "methods",
    multiple=True,
    metavar="NAME|all",
    help="Method(s) to run: repeat or comma-separate; 'all' runs every registered method "
    "(see 'flashtorch methods').",
)
_TARGET_OPTION = click.option(
    "-t",
    "--target",
    metavar="CLASS|INDEX",
    help="Class to explain: an index or an ImageNet class name (default: each image's top class).",
)
_LAYER_OPTION = click.option(
    "--layer",
    metavar="L",
    help="Layer for the CAM methods (dotted name, see 'flashtorch layers'); default: the last "
    "convolutional feature map.",
)
_SIZE_OPTION = click.option(
    "--size",
    type=click.IntRange(8, 4096),
    metavar="PX",
    help="Input side in pixels (default: the model's, 224).",
)
_OPT_OPTION = click.option(
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option, e.g. --opt n_samples=8 (repeatable; given to each selected method "
    "that takes it).",
)
_STORAGE_OPTION = click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="For a URL run (s3://..., gs://...): an option of its fsspec file system, e.g. "
    "--storage-option profile=prod or anon=True (repeatable; credentials otherwise come "
    "from the protocol's usual environment variables and files).",
)
_BATCH_OPTION = click.option(
    "--batch-size",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    help="Images per forward/backward pass.",
)


def _wants_all(values: Sequence[str]) -> bool:
    """Whether ``--method`` values include ``all``."""
    return any(v.strip().lower() == "all" for value in values for v in value.split(","))


def _prepare(
    images: Sequence[str],
    methods: Sequence[str],
    target: str | None,
    layer: str | None,
    opts: Sequence[str],
    device: str,
    default_methods: Sequence[str] = ("guided",),
    out_dir: Path | None = None,
) -> tuple[list[str], int | str | None, dict[str, dict[str, Any]], Any, list[Any]]:
    """Validate everything that needs no model: methods, target, options, device, images."""
    names = parse_methods(methods, default_methods)
    tgt = parse_target(target)
    options = method_options(names, parse_options(opts), layer)
    dev = resolve_device(device)
    return names, tgt, options, dev, collect_images(images, exclude=out_dir)


def _check_layer(loaded: LoadedModel, layer: str | None) -> None:
    if layer is not None:
        from ._surgery import find_layer

        find_layer(loaded.model, layer)


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------


@cli.command(short_help="Maps of IMAGE... as PNG/NPY files, and the top-5 classes.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE|DIR...")
@_model_options
@_METHOD_OPTION
@_TARGET_OPTION
@_LAYER_OPTION
@_out_option("<image>_<method>_t<class>.png/.npy (created if needed)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "npy", "both"]),
    default="png",
    show_default=True,
    help="Overlay PNG, raw map NPY, or both.",
)
@_SIZE_OPTION
@_CMAP_OPTION
@_ALPHA_OPTION
@_OPT_OPTION
@_BATCH_OPTION
@_common_options
@click.pass_context
def explain(
    ctx: click.Context,
    images: tuple[str, ...],
    model_spec: str,
    device: str,
    trust_pickle: bool,
    methods: tuple[str, ...],
    target: str | None,
    layer: str | None,
    out_dir: Path,
    fmt: str,
    size: int | None,
    cmap: str,
    alpha: float,
    opts: tuple[str, ...],
    batch_size: int,
) -> None:
    """Explain the model's decision on IMAGE... with one or more methods.

    Prints each image's top-5 classes and writes OUT/<image>_<method>_t<class>.png (the map
    over the image the model saw, at its input resolution) and/or .npy (the raw (C, H, W)
    float32 map); <class> is the index of the class explained. IMAGE may be a folder (its
    images, recursively); files that are not readable images are skipped with a warning,
    before any work. Two inputs whose names would give the same file names ('a b.jpg' and
    'a_b.jpg') get distinct ones ('a_b-2_...'), said on a note line.
    """
    from matplotlib import colormaps

    from .plot._common import atomic_write_bytes
    from .report import encode_png, overlay_rgb

    if cmap not in colormaps:
        _usage(f"--cmap {cmap!r} is not a matplotlib colour map (e.g. jet, viridis, inferno)")
    names, tgt, options, dev, paths = _prepare(
        images, methods, target, layer, opts, device, out_dir=out_dir
    )
    check_output_dir(out_dir)
    loaded = load_cli_model(model_spec, dev, size, trust_pickle)
    _check_layer(loaded, layer)
    for path, stem in zip(paths, output_stems(paths, names)):
        if stem != sanitized_stem(path):
            _info(ctx, f"note: {path} is written as {stem}_* (its name is another input's)")

    written: set[Path] = set()
    total = len(paths) * len(names)
    with _progress(ctx, total, "map", "explain") as bar:
        for result in run_methods(
            loaded,
            paths,
            names,
            options,
            tgt,
            batch_size,
            bar,
            on_image=lambda r: _echo(_format_top(r)),
            skip_inapplicable=_wants_all(methods),
        ):
            for item in result.maps:
                name = f"{result.stem}_{item.method}"
                if item.target is not None:
                    name += f"_t{item.target}"
                for suffix in {"png": (".png",), "npy": (".npy",)}.get(fmt, (".png", ".npy")):
                    path = out_dir / (name + suffix)
                    if path in written:  # output_stems rules this out: refuse, never overwrite
                        raise RuntimeError(f"two maps of this run would be written to {path}")
                    if suffix == ".png":
                        data = encode_png(overlay_rgb(result.image, item.maps, cmap, alpha))
                    else:
                        data = _npy_bytes(item.maps.numpy())
                    atomic_write_bytes(path, data)
                    written.add(path)
    _info(ctx, f"wrote {len(written)} file(s) to {out_dir}")


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


@cli.command(short_help="One self-contained HTML report of IMAGE... (or of a run).")
@click.argument("images", nargs=-1, required=False, metavar="IMAGE...")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    metavar="FILE.html",
    type=click.Path(dir_okay=True, path_type=Path),
    help="The HTML file to write (one self-contained file).",
)
@click.option(
    "--run",
    "run_dir",
    metavar="DIR|URL",
    help="Report a run made by 'flashtorch run' instead of IMAGE...: aggregate "
    "table and a sample of its images (a folder or an fsspec URL).",
)
@_STORAGE_OPTION
@_model_options
@click.option(
    "--methods",
    "--method",
    "methods",
    multiple=True,
    metavar="NAME,...|all",
    help="Methods to show side by side (default: gradient, guided, smoothgrad, "
    "integrated_gradients, gradcam when registered).",
)
@_TARGET_OPTION
@_LAYER_OPTION
@_SIZE_OPTION
@click.option("--title", default="flashtorch report", show_default=True, help="Page title.")
@click.option(
    "--normalize",
    "normalize",
    type=click.Choice(["per-image", "global"]),
    default="per-image",
    show_default=True,
    help="Scale each map on its own, or each method's maps of all images together "
    "(a weak map then looks weak).",
)
@_CMAP_OPTION
@_ALPHA_OPTION
@_OPT_OPTION
@_BATCH_OPTION
@_common_options
@click.pass_context
def report(
    ctx: click.Context,
    images: tuple[str, ...],
    output: Path,
    run_dir: str | None,
    storage_options: tuple[str, ...],
    model_spec: str,
    device: str,
    trust_pickle: bool,
    methods: tuple[str, ...],
    target: str | None,
    layer: str | None,
    size: int | None,
    title: str,
    normalize: str,
    cmap: str,
    alpha: float,
    opts: tuple[str, ...],
    batch_size: int,
) -> None:
    """Write ONE self-contained HTML report for IMAGE...: inputs, top-5, maps, timings.

    With --run DIR instead of images: the report of a run (aggregate table per method, and
    the most and least confident images and those where the methods disagree most).
    Images are embedded as data URIs; the page loads nothing from the network.
    """
    from matplotlib import colormaps

    if run_dir is not None:
        if normalize != "per-image":
            _usage("--normalize global applies to a report of IMAGE..., not of --run DIR")
        options = _storage_options_for(run_dir, storage_options, "--run")
        _report_run(ctx, images, run_dir, output, title, cmap, alpha, options)
        return
    if storage_options:
        _usage("--storage-option applies to --run URL")
    if not images:
        _usage("give IMAGE... to explain, or --run DIR to report a run")

    import dataclasses

    import torch

    from . import available_methods
    from .report import (
        ImageEntry,
        MapPanel,
        Prediction,
        build_report,
        encode_png,
        image_rgb,
        overlay_rgb,
        reduce_map,
        write_report,
    )
    from .scaling import DEFAULT_PERCENTILE, scale_maps

    if cmap not in colormaps:
        _usage(f"--cmap {cmap!r} is not a matplotlib colour map (e.g. jet, viridis, inferno)")
    register_methods()
    defaults = [m for m in REPORT_DEFAULT_METHODS if m in available_methods()] or ["guided"]
    names, tgt, options, dev, paths = _prepare(
        images, methods, target, layer, opts, device, default_methods=defaults
    )
    check_output_file(output)
    loaded = load_cli_model(model_spec, dev, size, trust_pickle)
    _check_layer(loaded, layer)

    entries = []
    together: dict[str, list[tuple[list[Any], int, Any, Any]]] = {}  # --normalize global
    total = len(paths) * len(names)
    with _progress(ctx, total, "map", "report") as bar:
        for result in run_methods(
            loaded,
            paths,
            names,
            options,
            tgt,
            batch_size,
            bar,
            skip_inapplicable=_wants_all(methods) or not methods,
        ):
            panels: list[Any] = []
            for item in result.maps:
                label = ""
                if item.target is not None:
                    label = f"{_class_label(item.target, result.num_classes)} ({item.target})"
                note = f"layer {item.layer}" if item.layer else ""
                if normalize == "global":  # drawn once every image's map is known
                    together.setdefault(item.method, []).append(
                        (panels, len(panels), result.image, reduce_map(item.maps))
                    )
                    png = b""
                else:
                    png = encode_png(overlay_rgb(result.image, item.maps, cmap, alpha))
                panels.append(MapPanel(item.method, png, item.seconds, label, note))
            entries.append(
                ImageEntry(
                    Path(result.path).name,
                    encode_png(image_rgb(result.image)),
                    [Prediction(i, label, p) for i, label, p in result.top],
                    panels,
                )
            )
    for group in together.values():  # one scale per method over all the images
        levels = scale_maps(torch.stack([m for *_, m in group]), per_image=False)
        for (shown, i, image, _), level in zip(group, levels):
            png = encode_png(overlay_rgb(image, level, cmap, alpha, prescaled=True))
            shown[i] = dataclasses.replace(shown[i], image=png)
    details = {
        "model": model_spec,
        "weights": loaded.weights,
        "preprocessing": loaded.config.describe() if loaded.config is not None else "",
        "device": str(dev),
        "input size": f"{loaded.size} x {loaded.size}",
        "methods": ", ".join(names),
        "target": "top class" if tgt is None else str(tgt),
        "map scale": f"{DEFAULT_PERCENTILE:g}th percentile, "
        + ("each map on its own" if normalize == "per-image" else "one per method, all images"),
    }
    html = build_report(
        entries,
        command=_command_line(ctx),
        title=title,
        details=details,
        cmap=cmap,
        timing_note=f"Wall-clock seconds per image on {dev}, batches of up to {batch_size}, "
        "after one warm-up pass.",
    )
    write_report(output, html)
    _info(ctx, f"wrote {output} ({len(html) / 1e6:.1f} MB)")


def _report_run(
    ctx: click.Context,
    images: Sequence[str],
    run_dir: str,
    output: Path,
    title: str,
    cmap: str,
    alpha: float,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    from matplotlib import colormaps

    from .report import write_report

    if images:
        _usage("give either IMAGE... or --run DIR, not both")
    if cmap not in colormaps:
        _usage(f"--cmap {cmap!r} is not a matplotlib colour map (e.g. jet, viridis, inferno)")
    from .runs.store import RunStore, is_url

    if is_url(run_dir):
        found = RunStore(run_dir, storage_options).exists()
    else:
        found = (Path(run_dir) / "maps.zarr").is_dir()
    if not found:
        _usage(
            f"--run {run_dir!r} holds no run (no maps.zarr inside); make one with 'flashtorch run'"
        )
    check_output_file(output)
    from .runs.report import build_run_report

    html = build_run_report(
        run_dir if is_url(run_dir) else Path(run_dir),
        command=_command_line(ctx),
        title=title,
        cmap=cmap,
        alpha=alpha,
        storage_options=storage_options,
    )
    write_report(output, html)
    _info(ctx, f"wrote {output} ({len(html) / 1e6:.1f} MB)")


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def _run_target(value: str | None) -> int | str | None:
    """``--target`` of ``run``: ``column``, ``folder``, an index or a class name."""
    if value is None or value.strip().lower() in ("predicted", "top", ""):
        return None
    text = value.strip()
    if text.lower() in ("column", "folder"):
        return text.lower()
    if re.fullmatch(r"[+-]?\d+", text):
        index = int(text)
        if index < 0:
            _usage(f"--target {value!r}: a class index must be >= 0")
        return index
    _refuse_number(value)
    return text  # a class name, looked up in the model's class index before any work


@cli.command("run", short_help="A whole folder or list through methods into Zarr + Parquet.")
@click.argument("source", metavar="SOURCE")
@_model_options
@click.option(
    "--method",
    "--methods",
    "methods",
    multiple=True,
    metavar="NAME,...|all",
    help="Method(s) to run: repeat or comma-separate (default: gradient).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    metavar="DIR|URL",
    help="Run directory: DIR/maps.zarr and DIR/manifest.parquet; a local folder or an "
    "fsspec URL (s3://bucket/run, gs://..., file:///shared/run).",
)
@_STORAGE_OPTION
@click.option(
    "-t",
    "--target",
    metavar="CLASS|INDEX|column|folder",
    help="Class to explain: an index or class name, 'column' (the list file's "
    "second column), 'folder' (ImageFolder class sub-folders); default: each "
    "image's predicted class.",
)
@_LAYER_OPTION
@_OPT_OPTION
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=16,
    show_default=True,
    help="Images per batch.",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=2,
    show_default=True,
    help="DataLoader worker processes decoding images.",
)
@_SIZE_OPTION
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="dtype of the stored maps.",
)
@click.option(
    "--metrics",
    "metrics",
    multiple=True,
    metavar="deletion,insertion",
    help="Faithfulness AUCs per image and method (costs forward passes).",
)
@click.option(
    "--metric-step",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.02,
    show_default=True,
    help="Share of pixels changed per step of those curves.",
)
@_SEED_OPTION
@click.option(
    "--overwrite",
    is_flag=True,
    help="Delete a run already in DIR first (its own files only) and start afresh.",
)
@click.option(
    "--fast/--no-fast",
    default=True,
    show_default=True,
    help="Run the methods on a BatchNorm-folded, channels-last copy of the model (exact up "
    "to float rounding; the model file is not changed).",
)
@_common_options
@click.pass_context
def run(
    ctx: click.Context,
    source: str,
    model_spec: str,
    device: str,
    trust_pickle: bool,
    methods: tuple[str, ...],
    out_dir: str,
    storage_options: tuple[str, ...],
    target: str | None,
    layer: str | None,
    opts: tuple[str, ...],
    batch_size: int,
    workers: int,
    size: int | None,
    dtype: str,
    metrics: tuple[str, ...],
    metric_step: float,
    seed: int,
    overwrite: bool,
    fast: bool,
) -> None:
    """Explain every image of SOURCE into DIR/maps.zarr and DIR/manifest.parquet.

    SOURCE is a folder (recursively, sorted) or a list file (.txt/.csv: one 'path[,target]'
    per line). Every method runs on every image; a corrupt image becomes an error row.

    Resumable: run the same command again after an interruption (even a kill) and it
    finishes the missing images only. Under 'torchrun --nproc-per-node N -m flashtorch run
    ...' each process takes a disjoint share (cuda:LOCAL_RANK, or the CPU with gloo).
    DIR may be an fsspec URL (s3://bucket/run...) that every node writes to directly.
    """
    from .runs import run as run_dataset
    from .runs.engine import METRICS

    names = parse_methods(methods, ("gradient",))
    options = method_options(names, parse_options(opts), layer)
    picked = [m.strip() for value in metrics for m in value.split(",") if m.strip()]
    for metric in picked:
        if metric not in METRICS:
            _usage(f"--metrics {metric!r}: choose from {', '.join(METRICS)}")
    if not os.path.exists(source):
        raise FileNotFoundError(f"no folder or list file at {source!r}; check the path")
    if device != "auto":
        resolve_device(device)
    from .runs.store import is_url, require_fsspec, require_runs_extra

    require_runs_extra()  # a missing extra fails before the output folder is made
    store_options = _storage_options_for(out_dir, storage_options, "--out")
    out: str | Path = out_dir
    if is_url(out_dir):
        require_fsspec()  # the store is checked (and made) by rank 0 in the run
    else:
        out = check_output_dir(Path(out_dir))
    rank0 = os.environ.get("RANK", "0") in ("", "0")
    summary = run_dataset(
        model_spec,
        source,
        options,
        out,
        target=_run_target(target),
        batch_size=batch_size,
        num_workers=workers,
        size=size,
        dtype=dtype,
        metrics=picked,
        metric_step=metric_step,
        seed=seed,
        device=None if device == "auto" else device,
        overwrite=overwrite,
        progress=not _quiet(ctx) and rank0,
        trust_pickle=trust_pickle,
        pretrained=bool(ctx.meta.get("flashtorch.pretrained")),
        storage_options=store_options or None,
        fast=fast,
    )
    if rank0:
        _info(ctx, summary.line())


# --------------------------------------------------------------------------------------------
# classes, layers, methods
# --------------------------------------------------------------------------------------------


@cli.command(short_help="ImageNet classes matching QUERY, with indices.")
@click.argument("query", nargs=-1, required=True)
@_common_options
def classes(query: tuple[str, ...]) -> None:
    """List the ImageNet classes whose name contains QUERY, with their indices.

    Names holding QUERY as whole words come first; names holding it only inside a word
    ('owl' in 'bowl') follow under their own heading.
    """
    from .utils import ImageNetIndex

    text = " ".join(query)
    index = ImageNetIndex()
    if re.fullmatch(r"\d+", text.strip()):
        click.echo(f"{int(text):>4}  {index[int(text)]}")
        return
    whole, inside = class_matches(text)
    if not whole and not inside:
        index[text]  # raises ClassNameError with the closest names
    for i, name in whole:
        click.echo(f"{i:>4}  {name}")
    if whole and inside:
        click.echo(f"also containing {text.strip()!r} inside a word:")
    for i, name in inside:
        click.echo(f"{i:>4}  {name}")


def class_matches(query: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """ImageNet classes for ``flashtorch classes``: ``(whole-word matches, substring matches)``.

    The first list holds the exact name and the names holding ``query`` as whole words (by
    index); the second the names holding it only inside a word.
    """
    from .utils.imagenet import ImageNetIndex, _normalize

    exact, words, substring = ImageNetIndex._tiers(_normalize(query))
    return exact + words, substring


@cli.command(short_help="The model's layers (name, type, output shape, map layout).")
@_model_options
@_SIZE_OPTION
@_common_options
def layers(model_spec: str, device: str, trust_pickle: bool, size: int | None) -> None:
    """List the model's layers (dotted name, type, output shape), usable as --layer.

    The last column says how a CAM reads the layer as a map: ``nchw 7x7``, ``tokens 1+14x14``
    (prefix tokens + patch grid of a transformer) or ``nhwc 7x7`` (channels-last), and ``-``
    where the output is no map.
    """
    from .models import list_layers

    loaded = load_cli_model(model_spec, resolve_device(device), size, trust_pickle)
    rows = list_layers(loaded.model, (1, 3, loaded.size, loaded.size), layouts=True)
    width = max((len(n) for n, _, _, _ in rows), default=4)
    twidth = max((len(t) for _, t, _, _ in rows), default=4)
    swidth = max([len("output shape")] + [len("x".join(map(str, s))) for _, _, s, _ in rows])
    click.echo(f"{'layer':<{width}}  {'type':<{twidth}}  {'output shape':<{swidth}}  layout")
    for name, kind, shape, layout in rows:
        shown = "x".join(str(s) for s in shape) if shape else "-"
        click.echo(f"{name:<{width}}  {kind:<{twidth}}  {shown:<{swidth}}  {layout or '-'}")


@cli.command(short_help="The registered attribution methods.")
@_common_options
def methods() -> None:
    """List the registered attribution methods (the choices of --method)."""
    from ._method_index import METHOD_INDEX  # static: no torch import (a test keeps it true)

    width = max((len(n) for n, _, _ in METHOD_INDEX), default=6)
    for name, summary, needs_layer in METHOD_INDEX:
        flag = " [layer]" if needs_layer else ""
        click.echo(f"{name:<{width}}  {summary}{flag}")


# --------------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------------


@cli.command(short_help="An interactive page to explore the model (needs flashtorch[app]).")
@click.option(
    "-m",
    "--model",
    "model_specs",
    multiple=True,
    metavar="M",
    help=f"A model the page offers (repeatable; the first is the default; default: "
    f"{DEFAULT_MODEL}). Same forms as 'flashtorch explain --model'; the page itself can "
    "only choose among these.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. Anything but 127.0.0.1 / localhost makes the page reachable "
    "from other machines (a warning says so).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="TCP port."
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Largest upload in megabytes.",
)
@click.option(
    "--max-pixels",
    type=click.FloatRange(min=1),
    default=25e6,
    show_default=True,
    help="Largest upload in pixels (width x height), checked before decoding.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Explanations run at once; the others wait in the queue.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="DEVICE",
    help="cpu, cuda, cuda:N, mps, or auto (cuda when available).",
)
@click.option(
    "--pretrained",
    is_flag=True,
    help="torchvision:/timm: models: the default pretrained weights from the local cache.",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow a whole pickled model file among --model (trusted files only).",
)
@click.option(
    "--runs",
    "run_dirs",
    multiple=True,
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A run directory of 'flashtorch run', or a folder of them, that the Runs tab may "
    "browse (repeatable); the page opens no other folder.",
)
@_common_options
@click.pass_context
def serve(
    ctx: click.Context,
    model_specs: tuple[str, ...],
    host: str,
    port: int,
    max_upload_mb: float,
    max_pixels: float,
    concurrency: int,
    device: str,
    pretrained: bool,
    trust_pickle: bool,
    run_dirs: tuple[Path, ...],
) -> None:
    """Serve a page (gradio) to explain the models' decisions interactively.

    Explain: upload an image (or pick a bundled example), choose the model, methods, class
    and CAM layer, and see the maps side by side, each downloadable as PNG and .npy.
    Compare models: one image, one method, two models side by side. Feature
    visualisation: render a layer's channels or a class (Stop ends a long render, as it
    ends a long method on Explain). Runs: the images and maps of a run under --runs, sorted
    by score or a metric, a page at a time. The page binds
    127.0.0.1 unless --host says otherwise; it accepts only images within the limits and
    never loads a model, path or pickle of its own. Stop it with Ctrl-C.
    """
    from .app.page import _gradio, launch

    _gradio()  # a missing extra fails before the models load
    from .app.core import Explainer

    dev = resolve_device(device)
    explainer = Explainer(
        model_specs or (DEFAULT_MODEL,),
        device=dev,
        max_upload_mb=max_upload_mb,
        max_pixels=int(max_pixels),
        pretrained=pretrained,
        trust_pickle=trust_pickle,
        runs=run_dirs,
    )
    explainer.warm_up()
    served = ", ".join(explainer.model_names)
    _info(ctx, f"serving {served} on http://{host}:{port}/ (Ctrl-C stops)")
    launch(explainer, host=host, port=port, concurrency=concurrency)


# --------------------------------------------------------------------------------------------
# activmax and dream
# --------------------------------------------------------------------------------------------


def _activmax() -> Any:
    """The render engine, or a one-line error when this build lacks it."""
    try:
        from . import activmax
    except ImportError as exc:
        raise click.ClickException(
            f"feature visualisation is not available in this build of flashtorch ({exc})"
        ) from None
    if not hasattr(activmax, "render"):
        raise click.ClickException(
            "feature visualisation is not available in this build of flashtorch "
            "(flashtorch.activmax.render is missing)"
        )
    return activmax


def _engine_progress(ctx: click.Context, steps: int) -> bool:
    """The render engine's own bar: on a terminal, past a few steps, unless --quiet."""
    return not _quiet(ctx) and steps > PROGRESS_THRESHOLD and sys.stderr.isatty()


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", text) or "layer"


_STEPS_HELP = "Optimisation steps."


@cli.command(short_help="Feature visualisation of a layer's channels.")
@click.option(
    "--layer",
    required=True,
    metavar="L",
    help="Layer whose channels to render (dotted name, see 'flashtorch layers').",
)
@click.option(
    "--channels",
    default="0-7",
    show_default=True,
    metavar="SPEC",
    help="Channels: 0-7, 3, or 1,4,9 (rendered together in one batch).",
)
@_model_options
@click.option(
    "--steps", type=click.IntRange(1, 100_000), default=256, show_default=True, help=_STEPS_HELP
)
@click.option(
    "--size",
    type=click.IntRange(16, 2048),
    default=128,
    show_default=True,
    metavar="PX",
    help="Side of the rendered images.",
)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=0.05,
    show_default=True,
    help="Adam's learning rate.",
)
@_SEED_OPTION
@_out_option("<layer>_ch<C>.png and <layer>_grid.png")
@_common_options
@click.pass_context
def activmax(
    ctx: click.Context,
    layer: str,
    channels: str,
    model_spec: str,
    device: str,
    trust_pickle: bool,
    steps: int,
    size: int,
    lr: float,
    seed: int,
    out_dir: Path,
) -> None:
    """Render images that maximally activate channels of a layer (feature visualisation).

    Fourier-parametrised, colour-decorrelated images optimised through random
    pad/jitter/scale/rotate (Olah et al. 2017); one PNG per channel and a grid.
    """
    engine = _activmax()
    from .plot.activmax import save_images

    picked = parse_channels(channels)
    dev = resolve_device(device)
    check_output_dir(out_dir)
    loaded = load_cli_model(model_spec, dev, size, trust_pickle)
    _check_layer(loaded, layer)
    _check_channel_range(loaded, layer, picked)
    result = engine.render(
        loaded.model,
        engine.channel(layer, picked),
        param=size,
        steps=steps,
        seed=seed,
        lr=lr,
        progress=_engine_progress(ctx, steps),
        normalize=(loaded.mean, loaded.std),
    )
    images = result.images.detach().cpu()
    stem = _safe_name(layer)
    for i, c in enumerate(picked):
        save_images(images[i : i + 1], out_dir / f"{stem}_ch{c}.png")
    if len(picked) > 1:
        save_images(images, out_dir / f"{stem}_grid.png")
    final = result.history[-1].tolist() if len(result.history) else []
    for c, value in zip(picked, final):
        _echo(f"{layer} channel {c}: objective {value:.4g}")
    _info(ctx, f"wrote {len(picked) + (len(picked) > 1)} file(s) to {out_dir}")


def _check_channel_range(loaded: LoadedModel, layer: str, picked: Sequence[int]) -> None:
    """Fail early (usage error) on a channel the layer does not have."""
    import torch

    from ._surgery import LayerRecorder, preserved_state

    x = torch.zeros(1, 3, loaded.size, loaded.size, device=loaded.device)
    with (
        preserved_state(loaded.model),
        torch.no_grad(),
        LayerRecorder(loaded.model, layer) as recorder,
    ):
        loaded.model(x)
        output = recorder.output
    n = int(output.shape[1]) if output.dim() >= 2 else 1
    bad = [c for c in picked if c >= n]
    if bad:
        _usage(f"channel {bad[0]} is out of range: layer {layer!r} has {n} channels (0..{n - 1})")


@cli.command(short_help="DeepDream on a photo.")
@click.argument("image", metavar="IMAGE")
@click.option(
    "--layer",
    required=True,
    metavar="L",
    help="Layer to amplify (dotted name, see 'flashtorch layers').",
)
@click.option(
    "--channel",
    type=click.IntRange(0),
    metavar="C",
    help="Amplify one channel of the layer (default: the whole layer).",
)
@_model_options
@click.option(
    "--steps",
    type=click.IntRange(1, 100_000),
    default=10,
    show_default=True,
    help="Gradient steps per octave.",
)
@click.option(
    "--octaves", type=click.IntRange(1, 12), default=4, show_default=True, help="Number of scales."
)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=0.01,
    show_default=True,
    help="Step size in [0, 1] RGB units.",
)
@click.option(
    "--size",
    type=click.IntRange(16, 4096),
    metavar="PX",
    help="Resize the photo's shorter side first (default: keep its size).",
)
@_SEED_OPTION
@_out_option("<image>_dream.png")
@_common_options
@click.pass_context
def dream(
    ctx: click.Context,
    image: str,
    layer: str,
    channel: int | None,
    model_spec: str,
    device: str,
    trust_pickle: bool,
    steps: int,
    octaves: int,
    lr: float,
    size: int | None,
    seed: int,
    out_dir: Path,
) -> None:
    """DeepDream on IMAGE: amplify what a layer (or one channel) sees, over octaves."""
    engine = _activmax()
    from .plot.activmax import save_images
    from .utils import load_image

    picture = load_image(check_images([image])[0])
    dev = resolve_device(device)
    check_output_dir(out_dir)
    loaded = load_cli_model(model_spec, dev, None, trust_pickle)
    _check_layer(loaded, layer)
    if channel is not None:
        _check_channel_range(loaded, layer, [channel])
    if size is not None:
        w, h = picture.size
        scale = size / min(w, h)
        picture = picture.resize((max(1, round(w * scale)), max(1, round(h * scale))))
    objective = layer if channel is None else engine.channel(layer, channel)
    result = engine.deepdream(
        loaded.model,
        picture,
        objective,
        octaves=octaves,
        steps=steps,
        lr=lr,
        seed=seed,
        normalize=(loaded.mean, loaded.std),
        progress=_engine_progress(ctx, steps * octaves),
    )
    suffix = "" if channel is None else f"_ch{channel}"
    path = out_dir / f"{output_stems([image])[0]}_dream{suffix}.png"
    save_images(result.image.detach().cpu(), path)
    _info(ctx, f"wrote {path}")


if __name__ == "__main__":
    main()
