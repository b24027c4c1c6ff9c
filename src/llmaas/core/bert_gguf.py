"""Converts a sentence-transformers BERT checkpoint (safetensors, WordPiece tokenizer.json, pooling config) into
a GGUF for llama.cpp's `bert` architecture.

It follows llama.cpp's own converter (convert_hf_to_gguf.py, `BertModel`): the same keys, tensor names and
"phantom space" vocabulary, so that the llama.cpp vendored by llama-cpp-python loads it as it loads
a GGUF converted upstream. Weight matrices are stored as f16; vectors (norms, biases) and the position and
token-type embeddings as f32, as upstream does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Part of the cached file's name: a change to what the converter writes must not reuse an older conversion.
CONVERTER_VERSION = 2

# sentence-transformers' pooling modes -> llama.cpp's pooling types (gguf.PoolingType values).
_POOLING = {"pooling_mode_mean_tokens": "MEAN", "pooling_mode_cls_token": "CLS", "pooling_mode_lasttoken": "LAST"}


def _pooling(model_dir: Path) -> str | None:
    """The pooling named by the checkpoint's sentence-transformers modules (modules.json), or None."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if module["type"].endswith("Pooling"):
            config = json.loads((model_dir / module["path"] / "config.json").read_text(encoding="utf-8"))
            for flag, name in _POOLING.items():
                if config.get(flag):
                    return name
            raise ValueError(f"unsupported pooling in {model_dir}: only mean, cls and last-token pooling convert")
    return None


def _vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    """WordPiece tokens in llama.cpp's form: a word start gets U+2581 in front, a continuation loses its '##',
    special tokens stay as they are (CONTROL)."""
    import gguf

    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tok["model"]["type"] != "WordPiece":
        raise ValueError(f"{model_dir}: a WordPiece tokenizer is expected, not {tok['model']['type']}")
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    for t in tok.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    n = max(vocab.values()) + 1
    by_id = {i: s for s, i in vocab.items()}
    prefix = tok["model"].get("continuing_subword_prefix", "##")
    tokens, types = [], []
    for i in range(n):
        s = by_id.get(i)
        if s is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:
            tokens.append(s)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(s[len(prefix):] if s.startswith(prefix) else "\u2581" + s)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _tensors(model_dir: Path, n_layer: int):
    """(GGUF name, array) for each weight llama.cpp's BERT graph uses; the pooler and MLM heads are dropped."""
    import gguf
    from safetensors.numpy import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for name, data in load_file(model_dir / "model.safetensors").items():
        name = name.removeprefix("bert.")
        if name == "embeddings.position_ids" or name.startswith(("pooler.", "cls.")):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"{model_dir}: no GGUF name for tensor {name!r}")
        data = data.astype(np.float32)
        # ggml adds the position and token-type rows to f32 activations as they are stored: f32, as upstream.
        f16 = data.ndim > 1 and not new.startswith(("position_embd.", "token_types."))
        yield new, data.astype(np.float16) if f16 else data


def convert_bert(model_dir: Path, out: Path, *, name: str) -> None:
    """Write `model_dir` (a sentence-transformers BERT checkpoint) to `out` as a GGUF named `name`."""
    import gguf

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert":
        raise ValueError(f"{model_dir}: a BERT checkpoint is expected, not {config.get('model_type')!r}")
    n_layer = config["num_hidden_layers"]
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        w.add_name(name)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        w.add_block_count(n_layer)
        w.add_context_length(config["max_position_embeddings"])
        w.add_embedding_length(config["hidden_size"])
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_head_count(config["num_attention_heads"])
        w.add_layer_norm_eps(config["layer_norm_eps"])
        w.add_causal_attention(False)
        if (pooling := _pooling(model_dir)) is not None:
            w.add_pooling_type(gguf.PoolingType[pooling])
        tokens, types = _vocab(model_dir)
        w.add_token_type_count(config.get("type_vocab_size", 1))
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre("default")  # llama.cpp pre-tokenizes WordPiece vocabularies one way, whatever is named
        w.add_token_list(tokens)
        w.add_token_types(types)
        # [CLS]/[SEP]/[UNK]/[PAD]/[MASK] ids and whether [CLS] ... [SEP] frame each input, from the tokenizer files.
        # [CLS] stands in for BOS, as upstream has it. Unlike upstream, [SEP] is not also the EOS: llama.cpp frames
        # WordPiece input with the separator alone, and an EOS that no generation ends on only earns a warning
        # at every load (as would naming the type 'cls').
        special = ("bos", "unk", "sep", "pad", "mask")
        gguf.SpecialVocab(model_dir, n_vocab=len(tokens), special_token_types=special).add_to_gguf(w, quiet=True)
        for tensor_name, data in _tensors(model_dir, n_layer):
            w.add_tensor(tensor_name, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
