"""The tutorials need only what the README says: real Hub ids, and offline the one `make demo-lab` command.

The notebooks themselves run in `pytest --nbval-lax notebooks` (notebooks/conftest.py, the same demo Hub and
environment as `make demo-lab`); here: they read no test-only settings, and the command `make demo-lab` runs serves
their ids to the process it starts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def code_of(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_reads_no_environment_variables(path):
    """Every value a tutorial uses is in the notebook: nothing only the tests would set."""
    code = code_of(path)
    assert not re.search(r"\bos\.(environ|getenv)|WORKBENCH_NB_", code)


def test_make_demo_lab_runs_jupyterlab_on_the_demo_hub():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo-lab:.*\n\t(.*)$", makefile, re.M).group(1)
    assert "tests/demo_hub.py --run" in recipe and "jupyter lab" in recipe and "notebooks/" in recipe


CHILD = """
import json, os
from huggingface_hub import HfApi, hf_hub_download
from workbench import list_adapters

config = json.load(open(hf_hub_download("bert-base-uncased", "config.json")))
archived = [i.adapter_id for i in list_adapters(source="ah", model_name="bert-base-uncased")]
hub = [i.adapter_id for i in list_adapters(source="hf", model_name="bert-base-uncased", library="adapters")]
multilingual = HfApi().model_info("bert-base-multilingual-cased").id
print(json.dumps({"model_type": config["model_type"], "archived": archived, "hub": hub,
                  "hf_home": os.environ["HF_HOME"], "multilingual": multilingual}))
"""


def test_demo_hub_run_serves_the_tutorials_hub_ids_to_the_command(tmp_path, request):
    """`tests/demo_hub.py --run CMD` (what `make demo-lab` runs): CMD finds the tutorials' models and adapters."""
    cache = request.config.cache.mkdir("workbench-demo-hub") / "adapters"
    if (cache / "BUILD").is_file():  # built before (by the notebook or browser tests): skip the minute of building
        shutil.copytree(cache, tmp_path / "adapters")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "demo_hub.py"), "--workdir", str(tmp_path), "--run"]
        + [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["model_type"] == "bert"
    assert "@ukp/bert-base-uncased_sentiment_sst-2_pfeiffer" in found["archived"]
    assert {"AdapterHub/bert-base-uncased-pf-sst2", "AdapterHub/bert-base-uncased-pf-imdb"} <= set(found["hub"])
    assert found["multilingual"] == "google-bert/bert-base-multilingual-cased"
    assert found["hf_home"] == str(tmp_path / "hf_home")  # its own cache, never the user's
    assert (tmp_path / "hf_home" / "hub" / "models--bert-base-uncased").is_dir()
