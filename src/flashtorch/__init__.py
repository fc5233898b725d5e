"""flashtorch: see what a vision model sees.

Saliency maps, attribution methods, CAMs, feature visualisation and trust metrics for PyTorch
image models, batched, device-agnostic and leaving the user's model exactly as it was found.
"""

from __future__ import annotations

__version__ = "1.0.0"

__all__ = ["__version__"]
