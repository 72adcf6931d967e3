"""POST /api/report: KHEOPS's checks in order, and a 200 meta-refresh page on success."""

from __future__ import annotations

from urllib.parse import urlsplit

import jwt

from tests.sandbox.sandbox_harness import (
    FakeProvider,
    SandboxServer,
    meta_refresh_url,
    query_params,
)


def test_launch_answers_200_html_meta_refresh_to_the_redirect_uri(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    response = sandbox.launch(registered_provider)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<title>Fake provider</title>" in response.text
    url = meta_refresh_url(response)
    assert url.startswith(fake_provider.redirect_uri + "?code=")
    assert f'href="{url}"' in response.text
    # conf_uri is percent-encoded once in the raw URL, plain after one decode.
    assert "conf_uri=http%3A%2F%2F127.0.0.1%3A" in url
    params = query_params(url)
    assert list(params) == ["code", "conf_uri", "client_id", "return_uri", "studyUID"]
    assert params["conf_uri"] == [sandbox.api("/.well-known/report-provider-configuration")]
    assert params["client_id"] == [registered_provider]
    assert params["return_uri"] == [sandbox.url(f"/albums/{sandbox.demo_album_id}")]
    assert params["studyUID"] == sandbox.demo_study_uids[:1]
    claims = jwt.decode(params["code"][0], options={"verify_signature": False})
    assert claims["type"] == "report_provider_code"
    assert claims["azp"] == registered_provider
    assert claims["exp"] - claims["nbf"] == 600


def test_launch_with_several_studies_repeats_studyUID_in_order(
    sandbox: SandboxServer, registered_provider: str
) -> None:
    studies = list(reversed(sandbox.demo_study_uids))
    params = sandbox.launch_params(registered_provider, studies)
    assert params["studyUID"] == studies


def test_implicit_flow_provider_gets_the_token_in_the_fragment(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    url = fake_provider.add_document("/implicit", response_type="token", jwks_uri=None)
    client_id = sandbox.register_provider(url).json()["client_id"]
    target = meta_refresh_url(sandbox.launch(client_id))
    parts = urlsplit(target)
    assert parts.query == ""
    fragment = query_params("?" + parts.fragment)
    assert fragment["token_type"] == ["bearer"]
    assert fragment["expires_in"] == ["3600"]
    assert fragment["scope"] == ["read write"]
    userinfo = sandbox.http.get(
        sandbox.api("/userinfo"), headers={"Authorization": f"Bearer {fragment['access_token'][0]}"}
    )
    assert userinfo.json()["sub"]


def test_invalid_study_uid_is_400(sandbox: SandboxServer, registered_provider: str) -> None:
    response = sandbox.launch(registered_provider, ["1.2.abc"])
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/html")


def test_missing_study_uid_or_token_is_400(
    sandbox: SandboxServer, registered_provider: str
) -> None:
    url = sandbox.api("/report")
    token = sandbox.user_token("alice")
    assert (
        sandbox.http.post(
            url, data={"access_token": token, "client_id": registered_provider}
        ).status_code
        == 400
    )
    assert (
        sandbox.http.post(
            url, data={"client_id": registered_provider, "studyUID": "1.2.3"}
        ).status_code
        == 400
    )


def test_bad_user_token_is_401(sandbox: SandboxServer, registered_provider: str) -> None:
    assert sandbox.launch(registered_provider, access_token="garbage").status_code == 401
    token = sandbox.user_token("alice")
    sandbox.set_clock(3700)  # an hour later (plus the leeway) alice's token has expired
    assert sandbox.launch(registered_provider, access_token=token).status_code == 401


def test_report_provider_token_is_403(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = sandbox.launch_params(registered_provider)["code"][0]
    access_token = sandbox.token(
        fake_provider.token_form(sandbox, code, registered_provider)
    ).json()["access_token"]
    assert sandbox.launch(registered_provider, access_token=access_token).status_code == 403


def test_unknown_client_id_is_404(sandbox: SandboxServer) -> None:
    assert sandbox.launch("B" * 22).status_code == 404


def test_non_member_is_a_bare_403(sandbox: SandboxServer, registered_provider: str) -> None:
    response = sandbox.launch(registered_provider, username="carol")
    assert response.status_code == 403
    assert response.content == b""


def test_member_who_is_not_admin_can_launch(
    sandbox: SandboxServer, registered_provider: str
) -> None:
    assert sandbox.launch(registered_provider, username="bob").status_code == 200


def test_study_outside_the_album_is_404(sandbox: SandboxServer, registered_provider: str) -> None:
    studies = [sandbox.demo_study_uids[0], sandbox.other_study_uid]
    response = sandbox.launch(registered_provider, studies)
    assert response.status_code == 404
    assert "Study Not Found" in response.text


def test_provider_document_broken_at_launch_is_400(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    fake_provider.config_status = 503
    assert sandbox.launch(registered_provider).status_code == 400
    fake_provider.config_status = 200
    fake_provider.document["token_endpoint_auth_signing_alg"] = "HS256"
    response = sandbox.launch(registered_provider)
    assert response.status_code == 400
    assert "unknown token_endpoint_auth_signing_alg" in response.text


def test_launch_refetches_the_document_each_time(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    fake_provider.requests.clear()
    sandbox.launch(registered_provider)
    sandbox.launch(registered_provider)
    assert fake_provider.requests.count(fake_provider.config_path) == 2  # one per launch
