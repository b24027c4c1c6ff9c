"""Who may read /metrics. Prometheus output names models and (when enabled) tenants and their spend, so with
LLMAAS_METRICS_KEY set the route needs that key as a bearer token, or a platform admin's API key; otherwise
401 in the OpenAI envelope. Unset, /metrics stays open (the route lives in health.py; guarding it here keeps
the check in one place, ahead of routing)."""

from __future__ import annotations

import asyncio
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from llmaas.api.errors import send_error
from llmaas.control.auth.principal import Role
from llmaas.core.config import Settings
from llmaas.core.errors import LlmaasError, error_body


class MetricsAuthMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.key = app, settings.metrics_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != "/metrics" or not self.key:
            await self.app(scope, receive, send)
            return
        secret = _bearer(scope)
        if secret is not None and (hmac.compare_digest(secret.encode(), self.key.encode())
                                   or await _is_admin_key(scope, secret)):
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, error_body("/metrics needs LLMAAS_METRICS_KEY or an admin API key as a bearer "
                                               "token.", "invalid_request_error", None, "invalid_api_key"),
                         [(b"www-authenticate", b"Bearer")])


def _bearer(scope: Scope) -> str | None:
    for k, v in scope["headers"]:
        if k == b"authorization":
            scheme, _, value = v.decode("latin-1").partition(" ")
            return value.strip() if scheme.lower() == "bearer" else None
    return None


async def _is_admin_key(scope: Scope, secret: str) -> bool:
    app = scope.get("app")
    cp = getattr(getattr(app, "state", None), "control", None)
    if cp is None:
        return False
    client = scope["client"][0] if scope.get("client") else None
    try:
        p = cp.keys.cached(secret, client) or await asyncio.to_thread(cp.keys.authenticate, secret, client)
    except LlmaasError:
        return False  # a bad key counts towards the client's bad-key limit inside authenticate
    return p.role is Role.ADMIN
