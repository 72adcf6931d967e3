"""The per-launch viewer: OHIF's page, the generated config, and who may see them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

from launcher.models import LaunchGrant
from tests.fakes import ROOT, STUDY_1, STUDY_2, FakeKheops


def config_url_of(page: str) -> str:
    [url] = re.findall(r'<script[^>]*src="([^"]*app-config\.js)"', page)
    return url


def test_the_viewer_page_is_ohifs_index_with_our_config(client: Client, launched: Callable[..., str]) -> None:
    location = launched()

    response = client.get(location)

    assert response.status_code == 200
    page = response.content.decode()
    assert '<div id="root">' in page
    launch_id = urlsplit(location).path.split("/")[2]
    assert config_url_of(page) == f"/launches/{launch_id}/app-config.js"
    assert "no-store" in response["Cache-Control"]
    # No inline script may remain: the page runs under script-src 'self'.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []


def test_the_viewer_page_allows_exactly_the_dicomweb_origin(client: Client, launched: Callable[..., str]) -> None:
    response = client.get(launched())

    csp = response["Content-Security-Policy"]
    assert f"connect-src 'self' {ROOT}" in csp
    assert "script-src 'self' 'unsafe-eval'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]


def test_app_config_installs_the_token_and_one_kheops_data_source(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    page = client.get(launched(studies=(STUDY_1, STUDY_2))).content.decode()

    response = client.get(config_url_of(page))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert "no-store" in response["Cache-Control"]
    script = response.content.decode()
    [token] = fake_kheops.issued_tokens
    assert json.dumps("Bearer " + token) in script
    assert "userAuthenticationService.setServiceImplementation" in script
    config = json.loads(re.search(r"var config = (\{.*\});\n", script).group(1))
    assert config["showStudyList"] is False
    assert config["routerBasename"] == config_url_of(page).removesuffix("/app-config.js")
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert source["configuration"]["qidoRoot"] == source["configuration"]["wadoRoot"] == f"{ROOT}/api"
    assert source["configuration"]["thumbnailRendering"] == "wadors"
    for unsafe in ("dangerouslyUseDynamicConfig", "customizationUrlPrefixes", "oidc", "dicomjson", "dicomwebproxy"):
        assert unsafe not in script
    assert f'window.PUBLIC_URL = "{settings.OHIF_ASSET_URL}"' in script
    assert settings.OHIF_ASSET_URL.startswith("/static/ohif/")


def test_another_browser_gets_a_403_page_and_never_the_token(
    launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched()
    stranger = Client()

    page = stranger.get(location)
    config = stranger.get(location.split("?")[0].rsplit("/", 1)[0] + "/app-config.js")

    assert page.status_code == 403
    assert "another browser session" in page.content.decode()
    assert config.status_code == 403
    for response in (page, config):
        for token in fake_kheops.issued_tokens:
            assert token not in response.content.decode()


@pytest.mark.parametrize("name", ["token", "TOKEN", "Token"])
def test_a_token_parameter_is_stripped_from_viewer_urls(
    client: Client, launched: Callable[..., str], name: str
) -> None:
    location = launched()

    response = client.get(location + f"&{name}=attacker")

    assert response.status_code == 302
    assert response["Location"] == location
    assert "attacker" not in response["Location"]


def test_reloading_the_viewer_keeps_working(client: Client, launched: Callable[..., str]) -> None:
    location = launched()

    assert client.get(location).status_code == 200
    assert client.get(location).status_code == 200


def test_ohif_routes_inside_the_launch_serve_the_page(client: Client, launched: Callable[..., str]) -> None:
    location = launched()
    base = location.split("?")[0].rsplit("/", 1)[0]

    assert client.get(base + "/notfoundstudy").status_code == 200
    assert client.get(base + "/segmentation/kheops").status_code == 200
    root = client.get(base + "/")
    assert root.status_code == 302
    assert root["Location"] == location


@pytest.mark.parametrize("name", ["app.bundle.0f6159c501addfe9.js", "missing.css", "codec.wasm", "x/manifest.json", "a.map"])
def test_asset_like_paths_under_a_launch_are_real_404s(
    client: Client, launched: Callable[..., str], name: str
) -> None:
    base = launched().split("?")[0].rsplit("/", 1)[0]

    response = client.get(f"{base}/{name}")

    assert response.status_code == 404


def test_an_expired_grant_shows_the_way_back(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = launched()
    two_hours_later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: two_hours_later)

    page = client.get(location)
    config = client.get(location.split("?")[0].rsplit("/", 1)[0] + "/app-config.js")

    assert page.status_code == 410
    assert "expired" in page.content.decode()
    assert f'href="{ROOT}/albums/' in page.content.decode()
    assert config.status_code == 403


def test_the_config_tells_the_banner_how_long_is_left(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    fake_kheops.expires_in = 120
    page = client.get(launched()).content.decode()

    script = client.get(config_url_of(page)).content.decode()

    launch = json.loads(re.search(r"window\.kheopsLaunch = (\{.*\});", script).group(1))
    assert 110 <= launch["expiresIn"] <= 120
    assert launch["returnUri"].startswith(f"{ROOT}/albums/")
    assert "banner" in page


def test_a_session_keeps_several_launches_apart(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    first = launched(studies=(STUDY_1,))
    second = launched(studies=(STUDY_2,))

    first_config = client.get(config_url_of(client.get(first).content.decode())).content.decode()
    second_config = client.get(config_url_of(client.get(second).content.decode())).content.decode()

    token_1, token_2 = fake_kheops.issued_tokens
    assert token_1 in first_config and token_2 not in first_config
    assert token_2 in second_config and token_1 not in second_config
    assert LaunchGrant.objects.count() == 2


def test_values_in_the_config_cannot_break_out_of_the_script() -> None:
    from launcher.viewer import js_literal

    literal = js_literal({"x": "</script><script>alert(1)</script>\u2028"})

    assert "</script>" not in literal
    assert "\u2028" not in literal
    assert json.loads(literal) == {"x": "</script><script>alert(1)</script>\u2028"}
