"""Our error pages, read as a clinician reads them: what happened (one sentence), what to
do (one sentence), the way back into KHEOPS when it is known, the studies concerned, and
the HTTP status in small print."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import unescape

import pytest
from django.test import Client

from launcher.models import KheopsServer, Provider
from tests.fakes import ALBUM_ID, ROOT, STUDY_1, STUDY_2, FakeKheops, token_url_of

RETURN_URI = f"{ROOT}/albums/{ALBUM_ID}"


@dataclass(frozen=True)
class ErrorPage:
    status: int
    message: str
    advice: str
    way_back: str | None
    studies: list[str]
    status_line: str


def read(response) -> ErrorPage:  # type: ignore[no-untyped-def]
    page = response.content.decode()

    def one(css_class: str) -> str:
        [text] = re.findall(rf'<p class="{css_class}">(.*?)</p>', page, re.S)
        return unescape(text.strip())

    assert page.count("<h1>") == 1 and "<h1>Cannot open the viewer</h1>" in page
    links = re.findall(
        r'<a class="button" href="([^"]*)" rel="noreferrer">Back to KHEOPS</a>', page
    )
    assert len(links) <= 1
    studies = re.findall(r'<p class="studies">(.*?)</p>', page, re.S)
    return ErrorPage(
        status=response.status_code,
        message=one("message"),
        advice=one("advice"),
        way_back=unescape(links[0]) if links else None,
        studies=re.findall(r"<code>([0-9.]+)</code>", studies[0]) if studies else [],
        status_line=one("status"),
    )


def assert_plain(page: ErrorPage) -> None:
    for sentence in (page.message, page.advice):
        # One sentence each: a capital, a full stop at the end and nowhere before it.
        assert sentence[0].isupper() and sentence.endswith("."), sentence
        assert ". " not in sentence, sentence
    assert page.message != page.advice
    assert page.status_line == f"HTTP {page.status}"


def test_the_page_of_another_browser_says_it_once_and_offers_the_way_back_and_the_study(
    launched: Callable[..., str],
) -> None:
    location = launched(studies=(STUDY_1, STUDY_2))

    page = read(Client().get(location))

    assert_plain(page)
    assert page.status == 403
    assert page.message == "This viewer link belongs to another browser session."
    assert page.advice == "Open the study from KHEOPS in this browser."
    assert page.way_back == RETURN_URI
    assert page.studies == [STUDY_1, STUDY_2]


def test_a_viewer_link_that_never_was_gets_the_same_page_without_a_way_back(db: None) -> None:
    page = read(Client().get("/launches/no-such-launch-id-at-all/viewer"))

    assert_plain(page)
    assert (page.status, page.way_back, page.studies) == (403, None, [])


def test_another_browser_asking_for_the_token_gets_the_way_back_too(
    launched: Callable[..., str],
) -> None:
    location = launched(exchange=False)

    answer = Client().get(token_url_of(location)).json()

    assert answer == {
        "error": "This viewer link belongs to another browser session.",
        "advice": "Open the study from KHEOPS in this browser.",
        "returnUri": RETURN_URI,
        "retryable": False,
    }


def test_the_replay_page(client: Client, fake_kheops: FakeKheops) -> None:
    url = fake_kheops.launch_url(studies=(STUDY_2,))
    client.get(url)

    page = read(Client().get(url))  # in another browser

    assert_plain(page)
    assert (page.status, page.message) == (409, "This launch link has already been used.")
    assert page.advice == "Open the study again from KHEOPS: each click makes a new link."
    assert (page.way_back, page.studies) == (RETURN_URI, [STUDY_2])


def test_the_page_of_a_launch_from_an_untrusted_server_has_no_way_back(
    client: Client, fake_kheops: FakeKheops
) -> None:
    page = read(
        client.get(
            fake_kheops.launch_url(
                conf_uri="https://evil.test/api/.well-known/report-provider-configuration"
            )
        )
    )

    assert_plain(page)
    assert (page.status, page.way_back, page.studies) == (403, None, [STUDY_1])
    assert "trusted servers" in page.advice


def test_the_page_of_a_disabled_provider(
    client: Client, fake_kheops: FakeKheops, provider: Provider
) -> None:
    provider.enabled = False
    provider.save()

    page = read(client.get(fake_kheops.launch_url()))

    assert_plain(page)
    assert (page.status, page.way_back, page.studies) == (403, RETURN_URI, [STUDY_1])
    assert (
        page.advice
        == "Choose another viewer in KHEOPS, or ask this viewer's administrator to enable it again."
    )


def test_the_page_of_a_damaged_launch_link_names_what_is_wrong(
    client: Client, fake_kheops: FakeKheops
) -> None:
    page = read(client.get(fake_kheops.launch_url(client_id="bad id!")))

    assert_plain(page)
    assert (page.status, page.message) == (400, "The client_id is not valid.")
    assert "show this page to your KHEOPS administrator" in page.advice
    assert page.studies == []  # the link was refused before its studies were read


@pytest.mark.parametrize(
    ("answer", "status", "advice"),
    [
        ((400, {"error": "invalid_grant"}), 403, "Open the study again from KHEOPS."),
        (
            (200, "not json"),
            502,
            "Open the study again from KHEOPS; if this happens again, tell this viewer's administrator.",
        ),
    ],
)
def test_a_failed_exchange_keeps_its_advice_for_the_viewer_page(
    client: Client,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
    answer: object,
    status: int,
    advice: str,
) -> None:
    fake_kheops.token_answer = answer
    location = launched(exchange=False)
    token = client.get(token_url_of(location))

    page = read(client.get(location))

    assert_plain(page)
    assert (token.status_code, page.status) == (status, status)
    assert token.json()["advice"] == page.advice == advice
    assert token.json()["error"] == page.message
    assert (page.way_back, page.studies) == (RETURN_URI, [STUDY_1])


def test_a_transient_failure_tells_the_viewer_to_wait_and_keeps_the_viewer(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    # launch.js asks again a few times, then shows this answer itself.
    fake_kheops.token_answer = (503, "down")
    location = launched(exchange=False)

    token = client.get(token_url_of(location))

    assert token.status_code == 502
    assert token.json()["advice"] == "Wait a moment, then open the study again from KHEOPS."
    assert token.json()["retryable"] is True
    assert client.get(location).status_code == 200


def test_the_expired_page(
    client: Client, launched: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    location = launched()
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)

    page = read(client.get(location))

    assert_plain(page)
    assert (page.status, page.message, page.advice) == (
        410,
        "Your access to this study has expired.",
        "Open the study again from KHEOPS.",
    )
    assert (page.way_back, page.studies) == (RETURN_URI, [STUDY_1])


def test_the_error_page_keeps_a_way_back_only_into_the_trusted_server(
    client: Client, fake_kheops: FakeKheops, kheops_server: KheopsServer
) -> None:
    url = fake_kheops.launch_url(return_uri="https://evil.example/albums/x")
    client.get(url)

    page = read(Client().get(url))  # in another browser

    assert (page.status, page.way_back) == (409, None)


def test_the_page_of_a_server_without_the_viewer_installed(
    client: Client, launched: Callable[..., str], settings: object, tmp_path: object
) -> None:
    location = launched()
    settings.OHIF_ROOT = tmp_path  # type: ignore[attr-defined]

    page = read(client.get(location))

    assert_plain(page)
    assert (page.status, page.message, page.advice) == (
        503,
        "The OHIF viewer is not installed on this server.",
        "Tell this viewer's administrator.",
    )


@pytest.mark.parametrize("launch_id", ["a%00b", "x" * 40, "%E2%80%AE", "..%2F"])
def test_a_viewer_link_with_a_hostile_id_gets_the_plain_403_page(db: None, launch_id: str) -> None:
    page = read(Client().get(f"/launches/{launch_id}/viewer"))

    assert (page.status, page.way_back, page.studies) == (403, None, [])
