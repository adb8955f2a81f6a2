"""The Model panel in a real browser (JupyterLab + Chromium): adapters added from the page, a composition built in
click order, and replacing the model asks inline first (Cancel keeps the adapters, Replace replaces the model).

Screenshots go to test-artifacts/ (gitignored).
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

PANEL = (
    "from workbench.ui import ModelPanel, Session\npanel = ModelPanel(Session())\npanel.load_default().join()\npanel"
)


def test_replacing_the_model_asks_inline_and_cancel_keeps_the_adapters(lab):
    write_notebook(lab.root_dir / "model.ipynb", PANEL, "print(sorted(panel.model.adapters))")
    with chromium_page() as page:
        try:
            _replace_flow(page, lab)
        except Exception:
            screenshot(page, "browser-model-failure")
            raise


def _replace_flow(page, lab) -> None:
    open_notebook(page, lab, "model.ipynb")
    run_cell(page, 0, timeout=300)
    assert "Traceback" not in cell_output_text(page, 0)
    _wait_for_text(page, ".wb-model-status", "Loaded the offline default MiniLM", 120)

    for name in ("sst-2", "en"):  # added from the page, listed in this order
        page.locator(".wb-model-new-name input").first.fill(name)
        page.locator(".wb-model-new-config input").first.fill("seq_bn[reduction_factor=8]")
        page.locator(".wb-model-add").first.click()
        _wait_for_text(page, ".wb-model-add-row-result", f"Added adapter '{name}'", 60)

    page.locator(".wb-model-pick", has_text="en").first.click()  # click order, not list order
    page.locator(".wb-model-pick", has_text="sst-2").first.click()
    _wait_for_text(page, ".wb-model-compose-preview", 'Stack("en", "sst-2")', 30)
    page.locator(".wb-model-compose").first.click()
    _wait_for_text(page, ".wb-model-active", 'Stack("en", "sst-2")', 30)

    page.locator(".wb-model-compose-kind select").first.select_option("Fuse")  # no fusion layer is made for it
    _wait_for_text(page, ".wb-model-compose-preview", 'Fuse("en", "sst-2")', 30)
    add_fusion = page.locator(".wb-model-add-fusion").first
    add_fusion.wait_for(state="visible", timeout=30_000)
    assert page.locator(".wb-model-compose").first.is_disabled()
    assert "no fusion layer 'en,sst-2'" in page.locator(".wb-model-compose-row-hint").first.inner_text()
    screenshot(page, "browser-model-fuse-needs-a-layer")
    add_fusion.click()
    _wait_for_text(page, ".wb-model-compose-row-result", "untrained fusion layer 'en,sst-2'", 30)
    _wait_for_text(page, ".wb-model-active", 'Stack("en", "sst-2")', 30)  # added, not activated

    page.locator(".wb-model-default").first.click()
    confirm = page.locator(".wb-model-replace-confirm").first
    confirm.wait_for(state="visible", timeout=30_000)
    assert "2 adapters (sst-2, en) will be lost" in confirm.inner_text()
    _assert_in_viewport(page, confirm)  # the question appears where the user clicked
    screenshot(page, "browser-model-replace-confirm")
    confirm.locator(".wb-confirm-no").click()
    confirm.wait_for(state="hidden", timeout=30_000)
    time.sleep(1)  # a click that wrongly replaced the model would start loading now
    assert "en\xa0(seq_bn)" in page.locator(".wb-model-adapters").first.inner_text()  # (a no-break space)
    run_cell(page, 1)
    assert "['en', 'sst-2']" in cell_output_text(page, 1)  # the kernel's model kept its adapters

    page.locator(".wb-model-default").first.click()
    confirm.wait_for(state="visible", timeout=30_000)
    confirm.locator(".wb-confirm-yes").click()
    _wait_for_text(page, ".wb-model-status", "Loaded the offline default MiniLM", 120)
    page.wait_for_function(
        "() => !document.querySelector('.wb-model-adapters')?.innerText.includes('sst-2')", timeout=30_000
    )
    run_cell(page, 1)
    assert "[]" in cell_output_text(page, 1)
    screenshot(page, "browser-model-replaced")


def _assert_in_viewport(page, locator) -> None:
    box = locator.bounding_box()
    viewport = page.viewport_size
    assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], (box, viewport)


def _wait_for_text(page, selector: str, text: str, timeout: float) -> str:
    """Wait until `selector` shows `text`; fail at once, with the message, if the panel shows an error."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = page.locator(selector).first.inner_text() if page.locator(selector).count() else ""
        if text in shown:
            return shown
        errors = [e for e in page.locator(".wb-model .wb-error").all_inner_texts() if e.strip()]
        assert not errors, f"the Model panel shows an error: {errors}"
        time.sleep(0.3)
    raise AssertionError(f"{selector} never showed {text!r}; it shows {shown!r}")
