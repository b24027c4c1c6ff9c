"""LoRA supervised fine-tuning of the base GGUF model, and export of the adapter to GGUF for llama.cpp.

Worker-side only (imports torch, transformers, peft): nothing in api/control/engine/protocol/core imports it.
Importing the package is cheap; torch is imported when `train` / `export_lora_gguf` are first used.

    from llmaas.training import SFTConfig, TrainHooks, train
    result = train(SFTConfig(base_model="smollm2", output_dir=..., cache_dir=..., train_examples=rows), hooks)
    result.gguf_path  # -> output_dir/adapter.gguf, load with llama.cpp next to the base GGUF
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmaas.training.config import ALL_LINEAR, SFTConfig, SFTResult, TrainHooks

if TYPE_CHECKING:
    from llmaas.training.checkpoint import latest_checkpoint
    from llmaas.training.export_gguf import export_lora_gguf
    from llmaas.training.lora_sft import train

__all__ = ["ALL_LINEAR", "SFTConfig", "SFTResult", "TrainHooks", "export_lora_gguf", "latest_checkpoint", "train"]

_LAZY = {"train": "lora_sft", "export_lora_gguf": "export_gguf", "latest_checkpoint": "checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"llmaas.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'llmaas.training' has no attribute {name!r}")
