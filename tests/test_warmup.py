"""Relay mode: the study's first answers fetched at the token request (launcher.warmup).

Through our ASGI application in one event loop, as the server runs it: the viewer's token
request (its code exchanged, the warm-up started), then its first DICOMweb requests. KHEOPS's
DICOMweb is faked with respx (tests/fakes.py): each test checks what reached it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from launcher import warmup
from launcher.models import Provider, TokenDelivery
from launcher.serving import Application
from launcher.warmup import SERIES_METADATA, SERIES_SEARCH, STUDY_SEARCH, WARMUP
from tests.asgi_calls import answer_of, cookie_header, http_scope, transaction_kept
from tests.fakes import ROOT, STUDY_1, FakeKheops, token_url_of
from tests.test_relay import ORIGIN, Answer, DjangoSpy, _django_headers, launch_id_of

SERIES = ("1.2.3.1", "1.2.3.2")


@pytest.fixture
def relay_provider(provider: Provider, settings: Any) -> Provider:
    settings.PUBLIC_BASE_URL = ORIGIN
    provider.token_delivery = TokenDelivery.RELAY
    provider.save()
    return provider


@pytest.fixture(autouse=True)
def warmup_reset() -> Iterator[None]:
    yield
    WARMUP.enabled = False
    WARMUP.answered = 0
    WARMUP._grants.clear()
    WARMUP._warmed.clear()
    WARMUP._bytes = 0


async def kheops_study(request: httpx.Request) -> httpx.Response:
    """KHEOPS's DICOMweb for STUDY_1: its searches and its series' metadata."""
    return study_answer(request)


def study_answer(request: httpx.Request) -> httpx.Response:
    path = request.url.path.removeprefix("/api/")
    if path == "studies":
        body: Any = [{"0020000D": {"vr": "UI", "Value": [STUDY_1]}}]
    elif path == f"studies/{STUDY_1}/series":
        body = [{"0020000E": {"vr": "UI", "Value": [uid]}} for uid in SERIES]
    elif path.endswith("/metadata"):
        body = [{"0020000E": {"vr": "UI", "Value": [path.split("/")[3]]}}] * 50
    else:
        return httpx.Response(404)
    return httpx.Response(
        200, headers={"Content-Type": "application/dicom+json"}, content=json.dumps(body).encode()
    )


def first_requests() -> list[str]:
    return [
        STUDY_SEARCH.format(study=STUDY_1),
        SERIES_SEARCH.format(study=STUDY_1),
        *(SERIES_METADATA.format(study=STUDY_1, series=uid) for uid in SERIES),
    ]


class Viewer:
    """One browser's viewer of a relay-mode launch, talking to one server process."""

    def __init__(self, client: Client, launch_path: str) -> None:
        self.client = client
        self.launch_id = launch_id_of(launch_path)
        self.token_path = token_url_of(launch_path)
        self.app = Application(DjangoSpy())  # type: ignore[arg-type]

    async def start(self) -> None:
        # As at the server's start-up (Application.prepare), without the documents' refresher.
        self.app.relay_reads.learn(await _django_headers(self.app))
        WARMUP.enabled = True

    async def get(self, path: str, **headers: str) -> Answer:
        path, _, query = path.partition("?")
        sent = [
            (name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()
        ]
        scope = http_scope("GET", path, query=query, headers=[*sent, cookie_header(self.client)])
        return Answer(*await answer_of(self.app, scope))

    async def open(self) -> None:
        """The viewer's page asks for its token; the warm-up it started has ended."""
        await self.start()
        await self.token()
        await warmed_up()

    async def token(self) -> Answer:
        answer = await self.get(self.token_path)
        assert answer.status == 200, answer.body
        return answer

    def relayed(self, request: str) -> str:
        return f"/launches/{self.launch_id}/dicomweb/{request}"


async def warmed_up() -> None:
    """Until the warm-up's requests have all been answered."""
    for _ in range(200):
        futures = [f for grant in WARMUP._grants.values() for f in grant.answers.values()]
        if WARMUP._tasks or not all(f.done() for f in futures):
            await asyncio.sleep(0.01)
        else:
            return
    raise AssertionError("the warm-up never ended")


def run(coroutine_function: Callable[[], Any]) -> Any:
    with transaction_kept():
        return async_to_sync(coroutine_function)()


def kheops_paths(fake: FakeKheops) -> list[str]:
    return [str(request.url).removeprefix(f"{ROOT}/api/") for request in fake.dicomweb_requests]


def test_the_viewers_first_requests_are_answered_from_what_the_token_request_fetched(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
) -> None:
    fake_kheops.dicomweb_answer = kheops_study
    viewer = Viewer(client, launched(exchange=False))

    async def scenario() -> tuple[list[str], list[Answer]]:
        await viewer.open()
        asked_ahead = kheops_paths(fake_kheops)
        study_search = viewer.relayed(STUDY_SEARCH.format(study=STUDY_1))
        answers = await asyncio.gather(  # OHIF asks for the study twice at once
            viewer.get(study_search, accept="application/dicom+json"),
            viewer.get(study_search, accept="application/dicom+json"),
        )
        for request in first_requests()[1:]:
            answers.append(
                await viewer.get(viewer.relayed(request), accept="application/dicom+json")
            )
        return asked_ahead, answers

    asked_ahead, answers = run(scenario)

    assert sorted(asked_ahead) == sorted(first_requests())
    assert kheops_paths(fake_kheops) == asked_ahead  # nothing asked again
    for answer, request in zip(answers, [first_requests()[0], *first_requests()], strict=True):
        assert answer.status == 200
        assert answer.headers["server-timing"].startswith("warm;dur=")
        assert answer.headers["content-type"] == "application/dicom+json"
        assert answer.headers["content-length"] == str(len(answer.body))
        assert answer.headers["cache-control"].startswith("private")
        assert answer.headers["x-content-type-options"] == "nosniff"
        expected = study_answer(httpx.Request("GET", f"{ROOT}/api/{request}"))
        assert answer.body == expected.content
    # The warm-up asked with the token, as the relay does; nothing of the browser's went up.
    [token] = fake_kheops.issued_tokens
    for request in fake_kheops.dicomweb_requests:
        assert request.headers["authorization"] == f"Bearer {token}"
        assert "cookie" not in request.headers


def test_a_warm_answer_is_handed_out_for_a_moment_then_kheops_is_asked(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
) -> None:
    fake_kheops.dicomweb_answer = kheops_study
    viewer = Viewer(client, launched(exchange=False))
    series_search = viewer.relayed(SERIES_SEARCH.format(study=STUDY_1))

    async def scenario() -> tuple[Answer, Answer, Answer]:
        await viewer.open()
        first, again = await viewer.get(series_search), await viewer.get(series_search)
        later = SimpleNamespace(monotonic=mock.Mock(return_value=time.monotonic() + 3))
        with mock.patch.object(warmup, "time", later):  # REPEAT_SECONDS (2) have passed
            return first, again, await viewer.get(series_search)

    first, again, later = run(scenario)

    assert first.headers["server-timing"].startswith("warm;")
    assert again.headers["server-timing"].startswith("warm;")  # within REPEAT_SECONDS
    assert later.headers["server-timing"].startswith("kheops;")
    assert kheops_paths(fake_kheops).count(SERIES_SEARCH.format(study=STUDY_1)) == 2


@pytest.mark.parametrize(
    "headers",
    [{"if_none_match": '"v1"'}, {"range": "bytes=0-9"}, {"accept": "multipart/related"}],
)
def test_a_request_that_is_not_plain_goes_to_kheops(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
    headers: dict[str, str],
) -> None:
    fake_kheops.dicomweb_answer = kheops_study
    viewer = Viewer(client, launched(exchange=False))
    request = SERIES_METADATA.format(study=STUDY_1, series=SERIES[0])

    async def scenario() -> Answer:
        await viewer.open()
        return await viewer.get(viewer.relayed(request), **headers)

    answer = run(scenario)

    assert answer.headers["server-timing"].startswith("kheops;")
    assert kheops_paths(fake_kheops).count(request) == 2


def test_another_browser_gets_nothing_from_the_warm_up(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
) -> None:
    fake_kheops.dicomweb_answer = kheops_study
    viewer = Viewer(client, launched(exchange=False))
    stranger = Viewer(Client(), f"/launches/{viewer.launch_id}/viewer")
    stranger.app = viewer.app  # the same server process

    async def scenario() -> Answer:
        await viewer.open()
        return await stranger.get(viewer.relayed(SERIES_SEARCH.format(study=STUDY_1)))

    answer = run(scenario)

    assert answer.status == 401
    assert SERIES[0].encode() not in answer.body
    assert len(fake_kheops.dicomweb_requests) == len(first_requests())  # the warm-up's alone


def test_an_upload_forgets_what_was_fetched_ahead(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
) -> None:
    fake_kheops.dicomweb_answer = kheops_study
    viewer = Viewer(client, launched(exchange=False))

    async def scenario() -> Answer:
        await viewer.open()
        WARMUP.forget(viewer.launch_id)  # what the relay's upload does (views.dicomweb_relay)
        return await viewer.get(viewer.relayed(SERIES_SEARCH.format(study=STUDY_1)))

    answer = run(scenario)

    assert answer.headers["server-timing"].startswith("kheops;")
    assert WARMUP._bytes == 0


def test_a_failed_warm_up_changes_nothing_for_the_viewer(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
) -> None:
    failing = True

    async def kheops(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503) if failing else study_answer(request)

    fake_kheops.dicomweb_answer = kheops
    viewer = Viewer(client, launched(exchange=False))

    async def scenario() -> Answer:
        nonlocal failing
        await viewer.open()
        failing = False
        return await viewer.get(viewer.relayed(SERIES_SEARCH.format(study=STUDY_1)))

    answer = run(scenario)

    assert answer.status == 200
    assert answer.headers["server-timing"].startswith("kheops;")
    assert SERIES[0].encode() in answer.body


def test_in_direct_mode_nothing_is_fetched_ahead(
    client: Client, provider: Provider, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    viewer = Viewer(client, launched(exchange=False))

    async def scenario() -> None:
        await viewer.start()
        answer = await viewer.token()
        assert "authorization" in json.loads(answer.body)
        await warmed_up()

    run(scenario)

    assert fake_kheops.dicomweb_requests == []


def test_answers_too_large_to_keep_are_not_kept(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(warmup, "MAX_ANSWER_BYTES", 100)
    fake_kheops.dicomweb_answer = kheops_study
    viewer = Viewer(client, launched(exchange=False))
    metadata = SERIES_METADATA.format(study=STUDY_1, series=SERIES[0])

    async def scenario() -> Answer:
        await viewer.open()
        return await viewer.get(viewer.relayed(metadata))

    answer = run(scenario)

    assert answer.status == 200
    assert answer.headers["server-timing"].startswith("kheops;")  # over 100 bytes: not kept
    assert WARMUP._bytes < 100 * len(first_requests())
