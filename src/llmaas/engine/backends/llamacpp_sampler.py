"""A per-sequence llama.cpp sampler chain: what requests with a grammar (response_format) sample with, since
llama.cpp owns the grammar's state. Other requests sample in numpy (engine/sampling.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmaas.core.errors import InvalidRequestError
from llmaas.engine.sampling import GREEDY_BELOW
from llmaas.engine.types import SamplingParams

if TYPE_CHECKING:
    from llmaas.engine.backends.llamacpp import LlamaCppRunner


def seed32(seed: int) -> int:
    """llama.cpp's samplers take a uint32 seed, and 0xFFFFFFFF (LLAMA_DEFAULT_SEED) means "random": fold
    the 64 bits in (small seeds map to themselves) and keep clear of that value."""
    s = seed % (1 << 64)
    s = (s ^ (s >> 32)) & 0xFFFFFFFF
    return s if s != 0xFFFFFFFF else 0xFFFFFFFE


class LlamaSampler:
    """A per-sequence llama.cpp sampler chain, for requests with a grammar (response_format)."""

    def __init__(self, runner: LlamaCppRunner, p: SamplingParams, seed: int) -> None:
        L = runner.L
        self._L, self._ctx = L, runner.ctx
        self._chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        try:
            self._build(runner, p, seed)
        except BaseException:
            self.close()  # a sampler that fails to build must not leak its chain
            raise

    def _build(self, runner: LlamaCppRunner, p: SamplingParams, seed: int) -> None:
        L = runner.L
        add = lambda s: L.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        bias = dict(p.logit_bias)
        if p.ignore_eos:
            for t in runner.eog_tokens():
                bias[t] = -float("inf")
        if bias:
            arr = (L.llama_logit_bias * len(bias))(*[L.llama_logit_bias(t, b) for t, b in bias.items()])
            add(L.llama_sampler_init_logit_bias(runner.n_vocab, len(bias), arr))
        if p.grammar:
            g = L.llama_sampler_init_grammar(runner.vocab, p.grammar.encode(), b"root")
            if not g:
                raise InvalidRequestError("the grammar for response_format could not be built",
                                          param="response_format")
            add(g)
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            # llama-cpp-python 0.3.36 declares a stale leading `n_vocab` argument that the C function no
            # longer has; by the x86-64 / AArch64 calling conventions the C side reads the first int as its
            # penalty_last_n (the window: the whole context) and ignores the second.
            add(L.llama_sampler_init_penalties(
                runner.context_size, 0, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
            ))
        if p.temperature < GREEDY_BELOW:
            add(L.llama_sampler_init_greedy())
            return
        add(L.llama_sampler_init_temp(p.temperature))  # same order as NumpySampler
        if p.top_k > 0:
            add(L.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(L.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0:
            add(L.llama_sampler_init_min_p(p.min_p, 1))
        add(L.llama_sampler_init_dist(seed32(seed)))

    def sample(self, batch_index: int) -> int:
        return int(self._L.llama_sampler_sample(self._chain, self._ctx, batch_index))

    def close(self) -> None:
        if self._chain:
            self._L.llama_sampler_free(self._chain)
            self._chain = None
