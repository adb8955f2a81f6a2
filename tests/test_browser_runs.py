"""Runs in a real browser: Start a run in the Train panel, Stop it, Resume it from the page and see it complete;
Start on the same name offers resume / overwrite / a free name beside Start. Screenshots in test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import (
    browser_skip_reason,
    chromium_page,
    open_notebook,
    run_cell,
    screenshot,
    write_notebook,
)

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))
TESTS = Path(__file__).resolve().parent

SETUP = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
import torch
from tiny import tiny_adapter_model
from test_train import keyword_frame, make_tokenizer
from workbench.train import StepEvent
from workbench.ui.session import Session
from workbench.ui.train_panel import TrainPanel

torch.manual_seed(0)
slow = lambda event: time.sleep(0.5) if isinstance(event, StepEvent) else None  # time to click Stop mid-run
session = Session(model=tiny_adapter_model(), tokenizer=make_tokenizer())
panel = TrainPanel(session, data=keyword_frame(48), callbacks=[slow])
for field, value in (("learning rate", "1e-3"), ("max steps", "24"), ("batch size", "8"), ("eval every", "100")):
    panel.params.fields[field].value = value
panel.output_dir.value = "runs"
panel
"""


def wait_text(page, selector: str, text: str, timeout: float = 60) -> str:
    page.wait_for_function(
        "([s, t]) => [...document.querySelectorAll(s)].some(e => e.innerText.includes(t))",
        arg=[selector, text],
        timeout=timeout * 1000,
    )
    return page.locator(selector).first.inner_text()


def test_stop_then_resume_from_the_page_completes_the_run(lab):
    write_notebook(lab.root_dir / "runs.ipynb", SETUP)
    with chromium_page() as page:
        try:
            open_notebook(page, lab, "runs.ipynb")
            run_cell(page, 0, timeout=180)
            assert "Traceback" not in page.locator(".jp-Cell-outputArea").first.inner_text()
            page.locator(".wb-train-start").first.click()
            wait_text(page, ".wb-train-progress", "/24")  # running (the line is throttled: any step)
            page.locator(".wb-train-stop").first.click()
            line = wait_text(page, ".wb-train-progress", "stopped at step")
            assert "of 24" in line
            resume = page.locator(".wb-train-resume").first
            wait_text(page, ".wb-train-resume", "Resume from step")  # enabled just after the line says stopped
            page.wait_for_function("() => !document.querySelector('.wb-train-resume').disabled", timeout=30_000)
            screenshot(page, "browser-runs-stopped")

            page.locator(".wb-train-start").first.click()  # the same name: choices beside Start, nothing runs
            choices = page.locator(".wb-train-conflict").first
            choices.wait_for(state="visible", timeout=30_000)
            assert "already holds a run" in choices.inner_text()
            assert "Use my_adapter-2" in page.locator(".wb-train-conflict-new").first.inner_text()
            screenshot(page, "browser-runs-folder-choices")

            resume.click()
            wait_text(page, ".wb-train-progress", "completed at step 24", timeout=120)
            assert page.locator(".wb-train-conflict").first.is_hidden()
            table = page.locator(".wb-train-runs-grid").first.inner_text()
            assert "completed" in table and "% of base model" in table and "stop_reason" not in table
            assert not [e for e in page.locator(".wb-train .wb-error").all_inner_texts() if e.strip()]
            assert (lab.root_dir / "runs" / "my_adapter" / "checkpoint-24").is_dir()
            page.locator(".wb-train-runs-grid").first.scroll_into_view_if_needed()
            screenshot(page, "browser-runs-resumed")

            page.locator(".wb-train-runs-open").first.click()  # the folder's path, to copy
            page.locator(".wb-train-runs-link code").first.wait_for(timeout=30_000)
            shown = page.locator(".wb-train-runs-link").first.inner_text()
            assert str((lab.root_dir / "runs" / "my_adapter").resolve()) in shown and "runs/my_adapter/" in shown
        except Exception:
            screenshot(page, "browser-runs-failure")
            raise
