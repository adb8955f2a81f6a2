"""Finding and downloading adapters. For now: Hugging Face Hub repos through `huggingface_hub`."""

from .resolve import resolve_adapter

__all__ = ["resolve_adapter"]
