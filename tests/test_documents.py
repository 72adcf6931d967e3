"""The documents KHEOPS fetches: provider configuration and JWKS."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from django.core.management import CommandError, call_command
from django.test import Client

from launcher import keys, sealing
from launcher.models import Provider, SigningKey


@pytest.mark.django_db
def test_the_default_configuration_document_follows_kheops_rules(client: Client) -> None:
    response = client.get("/.well-known/kheops-report-configuration")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    document = response.json()
    assert document == {
        "client_name": "OHIF Viewer",
        "redirect_uri": "http://127.0.0.1:8000/providers/ohif/launch",
        "response_type": "code",
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "RS256",
        "jwks_uri": "http://127.0.0.1:8000/jwks.json",
        "client_uri": "http://127.0.0.1:8000/",
    }
    assert "max-age=60" in response["Cache-Control"]


@pytest.mark.django_db
def test_each_provider_has_its_document_and_launch_url(client: Client) -> None:
    Provider.objects.create(
        slug="seg",
        client_name="OHIF Segmentation",
        mode="segmentation",
        supported_modalities=["CT", "MR"],
    )

    document = client.get("/providers/seg/configuration").json()

    assert document["redirect_uri"] == "http://127.0.0.1:8000/providers/seg/launch"
    assert document["supported_modalities"] == ["CT", "MR"]
    assert document["client_name"] == "OHIF Segmentation"


@pytest.mark.django_db
def test_a_disabled_or_unknown_provider_has_no_document(client: Client) -> None:
    Provider.objects.filter(slug="ohif").update(enabled=False)

    assert client.get("/providers/ohif/configuration").status_code == 404
    assert client.get("/.well-known/kheops-report-configuration").status_code == 404
    assert client.get("/providers/nope/configuration").status_code == 404


@pytest.mark.django_db
def test_urls_in_documents_keep_the_public_base_url_verbatim(client: Client, settings) -> None:
    settings.PUBLIC_BASE_URL = "https://viewer.example.org:443/sub/path"
    settings.SCRIPT_NAME = "/sub/path"
    settings.FORCE_SCRIPT_NAME = "/sub/path"
    settings.ALLOWED_HOSTS = ["testserver"]

    document = client.get("/providers/ohif/configuration", SCRIPT_NAME="/sub/path").json()

    config_url = Provider.objects.get(slug="ohif").configuration_url
    assert config_url == "https://viewer.example.org:443/sub/path/providers/ohif/configuration"
    for url in (document["redirect_uri"], document["jwks_uri"]):
        # KHEOPS compares scheme and authority as strings: ":443" must survive.
        assert urlsplit(url)[:2] == urlsplit(config_url)[:2]
        assert url.startswith("https://viewer.example.org:443/sub/path/")


@pytest.mark.django_db
def test_the_jwks_publishes_a_key_created_on_first_use(client: Client) -> None:
    assert SigningKey.objects.count() == 0

    jwks = client.get("/jwks.json").json()

    [key] = jwks["keys"]
    assert set(key) == {"kty", "kid", "use", "alg", "n", "e"}
    assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    assert key["kid"] == SigningKey.objects.get().kid


@pytest.mark.django_db
def test_assertions_verify_with_the_published_key(client: Client) -> None:
    assertion = keys.client_assertion(
        client_id="Q9ZTMv3fW7ta0Npg1caGMF", audience="https://k/api/token"
    )
    [key] = client.get("/jwks.json").json()["keys"]

    claims = jwt.decode(
        assertion, jwt.PyJWK(key).key, algorithms=["RS256"], audience="https://k/api/token"
    )

    assert jwt.get_unverified_header(assertion)["kid"] == key["kid"]
    assert claims["iss"] == claims["sub"] == "Q9ZTMv3fW7ta0Npg1caGMF"


@pytest.mark.django_db
def test_rotation_keeps_the_previous_key_published_for_the_grace_period(client: Client) -> None:
    old = keys.active_signing_key()

    call_command("rotate_signing_key", "--grace-seconds", "3600")

    kids = [k["kid"] for k in client.get("/jwks.json").json()["keys"]]
    new = SigningKey.objects.get(active=True)
    assert kids == [new.kid, old.kid]


@pytest.mark.django_db
def test_a_new_key_signs_only_once_it_has_been_published_long_enough() -> None:
    # KHEOPS may read a JWKS a proxy cached for up to a minute before the rotation.
    old = keys.active_signing_key()
    call_command("rotate_signing_key", "--grace-seconds", "3600")
    new = SigningKey.objects.get(active=True)
    rotated_at = new.created_at.timestamp()

    def signer(at: float) -> str:
        keys.forget_cached_key()
        assertion = keys.client_assertion(client_id="abcdefgh12", audience="a", now=at)
        return jwt.get_unverified_header(assertion)["kid"]

    assert signer(rotated_at + 1) == old.kid
    assert signer(rotated_at + keys.PUBLISH_BEFORE_SIGNING_SECONDS - 1) == old.kid
    assert signer(rotated_at + keys.PUBLISH_BEFORE_SIGNING_SECONDS + 1) == new.kid


@pytest.mark.django_db
def test_a_grace_period_shorter_than_the_publication_delay_is_refused() -> None:
    old = keys.active_signing_key()

    with pytest.raises(CommandError, match="at least"):
        call_command("rotate_signing_key", "--grace-seconds", str(keys.MINIMUM_GRACE_SECONDS - 1))

    assert SigningKey.objects.get(active=True) == old


@pytest.mark.django_db
def test_a_retired_key_disappears_after_its_grace_period(client: Client) -> None:
    old = keys.active_signing_key()
    keys.rotate(grace=timedelta(seconds=-1))

    kids = [k["kid"] for k in client.get("/jwks.json").json()["keys"]]

    assert old.kid not in kids
    assert len(kids) == 1


@pytest.mark.django_db
def test_the_private_key_is_sealed_at_rest(settings: Any) -> None:
    key = keys.active_signing_key()
    stored = repr(SigningKey.objects.values().get())

    # Sealed, not merely encoded: the key's own base64 is nowhere in the row, only our
    # SECRET_KEY opens it, into the private half of the published key.
    pem = sealing.unseal(key.sealed_private_key, purpose="signing-key")
    der_base64 = "".join(pem.strip().splitlines()[1:-1])
    assert "PRIVATE KEY" not in stored
    assert der_base64[64:128] not in stored
    public = serialization.load_pem_private_key(pem.encode(), password=None).public_key()
    assert public.public_numbers().n == int.from_bytes(
        base64.urlsafe_b64decode(key.public_jwk["n"] + "=="), "big"
    )
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "another-" + settings.SECRET_KEY, []
    with pytest.raises(sealing.SealError):
        sealing.unseal(key.sealed_private_key, purpose="signing-key")


def test_the_home_page_offers_the_configuration_url_to_copy_and_the_way_to_the_admin(
    client: Client, provider: Provider
) -> None:
    page = client.get("/").content.decode()

    assert (
        '<input type="text" readonly id="configuration-url" value="http://127.0.0.1:8000/providers/ohif/configuration"'
        in page
    )
    assert (
        'data-copy="configuration-url" data-copied="Copied" data-selected="Selected: press Ctrl+C to copy">Copy</button>'
        in page
    )
    assert re.search(r'<script defer src="/static/launcher/copy(\.[0-9a-f]{12})?\.js">', page)
    assert '<a href="/admin/">Administration</a>' in page
