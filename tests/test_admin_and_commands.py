"""The control panel: admin pages and actions, and the scripted set-up commands."""

from __future__ import annotations

import pytest
import responses
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from launcher import keys
from launcher.models import KheopsServer, LaunchRecord
from tests.fakes import DISCOVERY_URL, ROOT, discovery_document


@pytest.fixture
def admin_client(db: None) -> Client:
    user = User.objects.create_superuser("admin", "admin@example.org", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return client


def test_trust_kheops_is_idempotent(db: None) -> None:
    call_command("trust_kheops", ROOT, "--name", "Hospital KHEOPS")
    call_command("trust_kheops", ROOT, "--name", "Renamed")

    server = KheopsServer.objects.get()
    assert (server.root_url, server.name, server.enabled) == (ROOT, "Renamed", True)


@pytest.mark.parametrize("bad", ["kheops.test", "ftp://kheops.test", f"{ROOT}/", "https://u:p@kheops.test"])
def test_trust_kheops_refuses_a_malformed_root(db: None, bad: str) -> None:
    with pytest.raises(CommandError):
        call_command("trust_kheops", bad, "--name", "x")
    assert KheopsServer.objects.count() == 0


def test_test_connection_reports_success_and_failure(admin_client: Client, rsps: responses.RequestsMock) -> None:
    good = KheopsServer.objects.create(name="Good", root_url=ROOT)
    bad = KheopsServer.objects.create(name="Bad", root_url="https://bad.test")
    rsps.get(DISCOVERY_URL, json=discovery_document())
    rsps.get("https://bad.test/api/.well-known/report-provider-configuration", json={**discovery_document(), "issuer": ROOT})

    response = admin_client.post(
        "/admin/launcher/kheopsserver/",
        {"action": "test_connection", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )

    text = response.content.decode()
    assert "Good: discovery document OK" in text
    assert "Bad: the discovery document" in text


def test_the_provider_admin_shows_the_configuration_url_to_copy(admin_client: Client) -> None:
    response = admin_client.get("/admin/launcher/provider/1/change/")

    assert 'value="http://127.0.0.1:8000/providers/ohif/configuration"' in response.content.decode()


def test_the_signing_key_admin_never_shows_the_private_key(admin_client: Client) -> None:
    key = keys.active_signing_key()

    page = admin_client.get(f"/admin/launcher/signingkey/{key.pk}/change/").content.decode()

    assert key.kid in page
    assert key.sealed_private_key not in page
    assert "PRIVATE" not in page


def test_launch_records_are_read_only(admin_client: Client) -> None:
    record = LaunchRecord.objects.create(outcome="success", client_id="abcdefgh12")

    assert admin_client.get("/admin/launcher/launchrecord/").status_code == 200
    assert admin_client.get("/admin/launcher/launchrecord/add/").status_code == 403
    assert admin_client.post(f"/admin/launcher/launchrecord/{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert LaunchRecord.objects.filter(pk=record.pk).exists()


def test_the_provider_add_page_opens_and_says_the_launch_url_comes_later(admin_client: Client) -> None:
    response = admin_client.get("/admin/launcher/provider/add/")

    assert response.status_code == 200
    assert "filled in automatically when saved" in response.content.decode()
