"""How tools, tool calls and tool results are shown to a model: the Hermes / Qwen 2.5 format, in plain messages
ahead of the model's own chat template. One definition for serving (what the model sees when a request has
tools) and fine-tuning (files in OpenAI's format with `tools` and `tool_calls` are trained in the same format),
so a tenant can teach a small model to call its tools the way it is asked to at serving time."""

from __future__ import annotations

import contextlib
import json
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


def tools_block(tools: list[dict[str, Any]]) -> str:
    """The system message's tools section: each tool (OpenAI's `{"type": "function", "function": {...}}`) as JSON."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n"
            f'{OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{CLOSE}')


def call_text(name: str, arguments: str | dict[str, Any]) -> str:
    """One call as the model writes it; `arguments` as OpenAI carries them (a JSON string) or parsed."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # otherwise kept as written: the history must not change
            arguments = json.loads(arguments)
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Messages with text content and model roles (system, user, assistant, tool), some assistants with
    `tool_calls`, as plain messages: the tools in the system message, calls in the assistant's text, results of
    consecutive tool messages in one user turn. Other keys of a message (e.g. a training `weight`) are kept."""
    out: list[dict[str, Any]] = []
    if tools:
        block = tools_block(tools)
        if messages and messages[0]["role"] == "system":
            out.append({**messages[0], "content": f"{messages[0]['content']}\n\n{block}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": block})
    for m in messages:
        base = {k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id", "name")}
        if m["role"] == "tool":
            text = f"{RESPONSE_OPEN}\n{m['content']}\n{RESPONSE_CLOSE}"
            prev = out[-1] if out else None
            if prev is not None and prev["role"] == "user" and prev["content"].startswith(RESPONSE_OPEN):
                prev["content"] = f"{prev['content']}\n{text}"  # results of parallel calls: one turn
            else:
                out.append({**base, "role": "user", "content": text})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            out.append({**base, "content": f"{m['content']}\n{calls}" if m["content"] else calls})
        else:
            out.append(base)
    return out
