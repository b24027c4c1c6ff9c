"""The training encoding of a chat is what the serving engine renders for the same messages, for each bundled
model: the same template (the GGUF's own, or its architecture's), the same BOS rule, and the trained tokens are
each assistant message's content plus the end-of-turn token the engine stops at."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from llmaas.core.model_files import ModelPackageMissingError  # noqa: E402
from llmaas.engine.chat_template import ChatMessage, ChatTemplate, template_for  # noqa: E402
from llmaas.training.base_model import read_gguf_arch, resolve_gguf  # noqa: E402
from llmaas.training.data import ChatEncoder  # noqa: E402

CHAT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Is the sky <end_of_turn> blue?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "And grass?"},
    {"role": "assistant", "content": "Green."},
]
RENDERED = {
    "smollm2": "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nIs the sky <end_of_turn> blue?"
               "<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n<|im_start|>user\nAnd grass?<|im_end|>\n"
               "<|im_start|>assistant\nGreen.<|im_end|>\n",
    # Gemma folds the system message into the first user turn; the assistant is "model".
    "gemma3-270m": "<bos><start_of_turn>user\nAnswer in one word.\n\nIs the sky <end_of_turn> blue?<end_of_turn>\n"
                   "<start_of_turn>model\nYes.<end_of_turn>\n<start_of_turn>user\nAnd grass?<end_of_turn>\n"
                   "<start_of_turn>model\nGreen.<end_of_turn>\n",
}
END_OF_TURN = {"smollm2": "<|im_end|>", "gemma3-270m": "<end_of_turn>"}


def _load(spec: str):
    from transformers import AutoTokenizer

    try:
        gguf = resolve_gguf(spec)
    except ModelPackageMissingError as e:
        pytest.skip(str(e))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    return spec, gguf, tok


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def model(request):
    return _load(request.param)


def serving_prompt(gguf, tok, messages: list[dict]) -> list[int]:
    """What BatchingEngine.tokenize_chat builds, with the HF tokenizer in llama.cpp's place."""
    arch = read_gguf_arch(gguf)
    template = ChatTemplate(template_for(arch.chat_template, arch.architecture), tok.bos_token, tok.eos_token)
    ids = template.tokenize([ChatMessage(m["role"], m["content"]) for m in messages],
                            lambda t, sp: tok.encode(t, add_special_tokens=False, split_special_tokens=not sp))
    if arch.add_bos_token and (not ids or ids[0] != tok.bos_token_id):
        ids.insert(0, tok.bos_token_id)
    return ids


def test_training_encoding_is_the_served_rendering(model):
    spec, gguf, tok = model
    ex = ChatEncoder.for_gguf(tok, gguf).encode(CHAT)
    ids = ex.input_ids.tolist()
    assert tok.decode(ids) == RENDERED[spec]
    end = tok.convert_tokens_to_ids(END_OF_TURN[spec])
    for i, m in enumerate(CHAT):
        if m["role"] != "assistant":
            continue
        prompt = serving_prompt(gguf, tok, CHAT[:i])  # the engine's prompt, generation prompt included
        content = tok.encode(m["content"], add_special_tokens=False)
        n = len(prompt)
        assert ids[:n] == prompt
        assert ids[n:n + len(content) + 1] == [*content, end]
        assert ex.loss_mask[n:n + len(content) + 1].all()
    trained = tok.decode(ex.input_ids[ex.loss_mask].tolist())
    assert trained == f"Yes.{END_OF_TURN[spec]}Green.{END_OF_TURN[spec]}"
    if spec == "gemma3-270m":  # the template renders <bos> and llama.cpp adds one: one in all, never two
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_gemma_refuses_turns_that_do_not_alternate():
    _, gguf, tok = _load("gemma3-270m")  # ChatML (SmolLM2) takes any order of roles
    with pytest.raises(ValueError, match="alternate"):
        ChatEncoder.for_gguf(tok, gguf).encode([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                                 {"role": "assistant", "content": "c"}])
