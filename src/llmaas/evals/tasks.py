"""Eval tasks: the rows of an eval file, read and checked line by line, and turned into what the engine
scores (a chat prompt and the answer's tokens after it).

Row formats:
- classification: `{"text": ..., "label": ...}` (field names configurable; the user message is the
  prompt template filled with the row's fields), or a chat row whose last message is the assistant's label.
- generation: a chat row whose last message is the assistant's reference answer, or
  `{"input": str | messages, "ideal": str}`.
- loss: a chat row; every assistant message is scored.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from llmaas.core.chat_jsonl import ROLES, model_role, parse_line
from llmaas.engine.chat_template import ChatMessage


class TaskError(Exception):
    """The file does not fit the task; the message names the line."""


@dataclass(slots=True)
class Row:
    idx: int  # line index in the file, from 0 (blank lines not counted)
    prompt: list[ChatMessage]  # what the model sees before its answer
    answer: str | None = None  # the gold label / reference answer
    turns: list[list[ChatMessage]] = field(default_factory=list)  # loss: the conversation up to each assistant turn

    def preview(self, n: int = 300) -> str:
        last = next((m.content for m in reversed(self.prompt) if m.role == "user"), "")
        return last if len(last) <= n else last[: n - 1] + "…"


def _messages(obj: object, line: int) -> list[ChatMessage]:
    if not isinstance(obj, list) or not obj:
        raise TaskError(f"line {line}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(obj):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TaskError(f"line {line}: messages[{i}] needs a role ({', '.join(ROLES)}) and string content")
        out.append(ChatMessage(model_role(m["role"]), m["content"]))
    return out


def _with_system(msgs: list[ChatMessage], system: str | None) -> list[ChatMessage]:
    if system and not (msgs and msgs[0].role == "system"):
        return [ChatMessage("system", system), *msgs]
    return msgs


def _fill(template: str, obj: dict, line: int) -> str:
    """Substitute plain `{field}` placeholders only: never str.format, whose format specs, conversions and
    attribute access a template stored before the API refused them could still carry."""
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    out: list[str] = []
    try:
        for literal, name, spec, conversion in string.Formatter().parse(template):
            out.append(literal)
            if name is None:
                continue
            if not name or name.isdigit() or any(c in name for c in ".[]") or spec or conversion:
                raise TaskError("the prompt template may only use plain {field} placeholders")
            out.append(fields[name])
    except KeyError as e:
        raise TaskError(f"line {line}: the prompt template uses {{{e.args[0]}}}, which the row lacks") from None
    except ValueError as e:
        raise TaskError(f"the prompt template is not a valid format string: {e}") from None
    return "".join(out)


def read_rows(data: bytes, task: dict, max_rows: int | None = None) -> list[Row]:
    """Parse and check an eval file for `task` (the validated task spec). Raises TaskError."""
    kind, system = task["type"], task.get("system")
    rows: list[Row] = []
    for line_no, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not raw.strip():
            continue
        if max_rows is not None and len(rows) >= max_rows:
            break
        try:
            obj = parse_line(raw)
        except ValueError as e:
            raise TaskError(f"line {line_no}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise TaskError(f"line {line_no}: expected a JSON object")
        idx = len(rows)
        if "messages" in obj:
            msgs = _messages(obj["messages"], line_no)
            if kind == "loss":
                turns = [msgs[:i] for i, m in enumerate(msgs) if m.role == "assistant"]
                if not turns:
                    raise TaskError(f"line {line_no}: no assistant message to score")
                rows.append(Row(idx, _with_system(msgs, system), None,
                                [_with_system(t, system) for t in turns]))
                continue
            if msgs[-1].role != "assistant" or len(msgs) < 2:
                raise TaskError(f"line {line_no}: the last message must be the assistant's "
                                f"{'label' if kind == 'classification' else 'reference answer'}, after a prompt")
            rows.append(Row(idx, _with_system(msgs[:-1], system), msgs[-1].content))
        elif kind == "classification":
            tf, lf = task.get("text_field", "text"), task.get("label_field", "label")
            if tf not in obj or lf not in obj:
                raise TaskError(f"line {line_no}: needs '{tf}' and '{lf}' (or chat 'messages')")
            user = _fill(task.get("prompt_template") or "{text}", {**obj, "text": obj[tf]}, line_no)
            rows.append(Row(idx, _with_system([ChatMessage("user", user)], system), str(obj[lf])))
        elif kind == "generation" and "input" in obj and isinstance(obj.get("ideal"), str):
            prompt = obj["input"]
            msgs = [ChatMessage("user", prompt)] if isinstance(prompt, str) else _messages(prompt, line_no)
            rows.append(Row(idx, _with_system(msgs, system), obj["ideal"]))
        else:
            want = {"generation": "chat 'messages' ending with the assistant's reference, or 'input' and 'ideal'",
                    "loss": "chat 'messages'"}[kind]
            raise TaskError(f"line {line_no}: expected {want}")
    if not rows:
        raise TaskError("the file has no rows")
    if kind == "classification":
        labels = task.get("labels")
        for r in rows:
            if labels and r.answer not in labels:
                raise TaskError(f"line {r.idx + 1}: label {r.answer!r} is not one of the task's labels "
                                f"({', '.join(labels)})")
    return rows


def label_set(rows: list[Row], task: dict) -> list[str]:
    labels = task.get("labels") or sorted({r.answer for r in rows if r.answer is not None})
    if len(labels) < 2:
        raise TaskError(f"a classification needs at least 2 labels; the file has {len(labels)}")
    return labels


class Tokens:
    """Chat prompts and answers as the served model tokenizes them (the engine's chat template)."""

    def __init__(self, tokenize_chat: Callable[[list[ChatMessage]], list[int]], eog: set[int]) -> None:
        self._chat, self._eog = tokenize_chat, eog

    def prompt(self, msgs: list[ChatMessage]) -> list[int]:
        return self._chat(msgs)

    def answer(self, msgs: list[ChatMessage], answer: str, prefix: list[int] | None = None) -> list[int]:
        """The tokens of `answer` as the assistant's reply to `msgs`, through its end-of-turn token: the
        difference between the conversation rendered with and without it. Scoring the end-of-turn token
        too makes "positive" and "positive, mostly" different answers."""
        prefix = prefix if prefix is not None else self._chat(msgs)
        full = self._chat([*msgs, ChatMessage("assistant", answer)])
        if full[: len(prefix)] != prefix:
            raise TaskError("the chat template renders a reply differently from its generation prompt; "
                            "this model cannot be scored this way")
        cont = full[len(prefix):]
        for i, t in enumerate(cont):
            if t in self._eog:
                return cont[: i + 1]
        return cont
