"""``flashtorch report --run DIR``: the page of a run, its sample and size, in headless Chromium."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("zarr")
pytest.importorskip("pyarrow")
pytest.importorskip("pandas")

import flashtorch  # noqa: E402
from flashtorch.runs import open_run  # noqa: E402
from flashtorch.runs.report import SAMPLE_BUDGET, build_run_report, pick_sample  # noqa: E402

from ._runs_model import tiny  # noqa: E402
from .test_report_browser import CHROMIUM, CHROMIUM_ARGS, LAPTOP, PageLog  # noqa: E402
from .test_runs import make_folder  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runrep")
    folder = make_folder(root / "photos", n=14)
    out = root / "run"
    flashtorch.run(
        tiny(),
        folder,
        ["gradient", "gradcam"],
        out=out,
        size=48,
        metrics=["deletion", "insertion"],
        metric_step=0.25,
        num_workers=0,
        progress=False,
    )
    return out


def test_sample_picks_most_and_least_confident_and_disagreement(run_dir):
    run = open_run(run_dir)
    picked = pick_sample(run, per_group=2)
    groups = [g for g, _ in picked]
    assert (
        groups == ["most confident"] * 2 + ["least confident"] * 2 + ["methods disagree most"] * 2
    )
    ok = run.manifest[run.manifest["status"] == "ok"]
    top = ok.sort_values("score", ascending=False)["index"].tolist()
    assert [i for g, i in picked if g == "most confident"] == top[:2]
    assert [i for g, i in picked if g == "least confident"] == top[::-1][:2]
    rest = ok[~ok["index"].isin([i for _, i in picked[:4]])]
    assert picked[4][1] == int(rest.sort_values("agreement")["index"].iloc[0])
    assert len({i for _, i in picked}) == len(picked)  # no image twice


def test_report_html_holds_the_aggregate_and_a_bounded_sample(run_dir):
    html = build_run_report(run_dir, command="flashtorch report --run x -o r.html", title="a <run>")
    run = open_run(run_dir)
    ok = run.manifest[run.manifest["status"] == "ok"]
    assert "Aggregate over the run" in html and "deletion AUC" in html
    assert f"{ok['deletion_gradcam'].mean():.3f}" in html
    assert "broken file.jpg" in html  # the error is listed
    pictures = html.count("data:image/png;base64,")
    assert 3 <= pictures <= SAMPLE_BUDGET
    assert len(html) < 3_000_000
    assert "<title>a &lt;run&gt;</title>" in html
    assert not re.search(r"(src|href)=\"https?:", html)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (bash .ci/install_browser.sh installs it)"
)
def test_run_report_renders_in_headless_chromium(run_dir, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    from flashtorch.cli import main

    out = tmp_path / "report.html"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--run", str(run_dir), "-o", str(out), "-q"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    url = out.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=LAPTOP)
            log = PageLog(page, url)
            page.goto(url, wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({complete: i.complete, w: i.naturalWidth}))"
            )
            assert images and all(i["complete"] and i["w"] > 0 for i in images), images
            assert page.locator("table.aggregate tbody tr").count() == 2
            assert page.locator("section.image").count() >= 3
            assert page.evaluate("document.documentElement.scrollWidth") <= LAPTOP["width"]
            assert [m for m in log.console if m[0] in ("error", "warning")] == []
            assert log.errors == [] and log.requests == [url]
        finally:
            browser.close()
