"""``flashtorch serve``: the Feature visualisation tab and the Stop buttons.

The function of the tab called directly (an :class:`~flashtorch.app.core.Explainer` and the
bundled model), the page's stop tokens and stoppable wrapper, and a real browser (headless
chromium): the tab renders images, and Stop ends a long render (and a Score-CAM) part-way.
"""

from __future__ import annotations

import re
import threading
import time
from io import BytesIO
from types import SimpleNamespace

import numpy as np
import pytest

from flashtorch.errors import Cancelled, InputError, LayerError, TargetError
from flashtorch.progress import report_to

from .test_app import CHELSEA, _not_blank, needs_gradio, playwright_or_skip, served
from .test_cleanup import _assert_same, _snapshot


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    from .conftest import has_pretrained

    if not has_pretrained():
        pytest.skip("the 'pretrained' extra is not installed (bundled model)")
    from flashtorch.app.core import Explainer

    return Explainer(out_dir=tmp_path_factory.mktemp("fv"))


# --------------------------------------------------------------------------------------------
# The tab's function, called directly
# --------------------------------------------------------------------------------------------


def test_channels_parse_as_on_the_command_line():
    from flashtorch.app.features import MAX_CHANNELS, parse_channel_list

    assert parse_channel_list("0-3") == [0, 1, 2, 3]
    assert parse_channel_list(" 5 ") == [5]
    assert parse_channel_list("1, 4,9") == [1, 4, 9]
    assert parse_channel_list("0-2, 1, 7") == [0, 1, 2, 7]
    assert parse_channel_list(3) == [3]
    for bad in ("", "a", "3-", "-2", "1.5", None, "4-2"):
        with pytest.raises(InputError):
            parse_channel_list(bad)
    with pytest.raises(InputError, match=f"at most {MAX_CHANNELS}"):
        parse_channel_list("0-99")
    with pytest.raises(InputError, match=r"channel 8 is out of range: the layer has 8 channels"):
        parse_channel_list("6-8", 8)


def test_the_layer_menu_is_the_convolutions_and_the_default_a_late_one(explainer):
    from flashtorch.app.features import conv_layers, default_conv_layer

    layers = conv_layers(explainer, None)
    names = [n for n, _c in layers]
    assert names[0] == "net.conv_stem" and names[-1] == "net.conv_head"
    assert all(c >= 1 for _n, c in layers)
    default = default_conv_layer(layers)
    assert names.index(default) >= len(names) // 2
    assert default_conv_layer([]) is None


@pytest.mark.slow
def test_channels_render_as_images_with_pngs(explainer):
    from flashtorch.app.features import render_features

    seen: list[tuple[int, int, str]] = []
    with report_to(lambda d, t, w: seen.append((d, t, w))):
        result = render_features(explainer, None, "net.blocks.4.0.conv_pw", "0-1", steps=6, size=64)
    assert seen == [(i, 6, "render") for i in range(7)]
    assert result.layer == "net.blocks.4.0.conv_pw" and (result.steps, result.size) == (6, 64)
    assert [item.label for item in result.images] == [
        f"net.blocks.4.0.conv_pw channel {c}" for c in range(2)
    ]
    for item in result.images:
        assert item.image.shape == (64, 64, 3) and item.image.dtype == np.uint8
        assert _not_blank(item.image)
        assert item.png_path is not None and item.png_path.read_bytes()[:4] == b"\x89PNG"
    # each channel its own image; the same seed the same images
    assert not np.array_equal(result.images[0].image, result.images[1].image)
    again = render_features(
        explainer, None, "net.blocks.4.0.conv_pw", "0-1", steps=6, size=64, write_files=False
    )
    assert all(np.array_equal(a.image, b.image) for a, b in zip(again.images, result.images))
    assert again.images[0].png_path is None
    assert "2 images of layer net.blocks.4.0.conv_pw (6 steps, 64 px" in result.summary()


@pytest.mark.slow
def test_a_class_renders_as_one_image(explainer):
    from flashtorch.app.features import class_menu, render_features

    menu = class_menu(explainer.entry(None))
    assert len(menu) == 1000 and menu[281] == "tabby (281)"
    result = render_features(explainer, None, target="tabby (281)", steps=4, size=64)
    assert result.layer is None and len(result.images) == 1
    assert result.images[0].label == "class tabby (281)"
    assert _not_blank(result.images[0].image)


def test_bad_requests_are_refused_with_a_message(explainer):
    from flashtorch.app.features import render_features

    with pytest.raises(InputError, match="channel 5000 is out of range"):
        render_features(explainer, None, "net.conv_stem", "5000", steps=1, size=64)
    with pytest.raises(LayerError, match="unknown layer 'net.bn2'"):
        render_features(explainer, None, "net.bn2", "0", steps=1, size=64)
    with pytest.raises(InputError, match="steps must be a whole number from 1"):
        render_features(explainer, steps=0)
    with pytest.raises(InputError, match="size must be a whole number from 32 to 512"):
        render_features(explainer, size=4000)
    with pytest.raises(TargetError, match="unknown class"):
        render_features(explainer, target="no such class", steps=1)
    with pytest.raises(InputError, match="unknown model"):
        render_features(explainer, "resnet50")


def test_a_cancelled_render_stops_part_way_and_leaves_the_model_as_it_was(explainer):
    from flashtorch.app.features import render_features

    model = explainer.entry(None).model
    before = _snapshot(model)
    count = explainer._count
    seen: list[int] = []

    def stop_at_3(done: int, total: int, what: str) -> None:
        seen.append(done)
        if done == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled), report_to(stop_at_3):
        render_features(explainer, None, "net.blocks.4.0.conv_pw", "0-1", steps=500, size=64)
    assert seen == [0, 1, 2, 3]
    _assert_same(model, before)
    assert explainer._count == count  # no result folder for a stopped render


# --------------------------------------------------------------------------------------------
# The page's stop tokens and stoppable functions (no server)
# --------------------------------------------------------------------------------------------


def test_stop_tokens_are_per_session_and_group():
    pytest.importorskip("gradio")
    from flashtorch.app.page import StopTokens

    tokens = StopTokens()
    a = tokens.start("s1", "features")
    b = tokens.start("s1", "explain")
    c = tokens.start("s2", "features")
    assert tokens.stop("s1", "features") == 1
    assert a.is_set() and not b.is_set() and not c.is_set()
    tokens.finish("s1", "features", a)
    assert tokens.stop("s1", "features") == 0


@needs_gradio
def test_a_stoppable_function_stops_at_the_next_step_and_says_so(explainer):
    import gradio as gr

    from flashtorch.app.features import render_features
    from flashtorch.app.page import StopTokens, _stoppable

    tokens = StopTokens()
    bar: list[tuple[object, str]] = []

    def fake_progress(value, desc=None, unit="steps"):
        bar.append((value, desc))

    @_stoppable(tokens, "features", lambda message: ("stopped", message))
    def work(steps: int, progress=None):
        return render_features(explainer, None, "net.blocks.4.0.conv_pw", "0", steps=steps, size=64)

    import inspect

    assert inspect.signature(work).parameters["request"].annotation is gr.Request
    out: list[object] = []
    request = SimpleNamespace(session_hash="visitor")
    thread = threading.Thread(target=lambda: out.append(work(4000, fake_progress, request)))
    thread.start()
    deadline = time.monotonic() + 60
    while len(bar) < 3 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tokens.stop("someone else", "features") == 0  # another visitor's Stop: no effect
    assert tokens.stop("visitor", "features") == 1
    t0 = time.monotonic()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - t0 < 10
    kind, message = out[0]
    assert kind == "stopped" and "render was cancelled at step" in message
    steps = [v for v, _d in bar]
    assert steps[0] == (0, 4000) and all(isinstance(v, tuple) for v in steps)
    assert steps[-1][0] < 4000 and [d for _v, d in bar] == ["render"] * len(bar)
    assert tokens.stop("visitor", "features") == 0  # the call's token is gone


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(explainer):
    with served(explainer) as running:
        yield running


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


@pytest.mark.slow
@needs_gradio
def test_the_feature_tab_renders_and_its_stop_ends_a_long_render(server):
    from PIL import Image

    from .test_report_browser import CHROMIUM, CHROMIUM_ARGS

    sync_playwright = playwright_or_skip()
    _app, port = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_role("tab", name="Feature visualisation").click()
            assert "(default)" in page.locator("#fv_layer input").input_value()
            page.locator("#fv_channels input, #fv_channels textarea").first.fill("0-1")
            _set_slider(page, "fv_steps", 12)
            page.locator("#fv_render").click()
            page.locator("#fv_status").get_by_text("Rendered 2 images").wait_for(timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#fv_gallery img')].filter("
                "i => i.complete && i.naturalWidth > 0).length >= 2",
                timeout=30_000,
            )
            shot = page.locator("#fv_gallery img").first.screenshot()
            assert _not_blank(np.asarray(Image.open(BytesIO(shot)).convert("RGB")))
            assert page.locator("#fv_downloads").get_by_text(".png").count() == 2

            # a long render: the bar moves, Stop ends it within seconds, with a message
            _set_slider(page, "fv_steps", 4000)
            page.locator("#fv_render").click()
            page.get_by_text("/4k steps").first.wait_for(timeout=30_000)  # the bar, moving
            t0 = time.monotonic()
            page.locator("#fv_stop").click()
            status = page.locator("#fv_status").get_by_text("Stopped: render was cancelled")
            status.wait_for(timeout=15_000)
            assert time.monotonic() - t0 < 10
            # the worker is free again: a short render comes back at once (the long one would
            # otherwise hold the queue for minutes)
            _set_slider(page, "fv_steps", 4)
            page.locator("#fv_render").click()
            page.locator("#fv_status").get_by_text("(4 steps,").wait_for(timeout=30_000)

            # the Explain tab's Stop ends a running Score-CAM
            page.get_by_role("tab", name="Explain").click()
            page.locator("#upload input[type=file]").set_input_files(str(CHELSEA))
            page.get_by_label("gradcam", exact=True).uncheck()
            page.get_by_label("scorecam", exact=True).check()
            page.locator("#explain").click()
            page.get_by_text(re.compile(r"/[\d.]+k? steps")).first.wait_for(timeout=60_000)
            page.locator("#stop").click()
            page.get_by_text("Stopped: scorecam was cancelled").first.wait_for(timeout=15_000)
            assert not errors, errors
        finally:
            browser.close()
