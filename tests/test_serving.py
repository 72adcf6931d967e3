"""The installed OHIF bundle as a browser loads it: prefix, caching, MIME types, 404s.

Uses the real bundle that `make test` installs (python manage.py install_ohif).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable

import brotli
import pytest
from django.conf import settings
from django.test import Client

from launcher import ohif_bundle
from launcher.middleware import OHIF_CSP_DIRECTIVES
from tests.fakes import csp_directives

pytestmark = pytest.mark.django_db

P = settings.OHIF_ASSET_URL  # /static/ohif/<version>-<install format>/


@pytest.fixture(scope="module")
def bundle() -> ohif_bundle.InstalledBundle:
    installed = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    assert installed is not None, "run `python manage.py install_ohif` (make test does) first"
    return installed


def body(response) -> bytes:
    data = b"".join(response.streaming_content) if response.streaming else response.content
    encoding = response.get("Content-Encoding")
    if encoding == "br":
        return brotli.decompress(data)
    if encoding == "gzip":
        return gzip.decompress(data)
    return data


def test_every_asset_of_the_viewer_page_loads_from_the_rewritten_prefix(
    client: Client, launched: Callable[..., str], bundle: ohif_bundle.InstalledBundle
) -> None:
    page = client.get(launched()).content.decode()
    assets = re.findall(r'(?:src|href|content)="(/static/[^"]+)"', page)
    assert any(a.startswith(f"{P}app.bundle.") for a in assets)
    assert not re.findall(r'(?:src|href)="/(?!static/|launches/)', page)

    for url in assets:
        response = client.get(url)
        assert response.status_code == 200, url

    [app_bundle] = [a for a in assets if re.search(r"app\.bundle\.[0-9a-f]{16}\.js$", a)]
    script = body(client.get(app_bundle, HTTP_ACCEPT_ENCODING="br")).decode()
    assert f'__webpack_require__.p = "{P}"' in script
    css = body(client.get(f"{P}app.bundle.css")).decode()
    assert f"url({P}" in css
    assert "url(/a" not in css
    manifest = json.loads(body(client.get(f"{P}manifest.json")))
    assert all(icon["src"].startswith(f"{P}assets/") for icon in manifest["icons"])


def test_bundle_files_are_cached_forever_under_their_versioned_url(
    client: Client, bundle: ohif_bundle.InstalledBundle
) -> None:
    hashed = next(p.name for p in bundle.static_dir.glob("app.bundle.*.js"))
    assert P.rstrip("/").endswith(f"/ohif/{bundle.version}-{bundle.install_format}")

    for name in (hashed, "app.bundle.css", "init-service-worker.js", "manifest.json"):
        cache_control = client.get(f"{P}{name}")["Cache-Control"]
        assert "immutable" in cache_control, name
        assert "max-age=315360000" in cache_control, name


def test_our_own_unhashed_static_files_are_cached_briefly(client: Client) -> None:
    cache_control = client.get("/static/launcher/banner.js")["Cache-Control"]

    assert "immutable" not in cache_control
    assert "max-age=300" in cache_control


def test_compressed_variants_are_served(
    client: Client, bundle: ohif_bundle.InstalledBundle
) -> None:
    hashed = next(p.name for p in bundle.static_dir.glob("app.bundle.*.js"))

    br = client.get(f"{P}{hashed}", HTTP_ACCEPT_ENCODING="gzip, br")
    gz = client.get(f"{P}{hashed}", HTTP_ACCEPT_ENCODING="gzip")
    raw = client.get(f"{P}{hashed}")

    assert br["Content-Encoding"] == "br"
    assert gz["Content-Encoding"] == "gzip"
    assert int(br["Content-Length"]) < int(gz["Content-Length"]) < int(raw["Content-Length"]) / 4
    assert body(br) == body(raw)


def test_mime_types(client: Client, bundle: ohif_bundle.InstalledBundle) -> None:
    wasm = next(p.name for p in bundle.static_dir.glob("*.wasm"))
    woff2 = next(p.name for p in bundle.static_dir.glob("*.woff2"))

    assert client.get(f"{P}{wasm}")["Content-Type"] == "application/wasm"
    assert client.get(f"{P}app.bundle.css")["Content-Type"].startswith("text/css")
    assert client.get(f"{P}manifest.json")["Content-Type"].startswith("application/json")
    assert client.get(f"{P}{woff2}")["Content-Type"] == "font/woff2"
    js = next(p.name for p in bundle.static_dir.glob("*.bundle.*.js"))
    assert client.get(f"{P}{js}")["Content-Type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        f"{P}1234.bundle.0000000000000000.js",
        f"{P}missing.css",
        f"{P}missing.wasm",
        f"{P}missing.json",
        f"{P}sw.js",
        f"{P}app-config.js",
        f"{P}index.html",
        f"{P}ort/ort-wasm-simd-threaded.jsep.wasm",
        f"{P}dicom-microscopy-viewer/dicomMicroscopyViewer.min.js",
    ],
)
def test_missing_and_pruned_files_are_real_404s(client: Client, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert b'<div id="root">' not in response.content


def test_bundle_files_get_the_ohif_policy_for_their_workers(
    client: Client, bundle: ohif_bundle.InstalledBundle
) -> None:
    worker = next(p.name for p in bundle.static_dir.glob("8097.bundle.*.js"))

    csp = client.get(f"{P}{worker}")["Content-Security-Policy"]

    assert csp_directives(csp) == OHIF_CSP_DIRECTIVES


def test_static_files_are_not_shared_cross_origin(client: Client) -> None:
    assert "Access-Control-Allow-Origin" not in client.get(f"{P}app.bundle.css")
