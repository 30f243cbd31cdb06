"""Request bodies over a size limit get 413 before they are read: a pure ASGI middleware, outermost in the app.

A declared `Content-Length` over the limit is answered at once, without reading a byte of the body. A body sent
without one (chunked) or longer than it declared is counted as it streams in; at the chunk that crosses the limit
the app is told the client disconnected (so it stops reading: at most `max_bytes` plus one chunk is ever held),
whatever it answers to that is dropped, and the client gets the 413. (Raising from `receive` instead would reach
the handler wrapped in an exception group by the HTTP middleware and come out as a 400.)

Before the 413 is sent, the rest of the body is drained — read and thrown away, one chunk at a time, for at most
DRAIN_S seconds and DRAIN_FACTOR × the limit bytes. An HTTP/1.1 client writes its whole request before it reads the
answer; a server that closes the connection with unread bytes in its buffer makes the kernel reset it, and the
reset can destroy the 413 before the client reads it (seen: "Connection reset by peer" instead of the 413). Nothing
drained is kept or parsed, and the drain awaits the socket, so other requests go on meanwhile; a body beyond the
drain bounds is cut off and its client may see the reset.
"""

from __future__ import annotations

import asyncio
import json

DRAIN_S = 1.0  # the longest a refused body is drained before the 413 is sent
DRAIN_FACTOR = 4  # ... and the most bytes drained, as a multiple of the limit


def _message(limit: int) -> str:
    return f"the request body is larger than this server accepts ({limit} bytes, --max-body-bytes)"


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                return await _refuse(send, 400, "the Content-Length header is not a number", "invalid_request")
            if too_large:
                await _drain(receive, min(int(declared), DRAIN_FACTOR * self.max_bytes))
                return await _refuse(send, 413, _message(self.max_bytes), "body_too_large")
        received, exceeded, started = 0, False, False

        async def counted():
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message):
            nonlocal started
            if exceeded:
                return  # the app's answer to a cut-off body: replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)
        if exceeded and not started:
            await _drain(receive, DRAIN_FACTOR * self.max_bytes)
            await _refuse(send, 413, _message(self.max_bytes), "body_too_large")


async def _drain(receive, max_bytes: int) -> None:
    """Read and discard the request body until it ends, the client leaves, or DRAIN_S / max_bytes run out."""
    async def drain():
        seen = 0
        while seen <= max_bytes:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            seen += len(message.get("body", b""))

    try:
        await asyncio.wait_for(drain(), DRAIN_S)
    except asyncio.TimeoutError:
        pass


async def _refuse(send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
