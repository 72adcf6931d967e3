"""Human pages: an index and an album page that launches providers like the KHEOPS UI."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from sandbox import protocol
from sandbox.models import Album, User


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    context = {
        "albums": Album.objects.order_by("pk"),
        "users": User.objects.order_by("username"),
        "root_url": settings.SANDBOX_ROOT_URL,
        "configuration_url": protocol.configuration_url(),
    }
    return render(request, "sandbox/index.html", context)


@require_GET
def album(request: HttpRequest, album_id: str) -> HttpResponse:
    page = protocol.album_page(album_id=album_id, username=request.GET.get("as"))
    if page is None:
        raise Http404("No such album or user")
    context = {
        "page": page,
        "report_url": f"{protocol.api_url()}/report",
        "return_uri": f"{settings.SANDBOX_ROOT_URL}/albums/{page.album.album_id}",
    }
    response = render(request, "sandbox/album.html", context)
    # The page embeds a fresh user token in its forms: keep it out of caches.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
