"""The README's support table is the one the spec registry generates, and the registry is all it reads."""

from pathlib import Path

import pytest

from workbench.core import support
from workbench.core.families import ARCHITECTURES

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_table_is_what_the_registry_generates():
    text = README.read_text(encoding="utf-8")
    assert support.readme_with_table(text) == text, "run `make support-table` (python -m workbench.core.support)"
    assert support.main(["--readme", str(README), "--check"]) == 0


def test_every_spec_is_a_row_with_its_methods_heads_and_adapterhub_status():
    rows = {row["model type"]: row for row in support.support_rows()}
    assert rows.keys() == ARCHITECTURES.keys()
    for model_type, row in rows.items():
        assert set(row["methods"]) == set(ARCHITECTURES[model_type].methods)
    assert rows["bert"]["AdapterHub"] == "native" and "masked_lm" in rows["bert"]["heads"]
    assert rows["qwen2"]["AdapterHub"] == "plugin" and "prompt_tuning" not in rows["qwen2"]["methods"]
    assert "multiple_choice" not in rows["gpt2"]["heads"]  # GPT2AdapterModel's own list
    assert support.adapterhub_status("olmo2") == "none"


def test_a_family_added_to_the_registry_appears_in_the_table_and_the_ui_choices(monkeypatch, tmp_path):
    monkeypatch.setitem(ARCHITECTURES, "olmo2", ARCHITECTURES["llama"])
    assert ("OLMo 2 (olmo2)", "olmo2") in support.model_families()
    assert "| OLMo 2 | `olmo2` |" in support.support_table()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{support.START}\nstale\n{support.END}\nrest\n", encoding="utf-8")
    assert support.main(["--readme", str(readme), "--check"]) == 1
    assert support.main(["--readme", str(readme)]) == 0
    assert (
        readme.read_text(encoding="utf-8") == f"intro\n{support.START}\n{support.support_table()}{support.END}\nrest\n"
    )
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="support-table:start"):
        support.main(["--readme", str(readme)])
