"""Every registered method on CUDA: the same maps as on the CPU, ``fast`` and float16 ``amp``
agreeing with the exact maps, CUDA-graph replays (``flashtorch.graphed``) equal to eager calls,
and the model's state restored on the device.

Skipped without CUDA (CI has no GPU); ``benchmarks/gpu_check.sh`` runs this module on a lent GPU.
TF32 is switched off for the module: with it (PyTorch's default for cuDNN convolutions) the
float32 maps of resnet18 differ from the CPU's by about 5 % of their maximum.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flashtorch
from flashtorch import METHODS
from flashtorch._surgery import hook_count
from flashtorch.errors import TargetError

torchvision = pytest.importorskip("torchvision")

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

#: per-method options that keep the run short
OPTIONS = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"n_samples": 4},
    "smoothgrad_sq": {"n_samples": 4},
    "vargrad": {"n_samples": 4},
    "occlusion": {"window": 16, "stride": 16},
    "scorecam": {"layer": "layer3"},
}
#: SmoothGrad's noise comes from a generator on the model's device: CPU and CUDA draws differ
RANDOM = {"smoothgrad", "smoothgrad_sq", "vargrad"}
GRAPH_SAFE = sorted(n for n, cls in METHODS.items() if cls.graph_safe)


@pytest.fixture(autouse=True, scope="module")
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return float(nn.functional.cosine_similarity(a, b, dim=1).min())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max()
    assert scale > 0
    return float((a - b).abs().max() / scale)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> bool:
    """Equal up to ``tol`` of the larger map's maximum (two all-zero CAMs are equal)."""
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    return float((a - b).abs().max()) <= tol * scale


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding changes weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([1, 7])


@pytest.fixture
def on_cuda(resnet):
    model, x, target = resnet
    model.cuda()
    try:
        yield model, x.cuda(), target.cuda()
    finally:
        model.cpu()


@pytest.mark.parametrize("name", sorted(n for n, c in METHODS.items() if not c.needs_attention))
def test_cuda_matches_cpu(resnet, name):
    model, x, target = resnet
    options = OPTIONS.get(name, {})
    cpu = METHODS[name](model, **options)(x, target=target)
    model.cuda()
    try:
        gpu = METHODS[name](model, **options)(x.cuda(), target=target.cuda())
        again = METHODS[name](model, **options)(x.cuda(), target=target.cuda())
        assert hook_count(model) == 0
        assert all(p.device.type == "cuda" and p.grad is None for p in model.parameters())
    finally:
        model.cpu()
    assert gpu.maps.device.type == "cuda" and gpu.maps.shape == cpu.maps.shape
    assert torch.isfinite(gpu.maps).all()
    # the same seed draws the same noise; cuDNN's backward sums in a varying order
    assert rel(again.maps, gpu.maps) < 1e-3
    if name not in RANDOM:
        assert rel(gpu.maps.cpu(), cpu.maps) < 1e-3


@pytest.mark.parametrize(
    "name", ["gradient", "guided", "integrated_gradients", "gradcam", "guided_gradcam"]
)
def test_fast_on_cuda_agrees_with_exact(on_cuda, name):
    model, x, target = on_cuda
    options = OPTIONS.get(name, {})
    exact = METHODS[name](model, **options)(x, target=target).maps
    fast = METHODS[name](model, fast=True, **options)(x, target=target).maps
    assert cos(fast, exact) > 0.999
    assert all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.parametrize(
    "name",
    [
        "gradient",
        "gradient_x_input",
        "guided",
        "deconvnet",
        "integrated_gradients",
        "gradcam",
        "scorecam",
    ],
)
def test_amp_float16_on_cuda(on_cuda, name):
    model, x, target = on_cuda
    options = OPTIONS.get(name, {})
    exact = METHODS[name](model, **options)(x, target=target).maps
    amp = METHODS[name](model, amp=True, **options)(x, target=target).maps
    assert amp.dtype == torch.float32  # maps come back in float32
    assert cos(amp, exact) >= 0.99


def test_fast_layout_follows_tensor_cores(on_cuda):
    from flashtorch._fast import fast_channels_last

    _, x, _ = on_cuda
    assert not fast_channels_last(x)  # float32 without TF32 (this module): contiguous
    assert fast_channels_last(x, amp=True) and fast_channels_last(x.half())
    torch.backends.cudnn.allow_tf32 = True
    try:
        assert fast_channels_last(x)
    finally:
        torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize(
    "name",
    [
        "gradient",
        "guided",
        "gradcam",
        "guided_gradcam",
        "integrated_gradients",
        "smoothgrad",
        "occlusion",
    ],
)
def test_no_synchronisation_once_the_forward_pass_starts(on_cuda, name):
    """CUDA's own check of tests/test_sync_free.py: sync debug mode "error" from the first
    forward call on (a target tensor is read at the start of the call, before it)."""
    model, x, target = on_cuda
    method = METHODS[name](model, **OPTIONS.get(name, {}))
    method(x, target=target)  # warm-up (a default CAM layer is looked for once)

    def strict(*_: object) -> None:
        torch.cuda.set_sync_debug_mode("error")

    handle = model.register_forward_pre_hook(strict)
    try:
        out = method(x, target=target)  # raises on a synchronising call
    finally:
        torch.cuda.set_sync_debug_mode("default")
        handle.remove()
    assert out.maps.device.type == "cuda" and torch.isfinite(out.maps).all()


def test_state_restored_after_an_error_on_cuda(on_cuda):
    model, x, _ = on_cuda
    model.train()
    with pytest.raises(Exception, match="target"):
        METHODS["guided"](model)(x, target=[1, 2, 3])
    assert model.training and hook_count(model) == 0
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()


def test_activation_maximisation_on_cuda(on_cuda):
    from flashtorch.activmax import GradientAscent

    model, _, _ = on_cuda
    out = GradientAscent(model, img_size=32, use_gpu=True).optimize("layer2", 3, num_iter=3)
    # the talk's API hands images back on the CPU, ready to plot; the model stays on the GPU
    assert out[-1].device.type == "cpu" and torch.isfinite(out[-1]).all()
    assert next(model.parameters()).device.type == "cuda" and hook_count(model) == 0


# ---------------------------------------------------------------------------------------------
# CUDA graphs
# ---------------------------------------------------------------------------------------------


def _batch(seed: int, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed)).to(like.device)


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
@pytest.mark.parametrize("name", GRAPH_SAFE)
def test_graphed_replays_equal_eager_calls(on_cuda, name, fast):
    model, x, target = on_cuda
    method = METHODS[name](model, fast=fast)
    g = flashtorch.graphed(method)
    for seed in range(3):  # new data every call: the replay must read the new batch
        xi = _batch(seed, x)
        for tgt in (target, None, [3, 4], 5):
            eager = method(xi, target=tgt)
            replay = g(xi, target=tgt)
            assert replay.maps.device.type == "cuda"
            assert close(replay.maps, eager.maps)
            assert torch.equal(replay.targets, eager.targets)
            assert torch.equal(replay.predicted, eager.predicted)
    assert g.captures == 2  # class targets and predicted class: one graph each
    assert hook_count(model) == 0
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_graphed_results_are_not_overwritten_by_the_next_replay(on_cuda):
    model, x, target = on_cuda
    g = flashtorch.graphed(METHODS["gradient"](model))
    first = g(_batch(0, x), target=target)
    kept = first.maps.clone()
    g(_batch(1, x), target=target)
    assert torch.equal(first.maps, kept)


def test_graphed_follows_weight_updates(resnet):
    model, x, target = resnet
    model = copy.deepcopy(model).cuda()
    x, target = x.cuda(), target.cuda()
    exact = flashtorch.graphed(METHODS["gradient"](model))
    fast = flashtorch.graphed(METHODS["gradient"](model, fast=True))
    exact(x, target), fast(x, target)
    with torch.no_grad():  # in place, as an optimizer step
        model.fc.weight.mul_(-2.0)
        model.layer4[0].bn1.running_var.mul_(3.0)
    want = METHODS["gradient"](model)(x, target=target).maps
    assert rel(exact(x, target).maps, want) < 1e-3 and exact.captures == 1  # same storage
    assert rel(fast(x, target).maps, want) < 1e-3 and fast.captures == 2  # refolded
    model.half().float()  # new storage (and float16-rounded weights): captured again
    want = METHODS["gradient"](model)(x, target=target).maps
    assert rel(exact(x, target).maps, want) < 1e-3 and exact.captures == 2


def test_graphed_checks_what_a_replay_cannot(on_cuda):
    model, x, _ = on_cuda
    g = flashtorch.graphed(METHODS["gradcam"](model))
    with pytest.raises(TargetError, match="out of range"):
        g(x, target=[1, 10])
    with pytest.raises(TargetError, match="callable"):
        g(x, target=lambda out: out[:, 0])
    with pytest.raises(flashtorch.errors.InputError, match="NaN"):
        g(x * float("nan"))
    cpu_in = g(x.cpu(), target=1)  # CPU inputs: the result comes back to the CPU
    assert cpu_in.maps.device.type == "cpu"


def test_graphed_amp(on_cuda):
    model, x, target = on_cuda
    method = METHODS["guided"](model, fast=True, amp=True)
    replay = flashtorch.graphed(method)(x, target=target)
    assert cos(replay.maps, method(x, target=target).maps) > 0.999


@pytest.mark.parametrize("name", sorted(n for n, c in METHODS.items() if c.needs_attention))
def test_attention_methods_on_cuda_match_cpu(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
    ).eval()
    x, target = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 4])
    cpu = METHODS[name](model)(x, target=target)
    model.cuda()
    try:
        gpu = METHODS[name](model)(x.cuda(), target=target.cuda())
        assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
        assert torch._C._len_torch_function_stack() == 0
    finally:
        model.cpu()
    assert gpu.maps.device.type == "cuda"
    assert rel(gpu.maps.cpu(), cpu.maps) < 1e-3
