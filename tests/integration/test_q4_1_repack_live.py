"""The bundled Q4_1 model on the repacked path (scripts/patches/: batched Q4_1 kernels) against the file's
layout (LLMAAS_REPACK=false), on real text: serving logits, evals' scoring, and a LoRA adapter on top.

What "the same" can mean here: llama.cpp's results on this model move by a few tenths of a logit when only
rounding changes (the unpacked path itself, fed the same tokens in decodes of another size, differs as much),
so each comparison is set against that: the repacked path must stay within the unpacked path's own rounding
spread, and agree on the top token as often. A wrong kernel (a lost minimum, a misplaced block) moves logits by
whole units and the top token nearly everywhere. The kernels themselves are checked exactly against float64 in
test_q4_1_kernels."""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest

import llmaas.engine.backends.llamacpp as llamacpp
from llmaas.core.model_files import bundled_gguf
from llmaas.engine.backends.llamacpp import LlamaCppRunner
from llmaas.training.lora_gguf import GGUF_LINEAR, write_random_lora
from tests.data import data_lines
from tests.integration.test_scoring_llamacpp import sentiment_items

pytestmark = pytest.mark.integration
POSITIONS = 320


def runner(repack: bool) -> LlamaCppRunner:
    return LlamaCppRunner("smollm2", n_slots=1, context_size=512, max_batch_tokens=512, threads=2, repack=repack)


@pytest.fixture(scope="module")
def runners():
    u, r = runner(False), runner(True)
    yield u, r
    u.close()
    r.close()


@pytest.fixture(scope="module")
def text_tokens(runners) -> list[int]:
    text = " ".join(json.loads(line)["text"] for line in data_lines("bbc_news", "test", 40))
    toks = runners[0].tokenize(text, special=False)
    assert len(toks) >= POSITIONS
    return toks[:POSITIONS]


def all_logits(r: LlamaCppRunner, toks: list[int], chunk: int) -> np.ndarray:
    """Next-token logits at every position, the text fed in decodes of `chunk` tokens."""
    r.kv_remove(0, 0)
    out = []
    for s in range(0, len(toks), chunk):
        part = toks[s:s + chunk]
        r.decode(part, list(range(s, s + len(part))), [0] * len(part), [True] * len(part))
        out += [r.logits(i).copy() for i in range(len(part))]
    return np.array(out)


def spread(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    d = np.abs(a - b)
    return float(d.mean()), float(d.max()), float((a.argmax(1) == b.argmax(1)).mean())


def assert_within_rounding(unpacked: np.ndarray, repacked: np.ndarray, unpacked_other_split: np.ndarray,
                           what: str) -> None:
    mean, worst, top1 = spread(unpacked, repacked)
    own_mean, own_worst, own_top1 = spread(unpacked, unpacked_other_split)
    print(f"{what}: repacked vs unpacked: mean |diff| {mean:.4f}, max {worst:.3f}, top-1 agreement {top1:.3f}; "
          f"unpacked vs itself in other decode sizes: mean {own_mean:.4f}, max {own_worst:.3f}, top-1 {own_top1:.3f}")
    assert own_mean > 0  # else the reference spread says nothing
    assert mean <= 1.5 * own_mean
    assert worst <= 2 * own_worst
    # where the top token differs, it was a near-tie: the two tokens within the rounding spread of each other
    rows = np.flatnonzero(unpacked.argmax(1) != repacked.argmax(1))
    ties = unpacked[rows, unpacked[rows].argmax(1)] - unpacked[rows, repacked[rows].argmax(1)]
    assert (ties <= own_worst).all(), ties
    assert top1 >= 0.8


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    """The same weights dequantized to f32: what both Q4_1 paths approximate."""
    from llama_cpp import llama_cpp as L

    path = tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf"
    p = L.llama_model_quantize_default_params()
    p.ftype, p.allow_requantize, p.nthread = L.LLAMA_FTYPE_ALL_F32, True, 2
    assert L.llama_model_quantize(str(bundled_gguf()).encode(), str(path).encode(), ctypes.byref(p)) == 0
    r = LlamaCppRunner(str(path), n_slots=1, context_size=512, max_batch_tokens=512, threads=2)
    yield r
    r.close()


def test_the_build_repacks_q4_1_weights():
    """The llama.cpp that setup built has the patch, and picks its Q4_1 layout for every linear weight."""
    from llama_cpp import llama_cpp as L

    lines: list[str] = []

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def capture(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llamacpp._quiet_llama_logs()  # llmaas's own callback, put back after
    L.llama_log_set(capture, None)
    try:
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = True
        model = L.llama_model_load_from_file(str(bundled_gguf()).encode(), mp)
        assert model
        L.llama_model_free(model)
    finally:
        L.llama_log_set(llamacpp._LOG_CALLBACK, None)
    log = "".join(lines)
    assert log.count("with q4_1_8x8") == 30 * 7  # q, k, v, output, gate, up, down in each of the 30 layers
    assert "CPU_REPACK model buffer size" in log


def test_serving_logits(runners, text_tokens, f32):
    u, r = runners
    exact = all_logits(f32, text_tokens, 512)
    to_f32, own_to_f32 = spread(all_logits(r, text_tokens, 512), exact), spread(all_logits(u, text_tokens, 512), exact)
    print(f"to the f32 model: repacked mean |diff| {to_f32[0]:.4f}, top-1 {to_f32[2]:.3f}; "
          f"unpacked {own_to_f32[0]:.4f}, top-1 {own_to_f32[2]:.3f}")
    assert to_f32[0] <= 1.25 * own_to_f32[0]
    # prompts arrive as one decode (GEMM over all rows); streams decode one token per step (GEMV)
    assert_within_rounding(all_logits(u, text_tokens, 512), all_logits(r, text_tokens, 512),
                           all_logits(u, text_tokens, 1), "prefill")
    assert_within_rounding(all_logits(u, text_tokens, 1), all_logits(r, text_tokens, 1),
                           all_logits(u, text_tokens, 512), "one token per decode")
    # 5 rows: 4 through GEMM and the last through GEMV in each decode
    assert_within_rounding(all_logits(u, text_tokens, 5), all_logits(r, text_tokens, 5),
                           all_logits(u, text_tokens, 512), "5 tokens per decode")


def test_with_a_lora_adapter(runners, text_tokens, tmp_path):
    path = str(write_random_lora(tmp_path / "all.gguf", seed=3, targets=GGUF_LINEAR))
    u, r = runners
    toks = text_tokens[:160]
    base = all_logits(r, toks, 160)
    for x in (u, r):
        x.load_adapter("ft", path)
        x.set_adapter("ft")
    try:
        un, re, other = all_logits(u, toks, 160), all_logits(r, toks, 160), all_logits(u, toks, 1)
    finally:
        for x in (u, r):
            x.set_adapter(None)
            x.unload_adapter("ft")
    assert spread(base, re)[0] > 5 * spread(un, re)[0]  # the adapter is on, and moves logits far more
    assert_within_rounding(un, re, other, "LoRA on every linear layer")


def test_scoring(runners, f32):
    """What evals compute: each label's log-likelihood after a prompt, batched over items."""
    u, r = runners
    items = sentiment_items(u, 32)

    def flat(scores) -> np.ndarray:
        return np.array([[sum(c) for c in item] for item in scores])

    su, sr, sf = flat(u.score_many(items)), flat(r.score_many(items)), flat(f32.score_many(items))
    diff, to_f32, own_to_f32 = np.abs(su - sr), np.abs(sr - sf), np.abs(su - sf)
    print(f"scoring: repacked vs unpacked: mean |diff| of a label's log-likelihood {diff.mean():.4f} "
          f"(max {diff.max():.3f}), same label {(su.argmax(1) == sr.argmax(1)).mean():.3f}; to the f32 model: "
          f"repacked {to_f32.mean():.4f} (max {to_f32.max():.3f}), unpacked {own_to_f32.mean():.4f} "
          f"(max {own_to_f32.max():.3f})")
    assert to_f32.mean() <= 1.25 * own_to_f32.mean()
    assert (su.argmax(1) == sr.argmax(1)).mean() >= 0.9
