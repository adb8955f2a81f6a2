"""Two CPU processes (torchrun, gloo): unchanged `train()` code runs data-parallel, and only rank 0 writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import tiny_adapter_model

SCRIPT = Path(__file__).with_name("distributed_train_script.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_adapter_run(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # CPU processes: Trainer's use_cpu makes accelerate pick gloo
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [info["world_size"] for info in infos] == [2, 2]
    weights = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    initial = load_file(tmp_path / "initial.safetensors")
    assert weights[0].keys() == weights[1].keys() and initial.keys() < weights[0].keys()  # adapter + head
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert any(not torch.equal(initial[key], weights[0][key]) for key in initial)

    # both ranks return the record; user callbacks and checkpoint writes happen on rank 0 only
    records = [info["record"] for info in infos]
    assert all(r["global_step"] == 4 and r["stop_reason"] == "completed" for r in records)
    assert records[0]["final_metrics"] == records[1]["final_metrics"]
    assert records[0]["train_losses"] == records[1]["train_losses"] and len(records[0]["train_losses"]) == 4
    assert infos[0]["events"] == ["StepEvent"] * 2 + ["EvalEvent"] + ["StepEvent"] * 2 + ["EvalEvent", "EndEvent"]
    assert infos[1]["events"] == []
    assert infos[0]["saves"] == ["checkpoint-2", "checkpoint-4", "final"] and infos[1]["saves"] == []
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-4", "final"]
    last = {p.name for p in (run / "checkpoint-4").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "workbench_run.json", "kw"} <= last

    fresh = tiny_adapter_model()
    fresh.load_adapter(str(run / "final" / "kw"))
    loaded = dict(fresh.named_parameters())
    for key, value in weights[0].items():
        if key in initial:
            torch.testing.assert_close(loaded[key], value, msg=key)
