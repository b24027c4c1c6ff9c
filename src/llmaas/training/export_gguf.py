"""Export a PEFT LoRA adapter to a GGUF LoRA file that llama.cpp loads next to the base GGUF.

Same result as llama.cpp's `convert_lora_to_gguf.py` for the `llama` and `gemma3` architectures:
  * metadata: general.architecture = the base's, general.type = "adapter", adapter.type = "lora",
    adapter.lora.alpha = alpha (llama.cpp scales the update by alpha / rank, rank read from the tensors);
  * tensors: `model.layers.{i}.self_attn.q_proj` -> `blk.{i}.attn_q` (k -> attn_k, v -> attn_v,
    o -> attn_output, mlp gate/up/down -> ffn_gate/ffn_up/ffn_down), each as `<name>.weight.lora_a` and
    `<name>.weight.lora_b`;
  * shapes: PEFT's lora_A is [r, n_in] and lora_B [n_out, r] in torch (row-major) order, i.e. ggml ne
    [n_in, r] and [r, n_out], which is what llama.cpp checks; stored as F32 (or F16);
  * the Q/K row permutation, llama only: llama.cpp's HF converter stores a llama model's q_proj/k_proj with
    their output rows permuted (`LlamaModel.permute`, rotate-half RoPE pairs -> interleaved pairs). The LoRA
    update B @ A lives in the same output space, so B's rows get the same permutation (with n_head for Q,
    n_head_kv for K); A is untouched. Gemma 3's converter (`Gemma3Model`, a plain TextModel) permutes nothing:
    llama.cpp runs NEOX-style RoPE on it, on the rows as Hugging Face stores them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmaas.training.base_model import read_gguf_arch
from llmaas.training.lora_gguf import GGUF_NAMES, write_adapter

log = logging.getLogger("llmaas.training.export")

# PEFT names: [base_model.model.]model.layers.{i}.{module}.lora_{A|B}[.{adapter}].weight
# The architectures whose block tensors GGUF_NAMES covers -> whether llama.cpp's converter permutes Q/K rows.
PERMUTES_QK = {"llama": True, "gemma3": False}
_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def permute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) on the rows (dim 0) of `w`."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_adapter(adapter: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict]:
    if isinstance(adapter, Mapping):
        tensors = dict(adapter)
        config: dict = {}
    else:
        from safetensors.numpy import load_file

        adir = Path(adapter)
        tensors = dict(load_file(str(adir / "adapter_model.safetensors")))
        config = json.loads((adir / "adapter_config.json").read_text())
    out = {}
    for name, t in tensors.items():
        if hasattr(t, "detach"):  # torch tensor
            t = t.detach().float().cpu().numpy()
        out[name] = np.asarray(t, dtype=np.float32)
    return out, config


def export_lora_gguf(adapter: str | os.PathLike[str] | Mapping[str, Any], base_gguf_path: str | os.PathLike[str],
                     out_path: str | os.PathLike[str], alpha: float | None = None,
                     dtype: Literal["f32", "f16"] = "f32") -> Path:
    """Write the GGUF LoRA for `adapter` (a PEFT adapter dir, or its LoRA state dict) and return `out_path`.

    `alpha` defaults to the adapter config's `lora_alpha` (required when passing a state dict). rsLoRA
    adapters are exported with alpha * sqrt(r), since llama.cpp always scales by alpha / r.
    """
    base_gguf_path, out_path = Path(base_gguf_path), Path(out_path)
    arch = read_gguf_arch(base_gguf_path)
    if arch.architecture not in PERMUTES_QK:
        raise NotImplementedError(f"LoRA export supports the {', '.join(PERMUTES_QK)} architectures, "
                                  f"not {arch.architecture!r}")
    permute = PERMUTES_QK[arch.architecture]
    tensors, config = _load_adapter(adapter)
    if alpha is None:
        if "lora_alpha" not in config:
            raise ValueError("alpha is required when exporting a state dict without adapter_config.json")
        alpha = float(config["lora_alpha"])

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, t in tensors.items():
        m = _LORA_NAME.match(name)
        if m is None:
            raise ValueError(f"unsupported tensor in adapter: {name} (only LoRA on attention/MLP projections)")
        layer, module, ab = int(m[1]), m[2], m[3]
        if module not in GGUF_NAMES or layer >= arch.n_layer:
            raise ValueError(f"adapter tensor {name} has no counterpart in the {arch.n_layer}-layer base model")
        pairs.setdefault(f"blk.{layer}.{GGUF_NAMES[module]}.weight", {})[ab] = t
    if not pairs:
        raise ValueError("the adapter holds no LoRA tensors")

    ranks = set()
    writer_tensors: list[tuple[str, np.ndarray]] = []
    for gname in sorted(pairs, key=_natural_key):
        ab = pairs[gname]
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{gname}: lora_A and lora_B must both be present")
        a, b = ab["A"], ab["B"]  # [r, n_in], [n_out, r]
        n_in, n_out = arch.tensor_shapes[gname]
        if a.shape[1] != n_in or b.shape[0] != n_out or a.shape[0] != b.shape[1]:
            raise ValueError(f"{gname}: LoRA shapes A{a.shape} B{b.shape} do not fit base [{n_out}, {n_in}]")
        if permute and gname.endswith(".attn_q.weight"):
            b = permute_rows(b, arch.n_head, arch.n_head)
        elif permute and gname.endswith(".attn_k.weight"):
            b = permute_rows(b, arch.n_head, arch.n_head_kv)
        ranks.add(a.shape[0])
        np_dtype = np.float16 if dtype == "f16" else np.float32
        writer_tensors += [(gname + ".lora_a", np.ascontiguousarray(a, dtype=np_dtype)),
                           (gname + ".lora_b", np.ascontiguousarray(b, dtype=np_dtype))]
    if config.get("use_rslora"):
        if len(ranks) != 1:
            raise ValueError("rsLoRA export needs one rank for all modules")
        alpha = alpha * math.sqrt(ranks.pop())

    write_adapter(out_path, arch.architecture, writer_tensors, alpha, f16=dtype == "f16")
    log.info("exported %d LoRA tensor pairs (alpha %s, %s) to %s", len(writer_tensors) // 2, alpha, dtype, out_path)
    return out_path


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]

