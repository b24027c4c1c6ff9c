"""A fine-tuning row is trained on the very tokens llama.cpp serves: for held-back chats of both bundled models,
the training encoding (HF tokenizer) of each assistant turn starts with the engine's prompt for the turns before
it (llama.cpp's tokenizer, its template, its BOS rule), continues with llama.cpp's tokens of the content and
ends with a token the engine stops at."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from llmaas.core.model_files import ModelPackageMissingError  # noqa: E402
from llmaas.engine.backends.llamacpp import LlamaCppRunner  # noqa: E402
from llmaas.engine.chat_template import ChatMessage  # noqa: E402
from llmaas.engine.engine import BatchingEngine  # noqa: E402
from llmaas.training.base_model import resolve_gguf  # noqa: E402
from llmaas.training.data import ChatEncoder  # noqa: E402
from tests.data import data_lines  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("spec", ["smollm2", "gemma3-270m"])
def test_training_tokens_are_the_served_tokens(spec: str):
    from transformers import AutoTokenizer

    try:
        gguf = resolve_gguf(spec)
    except ModelPackageMissingError as e:
        pytest.skip(str(e))
    encoder = ChatEncoder.for_gguf(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                 local_files_only=True), gguf)
    runner = LlamaCppRunner(spec, n_slots=1, context_size=2048, max_batch_tokens=64, threads=2)
    try:
        engine = BatchingEngine(runner, max_queued=1)
        eog = set(runner.eog_tokens())
        turns = 0
        for line in data_lines("chitchat", "valid", 40):
            msgs = json.loads(line)["messages"]
            ids = encoder.encode(msgs).input_ids.tolist()
            for i, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                prompt = engine.tokenize_chat([ChatMessage(x["role"], x["content"]) for x in msgs[:i]])
                content = runner.tokenize(m["content"], special=False)
                n, k = len(prompt), len(content)
                assert ids[:n] == prompt and ids[n:n + k] == content and ids[n + k] in eog, (spec, i, m["content"])
                turns += 1
        assert turns >= 40
    finally:
        runner.close()
