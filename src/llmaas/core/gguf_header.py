"""The header of a GGUF file: scalar metadata and tensor shapes, read without touching tensor data.

What the LoRA exporter needs (architecture, layer and head counts, tensor shapes) and what the model catalog
needs to tell whether a model fits in memory before loading it (KV cache geometry, trained context)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class GGUFArch:
    """What the LoRA exporter needs to know about the base GGUF."""

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    tensor_shapes: dict[str, tuple[int, ...]]  # ggml order (ne0 first): a linear weight is [n_in, n_out]
    meta: dict[str, Any] = field(default_factory=dict)  # scalar metadata (arrays are skipped)

    @property
    def chat_template(self) -> str | None:
        """The GGUF's own chat template (tokenizer.chat_template), if it carries one."""
        return self.meta.get("tokenizer.chat_template")

    @property
    def add_bos_token(self) -> bool:
        """Whether llama.cpp prepends BOS when it tokenizes for this model."""
        return bool(self.meta.get("tokenizer.ggml.add_bos_token", False))

    def get(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped value: get("context_length") reads "<arch>.context_length"."""
        return self.meta.get(f"{self.architecture}.{key}", default)


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
                    meta=meta)
