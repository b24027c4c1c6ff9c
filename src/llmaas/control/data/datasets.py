"""Validation of fine-tuning files in OpenAI's chat format (core.chat_jsonl), line by line, streaming.

Every line needs at least one assistant message with content. Errors name the line number and the
problem, as OpenAI's validator does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llmaas.core.chat_jsonl import check_example, content_text, parse_line

MAX_ERRORS = 20


@dataclass
class ValidationReport:
    examples: int = 0
    messages: int = 0
    chars: int = 0
    errors: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and self.examples > 0

    def summary(self) -> str:
        if self.ok:
            return f"{self.examples} examples"
        if not self.errors:
            return "The file contains no examples."
        more = " (and more)" if self.truncated else ""
        return f"{len(self.errors)} problem(s){more}: " + "; ".join(self.errors)


class ChatFileValidator:
    """Feed it the file's bytes in any chunking; `report` holds the result after `close()`."""

    def __init__(self) -> None:
        self.report = ValidationReport()
        self._buf = b""
        self._line = 0

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self._check_line(raw)

    def close(self) -> ValidationReport:
        if self._buf:
            self._check_line(self._buf)
            self._buf = b""
        return self.report

    def _check_line(self, raw: bytes) -> None:
        self._line += 1
        if not raw.strip():
            return
        r = self.report
        try:
            obj = parse_line(raw)
        except ValueError as e:
            problem = f"invalid JSON ({e})"
        else:
            problem = check_example(obj)
        if problem:
            if len(r.errors) < MAX_ERRORS:
                r.errors.append(f"line {self._line}: {problem}")
            else:
                r.truncated = True
            return
        r.examples += 1
        r.messages += len(obj["messages"])
        r.chars += sum(len(content_text(m["content"]) or "") for m in obj["messages"])


def validate_chat_lines(chunks: Iterable[bytes]) -> ValidationReport:
    v = ChatFileValidator()
    for c in chunks:
        v.feed(c)
    return v.close()
