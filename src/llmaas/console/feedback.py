"""The console's Feedback page and the playground's ratings: review stored completions with their ratings, rate
an answer 👍/👎 with a correction, export the rated ones to a fine-tuning file and start a job from it — the loop
closes in the browser. The stored-completion service and /v1 functions do the work."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmaas.api.routers import stored_completions as stored_api
from llmaas.console.forms import can_write, form_errors, json_object, validated
from llmaas.console.routes import SignedIn, page
from llmaas.console.session import Visitor, check_csrf, context, control
from llmaas.core.errors import LlmaasError
from llmaas.protocol.stored_completions import FeedbackCreate, FileFromSource
from llmaas.serving.completion_store import export_to_file

router = APIRouter(prefix="/console", include_in_schema=False)
RATED = {"": None, "good": "good", "bad": "bad", "unrated": "unrated"}


async def _feedback_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    model = request.query_params.get("model") or None
    rated = RATED.get(request.query_params.get("rated", ""))
    rows = await asyncio.to_thread(control(request).stored.review, context(request, me), model=model, rated=rated)
    return page(request, "feedback.html", me, status_code, rows=rows, model=model or "", rated=rated or "",
                writable=can_write(me), active="feedback", **ctx)


@router.get("/feedback")
async def feedback_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _feedback_page(request, me)


@router.post("/feedback/rate")
async def rate(request: Request, me: SignedIn) -> dict:
    """A rating from the playground (JSON, X-CSRF-Token) or the feedback page."""
    body = await json_object(request, me, FeedbackCreate, blank=("correction",))
    return await asyncio.to_thread(stored_api.create_feedback, body, request, context(request, me))


@router.post("/feedback/export")
async def export(request: Request, me: SignedIn, min_rating: Annotated[str, Form()] = "1",
                 model: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """The rated completions (corrections in place of the answers they correct) as a fine-tuning file."""
    check_csrf(request, me.csrf, csrf)
    try:
        body = validated(FileFromSource, {
            "purpose": "fine-tune", "filename": "feedback.jsonl",
            "source": {"type": "stored_completions", "min_rating": min_rating, "model": model or None}},
            hidden=("source",))
        f = await asyncio.to_thread(export_to_file, control(request), context(request, me), body)
    except LlmaasError as e:
        return await _feedback_page(request, me, e.status_code, errors=form_errors(e))
    return RedirectResponse(f"/console/files/{f.id}", status_code=303)
