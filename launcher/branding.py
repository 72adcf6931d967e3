"""White label: the name and logo in the viewer's header, per provider, and our icon.

A logo is an image an admin uploads: PNG, JPEG or WebP only, recognised by its first bytes
(never SVG, which can carry script), at most MAX_LOGO_BYTES. It is served by `logo` at a
URL named by a hash of its bytes, so browsers may keep it forever.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from launcher.models import Provider, ProviderLogo

MAX_LOGO_BYTES = 256 * 1024
# The neutral mark the header shows without a logo (static/launcher/viewer-mark.svg: ours).
NEUTRAL_MARK = "launcher/viewer-mark.svg"
FOREVER = "public, max-age=31536000, immutable"
_FAVICON = Path(settings.BASE_DIR) / "static" / "launcher" / "favicon.ico"


def image_type(data: bytes) -> str | None:
    """The content type of a PNG, JPEG or WebP image, by its signature; None otherwise."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def store_logo(provider: Provider, image: bytes | None) -> None:
    """Give `provider` this logo (already checked by `image_type`), or none."""
    with transaction.atomic():
        if image is None:
            ProviderLogo.objects.filter(provider=provider).delete()
            provider.logo_digest = ""
        else:
            content_type = image_type(image)
            if content_type is None or len(image) > MAX_LOGO_BYTES:
                raise ValueError("not a PNG, JPEG or WebP image of at most 256 KB")
            digest = hashlib.sha256(image).hexdigest()[:16]
            ProviderLogo.objects.update_or_create(
                provider=provider,
                defaults={"image": image, "content_type": content_type, "digest": digest},
            )
            provider.logo_digest = digest
        provider.save(update_fields=["logo_digest"])


def header_brand(provider: Provider | None) -> dict[str, str]:
    """What OHIF's header shows for a launch through `provider` (static/launcher/launch.js)."""
    if provider is None:
        return {"title": "", "logo": static(NEUTRAL_MARK)}
    return {
        "title": provider.viewer_title or provider.client_name,
        "logo": provider.logo_url or static(NEUTRAL_MARK),
    }


@require_GET
def logo(request: HttpRequest, slug: str, digest: str) -> HttpResponse:
    found = (
        ProviderLogo.objects.filter(provider__slug=slug, digest=digest)
        .values_list("image", "content_type")
        .first()
    )
    if found is None:
        raise Http404("No such logo.")
    image, content_type = found
    response = HttpResponse(bytes(image), content_type=content_type)
    response["Cache-Control"] = FOREVER
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    return response


@cache
def _favicon_bytes() -> bytes:
    return _FAVICON.read_bytes()


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    # Browsers ask for /favicon.ico whatever the page links; our pages link the static copy.
    response = HttpResponse(_favicon_bytes(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response
