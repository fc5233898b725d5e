"""Unit tests of the feature-visualisation pieces: parametrisations, transforms, objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flashtorch.activmax import objectives as O
from flashtorch.activmax import param as P
from flashtorch.activmax import transforms as T
from flashtorch.errors import InputError, TargetError

# ------------------------------------------------------------------------------------------
# Parametrisations
# ------------------------------------------------------------------------------------------


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_fft_scale_matches_numpy_reference():
    h, w = 6, 7
    src = P.fft((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1][None, :]
    fx = np.abs(fx)  # rfftfreq is the non-negative half
    freqs = np.sqrt(fx**2 + fy**2)
    ref = 1.0 / np.maximum(freqs, 1.0 / max(h, w))
    np.testing.assert_allclose(src.scale.numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("size", [(16, 16), (15, 9), (8, 13)])
def test_fft_set_image_is_an_exact_inverse(size):
    src = P.fft(size, batch=2)
    x = torch.rand(2, 3, *size, generator=_gen())
    src.set_image(x)
    torch.testing.assert_close(src(), x, atol=1e-5, rtol=0)


def test_fft_forward_matches_manual_irfft():
    src = P.fft((8, 10))
    src.initialize(_gen(3))
    spec = torch.view_as_complex(src.value.detach()) * src.scale
    ref = torch.fft.irfftn(spec, s=(8, 10), norm="ortho") / 4.0
    torch.testing.assert_close(src().detach(), ref)


def test_fft_noise_is_low_frequency_heavy():
    # The 1/f scaling puts more energy in low frequencies than white pixel noise has.
    src = P.fft(64, batch=4, sd=1.0)
    src.initialize(_gen(0))
    img = src().detach()
    spec = torch.fft.rfftn(img, norm="ortho").abs() ** 2
    low = spec[..., :4, :4].mean()
    high = spec[..., 24:32, 24:32].mean()
    assert low > 50 * high


def test_decorrelate_matrix_and_inverse():
    stage = P.decorrelate()
    c = torch.tensor(P.COLOR_CORRELATION_SVD_SQRT)
    assert torch.allclose(stage.matrix.norm(dim=0).max(), torch.tensor(1.0))
    torch.testing.assert_close(stage.matrix, c / 0.46195237849804394, atol=1e-6, rtol=0)
    z = torch.randn(2, 3, 5, 4, generator=_gen())
    y = stage(z)
    # pixel (0, 0) of image 0 by hand
    torch.testing.assert_close(y[0, :, 0, 0], stage.matrix @ z[0, :, 0, 0])
    torch.testing.assert_close(stage.inverse(y), z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fft", [True, False])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_image_init_from_photo_round_trips(fft, decorrelate):
    photo = torch.rand(1, 3, 12, 10, generator=_gen()) * 0.9 + 0.05
    p = P.image(fft=fft, decorrelate=decorrelate, init=photo)
    assert p.shape == (1, 3, 12, 10)
    p.initialize(_gen())
    torch.testing.assert_close(p().detach(), photo, atol=1e-4, rtol=0)


def test_image_default_is_valid_rgb_and_seeded():
    a, b, c = P.image((20, 30), batch=3), P.image((20, 30), batch=3), P.image((20, 30), batch=3)
    a.initialize(_gen(1))
    b.initialize(_gen(1))
    c.initialize(_gen(2))
    xa = a().detach()
    assert xa.shape == (3, 3, 20, 30)
    assert 0 < xa.min() and xa.max() < 1
    assert torch.equal(xa, b().detach())
    assert not torch.equal(xa, c().detach())


def test_chain_equals_manual_composition():
    src = P.pixel(6, batch=2)
    chained = P.chain(src, P.decorrelate(), P.sigmoid())
    chained.initialize(_gen())
    manual = torch.sigmoid(P.decorrelate()(src.value.detach()))
    torch.testing.assert_close(chained().detach(), manual)
    assert [n for n, _ in chained.named_parameters()] == ["source.value"]


def test_param_errors():
    with pytest.raises(InputError, match="size"):
        P.image(0)
    with pytest.raises(InputError, match="batch"):
        P.pixel(8, batch=0)
    with pytest.raises(InputError, match="source"):
        P.chain(P.sigmoid())  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        P.image(init=torch.rand(1, 4, 8, 8))
    with pytest.raises(InputError, match="initialize"):
        P.pixel(4)()


# ------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------


def test_pad_sizes_and_value():
    x = torch.zeros(1, 3, 4, 5)
    y = T.pad(2, value=0.5)(x)
    assert y.shape == (1, 3, 8, 9)
    assert y[0, 0, 0, 0] == 0.5 and y[0, 0, 2, 2] == 0.0


def test_jitter_is_a_crop():
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    y = T.jitter(4)(x, _gen(5))
    assert y.shape == (2, 3, 7, 7)
    oy = int((y[0, 0, 0, 0] // 10).item())
    ox = int((y[0, 0, 0, 0] % 10).item())
    assert 0 <= oy < 4 and 0 <= ox < 4
    assert torch.equal(y, x[..., oy : oy + 7, ox : ox + 7])


def test_random_scale_resizes_and_keeps_constants():
    x = torch.full((1, 3, 10, 12), 0.25)
    y = T.random_scale([1.5])(x, _gen())
    assert y.shape == (1, 3, 15, 18)
    torch.testing.assert_close(y, torch.full_like(y, 0.25))


def test_rotate_90_equals_rot90_and_0_is_identity():
    x = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6)
    torch.testing.assert_close(T.rotate(x, 90.0), torch.rot90(x, 1, (2, 3)))
    torch.testing.assert_close(T.rotate(x, 0.0), x)
    assert torch.equal(T.random_rotate([0])(x, _gen()), x)


def _blob(h, w, sigma=4.0):
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    return torch.exp(-(yy.float() ** 2 + xx.float() ** 2) / (2 * sigma**2))[None, None]


def test_rotate_non_square_keeps_a_round_blob_round():
    # A rotation leaves a centred round blob unchanged; a shear (ignoring H != W) would not.
    blob = _blob(21, 41)
    # (a rotation that ignores the aspect ratio is off by 0.25 here)
    assert (T.rotate(blob, 30.0) - blob).abs().max() < 0.06
    # a non-round pattern does change
    wide = torch.exp(-((torch.arange(41.0) - 20) ** 2) / 50).view(1, 1, 1, 41).expand(1, 1, 21, 41)
    assert (T.rotate(wide, 30.0) - wide).abs().max() > 0.3


def test_standard_transforms_seeded_and_differentiable():
    t = T.standard_transforms()
    assert len(t) == 5
    x = torch.rand(2, 3, 32, 32, generator=_gen(), requires_grad=True)
    a = t(x, _gen(7))
    b = t(x, _gen(7))
    assert torch.equal(a, b)
    outs = {tuple(t(x, _gen(s)).shape) for s in range(12)}
    assert len(outs) > 1  # the random scale changes the size
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_as_transform_variants():
    assert len(T.as_transform(None)) == 0
    assert len(T.as_transform("standard")) == 5
    assert len(T.as_transform([T.pad(1), T.jitter(2)])) == 2
    with pytest.raises(InputError, match="standard"):
        T.as_transform("lucid")


# ------------------------------------------------------------------------------------------
# Objectives, on a fake context with known activations
# ------------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, acts, output=None, images=None, batch=2):
        self.acts = acts
        self.output = output
        self.images = images if images is not None else torch.zeros(batch, 3, 4, 4)

    def activation(self, layer):
        return self.acts[layer]

    def layer_name(self, layer):
        return layer


def _acts(b=2, c=4, h=3, w=5, seed=0):
    return torch.randn(b, c, h, w, generator=_gen(seed))


def test_channel_neuron_layer_values():
    a = _acts()
    ctx = Ctx({"l": a})
    torch.testing.assert_close(O.channel("l", 2)(ctx), a[:, 2].mean((1, 2)))
    torch.testing.assert_close(
        O.channel("l", [1, 3])(ctx), torch.stack([a[0, 1].mean(), a[1, 3].mean()])
    )
    torch.testing.assert_close(O.neuron("l", 1)(ctx), a[:, 1, 1, 2])
    torch.testing.assert_close(
        O.neuron("l", [0, 2], x=4, y=0)(ctx), torch.stack([a[0, 0, 0, 4], a[1, 2, 0, 4]])
    )
    torch.testing.assert_close(O.layer("l")(ctx), (a**2).mean((1, 2, 3)))


def test_channel_on_linear_layer():
    a = torch.randn(2, 6, generator=_gen())
    torch.testing.assert_close(O.channel("fc", 4)(Ctx({"fc": a})), a[:, 4])


def test_class_logit_and_range():
    logits = torch.randn(2, 7, generator=_gen())
    ctx = Ctx({}, output=logits)
    torch.testing.assert_close(O.class_logit(3)(ctx), logits[:, 3])
    torch.testing.assert_close(
        O.class_logit([6, 0])(ctx), torch.stack([logits[0, 6], logits[1, 0]])
    )
    with pytest.raises(TargetError, match=r"0\.\.6"):
        O.class_logit(7)(ctx)


def test_direction_reference():
    a = _acts()
    v = torch.tensor([1.0, -2.0, 0.0, 2.0])
    ref = (a * (v / 3.0).view(1, 4, 1, 1)).sum(1).mean((1, 2))
    torch.testing.assert_close(O.direction("l", v)(Ctx({"l": a})), ref)
    with pytest.raises(InputError, match="4 channels"):
        O.direction("l", [1.0, 2.0])(Ctx({"l": a}))


def test_diversity_hand_computed():
    a = torch.zeros(2, 2, 1, 2)
    a[0, 0] = torch.tensor([[1.0, 0.0]])  # Gram [[1, 0], [0, 0]]
    a[1, 0] = torch.tensor([[1.0, 0.0]])
    a[1, 1] = torch.tensor([[1.0, 0.0]])  # Gram [[1, 1], [1, 1]] -> cos = 1 / 2
    d = O.diversity("l")(Ctx({"l": a}))
    torch.testing.assert_close(d, torch.tensor([-0.25, -0.25]))
    with pytest.raises(InputError, match="at least 2"):
        O.diversity("l")(Ctx({"l": a[:1]}, batch=1))


def test_penalties_hand_computed():
    img = torch.zeros(1, 3, 2, 2)
    img[0, :, 0, 0] = 1.0
    ctx = Ctx({}, images=img, batch=1)
    # |dx|: rows [1,0]->1, [0,0]->0 -> mean over 3*2*1 = 1/2 ; |dy| likewise 1/2
    torch.testing.assert_close(O.total_variation()(ctx), torch.tensor([1.0]))
    torch.testing.assert_close(O.l2()(ctx), torch.tensor([(0.25 * 9 + 0.25 * 3) / 12]))


def test_algebra():
    a = _acts()
    ctx = Ctx({"l": a})
    c0, c1 = O.channel("l", 0), O.channel("l", 1)
    v0, v1 = c0(ctx), c1(ctx)
    torch.testing.assert_close((c0 + 2 * c1 - c0 / 4)(ctx), v0 + 2 * v1 - v0 / 4)
    torch.testing.assert_close((1 - c0)(ctx), 1 - v0)
    torch.testing.assert_close((-c1 * 3)(ctx), -3 * v1)
    torch.testing.assert_close(sum([c0, c1, c0])(ctx), 2 * v0 + v1)
    torch.testing.assert_close(O.Objective.sum([c0, c1])(ctx), v0 + v1)
    combo = O.channel("l", [0, 1]) - 0.1 * O.diversity("m")
    assert combo.batch == 2 and combo.layers == ("l", "m") and not combo.needs_output
    assert (c0 + O.class_logit(1)).needs_output


def test_objective_errors():
    ctx = Ctx({"l": _acts(c=4)})
    with pytest.raises(InputError, match=r"0\.\.3"):
        O.channel("l", 4)(ctx)
    with pytest.raises(InputError, match=r"0\.\.3"):
        O.channel("l", -1)(ctx)
    with pytest.raises(InputError, match="batch of 2"):
        O.channel("l", [0, 1, 2])(ctx)
    with pytest.raises(InputError, match="cannot be combined"):
        O.channel("l", [0, 1]) + O.channel("l", [0, 1, 2])
    with pytest.raises(InputError, match="outside"):
        O.neuron("l", 0, x=5)(ctx)
    with pytest.raises(InputError, match="int"):
        O.channel("l", 1.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="one value per image"):
        O.Objective(lambda c: torch.zeros(3))(ctx)


def test_numpy_and_tensor_indices_accepted():
    a = _acts()
    ctx = Ctx({"l": a})
    torch.testing.assert_close(O.channel("l", np.int64(2))(ctx), a[:, 2].mean((1, 2)))
    torch.testing.assert_close(O.channel("l", torch.tensor(1))(ctx), a[:, 1].mean((1, 2)))
    assert math.isclose(float(O.channel("l", range(2))(ctx)[1]), float(a[1, 1].mean()))


def test_objective_module_layer_key():
    conv = nn.Conv2d(3, 4, 1)
    obj = O.channel(conv, 0) + O.layer(conv)
    assert len(obj.layers) == 1 and obj.layers[0] is conv
