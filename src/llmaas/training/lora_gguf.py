"""GGUF LoRA adapters in llama.cpp's format (what `convert_lora_to_gguf.py` produces): the one writer, used by
the exporter of trained adapters (export_gguf.py), and random adapters for tests and benches.

Layout llama.cpp expects (src/llama-adapter.cpp): `general.type = "adapter"`, `general.architecture` equal to the
base model's, `adapter.type = "lora"`, `adapter.lora.alpha` (f32; scale = alpha / rank), and for each adapted base
tensor `<name>.lora_a` and `<name>.lora_b`. In ggml dims (ne) A is [in, r] and B is [r, out] for a base weight of
[in, out]; as numpy arrays (dims reversed) that is A: (r, in) and B: (out, r) — PEFT's `lora_A.weight` and
`lora_B.weight` exactly, so a trained PEFT adapter maps over without transposes.

Random adapters are written as f16 by default, like convert_lora_to_gguf.py. Observed with llama-cpp-python
0.3.36 on CPU: with f32 LoRA tensors a one-token decode can give different logits than the same token decoded
in a larger batch (up to ~0.5 for a strong random adapter), so a sequence's output depends on how many others
share its adapter in a step; with f16 tensors (and the quantized base model) the results are bitwise equal.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from llmaas.core.model_files import bundled_gguf
from llmaas.training.base_model import read_gguf_arch

# Hugging Face module names of a llama or gemma3 block -> llama.cpp's tensor names (the same for both).
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGUF_LINEAR = tuple(GGUF_NAMES.values())  # every linear weight of a block
DEFAULT_TARGETS = ("attn_q", "attn_v")


def write_adapter(out_path: str | os.PathLike[str], architecture: str, tensors: Sequence[tuple[str, np.ndarray]],
                  alpha: float, *, f16: bool) -> Path:
    """Write a GGUF LoRA adapter holding `tensors` (named `<base tensor>.lora_a|b`, already in the dtype to
    store), atomically: the file appears complete or not at all."""
    import gguf

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, arr in tensors:
            writer.add_tensor(name, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def base_linear_shapes(base_model: str | Path, targets: Iterable[str] = DEFAULT_TARGETS) -> tuple[str, dict]:
    """(architecture, {'blk.{i}.{target}.weight': (in, out)}) read from the base model's GGUF header."""
    arch = read_gguf_arch(Path(base_model))
    want = set(targets)
    shapes = {}
    for name, shape in arch.tensor_shapes.items():
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in want and parts[3] == "weight":
            shapes[name] = (int(shape[0]), int(shape[1]))  # ggml ne order: [in, out]
    return arch.architecture, shapes


def write_lora_gguf(path: str | Path, arch: str, weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    alpha: float, dtype: type = np.float16) -> Path:
    """Write an adapter. `weights` maps a base tensor name ('blk.0.attn_q.weight') to (A, B) in PEFT layout:
    A of shape (r, in), B of shape (out, r). `dtype`: np.float16 or np.float32."""
    tensors: list[tuple[str, np.ndarray]] = []
    for name, (a, b) in sorted(weights.items()):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{name}: A {a.shape} and B {b.shape} are not (r, in) and (out, r)")
        tensors += [(f"{name}.lora_a", np.ascontiguousarray(a, dtype=dtype)),
                    (f"{name}.lora_b", np.ascontiguousarray(b, dtype=dtype))]
    return write_adapter(path, arch, tensors, alpha, f16=dtype == np.float16)


def write_random_lora(path: str | Path, *, base_model: str | Path | None = None,
                      targets: Iterable[str] = DEFAULT_TARGETS, rank: int = 8, alpha: float | None = None,
                      seed: int = 0, std: float = 0.1, dtype: type = np.float16) -> Path:
    """A random rank-`rank` adapter on `targets` of every layer of the base model (SmolLM2 by default).
    Unlike a freshly initialised PEFT adapter (B = 0), B is random too, so the adapter changes the outputs."""
    arch, shapes = base_linear_shapes(base_model or bundled_gguf(), targets)
    if not shapes:
        raise ValueError(f"none of {tuple(targets)} found in the base model")
    rng = np.random.default_rng(seed)
    weights = {
        name: (rng.normal(0, std, (rank, n_in)).astype(np.float32),
               rng.normal(0, std, (n_out, rank)).astype(np.float32))
        for name, (n_in, n_out) in shapes.items()
    }
    return write_lora_gguf(path, arch, weights, alpha if alpha is not None else float(rank), dtype)
