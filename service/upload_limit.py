"""Refuse request bodies over the upload limit before they are read whole, and bodies that take
too long to arrive.

Three checks: a declared Content-Length over the limit is answered 413 before any body byte is
read; a body without (or lying about) its length is counted while it streams in and cut off at
the limit; a body not complete `body_timeout_s` after the request started is answered 408, so
that clients sending a byte at a time cannot hold connections (and their buffers) for as long as
they like.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class UploadLimitMiddleware:
    """ASGI middleware answering 413 `{"detail": ...}` for bodies over `max_bytes` and 408 for
    bodies not received within `body_timeout_s` of the request's start."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    def _detail(self) -> str:
        return f"upload too large: the limit is {self.max_bytes / 1048576:g} MiB (CVM_MAX_UPLOAD_MB)"

    async def _refuse(self, send: Send, status: int = 413, detail: str | None = None) -> None:
        body = json.dumps({"detail": detail or self._detail()}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        # Closing the connection: the rest of the body is never read.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        overflow = slow = body_done = False
        started = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def counting_receive() -> Message:
            nonlocal received, overflow, slow, body_done
            if body_done:  # after the body, receive() only waits for the disconnect: not timed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                slow = True
                raise _BodyTooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow or slow:  # the app's own error reply for the aborted body is replaced by ours
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except (_BodyTooLarge, _BodyTooSlow):
            pass
        except Exception:
            if not (overflow or slow):
                raise
        if started:
            return
        if overflow:
            await self._refuse(send)
        elif slow:
            detail = (
                f"request body not received within {self.body_timeout_s:g} s (CVM_BODY_TIMEOUT_S); "
                "send it at once"
            )
            await self._refuse(send, 408, detail)
