"""Runs never overwrite each other: `final/` is replaced so that a complete one exists at every instant (a process
killed at any step of the replacement leaves the old or the new one, loadable), and one `train()` at a time writes
into an output folder (a lock naming its holder, taken over when its process is gone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import adapter_model, fast, keyword_frame, make_tokenizer

from workbench.train import RunLockedError, TrainingCallback, run_in_folder, runlock, train
from workbench.train.checkpoints import (
    BACKUP_PREFIX,
    CheckpointParts,
    load_parts,
    recover_run,
    save_parts,
    staged_folder,
)
from workbench.train.runlock import LOCK_FILE, RunLock

TESTS = Path(__file__).parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}

# Replaces out/final with a copy of `new`, SIGKILLing itself just before its k-th file system change (rename,
# unlink, rmdir), k = 0 meaning never; prints how many changes the replacement made.
REPLACE_CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path
from workbench.train.checkpoints import staged_folder

out, new, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
count = 0

def counted(original):
    def call(*args, **kwargs):
        global count
        count += 1
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return call

with staged_folder(out / "final") as staging:
    shutil.copytree(new, staging, dirs_exist_ok=True)
    for name in ("rename", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))
print("CHANGES", count)
"""


def saved_adapter(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    model = adapter_model(adapter_seed=seed)
    save_parts(model, folder, CheckpointParts(adapters=["kw"]))
    return adapter_weights(model)


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if ".kw." in k}


def loaded(folder: Path) -> dict[str, torch.Tensor]:
    model = adapter_model(adapter_seed=99)
    load_parts(model, folder)
    return adapter_weights(model)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def replace_in_child(out: Path, new: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", REPLACE_CHILD, str(out), str(new), str(kill_at)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


def test_a_replacement_killed_at_any_step_leaves_a_complete_final(tmp_path):
    new = tmp_path / "new"
    new_weights = saved_adapter(new, seed=2)
    out = tmp_path / "out"
    old_weights = saved_adapter(out / "final", seed=1)

    done = replace_in_child(out, new, 0)  # a dry run: how many changes the replacement makes
    assert done.returncode == 0, done.stderr[-2000:]
    changes = int(done.stdout.split("CHANGES")[-1])
    assert changes >= 3  # the backup rename, the staging rename, deleting the backup's files
    assert same(loaded(out / "final"), new_weights)

    outcomes = set()
    for kill_at in range(1, changes + 1):
        out = tmp_path / f"out-{kill_at}"
        saved_adapter(out / "final", seed=1)
        done = replace_in_child(out, new, kill_at)
        assert done.returncode == -9, (kill_at, done.stderr[-2000:])
        held = run_in_folder(out)  # a reader sees a final/ before any repair
        assert held is not None and held.final, (kill_at, sorted(p.name for p in out.iterdir()))
        recover_run(out)  # what the next train() does first
        weights = loaded(out / "final")
        assert same(weights, old_weights) or same(weights, new_weights), kill_at
        outcomes.add("new" if same(weights, new_weights) else "old")
        assert not list(out.glob(BACKUP_PREFIX + "*")), kill_at
        with staged_folder(out / "final") as staging:  # and the folder takes the next replacement
            shutil.copytree(new, staging, dirs_exist_ok=True)
        assert same(loaded(out / "final"), new_weights) and not list(out.glob(".partial-*")), kill_at
    assert outcomes == {"old", "new"}


def test_train_recovers_a_final_whose_replacement_was_killed(tmp_path):
    out = tmp_path / "out"
    saved_adapter(out / BACKUP_PREFIX.join(["", "final"]), seed=1)  # killed between the two renames
    assert run_in_folder(out).final
    record = train(
        adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out,
        config=fast(eval_strategy="no", save_steps=100, max_steps=2), overwrite=True,
    )  # fmt: skip
    assert Path(record.saved_path) == out / "final" and (out / "final" / "kw").is_dir()
    assert not list(out.glob(BACKUP_PREFIX + "*")) and not (out / LOCK_FILE).exists()


HOLD_CHILD = r"""
import sys
from workbench.train.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("HELD", flush=True)
sys.stdin.read()
"""


def test_a_second_run_into_a_locked_folder_names_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CHILD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout.readline().strip() == "HELD"
        model = adapter_model()
        before = adapter_weights(model)
        with pytest.raises(RunLockedError) as caught:
            train(model, keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out, config=fast())
        assert f"process {holder.pid} " in str(caught.value) and str(out) in str(caught.value)
        assert caught.value.holder["pid"] == holder.pid
        assert same(adapter_weights(model), before) and sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()  # SIGKILL: the lock file stays, naming a dead process
        holder.wait(timeout=30)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    record = train(
        adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out,
        config=fast(eval_strategy="no", save_steps=100, max_steps=2),
    )  # fmt: skip
    assert record.global_step == 2 and not (out / LOCK_FILE).exists()


class TryASecondRun(TrainingCallback):
    """On the first step, while its run holds the lock: another train() into the same folder."""

    def __init__(self, out: Path):
        self.out, self.seen = out, {}

    def on_step(self, event):
        if self.seen:
            return
        self.seen["record"] = json.loads((self.out / LOCK_FILE).read_text())
        try:
            train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=self.out)
        except RunLockedError as err:
            self.seen["error"] = str(err)


def test_the_lock_is_held_while_training_and_released_on_success_and_failure(tmp_path):
    out = tmp_path / "out"
    second = TryASecondRun(out)
    train(
        adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out,
        config=fast(eval_strategy="no", save_steps=100, max_steps=2), callbacks=[second],
    )  # fmt: skip
    assert second.seen["record"]["pid"] == os.getpid()
    assert f"process {os.getpid()} " in second.seen["error"]
    assert not (out / LOCK_FILE).exists()

    with pytest.raises(Exception, match="text_column|column"):  # fails after the lock is taken
        train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out,
              text_column="nope", overwrite=True)  # fmt: skip
    assert not (out / LOCK_FILE).exists()
    with RunLock(out):  # free again
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_without_flock_a_dead_holder_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)  # the exclusive-create fallback (Windows)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    host = runlock.socket.gethostname()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": host, "started": "then"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} on "):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    started = time.time()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "another-host"}))
    with pytest.raises(RunLockedError, match="another-host"):  # another host's pid cannot be checked: kept
        RunLock(tmp_path).acquire()
    assert time.time() - started < 5
