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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmaas.core.model_files import gguf_path

log = logging.getLogger("llmaas.training.base")

_MARKER = "llmaas_base.json"  # written last inside the tmp dir: its presence means "complete"


def resolve_gguf(model_spec: str | os.PathLike[str]) -> Path:
    """A bundled model's name ('smollm2', 'gemma3-270m') or a path to a .gguf file -> the file's path."""
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


@dataclass(frozen=True, slots=True)
class GGUFArch:
    """What the LoRA exporter and the chat encoder need to know about the base GGUF."""

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    tensor_shapes: dict[str, tuple[int, ...]]  # ggml order (ne0 first): a linear weight is [n_in, n_out]
    chat_template: str | None = None  # the GGUF's own (tokenizer.chat_template), if it carries one
    add_bos_token: bool = False  # whether llama.cpp prepends BOS when it tokenizes for this model


# GGUF value types -> struct format (8 = string, 9 = array are handled apart).
_GGUF_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_arch(gguf_path: Path) -> GGUFArch:
    """Read the header of a GGUF file: scalar metadata and tensor shapes (no tensor data).

    A small parser of its own because gguf-py's GGUFReader materialises every metadata array (the whole
    vocabulary) and takes seconds on a 50k-token tokenizer; this skips arrays and takes milliseconds.
    """
    import mmap
    import struct

    with open(gguf_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            (v,) = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return v

        def string() -> str:
            nonlocal pos
            n = take("Q")
            pos += n
            return bytes(buf[pos - n:pos]).decode("utf-8", "replace")

        def value(vtype: int) -> Any:
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype == 9:
                etype, n = take("I"), take("Q")
                if etype in _GGUF_SCALAR:
                    pos += n * struct.calcsize(_GGUF_SCALAR[etype])
                else:
                    for _ in range(n):
                        value(etype)
                return None  # arrays are not needed here
            return take(_GGUF_SCALAR[vtype])

        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{gguf_path} is not a GGUF file")
        pos = 4
        version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
        if version < 2:
            raise ValueError(f"{gguf_path}: GGUF version {version} is too old")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(take("I"))
        shapes: dict[str, tuple[int, ...]] = {}
        for _ in range(n_tensors):
            name = string()
            n_dims = take("I")
            shapes[name] = tuple(take("Q") for _ in range(n_dims))
            take("I"), take("Q")  # ggml type, data offset

    arch = meta.get("general.architecture")
    if not arch or f"{arch}.attention.head_count" not in meta:
        raise ValueError(f"{gguf_path} lacks architecture metadata")
    n_head = int(meta[f"{arch}.attention.head_count"])
    return GGUFArch(architecture=arch, n_layer=int(meta[f"{arch}.block_count"]), n_head=n_head,
                    n_head_kv=int(meta.get(f"{arch}.attention.head_count_kv", n_head)), tensor_shapes=shapes,
                    chat_template=meta.get("tokenizer.chat_template"),
                    add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)))


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
