"""An optional API key: with `CVM_API_KEY` set, every request needs it, except the ones a load
balancer, a browser opening the page, or an operator reading the docs make without one.

The key is accepted as `X-API-Key: <key>`, `Authorization: Bearer <key>` or the same-site cookie
`cvm_api_key` that the map page sets once the user typed the key (images drawn by the page cannot
send headers), and compared in constant time. A missing or wrong key is answered
401 `{"detail": ...}` before the route runs.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from http.cookies import CookieError, SimpleCookie
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

# Paths open without the key: liveness and readiness probes, the page and its assets, the API docs.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/favicon.ico", "/docs", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/", "/docs/")
HEADER = "X-API-Key"
COOKIE = "cvm_api_key"


def is_open(path: str) -> bool:
    """Whether `path` is served without the key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_key(scope: Scope) -> str | None:
    """The key a request carries: `X-API-Key`, a bearer `Authorization` header, or the cookie."""
    cookie_key = None
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
        if name == b"cookie":
            jar = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(value.decode("latin-1"))
            if COOKIE in jar:
                cookie_key = unquote(jar[COOKIE].value)
    return cookie_key


class ApiKeyMiddleware:
    """ASGI middleware answering 401 for requests without the right key (CORS preflights pass:
    a browser sends them without credentials)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = presented_key(scope)
        if given is not None and hmac.compare_digest(given.encode(), self.key):
            await self.app(scope, receive, send)
            return
        detail = f"missing or wrong API key: send it as `{HEADER}: <key>` (CVM_API_KEY is set)"
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
