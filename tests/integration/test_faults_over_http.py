"""KHEOPS faults over real HTTP with the stand-in: the right answer, then recovery.

The launch needs only the discovery document (for the DICOMweb root): its faults are the
launch's error page. The token endpoint is called by the viewer's token request, after the
launch's 302: its faults are that request's status and JSON error, then the viewer page's
error page. Byte-level faults (trickled, huge or reset answers) are in tests/test_faults.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from launcher import services
from launcher.models import GrantState, LaunchGrant, LaunchOutcome, LaunchRecord
from tests.integration.test_launch_over_http import ask_token, kheops_launch_url, launch
from tests.stack import Stack


@pytest.mark.parametrize(
    ("faults", "status", "outcome", "message"),
    [
        ({"token_status": 502}, 502, LaunchOutcome.KHEOPS_UNAVAILABLE, "KHEOPS is unavailable"),
        ({"token_status": 503}, 502, LaunchOutcome.KHEOPS_UNAVAILABLE, "KHEOPS is unavailable"),
        ({"token_status": 400}, 403, LaunchOutcome.CODE_REJECTED, "may have expired"),
        ({"token_status": 401}, 403, LaunchOutcome.CODE_REJECTED, "may have expired"),
        ({"token_status": 403}, 403, LaunchOutcome.CODE_REJECTED, "may have expired"),
        ({"token_status": 404}, 502, LaunchOutcome.KHEOPS_MALFORMED, "does not understand"),
        ({"token_delay_seconds": 5}, 504, LaunchOutcome.KHEOPS_TIMEOUT, "did not answer in time"),
        ({"token_garbage": True}, 502, LaunchOutcome.KHEOPS_MALFORMED, "does not understand"),
    ],
    ids=[
        "token-502",
        "token-503",
        "token-400",
        "token-401",
        "token-403",
        "token-404",
        "token-slow",
        "token-garbage",
    ],
)
def test_a_token_fault_then_the_launch_gets_its_token_once_kheops_is_back(
    live_stack: Stack, settings, faults: dict, status: int, outcome: LaunchOutcome, message: str
) -> None:
    settings.KHEOPS_HTTP_TIMEOUT = 1.0
    launch_url = kheops_launch_url(live_stack)
    live_stack.kheops.set_faults(**faults)
    http = requests.Session()

    viewer_url = launch(http, live_stack, launch_url)
    # The launch does not call the token endpoint: the viewer's token request does.
    assert LaunchGrant.objects.get().state == GrantState.PENDING
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.PENDING
    answer = ask_token(http, viewer_url)
    page = http.get(viewer_url, timeout=10)

    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert "no-store" in answer.headers["Cache-Control"]
    assert message in answer.json()["error"]
    assert answer.json()["returnUri"].startswith(f"{live_stack.kheops.root_url}/albums/")
    assert "authorization" not in answer.json()
    record = LaunchRecord.objects.get()
    # token-slow: our timeout (1 s) ended the wait, not KHEOPS's answer after 5 s (a success).
    assert record.outcome == outcome
    assert record.failure_detail
    # Nobody else may open the link, whatever happened (it sits in histories and logs).
    assert requests.get(launch_url, allow_redirects=False, timeout=20).status_code == 409
    if outcome in services.TRANSIENT:
        # KHEOPS slow or away: the viewer waits and its launch.js asks again.
        assert answer.json()["retryable"] is True
        assert page.status_code == 200
        assert LaunchGrant.objects.get().state == GrantState.PENDING
        live_stack.kheops.reset()
        assert ask_token(http, viewer_url).status_code == 200
        final = LaunchOutcome.SUCCESS
    else:
        assert answer.json()["retryable"] is False
        assert page.status_code == status
        assert "Cannot open the viewer" in page.text
        assert message in page.text
        assert f'href="{live_stack.kheops.root_url}/albums/' in page.text
        assert LaunchGrant.objects.get().state == GrantState.FAILED
        live_stack.kheops.reset()
        # The failure is kept for this viewer: asking again does not exchange again.
        assert ask_token(http, viewer_url).status_code == status
        final = outcome
    assert list(LaunchRecord.objects.order_by("id").values_list("outcome", flat=True)) == [
        final,
        LaunchOutcome.REPLAY,
    ]


@pytest.mark.parametrize(
    ("faults", "outcome"),
    [
        ({"discovery_down": True}, LaunchOutcome.KHEOPS_UNAVAILABLE),
        ({"discovery_garbage": True}, LaunchOutcome.KHEOPS_MALFORMED),
    ],
    ids=["discovery-down", "discovery-garbage"],
)
def test_a_discovery_fault_then_the_same_link_works_once_kheops_is_back(
    live_stack: Stack, settings, faults: dict, outcome: LaunchOutcome
) -> None:
    settings.KHEOPS_HTTP_TIMEOUT = 1.0
    launch_url = kheops_launch_url(live_stack)
    live_stack.kheops.set_faults(**faults)

    response = requests.get(launch_url, allow_redirects=False, timeout=20)

    # The launch itself needs the discovery document (the viewer's DICOMweb root).
    assert response.status_code == 502
    assert "Cannot open the viewer" in response.text
    assert f'href="{live_stack.kheops.root_url}/albums/' in response.text
    assert LaunchGrant.objects.count() == 0
    live_stack.kheops.reset()
    http = requests.Session()
    viewer_url = launch(http, live_stack, launch_url)
    assert ask_token(http, viewer_url).status_code == 200
    assert list(LaunchRecord.objects.order_by("id").values_list("outcome", flat=True)) == [
        outcome,
        LaunchOutcome.SUCCESS,
    ]


def test_a_userinfo_fault_still_opens_the_viewer(live_stack: Stack) -> None:
    live_stack.kheops.set_faults(userinfo_status=500)
    http = requests.Session()

    answer = ask_token(http, launch(http, live_stack, kheops_launch_url(live_stack)))

    assert answer.status_code == 200
    assert answer.json()["authorization"].startswith("Bearer ")
    assert answer.json()["userName"] == ""
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert record.user_sub == ""


def test_discovery_down_then_back_without_waiting_for_a_cache(live_stack: Stack) -> None:
    live_stack.kheops.set_faults(discovery_down=True)
    assert (
        requests.get(kheops_launch_url(live_stack), allow_redirects=False, timeout=20).status_code
        == 502
    )

    live_stack.kheops.reset()

    http = requests.Session()
    assert (
        ask_token(http, launch(http, live_stack, kheops_launch_url(live_stack))).status_code == 200
    )


def test_concurrent_uses_of_one_launch_link_open_one_viewer(live_stack: Stack) -> None:
    launch_url = kheops_launch_url(live_stack)

    def use(_: int) -> tuple[int, requests.Session, str]:
        http = requests.Session()
        response = http.get(launch_url, allow_redirects=False, timeout=30)
        return response.status_code, http, response.headers.get("Location", "")

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(use, range(6)))

    assert sorted(status for status, _, _ in results) == [302, 409, 409, 409, 409, 409]
    outcomes = sorted(LaunchRecord.objects.values_list("outcome", flat=True))
    assert outcomes == sorted([LaunchOutcome.PENDING] + [LaunchOutcome.REPLAY] * 5)
    [(http, location)] = [(http, location) for status, http, location in results if status == 302]
    assert ask_token(http, live_stack.viewer.url + location).status_code == 200
    outcomes = sorted(LaunchRecord.objects.values_list("outcome", flat=True))
    assert outcomes == sorted([LaunchOutcome.SUCCESS] + [LaunchOutcome.REPLAY] * 5)
