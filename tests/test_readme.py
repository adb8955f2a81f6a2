"""The README's quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md quickstart", "exec"), namespace)
    assert (tmp_path / "saved" / "sst-2" / "adapter_config.json").is_file()
    assert namespace["logits"].shape == (1, 2)
    assert namespace["name"] == "sst-2-copy"


def test_readme_names_the_two_setup_commands():
    text = README.read_text()
    assert "make lab" in text and "make test" in text


def test_readme_names_the_one_demo_hub_command_the_tutorials_need_offline():
    """The Makefile target exists and is the command the Notebooks section gives (tests/test_tutorials.py checks
    what it starts)."""
    text = README.read_text()
    notebooks = text[text.index("## Notebooks") :]
    notebooks = notebooks[: notebooks.index("\n## ")]
    assert "make demo-lab" in notebooks
    makefile = (README.parent / "Makefile").read_text()
    assert "\ndemo-lab:" in makefile


def test_readme_screenshots_exist():
    images = re.findall(r"\]\((docs/screenshots/[^)]+\.png)\)", README.read_text())
    assert images, "the workbench section shows screenshots"
    missing = [image for image in images if not (README.parent / image).is_file()]
    assert missing == []
