"""Metrics: pointing game, energy pointing game, deletion/insertion, randomisation sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashtorch import Attribution
from flashtorch._surgery import hook_count
from flashtorch.errors import InputError, LayerError
from flashtorch.metrics import (
    boxes_to_masks,
    cascade_layers,
    deletion,
    energy_pointing_game,
    gaussian_blur,
    insertion,
    model_randomization,
    pointing_game,
    randomize_parameters,
    spearman,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def square_mask(h=8, w=8, y0=2, y1=5, x0=3, x1=6, batch=1):
    m = torch.zeros(batch, 1, h, w, dtype=torch.bool)
    m[:, :, y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------------------------
# Pointing game and energy
# --------------------------------------------------------------------------------------------


def test_map_on_the_mask_scores_one_and_off_the_mask_zero():
    mask = square_mask()
    on = torch.zeros(1, 1, 8, 8)
    on[0, 0, 3, 4] = 5.0
    on[0, 0, 2, 3] = 1.0  # all energy inside the mask
    off = torch.zeros(1, 1, 8, 8)
    off[0, 0, 7, 0] = 2.0
    assert pointing_game(on, mask).tolist() == [1.0]
    assert energy_pointing_game(on, mask).tolist() == [1.0]
    assert pointing_game(off, mask).tolist() == [0.0]
    assert energy_pointing_game(off, mask).tolist() == [0.0]


def test_energy_is_the_share_inside_by_hand():
    mask = square_mask()  # 3 x 3 = 9 pixels
    maps = torch.ones(1, 1, 8, 8)
    maps[mask] = 3.0
    # inside 9 * 3 = 27, outside 55 * 1 = 55
    torch.testing.assert_close(energy_pointing_game(maps, mask), torch.tensor([27 / 82]))
    # negative values count as zero energy
    maps[0, 0, 0, 0] = -100.0
    torch.testing.assert_close(
        energy_pointing_game(maps, mask, reduce="sum"), torch.tensor([27 / 81])
    )


def test_uninformative_maps_score_the_area_fraction():
    mask = square_mask()
    flat = torch.full((1, 1, 8, 8), 0.7)
    torch.testing.assert_close(pointing_game(flat, mask), torch.tensor([9 / 64]))
    torch.testing.assert_close(energy_pointing_game(flat, mask), torch.tensor([9 / 64]))
    assert energy_pointing_game(torch.zeros(1, 1, 8, 8), mask).tolist() == [0.0]


def test_tolerance_grows_the_region_by_a_disc():
    mask = square_mask()  # columns 3..5, rows 2..4
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 3, 7] = 1.0  # two pixels right of the mask
    assert pointing_game(maps, mask, tolerance=1).tolist() == [0.0]
    assert pointing_game(maps, mask, tolerance=2).tolist() == [1.0]
    diag = torch.zeros(1, 1, 8, 8)
    diag[0, 0, 6, 7] = 1.0  # (dy, dx) = (2, 2) from the corner (4, 5): distance 2.83
    assert pointing_game(diag, mask, tolerance=2).tolist() == [0.0]
    assert pointing_game(diag, mask, tolerance=3).tolist() == [1.0]


def test_boxes_masks_channels_and_attributions_agree():
    mask = square_mask(batch=2)
    boxes = torch.tensor([[3, 2, 6, 5], [3, 2, 6, 5]])
    assert torch.equal(boxes_to_masks(boxes, (8, 8)), mask)
    maps = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.5
    reduced = maps.abs().amax(1, keepdim=True)
    expected = energy_pointing_game(reduced, mask)
    torch.testing.assert_close(energy_pointing_game(maps, boxes=boxes), expected)
    attribution = Attribution(maps, "x", None, torch.zeros(2), torch.zeros(2))
    torch.testing.assert_close(energy_pointing_game(attribution, mask[:, 0]), expected)
    torch.testing.assert_close(pointing_game(maps, mask), pointing_game(reduced, boxes=boxes))


def test_low_resolution_maps_are_resized_to_the_mask():
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4, 4:] = True  # top-right quadrant
    coarse = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    assert pointing_game(coarse, mask).tolist() == [1.0]
    assert float(energy_pointing_game(coarse, mask)) > 0.5


def test_localisation_errors():
    maps = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError, match="exactly one"):
        pointing_game(maps)
    with pytest.raises(InputError, match="exactly one"):
        pointing_game(maps, square_mask(batch=2), boxes=torch.tensor([[0, 0, 1, 1]] * 2))
    with pytest.raises(InputError, match="ground-truth regions"):
        pointing_game(maps, square_mask(batch=3))
    with pytest.raises(InputError, match="x1 > x0"):
        energy_pointing_game(maps, boxes=torch.tensor([[4, 0, 2, 3]] * 2))
    with pytest.raises(InputError, match="tolerance"):
        pointing_game(maps, square_mask(batch=2), tolerance=-1)


# --------------------------------------------------------------------------------------------
# Deletion / insertion
# --------------------------------------------------------------------------------------------


def linear_model(weights=(4.0, 3.0, 2.0, 1.0), two_classes=False):
    lin = nn.Linear(4, 2 if two_classes else 1, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0] = torch.tensor(weights)
    return nn.Sequential(nn.Flatten(), lin)


def test_deletion_and_insertion_auc_by_hand():
    model = linear_model()
    x = torch.ones(1, 1, 2, 2)
    good = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2)  # = w * x, the true contributions
    # Deletion removes 4, 3, 2, 1 in turn (baseline 0): logits 10, 6, 3, 1, 0.
    d = deletion(model, x, good, target=0, step=1, score="logit")
    assert d.scores.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    torch.testing.assert_close(d.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    # 0.25 * ((10+6)/2 + (6+3)/2 + (3+1)/2 + (1+0)/2) = 3.75
    torch.testing.assert_close(d.auc, torch.tensor([3.75]))
    # Insertion from the constant baseline: 0, 4, 7, 9, 10 -> AUC 6.25.
    i = insertion(model, x, good, target=0, step=1, score="logit", baseline="constant")
    assert i.scores.tolist() == [[0.0, 4.0, 7.0, 9.0, 10.0]]
    torch.testing.assert_close(i.auc, torch.tensor([6.25]))
    # The reversed map is the worst ranking: the two AUCs swap.
    bad = good.flip(-1).flip(-2)
    torch.testing.assert_close(
        deletion(model, x, bad, target=0, step=1, score="logit").auc, torch.tensor([6.25])
    )
    # A float step of 0.5 removes two pixels at a time: 10, 3, 0 -> 0.5 * (6.5 + 1.5) = 4.
    half = deletion(model, x, good, target=0, step=0.5, score="logit")
    assert half.scores.tolist() == [[10.0, 3.0, 0.0]]
    torch.testing.assert_close(half.auc, torch.tensor([4.0]))


def test_probability_score_by_hand():
    # Two classes with logits (w.x, 0): p(class 0) = sigmoid(w.x).
    model = linear_model(two_classes=True)
    x = torch.ones(1, 1, 2, 2)
    good = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2)
    d = deletion(model, x, good, target=0, step=1)
    probs = [1 / (1 + math.exp(-z)) for z in (10, 6, 3, 1, 0)]
    torch.testing.assert_close(d.scores, torch.tensor([probs]))
    expected = sum(0.25 * (a + b) / 2 for a, b in zip(probs[:-1], probs[1:]))
    torch.testing.assert_close(d.auc, torch.tensor([expected]))
    assert d.targets.tolist() == [0]


def test_curves_are_batched_consistently_and_leave_everything_alone():
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )
    model.train()
    x = torch.randn(3, 3, 6, 6, generator=gen)
    x_copy = x.clone()
    maps = torch.rand(3, 3, 6, 6, generator=gen)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a = deletion(model, x, maps, step=4, batch_size=1)
    b = deletion(model, x, maps, step=4, batch_size=1000)
    torch.testing.assert_close(a.scores, b.scores)
    assert a.scores.shape == (3, 10)  # ceil(36 / 4) + 1
    # Endpoints: the original image and the all-baseline image (constant 0 for deletion).
    with torch.no_grad():
        p0 = model.eval()(x).softmax(1)
        pz = model(torch.zeros_like(x)).softmax(1)
        pb = model(gaussian_blur(x)).softmax(1)
    model.train()
    idx = p0.argmax(1)
    torch.testing.assert_close(a.scores[:, 0], p0.gather(1, idx[:, None])[:, 0])
    torch.testing.assert_close(a.scores[:, -1], pz.gather(1, idx[:, None])[:, 0])
    ins = insertion(model, x, maps, step=4)  # default baseline: blur
    torch.testing.assert_close(ins.scores[:, 0], pb.gather(1, idx[:, None])[:, 0])
    torch.testing.assert_close(ins.scores[:, -1], p0.gather(1, idx[:, None])[:, 0])
    assert model.training and torch.equal(x, x_copy)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and hook_count(model) == 0


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(2, 3, 20, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = gaussian_blur(x, sigma=5.0, kernel_size=11)
    ref = np.stack(
        [
            np.stack(
                [
                    gaussian_filter(x[b, c].numpy(), 5.0, mode="mirror", truncate=1.0)
                    for c in range(3)
                ]
            )
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_faithfulness_errors():
    model = linear_model()
    x = torch.ones(2, 1, 2, 2)
    maps = torch.rand(2, 1, 2, 2)
    with pytest.raises(InputError, match="step"):
        deletion(model, x, maps, target=0, step=0)
    with pytest.raises(InputError, match="step"):
        deletion(model, x, maps, target=0, step=1.5)
    with pytest.raises(InputError, match="maps for 2 images"):
        deletion(model, x, maps[:1], target=0)
    with pytest.raises(InputError, match="baseline"):
        insertion(model, x, maps, target=0, baseline="noise")


# --------------------------------------------------------------------------------------------
# Sanity check: model-parameter randomisation
# --------------------------------------------------------------------------------------------


def test_spearman_and_ssim_match_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(2)
    a = torch.rand(3, 1, 16, 16, generator=gen)
    b = (a + 0.5 * torch.rand(3, 1, 16, 16, generator=gen)).round(decimals=1)  # many ties
    rho = spearman(a, b)
    ref = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(3)]
    np.testing.assert_allclose(rho.numpy(), ref, rtol=1e-5)
    b01 = b / b.max()
    s = ssim(a, b01)
    ref_s = [
        structural_similarity(
            a[i, 0].double().numpy(),
            b01[i, 0].double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(s.numpy(), ref_s, rtol=1e-5)
    assert spearman(a, torch.ones_like(a)).tolist() == [0.0, 0.0, 0.0]


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.amax((2, 3)))


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained for a few steps on 32 px synthetic scenes, and a batch of them."""
    from flashtorch.datasets import SyntheticLocalization

    kw = dict(size=32, patch_fraction=(0.4, 0.5), periods=(3.0, 4.0), distractors=(1, 3))
    x, y, _ = SyntheticLocalization(256, seed=0, **kw).stack()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_x, _, _ = SyntheticLocalization(8, seed=1, **kw).stack()
    return model, test_x


def edge_filter(model, inputs, target):
    """A 'method' that ignores the model: the image's Sobel gradient magnitude."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.T]).unsqueeze(1)
    g = F.conv2d(inputs.mean(1, keepdim=True), k, padding=1)
    return g.pow(2).sum(1, keepdim=True).sqrt()


def test_cascade_order_is_execution_order_reversed():
    class Backwards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)  # defined first, runs last
            self.body = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    assert cascade_layers(Backwards(), torch.randn(1, 3, 8, 8)) == ["head", "body"]
    model = TinyCNN()
    assert cascade_layers(model, torch.randn(2, 3, 8, 8)) == ["fc", "bn2", "conv2", "bn1", "conv1"]
    assert hook_count(model) == 0


def test_randomize_parameters_redraws_weights_and_resets_normalisation():
    conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
    with torch.no_grad():
        conv.weight.fill_(7.0)
        bn.weight.fill_(3.0)
        bn.running_mean.fill_(2.0)
    randomize_parameters(nn.Sequential(conv, bn), torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(3 * 3 * 3)
    w = conv.weight.detach()
    assert float(w.abs().max()) <= bound and float(w.std()) > bound / 4
    assert float(conv.bias.detach().abs().max()) <= bound
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.zeros(8))
    assert torch.equal(bn.running_var, torch.ones(8))


def test_weight_blind_method_keeps_correlation_one(trained):
    model, x = trained
    result = model_randomization(model, x, method=edge_filter, steps=3)
    assert result.spearman.shape == (3, 8) and result.ssim.shape == (3, 8)
    assert float(result.spearman.min()) > 0.999
    assert float(result.ssim.min()) > 0.999


def test_gradients_decorrelate_when_the_model_is_randomised(trained):
    model, x = trained
    result = model_randomization(model, x, method="gradient", steps=5)
    assert result.layers == ["fc", "bn2", "conv2", "bn1", "conv1"]
    final = result.spearman[-1]
    assert float(final.mean()) < 0.4, result.spearman.mean(1)
    assert float(result.ssim[-1].mean()) < 0.4, result.ssim.mean(1)
    # The edge filter stays far above plain gradients on the same images.
    edges = model_randomization(model, x, method=edge_filter, steps=5)
    assert float(edges.spearman[-1].mean()) > float(final.mean()) + 0.5


def test_randomisation_never_touches_the_model_and_is_seeded(trained):
    model, x = trained
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        a = model_randomization(model, x[:2], method="gradient", steps=2, seed=3)
        b = model_randomization(model, x[:2], method="gradient", steps=2, seed=3)
        c = model_randomization(model, x[:2], method="gradient", steps=2, seed=4)
        assert model.training
    finally:
        model.eval()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and hook_count(model) == 0
    assert torch.equal(a.maps, b.maps) and torch.equal(a.spearman, b.spearman)
    assert not torch.equal(a.maps, c.maps)
    # Targets are fixed from the intact model: an explicit target is kept.
    d = model_randomization(model, x[:2], target=[1, 2], method="gradient", steps=1)
    assert d.targets.tolist() == [1, 2]


def test_independent_randomisation_and_named_layers(trained):
    model, x = trained
    only_fc = model_randomization(model, x[:2], method="gradient", layers=["fc"], cascade=False)
    assert only_fc.layers == ["fc"] and only_fc.groups == [["fc"]]
    grouped = model_randomization(
        model, x[:2], method="gradient", layers=[["fc", "bn2"], "conv2"], cascade=False
    )
    assert grouped.layers == ["fc .. bn2", "conv2"]
    with pytest.raises(LayerError):
        model_randomization(model, x[:2], method="gradient", layers=["nope"])
