"""Atomic training checkpoints: everything needed to resume a LoRA run exactly after a kill -9.

Layout of `<output_dir>/checkpoints/step-00000040/`:
    adapter/            PEFT `save_pretrained` (adapter_config.json + adapter_model.safetensors)
    trainer_state.pt    optimizer + LR scheduler state, RNG states, step / epoch / position, fingerprint
    state.json          the same progress fields, human-readable (metrics included)

A checkpoint is written into a hidden temporary sibling, fsynced, then renamed into place: a crash at any
point leaves either the complete new checkpoint or none of it, and older checkpoints are pruned only after.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(root: Path, step: int, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    progress: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `root/step-<step>` atomically; keep the `keep` newest (0 = keep all). Returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        model.save_pretrained(str(tmp / "adapter"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "progress": progress}, tmp / STATE_FILE)
        (tmp / "state.json").write_text(json.dumps(progress, indent=1, default=str))
        _fsync_tree(tmp)
        if final.exists():  # same step written before (a resumed run re-reaching it): replace
            shutil.rmtree(final)
        os.rename(tmp, final)
        dir_fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary and foreign directories ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run's `output_dir` (what a restarted worker resumes from)."""
    found = list_checkpoints(Path(output_dir) / "checkpoints")
    return found[-1] if found else None


def load_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    # weights_only=False: the file holds numpy/python RNG states; it is our own file, written by save_checkpoint.
    return torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def load_adapter_weights(model: Any, ckpt_dir: Path) -> None:
    """Load a checkpoint's LoRA weights into the PEFT `model` (strictly: every LoRA tensor must match)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(ckpt_dir) / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"checkpoint adapter does not match the model: unexpected={result.unexpected_keys[:5]} "
                         f"missing={missing[:5]}")
