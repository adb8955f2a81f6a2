"""Downloads clean up only what they created in the shared Hugging Face cache; the next download of a file removes
the partial file a killed download of it left behind, but never a partial file a live download is writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from demo_hub import kernel_env
from filelock import FileLock
from test_hub import adapter_files, add_adapterhub_repo  # noqa: F401  (adapter_files is a fixture)

import workbench
from workbench import AdapterLoadError
from workbench.hub.partials import drop_stale_partials

REPO = "AdapterHub/bert-base-uncased-pf-imdb"
REPO_FOLDER = "models--AdapterHub--bert-base-uncased-pf-imdb"
TESTS = Path(__file__).parent

# Downloads REPO through the engine; the test kills it while the weights file is being fetched.
DOWNLOAD_CHILD = f"""
from workbench.hub.resolve import resolve_adapter
resolve_adapter({REPO!r})
"""


def partials(hf_home: Path) -> list[Path]:
    return sorted((hf_home / "hub" / REPO_FOLDER / "blobs").glob("*.incomplete"))


def another_process_downloading(hf_home: Path, etag: str):
    """A child process holding the download lock of `etag` with its own partial file, as huggingface_hub does."""
    blobs, locks = hf_home / "hub" / REPO_FOLDER / "blobs", hf_home / "hub" / ".locks" / REPO_FOLDER
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f"{etag}.0badc0de.incomplete"
    partial.write_bytes(b"half of a file")
    code = (
        "import sys, time; from filelock import FileLock\n"
        f"lock = FileLock({str(locks / f'{etag}.lock')!r}); lock.acquire(); print('held', flush=True); time.sleep(120)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child, partial


def test_a_failed_download_leaves_the_partial_files_of_other_downloads(fake_hub, adapter_files, tmp_path):  # noqa: F811
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, REPO, files)
    hf_home = tmp_path / "hf_home"
    other, their_partial = another_process_downloading(hf_home, "0" * 40)
    try:
        fake_hub.fail("pytorch_adapter.bin", "truncate", bytes=10)
        model = workbench.AutoAdapterModel.from_pretrained(base)
        with pytest.raises(AdapterLoadError, match="bert-base-uncased-pf-imdb"):
            model.load_adapter(REPO)
        assert partials(hf_home) == [their_partial]  # ours is gone, theirs (locked, in use) is kept
        assert their_partial.read_bytes() == b"half of a file"
        fake_hub.clear_faults()
        assert model.load_adapter(REPO) == "imdb"
        assert partials(hf_home) == [their_partial]  # a file this download did not fetch is not touched
    finally:
        other.kill()
        other.wait()


def test_a_killed_download_leftover_is_removed_by_the_next_download_of_the_file(fake_hub, adapter_files, tmp_path):  # noqa: F811
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, REPO, files)
    hf_home = tmp_path / "hf_home"
    fake_hub.fail("pytorch_adapter.bin", "timeout", seconds=120, method="GET")
    env = {
        **os.environ,
        **kernel_env(fake_hub, hf_home),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.Popen([sys.executable, "-c", DOWNLOAD_CHILD], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not partials(hf_home) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partials(hf_home), child.stderr.read().decode() if child.poll() is not None else "no partial file"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    leftover = partials(hf_home)  # the stalled weights file's, and any other file's still being fetched
    assert any(p.stat().st_size == 0 for p in leftover)

    fake_hub.clear_faults()
    model = workbench.AutoAdapterModel.from_pretrained(base)
    assert model.load_adapter(REPO) == "imdb"
    assert partials(hf_home) == []


def test_a_leftover_is_kept_while_a_live_download_holds_its_lock(fake_hub, adapter_files, tmp_path):  # noqa: F811
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, REPO, files)
    model = workbench.AutoAdapterModel.from_pretrained(base)
    model.load_adapter(REPO)
    hf_home = tmp_path / "hf_home"
    blobs = hf_home / "hub" / REPO_FOLDER / "blobs"
    etag = next(p.name for p in blobs.iterdir() if p.stat().st_size > 1000)  # the weights file's blob
    in_use, stale = blobs / f"{etag}.11111111.incomplete", blobs / f"{etag}.22222222.incomplete"
    in_use.write_bytes(b"")
    stale.write_bytes(b"")
    lock = FileLock(hf_home / "hub" / ".locks" / REPO_FOLDER / f"{etag}.lock")
    with lock:  # a download of this file is under way (in this process: a lock held on another handle)
        assert drop_stale_partials(REPO) == []
    assert drop_stale_partials(REPO) == [in_use, stale]
    assert partials(hf_home) == []
