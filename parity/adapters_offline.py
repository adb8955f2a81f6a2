"""pytest plugin for running the `adapters` library's tests offline, on transformers 4.57 or 5.

It changes the environment the tests run in, never what they assert, and it is the same for the reference run
(the real library) and the workbench run, so both figures count the same tests:
- tokenizers: the tests name hub tokenizers ("bert-base-uncased", "gpt2", ...) for their training datasets; offline,
  every hub name resolves to the BERT tokenizer the tests ship (tests/fixtures/SiBERT). Whisper's is that vocabulary
  padded with unused tokens to Whisper's size (51865): the Whisper tests feed its embeddings decoder ids up to the
  model's vocabulary size (the decoder start token is 50257);
- image processors and feature extractors: the vision tests name hub processors ("google/vit-base-patch16-224-in21k",
  ...) for their CIFAR-10 sample; offline, each resolves to its transformers class built with default arguments
  (224x224 images; Whisper's: 80 log-mel bins, 3000 frames);
- dataset loading scripts (the CIFAR-10 sample is one), which `datasets` 4 removed: a local directory holding
  `<name>.py` is built with the builder class that script defines;
- the Whisper tests' encoded audio datasets (`tests/fixtures/audio_datasets/*_encoded`), whose Common Voice sample is
  a large binary that clones made without blobs lack and whose speech-commands set was never encoded: made as the
  library's preparation script makes them (tests/fixtures/audio_datasets/prepare_audio_datasets.py), from seeded
  synthetic audio and the test repository's sample sentences, with the stand-ins above for whisper-tiny's feature
  extractor and tokenizer;
- `GlueDataset` / `GlueDataTrainingArguments`, which transformers 5 removed: a small MRPC reader with the same
  constructor and the same features (input_ids, attention_mask, token_type_ids, labels);
- `tokenizer.as_target_tokenizer()`, which transformers 5 removed: a context in which the tokenizer tokenizes as it
  does outside it, as transformers 4's did for tokenizers without a target mode (the BERT tokenizer the tests get);
- `PretrainedConfig.from_text_vision_configs(text_config, vision_config, **kwargs)` (the CLIPModel tests build their
  config with it), which transformers 5 removed: the config built from the two sub-configs' dicts, as 4.x did;
  and `eos_token_id` of the CLIP and EncoderDecoder configs, which every 4.x config had (None unless set) and 5's
  composite configs lack: the tests' input sampling reads it; likewise `tie_word_embeddings` (True in 4.x) of the
  ViT and BEiT configs, which the head-averaging test reads.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

LOCAL_TOKENIZER = Path("tests/fixtures/SiBERT").resolve()
# hub processor names the tests use -> the transformers class that stands in for it, built with default arguments
IMAGE_PROCESSORS = {
    "google/vit-base-patch16-224-in21k": "ViTImageProcessor",
    "microsoft/beit-base-patch16-224-pt22k": "BeitImageProcessor",
    "openai/clip-vit-base-patch32": "CLIPImageProcessor",
    "openai/whisper-tiny": "WhisperFeatureExtractor",
}
# hub tokenizer names whose models need ids beyond SiBERT's 10000 -> the real tokenizer's length
TOKENIZER_SIZES = {"openai/whisper-small": 51865, "openai/whisper-tiny": 51865}


def _offline_tokenizers(transformers) -> None:
    original = transformers.AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if not Path(str(name)).exists():
            name = _padded_tokenizer(TOKENIZER_SIZES[name]) if name in TOKENIZER_SIZES else LOCAL_TOKENIZER
        return original(cls, name, *args, **kwargs)

    transformers.AutoTokenizer.from_pretrained = classmethod(from_pretrained)


def _padded_tokenizer(size: int) -> Path:
    """SiBERT's files with its vocabulary padded by unused tokens to `size` entries."""
    path = Path(_cache_dir()) / f"tokenizer-{size}"
    if not path.exists():
        path.mkdir()
        for f in LOCAL_TOKENIZER.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        vocab = (LOCAL_TOKENIZER / "vocab.txt").read_text(encoding="utf-8").splitlines()
        vocab += [f"[unused_pad{i}]" for i in range(size - len(vocab))]
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def _offline_image_processors(transformers) -> None:
    def stand_in(original):
        def from_pretrained(cls, name, *args, **kwargs):
            if Path(str(name)).exists():
                return original(cls, name, *args, **kwargs)
            if str(name) not in IMAGE_PROCESSORS:
                raise OSError(f"the parity harness is offline and has no stand-in for the processor {name!r}")
            return getattr(transformers, IMAGE_PROCESSORS[str(name)])()

        return classmethod(from_pretrained)

    for auto in (transformers.AutoFeatureExtractor, transformers.AutoImageProcessor):
        auto.from_pretrained = stand_in(auto.from_pretrained.__func__)


def _loading_scripts(datasets) -> None:
    """`load_dataset(<dir>)` for a directory with a loading script `<dir>/<dir name>.py`, as datasets < 4 did."""
    original = datasets.load_dataset

    def load_dataset(path, *args, split=None, data_dir=None, trust_remote_code=None, **kwargs):
        script = Path(str(path)) / f"{Path(str(path)).name}.py"
        if not script.is_file():
            if trust_remote_code is not None:
                kwargs["trust_remote_code"] = trust_remote_code
            return original(path, *args, split=split, data_dir=data_dir, **kwargs)
        spec = importlib.util.spec_from_file_location(f"parity_script_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # datasets pickles the builder's functions by module name
        spec.loader.exec_module(module)
        builder_class = next(
            v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, datasets.DatasetBuilder) and v.__module__ == spec.name
        )
        builder = builder_class(data_dir=str(Path(data_dir or path).resolve()), cache_dir=_cache_dir())
        builder.download_and_prepare()
        return builder.as_dataset(split=split)

    datasets.load_dataset = load_dataset


def _cache_dir() -> str:
    if not hasattr(_cache_dir, "path"):
        _cache_dir.path = tempfile.mkdtemp(prefix="parity-datasets-")
    return _cache_dir.path


def _audio_datasets(datasets, transformers) -> None:
    """Stand-ins for the encoded audio samples the Whisper tests load with `load_from_disk`."""
    original = datasets.load_from_disk

    def load_from_disk(path, *args, **kwargs):
        name = Path(str(path))
        if name.parent.name == "audio_datasets" and name.name in ("common_voice_encoded", "speech_commands_encoded"):
            return _encoded_audio(datasets, transformers, seq2seq=name.name == "common_voice_encoded")
        return original(path, *args, **kwargs)

    datasets.load_from_disk = load_from_disk


def _encoded_audio(datasets, transformers, seq2seq: bool, rows: int = 10):
    """Ten clips of seeded synthetic audio (1-3 s at 16 kHz) as whisper-tiny's log-mel features, as the library's
    preparation script encodes them: for seq2seq with the tokenized sentences of tests/fixtures/sample_text.txt as
    labels, padded with -100 to the longest; for classification with one class id (1 or 2) a clip."""
    rng = np.random.default_rng(0)
    extractor = transformers.AutoFeatureExtractor.from_pretrained("openai/whisper-tiny")
    clips = [
        np.sin(2 * np.pi * rng.uniform(100, 1000) * np.arange(n) / 16000) + 0.1 * rng.standard_normal(n)
        for n in rng.integers(16000, 48000, rows)
    ]
    columns = {"input_features": list(extractor(clips, sampling_rate=16000).input_features)}
    if seq2seq:
        sentences = [line for line in Path("tests/fixtures/sample_text.txt").read_text().splitlines() if line][:rows]
        ids = transformers.AutoTokenizer.from_pretrained("openai/whisper-tiny")(sentences).input_ids
        longest = max(map(len, ids))
        columns["labels"] = [i + [-100] * (longest - len(i)) for i in ids]
    else:
        columns["label"] = [[1 + i % 2] for i in range(rows)]
    split = datasets.Dataset.from_dict(columns)
    split.set_format(type="torch")
    return datasets.DatasetDict({"train": split})


@dataclass
class GlueDataTrainingArguments:
    task_name: str
    data_dir: str
    max_seq_length: int = 128
    overwrite_cache: bool = False


@dataclass(frozen=True)
class InputFeatures:
    """One encoded pair, as transformers 4's `InputFeatures` (a dataclass: tests call `asdict` on it)."""

    input_ids: list
    attention_mask: list | None = None
    token_type_ids: list | None = None
    label: int | None = None


class GlueDataset(torch.utils.data.Dataset):
    """MRPC sentence pairs as the removed transformers.GlueDataset gave them (only the task the tests use)."""

    def __init__(self, args: GlueDataTrainingArguments, tokenizer, limit_length=None, mode="train", cache_dir=None):
        if args.task_name != "mrpc":
            raise ValueError(f"the parity harness only provides MRPC, not {args.task_name!r}")
        with open(Path(args.data_dir) / f"{mode}.tsv", encoding="utf-8") as f:  # MRPC has unbalanced quotes
            rows = list(csv.reader(f, delimiter="\t", quotechar=None))[1:]
        rows = rows[:limit_length] if limit_length else rows
        encoded = tokenizer(
            [r[3] for r in rows], [r[4] for r in rows], max_length=args.max_seq_length,
            padding="max_length", truncation=True,
        )
        fields = ("input_ids", "attention_mask", "token_type_ids")
        self.features = [
            InputFeatures(**{k: encoded[k][i] for k in fields if k in encoded}, label=int(row[0]))
            for i, row in enumerate(rows)
        ]

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


@contextlib.contextmanager
def _same_tokenizer(self):
    yield


def _from_text_vision_configs(cls, text_config, vision_config, **kwargs):
    return cls(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), **kwargs)


def pytest_configure(config):
    # the module as it is now: another plugin may have imported transformers afresh since this one was imported
    current = importlib.import_module("transformers")
    _offline_tokenizers(current)
    _offline_image_processors(current)
    datasets = importlib.import_module("datasets")
    _loading_scripts(datasets)
    _audio_datasets(datasets, current)
    if not hasattr(current, "GlueDataset"):
        current.GlueDataset = GlueDataset
        current.GlueDataTrainingArguments = GlueDataTrainingArguments
    if not hasattr(current.PreTrainedTokenizerBase, "as_target_tokenizer"):
        current.PreTrainedTokenizerBase.as_target_tokenizer = _same_tokenizer
    if not hasattr(current.PretrainedConfig, "from_text_vision_configs"):
        current.PretrainedConfig.from_text_vision_configs = classmethod(_from_text_vision_configs)
    for composite in (current.CLIPConfig, current.EncoderDecoderConfig):
        if not hasattr(composite, "eos_token_id"):
            composite.eos_token_id = None
    for vision_config in (current.ViTConfig, current.BeitConfig):
        if not hasattr(vision_config(), "tie_word_embeddings"):
            vision_config.tie_word_embeddings = True
