"""The launch flow against the KHEOPS stand-in and Orthanc, over real HTTP."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import requests

from launcher.models import LaunchOutcome, LaunchRecord
from tests.stack import Stack, meta_refresh_url


def kheops_launch_url(stack: Stack, studies: list[str] | None = None, username: str = "alice") -> str:
    """Click "Open in OHIF" as the KHEOPS UI does; the URL KHEOPS's page refreshes to."""
    response = stack.kheops.launch(stack.client_id, studies, username=username)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    return meta_refresh_url(response)


def token_from_config(http: requests.Session, viewer_url: str) -> str:
    page = http.get(viewer_url, timeout=10)
    assert page.status_code == 200
    [config_path] = re.findall(r'src="([^"]*app-config\.js)"', page.text)
    script = http.get(urlsplit(viewer_url)._replace(path=config_path, query="").geturl(), timeout=10).text
    return re.search(r'"Bearer ([^"]+)"', script).group(1)


def test_a_kheops_launch_opens_a_viewer_that_can_read_the_study(live_stack: Stack) -> None:
    study = live_stack.kheops.demo_study_uids[0]
    launch_url = kheops_launch_url(live_stack, [study])
    assert launch_url.startswith(f"{live_stack.viewer.url}/providers/ohif/launch?")

    http = requests.Session()
    response = http.get(launch_url, allow_redirects=False, timeout=20)

    assert response.status_code == 302, response.text
    viewer_url = live_stack.viewer.url + response.headers["Location"]
    assert parse_qs(urlsplit(viewer_url).query) == {"StudyInstanceUIDs": [study]}
    assert "code=" not in viewer_url
    token = token_from_config(http, viewer_url)
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


def test_a_launch_with_several_studies_opens_them_all(live_stack: Stack) -> None:
    studies = live_stack.kheops.demo_study_uids[:2]
    assert len(studies) == 2

    response = requests.get(kheops_launch_url(live_stack, studies), allow_redirects=False, timeout=20)

    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query == {"StudyInstanceUIDs": [",".join(studies)]}


def test_a_replayed_launch_is_refused(live_stack: Stack) -> None:
    launch_url = kheops_launch_url(live_stack)
    assert requests.get(launch_url, allow_redirects=False, timeout=20).status_code == 302

    replay = requests.get(launch_url, allow_redirects=False, timeout=20)

    assert replay.status_code == 409
    assert "already been used" in replay.text


def test_the_token_only_reaches_the_launched_study(live_stack: Stack) -> None:
    launched, other = live_stack.kheops.demo_study_uids[:2]
    http = requests.Session()
    response = http.get(kheops_launch_url(live_stack, [launched]), allow_redirects=False, timeout=20)
    token = token_from_config(http, live_stack.viewer.url + response.headers["Location"])

    qido = requests.get(
        f"{live_stack.kheops.root_url}/api/studies",
        params={"StudyInstanceUID": other},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )

    assert qido.status_code == 204


def test_an_expired_code_is_refused_by_kheops(live_stack: Stack) -> None:
    launch_url = kheops_launch_url(live_stack)
    live_stack.kheops.set_clock(700)

    response = requests.get(launch_url, allow_redirects=False, timeout=20)

    assert response.status_code == 403
    assert "may have expired" in response.text
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.CODE_REJECTED


def test_the_viewer_learns_the_real_token_lifetime(live_stack: Stack) -> None:
    live_stack.kheops.set_faults(token_lifetime_seconds=90)
    http = requests.Session()
    response = http.get(kheops_launch_url(live_stack), allow_redirects=False, timeout=20)
    viewer_url = live_stack.viewer.url + response.headers["Location"]
    page = http.get(viewer_url, timeout=10).text
    [config_path] = re.findall(r'src="([^"]*app-config\.js)"', page)

    script = http.get(live_stack.viewer.url + config_path, timeout=10).text

    expires_in = int(re.search(r'"expiresIn":(\d+)', script).group(1))
    assert 80 <= expires_in <= 90
