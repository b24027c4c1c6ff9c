"""LlamaCppRunner on the real model: the prefill-cost measurement the scheduler starts from."""

from __future__ import annotations

import math

import pytest

from llmaas.engine.backends.llamacpp import LlamaCppRunner

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("context_size", "max_batch_tokens"), [(2048, 512), (64, 16)])
def test_prefill_cost_fits_any_batch_size_and_leaves_the_cache_empty(context_size: int, max_batch_tokens: int):
    r = LlamaCppRunner("smollm2", n_slots=2, context_size=context_size, max_batch_tokens=max_batch_tokens,
                       threads=2)
    try:
        cost = r.prefill_cost()
        assert math.isfinite(cost) and 0 < cost < 1.0  # seconds per prompt token
        assert r.kv_cells_used() == 0
        toks = r.tokenize("Hello there", special=False)
        r.decode(toks, list(range(len(toks))), [0] * len(toks), [False] * (len(toks) - 1) + [True])  # from 0
        assert r.kv_cells_used() == len(toks)
    finally:
        r.close()
