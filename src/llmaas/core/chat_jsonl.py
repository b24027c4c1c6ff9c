"""Chat JSONL, the one dataset format of fine-tuning files, stored-completion exports and eval files.

Each line: {"messages": [{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": "..."}, ...]}.
Content is a string or a list of {"type": "text", "text": ...} parts; "developer" is what newer clients call
"system", and the model sees it as such. An assistant message may carry "weight": 0 or 1 (0 = context
only, not trained on). As in OpenAI's fine-tuning format, a line may list "tools" and an assistant message may
make "tool_calls" (then its content may be null); tool results are "tool" messages. They reach the model in
llmaas.core.tool_format's format, the one it is served with. The control plane checks files with
`check_example`, the worker reads them with `read_examples`, training renders the messages and evals read
their rows through the same helpers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import cast

from llmaas.core import tool_format

ROLES = ("system", "developer", "user", "assistant", "tool")


def content_text(content: object, *, strict: bool = True) -> str | None:
    """Message content as text: a string, or the joined text of a list of text parts.

    strict (checking a file): anything else (other parts, non-string text, None) is None. Not strict
    (rendering content that is not checked here): None is "", parts of other types are skipped, and any
    other value is its str()."""
    if isinstance(content, str):
        return content
    if strict:
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        return None
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


def model_role(role: str) -> str:
    """The role the model's chat template sees: "developer" is "system"."""
    return "system" if role == "developer" else role


def parse_line(raw: bytes | str) -> object:
    """One line parsed as JSON; a ValueError saying why not ("Expecting value", "not UTF-8", "nested too
    deeply") for the caller's "line N: invalid JSON (...)"."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(e.msg) from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise ValueError("nested too deeply") from None


def check_example(obj: object) -> str | None:
    """The problem with one parsed line of a chat fine-tuning file, or None."""
    if not isinstance(obj, dict):
        return "expected a JSON object"
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "missing 'messages' (a non-empty list)"
    tools = obj.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(_is_function(t) for t in tools)):
        return "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}"
    has_assistant = False
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        role = m.get("role")
        if role not in ROLES:
            return f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}"
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list) or not all(_is_call(c) for c in calls):
                return (f"messages[{i}].tool_calls must be a list of {{\"type\": \"function\", \"function\": "
                        "{\"name\", \"arguments\"}} on an assistant message")
            if calls:
                has_assistant = True
        text = content_text(m.get("content")) if m.get("content") is not None or not calls else ""
        if text is None:
            return f"messages[{i}].content must be a string (or a list of text parts)"
        if "weight" in m and (role != "assistant" or m["weight"] not in (0, 1)):
            return f"messages[{i}].weight must be 0 or 1, on assistant messages only"
        if role == "assistant" and text.strip():
            has_assistant = True
    if not has_assistant:
        return "no assistant message with content: nothing to learn from"
    return None


def _is_function(t: object) -> bool:
    return isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict) \
        and isinstance(t["function"].get("name"), str)


def _is_call(c: object) -> bool:
    return isinstance(c, dict) and c.get("type", "function") == "function" and isinstance(c.get("function"), dict) \
        and isinstance(c["function"].get("name"), str) and isinstance(c["function"].get("arguments"), (str, dict))


def jsonl_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a file given in any chunking (blank ones too, so that callers can count lines)."""
    buf = b""
    for c in chunks:
        buf += c
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


def normalise(obj: dict) -> dict:
    """A checked example as the model sees it: content as text, "developer" as "system", tools and tool calls
    in the serving format."""
    msgs = [{**m, "role": model_role(m["role"]), "content": content_text(m.get("content"), strict=False)}
            for m in obj["messages"]]
    if obj.get("tools") or any(m.get("tool_calls") or m["role"] == "tool" for m in msgs):
        msgs = tool_format.render(msgs, obj.get("tools"))
    return {**{k: v for k, v in obj.items() if k != "tools"}, "messages": msgs}


def read_examples(chunks: Iterable[bytes]) -> Iterator[dict]:
    """The examples of a checked chat file, normalised."""
    for raw in jsonl_lines(chunks):
        if raw.strip():
            yield normalise(cast(dict, parse_line(raw)))  # checked: an object
