"""Interactive requests before batch lines, in the scheduler's slots and steps (see engine/scheduler.py).

Batch lines ("background" sequences, priority > 0) run in the capacity interactive requests leave:

- an interactive request takes a free slot next to the running interactive ones, or else preempts the background
  sequence in the best-placed slot (the cheapest to recompute among equals). llama.cpp decodes a run of
  consecutive slots as one ubatch, so interactive sequences scattered between paused batch lines would cost an
  extra ubatch per gap, every step;
- while an interactive sequence runs, and for `GRACE_S` after the last one, background sequences sit out the
  steps (keeping their slots and KV) and none is admitted, so a step costs what the interactive sequences alone
  cost and the next interactive request (a client's next call, an agent's next turn) finds no background step
  to wait out;
- once every `EVERY_S` the background sequences join a step anyway, so a batch still moves on a server that
  interactive traffic never leaves idle.
"""

from __future__ import annotations

import time

from llmaas.engine.slots import Seq, Slot, victims

EVERY_S = 1.0  # the longest background sequences wait for a step while interactive ones run
GRACE_S = 0.25  # how long after the last interactive sequence they keep waiting


class Priority:
    def __init__(self) -> None:
        self.background_at = 0.0  # when background sequences last took part in a step
        self.interactive_at = 0.0  # when interactive ones last did, or one was admitted

    def holding(self, now: float) -> bool:
        return now - self.interactive_at < GRACE_S

    def background_slots(self, free: list[int]) -> list[int]:
        """The slots a background sequence may take: none while holding (it would only sit out the steps,
        and be preempted again by the next interactive request)."""
        return [] if self.holding(time.monotonic()) else free

    def interactive_slots(self, slots: list[Slot], free: list[int]) -> tuple[list[int], Seq | None]:
        """The free slots an interactive request may take, or ([], the background sequence to preempt for
        its slot); ([], None) if every slot is interactive."""
        self.interactive_at = time.monotonic()
        mine = [i for i, s in enumerate(slots) if s.seq is not None and not s.seq.background]
        taken = victims(slots)
        if not mine:
            return (free, None) if free or not taken else ([], taken[0])
        lo, hi = min(mine), max(mine)

        def gap(i: int) -> int:
            return max(0, i - hi) + max(0, lo - i)

        best = min([gap(i) for i in free] + [gap(q.slot) for q in taken], default=None)
        near = [i for i in free if gap(i) == best]
        if near or best is None:
            return near, None
        return [], next(q for q in taken if gap(q.slot) == best)

    def stepping(self, active: list[Seq]) -> list[Seq]:
        """The sequences of the next step: all, except background ones while holding (but for one step
        every EVERY_S)."""
        background = [s for s in active if s.background]
        now = time.monotonic()
        if len(background) < len(active):
            self.interactive_at = now
        if not background:
            return active
        if self.holding(now) and now - self.background_at < EVERY_S:
            return [s for s in active if not s.background]
        self.background_at = now
        return active

    def held_s(self, slots: list[Slot], running: int) -> float:
        """How long the scheduler may sleep before its next step: while only background sequences hold slots
        or wait, the rest of the grace after the last interactive one (0: a step is due now)."""
        now = time.monotonic()
        if not self.holding(now) or any(s.seq is not None and not s.seq.background for s in slots):
            return 0.0
        left = GRACE_S - (now - self.interactive_at)
        return min(left, EVERY_S - (now - self.background_at)) if running else left
