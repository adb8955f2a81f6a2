"""Listing cache and config-to-method naming, without a server."""

import time

import pytest

from workbench.hub.cache import HubUnavailableError, cached_listing
from workbench.hub.info import AdapterInfo
from workbench.hub.methods import method_name


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "listings"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return tmp_path / "listings"


def info(name: str) -> AdapterInfo:
    return AdapterInfo(source="hf", adapter_id=name, model_name="bert-base-uncased", downloads=3)


def test_fresh_listing_is_served_from_disk(cache):
    calls = []
    fetch = lambda: calls.append(1) or [info("a/b")]  # noqa: E731
    first = cached_listing({"q": 1}, fetch)
    second = cached_listing({"q": 1}, fetch)
    assert [i.adapter_id for i in second] == ["a/b"] and first == second
    assert len(calls) == 1
    cached_listing({"q": 1}, fetch, refresh=True)
    assert len(calls) == 2


def test_expired_listing_is_fetched_again(cache, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0.01")
    calls = []
    cached_listing({"q": 2}, lambda: calls.append(1) or [info("a/b")])
    time.sleep(0.05)
    cached_listing({"q": 2}, lambda: calls.append(1) or [info("a/c")])
    assert len(calls) == 2


def test_network_failure_falls_back_to_cache_with_a_warning(cache, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    cached_listing({"q": 3}, lambda: [info("a/b")])

    def broken():
        raise ConnectionError("connection refused")

    with pytest.warns(UserWarning, match="cached listing"):
        items = cached_listing({"q": 3}, broken)
    assert [i.adapter_id for i in items] == ["a/b"]


def test_offline_uses_cache_and_without_cache_says_so(cache, monkeypatch):
    cached_listing({"q": 4}, lambda: [info("a/b")])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    with pytest.warns(UserWarning, match="offline"):
        assert cached_listing({"q": 4}, lambda: pytest.fail("must not fetch offline"))[0].adapter_id == "a/b"
    with pytest.raises(HubUnavailableError, match="no cached listing"):
        cached_listing({"q": 5}, lambda: [info("x/y")])


def test_method_names_from_configs():
    assert method_name({"mh_adapter": False, "output_adapter": True, "original_ln_before": True}) == "seq_bn"
    assert method_name({"mh_adapter": True, "output_adapter": True, "original_ln_before": False}) == "double_seq_bn"
    assert method_name({"architecture": "lora", "composition_mode": "add"}) == "lora"
    assert method_name({"architecture": "lora", "composition_mode": "scale"}) == "ia3"
    assert method_name({"peft_type": "LORA"}) == "lora"
    assert method_name({"architecture": "prefix_tuning", "flat": False}) == "prefix_tuning"
    legacy_inv = {
        "mh_adapter": False,
        "output_adapter": True,
        "original_ln_before": True,
        "invertible_adapter": {"block_type": "nice", "reduction_factor": 2},
    }
    assert method_name(legacy_inv) == "seq_bn_inv"
    assert method_name(None) is None
