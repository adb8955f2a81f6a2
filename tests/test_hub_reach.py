"""Offline that helps: a Hub that cannot be reached fails in seconds, with a message that says what to do.

Two ways to be offline, both real sockets on 127.0.0.1: a closed port (connection refused at once) and a port that
accepts connections but never answers (huggingface_hub alone waits there without limit, and retries 5 times).
"""

import contextlib
import socket
import time

import pytest
from test_hub import MODEL, adapter_files, add_adapterhub_repo  # noqa: F401  (adapter_files is a fixture)

import workbench
from workbench import search_adapters
from workbench.hub import HubUnavailableError, HubUnreachable, check_hub, hub_unreachable, list_adapters
from workbench.hub.reach import forget_checks

pytest_plugins = ["pytest_jupyter.jupyter_server"]  # the extension's routes, for the last test

GENEROUS_S = 15  # the bound; the check itself gives up after WORKBENCH_HUB_TIMEOUT (4 s)


@contextlib.contextmanager
def silent_server():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def assert_helpful(message: str, url: str) -> None:
    assert "cannot be reached" in message and url in message
    assert "HF_HUB_OFFLINE=1" in message and "HF_ENDPOINT" in message and "local folder" in message
    assert "Errno" not in message and "[" not in message


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"jupyterlab_adapter_workbench": True}}}


@pytest.fixture
def away(fake_hub, monkeypatch):
    """Point the Hub and the AdapterHub index somewhere: `away(url)`."""
    forget_checks()

    def point(url: str) -> str:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("WORKBENCH_AH_INDEX_URL", url + "/ah")
        return url

    yield point
    forget_checks()


@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_a_search_fails_fast_with_what_to_do(away, kind):
    with silent_server() if kind == "silent" else contextlib.nullcontext(closed_port()) as url:
        away(url)
        started = time.monotonic()
        with pytest.raises(HubUnreachable) as caught:
            search_adapters("sst")  # both sources, the same unreachable host
        took = time.monotonic() - started
    assert took < GENEROUS_S, f"took {took:.1f} s"
    assert_helpful(str(caught.value), url)
    assert isinstance(caught.value, HubUnavailableError) and isinstance(caught.value, ConnectionError)
    reason = "connection refused" if kind == "closed" else "no answer within"
    assert reason in str(caught.value)


def test_an_adapter_load_fails_fast_or_uses_the_copy_downloaded_before(away, fake_hub, adapter_files):  # noqa: F811
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    model = workbench.AutoAdapterModel.from_pretrained(base)
    with silent_server() as url:
        away(url)
        started = time.monotonic()
        with pytest.raises(workbench.AdapterLoadError) as caught:  # also a HubUnreachable
            model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb")
        assert time.monotonic() - started < GENEROUS_S
    assert isinstance(caught.value, HubUnreachable) and not model.adapters
    assert_helpful(str(caught.value), url)
    away(fake_hub.url)
    assert model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb") == "imdb"  # downloaded now
    model.delete_adapter("imdb")
    away(closed_port())
    assert model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb") == "imdb"  # offline: the copy from before


def test_listings_fall_back_to_the_cache_with_a_notice(away, fake_hub, adapter_files, monkeypatch):  # noqa: F811
    files, _ = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    assert len(list_adapters(source="hf", model_name=MODEL)) == 1
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    url = away(closed_port())
    with pytest.warns(UserWarning, match="cannot be reached"):
        stale = list_adapters(source="hf", model_name=MODEL)
    assert [i.adapter_id for i in stale] == ["AdapterHub/bert-base-uncased-pf-imdb"] and stale.from_cache
    assert f"The Hub at {url} cannot be reached" in stale.notice and "cached listing" in stale.notice


def test_connection_errors_from_other_libraries_map_to_the_same_message(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as cause:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from cause
    except OSError as err:
        mapped = hub_unreachable(err)
    assert mapped is not None and "could not be looked up" in str(mapped) and "Errno" not in str(mapped)
    assert_helpful(str(mapped), "https://hub.example")
    assert hub_unreachable(ValueError("a bad config")) is None
    assert hub_unreachable(workbench.AdapterLoadError("corrupt file")) is None


def test_offline_mode_never_asks_the_network(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", closed_port())
    check_hub()  # no check, no error: offline mode uses the caches


async def test_the_extensions_search_says_the_same_within_seconds(jp_fetch, away):
    from test_extension_server import get_error

    url = away(closed_port())
    started = time.monotonic()
    error = await get_error(jp_fetch, "search", 502, q="sst")
    assert time.monotonic() - started < GENEROUS_S
    assert_helpful(error["error"], url)
