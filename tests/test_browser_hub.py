"""The Hub panel in a real browser (JupyterLab + Chromium, demo Hub): the results grid and offline searches.

Screenshots go to test-artifacts/ (gitignored). Skipped, with the reason, where Chromium or playwright is missing.
"""

from __future__ import annotations

import time

import pytest
from browser_support import (
    browser_skip_reason,
    cell_output_text,
    chromium_page,
    open_notebook,
    run_cell,
    screenshot,
    write_notebook,
)

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))

ROWS = ".wb-hub .wb-hub-row:visible"
LORA = "all-MiniLM-L6-v2-lora-sst-2"

# The kernel looks for the Hub at a closed port on 127.0.0.1 (set before the first Hub call; workbench reads
# HF_ENDPOINT at each call), with an empty listing cache, so nothing can answer the search.
OFFLINE_CELL = """\
import os, socket, tempfile
probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]; probe.close()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
os.environ["WORKBENCH_AH_INDEX_URL"] = f"http://127.0.0.1:{port}/ah"
os.environ["WORKBENCH_CACHE"] = tempfile.mkdtemp()
from workbench.ui import HubPanel
HubPanel()"""


def _open_panel(page, lab, name: str, source: str) -> None:
    write_notebook(lab.root_dir / name, source)
    open_notebook(page, lab, name)
    run_cell(page, 0, timeout=300)
    assert "Traceback" not in cell_output_text(page, 0)
    page.locator(".wb-hub-search input").first.wait_for()


def _search_with_enter(page, text: str) -> None:
    box = page.locator(".wb-hub-search input").first
    box.fill(text)
    box.press("Enter")


def test_grid_click_selects_a_row_then_load_and_try_it_with_enter(lab):
    with chromium_page() as page:
        try:
            _open_panel(page, lab, "hub_grid.ipynb", "from workbench.ui import HubPanel\nHubPanel()")
            _search_with_enter(page, "lora")  # Enter submits
            page.locator(ROWS, has_text=LORA).first.wait_for(timeout=60_000)
            row = page.locator(ROWS, has_text=LORA).first
            cells = row.locator(".wb-grid-cell")
            assert cells.nth(4).inner_text().strip() == "lora"  # the method, read from its adapter_config.json
            assert "unknown" not in cells.last.inner_text() and "kB" in cells.last.inner_text()  # its size
            assert page.locator(".wb-hub-load").first.is_disabled()  # nothing selected yet
            assert page.locator(".wb-hub .widget-select").count() == 0  # one grid; no list box under it
            cells.nth(3).click()  # any cell selects the row: here its task
            page.wait_for_function(
                "() => document.querySelector('.wb-grid-row-selected')?.innerText.includes('lora-sst-2')",
                timeout=30_000,
            )
            page.locator(".wb-hub-card", has_text=f"AdapterHub/{LORA}").first.wait_for(timeout=30_000)
            screenshot(page, "hub-grid-row-selected")
            load = page.locator(".wb-hub-load").first
            assert load.is_enabled()
            load.click()
            page.locator(".wb-hub-status", has_text="Loaded adapter").first.wait_for(timeout=240_000)
            assert "sst-2-lora" in page.locator(".wb-hub-status").first.inner_text()
            try_box = page.locator(".wb-hub-try-text input").first
            try_box.fill("What a wonderful film, I loved every minute.")
            try_box.press("Enter")  # Enter runs Try it
            page.locator(".wb-hub-try-output b").first.wait_for(timeout=60_000)
            errors = [e for e in page.locator(".wb-hub .wb-error").all_inner_texts() if e.strip()]
            assert not errors, errors
            screenshot(page, "hub-grid-selected-loaded")

            page.locator(".wb-grid-sort-likes").first.click()  # a header sorts
            page.wait_for_function(
                "() => document.querySelector('.wb-grid-sort-likes')?.innerText.includes('\u25bc')", timeout=30_000
            )
        except Exception:
            screenshot(page, "hub-grid-failure")
            raise


def test_offline_search_fails_fast_with_the_helpful_message_next_to_search(lab):
    with chromium_page() as page:
        try:
            _open_panel(page, lab, "hub_offline.ipynb", OFFLINE_CELL)
            started = time.monotonic()
            _search_with_enter(page, "sst")
            error = page.locator(".wb-hub .wb-error", has_text="cannot be reached").first
            error.wait_for(timeout=60_000)
            took = time.monotonic() - started
            assert took < 15, f"the offline search took {took:.1f} s to fail"
            text = error.inner_text()
            assert "HF_HUB_OFFLINE=1" in text and "HF_ENDPOINT" in text and "local folder" in text
            assert "Errno" not in text
            search_box = page.locator(".wb-hub-search input").first.bounding_box()
            shown = error.bounding_box()
            viewport = page.viewport_size
            assert 0 <= shown["y"] and shown["y"] + shown["height"] <= viewport["height"]  # in view, no scrolling
            assert 0 < shown["y"] - search_box["y"] < 120  # right under the search row
            assert page.locator(".wb-hub-search-button").first.inner_text().strip() == "Search"  # not stuck busy
            screenshot(page, "hub-offline-search")
        except Exception:
            screenshot(page, "hub-offline-failure")
            raise
