"""Every listed adapter says which model family it is for: the whole archived AdapterHub index (a copy of its 291
entries, tests/data) and Hub listings (the listing's `config.model_type`, adapter_config.json, or the base model's
name for PEFT repos)."""

import json
from pathlib import Path

import pytest

from workbench import get_adapter_info, list_adapters, search_adapters
from workbench.core.families import ARCHITECTURES
from workbench.hub.families import model_type_of
from workbench.hub.info import AdapterInfo

ARCHIVE = Path(__file__).parent / "data" / "adapterhub_archive_entries.json"
# Issue 12's families (model types): the ones shipped before it, and the ones it adds.
ISSUE_FAMILIES = set(
    "bert roberta xlm-roberta distilbert gpt2 llama mistral qwen2 "
    "bart mbart plbart t5 mt5 whisper encoder-decoder "
    "albert deberta deberta-v2 electra bert-generation xmod modernbert vit beit clip "
    "gptj gpt_neox gemma gemma2 gemma3_text phi phi3 qwen3 olmo2".split()
)


def archive_entries() -> list[dict]:
    data = json.loads(ARCHIVE.read_text(encoding="utf-8"))
    return [
        dict(zip(data["columns"], row, strict=True), source="ah", username=row[0][1:].split("/")[0])
        for row in data["entries"]
    ]


def test_every_archived_adapter_resolves_to_a_family_of_the_issue(fake_hub):
    entries = archive_entries()
    assert len(entries) == 291
    fake_hub.add_ah_file("all.json", entries)
    infos = list_adapters(source="ah")
    assert len(infos) == 291
    unknown = [(i.adapter_id, i.model_name, i.model_type) for i in infos if i.model_type not in ISSUE_FAMILIES]
    assert not unknown
    families = {}
    for info in infos:
        families[info.model_type] = families.get(info.model_type, 0) + 1
    assert families == {
        "bert": 135,
        "xlm-roberta": 54,
        "roberta": 39,
        "distilbert": 25,
        "bart": 21,
        "gpt2": 16,
        "mbart": 1,
    }
    # loadable today: all but the BART family, whose spec another part of the issue adds
    assert {i.model_type for i in infos} - set(ARCHITECTURES) <= {"bart", "mbart"}
    assert [i.adapter_id for i in infos if i.model_type == "mbart"] == [
        "@ukp/facebook-mbart-large-cc25_translation_wmt16_ro_en_pfeiffer"
    ]
    bart = search_adapters(source="ah", model_type="bart", page_size=100)
    assert bart.total == 21 and {i.model_name for i in bart} == {"facebook/bart-base", "facebook/bart-large"}


@pytest.mark.parametrize(
    "name, family",
    [
        ("FacebookAI/roberta-base", "roberta"),
        ("xlm-roberta-large", "xlm-roberta"),
        ("microsoft/deberta-v3-base", "deberta-v2"),
        ("google/flan-t5-base", "t5"),
        ("google/mt5-small", "mt5"),
        ("uclanlp/plbart-base", "plbart"),
        ("openai/clip-vit-base-patch32", "clip"),
        ("EleutherAI/pythia-70m", "gpt_neox"),
        ("google/gemma-2-2b", "gemma2"),
        ("google/gemma-2b", "gemma"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
        ("Qwen/Qwen2.5-0.5B", "qwen2"),
        ("HuggingFaceTB/SmolLM2-135M", "llama"),
        ("allenai/OLMo-2-0425-1B", "olmo2"),
        ("camembert-base", None),  # not a family we know: unknown, not "bert" from inside a word
        (None, None),
    ],
)
def test_a_base_model_name_gives_its_family_and_a_listed_model_type_wins(name, family):
    assert model_type_of(name) == family
    assert model_type_of(name, "bart") == "bart"


def test_the_hf_listing_shows_each_adapters_family(fake_hub):
    common = dict(library_name="adapter-transformers", tags=["adapter-transformers"])
    fake_hub.add_repo(
        "AdapterHub/roberta-base-pf-sick",
        {"adapter_config.json": b"{}"},
        **common,
        config={"model_type": "roberta", "adapter_transformers": {"model_name": "roberta-base"}},
    )
    old = json.dumps({"model_type": "bart", "model_name": "facebook/bart-base", "config": {"architecture": "lora"}})
    fake_hub.add_repo("someone/old-adapter", {"adapter_config.json": old.encode()}, **common)  # no config listed
    fake_hub.add_repo(
        "someone/qwen3-lora",
        {"adapter_config.json": b'{"peft_type": "LORA"}'},
        library_name="peft",
        tags=["peft", "lora", "base_model:adapter:Qwen/Qwen3-0.6B"],
    )
    infos = {i.adapter_id: i for i in list_adapters(source="hf", library="all")}
    assert {k: i.model_type for k, i in infos.items()} == {
        "AdapterHub/roberta-base-pf-sick": "roberta",
        "someone/old-adapter": "bart",  # the listing does not say: its adapter_config.json, read for the method, does
        "someone/qwen3-lora": "qwen3",
    }
    assert infos["someone/old-adapter"].method == "lora" and infos["someone/qwen3-lora"].method == "lora"
    assert get_adapter_info("someone/old-adapter").model_type == "bart"
    assert [i.adapter_id for i in search_adapters(model_type="qwen3", source="hf")] == ["someone/qwen3-lora"]
    table = search_adapters(source="hf", sort="model_type").to_dataframe()
    assert list(table["model_type"]) == ["bart", "qwen3", "roberta"]


def test_listings_cached_before_the_field_existed_get_it_from_the_model_name():
    cached = {"source": "ah", "adapter_id": "@ukp/x", "model_name": "facebook/mbart-large-cc25"}
    assert AdapterInfo.from_dict(cached).model_type == "mbart"
    assert AdapterInfo.from_dict({**cached, "model_type": "bart"}).model_type == "bart"
