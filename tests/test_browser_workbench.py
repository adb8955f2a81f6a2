"""The workbench in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright, demo Hub.

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


def test_widgets_render_and_talk_to_the_kernel(lab):
    """ipywidgets render in JupyterLab (jupyterlab_widgets) and a click in the page runs a kernel handler."""
    write_notebook(
        lab.root_dir / "widgets.ipynb",
        "import ipywidgets as w\n"
        "button = w.Button(description='Count clicks')\n"
        "button.add_class('wb-test-button')\n"
        "label = w.Label('no clicks')\n"
        "label.add_class('wb-test-label')\n"
        "clicks = []\n"
        "def clicked(_):\n"
        "    clicks.append(1)\n"
        "    label.value = f'{len(clicks)} click(s)'\n"
        "button.on_click(clicked)\n"
        "w.VBox([button, label])",
    )
    with chromium_page() as page:
        open_notebook(page, lab, "widgets.ipynb")
        run_cell(page, 0)
        label = page.locator(".wb-test-label")
        label.wait_for()
        assert "no clicks" in label.inner_text()
        page.locator(".wb-test-button").click()
        page.locator(".wb-test-button").click()
        page.wait_for_function(
            "() => document.querySelector('.wb-test-label')?.innerText.includes('2 click(s)')", timeout=30_000
        )
        screenshot(page, "browser-widgets")


def test_workbench_hub_panel_searches_and_loads_an_adapter(lab):
    """Workbench() in the page: search the demo Hub, pick a result, Load, and see "Loaded" in the status."""
    pytest.importorskip("workbench.ui.hub_panel", reason="the Hub panel (workbench/ui/hub_panel.py) is not there yet")
    write_notebook(lab.root_dir / "workbench.ipynb", "from workbench.ui import Workbench\nWorkbench()")
    with chromium_page() as page:
        try:
            _hub_flow(page, lab)
        except Exception:
            screenshot(page, "browser-workbench-hub-failure")
            raise
        screenshot(page, "browser-workbench-hub-loaded")


def _hub_flow(page, lab) -> None:
    open_notebook(page, lab, "workbench.ipynb")
    run_cell(page, 0, timeout=300)
    assert "Traceback" not in cell_output_text(page, 0)
    search = page.locator(".wb-hub-search input").first
    search.wait_for()
    search.fill("sst-2")
    page.locator(".wb-hub-search-button").first.click()
    page.wait_for_function(
        "() => document.querySelector('.wb-hub-results')?.innerText.includes('all-MiniLM-L6-v2-sst-2')",
        timeout=60_000,
    )
    _select_result(page.locator(".wb-hub-results").first, "all-MiniLM-L6-v2-sst-2_pfeiffer")
    page.locator(".wb-hub-load").first.click()
    status = _wait_for_text(page, ".wb-hub-status", "Loaded", timeout=240)
    assert "sst-2" in status
    page.locator(".wb-hub-try-text input").first.fill("What a wonderful film, I loved every minute.")
    page.locator(".wb-hub-try-button").first.click()
    verdict = page.locator(".wb-hub-try-output b").first  # the prediction line: "<label> (<scores>)"
    verdict.wait_for(timeout=60_000)
    assert verdict.inner_text().startswith("positive")  # the demo sst-2 adapter is trained on reviews like this


def _wait_for_text(page, selector: str, text: str, timeout: float) -> str:
    """Wait until `selector` shows `text`; fail at once, with the message, if the panel shows an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = page.locator(selector).first.inner_text()
        if text in shown:
            return shown
        errors = [e for e in page.locator(".wb-hub .wb-error").all_inner_texts() if e.strip()]
        assert not errors, f"the Hub panel shows an error: {errors}"
        time.sleep(0.5)
    raise AssertionError(f"{selector} never showed {text!r}; it shows {page.locator(selector).first.inner_text()!r}")


def _select_result(results, text: str) -> None:
    """Pick the result row showing `text`, whether the results are a <select> or clickable rows."""
    select = results.locator("select")
    if select.count():
        option = select.first.locator("option", has_text=text).first
        select.first.select_option(value=option.get_attribute("value"))
        return
    results.get_by_text(text).first.click()
