"""Serving the installed OHIF bundle, and the Content-Security-Policy it needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from csp.constants import NONE, SELF, UNSAFE_EVAL, UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as message_middleware
from django.contrib.sessions import middleware as session_middleware
from django.http import (
    Http404,
    HttpRequest,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.http.request import split_domain_port, validate_host
from django.middleware import clickjacking, common, csrf, locale, security
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware

from launcher import ohif_bundle

# Measured on OHIF 3.13 (docs/ohif.md): the codec glue evaluates strings
# ('wasm-unsafe-eval' alone breaks compressed-frame decoding), React and sonner inject
# <style> elements, thumbnails are data: URLs. connect-src gets the launch's DICOMweb
# origin added per response by the viewer views.
OHIF_CSP_DIRECTIVES: dict[str, list[str]] = {
    "default-src": [SELF],
    "script-src": [SELF, UNSAFE_EVAL],
    "style-src": [SELF, UNSAFE_INLINE],
    "img-src": [SELF, "data:", "blob:"],
    "font-src": [SELF],
    "worker-src": [SELF],
    "connect-src": [SELF],
    "object-src": [NONE],
    "base-uri": [SELF],
    "form-action": [SELF],
    "frame-ancestors": [NONE],
}

# Files are read this much at a time, off the event loop.
_READ_SIZE = 256 * 1024


class OhifWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, plus the installed OHIF bundle under OHIF_ASSET_URL, and served without
    a thread under ASGI.

    WhiteNoise (6.x) is synchronous: under ASGI, Django would run it, and everything below
    it, in a thread, and read every file whole into memory before sending it. Here its
    lookup and headers (compressed variants, ranges, conditional requests) are kept, and
    the file is streamed from an async iterator.

    The bundle directory is resolved once at start-up: a re-install switches the `current`
    link atomically, and a restarted process picks up the new bundle.
    """

    sync_capable = True
    async_capable = True

    def __init__(
        self, get_response: Callable[..., Any] | None = None, settings: Any = settings
    ) -> None:
        super().__init__(get_response, settings=settings)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
        if bundle is not None:
            prefix = settings.OHIF_ASSET_URL.removeprefix(settings.SCRIPT_NAME)
            self.add_files(str(bundle.static_dir), prefix=prefix)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._serve_async(request)
        return super().__call__(request)

    async def _serve_async(self, request: HttpRequest) -> HttpResponseBase:
        found = (
            self.find_file(request.path_info)
            if self.autorefresh
            else self.files.get(request.path_info)
        )
        if found is None:
            get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
            return await get_response(request)
        answer = found.get_response(request.method, request.META)
        response = StreamingHttpResponse(_chunks(answer.file), status=int(answer.status))
        del response["Content-Type"]  # WhiteNoise's own headers say it
        for name, value in answer.headers:
            response[name] = value
        return response


async def _chunks(file: IO[bytes] | None) -> AsyncIterator[bytes]:
    if file is None:  # HEAD, 304
        return
    try:
        while chunk := await asyncio.to_thread(file.read, _READ_SIZE):
            yield chunk
    finally:
        file.close()


# --- Django's middleware, on the event loop ---------------------------------------------------
#
# Under ASGI Django runs every hook of a (MiddlewareMixin) middleware through sync_to_async:
# a hand-off to the request's thread and back, twice per middleware and request, which cost
# more than everything our launch does (measured: a trivial view took 7.5 ms of CPU behind
# the eleven middlewares). These subclasses run the hooks on the event loop instead, where
# they do no I/O (headers, cookies, lazy objects); the session and the messages hand off to
# the thread only when they have something to store.


class _OnTheLoop:
    get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]
    async_mode: bool

    def __init__(self, get_response: Callable[..., Any]) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]
        process_view = getattr(self, "process_view", None)
        if self.async_mode and process_view is not None:
            # Django hands a synchronous process_view to a thread; a coroutine it awaits.
            async def process_view_on_the_loop(*args: Any) -> HttpResponseBase | None:
                return process_view(*args)

            self.process_view = process_view_on_the_loop

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = await self._process_response_async(request, response)
        return response

    async def _process_response_async(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        return self.process_response(request, response)  # type: ignore[attr-defined]


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    pass


class LocaleMiddleware(_OnTheLoop, locale.LocaleMiddleware):
    """The language of the request (Accept-Language; English when none of LANGUAGES fits),
    active for the view and its threads, and said in Content-Language and Vary."""


class CsrfViewMiddleware(_OnTheLoop, csrf.CsrfViewMiddleware):
    pass


class AuthenticationMiddleware(_OnTheLoop, auth_middleware.AuthenticationMiddleware):
    pass


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(_OnTheLoop, session_middleware.SessionMiddleware):
    async def _process_response_async(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        session = getattr(request, "session", None)
        if session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST):
            return await sync_to_async(self.process_response, thread_sensitive=True)(
                request, response
            )
        return self.process_response(request, response)


class MessageMiddleware(_OnTheLoop, message_middleware.MessageMiddleware):
    async def _process_response_async(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        storage = getattr(request, "_messages", None)
        if storage is not None and (storage.used or storage.added_new):
            return await sync_to_async(self.process_response, thread_sensitive=True)(
                request, response
            )
        return self.process_response(request, response)


class ContentSecurityPolicyMiddleware(_OnTheLoop, CSPMiddleware):
    """django-csp, with OHIF's policy on every file of the OHIF bundle.

    Workers get the CSP of their own script response, so the decode worker needs the
    OHIF policy too, not just the viewer page.
    """

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        ohif_prefix = settings.OHIF_ASSET_URL.removeprefix(settings.SCRIPT_NAME)
        if parts.replace is None and request.path_info.startswith(ohif_prefix):
            return PolicyParts(parts.config, parts.update, OHIF_CSP_DIRECTIVES, parts.nonce)
        return parts


# --- The admin on host names of its own (ADMIN_HOSTS) ------------------------------------------

# The admin and the audit API (paths without the sub-path, as in request.path_info).
ADMIN_PATHS = ("/admin", "/api/v1", "/oauth")
# What an admin-only host also answers: probes, metrics, and the admin's own static files.
ADMIN_HOST_EXTRAS = ("/healthz", "/readyz", "/metrics", "/favicon.ico")


def is_admin_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PATHS)


def is_admin_only_host(domain: str) -> bool:
    """An ADMIN_HOSTS host that is not also the viewer's: it answers the admin alone."""
    return bool(settings.ADMIN_HOSTS) and (
        validate_host(domain, settings.ADMIN_HOSTS)
        and not validate_host(domain, [settings.PUBLIC_HOST])
    )


class AdminHostsMiddleware(_OnTheLoop, MiddlewareMixin):
    """With ADMIN_HOSTS set, the admin and the audit API answer on those hosts only, and
    those hosts answer nothing else: not the launch, not a viewer, not OHIF's files.

    OHIF runs third-party code on data from KHEOPS; a script injected there would act with
    whatever its origin holds. On a host of their own, the admin's session and CSRF cookies
    (host-only: no SESSION_COOKIE_DOMAIN) are out of its reach, and so are the admin's pages
    (the browser's same-origin policy). Elsewhere both are a 404, as for any unknown page.
    """

    def process_request(self, request: HttpRequest) -> HttpResponseBase | None:
        if not settings.ADMIN_HOSTS:
            return None
        domain, _ = split_domain_port(request.get_host())
        path = request.path_info
        if not validate_host(domain, settings.ADMIN_HOSTS):
            if is_admin_path(path):
                raise Http404("No such page.")
            return None
        if not is_admin_only_host(domain) or is_admin_path(path) or path in ADMIN_HOST_EXTRAS:
            return None
        if path == "/":
            return HttpResponseRedirect(reverse("admin:index"))
        ohif_prefix = settings.OHIF_ASSET_URL.removeprefix(settings.SCRIPT_NAME)
        static_prefix = settings.STATIC_URL.removeprefix(settings.SCRIPT_NAME)
        if path.startswith(static_prefix) and not path.startswith(ohif_prefix):
            return None
        raise Http404("No such page.")
