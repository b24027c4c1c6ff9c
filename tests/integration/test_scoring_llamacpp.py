"""Batched scoring (what evals use) on the real model through llama.cpp: a row's log-likelihoods do not
depend on the rows it is batched with or on how rows are packed into decodes, agree with scoring each
continuation alone, and honour a LoRA adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmaas.engine.backends.llamacpp as llamacpp
from llmaas.engine.backends.llamacpp import LlamaCppRunner
from llmaas.engine.chat_template import ChatMessage, ChatTemplate
from llmaas.engine.scoring import ScoreItem, common_prefix
from llmaas.training.lora_gguf import write_random_lora
from tests.data import data_lines

pytestmark = pytest.mark.integration
LABELS = ("positive", "negative")


def sentiment_items(runner, n: int) -> list[ScoreItem]:
    """What a classification eval scores: each label after a chat prompt holding one review (rotten_tomatoes)."""
    tpl = ChatTemplate(runner.chat_template())

    def chat(msgs):
        return tpl.tokenize(msgs, lambda t, sp: runner.tokenize(t, special=sp))

    out = []
    for line in data_lines("rotten_tomatoes", "test", n):
        msgs = [ChatMessage("system", "Classify the sentiment as positive or negative."),
                ChatMessage("user", "Review: " + json.loads(line)["text"])]
        prefix = chat(msgs)
        out.append(ScoreItem(prefix, [chat([*msgs, ChatMessage("assistant", lb)])[len(prefix):] for lb in LABELS]))
    return out


@pytest.fixture(scope="module")
def runner():
    r = LlamaCppRunner("smollm2", n_slots=2, context_size=1024, max_batch_tokens=256, threads=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def items(runner) -> list[ScoreItem]:
    return sentiment_items(runner, 24)


def flat(scores) -> np.ndarray:
    return np.array([sum(c) for item in scores for c in item])


def test_batch_invariant(runner, items, monkeypatch):
    shared = common_prefix([it.prefix for it in items])
    assert len(shared) > 10  # the system prompt and "Review:"
    together = runner.score_many(items, shared=shared)
    assert flat(runner.score_many(items[::-1], shared=shared)[::-1]).tolist() == flat(together).tolist()
    one_by_one = [runner.score_many([it], shared=shared)[0] for it in items]  # a last batch may hold one row
    assert flat(one_by_one).tolist() == flat(together).tolist()
    monkeypatch.setattr(llamacpp, "SCORE_SEQS", 4)  # other groups: 2 rows per decode instead of 8
    assert flat(runner.score_many(items, shared=shared)).tolist() == flat(together).tolist()
    plain = runner.score_many(items)  # without a shared prefix: each prompt prefilled whole, also invariant
    assert flat(runner.score_many(items[::-1])[::-1]).tolist() == flat(plain).tolist()


def test_agrees_with_scoring_one_continuation_at_a_time(runner, items):
    batched = runner.score_many(items, shared=common_prefix([it.prefix for it in items]))
    alone = [[runner.score(it.prefix + c, len(it.prefix)) for c in it.continuations] for it in items]
    b, a = flat(batched).reshape(-1, 2), flat(alone).reshape(-1, 2)
    # llama.cpp's CPU numerics depend on how a prompt is chunked into decodes (as with prefix caching in
    # serving): values differ a little, decisions hardly ever
    assert np.abs(b - a).mean() < 0.15, np.abs(b - a).mean()
    assert (b.argmax(1) == a.argmax(1)).mean() >= 0.9
    assert all(len(x) == len(c) for item, it in zip(batched, items, strict=True)
               for x, c in zip(item, it.continuations, strict=True))


def test_adapter_applies(runner, items, tmp_path):
    runner.load_adapter("rnd", str(write_random_lora(tmp_path / "a.gguf", seed=5)))
    base = flat(runner.score_many(items[:6]))
    tuned = flat(runner.score_many(items[:6], adapter="rnd"))
    assert np.abs(tuned - base).max() > 0.1
    alone = flat([[runner.score(it.prefix + c, len(it.prefix), "rnd") for c in it.continuations] for it in items[:6]])
    assert np.abs(tuned - alone).mean() < 0.3
    assert flat(runner.score_many(items[:6])).tolist() == base.tolist()  # the scoring context dropped it again
