"""Attention rollout and gradient rollout against slow references written from the papers.

The references never use flashtorch's capture: the attention probabilities are recomputed as
softmax(Q K^T / sqrt(d)) from forward hooks on the blocks (timm: the ``qkv`` output; torchvision:
the ``nn.MultiheadAttention`` input and its in-projection), their gradients derived from the
gradient reaching the attention output (``dy/dA = dy/dO V^T``), or read from Hugging Face's
``output_attentions=True`` in eager mode. The rollouts are then the papers' full matrix
products. The models under test keep fused attention on (timm ``fused_attn``, Hugging Face
``sdpa``). Float64 models, so that 1e-5 holds on min-max normalised maps too.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from flashtorch import attribute
from flashtorch.attention import AttentionCapture, explicit_sdpa
from flashtorch.errors import MethodError

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
TARGETS = [1, 3]


def _randomise(model, std=0.5, seed=0):
    """Large random weights: peaked attention, so that order and head mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model.double().eval()


def _timm_vit(**kw):
    torch.manual_seed(0)
    options = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    options.update(kw)
    return _randomise(timm.models.VisionTransformer(**options))


def _input(b=2, h=32, w=32, seed=1):
    return torch.randn(
        b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


# --------------------------------------------------------------------------------------------
# Slow references (the papers' formulas, full N x N matrices)
# --------------------------------------------------------------------------------------------


def ref_attention_rollout(attentions, fusion="mean", discard=0.0):
    """Abnar & Zuidema 2020: R = prod_l rownorm(fuse_h A_l + I), as in vit-explain."""
    b, _, n, _ = attentions[0].shape
    eye = torch.eye(n, dtype=attentions[0].dtype)
    result = eye.expand(b, n, n)
    for a in attentions:
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[fusion]
        if discard:
            flat = fused.reshape(b, -1).clone()
            for i in range(b):
                idx = flat[i].topk(int(flat.shape[-1] * discard), largest=False).indices
                idx = idx[idx != 0]
                flat[i, idx] = 0
            fused = flat.view(b, n, n)
        hat = fused + eye
        hat = hat / hat.sum(dim=-1, keepdim=True)
        result = hat @ result
    return result


def ref_gradient_rollout(attentions, gradients):
    """Chefer et al. 2021: R = I; R = R + mean_h((dy/dA * A)^+) R, layer by layer."""
    b, _, n, _ = attentions[0].shape
    r = torch.eye(n, dtype=attentions[0].dtype).expand(b, n, n)
    for a, g in zip(attentions, gradients):
        cam = (g * a).clamp(min=0).mean(dim=1)
        r = r + cam @ r
    return r


def ref_map(rows, prefix, grid, size):
    h, w = grid
    coarse = rows[:, prefix:].reshape(-1, 1, h, w)
    up = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    lo = up.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = up.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (up - lo) / (hi - lo)


def _score(logits, targets):
    return logits.gather(1, torch.tensor(targets)[:, None]).sum()


def timm_reference(model, x, targets):
    """Per block: A from the qkv output, dy/dA = dy/dO V^T from the gradient at proj's input."""
    seen: list[dict] = []
    handles = []
    blocks = list(model.blocks)
    for blk in blocks:
        handles.append(
            blk.attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append({"qkv": out}))
        )

        def pre(_m, args):
            rec = seen[-1]
            rec["o"] = args[0]
            args[0].register_hook(lambda g: rec.__setitem__("grad_o", g))

        handles.append(blk.attn.proj.register_forward_pre_hook(pre))
    try:
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        torch.autograd.grad(_score(logits, targets), xg)
    finally:
        for h in handles:
            h.remove()
    attentions, gradients = [], []
    for blk, rec in zip(blocks, seen):
        b, n, _ = rec["qkv"].shape
        heads, d = blk.attn.num_heads, blk.attn.head_dim
        q, k, v = rec["qkv"].reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, n, heads * d)
        torch.testing.assert_close(o, rec["o"])  # the recomputation is the model's attention
        grad_o = rec["grad_o"].reshape(b, n, heads, d).transpose(1, 2)
        attentions.append(a.detach())
        gradients.append((grad_o @ v.transpose(-2, -1)).detach())
    return attentions, gradients


def torchvision_reference(model, x, targets):
    """Per encoder block: A from the MHA input and in-projection, dy/dA via out_proj."""
    seen: list[dict] = []
    handles = []
    layers = list(model.encoder.layers)
    for layer in layers:
        mha = layer.self_attention
        handles.append(mha.register_forward_pre_hook(lambda _m, args: seen.append({"x": args[0]})))

        def post(_m, _args, out):
            rec = seen[-1]
            rec["out"] = out[0]
            out[0].register_hook(lambda g: rec.__setitem__("grad_out", g))

        handles.append(mha.register_forward_hook(post))
    try:
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        torch.autograd.grad(_score(logits, targets), xg)
    finally:
        for h in handles:
            h.remove()
    attentions, gradients = [], []
    for layer, rec in zip(layers, seen):
        mha = layer.self_attention
        b, n, e = rec["x"].shape
        heads, d = mha.num_heads, e // mha.num_heads
        qkv = rec["x"] @ mha.in_proj_weight.T + mha.in_proj_bias
        q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        a = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(b, n, e)
        torch.testing.assert_close(o @ mha.out_proj.weight.T + mha.out_proj.bias, rec["out"])
        grad_o = (rec["grad_out"] @ mha.out_proj.weight).reshape(b, n, heads, d).transpose(1, 2)
        attentions.append(a.detach())
        gradients.append((grad_o @ v.transpose(-2, -1)).detach())
    return attentions, gradients


def _check(model, x, targets, reference, method, prefix, grid, **options):
    attentions, gradients = reference
    if method == "attention_rollout":
        rows = ref_attention_rollout(
            attentions, options.get("head_fusion", "mean"), options.get("discard_ratio", 0.0)
        )[:, 0]
    else:
        rows = ref_gradient_rollout(attentions, gradients)[:, 0]
    result = attribute(model, x, target=targets, method=method, **options)
    assert result.maps.shape == (x.shape[0], 1, *x.shape[-2:])
    # (Hugging Face eager computes its softmax in float32 even in a float64 model)
    torch.testing.assert_close(result.extras["row"].double(), rows, atol=TOL, rtol=0)
    expected = ref_map(rows, prefix, grid, tuple(x.shape[-2:])).to(result.maps.dtype)
    torch.testing.assert_close(result.maps, expected, atol=TOL, rtol=0)
    return result


METHOD_NAMES = ("attention_rollout", "gradient_rollout")


# --------------------------------------------------------------------------------------------
# timm, fused attention on
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_timm_fused_equals_reference(method):
    model, x = _timm_vit(), _input()
    assert all(b.attn.fused_attn for b in model.blocks)  # the fused path is what runs
    _check(model, x, TARGETS, timm_reference(model, x, TARGETS), method, 1, (4, 4))
    assert all(b.attn.fused_attn for b in model.blocks)  # and is left as found


def test_timm_unfused_equals_reference():
    model, x = _timm_vit(), _input()
    for b in model.blocks:
        b.attn.fused_attn = False  # the softmax path
    ref = timm_reference(model, x, TARGETS)
    for method in METHOD_NAMES:
        _check(model, x, TARGETS, ref, method, 1, (4, 4))
    assert not any(b.attn.fused_attn for b in model.blocks)


@pytest.mark.parametrize(
    "fusion,discard", [("max", 0.0), ("min", 0.0), ("mean", 0.3), ("max", 0.5)]
)
def test_attention_rollout_options_equal_reference(fusion, discard):
    model, x = _timm_vit(), _input()
    result = _check(
        model,
        x,
        TARGETS,
        timm_reference(model, x, TARGETS),
        "attention_rollout",
        1,
        (4, 4),
        head_fusion=fusion,
        discard_ratio=discard,
    )
    # the options reach the computation: the map differs from the default (mean, no discard)
    default = attribute(model, x, target=TARGETS, method="attention_rollout")
    assert not torch.allclose(result.maps, default.maps)


def test_deit_two_prefix_tokens_read_the_grid():
    torch.manual_seed(0)
    model = _randomise(
        timm.models.deit.VisionTransformerDistilled(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
        )
    )
    assert model.num_prefix_tokens == 2
    x = _input()
    ref = timm_reference(model, x, TARGETS)
    for method in METHOD_NAMES:
        _check(model, x, TARGETS, ref, method, 2, (4, 4))


def test_register_tokens_read_the_grid():
    model, x = _timm_vit(reg_tokens=4), _input()
    assert model.num_prefix_tokens == 5
    ref = timm_reference(model, x, TARGETS)
    for method in METHOD_NAMES:
        _check(model, x, TARGETS, ref, method, 5, (4, 4))


def test_dynamic_img_size_non_square_input():
    model, x = _timm_vit(dynamic_img_size=True), _input(h=24, w=40)
    ref = timm_reference(model, x, TARGETS)
    for method in METHOD_NAMES:
        result = _check(model, x, TARGETS, ref, method, 1, (3, 5))
        assert result.maps.shape == (2, 1, 24, 40)  # the input's own size, not the model's
        assert result.extras["row"].shape[-1] == 1 + 3 * 5  # class token + the 3 x 5 grid


def test_average_pooled_models_explain_the_mean_patch_row():
    for class_token in (False, True):
        model, x = _timm_vit(class_token=class_token, global_pool="avg"), _input()
        prefix = int(class_token)
        attentions, gradients = timm_reference(model, x, TARGETS)
        n = attentions[0].shape[-1]
        start = torch.zeros(2, n, dtype=torch.float64)
        start[:, prefix:] = 1 / (n - prefix)
        rows = {
            "attention_rollout": start[:, None] @ ref_attention_rollout(attentions),
            "gradient_rollout": start[:, None] @ ref_gradient_rollout(attentions, gradients),
        }
        for method, expected in rows.items():
            result = attribute(model, x, target=TARGETS, method=method)
            torch.testing.assert_close(result.extras["row"], expected[:, 0], atol=TOL, rtol=0)
            torch.testing.assert_close(
                result.maps,
                ref_map(expected[:, 0], prefix, (4, 4), (32, 32)).to(result.maps.dtype),
                atol=TOL,
                rtol=0,
            )


def test_token_options_and_their_errors():
    model, x = _timm_vit(class_token=False, global_pool="avg"), _input()
    with pytest.raises(MethodError, match="no class token.*token='mean'"):
        attribute(model, x, target=1, method="gradient_rollout", token="cls")
    pooled = _timm_vit(global_pool="max")
    with pytest.raises(MethodError, match="global_pool='max'.*token="):
        attribute(pooled, x, target=1, method="attention_rollout")
    # an explicit token reads that row: the distillation-token row differs from the class row
    with pytest.raises(MethodError, match="token must be"):
        attribute(model, x, method="attention_rollout", token="first")
    with pytest.raises(MethodError, match="head_fusion"):
        attribute(model, x, method="attention_rollout", head_fusion="median")
    with pytest.raises(MethodError, match="discard_ratio"):
        attribute(model, x, method="attention_rollout", discard_ratio=1.0)


# --------------------------------------------------------------------------------------------
# torchvision (nn.MultiheadAttention called with need_weights=False) and Hugging Face
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_torchvision_equals_reference(method):
    torch.manual_seed(0)
    model = _randomise(
        torchvision.models.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=5,
        )
    )
    x = _input()
    result = _check(model, x, TARGETS, torchvision_reference(model, x, TARGETS), method, 1, (4, 4))
    assert result.extras["row"].shape == (2, 1 + 16)
    # the model is left as found: no hook on any module
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _hf_pair(implementation):
    transformers = pytest.importorskip("transformers")
    config = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(
        transformers.ViTConfig(**config, attn_implementation=implementation)
    )
    _randomise(model, std=0.3)
    eager = (
        transformers.ViTForImageClassification(
            transformers.ViTConfig(**config, attn_implementation="eager")
        )
        .double()
        .eval()
    )
    eager.load_state_dict(model.state_dict())
    return model, eager


def hf_reference(eager, x, targets):
    """Attention read from output_attentions=True (eager mode), gradients through them."""
    out = eager(x, output_attentions=True)
    attentions = list(out.attentions)
    gradients = torch.autograd.grad(_score(out.logits, targets), attentions)
    return [a.detach() for a in attentions], [g.detach() for g in gradients]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_hugging_face_equals_output_attentions_reference(implementation):
    model, eager = _hf_pair(implementation)
    x = _input()
    ref = hf_reference(eager, x, TARGETS)
    for method in METHOD_NAMES:
        _check(model, x, TARGETS, ref, method, 1, (4, 4))
    assert model.config._attn_implementation == implementation


# --------------------------------------------------------------------------------------------
# Properties and errors
# --------------------------------------------------------------------------------------------


def test_gradient_rollout_is_target_specific_and_attention_rollout_is_not():
    model, x = _timm_vit(), _input(b=1)
    grad = [attribute(model, x, target=t, method="gradient_rollout").maps for t in (0, 2)]
    assert (grad[0] - grad[1]).abs().max() > 1e-3
    plain = [attribute(model, x, target=t, method="attention_rollout").maps for t in (0, 2)]
    torch.testing.assert_close(plain[0], plain[1])


def test_batch_equals_single_calls():
    model, x = _timm_vit(), _input(b=3)
    targets = [4, 0, 2]
    batch = attribute(model, x, target=targets, method="gradient_rollout")
    for i, t in enumerate(targets):
        single = attribute(model, x[i : i + 1], target=t, method="gradient_rollout")
        torch.testing.assert_close(batch.maps[i : i + 1], single.maps, atol=1e-6, rtol=0)
    assert batch.targets.tolist() == targets


def test_swin_windowed_attention_raises_a_clear_error():
    torch.manual_seed(0)
    swin = timm.models.SwinTransformer(
        img_size=32,
        patch_size=4,
        window_size=4,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 2),
        num_classes=3,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    for method in METHOD_NAMES:
        with pytest.raises(MethodError, match="windowed attention.*gradcam"):
            attribute(swin, x, target=1, method=method)
    assert torch._C._len_torch_function_stack() == 0


def test_fast_and_amp_run():
    model, x = _timm_vit(), _input()
    plain = attribute(model.float(), x.float(), target=TARGETS, method="gradient_rollout")
    fast = attribute(model, x.float(), target=TARGETS, method="gradient_rollout", fast=True)
    torch.testing.assert_close(fast.maps, plain.maps, atol=1e-5, rtol=0)
    amp = attribute(model, x.float(), target=TARGETS, method="gradient_rollout", amp=True)
    assert amp.maps.dtype == torch.float32 and torch.isfinite(amp.maps).all()


# --------------------------------------------------------------------------------------------
# The capture itself
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "gqa", "scale"])
def test_explicit_sdpa_equals_the_fused_call(case):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=g, dtype=torch.float64)
    kv_heads = 2 if case == "gqa" else 4
    k = torch.randn(2, kv_heads, 6, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, kv_heads, 6, 8, generator=g, dtype=torch.float64)
    kwargs = {
        "plain": {},
        "bool_mask": {"attn_mask": torch.rand(6, 6, generator=g) > 0.3},
        "float_mask": {"attn_mask": torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)},
        "causal": {"is_causal": True},
        "gqa": {"enable_gqa": True},
        "scale": {"scale": 0.05},
    }[case]
    if case == "bool_mask":
        kwargs["attn_mask"][:, 0] = True  # no fully masked row
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    out, probs = explicit_sdpa(q, k, v, **kwargs)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))
    with AttentionCapture() as capture:
        captured = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.testing.assert_close(captured, expected)
    assert len(capture.records) == 1 and capture.records[0].tensor.shape == (2, 4, 6, 6)


@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
def test_multihead_attention_returns_what_the_caller_asked(need_weights, average):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 8)
    expected = mha(x, x, x, need_weights=need_weights, average_attn_weights=average)
    with AttentionCapture() as capture:
        got = mha(x, x, x, need_weights=need_weights, average_attn_weights=average)
    torch.testing.assert_close(got[0], expected[0])
    if need_weights:
        torch.testing.assert_close(got[1], expected[1])
    else:
        assert got[1] is None
    (record,) = capture.records
    heads = record.as_heads(3)
    assert heads.shape == (3, 2, 5, 5)
    torch.testing.assert_close(heads.mean(1), mha(x, x, x)[1])


def test_capture_is_thread_local():
    model, x = _timm_vit(), _input(b=1)
    other: list = []
    with AttentionCapture() as capture:
        worker = threading.Thread(target=lambda: other.append(model(x)))
        worker.start()
        worker.join()
    assert other and capture.records == []  # another thread's forward pass is not seen
