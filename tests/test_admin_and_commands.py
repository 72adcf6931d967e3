"""The control panel: admin pages and actions, and the scripted set-up commands."""

from __future__ import annotations

import re

import pytest
import respx
from django.core.management import CommandError, call_command
from django.test import Client

from launcher import keys
from launcher.models import KheopsServer, LaunchRecord, Provider
from tests.fakes import DISCOVERY_URL, ROOT, discovery_document


def test_trust_kheops_is_idempotent(db: None) -> None:
    call_command("trust_kheops", ROOT, "--name", "Hospital KHEOPS")
    call_command("trust_kheops", ROOT, "--name", "Renamed")

    server = KheopsServer.objects.get()
    assert (server.root_url, server.name, server.enabled) == (ROOT, "Renamed", True)


@pytest.mark.parametrize(
    "bad", ["kheops.test", "ftp://kheops.test", f"{ROOT}/", "https://u:p@kheops.test"]
)
def test_trust_kheops_refuses_a_malformed_root(db: None, bad: str) -> None:
    with pytest.raises(CommandError):
        call_command("trust_kheops", bad, "--name", "x")
    assert KheopsServer.objects.count() == 0


def test_test_connection_reports_success_and_failure(
    admin_client: Client, kheops_http: respx.MockRouter
) -> None:
    good = KheopsServer.objects.create(name="Good", root_url=ROOT)
    bad = KheopsServer.objects.create(name="Bad", root_url="https://bad.test")
    kheops_http.get(DISCOVERY_URL).respond(json=discovery_document())
    kheops_http.get("https://bad.test/api/.well-known/report-provider-configuration").respond(
        json={**discovery_document(), "issuer": ROOT}
    )

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
    assert (
        admin_client.post(
            f"/admin/launcher/launchrecord/{record.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    assert LaunchRecord.objects.filter(pk=record.pk).exists()


def test_the_provider_add_page_opens_and_says_the_launch_url_comes_later(
    admin_client: Client,
) -> None:
    response = admin_client.get("/admin/launcher/provider/add/")

    assert response.status_code == 200
    assert "Filled in automatically when saved." in response.content.decode()


def test_the_provider_form_explains_its_fields_in_plain_words(admin_client: Client) -> None:
    page = admin_client.get("/admin/launcher/provider/add/").content.decode()

    for label in ("Short name", "Name in KHEOPS", "OHIF mode", "Modalities", "Launch URL"):
        assert f"{label}:</label>" in page or f">{label}:<" in page, label
    assert "What clinicians see in the study menu of a KHEOPS album" in page
    assert "(…/providers/short-name/configuration and …/launch)" in page
    assert (
        "Display name (client_name)" not in page
        and "Slug:" not in page
        and "Redirect uri" not in page
    )


def test_modalities_are_boxes_to_tick_by_name_and_stored_as_codes(
    admin_client: Client, kheops_http: respx.MockRouter
) -> None:
    page = admin_client.get("/admin/launcher/provider/add/").content.decode()
    form = {
        "client_name": "CT and MR",
        "slug": "ct-mr",
        "mode": "viewer",
        "enabled": "on",
        "supported_modalities": ["CT", "MR"],
    }

    saved = admin_client.post("/admin/launcher/provider/add/", form)

    assert 'type="checkbox" name="supported_modalities" value="CT"' in page
    assert "CT (Computed Tomography)" in page and "RTSTRUCT (Radiotherapy Structure Set)" in page
    assert '"[]"' not in page and "&quot;CT&quot;" not in page  # no JSON box any more
    assert saved.status_code == 302
    assert Provider.objects.get(slug="ct-mr").supported_modalities == ["CT", "MR"]
    assert Client().get("/providers/ct-mr/configuration").json()["supported_modalities"] == [
        "CT",
        "MR",
    ]


def test_a_modality_code_that_is_not_dicoms_is_refused(admin_client: Client) -> None:
    form = {
        "client_name": "Odd",
        "slug": "odd",
        "mode": "viewer",
        "supported_modalities": ["CT", "XYZ"],
    }

    response = admin_client.post("/admin/launcher/provider/add/", form)

    assert response.status_code == 200
    assert (
        "Select a valid choice. XYZ is not one of the available choices."
        in response.content.decode()
    )
    assert not Provider.objects.filter(slug="odd").exists()


def test_a_code_stored_earlier_stays_choosable_when_the_provider_is_edited(
    admin_client: Client,
) -> None:
    provider = Provider.objects.create(
        slug="legacy", client_name="Legacy", supported_modalities=["CD", "CT"]
    )

    page = admin_client.get(f"/admin/launcher/provider/{provider.pk}/change/").content.decode()
    saved = admin_client.post(
        f"/admin/launcher/provider/{provider.pk}/change/",
        {
            "client_name": "Legacy",
            "slug": "legacy",
            "mode": "viewer",
            "supported_modalities": ["CD", "CT", "US"],
        },
    )

    assert re.search(r'value="CD" id="id_supported_modalities_\d+" checked>\s*CD</label>', page)
    assert saved.status_code == 302
    provider.refresh_from_db()
    assert provider.supported_modalities == ["CD", "CT", "US"]


def test_the_provider_page_shows_the_configuration_url_with_a_copy_button(
    admin_client: Client, provider: Provider
) -> None:
    page = admin_client.get(f"/admin/launcher/provider/{provider.pk}/change/").content.decode()

    assert re.search(
        r'<input type="text" readonly id="configuration-url" value="http://127.0.0.1:8000/providers/ohif/configuration"',
        page,
    )
    assert (
        '<button type="button" class="copy-button" data-copy="configuration-url" data-copied="Copied" data-selected="Selected: press Ctrl+C to copy">Copy</button>'
        in page
    )
    assert re.search(r'<script src="/static/launcher/copy(\.[0-9a-f]{12})?\.js">', page)
