"""The HTML report builder and the overlay helpers (pure functions, no model)."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from flashtorch.errors import InputError
from flashtorch.report import (
    ImageEntry,
    MapPanel,
    Prediction,
    build_report,
    data_uri,
    encode_png,
    image_rgb,
    overlay_rgb,
    scale_map,
    write_report,
)


def png_of(colour: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[...] = colour
    return encode_png(arr)


def sample_entries() -> list[ImageEntry]:
    red, green, blue = png_of((255, 0, 0)), png_of((0, 255, 0)), png_of((0, 0, 255), (5, 5))
    return [
        ImageEntry(
            "cat <1>.jpg",
            red,
            [Prediction(281, "tabby", 0.75), Prediction(285, "Egyptian cat", 0.2)],
            [
                MapPanel("gradient", green, 0.5, "tabby (281)"),
                MapPanel("gradcam", blue, 0.25, "tabby (281)", "layer net.bn2"),
            ],
        ),
        ImageEntry(
            "dog.png",
            blue,
            [Prediction(207, "golden retriever", 0.9)],
            [MapPanel("gradient", red, 1.5, "golden retriever (207)")],
        ),
    ]


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def decode(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix) :])


# ---------------------------------------------------------------------------------------------
# build_report
# ---------------------------------------------------------------------------------------------


def test_every_image_is_embedded_in_order_and_decodes_to_its_bytes():
    entries = sample_entries()
    page = build_report(entries, command="flashtorch report a b -o r.html", generated="T")
    expected = []
    for entry in entries:
        expected.append(entry.image)
        expected.extend(p.image for p in entry.panels)
    sources = img_sources(page)
    assert [decode(s) for s in sources] == expected
    for s in sources:
        with Image.open(io.BytesIO(decode(s))) as im:
            im.verify()


def test_page_is_self_contained():
    page = build_report(sample_entries(), command="flashtorch report x", generated="T")
    assert page.startswith("<!DOCTYPE html>")
    # every src/href is inline data; nothing names another server or a script
    for attr in re.findall(r'\s(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:"), attr
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "@import" not in page and "url(" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None and "default-src 'none'" in csp.group(1)


def test_all_outside_text_is_escaped():
    evil = '<script>alert("x")</script> & co'
    entry = ImageEntry(
        evil,
        png_of((1, 2, 3)),
        [Prediction(1, evil, 0.5)],
        [MapPanel(evil, png_of((0, 0, 0)), 0.1, evil, evil)],
    )
    page = build_report(
        [entry],
        command=f"flashtorch report '{evil}'",
        title=evil,
        details={evil: evil},
        generated=evil,
    )
    assert "<script" not in page
    escaped = html.escape(evil, quote=True)
    # file name, class label, method, target, note, title (x2), details key/value, timestamp,
    # command line, the timings table's method and the image alt texts
    assert page.count(escaped) >= 10
    assert html.escape(f"flashtorch report '{evil}'", quote=True) in page


def test_top5_table_lists_predictions_in_order_with_percentages():
    page = build_report(sample_entries(), command="c", generated="T")
    section = page[page.index('id="image-1"') : page.index('id="image-2"')]
    rows = re.findall(
        r"<tr><td[^>]*>(\d)</td><td>([^<]*)<div[^>]*></div></td>"
        r"<td[^>]*>(\d+)</td><td[^>]*>([\d.]+)%</td></tr>",
        section,
    )
    assert rows == [("1", "tabby", "281", "75.0"), ("2", "Egyptian cat", "285", "20.0")]
    assert 'style="width:75.0%"' in section


def test_timings_table_sums_per_method():
    page = build_report(sample_entries(), command="c", generated="T")
    table = page[page.index('<table class="timings">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(
        r'<tr><td>([^<]*)</td><td class="num">(\d+)</td><td class="num">([^<]*)</td>'
        r'<td class="num">([^<]*)</td></tr>',
        table,
    )
    # gradient: 0.5 s and 1.5 s -> mean 1.00 s, total 2.00 s; gradcam: one image of 0.25 s
    assert rows == [("gradient", "2", "1.00 s", "2.00 s"), ("gradcam", "1", "250 ms", "250 ms")]


def test_captions_and_run_details():
    page = build_report(
        sample_entries(),
        command="flashtorch report a.jpg -o r.html",
        title="My run",
        details={"model": "efficientnet_lite0", "device": "cpu"},
        generated="2024-01-02 03:04",
    )
    assert "<title>My run</title>" in page and "<h1>My run</h1>" in page
    assert "<dt>model</dt><dd>efficientnet_lite0</dd>" in page
    assert "<dt>generated</dt><dd>2024-01-02 03:04</dd>" in page
    assert "<dt>images</dt><dd>2</dd>" in page
    assert '<pre class="cmd">flashtorch report a.jpg -o r.html</pre>' in page
    assert "target: tabby (281)" in page and "layer net.bn2" in page
    assert 'class="note"' not in page
    noted = build_report(sample_entries(), command="c", generated="T", timing_note="a < b")
    assert '<p class="note">a &lt; b</p>' in noted
    assert page.count('<section class="image"') == 2


def test_legend_follows_the_colour_map():
    from matplotlib import colormaps

    page = build_report(sample_entries(), command="c", cmap="viridis", generated="T")
    r, g, b, _ = colormaps["viridis"](0.0)
    assert f"rgb({round(r * 255)},{round(g * 255)},{round(b * 255)})" in page
    with pytest.raises(InputError, match="colour map"):
        build_report(sample_entries(), command="c", cmap="no-such-map")


def test_empty_report_still_renders():
    page = build_report([], command="c", generated="T")
    assert "No images." in page and "No maps were computed." in page
    entry = ImageEntry("a.jpg", png_of((0, 0, 0)), [], [])
    assert "No maps for this image." in build_report([entry], command="c", generated="T")


def test_write_report_is_atomic_and_utf8(tmp_path):
    target = tmp_path / "sub" / "report.html"
    text = build_report(sample_entries(), command="flashtorch ✓ report", generated="T")
    write_report(target, text)
    write_report(target, text + "<!-- again -->")  # overwrite in place
    assert target.read_text(encoding="utf-8") == text + "<!-- again -->"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_data_uri():
    assert data_uri(b"\x00\xff") == "data:image/png;base64,AP8="


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def test_encode_png_round_trips():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(arr))) as im:
        assert im.size == (9, 7) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), arr)
    with pytest.raises(InputError, match="uint8"):
        encode_png(arr.astype(np.float32))


def test_image_rgb_rounds_and_clips():
    t = torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 1, 4).expand(3, 1, 4)
    assert image_rgb(t)[0, :, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(InputError):
        image_rgb(torch.zeros(1, 4, 4))


def test_scale_map_range_and_outlier_robustness():
    s = torch.arange(1600.0).view(40, 40)
    s[0, 0] = 1e9  # one outlier
    scaled = scale_map(s, percentile=99.0)
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    # without the clip the outlier would squash everything else to ~0
    assert float(scale_map(s, 100.0)[39, 39]) < 1e-3
    # with it, the 99th percentile (~1584) takes the top colour, the median sits mid-scale
    assert float(scaled[39, 39]) == 1.0
    assert abs(float(scaled[20, 0]) - 800 / 1584) < 0.01
    assert torch.equal(scale_map(torch.full((3, 3), 7.0)), torch.zeros(3, 3))
    # NaN and inf never leak into the display map
    bad = torch.tensor([[float("nan"), 1.0], [float("inf"), 0.0]])
    assert torch.isfinite(scale_map(bad)).all()


def test_overlay_zero_map_is_the_dimmed_grey_image():
    image = torch.rand(3, 5, 4, generator=torch.Generator().manual_seed(0))
    out = overlay_rgb(image, torch.zeros(5, 4))
    rgb = image_rgb(image).astype(np.float64) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    expected = np.round((0.2 + 0.6 * luma) * 255.0).astype(np.uint8)
    assert out.shape == (5, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        assert np.abs(out[..., c].astype(int) - expected.astype(int)).max() <= 1


def test_overlay_hot_pixel_gets_the_top_colour():
    from matplotlib import colormaps

    image = torch.full((3, 4, 4), 0.5)
    sal = torch.zeros(1, 4, 4)
    sal[0, 1, 2] = 3.0
    out = overlay_rgb(image, sal, cmap="jet", alpha=1.0, percentile=100.0)
    top = np.round(np.asarray(colormaps["jet"](1.0)[:3]) * 255).astype(int)
    assert out[1, 2].tolist() == top.tolist()
    grey = round((0.2 + 0.6 * 128 / 255) * 255)
    assert out[0, 0].tolist() == [grey] * 3


def test_overlay_alpha_zero_in_colour_is_the_image():
    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    out = overlay_rgb(image, torch.rand(6, 6), alpha=0.0, grayscale=False)
    assert np.array_equal(out, image_rgb(image))


def test_overlay_reduces_channels_by_max_abs():
    image = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(2))
    maps = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(overlay_rgb(image, maps), overlay_rgb(image, maps.abs().amax(0)))


@pytest.mark.parametrize(
    "saliency, kwargs, message",
    [
        (torch.zeros(4, 5), {}, "saliency must be"),
        (torch.zeros(1, 1, 5, 5), {}, "saliency must be"),
        (torch.zeros(5, 5), {"alpha": 1.5}, "alpha"),
        (torch.zeros(5, 5), {"percentile": 0}, "percentile"),
        (torch.zeros(5, 5), {"cmap": "nope"}, "colour map"),
    ],
)
def test_overlay_rejects_bad_input(saliency, kwargs, message):
    with pytest.raises(InputError, match=message):
        overlay_rgb(torch.zeros(3, 5, 5), saliency, **kwargs)
