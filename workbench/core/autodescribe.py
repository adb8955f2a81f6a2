"""An `AdapterModelInterface` found automatically, for decoder models laid out as transformers' Llama is.

`init(model, interface="auto")` (and `AutoAdapterModel.from_pretrained(..., interface="auto")`) uses it for a model
type with no shipped `ArchSpec`. Names find the candidates: the longest `nn.ModuleList` of identical blocks is the
layer stack; in layer 0, the one module with q/k/v (or one fused qkv) projections and an output projection is the
self-attention; the one module with an in/out projection pair outside it is the MLP. Then one probe forward pass
(eval mode, 5 tokens, stopped after layer 0) checks what the engine's residual sites assume, on the real
computation: a norm feeds the attention, another feeds the MLP, and the layer computes `x + attn(norm1(x))`,
then `h + mlp(norm2(h))`. Parallel attention/MLP blocks, scaled residuals (Granite's `residual_multiplier`), norms
after a sublayer (Gemma 2, OLMo 2) or several stacks are refused with an UnsupportedModelError saying what was found,
because a wrong placement would train and run without any error. Prefix tuning is offered only when the probe saw
the attention call transformers' attention function registry with the key/value heads the config declares, LoRA on
a fused qkv projection only when its last (value) part is the value states that call received (the engine's LoRA
reads an interface's fused projection as q, then k, then v), and invertible adapters only when the embedding output
is what layer 0 reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UnsupportedModelError
from .interface import AdapterModelInterface
from .transformers_api import Conv1D

logger = logging.getLogger(__name__)

Q_NAMES = ("q_proj", "query", "q_lin", "wq")
K_NAMES = ("k_proj", "key", "k_lin", "wk")
V_NAMES = ("v_proj", "value", "v_lin", "wv")
QKV_NAMES = ("qkv_proj", "Wqkv", "c_attn", "query_key_value", "qkv")
O_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "Wo", "out_lin", "wo")
# (into the MLP's hidden width, back to the model width); the first pair a module has wins
MLP_PAIRS = (
    ("up_proj", "down_proj"),
    ("gate_up_proj", "down_proj"),
    ("fc1", "fc2"),
    ("c_fc", "c_proj"),
    ("dense_h_to_4h", "dense_4h_to_h"),
    ("fc_in", "fc_out"),
    ("w1", "w2"),
)
PROBE_TOKENS = 5


class _StopProbe(Exception):
    """Raised after layer 0 so the probe pays for one layer, not the whole model."""


@dataclass
class _Found:
    """What the names say about layer 0 (paths relative to the layer)."""

    layers: str
    attention: str
    q: str | None
    k: str | None
    v: str | None
    qkv: str | None
    o: str
    mlp_in: str
    mlp_out: str
    embeddings: str
    notes: list[str] = field(default_factory=list)


def describe_model(model: nn.Module) -> AdapterModelInterface:
    """The AdapterModelInterface of a pre-LN decoder `model` (a base or task model), checked on a probe forward.

    Raises UnsupportedModelError naming what could not be found or what does not hold.
    """
    base = getattr(model, "base_model", model)
    name = f"{type(base).__name__} (model type {getattr(base.config, 'model_type', None)!r})"
    found = _find_modules(base, name)
    layer = base.get_submodule(found.layers)[0]
    norms, verified = _probe(base, layer, found, name)
    interface = AdapterModelInterface(
        adapter_methods=["bottleneck", "reft", *verified],
        model_embeddings=found.embeddings,
        model_layers=found.layers,
        layer_self_attn=found.attention,
        layer_cross_attn=None,
        attn_q_proj=found.q,
        attn_k_proj=found.k,
        attn_v_proj=found.v,
        attn_qkv_proj=found.qkv,
        attn_o_proj=found.o,
        layer_intermediate_proj=found.mlp_in,
        layer_output_proj=found.mlp_out,
        layer_pre_self_attn=norms[0],
        layer_pre_ffn=norms[1],
    )
    logger.info("%s described automatically: %s%s", name, interface.to_dict(), "".join(f"; {n}" for n in found.notes))
    return interface


# --- names ------------------------------------------------------------------------------------------------------


def _children(module: nn.Module) -> str:
    return ", ".join(f"{n} ({type(c).__name__})" for n, c in module.named_children()) or "none"


def _is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _linear_child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if _is_linear(module._modules.get(n))), None)


def _find_modules(base: nn.Module, name: str) -> _Found:
    layers_path = _find_layers(base, name)
    layer = base.get_submodule(layers_path)[0]
    attention = [
        (path, module) for path, module in layer.named_modules() if path and _attention_projections(module) is not None
    ]
    if not attention:
        raise UnsupportedModelError(
            f"automatic description of {name}: no self-attention module with q/k/v (or fused qkv) and output "
            f"projections in layer 0 of {layers_path!r} (children: {_children(layer)})"
        )
    if len(attention) > 1:
        paths = ", ".join(p for p, _ in attention)
        raise UnsupportedModelError(
            f"automatic description of {name}: layer 0 has several attention modules ({paths}); only decoder-only "
            "layers with one self-attention are described automatically"
        )
    attn_path, attn = attention[0]
    q, k, v, qkv, o = _attention_projections(attn)
    mlps = [
        (path, pair)
        for path, module in layer.named_modules()
        if not _inside(path, attn_path) and (pair := _mlp_pair(module)) is not None
    ]
    if len(mlps) != 1:
        what = "no MLP" if not mlps else f"several MLPs ({', '.join(p or '<layer>' for p, _ in mlps)})"
        pairs = ", ".join("/".join(p) for p in MLP_PAIRS)
        raise UnsupportedModelError(
            f"automatic description of {name}: {what} with in/out projections ({pairs}) in layer 0 "
            f"(children: {_children(layer)})"
        )
    mlp_path, (mlp_in, mlp_out) = mlps[0]
    prefix = f"{mlp_path}." if mlp_path else ""
    return _Found(
        layers_path, attn_path, q, k, v, qkv, o, prefix + mlp_in, prefix + mlp_out, _embeddings_path(base, name)
    )


def _find_layers(base: nn.Module, name: str) -> str:
    """The longest ModuleList of blocks of one class that is not inside another such list."""
    lists = [
        (path, module)
        for path, module in base.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1
    ]
    top = [(p, m) for p, m in lists if not any(_inside(p, other) for other, _ in lists if other != p)]
    if not top:
        raise UnsupportedModelError(f"automatic description of {name}: no nn.ModuleList of identical layers")
    longest = max(len(m) for _, m in top)
    stacks = [p for p, m in top if len(m) == longest]
    if len(stacks) > 1:
        raise UnsupportedModelError(
            f"automatic description of {name}: several layer stacks of {longest} layers ({', '.join(stacks)}); "
            "only single-stack decoders are described automatically"
        )
    return stacks[0]


def _inside(path: str, parent: str) -> bool:
    return path.startswith(parent + ".") if parent else bool(path)


def _attention_projections(module: nn.Module):
    """(q, k, v, qkv, o) child names when `module` looks like self-attention, else None."""
    q, k, v = (_linear_child(module, names) for names in (Q_NAMES, K_NAMES, V_NAMES))
    qkv = _linear_child(module, QKV_NAMES)
    o = _linear_child(module, O_NAMES)
    separate = q is not None and k is not None and v is not None
    if o is None or separate == (qkv is not None):  # neither, or both (ambiguous)
        return None
    return (q, k, v, None, o) if separate else (None, None, None, qkv, o)


def _mlp_pair(module: nn.Module) -> tuple[str, str] | None:
    return next((pair for pair in MLP_PAIRS if all(_is_linear(module._modules.get(n)) for n in pair)), None)


def _embeddings_path(base: nn.Module, name: str) -> str:
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    path = next((p for p, m in base.named_modules() if m is embeddings), None) if embeddings is not None else None
    if not path:
        raise UnsupportedModelError(f"automatic description of {name}: no input embedding module")
    return path


# --- the probe --------------------------------------------------------------------------------------------------


class _RecordingShim(nn.Module):
    """Stands where prefix tuning's shim goes and records what the attention function was given."""

    def __init__(self):
        super().__init__()
        self.query_shape: tuple | None = None
        self.key_shape: tuple | None = None
        self.value: torch.Tensor | None = None

    def extend(self, module, query, key, value, attention_mask, *_, **__):  # the shim's call, whatever it adds
        if self.value is None:
            self.query_shape, self.key_shape, self.value = tuple(query.shape), tuple(key.shape), value
        return key, value, attention_mask


def _probe(base: nn.Module, layer: nn.Module, found: _Found, name: str):
    """Run layer 0 once and check the pre-LN residual layout; returns ((norm1, norm2), methods beyond bottleneck
    and ReFT that the probe could verify)."""
    attn = layer.get_submodule(found.attention)
    watched = {
        "layer": layer,
        "attn": attn,
        "o": attn.get_submodule(found.o),
        **({"qkv": attn.get_submodule(found.qkv)} if found.qkv else {}),
        "mlp_in": layer.get_submodule(found.mlp_in),
        "mlp_out": layer.get_submodule(found.mlp_out),
        "embeddings": base.get_submodule(found.embeddings),
    }
    skip = (found.attention, found.mlp_in.rpartition(".")[0] or found.mlp_in)
    norms = {
        path: module
        for path, module in layer.named_modules()
        if path and "norm" in type(module).__name__.lower() and not any(path == s or _inside(path, s) for s in skip)
    }
    seen: dict[str, tuple] = {}

    def record(key, module, args, kwargs, output):
        if key not in seen:
            first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            seen[key] = (first, output[0] if isinstance(output, tuple) else output)
        if module is layer:
            raise _StopProbe

    modes = {m: m.training for m in base.modules()}
    shim = _RecordingShim()
    switched = _switch_to_prefix_attention(base)
    handles = [
        module.register_forward_hook(lambda m, a, k, o, key=key: record(key, m, a, k, o), with_kwargs=True)
        for key, module in [*watched.items(), *(("norm:" + p, m) for p, m in norms.items())]
    ]
    if switched:
        attn.add_module("prefix_tuning", shim)
    try:
        base.eval()
        weight = watched["embeddings"].weight
        ids = torch.arange(1, PROBE_TOKENS + 1, device=weight.device).remainder(weight.shape[0]).unsqueeze(0)
        with torch.no_grad():
            base(input_ids=ids, attention_mask=torch.ones_like(ids))
    except _StopProbe:
        pass
    except Exception as err:  # the model's own forward failed on 5 plain tokens: nothing was verified
        raise UnsupportedModelError(f"automatic description of {name}: the probe forward pass failed: {err}") from err
    finally:
        for handle in handles:
            handle.remove()
        if switched:
            del attn.prefix_tuning
            base.set_attn_implementation(switched)
        for module, mode in modes.items():
            module.training = mode
    methods = [
        method
        for method, ok in (
            ("lora", _lora_ok(seen, shim, found)),
            ("prefix_tuning", _prefix_ok(base, shim, found)),
            ("invertible", _embeddings_ok(seen, found)),
        )
        if ok
    ]
    return _check(seen, norms, found, name), methods


def _switch_to_prefix_attention(base: nn.Module) -> str | None:
    """Switch to prefix tuning's attention implementation (as adding a prefix would); returns the previous one."""
    from .methods.prefix_tuning import prefix_implementation
    from .transformers_api import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

    impl = getattr(base.config, "_attn_implementation", None) or "eager"
    if impl != "eager" and ALL_MASK_ATTENTION_FUNCTIONS.get(impl) not in (sdpa_mask, eager_mask):
        return None
    try:
        base.set_attn_implementation(prefix_implementation(impl))
    except (ValueError, UnsupportedModelError, AttributeError):
        return None
    return impl


def _close(actual: torch.Tensor | None, expected: torch.Tensor | None, scale: torch.Tensor | None = None) -> bool:
    """`actual` equals `expected` up to rounding, relative to the norm of `scale` (default: of `expected`).

    Shapes may differ by a reshape (OPT flattens batch and sequence around its MLP): the values are compared in order.
    """
    if actual is None or expected is None or actual.numel() != expected.numel():
        return False
    actual, expected = actual.reshape(-1), expected.reshape(-1)
    tol = 1e-4 if actual.dtype in (torch.float32, torch.float64) else 2e-2
    reference = (expected if scale is None else scale).float().norm()
    return bool(reference > 0) and bool((actual.float() - expected.float()).norm() <= tol * reference)


def _check(seen: dict, norms: dict, found: _Found, name: str) -> tuple[str, str]:
    """The pre-attention and pre-FFN norms, after checking `h = x + o_proj(...)` and `out = h + mlp_out(...)`."""
    where = f"automatic description of {name}: layer 0"
    missing = [k for k in ("layer", "attn", "o", "mlp_in", "mlp_out") if k not in seen]
    if missing:
        raise UnsupportedModelError(f"{where}: the probe forward pass never ran {', '.join(missing)}")
    attn_in, attn_out = seen["attn"]
    o_out = seen["o"][1]
    if not _close(attn_out, o_out):
        raise UnsupportedModelError(f"{where}: {found.attention}'s output is not its {found.o}'s output")
    listed = ", ".join(norms) or "none"

    def feeding(tensor) -> str | None:
        return next((p for p in norms if f"norm:{p}" in seen and _close(seen[f"norm:{p}"][1], tensor)), None)

    norm1 = feeding(attn_in)
    if norm1 is None:
        raise UnsupportedModelError(
            f"{where}: no norm feeds {found.attention} (norms: {listed}); only pre-LN layers are described "
            "automatically"
        )
    norm2 = feeding(seen["mlp_in"][0])
    if norm2 is None or norm2 == norm1:
        what = f"reads {norm1}, as {found.attention} does" if norm2 else f"is fed by none of the norms ({listed})"
        raise UnsupportedModelError(
            f"{where}: {found.mlp_in} {what}: parallel attention/MLP blocks are not described automatically"
        )
    x, h = seen[f"norm:{norm1}"][0], seen[f"norm:{norm2}"][0]
    if not _close(h, x + o_out, o_out):
        raise UnsupportedModelError(
            f"{where}: {norm2} does not read the residual stream plus {found.attention}'s output (a scaled "
            "residual, a norm after the attention, or a parallel block): describe it with an AdapterModelInterface"
        )
    mlp_out = seen["mlp_out"][1]
    if not _close(seen["layer"][1], h + mlp_out, mlp_out):
        raise UnsupportedModelError(
            f"{where} does not output {norm2}'s input plus {found.mlp_out}'s output (a scaled residual or a norm "
            "after the MLP): describe it with an AdapterModelInterface"
        )
    return norm1, norm2


def _prefix_ok(base: nn.Module, shim: _RecordingShim, found: _Found) -> bool:
    """The attention called the registered attention function with the key/value heads the config declares."""
    if shim.key_shape is None:
        found.notes.append("no prefix tuning: the attention does not call transformers' attention functions")
        return False
    config = base.config
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        found.notes.append("no prefix tuning: the config has no num_attention_heads")
        return False
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if shim.key_shape[1] != kv_heads or shim.key_shape[-1] != head_dim:
        found.notes.append(f"no prefix tuning: keys of shape {shim.key_shape}, not {kv_heads} heads of {head_dim}")
        return False
    return True


def _lora_ok(seen: dict, shim: _RecordingShim, found: _Found) -> bool:
    """Separate q/k/v projections, or a fused one laid out as the engine's LoRA reads an interface's (all q, then all
    k, then all v, sized by the query and key/value heads): its last part must be the value states the attention
    received (GPT-NeoX and Persimmon interleave q, k, v head by head, GPT-BigCode too)."""
    if found.qkv is None:
        return True
    value, fused = shim.value, seen.get("qkv", (None, None))[1]
    if value is None or fused is None:
        found.notes.append(f"no LoRA: the q|k|v layout of {found.qkv} could not be checked (no attention function)")
        return False
    rows, kv_heads, tokens, dim = value.shape
    heads = shim.query_shape[1]
    if fused.shape[-1] != (heads + 2 * kv_heads) * dim:
        found.notes.append(f"no LoRA: {found.qkv} is not q, k, v of {heads}, {kv_heads}, {kv_heads} heads of {dim}")
        return False
    last = fused[..., (heads + kv_heads) * dim :]
    if not _close(last.reshape(rows, tokens, kv_heads, dim).transpose(1, 2), value):
        found.notes.append(f"no LoRA: the last part of {found.qkv} is not the value states (heads interleaved)")
        return False
    return True


def _embeddings_ok(seen: dict, found: _Found) -> bool:
    if "embeddings" in seen and _close(seen["layer"][0], seen["embeddings"][1]):
        return True
    found.notes.append(f"no invertible adapters: layer 0 does not read {found.embeddings}'s output unchanged")
    return False
