"""Prometheus metrics (prometheus-client): what a hospital's monitoring scrapes at /metrics.

Counters and histograms are updated where things happen (services: launches and exchanges;
kheops: every call to KHEOPS; views: the relay); the grants are counted from the database at
scrape time, by a collector of their own. Nothing secret is ever a label: outcomes, call
kinds, error kinds and directions only.

Several server processes (uvicorn --workers): with PROMETHEUS_MULTIPROC_DIR set in the
environment before the server starts, each process writes its values to files there and a
scrape, answered by any one of them, adds up all of them (prometheus-client's multiprocess
mode). The directory must be emptied before the server starts. Without it, each process
answers its own values (fine for a single process).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404, HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "kheops_ohif"

if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and not os.path.isdir(
    os.environ["PROMETHEUS_MULTIPROC_DIR"]
):
    # prometheus-client would fail on its first file with a bare FileNotFoundError.
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR {os.environ['PROMETHEUS_MULTIPROC_DIR']!r} is not a "
        "directory: create it, empty, before the server starts (or unset it for one process)."
    )

LAUNCHES = Counter(
    f"{PREFIX}_launches",
    "Launch requests, by outcome (pending: accepted, its viewer loading).",
    ["outcome"],
)
EXCHANGES = Counter(
    f"{PREFIX}_exchanges",
    "Code exchanges (the viewer's first token request), by outcome.",
    ["outcome"],
)
EXCHANGE_SECONDS = Histogram(
    f"{PREFIX}_exchange_seconds",
    "Duration of a code exchange: KHEOPS round trips, signing, and recording its outcome.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KHEOPS_SECONDS = Histogram(
    f"{PREFIX}_kheops_request_seconds",
    "Round trip of one call to KHEOPS (discovery, token, userinfo), queueing excluded.",
    ["call"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
KHEOPS_ERRORS = Counter(
    f"{PREFIX}_kheops_errors",
    "Failed calls to KHEOPS, by call and kind (timeout, unavailable, rejected, malformed, "
    "insecure).",
    ["call", "kind"],
)
RELAY_STREAMS = Gauge(
    f"{PREFIX}_relay_streams_in_flight",
    "DICOMweb answers being relayed from KHEOPS to a viewer right now.",
    multiprocess_mode="livesum",
)
RELAY_BYTES = Counter(
    f"{PREFIX}_relay_bytes",
    "Bytes relayed between viewers and KHEOPS (down: answers, up: uploads).",
    ["direction"],
)

RELAY_OFFLOADED = Counter(
    f"{PREFIX}_relay_offloaded",
    "Relayed reads handed to nginx to carry (its relay offload): their bytes are nginx's to "
    "count, not in relay_bytes.",
)


def kheops_error_kind(exc: Exception) -> str:
    """The label of a launcher.kheops error (its class name, without the prefix)."""
    from launcher import kheops  # kheops imports this module

    for kind, label in (
        (kheops.KheopsTimeout, "timeout"),
        (kheops.KheopsUnavailable, "unavailable"),
        (kheops.KheopsRejected, "rejected"),
        (kheops.KheopsMalformed, "malformed"),
        (kheops.KheopsInsecure, "insecure"),
    ):
        if isinstance(exc, kind):
            return label
    return "other"


async def relayed(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`body`, counted: a stream in flight until it ends, and its bytes (added once, at the
    end: a multi-process counter costs a lock and a write each time)."""
    RELAY_STREAMS.inc()
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            yield chunk
    except Exception as exc:
        kind = kheops_error_kind(exc)
        if kind != "other":  # KHEOPS broke off mid-answer
            KHEOPS_ERRORS.labels("dicomweb", kind).inc()
        raise
    finally:
        RELAY_STREAMS.dec()
        RELAY_BYTES.labels("down").inc(size)
        # Closed early (the browser went away): close what it wraps too, at once (KHEOPS's
        # answer, launcher.kheops.raw_body), not whenever the collector finalizes it.
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


class GrantsCollector(Collector):
    """Viewer grants not yet expired, by state, counted in the database at each scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from launcher.models import GrantState, LaunchGrant

        family = GaugeMetricFamily(
            f"{PREFIX}_grants",
            "Unexpired viewer grants: pending (code not yet exchanged), active (token ready).",
            labels=["state"],
        )
        live = LaunchGrant.objects.filter(expires_at__gt=timezone.now())
        for label, state in (("pending", GrantState.PENDING), ("active", GrantState.READY)):
            family.add_metric([label], live.filter(state=state).count())
        yield family


class _ThisProcess(Collector):
    """What this process's default registry holds (single-process mode)."""

    def collect(self) -> Iterator[object]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def exposition() -> bytes:
    """The text a scrape gets: every process's values (multiprocess mode) or this one's,
    and the grants."""
    registry = CollectorRegistry(auto_describe=True)
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(GrantsCollector())
    return generate_latest(registry)


def forget_dead_processes() -> None:
    """Drop the live gauges of server processes that are gone (a worker replaced by
    uvicorn); their counters stay, as Prometheus expects of counters."""
    directory = multiprocess_dir()
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)


def forget_this_process() -> None:
    """At a graceful stop: this process's live gauges leave the sum."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid(), multiprocess_dir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def allowed(request: HttpRequest) -> bool | None:
    """True: serve; False: a wrong or missing token where one is needed (401); None: as if
    there were no such page (404)."""
    token = settings.METRICS_TOKEN
    presented = request.headers.get("Authorization", "")
    scheme, _, credentials = presented.partition(" ")
    if token and scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.strip().encode(), token.encode())
    domain, _ = split_domain_port(request.get_host())
    if settings.ADMIN_HOSTS and validate_host(domain, settings.ADMIN_HOSTS):
        return True
    return False if token else None


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """GET /metrics (synchronous: Django runs it in a thread, off the event loop, with its
    database counts). Access: `allowed`."""
    verdict = allowed(request)
    if verdict is None:
        raise Http404("No such page.")
    if not verdict:
        response = HttpResponse("A valid bearer token is required.\n", status=401)
        response["Content-Type"] = "text/plain; charset=utf-8"
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
