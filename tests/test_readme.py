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
