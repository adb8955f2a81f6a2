"""MTL-LoRA (Yang et al., 2024, https://arxiv.org/abs/2410.09437): LoRA for multi-task learning.

Each task is its own adapter with an `MTLLoRAConfig`; at every projection it computes
`h = dropout(x) A^T T B̄^T * alpha/r` with `T` the task-specific r x r transform (`task_specific.values`: a
diagonal of singular values, or a full matrix with `task_specific_matrix_type="linear"`) and
`B̄ = sum_i softmax(weights / weights_sharpness)_i B_i` over `n_up_projection` up-projections (`lora_B` has shape
(n, out, r)). adapters 1.3 applies each B_i and mixes the outputs; mixing the B_i first is the same linear map.
`share_parameters(MultiTask(...))` ties the tasks' A and B (the shared part), each keeping its own `T` and
`weights`; a `MultiTask` block routes every batch row to its task (`model(..., task_ids=...)`, see `runtime`).

Weight keys are AdapterHub's: `loras.<task>.{lora_A, lora_B, task_specific.values, weights}`, and the tied copy
`shared_parameters.<name>.{lora_A, lora_B}` on the projection. Merging folds `B̄ T^T A` into the weight (exact for
one task; adapters 1.3 cannot merge these adapters). A fused q|k|v projection (GPT-2's `c_attn`) takes the weights,
as in the library, but no MTL-LoRA forward is defined there, so such setups are refused when activated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import MTLLoRAConfig
from ..errors import AdapterConfigError, AdapterConfigTypeError
from .lora import LoRA


class TaskSpecificSingularValue(nn.Module):
    """`T = diag(values)`, values initialised to 1."""

    def __init__(self, rank: int):
        super().__init__()
        self.values = nn.Parameter(torch.ones(rank))

    def matrix(self) -> torch.Tensor:
        return torch.diag(self.values)


class TaskSpecificLinear(nn.Module):
    """`T = values`, a full r x r matrix initialised to ones (adapters 1.3 has the class but cannot build it: its
    `__init__` skips `nn.Module.__init__`)."""

    def __init__(self, rank: int):
        super().__init__()
        self.values = nn.Parameter(torch.ones(rank, rank))

    def matrix(self) -> torch.Tensor:
        return self.values


TASK_SPECIFIC = {"singular_values": TaskSpecificSingularValue, "linear": TaskSpecificLinear}


class MTLLoRA(LoRA):
    """One task's MTL-LoRA module at one projection (see the module docstring for the computation)."""

    def __init__(self, in_features: int, out_features: int, config: MTLLoRAConfig, heads: int = 1):
        super().__init__(in_features, out_features, config, heads)  # draws A (and B, gate) as the library does
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.lora_B = nn.Parameter(torch.zeros(config.n_up_projection, out_features, self.r, dtype=dtype))
        if config.init_weights == "bert":  # any other init leaves the up-projections at zero, as in adapters 1.3
            nn.init.normal_(self.lora_B, std=0.02)
        self.task_specific = TASK_SPECIFIC[config.task_specific_matrix_type](self.r)
        self.weights = nn.Parameter(torch.ones(config.n_up_projection))
        self.weights_sharpness = config.weights_sharpness

    def up(self) -> torch.Tensor:
        """`B̄`, the weighted mix of the up-projections: (out, r). Softmax is the library's `exp(w/s) / sum`, without
        its overflow for large weights."""
        mix = torch.softmax(self.weights / self.weights_sharpness, dim=0).to(self.lora_B.dtype)
        return torch.einsum("n,nor->or", mix, self.lora_B)

    @property
    def delta_w(self) -> torch.Tensor:
        transform = self.task_specific.matrix().to(self.lora_A.dtype)
        return self.up() @ transform.t() @ self.lora_A

    def forward(self, h, x):
        """Returns (scaled delta, gate or None); `h` is the previous Stack member's delta, else None."""
        down = self._down(h, x)
        down = down @ self.task_specific.matrix().to(down.dtype)
        down, gate = self._scale(down, x)  # a per-token factor commutes with the up-projection
        return F.linear(down, self.up()), gate


def is_mtl(lora) -> bool:
    return isinstance(lora, MTLLoRA)


# --- shared parameters --------------------------------------------------------------------------------------

SHARABLE = ("lora_A", "lora_B")


def task_names(adapter_names) -> list[str]:
    """`MultiTask("a", "b")`, `["a", "b"]` or `"a,b"` -> ["a", "b"] (AdapterHub's forms)."""
    from ..composition import MultiTask

    if isinstance(adapter_names, MultiTask):
        names = [c for c in adapter_names.children]
    elif isinstance(adapter_names, str):
        names = adapter_names.split(",")
    else:
        names = list(adapter_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise AdapterConfigError(f"share_parameters needs adapter names, got {adapter_names!r}")
    return names


def check_sharable(engine, names: list[str], reference: str) -> None:
    """As adapters 1.3: every adapter exists and has one and the same multi-task config class (TypeError
    otherwise); the reference is one of them."""
    from ..configs import MultiTaskConfig

    for name in names:
        if name not in engine.configs:
            raise AdapterConfigError(f"no adapter named {name!r} to share parameters with")
        config = engine.configs[name]
        if not isinstance(config, MultiTaskConfig):
            raise AdapterConfigTypeError(
                f"share_parameters needs adapters with a multi-task config (MTLLoRAConfig); {name!r} has "
                f"{type(config).__name__}"
            )
    kinds = {type(engine.configs[n]) for n in names}
    if len(kinds) > 1:
        raise AdapterConfigTypeError(
            f"share_parameters needs one config class for {names}, got {sorted(map(str, kinds))}"
        )
    if reference not in names:
        raise AdapterConfigError(f"reference adapter {reference!r} is not one of {names}")


def share(module: nn.Module, loras: nn.ModuleDict, name: str, names: list[str], reference: str) -> bool:
    """Tie `names`' A and B at one projection to copies of `reference`'s, kept as `module.shared_parameters[name]`.
    Only projections that carry every one of the adapters take part (as in the library)."""
    if not all(n in loras for n in names):
        return False
    shapes = {n: tuple(getattr(loras[n], p).shape for p in SHARABLE) for n in names}
    if len(set(shapes.values())) > 1:
        raise AdapterConfigError(f"adapters {names} have different A/B shapes and cannot share them: {shapes}")
    if not hasattr(module, "shared_parameters"):
        module.shared_parameters = nn.ModuleDict()
    source = loras[reference]
    tied = nn.ParameterDict(
        {p: nn.Parameter(getattr(source, p).detach().clone(), getattr(source, p).requires_grad) for p in SHARABLE}
    )
    module.shared_parameters[name] = tied
    for n in names:
        for p in SHARABLE:
            setattr(loras[n], p, tied[p])
    return True


def unshare(module: nn.Module, loras: nn.ModuleDict, name: str) -> None:
    """Give every adapter tied by `name` here its own copy of the shared values again, and drop the tie."""
    shared = getattr(module, "shared_parameters", None)
    if shared is None or name not in shared:
        return
    tied = shared[name]
    for lora in loras.values():
        for p in SHARABLE:
            if getattr(lora, p, None) is tied[p]:
                setattr(lora, p, nn.Parameter(tied[p].detach().clone(), tied[p].requires_grad))
    del shared[name]
    if not len(shared):
        del module.shared_parameters
