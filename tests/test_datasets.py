"""The synthetic localisation dataset: reproducible by seed, masks exactly on the class patch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from flashtorch.datasets import CLASSES, SyntheticLocalization
from flashtorch.errors import InputError
from flashtorch.utils.image import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")


def small(length: int = 8, seed: int = 0, **kw) -> SyntheticLocalization:
    return SyntheticLocalization(length, size=64, seed=seed, **kw)


def test_items_have_documented_shapes_and_types():
    data = SyntheticLocalization(4, seed=3)
    image, label, mask = data[1]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert mask.shape == (1, 224, 224) and mask.dtype == torch.bool
    assert isinstance(label, int) and label == 1 and data.classes[label] == CLASSES[1]
    assert len(data) == 4 and data.num_classes == 4


def test_same_seed_same_images_in_any_order():
    a, b = small(seed=5), small(seed=5)
    later = [b[i] for i in (7, 3, 0)]  # other order, other instance
    for i, (img, label, mask) in zip((7, 3, 0), later):
        ref = a[i]
        assert torch.equal(ref[0], img) and ref[1] == label and torch.equal(ref[2], mask)
    assert torch.equal(a[-1][0], a[7][0])


def test_different_seeds_and_indices_differ():
    a, b = small(seed=0), small(seed=1)
    assert not torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], a[4][0])  # same label, different image
    assert not torch.equal(a[0][2], a[4][2])  # patch elsewhere


def test_mask_covers_exactly_the_patch():
    data = small(length=12)
    for i in range(len(data)):
        s = data.sample(i)
        mask = s.mask[0]
        x0, y0, x1, y1 = s.box.tolist()
        # The mask is exactly the box.
        box = torch.zeros_like(mask)
        box[y0:y1, x0:x1] = True
        assert torch.equal(mask, box)
        # Outside the mask the image is the patch-free scene, pixel for pixel.
        assert torch.equal(s.image[:, ~mask], s.background[:, ~mask])
        # Inside, it is the two-colour texture: exactly two colours, each on a good share.
        inside = s.image[:, mask].T
        colours, counts = torch.unique(inside, dim=0, return_counts=True)
        assert len(colours) == 2
        assert counts.min() >= 0.15 * mask.sum()
        # ... and the patch is not invisible: most of it differs from what was underneath.
        changed = (s.image != s.background).any(0)
        assert changed[mask].float().mean() > 0.5


def test_patch_size_follows_patch_fraction():
    data = small(length=16, patch_fraction=(0.25, 0.3))
    for i in range(len(data)):
        x0, y0, x1, y1 = data.sample(i).box.tolist()
        assert x1 - x0 == y1 - y0
        assert round(0.25 * 64) <= x1 - x0 <= round(0.3 * 64)
        assert 0 <= x0 and x1 <= 64 and 0 <= y0 and y1 <= 64


def test_label_decides_the_patch_texture():
    # Labels are balanced and cycle through the classes.
    data = small(length=12)
    assert [data[i][1] for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    # Rings are centred on the patch: the patch equals itself turned by 180 degrees. The other
    # textures have a random phase and are not point-symmetric.
    for i in range(12):
        s = data.sample(i)
        x0, y0, x1, y1 = s.box.tolist()
        patch = s.image[:, y0:y1, x0:x1]
        symmetric = torch.equal(patch, patch.flip(-1).flip(-2))
        assert symmetric == (CLASSES[s.label] == "rings"), (i, CLASSES[s.label])


def test_normalised_and_raw_images_agree():
    raw = small(normalize=False)
    norm = small(normalize=True)
    x01 = raw[2][0]
    assert float(x01.min()) >= 0.0 and float(x01.max()) <= 1.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(norm[2][0] * std + mean, x01, rtol=0, atol=1e-6)


def test_stack_and_dataloader_batch_items():
    data = small(length=6)
    images, labels, masks = data.stack([0, 1, 2])
    assert images.shape == (3, 3, 64, 64) and labels.tolist() == [0, 1, 2]
    assert masks.shape == (3, 1, 64, 64) and masks.dtype == torch.bool
    x, y, m = next(iter(DataLoader(data, batch_size=3)))
    assert torch.equal(x, images) and torch.equal(y, labels) and torch.equal(m, masks)


def test_bad_arguments_raise_precise_errors():
    with pytest.raises(InputError, match="size"):
        SyntheticLocalization(4, size=8)
    with pytest.raises(InputError, match="patch_fraction"):
        SyntheticLocalization(4, patch_fraction=(0.5, 0.2))
    with pytest.raises(InputError, match="length"):
        SyntheticLocalization(-1)
    with pytest.raises(InputError, match="seed"):
        SyntheticLocalization(4, seed=-3)
    with pytest.raises(IndexError):
        small(length=3)[3]
    with pytest.raises(TypeError):
        small(length=3)["0"]  # type: ignore[index]
