"""Evaluating one model on the rows of a task, through the serving engine (llama.cpp, the same GGUF
weights and LoRA adapter files production requests use), in batches the caller persists as they finish.

Classification scores every label as the assistant's answer in one batched engine call per batch of
rows (the prompt decoded once per row, shared by its labels). Generation decodes greedily on the
continuous-batching scheduler, all rows of a batch at once, then scores the references. Loss scores
each assistant turn given the conversation before it."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llmaas.engine.client import EngineClient
from llmaas.engine.scoring import ScoreItem, common_prefix
from llmaas.engine.types import GenerationRequest, SamplingParams
from llmaas.evals import metrics
from llmaas.evals.tasks import Row, TaskError, Tokens

OnBatch = Callable[[list[tuple[int, dict]], int, int], Awaitable[None]]  # items, prompt tokens, generated tokens


@dataclass
class ModelRun:
    engine: EngineClient
    adapter: str | None
    task: dict
    labels: list[str]
    batch_rows: int
    shared: list[int] | None = None  # prompt tokens the eval's rows share (see shared_prompt)

    def _tokens(self) -> Tokens:
        return Tokens(self.engine.tokenize_chat, set(self.engine.eog_tokens()))

    def _too_long(self, n: int) -> dict | None:
        ctx = self.engine.info.context_size
        return {"error": f"the row needs {n} tokens; the model's context is {ctx}"} if n > ctx else None

    async def run(self, rows: list[Row], on_batch: OnBatch, should_stop: Callable[[], bool]) -> bool:
        """Evaluate `rows` (those not done yet), calling `on_batch` after each batch. False if stopped."""
        step = {"classification": self._classify, "generation": self._generate, "loss": self._loss}[self.task["type"]]
        toks = self._tokens()
        for start in range(0, len(rows), self.batch_rows):
            if should_stop():
                return False
            batch = rows[start: start + self.batch_rows]
            results, prompt_tokens, generated = await step(toks, batch)
            await on_batch(results, prompt_tokens, generated)
        return True

    # -- classification ------------------------------------------------------------------------
    async def _classify(self, toks: Tokens, rows: list[Row]) -> tuple[list[tuple[int, dict]], int, int]:
        items, kept, out = [], [], []
        for r in rows:
            prefix = toks.prompt(r.prompt)
            conts = [toks.answer(r.prompt, label, prefix) for label in self.labels]
            err = self._too_long(len(prefix) + max(map(len, conts)))
            if err:
                out.append((r.idx, {"input": r.preview(), "label": r.answer, **err}))
                continue
            items.append(ScoreItem(prefix, conts))
            kept.append(r)
        scores = await self.engine.score_many(items, self.adapter, self.shared) if items else []
        mean = self.task.get("normalization") == "mean"
        for r, per_label in zip(kept, scores, strict=True):
            sums = [sum(lp) for lp in per_label]
            ll = [s / max(1, len(lp)) for s, lp in zip(sums, per_label, strict=True)] if mean else sums
            m = max(ll)
            z = [math.exp(v - m) for v in ll]
            probs = [v / sum(z) for v in z]
            best = max(range(len(ll)), key=ll.__getitem__)
            gold = self.labels.index(r.answer) if r.answer in self.labels else None
            out.append((r.idx, {
                "input": r.preview(), "label": r.answer, "prediction": self.labels[best],
                "correct": best == gold, "probabilities": dict(zip(self.labels, probs, strict=True)),
                "log_likelihoods": dict(zip(self.labels, sums, strict=True)),
                "gold_nll": -sums[gold] if gold is not None else None,
                "gold_tokens": len(per_label[gold]) if gold is not None else None}))
        return out, sum(it.n_tokens for it in items), 0

    # -- generation ----------------------------------------------------------------------------
    async def _generate(self, toks: Tokens, rows: list[Row]) -> tuple[list[tuple[int, dict]], int, int]:
        max_tokens = int(self.task.get("max_tokens") or 256)
        prompts = [toks.prompt(r.prompt) for r in rows]
        refs = [toks.answer(r.prompt, r.answer or "", p) for r, p in zip(rows, prompts, strict=True)]

        async def one(p: list[int]) -> tuple[str, str | None, int]:
            params = SamplingParams(max_tokens=min(max_tokens, self.engine.info.context_size - len(p)),
                                    temperature=0.0, seed=0)
            text, finish, n = "", None, 0
            async for o in self.engine.generate(GenerationRequest(uuid.uuid4().hex, p, params, self.adapter)):
                text += o.text
                if o.finished:
                    finish, n = o.finish_reason, o.completion_tokens
            return text, finish, n

        ok = [i for i, (p, ref) in enumerate(zip(prompts, refs, strict=True))
              if not self._too_long(len(p) + max(len(ref), 1))]
        gens = await asyncio.gather(*(one(prompts[i]) for i in ok))
        scores = await self.engine.score_many([ScoreItem(prompts[i], [refs[i]]) for i in ok], self.adapter,
                                              self.shared)
        out = [(r.idx, {"input": r.preview(), "reference": r.answer,
                        **(self._too_long(len(prompts[i]) + len(refs[i])) or {})})
               for i, r in enumerate(rows) if i not in ok]
        for i, (text, finish, _), sc in zip(ok, gens, scores, strict=True):
            r, pred = rows[i], text.strip()
            out.append((r.idx, {"input": r.preview(), "reference": r.answer, "prediction": pred,
                                "finish_reason": finish, "exact_match": metrics.exact_match(pred, r.answer or ""),
                                "token_f1": metrics.token_f1(pred, r.answer or ""),
                                "ref_nll": -sum(sc[0]), "ref_tokens": len(sc[0])}))
        out.sort(key=lambda x: x[0])
        return out, sum(len(prompts[i]) + len(refs[i]) for i in ok), sum(g[2] for g in gens)

    # -- loss ----------------------------------------------------------------------------------
    async def _loss(self, toks: Tokens, rows: list[Row]) -> tuple[list[tuple[int, dict]], int, int]:
        items, owner, out = [], [], {}
        for r in rows:
            conv = r.prompt
            turn_items = []
            for t in r.turns:
                prefix = toks.prompt(t)
                answer = conv[len(t)].content
                turn_items.append(ScoreItem(prefix, [toks.answer(t, answer, prefix)]))
            err = self._too_long(max(it.n_tokens for it in turn_items))
            if err:
                out[r.idx] = {"input": r.preview(), **err}
                continue
            items += turn_items
            owner += [r] * len(turn_items)
        scores = await self.engine.score_many(items, self.adapter, self.shared) if items else []
        for r, sc in zip(owner, scores, strict=True):
            d = out.setdefault(r.idx, {"input": r.preview(), "nll": 0.0, "tokens": 0})
            d["nll"] -= sum(sc[0])
            d["tokens"] += len(sc[0])
        for d in out.values():
            if "tokens" in d:
                d["loss"] = d["nll"] / max(1, d["tokens"])
        return sorted(out.items(), key=lambda x: x[0]), sum(it.n_tokens for it in items), 0


def shared_prompt(engine: EngineClient, rows: list[Row], n: int = 64) -> list[int]:
    """The prompt tokens the eval's first `n` rows share (system prompt, template instructions): computed
    once per eval, from the file, so each row is scored the same way however rows are batched or resumed."""
    return common_prefix([engine.tokenize_chat(r.prompt) for r in rows[:n]])


def summarize(task: dict, labels: list[str], items: list[dict]) -> dict:
    """Metrics of one model from its stored per-row results (rows that errored are counted, not scored)."""
    ok = [d for d in items if "error" not in d]
    skipped = len(items) - len(ok)
    if not ok:
        raise TaskError(f"no row could be evaluated ({skipped} failed: {items[0].get('error') if items else ''})")
    kind = task["type"]
    if kind == "classification":
        m = metrics.classification_metrics(
            [d["label"] for d in ok], [d["prediction"] for d in ok], labels,
            [[d["probabilities"][lb] for lb in labels] for d in ok], [d["gold_nll"] for d in ok])
    elif kind == "generation":
        m = metrics.generation_metrics([d["prediction"] for d in ok], [d["reference"] or "" for d in ok],
                                       [d["ref_nll"] for d in ok], [d["ref_tokens"] for d in ok])
    else:
        m = metrics.loss_metrics([d["nll"] for d in ok], [d["tokens"] for d in ok])
    return {**m, "rows_skipped": skipped}
