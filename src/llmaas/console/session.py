"""Who a console request speaks for: the session cookie → the session (control/auth/sessions.py) → the API key's
current principal. Forms and fetches that change anything carry the session's CSRF token (a hidden field, or the
X-CSRF-Token header) and are refused without it."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response

from llmaas.api.deps import request_id
from llmaas.control.auth.principal import Context, Principal
from llmaas.control.auth.sessions import Session
from llmaas.control.plane import ControlPlane

COOKIE = "llmaas_session"
LOGIN_CSRF_COOKIE = "llmaas_login_csrf"  # double-submit token of the sign-in form (no session yet)


class NotSignedIn(Exception):
    """A page asked for without a live session: answered with a redirect to the sign-in page."""


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token: answered 403."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """A signed-in console user: their key's principal and their session's CSRF token."""

    principal: Principal
    csrf: str
    key_name: str = ""
    tenant_name: str = ""


def control(request: Request) -> ControlPlane:
    cp = request.app.state.control
    if cp is None:  # LLMAAS_AUTH=false: no keys to sign in with
        raise NotSignedIn
    return cp


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", secure=secure(request),
                        path="/console")


async def visitor(request: Request) -> Visitor:
    """The signed-in visitor, or NotSignedIn (the session ended, or its key was revoked or expired)."""
    cp = control(request)
    token = request.cookies.get(COOKIE)
    session: Session | None = await asyncio.to_thread(cp.sessions.get, token) if token else None
    if session is None:
        raise NotSignedIn
    principal = await asyncio.to_thread(cp.keys.principal_of, session.key_id)
    if principal is None:
        raise NotSignedIn
    return Visitor(principal, session.csrf, session.key_name, session.tenant_name)


def check_csrf(request: Request, expected: str, sent: str | None) -> None:
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a 500, on a forged token).
    if not sent or not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode()):
        raise CsrfRefused


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def context(request: Request, me: Visitor) -> Context:
    """The audit context of a console request: the key, the client, the request id."""
    return Context(me.principal, request.client.host if request.client else None, request_id(request))
