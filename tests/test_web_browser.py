"""The gallery in headless Chromium (Debian's package, driven by Playwright): browse, click through
neighbours, upload a query. Screenshots go to the test's tmp dir and, for the README, docs/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.photos import make_photo
from tests.test_web import build_library
from vitdex.library import Library
from vitdex.web import create_app, running

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: run .ci/install-browser (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, tiny_model):
    folder = build_library(tmp_path_factory.mktemp("browser"), tiny_model)
    with Library.open(folder) as library, running(create_app(library)) as url:
        yield url


@pytest.fixture(scope="module")
def page(base_url):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()


def shoot(page, tmp_path: Path, name: str, *, readme: bool = False) -> None:
    """Into the test's tmp dir; the README's also once into docs/screenshots (delete one there to
    refresh it: copying on every run would dirty the checkout)."""
    target = tmp_path / name
    page.screenshot(path=target)
    assert target.stat().st_size > 1000
    if readme and DOCS.is_dir() and not (DOCS / name).exists():
        shutil.copyfile(target, DOCS / name)


def all_loaded(page, selector: str) -> bool:
    return page.eval_on_selector_all(
        selector, "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
    )


def test_browse_and_click_through_neighbours(page, base_url, tmp_path):
    page.goto(base_url + "/")
    tiles = page.locator(".grid .tile img")
    assert tiles.count() == 13
    page.wait_for_function(
        "() => [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth)"
    )
    shoot(page, tmp_path, "gallery.png", readme=True)

    page.locator(".tile a", has_text="t2.jpg").click()
    page.wait_for_url("**/image/*")
    assert page.locator(".meta").get_by_text("t2.jpg", exact=True).count() == 1
    neighbours = page.locator("#neighbours .tile")
    assert neighbours.count() == 12
    scores = [float(s) for s in neighbours.locator(".score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    page.wait_for_function("() => document.querySelector('img.large').naturalWidth > 0")
    assert all_loaded(page, "#neighbours img")
    shoot(page, tmp_path, "image.png", readme=True)

    first_name = neighbours.first.locator(".caption").inner_text()
    neighbours.first.locator("a").click()
    page.wait_for_url("**/image/*?feature=cls")
    assert page.locator(".meta").get_by_text(first_name, exact=True).count() == 1
    page.get_by_role("link", name="mean", exact=True).click()
    page.wait_for_url("**feature=mean")
    assert page.locator("#neighbours .tile").count() == 12


def test_upload_a_query_image(page, base_url, tmp_path):
    page.goto(base_url + "/")
    source = tmp_path / "query.jpg"
    make_photo(source, (320, 240), seed=5)  # the same picture as trip/t5.jpg
    page.set_input_files("#query-input", str(source))
    page.wait_for_url("**/search")
    results = page.locator("#results .tile")
    assert results.count() == 12
    assert results.first.locator(".caption").inner_text() == "t5.jpg"
    assert float(results.first.locator(".score").inner_text()) > 0.999
    assert page.locator("img.query-preview").evaluate("i => i.naturalWidth") > 0
    shoot(page, tmp_path, "search.png")


def test_drop_an_image_onto_the_page(page, base_url):
    page.goto(base_url + "/")
    page.wait_for_function("() => document.querySelector('.tile img').naturalWidth > 0")
    with page.expect_navigation(url="**/search"):
        page.evaluate("""async () => {
            const src = document.querySelector('.tile img').getAttribute('src');
            const blob = await (await fetch(src)).blob();
            const data = new DataTransfer();
            data.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
            for (const type of ['dragenter', 'dragover', 'drop']) {
                document.body.dispatchEvent(
                    new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        }""")
    assert "dropped.jpg" in page.locator("main").inner_text()
    assert page.locator("#results .tile").count() == 12
