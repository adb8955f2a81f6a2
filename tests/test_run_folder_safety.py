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

from workbench.train import RunControl, RunLockedError, StepEvent, TrainingCallback, run_in_folder, runlock, train
from workbench.train.checkpoints import (
    BACKUP_PREFIX,
    CheckpointParts,
    load_parts,
    recover_run,
    save_parts,
    staged_folder,
)
from workbench.train.errors import OutputDirError
from workbench.train.overwrite import ASIDE, MOVING
from workbench.train.runlock import LOCK_FILE, RunLock

TESTS = Path(__file__).parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}

# The children's common part: arguments (out folder, new folder, k) and `counted(f)`, which wraps a file system call
# so the process SIGKILLs itself just before the k-th wrapped call (k = 0: never).
KILL_AT = r"""
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
"""

# Replaces out/final with a copy of `new`, SIGKILLing itself just before its k-th file system change (rename,
# unlink, rmdir), k = 0 meaning never; prints how many changes the replacement made.
REPLACE_CHILD = (
    r"""
import os, shutil, signal, sys
from pathlib import Path
from workbench.train.checkpoints import staged_folder

"""
    + KILL_AT
    + r"""
with staged_folder(out / "final") as staging:
    shutil.copytree(new, staging, dirs_exist_ok=True)
    for name in ("rename", "unlink", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))
print("CHANGES", count)
"""
)


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


# --- overwrite=True keeps the old run until the new one has completed ---------------------------------------------

# Overwrites the run in `out` with the folders of `new` as train() does (old run aside, new folders written, old
# run discarded), SIGKILLing itself just before its k-th file system change (rename, unlink, rmdir), k = 0: never.
OVERWRITE_CHILD = (
    r"""
import os, shutil, signal, sys
from pathlib import Path
from workbench.train.checkpoints import run_parts
from workbench.train.overwrite import discard, set_aside

"""
    + KILL_AT
    + r"""
for name in ("rename", "unlink", "rmdir"):
    setattr(os, name, counted(getattr(os, name)))
set_aside(out, run_parts)
for part in sorted(new.iterdir()):
    shutil.copytree(part, out / part.name)
discard(out)
print("CHANGES", count)
"""
)

# An overwrite=True run into argv[1], SIGKILLed during its second step (after writing checkpoint-1).
KILLED_TRAIN_CHILD = r"""
import os, signal, sys
from test_train import adapter_model, fast, keyword_frame, make_tokenizer
from workbench.train import StepEvent, train

def kill(event):
    if isinstance(event, StepEvent) and event.step == 2:
        os.kill(os.getpid(), signal.SIGKILL)

train(adapter_model(adapter_seed=5), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=sys.argv[1],
      config=fast(eval_strategy="no", save_steps=1, max_steps=4), callbacks=[kill], overwrite=True)
"""


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the run lock) with its bytes, and every folder: what a run folder holds."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in folder.rglob("*")
        if p.name != LOCK_FILE
    }


def a_run(folder: Path, seed: int, names=("checkpoint-1", "checkpoint-2", "final")) -> dict[str, bytes]:
    for name in names:
        saved_adapter(folder / name, seed=seed)
    return tree(folder)


def test_an_overwrite_killed_at_any_step_leaves_the_old_run_or_the_new_one(tmp_path):
    new = tmp_path / "new"
    a_run(new, seed=2, names=("checkpoint-1", "final"))
    new_run = tree(new)

    def old_run(out: Path) -> dict[str, bytes]:
        out.mkdir()
        (out / "notes.txt").write_text("mine")  # not part of the run: stays whatever happens
        return a_run(out, seed=1)

    out = tmp_path / "out"
    old = old_run(out)
    done = subprocess.run([sys.executable, "-c", OVERWRITE_CHILD, str(out), str(new), "0"], capture_output=True,
                          text=True, env=ENV, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    changes = int(done.stdout.split("CHANGES")[-1])
    assert changes >= 5  # a rename per old folder, the phase renames, deleting the old folders' files
    assert tree(out) == {**new_run, "notes.txt": b"mine"}

    outcomes = set()
    for kill_at in range(1, changes + 1):
        out = tmp_path / f"out-{kill_at}"
        old = old_run(out)
        done = subprocess.run([sys.executable, "-c", OVERWRITE_CHILD, str(out), str(new), str(kill_at)],
                              capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
        assert done.returncode == -9, (kill_at, done.stderr[-2000:])
        recover_run(out)  # what the next train() does first
        held = tree(out)
        assert held in (old, {**new_run, "notes.txt": b"mine"}), (kill_at, sorted(held))
        outcomes.add("old" if held == old else "new")
        recover_run(out)  # and a second recovery changes nothing
        assert tree(out) == held, kill_at
    assert outcomes == {"old", "new"}


def test_an_overwriting_run_killed_mid_training_leaves_the_old_run_to_recover(tmp_path):
    out = tmp_path / "out"
    old = a_run(out, seed=1)
    killed = subprocess.run([sys.executable, "-c", KILLED_TRAIN_CHILD, str(out)], capture_output=True, text=True,
                            env=ENV, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    left = tree(out)
    assert "checkpoint-1/kw/adapter_config.json" in left and left != old  # the killed run's own checkpoint
    assert (out / ASIDE / "checkpoint-1").is_dir() and (out / ASIDE / "final").is_dir()
    recover_run(out)
    assert tree(out) == old
    assert same(loaded(out / "final"), loaded(out / "checkpoint-2"))


class FailAtSecondStep(TrainingCallback):
    def __init__(self, error: type[BaseException]):
        self.error = error

    def on_step(self, event):
        if event.step == 2:
            raise self.error("stopped at step 2")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_overwrite_puts_the_old_run_back(tmp_path, error):
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    a_run(out, seed=1)
    (out / "checkpoint-7").symlink_to(outside, target_is_directory=True)  # never followed, moved or deleted
    old = tree(out)
    with pytest.raises(error, match="stopped at step 2"):
        train(adapter_model(adapter_seed=5), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(),
              output_dir=out, config=fast(eval_strategy="no", save_steps=1, max_steps=4),
              callbacks=[FailAtSecondStep(error)], overwrite=True)  # fmt: skip
    assert tree(out) == old  # checkpoint-1 of the failed run removed, the old one back
    assert (out / "checkpoint-7").is_symlink() and (outside / "keep.txt").read_text() == "not the run's"


def test_a_stopped_overwrite_replaces_the_old_run(tmp_path):
    out = tmp_path / "out"
    a_run(out, seed=1, names=("checkpoint-1", "checkpoint-2", "checkpoint-9", "final"))
    stop = RunControl()
    record = train(adapter_model(adapter_seed=5), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(),
                   output_dir=out, config=fast(eval_strategy="no", save_steps=1, max_steps=4),
                   callbacks=[lambda e: stop.stop() if isinstance(e, StepEvent) and e.step == 1 else None],
                   control=stop, overwrite=True)  # fmt: skip
    assert record.stop_reason == "stop_request"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "final"]


def test_an_old_run_that_cannot_be_moved_aside_stays_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "out"
    old = a_run(out, seed=1)
    rename = Path.rename

    def failing(self, target):  # the second folder's move fails (as an unmovable folder would)
        if Path(target).parent.name == MOVING and self.name == "checkpoint-2":
            raise PermissionError(13, "Permission denied", str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OutputDirError, match=f"cannot move the run in {out} aside .*checkpoint-2.*nothing was deleted"):
        train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out,
              config=fast(eval_strategy="no", max_steps=2), overwrite=True)  # fmt: skip
    assert tree(out) == old


def test_an_old_run_that_cannot_be_put_back_is_named_and_nothing_changes(tmp_path):
    """A killed overwrite left the old run aside, and the user made a `final/` of their own meanwhile: the next run
    says which folders clash instead of failing later on the leftover."""
    out = tmp_path / "out"
    a_run(out / MOVING, seed=1, names=("checkpoint-2", "final"))
    (out / "final").mkdir()
    (out / "final" / "mine.txt").write_text("the user's")
    expected = {k.replace(f"{MOVING}/checkpoint-2", "checkpoint-2"): v for k, v in tree(out).items()}
    for overwrite in (True, False):
        with pytest.raises(OutputDirError, match=f"kept in {out / MOVING}: final could not be put back"):
            train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out,
                  config=fast(eval_strategy="no", max_steps=2), overwrite=overwrite)  # fmt: skip
        assert tree(out) == expected  # what could go back did; the user's final/ and the old one untouched
    assert (out / "final" / "mine.txt").read_text() == "the user's" and (out / MOVING / "final").is_dir()
