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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

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
        app.url, offload_kheops=[unreachable, kheops.url], offload_key=OFFLOAD_KEY, access_log=True
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
    render = (REPO / "deploy" / "nginx" / "render.sh").read_text()
    lua = (REPO / "deploy" / "nginx" / "kheops_relay.lua").read_text()
    for name in SECURITY_HEADERS:
        snake = name.decode().replace("-", "_")
        # Taken from the hand-over's X-Relay-<name> (or nginx's memory of it), then added.
        assert f'    "{snake}",' in lua
        assert f'set \\$relay_{snake} \\"\\";' in render
        assert re.search(
            rf"^add_header {name.decode()} \$relay_{snake} always;", template, re.M | re.I
        )


def test_nginx_carries_from_memory_only_what_the_app_accepts_of_the_browsers_headers() -> None:
    lua = (REPO / "deploy" / "nginx" / "kheops_relay.lua").read_text()
    forwarded = lua.split("local FORWARDED = {", 1)[1].split("}", 1)[0]

    assert re.findall(r'"http_([a-z_]+)"', forwarded) == [
        name.replace("-", "_") for name in relay_rules.UPSTREAM_REQUEST_HEADERS
    ]


# --- nginx's memory of a hand-over (deploy/nginx/kheops_relay.lua) ---------------------------


class Asked:
    """Whom an nginx (the front's, or `nginx`) asks for each relayed read from now on (its
    access log): the app and KHEOPS for a read the app handed over, KHEOPS alone for one
    carried from memory."""

    def __init__(self, front: Front, nginx: NginxFront | None = None) -> None:
        self.nginx = nginx or front.nginx
        self.names = {
            urlsplit(front.app.url).netloc: "app",
            urlsplit(front.kheops.url).netloc: "kheops",
        }
        self.start = len(self._lines())

    def _lines(self) -> list[str]:
        log = self.nginx.access_log()
        return [line for line in log.splitlines() if " /_kheops_relay/" in line]

    def of(self, reads: int) -> list[list[str]]:
        """The first `reads` since, once nginx has logged them (it does after answering)."""
        wait_for(lambda: len(self._lines()) >= self.start + reads)
        lines = self._lines()[self.start : self.start + reads]
        upstreams = [line.rsplit("upstream=", 1)[1] for line in lines]
        return [[self.names[a] for a in re.split(r"[ ,:]+ ", u)] for u in upstreams]


def raw_get(front: Front, grant: Grant, target: str) -> int:
    """A GET of `target` exactly as written (no client tidies its dots): the status."""
    host = urlsplit(front.nginx.url)
    with socket.create_connection((host.hostname, host.port), timeout=PROMPT_SECONDS) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host.netloc}\r\nCookie: {grant.cookie}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        return int(sock.recv(64).split(b" ", 2)[1])


def test_a_browsers_next_reads_of_the_study_are_carried_without_asking_the_app_again(
    front: Front, grant: Grant
) -> None:
    asked_nginx = Asked(front)
    with browser(front.nginx.url, grant) as through_nginx:
        handed_over = through_nginx.get(
            grant.path(METADATA), headers={"Accept": "application/json"}
        )
        kept = [
            through_nginx.get(grant.path(METADATA), headers={"Accept": "application/json"}),
            through_nginx.head(grant.path(METADATA) + "?includefield=00080018"),
            through_nginx.get(grant.path(f"studies/{STUDY}/series")),
        ]

    assert asked_nginx.of(4) == [["app", "kheops"], ["kheops"], ["kheops"], ["kheops"]]
    asked = [r for c in front.kheops.connections for r in c.requests]
    assert sorted((method, path) for method, path, _ in asked) == sorted(
        [
            ("GET", f"/api/{METADATA}"),
            ("GET", f"/api/{METADATA}"),
            ("HEAD", f"/api/{METADATA}?includefield=00080018"),
            ("GET", f"/api/studies/{STUDY}/series"),
        ]
    )
    assert all(headers["authorization"] == f"Bearer {grant.token}" for _, _, headers in asked)
    assert [answer.status_code for answer in kept] == [200, 200, 200]
    assert kept[0].content == handed_over.content == b'[{"00080018":{"vr":"UI"}}]'
    # The same answer as the hand-over's (Server-Timing aside: the app did not time it).
    for answer in kept:
        names = {name for name in answer.headers} - NGINX_OWN - {"x-request-id"}
        assert names == {name for name in handed_over.headers} - NGINX_OWN - {
            "x-request-id",
            "server-timing",
        }
        for name in names:
            assert answer.headers[name] == handed_over.headers[name], name
        assert_no_secret(answer, grant)


def test_what_nginx_remembers_carries_no_other_browser_study_method_or_address(
    front: Front, grant: Grant
) -> None:
    with browser(front.nginx.url, grant) as through_nginx:
        assert through_nginx.get(grant.path(METADATA)).status_code == 200  # kept now
    front.kheops.forget_the_past()
    other_browser = Grant(grant.launch_id, "not-" + grant.key, grant.token)
    with browser(front.nginx.url, other_browser) as stranger:
        no_grant = stranger.get(grant.path(METADATA))
    with httpx.Client(base_url=front.nginx.url, trust_env=False) as stranger:
        no_cookie = stranger.get(grant.path(METADATA))
    with browser(front.nginx.url, grant) as through_nginx:
        other_study = through_nginx.get(grant.path("studies/1.2.3.4/series"))
        other_host = through_nginx.get(grant.path(METADATA), headers={"Host": "elsewhere.example"})
        long_header = through_nginx.get(grant.path(METADATA), headers={"Accept": "a" * 1025})
        upload = through_nginx.post(grant.path(f"studies/{STUDY}"), content=b"x")
        asked_nginx = Asked(front)
        search = through_nginx.get(grant.path(f"studies?StudyInstanceUID={STUDY}"))
    base = f"/launches/{grant.launch_id}/dicomweb/studies/{STUDY}"
    raw = {
        "dots": raw_get(front, grant, f"{base}/series/../../1.2.3.4/series"),
        "dot": raw_get(front, grant, f"{base}/./series"),
        "encoded": raw_get(front, grant, f"{base}/%2e%2e/1.2.3.4/series"),
        "encoded slash": raw_get(front, grant, f"{base}%2F..%2F1.2.3.4/series"),
    }

    assert no_grant.status_code == no_cookie.status_code == 401
    assert other_study.status_code == 403
    assert other_host.status_code == 400  # the app's Host check, as without nginx's memory
    assert long_header.status_code == 400
    assert upload.status_code == 403  # not from our own pages
    assert raw == {"dots": 400, "dot": 400, "encoded": 400, "encoded slash": 400}
    # None of them reached KHEOPS, from memory or not; a search of the launch's study is the
    # app's to check, and it handed that one over again.
    assert front.kheops.asked() == [f"/api/studies?StudyInstanceUID={STUDY}"]
    assert search.status_code == 200
    assert asked_nginx.of(1) == [["app", "kheops"]]


def test_nginx_never_carries_a_read_from_memory_past_the_tokens_expiry(
    front: Front, transactional_db: None
) -> None:
    lifetime = timedelta(seconds=4)
    grant = Grant(*ready_relayed_grant(f"{front.kheops.url}/api", lifetime))
    expires = time.monotonic() + lifetime.total_seconds()
    front.kheops.forget_the_past()
    asked_nginx = Asked(front)
    with browser(front.nginx.url, grant) as through_nginx:
        assert through_nginx.get(grant.path(METADATA)).status_code == 200
        assert through_nginx.get(grant.path(METADATA)).status_code == 200
        # Kept for the token's whole seconds left (at most 3), never past them.
        assert asked_nginx.of(2) == [["app", "kheops"], ["kheops"]]
        time.sleep(max(0.0, expires - time.monotonic()) + 0.2)
        expired = through_nginx.get(grant.path(METADATA))

    assert expired.status_code == 401  # the app's answer: nginx had forgotten it
    assert expired.json()["error"]
    assert len(front.kheops.asked()) == 2


def test_under_a_sub_path_nginx_remembers_a_hand_over_too(front: Front, grant: Grant) -> None:
    under = NginxFront.start(
        front.app.url,
        offload_kheops=[front.kheops.url],
        offload_key=OFFLOAD_KEY,
        access_log=True,
        base_path="/ohif",
    )
    try:
        under.wait_until_up()
        asked_under, asked_front = Asked(front, under), Asked(front)
        with browser(under.url, grant) as through_nginx:
            answers = [through_nginx.get(grant.path(METADATA)) for _ in range(2)]
            outside = through_nginx.get(f"{front.nginx.url}{grant.path(METADATA)}")

        assert [a.url.path for a in answers] == [f"/ohif{grant.path(METADATA)}"] * 2
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[0].content == answers[1].content == b'[{"00080018":{"vr":"UI"}}]'
        assert asked_under.of(2) == [["app", "kheops"], ["kheops"]]
        # Another nginx's memory is its own: the front's asks the app.
        assert outside.status_code == 200
        assert asked_front.of(1) == [["app", "kheops"]]
    finally:
        under.stop()
