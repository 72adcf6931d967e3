"""White label: a provider's name and logo in the viewer's header, and our icon."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from launcher import branding
from launcher.models import Provider, ProviderLogo
from tests.images import png

SVG_WITH_SCRIPT = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32


def save_provider(client: Client, provider: Provider, **fields: object) -> object:
    form = {
        "client_name": provider.client_name,
        "slug": provider.slug,
        "mode": provider.mode,
        "enabled": "on",
        "viewer_title": provider.viewer_title,
        **fields,
    }
    return client.post(f"/admin/launcher/provider/{provider.pk}/change/", form)


def config_of(client: Client, location: str) -> str:
    """The viewer page (its launch data holds the brand)."""
    return client.get(location).content.decode()


def brand_in(page: str) -> dict[str, str]:
    [data] = re.findall(
        r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>', page, re.S
    )
    return json.loads(data)["brand"]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (png(2, 2), "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (SVG_WITH_SCRIPT, None),
        (b"GIF89a" + b"\x00" * 20, None),
        (b"<html><script>alert(1)</script>", None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"", None),
    ],
)
def test_only_png_jpeg_and_webp_are_recognised_by_their_bytes(
    data: bytes, kind: str | None
) -> None:
    assert branding.image_type(data) == kind


def test_a_logo_uploaded_in_the_admin_is_served_at_a_hashed_url_cached_for_ever(
    admin_client: Client, provider: Provider
) -> None:
    image = png(64, 24)

    saved = save_provider(
        admin_client,
        provider,
        viewer_title="Hôpital du Lac",
        logo_upload=SimpleUploadedFile("logo.png", image, "image/png"),
    )

    assert saved.status_code == 302
    provider.refresh_from_db()
    assert provider.viewer_title == "Hôpital du Lac"
    assert provider.logo_url == f"/providers/ohif/logo/{provider.logo_digest}"
    served = Client().get(provider.logo_url)
    assert served.status_code == 200
    assert served.content == image
    assert served["Content-Type"] == "image/png"
    assert served["Cache-Control"] == "public, max-age=31536000, immutable"
    assert served["X-Content-Type-Options"] == "nosniff"
    page = admin_client.get(f"/admin/launcher/provider/{provider.pk}/change/").content.decode()
    assert f'<img class="provider-logo" src="{provider.logo_url}"' in page


def test_a_new_logo_gets_a_new_url_and_the_old_one_is_gone(
    admin_client: Client, provider: Provider
) -> None:
    save_provider(
        admin_client, provider, logo_upload=SimpleUploadedFile("a.png", png(8, 8), "image/png")
    )
    provider.refresh_from_db()
    first = provider.logo_url

    save_provider(
        admin_client, provider, logo_upload=SimpleUploadedFile("b.jpg", JPEG, "image/jpeg")
    )
    provider.refresh_from_db()

    assert provider.logo_url != first
    assert Client().get(first).status_code == 404
    assert Client().get(provider.logo_url)["Content-Type"] == "image/jpeg"
    assert ProviderLogo.objects.count() == 1


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("logo.svg", SVG_WITH_SCRIPT, "must be a PNG, JPEG or WebP image"),
        ("logo.png", b"<svg onload='alert(1)'/>", "must be a PNG, JPEG or WebP image"),
        ("huge.png", png(8, 8) + b"\x00" * (256 * 1024), "larger than 256 KB"),
    ],
)
def test_an_svg_a_disguised_file_or_a_huge_one_is_refused(
    admin_client: Client, provider: Provider, name: str, data: bytes, error: str
) -> None:
    response = save_provider(
        admin_client, provider, logo_upload=SimpleUploadedFile(name, data, "image/png")
    )

    assert response.status_code == 200
    assert error in response.content.decode()
    assert ProviderLogo.objects.count() == 0
    provider.refresh_from_db()
    assert provider.logo_digest == ""


def test_removing_the_logo_brings_back_the_neutral_mark(
    admin_client: Client, provider: Provider
) -> None:
    save_provider(
        admin_client, provider, logo_upload=SimpleUploadedFile("a.png", png(8, 8), "image/png")
    )
    provider.refresh_from_db()
    url = provider.logo_url

    save_provider(admin_client, provider, remove_logo="on")

    provider.refresh_from_db()
    assert (provider.logo_url, ProviderLogo.objects.count()) == (None, 0)
    assert Client().get(url).status_code == 404
    assert branding.header_brand(provider)["logo"].startswith("/static/launcher/viewer-mark")


def test_the_viewer_header_shows_the_providers_name_and_our_neutral_mark_by_default(
    client: Client, launched: Callable[..., str]
) -> None:
    page = config_of(client, launched())

    assert brand_in(page)["title"] == "OHIF Viewer"
    assert re.fullmatch(
        r"/static/launcher/viewer-mark(\.[0-9a-f]{12})?\.svg", brand_in(page)["logo"]
    )
    launch_js = (Path(settings.BASE_DIR) / "static/launcher/launch.js").read_text()
    assert "config.whiteLabeling = {" in launch_js
    assert "createLogoComponentFn: function (React)" in launch_js


def test_the_viewer_header_shows_the_white_label_of_the_launchs_provider(
    client: Client, launched: Callable[..., str], provider: Provider
) -> None:
    provider.viewer_title = "</script><script>alert(1)</script> Hospital"
    provider.save()
    branding.store_logo(provider, png(8, 8))

    page = config_of(client, launched())

    assert brand_in(page) == {"title": provider.viewer_title, "logo": provider.logo_url}
    assert "<script>alert(1)" not in page


def test_favicon_ico_is_our_icon(db: None, client: Client) -> None:
    response = client.get("/favicon.ico")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an icon directory
    assert len(response.content) < 4096


@pytest.mark.parametrize("page", ["/", "/admin/login/"])
def test_our_pages_link_the_icon(db: None, client: Client, page: str) -> None:
    html = client.get(page).content.decode()

    assert re.search(
        r'<link rel="icon" href="/static/launcher/favicon(\.[0-9a-f]{12})?\.ico">', html
    )
