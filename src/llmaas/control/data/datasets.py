"""Validation of fine-tuning files in OpenAI's chat format, line by line, streaming.

Each line: {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]} with at
least one assistant message with content; an assistant message may carry "weight": 0 or 1 (0 = not
trained on). Errors name the line number and the problem, as OpenAI's validator does."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

ROLES = ("system", "developer", "user", "assistant")
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


def _text(content: object) -> str | None:
    """Message content as text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def check_example(obj: object) -> str | None:
    """The problem with one parsed line, or None."""
    if not isinstance(obj, dict):
        return "expected a JSON object"
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "missing 'messages' (a non-empty list)"
    has_assistant = False
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        role = m.get("role")
        if role not in ROLES:
            return f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}"
        text = _text(m.get("content"))
        if text is None:
            return f"messages[{i}].content must be a string (or a list of text parts)"
        if "weight" in m and (role != "assistant" or m["weight"] not in (0, 1)):
            return f"messages[{i}].weight must be 0 or 1, on assistant messages only"
        if role == "assistant" and text.strip():
            has_assistant = True
    if not has_assistant:
        return "no assistant message with content: nothing to learn from"
    return None


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
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"invalid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8'})"
        except RecursionError:  # json's decoder recurses once per nesting level
            problem = "invalid JSON (nested too deeply)"
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
        r.chars += sum(len(_text(m["content"]) or "") for m in obj["messages"])


def validate_chat_lines(chunks: Iterable[bytes]) -> ValidationReport:
    v = ChatFileValidator()
    for c in chunks:
        v.feed(c)
    return v.close()


def read_examples(chunks: Iterable[bytes]) -> Iterator[dict]:
    """The examples of a validated chat file, content lists flattened to strings."""
    buf = b""
    for c in chunks:
        buf += c
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            if raw.strip():
                yield _normalise(json.loads(raw))
    if buf.strip():
        yield _normalise(json.loads(buf))


def _normalise(obj: dict) -> dict:
    msgs = []
    for m in obj["messages"]:
        m = {**m, "role": "system" if m["role"] == "developer" else m["role"], "content": _text(m["content"])}
        msgs.append(m)
    return {**obj, "messages": msgs}
