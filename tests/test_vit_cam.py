"""The CAM family on vision transformers: token and channels-last layouts, the default layer,
``reshape=``, the zero-gradient warning, cleanup - with pytorch-grad-cam as the oracle.

Random weights everywhere (seeded), small input sizes where the model allows.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

import flashtorch.cam as cam
from flashtorch import METHODS, attribute
from flashtorch._surgery import hook_count
from flashtorch.cam.base import _DEFAULT_LAYERS
from flashtorch.errors import LayerError, TargetError

from .test_cleanup import _assert_same, _check_input, _snapshot

timm = pytest.importorskip("timm")

CAM_METHODS = sorted(name for name, cls in METHODS.items() if cls.needs_layer)


class Logits(nn.Module):
    """pytorch-grad-cam's targets index a tensor: unwrap Hugging Face outputs for the oracle."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out if isinstance(out, torch.Tensor) else out.logits


def tokens_to_map(prefix: int, h: int, w: int):
    """pytorch-grad-cam's ``reshape_transform`` for ViTs (its tutorial's, with the prefix)."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def nhwc_to_map(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def oracle(cls_name: str, model: nn.Module, layer: nn.Module, x, target, reshape, **attrs):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with getattr(pgc, cls_name)(Logits(model), [layer], reshape_transform=reshape) as c:
        for k, v in attrs.items():
            setattr(c, k, v)
        out = c(x, [ClassifierOutputTarget(t) for t in target])
    return torch.from_numpy(out)


def correlations(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return [float(torch.corrcoef(torch.stack([u, v]))[0, 1]) for u, v in zip(a, b)]


def images(b: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w or h, generator=g)


# ---------------------------------------------------------------------------------------------
# Models (random weights, seeded)
# ---------------------------------------------------------------------------------------------


def timm_vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=96, **kw).eval()


def timm_deit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=96).eval()


def timm_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224").eval()


def tv_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(image_size=64)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    return model.eval()


def hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=96,
        num_labels=10,
    )
    return transformers.ViTForImageClassification(config).eval()


def tiny_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
    ).eval()


# (id, builder, input (B, H, W), default layer, layout, pgc reshape_transform)
CASES = [
    (
        "timm_vit_tiny",
        timm_vit,
        (2, 96, 96),
        "blocks.11.norm1",
        "tokens 1+6x6",
        tokens_to_map(1, 6, 6),
    ),
    (
        "timm_deit_distilled",
        timm_deit,
        (2, 96, 96),
        "blocks.11.norm1",
        "tokens 2+6x6",
        tokens_to_map(2, 6, 6),
    ),
    (
        "timm_vit_reg4",
        lambda: timm_vit(reg_tokens=4),
        (2, 96, 96),
        "blocks.11.norm1",
        "tokens 5+6x6",
        tokens_to_map(5, 6, 6),
    ),
    ("timm_swin_tiny", timm_swin, (1, 224, 224), "norm", "nhwc 7x7", nhwc_to_map),
    (
        "torchvision_vit_b_16",
        tv_vit,
        (2, 64, 64),
        "encoder.layers.encoder_layer_11.ln_1",
        "tokens 1+4x4",
        tokens_to_map(1, 4, 4),
    ),
    ("hf_vit", hf_vit, (2, 32, 32), "layernorm_before", "tokens 1+4x4", tokens_to_map(1, 4, 4)),
]


#: the big models (swin_tiny at 224 px, vit_b_16) run in the full suite only
HEAVY = {"timm_swin_tiny", "torchvision_vit_b_16"}


@pytest.mark.parametrize(
    "build, shape, layer, layout, reshape",
    [
        pytest.param(*c[1:], id=c[0], marks=[pytest.mark.slow] if c[0] in HEAVY else [])
        for c in CASES
    ],
)
def test_gradcam_on_token_layers_equals_pytorch_grad_cam(build, shape, layer, layout, reshape):
    model = build()
    b, h, w = shape
    x = images(b, h, w, seed=3)
    target = [3, 7][:b]
    if "." not in layer:  # Hugging Face: the last layer's (its module path varies by version)
        layer = [n for n, _ in model.named_modules() if n.endswith(layer)][-1]
    method = cam.GradCAM(model)
    got = method(x, target=target).maps[:, 0]
    # the old silent cases: the default is a token (or channels-last) layer read on its grid
    assert method.layer_name == layer
    assert method.layer_layout.describe() == layout
    assert hook_count(model) == 0
    ref = oracle("GradCAM", model, model.get_submodule(layer), x, target, reshape)
    assert got.shape == ref.shape
    assert float(ref.flatten(1).std(1).min()) > 0.05  # real maps, not constants
    assert min(correlations(got, ref)) >= 0.99


def test_default_layers_of_transformers_are_never_per_head_tensors_or_the_patch_embedding():
    # timm's default (fused) attention and unfused attention give the same default; the
    # per-head keys (B, heads, N, d) that used to win are refused when asked for explicitly.
    model = timm_vit()
    x = images(1, 96)
    assert cam.default_layer(model, x) == "blocks.11.norm1"
    for block in model.blocks:
        block.attn.fused_attn = False
    _DEFAULT_LAYERS.pop(model)
    assert cam.default_layer(model, x) == "blocks.11.norm1"
    with pytest.raises(LayerError) as info:
        cam.GradCAM(model, "blocks.11.attn.k_norm")(x, target=1)
    assert "reshape=" in str(info.value) and "(1, 3, 37, 64)" in str(info.value)
    assert cam.default_layer(tv_vit(), images(1, 64)) != "conv_proj"


def test_non_square_input_on_a_dynamic_img_size_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=96, dynamic_img_size=True).eval()
    x = images(2, 80, 112, seed=4)  # 5 x 7 patches, not the model's 6 x 6
    method = cam.GradCAM(model)
    got = method(x, target=[1, 2]).maps
    assert got.shape == (2, 1, 80, 112)
    assert method.layer_name == "blocks.11.norm1"
    assert method.layer_layout.describe() == "tokens 1+5x7"
    ref = oracle("GradCAM", model, model.blocks[11].norm1, x, [1, 2], tokens_to_map(1, 5, 7))
    assert min(correlations(got[:, 0], ref)) >= 0.99


@pytest.mark.parametrize(
    "ours, theirs, options, attrs",
    [
        ("gradcam_pp", "GradCAMPlusPlus", {"eps": 1e-6}, {}),
        ("layercam", "LayerCAM", {}, {}),
        (
            "scorecam",
            "ScoreCAM",
            {"internal_batch_size": 64, "mask_align_corners": True},
            {"batch_size": 64},
        ),
    ],
)
def test_other_cams_follow_the_same_token_path(ours, theirs, options, attrs):
    model = tiny_vit()
    x = images(2, 32, seed=5)
    layer = "blocks.1.norm1"
    got = METHODS[ours](model, layer, **options)(x, target=[1, 4]).maps[:, 0]
    ref = oracle(
        theirs, model, model.get_submodule(layer), x, [1, 4], tokens_to_map(1, 4, 4), **attrs
    )
    assert min(correlations(got, ref)) >= 0.99


def test_reshape_overrides_the_layout_and_is_checked():
    model = tiny_vit()
    x = images(2, 32, seed=6)
    by_layout = cam.GradCAM(model, "blocks.1.norm1")(x, target=[0, 1]).maps
    method = cam.GradCAM(model, "blocks.1.norm1", reshape=tokens_to_map(1, 4, 4))
    torch.testing.assert_close(method(x, target=[0, 1]).maps, by_layout)
    assert method.layer_layout is None
    # a per-head tensor, read by the caller's own rule: keys averaged over heads as a grid
    heads = cam.GradCAM(
        model,
        "blocks.1.attn.k_norm",
        reshape=lambda t: t.mean(1)[:, 1:].reshape(t.shape[0], 4, 4, -1).permute(0, 3, 1, 2),
    )
    assert heads(x, target=[0, 1]).maps.shape == (2, 1, 32, 32)
    with pytest.raises(LayerError, match=r"reshape=.*\(2, 17, 32\)"):
        cam.GradCAM(model, "blocks.1.norm1", reshape=lambda t: t)(x, target=0)
    assert hook_count(model) == 0


def test_a_token_layer_the_score_reads_only_through_the_class_token_warns():
    model = tiny_vit()
    x = images(2, 32, seed=7)
    with pytest.warns(UserWarning, match=r"'blocks\.1'.*class\) tokens.*'blocks\.1\.norm1'"):
        cam.GradCAM(model, "blocks.1")(x, target=[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam.GradCAM(model, "blocks.1.norm1")(x, target=[0, 1])


def test_layouts_of_explicit_layers_and_their_errors():
    model = tiny_vit()
    x = images(1, 32)
    with pytest.raises(LayerError, match=r"\(B, C, h, w\)"):
        cam.GradCAM(model, "head")(x, target=0)
    # a CNN that resizes its input keeps working on an explicit layer (PyTorch's convention)
    net = nn.Sequential(
        nn.Upsample(size=(16, 16)),
        nn.Conv2d(3, 16, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    ).eval()
    method = cam.GradCAM(net, "1")
    assert method(images(1, 20, 60), target=0).maps.shape == (1, 1, 20, 60)
    assert method.layer_layout.describe() == "nchw 14x14"


# ---------------------------------------------------------------------------------------------
# Cleanup: model state, hooks, grad mode, the caller's tensor - also on errors
# ---------------------------------------------------------------------------------------------

OPTIONS = {"scorecam": {"internal_batch_size": 32}}


def _prepared(build):
    model = build()
    model.train()
    next(model.children()).eval()  # mixed flags must come back exactly
    params = list(model.parameters())
    params[-1].requires_grad_(False)
    params[0].grad = torch.ones_like(params[0])
    model.register_forward_hook(lambda *a: None)  # the user's own hook stays
    return model


def _user_input(size: int) -> torch.Tensor:
    x = torch.randn(2, 3, size, size, requires_grad=True)
    x.grad = torch.full_like(x, 3.0)
    return x


def _blocks(model: nn.Module) -> nn.Module:
    return model.blocks[0] if hasattr(model, "blocks") else model.vit.layers[0]


@pytest.mark.parametrize("build", [tiny_vit, hf_vit], ids=["timm_vit", "hf_vit"])
@pytest.mark.parametrize("layer", [None, "explicit"])
@pytest.mark.parametrize("name", CAM_METHODS)
def test_cams_on_transformers_restore_everything(name, layer, build):
    model = _prepared(build)
    layer = (
        None
        if layer is None
        else ("blocks.1.norm1" if hasattr(model, "blocks") else "vit.layers.1.layernorm_before")
    )
    x = _user_input(32)
    before = x.detach().clone()
    snap = _snapshot(model)
    options = {"layer": layer, **OPTIONS.get(name, {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # guided backprop finds no rectifier in a ViT (GELU)
        result = attribute(model, x, target=[1, 2], method=name, **options)
    assert result.maps.shape[0] == 2 and torch.isfinite(result.maps).all()
    _assert_same(model, snap)
    _check_input(x, before)
    with pytest.raises(TargetError):
        attribute(model, x, target=99, method=name, **options)
    _assert_same(model, snap)
    _check_input(x, before)
    block = _blocks(model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom: a block that raises")

    block.forward = boom
    try:
        with pytest.raises(RuntimeError, match="boom"):
            attribute(model, x, target=1, method=name, **options)
    finally:
        del block.forward
    _assert_same(model, snap)
    _check_input(x, before)
