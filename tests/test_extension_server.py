"""The JupyterLab extension's server routes (/adapter-workbench/search, /info) on a real Jupyter server (pytest-jupyter)
against the fake Hub: results, load code that really loads, bad queries, and no access without a token."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from jupyterlab_adapter_workbench.handlers import POOL_SETTING
from tiny import tiny_adapter_model
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]

MODEL = "google-bert/bert-base-uncased"  # the fake Hub serves org/name repos only
SEQ_BN_REPO = "AdapterHub/bert-base-uncased-pf-imdb"
ARCHIVE_ID = "@ukp/bert-base-uncased-imdb_pfeiffer"


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"jupyterlab_adapter_workbench": True}}}


@pytest.fixture
def hub(fake_hub, tmp_path):
    """The fake Hub with the tiny BERT as `bert-base-uncased`, two AdapterHub repos, a PEFT repo and the archive."""
    model = tiny_adapter_model("bert")
    model.add_adapter("imdb", config="seq_bn")
    model.add_classification_head("imdb", num_labels=2, id2label={0: "neg", 1: "pos"})
    with torch.no_grad():
        for _, param in model._adapter_parameters("imdb"):
            param.add_(torch.randn_like(param))
    model.save_adapter(tmp_path / "imdb", "imdb")
    _set_model_name(tmp_path / "imdb" / "adapter_config.json")
    _set_model_name(tmp_path / "imdb" / "head_config.json")
    model.base_model.save_pretrained(tmp_path / "base")
    fake_hub.add_folder(MODEL, tmp_path / "base", tags=["bert"], config={"model_type": "bert"})
    files = {p.name: p.read_bytes() for p in (tmp_path / "imdb").iterdir()}
    for repo, task, downloads in (
        (SEQ_BN_REPO, "sentiment/imdb", 500),
        ("AdapterHub/bert-base-uncased-pf-qqp", "sts/qqp", 90),
    ):
        fake_hub.add_repo(
            repo,
            files,
            tags=["bert", f"adapterhub:{task}"],
            library_name="adapter-transformers",
            config={"model_type": "bert", "adapter_transformers": {"model_name": MODEL}},
            downloads=downloads,
        )
    fake_hub.add_repo(
        "someone/bert-lora-sentiment",
        {"adapter_config.json": json.dumps({"peft_type": "LORA", "base_model_name_or_path": MODEL}).encode()},
        tags=["lora", f"base_model:adapter:{MODEL}"],
        library_name="peft",
        downloads=20,
    )
    entry = {
        "source": "ah",
        "adapter_id": ARCHIVE_ID,
        "model_name": MODEL,
        "task": "sentiment",
        "subtask": "imdb",
        "username": "ukp",
        "adapter_config": {"reduction_factor": 16, "output_adapter": True},
        "sha1_checksum": "0" * 40,
    }
    fake_hub.add_ah_file("all.json", [entry])
    fake_hub.add_ah_file(f"adapters/ukp/{ARCHIVE_ID.split('/')[1]}.json", {"files": {}, "info": entry})
    return fake_hub


def _set_model_name(path):
    data = json.loads(path.read_text())
    data["model_name"] = MODEL
    path.write_text(json.dumps(data))


async def get_json(jp_fetch, route, **params):
    response = await jp_fetch("adapter-workbench", route, params=params)
    assert response.code == 200
    return json.loads(response.body)


async def get_error(jp_fetch, route, status, headers=None, **params):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("adapter-workbench", route, params=params, headers=headers)
    assert caught.value.code == status
    return json.loads(caught.value.response.body) if caught.value.response.body else {}


async def test_search_finds_adapters_with_the_hub_panel_filters(jp_fetch, hub):
    found = await get_json(jp_fetch, "search", q="imdb", limit="10")
    ids = [item["adapter_id"] for item in found["items"]]
    assert set(ids) == {SEQ_BN_REPO, ARCHIVE_ID}
    assert found["total"] == 2 and found["page"] == 1

    peft = await get_json(jp_fetch, "search", library="peft")
    assert [item["adapter_id"] for item in peft["items"]] == ["someone/bert-lora-sentiment"]

    archive = await get_json(jp_fetch, "search", source="ah", model=MODEL, task="sentiment")
    assert [(i["adapter_id"], i["source"], i["subtask"]) for i in archive["items"]] == [(ARCHIVE_ID, "ah", "imdb")]

    by_downloads = await get_json(jp_fetch, "search", source="hf", library="adapters", sort="downloads")
    assert [i["adapter_id"] for i in by_downloads["items"]] == [SEQ_BN_REPO, "AdapterHub/bert-base-uncased-pf-qqp"]
    paged = await get_json(jp_fetch, "search", source="hf", library="adapters", limit="1", page="2")
    assert [i["adapter_id"] for i in paged["items"]] == ["AdapterHub/bert-base-uncased-pf-qqp"]
    assert paged["pages"] == 2

    assert (await get_json(jp_fetch, "search", q="no-such-adapter"))["items"] == []
    # JupyterLab's requests carry a cache buster (`?<milliseconds>`); it is not a query parameter
    assert (await get_json(jp_fetch, "search", q="imdb", **{"1795327860720": ""}))["total"] == 2


async def test_info_gives_load_code_that_loads_the_adapter(jp_fetch, hub):
    info = await get_json(jp_fetch, "info", id=SEQ_BN_REPO)
    assert info["adapter_id"] == SEQ_BN_REPO and info["model_name"] == MODEL and info["task"] == "sentiment"
    assert f"model.load_adapter({SEQ_BN_REPO!r}, source='hf')" in info["load_code"]

    namespace = {}
    exec(info["load_code"], namespace)  # the code the sidebar inserts into a cell, run against the fake Hub
    model = namespace["model"]
    assert namespace["name"] == "imdb" and "imdb" in model.adapters and model.active_adapters is not None
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 2)

    archived = await get_json(jp_fetch, "info", id=ARCHIVE_ID, source="ah")
    assert archived["source"] == "ah" and f"load_adapter({ARCHIVE_ID!r}, source='ah')" in archived["load_code"]


async def test_a_malformed_repo_is_skipped_by_search_and_named_by_info(jp_fetch, hub):
    bad = "someone/config-is-a-list"
    hub.add_repo(bad, {"adapter_config.json": b"{}"}, library_name="adapter-transformers", config=["imdb"])
    with pytest.warns(UserWarning, match=bad):
        found = await get_json(jp_fetch, "search", q="imdb", limit="10")
    assert {item["adapter_id"] for item in found["items"]} == {SEQ_BN_REPO, ARCHIVE_ID}
    error = await get_error(jp_fetch, "info", 502, id=bad)
    assert bad in error["error"] and "config" in error["error"]


async def test_unknown_adapter_is_404(jp_fetch, hub):
    error = await get_error(jp_fetch, "info", 404, id="nobody/no-such-adapter")
    assert "not on the Hub" in error["error"]


BAD_QUERIES = [
    ("search", {"source": "s3"}, "source"),
    ("search", {"library": "torch"}, "library"),
    ("search", {"sort": "size"}, "sort"),
    ("search", {"limit": "0"}, "limit"),
    ("search", {"limit": "5000"}, "limit"),
    ("search", {"page": "-1"}, "page"),
    ("search", {"page": "1e3"}, "page"),
    ("search", {"q": "x" * 201}, "q"),
    ("search", {"q": "a\x00b"}, "q"),
    ("search", {"model": "../../etc/passwd"}, "model"),
    ("search", {"model": "org/../secret"}, "model"),
    ("search", {"model": "http://evil.example/x"}, "model"),
    ("search", {"task": "sentiment/imdb"}, "task"),
    ("search", {"method": "lora; rm -rf"}, "method"),
    ("search", {"url": "http://evil.example"}, "url"),
    ("info", {}, "id"),
    ("info", {"id": "../../etc/passwd"}, "id"),
    ("info", {"id": "/abs/path"}, "id"),
    ("info", {"id": "no-slash"}, "id"),
    ("info", {"id": "@ukp/..", "source": "ah"}, "id"),
    ("info", {"id": SEQ_BN_REPO, "source": "file"}, "source"),
    ("info", {"id": "a--b/c"}, "a--b/c"),  # passes the route's pattern, not the Hub's rules
]


@pytest.mark.parametrize(("route", "params", "named"), BAD_QUERIES)
async def test_bad_queries_are_400_naming_the_parameter(jp_fetch, hub, route, params, named):
    before = len(hub.requests)
    error = await get_error(jp_fetch, route, 400, **params)
    assert error["status"] == 400 and named in error["error"]
    assert len(hub.requests) == before  # refused before anything reached the Hub


async def test_repeated_parameter_is_400(http_server_client, jp_base_url, jp_auth_header, hub):
    with pytest.raises(HTTPClientError) as caught:
        url = f"{jp_base_url}adapter-workbench/search?source=ah&source=hf"
        await http_server_client.fetch(url, headers=jp_auth_header)
    assert caught.value.code == 400 and "given 2 times" in json.loads(caught.value.response.body)["error"]


@pytest.mark.parametrize("route", ["search", "info"])
@pytest.mark.parametrize("authorization", ["", "token wrong-token"])
async def test_requests_without_a_valid_token_are_refused(jp_fetch, hub, route, authorization):
    before = len(hub.requests)
    await get_error(jp_fetch, route, 403, headers={"Authorization": authorization}, id=SEQ_BN_REPO)
    assert len(hub.requests) == before


async def test_hub_down_is_502_with_the_reason(jp_fetch, fake_hub):
    fake_hub.fail(".*", "status")
    error = await get_error(jp_fetch, "search", 502, source="hf")
    assert "no cached listing" in error["error"]


# ---- a slow Hub: bounded pool, timeouts, a server that stays responsive ------------------------------------------
@pytest.fixture
def slow_hub_settings(monkeypatch):
    """A 3 s request timeout and no listing cache, so every search really waits for the (stalled) Hub. Listed
    before `jp_fetch` in a test so it is set when the server (and its pool) starts."""
    monkeypatch.setenv("WORKBENCH_EXTENSION_TIMEOUT", "3")
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    return 3.0


async def test_a_stalled_hub_leaves_every_request_answered_and_the_server_fast(
    slow_hub_settings, jp_fetch, jp_http_port, jp_base_url, jp_auth_header, hub
):
    from tornado.simple_httpclient import SimpleAsyncHTTPClient

    hub.fail("^/ah/", "timeout", seconds=1.5)  # every listing request stalls 1.5 s (the reach check does not)
    count, timeout = 200, slow_hub_settings
    client = SimpleAsyncHTTPClient(force_instance=True, max_clients=count + 10)
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}adapter-workbench/search?source=ah&q=imdb"

    async def timed(target):
        start = time.monotonic()
        response = await client.fetch(target, headers=jp_auth_header, raise_error=False, request_timeout=30)
        return response, time.monotonic() - start

    try:
        batch = asyncio.gather(*(timed(url) for _ in range(count)))
        statuses = []
        for pause in (0.8, 1.0):  # the burst is accepted; 40 Hub calls are running or waiting on the stalled Hub
            await asyncio.sleep(pause)
            statuses.append(await timed(f"http://127.0.0.1:{jp_http_port}{jp_base_url}api/status"))
        answers = await batch
    finally:
        client.close()

    for status, status_took in statuses:  # Jupyter's own routes do not wait for the Hub
        assert status.code == 200 and status_took < 1.0
    codes = [response.code for response, _ in answers]
    assert set(codes) <= {200, 503, 504}, codes
    assert max(took for _, took in answers) < timeout + 2.0  # nobody waits much past the timeout
    assert codes.count(503) >= count - (8 + 32)  # beyond 8 running and 32 waiting, refused at once
    assert codes.count(200) >= 1  # the first calls did get through the slow Hub
    for response, took in answers:
        body = json.loads(response.body)
        if response.code == 503:
            # refused without waiting for a thread: well before the timeout (generous for 200 requests on 2 cores)
            assert took < timeout - 0.5 and "busy" in body["error"] and response.headers["Retry-After"]
        if response.code == 504:
            assert "adapter-workbench/search" in body["error"] and "did not answer within 3 s" in body["error"]


@pytest.fixture
def one_second_timeout(monkeypatch):
    monkeypatch.setenv("WORKBENCH_EXTENSION_TIMEOUT", "1")  # read when the server starts: list before `jp_fetch`


async def test_one_request_to_a_hub_slower_than_the_timeout_is_504(one_second_timeout, jp_fetch, hub):
    hub.fail("^/api/models/", "timeout", seconds=4)
    start = time.monotonic()
    error = await get_error(jp_fetch, "info", 504, id=SEQ_BN_REPO)
    assert time.monotonic() - start < 2.5
    assert error["status"] == 504
    assert error["error"] == (
        "adapter-workbench/info: the Hub did not answer within 1 s (set WORKBENCH_EXTENSION_TIMEOUT to wait longer)"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKBENCH_EXTENSION_TIMEOUT", "soon"),
        ("WORKBENCH_EXTENSION_WORKERS", "0"),
        ("WORKBENCH_EXTENSION_QUEUE", "-1"),
    ],
)
def test_a_bad_pool_setting_is_an_error_naming_it(monkeypatch, name, value):
    from jupyterlab_adapter_workbench.pool import HubPool

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be .* not '{value}'"):
        HubPool.from_env()


async def test_a_timed_out_call_keeps_its_slot_until_its_thread_ends():
    """So a stalled Hub costs at most `workers` threads: later requests are refused, not given new threads."""

    from jupyterlab_adapter_workbench.pool import CallTimedOut, HubPool, PoolFull

    pool, release = HubPool(workers=1, queue=0, timeout=0.2), threading.Event()
    try:
        with pytest.raises(CallTimedOut, match="stalled: the Hub did not answer within 0.2 s"):
            await pool.run("stalled", release.wait, 10)
        with pytest.raises(PoolFull, match="busy"):
            await pool.run("next", lambda: "never")
        release.set()
        for _ in range(50):  # the stalled thread finishes and frees its slot
            try:
                assert await pool.run("after", lambda: "answered") == "answered"
                break
            except PoolFull:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the slot was never freed")
    finally:
        release.set()
        pool.shutdown()


# ---- bad queries come before the pool; the server's stop ends the pool --------------------------------------------
@pytest.fixture
def one_hub_thread(monkeypatch):
    """One Hub thread, no queue and a 5 s timeout, so one stalled request fills the pool. List before `jp_fetch`."""
    monkeypatch.setenv("WORKBENCH_EXTENSION_WORKERS", "1")
    monkeypatch.setenv("WORKBENCH_EXTENSION_QUEUE", "0")
    monkeypatch.setenv("WORKBENCH_EXTENSION_TIMEOUT", "5")
    return 5.0


async def stall_one_request(jp_fetch, hub, seconds):
    """An info request whose Hub call the fake Hub holds `seconds`; returned (as a task) once the Hub has it."""
    hub.fail("^/api/models/", "timeout", seconds=seconds, times=1)
    task = asyncio.ensure_future(get_error(jp_fetch, "info", 504, id=SEQ_BN_REPO))
    await wait_for_hub_request(hub, "/api/models/")
    return task


async def wait_for_hub_request(hub, path_start, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not any(entry["path"].startswith(path_start) for entry in list(hub.requests)):
        assert time.monotonic() < deadline, f"no request for {path_start} reached the Hub"
        await asyncio.sleep(0.05)


def pool_threads(pool):
    return [t for t in threading.enumerate() if t.name.startswith(pool.thread_prefix) and t.is_alive()]


async def test_bad_queries_are_400_before_the_pool_even_when_it_is_full(one_hub_thread, jp_fetch, hub):
    stalled = await stall_one_request(jp_fetch, hub, seconds=one_hub_thread + 1)
    before = len(hub.requests)
    for route, params, named in BAD_QUERIES:
        start = time.monotonic()
        error = await get_error(jp_fetch, route, 400, **params)
        assert named in error["error"] and time.monotonic() - start < 1.0, (route, params, error)
    busy = await get_error(jp_fetch, "search", 503, q="imdb")  # a good query still finds the pool full
    assert "busy" in busy["error"]
    assert not stalled.done()  # the pool was full throughout
    assert len(hub.requests) == before
    assert "did not answer within 5 s" in (await stalled)["error"]


async def test_stopping_the_server_shuts_its_pool_down(jp_fetch, jp_serverapp, hub):
    assert (await get_json(jp_fetch, "search", q="imdb"))["total"] == 2
    pool = jp_serverapp.web_app.settings[POOL_SETTING]
    assert len(pool_threads(pool)) == pool.workers

    await jp_serverapp.cleanup_extensions()  # the extensions' part of the server's stop

    assert pool.closed and pool_threads(pool) == []
    error = await get_error(jp_fetch, "search", 503, q="imdb")  # routes still up in this test: refused, not queued
    assert "shutting down" in error["error"]


async def test_a_server_stopped_during_a_stalled_hub_call_waits_at_most_the_timeout(
    one_hub_thread, jp_fetch, jp_serverapp, hub
):
    stalled = await stall_one_request(jp_fetch, hub, seconds=60)
    pool = jp_serverapp.web_app.settings[POOL_SETTING]
    start = time.monotonic()
    await jp_serverapp.cleanup_extensions()
    assert time.monotonic() - start < one_hub_thread + 1.0
    assert pool.closed
    assert all(t.daemon for t in pool_threads(pool))  # the one stuck in the Hub cannot hold up the process's exit
    assert "did not answer within 5 s" in (await stalled)["error"]


async def test_shutdown_cancels_queued_calls_lets_running_ones_finish_and_refuses_new_ones():
    from jupyterlab_adapter_workbench.pool import HubPool, PoolClosed

    pool, started, release = HubPool(workers=1, queue=1, timeout=5), threading.Event(), threading.Event()
    try:
        running = asyncio.ensure_future(pool.run("running", lambda: started.set() or release.wait(5)))
        queued = asyncio.ensure_future(pool.run("queued", lambda: "never"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        pool.shutdown()
        with pytest.raises(PoolClosed, match="queued: the server is shutting down"):
            await queued
        with pytest.raises(PoolClosed, match="late: the server is shutting down"):
            await pool.run("late", lambda: "never")
        assert not await pool.wait_stopped(0.2)  # the running call's thread is still in it
        release.set()
        assert await running is True
        assert await pool.wait_stopped(2.0) and pool_threads(pool) == []
    finally:
        release.set()
        pool.shutdown()


def test_a_jupyter_server_process_exits_promptly_on_sigterm_while_a_hub_call_stalls(hub, tmp_path):
    """The real stop: SIGTERM to `jupyter server` while the Hub holds a call for 60 s; the process is gone in
    seconds (an executor's threads would be joined at exit, keeping it alive until the Hub answers)."""
    import jupyterlab_adapter_workbench

    port, token = _free_port(), "stall-test-token"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyterlab_adapter_workbench": True}}})
    )
    package_root = Path(jupyterlab_adapter_workbench.__file__).parents[1]
    env = {
        **os.environ,
        "WORKBENCH_EXTENSION_TIMEOUT": "2",
        "PYTHONPATH": os.pathsep.join([str(package_root), *sys.path]),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    command = [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ServerApp.port_retries=0"]
    command += ["--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False"]
    command += [f"--ServerApp.root_dir={tmp_path}", "--allow-root"]  # root in some CI containers
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:  # ready when the extension's route answers
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                _get(f"{base}/adapter-workbench/search?q=imdb&token={token}", timeout=5)
                break
            except OSError:
                time.sleep(0.3)
        hub.fail("^/api/models/", "timeout", seconds=60, times=1)
        caller = threading.Thread(
            target=_get, args=(f"{base}/adapter-workbench/info?id={SEQ_BN_REPO}&token={token}", 30), daemon=True
        )
        caller.start()
        asyncio.run(wait_for_hub_request(hub, "/api/models/"))

        server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the server was still running 30 s after SIGTERM:\n" + (tmp_path / "server.log").read_text())
        assert time.monotonic() - start < 2 + 6, (tmp_path / "server.log").read_text()  # timeout + shutdown
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:  # an answer, even an error one: the server is up
        return err.read()
