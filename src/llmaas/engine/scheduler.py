"""Continuous batching over a ModelRunner, on a thread of its own.

Each step builds one batch: one token for every decoding sequence, then prompt chunks of sequences
still prefilling, up to `max_batch_tokens` (chunked prefill: a long prompt never stalls running
streams for more than one step). New requests join at the next step; finished, stopped or aborted
ones leave at once and their slot is free for the next. A slot keeps its KV cache after its request
ends, so a later prompt that starts with the same tokens (same system prompt, next chat turn) reuses
it; a prefix held by another slot is shared with `kv_copy` instead of being prefilled again.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmaas.engine.runner import ModelRunner, Sampler, log_softmax
from llmaas.engine.text import TextAssembler
from llmaas.engine.types import GenerationOutput, GenerationRequest, TokenLogprob

log = logging.getLogger("llmaas.engine")

Emit = Callable[[list[tuple[str, GenerationOutput]]], None]


@dataclass(eq=False)
class _Seq:
    req: GenerationRequest
    arrived: float
    slot: int = -1
    sampler: Sampler | None = None
    text: TextAssembler | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet in the KV cache
    n_past: int = 0
    last_token: int = -1
    generated: int = 0
    cached: int = 0
    first_token_at: float = 0.0
    last_token_at: float = 0.0


@dataclass(eq=False)
class _Slot:
    tokens: list[int] = field(default_factory=list)  # what this slot's KV cache holds, in order
    seq: _Seq | None = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class BatchScheduler:
    """Owns the runner; everything here runs on the scheduler thread except submit/abort."""

    def __init__(self, runner: ModelRunner, emit: Emit, metrics: object | None = None) -> None:
        self.runner = runner
        self._emit = emit
        self._metrics = metrics
        self._inbox: queue.SimpleQueue[GenerationRequest | None] = queue.SimpleQueue()
        self._aborts: set[str] = set()
        self._abort_lock = threading.Lock()
        self._waiting: deque[_Seq] = deque()
        self._slots = [_Slot() for _ in range(runner.n_slots)]
        self._thread: threading.Thread | None = None
        self._stop = False
        self.running_count = 0
        self.waiting_count = 0
        self.steps = 0
        self._eog = set(runner.eog_tokens())

    # -- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmaas-scheduler", daemon=True)
        self._thread.start()

    def submit(self, req: GenerationRequest) -> None:
        self._inbox.put(req)

    def abort(self, request_id: str) -> None:
        with self._abort_lock:
            self._aborts.add(request_id)
        self._inbox.put(None)  # wake the loop

    def shutdown(self) -> None:
        self._stop = True
        self._inbox.put(None)
        if self._thread:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- scheduler thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            idle = not self._waiting and self.running_count == 0
            self._drain_inbox(block=idle)
            if self._stop:
                break
            out: list[tuple[str, GenerationOutput]] = []
            self._handle_aborts(out)
            self._admit()
            try:
                self._step(out)
            except Exception as e:  # a failed decode fails the batch, never the process
                log.exception("decode step failed")
                for slot in self._slots:
                    if slot.seq:
                        self._finish(slot.seq, "error", out, error=f"engine error: {e}")
            if out:
                self._emit(out)
            self._update_gauges()

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(_Seq(item, time.monotonic()))
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _handle_aborts(self, out: list) -> None:
        if not self._aborts:
            return
        with self._abort_lock:
            ids, self._aborts = self._aborts, set()
        for seq in [s for s in self._waiting if s.req.request_id in ids]:
            self._waiting.remove(seq)
            out.append((seq.req.request_id, self._output(seq, "", [], None, "abort")))
        for slot in self._slots:
            if slot.seq and slot.seq.req.request_id in ids:
                self._finish(slot.seq, "abort", out)

    def _admit(self) -> None:
        free = [i for i, s in enumerate(self._slots) if s.seq is None]
        while self._waiting and free:
            seq = self._waiting.popleft()
            prompt = seq.req.prompt_tokens
            # Reuse at most len-1 tokens: the last prompt token must be decoded to get logits.
            limit = len(prompt) - 1
            own = {i: min(_common_prefix(self._slots[i].tokens, prompt), limit) for i in free}
            slot_id = max(free, key=lambda i: (own[i], -len(self._slots[i].tokens)))
            free.remove(slot_id)
            reuse = own[slot_id]
            src, src_len = -1, reuse
            for i, s in enumerate(self._slots):
                if i != slot_id and s.tokens:
                    n = min(_common_prefix(s.tokens, prompt), limit)
                    if n > src_len:
                        src, src_len = i, n
            slot = self._slots[slot_id]
            if src >= 0:
                self.runner.kv_remove(slot_id, 0)
                self.runner.kv_copy(src, slot_id, src_len)
                reuse = src_len
            else:
                self.runner.kv_remove(slot_id, reuse)
            slot.tokens = prompt[:reuse]
            slot.seq = seq
            seq.slot, seq.n_past, seq.cached = slot_id, reuse, reuse
            seq.pending = prompt[reuse:]
            p = seq.req.params
            seed = p.seed if p.seed is not None else random.getrandbits(32)
            seq.sampler = self.runner.new_sampler(p, seed)
            seq.text = TextAssembler(p.stop)
            self.running_count += 1
            if self._metrics:
                self._metrics.prompt_tokens.labels(self.runner.model_id).inc(len(prompt))

    def _step(self, out: list) -> None:
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        want: list[bool] = []
        samplers: list[tuple[_Seq, int]] = []
        budget = self.runner.max_batch_tokens
        active = [s.seq for s in self._slots if s.seq is not None]
        for seq in active:  # decoding sequences first: one token each
            if not seq.pending:
                samplers.append((seq, len(tokens)))
                tokens.append(seq.last_token)
                positions.append(seq.n_past)
                seq_ids.append(seq.slot)
                want.append(True)
                budget -= 1
        for seq in sorted((s for s in active if s.pending), key=lambda s: s.arrived):
            if budget <= 0:
                break
            chunk = seq.pending[:budget]
            done = len(chunk) == len(seq.pending)
            for j, t in enumerate(chunk):
                tokens.append(t)
                positions.append(seq.n_past + j)
                seq_ids.append(seq.slot)
                want.append(done and j == len(chunk) - 1)
            if done:
                samplers.append((seq, len(tokens) - 1))
            budget -= len(chunk)
        if not tokens:
            return
        self.runner.decode(tokens, positions, seq_ids, want)
        self.steps += 1
        # Book-keeping of what entered the KV cache.
        for seq in active:
            slot = self._slots[seq.slot]
            if seq.pending:
                entered = [t for t, sid in zip(tokens, seq_ids, strict=True) if sid == seq.slot]
                n = len(entered)
                slot.tokens.extend(entered)
                seq.n_past += n
                seq.pending = seq.pending[n:]
            elif seq.last_token >= 0:
                slot.tokens.append(seq.last_token)
                seq.n_past += 1
        now = time.monotonic()
        for seq, idx in samplers:
            self._sample(seq, idx, now, out)

    def _sample(self, seq: _Seq, idx: int, now: float, out: list) -> None:
        p = seq.req.params
        assert seq.sampler is not None and seq.text is not None
        token = seq.sampler.sample(idx)
        seq.generated += 1
        model = self.runner.model_id
        if self._metrics:
            if seq.generated == 1:
                self._metrics.ttft.labels(model).observe(now - seq.arrived)
            else:
                self._metrics.itl.labels(model).observe(now - seq.last_token_at)
            self._metrics.generation_tokens.labels(model).inc()
        if seq.generated == 1:
            seq.first_token_at = now
        seq.last_token_at = now
        seq.last_token = token
        if token in self._eog and not p.ignore_eos:
            self._finish(seq, "stop", out, final_tokens=[token])
            return
        lp = self._logprob(idx, token, p.logprobs) if p.logprobs is not None else None
        text = seq.text.push(self.runner.token_bytes(token))
        if seq.text.stopped:
            self._finish(seq, "stop", out, text=text, final_tokens=[token], lps=lp)
        elif seq.generated >= p.max_tokens or seq.n_past + 1 >= self.runner.context_size:
            self._finish(seq, "length", out, text=text, final_tokens=[token], lps=lp)
        else:
            out.append((seq.req.request_id, self._output(seq, text, [token], lp, None)))

    def _logprob(self, idx: int, token: int, top_n: int) -> list[TokenLogprob]:
        lps = log_softmax(self.runner.logits(idx))
        top: list[tuple[str, bytes, float]] = []
        if top_n:
            best = lps.argpartition(-top_n)[-top_n:]
            for t in best[lps[best].argsort()[::-1]]:
                b = self.runner.token_bytes(int(t))
                top.append((b.decode("utf-8", "replace"), b, float(lps[t])))
        b = self.runner.token_bytes(token)
        return [TokenLogprob(b.decode("utf-8", "replace"), b, float(lps[token]), top)]

    def _finish(
        self,
        seq: _Seq,
        reason: str,
        out: list,
        text: str = "",
        final_tokens: list[int] | None = None,
        lps: list[TokenLogprob] | None = None,
        error: str | None = None,
    ) -> None:
        if seq.text is not None and reason not in ("abort", "error") and not seq.text.stopped:
            text += seq.text.flush()
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        slot = self._slots[seq.slot]
        slot.seq = None
        self.running_count -= 1
        if reason == "error":  # the cache may be inconsistent; drop it
            self.runner.kv_remove(seq.slot, 0)
            slot.tokens = []
        if self._metrics:
            self._metrics.e2e.labels(self.runner.model_id).observe(time.monotonic() - seq.arrived)
        out.append((seq.req.request_id, self._output(seq, text, final_tokens or [], lps, reason, error)))

    def _output(self, seq: _Seq, text: str, toks: list[int], lps, reason, error=None) -> GenerationOutput:
        return GenerationOutput(
            text=text,
            token_ids=toks,
            logprobs=lps,
            prompt_tokens=len(seq.req.prompt_tokens),
            completion_tokens=seq.generated,
            cached_tokens=seq.cached,
            finish_reason=reason,
            error=error,
        )

    def _update_gauges(self) -> None:
        self.waiting_count = len(self._waiting)
        if self._metrics:
            m = self.runner.model_id
            self._metrics.running.labels(m).set(self.running_count)
            self._metrics.waiting.labels(m).set(self.waiting_count)
            # kv_cache_usage_perc costs a C call per slot: it is refreshed when /metrics is scraped.

    def kv_usage(self) -> float:
        cap = self.runner.kv_capacity()
        return self.runner.kv_cells_used() / cap if cap else 0.0
