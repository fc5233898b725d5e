"""Exception types raised by flashtorch.

Every user mistake maps to one of these precise types; each also derives from the built-in
exception a caller would naturally catch (``ValueError``, ``LookupError``...), so
``except ValueError`` keeps working.
"""

from __future__ import annotations


class FlashTorchError(Exception):
    """Base class of every error raised on purpose by flashtorch."""


class InputError(FlashTorchError, ValueError):
    """An input tensor or image has the wrong type, shape or values."""


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type (also a ``TypeError``, which FlashTorch 0.1.3 raised)."""


class ImageLoadError(InputError):
    """A file or object could not be read as an image."""


class TargetError(FlashTorchError, ValueError):
    """A target class is out of range, unknown, or does not match the batch."""


class ClassNameError(TargetError, KeyError):
    """An ImageNet class name matched no class, or several."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class LayerError(FlashTorchError, LookupError):
    """A layer name does not exist, or a layer cannot be used as asked."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LayerTypeError(LayerError, TypeError):
    """A layer was given as neither a module nor a dotted name (also a ``TypeError``)."""


class SharedModuleError(LayerError):
    """A module chosen as a layer runs more than once in one forward pass."""


class MethodError(FlashTorchError, LookupError):
    """An attribution method name is unknown or its options are invalid."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelLoadError(FlashTorchError, RuntimeError):
    """A model specification could not be resolved or loaded."""


class MissingDependencyError(FlashTorchError, ImportError):
    """An optional dependency is needed; the message names the pip command."""


class Cancelled(FlashTorchError):
    """A long call was stopped by its progress callback (see :mod:`flashtorch.progress`).

    Raised by the callback of :func:`flashtorch.progress.report_to` (or by its ``cancel``
    event); the method stops at its next step and undoes its changes to the model first.
    """


__all__ = [
    "FlashTorchError",
    "InputError",
    "InputTypeError",
    "ImageLoadError",
    "TargetError",
    "ClassNameError",
    "LayerError",
    "LayerTypeError",
    "SharedModuleError",
    "MethodError",
    "ModelLoadError",
    "MissingDependencyError",
    "Cancelled",
]
