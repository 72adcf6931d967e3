"""The full flow, then userinfo and introspection, including expiry on the stand-in's clock."""

from __future__ import annotations

import pytest

from tests.sandbox.sandbox_harness import (
    FakeProvider,
    SandboxServer,
    meta_refresh_url,
    query_params,
)


def _access_token(
    sandbox: SandboxServer,
    fake_provider: FakeProvider,
    client_id: str,
    studies: list[str] | None = None,
) -> str:
    code = sandbox.launch_params(client_id, studies)["code"][0]
    response = sandbox.token(fake_provider.token_form(sandbox, code, client_id))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _introspect(sandbox: SandboxServer, token: str) -> dict:
    response = sandbox.http.post(sandbox.api("/token/introspect"), data={"token": token})
    assert response.status_code == 200, response.text
    return response.json()


def _userinfo(sandbox: SandboxServer, token: str):
    return sandbox.http.get(sandbox.api("/userinfo"), headers={"Authorization": f"Bearer {token}"})


def test_full_flow_from_album_launch_to_userinfo_and_introspection(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    discovery = sandbox.http.get(sandbox.api("/.well-known/report-provider-configuration")).json()
    launch = sandbox.launch(registered_provider, username="bob")
    target = meta_refresh_url(launch)
    # The browser follows the refresh to the provider.
    assert sandbox.http.get(target).text == "launched"
    params = query_params(target)
    assert params["conf_uri"] == [sandbox.api("/.well-known/report-provider-configuration")]
    form = fake_provider.token_form(sandbox, params["code"][0], params["client_id"][0])
    token_response = sandbox.http.post(discovery["token_endpoint"], data=form)
    access_token = token_response.json()["access_token"]

    userinfo = sandbox.http.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {access_token}"}
    )
    assert userinfo.status_code == 200
    assert userinfo.json() == {
        "sub": next(u["sub"] for u in sandbox.state()["users"] if u["username"] == "bob"),
        "name": "Bob Member",
        "email": "bob@sandbox.invalid",
    }

    introspection = _introspect(sandbox, access_token)
    assert introspection["active"] is True
    assert introspection["scope"] == "read write"
    assert introspection["client_id"] == introspection["azp"] == registered_provider
    assert introspection["album_id"] == sandbox.demo_album_id
    assert introspection["studyUID"] == sandbox.demo_study_uids[0]  # a string for one study
    assert introspection["redirect_uri"] == fake_provider.redirect_uri
    assert introspection["exp"] - introspection["iat"] == 3600


def test_introspection_gives_an_array_for_several_studies(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    token = _access_token(sandbox, fake_provider, registered_provider, sandbox.demo_study_uids)
    assert _introspect(sandbox, token)["studyUID"] == sandbox.demo_study_uids


def test_expired_access_token_is_rejected_by_userinfo_and_inactive_at_introspection(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    token = _access_token(sandbox, fake_provider, registered_provider)
    sandbox.set_clock(3600 + 30)  # inside the 60 s leeway
    assert _userinfo(sandbox, token).status_code == 200
    sandbox.set_clock(3600 + 61)
    assert _userinfo(sandbox, token).status_code == 401
    assert _introspect(sandbox, token) == {"active": False}


@pytest.mark.parametrize("token", ["garbage", "eyJhbGciOiJub25lIn0.e30."])
def test_garbage_token_is_401_at_userinfo_and_inactive(sandbox: SandboxServer, token: str) -> None:
    assert _userinfo(sandbox, token).status_code == 401
    assert _introspect(sandbox, token) == {"active": False}


def test_user_token_is_403_at_userinfo_and_401_at_introspection(sandbox: SandboxServer) -> None:
    token = sandbox.user_token("alice")
    assert _userinfo(sandbox, token).status_code == 403
    response = sandbox.http.post(sandbox.api("/token/introspect"), data={"token": token})
    assert response.status_code == 401


def test_userinfo_without_authorization_is_401(sandbox: SandboxServer) -> None:
    assert sandbox.http.get(sandbox.api("/userinfo")).status_code == 401


def test_token_of_a_removed_provider_is_inactive(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    token = _access_token(sandbox, fake_provider, registered_provider)
    sandbox.http.delete(
        sandbox.api(f"/albums/{sandbox.demo_album_id}/reportproviders/{registered_provider}"),
        headers={"Authorization": f"Bearer {sandbox.user_token('alice')}"},
    )
    assert _introspect(sandbox, token) == {"active": False}
    assert _userinfo(sandbox, token).status_code == 401


def test_introspection_is_inactive_when_the_provider_document_is_down(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    token = _access_token(sandbox, fake_provider, registered_provider)
    fake_provider.config_status = 500
    assert _introspect(sandbox, token) == {"active": False}


def test_introspection_accepts_a_provider_assertion_for_its_own_endpoint(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    token = _access_token(sandbox, fake_provider, registered_provider)
    form = {
        "token": token,
        "client_id": registered_provider,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": fake_provider.assertion(
            registered_provider, sandbox.api("/token/introspect")
        ),
    }
    response = sandbox.http.post(sandbox.api("/token/introspect"), data=form)
    assert response.json()["active"] is True
    form["client_assertion"] = fake_provider.assertion(registered_provider, sandbox.api("/token"))
    response = sandbox.http.post(sandbox.api("/token/introspect"), data=form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
