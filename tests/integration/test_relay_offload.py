"""The relay offload: the deployment's nginx carries the relayed reads the app hands over.

Our app runs as production runs it (uvicorn in a process of its own) with an offload key,
behind nginx configured by the deployment's own files (deploy/nginx/render.sh, through
devstack.nginx). KHEOPS's DICOMweb is the hostile tests' fake, answering with every header
KHEOPS must not set on our origin. Each test compares what reaches the browser and KHEOPS
through nginx with what the app alone does.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack import ServerProcess, free_port
from devstack.nginx import NginxFront
from launcher import relay as relay_rules
from launcher.relay_reads import SECURITY_HEADERS
from tests.integration.test_relay_hostile import (
    BIG_ANSWER_BYTES,
    FRAMES,
    METADATA,
    PIECE,
    PROMPT_SECONDS,
    STUDY,
    Connection,
    FakeDicomweb,
    ready_relayed_grant,
    wait_for,
)
from tests.stack import start_server_on_test_database

REPO = Path(__file__).resolve().parents[2]
OFFLOAD_KEY = secrets.token_urlsafe(32)

# What KHEOPS must never set on our origin through us, whatever it sends.
HOSTILE_HEADERS = {
    "set-cookie": "kheops_session=stolen; Path=/",
    "location": "https://elsewhere.example/",
    "refresh": "0; url=https://elsewhere.example/",
    "link": "<https://elsewhere.example/x.js>; rel=preload; as=script",
    "www-authenticate": 'Basic realm="kheops"',
    "access-control-allow-origin": "*",
    "access-control-allow-credentials": "true",
    "content-security-policy": "default-src *",
    "strict-transport-security": "max-age=0",
    "x-frame-options": "ALLOWALL",
    "x-content-type-options": "sniff-me",
    "clear-site-data": '"*"',
    "content-disposition": "attachment; filename=x.html",
    "alt-svc": 'h2=":1"',
    "server-timing": "kheops;dur=1",
    "x-powered-by": "KHEOPS",
    "x-accel-redirect": "/healthz",
    "x-accel-buffering": "yes",
    "cache-control": "public, max-age=600",
    "etag": '"metadata-1"',
    "last-modified": "Mon, 30 Nov 2026 08:00:00 GMT",
    "vary": "Accept",
}
# What nginx itself adds to every answer; everything else must be the relay's allow-list.
NGINX_OWN = {"server", "date", "connection", "keep-alive", "transfer-encoding"}
ALLOWED_OUT = (
    set(relay_rules.DOWNSTREAM_HEADERS)
    | {name.decode() for name in SECURITY_HEADERS}
    | {"cache-control", "server-timing", "x-request-id"}
)


class HostileDicomweb(FakeDicomweb):
    """The hostile tests' fake KHEOPS, whose small answers carry HOSTILE_HEADERS too."""

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, connection: Connection, body: bytes) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in HOSTILE_HEADERS.items())
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/dicom+json\r\n"
            + extra.encode()
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        connection.sent += len(body)


@dataclass
class Front:
    app: ServerProcess
    nginx: NginxFront
    kheops: HostileDicomweb
    unreachable: str  # a KHEOPS origin nginx carries reads from, where nothing listens


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, django_db_setup: None) -> Iterator[Front]:
    kheops = HostileDicomweb()
    unreachable = f"http://127.0.0.1:{free_port()}"
    app = start_server_on_test_database(
        tmp_path_factory.mktemp("relay-offload") / "server.log",
        DICOMWEB_RELAY_OFFLOAD_KEY=OFFLOAD_KEY,
    )
    nginx = NginxFront.start(
        app.url, offload_kheops=[unreachable, kheops.url], offload_key=OFFLOAD_KEY
    )
    try:
        app.wait_until_up("/healthz")
        nginx.wait_until_up()
        yield Front(app, nginx, kheops, unreachable)
    finally:
        nginx.stop()
        app.stop()
        kheops.stop()


@dataclass
class Grant:
    launch_id: str
    key: str
    token: str

    @property
    def cookie(self) -> str:
        return f"kheops_ohif_grant_{self.launch_id}={self.key}"

    def path(self, resource: str) -> str:
        return f"/launches/{self.launch_id}/dicomweb/{resource}"


def make_grant(endpoint: str) -> Grant:
    return Grant(*ready_relayed_grant(endpoint))


@pytest.fixture
def grant(front: Front, transactional_db: None) -> Iterator[Grant]:
    made = make_grant(f"{front.kheops.url}/api")
    front.kheops.forget_the_past()
    log_start = front.app.log.stat().st_size
    yield made
    with front.app.log.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    for secret in (made.token, made.key, OFFLOAD_KEY):
        assert secret not in logged


def browser(base_url: str, grant: Grant, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        headers={"Cookie": grant.cookie, **headers},
        trust_env=False,
        timeout=PROMPT_SECONDS,
    )


def assert_no_secret(answer: httpx.Response, grant: Grant) -> None:
    seen = json.dumps(list(answer.headers.multi_items())) + answer.text
    for secret in (grant.token, OFFLOAD_KEY):
        assert secret not in seen
    assert not any(name.startswith(("x-relay", "x-accel")) for name in answer.headers)


# --- What nginx carries, against what the app does ------------------------------------------


def test_nginx_carries_a_read_as_the_app_would_and_keeps_kheopss_headers_off_our_origin(
    front: Front, grant: Grant
) -> None:
    with browser(front.nginx.url, grant) as through_nginx:
        carried = through_nginx.get(grant.path(METADATA), headers={"Accept": "application/json"})
    [(method, path, asked)] = [r for c in front.kheops.connections for r in c.requests]
    with browser(front.app.url, grant) as to_the_app:
        relayed = to_the_app.get(grant.path(METADATA), headers={"Accept": "application/json"})

    assert carried.status_code == relayed.status_code == 200
    assert carried.content == relayed.content == b'[{"00080018":{"vr":"UI"}}]'
    # nginx carried it (the app says no KHEOPS round trip of its own), with the token.
    assert "kheops;dur" not in carried.headers["server-timing"]
    assert "kheops;dur" in relayed.headers["server-timing"]
    assert (method, path) == ("GET", f"/api/{METADATA}")
    assert asked["authorization"] == f"Bearer {grant.token}"
    # Only the headers the relay lets through went up: no cookie, no forwarded-for, no key.
    assert set(asked) <= {"host", "authorization", "accept", "accept-encoding", "user-agent"}
    assert asked["accept"] == "application/json"
    assert asked["accept-encoding"] == carried.request.headers["accept-encoding"]
    # Down: the relay's allow-list and our security headers, the same as the app's own.
    names = {name for name in carried.headers} - NGINX_OWN
    assert names <= ALLOWED_OUT, names - ALLOWED_OUT
    assert all(len(carried.headers.get_list(name)) == 1 for name in names), carried.headers
    for name in (*(n.decode() for n in SECURITY_HEADERS), "content-type", "etag", "vary"):
        assert carried.headers.get(name) == relayed.headers.get(name), name
    assert carried.headers["cache-control"] == relayed.headers["cache-control"]
    assert carried.headers["cache-control"] == "private, max-age=600"
    assert_no_secret(carried, grant)


def test_the_browsers_headers_cannot_pose_as_nginx_or_reach_kheops(
    front: Front, grant: Grant
) -> None:
    forged = {
        "X-Relay-Offload-Key": "not-the-key",
        "X-Relay-Offload-Origins": "http://elsewhere.example",
        "X-Relay-Authorization": "Bearer the-browsers-own",
        "Authorization": "Bearer the-browsers-own",
        "X-Forwarded-For": "10.9.8.7",
    }
    with browser(front.nginx.url, grant, **forged) as through_nginx:
        carried = through_nginx.get(grant.path(METADATA), headers={"Range": "bytes=0-3"})

    assert carried.status_code == 200
    [(_, _, asked)] = [r for c in front.kheops.connections for r in c.requests]
    assert asked["authorization"] == f"Bearer {grant.token}"
    assert asked["range"] == "bytes=0-3"
    assert not any(name.startswith(("x-relay", "x-forwarded")) for name in asked)
    assert "kheops;dur" not in carried.headers["server-timing"]  # nginx carried it


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Relay-Offload-Key": "not-the-key", "X-Relay-Offload-Origins": "{kheops}"},
        {"X-Relay-Offload-Key": OFFLOAD_KEY, "X-Relay-Offload-Origins": "http://other.example"},
    ],
    ids=["no-key", "wrong-key", "origin-not-carried"],
)
def test_the_app_hands_a_read_over_only_to_whoever_has_the_key_and_reaches_that_kheops(
    front: Front, grant: Grant, headers: dict[str, str]
) -> None:
    headers = {k: v.replace("{kheops}", front.kheops.url) for k, v in headers.items()}
    with browser(front.app.url, grant, **headers) as to_the_app:
        answer = to_the_app.get(grant.path(METADATA))

    assert answer.status_code == 200
    assert answer.content == b'[{"00080018":{"vr":"UI"}}]'  # carried by the app itself
    assert_no_secret(answer, grant)


def test_with_the_key_the_app_hands_over_to_nginxs_location_for_that_kheops(
    front: Front, grant: Grant
) -> None:
    headers = {
        "X-Relay-Offload-Key": OFFLOAD_KEY,
        "X-Relay-Offload-Origins": f"{front.unreachable} {front.kheops.url.upper()}",
    }
    with browser(front.app.url, grant, **headers) as as_nginx:
        answer = as_nginx.get(grant.path(METADATA) + "?includefield=00080018")

    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["x-accel-redirect"] == (
        f"/_kheops_relay/1/api/{METADATA}?includefield=00080018"
    )
    assert answer.headers["x-relay-authorization"] == f"Bearer {grant.token}"
    assert front.kheops.asked() == []  # the app asked nothing of KHEOPS


# --- Refusals stay the app's ----------------------------------------------------------------


def test_refusals_through_nginx_are_the_apps_and_kheops_is_not_asked(
    front: Front, grant: Grant
) -> None:
    with browser(front.nginx.url, grant) as through_nginx:
        other_study = through_nginx.get(grant.path("studies/1.2.3.4/series"))
        traversal = through_nginx.get(
            f"/launches/{grant.launch_id}/dicomweb/studies/{STUDY}/%2e%2e/x"
        )
    with httpx.Client(base_url=front.nginx.url, trust_env=False) as stranger:
        no_cookie = stranger.get(grant.path(METADATA))
        internal = stranger.get(f"/_kheops_relay/1/api/{METADATA}")

    assert other_study.status_code == 403
    assert traversal.status_code == 400
    assert no_cookie.status_code == 401
    assert internal.status_code == 404  # nginx's internal locations: not from outside
    assert front.kheops.asked() == []


def test_kheops_unreachable_through_nginx_is_a_502_as_the_app_says_it(
    front: Front, transactional_db: None
) -> None:
    grant = make_grant(f"{front.unreachable}/api")
    with browser(front.nginx.url, grant) as through_nginx:
        carried = through_nginx.get(grant.path(METADATA))
    with browser(front.app.url, grant) as to_the_app:
        relayed = to_the_app.get(grant.path(METADATA))

    assert carried.status_code == relayed.status_code == 502
    assert carried.json()["error"] == relayed.json()["error"] == "KHEOPS could not be reached."
    assert carried.headers["cache-control"] == "no-store"
    assert_no_secret(carried, grant)


# --- Streams ----------------------------------------------------------------------------------


def test_a_large_answer_streams_through_nginx_whole(front: Front, grant: Grant) -> None:
    size = 0
    with browser(front.nginx.url, grant) as through_nginx:
        with through_nginx.stream("GET", grant.path(FRAMES)) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("multipart/related")
            for piece in answer.iter_raw():
                size += len(piece)

    assert size == int(answer.headers["content-length"]) > BIG_ANSWER_BYTES


def test_a_client_gone_mid_answer_closes_nginxs_request_to_kheops(
    front: Front, grant: Grant
) -> None:
    port = int(front.nginx.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=PROMPT_SECONDS) as sock:
        sock.sendall(
            f"GET {grant.path(FRAMES)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Cookie: {grant.cookie}\r\n\r\n".encode()
        )
        read = 0
        while read < 4 * PIECE:
            read += len(sock.recv(PIECE))
        wait_for(lambda: any("/frames/" in p for p in front.kheops.asked()))
        upstream = front.kheops.serving("/frames/")
    # A browser that names no encoding gets the bytes as they are (as from the app).
    assert upstream.requests[0][2]["accept-encoding"] == "identity"
    # The client is gone with most of the 128 MiB unsent: nginx drops KHEOPS's answer.
    wait_for(lambda: upstream.closed is not None)
    assert upstream.sent < BIG_ANSWER_BYTES // 2


def test_uploads_still_go_through_the_app(front: Front, grant: Grant) -> None:
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + b"\x00" * 1000 + b"\r\n--b1--\r\n"
    # From our own pages: the app's PUBLIC_BASE_URL here is its own address.
    with browser(front.nginx.url, grant, Origin=front.app.url) as through_nginx:
        stored = through_nginx.post(
            grant.path("studies"),
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'},
        )

    # The app's STOW path (its write audit), not the offload: KHEOPS got the upload whole.
    assert stored.status_code == 200, stored.text
    assert "kheops;dur" in stored.headers["server-timing"]
    [connection] = [c for c in front.kheops.connections if c.received]
    assert connection.received == len(body)


# --- The deployment's files agree with the app -------------------------------------------------


def test_nginx_sends_up_exactly_the_headers_the_app_lets_through() -> None:
    template = (REPO / "deploy" / "nginx" / "relay-location.conf.template").read_text()
    sent = {name.lower() for name in re.findall(r"^proxy_set_header ([A-Za-z-]+) ", template, re.M)}

    assert "proxy_pass_request_headers off;" in template
    assert sent - {"connection", "content-length", "user-agent"} == {
        *relay_rules.UPSTREAM_REQUEST_HEADERS,
        "authorization",
    }


def test_nginx_passes_on_every_security_header_the_app_hands_over() -> None:
    template = (REPO / "deploy" / "nginx" / "relay-location.conf.template").read_text()
    for name in SECURITY_HEADERS:
        variable = "$relay_" + name.decode().replace("-", "_")
        assert f"set {variable} $upstream_http_x_relay_{name.decode().replace('-', '_')};" in (
            template
        )
        assert re.search(rf"^add_header {name.decode()} \{variable} always;", template, re.M | re.I)
