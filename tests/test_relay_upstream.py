"""The relay's upstream client (launcher.kheops.open_dicomweb, raw_body): aiohttp under the
rules the rest of our KHEOPS client follows.

The requests travel over real HTTP to the tests' fake KHEOPS (tests.fakes.DicomwebOverHttp,
answering with the `kheops_http` router); each test runs in an event loop of its own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
import respx
from httpx._config import create_ssl_context

from launcher import kheops, relay

T = TypeVar("T")

STUDY = "1.2.3.4"
SERIES_URL = f"https://kheops.test/api/studies/{STUDY}/series"
TOKEN = "eyJ0eXAiOiJKV1QifQ.secret-token-of-the-test"


def in_a_new_loop(coroutine_function: Callable[[], Awaitable[T]]) -> T:
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine_function()).result()


async def read_all(upstream: kheops.Upstream) -> bytes:
    return b"".join([chunk async for chunk in kheops.raw_body(upstream)])


def asked(router: respx.MockRouter) -> list[httpx.Request]:
    return [call.request for call in router.calls]


def get(client: kheops.Client, url: str = SERIES_URL) -> Awaitable[kheops.Upstream]:
    return kheops.open_dicomweb(
        client, "GET", url, headers={"authorization": f"Bearer {TOKEN}", "accept": "*/*"}
    )


def test_no_cookie_is_kept_no_redirect_followed_and_the_environment_ignored(
    kheops_http: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    kheops_http.get(SERIES_URL).mock(
        return_value=httpx.Response(
            302,
            headers={
                "Location": "https://elsewhere.example/api/studies",
                "Set-Cookie": "JSESSIONID=of-another-user; Path=/",
            },
        )
    )

    async def two_calls() -> tuple[list[int], bool]:
        client = kheops.Client(timeout=2)
        try:
            statuses = []
            for _ in range(2):
                upstream = await get(client)
                await read_all(upstream)
                statuses.append(upstream.status_code)
            return statuses, client.dicomweb().trust_env
        finally:
            await client.aclose()

    statuses, trusts_environment = in_a_new_loop(two_calls)

    assert statuses == [302, 302]  # passed on, not followed
    assert [str(request.url) for request in asked(kheops_http)] == [SERIES_URL, SERIES_URL]
    assert [request.headers.get("cookie") for request in asked(kheops_http)] == [None, None]
    assert {request.headers["user-agent"] for request in asked(kheops_http)} == {kheops.USER_AGENT}
    assert trusts_environment is False


def test_connections_are_kept_for_the_next_request(kheops_http: respx.MockRouter) -> None:
    kheops_http.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[]))

    async def three_calls() -> None:
        client = kheops.Client(timeout=2)
        try:
            for _ in range(3):
                await read_all(await get(client))
        finally:
            await client.aclose()

    in_a_new_loop(three_calls)

    connections = {request.extensions["connection"] for request in asked(kheops_http)}
    assert len(asked(kheops_http)) == 3 and len(connections) == 1


def test_a_read_dropped_before_any_answer_is_sent_once_more(
    kheops_http: respx.MockRouter,
) -> None:
    kheops_http.get(SERIES_URL).mock(
        side_effect=[httpx.RemoteProtocolError("dropped"), httpx.Response(200, json=[])]
    )

    async def call() -> int:
        client = kheops.Client(timeout=2)
        try:
            upstream = await get(client)
            await read_all(upstream)
            return upstream.status_code
        finally:
            await client.aclose()

    assert in_a_new_loop(call) == 200
    assert len(asked(kheops_http)) == 2


def test_an_upload_dropped_before_any_answer_is_not_sent_again(
    kheops_http: respx.MockRouter,
) -> None:
    url = f"https://kheops.test/api/studies/{STUDY}?secret=query"
    kheops_http.post(url).mock(
        side_effect=[httpx.RemoteProtocolError("dropped"), httpx.Response(200, json={})]
    )

    async def body() -> AsyncIterator[bytes]:
        yield b"--boundary\r\n"
        yield b"x" * 1000

    async def call() -> str:
        client = kheops.Client(timeout=2)
        try:
            await kheops.open_dicomweb(
                client,
                "POST",
                url,
                headers={"authorization": f"Bearer {TOKEN}", "content-length": "1012"},
                content=body(),
            )
        except kheops.KheopsUnavailable as exc:
            return str(exc)
        finally:
            await client.aclose()
        return "answered"

    message = in_a_new_loop(call)

    assert message.startswith("kheops.test broke off: ")
    assert "secret" not in message and TOKEN not in message
    [sent] = asked(kheops_http)
    assert sent.content == b"--boundary\r\n" + b"x" * 1000


def test_a_kheops_that_does_not_answer_in_time_is_a_timeout(
    kheops_http: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kheops, "RELAY_READ_SECONDS", 0.2)

    async def silent(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=[])

    kheops_http.get(SERIES_URL).mock(side_effect=silent)

    async def call() -> BaseException | None:
        client = kheops.Client(timeout=2)
        try:
            await get(client, SERIES_URL + "?secret=query")
        except kheops.KheopsError as exc:
            return exc
        finally:
            await client.aclose()
        return None

    error = in_a_new_loop(call)

    assert isinstance(error, kheops.KheopsTimeout)
    assert str(error) == "kheops.test did not answer in time"


class ThenSilence(httpx.AsyncByteStream):
    """An answer's first piece, then nothing until the test says so."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first piece"
        await self.go_on.wait()
        yield b", second piece"


def test_each_piece_is_passed_on_as_soon_as_it_arrives(kheops_http: respx.MockRouter) -> None:
    streams: list[ThenSilence] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        streams.append(ThenSilence())
        return httpx.Response(200, headers={"Content-Type": "text/plain"}, stream=streams[-1])

    kheops_http.get(SERIES_URL).mock(side_effect=answer)

    async def call() -> list[bytes]:
        client = kheops.Client(timeout=2)
        try:
            pieces = []
            body = kheops.raw_body(await get(client))
            # Were the first piece held back until more came, this would wait forever.
            pieces.append(await asyncio.wait_for(anext(body), 5))
            streams[0].go_on.set()
            pieces += [piece async for piece in body]
            return pieces
        finally:
            await client.aclose()

    pieces = in_a_new_loop(call)

    assert pieces[0] == b"first piece"
    assert b"".join(pieces) == b"first piece, second piece"


def test_an_answer_that_stalls_midway_is_cut_off(
    kheops_http: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kheops, "RELAY_READ_SECONDS", 0.2)
    kheops_http.get(SERIES_URL).mock(
        return_value=httpx.Response(
            200, headers={"Content-Type": "text/plain"}, stream=ThenSilence()
        )
    )

    async def call() -> tuple[list[bytes], BaseException | None]:
        client = kheops.Client(timeout=2)
        pieces: list[bytes] = []
        try:
            async for piece in kheops.raw_body(await get(client)):
                pieces.append(piece)
        except kheops.KheopsError as exc:
            return pieces, exc
        finally:
            await client.aclose()
        return pieces, None

    pieces, error = in_a_new_loop(call)

    assert pieces == [b"first piece"]
    assert isinstance(error, kheops.KheopsUnavailable)
    assert str(error).startswith("kheops.test broke off mid-answer: ")


def test_repeated_headers_are_joined_and_names_found_in_any_case(
    kheops_http: respx.MockRouter,
) -> None:
    kheops_http.get(SERIES_URL).mock(
        return_value=httpx.Response(
            200,
            headers=[
                ("Content-Type", "application/dicom+json"),
                ("Vary", "Accept"),
                ("Vary", "Accept-Encoding"),
                ("Cache-Control", "max-age=60"),
            ],
            json=[],
        )
    )

    async def call() -> tuple[Any, dict[str, str]]:
        client = kheops.Client(timeout=2)
        try:
            upstream = await get(client)
            await read_all(upstream)
            headers = upstream.headers
            return (
                (headers["vary"], headers["VARY"], "Content-Type" in headers, "etag" in headers),
                relay.downstream_headers(headers),
            )
        finally:
            await client.aclose()

    (vary, vary_upper, has_type, has_etag), downstream = in_a_new_loop(call)

    assert vary == vary_upper == "Accept, Accept-Encoding"
    assert (has_type, has_etag) == (True, False)
    assert downstream["vary"] == "Accept, Accept-Encoding"
    assert downstream["content-type"] == "application/dicom+json"
    assert downstream["cache-control"] == "private, max-age=60"


def test_kheops_is_verified_as_httpx_verifies_it() -> None:
    async def connector_context() -> Any:
        client = kheops.Client(timeout=2)
        connector = kheops.dicomweb_connector(client)
        try:
            return connector._ssl  # type: ignore[attr-defined]
        finally:
            await connector.close()

    context = in_a_new_loop(connector_context)
    httpx_context = create_ssl_context(trust_env=False)

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats() == httpx_context.cert_store_stats()
    assert context.cert_store_stats()["x509_ca"] > 0


class BrokenOff(Exception):
    pass


def test_an_upload_its_browser_broke_off_says_so_not_that_kheops_failed(
    kheops_http: respx.MockRouter,
) -> None:
    url = f"https://kheops.test/api/studies/{STUDY}"
    kheops_http.post(url).mock(return_value=httpx.Response(200, json={}))

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise BrokenOff

    async def call() -> BaseException | None:
        client = kheops.Client(timeout=2)
        try:
            await kheops.open_dicomweb(
                client, "POST", url, headers={"content-length": "2000"}, content=body()
            )
        except Exception as exc:
            return exc
        finally:
            await client.aclose()
        return None

    assert isinstance(in_a_new_loop(call), BrokenOff)


def test_an_upload_kheops_stops_taking_times_out_but_a_slow_browser_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kheops, "RELAY_READ_SECONDS", 0.3)
    address = "\0kheops-ohif-tests-silent-" + str(id(monkeypatch))

    async def takes_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the headers, then not one byte of the body
        await asyncio.sleep(30)

    async def answers_when_all_came(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        headers = await reader.readuntil(b"\r\n\r\n")
        length = int(headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    def uploading(piece: int, pieces: int, pause: float) -> Callable[[], Awaitable[Any]]:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(pieces):
                await asyncio.sleep(pause)  # the browser's pace
                yield b"x" * piece

        async def call() -> Any:
            client = kheops.Client(timeout=2)
            try:
                upstream = await kheops.open_dicomweb(
                    client,
                    "POST",
                    f"https://kheops.test/api/studies/{STUDY}",
                    headers={"content-length": str(piece * pieces)},
                    content=body(),
                )
                return upstream.status_code, await read_all(upstream)
            except kheops.KheopsError as exc:
                return exc
            finally:
                await client.aclose()

        return call

    def against(handler: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            server = await asyncio.start_unix_server(handler, path=address)
            try:
                return await asyncio.wait_for(call(), 20)
            finally:
                server.close()

        return in_a_new_loop(run)

    monkeypatch.setattr(
        kheops, "dicomweb_connector", lambda client: aiohttp.UnixConnector(path=address)
    )

    stalled = against(takes_nothing, uploading(1024 * 1024, 64, 0))
    slow_browser = against(answers_when_all_came, uploading(1000, 3, 0.5))

    assert isinstance(stalled, kheops.KheopsTimeout)
    assert str(stalled) == "kheops.test did not answer in time"
    assert slow_browser == (200, b"{}")
