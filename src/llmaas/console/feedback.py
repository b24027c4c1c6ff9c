"""The console's Feedback page and the playground's ratings: review stored completions with their ratings, rate
an answer 👍/👎 with a correction, export the rated ones to a fine-tuning file and start a job from it — the loop
closes in the browser. The stored-completion service and /v1 functions do the work."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from llmaas.api.routers import stored_completions as stored_api
from llmaas.console.routes import SignedIn, page
from llmaas.console.session import Visitor, check_csrf, context, control
from llmaas.console.work import can_write, form_errors
from llmaas.core.errors import InvalidRequestError, LlmaasError
from llmaas.protocol.stored_completions import FeedbackCreate, FileFromSource
from llmaas.serving.completion_store import export_to_file

router = APIRouter(prefix="/console", include_in_schema=False)
RATED = {"": None, "good": "good", "bad": "bad", "unrated": "unrated"}


async def _feedback_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    model = request.query_params.get("model") or None
    rated = RATED.get(request.query_params.get("rated", ""))
    rows = await asyncio.to_thread(control(request).stored.review, context(request, me), model=model, rated=rated)
    response = page(request, "feedback.html", me, rows=rows, model=model or "", rated=rated or "",
                    writable=can_write(me), active="feedback", **ctx)
    response.status_code = status_code
    return response


@router.get("/feedback")
async def feedback_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _feedback_page(request, me)


@router.post("/feedback/rate")
async def rate(request: Request, me: SignedIn) -> dict:
    """A rating from the playground (JSON, X-CSRF-Token) or the feedback page."""
    check_csrf(request, me.csrf, request.headers.get("x-csrf-token"))
    try:
        raw = await request.json()
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if not raw.get("correction"):
        raw.pop("correction", None)
    try:
        body = FeedbackCreate.model_validate(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    return await asyncio.to_thread(stored_api.create_feedback, body, request, context(request, me))


@router.post("/feedback/export")
async def export(request: Request, me: SignedIn, min_rating: Annotated[str, Form()] = "1",
                 model: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """The rated completions (corrections in place of the answers they correct) as a fine-tuning file."""
    check_csrf(request, me.csrf, csrf)
    try:
        body = FileFromSource.model_validate({
            "purpose": "fine-tune", "filename": "feedback.jsonl",
            "source": {"type": "stored_completions", "min_rating": min_rating, "model": model or None}})
        f = await asyncio.to_thread(export_to_file, control(request), context(request, me), body)
    except ValidationError as e:
        return await _feedback_page(request, me, 400, errors=[str(e.errors()[0]["msg"])])
    except LlmaasError as e:
        return await _feedback_page(request, me, e.status_code, errors=form_errors(e))
    return RedirectResponse(f"/console/files/{f.id}", status_code=303)
