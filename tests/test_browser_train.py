"""The Train panel in a real browser (JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright): an invalid
learning rate is reported next to Start, inside the visible part of the page, with every other bad field.

Screenshots go to test-artifacts/ (gitignored). Skipped, with the reason, where Chromium or playwright is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    NOTEBOOK,
    browser_skip_reason,
    chromium_page,
    open_notebook,
    run_cell,
    write_notebook,
)

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))

TESTS = Path(__file__).resolve().parent
NEAR_START_PX = 120  # the message starts this close under the Start button


def test_invalid_learning_rate_shows_its_error_next_to_start_in_the_viewport(lab):
    write_notebook(
        lab.root_dir / "train_feedback.ipynb",
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from test_train import keyword_frame, make_tokenizer\n"
        "from tiny import tiny_adapter_model\n"
        "from workbench.ui import TrainPanel\n"
        "from workbench.ui.session import Session\n"
        "session = Session(model=tiny_adapter_model(), tokenizer=make_tokenizer())\n"
        "panel = TrainPanel(session, data=keyword_frame(40))\n"
        "panel",
    )
    with chromium_page() as page:
        try:
            open_notebook(page, lab, "train_feedback.ipynb")
            run_cell(page, 0, timeout=300)
            output = page.locator(f"{NOTEBOOK} .jp-Cell").first.locator(".jp-Cell-outputArea").first
            assert "Traceback" not in output.inner_text()  # (the panel holds Output widgets of its own)
            rate = page.locator(".wb-train-learning-rate input").first
            rate.wait_for()
            rate.fill("abc")
            page.locator(".wb-train-batch-size input").first.fill("0")
            start = page.locator(".wb-train-start").first
            start.click()
            error = page.locator(".wb-train-start-error").first
            page.wait_for_function(
                "() => document.querySelector('.wb-train-start-error')?.innerText.includes('learning rate')",
                timeout=30_000,
            )
            text = error.inner_text()
            assert "adapter learning rate: 'abc' is not a number" in text
            assert "batch size: '0' must be greater than 0" in text  # every bad field at once
            assert "ValueError" not in text

            viewport = page.viewport_size
            box, button = error.bounding_box(), start.bounding_box()
            assert box is not None and button is not None
            assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], (box, viewport)
            assert 0 <= box["x"] and box["x"] + box["width"] <= viewport["width"], (box, viewport)
            assert 0 <= box["y"] - (button["y"] + button["height"]) <= NEAR_START_PX, (box, button)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-train-invalid-learning-rate.png"))
