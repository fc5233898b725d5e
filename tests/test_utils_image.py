import io

import numpy as np
import pytest
import torch
from PIL import Image

from flashtorch.errors import ImageLoadError, InputError
from flashtorch.utils import (
    apply_transforms,
    denormalize,
    format_for_plotting,
    load_image,
    standardize_and_clip,
)


def _rgb(w=40, h=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_image_from_path_pil_bytes_fileobj(tmp_path):
    arr = _rgb()
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    for src in (
        path,
        str(path),
        path.read_bytes(),
        io.BytesIO(path.read_bytes()),
        Image.fromarray(arr),
    ):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (40, 30)
        assert np.array_equal(np.asarray(im), arr)


def test_load_image_numpy_hwc_chw_float_and_16bit():
    arr = _rgb()
    assert np.array_equal(np.asarray(load_image(arr)), arr)
    assert np.array_equal(np.asarray(load_image(arr.transpose(2, 0, 1))), arr)
    f = load_image(arr.astype(np.float32) / 255)
    assert np.abs(np.asarray(f).astype(int) - arr).max() <= 1
    sixteen = arr.astype(np.uint16) * 257
    assert np.abs(np.asarray(load_image(sixteen)).astype(int) - arr).max() <= 1
    gray = load_image(arr[..., 0])
    assert gray.mode == "RGB" and np.array_equal(np.asarray(gray)[..., 1], arr[..., 0])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_load_image_converts_modes(mode, tmp_path):
    base = Image.fromarray(_rgb())
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    else:
        im = base.convert(mode)
    suffix = ".tiff" if mode == "CMYK" else ".png"
    path = tmp_path / f"im{suffix}"
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert (out == 255).all()


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.jpg")
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(bad)
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError):
        load_image(np.zeros((2, 2, 7)))
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 3.0))
    with pytest.raises(ImageLoadError):
        load_image(12)


def test_apply_transforms_shape_values_and_batch():
    arr = np.full((300, 400, 3), 128, dtype=np.uint8)
    x = apply_transforms(arr)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(x[0, :, 100, 100], expected, atol=1e-5)
    b = apply_transforms([arr, _rgb(300, 260)], size=64)
    assert b.shape == (2, 3, 64, 64)
    assert torch.allclose(b[0], apply_transforms(arr, size=64)[0])


def test_apply_transforms_centre_crop_keeps_the_centre():
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, 100:200] = 255  # the central third is white
    x = denormalize(apply_transforms(arr, size=50))[..., 2:-2]  # edges blend when resizing
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)
    arr[:, 100:200] = 0
    arr[:, :100] = 255  # now the left third is white and must be cropped away
    assert denormalize(apply_transforms(arr, size=50))[..., 2:-2].abs().max() < 1e-5


def test_apply_transforms_bad_size():
    with pytest.raises(InputError):
        apply_transforms(_rgb(), size=0)


def test_denormalize_is_inverse_not_inplace_and_batch_aware():
    x = apply_transforms([_rgb(), _rgb(50, 60)], size=32)
    before = x.clone()
    d = denormalize(x)
    assert torch.equal(x, before)
    assert d.min() >= -1e-6 and d.max() <= 1 + 1e-6
    assert torch.allclose(denormalize(x[0]), d[0])
    view = x[0]  # a view, the case that crashed FlashTorch 0.1.3
    assert torch.allclose(denormalize(view), d[0])
    with pytest.raises(InputError):
        denormalize(torch.zeros(2, 2))


def test_standardize_and_clip_per_image():
    t = torch.stack([torch.randn(3, 8, 8) * 5, torch.randn(3, 8, 8) * 0.01])
    s = standardize_and_clip(t, saturation=0.1, brightness=0.5)
    assert s.min() >= 0 and s.max() <= 1
    for i in range(2):  # each image standardised by its own stats
        assert abs(s[i].mean().item() - 0.5) < 0.02
        assert abs(s[i].std(unbiased=False).item() - 0.1) < 0.02
    const = standardize_and_clip(torch.full((3, 4, 4), 7.0))
    assert torch.allclose(const, torch.full_like(const, 0.5))


def test_format_for_plotting():
    assert format_for_plotting(torch.zeros(1, 3, 5, 6)).shape == (5, 6, 3)
    assert format_for_plotting(torch.zeros(1, 5, 6)).shape == (5, 6)
    with pytest.raises(InputError, match="batch"):
        format_for_plotting(torch.zeros(2, 3, 5, 6))


# -- FlashTorch 0.1.3 compatibility (issue 17) --------------------------------------------------


def _torchvision_pipeline(size):
    T = pytest.importorskip("torchvision.transforms")
    return T.Compose(
        [
            T.Resize(size),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


@pytest.mark.parametrize(
    "hw", [(445, 502), (502, 445), (229, 231), (225, 1000), (100, 50), (300, 300), (224, 300)]
)
@pytest.mark.parametrize("size", [224, 299, 64])
def test_apply_transforms_equals_torchvision_exactly(hw, size):
    from PIL import Image

    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    image = Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    expected = _torchvision_pipeline(size)(image).unsqueeze(0)
    got = apply_transforms(image, size)
    assert got.shape == expected.shape and torch.equal(got.detach(), expected)


def test_apply_transforms_equals_torchvision_on_the_photos(image_dir):
    tv = _torchvision_pipeline(224)
    for path in sorted(image_dir.glob("*.jpg")):
        image = load_image(path)
        assert torch.equal(apply_transforms(image).detach(), tv(image).unsqueeze(0)), path.name


def test_apply_transforms_returns_a_leaf_that_requires_grad(tiny_cnn):
    # 0.1.3's users call .backward() and read input_.grad
    x = apply_transforms(np.full((40, 50, 3), 160, dtype=np.uint8), 32)
    assert x.requires_grad and x.is_leaf and x.grad is None and x.dtype == torch.float32
    tiny_cnn(x)[0, 1].backward()
    assert x.grad is not None and x.grad.shape == (1, 3, 32, 32)
    batch = apply_transforms([np.zeros((8, 8, 3), np.uint8)] * 2, 8)
    assert batch.requires_grad and batch.is_leaf


def test_methods_leave_a_requires_grad_input_alone(tiny_cnn):
    from flashtorch import METHODS

    from .conftest import CNN_METHODS, FAST_OPTIONS

    x = apply_transforms(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8), 32)
    before = x.detach().clone()
    for name in CNN_METHODS:
        result = METHODS[name](tiny_cnn, **FAST_OPTIONS.get(name, {}))(x, 1)
        assert not result.maps.requires_grad, name
        assert x.requires_grad and x.is_leaf and x.grad is None, name
        assert torch.equal(x.detach(), before), name
