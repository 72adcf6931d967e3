"""The launch endpoint and the viewer's token request: the launch checks, claims the code
and redirects at once; the viewer's first token request exchanges the code. Audit record,
browser binding, and every failure of both."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from launcher import kheops, services
from launcher.models import (
    GrantState,
    KheopsServer,
    LaunchGrant,
    LaunchOutcome,
    LaunchRecord,
    Provider,
    UsedCode,
)
from launcher.views import LAUNCHER_COOKIE
from tests.fakes import (
    ALBUM_ID,
    CLIENT_ID,
    DISCOVERY_URL,
    ROOT,
    STUDY_1,
    STUDY_2,
    TOKEN_URL,
    FakeKheops,
    discovery_document,
    launch_and_exchange,
    token_url_of,
)

RETURN_URI = f"{ROOT}/albums/{ALBUM_ID}"


def assert_no_secret(fake: FakeKheops, *texts: str) -> None:
    for text in texts:
        for secret in fake.secrets_seen:
            assert secret not in text


def audit_rows_text() -> str:
    return repr(list(LaunchRecord.objects.values()))


def grant_rows_text() -> str:
    return repr(list(LaunchGrant.objects.values()))


def launch_id_of(viewer_url: str) -> str:
    return urlsplit(viewer_url).path.split("/")[2]


def token_calls(fake: FakeKheops) -> list[Any]:
    return [c for c in fake.router.calls if c.request.url == TOKEN_URL]


def timing_names(response: Any) -> list[str]:
    return [part.split(";")[0] for part in response["Server-Timing"].split(", ")]


def test_it_exchanges_the_code_and_redirects_to_a_clean_viewer_url(
    client: Client, fake_kheops: FakeKheops, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = client.get(fake_kheops.launch_url())

    assert response.status_code == 302
    location = response["Location"]
    path, query = urlsplit(location).path, parse_qs(urlsplit(location).query)
    assert path.startswith("/launches/") and path.endswith("/viewer")
    # lng: OHIF's language, the page's (English: the test client sends no Accept-Language).
    assert query == {"StudyInstanceUIDs": [STUDY_1], "lng": ["en"]}
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.PENDING
    assert (record.client_id, record.album_id, record.study_uids) == (
        CLIENT_ID,
        ALBUM_ID,
        [STUDY_1],
    )
    assert record.remote_addr == "127.0.0.1"
    assert location.split("/")[2] == record.launch_id

    token = client.get(token_url_of(location))

    assert token.status_code == 200
    assert "no-store" in token["Cache-Control"]
    body = token.json()
    [issued] = fake_kheops.issued_tokens
    assert body["authorization"] == f"Bearer {issued}"
    assert 3500 <= body["expiresIn"] <= 3600
    assert body["userName"] == "Dr Alice Martin"
    record.refresh_from_db()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert (record.user_sub, record.user_name, record.user_email) == (
        "user-123",
        "Dr Alice Martin",
        "alice@example.org",
    )
    assert (record.client_id, record.album_id, record.study_uids) == (
        CLIENT_ID,
        ALBUM_ID,
        [STUDY_1],
    )
    assert record.expires_at is not None
    assert LaunchRecord.objects.count() == 1
    assert_no_secret(
        fake_kheops, location, response.content.decode(), caplog.text, audit_rows_text()
    )


def test_the_launch_itself_calls_neither_the_token_endpoint_nor_userinfo(
    client: Client, fake_kheops: FakeKheops, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code = fake_kheops.new_code()

    response = client.get(fake_kheops.launch_url(code=code))

    assert response.status_code == 302
    assert fake_kheops.token_requests == []
    assert fake_kheops.userinfo_calls == 0
    assert [c.request.url for c in fake_kheops.router.calls] == [DISCOVERY_URL]
    launch_id = launch_id_of(response["Location"])
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.PENDING
    assert record.launch_id == launch_id
    assert record.user_sub == "" and record.expires_at is None
    grant = LaunchGrant.objects.get()
    assert grant.launch_id == launch_id
    assert grant.state == GrantState.PENDING
    assert grant.sealed_code and grant.sealed_token == ""
    assert code not in grant_rows_text()
    assert UsedCode.objects.count() == 1
    assert_no_secret(
        fake_kheops, response["Location"], caplog.text, audit_rows_text(), grant_rows_text()
    )


def test_it_opens_several_studies_in_launch_order(client: Client, fake_kheops: FakeKheops) -> None:
    response = client.get(fake_kheops.launch_url(studies=(STUDY_2, STUDY_1)))

    assert response.status_code == 302
    assert parse_qs(urlsplit(response["Location"]).query) == {
        "StudyInstanceUIDs": [f"{STUDY_2},{STUDY_1}"],
        "lng": ["en"],
    }
    assert LaunchRecord.objects.get().study_uids == [STUDY_2, STUDY_1]


def test_the_token_request_is_what_kheops_expects(client: Client, fake_kheops: FakeKheops) -> None:
    code = fake_kheops.new_code()
    launch, token = launch_and_exchange(client, fake_kheops.launch_url(code=code))
    assert (launch.status_code, token.status_code) == (302, 200)

    [request] = fake_kheops.token_requests
    assert request.form == [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", CLIENT_ID),
        ("redirect_uri", "http://127.0.0.1:8000/providers/ohif/launch"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", request.form[-1][1]),
    ]
    assert "Authorization" not in request.headers
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Accept"] == "application/json"
    assert request.assertion_header["alg"] == "RS256"
    assert request.assertion_header["kid"]
    claims = request.assertion_claims
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert len(claims["jti"]) >= 16
    assert 0 < claims["exp"] - claims["iat"] <= 600


def test_each_assertion_has_a_fresh_jti(client: Client, fake_kheops: FakeKheops) -> None:
    launch_and_exchange(client, fake_kheops.launch_url())
    launch_and_exchange(client, fake_kheops.launch_url())

    jtis = {r.assertion_claims["jti"] for r in fake_kheops.token_requests}
    assert len(fake_kheops.token_requests) == 2
    assert len(jtis) == 2


def test_the_grant_is_kept_sealed_and_bound_to_a_browser_key(
    client: Client, fake_kheops: FakeKheops
) -> None:
    code = fake_kheops.new_code()
    response, token_response = launch_and_exchange(client, fake_kheops.launch_url(code=code))
    assert token_response.status_code == 200
    [token] = fake_kheops.issued_tokens

    [grant] = LaunchGrant.objects.all()
    assert grant.state == GrantState.READY
    assert grant.sealed_token
    assert token not in grant_rows_text()
    assert code not in grant_rows_text()
    cookie = response.cookies[f"kheops_ohif_grant_{grant.launch_id}"]
    assert cookie.value not in grant_rows_text()
    assert len(cookie.value) >= 40


def test_the_code_is_forgotten_once_exchanged(client: Client, fake_kheops: FakeKheops) -> None:
    launch = client.get(fake_kheops.launch_url())
    assert LaunchGrant.objects.get().sealed_code != ""

    assert client.get(token_url_of(launch["Location"])).status_code == 200

    grant = LaunchGrant.objects.get()
    assert grant.state == GrantState.READY
    assert grant.sealed_code == ""


def test_each_launch_gets_a_fresh_http_only_cookie_scoped_to_its_viewer(
    client: Client, fake_kheops: FakeKheops
) -> None:
    first = client.get(fake_kheops.launch_url())
    second = client.get(fake_kheops.launch_url())

    cookies = []
    for response in (first, second):
        launch_id = launch_id_of(response["Location"])
        cookie = response.cookies[f"kheops_ohif_grant_{launch_id}"]
        assert cookie["path"] == f"/launches/{launch_id}/"
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Lax"
        # At least as long as the code may wait for its exchange (KHEOPS: 600 s).
        assert 600 <= int(cookie["max-age"]) <= 3660
        cookies.append(cookie.value)
    assert cookies[0] != cookies[1]
    assert "kheops_ohif_session" not in second.cookies


def test_once_exchanged_the_browser_keeps_its_cookie_as_long_as_the_token(
    client: Client, fake_kheops: FakeKheops
) -> None:
    # The viewer must keep working on a reload for as long as its KHEOPS token does; the
    # cookie set at launch only knew the code's lifetime.
    launch, token = launch_and_exchange(client, fake_kheops.launch_url())
    assert token.status_code == 200
    launch_id = launch_id_of(launch["Location"])
    name = f"kheops_ohif_grant_{launch_id}"

    cookie = client.cookies[name]
    assert cookie.value == launch.cookies[name].value
    assert cookie["path"] == f"/launches/{launch_id}/"
    assert cookie["httponly"] is True
    assert 3500 <= int(cookie["max-age"]) <= 3660


def test_a_planted_cookie_binds_to_nothing(client: Client, fake_kheops: FakeKheops) -> None:
    location = client.get(fake_kheops.launch_url())["Location"]
    launch_id = launch_id_of(location)
    attacker = Client()
    attacker.cookies[f"kheops_ohif_grant_{launch_id}"] = "planted-by-an-attacker"

    assert attacker.get(location).status_code == 403
    assert attacker.get(token_url_of(location)).status_code == 403
    assert fake_kheops.token_requests == []


@pytest.mark.parametrize("cookie", [None, "another-browsers-key-0123456789abcdefghijklmnop"])
def test_a_token_request_from_another_browser_is_refused_without_an_exchange(
    client: Client, fake_kheops: FakeKheops, cookie: str | None
) -> None:
    location = client.get(fake_kheops.launch_url())["Location"]
    launch_id = launch_id_of(location)
    other = Client()
    if cookie is not None:
        other.cookies[f"kheops_ohif_grant_{launch_id}"] = cookie

    response = other.get(token_url_of(location))

    assert response.status_code == 403
    assert "another browser session" in response.json()["error"]
    assert "authorization" not in response.json()
    assert "no-store" in response["Cache-Control"]
    assert fake_kheops.token_requests == []
    assert fake_kheops.userinfo_calls == 0
    assert LaunchGrant.objects.get().state == GrantState.PENDING
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.PENDING
    # The launching browser still gets its token.
    assert client.get(token_url_of(location)).status_code == 200


def test_a_reload_answers_the_same_token_without_a_second_exchange(
    client: Client, fake_kheops: FakeKheops
) -> None:
    location = client.get(fake_kheops.launch_url())["Location"]
    first = client.get(token_url_of(location))

    second = client.get(token_url_of(location))

    assert first.status_code == second.status_code == 200
    [issued] = fake_kheops.issued_tokens
    assert first.json()["authorization"] == second.json()["authorization"] == f"Bearer {issued}"
    assert second.json()["userName"] == "Dr Alice Martin"
    assert 0 < second.json()["expiresIn"] <= 3600
    assert len(fake_kheops.token_requests) == 1
    assert fake_kheops.userinfo_calls == 1
    assert timing_names(second) == ["app"]
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.SUCCESS


def test_a_replayed_launch_url_is_refused(client: Client, fake_kheops: FakeKheops) -> None:
    url = fake_kheops.launch_url()
    launch, token = launch_and_exchange(client, url)
    assert (launch.status_code, token.status_code) == (302, 200)

    response = Client().get(url)  # another browser

    assert response.status_code == 409
    assert "already been used" in response.content.decode()
    assert len(fake_kheops.token_requests) == 1
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.REPLAY).count() == 1


def test_the_same_browser_presenting_its_code_again_is_sent_to_its_viewer(
    client: Client, fake_kheops: FakeKheops
) -> None:
    # A double click in KHEOPS makes two identical launch URLs (its codes have no random part).
    url = fake_kheops.launch_url()
    first = client.get(url)
    assert client.get(token_url_of(first["Location"])).status_code == 200

    again = client.get(url)

    assert again.status_code == 302
    assert again["Location"] == first["Location"]
    # The browser keeps the keys it has: nothing new is handed out.
    assert not any(name.startswith("kheops_ohif_grant_") for name in again.cookies)
    assert client.get(again["Location"]).status_code == 200
    assert len(fake_kheops.token_requests) == 1
    assert LaunchGrant.objects.count() == 1
    reopened = LaunchRecord.objects.get(outcome=LaunchOutcome.REOPENED)
    assert reopened.launch_id is None
    assert first["Location"].split("/")[2] in reopened.failure_detail


def test_a_double_click_before_the_exchange_opens_one_launch(
    client: Client, fake_kheops: FakeKheops
) -> None:
    url = fake_kheops.launch_url()
    first, second = client.get(url), client.get(url)

    assert (first.status_code, second.status_code) == (302, 302)
    assert second["Location"] == first["Location"]
    assert client.get(token_url_of(second["Location"])).status_code == 200
    assert LaunchGrant.objects.count() == 1
    assert sorted(LaunchRecord.objects.values_list("outcome", flat=True)) == [
        LaunchOutcome.REOPENED,
        LaunchOutcome.SUCCESS,
    ]


def test_another_browser_with_a_launcher_key_of_its_own_is_refused_the_code(
    client: Client, fake_kheops: FakeKheops
) -> None:
    url = fake_kheops.launch_url()
    assert client.get(url).status_code == 302
    other = Client()
    assert other.get(fake_kheops.launch_url()).status_code == 302  # its own launch, its own key
    assert other.cookies[LAUNCHER_COOKIE].value != client.cookies[LAUNCHER_COOKIE].value

    response = other.get(url)

    assert response.status_code == 409
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.REPLAY).count() == 1


def test_a_forged_launcher_key_is_refused_the_code(client: Client, fake_kheops: FakeKheops) -> None:
    url = fake_kheops.launch_url()
    assert client.get(url).status_code == 302
    forger = Client()
    forger.cookies[LAUNCHER_COOKIE] = "A" * 43

    assert forger.get(url).status_code == 409


def test_the_launcher_cookie_is_http_only_and_scoped_to_the_launch_path(
    client: Client, fake_kheops: FakeKheops
) -> None:
    response = client.get(fake_kheops.launch_url())

    cookie = response.cookies[LAUNCHER_COOKIE]
    assert cookie["path"] == "/providers/ohif/launch"
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["max-age"] == 660
    assert len(cookie.value) == 43
    # The next launch of this browser keeps its key.
    assert client.get(fake_kheops.launch_url()).cookies[LAUNCHER_COOKIE].value == cookie.value


def test_a_launch_url_replayed_before_its_viewer_exchanged_is_refused(
    client: Client, fake_kheops: FakeKheops
) -> None:
    url = fake_kheops.launch_url()
    assert client.get(url).status_code == 302

    response = Client().get(url)

    assert response.status_code == 409
    assert fake_kheops.token_requests == []
    assert LaunchGrant.objects.count() == 1
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.REPLAY).count() == 1
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.PENDING).count() == 1


def test_the_replay_record_keeps_a_hash_not_the_code(
    client: Client, fake_kheops: FakeKheops
) -> None:
    code = fake_kheops.new_code()
    launch_and_exchange(client, fake_kheops.launch_url(code=code))

    [used] = UsedCode.objects.all()
    assert used.code_hash == hashlib.sha256(code.encode()).hexdigest()


@pytest.mark.parametrize(
    ("query_change", "message"),
    [
        ({"code": None}, "“code” is missing"),
        ({"conf_uri": None}, "“conf_uri” is missing"),
        ({"client_id": None}, "“client_id” is missing"),
        ({"studyUID": None}, "“studyUID” is missing"),
        ({"studyUID": "1.2.abc"}, "not a valid DICOM UID"),
        ({"studyUID": "1.02.3"}, "not a valid DICOM UID"),
        ({"studyUID": "1." + "2" * 70}, "not a valid DICOM UID"),
        ({"client_id": "bad id!"}, "client_id is not valid"),
        ({"code": "x" * 9000}, "code is not valid"),
    ],
)
def test_it_refuses_bad_parameters(
    client: Client, fake_kheops: FakeKheops, query_change: dict, message: str
) -> None:
    params = {
        "code": fake_kheops.new_code(),
        "conf_uri": DISCOVERY_URL,
        "client_id": CLIENT_ID,
        "studyUID": STUDY_1,
    }
    params.update(query_change)
    query = {k: v for k, v in params.items() if v is not None}

    response = client.get("/providers/ohif/launch", query)

    assert response.status_code == 400
    assert escape(message) in response.content.decode()
    assert len(fake_kheops.router.calls) == 0
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.BAD_REQUEST
    assert LaunchGrant.objects.count() == 0


def test_it_refuses_a_duplicated_code(client: Client, fake_kheops: FakeKheops) -> None:
    url = fake_kheops.launch_url() + "&code=another"

    response = client.get(url)

    assert response.status_code == 400
    assert "appears more than once" in response.content.decode()


@pytest.mark.parametrize(
    "conf_uri",
    [
        "https://evil.example/api/.well-known/report-provider-configuration",
        f"{ROOT}/api/.well-known/report-provider-configuration?x=1",
        f"{ROOT}/other/.well-known/report-provider-configuration",
        "https://kheops.test:443/api/.well-known/report-provider-configuration",
        "http://169.254.169.254/latest/meta-data",
    ],
)
def test_it_refuses_an_untrusted_server_without_calling_it(
    client: Client, fake_kheops: FakeKheops, conf_uri: str
) -> None:
    response = client.get(fake_kheops.launch_url(conf_uri=conf_uri))

    assert response.status_code == 403
    assert "not trusted" in response.content.decode()
    assert len(fake_kheops.router.calls) == 0
    assert "Back to KHEOPS" not in response.content.decode()
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.UNTRUSTED_SERVER


def test_it_refuses_a_disabled_server(
    client: Client, fake_kheops: FakeKheops, kheops_server
) -> None:
    kheops_server.enabled = False
    kheops_server.save()

    response = client.get(fake_kheops.launch_url())

    assert response.status_code == 403
    assert len(fake_kheops.router.calls) == 0


def test_it_refuses_a_disabled_provider_with_a_way_back(
    client: Client, fake_kheops: FakeKheops, provider
) -> None:
    provider.enabled = False
    provider.save()

    response = client.get(fake_kheops.launch_url())

    assert response.status_code == 403
    assert "disabled" in response.content.decode()
    assert f'href="{RETURN_URI}"' in response.content.decode()
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.PROVIDER_DISABLED


def test_an_unknown_provider_is_a_404(client: Client, fake_kheops: FakeKheops) -> None:
    response = client.get(fake_kheops.launch_url(slug="nope"))

    assert response.status_code == 404
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.UNKNOWN_PROVIDER


@pytest.mark.parametrize(
    "return_uri",
    [
        "https://evil.example/albums/x",
        "javascript:alert(1)",
        f"{ROOT}.evil.example/albums/x",
        "//evil.example/",
    ],
)
def test_the_way_back_is_offered_only_into_the_trusted_server(
    client: Client, fake_kheops: FakeKheops, provider, return_uri: str
) -> None:
    provider.enabled = False
    provider.save()

    response = client.get(fake_kheops.launch_url(return_uri=return_uri))

    assert response.status_code == 403
    assert "Back to KHEOPS" not in response.content.decode()
    assert LaunchRecord.objects.get().album_id == ""


@pytest.mark.parametrize(
    ("answer", "status", "outcome"),
    [
        (
            (
                400,
                {
                    "error": "invalid_request",
                    "error_description": "Unable to validate the authorization code",
                },
            ),
            403,
            LaunchOutcome.CODE_REJECTED,
        ),
        ((400, {"error": "invalid_grant"}), 403, LaunchOutcome.CODE_REJECTED),
        (
            (400, {"error": "invalid_client", "error_description": "Unknown client_id"}),
            403,
            LaunchOutcome.CODE_REJECTED,
        ),
        ((500, {"message": "Internal server error"}), 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
        ((503, "<html>down</html>"), 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
        ((200, "not json"), 502, LaunchOutcome.KHEOPS_MALFORMED),
        ((200, {}), 502, LaunchOutcome.KHEOPS_MALFORMED),
        ((200, {"access_token": "", "expires_in": 3600}), 502, LaunchOutcome.KHEOPS_MALFORMED),
        ((200, {"access_token": "t", "expires_in": "3600"}), 502, LaunchOutcome.KHEOPS_MALFORMED),
        # Not a bearer token (RFC 6750): it could not be sent in a header (found by test_fuzz).
        (
            (200, {"access_token": "eyJ.caf\u00e9", "expires_in": 60}),
            502,
            LaunchOutcome.KHEOPS_MALFORMED,
        ),
        ((200, {"access_token": "eyJ.a b", "expires_in": 60}), 502, LaunchOutcome.KHEOPS_MALFORMED),
        (
            (200, {"access_token": "eyJ.a\r\nX: y", "expires_in": 60}),
            502,
            LaunchOutcome.KHEOPS_MALFORMED,
        ),
        ((200, [1, 2]), 502, LaunchOutcome.KHEOPS_MALFORMED),
        ((302, ""), 502, LaunchOutcome.KHEOPS_MALFORMED),
        (httpx.ConnectError("reset"), 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
        (httpx.ReadTimeout("slow"), 504, LaunchOutcome.KHEOPS_TIMEOUT),
    ],
)
def test_it_handles_every_token_endpoint_failure(
    client: Client,
    fake_kheops: FakeKheops,
    answer,
    status: int,
    outcome: LaunchOutcome,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_kheops.token_answer = answer

    launch, token = launch_and_exchange(client, fake_kheops.launch_url())

    # The launch redirects before the exchange; the viewer's token request fails.
    assert launch.status_code == 302
    assert token.status_code == status
    assert "no-store" in token["Cache-Control"]
    body = token.json()
    assert set(body) == {"error", "advice", "returnUri", "retryable"}
    assert body["error"]
    assert body["returnUri"] == RETURN_URI
    transient = outcome in services.TRANSIENT
    assert body["retryable"] is transient
    record = LaunchRecord.objects.get()
    assert record.outcome == outcome
    assert record.launch_id == launch_id_of(launch["Location"])
    assert record.failure_detail
    assert record.user_sub == "" and record.expires_at is None
    # Whatever happened, the code stays claimed: its URL opens no other viewer.
    assert UsedCode.objects.count() == 1
    grant = LaunchGrant.objects.get()
    viewer = client.get(launch["Location"])
    page = viewer.content.decode()
    if transient:
        # KHEOPS slow or away: the same browser asks again (launch.js does, a few times).
        assert (grant.state, grant.failure_status) == (GrantState.PENDING, None)
        assert grant.sealed_code != ""
        assert viewer.status_code == 200 and "kheops-ohif-launch" in page
    else:
        assert (grant.state, grant.failure_status) == (GrantState.FAILED, status)
        assert grant.sealed_code == "" and grant.sealed_token == ""
        # The viewer page (launch.js sends the browser back to it) shows why, with the way back.
        assert viewer.status_code == status
        assert "Cannot open the viewer" in page
        assert escape(body["error"]) in page
        assert f'href="{RETURN_URI}"' in page
    assert_no_secret(
        fake_kheops, page, json.dumps(body), caplog.text, audit_rows_text(), grant_rows_text()
    )


def test_a_failed_exchange_answers_the_same_failure_again_without_calling_kheops(
    client: Client, fake_kheops: FakeKheops
) -> None:
    fake_kheops.token_answer = (400, {"error": "invalid_grant"})
    launch, first = launch_and_exchange(client, fake_kheops.launch_url())
    assert first.status_code == 403
    calls = len(fake_kheops.router.calls)

    second = client.get(token_url_of(launch["Location"]))

    assert second.status_code == 403
    assert second.json() == first.json()
    assert len(fake_kheops.router.calls) == calls
    assert len(fake_kheops.token_requests) == 1
    assert fake_kheops.userinfo_calls == 0
    assert timing_names(second) == ["app"]
    viewer = client.get(launch["Location"])
    assert viewer.status_code == 403
    page = viewer.content.decode()
    assert "Cannot open the viewer" in page
    assert escape(first.json()["error"]) in page
    assert "HTTP 403" in page
    assert f'href="{RETURN_URI}"' in page
    assert "Back to KHEOPS" in page
    assert len(fake_kheops.router.calls) == calls
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.CODE_REJECTED


@pytest.mark.parametrize(
    ("answer", "status"),
    [(httpx.ReadTimeout("slow"), 504), ((503, "busy"), 502), (httpx.ConnectError("refused"), 502)],
)
def test_after_a_transient_failure_the_same_browser_exchanges_again(
    client: Client, fake_kheops: FakeKheops, answer: Any, status: int
) -> None:
    fake_kheops.token_answer = answer
    launch, token = launch_and_exchange(client, fake_kheops.launch_url())
    assert (token.status_code, token.json()["retryable"]) == (status, True)

    fake_kheops.token_answer = None
    again = client.get(token_url_of(launch["Location"]))

    assert again.status_code == 200
    assert again.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[0]}"
    assert len(fake_kheops.token_requests) == 2
    # The audit record tells the outcome that counts.
    record = LaunchRecord.objects.get()
    assert (record.outcome, record.user_sub) == (LaunchOutcome.SUCCESS, "user-123")
    assert LaunchGrant.objects.get().state == GrantState.READY


def test_after_a_transient_failure_the_launch_url_opens_no_other_viewer(
    client: Client, fake_kheops: FakeKheops
) -> None:
    # The launch URL sits in browser histories and proxy logs; its code stays valid at
    # KHEOPS for 600 s. Only the browser that launched may try again.
    url = fake_kheops.launch_url()
    fake_kheops.token_answer = (503, "busy")
    assert launch_and_exchange(client, url)[1].status_code == 502
    fake_kheops.token_answer = None

    elsewhere = Client().get(url)

    assert elsewhere.status_code == 409
    assert UsedCode.objects.count() == 1
    assert len(fake_kheops.token_requests) == 1


def test_a_code_kheops_rejected_stays_refused(client: Client, fake_kheops: FakeKheops) -> None:
    url = fake_kheops.launch_url()
    fake_kheops.token_answer = (400, {"error": "invalid_request"})
    launch, token = launch_and_exchange(client, url)
    assert (launch.status_code, token.status_code, token.json()["retryable"]) == (302, 403, False)

    again = client.get(token_url_of(launch["Location"]))
    relaunch = client.get(url)  # the same browser: its viewer says why, again
    elsewhere = Client().get(url)

    assert again.status_code == 403
    assert relaunch.status_code == 302
    viewer = client.get(relaunch["Location"])
    assert viewer.status_code == 403
    assert "KHEOPS refused this launch" in viewer.content.decode()
    assert elsewhere.status_code == 409
    assert len(fake_kheops.token_requests) == 1
    assert UsedCode.objects.count() == 1
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.CODE_REJECTED).count() == 1


@pytest.mark.parametrize(
    ("disable", "outcome", "message"),
    [
        ("server", LaunchOutcome.UNTRUSTED_SERVER, "not trusted"),
        ("provider", LaunchOutcome.PROVIDER_DISABLED, "disabled"),
    ],
)
def test_disabling_between_the_launch_and_the_exchange_fails_the_exchange(
    client: Client,
    fake_kheops: FakeKheops,
    kheops_server: KheopsServer,
    provider: Provider,
    disable: str,
    outcome: LaunchOutcome,
    message: str,
) -> None:
    launch = client.get(fake_kheops.launch_url())
    assert launch.status_code == 302
    disabled = kheops_server if disable == "server" else provider
    disabled.enabled = False
    disabled.save()

    token = client.get(token_url_of(launch["Location"]))

    assert token.status_code == 403
    assert message in token.json()["error"]
    assert token.json()["returnUri"] == RETURN_URI
    assert fake_kheops.token_requests == []
    assert fake_kheops.userinfo_calls == 0
    assert LaunchRecord.objects.get().outcome == outcome
    grant = LaunchGrant.objects.get()
    assert (grant.state, grant.failure_status, grant.sealed_code) == (GrantState.FAILED, 403, "")
    viewer = client.get(launch["Location"])
    assert viewer.status_code == 403
    assert message in viewer.content.decode()


@pytest.mark.parametrize(
    "document",
    [
        {**discovery_document(), "issuer": "https://evil.example"},
        {**discovery_document(), "token_endpoint": "https://evil.example/api/token"},
        {**discovery_document(), "token_endpoint": f"{ROOT}/api/../../evil/token"},
        {**discovery_document(), "token_endpoint": f"{ROOT}/api/%2e%2e/evil"},
        {**discovery_document(), "token_endpoint": "https://kheops.test@evil.example/api/token"},
        {**discovery_document(), "dicomweb_endpoint": "https://evil.example/api"},
        {**discovery_document(), "userinfo_endpoint": "http://kheops.test/api/userinfo"},
        {**discovery_document(), "token_endpoint": None},
        {**discovery_document(), "dicomweb_endpoint": 42},
        "garbage",
        ["a list"],
    ],
)
def test_it_refuses_a_discovery_document_that_leaves_the_trusted_root(
    client: Client, fake_kheops: FakeKheops, document
) -> None:
    fake_kheops.discovery_answer = (200, document)

    response = client.get(fake_kheops.launch_url())

    assert response.status_code == 502
    assert fake_kheops.token_requests == []
    assert [call.request.url for call in fake_kheops.router.calls] == [DISCOVERY_URL]
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.KHEOPS_MALFORMED
    assert LaunchGrant.objects.count() == 0
    assert UsedCode.objects.count() == 0


def test_discovery_down_is_unavailable(client: Client, fake_kheops: FakeKheops) -> None:
    fake_kheops.discovery_answer = httpx.ConnectError("refused")

    response = client.get(fake_kheops.launch_url())

    assert response.status_code == 502
    assert "unavailable" in response.content.decode()
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.KHEOPS_UNAVAILABLE


def test_the_discovery_document_is_cached_between_launches(
    client: Client, fake_kheops: FakeKheops
) -> None:
    for _ in range(2):
        launch, token = launch_and_exchange(client, fake_kheops.launch_url())
        assert (launch.status_code, token.status_code) == (302, 200)

    discovery_calls = [c for c in fake_kheops.router.calls if c.request.url == DISCOVERY_URL]
    assert len(discovery_calls) == 1
    assert len(fake_kheops.token_requests) == 2


def test_a_userinfo_failure_does_not_fail_the_launch(
    client: Client, fake_kheops: FakeKheops
) -> None:
    fake_kheops.userinfo_answer = (401, {})

    launch, token = launch_and_exchange(client, fake_kheops.launch_url())

    assert launch.status_code == 302
    assert token.status_code == 200
    assert token.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[0]}"
    assert token.json()["userName"] == ""
    assert fake_kheops.userinfo_calls == 1
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert record.user_sub == ""


def test_userinfo_is_called_with_the_bearer_token(client: Client, fake_kheops: FakeKheops) -> None:
    launch_and_exchange(client, fake_kheops.launch_url())

    [call] = [c for c in fake_kheops.router.calls if str(c.request.url).endswith("/userinfo")]
    assert call.request.headers["Authorization"] == f"Bearer {fake_kheops.issued_tokens[0]}"


def test_a_huge_answer_is_refused_without_buffering_it(
    client: Client, fake_kheops: FakeKheops
) -> None:
    fake_kheops.token_answer = (
        200,
        {"access_token": "x" * (kheops.MAX_BODY_BYTES + 10), "expires_in": 1},
    )

    launch, token = launch_and_exchange(client, fake_kheops.launch_url())

    assert launch.status_code == 302
    assert token.status_code == 502
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.KHEOPS_MALFORMED


def test_a_launch_only_accepts_get(client: Client, fake_kheops: FakeKheops) -> None:
    response = client.post(fake_kheops.launch_url())

    assert response.status_code == 405


def test_the_token_request_only_accepts_get(client: Client, fake_kheops: FakeKheops) -> None:
    location = client.get(fake_kheops.launch_url())["Location"]

    assert client.post(token_url_of(location)).status_code == 405
    assert fake_kheops.token_requests == []


def test_the_launch_reports_kheops_round_trips_apart_from_its_own_time(
    client: Client, fake_kheops: FakeKheops
) -> None:
    launch, token = launch_and_exchange(client, fake_kheops.launch_url())

    # The launch fetches (and caches) discovery only; the exchange is the token request's.
    assert timing_names(launch) == ["discovery", "app"]
    assert timing_names(token) == ["token", "userinfo", "app"]
    for response in (launch, token):
        timing = response["Server-Timing"]
        durations = [float(part.split("dur=")[1]) for part in timing.split(", ")]
        assert all(duration >= 0 for duration in durations)
    # With discovery cached, a launch reports its own time only.
    assert timing_names(client.get(fake_kheops.launch_url())) == ["app"]


def test_a_failed_launch_reports_its_timing_too(client: Client, fake_kheops: FakeKheops) -> None:
    fake_kheops.token_answer = (503, "busy")

    launch, token = launch_and_exchange(client, fake_kheops.launch_url())

    assert (launch.status_code, token.status_code) == (302, 502)
    assert timing_names(token) == ["token", "app"]
    refused = client.get(fake_kheops.launch_url(slug="nope"))
    assert refused.status_code == 404
    assert timing_names(refused) == ["app"]


def test_disabling_a_server_in_the_admin_takes_effect_at_once(
    client: Client, admin_client: Client, fake_kheops: FakeKheops, kheops_server
) -> None:
    assert client.get(fake_kheops.launch_url()).status_code == 302

    saved = admin_client.post(
        f"/admin/launcher/kheopsserver/{kheops_server.pk}/change/",
        {"name": kheops_server.name, "root_url": kheops_server.root_url},  # "enabled" unticked
    )

    assert saved.status_code == 302
    assert client.get(fake_kheops.launch_url()).status_code == 403
    assert LaunchRecord.objects.order_by("-id")[0].outcome == LaunchOutcome.UNTRUSTED_SERVER


def _grant(launch_id: str, *, state: str, expired_ago: timedelta) -> LaunchGrant:
    return LaunchGrant.objects.create(
        launch_id=launch_id,
        browser_key_hash="0" * 64,
        state=state,
        expires_at=timezone.now() - expired_ago,
        dicomweb_endpoint=f"{ROOT}/api",
        mode="viewer",
    )


def test_the_clean_up_forgets_old_codes_and_grants_and_keeps_the_rest(
    client: Client, fake_kheops: FakeKheops
) -> None:
    now = timezone.now()
    UsedCode.objects.create(code_hash="0" * 64, used_at=now - timedelta(minutes=12))
    UsedCode.objects.create(code_hash="1" * 64, used_at=now - timedelta(minutes=5))
    _grant("ready-2-days", state=GrantState.READY, expired_ago=timedelta(days=2))
    _grant("ready-2-hours", state=GrantState.READY, expired_ago=timedelta(hours=2))
    _grant("pending-2-hours", state=GrantState.PENDING, expired_ago=timedelta(hours=2))
    _grant("pending-30-min", state=GrantState.PENDING, expired_ago=timedelta(minutes=30))
    assert client.get(fake_kheops.launch_url()).status_code == 302  # a launch of now
    records = LaunchRecord.objects.count()

    done = services.clean_up()

    assert (done.used_codes, done.grants) == (1, 2)
    codes = set(UsedCode.objects.values_list("code_hash", flat=True))
    assert "1" * 64 in codes and "0" * 64 not in codes and len(codes) == 2  # + the launch's
    grants = set(LaunchGrant.objects.values_list("launch_id", flat=True))
    assert {"pending-30-min", "ready-2-hours"} <= grants and len(grants) == 3  # + the launch's
    assert LaunchRecord.objects.count() == records  # the audit trail stays


def test_the_clean_up_command_says_what_it_forgot(db: None) -> None:
    UsedCode.objects.create(code_hash="0" * 64, used_at=timezone.now() - timedelta(hours=1))
    _grant("pending-2-hours", state=GrantState.PENDING, expired_ago=timedelta(hours=2))
    out = io.StringIO()

    call_command("clean_up", stdout=out)

    assert out.getvalue().strip() == "1 used codes and 1 grants forgotten."
    assert not UsedCode.objects.exists() and not LaunchGrant.objects.exists()


def test_a_flood_of_launches_never_exchanged_leaves_nothing_after_the_clean_up(
    fake_kheops: FakeKheops,
) -> None:
    # Launch URLs anyone can forge: each claims a code and writes a pending grant. Nothing
    # of them depends on an exchange to go away.
    for _ in range(5):
        assert Client().get(fake_kheops.launch_url()).status_code == 302
    assert fake_kheops.token_requests == []
    later = timezone.now() + services.PENDING_LIFETIME + timedelta(hours=1, minutes=1)

    done = services.clean_up(later)

    assert (done.used_codes, done.grants) == (5, 5)
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.PENDING, verified=False).count() == 5


def test_the_audit_record_is_verified_only_once_kheops_accepted_the_code(
    client: Client, fake_kheops: FakeKheops
) -> None:
    launch = client.get(fake_kheops.launch_url())
    pending = LaunchRecord.objects.get()
    assert (pending.outcome, pending.verified) == (LaunchOutcome.PENDING, False)

    assert client.get(token_url_of(launch["Location"])).status_code == 200

    assert LaunchRecord.objects.get().verified is True


def test_a_code_kheops_refused_leaves_an_unverified_record(
    client: Client, fake_kheops: FakeKheops
) -> None:
    fake_kheops.token_answer = (400, {"error": "invalid_request"})

    launch_and_exchange(client, fake_kheops.launch_url())

    record = LaunchRecord.objects.get()
    assert (record.outcome, record.verified) == (LaunchOutcome.CODE_REJECTED, False)
