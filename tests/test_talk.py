"""The talk's demos 1 and 2, line by line (image path and model swapped for ours)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the talk's notebooks use pyplot)
import pytest  # noqa: E402
import torch  # noqa: E402


def test_demo_1_and_2_run_as_shown(pretrained, image_dir, capsys):
    # In [2]
    from flashtorch.utils import load_image

    image = load_image(str(image_dir / "chelsea.jpg"))

    plt.imshow(image)
    plt.title("Original image")
    plt.axis("off")  # noqa: E703

    # In [3]
    from flashtorch.utils import apply_transforms, denormalize, format_for_plotting

    input_ = apply_transforms(image)

    print(f"Before: {type(image)}")
    print(f"After: {type(input_)}, {input_.shape}")

    plt.imshow(format_for_plotting(denormalize(input_)))
    plt.title("Input tensor")
    plt.axis("off")  # noqa: E703

    # In [4]
    from flashtorch.saliency import Backprop

    model = pretrained  # the talk: models.alexnet(pretrained=True)

    backprop = Backprop(model)

    # In [5]
    from flashtorch.utils import ImageNetIndex

    imagenet = ImageNetIndex()
    target_class = imagenet["great grey owl"]

    print(f"Traget class index: {target_class}")

    with pytest.warns(UserWarning, match="does not equal the target class"):
        gradients = backprop.calculate_gradients(input_, target_class)

        max_gradients = backprop.calculate_gradients(input_, target_class, take_max=True)

    print(type(gradients), gradients.shape)
    print(type(max_gradients), max_gradients.shape)

    # In [6]
    from flashtorch.utils import visualize

    fig = visualize(input_, gradients, max_gradients)

    # In [7] - guided backprop, now for the class in the photo
    target_class = imagenet["tabby"]
    guided_gradients = backprop.calculate_gradients(input_, target_class, guided=True)

    max_guided_gradients = backprop.calculate_gradients(
        input_, target_class, take_max=True, guided=True
    )

    fig2 = visualize(input_, guided_gradients, max_guided_gradients)
    plt.close("all")

    out = capsys.readouterr().out
    assert "Before: <class 'PIL.Image.Image'>" in out
    assert "After: <class 'torch.Tensor'>, torch.Size([1, 3, 224, 224])" in out
    assert "Traget class index: 24" in out
    assert "torch.Size([3, 224, 224])" in out and "torch.Size([1, 224, 224])" in out
    assert gradients.shape == (3, 224, 224) and max_gradients.shape == (1, 224, 224)
    assert guided_gradients.shape == (3, 224, 224) and max_guided_gradients.shape == (1, 224, 224)
    assert len(fig.axes) == 4 and len(fig2.axes) == 4
    # the owl's gradient is not the cat's: target_class is honoured
    tabby = backprop.calculate_gradients(input_, target_class)
    assert not torch.allclose(gradients, tabby)


def test_visualize_saves_png_headless(tiny_cnn, tmp_path):
    from PIL import Image

    from flashtorch.saliency import Backprop
    from flashtorch.utils import visualize

    x = torch.randn(2, 3, 32, 32)
    bp = Backprop(tiny_cnn)
    g = bp.calculate_gradients(x, 1)
    m = bp.calculate_gradients(x, 1, take_max=True)
    path = tmp_path / "sub" / "fig.png"
    fig = visualize(x, g, m, save_path=path)
    assert len(fig.axes) == 8  # one row of four panels per image
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200
    assert [p.name for p in path.parent.iterdir()] == ["fig.png"]  # no temp file left


def test_pyplot_not_imported_by_package():
    import subprocess
    import sys

    code = (
        "import sys, flashtorch, flashtorch.utils, flashtorch.saliency; "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pretrained_predictions(pretrained, image_dir):
    from flashtorch.utils import apply_transforms, load_image

    x = apply_transforms(
        [load_image(image_dir / "coffee.jpg"), load_image(image_dir / "chelsea.jpg")]
    )
    with torch.no_grad():
        top1 = pretrained(x).argmax(1).tolist()
    assert top1[0] == 967  # espresso
    assert 281 <= top1[1] <= 285  # a cat


def test_saved_figures_have_normal_permissions(tmp_path):
    import os

    from flashtorch.plot._common import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644 and path.read_bytes() == b"x"
