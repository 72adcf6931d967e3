"""The loopback-only control API under /_sandbox/: faults, clock, state, user tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from sandbox import clock, faults, tokens
from sandbox.loopback import is_loopback_address
from sandbox.models import Album, ReportProvider, User

View = Callable[..., HttpResponse]


def loopback_only(view: View) -> View:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_loopback_address(request.META.get("REMOTE_ADDR")):
            return JsonResponse(
                {"error": "the control API answers loopback clients only"}, status=403
            )
        return view(request, *args, **kwargs)

    return wrapper


def _json_body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


@loopback_only
@require_http_methods(["GET", "POST", "DELETE"])
def faults_view(request: HttpRequest) -> HttpResponse:
    if request.method == "DELETE":
        return JsonResponse(faults.reset_faults().as_dict())
    if request.method == "POST":
        body = _json_body(request)
        if body is None:
            return _bad_request("expected a JSON object")
        try:
            return JsonResponse(faults.update_faults(body).as_dict())
        except faults.FaultError as exc:
            return _bad_request(str(exc))
    return JsonResponse(faults.current_faults().as_dict())


def _clock_json(setting: clock.ClockSetting) -> dict[str, Any]:
    return {
        "offset_seconds": setting.offset_seconds,
        "mode": setting.mode,
        "now": time.time() + setting.offset_seconds,
    }


@loopback_only
@require_http_methods(["GET", "POST", "DELETE"])
def clock_view(request: HttpRequest) -> HttpResponse:
    if request.method == "DELETE":
        return JsonResponse(_clock_json(clock.reset_clock()))
    if request.method == "POST":
        body = _json_body(request)
        offset = body.get("offset_seconds") if body is not None else None
        if isinstance(offset, bool) or not isinstance(offset, (int, float)):
            return _bad_request("offset_seconds must be a number")
        try:
            setting = clock.set_clock(offset_seconds=offset, mode=body.get("mode", "elapsed"))
        except ValueError as exc:
            return _bad_request(str(exc))
        return JsonResponse(_clock_json(setting))
    return JsonResponse(_clock_json(clock.setting()))


@loopback_only
@require_POST
def user_token_view(request: HttpRequest) -> HttpResponse:
    body = _json_body(request) or {}
    user = User.objects.filter(username=body.get("username", "")).first()
    if user is None:
        return JsonResponse({"error": "unknown username"}, status=404)
    return JsonResponse({"access_token": tokens.mint_user_token(user), "sub": user.sub})


@loopback_only
@require_GET
def state_view(request: HttpRequest) -> HttpResponse:
    """Everything a test or a developer needs to find its way (no secrets, no tokens)."""
    albums = []
    for album in Album.objects.order_by("pk").prefetch_related("memberships__user", "studies"):
        albums.append(
            {
                "album_id": album.album_id,
                "name": album.name,
                "url": f"{settings.SANDBOX_ROOT_URL}/albums/{album.album_id}",
                "members": [
                    {"username": m.user.username, "is_admin": m.is_admin}
                    for m in album.memberships.all()
                ],
                "studies": [
                    {
                        "study_uid": s.study_uid,
                        "description": s.description,
                        "modalities": s.modality_list,
                        "patient_name": s.patient_name,
                    }
                    for s in album.studies.all()
                ],
            }
        )
    return JsonResponse(
        {
            "root_url": settings.SANDBOX_ROOT_URL,
            "clock": _clock_json(clock.setting()),
            "faults": faults.current_faults().as_dict(),
            "users": [
                {"username": u.username, "name": u.display_name, "email": u.email, "sub": u.sub}
                for u in User.objects.order_by("username")
            ],
            "albums": albums,
            "report_providers": [
                {
                    "client_id": p.client_id,
                    "name": p.name,
                    "url": p.url,
                    "album_id": p.album.album_id,
                    "removed": p.removed,
                }
                for p in ReportProvider.objects.select_related("album").order_by("pk")
            ],
        }
    )
