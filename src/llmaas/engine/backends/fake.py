"""A deterministic fake model for unit tests of the API layer and the scheduler. Never used to
demonstrate an acceptance item: it has no weights and produces no language.

Vocabulary: 256 byte tokens + EOS (256). Logits peak on the byte after the previous one, cycling
through 'a'..'z', so a greedy completion reads "abcdefg..."; `eos_after` ends a sequence early.

LoRA adapters: an adapter file holds a shift (`shift=3` or `3`); under it the logits peak `1 + shift`
letters on instead ("adgj..."). Each KV cell remembers the adapter it was computed under, and a decode
that attends to cells of another adapter raises: KV reuse across adapters is a bug the tests must see.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from llmaas.core.errors import EngineError
from llmaas.engine.sampling import GREEDY_BELOW
from llmaas.engine.scoring import ScoreItem, score_one_by_one
from llmaas.engine.types import GENERATIVE, SamplingParams

EOS = 256
_ALPHA = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


class _FakeSampler:
    def __init__(self, runner: FakeRunner, p: SamplingParams, seed: int) -> None:
        self._r, self._p = runner, p
        self._rng = np.random.default_rng(seed % (1 << 64))

    def sample(self, batch_index: int) -> int:
        logits = self._r.logits(batch_index).copy()
        for t, b in self._p.logit_bias.items():
            logits[t] += b
        if self._p.ignore_eos:
            logits[EOS] = -np.inf
        if self._p.temperature < GREEDY_BELOW:
            return int(logits.argmax())
        z = logits / self._p.temperature
        prob = np.exp(z - z.max())
        return int(self._rng.choice(len(prob), p=prob / prob.sum()))

    def close(self) -> None:
        pass


class FakeRunner:
    model_id = "fake-model"

    def __init__(
        self,
        *,
        n_slots: int = 4,
        context_size: int = 256,
        max_batch_tokens: int = 64,
        eos_after: int = 0,
        fail_at_decode: int = 0,
        s_per_token: float = 0.0,
        prefill_s_per_token: float | None = None,
        capabilities: tuple[str, ...] = GENERATIVE,
    ) -> None:
        self.n_vocab = 257
        self.capabilities = capabilities  # EMBEDDINGS_ONLY stands in for an encoder such as BERT
        self.n_slots, self.context_size, self.max_batch_tokens = n_slots, context_size, max_batch_tokens
        self.eos_after = eos_after
        self.fail_at_decode = fail_at_decode  # raise on that decode call (1-based), to test error paths
        self.s_per_token = s_per_token  # simulated compute: a decode sleeps this per token
        self._prefill_cost = s_per_token if prefill_s_per_token is None else prefill_s_per_token
        self._kv: dict[int, list[tuple[int, str | None]]] = {i: [] for i in range(n_slots)}  # (token, adapter)
        self._last: list[np.ndarray] = []
        self.decode_calls: list[int] = []  # batch sizes, for scheduler tests
        self.decode_adapters: list[str | None] = []  # the adapter of each decode call
        self.decode_seq_ids: list[list[int]] = []  # the sequences of each decode call
        self._adapters: dict[str, int] = {}  # name -> shift
        self._adapter: str | None = None
        self.adapter_loads: list[str] = []

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return list(text.encode("utf-8"))

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOS else bytes([token])

    def eog_tokens(self) -> list[int]:
        return [EOS]

    def bos_token(self) -> int | None:
        return None

    def chat_template(self) -> str | None:
        return None

    def special_token_text(self, name: str) -> str:
        return ""

    # -- adapters ------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        try:
            shift = int(Path(path).read_text().strip().removeprefix("shift="))
        except (OSError, ValueError) as e:
            raise EngineError(f"could not load the LoRA adapter {path}: {e}") from e
        self._adapters[name] = shift
        self.adapter_loads.append(name)

    def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)
        if self._adapter == name:
            self._adapter = None

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def set_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            raise EngineError(f"adapter {name!r} is not loaded")
        self._adapter = name

    def _shift(self, adapter: str | None) -> int:
        return self._adapters[adapter] if adapter is not None else 0

    # -- forward -------------------------------------------------------------------------------
    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], logits: list[bool]) -> None:
        self.decode_calls.append(len(tokens))
        self.decode_adapters.append(self._adapter)
        self.decode_seq_ids.append(sorted(set(seq_ids)))
        if self.fail_at_decode and len(self.decode_calls) == self.fail_at_decode:
            raise RuntimeError("simulated decode failure")
        if self.s_per_token:
            time.sleep(self.s_per_token * len(tokens))
        self._last = []
        step = 1 + self._shift(self._adapter)
        for t, pos, sid, want in zip(tokens, positions, seq_ids, logits, strict=True):
            kv = self._kv[sid]
            if pos != len(kv):
                raise RuntimeError(f"fake KV out of order: seq {sid} has {len(kv)} cells, got pos {pos}")
            if kv and kv[0][1] != self._adapter:  # every append checks, so one cell speaks for all
                raise RuntimeError(f"fake KV of seq {sid} was computed under another adapter")
            kv.append((t, self._adapter))
            row = np.full(self.n_vocab, -10.0, dtype=np.float32)
            if want:
                nxt = _ALPHA[(int(t) + step - 97) % 26] if 97 <= t <= 122 else 97
                row[nxt] = 10.0
                row[(nxt - 97 + 1) % 26 + 97] = 8.0
                if self.eos_after and pos + 1 >= self.eos_after:
                    row[EOS] = 20.0
            self._last.append(row)

    def prefill_cost(self) -> float:
        return self._prefill_cost  # what a real runner would measure; tests set it wrong on purpose

    def logits(self, batch_index: int) -> np.ndarray:
        return self._last[batch_index]

    def new_sampler(self, params: SamplingParams, seed: int) -> _FakeSampler:
        return _FakeSampler(self, params, seed)

    def kv_remove(self, seq_id: int, from_pos: int) -> None:
        del self._kv[seq_id][from_pos:]

    def kv_copy(self, src: int, dst: int, n_tokens: int) -> None:
        self._kv[dst] = self._kv[src][:n_tokens]

    def kv_cells_used(self) -> int:
        return sum(len(v) for v in self._kv.values())

    def kv_capacity(self) -> int:
        return self.context_size * self.n_slots

    def embed(self, tokens: list[int], adapter: str | None = None) -> list[float]:
        v = np.bincount((np.array(tokens) + self._shift(adapter)) % 16, minlength=16).astype(np.float64)
        return (v / (np.linalg.norm(v) or 1.0)).tolist()

    def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        return [-1.0 - self._shift(adapter) for _ in tokens[max(start, 1):]]

    def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                   shared: list[int] | None = None) -> list[list[list[float]]]:
        return score_one_by_one(lambda toks, start: self.score(toks, start, adapter), items)

    def close(self) -> None:
        pass
