"""The adapter methods, one module each, and the registry that maps configs to them.

A new method is one module with an `AdapterMethod` subclass, one entry in `METHOD_CLASSES` and, if its config is
a new class, one line in `method_parts`.
"""

from __future__ import annotations

import importlib

from ..configs import AdapterConfig, BnConfig, ConfigUnion, LoRAConfig

# method kind -> "module:Class"; modules are imported on first use.
METHOD_CLASSES = {
    "bottleneck": "workbench.core.methods.bottleneck_layers:BottleneckMethod",
    "invertible": "workbench.core.methods.invertible:InvertibleMethod",
    "lora": "workbench.core.methods.lora:LoRAMethod",
    "prefix_tuning": "workbench.core.methods.prefix_tuning:PrefixTuningMethod",
    "prompt_tuning": "workbench.core.methods.prompt_tuning:PromptTuningMethod",
    "reft": "workbench.core.methods.reft:ReftMethod",
}


def method_parts(config: AdapterConfig) -> list[tuple[str, AdapterConfig]]:
    """The method layers a config needs, e.g. a `seq_bn_inv` config needs bottleneck and invertible."""
    if isinstance(config, ConfigUnion):
        return [part for sub in config.configs for part in method_parts(sub)]
    if isinstance(config, BnConfig):
        parts = [("bottleneck", config)]
        return parts + [("invertible", config)] if config.inv_adapter else parts
    if isinstance(config, LoRAConfig):
        return [("lora", config)]
    return [(config.architecture, config)]


def method_class(kind: str):
    module_name, class_name = METHOD_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)
