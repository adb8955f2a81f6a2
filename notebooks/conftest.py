"""Run the tutorial notebooks offline (`pytest --nbval-lax notebooks`) the way the README's `make demo-lab` runs them.

`make demo-lab` starts the demo Hub (`tests/demo_hub.py`: the MiniLM and demo adapters, served on 127.0.0.1 under
the notebooks' own Hub ids) and JupyterLab with `demo_environment` (HF_ENDPOINT, WORKBENCH_AH_INDEX_URL, its own
HF_HOME, ...), which its kernels inherit. Here `pytest_configure` starts the same demo Hub and gives the notebook
kernels the same environment through a `python3` kernelspec in a temporary JUPYTER_PATH; the notebooks get nothing
else (no test-only variables). The pytest process's own environment keeps its Hub settings, so other tests are not
affected.

The kernels run in a temporary copy of this folder (its `data/`), not here: the notebooks' `runs/` outputs stay out
of the repository and every test run starts from none.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"


def _kernelspec(folder: Path, env: dict[str, str]) -> None:
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (demo Hub)",
        "language": "python",
        "env": env,
        "metadata": {"debugger": False},
    }
    (folder / "kernels" / "python3").mkdir(parents=True)
    (folder / "kernels" / "python3" / "kernel.json").write_text(json.dumps(spec, indent=1))


def _run_kernels_in(folder: Path):
    """nbval starts each notebook's kernel in the notebook's folder; start it in `folder` (a copy) instead.

    Returns nbval's own class, put back by `pytest_unconfigure`."""
    from nbval import plugin

    started = plugin.RunningKernel

    class KernelInCopy(started):
        def __init__(self, kernel_name, cwd=None, **kwargs):
            super().__init__(kernel_name, cwd=str(folder), **kwargs)

    plugin.RunningKernel = KernelInCopy
    return started


def pytest_configure(config):
    if not (config.getoption("nbval", False) or config.getoption("nbval_lax", False)):
        return
    sys.path.insert(0, str(TESTS))
    from demo_hub import demo_environment, start_demo_hub

    temp = Path(tempfile.mkdtemp(prefix="workbench-notebooks-"))
    cache = getattr(config, "cache", None)  # adapters are built once and kept in pytest's cache folder
    hub = start_demo_hub(cache.mkdir("workbench-demo-hub") if cache else temp / "demo-hub")
    env = {
        **demo_environment(hub, temp),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "MPLBACKEND": "agg",
    }
    _kernelspec(temp / "jupyter", env)
    shutil.copytree(HERE / "data", temp / "notebooks" / "data")
    started = _run_kernels_in(temp / "notebooks")
    config._workbench_notebooks = (hub, temp, os.environ.get("JUPYTER_PATH"), started)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(temp / "jupyter"), os.environ.get("JUPYTER_PATH")]))


def pytest_unconfigure(config):
    state = getattr(config, "_workbench_notebooks", None)
    if state is None:
        return
    hub, temp, jupyter_path, started = state
    from nbval import plugin

    plugin.RunningKernel = started
    hub.close()
    if jupyter_path is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = jupyter_path
    shutil.rmtree(temp, ignore_errors=True)
