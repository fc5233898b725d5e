"""The benchmarks' models: random weights (nothing downloaded) except the bundled one."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """conv-BN-ReLU x 2, pool, linear: a model for ``--quick`` and the smoke test."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.stem(x))).flatten(1))


@dataclass
class ModelSpec:
    """A model with its input size, class count and the CAM layers the cases use."""

    name: str
    model: nn.Module
    size: int
    classes: int
    cam_layer: str
    scorecam_layer: str
    note: str = ""


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics/affine (random-weight models have mean 0, var 1, identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


MODELS = ("resnet50", "efficientnet_lite0", "tiny", "torchvision:NAME")


def build_model(name: str, device: torch.device) -> ModelSpec:
    """The benchmark's models (random weights except the bundled pretrained one)."""
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None)
        randomise_bn(model)
        spec = ModelSpec(
            name,
            model,
            224,
            1000,
            "layer4",
            "maxpool",
            "torchvision, random weights, BN statistics randomised (seed 0)",
        )
    elif name in ("efficientnet_lite0", "lite0"):
        from flashtorch.models import load_pretrained

        spec = ModelSpec(
            "efficientnet_lite0",
            load_pretrained(),
            224,
            1000,
            "net.bn2",
            "net.blocks.4",
            "flashtorch.models.load_pretrained() (ImageNet weights)",
        )
    elif name == "tiny":
        model = TinyNet()
        randomise_bn(model)
        spec = ModelSpec(name, model, 32, 10, "features", "stem", "TinyNet (smoke tests)")
    elif name.startswith("torchvision:"):
        import torchvision

        model = torchvision.models.get_model(name.split(":", 1)[1], weights=None)
        randomise_bn(model)
        spec = ModelSpec(name, model, 224, 1000, "", "", "torchvision, random weights")
    else:
        raise SystemExit(f"unknown model {name!r}: {', '.join(MODELS)}")
    spec.model.to(device).eval()
    if not spec.cam_layer:
        from flashtorch.cam import default_layer

        x = torch.zeros(1, 3, spec.size, spec.size, device=device)
        spec.cam_layer = spec.scorecam_layer = default_layer(spec.model, x)
    return spec


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy with ``requires_grad=False`` parameters (what the frozen limit runs on)."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def build_vit(name: str) -> nn.Module:
    """A timm vision transformer with random weights; ``"tiny"``: 32 x 32 input, 2 blocks."""
    import timm

    torch.manual_seed(0)
    if name == "tiny":
        return timm.models.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
        ).eval()
    return timm.create_model(name, pretrained=False).eval()


def layer_channels(model: nn.Module, layer: str, x: Tensor) -> int:
    """The channel count of ``layer``'s output on ``x`` (one forward)."""
    box: list[int] = []
    h = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, o: box.append(int(o.shape[1]))
    )
    try:
        model(x)
    finally:
        h.remove()
    return box[0]
