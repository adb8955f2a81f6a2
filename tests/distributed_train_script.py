"""Run by tests/test_distributed.py under torchrun: one adapter run of `workbench.train.train` per process.

Every rank builds the same tiny model, tokenizer and data (same seeds), trains, then writes to OUT (argv[1]):
rank<r>.safetensors (its trained adapter and head weights), rank<r>.json (its record, events and checkpoint saves)
and, on rank 0, initial.safetensors (the weights before training).
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from test_train import adapter_model, fast, keyword_frame, make_tokenizer, trained_state  # noqa: E402

from workbench.train import train  # noqa: E402
from workbench.train.checkpoints import STAGING_PREFIX, SavePlan  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
saves, events = [], []
_write = SavePlan.write  # called once per saved folder, by the processes that write


def logged_write(self, folder):
    saves.append(Path(folder).name.removeprefix(STAGING_PREFIX))  # written under a temporary name, then renamed
    _write(self, folder)


SavePlan.write = logged_write
model = adapter_model()
initial = trained_state(model, "kw")  # the adapter only: the head is added by train()
if rank == 0:
    save_file(initial, out / "initial.safetensors")
record = train(
    model,
    keyword_frame(64),
    adapter="kw",
    tokenizer=make_tokenizer(),
    output_dir=out / "run",
    config=fast(max_steps=4, eval_steps=2, save_total_limit=None),
    callbacks=[lambda event: events.append(type(event).__name__)],
)
save_file({k: v.contiguous() for k, v in trained_state(model, "kw").items()}, out / f"rank{rank}.safetensors")
info = {"record": record.to_dict(), "events": events, "saves": saves, "world_size": int(os.environ["WORLD_SIZE"])}
(out / f"rank{rank}.json").write_text(json.dumps(info, default=str))
