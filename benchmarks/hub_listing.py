"""Cost of listing one model's adapters on the Hub: workbench's server-side filters vs the `adapters` approach.

On the fake Hub (tests/fakehub.py, a real HTTP server on 127.0.0.1, in this process) holding 5,000+ AdapterHub-format
repos, a few hundred PEFT repos and some plain model repos, measures in one run, interleaved round-robin:
  1. workbench `list_adapters(source="hf", model_name=...)`, cache emptied before every call;
  2. the `adapters` library's approach (adapters utils.py `list_adapters`): `HfApi().list_models(filter=<tag>,
     full=True, fetch_config=True)` over every page, then the model_name filter on the client. The library asks for
     `filter="adapters"` and reads `config["adapters"]`, which finds nothing on the real Hub; this run uses the tag
     the repos carry (`adapter-transformers`) and `config["adapter_transformers"]`, to measure the approach itself;
  3. workbench's repeated call, served from its listing cache.
Writes benchmarks/results/hub_listing.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fakehub import FakeHub, use_fake_hub  # noqa: E402

from workbench.hub import list_adapters  # noqa: E402
from workbench.hub.info import AdapterInfo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = [("sentiment", s) for s in ("imdb", "sst-2", "rotten_tomatoes", "yelp_polarity")] + [
    ("nli", s) for s in ("multinli", "rte", "qnli", "scitail", "snli", "anli")] + [
    ("qa", s) for s in ("squad", "squad_v2", "boolq", "drop", "hotpotqa", "quoref", "duorc_p")] + [
    ("comsense", s) for s in ("hellaswag", "cosmos_qa", "winogrande", "csqa", "siqa", "piqa")] + [
    ("ner", "conll2003"), ("pos", "ud_ewt"), ("sts", "mrpc"), ("sts", "qqp"), ("lingaccept", "cola"),
    ("emotion", "emo"), ("argument", "ukpsent"), ("rc", "race"), ("topic", "ag_news"), ("hate", "hatexplain")]
# AdapterHub-format repos per base model; bert-base-uncased is the one asked for, and distilbert-base-uncased also
# matches the Hub's substring `search=bert-base-uncased`, so workbench must drop those on the client.
ADAPTERHUB = {"bert-base-uncased": 36, "distilbert-base-uncased": 90, "roberta-base": 1400, "roberta-large": 500,
              "bert-base-cased": 300, "bert-large-uncased": 200, "xlm-roberta-base": 700, "xlm-roberta-large": 300,
              "bert-base-multilingual-cased": 400, "facebook/bart-base": 200, "gpt2": 250, "t5-base": 200,
              "microsoft/deberta-v3-base": 250, "albert-base-v2": 150, "distilroberta-base": 124}
PEFT = {"bert-base-uncased": 8, "roberta-base": 120, "meta-llama/Llama-2-7b-hf": 150, "gpt2": 22}
PLAIN = 500  # `transformers` repos with no adapter tag: the server filters them away for both approaches
SEQ_BN = {"architecture": "bottleneck", "mh_adapter": False, "output_adapter": True, "original_ln_before": True,
          "reduction_factor": 16, "non_linearity": "relu", "residual_before_ln": True}


def populate(hub: FakeHub) -> dict:
    """AdapterHub-like repos: `AdapterHub/<model>-pf-<subtask>` first, then users' `<model>-<subtask>-<n>`."""
    blob = b"\0" * 64  # weights are never downloaded by a listing; only their names appear (siblings)
    for model, count in ADAPTERHUB.items():
        short, family = model.split("/")[-1], model.split("/")[-1].split("-")[0]
        for i in range(count):
            task, subtask = TASKS[i % len(TASKS)]
            repo = f"AdapterHub/{short}-pf-{subtask}" if i < len(TASKS) else f"user{i * 37 % 997}/{short}-{subtask}-{i}"
            config = {"config": SEQ_BN, "hidden_size": 768, "model_class": "BertAdapterModel", "model_name": model,
                      "model_type": family, "name": subtask, "version": "adapters.1.0.0"}
            files = {"README.md": f"---\ntags:\n- adapter-transformers\n- adapterhub:{task}/{subtask}\n---\n",
                     "adapter_config.json": json.dumps(config), "pytorch_adapter.bin": blob,
                     "head_config.json": json.dumps({"model_name": model, "name": subtask}),
                     "pytorch_model_head.bin": blob}
            hub.add_repo(repo, files, library_name="adapter-transformers", downloads=(i * 7919) % 5000,
                         tags=[family, f"adapterhub:{task}/{subtask}", "text-classification", "en",
                               f"dataset:{subtask}", "arxiv:2104.08247", "region:us"],
                         config={"model_type": family, "adapter_transformers": {"model_name": model}})
    for model, count in PEFT.items():
        for i in range(count):
            repo = f"peftuser{i % 50}/{model.split('/')[-1]}-lora-{i}"
            hub.add_repo(repo, {"README.md": "# LoRA\n", "adapter_config.json": json.dumps(
                {"base_model_name_or_path": model, "peft_type": "LORA", "r": 8}), "adapter_model.safetensors": blob},
                library_name="peft", tags=["lora", f"base_model:{model}", f"base_model:adapter:{model}"],
                config={"peft": {"base_model_name_or_path": model, "task_type": "SEQ_CLS"}})
    for i in range(PLAIN):
        hub.add_repo(f"org{i % 80}/model-{i}", {"config.json": "{}", "model.safetensors": blob},
                     library_name="transformers", tags=["bert", "fill-mask"], config={"model_type": "bert"})
    return {"adapterhub": sum(ADAPTERHUB.values()), "peft": sum(PEFT.values()), "plain": PLAIN}


def adapters_approach(model_name: str) -> list[AdapterInfo]:
    """What adapters' `list_adapters(source="hf", model_name=...)` does, with the tag and config key corrected."""
    api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
    infos = []
    for model in api.list_models(filter="adapter-transformers", full=True, fetch_config=True):
        name = (model.config or {}).get("adapter_transformers", {}).get("model_name")
        infos.append(AdapterInfo(source="hf", adapter_id=model.id, model_name=name,
                                 username=model.id.split("/")[0], sha1_checksum=model.sha))
    return [info for info in infos if info.model_name == model_name]


def run(hub: FakeHub, cache: Path, model: str, repeats: int) -> dict:
    def cold(**options):
        shutil.rmtree(cache, ignore_errors=True)
        return list_adapters(source="hf", model_name=model, **options)

    variants = {"workbench, empty cache": cold, "adapters approach": lambda: adapters_approach(model),
                "workbench, from cache": lambda: list_adapters(source="hf", model_name=model)}
    if "library" in inspect.signature(list_adapters).parameters:  # AdapterHub + PEFT repos: one more request
        variants["workbench library='all', empty cache"] = lambda: cold(library="all")
    runs = {name: [] for name in variants}
    for round_ in range(repeats + 1):  # round 0 warms the HTTP client and imports up; not recorded
        for name, fn in variants.items():
            hub.reset_log()
            start = time.perf_counter()
            found = fn()
            elapsed = time.perf_counter() - start
            if round_:
                runs[name].append((elapsed, len(hub.requests), sum(r["bytes"] for r in hub.requests), found))
    rows = {}
    for name, records in runs.items():
        assert len({(n, b) for _, n, b, _ in records}) == 1, f"{name}: requests/bytes differ between repeats"
        found = records[0][3]
        times = [t * 1000 for t, _, _, _ in records]
        rows[name] = {"requests": records[0][1], "bytes": records[0][2], "median_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times), "results": len(found),
                      "adapterhub_ids": sorted(i.adapter_id for i in found if i.library == "adapters"),
                      "peft_results": sum(i.library == "peft" for i in found)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page-size", type=int, default=1000, help="items per listing page (default 1000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="bert-base-uncased")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hub_listing_"))
    hub = FakeHub(page_size=args.page_size)
    try:
        with pytest.MonkeyPatch.context() as mp:
            use_fake_hub(mp, hub, work / "hf_home")
            mp.setenv("WORKBENCH_CACHE", str(work / "listings"))
            mp.setenv("WORKBENCH_LISTING_TTL", "3600")
            counts = populate(hub)
            rows = run(hub, work / "listings", args.model, args.repeats)
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)
    wb, ad, cached = rows["workbench, empty cache"], rows["adapters approach"], rows["workbench, from cache"]
    assert all(r["adapterhub_ids"] == ad["adapterhub_ids"] for r in rows.values()), "the approaches disagree"
    assert len(ad["adapterhub_ids"]) == ADAPTERHUB[args.model]
    ratios = {k: ad[k] / wb[k] for k in ("requests", "bytes", "median_ms")}
    ratios["median_ms vs cache"] = ad["median_ms"] / cached["median_ms"]
    setting = {"model_name": args.model, "page_size": args.page_size, "repeats": args.repeats, "repos": counts,
               "huggingface_hub": huggingface_hub.__version__, "python": sys.version.split()[0],
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "adapters_approach": "list_models(filter='adapter-transformers', full=True, fetch_config=True), every "
               "page, model_name filtered on the client from config['adapter_transformers'] (the library itself "
               "uses filter='adapters' and config['adapters'], which find nothing on the real Hub)"}
    total = sum(counts.values())
    header = (f"fake Hub: {total:,} repos ({counts['adapterhub']:,} AdapterHub-format, {counts['peft']} PEFT, "
              f"{counts['plain']} plain), {args.page_size} items per listing page; model_name={args.model!r} "
              f"({ADAPTERHUB[args.model]} AdapterHub + {PEFT.get(args.model, 0)} PEFT repos); median of "
              f"{args.repeats} interleaved repeats; huggingface_hub {huggingface_hub.__version__}")
    lines = ["| approach | requests | bytes received | median ms | min–max ms | AdapterHub results | PEFT results |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['requests']} | {r['bytes']:,} | {r['median_ms']:.1f} | {r['min_ms']:.1f}–"
                     f"{r['max_ms']:.1f} | {len(r['adapterhub_ids'])} | {r['peft_results']} |")
    lines.append(f"| **ratio adapters / workbench (empty cache)** | {ratios['requests']:.1f}× "
                 f"| {ratios['bytes']:,.0f}× | {ratios['median_ms']:.1f}× | | | |")
    lines.append(f"| **ratio adapters / workbench (from cache)** | – (0 requests) | – (0 bytes) | "
                 f"{ratios['median_ms vs cache']:,.0f}× | | | |")
    table = "\n".join(lines)
    notes = (f"- adapters approach: {setting['adapters_approach']}. It lists AdapterHub-format repos only, as "
             "workbench does by default; PEFT repos (`library='all'` where workbench has it) take one more request "
             "(`filter=peft&filter=base_model:adapter:<model>`).\n"
             "- workbench: two server-side queries, `filter=adapter-transformers&search=<model short name>` "
             "(AdapterHub's ids contain the model's name) and `filter=adapter-transformers&filter=base_model:adapter:"
             "<model>` (repos with free-form names whose card declares the base model), both `full=true&config=true`,"
             " then `config.adapter_transformers.model_name` on the client (drops the distilbert-base-uncased repos "
             "that the substring search also returns). A repo with a free-form name and no base-model tag is "
             "missed; the adapters approach finds it at the cost of listing every adapter on the Hub.\n"
             "- bytes: response bodies sent by the fake Hub (no headers). Time: loopback, no network latency, and the "
             "server runs in this process, so its JSON encoding is in the timing; on the real Hub each extra page "
             "also costs a round trip. The fake builds the item of every matching repo for each page it serves, "
             "which inflates the adapters approach's time the more pages it takes.\n"
             "- All rows return the same AdapterHub repos (asserted).")
    print(header + "\n\n" + table + "\n\n" + notes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hub_listing.json").write_text(json.dumps(
        {"setting": setting, "results": [{"approach": n, **r} for n, r in rows.items()], "ratios": ratios}, indent=2))
    (RESULTS / "hub_listing.md").write_text(f"# Hub listing\n\n{header}\n\n{table}\n\n{notes}\n")


if __name__ == "__main__":
    main()
