"""Text is validated once, at the edge, before any route sees it.

Python happily carries strings that are not valid Unicode (a lone surrogate from a `"\\ud800"` JSON escape,
or from bytes json.loads decodes with `surrogatepass`): they pass pydantic, reach the database as JSON
escapes, and then every response that contains them fails to encode as UTF-8 (a 500, for every later read of
that tenant's list). NUL is valid Unicode but PostgreSQL text columns refuse it. So this pure-ASGI middleware
refuses, with a 400 naming the field the way OpenAI does (`messages[0].content`, `metadata.k`):

* JSON bodies that are not UTF-8, or hold a lone surrogate anywhere, or NUL outside free-text fields, or nest
  arrays and objects deeper than MAX_JSON_DEPTH (a parser, a validator and every later reader recurses once per
  level: deep enough, that is a RecursionError in whichever of them meets it first);
* query strings and path segments that are not UTF-8 after percent-decoding, or hold NUL;
* JSON (and other non-multipart) bodies over `LLMAAS_MAX_REQUEST_BYTES` (413), judged from Content-Length and
  again while a chunked body streams in. Multipart uploads keep their own limit (LLMAAS_MAX_FILE_BYTES).

Normal bodies cost one strict UTF-8 decode and one regex scan for the escapes; only a body whose raw text has
a lone-surrogate or `\\u0000` escape is parsed a second time, to name the field.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmaas.api.errors import send_error
from llmaas.core.errors import error_body

# A `\uD800`-`\uDFFF` escape that is not half of a valid pair, or a `\u0000` escape. An escaped backslash
# before it (`\\ud800`, which is text, not an escape) can make this match anyway: a false positive only
# costs the full parse below, which decides.
_SUSPECT = re.compile(
    rb"\\u(?:[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u)[dD][c-fC-F][0-9a-fA-F]{2}|0000)")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Where NUL is ordinary text a model may see (it has no meaning there, but refusing it would break clients
# that pass documents through as they are): the value of these keys, or list items under them.
_FREE_TEXT = frozenset({"content", "text", "prompt", "input"})
_MARK = "~invalid~"  # stands in for an undecodable path segment while finding which parameter holds it
# Deeper than any request of the API needs: a structured-output schema at OpenAI's limit of 10 nested objects
# is about 25 levels of JSON.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # +1 / -1 once one is taken away
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class BadInput(Exception):
    def __init__(self, message: str, param: str | None, status: int = 400, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def _path_str(path: list[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _check_str(s: str, path: list[str | int]) -> None:
    if _SURROGATE.search(s):
        raise BadInput(f"Invalid value for '{_path_str(path)}': the string is not valid Unicode (it contains "
                       "a lone UTF-16 surrogate).", _path_str(path) or None)
    if "\x00" in s:
        keys = [p for p in path if isinstance(p, str)]
        if not (keys and keys[-1] in _FREE_TEXT and "metadata" not in keys):
            raise BadInput(f"Invalid value for '{_path_str(path)}': the string contains a NUL character "
                           "(\\u0000).", _path_str(path) or None)


def find_bad_text(value: Any, path: list[str | int] | None = None) -> None:
    """Raise BadInput naming the first string (or key) in a parsed JSON value that is not acceptable text."""
    path = path if path is not None else []
    if isinstance(value, str):
        _check_str(value, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_str(k, [*path, k if not (_SURROGATE.search(k) or "\x00" in k) else repr(k)[1:-1]])
            find_bad_text(v, [*path, k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            find_bad_text(v, [*path, i])


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, brackets inside strings not counted: strings go by a regex,
    everything but brackets by a translate, so only the brackets themselves are walked."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than the limit: the common case costs two counts
    steps = _JSON_STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(b - 1 for b in steps), default=0)


def check_json_body(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("The request body is not valid UTF-8.", None) from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise BadInput(f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels.", None,
                       code="too_deeply_nested")
    if not _SUSPECT.search(body):
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # not JSON at all: the route's own parsing answers with its 400
    find_bad_text(parsed)


def _decode_component(raw: bytes, what: str, name: str | None) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"Invalid {what} '{name or '?'}': not valid UTF-8 after percent-decoding.", name) from None
    if "\x00" in text:
        raise BadInput(f"Invalid {what} '{name or '?'}': contains a NUL character.", name)
    return text


def check_query(qs: bytes) -> None:
    for pair in qs.replace(b";", b"&").split(b"&"):
        if not pair:
            continue
        raw_key, _, raw_val = pair.partition(b"=")
        raw_key, raw_val = raw_key.replace(b"+", b" "), raw_val.replace(b"+", b" ")
        safe_key = unquote_to_bytes(raw_key).decode("utf-8", "replace").replace("\x00", "\ufffd")
        _decode_component(raw_key, "query parameter name", safe_key)
        _decode_component(raw_val, "query parameter", safe_key)


def check_path(scope: Scope) -> None:
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    segments = raw.split(b"?", 1)[0].split(b"/")
    bad: list[int] = []
    decoded: list[str] = []
    for i, seg in enumerate(segments):
        try:
            text = unquote_to_bytes(seg).decode("utf-8")
            if "\x00" in text:
                raise UnicodeDecodeError("utf-8", seg, 0, 1, "NUL")
            decoded.append(text)
        except UnicodeDecodeError:
            bad.append(i)
            decoded.append(_MARK + str(i))
    if not bad:
        return
    name = _path_param(scope, "/".join(decoded), bad[0])
    raise BadInput(f"Invalid path parameter '{name or 'path'}': not valid UTF-8 after percent-decoding, or "
                   "contains a NUL character.", name)


def _path_param(scope: Scope, path: str, index: int) -> str | None:
    """The name of the path parameter of the first route whose template matches `path` and holds segment
    `index` (None when no route does). Only runs for a refused path, so it may walk the routes."""
    marker = _MARK + str(index)
    for regex in _route_regexes(getattr(scope.get("app"), "router", None)):
        m = regex.match(path)
        if m:
            return next((k for k, v in m.groupdict().items() if v is not None and marker in v), None)
    return None


def _route_regexes(router: Any) -> list[re.Pattern[str]]:
    # FastAPI nests included routers differently across versions (`routes`, or `original_router.routes`):
    # follow both, and take each route's compiled `path_regex`.
    out: list[re.Pattern[str]] = []
    for route in getattr(router, "routes", []) or []:
        regex = getattr(route, "path_regex", None)
        if regex is not None:
            out.append(regex)
        for nested in (getattr(route, "original_router", None), getattr(route, "app", None)):
            if nested is not None and nested is not route and hasattr(nested, "routes"):
                out.extend(_route_regexes(nested))
    return out


class InputGuardMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_query(scope.get("query_string", b""))
            check_path(scope)
        except BadInput as e:
            await _reject(send, e)
            return
        ctype, length = b"", None
        for k, v in scope["headers"]:
            if k == b"content-type":
                ctype = v.split(b";", 1)[0].strip().lower()
            elif k == b"content-length":
                length = v
        if ctype == b"multipart/form-data" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_body_bytes):
            await _reject(send, self._too_large() if length.strip().isdigit() else
                          BadInput("Invalid Content-Length header.", None))
            return
        body, more_messages = await self._read(receive)
        if body is None:
            await _reject(send, self._too_large())
            return
        # FastAPI parses a body without a content type as JSON too, so those are checked as JSON.
        if ctype in (b"", b"application/json") or ctype.endswith(b"+json"):
            try:
                check_json_body(body)
            except BadInput as e:
                await _reject(send, e)
                return
        await self.app(scope, _replay(body, more_messages, receive), send)

    def _too_large(self) -> BadInput:
        return BadInput(f"The request body is larger than the limit of {self.max_body_bytes} bytes "
                        "(LLMAAS_MAX_REQUEST_BYTES).", None, status=413, code="request_too_large")

    async def _read(self, receive: Receive) -> tuple[bytes | None, list[Message]]:
        """The whole body (None once it passes the limit) and any non-body message seen while reading."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), [message]  # a disconnect: the route sees it after the body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, []
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), []


def _replay(body: bytes, pending: list[Message], receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending:
            return pending.pop(0)
        return await receive()  # disconnect detection for streaming responses

    return replay


async def _reject(send: Send, e: BadInput) -> None:
    await send_error(send, e.status, error_body(e.message, "invalid_request_error", e.param, e.code))
