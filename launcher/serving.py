"""The ASGI application the server runs: what KHEOPS fetches from memory, everything else Django.

During every token exchange KHEOPS fetches our configuration document twice and our JWKS
once, from the very server that is waiting for its answer. Here they are answered from
bytes prepared in advance, on the event loop, without Django, the database or a thread: no
burst of launches and no slow KHEOPS can make them wait.

- At start-up (ASGI lifespan) the documents are built from the database, and the headers
  Django would send with them are learnt by asking Django for one of them once, so both
  paths answer alike (security headers included).
- A background task rebuilds them every REFRESH_SECONDS, and at once when a provider or a
  key was saved in this process, and swaps them in when something changed: other processes
  see a change within REFRESH_SECONDS. (A new signing key is published well before it
  signs: launcher.keys.)
- A request that is not a plain GET or HEAD of a document, for an allowed host, over https
  when https is required, goes to Django, as does every request while no documents are
  ready (the database was down at start-up, say).
- An upload to the DICOMweb relay (launcher.relay) is refused from its headers when too
  large, and otherwise reaches the view as it arrives (UploadStream): Django would read it
  whole, to disk, before the view runs.
- A stop (SIGTERM, or Ctrl-C) first waits for the code exchanges in flight: while they wait
  on KHEOPS, KHEOPS calls back for our documents, so the server must go on answering until
  they are done (at most SHUTDOWN_DRAIN_SECONDS). /readyz says 503 meanwhile, so that a load
  balancer sends new work elsewhere; a second signal stops at once. Then the server stops as
  usual (it lets requests in flight finish) and the KHEOPS client closes its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import re
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction
from django.conf import settings
from django.conf.urls.i18n import is_language_prefix_patterns_used
from django.core.handlers.asgi import ASGIHandler
from django.db import transaction
from django.http.request import split_domain_port, validate_host
from django.urls import Resolver404, resolve
from django.utils import translation

from launcher import blocking, documents, metrics, relay, services, viewer
from launcher.logfilters import REQUEST_ID, RedactSecretParameters, request_id_from
from launcher.middleware import is_admin_only_host
from launcher.relay_reads import RelayReads, send_json

logger = logging.getLogger(__name__)

# The server's access log quotes every URL, launch URLs with their code: redact it there,
# whatever the server's logging settings are (--no-access-log, --log-config).
for _name in ("uvicorn.access", "uvicorn.error"):
    if not any(isinstance(f, RedactSecretParameters) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(RedactSecretParameters())

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Prepared:
    start: Message
    body: Message


class Documents:
    """The documents as this process answers them, and their background refresh."""

    def __init__(self) -> None:
        self.prepared: dict[str, Prepared] = {}
        self._bodies: dict[str, bytes] = {}
        # The headers Django sends with a document (its security headers among them).
        self.headers: list[tuple[bytes, bytes]] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def answer_for(self, scope: Scope) -> Prepared | None:
        if scope["method"] not in ("GET", "HEAD") or not self.prepared:
            return None
        prepared = self.prepared.get(scope["path"])
        if prepared is None or not _host_allowed(scope) or not _secure_enough(scope):
            return None
        return prepared

    async def start(self, django: ASGIApp) -> None:
        self.headers = await _headers_django_sends(django, documents.JWKS_PATH)
        await self.refresh()
        self._loop, self._changed = asyncio.get_running_loop(), asyncio.Event()
        self._refresher = asyncio.create_task(self._refresh_forever())
        _STARTED.add(self)

    def changed(self) -> None:
        """Refresh now (from any thread): a provider or key of this process changed."""
        if self._loop is not None and self._changed is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._changed.set)

    async def stop(self) -> None:
        _STARTED.discard(self)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def refresh(self) -> None:
        bodies = await blocking.run(documents.all_bodies)
        if bodies == self._bodies or self.headers is None:
            return
        headers = self.headers
        self.prepared = {
            path: Prepared(
                start={
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                },
                body={"type": "http.response.body", "body": body},
            )
            for path, body in bodies.items()
        }
        self._bodies = bodies
        logger.info("documents prepared: %s", ", ".join(sorted(bodies)))

    async def _refresh_forever(self) -> None:
        assert self._changed is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REFRESH_SECONDS)
            self._changed.clear()
            try:
                await self.refresh()
            except Exception:
                # The database may be away for a moment: keep answering what we have.
                logger.exception("could not refresh the documents KHEOPS fetches")


class Housekeeping:
    """The scheduled clean-up of used codes and old grants (services.clean_up), in the
    background of each server process, every CLEAN_UP_INTERVAL_SECONDS (0: never; then run
    `manage.py clean_up` from cron). Several processes doing it is harmless."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        interval = settings.CLEAN_UP_INTERVAL_SECONDS
        if interval > 0:
            self._task = asyncio.create_task(self._forever(interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _forever(self, interval: float) -> None:
        # The first round at a random moment: processes started together spread out.
        await asyncio.sleep(random.uniform(0, interval))  # noqa: S311 (not a secret)
        while True:
            try:
                done = await blocking.run(services.clean_up)
            except Exception:
                logger.exception("the scheduled clean-up failed; next try in %s s", interval)
            else:
                if done.used_codes or done.grants:
                    logger.info(
                        "clean-up: %d used codes and %d grants forgotten",
                        done.used_codes,
                        done.grants,
                    )
            await asyncio.sleep(interval)


class Drain:
    """Stopping without cutting the exchanges in flight short (see the module docstring)."""

    def __init__(self) -> None:
        self.started = False
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        # Signals belong to the main thread: the server's, when it runs this application.
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.started or self._loop is None:
            self._pass_on(sig, frame)  # a second signal: stop now
            return
        self.started = True
        self._loop.call_soon_threadsafe(self._begin, sig)

    def _begin(self, sig: int) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(sig))

    async def _drain(self, sig: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.SHUTDOWN_DRAIN_SECONDS
        if services.exchanges_in_flight():
            logger.warning(
                "stopping: %d code exchange(s) in flight first", services.exchanges_in_flight()
            )
        while services.exchanges_in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        services.stop_accepting_exchanges()
        self._pass_on(sig, None)

    def _pass_on(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous.get(sig, signal.SIG_DFL)
        if callable(previous):
            previous(sig, frame)  # the server's own handler: it stops gracefully
        else:
            signal.signal(sig, previous)
            signal.raise_signal(sig)


# This process's drain: /readyz reads it.
DRAIN = Drain()


# The documents this process answers: told at once when one of its providers or keys changes
# (launcher.apps), after the change is committed.
_STARTED: weakref.WeakSet[Documents] = weakref.WeakSet()


def documents_changed(**kwargs: Any) -> None:
    transaction.on_commit(_tell_documents)


def _tell_documents() -> None:
    for prepared in list(_STARTED):
        prepared.changed()


class UploadStream:
    """A request body handed to the view as it arrives, instead of read whole by Django.

    Django's handler reads the body before the view runs, then listens for a disconnect.
    Here it is given an empty body at once; the view reads the real one from `chunks()`;
    Django's listener hears of a disconnect seen meanwhile, and listens itself once the
    body is read.
    """

    SCOPE_KEY = "kheops_ohif.upload"

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._handed_over = False
        self._body_read = asyncio.Event()
        self._disconnected = False

    async def for_django(self) -> Message:
        if not self._handed_over:
            self._handed_over = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._body_read.wait()
        if self._disconnected:
            return {"type": "http.disconnect"}
        return await self._receive()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self._disconnected = True
                    raise UploadAbandoned("the browser went away during its upload")
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return
        finally:
            self._body_read.set()


class UploadAbandoned(Exception):
    pass


class DjangoHandler(ASGIHandler):
    """Django's ASGI handler, with request threads that are reused, and shared by async views.

    Django runs a request's synchronous parts (its signals, a synchronous view, database
    work through launcher.blocking) in a thread of the request's: asgiref makes one for each
    request and joins it at the end, which cost about 1 ms of CPU per request here, and the
    request keeps it for its whole life, waits on KHEOPS included.

    - A request for an async view (the launch, the token request: those that wait on
      KHEOPS) runs its synchronous parts on one of SHARED_THREADS threads, shared by all
      such requests: while it awaits KHEOPS it holds no thread, and those threads are a
      bounded pool (keep it within the database's connection pool).
    - A synchronous view (the admin, say) has a thread to itself for the request, as under
      WSGI: taken from those a finished request left idle (up to KEEP_IDLE are kept).
    """

    SHARED_THREADS = 8
    KEEP_IDLE = 64

    def __init__(self) -> None:
        super().__init__()
        self._idle: list[ThreadPoolExecutor] = []
        self._shared = [
            ThreadPoolExecutor(1, f"django-async-views-{n}") for n in range(self.SHARED_THREADS)
        ]
        self._next_shared = itertools.cycle(self._shared)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if scope["method"] == "POST" and _RELAY_PATH.match(_app_path(scope)):
            # An upload to the relay: Django would read it whole first. It goes to the view
            # as it arrives instead (UploadStream), size already checked (_upload_refusal).
            upload = UploadStream(receive)
            scope = {**scope, UploadStream.SCOPE_KEY: upload}
            receive = upload.for_django
        if self._for_an_async_view(scope):
            # Round robin: each of these calls is short (a query, a commit, a signature).
            async with ThreadSensitiveContext(executor=next(self._next_shared)):
                await self.handle(scope, receive, send)
            return
        thread = self._idle.pop() if self._idle else ThreadPoolExecutor(1, "django-request")
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < self.KEEP_IDLE:
                self._idle.append(thread)
            else:
                thread.shutdown(wait=False)

    @staticmethod
    def _for_an_async_view(scope: Scope) -> bool:
        path = scope["path"]
        script_name = settings.FORCE_SCRIPT_NAME or scope.get("root_path", "")
        if script_name and path.startswith(script_name):
            path = path[len(script_name) :]
        try:
            return iscoroutinefunction(resolve(path).func)
        except Resolver404:
            return True  # static files (answered by async middleware) and Django's 404 page


class Application:
    """Our ASGI entry point (kheops_ohif.asgi): lifespan, the documents, then Django."""

    def __init__(self, django: ASGIApp) -> None:
        self.django = django
        self.documents = Documents()
        self.relay_reads = RelayReads()
        self.housekeeping = Housekeeping()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.django(scope, receive, send)
            return
        # Every line logged while this request is served carries its id, and so does the
        # answer (X-Request-ID). The id a proxy of ours sent is kept (its access log then
        # names the same request); without one (TRUSTED_PROXY_COUNT=0), anybody could have
        # written it, and a fresh one is made.
        from_proxy = (
            dict(scope["headers"]).get(b"x-request-id") if settings.TRUSTED_PROXY_COUNT else None
        )
        request_id = request_id_from(from_proxy)
        token = REQUEST_ID.set(request_id)
        try:
            await self._http(scope, receive, _with_request_id(send, request_id))
        finally:
            REQUEST_ID.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        prepared = self.documents.answer_for(scope)
        if prepared is not None:
            await send(prepared.start)
            await send(
                prepared.body if scope["method"] == "GET" else {"type": "http.response.body"}
            )
            return
        app_path = _app_path(scope)
        if (
            _RELAY_PATH.match(app_path)
            and _host_allowed(scope)
            and _secure_enough(scope)
            and await self.relay_reads.serve(scope, receive, send, app_path)
        ):
            return
        refusal = _upload_refusal(scope)
        if refusal is not None:
            await _send_refusal(send, *refusal)
            return
        await self.django(scope, receive, send)

    async def prepare(self) -> None:
        """What is answered below Django: the documents, and the relay's reads (which send
        the security headers learnt with the documents)."""
        try:
            await self.documents.start(self.django)
        except Exception:
            logger.exception("documents not prepared at start-up: Django answers them")
        if self.documents.headers is not None:
            self.relay_reads.learn(self.documents.headers)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # What choosing a language needs, read now rather than by the first
                # request (a launch must not wait on it).
                await asyncio.to_thread(_load_translations)
                # The viewer page's template too: it searches OHIF's 17 MB app bundle once
                # (about 150 ms), which the first launch of each process would wait for.
                await asyncio.to_thread(_prepare_viewer_page)
                await self.prepare()
                DRAIN.install()
                self.housekeeping.start()
                metrics.forget_dead_processes()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                DRAIN.uninstall()
                await self.housekeeping.stop()
                await self.documents.stop()
                await services.close_kheops_client()
                metrics.forget_this_process()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _prepare_viewer_page() -> None:
    try:
        viewer.prepare()
    except Exception:  # the viewer page says what is wrong with the bundle, when asked
        logger.exception("the viewer page's template could not be prepared at start-up")


def _load_translations() -> None:
    # What LocaleMiddleware reads on every request, cached after the first one: whether the
    # URLs have language prefixes (it walks every URL pattern: seconds in a cold process),
    # and the catalogues of each language.
    is_language_prefix_patterns_used(settings.ROOT_URLCONF)
    for language, _name in settings.LANGUAGES:
        translation.check_for_language(language)
        with translation.override(language):
            translation.gettext("KHEOPS is unavailable.")


def _with_request_id(send: Send, request_id: str) -> Send:
    """`send`, adding `X-Request-ID: <request_id>` to the answer's headers."""
    header = (b"x-request-id", request_id.encode("ascii"))

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [item for item in message.get("headers", ()) if item[0].lower() != header[0]]
            message = {**message, "headers": [*headers, header]}
        await send(message)

    return sending


# An upload to the DICOMweb relay (launcher.relay): Django's ASGI handler reads a request's
# whole body (spooled to disk) before any view runs, so its size is checked here first.
_RELAY_PATH = re.compile(r"/launches/[^/]+/dicomweb/")


def _upload_refusal(scope: Scope) -> tuple[int, str] | None:
    if scope["method"] != "POST" or not _RELAY_PATH.match(_app_path(scope)):
        return None
    length = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
    if not length.isdigit():
        return 411, "An upload must state its length."
    if int(length) > settings.DICOMWEB_RELAY_MAX_UPLOAD_BYTES:
        return 413, "This upload is larger than the viewer accepts."
    return None


def _app_path(scope: Scope) -> str:
    path = scope["path"]
    script_name = settings.FORCE_SCRIPT_NAME or scope.get("root_path", "")
    return path[len(script_name) :] if script_name and path.startswith(script_name) else path


async def _send_refusal(send: Send, status: int, message: str) -> None:
    # The browser may still be sending: it stops, the connection is not reused.
    extra = [(b"x-content-type-options", b"nosniff"), (b"connection", b"close")]
    await send_json(send, status, relay.refusal_body(message), extra)


def _host_allowed(scope: Scope) -> bool:
    host = next((value for name, value in scope["headers"] if name == b"host"), b"").decode(
        "latin-1"
    )
    domain, _ = split_domain_port(host)
    # A host of the admin alone answers nothing else (launcher.middleware.AdminHostsMiddleware).
    return (
        bool(domain)
        and validate_host(domain, settings.ALLOWED_HOSTS)
        and not is_admin_only_host(domain)
    )


def _secure_enough(scope: Scope) -> bool:
    """Whether Django would answer this request itself rather than redirect it to https."""
    if not settings.SECURE_SSL_REDIRECT or scope.get("scheme") == "https":
        return True
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        return any(
            key == name and value.decode("latin-1") == secure_value
            for key, value in scope["headers"]
        )
    return False


async def _headers_django_sends(django: ASGIApp, path: str) -> list[tuple[bytes, bytes]]:
    """The headers Django answers `path` with, as for a request to PUBLIC_BASE_URL (over https
    when https is required: the documents are answered from memory only then), minus those
    that depend on the body."""
    public = urlsplit(settings.PUBLIC_BASE_URL)
    scheme = "https" if settings.SECURE_SSL_REDIRECT else public.scheme
    headers = [(b"host", public.netloc.encode())]
    if settings.SECURE_PROXY_SSL_HEADER and scheme == "https":
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        headers.append(
            (header.removeprefix("HTTP_").replace("_", "-").lower().encode(), secure_value.encode())
        )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": (public.hostname, public.port or (443 if public.scheme == "https" else 80)),
    }
    answered = asyncio.Event()
    messages: list[Message] = []
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await django(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    if start["status"] != 200:
        raise RuntimeError(f"Django answered {path} with HTTP {start['status']}")
    return [
        (name.lower(), value)
        for name, value in start["headers"]
        if name.lower() != b"content-length"
    ]
