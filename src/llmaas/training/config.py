"""The training API's plain data: job config, callbacks, result. Importing this module does not import torch."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

# All linear layers of attention and MLP (the QLoRA-paper recipe): on a 135M model the LoRA cost is small next
# to the frozen matmuls (r=16: 4.9M trainable parameters, ~5% more matmul FLOPs) and adapting the MLP as well
# as attention is what lets small-data SFT move the model's behaviour; llama.cpp maps all seven modules.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTConfig:
    """One LoRA supervised fine-tuning job.

    Output layout under `output_dir`:
        checkpoints/step-XXXXXXXX/   resumable checkpoints (the newest `keep_checkpoints` are kept)
        adapter/                     final PEFT adapter (adapter_config.json + adapter_model.safetensors)
        adapter.gguf                 final adapter for llama.cpp (when `export_gguf`)
    """

    base_model: str | os.PathLike[str]  # a bundled model ("smollm2", "gemma3-270m") or a llama/gemma3 .gguf
    output_dir: str | os.PathLike[str]
    cache_dir: str | os.PathLike[str]  # where the dequantized base model is cached across jobs
    train_examples: Sequence[dict[str, Any]]  # [{"messages": [{"role": ..., "content": ...}, ...]}, ...]
    valid_examples: Sequence[dict[str, Any]] | None = None
    n_epochs: int = 3
    batch_size: int = 8  # chats per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 2e-4
    lr_schedule: Literal["linear", "cosine"] = "linear"  # after warmup, decay to 0 at the last step
    warmup_ratio: float = 0.03  # fraction of all steps spent warming up linearly from 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0  # PEFT's default; > 0 adds a little compute and uses the (checkpointed) torch RNG
    target_modules: Sequence[str] = ALL_LINEAR
    max_seq_len: int = 1024  # longer chats are truncated (tail dropped); chats left without a target are skipped
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = only the final one
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 = all
    eval_every: int | None = None  # steps between validation passes; None = at each checkpoint and at the end
    resume_from: str | os.PathLike[str] | None = None  # a checkpoint dir (see checkpoint.latest_checkpoint)
    threads: int | None = None  # torch intra-op threads; None = all cores
    bf16_autocast: bool = False  # measured slower on AVX2-only CPUs; worth trying on AMX / AVX512-BF16 hosts
    deterministic: bool = True  # torch.use_deterministic_algorithms(True) for the duration of the run
    export_gguf: bool = True  # write output_dir/adapter.gguf at the end
    gguf_dtype: Literal["f32", "f16"] = "f32"

    def __post_init__(self) -> None:
        for name in ("n_epochs", "batch_size", "grad_accum", "lora_r", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("warmup_ratio and lora_dropout must be in [0, 1)")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 0")
        if not self.train_examples:
            raise ValueError("train_examples is empty")
        self.output_dir = Path(self.output_dir)
        self.cache_dir = Path(self.cache_dir)
        if self.resume_from is not None:
            self.resume_from = Path(self.resume_from)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        skip = {"output_dir", "cache_dir", "train_examples", "valid_examples", "resume_from", "threads",
                "checkpoint_every", "keep_checkpoints", "eval_every", "export_gguf", "gguf_dtype"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["base_model"] = str(out["base_model"])
        out["target_modules"] = list(out["target_modules"])
        out["batch_mode"] = "flatten"  # the batch layout (data.collate); checkpoints record it
        return out


def _noop(*_: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class TrainHooks:
    """Callbacks from the training loop to its worker; every one optional. Called on the training thread.

    on_event(msg)                      human-readable progress line (loading, tokenized, resumed, exported, ...)
    on_metrics(step, metrics)          after every optimizer step: train_loss, train_mean_token_accuracy, lr,
                                       tokens_per_s, epoch, ...; and after each validation pass: valid_loss,
                                       valid_mean_token_accuracy (= full_valid_*: the whole validation set)
    on_checkpoint(step, dir, metrics)  after a checkpoint is complete on disk (safe to record / resume from)
    should_stop()                      polled before every micro-batch (and eval batch): True cancels within
                                       one step; the result then has status "cancelled"
    heartbeat()                        called often (every micro-batch, tokenization and eval batches), and
                                       every 2 s from a helper thread while the training thread is blocked in
                                       one long call (first-use base model conversion ~30-50 s, model load,
                                       checkpoint and export writes): it must be callable from any thread
                                       (calls never overlap)
    """

    on_event: Callable[[str], None] = _noop
    on_metrics: Callable[[int, dict[str, float]], None] = _noop
    on_checkpoint: Callable[[int, Path, dict[str, float]], None] = _noop
    should_stop: Callable[[], bool] = _never
    heartbeat: Callable[[], None] = _noop


@dataclass
class SFTResult:
    status: Literal["succeeded", "cancelled"]
    step: int  # optimizer steps done (including those before a resume)
    total_steps: int
    adapter_dir: Path | None  # final PEFT adapter (None when cancelled)
    gguf_path: Path | None  # final GGUF LoRA (None when cancelled or export_gguf=False)
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)  # the last train and validation metrics
    trained_tokens: int = 0  # tokens (prompt + completion) of all processed steps, resumed part included
    elapsed_s: float = 0.0  # wall time of this call
    data_stats: dict[str, dict[str, int]] = field(default_factory=dict)  # tokenization counts, train/valid
