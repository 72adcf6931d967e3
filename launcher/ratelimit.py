"""Per-client-address limits on the launch and the viewer's token request.

A flood of launch URLs with a trusted `conf_uri` and made-up codes would otherwise have us
write rows, sign assertions and call KHEOPS (which then calls us three times) for each. Each
kind of request is counted per client address (launcher.clientaddr; an IPv6 client by its
/64, what one host usually has to itself) in fixed periods: LAUNCH_RATE_LIMIT and
TOKEN_RATE_LIMIT, e.g. (120, 60) for 120 a minute; None is no limit.

The counts must be shared by every server process (uvicorn --workers), or each would allow
the whole limit:

- with REDIS_URL, in Redis: SET NX with an expiry, then INCR, in one MULTI/EXEC round trip;
- otherwise in the database (RateCounter): one INSERT … ON CONFLICT DO UPDATE … RETURNING
  statement, atomic on SQLite and PostgreSQL alike (Django's database cache has no atomic
  increment: simultaneous requests would lose counts). On PostgreSQL it commits without
  waiting for the disk (synchronous_commit off): a count lost in a crash is harmless.

No library fits: django-ratelimit (4.1) does not support async views, and Django's async
cache API increments with a read and a write.
"""

from __future__ import annotations

import ipaddress
import math
import random
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection, transaction

from launcher import blocking
from launcher.models import RateCounter

# What is counted: the kind of request (the key of its counters).
LAUNCH = "launch"
TOKEN_REQUEST = "viewer-token"  # noqa: S105 - a name, not a secret

# About one new period in this many also deletes the counters of periods gone by.
CLEAN_UP_ONE_IN = 50


@dataclass(frozen=True)
class OverTheLimit:
    limit: int
    seconds: int  # the period
    retry_after: int  # seconds until the period ends
    first: bool  # the first request over the limit in this period (worth a log line)


async def check(
    kind: str, address: str | None, rate: tuple[int, int] | None
) -> OverTheLimit | None:
    """Count one request of `kind` from `address`: None while within `rate`, else by how much."""
    if rate is None or address is None:
        return None
    limit, seconds = rate
    now = time.time()
    period_end = (math.floor(now / seconds) + 1) * seconds
    key = f"{kind}:{bucket(address)}"
    hits = await blocking.run(_count, key, period_end, seconds)
    if hits <= limit:
        return None
    return OverTheLimit(
        limit=limit,
        seconds=seconds,
        retry_after=max(1, math.ceil(period_end - now)),
        first=hits == limit + 1,
    )


def bucket(address: str) -> str:
    """What one client is counted by: its IPv4 address, or its IPv6 /64."""
    parsed = ipaddress.ip_address(address)
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _count(key: str, period_end: int, seconds: int) -> int:
    if settings.REDIS_URL:
        return _count_in_redis(key, period_end, seconds)
    return _count_in_database(key, period_end)


# --- Redis ------------------------------------------------------------------------------------

_redis_lock = threading.Lock()
_redis_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    with _redis_lock:
        client = _redis_clients.get(settings.REDIS_URL)
        if client is None:
            client = _redis_clients[settings.REDIS_URL] = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
            )
        return client


def redis_key(key: str, period_end: int) -> str:
    prefix = settings.CACHES["default"].get("KEY_PREFIX") or "kheops-ohif"
    return f"{prefix}:rate:{key}:{period_end}"


def _count_in_redis(key: str, period_end: int, seconds: int) -> int:
    pipeline = _redis().pipeline(transaction=True)
    name = redis_key(key, period_end)
    # The key of a period lives a little longer than the period, then goes by itself.
    pipeline.set(name, 0, ex=seconds + 5, nx=True)
    pipeline.incr(name)
    return int(pipeline.execute()[1])


# --- the database -----------------------------------------------------------------------------


def _count_in_database(key: str, period_end: int) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(_upsert_sql(), [key, period_end])
        (hits,) = cursor.fetchone()
        if hits == 1 and random.randrange(CLEAN_UP_ONE_IN) == 0:  # noqa: S311 - not a secret
            forget_past_periods(now=time.time())
    return int(hits)


def _upsert_sql() -> str:
    quote = connection.ops.quote_name
    table, key, end, hits = (
        quote(name) for name in (RateCounter._meta.db_table, "key", "period_end", "hits")
    )
    return (
        f"INSERT INTO {table} ({key}, {end}, {hits}) VALUES (%s, %s, 1) "  # noqa: S608
        f"ON CONFLICT ({key}) DO UPDATE SET "
        f"{hits} = CASE WHEN {table}.{end} = excluded.{end} THEN {table}.{hits} + 1 ELSE 1 END, "
        f"{end} = excluded.{end} RETURNING {hits}"
    )


def forget_past_periods(*, now: float) -> int:
    """Delete the database counters of periods that have ended; how many."""
    deleted, _ = RateCounter.objects.filter(period_end__lte=now).delete()
    return deleted
