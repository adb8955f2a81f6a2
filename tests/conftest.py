"""Shared test setup: offline, quiet transformers, deterministic CPU runs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fusion_folder(tmp_path):
    """A tiny model with adapters a, b and a fusion of them saved to tmp_path/fusion, then deleted from the model."""
    from tiny import tiny_adapter_model

    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.save_adapter_fusion(tmp_path / "fusion", ["a", "b"])
    model.delete_adapter_fusion("a,b")
    return model, tmp_path / "fusion"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running `fakehub.FakeHub` (tests/fakehub.py) that huggingface_hub, already imported, talks to; closed after.

    huggingface_hub reads its environment once, at import, so besides the env vars this patches (with monkeypatch,
    undone after the test) the module constants that were derived from them:
    - env set: HF_ENDPOINT=hub.url, WORKBENCH_AH_INDEX_URL=hub.ah_url, HF_HOME=tmp_path/"hf_home",
      HF_HUB_DISABLE_TELEMETRY=1, HF_HUB_DISABLE_XET=1, NO_PROXY/no_proxy=127.0.0.1,localhost;
      env unset: HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_TOKEN, HUGGING_FACE_HUB_TOKEN, HF_OIDC_RESOURCE,
      HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_ASSETS_CACHE, HUGGINGFACE_ASSETS_CACHE, HF_XET_CACHE, HF_TOKEN_PATH.
    - huggingface_hub.constants: ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE (hf_hub_url), HF_HUB_OFFLINE=False,
      HF_HUB_DISABLE_TELEMETRY=True (no /api/agent-harnesses request), HF_HUB_DISABLE_XET=True, HF_HOME, HF_HUB_CACHE,
      HUGGINGFACE_HUB_CACHE (= HF_HOME/hub), HF_ASSETS_CACHE, HUGGINGFACE_ASSETS_CACHE, HF_XET_CACHE, HF_TOKEN_PATH,
      HF_STORED_TOKENS_PATH (no token is found, none is sent), CHECK_FOR_UPDATE_DONE_PATH,
      CHECK_FOR_SKILL_UPDATE_DONE_PATH, AGENT_HARNESSES_PATH.
    - huggingface_hub.hf_api.api.endpoint: the HfApi built at import behind the module-level functions
      (huggingface_hub.list_models, model_info, file_exists, ...).
    - copies imported by value: huggingface_hub.utils._cache_manager.HF_HUB_CACHE (scan_cache_dir),
      huggingface_hub.utils._cache_assets.HF_ASSETS_CACHE.
    - `time` in huggingface_hub.utils._http and huggingface_hub.file_download: retry back-off and download-resume
      sleeps return at once; the seconds asked for are appended to `hub.retry_sleeps`.
    - huggingface_hub.utils._http.close_session() before and after: a fresh shared httpx client.
    - datasets.config (read at import): HF_ENDPOINT, HUB_DATASETS_URL, HF_HUB_OFFLINE=HF_DATASETS_OFFLINE=False,
      HF_DATASETS_CACHE (= HF_HOME/datasets) with its downloads/extracted folders, HF_MODULES_CACHE, so that
      `datasets.load_dataset("org/name")` reads dataset repos added with `add_repo(..., repo_type="dataset")`.
    Timeouts are left as they are (constants.HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT, 10 s); patch them to test
    a "timeout" fault. transformers' HF_MODULES_CACHE (remote code only) is not patched.
    """
    from fakehub import FakeHub, use_fake_hub
    from huggingface_hub.utils import _http

    hub = FakeHub()
    try:
        use_fake_hub(monkeypatch, hub, tmp_path / "hf_home")
        yield hub
    finally:
        hub.close()
        _http.close_session()


@pytest.fixture(scope="module")
def demo_hub(tmp_path_factory, request):
    """The demo Hub (tests/demo_hub.py: adapters for the bundled MiniLM) on 127.0.0.1, for browser tests."""
    from demo_hub import start_demo_hub

    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    cache = cache.mkdir("workbench-demo-hub") if cache else None
    hub = start_demo_hub(cache or tmp_path_factory.mktemp("demo-hub"))
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, demo_hub):
    """JupyterLab on 127.0.0.1 (tests/browser_support.py) whose server and kernels use the demo Hub."""
    from browser_support import start_jupyterlab
    from demo_hub import kernel_env

    root = tmp_path_factory.mktemp("lab")
    env = {**kernel_env(demo_hub, root.parent / "hf_home"), "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    with start_jupyterlab(root, env) as server:
        yield server
