"""`AdapterModelInterface`: AdapterHub's description of a model family, for models the engine does not ship.

`workbench.init(model, interface=AdapterModelInterface(...))` turns it into an `ArchSpec` (see `archs.py`), so code
written for the `adapters` library's plugin interface runs unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .archs import ALL_METHODS
from .errors import AdapterConfigError


@dataclass
class AdapterModelInterface:
    """Module names of one model family (AdapterHub's fields; paths are dotted, relative as documented there).

    Give either `attn_q_proj`, `attn_k_proj` and `attn_v_proj`, or one fused `attn_qkv_proj`.
    """

    adapter_methods: list[str]
    model_embeddings: str
    model_layers: str
    layer_self_attn: str
    layer_cross_attn: str | None
    attn_o_proj: str | None
    layer_intermediate_proj: str
    layer_output_proj: str
    attn_k_proj: str | None = None
    attn_q_proj: str | None = None
    attn_v_proj: str | None = None
    attn_qkv_proj: str | None = None
    layer_pre_self_attn: str | None = None
    layer_pre_cross_attn: str | None = None
    layer_pre_ffn: str | None = None
    layer_ln_1: str | None = None
    layer_ln_2: str | None = None
    base_model: str | None = None

    def __post_init__(self):
        separate = all(getattr(self, f"attn_{m}_proj") for m in "qkv")
        if separate == bool(self.attn_qkv_proj):
            raise AdapterConfigError(
                "AdapterModelInterface: give either attn_q_proj, attn_k_proj and attn_v_proj, or attn_qkv_proj "
                f"(got q={self.attn_q_proj!r}, k={self.attn_k_proj!r}, v={self.attn_v_proj!r}, "
                f"qkv={self.attn_qkv_proj!r})"
            )
        unknown = sorted(set(self.adapter_methods) - ALL_METHODS)
        if unknown:
            raise AdapterConfigError(
                f"AdapterModelInterface: adapter_methods {unknown} are not supported (known: {sorted(ALL_METHODS)})"
            )

    def to_dict(self) -> dict:
        return asdict(self)
