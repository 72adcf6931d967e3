"""Integration health at a glance, one line per trusted KHEOPS server (admin index page)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from launcher import kheops, services
from launcher.models import KheopsServer, LaunchOutcome

FAILURE_WINDOW = timedelta(hours=24)
# The admin page must stay fast: a server that does not answer within this is reported as
# such, and the verdict is reused for a minute rather than asked on every page view.
DISCOVERY_CHECK_TIMEOUT = 2.0
DISCOVERY_VERDICT_SECONDS = 60


@dataclass(frozen=True)
class DiscoveryVerdict:
    answers: bool
    message: str
    checked_at: datetime


@dataclass(frozen=True)
class ServerHealth:
    server: KheopsServer
    last_success_at: datetime | None
    failures_in_window: int
    replays_in_window: int
    # None when the server is disabled: nobody can launch from it, so it is not asked.
    discovery: DiscoveryVerdict | None


# Not failures: a launch that worked, one whose viewer has not asked for its token (yet),
# and a replay, the same KHEOPS link opened twice (a double click, the Back button), refused
# as it should be while the first launch went on (replays are counted apart), or sent back
# to its own viewer when the same browser opened it again.
NOT_FAILURES = [
    LaunchOutcome.SUCCESS,
    LaunchOutcome.PENDING,
    LaunchOutcome.REPLAY,
    LaunchOutcome.REOPENED,
]


def with_launch_counts(
    servers: QuerySet[KheopsServer], *, now: datetime | None = None
) -> QuerySet[KheopsServer]:
    """`servers` annotated with `last_success_at`, `failures_in_window` and
    `replays_in_window` (one query)."""
    in_window = Q(launchrecord__created_at__gte=(now or timezone.now()) - FAILURE_WINDOW)
    return servers.annotate(
        last_success_at=Max(
            "launchrecord__created_at", filter=Q(launchrecord__outcome=LaunchOutcome.SUCCESS)
        ),
        failures_in_window=Count(
            "launchrecord", filter=~Q(launchrecord__outcome__in=NOT_FAILURES) & in_window
        ),
        replays_in_window=Count(
            "launchrecord", filter=Q(launchrecord__outcome=LaunchOutcome.REPLAY) & in_window
        ),
    )


def server_health(*, now: datetime | None = None) -> list[ServerHealth]:
    servers = list(with_launch_counts(KheopsServer.objects.order_by("name", "id"), now=now))
    verdicts = discovery_verdicts([server for server in servers if server.enabled])
    return [
        ServerHealth(
            server=server,
            last_success_at=server.last_success_at,  # type: ignore[attr-defined]
            failures_in_window=server.failures_in_window,  # type: ignore[attr-defined]
            replays_in_window=server.replays_in_window,  # type: ignore[attr-defined]
            discovery=verdicts.get(server.pk),
        )
        for server in servers
    ]


def discovery_verdicts(servers: list[KheopsServer]) -> dict[int, DiscoveryVerdict]:
    """Whether each server's discovery document answers and validates; cached briefly.

    Servers not in the cache are asked all at once, so the page waits at most about one
    DISCOVERY_CHECK_TIMEOUT however many servers are down.
    """
    verdicts: dict[int, DiscoveryVerdict] = {}
    to_check: list[KheopsServer] = []
    for server in servers:
        cached = cache.get(_cache_key(server))
        if isinstance(cached, DiscoveryVerdict):
            verdicts[server.pk] = cached
        else:
            to_check.append(server)
    if to_check:
        timeout = min(settings.KHEOPS_HTTP_TIMEOUT, DISCOVERY_CHECK_TIMEOUT)
        answers = services.check_servers(to_check, timeout=timeout)
        for server, answer in zip(to_check, answers, strict=True):
            verdict = DiscoveryVerdict(
                answers=not isinstance(answer, kheops.KheopsError),
                message=str(answer),
                checked_at=timezone.now(),
            )
            cache.set(_cache_key(server), verdict, DISCOVERY_VERDICT_SECONDS)
            verdicts[server.pk] = verdict
    return verdicts


def _cache_key(server: KheopsServer) -> str:
    return "kheops-health:" + hashlib.sha256(server.discovery_url.encode()).hexdigest()
