"""KHEOPS faults over real HTTP with the stand-in: the right page in time, then recovery.

Byte-level faults (trickled, huge or reset answers) are in tests/test_faults.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.db import connection

from launcher.models import LaunchOutcome, LaunchRecord
from tests.integration.test_launch_over_http import kheops_launch_url
from tests.stack import Stack


@pytest.mark.parametrize(
    ("faults", "status", "outcome"),
    [
        ({"token_status": 502}, 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
        ({"token_status": 503}, 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
        ({"token_status": 400}, 403, LaunchOutcome.CODE_REJECTED),
        ({"token_status": 401}, 403, LaunchOutcome.CODE_REJECTED),
        ({"token_status": 403}, 403, LaunchOutcome.CODE_REJECTED),
        ({"token_status": 404}, 502, LaunchOutcome.KHEOPS_MALFORMED),
        ({"token_delay_seconds": 5}, 504, LaunchOutcome.KHEOPS_TIMEOUT),
        ({"token_garbage": True}, 502, LaunchOutcome.KHEOPS_MALFORMED),
        ({"discovery_down": True}, 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
        ({"discovery_garbage": True}, 502, LaunchOutcome.KHEOPS_MALFORMED),
    ],
    ids=[
        "token-502", "token-503", "token-400", "token-401", "token-403", "token-404", "token-slow",
        "token-garbage", "discovery-down", "discovery-garbage",
    ],
)
def test_a_fault_then_the_same_link_works_once_kheops_is_back(
    live_stack: Stack, settings, faults: dict, status: int, outcome: LaunchOutcome
) -> None:
    settings.KHEOPS_HTTP_TIMEOUT = 1.0
    launch_url = kheops_launch_url(live_stack)
    live_stack.kheops.set_faults(**faults)

    started = time.monotonic()
    response = requests.get(launch_url, allow_redirects=False, timeout=20)
    elapsed = time.monotonic() - started

    assert response.status_code == status
    assert "Cannot open the viewer" in response.text
    assert f'href="{live_stack.kheops.root_url}/albums/' in response.text
    assert elapsed < settings.KHEOPS_HTTP_TIMEOUT + 1
    live_stack.kheops.reset()
    # The code was not spent by the failed exchange, and KHEOPS's codes live 600 s.
    retry = requests.get(launch_url, allow_redirects=False, timeout=20)
    assert retry.status_code == 302
    assert list(LaunchRecord.objects.order_by("id").values_list("outcome", flat=True)) == [
        outcome, LaunchOutcome.SUCCESS,
    ]


def test_a_userinfo_fault_still_opens_the_viewer(live_stack: Stack) -> None:
    live_stack.kheops.set_faults(userinfo_status=500)

    response = requests.get(kheops_launch_url(live_stack), allow_redirects=False, timeout=20)

    assert response.status_code == 302
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert record.user_sub == ""


def test_discovery_down_then_back_without_waiting_for_a_cache(live_stack: Stack) -> None:
    live_stack.kheops.set_faults(discovery_down=True)
    assert requests.get(kheops_launch_url(live_stack), allow_redirects=False, timeout=20).status_code == 502

    live_stack.kheops.reset()

    assert requests.get(kheops_launch_url(live_stack), allow_redirects=False, timeout=20).status_code == 302


def test_concurrent_uses_of_one_launch_link_open_one_viewer(live_stack: Stack) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("concurrent requests need a database server (the PostgreSQL run covers this)")
    launch_url = kheops_launch_url(live_stack)

    def use(_: int) -> int:
        return requests.get(launch_url, allow_redirects=False, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(use, range(6)))

    assert statuses == [302, 409, 409, 409, 409, 409]
    outcomes = sorted(LaunchRecord.objects.values_list("outcome", flat=True))
    assert outcomes == sorted([LaunchOutcome.SUCCESS] + [LaunchOutcome.REPLAY] * 5)
