"""Blocking work reached from async code: the database, and RSA signatures.

The ORM is synchronous, and a signature costs over a millisecond of CPU: neither may run on
the event loop, which must stay free to answer everything else (KHEOPS's calls back to us
above all). `run` hands such work to `sync_to_async(thread_sensitive=True)`, as Django's own
async ORM methods do: in the server, the request's own thread (asgiref gives each request
one, and Django uses it for the request's signals anyway); under the test client, the test's
thread and its transaction.

Each unit gives its database connection back when it ends, so a request that then waits
seconds on KHEOPS holds none meanwhile (with PostgreSQL, connections come from a bounded
pool: a burst of launches cannot use them up). Inside a transaction (a test's) the
connection must stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
T = TypeVar("T")


async def run(function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    return await sync_to_async(_unit, thread_sensitive=True)(function, *args, **kwargs)


def _unit(function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return function(*args, **kwargs)
    finally:
        release_connections()


def release_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
