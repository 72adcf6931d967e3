from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import urlencode

from csp.constants import SELF
from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import get_language, gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_GET, require_safe

from launcher import (
    blocking,
    clientaddr,
    documents,
    kheops,
    metrics,
    relay,
    sealing,
    services,
    stow,
    viewer,
)
from launcher.headers import no_referrer, server_timing
from launcher.middleware import OHIF_CSP_DIRECTIVES
from launcher.models import GrantState
from launcher.serving import UploadAbandoned, UploadStream

logger = logging.getLogger(__name__)

NOT_INSTALLED = gettext_lazy("The OHIF viewer is not installed on this server.")
TELL_ADMIN = gettext_lazy("Tell this viewer's administrator.")
UNSEALABLE = gettext_lazy("This viewer cannot open the credentials it keeps for this study.")
UNSEALABLE_ADVICE = gettext_lazy(
    "Tell this viewer's administrator: its keys have changed (the server's log says what to do)."
)

# What OHIF's router would otherwise answer with index.html: a missing chunk must be a
# real 404, or the browser parses HTML as JavaScript.
ASSET_PATH = re.compile(
    r"\.(js|mjs|css|wasm|json|map|woff2?|ttf|png|jpe?g|gif|svg|ico|txt|xml)$", re.I
)


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "launcher/home.html", {"provider": services.default_provider()})


@require_safe
def provider_configuration(request: HttpRequest, slug: str | None = None) -> HttpResponse:
    # The server answers these from memory (launcher.serving); this is the same document.
    provider = services.provider_for(slug) if slug else services.default_provider()
    if provider is None or not provider.enabled:
        raise Http404("No such provider.")
    return document_response(documents.configuration_document(provider))


@require_safe
def jwks(request: HttpRequest) -> HttpResponse:
    return document_response(documents.jwks())


def document_response(document: dict) -> HttpResponse:
    # KHEOPS fetches these on every step; let proxies help, but not for long.
    return HttpResponse(
        documents.encode(document),
        content_type=documents.CONTENT_TYPE,
        headers={"Cache-Control": documents.CACHE_CONTROL},
    )


@sensitive_variables()
@no_referrer
@never_cache
@require_GET
async def launch(request: HttpRequest, slug: str) -> HttpResponse:
    started = time.perf_counter()
    try:
        query: QueryDict | None = request.GET
    except TooManyFieldsSent:
        # Django's bare 400 would skip the audit record and the human page.
        query = None
    timings: kheops.Timings = []
    try:
        grant = await services.launch(
            slug=slug,
            query=query,
            remote_addr=clientaddr.client_address(request),
            launcher_key=request.COOKIES.get(LAUNCHER_COOKIE),
            timings=timings,
        )
    except services.LaunchFailed as failure:
        response = error_page(request, failure)
    else:
        # Post/Redirect/Get: the code leaves the address bar and the history right away.
        # The code is exchanged while the viewer loads (services.complete).
        response = HttpResponseRedirect(viewer_url(grant))
        # A code this browser launched before (a double click in KHEOPS) comes back without
        # keys: the browser has them, and the redirect goes to its viewer.
        if grant.browser_key:
            # The viewer answers only the browser holding this key. SameSite=Lax: the launch
            # is a cross-site top-level navigation from KHEOPS, and the cookie must come
            # along on the redirect to the viewer; scoped to this launch's viewer path.
            set_grant_cookie(
                response, grant.launch_id, grant.browser_key, seconds=grant.seconds_left
            )
        if grant.launcher_key:
            set_launcher_cookie(response, slug, grant.launcher_key)
    response["Server-Timing"] = server_timing(timings, time.perf_counter() - started)
    return response


def set_grant_cookie(
    response: HttpResponse, launch_id: str, browser_key: str, *, seconds: int
) -> None:
    response.set_cookie(
        services.grant_cookie_name(launch_id),
        browser_key,
        max_age=seconds + 60,
        path=reverse("viewer-root", kwargs={"launch_id": launch_id}),
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


# The launching browser's key on the launch path: the same code presented again by the
# browser that claimed it opens that launch's viewer (services.launch). One per browser,
# renewed at each launch; lives as long as KHEOPS codes (10 minutes) and a little more.
LAUNCHER_COOKIE = "kheops_ohif_launcher"
LAUNCHER_COOKIE_SECONDS = 660


def set_launcher_cookie(response: HttpResponse, slug: str, launcher_key: str) -> None:
    response.set_cookie(
        LAUNCHER_COOKIE,
        launcher_key,
        max_age=LAUNCHER_COOKIE_SECONDS,
        path=reverse("launch", kwargs={"slug": slug}),
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


def grant_from(request: HttpRequest, launch_id: str) -> services.ViewerGrant | None:
    return services.grant_for(launch_id, request.COOKIES.get(services.grant_cookie_name(launch_id)))


def unsealable(launch_id: str, error: sealing.SealError) -> services.ViewerRefused:
    """A value this launch needs (its code, its token, our signing key) was sealed under a
    key this server no longer has: the administrator must act; the log says how."""
    logger.error("launch %s cannot go on: %s", launch_id, error)
    known = services.refusal_for_another_browser(launch_id)  # the way back, the studies
    return services.ViewerRefused(
        500,
        UNSEALABLE,
        advice=UNSEALABLE_ADVICE,
        return_uri=known.return_uri,
        study_uids=known.study_uids,
    )


def viewer_url(grant: services.ViewerGrant) -> str:
    path = reverse("viewer", kwargs={"launch_id": grant.launch_id, "route": grant.mode})
    # `lng`: OHIF's own language, the one of our pages (LocaleMiddleware). It comes first in
    # OHIF's detection, before what OHIF remembers of an earlier session (docs/ohif.md).
    query = {"StudyInstanceUIDs": ",".join(grant.study_uids), "lng": get_language()}
    return f"{path}?{urlencode(query)}"


def error_page(request: HttpRequest, refusal: services.ViewerRefused) -> HttpResponse:
    response = render(request, "launcher/error.html", {"refusal": refusal}, status=refusal.status)
    response["Cache-Control"] = "no-store"
    if refusal.retry_after is not None:
        response["Retry-After"] = str(refusal.retry_after)
    return response


@no_referrer
@never_cache
# The page is OHIF's index.html (5 KB, mostly icon links) and the launch's data: 1 KB
# compressed. Nothing secret in it (Django pads it against length attacks all the same).
@gzip_page
@require_GET
def viewer_page(request: HttpRequest, launch_id: str, route: str = "") -> HttpResponse:
    if ASSET_PATH.search(route):
        raise Http404("No such file.")
    # OHIF reads `token` (case-insensitively) from viewer URLs and lets it replace ours: a
    # crafted link could point a clinician's viewer at someone else's study.
    if any(name.lower() == "token" for name in request.GET):
        query = [
            (name, value)
            for name, values in request.GET.lists()
            if name.lower() != "token"
            for value in values
        ]
        return HttpResponseRedirect(request.path + ("?" + urlencode(query) if query else ""))
    try:
        grant = grant_from(request, launch_id)
    except sealing.SealError as error:
        return error_page(request, unsealable(launch_id, error))
    if grant is None:
        return error_page(request, services.refusal_for_another_browser(launch_id))
    if not route:
        return HttpResponseRedirect(viewer_url(grant))
    # A failed exchange (while OHIF loaded: its page sends the browser here), or expired.
    refusal = services.refusal_of(grant)
    if refusal is not None:
        return error_page(request, refusal)
    html = viewer.index_html(grant)
    if html is None:
        return error_page(request, services.ViewerRefused(503, NOT_INSTALLED, advice=TELL_ADMIN))
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    # Relay mode: the viewer talks to us alone (its DICOMweb goes through launcher.relay).
    connect = [SELF] if grant.relayed else [SELF, services.origin_of(grant.dicomweb_endpoint)]
    response._csp_replace = {  # type: ignore[attr-defined]  # django-csp's per-response hook
        **OHIF_CSP_DIRECTIVES,
        "connect-src": connect,
    }
    return response


def refusal_answer(refused: services.ViewerRefused) -> JsonResponse:
    answer = JsonResponse(
        {
            "error": refused.message,
            "advice": refused.advice,
            "returnUri": refused.return_uri,
            # Worth asking again in a moment (KHEOPS slow or away, the server restarting):
            # the viewer's launch.js does, a few times, before it shows the error.
            "retryable": refused.retryable,
        },
        status=refused.status,
    )
    if refused.retry_after is not None:  # over the rate limit
        answer["Retry-After"] = str(refused.retry_after)
    return answer


@sensitive_variables()
@no_referrer
@never_cache
@require_GET
async def viewer_token(request: HttpRequest, launch_id: str) -> HttpResponse:
    """The viewer's KHEOPS token, for launch.js; the first request exchanges the code.

    Same-origin JSON for the launching browser only (its cookie); never cached. On failure:
    the message and the way back, and the viewer page now shows the same error.
    """
    started = time.perf_counter()
    timings: kheops.Timings = []
    browser_key = request.COOKIES.get(services.grant_cookie_name(launch_id))
    try:
        grant = await services.complete(
            launch_id,
            browser_key,
            remote_addr=clientaddr.client_address(request),
            timings=timings,
        )
    except sealing.SealError as error:
        response = refusal_answer(await blocking.run(unsealable, launch_id, error))
    except services.ViewerRefused as refused:
        response = refusal_answer(refused)
    else:
        answer = {
            "expiresIn": grant.seconds_left,
            # Whom the viewer was opened as, shown in it (banner.js): a launch link
            # crafted by someone else opens *their* study, and this says so.
            "userName": grant.user_name,
            "userEmail": grant.user_email,
        }
        if not grant.relayed:  # relay mode: the token stays on the server
            answer["authorization"] = "Bearer " + grant.access_token
        response = JsonResponse(answer)
        # The launch's cookie lasted as long as the code; now the browser keeps it as long
        # as the token, so that a reload within the hour still finds the viewer.
        if browser_key:  # always: complete() refuses a request without it
            set_grant_cookie(response, launch_id, browser_key, seconds=grant.seconds_left)
    response["Cache-Control"] = "no-store"
    response["Server-Timing"] = server_timing(timings, time.perf_counter() - started)
    return response


# --- The same-origin DICOMweb relay (relay mode; launcher.relay) ------------------------------

# An upload is sent up in pieces this large, read from where the server spooled it.
UPLOAD_CHUNK_BYTES = 256 * 1024


@sensitive_variables()
@csrf_exempt  # uploads are checked for our own origin (relay.same_origin) instead
@no_referrer
async def dicomweb_relay(request: HttpRequest, launch_id: str, resource: str) -> HttpResponse:
    """One DICOMweb request of the viewer, sent on to KHEOPS with the launch's token.

    The grant cookie is the only credential. Refusals are JSON: 400 (not a DICOMweb
    address), 403 (another study, or an upload from another origin), 405, 413, and 401
    when this browser has no usable grant (not its launch, expired, failed). The answer's
    Server-Timing says how long KHEOPS took to begin answering and what was our own work.
    """
    started = time.perf_counter()
    try:
        target = relay.check(
            request.method or "",
            _raw_path(request),
            resource,
            request.META.get("QUERY_STRING", ""),
        )
        _check_upload(request, target)
        grant = await _relay_grant(request, launch_id, target)
        headers = relay.upstream_headers(
            request.headers, grant.access_token, upload=target.is_upload
        )
    except relay.Refused as refused:
        return _relay_refusal(refused.status, refused.message)
    except sealing.SealError as error:
        unopenable = await blocking.run(unsealable, launch_id, error)
        return _relay_refusal(500, unopenable.message, advice=unopenable.advice)
    except services.ViewerRefused as refused:
        status = 503 if refused.retryable else 401
        return _relay_refusal(status, refused.message, advice=refused.advice)
    url = grant.dicomweb_endpoint.rstrip("/") + "/" + target.path
    if target.query:
        url += "?" + target.query
    asked = time.perf_counter()
    try:
        upstream = await kheops.open_dicomweb(
            services.kheops_client(),
            target.method,
            url,
            headers=headers,
            content=_upload_body(request) if target.is_upload else None,
        )
    except (UploadAbandoned, kheops.KheopsUnavailable) as exc:
        status, message = _unanswered(exc)
        kind = metrics.kheops_error_kind(exc)
        if kind != "other":  # KHEOPS's failure, not the browser's
            metrics.KHEOPS_ERRORS.labels("dicomweb", kind).inc()
        if target.is_upload:
            await _record_write(launch_id, target, None, None, note=message)
        return _relay_refusal(status, message)
    answered = time.perf_counter()
    body = metrics.relayed(kheops.raw_body(upstream))
    if target.is_upload and upstream.status_code == 204:
        # No body to pass on, and a server may never start streaming one: recorded now.
        await _record_write(launch_id, target, upstream, stow.AnswerCopy(), note="")
    elif target.is_upload:
        body = _recorded_upload(body, upstream, launch_id, target)
    response = StreamingHttpResponse(body, status=upstream.status_code)
    del response["Content-Type"]  # KHEOPS's, or none
    for name, value in relay.downstream_headers(upstream.headers).items():
        response[name] = value
    # The time to KHEOPS's answer's headers, and our own work before and after (the body
    # then streams through: its time is KHEOPS's and the network's).
    response["Server-Timing"] = server_timing(
        [("kheops", answered - asked)], time.perf_counter() - started
    )
    return response


def _unanswered(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, UploadAbandoned):
        return 400, "The upload was broken off."
    return relay.unanswered(exc)


async def _recorded_upload(
    body: AsyncGenerator[bytes, None], upstream: Any, launch_id: str, target: relay.Target
) -> AsyncIterator[bytes]:
    """An upload's answer, passed on as it comes, a bounded copy kept for the write audit
    (launcher.stow), which is written once the answer has ended, broken off, or the browser
    went away."""
    copy = stow.AnswerCopy()
    note = "The browser went away before KHEOPS's answer was passed on."
    try:
        async for chunk in body:
            copy.add(chunk)
            yield chunk
        note = ""
    except kheops.KheopsUnavailable:
        note = "KHEOPS broke off its answer."
        raise
    finally:
        try:
            await body.aclose()  # KHEOPS's answer closed, however this one ends
        finally:
            # Shielded: a browser that went away cancels the response, not the record.
            await asyncio.shield(_record_write(launch_id, target, upstream, copy, note=note))


async def _record_write(
    launch_id: str,
    target: relay.Target,
    upstream: Any,
    copy: stow.AnswerCopy | None,
    *,
    note: str,
) -> None:
    # The audit must never break the upload it records: a failure is logged, not raised.
    try:
        await blocking.run(
            stow.record,
            launch_id,
            target.study_uids,
            upstream.status_code if upstream is not None else None,
            copy,
            content_encoding=upstream.headers.get("content-encoding", "") if upstream else "",
            note=note,
        )
    except Exception:
        logger.exception("The write audit of an upload through the relay failed")


def _raw_path(request: HttpRequest) -> str:
    # Under ASGI, the path as the browser sent it (percent-encoded); else the decoded one.
    raw = getattr(request, "scope", {}).get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else request.path


def _check_upload(request: HttpRequest, target: relay.Target) -> None:
    if not target.is_upload:
        return
    origin = f"{request.scheme}://{request.get_host()}"
    if not relay.same_origin(request.headers, relay.our_origin(origin)):
        raise relay.Refused(403, "Uploads are accepted from this viewer's own pages only.")
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise relay.Refused(411, "An upload must state its length.")
    if int(length) > settings.DICOMWEB_RELAY_MAX_UPLOAD_BYTES:
        raise relay.Refused(413, "This upload is larger than the viewer accepts.")


async def _relay_grant(
    request: HttpRequest, launch_id: str, target: relay.Target
) -> services.ViewerGrant:
    """This browser's relayed grant of the launch, its token ready; the studies checked
    before any call to KHEOPS (a pending grant's code is exchanged only then)."""
    browser_key = request.COOKIES.get(services.grant_cookie_name(launch_id))
    grant = await services.relay_grant(launch_id, browser_key)
    if grant is None:
        raise await blocking.run(services.refusal_for_another_browser, launch_id)
    refusal = services.refusal_of(grant)
    if refusal is not None:
        raise refusal
    if not grant.relayed:
        raise relay.Refused(404, "This viewer does not use the relay.")
    if not relay.owns(target, grant.study_uids):
        raise relay.Refused(403, "Only the launch's studies can be reached through the viewer.")
    if grant.state != GrantState.READY:
        grant = await services.complete(
            launch_id, browser_key, remote_addr=clientaddr.client_address(request)
        )
    return grant


async def _upload_body(request: HttpRequest) -> AsyncIterator[bytes]:
    """The upload as it arrives (our server: launcher.serving.UploadStream); elsewhere (the
    test client, another ASGI server) from where Django spooled it, read off the event loop."""
    upload = getattr(request, "scope", {}).get(UploadStream.SCOPE_KEY)
    up = metrics.RELAY_BYTES.labels("up")
    if upload is not None:
        async for chunk in upload.chunks():
            up.inc(len(chunk))
            yield chunk
        return
    while chunk := await asyncio.to_thread(request.read, UPLOAD_CHUNK_BYTES):
        up.inc(len(chunk))
        yield chunk


def _relay_refusal(status: int, message: str, *, advice: str = "") -> HttpResponse:
    response = HttpResponse(
        relay.refusal_body(message, advice), status=status, content_type="application/json"
    )
    if status == 405:
        response["Allow"] = relay.ALLOWED_METHODS
    response["Cache-Control"] = "no-store"
    return response
