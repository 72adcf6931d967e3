"""Requests straight through an ASGI application, as a server would hand them over.

For what the test clients cannot show: a browser that goes away mid-answer, a request whose
URL must not be logged by an HTTP client (it quotes a launch code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
