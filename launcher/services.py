"""The launch: from KHEOPS's redirect to a viewer grant bound to the browser that launched.

Views parse and render; everything that decides lives here, in keyword-only functions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError
from django.db.models import Q
from django.http import QueryDict
from django.utils import timezone, translation
from django.utils.functional import Promise, lazy
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.debug import sensitive_variables

from launcher import blocking, keys, kheops, metrics, ratelimit, sealing, writes
from launcher.models import (
    GrantState,
    KheopsServer,
    LaunchGrant,
    LaunchOutcome,
    LaunchRecord,
    Provider,
    TokenDelivery,
    UsedCode,
)

logger = logging.getLogger(__name__)

# DICOM UIDs (PS3.5 §9.1): dot-separated numbers without leading zeros, at most 64 chars.
# `\Z`, not `$`: `$` also matches before a final newline, which let "1.2.3\n" through into
# audit rows and log lines (log forging).
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+\Z")
# KHEOPS issues 22 alphanumeric characters; a little slack in case that ever changes.
CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{8,64}\Z")
# Ours are secrets.token_urlsafe(16): 22 URL-safe characters (the column holds 32).
LAUNCH_ID = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
MAX_CODE_LENGTH = 8192
# KHEOPS codes are compact JWS (an HS256 JWT, docs/kheops-protocol.md): three base64url
# parts, the first a JSON header naming the algorithm. Anything else is refused before a row
# is written or an assertion signed.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\Z")
# The random key a launching browser keeps on the launch path (secrets.token_urlsafe(32)).
LAUNCHER_KEY = re.compile(r"[A-Za-z0-9_-]{43}\Z")
MAX_STUDIES = 50
# KHEOPS codes live 600 s plus 60 s leeway: a used-code row older than that guards nothing.
USED_CODE_RETENTION = timedelta(seconds=660)
_GRANT_PURPOSE = "access-token"
_CODE_PURPOSE = "launch-code"
# KHEOPS codes live 600 s: a launch whose viewer has not exchanged its code by then cannot.
PENDING_LIFETIME = timedelta(seconds=600)
# An expired grant is kept this long so that its viewer URL says "expired", not "not yours".
GRANT_RETENTION_AFTER_EXPIRY = timedelta(days=1)
# A grant whose code was never exchanged (no viewer asked: the tab closed at once, or a
# forged launch) is dropped sooner.
PENDING_RETENTION_AFTER_EXPIRY = timedelta(hours=1)


# What to do, when a refusal does not say better.
OPEN_AGAIN = gettext_lazy("Open the study again from KHEOPS.")

# What clinicians read is in their language (gettext_lazy: translated when the page or the
# answer is written, in the request's language); what the audit trail and the log keep of
# it is English (`in_english`), and so is what a grant row keeps (translated when shown).
Text = str | Promise


def in_english(text: Text) -> str:
    with translation.override("en"):
        return str(text)


def _wait_then(seconds: int, then: str) -> str:
    if then == "reload":
        return ngettext(
            "Wait %(count)d second, then reload this page.",
            "Wait %(count)d seconds, then reload this page.",
            seconds,
        ) % {"count": seconds}
    return ngettext(
        "Wait %(count)d second, then open the study again from KHEOPS.",
        "Wait %(count)d seconds, then open the study again from KHEOPS.",
        seconds,
    ) % {"count": seconds}


# "Wait 30 seconds, then …", in the language of the page that shows it.
wait_then = lazy(_wait_then, str)


class ViewerRefused(Exception):
    """The viewer of a launch cannot open: what the error page and the token answer say.

    `message` says what happened and `advice` what to do, one plain sentence each;
    `return_uri` (the way back into KHEOPS) and `study_uids` when they are known.
    """

    def __init__(
        self,
        status: int,
        message: Text,
        *,
        advice: Text = OPEN_AGAIN,
        return_uri: str | None = None,
        study_uids: tuple[str, ...] = (),
        retryable: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.advice = advice
        self.return_uri = return_uri
        self.study_uids = study_uids
        # The same request may succeed in a moment (KHEOPS slow or away, a restart).
        self.retryable = retryable
        # Seconds before asking again is worth it (a rate limit): the Retry-After header.
        self.retry_after = retry_after


class LaunchFailed(ViewerRefused):
    """A launch that cannot go on; also carries what its audit row needs."""

    def __init__(
        self,
        outcome: LaunchOutcome,
        status: int,
        message: Text,
        *,
        detail: str = "",
        return_uri: str | None = None,
    ) -> None:
        super().__init__(
            status,
            message,
            advice=ADVICE.get(outcome, OPEN_AGAIN),
            return_uri=return_uri,
            retryable=outcome in TRANSIENT,
        )
        self.outcome = outcome
        self.detail = detail
        # A flood of refusals is logged once (the audit keeps every one).
        self.log_level = logging.WARNING


# Failures of the exchange worth trying again: its grant stays pending (the browser that
# launched asks again), its code stays claimed (nobody else can use it).
TRANSIENT = frozenset({LaunchOutcome.KHEOPS_TIMEOUT, LaunchOutcome.KHEOPS_UNAVAILABLE})

# What a clinician can do about each refused or failed launch.
ADVICE: dict[LaunchOutcome, Text] = {
    LaunchOutcome.BAD_REQUEST: gettext_lazy(
        "Open the study again from KHEOPS; if this happens again, "
        "show this page to your KHEOPS administrator."
    ),
    LaunchOutcome.UNKNOWN_PROVIDER: gettext_lazy(
        "Ask your KHEOPS album administrator to register this "
        "viewer again with its configuration URL."
    ),
    LaunchOutcome.PROVIDER_DISABLED: gettext_lazy(
        "Choose another viewer in KHEOPS, or ask this viewer's administrator to enable it again."
    ),
    LaunchOutcome.UNTRUSTED_SERVER: gettext_lazy(
        "Ask this viewer's administrator to add your KHEOPS server to its trusted servers."
    ),
    LaunchOutcome.INSECURE_SERVER: gettext_lazy(
        "Tell this viewer's administrator: it must trust your KHEOPS server by its https address."
    ),
    LaunchOutcome.REPLAY: gettext_lazy(
        "Open the study again from KHEOPS: each click makes a new link."
    ),
    LaunchOutcome.REOPENED: OPEN_AGAIN,
    LaunchOutcome.CODE_REJECTED: OPEN_AGAIN,
    LaunchOutcome.KHEOPS_UNAVAILABLE: gettext_lazy(
        "Wait a moment, then open the study again from KHEOPS."
    ),
    LaunchOutcome.KHEOPS_TIMEOUT: gettext_lazy(
        "Wait a moment, then open the study again from KHEOPS."
    ),
    LaunchOutcome.KHEOPS_MALFORMED: gettext_lazy(
        "Open the study again from KHEOPS; if this happens again, tell this viewer's administrator."
    ),
    LaunchOutcome.RATE_LIMITED: gettext_lazy(
        "Wait a moment, then open the study again from KHEOPS."
    ),
}
NOT_YOURS = gettext_lazy("This viewer link belongs to another browser session.")
NOT_YOURS_ADVICE = gettext_lazy("Open the study from KHEOPS in this browser.")
EXPIRED = gettext_lazy("Your access to this study has expired.")
TOO_MANY_LAUNCHES = gettext_lazy(
    "Too many viewers were opened from your network address in a short time."
)
TOO_MANY_REQUESTS = gettext_lazy(
    "Too many viewers asked for access from your network address in a short time."
)
RESTARTING = gettext_lazy("The viewer is restarting.")
RESTARTING_ADVICE = gettext_lazy("Reload this page in a moment.")


@dataclass(frozen=True)
class LaunchParams:
    code: str
    conf_uri: str
    client_id: str
    study_uids: tuple[str, ...]
    return_uri: str | None

    def __repr__(self) -> str:  # the code is a secret
        return f"LaunchParams(client_id={self.client_id!r}, studies={len(self.study_uids)})"


@dataclass(frozen=True)
class ViewerGrant:
    """What the viewer of one launch needs (a LaunchGrant row, its token unsealed)."""

    launch_id: str
    access_token: str = field(repr=False)
    expires_at: float
    dicomweb_endpoint: str
    study_uids: tuple[str, ...]
    mode: str
    return_uri: str | None
    user_name: str
    # The secret the launching browser keeps in its cookie; known only at launch.
    browser_key: str = field(default="", repr=False)
    # The launching browser's key on the launch path (one per browser, not per launch): known
    # only at launch, and only when it is new or renewed.
    launcher_key: str = field(default="", repr=False)
    user_email: str = ""
    album_id: str = ""
    state: str = GrantState.READY
    failure_status: int | None = None
    failure_message: str = ""
    failure_advice: str = ""
    provider_id: int | None = None
    kheops_server_id: int | None = None
    # TokenDelivery: "relay" keeps the token on the server (launcher.relay).
    token_delivery: str = TokenDelivery.DIRECT

    @property
    def relayed(self) -> bool:
        return self.token_delivery == TokenDelivery.RELAY

    @property
    def seconds_left(self) -> int:
        return max(0, int(self.expires_at - time.time()))

    @property
    def expired(self) -> bool:
        return self.seconds_left <= 0


@sensitive_variables()
def parse_launch_params(query: QueryDict | None) -> LaunchParams:
    """Validate the launch query string; any problem is a 400 with a plain reason.

    `query` is None when Django refused to parse the query string at all (more than
    DATA_UPLOAD_MAX_NUMBER_FIELDS parameters).
    """
    if query is None:
        raise _bad_request(gettext_lazy("The launch address has too many parameters."))

    def single(name: str, *, required: bool = True) -> str | None:
        values = query.getlist(name)
        if len(values) > 1:
            raise _bad_request(
                format_lazy(
                    gettext_lazy("The parameter “{name}” appears more than once."), name=name
                )
            )
        if not values or not values[0]:
            if required:
                raise _bad_request(
                    format_lazy(gettext_lazy("The parameter “{name}” is missing."), name=name)
                )
            return None
        return values[0]

    code = single("code")
    conf_uri = single("conf_uri")
    client_id = single("client_id")
    return_uri = single("return_uri", required=False)
    assert code is not None and conf_uri is not None and client_id is not None
    if len(code) > MAX_CODE_LENGTH or not _is_compact_jws(code):
        raise _bad_request(gettext_lazy("The authorization code is not valid."))
    if len(conf_uri) > 2048:
        raise _bad_request(gettext_lazy("The KHEOPS configuration URL is not valid."))
    if not CLIENT_ID_PATTERN.match(client_id):
        raise _bad_request(gettext_lazy("The client_id is not valid."))
    if return_uri is not None and (len(return_uri) > 2048 or not return_uri.isprintable()):
        return_uri = None
    studies: list[str] = []
    for value in query.getlist("studyUID"):
        if len(value) > 64 or not UID_PATTERN.match(value):
            raise _bad_request(gettext_lazy("A studyUID is not a valid DICOM UID."))
        if value not in studies:
            studies.append(value)
    if not studies:
        raise _bad_request(
            format_lazy(gettext_lazy("The parameter “{name}” is missing."), name="studyUID")
        )
    if len(studies) > MAX_STUDIES:
        raise _bad_request(
            format_lazy(
                gettext_lazy("At most {count} studies can be opened at once."), count=MAX_STUDIES
            )
        )
    return LaunchParams(
        code=code,
        conf_uri=conf_uri,
        client_id=client_id,
        study_uids=tuple(studies),
        return_uri=return_uri,
    )


def _is_compact_jws(code: str) -> bool:
    if not COMPACT_JWS.match(code):
        return False
    header = code.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except ValueError:  # not base64url, not UTF-8 or not JSON
        return False
    return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)


def _bad_request(message: Text) -> LaunchFailed:
    return LaunchFailed(LaunchOutcome.BAD_REQUEST, 400, message)


# Trusted servers and providers change rarely and are read on every launch: each process
# keeps them for a few seconds; saving or deleting one in this process forgets them at once
# (launcher.apps connects the signals), other processes catch up within LOOKUP_CACHE_SECONDS.
LOOKUP_CACHE_SECONDS = 5.0
_lookups: dict[str, tuple[float, Any]] = {}


_MISSING = object()


def _in_memory(key: str) -> Any:
    hit = _lookups.get(key)
    if hit is not None and time.monotonic() - hit[0] < LOOKUP_CACHE_SECONDS:
        return hit[1]
    return _MISSING


def _cached(key: str, load: Any) -> Any:
    value = _in_memory(key)
    if value is _MISSING:
        value = load()
        _lookups[key] = (time.monotonic(), value)
    return value


async def _looked_up(key: str, load: Any) -> Any:
    """A lookup from memory on the event loop; from the database off it, when not in memory."""
    value = _in_memory(key)
    if value is _MISSING:
        value = await blocking.run(_cached, key, load)
    return value


def forget_lookups(**kwargs: Any) -> None:
    _lookups.clear()
    _known_discoveries.clear()
    _ready_grants.clear()


def provider_for(slug: str) -> Provider | None:
    return _cached(f"provider:{slug}", partial(_load_provider, slug))


def _load_provider(slug: str) -> Provider | None:
    return Provider.objects.filter(slug=slug).first()


def _load_trusted_servers() -> list[KheopsServer]:
    return list(KheopsServer.objects.filter(enabled=True))


def default_provider() -> Provider | None:
    return _cached(
        "provider:(default)",
        lambda: Provider.objects.filter(is_default=True, enabled=True).first(),
    )


def _provider_by_id(pk: int | None) -> Provider | None:
    if pk is None:
        return None
    return _cached(f"provider-id:{pk}", lambda: Provider.objects.filter(pk=pk).first())


def _server_by_id(pk: int | None) -> KheopsServer | None:
    if pk is None:
        return None
    return _cached(f"server-id:{pk}", lambda: KheopsServer.objects.filter(pk=pk).first())


def trusted_server_for(
    conf_uri: str, servers: list[KheopsServer] | None = None
) -> KheopsServer | None:
    # Exact string equality with the discovery URL of an enabled, trusted server: no
    # normalisation that an attacker could play with.
    for server in servers if servers is not None else _cached("servers", _load_trusted_servers):
        if server.discovery_url == conf_uri:
            return server
    return None


def safe_return_uri(return_uri: str | None, server: KheopsServer | None) -> str | None:
    """`return_uri` if it leads back into the trusted KHEOPS, else None (no open redirect)."""
    if not return_uri or server is None:
        return None
    return return_uri if kheops.is_under_root(return_uri, server.root_url) else None


def album_id_from(return_uri: str | None, server: KheopsServer) -> str:
    # KHEOPS sends ROOT/albums/{albumId}.
    if not return_uri:
        return ""
    prefix = f"{server.root_url}/albums/"
    if return_uri.startswith(prefix):
        album = return_uri[len(prefix) :].split("?", 1)[0].split("/", 1)[0]
        if album.isalnum() and len(album) <= 64:
            return album
    return ""


@sensitive_variables()
def _code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


# --- KHEOPS: this process's client, and the discovery document ------------------------------

_clients: WeakKeyDictionary[asyncio.AbstractEventLoop, kheops.Client] = WeakKeyDictionary()


def kheops_client() -> kheops.Client:
    """The running event loop's client for KHEOPS: one per process in the server, so that
    connections (and their TLS handshakes) are reused across launches."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    wanted = (
        settings.KHEOPS_HTTP_TIMEOUT,
        settings.KHEOPS_MAX_CALLS_IN_FLIGHT,
        settings.ALLOW_INSECURE_HTTP_KHEOPS,
    )
    if client is None or (client.timeout, client.max_in_flight, client.allow_plain_http) != wanted:
        if client is not None:  # the settings changed: its connections are closed
            _closing.add(task := loop.create_task(client.aclose()))
            task.add_done_callback(_closing.discard)
        client = _clients[loop] = kheops.Client(
            timeout=wanted[0], max_in_flight=wanted[1], allow_plain_http=wanted[2]
        )
    return client


_closing: set[asyncio.Task[None]] = set()


def forget_ended_loops_clients() -> None:
    """Forget the clients of event loops that have ended (closed with them, or never
    used: in the tests, each call runs a loop of its own)."""
    for loop in [loop for loop in _clients if loop.is_closed()]:
        del _clients[loop]


async def close_kheops_client() -> None:
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def _discovery_cache_key(server: KheopsServer) -> str:
    return "kheops-discovery:" + hashlib.sha256(server.discovery_url.encode()).hexdigest()


def _describes(discovery: Any, server: KheopsServer) -> bool:
    return (
        isinstance(discovery, kheops.Discovery) and discovery.issuer.rstrip("/") == server.root_url
    )


_discovery_fetches: dict[str, asyncio.Future[kheops.Discovery]] = {}
# The last discovery document each server gave this process, and when (time.monotonic()).
_known_discoveries: dict[str, tuple[float, kheops.Discovery]] = {}


async def discovery_for(
    server: KheopsServer, *, timings: kheops.Timings | None = None
) -> kheops.Discovery:
    """The server's discovery document, cached: KHEOPS rarely changes it.

    Shared between processes for KHEOPS_DISCOVERY_CACHE_SECONDS (one fetch per minute for
    all of them), and kept by each process for a few seconds more cheaply than a cache
    round trip (Redis). Launches that find it missing at the same moment share one fetch.
    Once the shared copy has expired, the last one this process had keeps serving while a
    fresh one is fetched in the background: a burst of launches never waits on (nor fails
    with) a KHEOPS made slow by that very burst.
    """
    cache_key = _discovery_cache_key(server)
    known = _known_discoveries.get(cache_key)
    if known is not None and not _describes(known[1], server):
        known = None
    if known is not None and time.monotonic() - known[0] < LOOKUP_CACHE_SECONDS:
        return known[1]
    shared = await cache.aget(cache_key)
    if _describes(shared, server):
        _known_discoveries[cache_key] = (time.monotonic(), shared)
        return shared
    fetch = _discovery_fetches.get(cache_key)
    if fetch is None or fetch.get_loop() is not asyncio.get_running_loop():
        fetch = _discovery_fetches[cache_key] = asyncio.ensure_future(
            _fetch_discovery(server, cache_key, timings if known is None else None)
        )
        fetch.add_done_callback(partial(_fetch_done, cache_key))
    if known is not None:
        return known[1]  # the fetch goes on in the background
    return await asyncio.shield(fetch)


async def _fetch_discovery(
    server: KheopsServer, cache_key: str, timings: kheops.Timings | None
) -> kheops.Discovery:
    discovery = await kheops.fetch_discovery(
        kheops_client(), server.discovery_url, root=server.root_url, timings=timings
    )
    await cache.aset(cache_key, discovery, settings.KHEOPS_DISCOVERY_CACHE_SECONDS)
    _known_discoveries[cache_key] = (time.monotonic(), discovery)
    return discovery


def _fetch_done(cache_key: str, fetch: asyncio.Future[kheops.Discovery]) -> None:
    if _discovery_fetches.get(cache_key) is fetch:
        del _discovery_fetches[cache_key]
    if not fetch.cancelled() and fetch.exception() is not None and cache_key in _known_discoveries:
        # A background refresh: the last document goes on serving; the next use tries again.
        logger.warning("KHEOPS discovery document not refreshed: %s", fetch.exception())


def check_servers(
    servers: list[KheopsServer], *, timeout: float
) -> list[Text | kheops.KheopsError]:
    """Fetch and validate each server's discovery document, all at once (for the admin):
    a verdict, or the KheopsError that says what is wrong."""
    return async_to_sync(_check_servers)(servers, timeout)


async def _check_servers(
    servers: list[KheopsServer], timeout: float
) -> list[Text | kheops.KheopsError]:
    client = kheops.Client(timeout=timeout, allow_plain_http=settings.ALLOW_INSECURE_HTTP_KHEOPS)
    try:
        answers = await asyncio.gather(
            *(kheops.fetch_discovery(client, s.discovery_url, root=s.root_url) for s in servers),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    verdicts: list[Text | kheops.KheopsError] = []
    for answer in answers:
        if isinstance(answer, kheops.Discovery):
            verdicts.append(
                format_lazy(
                    gettext_lazy(
                        "discovery document OK: token endpoint {token}, DICOMweb {dicomweb}"
                    ),
                    token=answer.token_endpoint,
                    dicomweb=answer.dicomweb_endpoint,
                )
            )
        elif isinstance(answer, kheops.KheopsError):
            verdicts.append(answer)
        else:
            raise answer
    return verdicts


# --- The launch: validate → claim → record --------------------------------------------------


@dataclass(frozen=True)
class _Accepted:
    provider: Provider
    params: LaunchParams
    server: KheopsServer
    return_uri: str | None


@sensitive_variables()
async def launch(
    *,
    slug: str,
    query: QueryDict | None,
    remote_addr: str | None,
    launcher_key: str | None = None,
    timings: kheops.Timings | None = None,
) -> ViewerGrant:
    """Accept a launch: check it, claim its code, keep the code sealed for the viewer.

    The code is not exchanged here. The browser is sent on to the viewer at once and loads
    OHIF while its first token request (`complete`) runs the exchange: the KHEOPS round
    trips overlap the bundle's download and start-up instead of preceding them. Always
    writes one LaunchRecord (pending, or why it was refused); raises LaunchFailed.

    `launcher_key` is the browser's key on the launch path, if it has one: a code already
    claimed by a launch of the same browser (a double click in KHEOPS makes two identical
    links) returns that launch's grant, without its browser key (the browser has it).
    """
    record = LaunchRecord(remote_addr=remote_addr)
    try:
        provider = await _looked_up(f"provider:{slug}", partial(_load_provider, slug))
        servers = await _looked_up("servers", _load_trusted_servers)
        over = await ratelimit.check(ratelimit.LAUNCH, remote_addr, settings.LAUNCH_RATE_LIMIT)
        if over is not None:
            raise _rate_limited(over, provider, servers, query, record)
        accepted = _accept(provider, servers, query, record)
        try:
            # The viewer page needs the DICOMweb root (its data source, its CSP): cached.
            discovery = await discovery_for(accepted.server, timings=timings)
        except kheops.KheopsError as exc:
            raise _kheops_failure(exc, return_uri=accepted.return_uri) from None
        grant = _pending_grant(accepted, discovery, launcher_key)
        earlier = await blocking.run(_claim, accepted, grant, record)
    except LaunchFailed as failure:
        failure.study_uids = tuple(record.study_uids)
        await blocking.run(_record_refusal, record, failure)
        metrics.LAUNCHES.labels(failure.outcome.value).inc()
        raise
    if earlier is not None:
        metrics.LAUNCHES.labels(LaunchOutcome.REOPENED.value).inc()
        return earlier
    metrics.LAUNCHES.labels(LaunchOutcome.PENDING.value).inc()
    logger.info(
        "launch %s accepted: server=%s client_id=%s studies=%d",
        grant.launch_id,
        accepted.server.name,
        accepted.params.client_id,
        len(accepted.params.study_uids),
    )
    return grant


def _accept(
    provider: Provider | None,
    servers: list[KheopsServer],
    query: QueryDict | None,
    record: LaunchRecord,
) -> _Accepted:
    """Check the launch request; note in `record` what the audit trail needs of it."""
    record.provider = provider
    if provider is None:
        raise LaunchFailed(
            LaunchOutcome.UNKNOWN_PROVIDER,
            404,
            gettext_lazy("This launch address is not one of ours."),
        )
    params = parse_launch_params(query)
    record.client_id = params.client_id
    record.study_uids = list(params.study_uids)
    server = trusted_server_for(params.conf_uri, servers)
    if server is None:
        raise LaunchFailed(
            LaunchOutcome.UNTRUSTED_SERVER,
            403,
            gettext_lazy("This KHEOPS server is not trusted by this viewer."),
            detail="conf_uri is not the discovery URL of an enabled trusted server",
        )
    record.kheops_server = server
    record.album_id = album_id_from(params.return_uri, server)
    return_uri = safe_return_uri(params.return_uri, server)
    if not provider.enabled:
        raise LaunchFailed(
            LaunchOutcome.PROVIDER_DISABLED,
            403,
            gettext_lazy("This viewer has been disabled by its administrator."),
            return_uri=return_uri,
        )
    return _Accepted(provider=provider, params=params, server=server, return_uri=return_uri)


def _rate_limited(
    over: ratelimit.OverTheLimit,
    provider: Provider | None,
    servers: list[KheopsServer],
    query: QueryDict | None,
    record: LaunchRecord,
) -> LaunchFailed:
    """The refusal of a launch over the limit: nothing of it is stored but its audit row,
    which (as the page) says what the launch asked for, when it can tell."""
    return_uri = None
    try:
        return_uri = _accept(provider, servers, query, record).return_uri
    except LaunchFailed as invalid:
        return_uri = invalid.return_uri
    failure = LaunchFailed(
        LaunchOutcome.RATE_LIMITED,
        429,
        TOO_MANY_LAUNCHES,
        detail=f"over {over.limit} launches in {over.seconds} s from this address",
        return_uri=return_uri,
    )
    failure.advice = wait_then(over.retry_after, "open again")
    failure.retry_after = over.retry_after
    failure.log_level = logging.WARNING if over.first else logging.DEBUG
    return failure


def _pending_grant(
    accepted: _Accepted, discovery: kheops.Discovery, launcher_key: str | None
) -> ViewerGrant:
    return ViewerGrant(
        launch_id=secrets.token_urlsafe(16),
        access_token="",
        expires_at=(timezone.now() + PENDING_LIFETIME).timestamp(),
        dicomweb_endpoint=discovery.dicomweb_endpoint,
        study_uids=accepted.params.study_uids,
        mode=accepted.provider.mode,
        token_delivery=accepted.provider.effective_token_delivery,
        return_uri=accepted.return_uri,
        user_name="",
        browser_key=secrets.token_urlsafe(32),
        launcher_key=(
            launcher_key
            if launcher_key and LAUNCHER_KEY.match(launcher_key)
            else secrets.token_urlsafe(32)
        ),
        album_id=album_id_from(accepted.params.return_uri, accepted.server),
        state=GrantState.PENDING,
    )


@sensitive_variables()
def _claim(accepted: _Accepted, grant: ViewerGrant, record: LaunchRecord) -> ViewerGrant | None:
    """The claim (the used code's primary key), the grant and the audit row: one commit.

    None when claimed; the earlier launch's grant when this browser claimed the code before.
    """
    code = accepted.params.code
    now = timezone.now()
    record.launch_id = grant.launch_id
    record.outcome = LaunchOutcome.PENDING
    row = LaunchGrant(
        launch_id=grant.launch_id,
        browser_key_hash=_key_hash(grant.browser_key),
        state=GrantState.PENDING,
        sealed_code=sealing.seal(code, purpose=_CODE_PURPOSE),
        expires_at=datetime.fromtimestamp(grant.expires_at, tz=UTC),
        client_id=accepted.params.client_id,
        provider=accepted.provider,
        kheops_server=accepted.server,
        dicomweb_endpoint=grant.dicomweb_endpoint,
        study_uids=list(grant.study_uids),
        mode=grant.mode,
        token_delivery=grant.token_delivery,
        return_uri=accepted.return_uri or "",
        album_id=grant.album_id,
        launcher_key_hash=_key_hash(grant.launcher_key),
    )
    used = UsedCode(code_hash=_code_hash(code), used_at=now, launch_id=grant.launch_id)
    try:
        writes.insert_together(used, row, record)
    except IntegrityError:
        claimed = UsedCode.objects.filter(code_hash=used.code_hash).first()
        if claimed is None:
            raise
        earlier = _launched_by(claimed.launch_id, grant.launcher_key)
        if earlier is None:
            raise LaunchFailed(
                LaunchOutcome.REPLAY,
                409,
                gettext_lazy("This launch link has already been used."),
                return_uri=accepted.return_uri,
            ) from None
        _record_reopening(record, earlier)
        return earlier
    return None


def _launched_by(launch_id: str, launcher_key: str) -> ViewerGrant | None:
    """The grant of `launch_id` if the browser holding `launcher_key` launched it."""
    row = LaunchGrant.objects.filter(launch_id=launch_id).first() if launch_id else None
    if row is None or not row.launcher_key_hash:
        return None
    if not hmac.compare_digest(row.launcher_key_hash, _key_hash(launcher_key)):
        return None
    return _viewer_grant(row)


def _record_reopening(record: LaunchRecord, earlier: ViewerGrant) -> None:
    record.pk = None
    record.launch_id = None
    record.outcome = LaunchOutcome.REOPENED
    record.failure_detail = f"sent to the viewer of launch {earlier.launch_id}"
    record.save()
    logger.info("launch %s opened again by the same browser", earlier.launch_id)


def _record_refusal(record: LaunchRecord, failure: LaunchFailed) -> None:
    # Nothing of a refused launch was stored: its audit row is a fresh one.
    record.pk = None
    record.launch_id = None
    record.outcome = failure.outcome
    record.failure_detail = in_english(failure.detail or failure.message)[:255]
    record.save()
    logger.log(failure.log_level, "launch refused (%s): %s", failure.outcome, record.failure_detail)


# --- The exchange, on the viewer's first token request: exchange → identify → record ------


@dataclass
class _ExchangesInThisProcess:
    """What a graceful stop waits for (launcher.serving): exchanges in flight, and whether
    new ones may start. Read and written on the event loop only."""

    in_flight: int = 0
    accepting: bool = True


_exchanges = _ExchangesInThisProcess()


def exchanges_in_flight() -> int:
    return _exchanges.in_flight


def stop_accepting_exchanges() -> None:
    _exchanges.accepting = False


@dataclass(frozen=True)
class _PendingExchange:
    """A grant whose code is still to be exchanged, with what the exchange needs."""

    grant: ViewerGrant
    client_id: str
    code: str = field(repr=False)
    provider: Provider | None
    server: KheopsServer | None
    redirect_uri: str
    # Signed at once when the server's discovery document was in memory (one hand-off less).
    discovery: kheops.Discovery | None
    assertion: str | None = field(repr=False)


@sensitive_variables()
async def complete(
    launch_id: str,
    browser_key: str | None,
    *,
    remote_addr: str | None = None,
    timings: kheops.Timings | None = None,
) -> ViewerGrant:
    """The viewer's grant with its token: the first call exchanges the launch's code.

    Raises ViewerRefused when this browser has no such grant, it has expired, or its
    exchange failed before (the grant keeps why); LaunchFailed (a ViewerRefused) when the
    exchange fails now.
    Two calls at once (a reload) may both exchange the code, which KHEOPS allows within its
    lifetime: the first to finish is kept, the other answers with it. A call cut short (the
    browser went away, or the server stopped) leaves the grant pending and the code claimed:
    the same browser's next request exchanges it. Over TOKEN_RATE_LIMIT from `remote_addr`:
    refused before anything is read or sent.
    """
    over = await ratelimit.check(ratelimit.TOKEN_REQUEST, remote_addr, settings.TOKEN_RATE_LIMIT)
    if over is not None:
        raise _too_many_requests(over)
    found = await blocking.run(_grant_or_pending_exchange, launch_id, browser_key)
    if isinstance(found, ViewerGrant):
        return found
    if not _exchanges.accepting:
        # The server is stopping: the grant stays pending, its code claimed, for this
        # browser's next request (launcher.serving).
        raise ViewerRefused(
            503,
            RESTARTING,
            advice=RESTARTING_ADVICE,
            return_uri=found.grant.return_uri,
            study_uids=found.grant.study_uids,
            retryable=True,
        )
    _exchanges.in_flight += 1
    started = time.perf_counter()
    # Cut short (the browser went away, the server stopped): the grant stays pending.
    outcome = "interrupted"
    try:
        try:
            token, user = await _exchange(found, timings)
        except LaunchFailed as failure:
            outcome = failure.outcome.value
            failure.return_uri = found.grant.return_uri
            failure.study_uids = found.grant.study_uids
            if await blocking.run(_record_failure, found, failure):
                raise
        else:
            outcome = LaunchOutcome.SUCCESS.value
            ready = await blocking.run(_record_success, found, token, user)
            if ready is not None:
                return ready
    finally:
        _exchanges.in_flight -= 1
        metrics.EXCHANGES.labels(outcome).inc()
        metrics.EXCHANGE_SECONDS.observe(time.perf_counter() - started)
    # Another request of this browser stored its outcome first: answer with that.
    settled = await blocking.run(_grant_or_pending_exchange, launch_id, browser_key)
    if isinstance(settled, ViewerGrant):
        return settled
    raise AssertionError("unreachable: an outcome was stored, the grant is no longer pending")


def _too_many_requests(over: ratelimit.OverTheLimit) -> ViewerRefused:
    if over.first:
        logger.warning(
            "token requests refused: over %d in %d s from one address", over.limit, over.seconds
        )
    # Not retryable: the viewer's quick retries (1, 2, 4 s) would only be refused too; the
    # grant stays as it is (pending: its code claimed, for this browser's next request).
    return ViewerRefused(
        429,
        TOO_MANY_REQUESTS,
        advice=wait_then(over.retry_after, "reload"),
        retry_after=over.retry_after,
    )


@sensitive_variables()
def _grant_or_pending_exchange(
    launch_id: str, browser_key: str | None
) -> ViewerGrant | _PendingExchange:
    """What this browser may have of the launch: its ready grant, or the exchange still to do.

    Raises ViewerRefused when the grant is not this browser's, has expired, or failed.
    """
    row = _grant_row(launch_id, browser_key)
    if row is None:
        raise refusal_for_another_browser(launch_id)
    grant = _viewer_grant(row)
    refusal = refusal_of(grant)
    if refusal is not None:
        raise refusal
    # A sealing.SealError (sealed under a key that is gone) reaches the view: a 500 page.
    if row.state == GrantState.READY:
        return replace(grant, access_token=sealing.unseal(row.sealed_token, purpose=_GRANT_PURPOSE))
    code = sealing.unseal(row.sealed_code, purpose=_CODE_PURPOSE)
    provider, server = _provider_by_id(row.provider_id), _server_by_id(row.kheops_server_id)
    known = _known_discoveries.get(_discovery_cache_key(server)) if server is not None else None
    discovery = (
        known[1]
        if known is not None and time.monotonic() - known[0] < LOOKUP_CACHE_SECONDS
        else None
    )
    if not _describes(discovery, server):  # type: ignore[arg-type]
        discovery = None
    return _PendingExchange(
        grant=grant,
        client_id=row.client_id,
        code=code,
        provider=provider,
        server=server,
        redirect_uri=provider.redirect_uri if provider is not None else "",
        discovery=discovery,
        assertion=(
            keys.client_assertion(client_id=row.client_id, audience=discovery.token_endpoint)
            if discovery is not None
            else None
        ),
    )


@sensitive_variables()
async def _exchange(
    pending: _PendingExchange, timings: kheops.Timings | None
) -> tuple[kheops.TokenGrant, kheops.UserInfo | None]:
    server, provider = pending.server, pending.provider
    if server is None or not server.enabled:
        raise LaunchFailed(
            LaunchOutcome.UNTRUSTED_SERVER,
            403,
            gettext_lazy("This KHEOPS server is not trusted by this viewer."),
            detail="the server was disabled or removed before the exchange",
        )
    if provider is None or not provider.enabled:
        raise LaunchFailed(
            LaunchOutcome.PROVIDER_DISABLED,
            403,
            gettext_lazy("This viewer has been disabled by its administrator."),
        )
    client = kheops_client()
    try:
        discovery = pending.discovery or await discovery_for(server, timings=timings)
        assertion = pending.assertion or await blocking.run(
            keys.client_assertion, client_id=pending.client_id, audience=discovery.token_endpoint
        )
        token = await kheops.exchange_code(
            client,
            discovery.token_endpoint,
            code=pending.code,
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            client_assertion=assertion,
            timings=timings,
        )
    except kheops.KheopsError as exc:
        raise _kheops_failure(exc) from None
    return token, await _who_launched(client, discovery, token, timings)


@sensitive_variables()
async def _who_launched(
    client: kheops.Client,
    discovery: kheops.Discovery,
    token: kheops.TokenGrant,
    timings: kheops.Timings | None,
) -> kheops.UserInfo | None:
    if not discovery.userinfo_endpoint or not settings.KHEOPS_FETCH_USERINFO:
        return None
    try:
        return await kheops.fetch_userinfo(
            client, discovery.userinfo_endpoint, access_token=token.access_token, timings=timings
        )
    except kheops.KheopsError as exc:
        # Who launched is nice to have in the audit trail, not worth failing the launch.
        logger.warning("userinfo unavailable for a launch: %s", exc)
        return None


@sensitive_variables()
def _record_success(
    pending: _PendingExchange, token: kheops.TokenGrant, user: kheops.UserInfo | None
) -> ViewerGrant | None:
    """Keep the sealed token and say success; None if another request stored an outcome first."""
    launch_id = pending.grant.launch_id
    expires_at = timezone.now() + timedelta(seconds=token.expires_in)
    user_fields = (
        {"user_sub": user.sub, "user_name": user.name, "user_email": user.email} if user else {}
    )
    stored = writes.update_both_if(
        LaunchGrant,
        {
            "state": GrantState.READY,
            "sealed_code": "",
            "sealed_token": sealing.seal(token.access_token, purpose=_GRANT_PURPOSE),
            "expires_at": expires_at,
            "user_name": user.name if user else "",
            "user_email": user.email if user else "",
        },
        {"launch_id": launch_id, "state": GrantState.PENDING},
        LaunchRecord,
        {
            "outcome": LaunchOutcome.SUCCESS,
            "expires_at": expires_at,
            "verified": True,
            **user_fields,
        },
        {"launch_id": launch_id},
    )
    if not stored:
        return None
    logger.info("launch %s exchanged its code: client_id=%s", launch_id, pending.client_id)
    return replace(
        pending.grant,
        access_token=token.access_token,
        expires_at=expires_at.timestamp(),
        user_name=user.name if user else "",
        user_email=user.email if user else "",
        state=GrantState.READY,
    )


def _record_failure(pending: _PendingExchange, failure: LaunchFailed) -> bool:
    """Record why the exchange failed; False if another request stored an outcome first.

    A transient failure (KHEOPS slow or away) leaves the grant pending: the browser that
    launched tries again, and a success then replaces the audit record's outcome. Any other
    failure is final for the grant. Either way the code stays claimed: the launch URL, which
    sits in browser histories and proxy logs, opens no other viewer, even while KHEOPS
    would still accept its code.
    """
    launch_id = pending.grant.launch_id
    detail = in_english(failure.detail or failure.message)[:255]
    if failure.outcome in TRANSIENT:
        stored = (
            LaunchRecord.objects.filter(launch_id=launch_id)
            .exclude(outcome=LaunchOutcome.SUCCESS)
            .update(outcome=failure.outcome, failure_detail=detail)
        ) > 0
    else:
        stored = writes.update_both_if(
            LaunchGrant,
            {
                "state": GrantState.FAILED,
                "sealed_code": "",
                "failure_status": failure.status,
                # In English, translated when shown (refusal_of).
                "failure_message": in_english(failure.message)[:255],
                "failure_advice": in_english(failure.advice)[:255],
            },
            {"launch_id": launch_id, "state": GrantState.PENDING},
            LaunchRecord,
            {"outcome": failure.outcome, "failure_detail": detail},
            {"launch_id": launch_id},
        )
    if stored:
        logger.warning("launch %s failed (%s): %s", launch_id, failure.outcome, detail)
    return stored


@dataclass(frozen=True)
class CleanUp:
    used_codes: int
    grants: int


def clean_up(now: datetime | None = None) -> CleanUp:
    """Forget used codes older than a code's life and grants a day past their expiry.

    Run on a schedule (launcher.serving, every CLEAN_UP_INTERVAL_SECONDS in each server
    process; `manage.py clean_up` for cron), whatever the launches do: a flood of launches
    whose codes are never exchanged leaves nothing behind for long. The audit records stay.
    """
    now = now or timezone.now()
    used_codes, _ = UsedCode.objects.filter(used_at__lt=now - USED_CODE_RETENTION).delete()
    stale = Q(expires_at__lt=now - GRANT_RETENTION_AFTER_EXPIRY) | Q(
        state=GrantState.PENDING, expires_at__lt=now - PENDING_RETENTION_AFTER_EXPIRY
    )
    grants, _ = LaunchGrant.objects.filter(stale).delete()
    return CleanUp(used_codes=used_codes, grants=grants)


# How each kind of KHEOPS failure reaches the user and the audit trail (most specific first:
# a timeout is also "unavailable").
_KHEOPS_FAILURES: list[tuple[type[kheops.KheopsError], LaunchOutcome, int, Text]] = [
    (
        kheops.KheopsTimeout,
        LaunchOutcome.KHEOPS_TIMEOUT,
        504,
        gettext_lazy("KHEOPS did not answer in time."),
    ),
    (
        kheops.KheopsInsecure,
        LaunchOutcome.INSECURE_SERVER,
        403,
        gettext_lazy("This viewer does not talk to this KHEOPS server over plain http."),
    ),
    (
        kheops.KheopsRejected,
        LaunchOutcome.CODE_REJECTED,
        403,
        gettext_lazy("KHEOPS refused this launch: the link may have expired."),
    ),
    (
        kheops.KheopsMalformed,
        LaunchOutcome.KHEOPS_MALFORMED,
        502,
        gettext_lazy("KHEOPS sent an answer this viewer does not understand."),
    ),
    (
        kheops.KheopsError,
        LaunchOutcome.KHEOPS_UNAVAILABLE,
        502,
        gettext_lazy("KHEOPS is unavailable."),
    ),
]


def _kheops_failure(exc: kheops.KheopsError, *, return_uri: str | None = None) -> LaunchFailed:
    for kind, outcome, status, message in _KHEOPS_FAILURES:
        if isinstance(exc, kind):
            return LaunchFailed(outcome, status, message, detail=str(exc), return_uri=return_uri)
    raise AssertionError("unreachable: every KheopsError matches the last row")


# --- The viewer grant ---------------------------------------------------------------


def _key_hash(browser_key: str) -> str:
    return hashlib.sha256(browser_key.encode()).hexdigest()


def _grant_row(launch_id: str, browser_key: str | None) -> LaunchGrant | None:
    if not browser_key:
        return None
    row = LaunchGrant.objects.filter(launch_id=launch_id).first()
    if row is None or not hmac.compare_digest(row.browser_key_hash, _key_hash(browser_key)):
        return None
    return row


def _viewer_grant(row: LaunchGrant) -> ViewerGrant:
    return ViewerGrant(
        launch_id=row.launch_id,
        access_token="",
        expires_at=row.expires_at.timestamp(),
        dicomweb_endpoint=row.dicomweb_endpoint,
        study_uids=tuple(row.study_uids),
        mode=row.mode,
        return_uri=row.return_uri or None,
        user_name=row.user_name,
        user_email=row.user_email,
        album_id=row.album_id,
        state=row.state,
        failure_status=row.failure_status,
        failure_message=row.failure_message,
        failure_advice=row.failure_advice,
        provider_id=row.provider_id,
        kheops_server_id=row.kheops_server_id,
        token_delivery=row.token_delivery,
    )


def provider_of(grant: ViewerGrant) -> Provider | None:
    return _provider_by_id(grant.provider_id)


def kheops_server_of(grant: ViewerGrant) -> KheopsServer | None:
    return _server_by_id(grant.kheops_server_id)


def refusal_of(grant: ViewerGrant) -> ViewerRefused | None:
    """Why the viewer of `grant` cannot open any more (its exchange failed, or it expired)."""
    if grant.state == GrantState.FAILED:
        # Kept in English (the messages of this module): shown in the page's language.
        return ViewerRefused(
            grant.failure_status or 403,
            gettext_lazy(grant.failure_message),
            advice=gettext_lazy(grant.failure_advice) if grant.failure_advice else OPEN_AGAIN,
            return_uri=grant.return_uri,
            study_uids=grant.study_uids,
        )
    if grant.expired:
        return ViewerRefused(410, EXPIRED, return_uri=grant.return_uri, study_uids=grant.study_uids)
    return None


def refusal_for_another_browser(launch_id: str) -> ViewerRefused:
    """What a browser without the launch's key is told: never the viewer, but the way back
    to KHEOPS and the studies concerned (neither is a secret) when the launch exists."""
    # Only what could be one of our ids reaches the database (no NUL for PostgreSQL).
    row = (
        LaunchGrant.objects.filter(launch_id=launch_id).first()
        if LAUNCH_ID.match(launch_id)
        else None
    )
    return ViewerRefused(
        403,
        NOT_YOURS,
        advice=NOT_YOURS_ADVICE,
        return_uri=(row.return_uri or None) if row else None,
        study_uids=tuple(row.study_uids) if row else (),
    )


@sensitive_variables()
def grant_for(launch_id: str, browser_key: str | None) -> ViewerGrant | None:
    """The grant of `launch_id` if `browser_key` is the one its browser was given.

    Its token is unsealed only once the code has been exchanged (state ready).
    """
    row = _grant_row(launch_id, browser_key)
    if row is None:
        return None
    grant = _viewer_grant(row)
    if row.state != GrantState.READY:
        return grant
    # A sealing.SealError (sealed under a key that is gone) reaches the view: a 500 page.
    token = sealing.unseal(row.sealed_token, purpose=_GRANT_PURPOSE)
    return replace(grant, access_token=token)


# The relay (launcher.relay) needs the viewer's grant for every DICOMweb request, dozens a
# second while images load. A ready grant changes no more (it only expires, which is checked
# at each use): each process keeps the ones it looked up for a few seconds, by launch and
# the hash of the browser's key.
READY_GRANT_SECONDS = 5.0
READY_GRANTS_KEPT = 1024
_ready_grants: OrderedDict[tuple[str, str], tuple[float, ViewerGrant]] = OrderedDict()


def grant_cookie_name(launch_id: str) -> str:
    """The cookie holding a launching browser's key (one name per launch: several viewers
    may be open in one browser)."""
    return f"kheops_ohif_grant_{launch_id}"


async def relay_grant(launch_id: str, browser_key: str | None) -> ViewerGrant | None:
    """`grant_for`, from memory when this browser's grant was ready a moment ago."""
    if not browser_key:
        return None
    key = (launch_id, _key_hash(browser_key))
    kept = _ready_grants.get(key)
    if kept is not None and time.monotonic() - kept[0] < READY_GRANT_SECONDS:
        return kept[1]
    grant = await blocking.run(grant_for, launch_id, browser_key)
    if grant is not None and grant.state == GrantState.READY:
        _ready_grants[key] = (time.monotonic(), grant)
        _ready_grants.move_to_end(key)
        while len(_ready_grants) > READY_GRANTS_KEPT:
            _ready_grants.popitem(last=False)
    return grant


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
