"""A checkpoint write that fails for real (file size limit, EFBIG) mid-run: a clear error, no checkpoint lost.

The run goes in a child process: after checkpoint-2 is complete, a callback lowers RLIMIT_FSIZE (SIGXFSZ ignored,
so writes fail with EFBIG instead of killing the process), and the save at step 4 fails. Root is bound by this
limit too, unlike by permission bits.
"""

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import adapter_model, fast, keyword_frame, make_tokenizer, trained_state
from tiny import tiny_adapter_model

from workbench.train import OutputDirError, StepEvent, train
from workbench.train.checkpoints import STAGING_PREFIX, staged_folder

TESTS = Path(__file__).parent

CHILD = r"""
import hashlib, json, os, resource, signal, sys
from pathlib import Path

import torch
torch.set_num_threads(1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
from test_train import adapter_model, fast, keyword_frame, make_tokenizer
from workbench.train import OutputDirError, TrainingCallback, train

out, limit_spec = Path(sys.argv[1]), sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
seen = {}

class LimitFileSize(TrainingCallback):
    def on_step(self, event):
        if event.step == 3:  # checkpoint-2 is complete; the next save (step 4) hits the limit
            files = sorted(p for p in (out / "checkpoint-2").rglob("*") if p.is_file())
            seen["hashes"] = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
            weights = out / "checkpoint-2" / "kw" / "pytorch_adapter.bin"
            limit = 0 if limit_spec == "zero" else weights.stat().st_size // 2
            seen["limit"] = limit
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

try:
    config = fast(eval_strategy="no", save_steps=2, max_steps=6)
    train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=out, config=config,
          callbacks=[LimitFileSize()])
    seen["error"] = None
except OutputDirError as err:
    seen.update(error=type(err).__name__, message=str(err), errno=err.errno, cause=type(err.__cause__).__name__)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("RESULT " + json.dumps(seen))
"""


def run_child(out: Path, limit: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "HF_HUB_OFFLINE": "1"}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), limit], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def hashes(out: Path) -> dict[str, str]:
    files = sorted(p for p in (out / "checkpoint-2").rglob("*") if p.is_file())
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize(
    ("limit", "cause"),
    [
        ("zero", "OSError"),  # the first file of checkpoint-4 (a JSON config) cannot get a single byte
        ("half", "RuntimeError"),  # the adapter weights stop half way, inside torch.save
    ],
)
def test_failed_checkpoint_write_is_a_clear_error_and_keeps_the_finished_checkpoint(tmp_path, limit, cause):
    out = tmp_path / "run"
    result = run_child(out, limit)

    assert result["error"] == "OutputDirError" and result["cause"] == cause
    message = result["message"]
    assert f"cannot write {out / 'checkpoint-4'}: a file would exceed the file size limit" in message
    assert "the folders saved before are kept" in message
    if cause == "OSError":
        assert result["errno"] == errno.EFBIG and "File too large" in message
    else:
        assert f"limit of {result['limit']} bytes" in message

    # nothing half-written is left, and the finished checkpoint is byte for byte what it was before the failure
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]
    assert result["hashes"] and hashes(out) == result["hashes"]

    # it loads with the engine's loaders, and a run resumes from it to the end
    checkpoint = out / "checkpoint-2"
    fresh = tiny_adapter_model()
    fresh.load_adapter(str(checkpoint / "kw"))
    fresh.load_head(str(checkpoint / "kw"))
    steps = []
    resumed = adapter_model(adapter_seed=7)
    record = train(
        resumed,
        keyword_frame(),
        adapter="kw",
        tokenizer=make_tokenizer(),
        output_dir=tmp_path / "resumed",
        config=fast(eval_strategy="no", save_steps=2, max_steps=6),
        resume_from_checkpoint=checkpoint,
        callbacks=[lambda e: steps.append(e.step) if isinstance(e, StepEvent) else None],
    )
    assert steps == [3, 4, 5, 6] and record.global_step == 6
    assert (tmp_path / "resumed" / "checkpoint-6").is_dir() and (tmp_path / "resumed" / "final").is_dir()


def test_staged_folder_replaces_only_on_success(tmp_path):
    target = tmp_path / "checkpoint-1"
    with staged_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(STAGING_PREFIX) and not target.exists()
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"

    with pytest.raises(KeyError):  # any failure: the partial folder goes, the earlier one stays
        with staged_folder(target) as tmp:
            (tmp / "a.txt").write_text("second")
            raise KeyError("boom")
    assert (target / "a.txt").read_text() == "first" and sorted(os.listdir(tmp_path)) == ["checkpoint-1"]

    with staged_folder(target) as tmp:  # a complete write replaces the folder of the same name
        (tmp / "b.txt").write_text("second")
    assert sorted(os.listdir(target)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["checkpoint-1"]


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirError, match=r"cannot write .*file/checkpoint-1: \(Not a directory\)") as caught:
        with staged_folder(blocker / "checkpoint-1"):
            pass
    assert caught.value.errno == errno.ENOTDIR and blocker.read_text() == "not a folder"


def test_final_weights_are_staged_too(tmp_path):
    model = adapter_model()
    config = fast(max_steps=2, eval_steps=2)
    train(model, keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=tmp_path, config=config)
    first = trained_state(model, "kw")
    (tmp_path / "final" / "stale.txt").write_text("from an earlier run")
    model = adapter_model(adapter_seed=3)  # the same folder again: a resumed run (a new one would be refused)
    config = fast(eval_strategy="no", save_steps=2, max_steps=4)
    train(model, keyword_frame(), adapter="kw", tokenizer=make_tokenizer(), output_dir=tmp_path, config=config,
          resume=True)  # fmt: skip
    assert not (tmp_path / "final" / "stale.txt").exists()  # replaced as a whole, not merged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
    fresh = tiny_adapter_model()
    fresh.load_adapter(str(tmp_path / "final" / "kw"))
    saved = {k: v for k, v in fresh.named_parameters() if "adapters.kw" in k}
    latest = trained_state(model, "adapters.kw")
    assert saved.keys() == latest.keys() and all(torch.equal(saved[k], latest[k]) for k in saved)
    assert any(not torch.equal(first[k], latest[k]) for k in latest)
