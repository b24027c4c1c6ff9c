"""Tool calling on chat completions: what the model sees, what it may produce, and how its output becomes
OpenAI's `tool_calls`.

The format is Hermes / Qwen 2.5's, the one most small open models were tuned on: the tools are listed as JSON
inside `<tools></tools>` in the system message, the model answers a call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, an assistant turn that made calls is rendered
the same way, and tool results go back as a user turn of `<tool_response>` blocks. It is rendered into plain
messages before the model's own chat template, so it works with any template, including those without a tools
section.

Constrained decoding makes every call valid: a GBNF grammar built from the tools' schemas (a call names one of
the tools and its arguments have that tool's `parameters` shape). `required` and a named function allow calls
only; `auto` allows calls or a text answer, chosen at the first token (a text answer is one that does not begin
with `<tool_call>`); `parallel_tool_calls: false` allows exactly one call. Not llama.cpp's lazy grammar, which
starts constraining mid-token when the model writes the marker: a token that completes the marker and carries
text the grammar cannot take aborts the whole process inside llama.cpp (ggml-org/llama.cpp#12597), and a
model echoing its own tool instructions does exactly that.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
from dataclasses import dataclass

from llmaas.core import tool_format
from llmaas.core.errors import InvalidRequestError
from llmaas.engine.chat_template import ChatMessage
from llmaas.engine.grammar import json_grammar
from llmaas.protocol.openai import ChatCompletionRequest, ChatMessageIn, NamedToolChoice, ToolDef

OPEN, CLOSE = tool_format.OPEN, tool_format.CLOSE
# A text answer under `auto`: anything that does not begin with the call marker.
_FREE_TEXT = 'free-text ::= ( [^<] | "<" [^t] ) .*'
COMPILE_TIMEOUT_S = 2.0
_COMPILER = concurrent.futures.ThreadPoolExecutor  # built per call: no pool lives at import


def render(messages: list[ChatMessageIn], tools: list[ToolDef] | None, role_of) -> list[ChatMessage]:
    """The conversation as plain messages for the model's template (llmaas.core.tool_format)."""
    plain = [{"role": role_of(m.role), "content": m.text(),
              **({"tool_calls": [c.model_dump(mode="json") for c in m.tool_calls]} if m.tool_calls else {})}
             for m in messages]
    listed = [t.model_dump(mode="json", exclude_none=True) for t in tools] if tools else None
    return [ChatMessage(m["role"], m["content"]) for m in tool_format.render(plain, listed)]


def _call_schema(tools: list[ToolDef]) -> dict:
    def one(t: ToolDef) -> dict:
        params = t.function.parameters or {"type": "object", "properties": {}}
        return {"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": params},
                "required": ["name", "arguments"], "additionalProperties": False}

    return one(tools[0]) if len(tools) == 1 else {"anyOf": [one(t) for t in tools]}


def _compile(tools: list[ToolDef], parallel: bool, text_allowed: bool) -> str:
    try:
        inner = json_grammar(_call_schema(tools))
    except InvalidRequestError as e:
        raise InvalidRequestError(f"the tools' parameters cannot be turned into a grammar: {e.message}",
                                  param="tools") from e
    # The converter's root is one call's JSON; ours wraps it in the markers, once or repeated.
    inner = re.sub(r"^root ::=", "tool-call-json ::=", inner, flags=re.M)
    call = f'"{OPEN}\\n" tool-call-json "\\n{CLOSE}"'
    calls = f"{call} ( \"\\n\" {call} )*" if parallel else call
    if text_allowed:
        return f"root ::= tool-calls | free-text\ntool-calls ::= {calls}\n{_FREE_TEXT}\n{inner}"
    return f"root ::= {calls}\n{inner}"


@dataclass
class ToolPlan:
    """How one request uses its tools: the rendered messages, the grammar and when it applies."""

    messages: list[ChatMessage]
    grammar: str | None = None
    active: bool = False  # tool calls are parsed out of the output

    @classmethod
    def of(cls, body: ChatCompletionRequest, role_of) -> ToolPlan:
        body.check_tools()
        choice = body.tool_choice or ("auto" if body.tools else "none")
        if not body.tools or choice == "none":
            return cls(render(body.messages, None, role_of))
        if body.response_format is not None and body.response_format.type != "text":
            raise InvalidRequestError("response_format cannot be combined with tools (unless tool_choice is "
                                      "'none'): the tools' grammar already decides the output's shape",
                                      param="response_format")
        tools = body.tools
        if isinstance(choice, NamedToolChoice):
            tools = [t for t in tools if t.function.name == choice.function.name]
        parallel = body.parallel_tool_calls and not isinstance(choice, NamedToolChoice)
        pool = _COMPILER(max_workers=1)  # a schema that takes the converter too long is refused, not waited on
        try:
            grammar = pool.submit(_compile, tools, parallel, choice == "auto").result(timeout=COMPILE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise InvalidRequestError(f"the tools' parameters took over {COMPILE_TIMEOUT_S:g} s to compile into "
                                      "a grammar; simplify their JSON schemas", param="tools") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return cls(render(body.messages, body.tools, role_of), grammar, True)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class ToolCallStream:
    """Splits one choice's streamed text into content and tool calls. Content passes through at once, except a
    tail that may be the start of `<tool_call>`; a call is held until `</tool_call>` and then emitted as OpenAI's
    streaming deltas: id, type and name first, then the arguments."""

    def __init__(self) -> None:
        self.buf = ""
        self.calls: list[dict] = []  # {"id", "name", "arguments"}
        self._in_call = self._after_call = False

    def feed(self, text: str) -> tuple[str, list[dict]]:
        """(content to emit now, tool-call deltas to emit now)."""
        self.buf += text
        content, deltas = "", []
        while True:
            if not self._in_call:
                if self._after_call:  # the newline between parallel calls is part of the format, not content
                    self.buf = self.buf.lstrip("\n")
                    if not self.buf:
                        return content, deltas
                    self._after_call = False
                i = self.buf.find(OPEN)
                if i < 0:
                    keep = _partial_suffix(self.buf, OPEN)
                    content += self.buf[:len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                    return content, deltas
                content += self.buf[:i]
                self.buf = self.buf[i + len(OPEN):]
                self._in_call = True
            j = self.buf.find(CLOSE)
            if j < 0:
                return content, deltas
            raw, self.buf = self.buf[:j], self.buf[j + len(CLOSE):]
            self._in_call = False
            call = _parse_call(raw)
            if call is None:  # not a call after all (unconstrained text): it stays the model's words
                content += f"{OPEN}{raw}{CLOSE}"
                continue
            deltas += self._emit(*call)
            self._after_call = True

    def _emit(self, name: str, arguments: str) -> list[dict]:
        index, cid = len(self.calls), new_call_id()
        self.calls.append({"id": cid, "name": name, "arguments": arguments})
        return [{"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}},
                {"index": index, "function": {"arguments": arguments}}]

    def finish(self) -> str:
        """At the end: what is still held back is content (an unfinished call's text included)."""
        rest = (OPEN if self._in_call else "") + self.buf
        self.buf, self._in_call = "", False
        return rest


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def _parse_call(raw: str) -> tuple[str, str] | None:
    try:
        obj = json.loads(raw, strict=False)  # the grammar's strings may hold raw control characters
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or "arguments" not in obj:
        return None
    args = obj["arguments"]
    return obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
