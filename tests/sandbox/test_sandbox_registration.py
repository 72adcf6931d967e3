"""Registering a report provider: KHEOPS's validateForConfigUri, admin-only, soft delete."""

from __future__ import annotations

import re

import pytest

from tests.sandbox.sandbox_harness import FakeProvider, SandboxServer

BAD_FORM = {"message": "Bad Form Parameter", "detail": "'url' formparam is not valid"}


def test_correct_provider_is_registered_with_a_fresh_22_character_client_id(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    first = sandbox.register_provider(fake_provider.config_url, "Viewer")
    second = sandbox.register_provider(fake_provider.config_url, "Viewer")
    assert first.status_code == second.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"name", "url", "client_id", "created_time"}
    assert body["name"] == "Viewer"
    assert body["url"] == fake_provider.config_url
    assert re.fullmatch(r"[A-Za-z0-9]{22}", body["client_id"])
    assert body["client_id"] != second.json()["client_id"]
    assert first.headers["Access-Control-Allow-Origin"] == "*"


def test_implicit_flow_provider_needs_no_jwks(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    for name in ("jwks_uri", "token_endpoint_auth_method", "token_endpoint_auth_signing_alg"):
        del fake_provider.document[name]
    fake_provider.document["response_type"] = "token"
    assert sandbox.register_provider(fake_provider.config_url).status_code == 201


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/", 1)[0]


@pytest.mark.parametrize(
    "breakage",
    [
        "redirect-authority-with-explicit-port-zero-padded",
        "redirect-on-localhost",
        "redirect-on-https",
        "jwks-on-other-authority",
        "redirect-missing",
        "redirect-is-a-list",
        "response-type-missing",
        "response-type-unknown",
        "auth-method-missing",
        "auth-method-client-secret",
        "jwks-missing",
        "alg-missing",
        "alg-es256",
        "document-404",
        "document-not-json",
        "document-text-plain",
        "document-is-a-list",
    ],
)
def test_each_invalid_document_is_refused_as_kheops_does(
    sandbox: SandboxServer, fake_provider: FakeProvider, breakage: str
) -> None:
    document = fake_provider.document
    port = _port(fake_provider.base_url)
    if breakage == "redirect-authority-with-explicit-port-zero-padded":
        # The same socket, but another authority string: KHEOPS compares strings (":443" case).
        document["redirect_uri"] = f"http://127.0.0.1:0{port}/kheops/launch"
    elif breakage == "redirect-on-localhost":
        document["redirect_uri"] = f"http://localhost:{port}/kheops/launch"
    elif breakage == "redirect-on-https":
        document["redirect_uri"] = document["redirect_uri"].replace("http://", "https://")
    elif breakage == "jwks-on-other-authority":
        document["jwks_uri"] = f"http://localhost:{port}/jwks.json"
    elif breakage == "redirect-missing":
        del document["redirect_uri"]
    elif breakage == "redirect-is-a-list":
        document["redirect_uri"] = [document["redirect_uri"]]
    elif breakage == "response-type-missing":
        del document["response_type"]
    elif breakage == "response-type-unknown":
        document["response_type"] = "id_token"
    elif breakage == "auth-method-missing":
        del document["token_endpoint_auth_method"]
    elif breakage == "auth-method-client-secret":
        document["token_endpoint_auth_method"] = "client_secret_basic"
    elif breakage == "jwks-missing":
        del document["jwks_uri"]
    elif breakage == "alg-missing":
        del document["token_endpoint_auth_signing_alg"]
    elif breakage == "alg-es256":
        document["token_endpoint_auth_signing_alg"] = "ES256"
    elif breakage == "document-404":
        fake_provider.config_status = 404
    elif breakage == "document-not-json":
        fake_provider.config_raw = b"<html>hello</html>"
    elif breakage == "document-text-plain":
        fake_provider.config_content_type = "text/plain"
    elif breakage == "document-is-a-list":
        fake_provider.config_raw = b"[]"
    response = sandbox.register_provider(fake_provider.config_url)
    assert response.status_code == 400
    assert response.json() == BAD_FORM


@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"redirect_uri": None}, "redirect_uri is null"),
        ({"redirect_uri": "http://localhost:1/x"}, "jwks_uri root does not match the config uri"),
        ({"jwks_uri": "http://localhost:1/x"}, "redirect_uri root does not match the config uri"),
        ({"response_type": None}, "missing response_type"),
        ({"response_type": "id_token"}, "unknown response_type"),
        ({"token_endpoint_auth_method": "none"}, "unknown token_endpoint_auth_method"),
        ({"token_endpoint_auth_signing_alg": None}, "missing token_endpoint_auth_signing_alg"),
    ],
)
def test_metadata_endpoint_reports_kheops_validation_strings_swapped_ones_included(
    sandbox: SandboxServer, fake_provider: FakeProvider, change: dict, description: str
) -> None:
    url = fake_provider.add_document("/broken", **change)
    response = sandbox.http.post(
        sandbox.api("/reportproviders/metadata"),
        data={"url": url},
        headers={"Authorization": f"Bearer {sandbox.user_token('bob')}"},
    )
    assert response.status_code == 200
    assert response.json() == {"valid": False, "error_description": description}


def test_metadata_endpoint_echoes_a_valid_document(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    response = sandbox.http.post(
        sandbox.api("/reportproviders/metadata"),
        data={"url": fake_provider.config_url},
        headers={"Authorization": f"Bearer {sandbox.user_token('carol')}"},
    )
    body = response.json()
    assert body["valid"] is True
    assert body["redirect_uri"] == fake_provider.redirect_uri
    assert body["client_name"] == "Fake provider"


@pytest.mark.parametrize(("username", "status"), [("bob", 403), ("carol", 403)])
def test_only_album_admins_can_register(
    sandbox: SandboxServer, fake_provider: FakeProvider, username: str, status: int
) -> None:
    response = sandbox.register_provider(fake_provider.config_url, username=username)
    assert response.status_code == status


def test_registration_needs_a_valid_user_token(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    url = sandbox.api(f"/albums/{sandbox.demo_album_id}/reportproviders")
    form = {"url": fake_provider.config_url, "name": "x"}
    assert sandbox.http.post(url, data=form).status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert sandbox.http.post(url, data=form, headers=bad).status_code == 401
    unknown_album = sandbox.api("/albums/ZZZZZZZZZZ/reportproviders")
    alice = {"Authorization": f"Bearer {sandbox.user_token('alice')}"}
    assert sandbox.http.post(unknown_album, data=form, headers=alice).status_code == 404
    assert (
        sandbox.http.post(url, data={"url": fake_provider.config_url}, headers=alice).status_code
        == 400
    )


def test_list_get_and_soft_delete(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    base = sandbox.api(f"/albums/{sandbox.demo_album_id}/reportproviders")
    bob = {"Authorization": f"Bearer {sandbox.user_token('bob')}"}
    alice = {"Authorization": f"Bearer {sandbox.user_token('alice')}"}
    listing = sandbox.http.get(base, headers=bob)
    assert listing.status_code == 200
    assert listing.json()[0]["client_id"] == registered_provider  # newest first
    assert int(listing.headers["X-Total-Count"]) == len(listing.json())
    assert sandbox.http.get(f"{base}/{registered_provider}", headers=bob).json()["client_id"] == (
        registered_provider
    )
    assert sandbox.http.delete(f"{base}/{registered_provider}", headers=bob).status_code == 403
    assert sandbox.http.delete(f"{base}/{registered_provider}", headers=alice).status_code == 204
    assert sandbox.http.get(f"{base}/{registered_provider}", headers=bob).status_code == 404
    remaining = [p["client_id"] for p in sandbox.http.get(base, headers=bob).json()]
    assert registered_provider not in remaining
    assert sandbox.launch(registered_provider).status_code == 404
