"""Incremental detokenization with stop strings: bytes → UTF-8 text, holding back what might still
become a stop string so that a stop string is never emitted."""

from __future__ import annotations

import codecs


class TextAssembler:
    def __init__(self, stop: list[str]) -> None:
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded, not yet emitted
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; return text now safe to emit. Sets `stopped` on a stop string."""
        self._pending += self._decoder.decode(piece)
        if self._stop:
            cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                out, self._pending = self._pending[:cut], ""
                return out
            if self._hold:
                safe = len(self._pending) - self._hold
                # Emit only what cannot be the start of a stop string.
                for i in range(max(safe, 0), len(self._pending)):
                    tail = self._pending[i:]
                    if any(s.startswith(tail) for s in self._stop):
                        safe = i
                        break
                else:
                    safe = len(self._pending)
                out, self._pending = self._pending[:safe], self._pending[safe:]
                return out
        out, self._pending = self._pending, ""
        return out

    def flush(self) -> str:
        """End of sequence: whatever is held back is final text."""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out
