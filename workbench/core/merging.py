"""Merging adapters (and heads) into a new one: AdapterHub's `average_adapter` and `average_head`, plus PEFT's
TIES, DARE and magnitude pruning (task arithmetic: Ilharco et al., 2023, https://arxiv.org/abs/2212.04089).

Weights: `w_i` as given, divided by their sum when `normalize_weights` (the default), `1/n` each when none are
given; `adapter_list` may also be a dict of name -> weight. `negate=[names]` flips the sign of those adapters'
weights after normalising (the same as passing negative weights).

Strategies (`combine_strategy`), with `τ_i` an adapter's parameters or task vector:

- ``"linear"`` (every method): every parameter `Σ w_i τ_i` (AdapterHub; Chronopoulou et al., 2023).
- ``"lora_linear_only_negate_b"`` (LoRA, (IA)^3): `A = Σ |w_i| A_i`, `B = Σ w_i B_i` (AdapterHub; Zhang et al.,
  2023), so a negative weight negates the adapter's `BA` instead of cancelling out.
- ``"lora_delta_w_svd"`` (LoRA; not GPT-2's Conv1D/fused projections, as in AdapterHub): `ΔW = Σ w_i B_i A_i`
  (unscaled), then `A = Vh[:k]`, `B = U[:, :k] diag(S[:k])` with `k = svd_rank`, which becomes the new `r`
  (`alpha` is kept, so the new scaling is `alpha / svd_rank`: AdapterHub's behaviour).
- ``"ties"``, ``"dare_ties"``, ``"dare_linear"``, ``"magnitude_prune"`` (LoRA, (IA)^3; PEFT's names): `combine`
  runs on LoRA's factors as in PEFT's `add_weighted_adapter`: `A_i` weighted by `sign(w_i)·sqrt|w_i|`, `B_i` by
  `sqrt|w_i|` (the sign on the A side only, so `B_i A_i` is weighted by `w_i`); on (IA)^3 on the deviation from
  the identity scale, `τ_i = alpha·l_i - 1`, and the new vector is `(1 + merged) / alpha`.
- ``"ties_svd"``, ``"dare_ties_svd"``, ``"dare_linear_svd"``, ``"magnitude_prune_svd"`` (LoRA; PEFT's names):
  `combine` on the weight deltas `τ_i = scaling·B_i A_i`, then a rank-`svd_rank` SVD (default: the adapters' `r`)
  with `B` divided by the new adapter's scaling, so the new adapter adds exactly the truncated merged delta.

`density` (0 < density <= 1) is the fraction of each task tensor kept by the pruning strategies; DARE draws its
keep-masks from torch's global RNG, or from a `torch.Generator` seeded with `seed` (the same seed, adapters and
device give the same adapter). `majority_sign_method` ("total" | "frequency") elects the TIES sign.

Every check runs, and every merged weight is computed, before the model changes; then the new adapter is added
in one transaction, so a refused or failed average leaves the model as it was.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch

from .configs import ConfigUnion, LoRAConfig, MTLLoRAConfig, TargetedLoRAConfig
from .errors import AdapterConfigError, HeadError
from .keys import rename_adapter_keys
from .names import check_head_name, check_name

logger = logging.getLogger(__name__)

ADAPTERHUB_STRATEGIES = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")
ON_FACTORS = ("ties", "dare_ties", "dare_linear", "magnitude_prune")
ON_DELTA_W = ("ties_svd", "dare_ties_svd", "dare_linear_svd", "magnitude_prune_svd")
STRATEGIES = ADAPTERHUB_STRATEGIES + ON_FACTORS + ON_DELTA_W
SIGN_METHODS = ("total", "frequency")
EXTRA_OPTIONS = ("density", "majority_sign_method", "seed", "negate")


# --- merging task tensors ------------------------------------------------------------------------------------


def combine(
    tensors: list[torch.Tensor],
    weights: list[float],
    strategy: str = "linear",
    density: float | None = None,
    majority_sign_method: str = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merge same-shaped task tensors `τ_i` with weights `w_i` (PEFT's `merge_utils`, negation first).

    - "linear": `Σ w_i τ_i`.
    - "magnitude_prune": `Σ w_i trim(τ_i)`; `trim` keeps the `int(density·numel)` largest |values| of a tensor.
    - "dare_linear": `Σ w_i drop(τ_i)`; `drop` keeps each value with probability `density` and divides it by
      `density` (DARE, Yu et al., 2023, https://arxiv.org/abs/2311.03099), drawing from `generator`.
    - "ties" (TIES, Yadav et al., 2023, https://arxiv.org/abs/2306.01708): trim, then per element elect the
      sign of `Σ sign(w_i)·trim(τ_i)` ("total") or of `Σ sign(sign(w_i)·trim(τ_i))` ("frequency"), zero counting as
      positive, then take the mean of `w_i·trim(τ_i)` over the adapters whose signed value has the elected sign
      (0 where none has). With positive weights this is PEFT's `ties`; a negative weight negates the task before
      the vote, so a negated adapter votes against its own direction.
    - "dare_ties": as "ties" with `drop` instead of `trim`.
    """
    base = strategy.removesuffix("_svd")
    stacked = torch.stack(list(tensors))
    signs = torch.tensor([1.0 if w >= 0 else -1.0 for w in weights], dtype=stacked.dtype, device=stacked.device)
    scale = torch.tensor([abs(w) for w in weights], dtype=stacked.dtype, device=stacked.device)
    shape = (-1,) + (1,) * (stacked.dim() - 1)
    signed = stacked * signs.view(shape)
    if base in ("ties", "magnitude_prune"):
        signed = torch.stack([_trim(t, density) for t in signed])
    elif base in ("dare_ties", "dare_linear"):
        signed = torch.stack([_drop(t, density, generator) for t in signed])
    elif base != "linear":
        raise AdapterConfigError(f"combine_strategy={strategy!r} is not a task-tensor strategy")
    weighted = signed * scale.view(shape)
    if base not in ("ties", "dare_ties"):
        return weighted.sum(dim=0)
    votes = signed if majority_sign_method == "total" else signed.sign()
    elected = torch.where(votes.sum(dim=0) >= 0, 1.0, -1.0).to(signed.dtype)
    agree = signed.sign() == elected
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def _trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[tensor.abs().reshape(-1).topk(k).indices] = 1
    return tensor * mask.view(tensor.shape)


def _drop(tensor: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    if density >= 1:
        return tensor
    keep = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * keep / density


# --- argument checks -----------------------------------------------------------------------------------------


def merge_weights(names: list[str], weights, normalize_weights: bool, what: str = "adapter") -> list[float]:
    """AdapterHub's weights: `1/n` each when none are given, else normalised to sum 1 unless told otherwise."""
    if weights is None:
        return [1 / len(names)] * len(names)
    weights = list(weights) if isinstance(weights, (list, tuple)) else weights
    if not isinstance(weights, list) or len(weights) != len(names):
        raise AdapterConfigError(f"weights={weights!r}: give one weight for each of the {len(names)} {what}s {names}")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise AdapterConfigError(f"weights={weights!r}: use finite numbers")
    if not normalize_weights:
        return [float(w) for w in weights]
    total = sum(weights)
    if total == 0:
        raise AdapterConfigError(f"weights={weights!r} sum to 0 and cannot be normalised (normalize_weights=False?)")
    return [w / total for w in weights]


def _names_and_weights(items, weights, what: str) -> tuple[list[str], object]:
    if isinstance(items, dict):
        if weights is not None:
            raise AdapterConfigError(f"the {what}s come with weights in a dict; weights={weights!r} is one too many")
        return list(items), list(items.values())
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise AdapterConfigError(f"{what}_list={items!r}: use a list of {what} names (or a dict of name -> weight)")
    if not items:
        raise AdapterConfigError(f"{what}_list is empty: give at least one {what} to average")
    return list(items), weights


def _check_options(options: dict, strategy: str, names: list[str]) -> dict:
    unknown = sorted(set(options) - set(EXTRA_OPTIONS))
    if unknown:
        raise AdapterConfigError(f"average_adapter got unknown option(s) {unknown} (known: {', '.join(EXTRA_OPTIONS)})")
    density = options.get("density")
    if strategy in ON_FACTORS + ON_DELTA_W:
        ok = isinstance(density, (int, float)) and not isinstance(density, bool) and 0 < density <= 1
        if not ok:
            raise AdapterConfigError(f"density={density!r}: combine_strategy={strategy!r} needs 0 < density <= 1")
    elif density is not None:
        raise AdapterConfigError(f"density={density!r} only applies to {', '.join(ON_FACTORS + ON_DELTA_W)}")
    method = options.get("majority_sign_method", "total")
    if method not in SIGN_METHODS:
        raise AdapterConfigError(f"majority_sign_method={method!r}: use 'total' or 'frequency'")
    seed = options.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise AdapterConfigError(f"seed={seed!r}: use an integer")
    negate = options.get("negate") or []
    if isinstance(negate, str) or not all(n in names for n in negate):
        raise AdapterConfigError(f"negate={negate!r}: use a list of names from {names}")
    return {"density": density, "majority_sign_method": method, "seed": seed, "negate": list(negate)}


def _comparable(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in ("dropout", "init_weights")}


def _check_strategy(model, strategy: str, names: list[str], config, svd_rank) -> None:
    """Which strategy applies to which method, raised where AdapterHub raises (as ValueError subclasses)."""
    if strategy == "lora_delta_w_svd" and "qkv" in model._engine.spec.lora:
        raise AdapterConfigError(
            "this model does not support combine_strategy='lora_delta_w_svd' (its attention uses a fused q|k|v "
            "Conv1D projection, as GPT-2: AdapterHub refuses it there too); use another combine_strategy"
        )
    if strategy != "linear" and isinstance(config, ConfigUnion):
        raise AdapterConfigError(f"combine_strategy={strategy!r}: adapters with a ConfigUnion only merge 'linear'")
    lora = isinstance(config, LoRAConfig)
    if svd_rank is not None and lora and not (strategy == "lora_delta_w_svd" or strategy in ON_DELTA_W):
        raise AdapterConfigError(
            f"svd_rank={svd_rank!r} only applies to 'lora_delta_w_svd' and the *_svd strategies, not {strategy!r}"
        )
    if strategy == "linear":
        return
    if isinstance(config, MTLLoRAConfig):  # a B·A-only strategy would drop the task-specific parts
        raise AdapterConfigError(f"combine_strategy={strategy!r} cannot merge MTL-LoRA adapters {names}; use 'linear'")
    if not lora:
        raise AdapterConfigError(
            f"combine_strategy={strategy!r} is not supported for {config.architecture or 'bottleneck'} adapters "
            f"{names}; only 'linear'"
        )
    if config.use_gating:
        raise AdapterConfigError(f"combine_strategy={strategy!r} cannot merge LoRA adapters with gating {names}")
    svd = strategy == "lora_delta_w_svd" or strategy in ON_DELTA_W
    if svd and config.composition_mode != "add":
        raise AdapterConfigError(f"combine_strategy={strategy!r} needs LoRA adapters; {names} are (IA)^3")
    if strategy == "lora_delta_w_svd" and svd_rank is None:
        raise AdapterConfigError("svd_rank must be set when using combine_strategy='lora_delta_w_svd'")


# --- average_adapter -----------------------------------------------------------------------------------------


def average_adapter(
    model,
    adapter_name: str,
    adapter_list,
    weights=None,
    combine_strategy: str = "linear",
    normalize_weights: bool = True,
    overwrite_ok: bool = False,
    set_active: bool = False,
    svd_rank: int | None = None,
    **options,
) -> None:
    """`ModelAdaptersMixin.average_adapter` (see the module docstring for the strategies)."""
    if combine_strategy not in STRATEGIES:
        raise AdapterConfigError(f"Invalid combine_strategy {combine_strategy!r}. Must be one of {list(STRATEGIES)}")
    check_name(adapter_name)
    names, weights = _names_and_weights(adapter_list, weights, "adapter")
    configs = [model._require(n) for n in names]
    engine = model._engine
    if adapter_name in engine.configs and not overwrite_ok:
        raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists (pass overwrite_ok=True)")
    if any(_comparable(c) != _comparable(configs[0]) for c in configs[1:]):
        raise AdapterConfigError(
            f"Cannot average adapters with different configurations: {names} (all but dropout and init_weights "
            "must agree)"
        )
    config = configs[0]
    _check_strategy(model, combine_strategy, names, config, svd_rank)
    opts = _check_options(options, combine_strategy, names)
    weights = merge_weights(names, weights, normalize_weights)
    weights = [-w if n in opts["negate"] else w for n, w in zip(names, weights, strict=True)]
    logger.info("Adding adapter %r: %s of %s with weights %s", adapter_name, combine_strategy, names, weights)

    if svd_rank is not None and not isinstance(config, LoRAConfig):
        logger.warning("svd_rank only applies to LoRA adapters; ignoring svd_rank=%r", svd_rank)
    elif combine_strategy == "lora_delta_w_svd" or combine_strategy in ON_DELTA_W:
        rank = svd_rank if svd_rank is not None else config.r
        config = config.replace(r=rank)
        if isinstance(config, TargetedLoRAConfig):
            config = config.replace(targets={p: {**o, "r": rank} for p, o in config.targets.items()})
    expected = model._dry_run(config, adapter_name)  # raises what adding the new adapter would raise

    merged = {}
    if combine_strategy != "linear":
        merged = _merge_lora(model, adapter_name, names, weights, combine_strategy, config, opts)
    sources = [model.adapter_state_dict(n) for n in names]
    for key in expected:
        if key not in merged:  # everything else is linear (modules_to_save copies of PEFT adapters included)
            keys = [next(iter(rename_adapter_keys({key: None}, adapter_name, n))) for n in names]
            merged[key] = sum(w * s[k] for w, s, k in zip(weights, sources, keys, strict=True))
    for key, tensor in merged.items():
        if key in expected and tuple(tensor.shape) != expected[key]:
            raise AdapterConfigError(
                f"svd_rank={svd_rank!r}: {key} would have shape {tuple(tensor.shape)}, not {expected[key]} (svd_rank "
                "is larger than the projection allows)"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdapterConfigError(f"averaging {names} gives NaN or infinite values in {key}; nothing was added")

    with engine.transaction(model):
        if adapter_name in engine.configs:
            model.delete_adapter(adapter_name)
        model.add_adapter(adapter_name, config=config)
        model._load_weights(merged, engine.state_dict_of(adapter_name, keep_vars=True), Path("<average_adapter>"))
        if set_active:
            model.set_active_adapters(adapter_name)


def _merge_lora(model, new: str, names, weights, strategy: str, config, opts) -> dict[str, torch.Tensor]:
    """The new adapter's LoRA/(IA)^3 factors, key -> tensor, for every projection its sources share."""
    from .methods.lora import LoRA  # imported on use, as the method registry does

    method = model._engine.methods.get("lora")
    generators: dict = {}

    def generator(device):
        if opts["seed"] is None:
            return None  # torch's global RNG
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(opts["seed"])
        return generators[device]

    out = {}
    with torch.no_grad():
        for target in method.targets.values() if method is not None else []:
            if names[0] not in target.loras:
                continue
            loras = [target.loras[n] for n in names]
            if not all(_plain(m) for m in loras):
                kind = type(loras[0]).__name__
                lead = "VeRA only supports linear averaging: " if kind == "Vera" else ""  # AdapterHub's wording
                raise AdapterConfigError(
                    f"{lead}combine_strategy={strategy!r} cannot merge the {kind} adapters {names} on "
                    f"{target.path}: only plain LoRA and (IA)^3 modules (weights lora_A/lora_B); use 'linear'"
                )
            key = f"{target.path}.loras.{new}."
            if strategy in ON_DELTA_W or strategy == "lora_delta_w_svd":
                a, b = _svd_factors(target, loras, weights, strategy, config, opts, generator)
                out[key + "lora_A"], out[key + "lora_B"] = a, b
                continue
            is_lora = isinstance(loras[0], LoRA)
            if strategy == "lora_linear_only_negate_b":
                if is_lora:
                    out[key + "lora_A"] = sum(abs(w) * m.lora_A for w, m in zip(weights, loras, strict=True))
                out[key + "lora_B"] = sum(w * m.lora_B for w, m in zip(weights, loras, strict=True))
                continue
            gen = generator(loras[0].lora_B.device)
            extra = (opts["density"], opts["majority_sign_method"], gen)
            if is_lora:  # PEFT: the sign goes with A, sqrt|w| with both factors
                wa = [math.copysign(math.sqrt(abs(w)), w) for w in weights]
                wb = [math.sqrt(abs(w)) for w in weights]
                out[key + "lora_A"] = combine([_f(m.lora_A) for m in loras], wa, strategy, *extra)
                out[key + "lora_B"] = combine([_f(m.lora_B) for m in loras], wb, strategy, *extra)
            else:  # (IA)^3: merge the deviations from the identity scale
                alpha = loras[0].scaling
                merged = combine([alpha * _f(m.lora_B) - 1 for m in loras], weights, strategy, *extra)
                out[key + "lora_B"] = (1 + merged) / alpha
    return out


def _plain(module) -> bool:
    """A LoRA or (IA)^3 module whose only weights are its factors (no gate, no variant's extra weights)."""
    from .methods.lora import IA3, LoRA

    names = {n for n, _ in module.named_parameters()}
    return type(module) in (LoRA, IA3) and names <= {"lora_A", "lora_B"}


def _f(t: torch.Tensor) -> torch.Tensor:
    """Half-precision weights are merged (and decomposed) in float32."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _svd_factors(target, loras, weights, strategy, config, opts, generator):
    from .methods.lora import LoRA

    if not isinstance(loras[0], LoRA) or hasattr(loras[0], "enabled"):
        raise AdapterConfigError(
            f"combine_strategy={strategy!r} cannot decompose the adapters on {target.path} (a fused q|k|v projection "
            "or a LoRA variant without a plain B·A delta)"
        )
    if strategy == "lora_delta_w_svd":  # AdapterHub: unscaled deltas, the new scaling is alpha / svd_rank
        delta = sum(w * _f(m.delta_w) for w, m in zip(weights, loras, strict=True))
        rescale = 1.0
    else:
        gen = generator(loras[0].lora_B.device)
        deltas = [m.scaling * _f(m.delta_w) for m in loras]
        delta = combine(deltas, weights, strategy, opts["density"], opts["majority_sign_method"], gen)
        options = config.targets.get(target.path, {}) if isinstance(config, TargetedLoRAConfig) else {}
        with torch.device("meta"):  # the new adapter's scaling, as the LoRA method computes it
            probe = target.make(config, options.get("r"), options.get("alpha"), options.get("on_input", False))
        rescale = 1.0 / probe.scaling
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rank = config.r if not isinstance(config, TargetedLoRAConfig) else config.targets[target.path]["r"]
    return vh[:rank], u[:, :rank] * (s[:rank] * rescale)


# --- average_head --------------------------------------------------------------------------------------------


def average_head(
    model,
    head_name: str,
    head_list,
    weights=None,
    normalize_weights: bool = True,
    overwrite_ok: bool = False,
    set_active: bool = False,
) -> None:
    """`AdapterModel.average_head`: a new head whose every weight is `Σ w_i` (the heads' weight); the heads must
    have one class and the same config except `dropout_prob` (AdapterHub). An LM head tied to the input
    embeddings stays tied (its projection is the embedding matrix, not an average)."""
    check_head_name(head_name)
    try:
        names, weights = _names_and_weights(head_list, weights, "head")
        weights = merge_weights(names, weights, normalize_weights, "head")
    except AdapterConfigError as err:
        raise HeadError(str(err)) from None
    for name in names:
        if name not in model.heads:
            raise HeadError(f"no head named {name!r} (heads: {', '.join(model.heads) or 'none'})")
    if head_name in model.heads and not overwrite_ok:
        raise HeadError(f"a head named {head_name!r} already exists (pass overwrite_ok=True to replace it)")
    heads = [model.heads[n] for n in names]
    if not all(isinstance(h, type(heads[0])) for h in heads):
        raise HeadError(f"Cannot average heads of different classes: {names} must all be {type(heads[0]).__name__}")
    comparable = [{k: v for k, v in h.config.items() if k != "dropout_prob"} for h in heads]
    if any(c != comparable[0] for c in comparable[1:]):
        raise HeadError(f"Cannot average heads with different configurations: {names}")
    shared = {id(p) for p in model.base_model.parameters()}
    new_head = copy.deepcopy(heads[0])
    states = [h.state_dict(keep_vars=True) for h in heads]
    with torch.no_grad():
        averaged = {
            k: sum(w * s[k] for w, s in zip(weights, states, strict=True)).detach()
            for k, v in states[0].items()
            if id(v) not in shared
        }
    with model._engine.transaction(model):
        new_head.load_state_dict(averaged, strict=False)
        model.add_prediction_head(head_name, new_head, overwrite_ok=True, set_active=set_active)
        tied = [k for k, v in states[0].items() if id(v) in shared]
        if tied:  # the head's tied projection points at the embeddings again, as a freshly added LM head
            model.heads[head_name][-1].weight = model.get_input_embeddings().weight
