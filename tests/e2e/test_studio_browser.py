"""The avatar studio in a real browser: headless Debian Chromium (Playwright) against `moepipe studio`
on a loopback port, on tiny models registered in a throwaway sqlite MLflow store.

Never skipped: without /usr/bin/chromium the test fails with the line that installs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from moepipe.studio.server import serving
from moepipe.studio.state import ModelHolder
from tests.support.studio import GOOD, MODEL, empty_store, fresh_store, register_version, train_tiny, variant

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SIZE = 16
GAP = 2
IMAGES_LOADED = """() => document.body.dataset.ready === "true" && [...document.images]
    .filter((img) => !img.closest("[hidden]"))
    .every((img) => img.complete && img.naturalWidth > 0 && !img.classList.contains("loading"))"""
RELOADED = """([id, before]) => { const img = document.getElementById(id);
    return img.getAttribute("src") !== before && img.complete && img.naturalWidth > 0
        && !img.classList.contains("loading"); }"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -c constraints.txt -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def trained(prepared16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(prepared16, tmp_path_factory.mktemp("studio-browser"))


@pytest.fixture
def store(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    yield from fresh_store(empty_store(tmp_path_factory.mktemp("studio-store")), tmp_path, monkeypatch)


def image(page, element_id: str) -> dict:
    return page.evaluate("(id) => { const img = document.getElementById(id); return {src: img.getAttribute('src'), "
                         "width: img.naturalWidth, height: img.naturalHeight}; }", element_id)


def new_page(browser, **options):
    """A page whose script errors and console errors are collected in `page.problems`."""
    page = browser.new_page(**options)
    page.set_default_timeout(30_000)
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda message: page.problems.append(f"console: {message.text}")
            if message.type == "error" else None)
    return page


def change(page, element_id: str, action) -> dict:
    """Do `action`, then wait until image `element_id` has a new src and has loaded it; its new state."""
    before = image(page, element_id)["src"]
    action()
    page.wait_for_function(RELOADED, arg=[element_id, before])
    return image(page, element_id)


def test_the_page_draws_what_is_picked_and_names_the_version(browser, store, trained: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri, artifacts = store
    register_version(uri, artifacts, trained, variant(trained, tmp_path, 41), {"fd": 4.0, **GOOD})
    register_version(uri, artifacts, trained, variant(trained, tmp_path, 42), {"fd": 6.0, **GOOD})
    holder = ModelHolder(f"models:/{MODEL}@champion", tracking_uri=uri, poll_seconds=0.5).open()
    groups = holder.served().avatars.groups
    hair = groups["hair_color"]["tags"][2]
    accessory = groups["accessories"]["tags"][1]
    with serving(holder) as base:
        page = new_page(browser, accept_downloads=True)
        page.goto(f"{base}/#seed=5&t=1")
        page.wait_for_function(IMAGES_LOADED)
        assert "moe-generator v1" in page.inner_text("#lineage-version")
        assert "champion" in page.inner_text("#lineage-version")
        assert "v1" in page.inner_text("#model-badge")
        assert "data/prepared" in page.inner_text("#lineage-data")
        assert page.is_visible("#compare-panel")
        assert page.inner_text("#compare-champion-label").startswith("champion v1")
        assert page.inner_text("#compare-challenger-label").startswith("challenger v2")
        first = image(page, "avatar")
        assert first["width"] == SIZE and "seed=5" in first["src"]

        # An attribute, then a toggle: the avatar and the grid are drawn again, with them.
        grid_before = image(page, "grid")["src"]
        avatar = change(page, "avatar", lambda: page.click(f'fieldset[data-group="hair_color"] button[data-tag="{hair}"]'))
        assert f"attributes={hair}&" in avatar["src"] and avatar["width"] == SIZE
        assert page.get_attribute(f'fieldset[data-group="hair_color"] button[data-tag="{hair}"]', "aria-pressed") == "true"
        page.wait_for_function(RELOADED, arg=["grid", grid_before])
        assert image(page, "grid")["width"] == 8 * (SIZE + GAP) - GAP
        avatar = change(page, "avatar",
                        lambda: page.click(f'fieldset[data-group="accessories"] button[data-tag="{accessory}"]'))
        assert f"attributes={hair}%2C{accessory}&" in avatar["src"]
        page.wait_for_function(f"() => document.getElementById('drawn').textContent.includes('{hair}')")

        # Re-roll: a new seed, a new avatar.
        seed = int(page.input_value("#seed"))
        avatar = change(page, "avatar", lambda: page.click("#reroll"))
        rolled = int(page.input_value("#seed"))
        assert rolled != seed and f"seed={rolled}&" in avatar["src"] and avatar["width"] == SIZE

        # Truncation.
        avatar = change(page, "avatar", lambda: page.fill("#truncation", "0.5"))
        assert "truncation=0.5&" in avatar["src"] and page.inner_text("#truncation-value") == "0.50"

        # The strip: this avatar in every eye colour, one labelled tile per value.
        eyes = groups["eye_color"]["tags"]
        strip = change(page, "vary", lambda: page.select_option("#vary-group", "eye_color"))
        assert "group=eye_color" in strip["src"] and strip["width"] == len(eyes) * (SIZE + GAP) - GAP
        assert page.locator("#vary-labels span").all_inner_texts() == [e.replace("_", " ") for e in eyes]

        # A click on the third tile of the grid keeps that avatar: seed + 2.
        box = page.locator("#grid").bounding_box()
        scale = box["width"] / (8 * (SIZE + GAP) - GAP)
        change(page, "avatar", lambda: page.click("#grid", position={"x": (2 * (SIZE + GAP) + SIZE / 2) * scale,
                                                                   "y": SIZE / 2 * scale}))
        assert int(page.input_value("#seed")) == rolled + 2
        # The GIF follows the seed too, in its own request: the avatar's reload says nothing of it.
        page.wait_for_function(IMAGES_LOADED)
        gif = image(page, "interpolation-gif")
        assert gif["width"] == SIZE and "interpolate.gif" in gif["src"]

        # The full-size PNG download names what drew it.
        with page.expect_download() as download:
            page.click("#download-png")
        saved = download.value
        assert saved.suggested_filename == f"avatar-v1-seed{rolled + 2}.png"
        picture = Image.open(saved.path())
        assert picture.size == (SIZE, SIZE)
        assert (picture.text["seed"], picture.text["attributes"], picture.text["truncation"]) == (
            str(rolled + 2), f"{hair},{accessory}", "0.5")
        assert (picture.text["model_name"], picture.text["model_version"]) == (MODEL, "1")
        assert picture.text["run_id"] and hair in picture.text["drawn_attributes"]

        # The champion moves: the page says which version now answers and draws with it.
        before = image(page, "avatar")["src"]
        MlflowClient(uri, registry_uri=uri).set_registered_model_alias(MODEL, "champion", "2")
        page.wait_for_selector("#model-change", state="visible", timeout=45_000)
        assert "moe-generator v2 (was v1)" in page.inner_text("#model-change")
        page.wait_for_function(RELOADED, arg=["avatar", before])
        assert "v=2" in image(page, "avatar")["src"]
        assert "moe-generator v2" in page.inner_text("#lineage-version")
        assert page.is_hidden("#compare-panel")  # both aliases on v2: nothing to compare
        assert page.is_hidden("#error") and page.problems == []
        page.close()


def test_a_file_model_says_so_and_hides_the_comparison(browser, trained: Path) -> None:
    holder = ModelHolder(str(trained / "models/generator.pt")).open()
    with serving(holder) as base:
        page = new_page(browser)
        page.goto(base)
        page.wait_for_function(IMAGES_LOADED)
        assert page.inner_text("#lineage-source").startswith("Not a registered model: drawn from")
        assert "generator.pt" in page.inner_text("#lineage-source")
        assert page.is_hidden("#compare-panel")
        assert re.match(r"file: .*generator\.pt", page.inner_text("#model-badge"))
        seed = int(page.input_value("#seed"))
        assert f"seed={seed}&" in image(page, "avatar")["src"]
        assert page.problems == []
        page.close()
