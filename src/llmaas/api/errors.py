"""The one place where exceptions become OpenAI error responses (JSON bodies and SSE frames)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from llmaas.core.errors import DependencyUnavailableError, InsufficientStorageError, LlmaasError, error_body
from llmaas.core.outages import DATABASE, RATE_LIMITER, STORAGE, outage_code
from llmaas.core.outages import KINDS as OUTAGE_KINDS

log = logging.getLogger("llmaas.api")


async def send_error(send: Send, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An error response written straight to ASGI, for middleware that answers before the app runs."""
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


def _outage_error(exc: BaseException) -> LlmaasError | None:
    """The 503 for a database or Redis that does not answer (rate limits fail closed rather than unlimited), the
    507 for a full disk; None for anything else."""
    code = outage_code(exc)
    if code == DATABASE:
        return DependencyUnavailableError("The database is unavailable; nothing was changed. Retry shortly.", code)
    if code == RATE_LIMITER:
        return DependencyUnavailableError("Rate limits cannot be checked right now (Redis does not answer); "
                                          "retry shortly.", code, retry_after_s=2)
    if code == STORAGE:
        return InsufficientStorageError("The server is out of disk space; nothing was stored. Retry later, or ask "
                                        "the operator to free space.")
    return None


def to_envelope(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for any exception; unknown ones become a generic 500 without details."""
    down = _outage_error(exc)
    if down is not None:
        log.warning("%s: %s", down.code, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        exc = down
    if isinstance(exc, LlmaasError):
        return exc.status_code, exc.to_dict(), exc.headers
    log.error("unhandled error", exc_info=exc)
    return 500, error_body("The server had an error while processing your request.", "server_error"), {}


def sse_error(exc: BaseException) -> str:
    _, body, _ = to_envelope(exc)
    return f"data: {json.dumps(body)}\n\n"


def _child(node: object, key: object) -> object:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
        return node[key]
    return None


def _param_of(loc: tuple, body: object = None) -> str | None:
    """The field as the user wrote it, walking the body along pydantic's location: without union-branch tags
    ("str", "list[TextPart]") nor a tagged union's tag (`task.classification.prompt_template` is
    `task.prompt_template`: the body there has no `classification` key, its `type` is that)."""
    node = body if loc[:1] == ("body",) else None
    parts: list[str] = []
    for p in loc[1:] if loc[:1] in (("body",), ("query",), ("path",)) else loc:
        if isinstance(node, dict) and p not in node and node.get("type") == p:
            continue
        node = _child(node, p)
        if not any(c in str(p) for c in "[]") and p not in ("str", "int", "float"):
            parts.append(str(p))
    return ".".join(parts) or None


def validation_message(msg: object) -> str:
    """pydantic's message for a failed check, without the "Value error, " it puts before a validator's own."""
    return str(msg).removeprefix("Value error, ")


async def _as_envelope(_: Request, exc: Exception) -> JSONResponse:
    status, body, headers = to_envelope(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LlmaasError)
    async def _domain(_: Request, exc: LlmaasError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        param = _param_of(tuple(first.get("loc", ())), exc.body)
        if first.get("type") == "json_invalid":
            msg, param = "The request body is not valid JSON.", None
        else:
            why = validation_message(first.get("msg"))
            msg = f"Invalid value for '{param}': {why}" if param else why
        return JSONResponse(error_body(msg, "invalid_request_error", param, "invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    # Handled here rather than by the catch-all below, which Starlette re-raises (a traceback in the log for what
    # is an outage to report, not a bug).
    for kind in OUTAGE_KINDS:
        app.add_exception_handler(kind, _as_envelope)

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        status, body, headers = to_envelope(exc)
        return JSONResponse(body, status_code=status, headers=headers)
