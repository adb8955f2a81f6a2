"""Generate conformance fixtures with the real AdapterHub ``adapters`` library.

Runs in its own virtualenv (adapters 1.3.0, transformers 4.57.6, torch 2.13.0; see the Makefile).
For every case it builds a tiny seeded model, adds adapters / heads / fusions, perturbs all of their
parameters away from init, runs fixed inputs and writes:

  cases/<id>/<name>/            folders exactly as written by save_adapter / save_adapter_fusion
  cases/<id>/expected.safetensors   output tensors (float32)
  cases/<id>/keys.json          key names and shapes of every weight file in the case
  manifest.json                 how to rebuild each case (schema in README.md)

Everything is seeded, so re-running gives the same files.
"""

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import traceback
import types
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import adapters
import torch
import transformers
from adapters import AutoAdapterModel
from adapters.composition import (
    AdapterCompositionBlock,
    Average,
    BatchSplit,
    Fuse,
    MultiTask,
    Parallel,
    Split,
    Stack,
    parse_composition,
)
from adapters.configuration.adapter_fusion_config import ADAPTERFUSION_CONFIG_MAP
from adapters.utils import parse_adapter_config_string
from safetensors.torch import load_file, save_file


def provide_stochastic_depth() -> None:
    """adapters 1.3.0 builds AdapterPlus's stochastic depth from torchvision's `StochasticDepth` (and refuses the
    config without torchvision). No torchvision wheel runs on this torch build, so when it is missing a stand-in with
    torchvision's documented "row" semantics is registered. The fixtures run in eval mode, where it is the identity.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return
    import transformers.utils.import_utils as import_utils

    class StochasticDepth(torch.nn.Module):
        def __init__(self, p: float, mode: str):
            super().__init__()
            self.p, self.mode = p, mode

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            keep = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
            return x * (keep / (1 - self.p) if self.p < 1 else keep)

    for name in ("torchvision", "torchvision.ops", "torchvision.ops.stochastic_depth"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.ops.stochastic_depth"].StochasticDepth = StochasticDepth
    import_utils._torchvision_available = True


def library_config(spec: str | None):
    """What `add_adapter` gets for a case's config string: the string itself, except for "adapterplus[...]" (adapters
    1.3.0 has `AdapterPlusConfig` but no string name for it; workbench calls it "adapterplus")."""
    if spec is None or not spec.startswith("adapterplus"):
        return spec
    ((_, overrides),) = parse_adapter_config_string(spec.replace("adapterplus", "seq_bn", 1))
    return adapters.AdapterPlusConfig().replace(**overrides)


# ---------------------------------------------------------------------------------------------
# Tiny models and fixed inputs
# ---------------------------------------------------------------------------------------------

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, MAX_POS = 128, 32, 2, 4, 2, 64, 64
PAD, BOS, EOS = 1, 0, 2
LENGTHS = (8, 5, 3)  # right padding, batch of 3, sequence length 8
NOISE_STD = 0.2
# Decoders run with eager attention: under transformers 4.57 "sdpa" masks are boolean, and adapters 1.3.0
# then inverts the prefix-tuning mask on gpt2/llama/mistral, so prefixes would be silently ignored.
# Encoders keep the library default (sdpa): under eager, adapters 1.3.0 fails on bert Parallel(lora, lora)
# and distilbert prompt tuning. Numerically the two agree far below the 1e-4 tolerance. The exception is prefix
# and prompt tuning on encoders: under sdpa the library lets prompt rows attend to padding and adds a +1 bias to
# DistilBERT prefix columns, so those cases run with eager, the library's intended semantics.
DECODERS = ("gpt2", "llama", "mistral", "qwen2")
EAGER_METHODS = ("prefix_tuning", "prompt_tuning", "mam", "unipelt")


def attn_for(arch: str, adapters: list = ()) -> str:
    uses_prefix = any(m in config for _, config in adapters for m in EAGER_METHODS)
    return "eager" if arch in DECODERS or arch in T5_ARCHS or arch in EAGER_ONLY or uses_prefix else "sdpa"


COMMON = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.1)
BERT_LIKE = dict(
    COMMON,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
    max_position_embeddings=MAX_POS,
    type_vocab_size=2,
)
DECODER = dict(
    COMMON,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    intermediate_size=FFN,
    max_position_embeddings=MAX_POS,
    tie_word_embeddings=False,
)

ARCHS = {
    "bert": (transformers.BertConfig, BERT_LIKE),
    "roberta": (transformers.RobertaConfig, BERT_LIKE),
    "xlm-roberta": (transformers.XLMRobertaConfig, BERT_LIKE),
    "distilbert": (
        transformers.DistilBertConfig,
        dict(
            COMMON,
            dim=HIDDEN,
            n_layers=LAYERS,
            n_heads=HEADS,
            hidden_dim=FFN,
            max_position_embeddings=MAX_POS,
        ),
    ),
    "gpt2": (
        transformers.GPT2Config,
        dict(COMMON, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=MAX_POS),
    ),
    "llama": (transformers.LlamaConfig, DECODER),
    "mistral": (transformers.MistralConfig, dict(DECODER, sliding_window=None)),
    "qwen2": (transformers.Qwen2Config, DECODER),
}

# T5 and mT5 (encoder-decoder): only their own cases (`t5_cases`), on AutoAdapterModel. The library's T5 has no sdpa
# path (transformers 4.57 refuses it), so they run eager. T5 decodes from padding. "t5" ties its LM head (the 4.57
# default, so the library scales the decoder output by d_model**-0.5), "flan-t5" does not (gated FFN, untied, as
# FLAN-T5 and T5 v1.1 checkpoints), and mT5's default is untied with the gated FFN.
T5_LIKE = dict(
    COMMON,
    d_model=HIDDEN,
    d_kv=HIDDEN // HEADS,
    num_heads=HEADS,
    num_layers=LAYERS,
    num_decoder_layers=LAYERS,
    d_ff=FFN,
    decoder_start_token_id=PAD,
)
T5_ARCHS = {
    "t5": (transformers.T5Config, T5_LIKE),
    "flan-t5": (transformers.T5Config, dict(T5_LIKE, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "mt5": (transformers.MT5Config, T5_LIKE),
}


# Vision families (inputs: pixel_values), kept out of ARCHS: the text matrices (classification heads, token-length
# Split, ...) do not apply to them. `beit-relpos` has BEiT's relative position bias in every layer (the library cannot
# run prefix or prompt tuning there).
IMAGE_SIZE, PATCH = 32, 8
VISION = dict(
    image_size=IMAGE_SIZE,
    patch_size=PATCH,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
    initializer_range=0.1,
)
VISION_ARCHS = {
    "vit": (transformers.ViTConfig, VISION),
    "beit": (transformers.BeitConfig, VISION),
    "beit-relpos": (transformers.BeitConfig, dict(VISION, use_relative_position_bias=True)),
}


IMAGE_SHAPE = (len(LENGTHS), 3, IMAGE_SIZE, IMAGE_SIZE)


# CLIP: a text tower (the text models' sizes and token ids), a vision tower (the vision models' sizes and images) and
# both in CLIPModel. eos_token_id=2 selects CLIP's original pooling (the highest token id of each row).
CLIP_TEXT = dict(
    COMMON,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=FFN,
    max_position_embeddings=MAX_POS,
)
CLIP_VISION = {k: v for k, v in VISION.items() if k != "initializer_range"}
CLIP_ARCHS = {
    "clip_text": (transformers.CLIPTextConfig, CLIP_TEXT),
    "clip_vision": (transformers.CLIPVisionConfig, CLIP_VISION),
    "clip": (
        lambda **kw: transformers.CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, **kw),
        {"initializer_range": 0.1},
    ),
}
CLIP_LAYOUTS = {"clip_text": "default", "clip_vision": "image", "clip": "text_image"}


def make_image() -> str:
    """A fixed batch of 3 RGB images, seeded: their uint8 values (as an image file holds them) as one hex string."""
    gen = torch.Generator().manual_seed(4321)
    return bytes(torch.randint(0, 256, IMAGE_SHAPE, generator=gen).flatten().tolist()).hex()


def image_pixel_values(inputs: dict) -> torch.Tensor:
    """`pixel_values` of the fixed images, normalized as ViT's image processor does (mean 0.5, std 0.5)."""
    values = torch.tensor(list(bytes.fromhex(inputs["image"])), dtype=torch.float32).view(inputs["image_shape"])
    return (values / 255 - 0.5) / 0.5


# --- current decoders (issue 12, item 4) --------------------------------------------------------------------------
# GPT-J natively (GPTJAdapterModel / adapters.init(AutoModel)); Gemma 2, Gemma 3 text, Qwen3 and Phi through the
# library's built-in plugin interfaces (`adapters.init` picks them by model type), on the base model and on the causal
# LM task model. Grouped-query attention (2 key/value heads) and explicit head dims (Qwen3's 16 != 32 / 4).
DECODER_FAMILIES = {
    "gptj": (
        transformers.GPTJConfig,
        dict(COMMON, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=MAX_POS, rotary_dim=4),
    ),
    "gemma2": (transformers.Gemma2Config, dict(DECODER, head_dim=8)),
    "gemma3_text": (transformers.Gemma3TextConfig, dict(DECODER, head_dim=8)),
    "qwen3": (transformers.Qwen3Config, dict(DECODER, head_dim=16)),
    "phi": (transformers.PhiConfig, DECODER),
}
DECODERS += tuple(DECODER_FAMILIES)
CAUSAL_LM = "causal_lm"  # Case.model_class: adapters.init(AutoModelForCausalLM), saved as models/<arch>-causal_lm


def model_folder(arch: str, model_class: str) -> str:
    return f"models/{arch}-causal_lm" if model_class == CAUSAL_LM else f"models/{arch}"


def build_decoder_family_models(out: Path) -> None:
    """One seeded base model per family, and the causal LM task model of the plugin-interface families."""
    for arch, (config_cls, kwargs) in DECODER_FAMILIES.items():
        for model_class in ("base", CAUSAL_LM) if arch != "gptj" else ("base",):
            torch.manual_seed(seed_of(model_folder(arch, model_class)))
            auto = transformers.AutoModelForCausalLM if model_class == CAUSAL_LM else transformers.AutoModel
            model = auto.from_config(config_cls(**kwargs), attn_implementation=attn_for(arch))
            folder = out / model_folder(arch, model_class)
            model.save_pretrained(folder, safe_serialization=True)
            write_json(folder / "keys.json", weight_keys(folder))


def decoder_family_cases() -> list:
    """Every family: the base model, bottleneck, LoRA and the other methods its support allows (prefix tuning and heads
    only natively: GPT-J); the plugin-interface families also on their causal LM task model."""
    methods = ["seq_bn", "double_seq_bn", "par_bn", "seq_bn_inv", "lora", "ia3", "loreft"]
    variants = {"lora-r4-qkv-ffn": VARIANTS["lora-r4-qkv-ffn"], "compacter": METHODS["compacter"]}
    cases = []
    for arch in DECODER_FAMILIES:
        cases.append(Case(f"{arch}-base", arch, [], None))
        cases += [Case(f"{arch}-{m}", arch, [("a", METHODS[m])], "a") for m in methods]
        cases += [Case(f"{arch}-{slug}", arch, [("a", cfg)], "a") for slug, cfg in variants.items()]
        if arch == "gptj":
            cases += [Case(f"gptj-{m}", arch, [("a", m)], "a") for m in ("prefix_tuning", "adapterplus")]
            for slug, (kind, kwargs) in HEADS_DEC.items():
                heads = [("a", kind, kwargs)]
                cases.append(Case(f"gptj-head-{slug}", arch, [("a", "seq_bn")], "a", "adapter_model", heads=heads))
            cases.append(
                Case(
                    "gptj-head-causal_lm-lora",
                    arch,
                    [("a", "lora")],
                    "a",
                    "adapter_model",
                    heads=[("a", "causal_lm", {})],
                )
            )
        else:
            cases += [
                Case(f"{arch}-causal_lm-{m}", arch, [("a", METHODS[m])], "a", model_class=CAUSAL_LM)
                for m in ("seq_bn", "lora", "double_seq_bn")
            ]
    # Compositions at GPT-J's parallel-block sites and at the plugin interface's hooked sites (Gemma 2's sandwich
    # norms, Phi's FFN without a residual). The library refuses Parallel on plugin-interface models, and a pair that
    # leaves rows without an adapter at a site fails there (KeyError in its BottleneckLayer), so pairs are alike.
    double = [("a", "double_seq_bn"), ("b", "double_seq_bn")]
    fuse = dict(fusions=[(["a", "b"], "dynamic")], forward_kwargs={"output_adapter_fusion_attentions": True})
    blocks = {
        "stack": (double, Stack("a", "b"), {}),
        "batchsplit": (double, BatchSplit("a", "b", batch_sizes=[1, 2]), {}),
        "fuse": (double, Fuse("a", "b"), fuse),
        "parallel": (double, Parallel("a", "b"), {}),
        "lora-parallel": ([("a", "lora"), ("b", "lora")], Parallel("a", "b"), {}),
    }
    for arch in ("gptj", "gemma2", "phi"):
        for slug, (ads, active, extra) in blocks.items():
            if arch == "gptj" or "parallel" not in slug:
                cases.append(Case(f"{arch}-comp-{slug}", arch, ads, active, **extra))
    return cases


def make_inputs() -> dict:
    """Fixed batch: token ids in [3, VOCAB), right padded with PAD."""
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=gen)
    mask = torch.tensor([[1] * n + [0] * (max(LENGTHS) - n) for n in LENGTHS])
    ids = ids.masked_fill(mask == 0, PAD)
    return {
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "pad_token_id": PAD,
        "lengths": list(LENGTHS),
        "multiple_choice_layout": "input_ids/attention_mask viewed as (1, 3, 8): 1 example, 3 choices",
        "image": make_image(),
        "image_shape": list(IMAGE_SHAPE),
        "image_layout": "image: uint8 values as hex, viewed as image_shape; pixel_values = (image / 255 - 0.5) / 0.5",
        **make_encdec_inputs(),
    }


def build_base_models(out: Path) -> None:
    """Create and save one seeded base model (plain AutoModel class) per architecture."""
    for i, (arch, (config_cls, kwargs)) in enumerate({**VISION_ARCHS, **CLIP_ARCHS}.items()):
        torch.manual_seed(200 + i)
        model = transformers.AutoModel.from_config(config_cls(**kwargs), attn_implementation=attn_for(arch))
        model.save_pretrained(out / "models" / arch, safe_serialization=True)
        write_json(out / "models" / arch / "keys.json", weight_keys(out / "models" / arch))
    for i, (arch, (config_cls, kwargs)) in enumerate({**ARCHS, **T5_ARCHS}.items()):
        torch.manual_seed(100 + i)
        model = transformers.AutoModel.from_config(config_cls(**kwargs), attn_implementation=attn_for(arch))
        model.save_pretrained(out / "models" / arch, safe_serialization=True)
        write_json(out / "models" / arch / "keys.json", weight_keys(out / "models" / arch))


# ---------------------------------------------------------------------------------------------
# Case table
# ---------------------------------------------------------------------------------------------

Setup = str | AdapterCompositionBlock | None
FIRST_HEAD = "<first>"  # Case.head default: the case's first head is the active one


@dataclass
class Case:
    """One fixture: a model, its adapters/heads/fusions, an active setup, and options."""

    id: str
    arch: str
    adapters: list  # [(name, config string)]
    active: Setup
    model_class: str = "base"  # "base": adapters.init(AutoModel); "adapter_model": AutoAdapterModel; CAUSAL_LM;
    # "seq2seq_lm": adapters.init(AutoModelForSeq2SeqLM) (EncoderDecoderModel)
    heads: list = field(default_factory=list)  # [(name, add_*_head method suffix, kwargs)]
    fusions: list = field(default_factory=list)  # [(adapter names, fusion config string[, with_head name])]
    layout: str = "default"  # or "multiple_choice"
    forward_kwargs: dict = field(default_factory=dict)
    merge: str | None = None  # LoRA/IA3 adapter merged into the base weights before the forward pass
    average: dict | None = None  # kwargs of model.average_adapter(...)
    safetensors: bool = False  # save with use_safetensors=True
    save_full_model: bool = False  # also save_pretrained the whole AdapterModel
    # Heads: `head_before` is set as active_head before the composition is activated (None: untouched); `head` after
    # it (FIRST_HEAD: the first head, the default of the single-head cases; None: the composition's choice stands).
    head_before: str | None = None
    head: str | None = FIRST_HEAD
    labels: list | None = None  # forward(labels=torch.tensor(labels)): records `loss`
    share: list | None = None  # MTL-LoRA: model.share_parameters(MultiTask(*share), name="shared") before perturbing

    def head_after(self) -> str | None:
        if self.head == FIRST_HEAD:
            return self.heads[0][0] if self.heads else None
        return self.head


METHODS = {
    m: m
    for m in "seq_bn double_seq_bn par_bn scaled_par_bn seq_bn_inv double_seq_bn_inv lora ia3 "
    "prefix_tuning prompt_tuning dora vera dvora loreft noreft direft adapterplus".split()
}
# Default compacter bottleneck is hidden/32 = 1, which PHM (phm_dim=4) cannot split: use hidden/8 = 4.
METHODS.update({"compacter": "compacter[reduction_factor=8]", "compacter++": "compacter++[reduction_factor=8]"})

VARIANTS = {
    "seq_bn-rf4-gelu": "seq_bn[reduction_factor=4,non_linearity='gelu']",
    "seq_bn-gating": "seq_bn[use_gating=True]",
    "seq_bn-channel-scaling": "seq_bn[scaling='channel',reduction_factor=8]",
    "double_seq_bn-ln": "double_seq_bn[ln_before=True,ln_after=True,residual_before_ln=False]",
    "par_bn-scaling2-rf4": "par_bn[scaling=2.0,reduction_factor=4]",
    "lora-r4-qkv-ffn": "lora[r=4,alpha=16,attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]",
    "lora-gating": "lora[use_gating=True]",
    "lora-leave_out0": "lora[leave_out=[0]]",
    "ia3-output": "ia3[output_lora=True]",
    "prefix_tuning-flat": "prefix_tuning[flat=True]",
    "prefix_tuning-len5": "prefix_tuning[prefix_length=5,bottleneck_size=64]",
    "prompt_tuning-len3": "prompt_tuning[prompt_length=3]",
    "mam": "mam",
    "unipelt": "unipelt",
    # The LoRA family: DoRA (LoRAConfig(use_dora=True) and "dora"), VeRA and DvoRA (VeRA + DoRA).
    "lora-use_dora": "lora[use_dora=True]",
    "dora-r4-qkv-ffn": "dora[r=4,alpha=16,attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]",
    "dora-gating": "dora[use_gating=True]",
    "vera-r4-alpha16": "vera[r=4,alpha=16,attn_matrices=['q','k','v']]",
    "vera-ffn": "vera[intermediate_lora=True]",  # q/v and FFN shapes differ: one shared A/B pair cannot serve them
    "vera-kv": "vera[attn_matrices=['k','v']]",  # llama's k/v projections share one shape (q/v do not: GQA)
    "vera-use_dora": "vera[use_dora=True,attn_matrices=['k','v']]",
    "dvora-r4-k": "dvora[r=4,alpha=2,attn_matrices=['k']]",
    # gpt2's fused c_attn takes no DoRA/VeRA in the library; its Conv1D FFN projections do.
    "dora-ffn": "dora[selfattn_lora=False,intermediate_lora=True,output_lora=True]",
    "vera-output": "vera[selfattn_lora=False,output_lora=True]",
    "dvora-output": "dvora[selfattn_lora=False,output_lora=True]",
    # ReFT positions on the (8, 5, 3)-token rows: prefix and suffix meet in the short rows; suffix-only; one layer.
    "loreft-prefix_suffix-r2": "loreft[prefix_positions=2,suffix_positions=2,r=2]",
    "noreft-tied-overlap": "noreft[prefix_positions=3,suffix_positions=3,tied_weights=True]",
    "direft-suffix-relu": "direft[prefix_positions=0,suffix_positions=3,r=4,non_linearity='relu']",
    "loreft-layer1": "loreft[layers=[1],prefix_positions=1,suffix_positions=1]",
    "adapterplus-rf4": "adapterplus[reduction_factor=4]",
    "adapterplus-mh-ln": "adapterplus[mh_adapter=True,reduction_factor=8,ln_after=True]",
}
GATED = {"seq_bn-gating", "lora-gating", "unipelt", "dora-gating", "mtl_lora-gating"}
# MTL-LoRA on bert and llama (gpt2's fused c_attn takes its weights in the library but fails in the forward; its
# Conv1D FFN projections work). `task_ids` in forward_kwargs: names, or indices (passed as a tensor, see `task_ids`).
MTL_VARIANTS = {
    "mtl_lora": "mtl_lora",
    "mtl_lora-n3-ffn": "mtl_lora[n_up_projection=3,intermediate_lora=True,output_lora=True]",
    "mtl_lora-gating": "mtl_lora[use_gating=True,n_up_projection=2]",
    "mtl_lora-r4-alpha16-sharp": "mtl_lora[r=4,alpha=16,attn_matrices=['q','k','v'],weights_sharpness=0.5]",
}

HEADS_ENC = {  # head case suffix -> (add_<x>_head, kwargs, layout)
    "classification": (
        "classification",
        dict(num_labels=3, layers=2, id2label={0: "neg", 1: "neu", 2: "pos"}),
    ),
    "multilabel": ("classification", dict(num_labels=3, layers=2, multilabel=True)),
    "tagging": ("tagging", dict(num_labels=5)),
    "multiple_choice": ("multiple_choice", dict(num_choices=3)),
    "qa": ("qa", dict()),
    "masked_lm": ("masked_lm", dict()),
}
HEADS_DEC = {
    "causal_lm": ("causal_lm", dict()),
    "classification": ("classification", dict(num_labels=3, layers=2)),
}


def method_cases() -> list:
    """a) base model without adapters, every method on every architecture, and config variants."""
    cases = [Case(f"{arch}-base", arch, [], None) for arch in ARCHS]
    cases += [Case(f"{arch}-{m}", arch, [("a", cfg)], "a") for arch in ARCHS for m, cfg in METHODS.items()]
    cases.append(Case("bert-compacter-default", "bert", [("a", "compacter")], "a"))  # records the limitation
    for arch in ("bert", "llama", "gpt2"):
        for slug, cfg in VARIANTS.items():
            kwargs = {"output_adapter_gating_scores": True} if slug in GATED else {}
            cases.append(Case(f"{arch}-{slug}", arch, [("a", cfg)], "a", forward_kwargs=kwargs))
    for arch in ("bert", "llama"):
        for slug, cfg in MTL_VARIANTS.items():
            kwargs = {"output_adapter_gating_scores": True} if slug in GATED else {}
            cases.append(Case(f"{arch}-{slug}", arch, [("a", cfg)], "a", forward_kwargs=kwargs))
    mtl_ffn = "mtl_lora[selfattn_lora=False,intermediate_lora=True,output_lora=True,n_up_projection=2]"
    cases.append(Case("gpt2-mtl_lora-ffn", "gpt2", [("a", mtl_ffn)], "a"))
    cases.append(Case("bert-seq_bn-safetensors", "bert", [("a", "seq_bn")], "a", safetensors=True))
    cases.append(Case("llama-lora-safetensors", "llama", [("a", "lora")], "a", safetensors=True))
    return cases


def head_cases() -> list:
    """b) prediction heads on AutoAdapterModel, each with an active seq_bn adapter of the same name."""
    cases = []
    for archs, table in ((("bert", "roberta"), HEADS_ENC), (("gpt2", "llama"), HEADS_DEC)):
        for arch in archs:
            for slug, (kind, kwargs) in table.items():
                cases.append(
                    Case(
                        f"{arch}-head-{slug}",
                        arch,
                        [("a", "seq_bn")],
                        "a",
                        model_class="adapter_model",
                        heads=[("a", kind, kwargs)],
                        layout="multiple_choice" if kind == "multiple_choice" else "default",
                        save_full_model=(arch == "bert" and slug == "classification"),
                    )
                )
    for arch in ("bert", "gpt2", "llama"):
        cases.append(
            Case(
                f"{arch}-head-classification-loreft",
                arch,
                [("a", "loreft[prefix_positions=1,suffix_positions=2]")],
                "a",
                model_class="adapter_model",
                heads=[("a", "classification", dict(num_labels=3))],
            )
        )
    for slug, config, st in (("safetensors", "seq_bn", True), ("compacter", METHODS["compacter"], False)):
        cases.append(
            Case(
                f"bert-head-classification-{slug}",
                "bert",
                [("a", config)],
                "a",
                model_class="adapter_model",
                heads=[("a", "classification", dict(num_labels=3))],
                safetensors=st,
            )
        )
    return cases


def average(**kwargs) -> dict:
    """Case options for model.average_adapter("avg", ["a", "b"], weights=[0.3, 0.7], ...)."""
    options = dict(adapter_name="avg", adapter_list=["a", "b"], weights=[0.3, 0.7], combine_strategy="linear")
    return {"average": {**options, **kwargs}}


def composition_cases() -> list:
    """c) + d) composition blocks, fusion variants, averaging and merging."""
    bn2, bn3 = [("a", "seq_bn"), ("b", "seq_bn")], [("a", "seq_bn"), ("b", "seq_bn"), ("c", "seq_bn")]
    lora2, prefix2 = [("a", "lora"), ("b", "lora")], [("a", "prefix_tuning"), ("b", "prefix_tuning")]
    fuse_out = {"output_adapter_fusion_attentions": True}
    plus2 = [("a", "adapterplus[reduction_factor=8]"), ("b", "adapterplus[reduction_factor=8]")]
    specs = {
        "stack": (bn2, Stack("a", "b"), {}),
        "parallel": (bn2, Parallel("a", "b"), {}),
        "fuse": (bn2, Fuse("a", "b"), dict(fusions=[(["a", "b"], "dynamic")], forward_kwargs=fuse_out)),
        "fuse-static": (bn2, Fuse("a", "b"), dict(fusions=[(["a", "b"], "static")], forward_kwargs=fuse_out)),
        "fuse-options": (
            bn2,
            Fuse("a", "b"),
            dict(
                fusions=[(["a", "b"], "dynamic[residual_before=True,temperature=True,query_before_ln=True]")],
                forward_kwargs=fuse_out,
            ),
        ),
        "fuse-double_seq_bn": (
            [("a", "double_seq_bn"), ("b", "double_seq_bn")],
            Fuse("a", "b"),
            dict(fusions=[(["a", "b"], "dynamic")], forward_kwargs=fuse_out),
        ),
        "split": (bn2, Split("a", "b", splits=[5, 3]), {}),
        "batchsplit": (bn2, BatchSplit("a", "b", batch_sizes=[1, 2]), {}),
        "average": (bn2, Average("a", "b", weights=[0.3, 0.7]), {}),
        "stack-parallel": (bn3, Stack("a", Parallel("b", "c")), {}),
        "stack-fuse": (bn3, Stack("a", Fuse("b", "c")), dict(fusions=[(["b", "c"], "dynamic")])),
        "madx": ([("lang", "seq_bn_inv"), ("task", "seq_bn")], Stack("lang", "task"), {}),
        "lora-stack": (lora2, Stack("a", "b"), {}),
        "lora-average": (lora2, Average("a", "b", weights=[0.3, 0.7]), {}),
        "lora-parallel": (lora2, Parallel("a", "b"), {}),
        "prefix-stack": (prefix2, Stack("a", "b"), {}),
        "prefix-parallel": (prefix2, Parallel("a", "b"), {}),
        "average_adapter": (bn2, "avg", average()),
        "average_adapter-lora": (lora2, "avg", average()),
        "average_adapter-lora-svd": (lora2, "avg", average(combine_strategy="lora_delta_w_svd", svd_rank=4)),
        "lora-merge": ([("a", "lora")], "a", dict(merge="a")),
        "ia3-merge": ([("a", "ia3")], "a", dict(merge="a")),
        # ReFT first in a Stack: adapters 1.3 runs only a setup's first ReFT adapter (see methods/reft.py).
        "reft-stack-seq_bn": ([("a", "loreft"), ("b", "seq_bn")], Stack("a", "b"), {}),
        "reft-stack-lora": (
            [("a", "noreft[prefix_positions=2,suffix_positions=2]"), ("b", "lora")],
            Stack("a", "b"),
            {},
        ),
        "average_adapter-noreft": ([("a", "noreft"), ("b", "noreft")], "avg", average()),
        "average_adapter-loreft": ([("a", "loreft"), ("b", "loreft")], "avg", average()),
        "adapterplus-stack": (plus2, Stack("a", "b"), {}),
        "adapterplus-parallel": (plus2, Parallel("a", "b"), {}),
        "adapterplus-fuse": (plus2, Fuse("a", "b"), dict(fusions=[(["a", "b"], "dynamic")], forward_kwargs=fuse_out)),
        "adapterplus-split": (plus2, Split("a", "b", splits=[5, 3]), {}),
        "adapterplus-batchsplit": (plus2, BatchSplit("a", "b", batch_sizes=[1, 2]), {}),
        "adapterplus-average": (plus2, Average("a", "b", weights=[0.3, 0.7]), {}),
    }
    # The LoRA family in every block the library runs them in (VeRA on k/v: llama's q and v shapes differ).
    family = {"dora": "dora", "vera": "vera[attn_matrices=['k','v']]", "dvora": "dvora[attn_matrices=['k','v']]"}
    for method, config in family.items():
        pair = [("a", config), ("b", config)]
        specs.update(
            {
                f"{method}-stack": (pair, Stack("a", "b"), {}),
                f"{method}-parallel": (pair, Parallel("a", "b"), {}),
                f"{method}-batchsplit": (pair, BatchSplit("a", "b", batch_sizes=[1, 2]), {}),
                f"{method}-average": (pair, Average("a", "b", weights=[0.3, 0.7]), {}),
                f"{method}-merge": ([("a", config)], "a", dict(merge="a")),
                f"average_adapter-{method}": (pair, "avg", average()),
            }
        )
    # MTL-LoRA: each row through the adapter of its task (task_ids by name or index), with shared A/B.
    mtl = "mtl_lora[n_up_projection=2]"
    mtl3 = [("a", mtl), ("b", mtl), ("c", mtl)]
    by_name = {"task_ids": ["b", "a", "b"]}
    specs.update(
        {
            "multitask": (mtl3[:2], MultiTask("a", "b"), dict(forward_kwargs=by_name)),
            "multitask-shared": (
                mtl3,
                MultiTask("a", "b", "c"),
                dict(forward_kwargs={"task_ids": [2, 0, 1]}, share=["a", "b", "c"]),
            ),
            "multitask-one-task": (
                mtl3,
                MultiTask("a", "b", "c"),
                dict(forward_kwargs={"task_ids": [1, 1, 1]}, share=["a", "b", "c"]),
            ),
            "multitask-lora": (
                [("a", "lora"), ("b", "lora")],
                MultiTask("a", "b"),
                dict(forward_kwargs={"task_ids": [1, 0, 0]}),
            ),
            "multitask-stack": (
                [("x", "lora")] + mtl3[:2],
                Stack("x", MultiTask("a", "b")),
                dict(forward_kwargs=by_name),
            ),
            "multitask-average": (
                mtl3,
                MultiTask(Average("a", "b", weights=[0.3, 0.7]), "c"),
                dict(forward_kwargs={"task_ids": [1, 0, 1]}),
            ),
            "multitask-inner-stack": (
                [("x", "lora")] + mtl3[:2],
                MultiTask(Stack("x", "a"), "b"),
                dict(forward_kwargs={"task_ids": [0, 1, 0]}),
            ),
            "mtl_lora-stack": (mtl3[:2], Stack("a", "b"), {}),
            "mtl_lora-parallel": (mtl3[:2], Parallel("a", "b"), {}),
            "mtl_lora-batchsplit": (mtl3[:2], BatchSplit("a", "b", batch_sizes=[1, 2]), {}),
            "mtl_lora-average": (mtl3[:2], Average("a", "b", weights=[0.3, 0.7]), {}),
            "average_adapter-mtl_lora": (mtl3[:2], "avg", average()),
        }
    )
    return [
        Case(f"{arch}-comp-{slug}", arch, ads, active, **extra)
        for arch in ("bert", "llama")
        for slug, (ads, active, extra) in specs.items()
    ]


LABELS = [0, 1, 1]  # valid for both the 2- and the 3-label heads
PREFIX_SMALL = "prefix_tuning[bottleneck_size=16]"  # the default bottleneck (512) would add ~1.6 MB per case


def cls_head(name: str, num_labels: int) -> tuple:
    """A one-layer classification head (the two-layer default is covered by the head cases; this keeps files small)."""
    return (name, "classification", dict(num_labels=num_labels, layers=1))


def head_composition_cases() -> list:
    """e) prediction heads x compositions (AutoAdapterModel): which head(s) the library runs for each block.

    Heads: `a` has 2 labels, `b` 3 (`b`/`c` in the nested cases). `head_before` makes the composition's choice
    visible: the head that was active before it is activated.
    """
    heads_ab = [cls_head("a", 2), cls_head("b", 3)]
    heads_bc = [cls_head("b", 2), cls_head("c", 3)]
    two = lambda cfg: [("a", cfg), ("b", cfg)]  # noqa: E731
    bn2, bn3 = two("seq_bn"), [("a", "seq_bn"), ("b", "seq_bn"), ("c", "seq_bn")]
    split = BatchSplit("a", "b", batch_sizes=[1, 2])
    specs = {  # slug -> (adapters, active, Case options)
        "stack": (bn2, Stack("a", "b"), dict(heads=heads_ab, head_before="a")),
        "stack-head_arg": (bn2, Stack("a", "b"), dict(heads=heads_ab, forward_kwargs={"head": "a"})),
        "parallel": (bn2, Parallel("a", "b"), dict(heads=heads_ab)),
        "parallel-labels": (bn2, Parallel("a", "b"), dict(heads=heads_ab, labels=LABELS)),
        "parallel-head_arg": (bn2, Parallel("a", "b"), dict(heads=heads_ab, forward_kwargs={"head": "a"})),
        "batchsplit": (bn2, split, dict(heads=heads_ab)),
        "batchsplit-labels": (bn2, split, dict(heads=heads_ab, labels=LABELS)),
        "fuse-with_head": (
            bn3,
            Fuse("a", "b", "c"),
            # load_adapter_fusion(with_head=True) loads the head without activating it: set after activating.
            dict(
                heads=[cls_head("fuse_head", 3)],
                fusions=[(["a", "b", "c"], "dynamic", "fuse_head")],
                head="fuse_head",
            ),
        ),
        "fuse-keeps_head": (
            bn2,
            Fuse("a", "b"),
            dict(heads=heads_ab, fusions=[(["a", "b"], "dynamic")], head_before="a"),
        ),
        "stack-parallel": (bn3, Stack("a", Parallel("b", "c")), dict(heads=heads_bc)),
        "parallel-stack": (bn3, Parallel(Stack("a", "b"), "c"), dict(heads=heads_bc)),
        "parallel-lora": (two("lora"), Parallel("a", "b"), dict(heads=heads_ab)),
        "batchsplit-lora": (two("lora"), split, dict(heads=heads_ab)),
        "parallel-prefix": (two(PREFIX_SMALL), Parallel("a", "b"), dict(heads=heads_ab)),
        "batchsplit-prefix": (two(PREFIX_SMALL), split, dict(heads=heads_ab)),
    }
    decoder_slugs = ("parallel", "batchsplit")
    cases = []
    for arch in ("bert", "llama", "gpt2"):
        for slug, (ads, active, extra) in specs.items():
            if arch != "bert" and slug not in decoder_slugs:
                continue
            options = {"head": None, **extra}  # by default, the composition picks the head(s)
            cases.append(Case(f"{arch}-heads-{slug}", arch, ads, active, model_class="adapter_model", **options))
    return cases + head_composition_matrix([c.id for c in cases])


# Methods of the heads x compositions matrix: case id suffix -> config string ("" suffix: seq_bn, as above).
HEADS_MATRIX_METHODS = {
    "": "seq_bn",
    "-double_seq_bn": "double_seq_bn",
    "-par_bn": "par_bn",
    "-compacter": METHODS["compacter"],
    "-lora": "lora",
    "-ia3": "ia3",
    "-prefix": PREFIX_SMALL,
    # MAM (prefix tuning + par_bn, a ConfigUnion) with the small prefix bottleneck instead of MAM's 800.
    "-mam": PREFIX_SMALL + "|par_bn",
}
MTL_HEAD_CONFIG = "mtl_lora[n_up_projection=2]"  # only in the MultiTask head cases (not the whole matrix)


def head_composition_matrix(existing: list) -> list:
    """e) continued: Parallel and BatchSplit heads for every method on every architecture, Stack heads for lora and
    prefix tuning everywhere, Average heads for seq_bn and lora on bert and llama. Ids already built above are left
    alone (same id, same case)."""
    heads_ab = [cls_head("a", 2), cls_head("b", 3)]
    split = BatchSplit("a", "b", batch_sizes=[1, 2])
    specs = []  # (archs, slug, method suffix, active, Case options)
    for suffix in HEADS_MATRIX_METHODS:
        specs.append((ARCHS, "parallel", suffix, Parallel("a", "b"), {}))
        specs.append((ARCHS, "batchsplit", suffix, split, {}))
    for suffix in ("-lora", "-prefix"):
        specs.append((ARCHS, "stack", suffix, Stack("a", "b"), dict(head_before="a")))
    for suffix in ("", "-lora"):
        # Average chooses no head (parse_heads_from_composition returns None): `a`, set before, stays active.
        specs.append(
            (("bert", "llama"), "average", suffix, Average("a", "b", weights=[0.3, 0.7]), dict(head_before="a"))
        )
    for arch in ("bert", "llama"):  # MultiTask chooses no head either; labels give the loss
        specs.append(((arch,), "multitask", "-mtl_lora", MultiTask("a", "b"), dict(head_before="b", labels=LABELS,
                      forward_kwargs={"task_ids": ["a", "b", "b"]})))  # fmt: skip
    cases = []
    for archs, slug, suffix, active, extra in specs:
        config = HEADS_MATRIX_METHODS.get(suffix, MTL_HEAD_CONFIG)
        for arch in archs:
            case_id = f"{arch}-heads-{slug}{suffix}"
            if case_id in existing:
                continue
            options = {"head": None, "heads": heads_ab, **extra}
            ads = [("a", config), ("b", config)]
            cases.append(Case(case_id, arch, ads, active, model_class="adapter_model", **options))
    # gpt2's eager attention masks with its causal `bias` buffer of n_positions (64) columns, so two stacked prefixes
    # of the default length 30 (8 + 2 * 30 = 68 keys) fail in `gpt2-heads-stack-prefix`; length 10 fits.
    short = "prefix_tuning[prefix_length=10,bottleneck_size=16]"
    cases.append(
        Case(
            "gpt2-heads-stack-prefix-len10",
            "gpt2",
            [("a", short), ("b", short)],
            Stack("a", "b"),
            model_class="adapter_model",
            heads=heads_ab,
            head_before="a",
            head=None,
        )
    )
    return cases


def t5_inputs() -> dict:
    """Decoder inputs for the T5 cases (3 x 6: the start token PAD, then tokens), the same in both libraries; and the
    batch with an <eos> closing every row, which classification heads pool on."""
    gen = torch.Generator().manual_seed(4321)
    decoder = torch.randint(3, VOCAB, (len(LENGTHS), 6), generator=gen)
    decoder[:, 0] = PAD
    inputs = make_inputs()
    ids = torch.tensor(inputs["input_ids"])
    for row, length in enumerate(LENGTHS):
        ids[row, length - 1] = EOS
    return {"decoder_input_ids": decoder.tolist(), "input_ids_eos": ids.tolist()}


def t5_cases() -> list:
    """T5, FLAN-T5-style and mT5 on AutoAdapterModel: every method with a seq2seq_lm head (explicit decoder inputs),
    bottleneck adapters after cross-attention too, the classification (last <eos>) and QA heads, and Parallel /
    BatchSplit heads on t5."""
    extra = t5_inputs()
    decoder = {"decoder_input_ids": extra["decoder_input_ids"]}
    lm_labels = [row[1:] + [EOS] for row in extra["decoder_input_ids"]]
    methods = {
        "seq_bn": "seq_bn",
        "seq_bn-cross": "seq_bn[cross_adapter=True]",
        "double_seq_bn": "double_seq_bn",
        "par_bn": "par_bn",
        "seq_bn_inv": "seq_bn_inv",
        "lora": "lora",
        "lora-qkv-ffn": "lora[attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]",
        "ia3": "ia3",
        "prefix_tuning": PREFIX_SMALL,
        "prefix_tuning-flat": "prefix_tuning[flat=True,prefix_length=5]",
        "loreft": "loreft",  # decoder rows (6) shorter than the encoder's (8): positions per stack
    }
    lm = ("a", "seq2seq_lm", {})
    cases = []
    for arch in T5_ARCHS:
        for slug, config in methods.items():
            if arch != "t5" and slug not in ("seq_bn", "seq_bn-cross", "lora-qkv-ffn", "ia3", "prefix_tuning"):
                continue
            labels = lm_labels if slug == "seq_bn" else None
            cases.append(
                Case(
                    f"{arch}-seq2seq-{slug}",
                    arch,
                    [("a", config)],
                    "a",
                    model_class="adapter_model",
                    heads=[lm],
                    forward_kwargs=decoder,
                    labels=labels,
                )  # fmt: skip
            )
        for slug, config in (("classification", "seq_bn"), ("classification-prefix", PREFIX_SMALL)):
            if arch != "t5" and slug != "classification":
                continue
            cases.append(
                Case(
                    f"{arch}-head-{slug}",
                    arch,
                    [("a", config)],
                    "a",
                    model_class="adapter_model",
                    heads=[("a", "classification", dict(num_labels=3, layers=2))],
                    forward_kwargs={"input_ids": extra["input_ids_eos"]},
                    labels=LABELS,
                )  # fmt: skip
            )
        cases.append(
            Case(
                f"{arch}-head-qa",
                arch,
                [("a", "lora")],
                "a",
                model_class="adapter_model",
                heads=[("a", "qa", {})],
                forward_kwargs=decoder,
            )  # fmt: skip
        )
    # Parallel and BatchSplit with one seq2seq_lm head per adapter: the heads the composition picks, on t5.
    lm2 = [("a", "seq2seq_lm", {}), ("b", "seq2seq_lm", {})]
    blocks = (("parallel", Parallel("a", "b")), ("batchsplit", BatchSplit("a", "b", batch_sizes=[1, 2])))
    for slug, config in (("", "seq_bn[cross_adapter=True]"), ("-prefix", PREFIX_SMALL), ("-lora", "lora")):
        for block, active in blocks:
            cases.append(
                Case(
                    f"t5-heads-{block}{slug}",
                    "t5",
                    [("a", config), ("b", config)],
                    active,
                    model_class="adapter_model",
                    heads=lm2,
                    head=None,
                    forward_kwargs=decoder,
                )  # fmt: skip
            )
    return cases


# ---------------------------------------------------------------------------------------------
# Vision: ViT and BEiT (pixel_values)
# ---------------------------------------------------------------------------------------------

# Every method of the text matrix, with the small prefix bottleneck; `seq_bn_inv` records that the library refuses
# invertible adapters on image models.
VISION_METHODS = {m: PREFIX_SMALL if m == "prefix_tuning" else cfg for m, cfg in METHODS.items() if "inv" not in m}
VISION_METHODS["seq_bn_inv"] = "seq_bn_inv"


# With relative position bias, the methods whose weights or keys meet the attention (the rest act as on `beit`).
RELPOS_METHODS = ("seq_bn", "lora", "ia3", "prefix_tuning", "prompt_tuning", "loreft")


def image_head(name: str, num_labels: int, **kwargs) -> tuple:
    return (name, "image_classification", dict(num_labels=num_labels, **kwargs))


def vision_cases() -> list:
    """f) ViT and BEiT: every method through `adapters.init`, image classification heads with labels (loss), and
    Parallel / BatchSplit of two adapters with two heads."""
    cases = []
    for arch in VISION_ARCHS:
        cases.append(Case(f"{arch}-base", arch, [], None, layout="image"))
        for m, cfg in VISION_METHODS.items():
            if arch == "beit-relpos" and m not in RELPOS_METHODS:
                continue
            cases.append(Case(f"{arch}-{m}", arch, [("a", cfg)], "a", layout="image"))
        labelled = dict(model_class="adapter_model", layout="image", labels=LABELS)
        three = image_head("a", 3, id2label={0: "cat", 1: "dog", 2: "bird"})
        head_methods = {
            "": "seq_bn",
            "-lora": "lora",
            "-prefix": PREFIX_SMALL,
            "-prompt": "prompt_tuning",
            "-loreft": "loreft[prefix_positions=1,suffix_positions=2]",
        }
        for slug, cfg in head_methods.items():
            case_id = f"{arch}-head-image_classification{slug}"
            cases.append(Case(case_id, arch, [("a", cfg)], "a", heads=[three], **labelled))
        variants = {
            "2layers-pooler": dict(layers=2, use_pooler=True),  # ViT: the pooler's output; BEiT reads it anyway
            "multilabel": dict(multilabel=True),
        }
        for slug, kwargs in variants.items():
            heads = [image_head("a", 3, **kwargs)]
            case_id = f"{arch}-head-image_classification-{slug}"
            cases.append(
                Case(case_id, arch, [("a", "seq_bn")], "a", model_class="adapter_model", layout="image", heads=heads)
            )
        heads_ab = [image_head("a", 2), image_head("b", 3)]
        split = BatchSplit("a", "b", batch_sizes=[1, 2])
        for slug, cfg in (("", "seq_bn"), ("-lora", "lora"), ("-prefix", PREFIX_SMALL)):
            two = [("a", cfg), ("b", cfg)]
            for block_slug, block in (("parallel", Parallel("a", "b")), ("batchsplit", split)):
                case_id = f"{arch}-heads-{block_slug}{slug}"
                cases.append(Case(case_id, arch, two, block, heads=heads_ab, head=None, **labelled))
    return cases


CLIP_METHODS = {
    m: VISION_METHODS.get(m, cfg)
    for m, cfg in METHODS.items()
    if m in ("seq_bn", "double_seq_bn", "par_bn", "compacter", "lora", "ia3", "prefix_tuning", "prompt_tuning",
             "loreft", "seq_bn_inv")
}  # fmt: skip


def clip_cases() -> list:
    """g) CLIP through `adapters.init`: CLIPTextModel (token ids), CLIPVisionModel (images) and CLIPModel (both; its
    layers are numbered text first, then vision); compositions on CLIPModel; CLIPAdapterModel's `clip.` keys."""
    cases = []
    for arch, layout in CLIP_LAYOUTS.items():
        cases.append(Case(f"{arch}-base", arch, [], None, layout=layout))
        for m, cfg in CLIP_METHODS.items():
            cases.append(Case(f"{arch}-{m}", arch, [("a", cfg)], "a", layout=layout))
    # leave_out counts text layers 0-1, then vision layers 2-3: prefixes on the vision tower only; no adapter on vision
    # layer 2
    leave_text = "prefix_tuning[bottleneck_size=16,leave_out=[0,1]]"
    cases.append(Case("clip-prefix_tuning-leave_out01", "clip", [("a", leave_text)], "a", layout="text_image"))
    cases.append(Case("clip-seq_bn-leave_out2", "clip", [("a", "seq_bn[leave_out=[2]]")], "a", layout="text_image"))
    bn2, lora2 = [("a", "seq_bn"), ("b", "seq_bn")], [("a", "lora"), ("b", "lora")]
    prefix2 = [("a", PREFIX_SMALL), ("b", PREFIX_SMALL)]
    compositions = {
        "stack": (bn2, Stack("a", "b")),
        "parallel": (bn2, Parallel("a", "b")),
        "batchsplit": (bn2, BatchSplit("a", "b", batch_sizes=[1, 2])),
        "lora-parallel": (lora2, Parallel("a", "b")),
        "prefix-parallel": (prefix2, Parallel("a", "b")),
        "madx": ([("lang", "seq_bn_inv"), ("task", "seq_bn")], Stack("lang", "task")),
    }
    for slug, (ads, active) in compositions.items():
        cases.append(Case(f"clip-comp-{slug}", "clip", ads, active, layout="text_image"))
    cases.append(Case("clip-adapter_model-seq_bn", "clip", [("a", "seq_bn")], "a", model_class="adapter_model",
                      layout="text_image", head=None))  # fmt: skip
    return cases


# ---------------------------------------------------------------------------------------------
# Encoder-decoder: BART, mBART, PLBart (AutoAdapterModel)
# ---------------------------------------------------------------------------------------------

# Tiny seq2seq models, kept out of ARCHS (the encoder matrices do not apply to them); their base models are seeded by
# name, so adding other families does not change them. `decoder_start_token_id` is BART's (the <eos>).
SEQ2SEQ = dict(
    COMMON,
    d_model=HIDDEN,
    encoder_layers=LAYERS,
    decoder_layers=LAYERS,
    encoder_attention_heads=HEADS,
    decoder_attention_heads=HEADS,
    encoder_ffn_dim=FFN,
    decoder_ffn_dim=FFN,
    max_position_embeddings=MAX_POS,
    decoder_start_token_id=EOS,
    init_std=0.1,
)
SEQ2SEQ_ARCHS = {
    "bart": (transformers.BartConfig, SEQ2SEQ),
    "mbart": (transformers.MBartConfig, SEQ2SEQ),
    "plbart": (transformers.PLBartConfig, SEQ2SEQ),
}
DECODER_LENGTH = 6  # the decoder reads fewer tokens than the encoder: cross-attention shapes are not square
SEQ2SEQ_LABELS = [[5, 6, 7, 8, 2, -100], [9, 10, 11, 2, -100, -100], [12, 13, 2, -100, -100, -100]]


def seq2seq_inputs(inputs: dict) -> dict:
    """The encoder rows with their last real token replaced by <eos> (exactly one per row, as classification on the
    last <eos> needs), and fixed decoder inputs: the decoder start token, then random tokens (no padding)."""
    ids, mask = torch.tensor(inputs["input_ids"]), torch.tensor(inputs["attention_mask"])
    eos_ids = ids.clone()
    eos_ids[torch.arange(ids.shape[0]), mask.sum(1) - 1] = EOS
    gen = torch.Generator().manual_seed(5678)
    decoder = torch.randint(3, VOCAB, (ids.shape[0], DECODER_LENGTH), generator=gen)
    decoder[:, 0] = EOS
    return {
        "eos_input_ids": eos_ids.tolist(),
        "decoder_input_ids": decoder.tolist(),
        "seq2seq_layout": "input_ids = eos_input_ids with attention_mask; layout 'seq2seq' adds decoder_input_ids, "
        "'seq2seq_shifted' lets the model shift input_ids right as decoder inputs",
    }


def build_seq2seq_models(out: Path) -> None:
    for arch, (config_cls, kwargs) in SEQ2SEQ_ARCHS.items():
        torch.manual_seed(seed_of("model-" + arch))
        model = transformers.AutoModel.from_config(config_cls(**kwargs), attn_implementation=attn_for(arch))
        model.save_pretrained(out / "models" / arch, safe_serialization=True)
        write_json(out / "models" / arch / "keys.json", weight_keys(out / "models" / arch))


SEQ2SEQ_METHODS = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",
    "seq_bn-cross": "seq_bn[cross_adapter=True]",
    "double_seq_bn-cross": "double_seq_bn[cross_adapter=True]",
    "par_bn": "par_bn",
    "compacter": METHODS["compacter"],
    "lora": "lora",
    "lora-r4-qkv-ffn": VARIANTS["lora-r4-qkv-ffn"],
    "ia3": "ia3",
    "prefix_tuning": PREFIX_SMALL,
    "prefix_tuning-no_cross": "prefix_tuning[bottleneck_size=16,cross_prefix=False]",
    "prefix_tuning-no_encoder": "prefix_tuning[bottleneck_size=16,encoder_prefix=False]",
    "prefix_tuning-flat": "prefix_tuning[flat=True,prefix_length=5]",
    "seq_bn_inv": "seq_bn_inv",
    "loreft": "loreft",
    "prompt_tuning": "prompt_tuning",  # records that the library has no prompt tuning for these models
}
SEQ2SEQ_HEADS = {  # head case suffix -> (add_<x>_head, kwargs, layout)
    "seq2seq_lm": ("seq2seq_lm", dict(), "seq2seq"),
    "classification": ("classification", dict(num_labels=3, id2label={0: "n", 1: "o", 2: "p"}), "seq2seq_shifted"),
    "qa": ("qa", dict(), "seq2seq"),
}


def seq2seq_cases() -> list:
    """g) BART, mBART, PLBart through AutoAdapterModel: every method under a seq2seq_lm head (the encoder output is
    recorded too), the three heads (classification reads the last <eos>; its decoder inputs are input_ids shifted
    right by the model), and on bart Parallel, BatchSplit, Stack and Fuse."""
    cases = []
    lm = lambda name: (name, "seq2seq_lm", {})  # noqa: E731
    for arch in SEQ2SEQ_ARCHS:
        model = dict(model_class="adapter_model")
        cases.append(Case(f"{arch}-base", arch, [], None, layout="seq2seq", **model))
        for slug, config in SEQ2SEQ_METHODS.items():
            cases.append(Case(f"{arch}-{slug}", arch, [("a", config)], "a", heads=[lm("a")], layout="seq2seq", **model))
        for slug, (kind, kwargs, layout) in SEQ2SEQ_HEADS.items():
            for suffix, config in (("", "seq_bn"), ("-lora", "lora"), ("-prefix", PREFIX_SMALL)):
                head = [("a", kind, kwargs)]
                cases.append(Case(f"{arch}-head-{slug}{suffix}", arch, [("a", config)], "a", heads=head, layout=layout,
                                  labels=LABELS if kind == "classification" else None, **model))  # fmt: skip
        # labels: the loss over the given decoder inputs (no shift: the head's shift_labels is False)
        cases.append(Case(f"{arch}-head-seq2seq_lm-labels", arch, [("a", "seq_bn")], "a", heads=[lm("a")],
                          layout="seq2seq", labels=SEQ2SEQ_LABELS, **model))  # fmt: skip
    bn2, bn3 = [("a", "seq_bn"), ("b", "seq_bn")], [("a", "seq_bn"), ("b", "seq_bn"), ("c", "seq_bn")]
    cross2 = [("a", "seq_bn[cross_adapter=True]"), ("b", "seq_bn[cross_adapter=True]")]
    lm2, fuse_out = [lm("a"), lm("b")], {"output_adapter_fusion_attentions": True}
    fuse_ab = [(["a", "b"], "dynamic")]
    comps = {
        "stack": (bn2, Stack("a", "b"), dict(heads=[lm("b")])),
        "parallel": (bn2, Parallel("a", "b"), dict(heads=lm2, head=None)),
        "parallel-lora": ([("a", "lora"), ("b", "lora")], Parallel("a", "b"), dict(heads=lm2, head=None)),
        "parallel-prefix": ([("a", PREFIX_SMALL), ("b", PREFIX_SMALL)], Parallel("a", "b"), dict(heads=lm2, head=None)),
        "batchsplit": (bn2, BatchSplit("a", "b", batch_sizes=[1, 2]), dict(heads=lm2, head=None)),
        "fuse": (bn2, Fuse("a", "b"), dict(heads=[lm("a")], fusions=fuse_ab, forward_kwargs=fuse_out)),
        "fuse-cross": (cross2, Fuse("a", "b"), dict(heads=[lm("a")], fusions=fuse_ab, forward_kwargs=fuse_out)),
        "stack-fuse": (bn3, Stack("a", Fuse("b", "c")), dict(heads=[lm("a")], fusions=[(["b", "c"], "dynamic")])),
        "madx": ([("lang", "seq_bn_inv"), ("task", "seq_bn")], Stack("lang", "task"), dict(heads=[lm("task")])),
    }
    for slug, (ads, active, extra) in comps.items():
        cases.append(Case(f"bart-comp-{slug}", "bart", ads, active, model_class="adapter_model", layout="seq2seq",
                          **extra))  # fmt: skip
    return cases


# ---------------------------------------------------------------------------------------------
# More encoders (issue 12): ALBERT, ELECTRA, BERT-Generation, DeBERTa, DeBERTa-v2, X-MOD, ModernBERT
# ---------------------------------------------------------------------------------------------

# Eager attention: no sdpa implementation in transformers 4.57 (the library's own attention classes are eager ones);
# ModernBERT: transformers 5's sdpa sliding-window mask leaves some padded query rows fully masked, which gives those
# (meaningless) padded positions other values than eager does; real tokens agree, and under eager everything does.
EAGER_ONLY = ("electra", "bert-generation", "deberta", "deberta-v2", "xmod", "modernbert")
ENCODER_FAMILIES = {
    # embedding_size != hidden_size: ALBERT and ELECTRA project the embeddings (invertible adapters, prompts and LM
    # heads work in the embedding size)
    "albert": (transformers.AlbertConfig, dict(BERT_LIKE, embedding_size=16)),
    "electra": (transformers.ElectraConfig, dict(BERT_LIKE, embedding_size=16)),
    "bert-generation": (
        transformers.BertGenerationConfig,
        {k: v for k, v in BERT_LIKE.items() if k != "type_vocab_size"},
    ),
    "deberta": (
        transformers.DebertaConfig,
        dict(BERT_LIKE, relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=16),
    ),
    "deberta-v2": (  # DeBERTa-v3's layout: no absolute positions, log buckets, shared position keys
        transformers.DebertaV2Config,
        dict(
            BERT_LIKE,
            type_vocab_size=0,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            position_buckets=16,
            max_relative_positions=-1,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
        ),
    ),
    "xmod": (transformers.XmodConfig, dict(BERT_LIKE, languages=["en_XX", "de_DE"], default_language="en_XX")),
    # local attention of 4 tokens on the 8-token rows: layer 1 is a sliding-window layer that matters
    "modernbert": (
        transformers.ModernBertConfig,
        dict(
            {k: v for k, v in BERT_LIKE.items() if k != "type_vocab_size"},
            cls_token_id=BOS,
            sep_token_id=EOS,
            local_attention=4,
            global_attn_every_n_layers=2,
        ),
    ),
}
# Heads of each family's AdapterModel (ModernBERT has none in the library: it runs through `adapters.init`). The other
# heads (tagging, qa, ...) are family-independent modules on the same hidden states; masked_lm uses `embedding_size`.
FAMILY_HEADS = {
    "albert": ("classification", "masked_lm"),
    "electra": ("classification", "masked_lm"),
    "bert-generation": ("masked_lm", "causal_lm"),
    "deberta": ("classification", "masked_lm"),
    "deberta-v2": ("classification", "masked_lm"),
    "xmod": ("classification", "masked_lm"),
    "modernbert": (),
}
# The library's methods per family: ModernBERT's plugin interface lists bottleneck, lora, reft and invertible only.
FAMILY_METHODS = {
    "double_seq_bn": "double_seq_bn",
    "par_bn": "par_bn",
    "seq_bn_inv": "seq_bn_inv",
    "lora-r4-qkv-ffn": VARIANTS["lora-r4-qkv-ffn"],
    "noreft": "noreft[prefix_positions=2,suffix_positions=2]",
    "prefix_tuning": PREFIX_SMALL,
    "prompt_tuning": "prompt_tuning[prompt_length=3]",
}
FAMILY_SKIPS = {
    "modernbert": ("prefix_tuning", "prompt_tuning"),
}


# AdapterHub's plugin-interface hooks read `layer_ln_1`/`layer_ln_2` from the LAST layer (see README): a Gemma 2 whose
# norms differ per layer shows it (the decoder families' own fixtures keep their initial norms, equal in every layer).
LATE_NORM_MODELS = {"gemma2-norms": (transformers.Gemma2Config, dict(DECODER, head_dim=8))}
EAGER_ONLY += tuple(LATE_NORM_MODELS)
# ALBERT with two layer groups (the library's own ALBERT tests use them): the library numbers the groups' layers in one
# sequence; three passes over two groups run group 0 twice and group 1 once.
ALBERT_GROUPS = {
    "albert-groups": (
        transformers.AlbertConfig,
        dict(BERT_LIKE, embedding_size=16, num_hidden_layers=3, num_hidden_groups=2),
    )
}
ALBERT_GROUP_METHODS = {
    "seq_bn": "seq_bn",
    "seq_bn-leave0": "seq_bn[leave_out=[0]]",
    "lora": "lora",
    "prefix_tuning": PREFIX_SMALL,
}


def build_encoder_family_models(out: Path) -> None:
    """One seeded base model per family; its norms get seeded noise too (the library's plugin-interface adapters read
    the last layer's norm: only norms that differ show which)."""
    for i, (arch, (config_cls, kwargs)) in enumerate({**ENCODER_FAMILIES, **LATE_NORM_MODELS, **ALBERT_GROUPS}.items()):
        torch.manual_seed(200 + i)
        model = transformers.AutoModel.from_config(config_cls(**kwargs), attn_implementation=attn_for(arch))
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if "norm" in name.lower():
                    param.add_(torch.randn(param.shape) * NOISE_STD)
        model.save_pretrained(out / "models" / arch, safe_serialization=True)
        write_json(out / "models" / arch / "keys.json", weight_keys(out / "models" / arch))


def family_head_case(case_id: str, arch: str, config: str, slug: str) -> Case:
    kind, kwargs = HEADS_ENC.get(slug) or HEADS_DEC[slug]
    return Case(case_id, arch, [("a", config)], "a", model_class="adapter_model", heads=[("a", kind, kwargs)])


def encoder_family_cases() -> list:
    """Per family: the base model; seq_bn and LoRA under the family's natural head (its AdapterModel; ModernBERT:
    `adapters.init`); the family's other heads with seq_bn; and the methods of FAMILY_METHODS on the base model."""
    cases = []
    for arch in ENCODER_FAMILIES:
        heads = FAMILY_HEADS[arch]
        cases.append(Case(f"{arch}-base", arch, [], None))
        if heads:
            cases += [family_head_case(f"{arch}-{m}-head-{heads[0]}", arch, m, heads[0]) for m in ("seq_bn", "lora")]
            cases += [family_head_case(f"{arch}-head-{slug}", arch, "seq_bn", slug) for slug in heads[1:]]
        else:
            cases += [Case(f"{arch}-{m}", arch, [("a", m)], "a") for m in ("seq_bn", "lora")]
        for slug, config in FAMILY_METHODS.items():
            if slug not in FAMILY_SKIPS.get(arch, ()):
                cases.append(Case(f"{arch}-{slug}", arch, [("a", config)], "a"))
    # ModernBERT's output adapters and output LoRA sit on one module (`mlp.Wo`): the bottleneck sees the LoRA'd output,
    # whichever was added first (here the bottleneck, the union's first part). The library runs no Stack with its fused
    # `Wqkv` LoRA, so both are one adapter.
    union = "seq_bn|lora[selfattn_lora=False,output_lora=True]"
    cases.append(Case("modernbert-union-seq_bn-lora", "modernbert", [("a", union)], "a"))
    for slug, config in (("seq_bn", "seq_bn"), ("seq_bn-mh", "seq_bn[mh_adapter=True]")):  # ln_2, and ln_1 too
        cases.append(Case(f"gemma2-norms-{slug}", "gemma2-norms", [("a", config)], "a"))
    cases += [
        Case(f"albert-groups-{slug}", "albert-groups", [("a", config)], "a")
        for slug, config in ALBERT_GROUP_METHODS.items()
    ]
    return cases + deberta_prefix_cases()


def deberta_prefix_cases() -> list:
    """DeBERTa's disentangled attention with prefixes (on the padded batch; `<arch>-prefix_tuning` above is the plain
    one): gated prefixes, the natural head, and Parallel/BatchSplit of two prefixes of different lengths (the shorter
    one padded with masked slots)."""
    heads_ab = [cls_head("a", 2), cls_head("b", 3)]
    short = "prefix_tuning[bottleneck_size=16,prefix_length=5]"
    cases = []
    for arch in ("deberta", "deberta-v2"):
        cases.append(Case(f"{arch}-prefix-gating", arch, [("a", PREFIX_SMALL[:-1] + ",use_gating=True]")], "a"))
        cases.append(family_head_case(f"{arch}-prefix-head-classification", arch, PREFIX_SMALL, "classification"))
        for slug, active in (
            ("parallel", Parallel("a", "b")),
            ("batchsplit", BatchSplit("a", "b", batch_sizes=[1, 2])),
        ):
            two = [("a", PREFIX_SMALL), ("b", short)]
            options = dict(model_class="adapter_model", heads=heads_ab, head=None)
            cases.append(Case(f"{arch}-heads-{slug}-prefix", arch, two, active, **options))
    return cases


# ---------------------------------------------------------------------------------------------
# Encoder-decoder models: Whisper (audio features) and transformers' EncoderDecoderModel (BERT2BERT)
# ---------------------------------------------------------------------------------------------

# Whisper's conv front end halves the frames: input_features (3, MEL_BINS, 2 * AUDIO_POSITIONS).
MEL_BINS, AUDIO_POSITIONS, ENCDEC_DECODER_LENGTH = 8, 16, 5
ENCDEC_ARCHS = {
    "whisper": lambda: transformers.WhisperConfig(
        vocab_size=VOCAB,
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        num_mel_bins=MEL_BINS,
        max_source_positions=AUDIO_POSITIONS,
        max_target_positions=MAX_POS,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        init_std=0.1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    ),
    # Two BERTs (the decoder with cross-attention), loaded with AutoModelForSeq2SeqLM: AutoModel has no mapping.
    "encoder-decoder": lambda: transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.BertConfig(**BERT_LIKE),
        transformers.BertConfig(**BERT_LIKE, is_decoder=True, add_cross_attention=True),
    ),
}
ENCDEC_LAYOUTS = {"whisper": "audio", "encoder-decoder": "encdec"}


def make_encdec_inputs() -> dict:
    """Whisper's fixed `input_features` (seeded normal) and decoder inputs for both encoder-decoder models: the start
    token (BOS) then tokens in [3, VOCAB), unpadded."""
    gen = torch.Generator().manual_seed(4321)
    features = torch.randn(len(LENGTHS), MEL_BINS, 2 * AUDIO_POSITIONS, generator=gen)
    decoder_ids = torch.randint(3, VOCAB, (len(LENGTHS), ENCDEC_DECODER_LENGTH), generator=gen)
    decoder_ids[:, 0] = BOS
    return {
        "input_features": features.tolist(),
        "encdec_decoder_input_ids": decoder_ids.tolist(),
        "encdec_layout": "layout 'encdec': input_ids/attention_mask + encdec_decoder_input_ids (3, 5); 'audio': "
        "input_features (3, 8, 32) + encdec_decoder_input_ids",
    }


def encdec_decoder_inputs(inputs: dict) -> dict:
    return {"decoder_input_ids": torch.tensor(inputs["encdec_decoder_input_ids"])}


def build_encdec_models(out: Path) -> None:
    for i, (arch, make_config) in enumerate(ENCDEC_ARCHS.items()):
        torch.manual_seed(300 + i)
        config = make_config()
        if arch == "encoder-decoder":
            model = transformers.EncoderDecoderModel(config)
        else:
            model = transformers.AutoModel.from_config(config, attn_implementation=attn_for(arch))
        model.save_pretrained(out / "models" / arch, safe_serialization=True)
        write_json(out / "models" / arch / "keys.json", weight_keys(out / "models" / arch))


ENCDEC_METHODS = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",  # BERT2BERT: also after each decoder layer's cross-attention ("mh_adapter")
    "seq_bn-cross": "seq_bn[cross_adapter=True]",  # Whisper's "cross_adapter" site
    "par_bn": "par_bn",
    "seq_bn_inv": "seq_bn_inv",
    "lora": "lora",
    "lora-r4-qkv-ffn": VARIANTS["lora-r4-qkv-ffn"],
    "lora-leave_out0": "lora[leave_out=[0]]",  # BERT2BERT: layer 0 of the encoder and of the decoder
    "ia3": "ia3",
    "prefix_tuning": "prefix_tuning[bottleneck_size=16]",  # (the default 512 makes 1 MB files)
    "prefix_tuning-no-cross": "prefix_tuning[bottleneck_size=16,cross_prefix=False,encoder_prefix=False]",
    "loreft": "loreft",
}


def encdec_cases() -> list:
    """h) Whisper (AutoAdapterModel with a seq2seq_lm head, input_features) and EncoderDecoderModel (BERT2BERT,
    adapters.init on AutoModelForSeq2SeqLM: its own LM head), each method with an active adapter "a"."""
    cases = []
    for arch, layout in ENCDEC_LAYOUTS.items():
        if arch == "whisper":
            options = dict(model_class="adapter_model", heads=[("a", "seq2seq_lm", {})])
        else:
            options = dict(model_class="seq2seq_lm")
        cases.append(Case(f"{arch}-base", arch, [], None, layout=layout, model_class=options["model_class"]))
        for slug, config in ENCDEC_METHODS.items():
            cases.append(Case(f"{arch}-{slug}", arch, [("a", config)], "a", layout=layout, **options))
        pair = [("a", "seq_bn"), ("b", "lora")]
        cases.append(Case(f"{arch}-comp-stack", arch, pair, Stack("a", "b"), layout=layout, **options))
    return cases


# ---------------------------------------------------------------------------------------------
# Building and running one case
# ---------------------------------------------------------------------------------------------


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def load_model(case: Case, out: Path, attn: str | None = None):
    """Load the saved base model: adapters.init(AutoModel) or AutoAdapterModel."""
    attn = attn or attn_for(case.arch, case.adapters)
    model = load_base(case.model_class, out / model_folder(case.arch, case.model_class), attn)
    model.config.name_or_path = f"models/{case.arch}"  # written as "model_name" into the saved json files
    return model


def load_base(model_class: str, path: Path, attn: str):
    """A manifest's `model_class` loaded with the library (also used by check_workbench_files.py)."""
    if model_class == "adapter_model":
        return AutoAdapterModel.from_pretrained(path, attn_implementation=attn)
    if model_class == CAUSAL_LM:  # a plugin-interface family on its task model
        return init_library(transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn))
    if model_class == "seq2seq_lm":  # EncoderDecoderModel (no AutoModel mapping)
        # transformers 4.57 does not hand `attn_implementation` on to the sub-models: they would run sdpa, where the
        # library's prefix tuning in the causal BERT decoder attends to prefix slots only (see README, quirks).
        config = transformers.AutoConfig.from_pretrained(path)
        config.encoder._attn_implementation = config.decoder._attn_implementation = attn
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path, config=config, attn_implementation=attn)
        return init_library(model)
    return init_library(transformers.AutoModel.from_pretrained(path, attn_implementation=attn))
    return model


def init_library(model):
    """`adapters.init(model)`, with the biases it adds set to zero. Its LoRA wrapper of a fused projection without a
    bias (DeBERTa's `in_proj`, ModernBERT's `Wqkv`) creates a randomly initialised bias, so on a loaded model the init
    alone changes the outputs (by a seed-dependent amount no file records). An AdapterModel builds the wrapper before
    loading, where the checkpoint's missing bias is initialised to zero: zero is the library's own value there."""
    before = set(model.state_dict())
    adapters.init(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name not in before and name.endswith(".bias"):
                param.zero_()
    return model


def perturb_new_parameters(model, base_ids: set, seed: int) -> int:
    """Add seeded normal noise to every parameter that was not in the base model (tied ones excluded)."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if id(p) not in base_ids:
                p.add_(torch.randn(p.shape, generator=gen) * NOISE_STD)
                count += 1
    return count


def fusion_config(spec: str) -> dict:
    """Resolve 'dynamic' or 'dynamic[key=value,...]' (the library only parses plain names for fusions)."""
    ((name, overrides),) = parse_adapter_config_string(spec)
    return ADAPTERFUSION_CONFIG_MAP[name].replace(**overrides).to_dict()


def model_inputs(inputs: dict, layout: str) -> dict:
    if layout == "audio":  # Whisper
        return {"input_features": torch.tensor(inputs["input_features"]), **encdec_decoder_inputs(inputs)}
    if layout == "encdec":  # EncoderDecoderModel
        batch = {k: torch.tensor(inputs[k]) for k in ("input_ids", "attention_mask")}
        return {**batch, **encdec_decoder_inputs(inputs)}
    if layout == "image":
        return {"pixel_values": image_pixel_values(inputs)}
    if layout == "text_image":  # CLIPModel: the token batch and the image batch
        return {**model_inputs(inputs, "default"), "pixel_values": image_pixel_values(inputs)}
    if layout.startswith("seq2seq"):  # encoder-decoder cases (seq2seq_inputs)
        batch = {k: torch.tensor(inputs[k]) for k in ("attention_mask", "eos_input_ids")}
        batch["input_ids"] = batch.pop("eos_input_ids")
        if layout == "seq2seq":
            batch["decoder_input_ids"] = torch.tensor(inputs["decoder_input_ids"])
        return batch
    ids, mask = torch.tensor(inputs["input_ids"]), torch.tensor(inputs["attention_mask"])
    if layout == "multiple_choice":
        ids, mask = ids.view(1, *ids.shape), mask.view(1, *mask.shape)
    return {"input_ids": ids, "attention_mask": mask}


def collect_outputs(outputs, prefix: str = "") -> dict:
    """Tensor outputs (no caches), plus flattened fusion attentions / gating scores if returned.

    A list of outputs (MultiHeadOutput.head_outputs: one per Parallel / BatchSplit head) is flattened as
    `head_outputs.<i>.<name>`.
    """
    tensors = {}
    for key, value in outputs.items():
        if torch.is_tensor(value):
            tensors[prefix + key] = value
        elif isinstance(value, (list, tuple)) and value and all(hasattr(v, "items") for v in value):
            for i, item in enumerate(value):
                tensors.update(collect_outputs(item, f"{prefix}{key}.{i}."))
        elif key in ("adapter_fusion_attentions", "adapter_gating_scores"):
            for name, layers in value.items():
                for layer, locations in layers.items():
                    for location, arr in locations.items():
                        tensors[f"{prefix}{key}.{name}.{layer}.{location}"] = torch.as_tensor(arr)
    return {k: v.detach().float().contiguous() for k, v in tensors.items()}


def run_case(case: Case, inputs: dict, out: Path) -> dict:
    """Build, perturb, save and run one case; returns its manifest entry."""
    case_dir = out / "cases" / case.id
    rel = lambda p: str(p.relative_to(out))  # noqa: E731
    seed = seed_of(case.id)
    torch.manual_seed(seed)
    model = load_model(case, out)
    base_ids = {id(p) for p in model.parameters()}

    for name, config in case.adapters:
        model.add_adapter(name, config=library_config(config))
    if case.share:
        model.share_parameters(adapter_names=MultiTask(*case.share), name="shared")
    for name, kind, kwargs in case.heads:
        getattr(model, f"add_{kind}_head")(name, **kwargs)
    fusions = [(names, config, rest[0] if rest else None) for names, config, *rest in case.fusions]
    for names, config, _ in fusions:
        model.add_adapter_fusion(Fuse(*names), config=fusion_config(config))
    n_perturbed = perturb_new_parameters(model, base_ids, seed)
    if case.average:
        model.average_adapter(**case.average)
    if case.head_before:
        model.active_head = case.head_before
    if case.active is not None:
        model.set_active_adapters(case.active)
    if case.head_after():
        model.active_head = case.head_after()
    model.eval()

    # Save exactly as the library writes it.
    case_dir.mkdir(parents=True, exist_ok=True)
    entry_adapters, entry_fusions = [], []
    use_st = case.safetensors
    head_names = [name for name, _, _ in case.heads]
    head_dirs = {}  # head name -> (folder it is saved in, "adapter" | "fusion")
    for name, config in case.adapters + ([(case.average["adapter_name"], None)] if case.average else []):
        kwargs = {"with_head": name in head_names} if case.model_class == "adapter_model" else {}
        if kwargs.get("with_head"):
            head_dirs[name] = (case_dir / name, "adapter")
        model.save_adapter(str(case_dir / name), name, use_safetensors=use_st, **kwargs)
        entry_adapters.append(
            {
                "name": name,
                "config": config,
                "dir": rel(case_dir / name),
                "with_head": bool(kwargs.get("with_head")),
                "derived": "average" if config is None else None,
            }
        )
    for names, config, with_head in fusions:
        fdir = case_dir / ("fusion_" + "_".join(names))
        kwargs = {"with_head": with_head} if with_head else {}  # adapters.init models take no with_head
        model.save_adapter_fusion(str(fdir), ",".join(names), use_safetensors=use_st, **kwargs)
        if with_head:
            head_dirs[with_head] = (fdir, "fusion")
        entry_fusions.append(
            {
                "adapters": names,
                "name": ",".join(names),
                "config": config,
                "config_dict": fusion_config(config),
                "dir": rel(fdir),
                "with_head": with_head,
            }
        )
    if case.save_full_model:
        model.save_pretrained(case_dir / "full_model", safe_serialization=True)

    unsaved = save_unsaved_shared_parameters(model, case_dir, tied_to_loras=bool(case.share))
    expected = forward(model, inputs, case.layout, case.forward_kwargs, case.merge, case.labels)
    save_file(expected, case_dir / "expected.safetensors")
    write_json(case_dir / "keys.json", weight_keys(case_dir))

    active = None if case.active is None else parse_composition(case.active)
    return {
        "id": case.id,
        "arch": case.arch,
        "model": model_folder(case.arch, case.model_class),
        "model_class": case.model_class,
        "adapters": entry_adapters,
        "fusions": entry_fusions,
        "heads": [
            {"name": n, "type": k, "kwargs": kw, "dir": rel(head_dirs[n][0]), "saved_with": head_dirs[n][1]}
            for n, k, kw in case.heads
        ],
        "setup": {
            "active": active.to_dict() if active is not None else None,
            "active_repr": str(active) if active is not None else None,
            "head_before": case.head_before,
            "head": case.head_after(),
            "active_head": active_head_of(model),
            "merge": case.merge,
            "average": case.average,
            "share": case.share,
        },
        "attn_implementation": attn_for(case.arch, case.adapters),
        "input_layout": case.layout,
        "forward_kwargs": case.forward_kwargs,
        "labels": case.labels,
        "safetensors": use_st,
        "full_model": rel(case_dir / "full_model") if case.save_full_model else None,
        "outputs": {k: list(v.shape) for k, v in expected.items()},
        "expected": rel(case_dir / "expected.safetensors"),
        "keys": rel(case_dir / "keys.json"),
        "perturbed_parameters": n_perturbed,
        "noise_std": NOISE_STD,
        "unsaved_parameters": rel(unsaved) if unsaved else None,
    }


def active_head_of(model):
    """The library's `active_head` (str, list of Parallel heads, or a BatchSplit as `to_dict()`); None without heads."""
    head = getattr(model, "active_head", None)
    return head.to_dict() if isinstance(head, AdapterCompositionBlock) else head


def forward(model, inputs: dict, layout: str, forward_kwargs: dict, merge: str | None, labels=None) -> dict:
    """Run the fixed batch; with `merge`, also record the outputs before merging as 'unmerged.*'."""
    expected = {}
    with torch.no_grad():
        batch = model_inputs(inputs, layout)
        if labels is not None:
            batch["labels"] = torch.tensor(labels)
        if merge:
            unmerged = collect_outputs(model(**call_kwargs(batch, forward_kwargs)))
            expected.update({f"unmerged.{k}": v for k, v in unmerged.items()})
            model.merge_adapter(merge)
        expected.update(collect_outputs(model(**call_kwargs(batch, forward_kwargs))))
    return expected


TENSOR_KWARGS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def call_kwargs(batch: dict, forward_kwargs: dict) -> dict:
    """The batch with the case's forward kwargs over it. The manifest keeps tensor kwargs (a case's own input_ids,
    decoder_input_ids) as lists: they are tensors again here."""
    kwargs = {k: torch.tensor(v) if k in TENSOR_KWARGS else v for k, v in task_ids(forward_kwargs).items()}
    return {**batch, **kwargs}


def task_ids(forward_kwargs: dict) -> dict:
    """JSON keeps task ids as a list; the library takes names as a list but indices only as a tensor."""
    ids = forward_kwargs.get("task_ids")
    if isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids):
        return {**forward_kwargs, "task_ids": torch.tensor(ids)}
    return forward_kwargs


def save_unsaved_shared_parameters(model, case_dir: Path, tied_to_loras: bool = False) -> Path | None:
    """Write shared parameters (compacter phm_rule) that save_adapter left out of the weight files.

    adapters 1.3.0 selects them with the pattern ".shared_parameters.<name>.", which never matches the
    unprefixed keys of a model prepared with adapters.init(), so they would be lost.
    """
    saved = {key for files in weight_keys(case_dir).values() for key in files}
    # MTL-LoRA ties (share_parameters) are the very tensors each task saves as loras.<task>.lora_A/B: not unsaved.
    tied = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if tied_to_loras and ".loras." in n}
    missing = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if "shared_parameters." in n and n not in saved and id(p) not in tied
    }
    if not missing:
        return None
    save_file(missing, case_dir / "unsaved_parameters.safetensors")
    return case_dir / "unsaved_parameters.safetensors"


def verify_roundtrip(entry: dict, inputs: dict, out: Path) -> dict:
    """Rebuild a case from its manifest entry with the library's own loaders and compare outputs."""
    case = Case(entry["id"], entry["arch"], [], None, model_class=entry["model_class"])
    model = load_model(case, out, entry["attn_implementation"])  # the case has no adapter list to derive it from
    st = entry["safetensors"]
    for ad in entry["adapters"]:
        if not ad["derived"]:
            kwargs = {"with_head": ad["with_head"]} if entry["model_class"] == "adapter_model" else {}
            model.load_adapter(str(out / ad["dir"]), load_as=ad["name"], use_safetensors=st, **kwargs)
    for fusion in entry["fusions"]:
        kwargs = {"with_head": bool(fusion["with_head"])} if entry["model_class"] == "adapter_model" else {}
        model.load_adapter_fusion(str(out / fusion["dir"]), use_safetensors=st, **kwargs)
    if entry["unsaved_parameters"]:
        model.load_state_dict(load_file(out / entry["unsaved_parameters"]), strict=False)
    setup = entry["setup"]
    if setup["average"]:
        model.average_adapter(**setup["average"])
    if setup["head_before"]:
        model.active_head = setup["head_before"]
    if setup["active"]:
        model.set_active_adapters(AdapterCompositionBlock.from_dict(setup["active"]))
    if setup["head"]:
        model.active_head = setup["head"]
    model.eval()
    if active_head_of(model) != setup["active_head"]:
        return {"ok": False, "error": f"active_head {active_head_of(model)!r} != {setup['active_head']!r}"}
    got = forward(model, inputs, entry["input_layout"], entry["forward_kwargs"], setup["merge"], entry["labels"])
    expected = load_file(out / entry["expected"])
    if set(got) != set(expected):
        return {"ok": False, "error": f"output names differ: {sorted(set(got) ^ set(expected))}"}
    diff = max((got[k] - expected[k]).abs().max().item() for k in expected)
    return {"ok": diff <= 1e-5, "max_abs_diff": diff}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def weight_keys(directory: Path) -> dict:
    """{relative weight file: {key: shape}} for every .bin / .safetensors file below directory."""
    result = {}
    for path in sorted(directory.rglob("*")):
        if path.suffix == ".safetensors" and path.name != "expected.safetensors":
            state = load_file(path)
        elif path.suffix == ".bin":
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            continue
        result[str(path.relative_to(directory))] = {k: list(v.shape) for k, v in sorted(state.items())}
    return result


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# Float kernels differ between CPUs and builds: the same seeded run gives outputs (and SVD-averaged weights) that differ
# from the committed ones by a few 1e-6. Such a file keeps its committed bytes, so a regeneration elsewhere only shows
# real changes in `git status`. Far below the 1e-4 tolerance of the tests.
FLOAT_NOISE = 2e-5


def same_up_to_float_noise(new: Path, old: Path) -> bool:
    """Whether two weight/output files hold the same tensors (names, shapes, dtypes), equal up to FLOAT_NOISE."""
    if new.suffix not in (".safetensors", ".bin"):
        return False
    read = load_file if new.suffix == ".safetensors" else (lambda f: torch.load(f, weights_only=True))
    a, b = read(new), read(old)
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape
        and a[k].dtype == b[k].dtype
        and torch.allclose(a[k].double(), b[k].double(), rtol=FLOAT_NOISE, atol=FLOAT_NOISE)
        for k in a
    )


def replace_keeping_unchanged(new: Path, out: Path) -> int:
    """Move the generated tree `new` to `out`; files of the previous `out` that match to float noise are kept."""
    kept = 0
    if out.is_dir():
        for path in sorted(new.rglob("*")):
            old = out / path.relative_to(new)
            if not (path.is_file() and old.is_file()) or path.read_bytes() == old.read_bytes():
                continue
            if same_up_to_float_noise(path, old):
                shutil.copyfile(old, path)
                kept += 1
        shutil.rmtree(out)
    new.rename(out)
    return kept  # files whose previous bytes were kept over float noise


def first_error_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0][:300]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fixtures")
    parser.add_argument("--only", help="substring filter on case ids (for debugging)")
    args = parser.parse_args()
    final: Path = args.out
    out = final.with_name(final.name + ".new")  # generated here, then moved to `final` (replace_keeping_unchanged)
    shutil.rmtree(out, ignore_errors=True)
    provide_stochastic_depth()
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    logging.getLogger("adapters").setLevel(logging.ERROR)  # "none are activated" noise from set_active_adapters
    torch.set_num_threads(1)

    inputs = make_inputs()
    inputs.update(seq2seq_inputs(inputs))
    write_json(out / "inputs.json", inputs)
    build_base_models(out)
    build_seq2seq_models(out)
    build_encdec_models(out)
    build_decoder_family_models(out)
    build_encoder_family_models(out)

    entries, skipped = [], []
    cases = method_cases() + head_cases() + composition_cases() + head_composition_cases() + decoder_family_cases()
    cases += vision_cases() + clip_cases() + seq2seq_cases() + encdec_cases() + t5_cases() + encoder_family_cases()
    for case in cases:
        if args.only and args.only not in case.id:
            continue
        try:
            entries.append(run_case(case, inputs, out))
        except Exception as exc:  # unsupported in the adapters library: record and go on
            shutil.rmtree(out / "cases" / case.id, ignore_errors=True)
            skipped.append({"id": case.id, "error": first_error_line(exc)})
            print(f"SKIP  {case.id}: {first_error_line(exc)}")
            if args.only:
                traceback.print_exc()
            continue
        try:
            entries[-1]["library_roundtrip"] = verify_roundtrip(entries[-1], inputs, out)
        except Exception as exc:
            entries[-1]["library_roundtrip"] = {"ok": False, "error": first_error_line(exc)}
        print(
            f"{'ok' if entries[-1]['library_roundtrip']['ok'] else 'NOTE'}  {case.id}: "
            f"{entries[-1]['library_roundtrip']}"
        )

    write_json(
        out / "manifest.json",
        {
            "versions": {
                "adapters": adapters.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__.split("+")[0],
            },
            "inputs": "inputs.json",
            "tolerance": 1e-4,
            "cases": entries,
            "skipped": skipped,
        },
    )
    kept = replace_keeping_unchanged(out, final)
    print(f"{len(entries)} cases written, {len(skipped)} skipped; {kept} file(s) kept over float noise")


if __name__ == "__main__":
    main()
