"""Continuous batching over a ModelRunner, on a thread of its own.

Each step builds one batch: one token for every decoding sequence, then prompt chunks of sequences
still prefilling, up to `max_batch_tokens` and to about `prefill_step_s` of estimated prefill time
(chunked prefill: a long prompt never stalls running streams for more than one bounded step). New
requests join at the next step; finished, stopped or aborted ones leave at once and their slot is
free for the next.

Prefill order is shortest-expected-finish with ageing: a prompt's key is its arrival time plus the
estimated time to prefill what is left of it. In a burst (16 requests at once) short prompts get
their first token first instead of all waiting for the longest; a long prompt is passed only by
prompts that arrived less than the difference of the two prefill times after it, so it is never
starved. The per-token cost is measured online (seeded by the runner's estimate), so on hardware
where prefill is cheap the order is first-come-first-served and the time cap does not bind.

A slot keeps its KV cache after its request ends, so a later prompt that starts with the same tokens
(same system prompt, next chat turn) reuses it; a prefix held by another slot is shared with
`kv_copy` instead of being prefilled again.

LoRA adapters apply to a whole llama_decode call, so a step decodes one batch per adapter in use
(the base model is a group of its own), each preceded by `set_adapter` and followed at once by the
sampling of its rows (the next decode overwrites the logits). The prefill budget spans all groups.
With one adapter (or none) in use a step stays a single decode. KV cache is reused only between
sequences of the same adapter: KV computed under another adapter is wrong for this one.

Batch lines (priority > 0, "background") run in the capacity interactive requests leave (the policy is
engine/priority.py). An interactive request that finds no free slot preempts a background sequence: it goes
back to the queue with its sampler and text state, and later re-enters the KV cache with its tokens so far
(reused in place when its slot was not overwritten; vLLM's recompute preemption), so it goes on exactly where
it stopped. While interactive sequences run, background ones keep their slots but sit out the steps.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from llmaas.core.errors import LlmaasError
from llmaas.engine.model_runner import ModelRunner, token_logprobs
from llmaas.engine.priority import Priority
from llmaas.engine.sampling import rng_seed
from llmaas.engine.slots import Batch, Seq, Slot, history, reusable
from llmaas.engine.text import TextAssembler
from llmaas.engine.types import GenerationOutput, GenerationRequest, TokenLogprob

log = logging.getLogger("llmaas.engine")

Emit = Callable[[list[tuple[str, GenerationOutput]]], None]
OnDeath = Callable[[BaseException], None]


@dataclass(eq=False)
class _Call:
    """A function to run on the scheduler thread between steps."""

    fn: Callable[..., Any]
    args: tuple
    future: Future


# Fewest prompt tokens a step prefills when any are waiting, whatever the time estimate says.
_MIN_PREFILL = 8
# A step updates the per-token cost estimate when prefill is most of it (one-token decodes of small batches
# cost more per token than prefill does).
_COST_EMA = 0.2

# Copying another slot's KV moves a whole KV stream (llama.cpp copies streams, not ranges), inside the next
# step, which every running sequence waits for: an 8-sequence step of SmolLM2 went 34.9 -> 41.2 ms after a
# 2048-cell copy here, against 57 ms to prefill 16 tokens (/tmp measurement, 2026-11-29). It is worth it when
# re-prefilling the tokens it saves would cost more; without a prefill cost estimate, from 16 tokens on.
# A slot's own KV counts for the slot choice from _MIN_COPY_GAIN tokens (or half the prompt) either way.
_MIN_COPY_GAIN = 16
_STREAM_COPY_S_PER_CELL = 3e-6  # SmolLM2 here; a larger model costs more per cell, and per prefilled token


class BatchScheduler:
    """Owns the runner; everything here runs on the scheduler thread except submit/abort."""

    def __init__(
        self, runner: ModelRunner, emit: Emit, metrics: object | None = None, *, prefill_step_s: float = 0.0,
        on_death: OnDeath | None = None,
    ) -> None:
        self.runner = runner
        self._on_death = on_death  # called on the scheduler thread if it ever ends other than by shutdown()
        self.prefill_step_s = prefill_step_s  # 0: no time cap, only max_batch_tokens
        self.s_per_token = 0.0  # prefill cost estimate: measured when the thread starts, refined by steps
        self._emit = emit
        self._metrics = metrics
        self._inbox: queue.SimpleQueue[GenerationRequest | _Call | None] = queue.SimpleQueue()
        self._aborts: set[str] = set()
        self._abort_lock = threading.Lock()
        self._waiting: deque[Seq] = deque()
        self._slots = [Slot() for _ in range(runner.n_slots)]
        self._thread: threading.Thread | None = None
        self._stop = False
        self.running_count = 0
        self.waiting_count = 0
        self.steps = 0
        self.decodes = 0
        self._adapter: str | None = None  # the adapter the runner was last set to
        self._admitted = 0
        self.preemptions = 0
        self._priority = Priority()
        self._eog = set(runner.eog_tokens())

    # -- called from other threads -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmaas-scheduler", daemon=True)
        self._thread.start()

    def submit(self, req: GenerationRequest) -> None:
        self._inbox.put(req)

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run fn(*args) on the scheduler thread between steps (inline when the thread is not running)."""
        fut: Future = Future()
        if self.alive:
            self._inbox.put(_Call(fn, args, fut))
        else:
            self._run_call(_Call(fn, args, fut))
        return fut

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
        try:
            self._run()
        except BaseException as e:  # a bug outside the per-request guards: the supervisor fails and restarts
            log.critical("the scheduler thread stopped", exc_info=True)
            if self._on_death is not None and not self._stop:
                self._on_death(e)

    def _run(self) -> None:
        if self.prefill_step_s:  # only the time cap needs an estimate before the first step is measured
            try:
                self.s_per_token = self.runner.prefill_cost()
            except Exception:  # serving works without it: no cap until a step is measured
                log.exception("measuring the prefill cost failed")
        while not self._stop:
            idle = not self._waiting and self.running_count == 0
            self._drain_inbox(0.5 if idle else self._priority.held_s(self._slots, self.running_count))
            if self._stop:
                break
            out: list[tuple[str, GenerationOutput]] = []
            try:
                self._handle_aborts(out)
                self._admit(out)
                self._step(out)
            except Exception as e:  # a step that fails fails the running sequences, never the thread
                log.exception("scheduler step failed")
                for slot in self._slots:
                    if slot.seq:
                        self._fail(slot.seq, e, out)
            if out:
                self._emit(out)
            self._update_gauges()

    def _drain_inbox(self, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
            while True:
                if isinstance(item, _Call):
                    self._run_call(item)
                elif item is not None:
                    self._waiting.append(Seq(item, time.monotonic()))
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    @staticmethod
    def _run_call(c: _Call) -> None:
        # Runs even if the caller gave up waiting (cancelled): the caller's state already assumes it ran.
        try:
            result, error = c.fn(*c.args), None
        except Exception as e:  # handed to the caller
            result, error = None, e
        try:
            if error is None:
                c.future.set_result(result)
            else:
                c.future.set_exception(error)
        except InvalidStateError:  # cancelled
            pass

    def drop_adapter(self, name: str) -> None:
        """Scheduler thread: forget the KV computed under adapter `name` and free it in the runner."""
        if any(s.req.adapter == name for s in self._waiting) or any(
            sl.seq is not None and sl.seq.req.adapter == name for sl in self._slots
        ):
            raise RuntimeError(f"adapter {name!r} is still in use")
        for i, slot in enumerate(self._slots):
            if slot.adapter == name:
                self.runner.kv_remove(i, 0)
                slot.tokens, slot.adapter = [], None
        if self._adapter == name:
            self._adapter = None
        self.runner.unload_adapter(name)

    def _handle_aborts(self, out: list) -> None:
        if not self._aborts:
            return
        with self._abort_lock:
            ids, self._aborts = self._aborts, set()
        for seq in [s for s in self._waiting if s.req.request_id in ids]:
            self._waiting.remove(seq)
            if seq.sampler is not None:  # a preempted sequence keeps its sampler while it waits
                seq.sampler.close()
            out.append((seq.req.request_id, self._output(seq, "", [], None, "abort")))
        for slot in self._slots:
            if slot.seq and slot.seq.req.request_id in ids:
                self._finish(slot.seq, "abort", out)

    def _admit(self, out: list) -> None:
        while self._waiting:
            free = [i for i, s in enumerate(self._slots) if s.seq is None]
            seq = self._next_waiting()
            if seq.background:
                choices = self._priority.background_slots(free)
            else:
                choices, victim = self._priority.interactive_slots(self._slots, free)
                if victim is not None:
                    choices = [self._preempt(victim)]
            if not choices:
                self._waiting.appendleft(seq)
                return
            try:
                self._place(seq, choices, out)
            except Exception as e:  # this request's own failure (its sampler, its grammar): it alone ends
                self._fail(seq, e, out)

    def _next_waiting(self) -> Seq:
        """The waiting request to admit next: the first of the lowest priority (interactive requests before
        batch lines), so arrival order is kept within a priority."""
        first = self._waiting[0]
        if first.req.priority == 0:  # the common case: no scan
            return self._waiting.popleft()
        seq = min(self._waiting, key=lambda s: s.req.priority)  # min() keeps the first of equals
        self._waiting.remove(seq)
        return seq

    def _preempt(self, seq: Seq) -> int:
        """Send background `seq` back to the head of the queue; returns the slot it frees. Its KV stays in
        the slot (reused if the slot is not taken over before it resumes)."""
        slot = self._slots[seq.slot]
        seq.resume = history(seq, slot)
        slot.seq, seq.pending = None, []
        self.running_count -= 1
        self.preemptions += 1
        if self._metrics:
            self._metrics.preemptions.labels(self.runner.model_id).inc()
        self._waiting.appendleft(seq)
        return seq.slot

    def _place(self, seq: Seq, free: list[int], out: list) -> None:
        """Give `seq` one of the `free` slots (reusing or copying cached KV) and its sampler."""
        prompt, adapter = seq.resume or seq.req.prompt_tokens, seq.req.adapter
        if adapter is not None and not self.runner.has_adapter(adapter):
            err = f"the LoRA adapter {adapter!r} is not loaded"
            out.append((seq.req.request_id, self._output(seq, "", [], None, "error", err)))
            return
        own = {i: reusable(self._slots[i], prompt, adapter) for i in free}
        # Own KV counts for the choice only when it is a real share of the prompt: a 3-token "What is
        # the" in common is not worth overwriting another prompt's cache (repeated prompts missed it).
        worth = {i: n if 2 * n >= len(prompt) or n >= _MIN_COPY_GAIN else 0 for i, n in own.items()}
        # The slot that widens the range of running slots least first: llama.cpp splits a step into one
        # ubatch per run of consecutive sequence ids and runs attention over the range of KV streams a
        # ubatch touches, so a running set with a gap costs an extra ubatch every step. Then the most
        # reusable KV (a prefix elsewhere is copied below when that saves enough); then an empty slot
        # (keeps other prompts' KV for reuse); then the least recently used; then the lowest.
        busy = [i for i, s in enumerate(self._slots) if s.seq is not None]
        lo, hi = (min(busy), max(busy)) if busy else (0, len(self._slots))
        slot_id = max(free, key=lambda i, lo=lo, hi=hi: (
            -(max(0, i - hi) + max(0, lo - i)), worth[i], not self._slots[i].tokens,
            -self._slots[i].used_at, -i))
        free.remove(slot_id)
        reuse = own[slot_id]
        src, src_len = -1, reuse + self._min_copy_gain() - 1
        for i, s in enumerate(self._slots):
            if i != slot_id and s.tokens:
                n = reusable(s, prompt, adapter)
                if n > src_len:
                    src, src_len = i, n
        slot = self._slots[slot_id]
        self._admitted += 1
        slot.used_at = self._admitted
        slot.tokens, slot.adapter = [], None  # until the KV edits below have succeeded
        if src >= 0:
            self.runner.kv_remove(slot_id, 0)
            self.runner.kv_copy(src, slot_id, src_len)
            reuse = src_len
        else:
            self.runner.kv_remove(slot_id, reuse)
        slot.tokens, slot.adapter = prompt[:reuse], adapter
        slot.seq = seq
        self.running_count += 1
        seq.slot, seq.n_past, seq.pending = slot_id, reuse, prompt[reuse:]
        if seq.resume is not None:  # preempted: its sampler, text and counts go on where they stopped
            seq.resume = None
            return
        seq.cached = reuse
        p = seq.req.params
        seed = rng_seed(p.seed) if p.seed is not None else random.getrandbits(64)
        seq.sampler = self.runner.new_sampler(p, seed)
        seq.text = TextAssembler(p.stop)
        if self._metrics:
            self._metrics.prompt_tokens.labels(self.runner.model_id).inc(len(prompt))

    def _step(self, out: list) -> None:
        room = self.runner.max_batch_tokens
        active = self._priority.stepping([s.seq for s in self._slots if s.seq is not None])
        entries: list[tuple[Seq, list[int], bool]] = []
        for seq in active:  # decoding sequences first: one token each
            if not seq.pending:
                entries.append((seq, [seq.last_token], True))
        n_decode = len(entries)
        budget = min(room - n_decode, self._prefill_budget())
        n_prefill = 0
        # Interactive prompts prefill before batch lines' (lower priority value first), then by _prefill_key.
        for seq in sorted((s for s in active if s.pending), key=lambda s: (s.req.priority, self._prefill_key(s))):
            if budget <= 0:
                break
            chunk = seq.pending[:budget]
            entries.append((seq, chunk, len(chunk) == len(seq.pending)))
            budget -= len(chunk)
            n_prefill += len(chunk)
        if not entries:
            return
        self.steps += 1
        # Slot order: over one-stream-per-sequence KV, llama.cpp splits a batch into ubatches of consecutive
        # sequence ids with equal token counts, so tokens in slot order make fewer, larger ubatches (13
        # decodes + 3 prompts: 222 ms against 245 ms with the prompts last).
        groups: dict[str | None, Batch] = {}  # adapter -> its decode call
        for seq, toks, sample in sorted(entries, key=lambda e: e[0].slot):
            groups.setdefault(seq.req.adapter, Batch()).add(seq, toks, sample)
        t0 = time.perf_counter()
        # The adapter already set goes first: one switch fewer (each costs llama.cpp a graph re-reserve).
        for adapter in sorted(groups, key=lambda a: a != self._adapter):
            self._decode_group(adapter, groups[adapter], out)
        if n_prefill >= max(_MIN_PREFILL, n_decode):
            sample = (time.perf_counter() - t0) / (n_prefill + n_decode)
            self.s_per_token += _COST_EMA * (sample - self.s_per_token) if self.s_per_token else sample

    def _min_copy_gain(self) -> int:
        """Fewest prompt tokens a KV copy from another slot must save."""
        if self.s_per_token <= 0:
            return _MIN_COPY_GAIN
        copy_s = self.runner.context_size * _STREAM_COPY_S_PER_CELL
        return max(2, min(_MIN_COPY_GAIN, math.ceil(copy_s / self.s_per_token)))

    def _prefill_key(self, seq: Seq) -> float:
        """Expected finish of its prefill had it started on arrival: shortest first, with ageing."""
        return seq.arrived + len(seq.pending) * self.s_per_token

    def _prefill_budget(self) -> int:
        if not self.prefill_step_s or self.s_per_token <= 0:
            return self.runner.max_batch_tokens
        return max(_MIN_PREFILL, int(self.prefill_step_s / self.s_per_token))

    def _decode_group(self, adapter: str | None, b: Batch, out: list) -> None:
        try:
            self.runner.set_adapter(adapter)
            self._adapter = adapter
            self.runner.decode(b.tokens, b.positions, b.seq_ids, b.want)
        except Exception as e:  # fails this group's sequences only
            log.exception("decode failed (adapter %s)", adapter)
            self._adapter = None  # unknown state: set it again next time
            for seq, _ in b.fed:
                self._finish(seq, "error", out, error=f"engine error: {e}")
            return
        self.decodes += 1
        for seq, toks in b.fed:  # book-keeping of what entered the KV cache
            self._slots[seq.slot].tokens.extend(toks)
            seq.n_past += len(toks)
            if seq.pending:
                seq.pending = seq.pending[len(toks):]
        now = time.monotonic()
        for seq, idx in b.samplers:  # now, before the next group's decode replaces the logits
            try:
                self._sample(seq, idx, now, out)
            except Exception as e:  # a sampler fault ends its own sequence only
                self._fail(seq, e, out)

    def _fail(self, seq: Seq, e: Exception, out: list) -> None:
        """End `seq` with an error: the request's own (an LlmaasError, passed to its client as is) or an
        engine fault (logged, reported as an engine error)."""
        own = isinstance(e, LlmaasError)
        if own:
            log.info("request %s failed: %s", seq.req.request_id, e)
        else:
            log.exception("request %s failed in the engine", seq.req.request_id, exc_info=e)
        error = str(e) if own else f"engine error: {e}"
        exc = e if own else None
        if 0 <= seq.slot < len(self._slots) and self._slots[seq.slot].seq is seq:
            self._finish(seq, "error", out, error=error, exc=exc)
        else:
            out.append((seq.req.request_id, self._output(seq, "", [], None, "error", error, exc)))

    def _sample(self, seq: Seq, idx: int, now: float, out: list) -> None:
        p = seq.req.params
        assert seq.sampler is not None and seq.text is not None
        token = seq.sampler.sample(idx)
        seq.generated += 1
        model = self.runner.model_id
        if self._metrics and not seq.background:  # latency metrics are interactive requests'
            if seq.generated == 1:
                self._metrics.ttft.labels(model).observe(now - seq.arrived)
            else:
                self._metrics.itl.labels(model).observe(now - seq.last_token_at)
        if self._metrics:
            self._metrics.generation_tokens.labels(model).inc()
        seq.last_token_at = now
        seq.last_token = token
        if token in self._eog and not p.ignore_eos:
            self._finish(seq, "stop", out, final_tokens=[token])
            return
        lp = token_logprobs(self.runner, idx, token, p.logprobs) if p.logprobs is not None else None
        text = seq.text.push(self.runner.token_bytes(token))
        if seq.text.stopped:
            self._finish(seq, "stop", out, text=text, final_tokens=[token], lps=lp)
        elif seq.generated >= p.max_tokens or seq.n_past + 1 >= self.runner.context_size:
            self._finish(seq, "length", out, text=text, final_tokens=[token], lps=lp)
        else:
            out.append((seq.req.request_id, self._output(seq, text, [token], lp, None)))

    def _finish(
        self,
        seq: Seq,
        reason: str,
        out: list,
        text: str = "",
        final_tokens: list[int] | None = None,
        lps: list[TokenLogprob] | None = None,
        error: str | None = None,
        exc: Exception | None = None,
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
            slot.tokens, slot.adapter = [], None
        if self._metrics:
            self._metrics.e2e.labels(self.runner.model_id).observe(time.monotonic() - seq.arrived)
        out.append((seq.req.request_id, self._output(seq, text, final_tokens or [], lps, reason, error, exc)))

    def _output(self, seq: Seq, text: str, toks: list[int], lps, reason, error=None, exc=None) -> GenerationOutput:
        return GenerationOutput(
            text=text,
            token_ids=toks,
            logprobs=lps,
            prompt_tokens=len(seq.req.prompt_tokens),
            completion_tokens=seq.generated,
            cached_tokens=seq.cached,
            finish_reason=reason,
            error=error,
            exc=exc,
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
