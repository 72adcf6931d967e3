"""The relay against hostile and clumsy clients, over real sockets, on our production server.

Our app runs as production runs it (uvicorn in a process of its own, devstack's command) on
the test database, where each test puts a ready relayed grant. KHEOPS's DICOMweb is a fake on
loopback (FakeDicomweb) that records each connection: what it was asked, how much of its
answer the relay took, how much of an upload reached it, and when the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from devstack import ServerProcess
from launcher import sealing, services
from launcher.httpserver import MAX_HEAD_BYTES
from launcher.models import GrantState, LaunchGrant, TokenDelivery
from tests.stack import start_server_on_test_database

STUDY = "1.2.826.0.1.3680043.8.498.16"
FRAMES = f"studies/{STUDY}/series/1.2.3/instances/1.2.3.4/frames/1"
METADATA = f"studies/{STUDY}/series/1.2.3/metadata"
BIG_ANSWER_BYTES = 128 * 1024 * 1024
PIECE = 64 * 1024
# A hang detector for what must come back at once: not a speed claim.
PROMPT_SECONDS = 30.0


# --- KHEOPS's DICOMweb, faked on loopback -----------------------------------------------------


@dataclass
class Connection:
    opened: float
    closed: float | None = None
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    busy: bool = False
    sent: int = 0  # answer bytes the relay took (written, and drained)
    received: int = 0  # upload bytes that reached us


class FakeDicomweb:
    """An HTTP/1.1 DICOMweb server in a thread of its own: frames are a large multipart answer
    written only as fast as the relay takes it, metadata a small JSON, a STOW is read piece by
    piece and answered once whole."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def forget_the_past(self) -> None:
        """Another test begins: only the connections still open, their records emptied."""
        self.connections[:] = [c for c in self.connections if c.closed is None]
        for connection in self.connections:
            connection.requests.clear()
            connection.sent = connection.received = 0

    def asked(self) -> list[str]:
        return [path for c in self.connections for _, path, _ in c.requests]

    def serving(self, path_part: str) -> Connection:
        return next(c for c in self.connections if any(path_part in p for _, p, _ in c.requests))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(opened=time.monotonic())
        self.connections.append(connection)
        # Small buffers: what the relay took is close to what we wrote.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIECE)
        writer.transport.set_write_buffer_limits(high=PIECE)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                connection.busy = True
                line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, value in (h.split(":", 1) for h in lines if ":" in h)
                }
                connection.requests.append((method, path, headers))
                if method == "POST":
                    await self._read_upload(reader, connection, int(headers["content-length"]))
                    await self._answer(writer, connection, b'{"00081199":{"vr":"SQ"}}')
                elif "/frames/" in path:
                    await self._frames(writer, connection)
                else:
                    await self._answer(writer, connection, b'[{"00080018":{"vr":"UI"}}]')
                connection.busy = False
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            connection.closed = time.monotonic()
            writer.close()

    @staticmethod
    async def _read_upload(reader: asyncio.StreamReader, connection: Connection, size: int) -> None:
        while connection.received < size:
            piece = await reader.read(min(PIECE, size - connection.received))
            if not piece:
                raise asyncio.IncompleteReadError(b"", size - connection.received)
            connection.received += len(piece)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, connection: Connection, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/dicom+json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        connection.sent += len(body)

    @staticmethod
    async def _frames(writer: asyncio.StreamWriter, connection: Connection) -> None:
        start = b"--b0\r\nContent-Type: application/octet-stream\r\n\r\n"
        end = b"\r\n--b0--\r\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b'content-type: multipart/related; type="application/octet-stream"; boundary=b0\r\n'
            + f"content-length: {len(start) + BIG_ANSWER_BYTES + len(end)}\r\n\r\n".encode()
            + start
        )
        piece = b"\x00\x01" * (PIECE // 2)
        for _ in range(BIG_ANSWER_BYTES // PIECE):
            writer.write(piece)
            await writer.drain()  # only as fast as the relay takes it
            connection.sent += PIECE
        writer.write(end)
        await writer.drain()


# --- Our server, and a relayed grant ----------------------------------------------------------


@dataclass
class Relay:
    server: ServerProcess
    kheops: FakeDicomweb
    launch_id: str
    browser_key: str
    token: str

    @property
    def host(self) -> tuple[str, int]:
        port = int(self.server.url.rsplit(":", 1)[1])
        return "127.0.0.1", port

    def path(self, resource: str) -> str:
        return f"/launches/{self.launch_id}/dicomweb/{resource}"

    @property
    def cookie(self) -> str:
        return f"kheops_ohif_grant_{self.launch_id}={self.browser_key}"

    def head(self, method: str, resource: str, *extra: str) -> bytes:
        lines = [
            f"{method} {self.path(resource)} HTTP/1.1",
            f"Host: {self.host[0]}:{self.host[1]}",
            f"Cookie: {self.cookie}",
            *extra,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def browser(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"Cookie": self.cookie},
            trust_env=False,
            timeout=PROMPT_SECONDS,
        )

    def worker_fds(self) -> int:
        [pid] = self.server.worker_pids()
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))

    def worker_rss_bytes(self) -> int:
        [pid] = self.server.worker_pids()
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


@dataclass
class Running:
    server: ServerProcess
    kheops: FakeDicomweb


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, django_db_setup: None) -> Iterator[Running]:
    """One server process and one fake KHEOPS for the module (each test its own grant), on
    the test database (set up first: its name is what the server is given)."""
    kheops = FakeDicomweb()
    server = start_server_on_test_database(
        tmp_path_factory.mktemp("relay-server") / "server.log",
        DICOMWEB_RELAY_MAX_UPLOAD_BYTES=str(256 * 1024 * 1024),
    )
    try:
        server.wait_until_up("/healthz")
        yield Running(server, kheops)
    finally:
        server.stop()
        kheops.stop()


@pytest.fixture
def relay(running: Running, transactional_db: None) -> Iterator[Relay]:
    server, kheops = running.server, running.kheops
    log_start = server.log.stat().st_size
    launch_id, key, token = ready_relayed_grant(f"{kheops.url}/api")
    kheops.forget_the_past()
    relay = Relay(server, kheops, launch_id, key, token)
    with relay.browser() as browser:  # the grant looked up, the connection pool warm
        assert browser.get(relay.path(METADATA)).status_code == 200
    yield relay
    with server.log.open("rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    # Not one secret in any line the server logged, whatever happened.
    assert logged
    for secret in (token, key):
        assert secret not in logged


def ready_relayed_grant(
    dicomweb_endpoint: str, lifetime: timedelta = timedelta(hours=1)
) -> tuple[str, str, str]:
    """A ready relay-mode grant of STUDY in the test database: (launch id, the browser's key,
    the KHEOPS token), as a launch and its exchange would leave it; its token expires in
    `lifetime`."""
    launch_id, key, token = secrets.token_urlsafe(12), secrets.token_urlsafe(32), _token()
    LaunchGrant.objects.create(
        launch_id=launch_id,
        browser_key_hash=hashlib.sha256(key.encode()).hexdigest(),
        state=GrantState.READY,
        sealed_token=sealing.seal(token, purpose=services._GRANT_PURPOSE),
        expires_at=timezone.now() + lifetime,
        dicomweb_endpoint=dicomweb_endpoint,
        study_uids=[STUDY],
        mode="viewer",
        token_delivery=TokenDelivery.RELAY,
    )
    return launch_id, key, token


def _token() -> str:
    return "kheops-at-" + secrets.token_urlsafe(24)


def wait_for(condition: Callable[[], bool], *, seconds: float = PROMPT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)
        if not piece:
            break
        head += piece
    return head


@contextlib.contextmanager
def raw_connection(relay: Relay, *, receive_buffer: int | None = None) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(PROMPT_SECONDS)
    sock.connect(relay.host)
    try:
        yield sock
    finally:
        sock.close()


def others_are_answered(relay: Relay, count: int = 20) -> list[int]:
    """Other viewers' requests meanwhile, each on a connection of its own: their statuses."""

    def one(_: int) -> int:
        with relay.browser() as browser:
            return browser.get(relay.path(METADATA)).status_code

    with ThreadPoolExecutor(8) as viewers:
        return list(viewers.map(one, range(count)))


# --- Oversized headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        # One header larger than the server takes: sent at once, or a line at a time.
        ["X-Pad: " + "a" * (4 * MAX_HEAD_BYTES)],
        [f"X-Pad-{n}: " + "b" * 200 for n in range(2 * MAX_HEAD_BYTES // 200)],
        # A huge cookie, the relay's own credential's header.
        ["Cookie: other=" + "c" * (2 * MAX_HEAD_BYTES)],
    ],
    ids=["one-header", "many-headers", "cookie"],
)
def test_an_oversized_request_head_is_refused_by_the_server_and_kheops_is_not_asked(
    relay: Relay, extra: list[str]
) -> None:
    before = len(relay.kheops.asked())
    with raw_connection(relay) as sock:
        with contextlib.suppress(ConnectionError):  # the server may close while we send
            for line in (relay.head("GET", METADATA, *extra)[:-2] + b"\r\n").split(b"\r\n"):
                sock.sendall(line + b"\r\n")
        answer = read_head(sock)

    assert status_of(answer) == 431
    assert b"connection: close" in answer.lower()
    assert len(relay.kheops.asked()) == before
    assert others_are_answered(relay) == [200] * 20


def test_a_header_the_relay_would_forward_is_bounded_below_the_servers_limit(
    relay: Relay,
) -> None:
    before = len(relay.kheops.asked())
    with relay.browser() as browser:
        answer = browser.get(relay.path(METADATA), headers={"If-None-Match": "v" * 8000})

    assert answer.status_code == 400
    assert len(relay.kheops.asked()) == before


# --- Slow clients ---------------------------------------------------------------------------


def test_a_request_trickled_byte_by_byte_holds_up_no_other_viewer(relay: Relay) -> None:
    request = relay.head("GET", METADATA)
    with raw_connection(relay) as sock:
        trickled = threading.Event()

        def trickle() -> None:
            for byte in request[:-1]:
                sock.sendall(bytes([byte]))
                time.sleep(0.01)
            trickled.set()

        with ThreadPoolExecutor(1) as slow:
            done = slow.submit(trickle)
            time.sleep(0.2)  # well into its headers
            statuses = others_are_answered(relay)
            still_trickling = not trickled.is_set()
            done.result()
        sock.sendall(request[-1:])
        answer = read_head(sock)

    assert statuses == [200] * 20
    assert still_trickling
    assert status_of(answer) == 200


def test_a_client_that_reads_slowly_is_fed_only_as_fast_as_it_reads(relay: Relay) -> None:
    with raw_connection(relay, receive_buffer=PIECE) as sock:
        sock.sendall(relay.head("GET", FRAMES))
        head = read_head(sock)
        assert status_of(head) == 200
        read = 0
        while read < 4 * 1024 * 1024:
            read += len(sock.recv(PIECE))
        upstream = relay.kheops.serving("/frames/")
        time.sleep(1.0)  # the client stops reading
        sent_paused = upstream.sent
        statuses = others_are_answered(relay)
        time.sleep(2.0)
        sent_later = upstream.sent

    # The answer is 128 MiB: what the relay took from KHEOPS is what the client read plus
    # the buffers between them (sockets, which the kernel may still grow a little, uvicorn's,
    # httpx's), and it stays within that while the client does not read.
    # (Loopback socket buffers grow to a few MiB each; 24 MiB is far below the 128.)
    assert sent_paused - read < 24 * 1024 * 1024
    assert sent_later - read < 24 * 1024 * 1024
    assert statuses == [200] * 20


def test_memory_does_not_grow_with_the_size_of_an_answer(relay: Relay) -> None:
    before = relay.worker_rss_bytes()
    peak = before
    with relay.browser() as browser, browser.stream("GET", relay.path(FRAMES)) as answer:
        size = 0
        for piece in answer.iter_raw():
            size += len(piece)
            if size % (16 * 1024 * 1024) < len(piece):
                peak = max(peak, relay.worker_rss_bytes())

    assert size > BIG_ANSWER_BYTES
    assert peak - before < 32 * 1024 * 1024  # of a 128 MiB answer


# --- Clients that go away ---------------------------------------------------------------------


def test_a_client_gone_mid_answer_closes_the_upstream_connection_and_leaks_nothing(
    relay: Relay,
) -> None:
    fds_before = relay.worker_fds()
    for _ in range(3):
        with raw_connection(relay, receive_buffer=PIECE) as sock:
            sock.sendall(relay.head("GET", FRAMES))
            assert status_of(read_head(sock)) == 200
            read = 0
            while read < 2 * 1024 * 1024:
                read += len(sock.recv(PIECE))
        # The socket is closed: the relay's request to KHEOPS must end, mid-answer.
        upstream = [
            c for c in relay.kheops.connections if any("/frames/" in p for _, p, _ in c.requests)
        ]
        wait_for(lambda up=upstream: all(c.closed is not None for c in up))

    frames = [c for c in relay.kheops.connections if any("/frames/" in p for _, p, _ in c.requests)]
    assert len(frames) == 3
    assert all(c.sent < BIG_ANSWER_BYTES // 2 for c in frames)
    # Nothing left behind: every connection KHEOPS still has is idle (kept alive for reuse),
    # the server has no more files open than before, and it goes on answering.
    assert not any(c.busy and c.closed is None for c in relay.kheops.connections)
    wait_for(lambda: relay.worker_fds() <= fds_before + 1)
    assert others_are_answered(relay) == [200] * 20


def test_a_client_gone_mid_upload_closes_the_upstream_request(relay: Relay) -> None:
    size = 64 * 1024 * 1024
    with raw_connection(relay) as sock:
        sock.sendall(
            relay.head(
                "POST",
                "studies",
                f"Origin: {relay.server.url}",
                'Content-Type: multipart/related; type="application/dicom"; boundary=b0',
                f"Content-Length: {size}",
            )
        )
        piece = b"\x00" * PIECE
        for _ in range(64):  # 4 MiB of 64
            sock.sendall(piece)
        wait_for(lambda: any(c.received for c in relay.kheops.connections))
    upload = next(c for c in relay.kheops.connections if c.received)

    wait_for(lambda: upload.closed is not None)
    assert upload.received < size
    assert upload.requests[0][2]["authorization"] == f"Bearer {relay.token}"
    assert not any(c.busy and c.closed is None for c in relay.kheops.connections)
    assert others_are_answered(relay) == [200] * 20
