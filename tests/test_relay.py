"""The same-origin DICOMweb relay (relay mode): the token stays on the server.

KHEOPS's DICOMweb is faked with respx (tests/fakes.py); each test checks what reached it,
and that nothing refused did.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, AsyncRequestFactory, Client
from django.utils import timezone

from launcher import relay, services, views
from launcher.admin import ProviderForm
from launcher.documents import JWKS_PATH
from launcher.models import GrantState, LaunchGrant, Provider, TokenDelivery
from launcher.serving import Application, UploadAbandoned, UploadStream, _headers_django_sends
from tests.asgi_calls import answer_of, cookie_header, http_scope, transaction_kept
from tests.fakes import ROOT, STUDY_1, STUDY_2, FakeKheops, token_url_of

OTHER_STUDY = "1.2.826.0.1.3680043.8.498.1"
ORIGIN = "http://127.0.0.1:8000"  # PUBLIC_BASE_URL's origin in the tests' settings


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def relay_provider(provider: Provider, settings: Any) -> Provider:
    settings.PUBLIC_BASE_URL = ORIGIN
    provider.token_delivery = TokenDelivery.RELAY
    provider.save()
    return provider


@pytest.fixture
def relayed(
    client: Client, relay_provider: Provider, launched: Callable[..., str]
) -> Callable[..., str]:
    """Launch a relay-mode viewer in `client`'s browser; returns its relay root path."""

    def run(**kwargs: Any) -> str:
        location = launched(**kwargs)
        return f"/launches/{launch_id_of(location)}/dicomweb"

    return run


def launch_id_of(location: str) -> str:
    return urlsplit(location).path.split("/")[2]


def ask(
    client: Client,
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    content_type: str = "application/octet-stream",
    through: str = "server",
    **headers: str,
) -> Answer:
    """One request of `client`'s browser (its cookies) to the relay, its body read whole.

    `through`: "server", our ASGI application as the server runs it (reads answered below
    Django, launcher.relay_reads; the rest by the view); "view", Django's view alone (as
    under another ASGI server).
    """
    if through == "server":
        return ask_server(
            client, path, method=method, body=body, content_type=content_type, **headers
        )

    async def call() -> Answer:
        browser = AsyncClient()
        browser.cookies = client.cookies
        response = await browser.generic(
            method, path, data=body, content_type=content_type, headers=headers
        )
        if response.streaming and hasattr(response.streaming_content, "__aiter__"):
            content = b"".join([chunk async for chunk in response.streaming_content])
        elif response.streaming:  # emptied by the test client (a 304, a HEAD)
            content = b"".join(response.streaming_content)
        else:
            content = response.content
        answered = {name.lower(): value for name, value in response.items()}
        return Answer(response.status_code, answered, content)

    return async_to_sync(call)()


def ask_server(
    client: Client, path: str, *, method: str, body: bytes, content_type: str, **headers: str
) -> Answer:
    """`ask` through launcher.serving.Application as the server hands a request over (the
    path as written: still percent-encoded, dot segments kept)."""
    sent = [
        (name.lower().removeprefix("http_").replace("_", "-").encode(), value.encode())
        for name, value in headers.items()
    ]
    if body:
        sent += [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    path, _, query = path.partition("?")
    scope = http_scope(method, path, query=query, headers=[*sent, cookie_header(client)])
    scope["path"] = unquote(path)

    async def call() -> Answer:
        # handle(): Django without a thread context of its own, so that the database work
        # runs in the test's thread and transaction (as the fast path's does).
        app = Application(ASGIHandler().handle)  # type: ignore[arg-type]
        app.relay_reads.learn(await _django_headers(app))
        return Answer(*await answer_of(app, scope, body=body))

    with transaction_kept():
        return async_to_sync(call)()


_LEARNT: list[list[tuple[bytes, bytes]]] = []


async def _django_headers(app: Application) -> list[tuple[bytes, bytes]]:
    """The headers Django sends with a document, learnt once (as at a server's start-up;
    asking again would add database queries to tests that count them)."""
    if not _LEARNT:
        _LEARNT.append(await _headers_django_sends(app.django, JWKS_PATH))
    return _LEARNT[0]


def study_path(root: str, study: str = STUDY_1) -> str:
    return f"{root}/studies/{study}/series"


def assert_no_token(answer: Answer, fake: FakeKheops) -> None:
    for token in fake.issued_tokens:
        assert token not in answer.body.decode("latin-1")
        assert token not in json.dumps(answer.headers)


# --- The choice, per provider -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "server_default", "effective"),
    [
        ("", False, "direct"),
        ("", True, "relay"),
        ("direct", True, "direct"),
        ("relay", False, "relay"),
    ],
)
def test_a_provider_that_does_not_choose_follows_dicomweb_relay(
    provider: Provider, settings: Any, chosen: str, server_default: bool, effective: str
) -> None:
    settings.DICOMWEB_RELAY = server_default
    provider.token_delivery = chosen

    assert provider.effective_token_delivery == effective


def test_the_grant_keeps_the_mode_it_was_launched_with(
    client: Client, relayed: Callable[..., str], relay_provider: Provider, fake_kheops: FakeKheops
) -> None:
    root = relayed()
    relay_provider.token_delivery = TokenDelivery.DIRECT
    relay_provider.save()

    assert LaunchGrant.objects.get().token_delivery == TokenDelivery.RELAY
    assert ask(client, study_path(root)).status == 200


def test_the_admin_form_offers_the_server_default_and_both_modes(
    provider: Provider, settings: Any
) -> None:
    settings.DICOMWEB_RELAY = True
    form = ProviderForm(instance=provider)

    choices = dict(form.fields["token_delivery"].choices)
    assert set(choices) == {"", "direct", "relay"}
    assert "relay" in str(choices[""])

    data = {
        "client_name": provider.client_name,
        "slug": provider.slug,
        "mode": provider.mode,
        "token_delivery": "relay",
        "supported_modalities": [],
        "enabled": "on",
        "is_default": "on",
        "viewer_title": "",
    }
    bound = ProviderForm(data=data, instance=provider)
    assert bound.is_valid(), bound.errors
    bound.save()
    provider.refresh_from_db()
    assert provider.token_delivery == "relay"


# --- The viewer in relay mode -----------------------------------------------------------------


def test_in_relay_mode_the_viewer_talks_to_us_alone_and_never_gets_the_token(
    client: Client, relay_provider: Provider, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched(exchange=False)
    launch_id = launch_id_of(location)

    token = client.get(token_url_of(location))
    page = client.get(location)

    assert token.status_code == 200
    assert set(token.json()) == {"expiresIn", "userName", "userEmail"}
    [issued] = fake_kheops.issued_tokens
    assert issued not in token.content.decode()
    csp = page["Content-Security-Policy"]
    assert re.search(r"connect-src 'self'(;|$)", csp), csp
    assert ROOT not in csp
    # Nothing to open in advance: the viewer talks to us alone.
    assert 'rel="preconnect"' not in page.content.decode()
    [data] = re.findall(
        r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>',
        page.content.decode(),
        re.S,
    )
    [source] = json.loads(data)["config"]["dataSources"]
    relay_root = f"{ORIGIN}/launches/{launch_id}/dicomweb"
    assert source["configuration"]["qidoRoot"] == relay_root
    assert source["configuration"]["wadoRoot"] == relay_root
    # launch.js starts the study's first requests at once, through the relay (the cookie).
    prefetch = json.loads(data)["prefetch"]
    assert prefetch["relayed"] is True
    assert prefetch["studies"] == [STUDY_1]
    # Not the patient's studies: the relay refuses a query by Patient ID.
    assert prefetch["patientStudies"] is False


def test_in_direct_mode_the_relay_forwards_nothing(
    client: Client, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    location = launched()
    root = f"/launches/{launch_id_of(location)}/dicomweb"

    answer = ask(client, study_path(root))

    assert answer.status == 404
    assert fake_kheops.dicomweb_requests == []
    assert "authorization" in client.get(token_url_of(location)).json()


# --- Forwarding -------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["server", "view"])
def test_a_read_is_forwarded_with_the_token_and_only_the_headers_that_belong(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops, through: str
) -> None:
    root = relayed()
    client.cookies["sessionid"] = "browser-cookie-value"

    async def kheops_answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={
                "Content-Type": "application/dicom+json",
                "ETag": '"v1"',
                "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT",
                "Set-Cookie": "kheops=1",
                "Connection": "keep-alive",
                "Keep-Alive": "timeout=5",
                "Location": f"{ROOT}/elsewhere",
                "Cache-Control": "public, max-age=60",
            },
            content=b'[{"0020000D":{"vr":"UI"}}]',
        )

    fake_kheops.dicomweb_answer = kheops_answer

    answer = ask(
        client,
        study_path(root) + "?includefield=all",
        HTTP_AUTHORIZATION="Bearer forged-by-a-script",
        accept="application/dicom+json",
        if_none_match='"v0"',
        range="bytes=0-10",
        x_forwarded_for="10.0.0.1",
        through=through,
    )

    [sent] = fake_kheops.dicomweb_requests
    [token] = fake_kheops.issued_tokens
    assert str(sent.url) == f"{ROOT}/api/studies/{STUDY_1}/series?includefield=all"
    assert sent.headers["authorization"] == f"Bearer {token}"
    assert sent.headers["accept"] == "application/dicom+json"
    assert sent.headers["if-none-match"] == '"v0"'
    assert sent.headers["range"] == "bytes=0-10"
    assert sent.headers["accept-encoding"] == "identity"
    assert "cookie" not in sent.headers
    assert "x-forwarded-for" not in sent.headers
    assert answer.status == 200
    assert answer.body == b'[{"0020000D":{"vr":"UI"}}]'
    headers = answer.headers
    assert headers["content-type"] == "application/dicom+json"
    assert headers["etag"] == '"v1"'
    assert headers["last-modified"] == "Wed, 01 Jan 2025 00:00:00 GMT"
    assert headers["cache-control"] == "private, max-age=60"
    # What KHEOPS took to begin answering, and our own work (bench/relay.py reads it).
    assert re.fullmatch(r"kheops;dur=[0-9.]+, app;dur=[0-9.]+", headers["server-timing"])
    for dropped in ("set-cookie", "connection", "keep-alive", "location"):
        assert dropped not in headers
    assert_no_token(answer, fake_kheops)


def test_status_and_conditional_answers_pass_through(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()

    async def not_modified(request: httpx.Request) -> httpx.Response:
        return httpx.Response(304, headers={"ETag": '"v1"'})

    fake_kheops.dicomweb_answer = not_modified

    answer = ask(client, study_path(root), if_none_match='"v1"')

    assert answer.status == 304
    assert answer.body == b""
    assert answer.headers["etag"] == '"v1"'


def test_a_large_multipart_answer_arrives_intact_and_in_pieces(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    boundary = "b0undary-7f3a"
    frame = bytes(range(256)) * 4096  # 1 MiB
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            + frame
            + b"\r\n"
            for _ in range(8)
        )
        + f"--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    pieces: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            pieces.append(start)
            yield body[start : start + 64 * 1024]

    async def frames(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"Content-Type": content_type, "Content-Length": str(len(body))},
            content=stream(),
        )

    fake_kheops.dicomweb_answer = frames

    answer = ask(client, f"{root}/studies/{STUDY_1}/series/1.2.3/instances/1.2.3.4/frames/1,2")

    assert answer.status == 200
    assert answer.headers["content-type"] == content_type
    assert answer.headers["content-length"] == str(len(body))
    assert answer.body == body
    assert len(pieces) > 100  # sent on as it came, not as one buffer


def test_a_compressed_answer_passes_through_undecoded(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    compressed = gzip.compress(b'[{"00080060":{"vr":"CS","Value":["CT"]}}]' * 100)

    async def gzipped(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "gzip, br"
        return httpx.Response(
            200,
            headers={
                "Content-Type": "application/dicom+json",
                "Content-Encoding": "gzip",
                "Content-Length": str(len(compressed)),
            },
            content=compressed,
        )

    fake_kheops.dicomweb_answer = gzipped

    answer = ask(client, f"{root}/studies/{STUDY_1}/metadata", accept_encoding="gzip, br")

    assert answer.status == 200
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.body == compressed


def test_a_pending_grant_is_exchanged_by_the_relay(
    client: Client, relay_provider: Provider, launched: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = f"/launches/{launch_id_of(launched(exchange=False))}/dicomweb"

    answer = ask(client, study_path(root))

    assert answer.status == 200
    assert LaunchGrant.objects.get().state == GrantState.READY
    [sent] = fake_kheops.dicomweb_requests
    [token] = fake_kheops.issued_tokens
    assert sent.headers["authorization"] == f"Bearer {token}"


def test_kheops_unreachable_is_a_502(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()

    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    fake_kheops.dicomweb_answer = down

    answer = ask(client, study_path(root))

    assert answer.status == 502
    assert_no_token(answer, fake_kheops)


# --- The allow-list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "resource", "status"),
    [
        ("GET", f"studies/{OTHER_STUDY}/series", 403),
        ("GET", f"studies/{OTHER_STUDY}", 403),
        ("HEAD", f"studies/{OTHER_STUDY}/metadata", 403),
        ("GET", "studies", 403),
        ("GET", f"studies?StudyInstanceUID={OTHER_STUDY}", 403),
        ("GET", f"studies?StudyInstanceUID={STUDY_1},{OTHER_STUDY}", 403),
        ("GET", "series?SeriesInstanceUID=1.2.3", 403),
        ("GET", "instances", 403),
        ("GET", "workitems", 403),
        ("PUT", f"studies/{STUDY_1}", 405),
        ("DELETE", f"studies/{STUDY_1}", 405),
        ("OPTIONS", f"studies/{STUDY_1}", 405),
        ("POST", f"studies/{STUDY_1}/series", 405),
        ("POST", f"studies/{OTHER_STUDY}", 403),
        ("GET", f"studies/{STUDY_1}/../{OTHER_STUDY}", 400),
        ("GET", f"studies/{STUDY_1}/series/..", 400),
        ("GET", f"studies/{STUDY_1}//series", 400),
        ("GET", "studies/not-a-uid/series", 400),
        ("GET", "https://evil.example/studies", 400),
        ("GET", f"studies/{STUDY_1}/series\\..\\x", 400),
        ("GET", f"studies/{STUDY_1}/series?a=%0d%0aX-Injected:%201", 200),
    ],
)
def test_only_the_launchs_own_studies_are_reached(
    client: Client,
    relayed: Callable[..., str],
    fake_kheops: FakeKheops,
    method: str,
    resource: str,
    status: int,
) -> None:
    root = relayed(studies=(STUDY_1, STUDY_2))

    answer = ask(client, f"{root}/{resource}", method=method, body=b"x", origin=ORIGIN)

    assert answer.status == status, answer.body[:300]
    if status != 200:
        assert fake_kheops.dicomweb_requests == []
        assert method == "HEAD" or answer.json()["error"]
    else:  # a query string goes up as sent (percent-encoded): no header can be made of it
        [sent] = fake_kheops.dicomweb_requests
        assert b"\r\n" not in sent.url.raw_path
        assert "x-injected" not in sent.headers
    assert_no_token(answer, fake_kheops)


@pytest.mark.parametrize(
    "query",
    [f"StudyInstanceUID={STUDY_1}", f"StudyInstanceUID={STUDY_2},{STUDY_1}&includefield=all"],
)
def test_a_search_of_the_launchs_own_studies_is_forwarded(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops, query: str
) -> None:
    root = relayed(studies=(STUDY_1, STUDY_2))

    answer = ask(client, f"{root}/studies?{query}")

    assert answer.status == 200
    [sent] = fake_kheops.dicomweb_requests
    assert sent.url.path == "/api/studies"


@pytest.mark.parametrize(
    "raw_path",
    [
        f"/studies%2F{STUDY_1}/series",
        f"/studies/{STUDY_1}%2F..%2F{OTHER_STUDY}",
        f"/studies/{STUDY_1}/%2e%2e/{OTHER_STUDY}",
        f"/studies/{STUDY_1}/series%0d%0aX-Injected:%201",
        f"/studies/{STUDY_1}/series%00",
    ],
)
def test_encoded_slashes_dots_and_line_breaks_are_refused(
    db: None, raw_path: str, fake_kheops: FakeKheops
) -> None:
    # Through the ASGI application, as a server hands the path over: still encoded.
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=Application(ASGIHandler()))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as browser:
            url = httpx.URL(ORIGIN).copy_with(raw_path=f"/launches/x/dicomweb{raw_path}".encode())
            return await browser.get(url)

    with transaction_kept():
        response = async_to_sync(call)()

    assert response.status_code == 400, response.text
    assert fake_kheops.dicomweb_requests == []


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x1f", "\x7f"])
def test_a_control_character_anywhere_is_refused_before_anything_is_sent(char: str) -> None:
    # As a server that lets them through would hand them over: in the raw path, the query,
    # or a header that would go up to KHEOPS.
    resource = f"studies/{STUDY_1}/series"
    with pytest.raises(relay.Refused, match="control characters"):
        relay.check("GET", f"/launches/x/dicomweb/{resource}{char}", resource, "")
    with pytest.raises(relay.Refused, match="control characters"):
        relay.check("GET", f"/launches/x/dicomweb/{resource}", resource, f"limit=1{char}")
    with pytest.raises(relay.Refused, match="accept header"):
        relay.upstream_headers({"accept": f"application/json{char}"}, "token", upload=False)


def test_printable_characters_beyond_ascii_are_not_control_characters() -> None:
    resource = f"studies/{STUDY_1}/series"
    target = relay.check("GET", f"/launches/x/dicomweb/{resource}", resource, "q=\x80\xe9~ ")
    headers = relay.upstream_headers({"accept": "text/plain; q=0.5 \xe9"}, "t", upload=False)

    assert target.query == "q=\x80\xe9~ "
    assert headers["accept"] == "text/plain; q=0.5 \xe9"


# --- Uploads (STOW-RS) ------------------------------------------------------------------------


def stow_body(size: int) -> tuple[bytes, str]:
    boundary = "stow-boundary-1"
    part = bytes(range(256)) * (size // 256)
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.mark.parametrize(
    "headers",
    [{"origin": ORIGIN}, {"sec_fetch_site": "same-origin"}],
)
def test_an_upload_from_our_own_pages_is_streamed_up(
    client: Client,
    relayed: Callable[..., str],
    fake_kheops: FakeKheops,
    headers: dict[str, str],
) -> None:
    root = relayed()
    body, content_type = stow_body(5 * 1024 * 1024)  # beyond what Django keeps in memory
    received: list[bytes] = []

    async def stored(request: httpx.Request) -> httpx.Response:
        received.append(await request.aread())
        return httpx.Response(
            200, headers={"Content-Type": "application/dicom+json"}, json={"00081199": {}}
        )

    fake_kheops.dicomweb_answer = stored

    answer = ask(
        client, f"{root}/studies", method="POST", body=body, content_type=content_type, **headers
    )

    assert answer.status == 200, answer.body[:300]
    [sent] = fake_kheops.dicomweb_requests
    assert sent.method == "POST"
    assert sent.headers["content-type"] == content_type
    assert sent.headers["content-length"] == str(len(body))
    assert received == [body]


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"sec_fetch_site": "cross-site"},
        {"sec_fetch_site": "same-site"},
        {},
        {"origin": "https://evil.example", "sec_fetch_site": "same-origin"},
    ],
)
def test_an_upload_from_elsewhere_is_refused(
    client: Client,
    relayed: Callable[..., str],
    fake_kheops: FakeKheops,
    headers: dict[str, str],
) -> None:
    root = relayed()
    body, content_type = stow_body(1024)

    answer = ask(
        client, f"{root}/studies", method="POST", body=body, content_type=content_type, **headers
    )

    assert answer.status == 403
    assert fake_kheops.dicomweb_requests == []


def test_an_upload_larger_than_the_cap_is_refused(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops, settings: Any
) -> None:
    root = relayed()
    settings.DICOMWEB_RELAY_MAX_UPLOAD_BYTES = 1000
    body, content_type = stow_body(1024)

    answer = ask(
        client,
        f"{root}/studies",
        method="POST",
        body=body,
        content_type=content_type,
        origin=ORIGIN,
    )

    assert answer.status == 413
    assert fake_kheops.dicomweb_requests == []


# --- Who may use it ---------------------------------------------------------------------------


def test_another_browser_gets_a_401_and_nothing_from_kheops(
    relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()

    for stranger in (Client(), cookie_client(root, "a-forged-key-of-43-characters-aaaaaaaaaaaa")):
        answer = ask(stranger, study_path(root))
        assert answer.status == 401
        assert answer.json()["error"]
    assert fake_kheops.dicomweb_requests == []


def cookie_client(root: str, key: str) -> Client:
    browser = Client()
    browser.cookies[f"kheops_ohif_grant_{root.split('/')[2]}"] = key
    return browser


def test_an_expired_grant_answers_401(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    LaunchGrant.objects.update(expires_at=timezone.now() - timezone.timedelta(seconds=1))

    answer = ask(client, study_path(root))

    assert answer.status == 401
    assert "expired" in answer.json()["error"]
    assert fake_kheops.dicomweb_requests == []


def test_a_failed_grant_answers_401(
    client: Client,
    relay_provider: Provider,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
) -> None:
    fake_kheops.token_answer = (400, {"error": "invalid_grant"})
    location = launched(exchange=False)
    assert client.get(token_url_of(location)).status_code != 200
    root = f"/launches/{launch_id_of(location)}/dicomweb"

    answer = ask(client, study_path(root))

    assert answer.status == 401
    assert fake_kheops.dicomweb_requests == []


# --- A browser that goes away -----------------------------------------------------------------


class EndlessFrames(httpx.AsyncByteStream):
    """A KHEOPS answer that goes on until it is closed."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.closed:
            self.sent += 1
            yield b"x" * 65536
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closed = True

    @classmethod
    def answering(cls, fake: FakeKheops) -> EndlessFrames:
        """KHEOPS's answer to every DICOMweb request: one such stream."""
        stream = cls()

        async def endless(request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                200, headers={"Content-Type": "application/octet-stream"}, stream=stream
            )

        fake.dicomweb_answer = endless
        return stream


def test_a_browser_that_disconnects_mid_stream_closes_the_upstream_answer(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    stream = EndlessFrames.answering(fake_kheops)

    async def browser() -> int:
        gone = asyncio.Event()
        chunks = 0
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal chunks
            if message["type"] == "http.response.body" and message.get("body"):
                chunks += 1
                if chunks == 3:
                    gone.set()  # the browser closes the connection
                    await asyncio.sleep(0.05)

        scope = http_scope("GET", study_path(root), headers=[cookie_header(client)])
        # handle(): Django's ASGI handling without a thread context of its own, so that the
        # view's database work runs in the test's thread and transaction.
        await asyncio.wait_for(ASGIHandler().handle(scope, receive, send), 10)
        return chunks

    with transaction_kept():
        chunks = async_to_sync(browser)()

    assert chunks >= 3
    assert stream.closed
    assert stream.sent < 1000


@pytest.mark.parametrize(("length", "status"), [("2000", 413), (None, 411), ("12abc", 411)])
def test_the_server_refuses_an_oversized_upload_before_reading_it(
    db: None, settings: Any, length: str | None, status: int
) -> None:
    # Django would read the whole body (to disk) before the view runs: the server answers
    # from the headers alone, and Django never sees the request.
    settings.DICOMWEB_RELAY_MAX_UPLOAD_BYTES = 1000
    reached_django: list[str] = []

    async def django(scope: Any, receive: Any, send: Any) -> None:
        reached_django.append(scope["path"])

    received: list[Any] = []

    async def receive() -> dict[str, Any]:
        received.append(None)
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", ORIGIN.encode())]
    if length is not None:
        headers.append((b"content-length", length.encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/launches/abc/dicomweb/studies",
        "root_path": "",
        "headers": headers,
    }

    async_to_sync(Application(django))(scope, receive, send)

    assert reached_django == []
    assert received == []
    assert sent[0]["status"] == status
    assert json.loads(sent[1]["body"])["error"]


def test_an_oversized_header_is_refused_before_kheops_is_asked(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()

    answer = ask(client, study_path(root), if_none_match='"' + "v" * 2000 + '"')

    assert answer.status == 400
    assert fake_kheops.dicomweb_requests == []


def test_a_ready_grant_is_looked_up_once_for_a_burst_of_requests(
    client: Client,
    relayed: Callable[..., str],
    fake_kheops: FakeKheops,
    django_assert_num_queries: Any,
) -> None:
    # Images load as dozens of requests a second: the grant comes from memory after the first.
    root = relayed()
    assert ask(client, study_path(root)).status == 200

    with django_assert_num_queries(0):
        for _ in range(3):
            assert ask(client, study_path(root)).status == 200
    assert len(fake_kheops.dicomweb_requests) == 4


def test_a_remembered_grant_still_expires(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops, monkeypatch: Any
) -> None:
    root = relayed()
    assert ask(client, study_path(root)).status == 200
    later = time.time() + 2 * 3600  # the token's hour is over; the memory is a second old
    monkeypatch.setattr(time, "time", lambda: later)

    answer = ask(client, study_path(root))

    assert answer.status == 401
    assert len(fake_kheops.dicomweb_requests) == 1


# --- Reads answered below Django (launcher.relay_reads) -----------------------------------


class DjangoSpy:
    """Django's handling (without a thread context of its own), and the paths it was given."""

    def __init__(self) -> None:
        self.django = ASGIHandler()
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await self.django.handle(scope, receive, send)


def served(
    app: Application, client: Client, path: str, *, gone: asyncio.Event | None = None
) -> Answer:
    """A GET of `client`'s browser through `app`; `gone`: set to hang up mid-answer."""
    [answer] = served_together(app, client, [path], gone=gone)
    return answer


def served_together(
    app: Application,
    client: Client,
    paths: list[str],
    *,
    gone: asyncio.Event | None = None,
    begun: Callable[[int], None] = lambda index: None,
    prepared: bool = True,
) -> list[Answer]:
    async def one(index: int, path: str) -> Answer:
        scope = http_scope("GET", path, headers=[cookie_header(client)])
        return Answer(*await answer_of(app, scope, gone=gone, on_start=lambda: begun(index)))

    async def all_of_them() -> list[Answer]:
        if prepared:  # as at the server's start-up (launcher.serving.Application.prepare)
            app.relay_reads.learn(await _django_headers(app))
        return list(await asyncio.gather(*(one(i, path) for i, path in enumerate(paths))))

    with transaction_kept():
        return async_to_sync(all_of_them)()


def test_a_plain_read_is_answered_below_django_and_a_refusal_by_the_view(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    spy = DjangoSpy()
    app = Application(spy)  # type: ignore[arg-type]

    read = served(app, client, study_path(root))
    refused = served(app, client, study_path(root, OTHER_STUDY))

    assert read.status == 200
    # Django saw the refusal alone (besides, perhaps, learning its headers: /jwks.json).
    assert [path for path in spy.paths if "/dicomweb/" in path] == [study_path(root, OTHER_STUDY)]
    assert refused.status == 403
    assert len(fake_kheops.dicomweb_requests) == 1
    # The headers Django would have sent for safety, and the answer's own.
    for name in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert name in read.headers, name
    assert read.headers["x-content-type-options"] == "nosniff"
    assert re.fullmatch(r"[0-9a-f]{32}", read.headers["x-request-id"])
    assert read.headers["cache-control"].startswith("private")
    assert "content-language" not in read.headers  # Django's pages' header, not a relayed answer


def test_until_the_server_has_started_the_view_answers_the_reads(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    spy = DjangoSpy()
    app = Application(spy)  # type: ignore[arg-type]

    [answer] = served_together(app, client, [study_path(root)], prepared=False)

    assert answer.status == 200
    assert spy.paths == [study_path(root)]
    assert answer.headers["content-language"] == "en"  # a header of Django's pages


def test_reads_beyond_the_streams_per_process_wait_their_turn(
    client: Client,
    relayed: Callable[..., str],
    fake_kheops: FakeKheops,
    settings: Any,
) -> None:
    settings.DICOMWEB_RELAY_STREAMS_PER_PROCESS = 2
    root = relayed()
    asked = 0
    most_at_once = 0
    at_once = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal asked, at_once, most_at_once
        asked += 1
        at_once += 1
        most_at_once = max(most_at_once, at_once)
        try:
            await asyncio.sleep(0.01)
        finally:
            at_once -= 1
        return httpx.Response(
            200, headers={"Content-Type": "application/dicom+json"}, content=b"[]"
        )

    fake_kheops.dicomweb_answer = slow
    app = Application(DjangoSpy())  # type: ignore[arg-type]

    answers = served_together(app, client, [study_path(root)] * 7)

    assert [answer.status for answer in answers] == [200] * 7
    assert asked == 7
    assert most_at_once == 2


def test_a_browser_gone_mid_answer_below_django_closes_the_upstream_answer(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    stream = EndlessFrames.answering(fake_kheops)
    spy = DjangoSpy()
    app = Application(spy)  # type: ignore[arg-type]
    gone = asyncio.Event()

    def hang_up_soon(index: int) -> None:
        asyncio.get_running_loop().call_later(0.05, gone.set)

    served_together(app, client, [study_path(root)], gone=gone, begun=hang_up_soon)

    assert study_path(root) not in spy.paths  # answered below Django
    assert stream.closed
    assert 1 <= stream.sent < 10_000


def relay_metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(f"kheops_ohif_{name}", labels) or 0.0


def messages_below_django(
    app: Application, client: Client, path: str, *, cancel_after: float | None = None
) -> tuple[list[dict[str, Any]], BaseException | None]:
    """Every message `app` sends for a GET of `client`'s browser (which stays until the
    answer ends), and what the request ended with; `cancel_after`: the server cancels it
    then (a stop, say), the browser still there."""
    messages: list[dict[str, Any]] = []

    async def request() -> BaseException | None:
        app.relay_reads.learn(await _django_headers(app))
        requested = False
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            await asyncio.sleep(0)

        scope = http_scope("GET", path, headers=[cookie_header(client)])
        serving = asyncio.ensure_future(app(scope, receive, send))
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            serving.cancel()
        try:
            await asyncio.wait_for(serving, 10)
        except BaseException as exc:  # what it ended with is the result
            return exc
        finally:
            done.set()
        return None

    with transaction_kept():
        ended = async_to_sync(request)()
    return messages, ended


def bodies(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "http.response.body"]


class BreaksOff(httpx.AsyncByteStream):
    """A KHEOPS answer that stops short: two pieces, then its connection is dropped."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await asyncio.sleep(0.05)
        yield b"b" * 1000
        await asyncio.sleep(0.05)
        raise ConnectionResetError("KHEOPS fell over")


def test_below_django_a_whole_answer_ends_and_is_counted(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    content = bytes(range(256)) * 1000

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "application/dicom"}, content=content)

    fake_kheops.dicomweb_answer = answer
    in_flight = relay_metric("relay_streams_in_flight")
    down = relay_metric("relay_bytes_total", direction="down")

    messages, ended = messages_below_django(Application(DjangoSpy()), client, study_path(root))  # type: ignore[arg-type]

    assert ended is None
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
    assert b"".join(m["body"] for m in bodies(messages)) == content
    # Ended once, by the last message, and nothing after it.
    assert [m.get("more_body", False) for m in bodies(messages)][-1] is False
    assert all(m.get("more_body") for m in bodies(messages)[:-1])
    assert relay_metric("relay_bytes_total", direction="down") - down == len(content)
    assert relay_metric("relay_streams_in_flight") == in_flight


def test_below_django_a_kheops_break_mid_answer_cuts_the_answer_off(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/plain"}, stream=BreaksOff())

    fake_kheops.dicomweb_answer = answer
    in_flight = relay_metric("relay_streams_in_flight")
    down = relay_metric("relay_bytes_total", direction="down")
    errors = relay_metric("kheops_errors_total", call="dicomweb", kind="unavailable")

    messages, ended = messages_below_django(Application(DjangoSpy()), client, study_path(root))  # type: ignore[arg-type]

    assert ended is None  # the server then closes the connection: the browser sees it cut
    assert messages[0]["status"] == 200
    passed_on = b"".join(m["body"] for m in bodies(messages))
    assert passed_on.startswith(b"a")
    # Never a made-up end: every piece said more was coming.
    assert all(m["more_body"] for m in bodies(messages))
    assert relay_metric("kheops_errors_total", call="dicomweb", kind="unavailable") == errors + 1
    assert relay_metric("relay_bytes_total", direction="down") - down == len(passed_on)
    assert relay_metric("relay_streams_in_flight") == in_flight


def test_below_django_a_read_the_server_cancels_stays_cancelled(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    # Only the browser going away ends a relayed read quietly: a cancellation of the
    # server's (stopping, say) goes on, and KHEOPS's answer is closed all the same.
    root = relayed()
    stream = EndlessFrames.answering(fake_kheops)

    messages, ended = messages_below_django(
        Application(DjangoSpy()),  # type: ignore[arg-type]
        client,
        study_path(root),
        cancel_after=0.3,
    )

    assert isinstance(ended, asyncio.CancelledError)
    assert messages and messages[0]["status"] == 200
    assert stream.closed
    assert all(m["more_body"] for m in bodies(messages))


# --- Uploads through our server: as they arrive ------------------------------------------


def on_a_loop_of_its_own(coroutine_function: Callable[[], Any]) -> Any:
    # No database here; and another test's browser (Playwright) may hold this thread's loop.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine_function()).result()


def test_an_upload_stream_hands_each_piece_on_as_it_arrives() -> None:
    pieces = [b"one", b"two", b"three"]
    events: list[str] = []

    async def receive() -> dict[str, Any]:
        index = sum(1 for e in events if e.startswith("received"))
        events.append(f"received {index}")
        if index < len(pieces):
            return {"type": "http.request", "body": pieces[index], "more_body": index < 2}
        return {"type": "http.disconnect"}

    async def run() -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
        upload = UploadStream(receive)
        django_body = await upload.for_django()  # what Django's handler reads: nothing
        chunks = []
        async for chunk in upload.chunks():
            events.append(f"sent {chunk.decode()}")
            chunks.append(chunk)
        return django_body, chunks, await upload.for_django()

    django_body, chunks, after = on_a_loop_of_its_own(run)

    assert django_body == {"type": "http.request", "body": b"", "more_body": False}
    assert chunks == pieces
    assert events[:6] == [
        "received 0",
        "sent one",
        "received 1",
        "sent two",
        "received 2",
        "sent three",
    ]
    # Once the body is read, Django's disconnect listener listens to the browser itself.
    assert after == {"type": "http.disconnect"}


def test_an_upload_broken_off_tells_django_the_browser_went_away() -> None:
    messages = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def run() -> tuple[list[bytes], dict[str, Any]]:
        upload = UploadStream(receive)
        await upload.for_django()
        chunks: list[bytes] = []

        async def read_all() -> None:
            async for chunk in upload.chunks():
                chunks.append(chunk)

        with pytest.raises(UploadAbandoned):
            await read_all()
        return chunks, await upload.for_django()

    chunks, told = on_a_loop_of_its_own(run)

    assert chunks == [b"part"]
    assert told == {"type": "http.disconnect"}


def test_the_relay_sends_up_the_upload_our_server_streams_not_what_django_read(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    launch_id = root.split("/")[2]
    body, content_type = stow_body(300 * 1024)
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    received: list[bytes] = []

    async def stored(request: httpx.Request) -> httpx.Response:
        received.append(await request.aread())
        return httpx.Response(200, headers={"Content-Type": "application/dicom+json"}, json={})

    fake_kheops.dicomweb_answer = stored

    async def receive() -> dict[str, Any]:
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    async def call() -> int:
        factory = AsyncRequestFactory()
        factory.cookies = client.cookies
        request = factory.post(
            f"{root}/studies",
            data=b"",  # Django read nothing: the body is in the upload stream
            content_type=content_type,
            headers={"origin": ORIGIN, "content-length": str(len(body))},
        )
        upload = UploadStream(receive)
        await upload.for_django()
        request.scope[UploadStream.SCOPE_KEY] = upload
        response = await views.dicomweb_relay(request, launch_id, "studies")
        return response.status_code

    assert async_to_sync(call)() == 200
    assert received == [body]


def test_the_providers_list_shows_each_ones_token_delivery(
    admin_client: Client, provider: Provider, settings: Any
) -> None:
    settings.DICOMWEB_RELAY = True

    page = admin_client.get("/admin/launcher/provider/").content.decode()

    assert "relay (server default)" in page


def test_a_relayed_grant_whose_token_cannot_be_opened_says_to_tell_the_administrator(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops, settings: Any
) -> None:
    # The sealing key changed and the old one was dropped (README: changing a key).
    settings.SEALING_KEY = "A" * 50
    root = relayed()
    settings.SEALING_KEY = "B" * 50
    services.forget_lookups()  # and the ready grants kept a moment in memory

    answer = ask(client, study_path(root))

    assert answer.status == 500
    assert answer.json()["advice"].startswith("Tell this viewer's administrator")
    assert fake_kheops.dicomweb_requests == []  # nothing was sent to KHEOPS


# --- The hand-over to nginx (its relay offload; through nginx: tests/integration) -------------

OFFLOAD_KEY = "o" * 40


@pytest.mark.parametrize(
    ("headers", "endpoint", "location"),
    [
        ({"x-relay-offload-key": OFFLOAD_KEY, "x-relay-offload-origins": "https://a.org https://kheops.org"},
         "https://kheops.org/api", "/_kheops_relay/1/api"),
        # Origins compare as browsers do: the scheme and host in any case.
        ({"x-relay-offload-key": OFFLOAD_KEY, "x-relay-offload-origins": "HTTPS://KHEOPS.org"},
         "https://kheops.ORG/api/", "/_kheops_relay/0/api"),
        ({"x-relay-offload-key": OFFLOAD_KEY, "x-relay-offload-origins": "https://kheops.org:8443"},
         "https://kheops.org/api", None),
        ({"x-relay-offload-key": OFFLOAD_KEY + "x", "x-relay-offload-origins": "https://kheops.org"},
         "https://kheops.org/api", None),
        ({"x-relay-offload-origins": "https://kheops.org"}, "https://kheops.org/api", None),
        # A DICOMweb root whose path would need escaping in X-Accel-Redirect: the app carries it.
        ({"x-relay-offload-key": OFFLOAD_KEY, "x-relay-offload-origins": "https://kheops.org"},
         "https://kheops.org/a%20b", None),
    ],
)  # fmt: skip
def test_a_read_is_handed_to_nginx_only_with_its_key_and_for_an_origin_it_reaches(
    settings: Any, headers: dict[str, str], endpoint: str, location: str | None
) -> None:
    from launcher.relay_reads import offload_location

    settings.DICOMWEB_RELAY_OFFLOAD_KEY = OFFLOAD_KEY
    assert offload_location(headers, endpoint) == location
    settings.DICOMWEB_RELAY_OFFLOAD_KEY = ""
    assert offload_location(headers, endpoint) is None  # no key of ours: never


def test_a_short_offload_key_is_refused_by_the_system_checks(settings: Any) -> None:
    from launcher.checks import check_relay_offload_key

    settings.DICOMWEB_RELAY_OFFLOAD_KEY = "abc123xyz"
    [error] = check_relay_offload_key(None)

    assert error.id == "launcher.E017"
    assert "abc123xyz" not in error.msg + error.hint
    settings.DICOMWEB_RELAY_OFFLOAD_KEY = OFFLOAD_KEY
    assert check_relay_offload_key(None) == []


def _viewer_grant(seconds_left: float, study_uids: tuple[str, ...] = (STUDY_1, STUDY_2)) -> Any:
    return services.ViewerGrant(
        launch_id="L4unch_id-22characters",
        access_token="secret-token",
        expires_at=time.time() + seconds_left,
        dicomweb_endpoint="https://kheops.org/api",
        study_uids=study_uids,
        mode="viewer",
        return_uri=None,
        user_name="",
        state=GrantState.READY,
        token_delivery=TokenDelivery.RELAY,
    )


def test_nginx_may_remember_a_hand_over_for_the_seconds_the_settings_say_never_past_the_token(
    settings: Any,
) -> None:
    from launcher.relay_reads import keep_for

    settings.DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS = 5
    keep = keep_for(_viewer_grant(3600), "/_kheops_relay/1/api")
    assert keep == f"5 L4unch_id-22characters /_kheops_relay/1/api {STUDY_1},{STUDY_2}"
    assert "secret-token" not in keep
    # The token's last seconds: no longer than it lives; its very last: not at all.
    assert keep_for(_viewer_grant(3.5), "/_kheops_relay/1/api").startswith("3 ")
    assert keep_for(_viewer_grant(0.5), "/_kheops_relay/1/api") is None
    settings.DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS = 0
    assert keep_for(_viewer_grant(3600), "/_kheops_relay/1/api") is None


@pytest.mark.parametrize(
    ("root", "study_uids"),
    [
        ("/_kheops_relay/1/a b", (STUDY_1,)),  # what nginx would not read back
        ("/_kheops_relay/1//api", (STUDY_1,)),
        ("/_kheops_relay/1/api", ("1.2.3 4",)),
        ("/_kheops_relay/1/api", ()),
        ("/_kheops_relay/1/api", tuple(f"1.2.{n}" for n in range(101))),
    ],
)
def test_a_hand_over_nginx_could_not_read_back_is_not_offered_to_be_kept(
    settings: Any, root: str, study_uids: tuple[str, ...]
) -> None:
    from launcher.relay_reads import keep_for

    settings.DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS = 5
    assert keep_for(_viewer_grant(3600, study_uids), root) is None


def test_nginx_reads_x_relay_keep_with_the_pattern_the_app_writes_it_with() -> None:
    from launcher.relay_reads import KEEP

    lua = (Path(__file__).resolve().parents[1] / "deploy/nginx/kheops_relay.lua").read_text()
    assert f"local KEEP = [[{KEEP}]]" in lua


@pytest.mark.parametrize(("seconds", "refused"), [(-1, True), (0, False), (60, False), (61, True)])
def test_how_long_nginx_may_keep_a_hand_over_is_checked(
    settings: Any, seconds: int, refused: bool
) -> None:
    from launcher.checks import check_relay_offload_keep

    settings.DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS = seconds
    errors = check_relay_offload_keep(None)
    assert [error.id for error in errors] == (["launcher.E018"] if refused else [])
