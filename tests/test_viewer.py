"""The per-launch viewer: OHIF's page, the generated config, and who may see them."""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from django.test import AsyncClient, Client

from launcher import ohif_bundle, services
from launcher.models import GrantState, LaunchGrant, LaunchOutcome, LaunchRecord, Provider
from tests.fakes import (
    ALBUM_ID,
    ROOT,
    STUDY_1,
    STUDY_2,
    TOKEN_URL,
    FakeKheops,
    csp_directives,
    token_url_of,
)


def launch_data_of(page: str) -> dict[str, Any]:
    """The launch's JSON data block (what static/launcher/launch.js reads)."""
    [data] = re.findall(
        r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>', page, re.S
    )
    return json.loads(data)


def script_sources(page: str) -> list[str]:
    return re.findall(r'<script[^>]*\bsrc="([^"]*)"', page)


LAUNCH_JS = (Path(settings.BASE_DIR) / "static/launcher/launch.js").read_text()


def launch_id_of(location: str) -> str:
    return urlsplit(location).path.split("/")[2]


def test_the_viewer_page_is_ohifs_index_with_our_config(
    client: Client, launched: Callable[..., str]
) -> None:
    location = launched()

    response = client.get(location)

    assert response.status_code == 200
    page = response.content.decode()
    assert '<div id="root">' in page
    launch_id = urlsplit(location).path.split("/")[2]
    assert launch_data_of(page)["launchId"] == launch_id
    # Our script, the same for every launch, before OHIF's bundle; cached for ever (hashed).
    [launch_js] = [src for src in script_sources(page) if "/launcher/launch." in src]
    assert re.fullmatch(r"/static/launcher/launch\.[0-9a-f]{12}\.js", launch_js)
    assert script_sources(page).index(launch_js) < min(
        i for i, src in enumerate(script_sources(page)) if src.startswith(settings.OHIF_ASSET_URL)
    )
    assert "no-store" in response["Cache-Control"]
    # No inline script may remain (the page runs under script-src 'self'): the launch's data
    # is a JSON data block, which browsers do not run.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == [
        '<script id="kheops-ohif-launch" type="application/json">'
    ]


def test_the_viewer_page_is_sent_compressed_and_still_never_cached(
    client: Client, launched: Callable[..., str]
) -> None:
    location = launched()
    plain = client.get(location)

    response = client.get(location, headers={"Accept-Encoding": "gzip, deflate, br"})

    assert response["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response["Vary"]
    page = gzip.decompress(response.content).decode()
    assert page == plain.content.decode()
    assert len(response.content) < len(plain.content) / 3
    assert "no-store" in response["Cache-Control"]
    assert response["Content-Security-Policy"] == plain["Content-Security-Policy"]
    assert (
        "'unsafe-inline'" not in csp_directives(response["Content-Security-Policy"])["script-src"]
    )


def test_the_viewer_page_allows_exactly_the_dicomweb_origin(
    client: Client, launched: Callable[..., str]
) -> None:
    response = client.get(launched())

    directives = csp_directives(response["Content-Security-Policy"])
    # The page may fetch from itself and from the launch's DICOMweb origin: nowhere else.
    assert directives["connect-src"] == ["'self'", ROOT]
    assert directives["script-src"] == ["'self'", "'unsafe-eval'"]
    assert directives["default-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]


def test_in_direct_mode_the_page_opens_its_connection_to_kheops_while_ohif_loads(
    client: Client, launched: Callable[..., str]
) -> None:
    page = client.get(launched()).content.decode()

    # Before OHIF's scripts, anonymous as OHIF's DICOMweb requests are; the origin alone.
    link = f'<link rel="preconnect" href="{ROOT}" crossorigin>'
    assert page.count(link) == 1
    assert page.index(link) < page.index("<script")
    assert page.count('rel="preconnect"') == 1


def test_the_page_links_the_stylesheet_ohif_would_load_only_once_its_bundle_has_run(
    client: Client, launched: Callable[..., str]
) -> None:
    bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    assert bundle is not None
    names = ohif_bundle.first_stylesheets(bundle.static_dir)
    assert names, "the installed OHIF bundle has no default-extension stylesheet to link"

    page = client.get(launched()).content.decode()

    # Exactly the href OHIF's CSS loader looks for (its public path and the file), so that
    # it adds none of its own; in the head, before our banner's stylesheet.
    links = re.findall(r'<link rel="stylesheet" href="([^"]*)">', page)
    expected = [f"{settings.OHIF_ASSET_URL}{name}" for name in names]
    assert bundle.asset_prefix == settings.OHIF_ASSET_URL
    for href in expected:
        assert links.count(href) == 1, links
        assert page.index(href) < page.index("/launcher/banner.") < page.index("</head>")
    # Our page's only: the installed index.html, which a bare OHIF could serve, is OHIF's.
    assert not any(href in bundle.index_html.read_text() for href in expected)


def test_the_page_template_is_built_at_start_up_not_by_the_first_launch() -> None:
    from launcher import serving, viewer

    viewer._index_template.cache_clear()
    serving._prepare_viewer_page()  # what the server's start-up runs, in a thread

    assert viewer._index_template.cache_info().currsize == 1
    assert viewer.prepare() and viewer._index_template.cache_info().hits == 1


def test_the_launch_data_names_the_token_url_and_one_kheops_data_source(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched(studies=(STUDY_1, STUDY_2))
    page = client.get(location).content.decode()

    data = launch_data_of(page)

    assert set(data) == {
        "launchId",
        "publicUrl",
        "tokenUrl",
        "returnUri",
        "openedFrom",
        "brand",
        "config",
        "prefetch",
        "skipModules",
        "text",
    }
    # What OHIF's bundle would import at start-up and the viewer never uses: every mode but
    # the longitudinal one (the /viewer route), and the ultrasound extension.
    skip = data["skipModules"]
    assert "@ohif/mode-longitudinal" not in skip["modes"] and len(skip["modes"]) == 6
    assert skip["extensions"] == ["@ohif/extension-ultrasound-pleura-bline"]
    # The token is never in the page: launch.js asks for it.
    [token] = fake_kheops.issued_tokens
    assert token not in page
    assert "Bearer" not in page
    assert data["tokenUrl"] == f"/launches/{launch_id_of(location)}/token"
    assert data["publicUrl"] == settings.OHIF_ASSET_URL
    assert settings.OHIF_ASSET_URL.startswith("/static/ohif/")
    assert data["returnUri"] == f"{ROOT}/albums/{ALBUM_ID}"
    config = data["config"]
    assert config["showStudyList"] is False
    assert config["routerBasename"] == f"/launches/{launch_id_of(location)}"
    assert config["defaultDataSourceName"] == "kheops"
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert (
        source["configuration"]["qidoRoot"] == source["configuration"]["wadoRoot"] == f"{ROOT}/api"
    )
    assert source["configuration"]["thumbnailRendering"] == "wadors"
    for unsafe in (
        "dangerouslyUseDynamicConfig",
        "customizationUrlPrefixes",
        "oidc",
        "dicomjson",
        "dicomwebproxy",
    ):
        assert unsafe not in json.dumps(data) and unsafe not in LAUNCH_JS


def test_the_launch_data_names_the_studies_whose_first_requests_launch_js_starts(
    client: Client, launched: Callable[..., str]
) -> None:
    location = launched(studies=(STUDY_1, STUDY_2))

    prefetch = launch_data_of(client.get(location).content.decode())["prefetch"]

    # The launch's studies, in its order; OHIF 3.13's own query strings (docs/ohif.md), which
    # the browser tests check against the requests OHIF really makes.
    assert prefetch == {
        "studies": [STUDY_1, STUDY_2],
        "relayed": False,
        "studyQuery": "limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060%2C00080090%2C00100030",
        "studyQueryUses": 2,
        "seriesQuery": "includefield=00080021%2C00080031%2C0008103E%2C00200011",
        "maxSeries": 8,
        "frameAccept": 'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
        "patientStudies": True,
    }


def test_launch_js_answers_only_what_it_prefetched_and_only_with_successes() -> None:
    # The script's text; the browser tests check that OHIF's requests are answered from it.
    assert "if (!response.ok) { return null; }" in LAUNCH_JS
    assert "PREFETCH_TTL_MS = 60000" in LAUNCH_JS
    # A GET with OHIF's Accept only; anything else, or no answer, goes to the network.
    assert "accept !== entry.accept" in LAUNCH_JS
    assert "send.apply(request, args);" in LAUNCH_JS
    # Direct mode: only once the token is there, with it; relay mode: the cookie alone.
    assert "prefetchStudies(dicomwebRoot, launch.prefetch.studies, body.authorization)" in LAUNCH_JS
    assert "prefetchStudies(dicomwebRoot, launch.prefetch.studies, null)" in LAUNCH_JS


def test_launch_js_source_fetches_the_token_url_and_uses_ohifs_auth_service() -> None:
    # The script's text only; the browser tests (tests/e2e) watch it fetch the token and
    # OHIF send it with every DICOMweb request.
    assert "fetch(launch.tokenUrl, {" in LAUNCH_JS
    assert 'credentials: "same-origin"' in LAUNCH_JS
    assert "userAuthenticationService.setServiceImplementation" in LAUNCH_JS
    assert "preRegistration" in LAUNCH_JS
    assert "window.PUBLIC_URL = launch.publicUrl;" in LAUNCH_JS
    assert 'document.getElementById("kheops-ohif-launch")' in LAUNCH_JS


def test_the_page_and_its_config_load_before_the_exchange(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched(exchange=False)

    page = client.get(location)

    assert page.status_code == 200
    assert launch_data_of(page.content.decode())["tokenUrl"] == token_url_of(location)
    # Only the token request exchanges the code.
    assert fake_kheops.token_requests == []
    assert fake_kheops.issued_tokens == []
    assert LaunchGrant.objects.get().state == GrantState.PENDING

    token = client.get(token_url_of(location))

    assert token.status_code == 200
    assert len(fake_kheops.token_requests) == 1
    [issued] = fake_kheops.issued_tokens
    assert token.json()["authorization"] == "Bearer " + issued
    assert LaunchGrant.objects.get().state == GrantState.READY


def test_the_token_answer_is_json_never_cached(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched(exchange=False)

    response = client.get(token_url_of(location))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    [token] = fake_kheops.issued_tokens
    assert response.json() == {
        "authorization": "Bearer " + token,
        "expiresIn": response.json()["expiresIn"],
        "userName": "Dr Alice Martin",
        "userEmail": "alice@example.org",
    }
    timing = response["Server-Timing"]
    assert "token;dur=" in timing and "userinfo;dur=" in timing and "app;dur=" in timing


def test_the_browser_keeps_its_launch_cookie_as_long_as_the_token(
    client: Client, fake_kheops: FakeKheops
) -> None:
    launch = client.get(fake_kheops.launch_url())
    cookie_name = f"kheops_ohif_grant_{launch_id_of(launch['Location'])}"
    # Until the exchange, as long as the code can be exchanged.
    assert int(launch.cookies[cookie_name]["max-age"]) <= 700

    token = client.get(token_url_of(launch["Location"]))

    cookie = token.cookies[cookie_name]
    assert cookie.value == launch.cookies[cookie_name].value
    assert int(cookie["max-age"]) >= token.json()["expiresIn"]
    assert (
        cookie["path"]
        == launch.cookies[cookie_name]["path"]
        == f"/launches/{launch_id_of(launch['Location'])}/"
    )
    assert cookie["httponly"] and cookie["samesite"] == "Lax"


def test_reloading_asks_for_the_stored_token_without_a_new_exchange(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched()

    again = client.get(token_url_of(location))

    assert again.status_code == 200
    [token] = fake_kheops.issued_tokens
    assert again.json()["authorization"] == "Bearer " + token
    assert len(fake_kheops.token_requests) == 1


def test_a_failed_exchange_that_lost_the_race_answers_what_was_stored(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    # Two token requests of one viewer (a reload) both exchange the code: the second one
    # succeeds and stores first, then KHEOPS fails the first one.
    location = launched(exchange=False)
    reloads: list[Any] = []
    # The same browser (its cookies), on the event loop the first request waits on.
    reloading = AsyncClient()
    reloading.cookies = client.cookies

    async def token_endpoint(request: httpx.Request) -> httpx.Response:
        if not reloads:
            reloads.append(None)
            reloads[0] = await reloading.get(token_url_of(location))  # while KHEOPS answers
            return httpx.Response(502, json={})
        return await fake_kheops._token(request)

    fake_kheops.router.post(TOKEN_URL).mock(side_effect=token_endpoint)

    first = client.get(token_url_of(location))

    [reload] = reloads
    assert reload.status_code == 200
    assert LaunchGrant.objects.get().state == GrantState.READY
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.SUCCESS
    # The first to store wins; the other answers with what was stored.
    assert first.status_code == 200, first.json()
    assert first.json()["authorization"] == reload.json()["authorization"]


def test_another_browser_gets_a_403_page_and_never_the_token(
    launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched()
    stranger = Client()

    page = stranger.get(location)
    token = stranger.get(token_url_of(location))

    assert page.status_code == 403
    assert "another browser session" in page.content.decode()
    assert "kheops-ohif-launch" not in page.content.decode()
    assert token.status_code == 403
    assert "another browser session" in token.json()["error"]
    assert "authorization" not in token.json()
    [issued] = fake_kheops.issued_tokens
    for response in (page, token):
        assert issued not in response.content.decode()


def test_another_browser_cannot_exchange_a_pending_launch(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched(exchange=False)
    stranger = Client()

    refused = stranger.get(token_url_of(location))

    assert refused.status_code == 403
    assert fake_kheops.token_requests == []
    assert LaunchGrant.objects.get().state == GrantState.PENDING
    # The launching browser still can.
    assert client.get(token_url_of(location)).status_code == 200


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


def test_ohif_routes_inside_the_launch_serve_the_page(
    client: Client, launched: Callable[..., str]
) -> None:
    location = launched()
    base = location.split("?")[0].rsplit("/", 1)[0]

    assert client.get(base + "/notfoundstudy").status_code == 200
    assert client.get(base + "/segmentation/kheops").status_code == 200
    root = client.get(base + "/")
    assert root.status_code == 302
    assert root["Location"] == location


@pytest.mark.parametrize(
    "name",
    ["app.bundle.0f6159c501addfe9.js", "missing.css", "codec.wasm", "x/manifest.json", "a.map"],
)
def test_asset_like_paths_under_a_launch_are_real_404s(
    client: Client, launched: Callable[..., str], name: str
) -> None:
    base = launched().split("?")[0].rsplit("/", 1)[0]

    response = client.get(f"{base}/{name}")

    assert response.status_code == 404


def test_an_expired_grant_shows_the_way_back(
    client: Client,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    location = launched()
    two_hours_later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: two_hours_later)

    page = client.get(location)
    token = client.get(token_url_of(location))

    assert page.status_code == 410
    assert "expired" in page.content.decode()
    assert f'href="{ROOT}/albums/' in page.content.decode()
    assert token.status_code == 410
    assert "expired" in token.json()["error"]
    assert token.json()["returnUri"].startswith(f"{ROOT}/albums/")
    for issued in fake_kheops.issued_tokens:
        assert issued not in token.content.decode()


def test_a_failed_exchange_turns_the_viewer_into_its_error_page(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched(exchange=False)
    fake_kheops.token_answer = (400, {"error": "invalid_request"})

    token = client.get(token_url_of(location))
    page = client.get(location)
    again = client.get(token_url_of(location))

    assert token.status_code == 403
    assert "may have expired" in token.json()["error"]
    assert token.json()["returnUri"].startswith(f"{ROOT}/albums/")
    assert token.json()["retryable"] is False
    assert page.status_code == 403
    assert "Cannot open the viewer" in page.content.decode()
    assert "may have expired" in page.content.decode()
    assert f'href="{ROOT}/albums/' in page.content.decode()
    # The failure is kept: no second exchange of the same code.
    assert again.status_code == 403
    assert again.json() == token.json()
    assert len(fake_kheops.token_requests) == 1


def test_the_token_answer_tells_the_banner_how_long_is_left(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    fake_kheops.expires_in = 120
    location = launched(exchange=False)
    page = client.get(location).content.decode()

    token = client.get(token_url_of(location)).json()

    assert 110 <= token["expiresIn"] <= 120
    assert (token["userName"], token["userEmail"]) == ("Dr Alice Martin", "alice@example.org")
    # The banner shows the way back and whose account and album the viewer works in (the
    # browser journey in tests/e2e checks what it draws).
    data = launch_data_of(page)
    assert data["returnUri"] == f"{ROOT}/albums/{ALBUM_ID}"
    assert data["openedFrom"] == {"album": ALBUM_ID, "server": "KHEOPS test"}
    assert "banner" in page
    banner = (Path(settings.BASE_DIR) / "static/launcher/banner.js").read_text()
    assert "window.kheopsLaunch" in banner
    assert "launch.ready.then(" in banner
    assert "access.expiresIn" in banner
    # Nothing of ours is drawn before OHIF's first image (drawing ours while OHIF starts
    # made V8 keep less of OHIF compiled for the next loads; README), or a few seconds.
    assert 'addEventListener("CORNERSTONE_IMAGE_RENDERED", go, true)' in banner
    assert "setTimeout(go, SHOWN_AT_THE_LATEST_MS)" in banner
    assert banner.index("withOhif(function () {") < banner.index("identify(access")


def test_a_session_keeps_several_launches_apart(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    first = launched(studies=(STUDY_1,), exchange=False)
    second = launched(studies=(STUDY_2,), exchange=False)

    # The second viewer may well ask first.
    second_token = client.get(token_url_of(second)).json()["authorization"]
    first_token = client.get(token_url_of(first)).json()["authorization"]
    first_config = client.get(first).content.decode()
    second_config = client.get(second).content.decode()

    token_2, token_1 = fake_kheops.issued_tokens
    assert first_token == "Bearer " + token_1
    assert second_token == "Bearer " + token_2
    assert client.get(token_url_of(first)).json()["authorization"] == first_token
    assert client.get(token_url_of(second)).json()["authorization"] == second_token
    assert token_url_of(first) in first_config and token_url_of(second) not in first_config
    assert token_url_of(second) in second_config and token_url_of(first) not in second_config
    for config in (first_config, second_config):
        assert token_1 not in config and token_2 not in config
    grants = dict(LaunchGrant.objects.values_list("launch_id", "study_uids"))
    assert grants == {launch_id_of(first): [STUDY_1], launch_id_of(second): [STUDY_2]}
    assert set(LaunchGrant.objects.values_list("state", flat=True)) == {GrantState.READY}


def test_values_in_the_launch_data_cannot_break_out_of_the_data_block(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    hostile = "</script><script>alert(1)</script>\u2028"
    Provider.objects.filter(slug="ohif").update(viewer_title=hostile)
    services.forget_lookups()

    page = client.get(launched()).content.decode()

    assert "<script>alert(1)" not in page
    assert launch_data_of(page)["brand"]["title"] == hostile
