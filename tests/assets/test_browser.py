"""The UI as a user sees it after `make demo`: headless Chromium (Debian's, driven by playwright)
opens the asset graph, a group, and the pages of materialised assets, and finds the assets, their
metadata, preview images and check results there. Screenshots are kept as test artifacts in
``$MATTER_TEST_ARTIFACTS/browser`` (default ``.test-artifacts/browser``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.assets.demo_chain import REPO, webserver

CHROMIUM = shutil.which("chromium")
# Headless on a machine without a display or outside network: no sandbox for root, no GPU, and
# none of Chromium's own background traffic.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("MATTER_TEST_ARTIFACTS", REPO / ".test-artifacts")) / "browser"
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
    ),
]


@pytest.fixture(scope="module")
def ui(demo_run) -> Iterator[str]:
    """The webserver over the instance and data of the session's demo run."""
    tmp, config, _ = demo_run
    with webserver(tmp / "dagster_home", config) as url:
        yield url


@pytest.fixture(scope="module")
def page(ui: str) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def _open(page: Page, url: str) -> None:
    """Go to ``url`` and dismiss the community dialog a fresh instance shows once."""
    page.goto(url)
    with contextlib.suppress(PlaywrightTimeoutError):  # no dialog on this page
        page.get_by_role("button", name="Skip").click(timeout=5_000)


def test_the_asset_graph_shows_every_asset(page: Page, ui: str) -> None:
    _open(page, f"{ui}/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    page.mouse.click(1500, 900, button="right")  # the graph's background menu
    page.get_by_role("menuitem", name="Expand all groups").click()
    for asset in (
        "stac_items",
        "coregistered_stack",
        "change_screen",
        "patch_triplets",
        "matter_pretrained",
        re.compile(r"^change_detec.*_eval$"),  # the graph elides the middle of long names
    ):
        expect(page.get_by_text(asset, exact=True).last).to_be_visible()
    page.screenshot(path=ARTIFACTS / "asset_graph.png")


def test_a_group_page_shows_partitions_and_passed_checks(page: Page, ui: str) -> None:
    _open(page, f"{ui}/locations/matter/asset-groups/patches")
    expect(page.get_by_text("2 / 2 Passed")).to_be_visible()  # patch_triplets' two checks
    expect(page.get_by_text("100% filled").first).to_be_visible()  # every partition
    page.screenshot(path=ARTIFACTS / "group_patches.png")


def test_an_asset_page_renders_its_metadata_and_preview(page: Page, ui: str) -> None:
    _open(page, f"{ui}/assets/patch_triplets")
    for key in ("triplets", "bands", "bytes_written", "shard", "triplets_preview"):
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    page.get_by_text("[Show Markdown]").first.click()
    preview = page.locator("img[alt='triplets_preview']")
    expect(preview).to_be_visible()
    assert preview.get_attribute("src").startswith("data:image/png;base64,")
    assert preview.evaluate("img => img.naturalWidth") > 100  # the PNG decoded
    page.screenshot(path=ARTIFACTS / "patch_triplets_preview.png")


def test_the_checks_tab_shows_each_result(page: Page, ui: str) -> None:
    _open(page, f"{ui}/assets/coregistered_stack?view=checks")
    for check in ("cloud_free_fraction", "coregistration_residual"):
        expect(page.get_by_text(check, exact=True).first).to_be_visible()
    expect(page.get_by_text("Succeeded").first).to_be_visible()
    expect(page.get_by_text("This is a blocking asset check.")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "coregistered_stack_checks.png")


def test_the_evaluation_page_shows_the_comparison(page: Page, ui: str) -> None:
    _open(page, f"{ui}/assets/change_detection_eval")
    for key in ("matter", "cva", "untrained"):
        expect(page.get_by_text(key).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "change_detection_eval.png", full_page=True)
