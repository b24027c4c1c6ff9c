"""The wire format of OpenAI's Responses API (POST /v1/responses) and its checks.

A request is checked here in its own terms, so every 400 names the field the caller wrote (`input[2].call_id`,
`text.format.schema`, `tools[0].type`), before serving turns it into a chat request. Input items are
normalized into the shapes the API hands back (`message` with `input_text` / `output_text` parts,
`function_call`, `function_call_output`), each with an id: stored as the response's input items and
replayed by `previous_response_id`.

Fields OpenAI has that this server does not serve (built-in tools, `reasoning`, `background`, ...) are
refused with a 400 naming them rather than ignored: an answer that silently skipped them would look
like one that honoured them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.openai import MAX_MESSAGES, MAX_TOOLS, check_metadata

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a function name, as chat tools require
MAX_ID = 64
MAX_ARGUMENTS = 1 << 20

# Fields of OpenAI's request this server does not serve, each with the values that ask for nothing (and
# so may pass): anything else is a 400 naming the field.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "background": lambda v: v is None or v is False,
    "background_options": lambda v: v is None,
    "reasoning": lambda v: v is None,
    "include": lambda v: not v,
    "conversation": lambda v: v is None,
    "prompt": lambda v: v is None,
    "truncation": lambda v: v in (None, "disabled"),
    "max_tool_calls": lambda v: v is None,
    "top_logprobs": lambda v: v in (None, 0),
    "service_tier": lambda v: v in (None, "auto", "default"),
    "context_management": lambda v: not v,
    "moderation": lambda v: v is None,
    "image": lambda v: v is None,
    "prompt_cache_options": lambda v: v is None,
    "prompt_cache_retention": lambda v: v in (None, "in_memory"),
    "access_programs": lambda v: v is None,
}


def new_item_id(prefix: str) -> str:
    """An id in OpenAI's style: `msg_...`, `fc_...`, `resp_...`."""
    return f"{prefix}_{secrets.token_hex(24)}"


class ResponseCreateRequest(BaseModel):
    """The body of POST /v1/responses. `extra="allow"` keeps the fields we do not declare, so that
    `check_supported` can refuse the ones OpenAI defines and we do not serve; other unknown fields are
    ignored, as on every OpenAI-shaped body."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[Any] | None = Field(default=None, max_length=MAX_MESSAGES)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID)
    store: bool | None = None  # None: true, as OpenAI's default
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    user: str | None = None  # accepted, as on chat: an end-user id that changes nothing served

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(v)

    @property
    def stored(self) -> bool:
        return self.store is not False

    def check_supported(self) -> None:
        """400 for a field OpenAI defines that this server does not serve, naming it."""
        for name, harmless in _UNSUPPORTED.items():
            value = (self.model_extra or {}).get(name)
            if not harmless(value):
                raise InvalidRequestError(f"'{name}' is not supported by this server; leave it unset.", param=name)

    def input_items(self) -> list[dict]:
        """The input as normalized items, each with an id (400 naming the item and field that is wrong)."""
        if self.input is None:
            if self.previous_response_id is None:
                raise InvalidRequestError("'input' is required.", param="input")
            return []
        if isinstance(self.input, str):
            return [_message("user", [_text("input_text", self.input)])]
        items: list[dict] = []
        seen: set[str] = set()
        for i, raw in enumerate(self.input):
            item = _input_item(raw, f"input[{i}]")
            # An id the client gave (replayed output items carry theirs) is kept unless it repeats: input
            # items are paged by id.
            given = raw.get("id")
            if isinstance(given, str) and 0 < len(given) <= MAX_ID and given not in seen:
                item["id"] = given
            seen.add(item["id"])
            items.append(item)
        return items

    def function_tools(self) -> list[dict]:
        """The tools, each a function tool in Responses' flat shape (`{type, name, description,
        parameters, strict}`); 400 naming a built-in tool, which this server does not run."""
        tools: list[dict] = []
        for i, t in enumerate(self.tools or ()):
            kind = t.get("type")
            if kind != "function":
                raise InvalidRequestError(f"Tool type {kind!r} is not supported: this server calls only function "
                                          "tools ({'type': 'function', 'name': ...}).", param=f"tools[{i}].type")
            name = t.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise InvalidRequestError("A function tool needs a 'name' of 1 to 64 letters, digits, '_' or '-'.",
                                          param=f"tools[{i}].name")
            params, desc, strict = t.get("parameters"), t.get("description"), t.get("strict")
            if params is not None and not isinstance(params, dict):
                raise InvalidRequestError("'parameters' must be a JSON schema object.", param=f"tools[{i}].parameters")
            if desc is not None and (not isinstance(desc, str) or len(desc) > 8192):
                raise InvalidRequestError("'description' must be a string of at most 8192 characters.",
                                          param=f"tools[{i}].description")
            if strict is not None and not isinstance(strict, bool):
                raise InvalidRequestError("'strict' must be a boolean.", param=f"tools[{i}].strict")
            tools.append({"type": "function", "name": name, "description": desc, "parameters": params,
                          "strict": strict})
        names = [t["name"] for t in tools]
        if len(set(names)) != len(names):
            raise InvalidRequestError("Function tools must have distinct names.", param="tools")
        return tools

    def choice(self, tools: list[dict]) -> str | dict:
        """`tool_choice` checked against `tools`: "none", "auto", "required" or {type: function, name}."""
        c = self.tool_choice
        if c is None:
            return "auto"
        if isinstance(c, str):
            if c not in ("none", "auto", "required"):
                raise InvalidRequestError("'tool_choice' must be 'none', 'auto', 'required' or "
                                          "{'type': 'function', 'name': ...}.", param="tool_choice")
            if c == "required" and not tools:
                raise InvalidRequestError("tool_choice 'required' needs function tools.", param="tool_choice")
            return c
        if c.get("type") != "function":
            raise InvalidRequestError(f"tool_choice of type {c.get('type')!r} is not supported: only function "
                                      "tools are.", param="tool_choice.type")
        name = c.get("name")
        if not isinstance(name, str) or name not in {t["name"] for t in tools}:
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the function tools.",
                                      param="tool_choice.name")
        return {"type": "function", "name": name}

    def text_format(self) -> dict:
        """`text.format`, checked: {type: text}, {type: json_object} or {type: json_schema, name, schema,
        strict, description}."""
        text = self.text or {}
        for key in text:
            if key == "verbosity" and text[key] is not None:
                raise InvalidRequestError("'text.verbosity' is not supported by this server.", param="text.verbosity")
        fmt = text.get("format")
        if fmt is None:
            return {"type": "text"}
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise InvalidRequestError("'text.format.type' must be 'text', 'json_object' or 'json_schema'.",
                                      param="text.format.type")
        if fmt["type"] != "json_schema":
            return {"type": fmt["type"]}
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError("A json_schema format needs a 'name' of 1 to 64 letters, digits, '_' or '-'.",
                                      param="text.format.name")
        if not isinstance(schema, dict):
            raise InvalidRequestError("A json_schema format needs 'schema', a JSON schema object.",
                                      param="text.format.schema")
        strict = fmt.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequestError("'strict' must be a boolean.", param="text.format.strict")
        out = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
        if isinstance(fmt.get("description"), str):
            out["description"] = fmt["description"]
        return out


def _text(kind: str, text: str) -> dict:
    return {"type": kind, "text": text, "annotations": []} if kind == "output_text" else {"type": kind, "text": text}


def _message(role: str, content: list[dict]) -> dict:
    return {"id": new_item_id("msg"), "type": "message", "role": role, "status": "completed", "content": content}


def _str_field(raw: dict, key: str, where: str, limit: int = MAX_ID) -> str:
    v = raw.get(key)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise InvalidRequestError(f"'{key}' must be a non-empty string of at most {limit} characters.",
                                  param=f"{where}.{key}")
    return v


def _input_item(raw: Any, where: str) -> dict:
    """One input item, normalized (a fresh id; the caller keeps one it was given)."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("An input item must be an object.", param=where)
    kind = raw.get("type", "message")
    if kind == "message":
        return _input_message(raw, where)
    if kind == "function_call":
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError("'name' must be 1 to 64 letters, digits, '_' or '-'.", param=f"{where}.name")
        return {"id": new_item_id("fc"), "type": "function_call", "status": "completed",
                "call_id": _str_field(raw, "call_id", where, 256), "name": name,
                "arguments": _str_field(raw, "arguments", where, MAX_ARGUMENTS)}
    if kind == "function_call_output":
        return {"id": new_item_id("fco"), "type": "function_call_output", "status": "completed",
                "call_id": _str_field(raw, "call_id", where, 256), "output": _tool_output(raw.get("output"), where)}
    raise InvalidRequestError(f"Input items of type {kind!r} are not supported: use 'message', 'function_call' or "
                              "'function_call_output'.", param=f"{where}.type")


def _input_message(raw: dict, where: str) -> dict:
    role = raw.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequestError("'role' must be 'user', 'assistant', 'system' or 'developer'.", param=f"{where}.role")
    # What comes back is what OpenAI returns: an assistant's text as output_text, the others' as input_text.
    kind = "output_text" if role == "assistant" else "input_text"
    content = raw.get("content")
    if isinstance(content, str):
        return _message(role, [_text(kind, content)])
    if not isinstance(content, list):
        raise InvalidRequestError("'content' must be a string or a list of content parts.", param=f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append(_text(kind, part["text"]))
        elif ptype == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif ptype in ("input_text", "output_text"):
            raise InvalidRequestError("A text part needs 'text', a string.", param=f"{at}.text")
        else:
            raise InvalidRequestError(f"Content parts of type {ptype!r} are not supported: this server takes text "
                                      "only ('input_text', or 'output_text' in an assistant message).",
                                      param=f"{at}.type")
    return _message(role, parts)


def _tool_output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and p.get("type") == "input_text"
                                        and isinstance(p.get("text"), str) for p in output):
        return "".join(p["text"] for p in output)
    raise InvalidRequestError("'output' must be a string or a list of input_text parts.", param=f"{where}.output")


def output_message(item_id: str, text: str | None, status: str) -> dict:
    """An assistant `message` output item: one `output_text` part, or none yet (text None: being streamed)."""
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [_text("output_text", text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def item_text(item: dict) -> str:
    """The text of a message item (its text parts joined; a refusal is its text)."""
    return "".join(p.get("text") or p.get("refusal") or "" for p in item.get("content") or ())
