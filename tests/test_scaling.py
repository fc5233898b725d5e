"""One map scaling: the values of each way, per image vs global, and one function for all."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flashtorch.scaling as scaling
from flashtorch import cli, report
from flashtorch.errors import InputError
from flashtorch.plot import _common, attribution_grid, overlay, visualize
from flashtorch.plot.attribution import display_maps
from flashtorch.scaling import scale_maps

ROOT = Path(__file__).resolve().parents[1]
COFFEE = str(ROOT / "examples" / "images" / "coffee.jpg")
CHELSEA = str(ROOT / "examples" / "images" / "chelsea.jpg")


def spiky(n: int = 100, seed: int = 0) -> torch.Tensor:
    """An ``(n, n)`` map in [0, 1) with its top 0.75 % of pixels a hundred times larger."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, n, generator=g)
    flat = m.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[: int(flat.numel() * 0.0075)]] = 100.0
    return m


def test_the_four_scalings_by_hand():
    s = torch.tensor([[-2.0, -1.0], [0.0, 2.0]])
    assert torch.allclose(scale_maps(s, "minmax"), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.allclose(scale_maps(s, "percentile", percentile=100), scale_maps(s, "minmax"))
    assert torch.allclose(scale_maps(s, "abs", percentile=100), torch.tensor([[1, 0.5], [0, 1]]))
    assert torch.allclose(
        scale_maps(s, "signed", percentile=100), torch.tensor([[-1, -0.5], [0, 1]])
    )
    m = spiky()
    p = scale_maps(m)  # the 99.5th percentile falls among the ordinary values
    assert float(p.max()) == 1.0 and float(p.min()) == 0.0
    assert float((p == 1.0).float().mean()) < 0.01  # only the top half-percent saturate
    assert torch.allclose(p[m < 1], m[m < 1] / torch.quantile(m.flatten(), 0.995), atol=2e-2)


def test_constant_sparse_and_non_finite_maps():
    for how in ("percentile", "minmax"):  # a constant map: nothing stands out
        assert torch.equal(scale_maps(torch.full((4, 4), 3.0), how), torch.zeros(4, 4))
    # magnitudes: a constant map is its own maximum
    assert torch.equal(scale_maps(torch.full((4, 4), -3.0), "abs"), torch.ones(4, 4))
    assert torch.equal(scale_maps(torch.full((4, 4), -3.0), "signed"), -torch.ones(4, 4))
    for how in scaling.SCALINGS:
        assert torch.equal(scale_maps(torch.zeros(2, 1, 3, 3), how), torch.zeros(2, 1, 3, 3))
    sparse = torch.zeros(50, 50)
    sparse[3, 4], sparse[10, 10] = 2.0, 4.0  # the percentile is the minimum: use the maximum
    out = scale_maps(sparse)
    assert float(out[10, 10]) == 1.0 and float(out[3, 4]) == 0.5
    bad = torch.tensor([[float("nan"), float("inf")], [1.0, 2.0]])
    assert torch.isfinite(scale_maps(bad)).all()


def test_the_callers_tensor_is_untouched_and_errors_are_precise():
    m = torch.randn(2, 1, 5, 5)
    before = m.clone()
    scale_maps(m, "signed", per_image=False)
    assert torch.equal(m, before)
    with pytest.raises(InputError, match="choose one of percentile, minmax, abs, signed"):
        scale_maps(m, "zscore")
    with pytest.raises(InputError, match=r"percentile must be in \(0, 100\]"):
        scale_maps(m, percentile=0)
    with pytest.raises(InputError, match="must be a tensor"):
        scale_maps(np.zeros((3, 3)))


def test_per_image_hides_a_weak_map_and_global_shows_it():
    strong = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = torch.stack([strong, 0.01 * strong])  # (2, 1, H, W): the same pattern, 100x weaker
    each = scale_maps(maps)
    assert torch.allclose(each[0], each[1], atol=1e-5)  # per image: indistinguishable
    together = scale_maps(maps, per_image=False)
    assert torch.allclose(together[0], each[0], atol=3e-2)
    assert float(together[1].max()) < 0.02  # global: the weak map stays dark
    # one scale over the batch = the scale of the concatenated maps
    flat = scale_maps(maps.reshape(1, -1), per_image=False).reshape(maps.shape)
    assert torch.allclose(together, flat)


def test_figures_offer_global_normalisation():
    strong = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    maps = torch.cat([strong, 0.01 * strong])
    each = display_maps(maps, (8, 8))
    together = display_maps(maps, (8, 8), per_image=False)
    assert torch.allclose(each[0], each[1], atol=1e-5)
    assert float(together[1].max()) < 0.02 and float(together[0].max()) == 1.0
    images = torch.rand(2, 3, 8, 8)
    for per_image in (True, False):  # the grid draws them
        fig = attribution_grid(images, {"m": maps}, denormalize=False, per_image=per_image)
        shown = fig.axes[1].images[1].get_array()  # row 0, the map's overlay
        assert shown.shape == (8, 8, 4)
    signed = display_maps(maps - 0.5, (8, 8), reduce="sum", scale="signed")
    assert float(signed.min()) < 0 <= float(signed.max())
    with pytest.raises(InputError, match="unknown map scaling"):
        attribution_grid(images, {"m": maps}, scale="zscore")


@pytest.fixture
def spy(monkeypatch):
    """Record every call of :func:`flashtorch.scaling.scale_maps` (and keep its result)."""
    calls: list[dict] = []
    real = scaling.scale_maps

    def recording(maps, how="percentile", *, percentile=scaling.DEFAULT_PERCENTILE, per_image=True):
        calls.append(
            {
                "shape": tuple(maps.shape),
                "how": how,
                "percentile": percentile,
                "per_image": per_image,
                "caller": sys._getframe(1).f_code.co_filename,
            }
        )
        return real(maps, how, percentile=percentile, per_image=per_image)

    monkeypatch.setattr(scaling, "scale_maps", recording)
    return calls


def test_plot_and_report_call_the_one_scaling(spy):
    image = torch.rand(3, 10, 10)
    sal = torch.rand(1, 10, 10)
    overlay(image, sal)
    visualize(torch.rand(1, 3, 10, 10), torch.rand(3, 10, 10), sal)
    display_maps(sal[None], (10, 10))
    report.overlay_rgb(image, sal[0])
    callers = {Path(c["caller"]).name for c in spy}
    assert {"_common.py", "report.py"} <= callers
    assert len(spy) == 4
    assert {(c["how"], c["percentile"]) for c in spy} == {("percentile", 99.5)}  # one default


def test_plot_and_report_draw_the_same_levels():
    m = spiky(40)  # 99th and 99.5th percentiles far apart: a different default shows
    level = display_maps(m[None, None], (40, 40))[0, 0].numpy()
    black = torch.zeros(3, 40, 40)
    # over black with alpha 1 and a grey colour map, the overlay is level * grey(level)
    out = report.overlay_rgb(black, m, cmap="gray", alpha=1.0, grayscale=False)
    drawn = np.sqrt(out[..., 0].astype(np.float64) / 255.0)
    assert np.abs(drawn - level).max() < 0.03
    assert np.allclose(report.scale_map(m, 99.5).numpy(), level)  # the old names: aliases
    assert np.allclose(_common.normalize_map(m).numpy(), level)


def test_signed_overlays_keep_zero_transparent():
    image = torch.full((3, 4, 4), 0.5)
    sal = torch.zeros(4, 4)
    sal[0, 0], sal[3, 3] = -1.0, 1.0
    out = report.overlay_rgb(
        image, sal, cmap="coolwarm", alpha=1.0, grayscale=False, scale="signed"
    )
    assert tuple(out[1, 1]) == (128, 128, 128)  # zero: the image unchanged
    assert out[0, 0, 2] > out[0, 0, 0] and out[3, 3, 0] > out[3, 3, 2]  # blue low, red high
    rgba = _common.heat_rgba(scale_maps(sal, "signed"), cmap="coolwarm", signed=True)
    assert rgba[1, 1, 3] == 0.0 and rgba[0, 0, 3] == pytest.approx(0.6)


# --------------------------------------------------------------------------------------------
# The command line: the same function, and --normalize global
# --------------------------------------------------------------------------------------------

TINY = """
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))
"""


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "scalingtestmodels.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("scalingtestmodels", None)
    yield "scalingtestmodels:tiny"
    sys.modules.pop("scalingtestmodels", None)


def _call(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_the_command_calls_the_one_scaling(capsys, spy, tiny_model, tmp_path):
    code, _, err = _call(
        capsys,
        "explain",
        COFFEE,
        "--model",
        tiny_model,
        "--size",
        "16",
        "--method",
        "gradient",
        "-o",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    assert [Path(c["caller"]).name for c in spy] == ["report.py"]
    assert (spy[0]["how"], spy[0]["percentile"]) == ("percentile", 99.5)


def _panels(page: str) -> list[np.ndarray]:
    uris = re.findall(r'<figure><img src="data:image/png;base64,([^"]*)" alt="[^"]* map of', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u)))).astype(int) for u in uris]


def test_report_normalize_global_shows_the_weaker_map(capsys, tiny_model, tmp_path, monkeypatch):
    real = cli.run_methods

    def weaker_second(*args, **kwargs):  # the second image's map: the first's, 100x weaker
        first = None
        for result in real(*args, **kwargs):
            if first is None:
                first = result.maps[0].maps
            else:
                result.maps[0].maps = first * 0.01
            yield result

    monkeypatch.setattr(cli, "run_methods", weaker_second)
    pages = {}
    for mode in ("per-image", "global"):
        path = tmp_path / f"{mode}.html"
        code, _, err = _call(
            capsys,
            "report",
            COFFEE,
            CHELSEA,
            "--model",
            tiny_model,
            "--size",
            "16",
            "--method",
            "gradient",
            "--normalize",
            mode,
            "-o",
            str(path),
        )
        assert code == 0, err
        pages[mode] = path.read_text()

    def colour(png: np.ndarray) -> float:  # the map's colour over the grey copy of the image
        return float((png.max(axis=2) - png.min(axis=2)).mean())

    strong, weak = _panels(pages["per-image"])
    # per image, the weak map is drawn as strongly as the strong one
    assert colour(weak) > 0.5 * colour(strong) > 10
    strong_g, weak_g = _panels(pages["global"])
    assert colour(strong_g) > 0.5 * colour(strong)
    assert colour(weak_g) < 0.1 * colour(strong_g)  # global: the weak map stays faint
    assert "one per method, all images" in pages["global"]
    assert "each map on its own" in pages["per-image"]


def test_report_normalize_is_refused_for_a_run(capsys, tmp_path):
    code, _, err = _call(
        capsys,
        "report",
        "--run",
        str(tmp_path),
        "--normalize",
        "global",
        "-o",
        str(tmp_path / "r.html"),
    )
    assert code == 2 and "--normalize global applies to a report of IMAGE" in err, err
    assert not (tmp_path / "r.html").exists()
