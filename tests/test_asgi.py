"""The ASGI application (launcher.serving) in-process, and the KHEOPS client's rules.

The documents KHEOPS fetches are answered from memory exactly as Django would answer them;
everything else goes to Django.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
import respx
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.core.handlers.asgi import ASGIHandler
from django.utils import timezone

from launcher import blocking, kheops, services
from launcher.logfilters import redact
from launcher.models import KheopsServer, Provider, UsedCode
from launcher.serving import Application, Housekeeping
from tests.asgi_calls import transaction_kept
from tests.fakes import ROOT, FakeKheops, discovery_document

T = TypeVar("T")
DOCUMENTS = [
    "/jwks.json",
    "/.well-known/kheops-report-configuration",
    "/providers/ohif/configuration",
]


@pytest.fixture(autouse=True)
def _keep_the_test_transaction() -> Iterator[None]:
    # As Django's test client does: a request's end must not close the test's connection
    # (and its transaction) in the thread that runs it.
    with transaction_kept():
        yield


def prepared_application() -> Application:
    application = Application(ASGIHandler())  # Django's middleware reads the settings now
    async_to_sync(application.documents.start)(application.django)
    async_to_sync(application.documents.stop)()  # no background refresh in these tests
    return application


@pytest.fixture
def app(db: None) -> Application:
    return prepared_application()


def get(
    app: Application,
    path: str,
    *,
    method: str = "GET",
    host: str = "127.0.0.1:8000",
    **headers: str,
) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.request(method, path, headers=headers)

    return async_to_sync(call)()


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body; less the request's own id, which every answer names."""
    headers = dict(response.headers)
    assert len(headers.pop("x-request-id")) == 32
    return response.status_code, headers, response.content


@pytest.mark.parametrize("path", DOCUMENTS)
def test_a_document_from_memory_is_what_django_answers(
    app: Application, path: str, django_db_blocker: Any
) -> None:
    from_django = get(Application(ASGIHandler()), path)  # no documents prepared: Django answers

    with django_db_blocker.block():  # from memory: no database
        from_memory = get(app, path)

    assert from_memory.status_code == 200
    assert comparable(from_memory) == comparable(from_django)
    assert from_memory.headers["Cache-Control"] == "public, max-age=60"
    assert from_memory.headers["Content-Type"] == "application/json"
    assert from_memory.headers["X-Content-Type-Options"] == "nosniff"
    assert "content-security-policy" in from_memory.headers


def test_head_answers_the_headers_alone(app: Application) -> None:
    response = get(app, "/jwks.json", method="HEAD")

    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["Content-Length"]) == len(get(app, "/jwks.json").content)


def test_what_is_not_a_plain_document_request_goes_to_django(
    app: Application, django_db_blocker: Any
) -> None:
    with django_db_blocker.block():
        # Django would need the database for none of these: proof they are not answered here
        # is that they answer what Django answers.
        assert get(app, "/jwks.json", method="POST").status_code == 403  # Django's CSRF check
        assert get(app, "/jwks.json", host="evil.example").status_code == 400
    assert get(app, "/providers/nope/configuration").status_code == 404


def test_without_https_django_redirects_when_https_is_required(db: None, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    app = prepared_application()

    assert get(app, "/jwks.json").status_code == 301
    assert get(app, "/jwks.json", **{"X-Forwarded-Proto": "https"}).status_code == 200


def test_a_provider_change_is_answered_after_the_next_refresh(app: Application) -> None:
    Provider.objects.filter(slug="ohif").update(client_name="Viewer of Hôpital X")
    assert get(app, "/providers/ohif/configuration").json()["client_name"] == "OHIF Viewer"

    async_to_sync(app.documents.refresh)()

    assert get(app, "/providers/ohif/configuration").json()["client_name"] == "Viewer of Hôpital X"
    Provider.objects.filter(slug="ohif").update(enabled=False)
    async_to_sync(app.documents.refresh)()
    assert get(app, "/providers/ohif/configuration").status_code == 404


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_access_log_never_shows_a_code() -> None:
    # As uvicorn configures it: its own handler, not propagated to ours.
    access = logging.getLogger("uvicorn.access")
    lines, propagate, level = _Lines(), access.propagate, access.level
    access.addHandler(lines)
    access.propagate, access.level = False, logging.INFO
    line = "/providers/ohif/launch?code=eyJsecret.abc&conf_uri=https%3A%2F%2Fk&studyUID=1.2.3"
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", line, "1.1", 302)
    finally:
        access.removeHandler(lines)
        access.propagate, access.level = propagate, level

    [logged] = lines.lines
    assert "eyJsecret" not in logged
    assert "launch?code=[redacted]&conf_uri=https%3A%2F%2Fk&studyUID=1.2.3" in logged
    assert (
        redact("/x?token=a&Access_Token=b&other=c")
        == "/x?token=[redacted]&Access_Token=[redacted]&other=c"
    )


# --- the KHEOPS client ----------------------------------------------------------------------


def in_a_new_loop(coroutine_function: Callable[[], Awaitable[T]]) -> T:
    # A thread of its own: an earlier browser test (Playwright's sync API) may leave this
    # thread marked as running an event loop.
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine_function()).result()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


def test_calls_beyond_the_limit_wait_their_turn_outside_their_timeout(
    router: respx.MockRouter,
) -> None:
    in_flight = peak = 0

    async def slow_kheops(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.6)
        in_flight -= 1
        return httpx.Response(200, json={"sub": "u", "name": "n", "email": "e"})

    router.get("https://kheops.test/api/userinfo").mock(side_effect=slow_kheops)

    async def six_calls() -> list[Any]:
        client = kheops.Client(timeout=1.0, max_in_flight=2)
        try:
            return await asyncio.gather(
                *(
                    kheops.fetch_userinfo(
                        client, "https://kheops.test/api/userinfo", access_token="t"
                    )
                    for _ in range(6)
                ),
                return_exceptions=True,
            )
        finally:
            await client.aclose()

    started = time.monotonic()
    answers = in_a_new_loop(six_calls)

    # Three rounds of two: 1.8 s in all, each call 0.6 s, within its 1 s from its turn (the
    # last two wait 1.2 s for it: longer than their timeout). 0.4 s of margin for a loaded
    # machine (0.2 s was not always enough with two suites at once on 2 CPUs).
    assert [type(answer) for answer in answers] == [kheops.UserInfo] * 6
    assert peak == 2
    assert time.monotonic() - started >= 1.8


def test_the_client_keeps_no_cookie_and_ignores_proxy_settings(
    router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    seen: list[str | None] = []

    def kheops_setting_a_cookie(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Cookie"))
        return httpx.Response(
            200, json={"sub": "u"}, headers={"Set-Cookie": "JSESSIONID=of-another-user; Path=/"}
        )

    router.get("https://kheops.test/api/userinfo").mock(side_effect=kheops_setting_a_cookie)

    async def two_calls() -> bool:
        client = kheops.Client(timeout=2)
        try:
            for _ in range(2):
                await kheops.fetch_userinfo(
                    client, "https://kheops.test/api/userinfo", access_token="t"
                )
            return client.http.trust_env
        finally:
            await client.aclose()

    trusts_environment = in_a_new_loop(two_calls)

    assert seen == [None, None]
    assert trusts_environment is False


def test_an_expired_discovery_document_serves_on_while_a_fresh_one_is_fetched(
    fake_kheops: FakeKheops, kheops_server: KheopsServer, caplog: pytest.LogCaptureFixture
) -> None:
    # During a burst, KHEOPS may be slow: a launch must not wait on (or fail with) the
    # refresh of a document it had a minute ago.
    key = services._discovery_cache_key(kheops_server)

    def age_it() -> None:
        fetched_at, document = services._known_discoveries[key]
        services._known_discoveries[key] = (fetched_at - 3600, document)
        cache.delete(key)

    async def scenario() -> list[str]:
        endpoints = [(await services.discovery_for(kheops_server)).dicomweb_endpoint]
        age_it()
        fake_kheops.discovery_answer = httpx.ReadTimeout("slow")
        endpoints.append((await services.discovery_for(kheops_server)).dicomweb_endpoint)
        await asyncio.sleep(0.1)  # the refresh fails in the background
        fake_kheops.discovery_answer = (
            200,
            {**discovery_document(), "dicomweb_endpoint": f"{ROOT}/api/v2"},
        )
        endpoints.append((await services.discovery_for(kheops_server)).dicomweb_endpoint)
        await asyncio.sleep(0.1)  # this refresh succeeds
        endpoints.append((await services.discovery_for(kheops_server)).dicomweb_endpoint)
        return endpoints

    with caplog.at_level(logging.WARNING, logger="launcher.services"):
        endpoints = async_to_sync(scenario)()

    assert endpoints == [f"{ROOT}/api", f"{ROOT}/api", f"{ROOT}/api", f"{ROOT}/api/v2"]
    assert len(fake_kheops.router.calls) == 3
    assert "discovery document not refreshed" in caplog.text


def test_each_server_process_cleans_up_on_a_schedule(db: None, settings: Any) -> None:
    # Launches whose codes are never exchanged leave used codes and pending grants behind:
    # they go whether or not any exchange ever succeeds.
    settings.CLEAN_UP_INTERVAL_SECONDS = 0.05
    UsedCode.objects.create(code_hash="0" * 64, used_at=timezone.now() - timedelta(hours=1))
    housekeeping = Housekeeping()

    async def rounds_until_clean() -> int:
        housekeeping.start()
        try:
            for waited in range(200):
                if not await blocking.run(UsedCode.objects.exists):
                    return waited
                await asyncio.sleep(0.05)
            return -1
        finally:
            await housekeeping.stop()

    assert async_to_sync(rounds_until_clean)() >= 0, "the clean-up never ran"
    assert housekeeping._task is None


def test_no_scheduled_clean_up_when_the_interval_is_zero(db: None, settings: Any) -> None:
    settings.CLEAN_UP_INTERVAL_SECONDS = 0
    housekeeping = Housekeeping()

    async def start_and_stop() -> bool:
        housekeeping.start()
        running = housekeeping._task is not None
        await housekeeping.stop()
        return running

    assert async_to_sync(start_and_stop)() is False
