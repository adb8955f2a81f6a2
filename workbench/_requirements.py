"""The transformers releases the workbench runs on, checked before anything else of the package is imported."""

from __future__ import annotations

import transformers
from packaging.version import Version

MIN_TRANSFORMERS = "5.24"
"""The oldest transformers the workbench runs on, the one its tests run on. Older 5.x releases differ where the
workbench hooks in: GPT-J's attention (before 5.24) and T5's (5.17 at least) bypass the attention interface, so
prefix tuning there left the outputs unchanged, silently; activation checkpointing and TrainingArguments use other
names; CLIP's towers and fast tokenizers' overflow windows behave differently (all seen running the tests on 5.17).
Pre-releases of 5.24 itself (5.24.0.dev0, 5.24.0rc1) count as older."""


def require_transformers(version: str) -> None:
    """Refuse an older transformers at import, with what to do, rather than compute wrong outputs with it."""
    if Version(version) < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"workbench needs transformers >= {MIN_TRANSFORMERS}, this environment has {version}: "
            f'pip install "transformers>={MIN_TRANSFORMERS},<6"'
        )


require_transformers(transformers.__version__)
