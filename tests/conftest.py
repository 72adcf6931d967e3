"""Shared fixtures. The KHEOPS side is faked at the HTTP boundary (tests/fakes.py)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import responses
import respx
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client

from launcher import keys, kheops, services
from launcher.models import KheopsServer, Provider
from tests.fakes import ROOT, DicomwebOverHttp, FakeKheops, token_url_of
from tests.stack import Stack, start_stack

# The tests' own Redis database (the machine's Redis; each test keys under a prefix of its own).
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def with_redis(settings: Any) -> Iterator[redis.Redis]:
    """Redis as the cache (and the session store), as with REDIS_URL set in production."""
    prefix = f"kheops-ohif-test-{secrets.token_hex(4)}"
    settings.REDIS_URL = REDIS_URL
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": prefix,
        }
    }
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    server = redis.Redis.from_url(REDIS_URL)
    yield server
    for key in server.scan_iter(f"{prefix}*"):
        server.delete(key)
    server.close()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The live server (tests/stack.py) serves requests in threads of their own, each with its
    # own connection: an SQLite test database must then be a file, not in memory.
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(
            tmp_path_factory.mktemp("db") / "test.sqlite3"
        )


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    # The discovery cache and the loaded signing key outlive a test's DB transaction.
    cache.clear()
    keys.forget_cached_key()
    services.forget_lookups()
    yield
    cache.clear()
    keys.forget_cached_key()
    services.forget_lookups()


@pytest.fixture(autouse=True)
def _no_rate_limits(settings: Any) -> None:
    # Tests launch many times from 127.0.0.1: the limits are off unless a test turns them
    # on (tests/test_rate_limits.py). The live stack's server runs in this process, with
    # these settings.
    settings.LAUNCH_RATE_LIMIT = None
    settings.TOKEN_RATE_LIMIT = None


@pytest.fixture
def admin_client(db: None) -> Client:
    """A browser signed in to the admin as a superuser (replaces pytest-django's own)."""
    client = Client()
    client.force_login(
        User.objects.create_superuser("admin", "admin@example.org", "pw-for-tests-only")
    )
    return client


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
def kheops_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    # Our KHEOPS client: any request to a URL not routed here fails, whether it went
    # through httpx (respx) or, for DICOMweb, over HTTP to tests.fakes.DicomwebOverHttp.
    with respx.mock(assert_all_called=False) as router:
        dicomweb = DicomwebOverHttp(router)
        monkeypatch.setattr(kheops, "dicomweb_connector", dicomweb.connector)
        yield router
    services.forget_ended_loops_clients()
    assert not dicomweb.failures, dicomweb.failures


@pytest.fixture
def fake_kheops(
    kheops_http: respx.MockRouter, kheops_server: KheopsServer, provider: Provider
) -> FakeKheops:
    fake = FakeKheops(router=kheops_http, provider=provider)
    fake.install()
    return fake


@pytest.fixture
def launched(client: Client, fake_kheops: FakeKheops) -> Callable[..., str]:
    """Launch in `client`'s browser and, as its viewer page does, fetch the token (the code
    exchange; `exchange=False` leaves the grant pending). Returns the viewer URL."""

    def run(*, exchange: bool = True, **kwargs: Any) -> str:
        response = client.get(fake_kheops.launch_url(**kwargs))
        assert response.status_code == 302, response.content[:500]
        if exchange:
            token = client.get(token_url_of(response["Location"]))
            assert token.status_code == 200, token.content[:500]
        return response["Location"]

    return run


@pytest.fixture(scope="session")
def stack(django_db_setup: None, django_db_blocker: Any) -> Iterator[Stack]:
    """Orthanc + the KHEOPS stand-in + our app over real HTTP (see tests/stack.py)."""
    with django_db_blocker.unblock():
        running = start_stack()
    yield running
    running.stop()


@pytest.fixture
def live_stack(stack: Stack, transactional_db: None, settings: Any) -> Iterator[Stack]:
    """The stack, with our app configured for it: the stand-in trusted and our provider
    registered in its demo album (as a KHEOPS album admin would, by configuration URL)."""
    settings.PUBLIC_BASE_URL = stack.viewer.url
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    # transactional_db empties the tables after each test, data migrations included.
    Provider.objects.get_or_create(
        slug="ohif", defaults={"client_name": "OHIF Viewer", "mode": "viewer", "is_default": True}
    )
    KheopsServer.objects.get_or_create(
        root_url=stack.kheops.root_url, defaults={"name": "KHEOPS stand-in"}
    )
    stack.viewer.refresh_documents()  # the URLs above, the tables just emptied
    stack.kheops.reset()
    if not stack.client_id:
        response = stack.kheops.register_provider(stack.config_url, "OHIF Viewer")
        assert response.status_code == 201, response.text
        stack.client_id = response.json()["client_id"]
    yield stack
    stack.kheops.reset()


# The leak check watches every test (tests/leakcheck.py).
from tests.leakcheck import (  # noqa: E402
    _leakcheck_installed,  # noqa: F401
    pytest_runtest_call,  # noqa: F401
    pytest_sessionfinish,  # noqa: F401
)
