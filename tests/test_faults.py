"""KHEOPS faults below HTTP: silence, trickle, huge bodies, resets, refused connections.

A mock cannot be slow or break a connection, so these tests run KHEOPS as a tiny raw
socket server on loopback whose every endpoint can be broken byte by byte. Each fault must
give the right answer in time (IN_TIME below) on the request that meets it, leave its audit
record, and the same launch link must work again after recovery.

The launch fetches the discovery document (when not cached) and redirects to the viewer; the
viewer's token request exchanges the code (token endpoint, then userinfo). So a discovery
fault is the launch's error page, and a token-endpoint fault is the token request's status
with a JSON error, after which the viewer page shows the error page.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
import respx
from django.test import Client
from django.utils.html import escape

from launcher import services
from launcher.models import (
    DISCOVERY_PATH,
    GrantState,
    KheopsServer,
    LaunchGrant,
    LaunchOutcome,
    LaunchRecord,
    UsedCode,
)
from tests.fakes import (
    CLIENT_ID,
    STUDY_1,
    discovery_document,
    fake_code,
    launch_and_exchange,
    token_url_of,
)

TIMEOUT = 0.5
# "In time": our timeout (TIMEOUT) ended the wait, not httpx's own default (5 s), which
# would give the same answers had our setting been lost, nor the fault (silent: never;
# drip: 7 s and more). Seconds to spare over TIMEOUT for a busy machine: a hang detector,
# not a speed claim (bench/ measures speed).
IN_TIME = 4.0
ENDPOINTS = {
    DISCOVERY_PATH: "discovery",
    "/api/token": "token",
    "/api/userinfo": "userinfo",
}


class RawKheops:
    """KHEOPS's discovery, token and userinfo endpoints on a loopback socket.

    `faults` maps an endpoint ("discovery", "token", "userinfo") to a mode:
    "silent" (reads the request, never answers), "drip" (a correct status and headers, then
    the body one byte every 0.1 s), "huge" (a 64 MB body, Content-Length given), "endless"
    (a chunked body that never ends), "reset" (a TCP reset instead of an answer),
    "reset-mid-body" (headers, half a body, then a reset), "503", "garbage" (200, not JSON),
    "close-once" (the first request's connection is closed without an answer, as a server
    closing a kept-alive connection just as the client sends on it; then correct answers).
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.root = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.faults: dict[str, str] = {}
        self.requests: list[str] = []
        self.huge_bytes_sent = 0
        self.huge_sender_done = threading.Event()
        self.stopping = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.refuse_connections()

    def refuse_connections(self) -> None:
        # close() alone leaves the socket listening while the serving thread is blocked in
        # accept(): the next connection would still be taken. shutdown() wakes accept() up.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut down
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                path = self._read_request(connection)
                endpoint = ENDPOINTS.get(path, "")
                self.requests.append(endpoint or path)
                self._answer(connection, endpoint, self.faults.get(endpoint, "ok"))
            except OSError:
                pass  # the client gave up: that is the point of most faults

    @staticmethod
    def _read_request(connection: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the request ended")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            ),
            0,
        )
        while len(body) < length:
            body += connection.recv(65536)
        return lines[0].split(" ")[1].split("?")[0]

    def _answer(self, connection: socket.socket, endpoint: str, mode: str) -> None:
        body = json.dumps(self._correct_body(endpoint)).encode()
        if mode == "close-once":
            self.faults[endpoint] = "ok"
            connection.close()
            return
        if mode == "silent":
            self.stopping.wait(10)
        elif mode == "reset":
            _reset(connection)
        elif mode == "503":
            connection.sendall(_head(503, len(b"busy")) + b"busy")
        elif mode == "garbage":
            connection.sendall(_head(200, 9) + b"<html>oops")
        elif mode == "drip":
            connection.sendall(_head(200, len(body)))
            for byte in body:
                if self.stopping.wait(0.1):
                    return
                connection.sendall(bytes([byte]))
        elif mode == "huge":
            size = 64 * 1024 * 1024
            connection.sendall(_head(200, size) + b'{"access_token":"')
            block = b"x" * 65536
            try:
                for _ in range(size // len(block)):
                    connection.sendall(block)
                    self.huge_bytes_sent += len(block)
            finally:
                self.huge_sender_done.set()
        elif mode == "endless":
            connection.sendall(_head(200, None))
            block = b"x" * 65536
            while not self.stopping.is_set():
                connection.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        elif mode == "reset-mid-body":
            connection.sendall(_head(200, len(body)) + body[: len(body) // 2])
            time.sleep(0.05)
            _reset(connection)
        else:
            connection.sendall(_head(200, len(body)) + body)

    def _correct_body(self, endpoint: str) -> dict:
        if endpoint == "discovery":
            return discovery_document(self.root)
        if endpoint == "token":
            return {"access_token": "eyJraw." + secrets.token_urlsafe(24), "expires_in": 3600}
        if endpoint == "userinfo":
            return {"sub": "user-raw", "name": "Dr Raw", "email": "raw@example.org"}
        return {}


def _head(status: int, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n".encode()


def _reset(connection: socket.socket) -> None:
    # SO_LINGER with a zero timeout: close() sends a TCP RST, a "connection reset by peer".
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


@pytest.fixture
def raw_kheops(kheops_http: respx.MockRouter, db: None, settings) -> Iterator[RawKheops]:
    settings.KHEOPS_HTTP_TIMEOUT = TIMEOUT
    server = RawKheops()
    kheops_http.route(url__startswith=server.root).pass_through()
    KheopsServer.objects.create(name="Raw KHEOPS", root_url=server.root)
    yield server
    server.stop()


@contextmanager
def kheops_back(kheops_http: respx.MockRouter, gone: RawKheops) -> Iterator[RawKheops]:
    """KHEOPS back up at a new address: the trusted server that was `gone` points there."""
    back = RawKheops()
    kheops_http.route(url__startswith=back.root).pass_through()
    try:
        server = KheopsServer.objects.get(root_url=gone.root)
        server.root_url = back.root
        server.save()
        yield back
    finally:
        back.stop()


def launch_url(server: RawKheops, code: str | None = None) -> str:
    query = urlencode(
        {
            "code": code or fake_code(),
            "conf_uri": server.root + DISCOVERY_PATH,
            "client_id": CLIENT_ID,
            "return_uri": f"{server.root}/albums/AbCd1234",
            "studyUID": STUDY_1,
        }
    )
    return f"/providers/ohif/launch?{query}"


def timed(client: Client, url: str) -> tuple[Any, float]:
    client.get("/healthz")  # the test client's first request loads the middleware: not ours to time
    started = time.monotonic()
    response = client.get(url)
    return response, time.monotonic() - started


def assert_exchanged(client: Client, url: str) -> None:
    """A launch of `url` opens a viewer whose token request gets a token."""
    launch, token = launch_and_exchange(client, url)
    assert launch.status_code == 302, launch.content[:300]
    assert token is not None and token.status_code == 200, token.content[:300]
    assert token.json()["authorization"].startswith("Bearer eyJraw.")


def assert_error_page(response: Any, status: int, root: str) -> str:
    assert response.status_code == status
    page = response.content.decode()
    assert "Cannot open the viewer" in page
    assert f'href="{root}/albums/AbCd1234"' in page
    assert "no-store" in response["Cache-Control"]
    return page


FAILING_FAULTS = [
    ("discovery", "silent", 504, LaunchOutcome.KHEOPS_TIMEOUT),
    ("token", "silent", 504, LaunchOutcome.KHEOPS_TIMEOUT),
    ("discovery", "drip", 504, LaunchOutcome.KHEOPS_TIMEOUT),
    ("token", "drip", 504, LaunchOutcome.KHEOPS_TIMEOUT),
    ("discovery", "huge", 502, LaunchOutcome.KHEOPS_MALFORMED),
    ("token", "huge", 502, LaunchOutcome.KHEOPS_MALFORMED),
    ("token", "endless", 502, LaunchOutcome.KHEOPS_MALFORMED),
    ("discovery", "reset", 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
    ("token", "reset", 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
    ("token", "reset-mid-body", 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
    ("discovery", "503", 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
    ("token", "503", 502, LaunchOutcome.KHEOPS_UNAVAILABLE),
    ("discovery", "garbage", 502, LaunchOutcome.KHEOPS_MALFORMED),
    ("token", "garbage", 502, LaunchOutcome.KHEOPS_MALFORMED),
]


@pytest.mark.parametrize(
    ("endpoint", "mode", "status", "outcome"),
    [pytest.param(*fault, id=f"{fault[0]}-{fault[1]}") for fault in FAILING_FAULTS],
)
def test_a_kheops_fault_gets_the_right_page_in_time_and_recovery_works(
    client: Client,
    raw_kheops: RawKheops,
    endpoint: str,
    mode: str,
    status: int,
    outcome: LaunchOutcome,
) -> None:
    raw_kheops.faults = {endpoint: mode}
    url = launch_url(raw_kheops)

    if endpoint == "discovery":
        # Fetched at launch (nothing cached yet): the launch itself is the error page.
        response, elapsed = timed(client, url)

        assert_error_page(response, status, raw_kheops.root)
        assert elapsed < IN_TIME
        assert LaunchGrant.objects.count() == 0
        assert LaunchRecord.objects.get().outcome == outcome
        assert UsedCode.objects.count() == 0  # refused before its code was claimed

        raw_kheops.faults = {}
        assert_exchanged(client, url)  # the same link, once KHEOPS is back
        expected = [outcome, LaunchOutcome.SUCCESS]
    else:
        launch = client.get(url)
        assert launch.status_code == 302  # the exchange waits for the viewer's token request
        token_url = token_url_of(launch["Location"])

        response, elapsed = timed(client, token_url)

        assert response.status_code == status
        assert elapsed < IN_TIME
        assert response["Content-Type"].startswith("application/json")
        assert "no-store" in response["Cache-Control"]
        body = response.json()
        assert set(body) == {"error", "advice", "returnUri", "retryable"}
        assert body["error"] and body["returnUri"] == f"{raw_kheops.root}/albums/AbCd1234"
        assert "eyJraw" not in response.content.decode()
        assert LaunchRecord.objects.get().outcome == outcome
        assert UsedCode.objects.count() == 1  # the link opens no other viewer
        exchanges = raw_kheops.requests.count("token")
        if outcome in services.TRANSIENT:
            # KHEOPS slow or away: the grant waits, the viewer stays, and the same browser
            # asks again (launch.js does, a few times): once KHEOPS is back, it gets in.
            assert body["retryable"] is True
            assert LaunchGrant.objects.get().state == GrantState.PENDING
            assert client.get(launch["Location"]).status_code == 200
            raw_kheops.faults = {}
            again = client.get(token_url)
            assert again.status_code == 200
            assert again.json()["authorization"].startswith("Bearer eyJraw.")
            assert raw_kheops.requests.count("token") == exchanges + 1
            expected = [LaunchOutcome.SUCCESS]
        else:
            assert body["retryable"] is False
            assert LaunchGrant.objects.get().state == GrantState.FAILED
            # The viewer page, reloaded by launch.js, now shows the error page.
            page = assert_error_page(client.get(launch["Location"]), status, raw_kheops.root)
            assert escape(body["error"]) in page
            # Asked again, the token request answers the stored failure: no new exchange.
            again = client.get(token_url)
            assert (again.status_code, again.json()) == (status, body)
            assert raw_kheops.requests.count("token") == exchanges
            raw_kheops.faults = {}
            # The link opens no new viewer: another browser is refused, this one sent back
            # to the viewer it has, which says why.
            assert Client().get(url).status_code == 409
            assert client.get(url)["Location"] == launch["Location"]
            expected = [outcome, LaunchOutcome.REPLAY, LaunchOutcome.REOPENED]

    client.cookies.clear()
    assert_exchanged(client, launch_url(raw_kheops))  # a new click in KHEOPS
    assert list(LaunchRecord.objects.order_by("id").values_list("outcome", flat=True)) == [
        *expected,
        LaunchOutcome.SUCCESS,
    ]


@pytest.mark.parametrize("mode", ["silent", "drip", "reset", "huge", "503", "garbage"])
def test_a_userinfo_fault_still_opens_the_viewer_in_time(
    client: Client, raw_kheops: RawKheops, mode: str
) -> None:
    raw_kheops.faults = {"userinfo": mode}
    launch = client.get(launch_url(raw_kheops))
    assert launch.status_code == 302

    response, elapsed = timed(client, token_url_of(launch["Location"]))

    assert response.status_code == 200
    assert response.json()["authorization"].startswith("Bearer eyJraw.")
    assert response.json()["userName"] == ""
    assert elapsed < IN_TIME
    assert "userinfo" in raw_kheops.requests
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.SUCCESS
    assert record.user_sub == ""
    assert LaunchGrant.objects.get().state == GrantState.READY


def test_a_kheops_that_refuses_connections_is_unavailable_then_recovers(
    client: Client, raw_kheops: RawKheops, kheops_http: respx.MockRouter
) -> None:
    raw_kheops.refuse_connections()  # nothing listens on the port any more
    url = launch_url(raw_kheops)

    response, elapsed = timed(client, url)

    assert response.status_code == 502
    assert "KHEOPS is unavailable" in response.content.decode()
    assert elapsed < IN_TIME
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.KHEOPS_UNAVAILABLE
    assert "unreachable" in record.failure_detail  # refused, not answered

    with kheops_back(kheops_http, raw_kheops) as back:
        client.cookies.clear()
        assert_exchanged(client, launch_url(back))


def test_a_kheops_that_goes_away_after_the_launch_fails_the_token_request_then_recovers(
    client: Client, raw_kheops: RawKheops, kheops_http: respx.MockRouter
) -> None:
    url = launch_url(raw_kheops)
    launch = client.get(url)  # the discovery document is fetched and cached here
    assert launch.status_code == 302
    raw_kheops.refuse_connections()

    response, elapsed = timed(client, token_url_of(launch["Location"]))

    assert response.status_code == 502
    assert response.json()["error"] == "KHEOPS is unavailable."
    assert response.json()["retryable"] is True
    assert elapsed < IN_TIME
    assert client.get(launch["Location"]).status_code == 200  # the viewer waits
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.KHEOPS_UNAVAILABLE
    assert "unreachable" in record.failure_detail  # refused, not answered
    assert UsedCode.objects.count() == 1

    with kheops_back(kheops_http, raw_kheops):
        # The same browser asks again (launch.js does): the same launch gets its token.
        again = client.get(token_url_of(launch["Location"]))
        assert again.status_code == 200, again.content[:300]
        assert again.json()["authorization"].startswith("Bearer eyJraw.")
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.SUCCESS


def test_a_huge_body_is_not_buffered(client: Client, raw_kheops: RawKheops) -> None:
    raw_kheops.faults = {"token": "huge"}
    launch = client.get(launch_url(raw_kheops))
    assert launch.status_code == 302

    response, elapsed = timed(client, token_url_of(launch["Location"]))

    assert response.status_code == 502
    # 64 MB announced; we stop after 256 KB and hang up: the sender gives up far short of
    # 64 MB (what it got rid of sat in the sockets' buffers).
    assert raw_kheops.huge_sender_done.wait(5)
    assert raw_kheops.huge_bytes_sent < 16 * 1024 * 1024
    assert elapsed < IN_TIME


def test_a_connection_closed_before_any_answer_is_tried_once_more(
    client: Client, raw_kheops: RawKheops
) -> None:
    # bench/loadtest.py met this under a burst: KHEOPS closed a kept-alive connection just as
    # our token request went out on it. The exchange may be repeated (the code stays valid).
    launch = client.get(launch_url(raw_kheops))
    assert launch.status_code == 302
    raw_kheops.faults["token"] = "close-once"

    token = client.get(token_url_of(launch["Location"]))

    assert token.status_code == 200, token.content[:300]
    assert raw_kheops.requests.count("token") == 2
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.SUCCESS
