"""Requests straight through an ASGI application, as a server would hand them over.

For what the test clients cannot show: a browser that goes away mid-answer, a request whose
URL must not be logged by an HTTP client (it quotes a launch code).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client


def http_scope(
    method: str, path: str, *, query: str = "", headers: list[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """An HTTP request's ASGI scope from 127.0.0.1 to 127.0.0.1:8000; `headers` besides Host."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def cookie_header(client: Client) -> tuple[bytes, bytes]:
    """The Cookie header `client`'s browser would send (all its cookies)."""
    value = "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())
    return (b"cookie", value.encode())


@contextlib.contextmanager
def transaction_kept() -> Iterator[None]:
    # As Django's test client does: a request's end must not close the test's connection.
    # (The test client itself connects these again after each of its requests.)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


async def answer_of(
    app: Callable[..., Awaitable[None]],
    scope: dict[str, Any],
    *,
    body: bytes = b"",
    gone: asyncio.Event | None = None,
    on_start: Callable[[], None] = lambda: None,
    on_body: Callable[[], None] = lambda: None,
) -> tuple[int, dict[str, str], bytes]:
    """One request through an ASGI application, as a server hands it over: its status (0:
    none sent), headers (lower-case names) and body. The browser goes away when `gone` is
    set (by default, once the answer is complete); `on_start` and `on_body` hear of the
    answer's start and of each piece of its body."""
    messages: list[dict[str, Any]] = []
    hung_up = gone or asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.start":
            on_start()
        if message["type"] == "http.response.body" and message.get("body"):
            on_body()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            hung_up.set()
        await asyncio.sleep(0)  # as a real connection lets others run

    await asyncio.wait_for(app(scope, receive, send), 10)
    starts = [m for m in messages if m["type"] == "http.response.start"]
    if not starts:
        return 0, {}, b""
    headers = {name.decode().lower(): value.decode() for name, value in starts[0]["headers"]}
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return starts[0]["status"], headers, content
