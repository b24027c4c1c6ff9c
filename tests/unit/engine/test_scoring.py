"""Planning of batched scoring: packing items into decodes, the two-phase batch layout (prefixes once,
then each continuation on its own KV stream after a copy of its prefix), and the fake runner's scores.
The real engine's batch invariance is checked in tests/integration/test_evals_live.py."""

from __future__ import annotations

from llmaas.engine.backends.fake import FakeRunner
from llmaas.engine.scoring import SCORE_SEQ_TOKENS, SCORE_SEQS, ScoreItem, fill_continuations, fill_prefixes, pack


class Batch:
    def __init__(self, n: int) -> None:
        self.token, self.pos, self.n_seq_id, self.logits = [0] * n, [0] * n, [0] * n, [False] * n
        self.seq_id = [[-1] for _ in range(n)]
        self.n_tokens = 0

    def rows(self) -> list[tuple[int, int, int, bool]]:
        return [(self.token[i], self.pos[i], self.seq_id[i][0], self.logits[i]) for i in range(self.n_tokens)]


def test_two_phase_layout():
    group = [ScoreItem([1, 2, 3], [[10, 11], [20]]), ScoreItem([4], [[], [30, 31, 32]])]
    b = Batch(32)
    plan = fill_prefixes(b, group)
    # prefixes on the stream of their first continuation, logits at their last token only
    assert b.rows() == [(1, 0, 0, False), (2, 1, 0, False), (3, 2, 0, True), (4, 0, 2, True)]
    assert plan.first == [2, 3] and plan.copies == [(0, 1)]
    assert plan.streams == {(0, 0): 0, (0, 1): 1, (1, 1): 2}
    assert fill_continuations(b, group, plan) == 3
    # every continuation token but the last, each on its stream, positions after its prefix
    assert b.rows() == [(10, 3, 0, True), (30, 1, 2, True), (31, 2, 2, True)]
    assert plan.rest == {(0, 0): [0], (0, 1): [], (1, 1): [1, 2]}


def test_packing_respects_streams_and_tokens():
    items = [ScoreItem([1] * 10, [[2], [3]]) for _ in range(10)]
    idx = list(range(10))
    assert list(pack(items, idx, 64, 36)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert list(pack(items, idx, 4, 1000)) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert list(pack(items, [3, 7], 4, 1000)) == [[3, 7]]


def test_what_fits_a_stream():
    assert ScoreItem([1] * 10, [[2], [3]]).fits()
    assert not ScoreItem([1] * SCORE_SEQ_TOKENS, [[2]]).fits()
    assert not ScoreItem([1], [[2]] * (SCORE_SEQS + 1)).fits()
    assert not ScoreItem([], [[2]]).fits()


def test_fake_runner_score_many_matches_score():
    r = FakeRunner()
    items = [ScoreItem(list(b"abc"), [list(b"de"), list(b"x"), []])]
    assert r.score_many(items) == [[r.score(list(b"abcde"), 3), r.score(list(b"abcx"), 3), []]]
