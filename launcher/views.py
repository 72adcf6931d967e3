from __future__ import annotations

import logging
import re
import time
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
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_safe

from launcher import blocking, clientaddr, documents, kheops, sealing, services, viewer
from launcher.headers import no_referrer
from launcher.middleware import OHIF_CSP_DIRECTIVES

logger = logging.getLogger(__name__)

NOT_INSTALLED = "The OHIF viewer is not installed on this server."
TELL_ADMIN = "Tell this viewer's administrator."
UNSEALABLE = "This viewer cannot open the credentials it keeps for this study."
UNSEALABLE_ADVICE = (
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
        grant_cookie_name(launch_id),
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


def server_timing(calls: list[tuple[str, float]], total: float) -> str:
    """Each KHEOPS round trip, and what is left: our own processing (milliseconds)."""
    upstream = sum(seconds for _, seconds in calls)
    parts = [f"{call};dur={seconds * 1000:.2f}" for call, seconds in calls]
    parts.append(f"app;dur={max(0.0, total - upstream) * 1000:.2f}")
    return ", ".join(parts)


def grant_cookie_name(launch_id: str) -> str:
    # One name per launch: several viewers may be open in one browser.
    return f"kheops_ohif_grant_{launch_id}"


def grant_from(request: HttpRequest, launch_id: str) -> services.ViewerGrant | None:
    return services.grant_for(launch_id, request.COOKIES.get(grant_cookie_name(launch_id)))


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
    return f"{path}?{urlencode({'StudyInstanceUIDs': ','.join(grant.study_uids)})}"


def error_page(request: HttpRequest, refusal: services.ViewerRefused) -> HttpResponse:
    response = render(request, "launcher/error.html", {"refusal": refusal}, status=refusal.status)
    response["Cache-Control"] = "no-store"
    if refusal.retry_after is not None:
        response["Retry-After"] = str(refusal.retry_after)
    return response


@no_referrer
@never_cache
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
    response._csp_replace = {  # type: ignore[attr-defined]  # django-csp's per-response hook
        **OHIF_CSP_DIRECTIVES,
        "connect-src": [SELF, services.origin_of(grant.dicomweb_endpoint)],
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
    browser_key = request.COOKIES.get(grant_cookie_name(launch_id))
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
        response = JsonResponse(
            {
                "authorization": "Bearer " + grant.access_token,
                "expiresIn": grant.seconds_left,
                # Whom the viewer was opened as, shown in it (banner.js): a launch link
                # crafted by someone else opens *their* study, and this says so.
                "userName": grant.user_name,
                "userEmail": grant.user_email,
            }
        )
        # The launch's cookie lasted as long as the code; now the browser keeps it as long
        # as the token, so that a reload within the hour still finds the viewer.
        if browser_key:  # always: complete() refuses a request without it
            set_grant_cookie(response, launch_id, browser_key, seconds=grant.seconds_left)
    response["Cache-Control"] = "no-store"
    response["Server-Timing"] = server_timing(timings, time.perf_counter() - started)
    return response
