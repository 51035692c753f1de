"""ASGI middleware of the server: body limits enforced before the bytes are read, request
counting, aborting a response whose body cannot be completed, HEAD answered as GET, and request
ids.

They are plain ASGI (not Starlette's ``BaseHTTPMiddleware``): that one re-sends a streamed body
through its own response and always ends it normally, so a stream cut short by a dying engine would
look complete to the client.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StreamAborted(Exception):
    """Raised inside a streamed response body that cannot be completed (the engine died after
    the headers were sent): the connection is closed without the body's terminating chunk, so
    the client sees a broken transfer instead of a short file that looks whole."""


def error_body(
    message: str, *, param: str | None = None, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    """OpenAI's error shape, the body of every error this server answers."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


async def send_json_error(
    send: Send,
    status: int,
    message: str,
    *,
    close: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An OpenAI-shaped error answered from middleware (before any route ran)."""
    body = json.dumps(error_body(message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *(headers or ()),
    ]
    if close:  # the rest of the request body is never read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AbortFailedStreams:
    """Turns :class:`StreamAborted` into a dropped connection (uvicorn closes the transport when
    the app returns without finishing the body) with one log line instead of a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except StreamAborted as error:
            logger.error(
                "%s %s (%s): %s; the connection is closed without ending the body",
                scope.get("method"),
                scope.get("path"),
                scope.get("state", {}).get("request_id", "no id"),
                error,
            )


REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
"""A client's own request id is kept if it is this (a UUID, a trace id); anything else (spaces,
control characters, a kilobyte) is replaced, so it is safe to log and to send back."""


class RequestIds:
    """Every HTTP response carries ``X-Request-ID``, as OpenAI's API does: the client's own (a
    proxy's or tracer's, when it is a plain token) or a new one, also in ``scope["state"]`` as
    ``request_id`` for the server's log lines, so a failure a user reports can be found."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_id)


class AnswerHead:
    """HEAD is answered as GET without the body, as HTTP defines it: uptime monitors and load
    balancers probe ``/health`` with HEAD, which FastAPI's GET routes otherwise refuse with 405.
    The route sees a GET on a copy of the scope (the server keeps the original, so it frames the
    response as HEAD's); the headers, ``Content-Length`` included, are the GET's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class CountRequests:
    """``chatterbox_requests_total{route,status}``: the route template (``unmatched`` when no
    route took the request) and the status sent."""

    def __init__(self, app: ASGIApp, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.counter.labels(route, str(status[0])).inc()


class BodyTooLarge(Exception):
    pass


class LimitRequestBodies:
    """Reads a request body only up to ``limit_for(path)`` bytes, as sent (a compressed body, any
    ``Content-Encoding`` but identity, is a 415 before a byte is read): a ``Content-Length`` above it
    is answered 413 before a byte is read, and a chunked body is read until it passes the limit,
    then answered 413 (the connection is closed; the rest is never read). A body within the limit
    is buffered and handed to the app as it came."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_for(scope["path"])
        too_large = f"request body is larger than {limit:,} bytes, the most {what}"
        coding = dict(scope["headers"]).get(b"content-encoding", b"identity").strip().lower()
        if coding not in (b"", b"identity"):
            # Read as it is, a gzip body is 'not UTF-8' or an unreadable multipart: say why.
            await send_json_error(
                send,
                415,
                f"request bodies are read as sent: Content-Encoding {coding.decode('latin-1')} is "
                "not supported; send the body uncompressed (no Content-Encoding header)",
                close=True,
                headers=[(b"accept-encoding", b"identity")],
            )
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json_error(send, 400, "Content-Length is not a number", close=True)
                return
            if int(declared) > limit:
                await send_json_error(send, 413, too_large, close=True)
                return
        try:
            messages = await _read_body(receive, limit)
        except BodyTooLarge:
            await send_json_error(send, 413, too_large, close=True)
            return
        await self.app(scope, _replay(messages, receive), send)


async def _read_body(receive: Receive, limit: int) -> list[Message]:
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages  # a disconnect: the app sees it as it would have
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        # The buffered body first, then the connection's own messages (disconnects).
        return pending.pop(0) if pending else await receive()

    return replayed
