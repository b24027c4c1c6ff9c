"""Whether a model fits before it is loaded: its weights plus the KV cache of its sequence slots, against the
memory this machine (or this container's cgroup) has left. A load that would not fit is refused up front;
an out-of-memory kill would take every model and every stream of the server with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmaas.core.gguf_header import read_gguf_arch

_MIB = 1 << 20
# Compute buffers, logits and the allocator's slack on top of weights + KV (llama.cpp on CPU: tens of MB for
# small models); a share of the estimate plus a floor keeps small models from looking free.
_OVERHEAD_SHARE, _OVERHEAD_FLOOR = 0.10, 64 * _MIB


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate_model_bytes(gguf: Path, *, n_slots: int, context_size: int) -> Estimate:
    """Weights (the file: llama.cpp maps it whole) + an f16 KV cache of n_slots x context_size cells."""
    arch = read_gguf_arch(gguf)
    n_embd = int(arch.get("embedding_length", 0))
    head_dim = n_embd // max(arch.n_head, 1)
    k_len = int(arch.get("attention.key_length", head_dim))
    v_len = int(arch.get("attention.value_length", head_dim))
    kv = arch.n_layer * n_slots * context_size * arch.n_head_kv * (k_len + v_len) * 2
    weights = gguf.stat().st_size
    return Estimate(weights, kv, max(_OVERHEAD_FLOOR, int(_OVERHEAD_SHARE * (weights + kv))))


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> int | None:
    """Memory a new allocation can take now: MemAvailable, capped by the cgroup's limit when there is one.
    None where neither can be read (not Linux): the caller then skips the check."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        avail = limit - used if avail is None else min(avail, limit - used)
    return avail


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
