"""The protocol endpoints under ROOT/api. Thin: parse, call `sandbox.protocol`, render."""

from __future__ import annotations

import json
import logging
import time
import uuid

from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from sandbox import protocol
from sandbox.faults import current_faults

logger = logging.getLogger(__name__)


def _authorization(request: HttpRequest) -> str | None:
    return request.headers.get("Authorization")


def _non_negative_int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _api_error(error: protocol.ApiError) -> HttpResponse:
    body = error.body()
    if body is None:
        return HttpResponse(status=error.status)
    return JsonResponse(body, status=error.status)


def _token_error(error: protocol.TokenRequestError) -> JsonResponse:
    return JsonResponse(error.body(), status=400)


def server_error(request: HttpRequest) -> JsonResponse:
    """OtherExceptionMapper: 500 with a log id, never a traceback."""
    return JsonResponse(
        {"message": "Internal server error", "detail": f"log id : {uuid.uuid4()}"}, status=500
    )


@require_GET
def discovery(request: HttpRequest) -> HttpResponse:
    faults = current_faults()
    if faults.discovery_down:
        return HttpResponse("Service Unavailable", status=503, content_type="text/plain")
    if faults.discovery_garbage:
        return HttpResponse('{"issuer": ', content_type="application/json")
    return JsonResponse(protocol.discovery_document())


@require_http_methods(["GET", "POST"])
def album_providers(request: HttpRequest, album_id: str) -> HttpResponse:
    try:
        user = protocol.authenticate_user(_authorization(request))
        if request.method == "POST":
            provider = protocol.register_provider(
                user=user,
                album_id=album_id,
                url=request.POST.get("url"),
                name=request.POST.get("name"),
            )
            return JsonResponse(protocol.provider_json(provider), status=201)
        page, total = protocol.list_providers(
            user=user,
            album_id=album_id,
            limit=_non_negative_int(request.GET.get("limit")),
            offset=_non_negative_int(request.GET.get("offset")) or 0,
        )
    except protocol.ApiError as error:
        return _api_error(error)
    response = JsonResponse([protocol.provider_json(p) for p in page], safe=False)
    response.headers["X-Total-Count"] = str(total)
    return response


@require_http_methods(["GET", "PATCH", "DELETE"])
def album_provider(request: HttpRequest, album_id: str, client_id: str) -> HttpResponse:
    try:
        user = protocol.authenticate_user(_authorization(request))
        if request.method == "DELETE":
            protocol.remove_provider(user=user, album_id=album_id, client_id=client_id)
            return HttpResponse(status=204)
        if request.method == "PATCH":
            form = QueryDict(request.body)
            provider = protocol.edit_provider(
                user=user,
                album_id=album_id,
                client_id=client_id,
                url=form.get("url"),
                name=form.get("name"),
            )
        else:
            provider = protocol.get_provider(user=user, album_id=album_id, client_id=client_id)
    except protocol.ApiError as error:
        return _api_error(error)
    return JsonResponse(protocol.provider_json(provider))


@require_POST
def provider_metadata(request: HttpRequest) -> HttpResponse:
    try:
        body = protocol.provider_metadata(
            authorization=_authorization(request), url=request.POST.get("url")
        )
    except protocol.ApiError as error:
        return _api_error(error)
    return JsonResponse(body)


@require_POST
def report(request: HttpRequest) -> HttpResponse:
    """The launch: 200 text/html with a meta refresh (not a 302); errors as HTML too."""
    try:
        launch = protocol.launch_report(
            access_token=request.POST.get("access_token"),
            client_id=request.POST.get("client_id"),
            study_uids=request.POST.getlist("studyUID"),
        )
    except protocol.ApiError as error:
        if error.message is None:
            return HttpResponse(status=error.status)
        return render(request, "sandbox/report_error.html", {"error": error}, status=error.status)
    return render(
        request,
        "sandbox/report_redirect.html",
        {"name": launch.provider_name, "url": _attribute_safe(launch.provider_url)},
    )


def _attribute_safe(url: str) -> str:
    """The URL as KHEOPS writes it (raw `&`), minus anything that could leave the attribute."""
    for character in "'\"<>":
        url = url.replace(character, f"%{ord(character):02X}")
    return url


@require_POST
def token(request: HttpRequest) -> HttpResponse:
    faults = current_faults()
    if faults.token_delay_seconds:
        time.sleep(faults.token_delay_seconds)
    if faults.token_status:
        return _faulty_token_response(faults.token_status)
    if faults.token_garbage:
        return HttpResponse("<html><body>Bad gateway?</body></html>", content_type="text/html")
    try:
        body = protocol.grant_token(form=request.POST, authorization=_authorization(request))
    except protocol.TokenRequestError as error:
        logger.info("token request refused: %s", error.error)
        return _token_error(error)
    return JsonResponse(body)


def _faulty_token_response(status: int) -> HttpResponse:
    if status >= 500:
        return JsonResponse(
            {"message": "Internal server error", "detail": "log id : injected-fault"},
            status=status,
        )
    if status == 400:
        return JsonResponse(
            {"error": "invalid_request", "error_description": "injected fault"}, status=400
        )
    return HttpResponse(
        json.dumps({"message": "injected fault"}), status=status, content_type="application/json"
    )


@require_POST
def introspect(request: HttpRequest) -> HttpResponse:
    try:
        body = protocol.introspect(form=request.POST, authorization=_authorization(request))
    except protocol.TokenRequestError as error:
        return _token_error(error)
    except protocol.ApiError as error:
        return _api_error(error)
    return JsonResponse(body)


@require_GET
def userinfo(request: HttpRequest) -> HttpResponse:
    status = current_faults().userinfo_status
    if status:
        return JsonResponse({"message": "injected fault", "detail": ""}, status=status)
    try:
        body = protocol.userinfo(authorization=_authorization(request))
    except protocol.ApiError as error:
        response = _api_error(error)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return JsonResponse(body)
