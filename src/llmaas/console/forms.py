"""What the console's pages share when they take input: who may write, a form's fields validated with the API's own
request model (a refusal names the field as the API does), a refused request's error as lines, a JSON body from a
page's script, and an uploaded file stored through the Files service."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from fastapi import Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from llmaas.api.errors import validation_message
from llmaas.api.routers import files as files_api
from llmaas.console.session import Visitor, check_csrf, context
from llmaas.control.auth.principal import SPENDERS
from llmaas.control.db.models import StoredFile
from llmaas.core.errors import InvalidRequestError, LlmaasError

M = TypeVar("M", bound=BaseModel)
_CHUNK = 1 << 20


def can_write(me: Visitor) -> bool:
    return me.principal.is_admin or me.principal.role in SPENDERS


def form_errors(e: LlmaasError) -> list[str]:
    """An API error as the lines a page lists (a file's per-line problems one per line)."""
    head, sep, rest = e.message.partition("problem(s): ")
    if sep and rest:
        return [head + "problem(s):", *rest.split("; ")]
    return [e.message]


def validated(model: type[M], raw: dict, hidden: tuple[str, ...] = ()) -> M:
    """`raw` as `model`, or a 400 naming the first bad field by the form's name for it (the parts of its path in
    `hidden` are the request's nesting, which the form does not show)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if p not in hidden)
        raise InvalidRequestError(f"Invalid value for '{field}': {validation_message(err['msg'])}",
                                  param=field) from None


async def json_object(request: Request, me: Visitor, model: type[M], blank: tuple[str, ...] = (), **fixed) -> M:
    """The JSON body a page's script sent (with the session's X-CSRF-Token header), with `fixed` fields set and the
    `blank` ones dropped when empty, as `model`; a bad body is answered as the API answers it: a 400 naming the
    field."""
    check_csrf(request, me.csrf, request.headers.get("x-csrf-token"))
    try:
        raw = await request.json()
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    raw = {k: v for k, v in raw.items() if k not in blank or v}
    body = {**raw, **fixed}
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()], body=body) from None


async def store_upload(request: Request, me: Visitor, file: UploadFile, purpose: str) -> StoredFile:
    """The uploaded file, validated and stored by the Files service as POST /v1/files stores it (nothing is kept
    of a file that fails)."""
    up = files_api._files(request).upload(context(request, me), purpose, file.filename or f"{purpose}.jsonl")
    try:
        while chunk := await file.read(_CHUNK):
            up.write(chunk)
        return await asyncio.to_thread(up.finish, purpose)
    except BaseException:
        up.abort()
        raise
