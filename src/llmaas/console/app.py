"""Mounting the console on an app: templates, static files, its routers, its error pages and security headers."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from llmaas.console import account, admin, batches, evals, feedback, work
from llmaas.console import routes as pages
from llmaas.console.session import CsrfRefused, NotSignedIn


def mount(app: FastAPI) -> None:
    """Serve the console under /console on `app`."""
    templates = Jinja2Templates(directory=pages.HERE / "templates")
    templates.env.filters["utc"] = lambda t: datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") if t else ""
    app.state.console_templates = templates
    app.mount("/console/static", StaticFiles(directory=pages.HERE / "static"), name="console-static")
    app.include_router(pages.router)
    for r in (work.router, evals.router, feedback.router, batches.router, account.router, admin.router):
        app.include_router(r)
    app.add_exception_handler(NotSignedIn, pages.not_signed_in)
    app.add_exception_handler(CsrfRefused, pages.csrf_refused)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.startswith("/console"):
            response.headers.setdefault("Content-Security-Policy", pages.CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            if not request.url.path.startswith("/console/static"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response
