"""ModelRunner on llama.cpp's low-level C API (through llama-cpp-python's ctypes bindings).

One llama_context holds a KV cache of `n_slots` streams of `context_size` cells (llama.cpp's non-unified
cache); each slot is a sequence id with its own stream. One `decode` call is one llama_decode over a batch
that mixes many sequences. Separate streams, not one unified cache, because (measured, see docs/performance.md):
with a unified cache every sequence's attention runs over the cells of all of them,
so a 16-sequence decode step grew from 78 to 94 ms at 160 tokens per sequence and to 136 ms at 400 (72,
78, 90 ms with streams), and a sequence's logits depended on its batch neighbours; with streams they do
not, so a seed gives the same output under any load.
ctypes releases the GIL during each C call, so the asyncio loop keeps running meanwhile.

LoRA adapters (GGUF, llama.cpp's format) are loaded once per model and applied per context with
llama_set_adapters_lora, which covers a whole llama_decode call; the scheduler groups sequences by
adapter. Changing a context's adapters makes llama.cpp re-reserve its compute graph on the next
decode (a few ms), so `set_adapter` only calls into llama.cpp when the adapter changes.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from pathlib import Path

import numpy as np

from llmaas.core.errors import EngineError, InvalidRequestError
from llmaas.core.model_files import ModelPackageMissingError, gguf_path, model_id_for
from llmaas.engine.backends.llamacpp_sampler import LlamaSampler
from llmaas.engine.chat_template import template_for
from llmaas.engine.model_runner import log_softmax
from llmaas.engine.sampling import NumpySampler
from llmaas.engine.scoring import (
    SCORE_BATCH,
    SCORE_SEQ_TOKENS,
    SCORE_SEQS,
    ScoreItem,
    fill_continuations,
    fill_prefixes,
    fill_shared,
    pack,
    starts_with,
)
from llmaas.engine.types import EMBEDDINGS_ONLY, GENERATIVE, SamplingParams

log = logging.getLogger("llmaas.engine.llamacpp")

_LOG_CALLBACK = None  # keep the ctypes callback alive for the process lifetime
# llama.cpp warnings that say nothing an operator should act on, printed at every load:
_BENIGN = (
    "n_ctx_seq",  # the KV cache is n_slots x context cells; each sequence stays within context_size
    "using full-size SWA cache",  # Gemma: sliding-window layers keep full-size caches with several sequences
    "control-looking token",  # Gemma's GGUF marks '</s>' as a normal token; llama.cpp fixes the type itself
    "cannot use buft 'CPU_REPACK'",  # a LoRA tensor stays in plain memory; the base weight it adds to is repacked
)


def resolve_model(spec: str) -> tuple[str, Path]:
    """A bundled model's name ('smollm2', 'gemma3-270m') or a .gguf path → (model id, path)."""
    try:
        path = gguf_path(spec)
    except ModelPackageMissingError as e:
        raise EngineError(str(e)) from e
    if not path.is_file():
        raise EngineError(f"model file not found: {path}")
    return model_id_for(spec), path


def _quiet_llama_logs() -> None:
    """Forward llama.cpp's warnings and errors to Python logging; drop its chatty info output."""
    global _LOG_CALLBACK
    from llama_cpp import llama_cpp as L

    if _LOG_CALLBACK is not None:
        return

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def _cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        msg = text.decode("utf-8", "replace").rstrip()
        if level in (3, 4) and not any(b in msg for b in _BENIGN):  # GGML_LOG_LEVEL_WARN, _ERROR
            log.warning("llama.cpp: %s", msg)

    _LOG_CALLBACK = _cb
    L.llama_log_set(_cb, ctypes.c_void_p(0))


class LlamaCppRunner:
    def __init__(
        self,
        model_spec: str,
        *,
        n_slots: int,
        context_size: int,
        max_batch_tokens: int,
        threads: int,
        gpu_layers: int = 0,
        vocab_only: bool = False,
        repack: bool = True,
    ) -> None:
        """vocab_only: the tokenizer and metadata without the weights (an API process that only tokenizes,
        while the model runs elsewhere); such a runner has no context and must not decode."""
        from llama_cpp import llama_cpp as L

        self.L = L
        _quiet_llama_logs()
        L.llama_backend_init()
        self.model_id, self.path = resolve_model(model_spec)
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = gpu_layers
        mp.vocab_only = vocab_only
        mp.use_extra_bufts = repack  # weights laid out for the batched CPU kernels (Q4_0, Q4_1, Q8_0, ...)
        self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {self.path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_embd = L.llama_model_n_embd(self.model)
        self.n_slots, self.max_batch_tokens, self.threads = n_slots, max_batch_tokens, threads
        arch = self._meta("general.architecture")
        # Read from the metadata too: a vocabulary-only load leaves the model's hyperparameters at 0.
        n_ctx_train = L.llama_model_n_ctx_train(self.model) or int(self._meta(f"{arch}.context_length") or 0)
        self.context_size = min(context_size, n_ctx_train) if n_ctx_train > 0 else context_size
        # An encoder (BERT and its kin) attends both ways and has no LM head: it can only embed. It gets no
        # generation context (llama.cpp gives it no KV cache anyway), and pools as its GGUF says.
        self.capabilities = EMBEDDINGS_ONLY if self._meta(f"{arch}.attention.causal") == "false" else GENERATIVE
        self.generative = "completions" in self.capabilities
        own_pooling = self._meta(f"{arch}.pooling_type")  # 1, 2, 3: mean, cls, last; else none of its own
        self._pooling = int(own_pooling) if own_pooling in ("1", "2", "3") else L.LLAMA_POOLING_TYPE_MEAN
        self.ctx = self.mem = None
        if self.generative and not vocab_only:
            self.ctx = self._new_context(self.context_size * n_slots, max_batch_tokens, n_slots, embeddings=False,
                                         unified=False)
            self.mem = L.llama_get_memory(self.ctx)
        self._batch = L.llama_batch_init(max_batch_tokens, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._eog = [t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        self._side_ctx = None  # for score()
        self._score_ctx = None  # for score_many(): many sequences per decode
        self._embed_ctx = None  # for embed()
        self._adapters: dict[str, ctypes.c_void_p] = {}  # name -> llama_adapter_lora *
        # llama_adapter_lora_init/_free may update the model's adapter set: one at a time. Inits run off
        # the scheduler thread; frees are deferred to the lock holder rather than waiting for an init.
        self._adapter_lock = threading.Lock()
        self._to_free: list[ctypes.c_void_p] = []
        self._adapter: str | None = None  # what self.ctx has applied

    def _meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp prints it (a bool reads "true"/"false"), or None if absent."""
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def _generative_only(self, what: str) -> None:
        if not self.generative:
            raise InvalidRequestError(f"the model '{self.model_id}' only supports embeddings, not {what}",
                                      param="model")

    def prefill_cost(self, n: int = 64) -> float:
        """Seconds per prompt token of one n-token prefill, measured now: the scheduler's first estimate (it
        refines it from real steps). Called on the scheduler thread, which must be the only long-lived
        thread that decodes (see BatchingEngine._side). Doubles as a warm-up: the first decode pays
        llama.cpp's graph allocation. 0 (no estimate) for an encoder, which never generates."""
        if not self.generative:
            return 0.0
        n = min(n, self.max_batch_tokens, self.context_size)  # what the batch and a slot can hold
        toks = [t % self.n_vocab for t in range(1000, 1000 + n)]
        want = [False] * (n - 1) + [True]
        times = []
        for _ in range(3):  # the first is the warm-up; the best of the other two (a busy moment reads high)
            t0 = time.perf_counter()
            self.decode(toks, list(range(n)), [0] * n, want)
            times.append(time.perf_counter() - t0)
            self.kv_remove(0, 0)
        return min(times[1:]) / n

    def _new_context(self, n_ctx: int, n_batch: int, n_seq: int, embeddings: bool, *, unified: bool = True):
        """unified=False: one KV stream per sequence (n_ctx / n_seq cells each), which keeps each sequence's
        logits independent of what else is in the batch (see llmaas.engine.scoring)."""
        L = self.L
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = min(n_batch, 512) if not unified else n_batch
        cp.n_seq_max = n_seq
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.kv_unified = unified
        cp.no_perf = True
        if embeddings:
            cp.embeddings = True
            cp.pooling_type = self._pooling
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        return ctx

    # -- vocabulary ----------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """An encoder's text is framed by its own special tokens ([CLS] ... [SEP]), as it was trained."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        frame = not self.generative
        buf = (self.L.llama_token * n_max)()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, n_max, frame, special)
        if n < 0:
            buf = (self.L.llama_token * -n)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, -n, frame, special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(128)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, 128, 0, True)
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def eog_tokens(self) -> list[int]:
        return list(self._eog)

    def bos_token(self) -> int | None:
        if not self.generative:  # tokenize() frames an encoder's input itself
            return None
        return int(self.L.llama_vocab_bos(self.vocab)) if self.L.llama_vocab_get_add_bos(self.vocab) else None

    def chat_template(self) -> str | None:
        t = self.L.llama_model_chat_template(self.model, None)
        return template_for(t.decode("utf-8") if t else None, self._meta("general.architecture"))

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def special_token_text(self, name: str) -> str:
        tok = self.L.llama_vocab_bos(self.vocab) if name == "bos" else self.L.llama_vocab_eos(self.vocab)
        return self.token_bytes(tok).decode("utf-8", "replace") if tok >= 0 else ""

    # -- LoRA adapters -------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        if not Path(path).is_file():
            raise EngineError(f"LoRA adapter file not found: {path}")
        if name in self._adapters:
            raise EngineError(f"a LoRA adapter named {name!r} is already loaded")
        with self._adapter_lock:
            ptr = self.L.llama_adapter_lora_init(self.model, str(path).encode())
            self._free_deferred()
        if not ptr:  # llama.cpp logged why (wrong base model, shapes, format)
            raise EngineError(f"llama.cpp could not load the LoRA adapter {path} (is it for {self.model_id}?)")
        if self._adapters.setdefault(name, ptr) is not ptr:  # lost a race with a load of the same name
            self._to_free.append(ptr)
            raise EngineError(f"a LoRA adapter named {name!r} is already loaded")

    def unload_adapter(self, name: str) -> None:
        ptr = self._adapters.pop(name, None)
        if ptr is None:
            return
        if self._adapter == name:  # never leave a context holding a freed adapter
            self._apply_adapter_ptr(self.ctx, None)
            self._adapter = None
        self._to_free.append(ptr)
        if self._adapter_lock.acquire(blocking=False):  # else the load in progress frees it
            try:
                self._free_deferred()
            finally:
                self._adapter_lock.release()

    def _free_deferred(self) -> None:
        while self._to_free:
            self.L.llama_adapter_lora_free(self._to_free.pop())

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def set_adapter(self, name: str | None) -> None:
        if name != self._adapter:
            self._apply_adapter(self.ctx, name)
            self._adapter = name

    def _apply_adapter(self, ctx, name: str | None) -> None:
        ptr = None
        if name is not None:
            ptr = self._adapters.get(name)
            if ptr is None:
                raise EngineError(f"the LoRA adapter {name!r} is not loaded")
        self._apply_adapter_ptr(ctx, ptr)

    def _apply_adapter_ptr(self, ctx, ptr) -> None:
        L = self.L
        if ptr is None:
            rc = L.llama_set_adapters_lora(ctx, None, 0, None)
        else:  # scale 1: llama.cpp applies the file's alpha / rank itself
            rc = L.llama_set_adapters_lora(ctx, (L.llama_adapter_lora_p_ctypes * 1)(ptr), 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise EngineError(f"llama_set_adapters_lora failed (code {rc})")

    # -- forward -------------------------------------------------------------------------------
    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], logits: list[bool]) -> None:
        self._generative_only("generation")
        b = self._batch
        n = len(tokens)
        for i in range(n):
            b.token[i] = tokens[i]
            b.pos[i] = positions[i]
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_ids[i]
            b.logits[i] = logits[i]
        b.n_tokens = n
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed (code {rc})")

    def logits(self, batch_index: int) -> np.ndarray:
        ptr = self.L.llama_get_logits_ith(self.ctx, batch_index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def new_sampler(self, params: SamplingParams, seed: int) -> LlamaSampler | NumpySampler:
        if params.grammar:  # llama.cpp owns the grammar state
            return LlamaSampler(self, params, seed)
        return NumpySampler(self.logits, params, seed, self._eog)

    # -- KV cache ------------------------------------------------------------------------------
    def kv_remove(self, seq_id: int, from_pos: int) -> None:
        if self.mem:
            self.L.llama_memory_seq_rm(self.mem, seq_id, from_pos, -1)

    def kv_copy(self, src: int, dst: int, n_tokens: int) -> None:
        """Give `dst` the first `n_tokens` of `src`'s KV. Across streams llama.cpp copies whole streams (at the
        next decode, ~5 ms for 2048 cells): copy all of it, then drop what is past the prefix."""
        self.L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
        self.L.llama_memory_seq_rm(self.mem, dst, n_tokens, -1)

    def kv_cells_used(self) -> int:
        if not self.mem:
            return 0
        used = sum(max(0, self.L.llama_memory_seq_pos_max(self.mem, s) + 1) for s in range(self.n_slots))
        return min(used, self.kv_capacity())

    def kv_capacity(self) -> int:
        return self.context_size * self.n_slots if self.mem else 0

    # -- side contexts (embeddings, scoring) ----------------------------------------------------
    def _fill_single(self, batch, tokens: list[int], want_from: int) -> None:
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= want_from
        batch.n_tokens = len(tokens)

    def embed(self, tokens: list[int], adapter: str | None = None) -> list[float]:
        L = self.L
        if self._embed_ctx is None:
            self._embed_ctx = self._new_context(self.context_size, self.context_size, 1, embeddings=True)
        ctx = self._embed_ctx
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            self._fill_single(batch, tokens, 0)
            self._decode_side(ctx, batch, adapter, "embedding")
            ptr = L.llama_get_embeddings_seq(ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            vec = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
        finally:
            L.llama_batch_free(batch)
        norm = np.linalg.norm(vec)
        return (vec / norm if norm else vec).tolist()

    def _decode_side(self, ctx, batch, adapter: str | None, what: str) -> None:
        """Decode on a side context under `adapter`, which is cleared afterwards: a side context never
        keeps an adapter between calls, so unloading one only has to look at the main context."""
        if adapter is not None:
            self._apply_adapter(ctx, adapter)
        try:
            if self.L.llama_decode(ctx, batch) != 0:
                raise EngineError(f"llama_decode failed while {what}")
        finally:
            if adapter is not None:
                self._apply_adapter(ctx, None)

    def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        self._generative_only("scoring")
        L = self.L
        if self._side_ctx is None:
            self._side_ctx = self._new_context(self.context_size, self.context_size, 1, embeddings=False)
        ctx = self._side_ctx
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            self._fill_single(batch, tokens, max(start - 1, 0))
            self._decode_side(ctx, batch, adapter, "scoring")
            out = []
            for i in range(max(start, 1), len(tokens)):
                row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i - 1), shape=(self.n_vocab,))
                out.append(float(log_softmax(row)[tokens[i]]))
            return out
        finally:
            L.llama_batch_free(batch)

    def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                   shared: list[int] | None = None) -> list[list[list[float]]]:
        """Batched scoring (evals), in up to three decodes per group of items: `shared` (a prefix the
        caller knows many items start with), the rest of each item's prefix, then every continuation on its
        own KV stream (see llmaas.engine.scoring). Items that do not fit a stream are scored with `score`,
        one at a time."""
        self._generative_only("scoring")
        L = self.L
        out: list[list[list[float]]] = [[[] for _ in it.continuations] for it in items]
        batched = [i for i, it in enumerate(items) if it.fits()]
        for i in sorted(set(range(len(items))) - set(batched)):
            out[i] = [self.score(items[i].prefix + c, len(items[i].prefix), adapter) if c else []
                      for c in items[i].continuations]
        if batched and self._score_ctx is None:
            self._score_ctx = self._new_context(SCORE_SEQS * SCORE_SEQ_TOKENS, SCORE_BATCH, SCORE_SEQS,
                                                embeddings=False, unified=False)
        ctx = self._score_ctx
        mem = L.llama_get_memory(ctx) if ctx else None
        batch = L.llama_batch_init(SCORE_BATCH, 0, 1) if batched else None
        # Whether an item uses `shared` depends on the item alone, so its numbers do not depend on its batch.
        use = [i for i in batched if shared and starts_with(items[i].prefix, shared)]
        rest = [i for i in batched if not (shared and starts_with(items[i].prefix, shared))]
        try:
            for idx, n_shared in [(g, len(shared or ())) for g in pack(items, use, SCORE_SEQS, SCORE_BATCH)] + \
                    [(g, 0) for g in pack(items, rest, SCORE_SEQS, SCORE_BATCH)]:
                group = [items[i] for i in idx]
                L.llama_memory_clear(mem, True)
                if n_shared:
                    fill_shared(batch, group[0].prefix[:n_shared])
                    self._decode_side(ctx, batch, adapter, "scoring")
                plan = fill_prefixes(batch, group, n_shared)
                for own in plan.owners:
                    if n_shared and own:
                        L.llama_memory_seq_cp(mem, 0, own, -1, -1)
                self._decode_side(ctx, batch, adapter, "scoring")
                first = [self._logprobs(ctx, row) for row in plan.first]
                for src, dst in plan.copies:
                    L.llama_memory_seq_cp(mem, src, dst, -1, -1)
                if fill_continuations(batch, group, plan):
                    self._decode_side(ctx, batch, adapter, "scoring")
                for k, (i, it) in enumerate(zip(idx, group, strict=True)):
                    for j, c in enumerate(it.continuations):
                        if c:
                            out[i][j] = [float(first[k][c[0]])] + [
                                self._token_logprob(ctx, row, t) for row, t in zip(plan.rest[(k, j)], c[1:],
                                                                                    strict=True)]
        finally:
            if batch is not None:
                L.llama_batch_free(batch)
        return out

    def _logprobs(self, ctx, batch_index: int) -> np.ndarray:
        return log_softmax(np.ctypeslib.as_array(self.L.llama_get_logits_ith(ctx, batch_index), shape=(self.n_vocab,)))

    def _token_logprob(self, ctx, batch_index: int, token: int) -> float:
        row = np.ctypeslib.as_array(self.L.llama_get_logits_ith(ctx, batch_index), shape=(self.n_vocab,))
        m = float(row.max())
        return float(row[token]) - m - float(np.log(np.exp(row - m, dtype=np.float64).sum()))

    def close(self) -> None:
        L = self.L
        for ctx in (self._embed_ctx, self._side_ctx, self._score_ctx, self.ctx):
            if ctx:
                L.llama_free(ctx)
        self._embed_ctx = self._side_ctx = self._score_ctx = self.ctx = None
        with self._adapter_lock:  # after the contexts that may reference them
            self._to_free.extend(self._adapters.values())
            self._adapters.clear()
            self._free_deferred()
        L.llama_batch_free(self._batch)
        if self.model:
            L.llama_model_free(self.model)
            self.model = None
