"""The JupyterLab extension in a real browser: JupyterLab on 127.0.0.1 (its server and kernels talk to the demo Hub),
Debian's Chromium driven by Playwright. The launcher card opens a notebook that runs the workbench; the palette opens
the tutorials (starting no kernel); the Adapter Hub sidebar searches the demo Hub and inserts load code that the
kernel then runs.

Screenshots go to test-artifacts/ (gitignored). Skipped, with the reason, where Chromium or playwright is missing.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
from browser_support import (
    NOTEBOOK,
    browser_skip_reason,
    cell_output_text,
    chromium_page,
    run_cell,
    screenshot,
    wait_for_kernel_idle,
    write_notebook,
)

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SST2 = "AdapterHub/all-MiniLM-L6-v2-sst-2_pfeiffer"
CELLS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell"


def test_launcher_card_opens_a_notebook_running_the_workbench(lab):
    with chromium_page() as page:
        try:
            page.goto(f"{lab.url}/lab?reset&token={lab.token}")  # reset: no layout restored from an earlier test
            card = page.locator(".jp-LauncherCard", has_text="Adapter Workbench").first
            card.wait_for()
            screenshot(page, "extension-launcher-card")
            card.click()
            workbench = page.locator(".wb-workbench").first
            workbench.wait_for(timeout=300_000)  # kernel start, imports, Workbench() rendered
            assert "Traceback" not in page.locator(CELLS).first.locator(".jp-OutputArea").inner_text()
            screenshot(page, "extension-launcher-workbench")
        except Exception:
            screenshot(page, "extension-launcher-failure")
            raise
    saved = json.loads((lab.root_dir / "Untitled.ipynb").read_text())  # the command saves the new notebook
    assert "".join(saved["cells"][0]["source"]) == "from workbench.ui import Workbench\n\nWorkbench()"


def test_palette_opens_the_tutorial_notebooks_without_starting_kernels(lab):
    """All five tutorials open, the first in front, and no kernel starts until a cell runs (then one, for it)."""
    tutorials = lab.root_dir / "notebooks"
    tutorials.mkdir(exist_ok=True)
    names = sorted(path.name for path in NOTEBOOKS.glob("0*.ipynb"))
    assert len(names) == 5
    for name in names:
        shutil.copy(NOTEBOOKS / name, tutorials / name)
    _shut_down_kernels(lab)  # the launcher test's kernel, if it ran first
    with chromium_page() as page:
        try:
            page.goto(f"{lab.url}/lab?reset&token={lab.token}")  # reset: no layout restored from an earlier test
            page.locator(".jp-LauncherCard").first.wait_for()
            page.keyboard.press("Control+Shift+C")
            page.locator(".lm-CommandPalette-input").fill("Open tutorial notebooks")
            page.locator(".lm-CommandPalette-item", has_text="Open tutorial notebooks").first.click()
            tabs = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab")
            for name in names:
                tabs.filter(has_text=name).first.wait_for(timeout=60_000)
            current = tabs.filter(has_text=names[0]).first
            page.wait_for_function("tab => tab.classList.contains('lm-mod-current')", arg=current.element_handle())
            # each notebook's session is settled, without a kernel: its toolbar says "No Kernel"
            page.locator(f"{NOTEBOOK} .jp-Toolbar .jp-KernelName", has_text="No Kernel").first.wait_for()
            screenshot(page, "extension-tutorials")
            assert lab.api("kernels") == [] and lab.api("sessions") == []

            run_cell(page, 1, timeout=180)  # the first code cell of 01: JupyterLab starts a kernel for it alone
            sessions = lab.api("sessions")
            assert [s["path"] for s in sessions] == [f"notebooks/{names[0]}"]
            assert len(lab.api("kernels")) == 1
            assert "bert-base-uncased" in cell_output_text(page, 1)
        except Exception:
            screenshot(page, "extension-tutorials-failure")
            raise


def _shut_down_kernels(lab) -> None:
    for kernel in lab.api("kernels"):
        request = urllib.request.Request(
            f"{lab.url}/api/kernels/{kernel['id']}", method="DELETE", headers={"Authorization": f"token {lab.token}"}
        )
        urllib.request.urlopen(request, timeout=30).close()
    assert lab.api("kernels") == []


def test_sidebar_searches_the_hub_and_inserts_load_code(lab):
    write_notebook(lab.root_dir / "load.ipynb", "", "print('loaded', name, model.active_adapters)")
    with chromium_page() as page:
        try:
            _sidebar_flow(page, lab)
        except Exception:
            screenshot(page, "extension-sidebar-failure")
            raise
        screenshot(page, "extension-sidebar-loaded")


def _sidebar_flow(page, lab) -> None:
    page.goto(lab.lab_url("load.ipynb") + "&reset")
    page.locator(CELLS).first.wait_for(timeout=120_000)
    wait_for_kernel_idle(page)
    page.locator('.jp-SideBar .lm-TabBar-tab[data-id="adapter-workbench-hub"]').click()
    sidebar = page.locator("#adapter-workbench-hub")
    status = sidebar.locator(".wb-ext-status")

    sidebar.locator(".wb-ext-filter-model").fill("../secrets")  # refused by the server, shown in the sidebar
    sidebar.locator(".wb-ext-search-button").click()
    status.filter(has_text="Search failed").wait_for(timeout=60_000)
    assert "model '../secrets' is not a valid name" in status.inner_text()

    sidebar.locator(".wb-ext-filter-model").fill("")
    sidebar.locator(".wb-ext-search input[type=search]").fill("sst-2")
    sidebar.locator(".wb-ext-filter-library").select_option("adapters")
    sidebar.locator(".wb-ext-search-button").click()
    status.filter(has_text="found").wait_for(timeout=60_000)
    found = sidebar.locator(".wb-ext-result").evaluate_all("items => items.map(i => i.dataset.adapterId)")
    assert SST2 in found and "demo-user/all-MiniLM-L6-v2-peft-lora" not in found  # the library filter works
    assert all("sst" in adapter_id.lower() for adapter_id in found)  # sst-2, or pf-sst2 of the tutorial ids

    sidebar.locator(f'.wb-ext-result[data-adapter-id="{SST2}"]').click()
    code = sidebar.locator(".wb-ext-load-code").inner_text()
    assert f"model.load_adapter('{SST2}', source='hf')" in code
    sidebar.locator(".wb-ext-insert").click()
    status.filter(has_text="Inserted").wait_for()
    first_cell = page.locator(CELLS).first.locator(".jp-InputArea-editor")
    assert f"load_adapter('{SST2}'" in first_cell.inner_text()

    run_cell(page, 0, timeout=300)  # the inserted code loads the MiniLM and the adapter from the demo Hub
    run_cell(page, 1)
    output = cell_output_text(page, 1)
    assert "loaded sst-2" in output, cell_output_text(page, 0) + output
