"""The launch flow against the KHEOPS stand-in and Orthanc, over real HTTP.

A launch answers 302 to the viewer at once; the viewer's token request (same browser: its
per-launch cookie) exchanges the code with KHEOPS.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from launcher.models import GrantState, LaunchGrant, LaunchOutcome, LaunchRecord
from tests.fakes import token_url_of
from tests.stack import Stack, meta_refresh_url


def kheops_launch_url(
    stack: Stack, studies: list[str] | None = None, username: str = "alice"
) -> str:
    """Click "Open in OHIF" as the KHEOPS UI does; the URL KHEOPS's page refreshes to."""
    response = stack.kheops.launch(stack.client_id, studies, username=username)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    return meta_refresh_url(response)


def launch(http: requests.Session, stack: Stack, launch_url: str) -> str:
    """Follow the launch URL in this browser; the absolute viewer URL we redirect to."""
    response = http.get(launch_url, allow_redirects=False, timeout=20)
    assert response.status_code == 302, response.text
    return stack.viewer.url + response.headers["Location"]


def ask_token(http: requests.Session, viewer_url: str) -> requests.Response:
    """The viewer's token request (what launch.js fetches), with this browser's cookies."""
    return http.get(
        urlsplit(viewer_url)._replace(path=token_url_of(viewer_url), query="").geturl(), timeout=20
    )


def token_from_viewer(http: requests.Session, viewer_url: str) -> str:
    """Load the viewer as a browser does: its page (with the launch's data), then the token
    request its launch.js makes."""
    page = http.get(viewer_url, timeout=10)
    assert page.status_code == 200
    [data] = re.findall(
        r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>', page.text, re.S
    )
    assert json.loads(data)["tokenUrl"] == token_url_of(viewer_url)
    answer = ask_token(http, viewer_url)
    assert answer.status_code == 200, answer.text
    assert "no-store" in answer.headers["Cache-Control"]
    token = answer.json()["authorization"].removeprefix("Bearer ")
    assert token not in page.text
    return token


def test_a_kheops_launch_opens_a_viewer_that_can_read_the_study(live_stack: Stack) -> None:
    study = live_stack.kheops.demo_study_uids[0]
    launch_url = kheops_launch_url(live_stack, [study])
    assert launch_url.startswith(f"{live_stack.viewer.url}/providers/ohif/launch?")

    http = requests.Session()
    viewer_url = launch(http, live_stack, launch_url)

    assert parse_qs(urlsplit(viewer_url).query) == {"StudyInstanceUIDs": [study], "lng": ["en"]}
    assert "code=" not in viewer_url
    # Redirected before the exchange: the audit row waits for the viewer's token request.
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.PENDING
    token = token_from_viewer(http, viewer_url)
    assert token not in viewer_url
    qido = requests.get(
        f"{live_stack.kheops.root_url}/api/studies",
        params={"StudyInstanceUID": study},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=10,
    )
    assert qido.status_code == 200
    assert qido.json()[0]["0020000D"]["Value"] == [study]
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert record.user_name == "Alice Admin"
    assert record.album_id == live_stack.kheops.demo_album_id
    assert record.client_id == live_stack.client_id
    assert token not in repr(LaunchRecord.objects.values().get())
    assert token not in repr(LaunchGrant.objects.values().get())


def test_the_token_request_reports_its_kheops_round_trips(live_stack: Stack) -> None:
    http = requests.Session()
    viewer_url = launch(http, live_stack, kheops_launch_url(live_stack))

    answer = ask_token(http, viewer_url)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["userName"] == "Alice Admin"
    timing = answer.headers["Server-Timing"]
    assert "token;dur=" in timing and "userinfo;dur=" in timing and "app;dur=" in timing


def grant_cookies(http: requests.Session) -> list[Any]:
    """The jar's per-launch viewer cookies (not the launcher key kept on the launch path)."""
    return [c for c in http.cookies if c.name.startswith("kheops_ohif_grant_")]


def test_the_launcher_key_goes_to_the_launch_path_only(live_stack: Stack) -> None:
    http = requests.Session()
    launch(http, live_stack, kheops_launch_url(live_stack))

    [launcher] = [c for c in http.cookies if c.name == "kheops_ohif_launcher"]

    assert launcher.path == "/providers/ohif/launch"
    assert launcher.has_nonstandard_attr("HttpOnly")


def test_only_the_launching_browser_gets_the_token(live_stack: Stack) -> None:
    http = requests.Session()
    viewer_url = launch(http, live_stack, kheops_launch_url(live_stack))
    [cookie] = grant_cookies(http)
    # A real cookie jar: the per-launch cookie goes to this launch's paths only.
    assert cookie.path == urlsplit(viewer_url).path.rsplit("/", 1)[0] + "/"

    stranger = ask_token(requests.Session(), viewer_url)

    assert stranger.status_code == 403
    assert "another browser session" in stranger.json()["error"]
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.PENDING
    assert ask_token(http, viewer_url).status_code == 200


def test_a_reload_within_the_tokens_lifetime_still_finds_the_viewer(live_stack: Stack) -> None:
    http = requests.Session()
    viewer_url = launch(http, live_stack, kheops_launch_url(live_stack))
    [cookie] = grant_cookies(http)
    # The launch's cookie lasts as long as the code can be exchanged (10 minutes)...
    assert cookie.expires is not None and cookie.expires <= time.time() + 700

    answer = ask_token(http, viewer_url)

    # ... and, once exchanged, as long as the token: a reload after 10 minutes still works.
    [cookie] = grant_cookies(http)
    assert cookie.expires >= time.time() + answer.json()["expiresIn"] - 5
    assert http.get(viewer_url, timeout=10).status_code == 200


def test_a_launch_with_several_studies_opens_them_all(live_stack: Stack) -> None:
    studies = live_stack.kheops.demo_study_uids[:2]
    assert len(studies) == 2
    http = requests.Session()

    viewer_url = launch(http, live_stack, kheops_launch_url(live_stack, studies))

    query = parse_qs(urlsplit(viewer_url).query)
    assert query == {"StudyInstanceUIDs": [",".join(studies)], "lng": ["en"]}
    token = token_from_viewer(http, viewer_url)
    for study in studies:
        qido = requests.get(
            f"{live_stack.kheops.root_url}/api/studies",
            params={"StudyInstanceUID": study},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert qido.status_code == 200
        assert [found["0020000D"]["Value"] for found in qido.json()] == [[study]]


def test_a_replayed_launch_is_refused(live_stack: Stack) -> None:
    launch_url = kheops_launch_url(live_stack)
    http = requests.Session()
    viewer_url = launch(http, live_stack, launch_url)

    replay = requests.get(launch_url, allow_redirects=False, timeout=20)

    assert replay.status_code == 409
    assert "already been used" in replay.text
    # Also once the code has been exchanged.
    assert ask_token(http, viewer_url).status_code == 200
    assert requests.get(launch_url, allow_redirects=False, timeout=20).status_code == 409
    outcomes = sorted(LaunchRecord.objects.values_list("outcome", flat=True))
    assert outcomes == sorted([LaunchOutcome.SUCCESS, LaunchOutcome.REPLAY, LaunchOutcome.REPLAY])


def test_the_token_only_reaches_the_launched_study(live_stack: Stack) -> None:
    launched, other = live_stack.kheops.demo_study_uids[:2]
    http = requests.Session()
    token = token_from_viewer(
        http, launch(http, live_stack, kheops_launch_url(live_stack, [launched]))
    )

    def qido(study: str) -> requests.Response:
        return requests.get(
            f"{live_stack.kheops.root_url}/api/studies",
            params={"StudyInstanceUID": study},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    assert qido(other).status_code == 204
    reached = qido(launched)
    assert reached.status_code == 200
    assert [found["0020000D"]["Value"] for found in reached.json()] == [[launched]]


def test_an_expired_code_is_refused_by_kheops(live_stack: Stack) -> None:
    launch_url = kheops_launch_url(live_stack)
    live_stack.kheops.set_clock(700)
    http = requests.Session()

    # We cannot know the code expired: KHEOPS says so when the viewer exchanges it.
    viewer_url = launch(http, live_stack, launch_url)
    answer = ask_token(http, viewer_url)
    page = http.get(viewer_url, timeout=10)

    assert answer.status_code == 403
    assert "may have expired" in answer.json()["error"]
    assert answer.json()["returnUri"].startswith(f"{live_stack.kheops.root_url}/albums/")
    assert "authorization" not in answer.json()
    assert page.status_code == 403
    assert "may have expired" in page.text
    assert f'href="{live_stack.kheops.root_url}/albums/' in page.text
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.CODE_REJECTED
    assert LaunchGrant.objects.get().state == GrantState.FAILED


def test_the_viewer_learns_the_real_token_lifetime(live_stack: Stack) -> None:
    live_stack.kheops.set_faults(token_lifetime_seconds=90)
    http = requests.Session()
    viewer_url = launch(http, live_stack, kheops_launch_url(live_stack))

    answer = ask_token(http, viewer_url)

    assert answer.status_code == 200
    assert 80 <= answer.json()["expiresIn"] <= 90
    # A reload gets the same token and what is left of its lifetime.
    again = ask_token(http, viewer_url).json()
    assert again["authorization"] == answer.json()["authorization"]
    assert 80 <= again["expiresIn"] <= answer.json()["expiresIn"]


def test_concurrent_token_requests_of_one_viewer_agree(live_stack: Stack) -> None:
    http = requests.Session()
    viewer_url = launch(http, live_stack, kheops_launch_url(live_stack))

    def ask(_: int) -> tuple[int, str]:
        # A reload while the first exchange runs: the same browser, the same cookie.
        tab = requests.Session()
        tab.cookies.update(http.cookies)
        answer = ask_token(tab, viewer_url)
        return answer.status_code, answer.json().get("authorization", "")

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(ask, range(4)))

    assert [status for status, _ in answers] == [200] * 4
    assert len({authorization for _, authorization in answers}) == 1
    assert ask_token(http, viewer_url).json()["authorization"] == answers[0][1]
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert LaunchGrant.objects.get().state == GrantState.READY


def test_a_forged_x_forwarded_for_from_loopback_does_not_become_the_audits_address(
    live_stack: Stack,
) -> None:
    # uvicorn, left to itself, takes the client's address from X-Forwarded-For for any
    # request from 127.0.0.1: our servers run it with its proxy headers off.
    response = requests.get(
        kheops_launch_url(live_stack),
        headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"},
        allow_redirects=False,
        timeout=20,
    )

    assert response.status_code == 302
    assert LaunchRecord.objects.get().remote_addr == "127.0.0.1"
