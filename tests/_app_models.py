"""Model factories for the serve tests (``Explainer(["tests._app_models:tiny_vit"])``)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_vit() -> nn.Module:
    """A two-block timm ViT on 32-pixel inputs (patch 8: a 4x4 grid and a class token), seeded."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
    )
    model.input_size = 32  # read by the model-source registry (the data config's size)
    return model.eval()
