"""Run the tutorial notebooks offline (`pytest --nbval-lax notebooks`): their kernels talk to the demo Hub.

`pytest_configure` starts `tests/demo_hub.py` (real adapters for the bundled MiniLM on a local fake Hub) and
installs, in a temporary JUPYTER_PATH, a `python3` kernelspec whose environment points huggingface_hub at it
(HF_ENDPOINT, WORKBENCH_AH_INDEX_URL, a fresh HF_HOME, no telemetry, no Xet, HF_HUB_OFFLINE=0) and sets the
notebooks' parameters (WORKBENCH_NB_*) to the demo Hub's ids and a few training steps. The pytest process's own
environment keeps its Hub settings, so the other tests are not affected.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def notebook_parameters(model_id: str, output_dir: Path) -> dict[str, str]:
    """The WORKBENCH_NB_* values the notebooks' parameters cells read (see each notebook's first code cell)."""
    short = model_id.split("/")[-1]
    return {
        "WORKBENCH_NB_MODEL": model_id,
        "WORKBENCH_NB_LANG_MODEL": model_id,
        "WORKBENCH_NB_HF_ADAPTER": f"AdapterHub/{short}-sst-2_pfeiffer",
        "WORKBENCH_NB_PARALLEL_ADAPTERS": f"AdapterHub/{short}-sst-2_pfeiffer,AdapterHub/{short}-pf-imdb",
        "WORKBENCH_NB_STEPS": "6",
        "WORKBENCH_NB_OUTPUT": str(output_dir),
    }


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


def pytest_configure(config):
    if not (config.getoption("nbval", False) or config.getoption("nbval_lax", False)):
        return
    sys.path.insert(0, str(TESTS))
    from demo_hub import MODEL_ID, kernel_env, start_demo_hub

    temp = Path(tempfile.mkdtemp(prefix="workbench-notebooks-"))
    cache = getattr(config, "cache", None)  # adapters are built once and kept in pytest's cache folder
    hub = start_demo_hub(cache.mkdir("workbench-demo-hub") if cache else temp / "demo-hub")
    env = {
        **kernel_env(hub, temp / "hf_home"),
        **notebook_parameters(MODEL_ID, temp / "runs"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        "MPLBACKEND": "agg",
    }
    _kernelspec(temp / "jupyter", env)
    config._workbench_notebooks = (hub, temp, os.environ.get("JUPYTER_PATH"))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(temp / "jupyter"), os.environ.get("JUPYTER_PATH")]))


def pytest_unconfigure(config):
    state = getattr(config, "_workbench_notebooks", None)
    if state is None:
        return
    hub, temp, jupyter_path = state
    hub.close()
    if jupyter_path is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = jupyter_path
    shutil.rmtree(temp, ignore_errors=True)
