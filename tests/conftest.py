"""Shared fixtures. The KHEOPS side is faked at the HTTP boundary (tests/fakes.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from django.core.cache import cache
from django.test import Client

from launcher import keys
from launcher.models import KheopsServer, Provider
from tests.fakes import ROOT, FakeKheops


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    # The discovery cache and the loaded signing key outlive a test's DB transaction.
    cache.clear()
    keys.forget_cached_key()
    yield
    cache.clear()
    keys.forget_cached_key()


@pytest.fixture
def kheops_server(db: None) -> KheopsServer:
    return KheopsServer.objects.create(name="KHEOPS test", root_url=ROOT)


@pytest.fixture
def provider(db: None) -> Provider:
    return Provider.objects.get(slug="ohif")


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    # Any request to a URL not registered here fails: no test can reach the network.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def fake_kheops(
    rsps: responses.RequestsMock, kheops_server: KheopsServer, provider: Provider
) -> FakeKheops:
    fake = FakeKheops(rsps=rsps, provider=provider)
    fake.install()
    return fake


@pytest.fixture
def launched(client: Client, fake_kheops: FakeKheops) -> Callable[..., str]:
    """Launch in `client`'s session; returns the viewer URL we redirected to."""

    def run(**kwargs: Any) -> str:
        response = client.get(fake_kheops.launch_url(**kwargs))
        assert response.status_code == 302, response.content[:500]
        return response["Location"]

    return run
