"""Real-browser tests: a real JupyterLab on 127.0.0.1 and Debian's Chromium driven by Playwright.

    with start_jupyterlab(folder, env) as lab, chromium_page() as page:
        open_notebook(page, lab, "demo.ipynb")
        run_cell(page, 0)
        page.locator(".wb-hub-search input").fill("sst")

`browser_skip_reason()` says why browser tests cannot run here (no `playwright` package, no /usr/bin/chromium);
`make test` installs Chromium with apt-get when it runs as root. No browser is ever downloaded.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# JupyterLab plugins that would reach the internet or cover the page with a notification
QUIET_PLUGINS = ("@jupyterlab/apputils-extension:announcements",)


def browser_skip_reason() -> str | None:
    """None when the browser tests can run; otherwise the reason, for pytest.skip."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the `playwright` package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM}: install Debian's chromium (`make test` does it with apt-get when run as root)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class JupyterLab:
    """A running JupyterLab: `url` (no trailing slash), `token`, its `root_dir` and the server's `log_path`."""

    url: str
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen

    def lab_url(self, path: str = "") -> str:
        """The URL opening `path` (relative to root_dir) in JupyterLab, token included."""
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def api(self, path: str):
        """GET `/api/<path>` as JSON (for example "kernels", "status")."""
        request = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


@contextmanager
def start_jupyterlab(root_dir, env: dict | None = None, timeout: float = 120) -> Iterator[JupyterLab]:
    """Start JupyterLab (token auth, 127.0.0.1, a free port) on `root_dir`; wait until it answers; stop it after.

    `env` is added to this process's environment, for the server and the kernels it starts. Jupyter's config,
    runtime, settings and workspace folders are fresh temporary ones, so no user setting or saved layout leaks in;
    JUPYTER_PATH is inherited only when `env` sets it (the notebook tests install their own kernelspec there).
    """
    root = Path(root_dir).resolve()
    home = Path(tempfile.mkdtemp(prefix="workbench-lab-"))
    port, token = free_port(), secrets.token_hex(16)
    config_dir = home / "config"
    (config_dir / "labconfig").mkdir(parents=True)
    page_config = {"disabledExtensions": {name: True for name in QUIET_PLUGINS}}
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(page_config))
    inherited = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    full_env = {
        **inherited,
        **(env or {}),
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "getuid") and os.getuid() == 0:
        command.append("--allow-root")
    log_path = home / "jupyterlab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    lab = JupyterLab(f"http://127.0.0.1:{port}", token, root, log_path, process)
    try:
        _wait_until_ready(lab, timeout)
        yield lab
    finally:
        _stop(process)
        shutil.rmtree(home / "runtime", ignore_errors=True)


def _wait_until_ready(lab: JupyterLab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {lab.process.returncode}:\n{lab.log()[-3000:]}")
        try:
            lab.api("status")
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{lab.log()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server then shuts its kernels down), then SIGKILL for the process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    """A Playwright page in Debian's Chromium with a fresh profile; closed after."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="workbench-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(60_000)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# ---- notebooks in JupyterLab ---------------------------------------------------------------------------------------
NOTEBOOK = ".jp-NotebookPanel:visible"  # the notebook in the current tab (other open tabs are hidden)


def write_notebook(path, *sources: str) -> Path:
    """A notebook of code cells with `sources`, for the python3 kernel."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(path)
    nbformat.write(notebook, path)
    return path


def open_notebook(page, lab: JupyterLab, path: str, timeout: float = 120) -> None:
    """Open `path` in JupyterLab (a fresh workspace: no tabs restored from earlier tests), wait until it is the
    current tab and its kernel is idle."""
    page.goto(lab.lab_url(path) + "&reset")
    name = Path(path).name
    page.locator(
        ".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabLabel", has_text=name
    ).first.wait_for(timeout=timeout * 1000)
    page.locator(f"{NOTEBOOK} .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
    wait_for_kernel_idle(page, timeout)


def wait_for_kernel_idle(page, timeout: float = 120) -> None:
    """Wait until a kernel is connected and idle (status bar "<kernel> | Idle", execution indicator idle)."""
    page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for(timeout=timeout * 1000)
    page.locator(f'{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
        timeout=timeout * 1000
    )


def run_cell(page, index: int, timeout: float = 180) -> None:
    """Run code cell `index` (0-based) with Shift+Enter and wait until it has finished.

    The key press is repeated if the cell has not started within a few seconds (a page still settling can swallow
    it); a cell that started is never run twice."""
    cell = page.locator(f"{NOTEBOOK} .jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputArea-prompt")
    deadline = time.monotonic() + timeout
    started = False
    while time.monotonic() < deadline:
        if not started:
            cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
        retry_at = time.monotonic() + 5
        while time.monotonic() < min(retry_at if not started else deadline, deadline):
            text = prompt.inner_text().strip()  # "[ ]:" before, "[*]:" while running, "[n]:" when done
            if text[1:-2].isdigit():
                return
            started = started or "*" in text
            time.sleep(0.2)
    raise TimeoutError(f"cell {index} did not finish within {timeout:.0f} s (prompt {prompt.inner_text()!r})")


def cell_output_text(page, index: int) -> str:
    """The text of cell `index`'s output area."""
    return page.locator(f"{NOTEBOOK} .jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea").inner_text()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot as test-artifacts/<name>.png (gitignored) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
