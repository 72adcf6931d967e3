"""The language of every page follows the browser (Accept-Language), English otherwise:
our pages, the viewer's banner texts, OHIF's own language, the admin. What the audit trail
and the log keep stays English, whatever the clinician's language."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import translation

from launcher import services
from launcher.models import LaunchGrant, LaunchOutcome, LaunchRecord
from launcher.viewer import VIEWER_TEXT
from tests.fakes import FakeKheops, token_url_of

FRENCH = {"accept-language": "fr-CH, fr;q=0.9, en;q=0.5"}
GERMAN = {"accept-language": "de-DE,de;q=0.9"}


def launch_data_of(page: str) -> dict:
    [data] = re.findall(
        r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>', page, re.S
    )
    return json.loads(data)


@pytest.mark.parametrize(
    ("accept", "language", "heading"),
    [
        ("fr-FR,fr;q=0.9", "fr", "Pour les administrateurs de ce serveur"),
        ("de-CH", "de", "Für die Administration dieses Servers"),
        ("it-IT, de;q=0.5", "de", "Für die Administration dieses Servers"),
        ("it-IT, es;q=0.8", "en", "For this server's administrators"),
        ("", "en", "For this server's administrators"),
    ],
)
def test_the_home_page_speaks_the_browsers_language_or_english(
    client: Client, db: None, accept: str, language: str, heading: str
) -> None:
    response = client.get("/", headers={"accept-language": accept} if accept else {})

    page = response.content.decode()
    assert f'<html lang="{language}">' in page
    assert f"<h2>{heading}</h2>" in page
    assert response["Content-Language"] == language
    assert "Accept-Language" in response["Vary"]


def test_a_refused_launch_is_explained_in_french_and_recorded_in_english(
    client: Client, fake_kheops: FakeKheops
) -> None:
    url = fake_kheops.launch_url().replace("client_id=", "client_id=%21")

    response = client.get(url, headers=FRENCH)

    page = response.content.decode()
    assert response.status_code == 400
    assert "<title>Impossible d'ouvrir la visionneuse</title>" in page
    assert "Le client_id n&#x27;est pas valide." in page
    assert "Rouvrez l&#x27;étude depuis KHEOPS\u00a0; si cela se reproduit" in page
    assert "Retour à KHEOPS" not in page  # refused before the way back was checked
    assert LaunchRecord.objects.get().failure_detail == "The client_id is not valid."


def test_a_failed_exchange_is_told_in_each_browsers_language_and_kept_in_english(
    client: Client, fake_kheops: FakeKheops
) -> None:
    fake_kheops.token_answer = (400, {"error": "invalid_grant"})
    location = client.get(fake_kheops.launch_url(), headers=FRENCH)["Location"]

    answer = client.get(token_url_of(location), headers=FRENCH)

    assert answer.status_code == 403
    assert (
        answer.json()["error"]
        == "KHEOPS a refusé cette ouverture\u00a0: le lien a peut-être expiré."
    )
    assert answer.json()["advice"] == "Rouvrez l'étude depuis KHEOPS."
    grant = LaunchGrant.objects.get()
    assert grant.failure_message == "KHEOPS refused this launch: the link may have expired."
    assert grant.failure_advice == "Open the study again from KHEOPS."
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.CODE_REJECTED
    # The same browser, its language now German: the stored refusal is shown in German.
    page = client.get(location, headers=GERMAN).content.decode()
    assert '<html lang="de">' in page
    assert "KHEOPS hat diese Öffnung abgelehnt: Der Link ist vielleicht abgelaufen." in page
    assert "Zurück zu KHEOPS" in page
    assert "Studie:" in page


def test_the_viewer_and_ohif_get_the_language_of_the_launch(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    response = client.get(fake_kheops.launch_url(), headers=GERMAN)
    location = response["Location"]

    # OHIF's language: `lng` comes first in its detection (docs/ohif.md).
    assert parse_qs(urlsplit(location).query)["lng"] == ["de"]
    page = client.get(location, headers=GERMAN).content.decode()
    assert page.startswith('<!doctype html><html lang="de">')
    text = launch_data_of(page)["text"]
    assert text["openedAs"] == "Geöffnet als {who}"
    assert text["accessEndsIn"] == "Der Zugriff endet in {time}."
    assert set(text) == set(VIEWER_TEXT)
    # The same viewer in a French browser: French words, OHIF told so by <html lang> too.
    french = client.get(location, headers=FRENCH).content.decode()
    assert french.startswith('<!doctype html><html lang="fr">')
    assert launch_data_of(french)["text"]["openAgain"] == "Rouvrir depuis KHEOPS"


@pytest.mark.parametrize("language", ["fr", "de"])
def test_every_viewer_text_is_translated_with_its_placeholders(language: str) -> None:
    with translation.override(language):
        for key, english in VIEWER_TEXT.items():
            with translation.override("en"):
                source = str(english)
            translated = str(english)
            assert translated != source, key
            assert re.findall(r"\{\w+\}", translated) == re.findall(r"\{\w+\}", source), key


@pytest.mark.parametrize(
    ("language", "seconds", "advice"),
    [
        ("fr", 1, "Patientez 1 seconde, puis rechargez cette page."),
        ("fr", 30, "Patientez 30 secondes, puis rechargez cette page."),
        ("de", 1, "Warten Sie 1 Sekunde und laden Sie dann diese Seite neu."),
        ("de", 30, "Warten Sie 30 Sekunden und laden Sie dann diese Seite neu."),
        ("en", 1, "Wait 1 second, then reload this page."),
    ],
)
def test_waits_are_counted_in_the_pages_language(language: str, seconds: int, advice: str) -> None:
    waiting = services.wait_then(seconds, "reload")  # made before the language is known

    with translation.override(language):
        assert str(waiting) == advice
    assert services.in_english(waiting) == (
        "Wait 1 second, then reload this page."
        if seconds == 1
        else "Wait 30 seconds, then reload this page."
    )


def test_the_admin_speaks_french_too(admin_client: Client, fake_kheops: FakeKheops) -> None:
    page = admin_client.get("/admin/", headers=FRENCH).content.decode()

    assert '<html lang="fr"' in page
    assert "Administration KHEOPS → OHIF" in page
    assert "État de l'intégration\u00a0: serveurs KHEOPS de confiance" in page
    assert "Serveurs KHEOPS de confiance" in page  # the model's verbose name, capitalised
    assert "Déconnexion" in page  # Django's own admin catalogue


def test_the_copy_button_speaks_german(admin_client: Client, fake_kheops: FakeKheops) -> None:
    provider = fake_kheops.provider
    page = admin_client.get(
        f"/admin/launcher/provider/{provider.pk}/change/", headers=GERMAN
    ).content.decode()

    assert 'data-copied="Kopiert"' in page
    assert 'data-selected="Markiert: Drücken Sie Strg+C zum Kopieren"' in page
    assert ">Kopieren</button>" in page
    assert "Konfigurations-URL" in page
