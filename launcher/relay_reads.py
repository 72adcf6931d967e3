"""The relay's reads (GET, HEAD), answered below Django.

A viewer loading a series makes hundreds of relayed requests, each a few lines of work of
ours around KHEOPS's answer. Through Django each of them also paid for the whole middleware
stack, a request object, a thread context and a streaming response: about as much CPU as
KHEOPS spent serving it (bench/relay.py). Here, on the event loop, a read that is plainly
fine is sent on to KHEOPS and its answer streamed back as it comes:

- the allow-list is launcher.relay's (`check`, `owns`, the headers each way), as in the
  view (views.dicomweb_relay);
- the grant is this browser's (its cookie), ready, relayed, not expired, from
  services.relay_grant (memory, or one database read);
- the answer carries the security headers Django puts on every answer (learnt at start-up
  by launcher.serving.Documents), the request id, Server-Timing, and KHEOPS's headers that
  belong (relay.downstream_headers).

Anything else (a refusal of any kind, a grant still pending, expired or failed, an upload,
documents not prepared) goes to Django's view, untouched, which answers it as before: both
paths say the same things, and the view stays the whole relay for any other ASGI server.

At most `STREAMS_PER_PROCESS` answers stream through a process at a time; the requests
beyond wait for their turn on the event loop (holding no thread, no KHEOPS connection and
no buffers), so that a crowd of viewers costs a bounded amount of memory per process.

Behind the nginx of deploy/nginx with its relay offload on, a plainly fine read is not
carried here at all: nginx proves itself with every request (X-Relay-Offload-Key, the key
this server is given as DICOMWEB_RELAY_OFFLOAD_KEY) and names the KHEOPS origins it can
reach (X-Relay-Offload-Origins). For a grant on one of those, the answer is an empty one
telling nginx where to ask (X-Accel-Redirect, an internal location of its own for that
origin) and with what: the token, this answer's security headers and Server-Timing, each in
an X-Relay-* header that nginx takes and never passes on (docs/relay-offload.md). The checks
above stay here; only the carrying of the bytes moves to nginx, which does it in C. With the
hand-over, X-Relay-Keep (`keep_for`) lets nginx carry the same browser's next plain reads of
the launch's studies for a few seconds without asking again (DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.cookie import parse_cookie

from launcher import kheops, metrics, relay, sealing, services
from launcher.headers import server_timing
from launcher.models import GrantState

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

READ_PATH = re.compile(r"/launches/(?P<launch_id>[^/]+)/dicomweb/(?P<resource>.+)\Z", re.S)

# Django's security headers that belong on a relayed answer too (the others it sends, such
# as Content-Language or its Vary, describe its own pages).
SECURITY_HEADERS = frozenset(
    {
        b"content-security-policy",
        b"cross-origin-opener-policy",
        b"cross-origin-resource-policy",
        b"permissions-policy",
        b"referrer-policy",
        b"strict-transport-security",
        b"x-content-type-options",
        b"x-frame-options",
    }
)


# nginx's internal location for the KHEOPS origin it names n-th: /_kheops_relay/<n>/.
OFFLOAD_LOCATION = "/_kheops_relay/"
# The DICOMweb root's path that may go into X-Accel-Redirect as it is (no escaping needed).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~/-]*\Z")


def offload_location(headers: dict[str, str], dicomweb_endpoint: str) -> str | None:
    """Where nginx asks KHEOPS for this read (its path, without the resource), or None when
    this server carries it: nginx did not prove itself, or cannot reach that KHEOPS."""
    key = settings.DICOMWEB_RELAY_OFFLOAD_KEY
    given = headers.get("x-relay-offload-key")
    if not key or given is None or not hmac.compare_digest(given.encode(), key.encode()):
        return None
    endpoint = urlsplit(dicomweb_endpoint)
    origin = f"{endpoint.scheme}://{endpoint.netloc}".lower()
    origins = headers.get("x-relay-offload-origins", "").lower().split()
    path = endpoint.path.rstrip("/")
    if origin not in origins or not _PLAIN_PATH.match(path):
        return None
    return f"{OFFLOAD_LOCATION}{origins.index(origin)}{path}"


def keep_for(grant: services.ViewerGrant, root: str) -> str | None:
    """What nginx may remember of this hand-over (X-Relay-Keep, deploy/nginx/kheops_relay.lua):
    for how many seconds it may carry this browser's reads of the launch's studies without
    asking, the launch, where (`root`, the hand-over's location less the resource) and which
    studies; None when it may not (DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS is 0, the token has
    less than a second left, or nginx could not read it back)."""
    seconds = min(settings.DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS, grant.seconds_left)
    keep = f"{seconds} {grant.launch_id} {root} {','.join(grant.study_uids)}"
    if seconds < 1 or not re.fullmatch(KEEP, keep):
        return None
    return keep


# X-Relay-Keep as deploy/nginx/kheops_relay.lua reads it back (its KEEP; a test holds the two
# equal): seconds, launch, root, studies.
KEEP = (
    r"^([0-9]{1,3}(?:\.[0-9]{1,3})?) ([A-Za-z0-9_-]{1,32}) "
    r"(/_kheops_relay/[0-9]{1,3}(?:/[A-Za-z0-9._~-]+)*) ([0-9.]{3,64}(?:,[0-9.]{3,64}){0,99})$"
)


class RelayReads:
    """The relay's reads of one process (launcher.serving.Application answers with it)."""

    def __init__(self) -> None:
        self.security_headers: list[tuple[bytes, bytes]] | None = None
        self._turns: asyncio.Semaphore | None = None

    def learn(self, django_headers: list[tuple[bytes, bytes]]) -> None:
        """The security headers Django sends with every answer (until learnt: Django answers)."""
        self.security_headers = [
            (name, value) for name, value in django_headers if name in SECURITY_HEADERS
        ]

    async def serve(self, scope: Scope, receive: Receive, send: Send, app_path: str) -> bool:
        """Answer a plain relayed read and say True; False leaves the request to Django."""
        if self.security_headers is None or scope["method"] not in relay.READ_METHODS:
            return False
        match = READ_PATH.match(app_path)
        if match is None:
            return False
        started = time.perf_counter()
        launch_id = match["launch_id"]
        headers = _headers(scope)
        try:
            target = relay.check(
                scope["method"],
                scope.get("raw_path", b"").decode("latin-1") or scope["path"],
                match["resource"],
                scope["query_string"].decode("latin-1"),
            )
        except relay.Refused:
            return False
        browser_key = parse_cookie(headers.get("cookie", "")).get(
            services.grant_cookie_name(launch_id)
        )
        try:
            grant = await services.relay_grant(launch_id, browser_key)
        except sealing.SealError:
            return False  # the view says to tell the administrator
        if not _plainly_usable(grant, target):
            return False
        assert grant is not None  # for the type checker: _plainly_usable said so
        try:
            upstream_headers = relay.upstream_headers(headers, grant.access_token, upload=False)
        except relay.Refused:
            return False
        offload = offload_location(headers, grant.dicomweb_endpoint)
        if offload is not None:
            await self._hand_to_nginx(send, offload, grant, target, upstream_headers, started)
            return True
        query = "?" + target.query if target.query else ""
        url = grant.dicomweb_endpoint.rstrip("/") + "/" + target.path + query
        async with self._turn():
            await self._stream(scope, receive, send, url, upstream_headers, started)
        return True

    async def _hand_to_nginx(
        self,
        send: Send,
        root: str,
        grant: services.ViewerGrant,
        target: relay.Target,
        upstream_headers: dict[str, str],
        started: float,
    ) -> None:
        """nginx carries the read (deploy/nginx): where, and the headers only it reads."""
        metrics.RELAY_OFFLOADED.inc()
        query = "?" + target.query if target.query else ""
        headers = [
            (b"x-accel-redirect", f"{root}/{target.path}{query}".encode("latin-1")),
            (b"x-relay-authorization", upstream_headers["authorization"].encode("latin-1")),
        ]
        for name, value in self.security_headers or ():
            headers.append((b"x-relay-" + name, value))
        keep = keep_for(grant, root)
        if keep is not None:
            headers.append((b"x-relay-keep", keep.encode("latin-1")))
        timing = server_timing([], time.perf_counter() - started)
        # Nothing else: nginx puts some headers of a hand-over (Cache-Control, Set-Cookie…)
        # on the answer it carries.
        headers += [(b"x-relay-server-timing", timing.encode("latin-1")), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    @contextlib.asynccontextmanager
    async def _turn(self) -> Any:
        if self._turns is None:  # made on the loop that serves (one per process)
            self._turns = asyncio.Semaphore(settings.DICOMWEB_RELAY_STREAMS_PER_PROCESS)
        async with self._turns:
            yield

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        url: str,
        upstream_headers: dict[str, str],
        started: float,
    ) -> None:
        """KHEOPS's answer, passed on as it comes, until it ends or the browser goes away."""
        # The browser going away is heard here (receive), not by a failing send: the server
        # drops what is sent on a closed connection. The reading of KHEOPS's answer stops then.
        streaming = asyncio.ensure_future(
            self._pass_on(scope, send, url, upstream_headers, started)
        )
        listening = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait((streaming, listening), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listening, streaming):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    async def _pass_on(
        self,
        scope: Scope,
        send: Send,
        url: str,
        upstream_headers: dict[str, str],
        started: float,
    ) -> None:
        asked = time.perf_counter()
        try:
            upstream = await kheops.open_dicomweb(
                services.kheops_client(), scope["method"], url, headers=upstream_headers
            )
        except kheops.KheopsUnavailable as exc:
            metrics.KHEOPS_ERRORS.labels("dicomweb", metrics.kheops_error_kind(exc)).inc()
            status, message = relay.unanswered(exc)
            await send_json(send, status, relay.refusal_body(message), self.security_headers)
            return
        answered = time.perf_counter()
        headers = list(self.security_headers or ())
        for name, value in relay.downstream_headers(upstream.headers).items():
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        timing = server_timing([("kheops", answered - asked)], time.perf_counter() - started)
        headers.append((b"server-timing", timing.encode("latin-1")))
        await send(
            {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
        )
        body = metrics.relayed(kheops.raw_body(upstream))
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except kheops.KheopsUnavailable as exc:
            # The answer had begun: the browser sees it cut off (the server closes the
            # connection), never a made-up end.
            logger.warning("relay: %s", exc)
            return
        finally:
            await body.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _plainly_usable(grant: services.ViewerGrant | None, target: relay.Target) -> bool:
    return (
        grant is not None
        and grant.state == GrantState.READY
        and grant.relayed
        and not grant.expired
        and relay.owns(target, grant.study_uids)
    )


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (repeated ones joined, as Django does)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return headers


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A JSON answer that no cache may keep (a refusal, say), with `headers` besides."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *(headers or ()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
