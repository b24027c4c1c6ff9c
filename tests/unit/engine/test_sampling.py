"""NumpySampler against the distributions it must draw from."""

from __future__ import annotations

import numpy as np

from llmaas.engine.sampling import NumpySampler
from llmaas.engine.types import SamplingParams

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))


def draws(p: SamplingParams, n: int = 4000, seed: int = 0) -> np.ndarray:
    s = NumpySampler(lambda _: LOGITS, p, seed, eog_tokens=[3])
    return np.bincount([s.sample(0) for _ in range(n)], minlength=4) / n


def test_temperature_one_matches_softmax():
    freq = draws(SamplingParams(temperature=1.0))
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_p_keeps_smallest_set_reaching_mass():
    freq = draws(SamplingParams(temperature=1.0, top_p=0.75))
    assert freq[2] == 0 and freq[3] == 0  # 0.5 + 0.3 reaches 0.75
    assert abs(freq[0] - 0.5 / 0.8) < 0.03


def test_top_k_and_min_p():
    assert draws(SamplingParams(temperature=1.0, top_k=1))[0] == 1.0
    freq = draws(SamplingParams(temperature=1.0, min_p=0.5))  # keeps p >= 0.25
    assert freq[2] == 0 and freq[3] == 0


def test_greedy_bias_and_ignore_eos():
    assert draws(SamplingParams(temperature=0), n=5)[0] == 1.0
    assert draws(SamplingParams(temperature=0, logit_bias={3: 10.0}, ignore_eos=False), n=5)[3] == 1.0
    assert draws(SamplingParams(temperature=0, logit_bias={3: 10.0}, ignore_eos=True), n=5)[3] == 0.0


def test_seeded_draws_repeat_and_penalties_discourage_repeats():
    p = SamplingParams(temperature=1.0)
    assert (draws(p, 50, seed=3) == draws(p, 50, seed=3)).all()
    s = NumpySampler(lambda _: LOGITS, SamplingParams(temperature=0, presence_penalty=2.0), 0, [])
    assert [s.sample(0) for _ in range(3)] == [0, 1, 2]
