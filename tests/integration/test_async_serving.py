"""No request waits on KHEOPS in a worker: bursts, a stalling KHEOPS, and a graceful stop.

KHEOPS fetches our configuration document twice and our JWKS once during every token
exchange, from the server that is waiting for its answer. These tests run our app as
production does (uvicorn, kheops_ohif.asgi) against the KHEOPS stand-in, over real HTTP.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings as django_settings

from launcher import services, serving
from launcher.models import LaunchOutcome, LaunchRecord, Provider
from launcher.serving import REFRESH_SECONDS
from tests.fakes import token_url_of
from tests.stack import Stack, meta_refresh_url, start_server_on_test_database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _only_our_registration_left(live_stack: Stack) -> Iterator[None]:
    # The registrations these tests add would show as more "Open in …" buttons on the album
    # page that later browser tests click.
    yield
    album = f"/albums/{live_stack.kheops.demo_album_id}/reportproviders"
    owner = {"Authorization": f"Bearer {live_stack.kheops.user_token('alice')}"}
    for provider in live_stack.kheops.http.get(live_stack.kheops.api(album), headers=owner).json():
        if provider["client_id"] != live_stack.client_id:
            removed = live_stack.kheops.http.delete(
                live_stack.kheops.api(f"{album}/{provider['client_id']}"), headers=owner
            )
            assert removed.status_code in (200, 204), removed.text


def distinct_launch_urls(stack: Stack, count: int, *, config_url: str | None = None) -> list[str]:
    """`count` launch URLs with distinct codes, as KHEOPS's page refreshes to them.

    KHEOPS's codes carry no nonce: the same user, studies and client_id within one second
    give the same code. Users, study orders and registrations (client_ids) make them differ.
    """
    studies = stack.kheops.demo_study_uids[:3]
    orders = [list(order) for size in (1, 2, 3) for order in itertools.permutations(studies, size)]
    users = ("alice", "bob")
    client_ids = [stack.client_id] if config_url is None else []
    while len(client_ids) * len(users) * len(orders) < count:
        response = stack.kheops.register_provider(
            config_url or stack.config_url, f"OHIF {len(client_ids)}"
        )
        assert response.status_code == 201, response.text
        client_ids.append(response.json()["client_id"])
    tokens = {user: stack.kheops.user_token(user) for user in users}
    urls = []
    for client_id, user, order in itertools.islice(
        itertools.product(client_ids, users, orders), count
    ):
        response = stack.kheops.launch(client_id, order, access_token=tokens[user])
        assert response.status_code == 200, response.text
        urls.append(meta_refresh_url(response))
    return urls


def click(launch_url: str, base_url: str | None = None) -> tuple[int, int]:
    """A browser's launch and its viewer's token request: the two statuses."""
    with requests.Session() as browser:
        browser.trust_env = False
        launch = browser.get(launch_url, allow_redirects=False, timeout=60)
        if launch.status_code != 302:
            return launch.status_code, 0
        base = base_url or f"{urlsplit(launch_url).scheme}://{urlsplit(launch_url).netloc}"
        token = browser.get(base + token_url_of(launch.headers["Location"]), timeout=60)
        return launch.status_code, token.status_code


def test_a_burst_larger_than_every_pool_completes(live_stack: Stack, settings: Any) -> None:
    # Fewer calls in flight to KHEOPS than launches, and (PostgreSQL) fewer pooled database
    # connections: the rest must wait their turn without failing or holding anything.
    settings.KHEOPS_MAX_CALLS_IN_FLIGHT = 4
    pool = django_settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {})
    burst = 64
    assert burst > max(settings.KHEOPS_MAX_CALLS_IN_FLIGHT, pool.get("max_size", 0))
    urls = distinct_launch_urls(live_stack, burst)

    with ThreadPoolExecutor(max_workers=burst) as clients:
        statuses = list(clients.map(click, urls))

    assert statuses == [(302, 200)] * burst
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.SUCCESS).count() == burst


def test_the_documents_are_answered_while_every_exchange_waits_on_a_stalling_kheops(
    live_stack: Stack, settings: Any
) -> None:
    settings.KHEOPS_HTTP_TIMEOUT = 20  # stalled, not failed
    waiting = 64
    urls = distinct_launch_urls(live_stack, waiting)
    live_stack.kheops.set_faults(token_delay_seconds=3)
    documents = [f"{live_stack.viewer.url}/jwks.json", live_stack.config_url]

    with ThreadPoolExecutor(max_workers=waiting) as clients:
        exchanges = [clients.submit(click, url) for url in urls]
        # Every launch redirected, every token request waiting on KHEOPS (or for its turn).
        _wait_for(lambda: services.exchanges_in_flight() == waiting, seconds=30)
        time.sleep(0.3)  # past their signatures, into the wait
        assert not any(exchange.done() for exchange in exchanges)
        with requests.Session() as kheops_fetching:
            kheops_fetching.trust_env = False
            answers = [kheops_fetching.get(url, timeout=5).status_code for url in documents * 10]
        still_waiting = sum(not exchange.done() for exchange in exchanges)
        statuses = [exchange.result() for exchange in exchanges]

    # All twenty answered before any exchange ended: none waited behind the 64 waiting on
    # KHEOPS (how fast they answer is bench/'s business, not a test's).
    assert answers == [200] * 20
    assert still_waiting == waiting
    assert statuses == [(302, 200)] * waiting


def test_a_graceful_stop_finishes_the_exchanges_in_flight(
    live_stack: Stack, tmp_path: Path
) -> None:
    # The production server (uvicorn) in its own process, on the test database, registered
    # in the stand-in under its own configuration URL.
    server = start_server_on_test_database(tmp_path / "server.log")
    url = server.url
    try:
        server.wait_until_up("/healthz")
        [launch_url] = distinct_launch_urls(
            live_stack, 1, config_url=f"{url}/providers/ohif/configuration"
        )
        live_stack.kheops.set_faults(token_delay_seconds=4)
        with ThreadPoolExecutor(max_workers=1) as browser:
            exchange = browser.submit(click, launch_url, url)
            # The launch has answered (its line in the access log); the token request follows
            # at once and waits on KHEOPS, whatever the machine's load delayed until now.
            _wait_for(lambda: '" 302' in server.log.read_text(), seconds=30)
            time.sleep(0.8)
            assert not exchange.done()
            server.process.send_signal(signal.SIGTERM)
            # Still serving while the exchange waits (KHEOPS calls back), but not ready for more.
            time.sleep(0.3)
            readiness = requests.get(f"{url}/readyz", timeout=5)
            statuses = exchange.result(timeout=30)
        exit_code = server.process.wait(timeout=30)
    finally:
        server.stop()

    log = server.log.read_text()
    assert statuses == (302, 200), log[-2000:]
    assert readiness.status_code == 503
    assert "stopping" in readiness.json()["checks"]["server"]
    # uvicorn stops gracefully, then lets the signal end the process as it would have.
    assert exit_code == -signal.SIGTERM
    assert "Application shutdown complete" in log
    assert "stopping: 1 code exchange(s) in flight first" in log  # the signal came mid-exchange
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.SUCCESS


def _wait_for(condition: Any, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_a_provider_saved_here_is_answered_at_once_not_at_the_next_refresh(
    live_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No refresh by the clock from now on: only the save can tell the documents. The wait
    # begun before (REFRESH_SECONDS) ends first, then the next one lasts an hour.
    monkeypatch.setattr(serving, "REFRESH_SECONDS", 3600.0)
    time.sleep(REFRESH_SECONDS + 0.5)
    assert requests.get(live_stack.config_url, timeout=5).json()["client_name"] == "OHIF Viewer"
    provider = Provider.objects.get(slug="ohif")
    provider.client_name = "Viewer of Hôpital X"
    seen: list[str] = []

    def renamed() -> bool:
        seen.append(requests.get(live_stack.config_url, timeout=5).json()["client_name"])
        return seen[-1] == "Viewer of Hôpital X"

    try:
        provider.save()  # committed (transactional test): this process prepares them again
        # Seconds to spare: a hang detector, not a speed claim.
        _wait_for(renamed, seconds=10)
    finally:
        monkeypatch.undo()
        live_stack.viewer.application.documents.changed()  # back to refreshing by the clock

    assert seen[-1] == "Viewer of Hôpital X"
