"""`make test-deploy`: the image and the compose stack, end to end through nginx over HTTPS.

1. The local Debian base (deploy/base-image.sh), then the images: the app for `/` and for the
   sub-path `/ohif` (build argument BASE_PATH), nginx, and stand-ins for the official postgres
   and redis images (deploy/test/Containerfile.services; no registry is reachable here).
2. The sub-path stack (deploy/compose.yaml, podman-compose): one launch through
   `https://localhost:<port>/ohif/`, its viewer page, an OHIF file, its token, a DICOMweb read.
3. The stack at `/`: register, launch, viewer, token, a DICOMweb read; the viewer reloaded on
   the replica that did not serve its launch; a burst of 100 launches during which one replica
   is stopped (gracefully, as `podman stop` does): 0 launches lost (one that failed is opened
   again from KHEOPS, as a clinician would) and 0 audit records lost.
4. Everything torn down, also on failure (the images stay, as a build cache).

The KHEOPS stand-in and Orthanc run on this machine; the stand-in listens on the stack's
network gateway (the containers call it there, over plain http: ALLOW_INSECURE_HTTP_KHEOPS, a
test lab) and trusts nginx's self-signed certificate (SANDBOX_CA_BUNDLE) when it fetches our
configuration document and JWKS through nginx. Prints the timings; exits non-zero on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from devstack import (
    REPO,
    ServerProcess,
    StandIn,
    free_port,
    meta_refresh_url,
    stand_in_env,
    start_orthanc,
)

DEPLOY = REPO / "deploy"
PROJECT = "kheops-ohif-test"
IMAGES = {
    "app": "localhost/kheops-ohif:test",
    "app-ohif": "localhost/kheops-ohif:test-ohif",
    "nginx": "localhost/kheops-ohif-nginx:test",
    "postgres": "localhost/kheops-ohif-test-postgres:test",
    "redis": "localhost/kheops-ohif-test-redis:test",
}
BURST = 100
# The clicks of the burst come over this many seconds (a clinic's busy minute, compressed),
# and one replica is stopped once this many launches have their viewer: clicks keep coming
# while it stops and after.
BURST_SECONDS = 10.0
STOP_AFTER = 25
# static/launcher/launch.js asks for the token again after these pauses when it is worth it.
VIEWER_RETRY_DELAYS = (1.0, 2.0, 4.0)
# A launch that failed is opened again from KHEOPS (a new code) this many times at most.
LAUNCH_ATTEMPTS = 3
TIMINGS: list[tuple[str, float]] = []


class Failed(Exception):
    pass


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"-- {what}", flush=True)
    yield
    TIMINGS.append((what, time.monotonic() - started))
    print(f"   {what}: {TIMINGS[-1][1]:.1f} s", flush=True)


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(DEPLOY / "test" / "containers.conf")}


def run(*command: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    completed = subprocess.run(  # noqa: S603 - our own commands
        command,
        env=env or podman_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if check and completed.returncode != 0:
        # The head of a long error says more than its traceback's last frames.
        err = completed.stderr
        err = err if len(err) <= 4000 else f"{err[:1500]}\n[…]\n{err[-2500:]}"
        raise Failed(
            f"{' '.join(command)} exited {completed.returncode}:\n{completed.stdout[-3000:]}{err}"
        )
    return completed.stdout


def build_images() -> None:
    with timed("base image (debootstrap, once)"):
        run(str(DEPLOY / "base-image.sh"))
    ca = ["--secret", "id=ca,src=/etc/ssl/certs/ca-certificates.crt"]
    with timed("app image"):
        run(
            "podman",
            "build",
            "-q",
            "--format",
            "docker",
            "-f",
            "Containerfile",
            *ca,
            "-t",
            IMAGES["app"],
            ".",
        )
    with timed("app image for the sub-path /ohif"):
        run("podman", "build", "-q", "--format", "docker", "-f", "Containerfile", *ca, "--build-arg", "BASE_PATH=/ohif",
            "-t", IMAGES["app-ohif"], ".")  # fmt: skip
    with timed("nginx, postgres and redis images"):
        run("podman", "build", "-q", "-t", IMAGES["nginx"], "deploy/nginx")
        for target in ("postgres", "redis"):
            run("podman", "build", "-q", "-f", "deploy/test/Containerfile.services",
                "--target", target, "-t", IMAGES[target], "deploy/test")  # fmt: skip
    size = int(run("podman", "image", "inspect", "--format", "{{.Size}}", IMAGES["app"]))
    print(f"   app image: {size / 1e6:.0f} MB", flush=True)
    TIMINGS.append(("app image size (MB)", size / 1e6))


@dataclass
class Stack:
    """One compose stack (deploy/compose.yaml) at https://localhost:<port><base_path>."""

    base_path: str
    workdir: Path
    port: int = field(default_factory=free_port)
    up: bool = False
    relay_offload_kheops: str = ""

    @property
    def public_url(self) -> str:
        return f"https://localhost:{self.port}{self.base_path}"

    def compose_env(self) -> dict[str, str]:
        (self.workdir / "tls").mkdir(exist_ok=True)
        return {
            **podman_env(),
            "KHEOPS_OHIF_IMAGE": IMAGES["app-ohif" if self.base_path else "app"],
            "NGINX_IMAGE": IMAGES["nginx"],
            "POSTGRES_IMAGE": IMAGES["postgres"],
            "REDIS_IMAGE": IMAGES["redis"],
            "BASE_PATH": self.base_path,
            "PUBLIC_BASE_URL": self.public_url,
            "PUBLISH_ADDRESS": "127.0.0.1",
            "HTTPS_PORT": str(self.port),
            "HTTP_PORT": str(free_port()),
            "TLS_DIR": str(self.workdir / "tls"),
            # One client address (this machine) launches hundreds of times: the point here.
            "LAUNCH_RATE_LIMIT": "off",
            "TOKEN_RATE_LIMIT": "off",
            # The stand-in answers on the network's gateway, over plain http (a test lab).
            "ALLOW_INSECURE_HTTP_KHEOPS": "true",
            "RELAY_OFFLOAD_KHEOPS": self.relay_offload_kheops,
        }

    def compose(self, *args: str, check: bool = True) -> str:
        return run(
            "podman-compose", "-p", PROJECT, "-f", str(DEPLOY / "compose.yaml"), *args,
            env=self.compose_env(), check=check,
        )  # fmt: skip

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def start(self) -> None:
        self.up = True
        self.compose("up", "-d")
        # The one-shot migration, then both replicas ready through nginx.
        status = run("podman", "wait", self.container("migrate")).strip()
        if status != "0":
            raise Failed(f"migrate exited {status}:\n{self.logs('migrate')}")
        deadline = time.monotonic() + 90
        ready: set[str] = set()
        while ready != {"app-1", "app-2"}:
            for service in {"app-1", "app-2"} - ready:
                # The image's HEALTHCHECK, run now (podman runs it on a timer only under
                # systemd).
                health = subprocess.run(  # noqa: S603
                    ["podman", "healthcheck", "run", self.container(service)],  # noqa: S607
                    capture_output=True, env=podman_env(), check=False,
                )  # fmt: skip
                if health.returncode == 0:
                    ready.add(service)
            if time.monotonic() > deadline:
                raise Failed(f"not healthy in 90 s: {sorted({'app-1', 'app-2'} - ready)}")
            time.sleep(1)
        run("podman", "cp", f"{self.container('nginx')}:/var/lib/nginx-tls/self-signed.crt",
            str(self.cert))  # fmt: skip
        self.wait_for_nginx()

    def offload_relay_to_nginx(self, kheops_url: str) -> None:
        """nginx made again with its relay offload on for `kheops_url` (known only once the
        stack's network is up: the stand-in answers on its gateway)."""
        self.relay_offload_kheops = kheops_url
        self.compose("up", "-d", "--no-deps", "--force-recreate", "nginx")
        self.wait_for_nginx()
        if f"the relay offload carries reads from: {kheops_url}" not in self.logs("nginx"):
            raise Failed(f"nginx did not take up the offload:\n{self.logs('nginx')[-1500:]}")

    def wait_for_nginx(self) -> None:
        with self.client() as http:
            for _ in range(60):
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.public_url}/readyz").status_code == 200:
                        return
                time.sleep(1)
        raise Failed(f"{self.public_url}/readyz never answered 200 through nginx")

    @property
    def cert(self) -> Path:
        return self.workdir / "nginx.crt"

    def client(self) -> httpx.Client:
        return httpx.Client(verify=str(self.cert), trust_env=False, timeout=60)

    def gateway(self) -> str:
        return run(
            "podman", "network", "inspect", f"{PROJECT}_default",
            "--format", "{{range .Subnets}}{{.Gateway}}{{end}}",
        ).strip()  # fmt: skip

    def manage(self, *args: str) -> str:
        try:
            return run("podman", "exec", self.container("app-1"), "kheops-ohif", "manage", *args)
        except Failed as exc:
            # Seen on this machine in about half of the runs of 2026-11-30: a one-off command
            # in app-1 of a stack just up gets no database connection in 10 s (psycopg_pool's
            # PoolTimeout), twice in a row, while the replicas' own connections are fine. The
            # probe below found the name lookup of `postgres` taking 20 s (podman's resolver
            # waiting on outside DNS, which this machine does not reach), not the database.
            # What a direct connection from app-1 says is printed; the command runs in app-2.
            if "PoolTimeout" not in str(exc):
                raise
            print(f"   {args[0]}: no database connection from app-1 in 10 s", flush=True)
            print(f"   app-1 connecting directly: {self._connect_from('app-1')}", flush=True)
            return run("podman", "exec", self.container("app-2"), "kheops-ohif", "manage", *args)

    def _connect_from(self, service: str) -> str:
        probe = (
            "import socket, time, psycopg\n"
            "t = time.monotonic()\n"
            "address = socket.getaddrinfo('postgres', 5432)[0][4][0]\n"
            "print(f'postgres is {address} ({time.monotonic() - t:.2f} s);', end=' ')\n"
            "psycopg.connect(host='postgres', dbname='kheops_ohif', user='kheops_ohif',"
            " password=open('/run/secrets/kheops-ohif/db_password').read().strip(),"
            " connect_timeout=5).close()\n"
            "print(f'connected in {time.monotonic() - t:.2f} s')\n"
        )
        completed = subprocess.run(  # noqa: S603
            ["podman", "exec", self.container(service), "/opt/venv/bin/python", "-c", probe],  # noqa: S607
            capture_output=True, text=True, env=podman_env(), check=False, timeout=60,
        )  # fmt: skip
        return (completed.stdout + completed.stderr[-300:]).strip()

    def sql(self, query: str) -> list[list[str]]:
        out = run(
            "podman", "exec", self.container("postgres"),
            "psql", "-U", "kheops_ohif", "-d", "kheops_ohif", "-At", "-F", "\t", "-c", query,
        )  # fmt: skip
        return [line.split("\t") for line in out.splitlines() if line]

    def logs(self, service: str) -> str:
        completed = subprocess.run(  # noqa: S603
            ["podman", "logs", self.container(service)],  # noqa: S607
            capture_output=True, text=True, env=podman_env(), check=False,
        )  # fmt: skip
        return completed.stdout + completed.stderr

    def upstreams(self) -> dict[str, str]:
        """Each request id of nginx's access log: the replica(s) it went to ("a, b": the first
        failed, nginx sent it on to the second)."""
        return dict(re.findall(r"request_id=(\S+) upstream=(.+?) cache=", self.logs("nginx")))

    def upstream_of(self, request_id: str) -> str:
        """The replica (address) nginx sent the request `request_id` to (its access log)."""
        match = re.search(rf"request_id={request_id} upstream=(\S+)", self.logs("nginx"))
        if match is None:
            raise Failed(f"request {request_id} is not in nginx's access log")
        return match.group(1)

    def stop(self) -> None:
        if self.up:
            self.compose("down", "-v", "-t", "5", check=False)
            # podman-compose 1.0 leaves the network behind.
            run("podman", "network", "rm", "-f", f"{PROJECT}_default", check=False)
            self.up = False


@dataclass
class Kheops:
    """Orthanc and the KHEOPS stand-in on this machine."""

    workdir: Path
    orthanc: object | None = None
    stand_in: StandIn | None = None
    control_url: str = ""

    def start(self, host: str, cert: Path) -> str:
        if self.orthanc is None:
            self.orthanc = start_orthanc(self.workdir / "orthanc")
        root = f"http://{host}:{free_port()}"
        env = stand_in_env(
            root,
            orthanc_url=self.orthanc.url,  # type: ignore[attr-defined]
            workdir=self.workdir,
            SANDBOX_CA_BUNDLE=str(cert),
        )
        self.stand_in = StandIn(root_url=root, env=env)
        self.stand_in.prepare()
        port = root.rsplit(":", 1)[1]
        # Also on loopback: its control API (/_sandbox/: user tokens, state) answers only there.
        self.control_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "gunicorn", "sandbox.wsgi",
            "--bind", f"{host}:{port}", "--bind", f"127.0.0.1:{port}",
            "--worker-class", "gthread", "--workers", "2", "--threads", "16",
            "--backlog", "2048", "--timeout", "120", "--forwarded-allow-ips", "",
        ]  # fmt: skip
        self.stand_in.server = ServerProcess.start(
            "KHEOPS stand-in", command, url=root, env=env, log=self.workdir / "stand-in.log"
        )
        self.stand_in.wait_until_up()
        return root

    def stop_stand_in(self) -> None:
        if self.stand_in is not None:
            self.stand_in.stop()
            self.stand_in = None

    def stop(self) -> None:
        self.stop_stand_in()
        if self.orthanc is not None:
            self.orthanc.stop()  # type: ignore[attr-defined]


# --- one clinician's launch -----------------------------------------------------------------------


@dataclass
class Launch:
    viewer_url: str = ""
    token_url: str = ""
    authorization: str = ""
    request_id: str = ""
    token_request_id: str = ""
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


class Clinician:
    def __init__(self, stack: Stack, kheops_url: str, control_url: str, album_id: str) -> None:
        self.stack = stack
        self.kheops_url = kheops_url
        self.control_url = control_url
        self.album_id = album_id
        self._client_ids: list[str] = []

    async def report(
        self, http: httpx.AsyncClient, user_token: str, client_id: str, studies: list[str]
    ) -> httpx.Response:
        """KHEOPS's answer to a click on our report provider for `studies`: the page whose
        meta refresh goes to our launch URL."""
        return await http.post(
            f"{self.kheops_url}/api/report",
            data={"access_token": user_token, "client_id": client_id, "studyUID": studies,
                  "return_uri": f"{self.kheops_url}/albums/x"},
        )  # fmt: skip

    def user_token(self, username: str) -> str:
        with httpx.Client(trust_env=False) as http:
            answer = http.post(
                f"{self.control_url}/_sandbox/user-token", json={"username": username}
            )
            answer.raise_for_status()
            return answer.json()["access_token"]

    def register(self) -> str:
        with httpx.Client(trust_env=False, timeout=30) as http:
            answer = http.post(
                f"{self.kheops_url}/api/albums/{self.album_id}/reportproviders",
                data={"url": f"{self.stack.public_url}/providers/ohif/configuration",
                      "name": "OHIF (compose)"},
                headers={"Authorization": f"Bearer {self.user_token('alice')}"},
            )  # fmt: skip
        if answer.status_code != 201:
            raise Failed(f"registration through nginx: {answer.status_code} {answer.text[:300]}")
        return answer.json()["client_id"]

    def studies(self) -> list[str]:
        with httpx.Client(trust_env=False) as http:
            state = http.get(f"{self.control_url}/_sandbox/state").json()
        [album] = [album for album in state["albums"] if album["album_id"] == self.album_id]
        return [study["study_uid"] for study in album["studies"]]

    async def launch(
        self, client_id: str, user_token: str, studies: list[str], *, retry: bool = True
    ) -> Launch:
        """KHEOPS's form POST, our launch (through nginx), the viewer's token request; opened
        again from KHEOPS (a new code: KHEOPS's codes change each second) if it failed."""
        result = Launch()
        for attempt in range(LAUNCH_ATTEMPTS if retry else 1):
            result.attempts = attempt + 1
            if attempt:
                await asyncio.sleep(1.1)
            error = await self._attempt(result, client_id, user_token, studies)
            if not error:
                return result
            result.errors.append(error)
        return result

    async def _attempt(
        self, result: Launch, client_id: str, user_token: str, studies: list[str]
    ) -> str:
        async with httpx.AsyncClient(
            verify=str(self.stack.cert), trust_env=False, timeout=120
        ) as http:
            try:
                report = await self.report(http, user_token, client_id, studies)
                if report.status_code != 200:
                    return f"KHEOPS report {report.status_code}"
                launch_url = meta_refresh_url(report)
                launch = await http.get(launch_url)
                location = launch.headers.get("Location", "")
                if launch.status_code != 302 or "/viewer?" not in location:
                    return f"launch {launch.status_code}"
                result.request_id = launch.headers.get("X-Request-ID", "")
                result.viewer_url = urljoin(launch_url, location)
                result.token_url = (
                    f"{self.stack.public_url}/launches/{launch_id_of(location)}/token"
                )
                for pause in (*VIEWER_RETRY_DELAYS, None):
                    token = await http.get(result.token_url)
                    retryable = token.status_code in (502, 503, 504) or (
                        token.headers.get("content-type", "").startswith("application/json")
                        and token.json().get("retryable")
                    )
                    if token.status_code == 200 or pause is None or not retryable:
                        break
                    await asyncio.sleep(pause)
                result.token_request_id = token.headers.get("X-Request-ID", "")
                if token.status_code != 200:
                    return f"token {token.status_code}"
                result.authorization = token.json().get("authorization", "")
                return "" if result.authorization.startswith("Bearer ") else "token without it"
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}"


def launch_id_of(url: str) -> str:
    match = re.search(r"/launches/([^/]+)/", url)
    if match is None:
        raise Failed(f"not a viewer URL: {url}")
    return match.group(1)


# --- the scenarios --------------------------------------------------------------------------------


def one_launch_end_to_end(stack: Stack, clinician: Clinician, client_id: str) -> Launch:
    studies = clinician.studies()
    launch = asyncio.run(clinician.launch(client_id, clinician.user_token("alice"), studies[:1]))
    if not launch.authorization:
        raise Failed(f"the launch failed: {launch.errors}")
    with stack.client() as http:
        page = http.get(launch.viewer_url, cookies=None)
        # A new client has no grant cookie: the viewer is this browser's only.
        if page.status_code != 403:
            raise Failed(f"the viewer opened in another browser: {page.status_code}")
        read = httpx.get(
            f"{clinician.kheops_url}/api/studies/{studies[0]}/series",
            headers={"Authorization": launch.authorization, "Accept": "application/dicom+json"},
            trust_env=False,
        )
        if read.status_code != 200 or not read.json():
            raise Failed(f"DICOMweb read with the viewer's token: {read.status_code}")
    return launch


def viewer_in_its_browser(stack: Stack, clinician: Clinician, client_id: str) -> None:
    """Launch in one browser, then load its viewer page and OHIF's files as it would."""
    studies = clinician.studies()
    token = clinician.user_token("alice")
    # KHEOPS's codes carry no nonce: the same user and study in the same second as the
    # previous scenario's launch would get the same code, which we rightly refuse as a replay.
    time.sleep(1.1)

    async def browse() -> None:
        async with httpx.AsyncClient(verify=str(stack.cert), trust_env=False, timeout=60) as http:
            report = await clinician.report(http, token, client_id, studies[:1])
            viewer = await http.get(meta_refresh_url(report), follow_redirects=True)
            if viewer.status_code != 200 or '<div id="root">' not in viewer.text:
                raise Failed(f"viewer page {viewer.status_code} at {viewer.url.path}")  # no code
            scripts = re.findall(r'<script[^>]+src="([^"]+)"', viewer.text)
            ohif = [src for src in scripts if "/static/ohif/" in src]
            if not ohif or not ohif[0].startswith(f"{stack.base_path}/static/"):
                raise Failed(f"OHIF's scripts not under {stack.base_path}/static/: {scripts}")
            asset = await http.get(urljoin(str(viewer.url), ohif[0]))
            if asset.status_code != 200 or "immutable" not in asset.headers["cache-control"]:
                raise Failed(f"OHIF file {ohif[0]}: {asset.status_code}")
            token_url = re.sub(r"/viewer.*", "/token", str(viewer.url))
            answer = await http.get(token_url)
            if answer.status_code != 200:
                raise Failed(f"token in the viewer's browser: {answer.status_code}")

    asyncio.run(browse())


GRANT_COOKIE = "kheops_ohif_grant_"


@dataclass
class RelayedRead:
    url: str  # through the compose stack's nginx
    cookie: str  # the viewer's grant cookie, as its Cookie header says it
    content: bytes


@contextlib.contextmanager
def relayed_read_carried_by_nginx(
    stack: Stack, clinician: Clinician, client_id: str
) -> Iterator[RelayedRead]:
    """Relay mode, nginx's offload on: a DICOMweb read through our relay is carried by nginx
    (the app hands it over: its Server-Timing names no KHEOPS round trip of its own, and
    nginx's access log names both the replica and KHEOPS); the next read of the study is
    carried from nginx's memory of that hand-over (its access log names KHEOPS alone); and
    nothing the browser gets says how (no X-Relay-*, no X-Accel-*). Relay mode stays on for
    the `with` block, which gets the read."""
    studies = clinician.studies()
    token = clinician.user_token("bob")
    stack.manage("shell", "-c", RELAY_FOR_ALL_PROVIDERS.format(mode="relay"))
    # Every server process sees relay mode once its providers kept in memory are older than
    # LOOKUP_CACHE_SECONDS (5 s); the launch also gets a code of its own (see
    # viewer_in_its_browser).
    time.sleep(5.5)

    async def browse() -> tuple[httpx.Response, httpx.Response, str]:
        async with httpx.AsyncClient(verify=str(stack.cert), trust_env=False, timeout=60) as http:
            report = await clinician.report(http, token, client_id, studies[2:3])
            viewer = await http.get(meta_refresh_url(report), follow_redirects=True)
            if viewer.status_code != 200:
                raise Failed(f"relay-mode viewer page {viewer.status_code}")
            launch_id = launch_id_of(str(viewer.url))
            # As the viewer does: its token request first, which finishes the code exchange
            # (a read of a grant still being exchanged is the app's to carry).
            expiry = await http.get(f"{stack.public_url}/launches/{launch_id}/token")
            if expiry.status_code != 200 or "authorization" in expiry.json():
                raise Failed(f"relay-mode token request {expiry.status_code}")
            series = f"{stack.public_url}/launches/{launch_id}/dicomweb/studies/{studies[2]}/series"
            handed_over = await http.get(series, headers={"Accept": "application/dicom+json"})
            kept = await http.get(series, headers={"Accept": "application/dicom+json"})
            cookie = f"{GRANT_COOKIE}{launch_id}={http.cookies[GRANT_COOKIE + launch_id]}"
            return handed_over, kept, cookie

    try:
        answer, kept, cookie = asyncio.run(browse())
        carried_by_nginx(stack, clinician, answer, kept)
        yield RelayedRead(str(answer.request.url), cookie, answer.content)
    finally:
        stack.manage("shell", "-c", RELAY_FOR_ALL_PROVIDERS.format(mode=""))
        # Each server process keeps the providers it read for LOOKUP_CACHE_SECONDS (5 s);
        # a launch meanwhile could still be in relay mode (the burst's "token without it").
        time.sleep(5.5)


def carried_by_nginx(
    stack: Stack, clinician: Clinician, answer: httpx.Response, kept: httpx.Response
) -> None:
    if answer.status_code != 200 or not answer.json():
        raise Failed(f"relayed read through nginx: {answer.status_code} {answer.text[:200]}")
    timing = answer.headers.get("server-timing", "")
    if not timing.startswith("app;dur=") or "kheops" in timing:
        raise Failed(f"the app carried the read itself (Server-Timing: {timing})")
    if any(name.startswith(("x-relay", "x-accel")) for name in answer.headers):
        raise Failed(f"hand-over headers reached the browser: {list(answer.headers)}")
    upstream = stack.upstreams().get(answer.headers["x-request-id"], "")
    if upstream.count(":") < 3 or clinician.kheops_url.split("//")[1] not in upstream:
        raise Failed(f"nginx's access log does not show the hand-over: {upstream!r}")
    print(f"   relayed read carried by nginx: upstreams {upstream}", flush=True)
    from_memory = stack.upstreams().get(kept.headers.get("x-request-id", ""), "")
    if kept.status_code != 200 or kept.content != answer.content or "server-timing" in kept.headers:
        raise Failed(f"the next read was not carried from nginx's memory: {kept.status_code}")
    if from_memory.count(":") != 1 or clinician.kheops_url.split("//")[1] not in from_memory:
        raise Failed(f"nginx's access log shows the app asked again: {from_memory!r}")
    print(f"   the next read carried from nginx's memory: upstream {from_memory}", flush=True)


def reads_through_the_kubernetes_sidecar(
    stack: Stack, clinician: Clinician, read: RelayedRead
) -> None:
    """The nginx image as deploy/kubernetes runs it beside the app in each pod: in app-1's
    network namespace (as a pod's containers share one), its root file system read-only, as
    the app's unprivileged user, writing only to its own tmpfs directories (the pod's
    emptyDirs), plain HTTP on 8080 behind a proxy that ends TLS (this harness plays the
    ingress: Host and X-Forwarded-Proto), its relay offload on with the key from the secrets.
    Through it: its own health, the app's, and the viewer's relayed read, handed over by the
    app, then again from nginx's memory."""
    sidecar = f"{PROJECT}_sidecar"
    run(
        "podman", "run", "-d", "--name", sidecar,
        "--network", f"container:{stack.container('app-1')}",
        "--read-only", "--user", "10001:10001",
        # Each emptyDir of deploy/kubernetes: empty, writable by the pod's user.
        *(arg for path in ("/run/nginx", "/var/cache/nginx", "/var/lib/nginx", "/var/log/nginx")
          for arg in ("--tmpfs", f"{path}:rw,U")),
        "-v", f"{PROJECT}_secrets:/run/secrets/kheops-ohif:ro",
        "-e", "LISTEN_HTTP=8080", "-e", "UPSTREAMS=127.0.0.1:8000",
        "-e", "NGINX_CONF_DIR=/run/nginx", "-e", f"PUBLIC_BASE_URL={stack.public_url}",
        "-e", f"RELAY_OFFLOAD_KHEOPS={clinician.kheops_url}",
        "-e", "RELAY_OFFLOAD_KEY_FILE=/run/secrets/kheops-ohif/relay_offload_key",
        IMAGES["nginx"],
    )  # fmt: skip
    try:
        address = run(
            "podman", "inspect", stack.container("app-1"),
            "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ).strip()  # fmt: skip
        pod = f"http://{address}:8080"
        as_the_ingress = {"Host": urlsplit(stack.public_url).netloc, "X-Forwarded-Proto": "https"}
        with httpx.Client(trust_env=False, timeout=30) as http:
            for _ in range(30):
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{pod}/nginx-healthz").status_code == 200:
                        break
                time.sleep(0.5)
            else:
                raise Failed(f"the sidecar never answered:\n{sidecar_logs(sidecar)[-1500:]}")
            ready = http.get(f"{pod}/readyz", headers=as_the_ingress)
            if ready.status_code != 200:
                raise Failed(f"the app through the sidecar: {ready.status_code}")
            path = urlsplit(read.url).path
            headers = {**as_the_ingress, "Cookie": read.cookie, "Accept": "application/dicom+json"}
            answers = [http.get(f"{pod}{path}", headers=headers) for _ in range(2)]
        logged = sidecar_logs(sidecar)
        upstreams = [
            dict(re.findall(r"request_id=(\S+) upstream=(.+?) cache=", logged)).get(
                answer.headers.get("x-request-id", ""), ""
            )
            for answer in answers
        ]
        kheops = clinician.kheops_url.split("//")[1]
        if [a.status_code for a in answers] != [200, 200] or any(
            a.content != read.content for a in answers
        ):
            raise Failed(f"relayed reads through the sidecar: {[a.status_code for a in answers]}")
        if upstreams[0] != f"127.0.0.1:8000 : {kheops}" or upstreams[1] != kheops:
            raise Failed(f"the sidecar's access log: {upstreams} (app, then memory expected)")
        print(f"   through the sidecar: handed over ({upstreams[0]}), then from memory", flush=True)
    finally:
        subprocess.run(  # noqa: S603
            ["podman", "rm", "-f", sidecar],  # noqa: S607
            capture_output=True, env=podman_env(), check=False,
        )  # fmt: skip


def sidecar_logs(name: str) -> str:
    completed = subprocess.run(  # noqa: S603
        ["podman", "logs", name],  # noqa: S607
        capture_output=True, text=True, env=podman_env(), check=False,
    )  # fmt: skip
    return completed.stdout + completed.stderr


RELAY_FOR_ALL_PROVIDERS = (
    "from launcher.models import Provider; Provider.objects.update(token_delivery='{mode}')"
)


def reload_on_the_other_replica(stack: Stack, clinician: Clinician, client_id: str) -> None:
    studies = clinician.studies()
    token = clinician.user_token("bob")

    async def reloads() -> tuple[str, str, int]:
        async with httpx.AsyncClient(verify=str(stack.cert), trust_env=False, timeout=60) as http:
            report = await clinician.report(http, token, client_id, studies[1:2])
            launch = await http.get(meta_refresh_url(report))
            launched_on = stack.upstream_of(launch.headers["X-Request-ID"])
            viewer_url = urljoin(str(launch.url), launch.headers["Location"])
            # nginx takes turns: within a few reloads one is answered by the other replica.
            for _ in range(6):
                page = await http.get(viewer_url)
                served_by = stack.upstream_of(page.headers["X-Request-ID"])
                if served_by != launched_on:
                    return launched_on, served_by, page.status_code
            raise Failed(f"every reload went to {launched_on}")

    launched_on, served_by, status = asyncio.run(reloads())
    print(f"   launched on {launched_on}, reloaded on {served_by}: {status}", flush=True)
    if status != 200:
        raise Failed(f"the reload on the other replica answered {status}")


def burst_with_a_replica_stopped(stack: Stack, clinician: Clinician) -> dict[str, object]:
    # KHEOPS's codes have no random part: each launch of the burst needs its own client id,
    # user or studies (another registration is another client id).
    tokens = [clinician.user_token(user) for user in ("alice", "bob")]
    studies = clinician.studies()[:3]
    orders = [list(order) for size in (1, 2, 3) for order in itertools.permutations(studies, size)]
    client_ids = [
        clinician.register() for _ in range(math.ceil(BURST / (len(tokens) * len(orders))))
    ]
    plan = [
        (client_id, token, order)
        for client_id in client_ids
        for token in tokens
        for order in orders
    ][:BURST]
    assert len(plan) == BURST, len(plan)
    done = threading.Event()
    stopped: dict[str, float] = {}
    started_at = time.time()

    def stop_app_1() -> None:
        done.wait(timeout=120)
        stopped["at"] = time.monotonic()
        run("podman", "stop", "-t", "45", stack.container("app-1"))
        stopped["took"] = time.monotonic() - stopped["at"]

    async def all_launches() -> list[Launch]:
        finished = 0

        async def one(index: int, item: tuple[str, str, list[str]]) -> Launch:
            nonlocal finished
            await asyncio.sleep(index * BURST_SECONDS / BURST)
            result = await clinician.launch(*item)
            finished += 1
            if finished == STOP_AFTER:
                done.set()
            return result

        return await asyncio.gather(*(one(index, item) for index, item in enumerate(plan)))

    stopper = threading.Thread(target=stop_app_1, daemon=True)
    stopper.start()
    began = time.monotonic()
    launches = asyncio.run(all_launches())
    took = time.monotonic() - began
    done.set()
    stopper.join(timeout=120)
    lost = [launch for launch in launches if not launch.authorization]
    retried = [launch for launch in launches if launch.attempts > 1]
    launch_ids = {launch_id_of(launch.viewer_url) for launch in launches if launch.authorization}
    rows = stack.sql(
        "SELECT launch_id, outcome FROM launcher_launchrecord "  # noqa: S608 - our own number
        f"WHERE created_at >= to_timestamp({started_at - 1:.3f})"
    )
    outcomes = Counter(outcome for _, outcome in rows)
    success_ids = {launch_id for launch_id, outcome in rows if outcome == "success"}
    missing_audit = launch_ids - success_ids
    attempts = sum(launch.attempts for launch in launches)
    # Which replica answered each launch (the last attempt's), from nginx's access log.
    upstreams = stack.upstreams()
    served_by = Counter(upstreams.get(launch.request_id, "?") for launch in launches)
    tokens_served_by = Counter(upstreams.get(launch.token_request_id, "?") for launch in launches)
    passed_on = sum(", " in upstream for upstream in upstreams.values())
    summary = {
        "launches": len(launches),
        "lost": len(lost),
        "opened again from KHEOPS": len(retried),
        "attempts": attempts,
        "audit records": len(rows),
        "audit outcomes": dict(outcomes),
        "successes without their audit record": len(missing_audit),
        "seconds": round(took, 1),
        "replica stopped after (s)": round(stopped.get("at", began) - began, 1),
        "its graceful stop took (s)": round(stopped.get("took", 0.0), 1),
        "launches by replica": dict(served_by),
        "token requests by replica": dict(tokens_served_by),
        "requests nginx sent on to the other replica": passed_on,
        "errors seen": dict(Counter(error for launch in launches for error in launch.errors)),
    }
    print("   " + json.dumps(summary), flush=True)
    if "at" not in stopped or stopped["at"] - began > took:
        raise Failed("the replica was not stopped during the burst")
    # Both replicas served the burst's requests (launches or token requests: nginx takes turns
    # over all requests, so at a steady pace the launches alone can all land on one).
    replicas = {
        upstream
        for upstream in (*served_by, *tokens_served_by)
        if upstream != "?" and ", " not in upstream
    }
    if len(replicas) < 2:
        raise Failed(f"the burst did not reach both replicas: {dict(served_by + tokens_served_by)}")
    if lost:
        raise Failed(f"{len(lost)} launches lost: {[launch.errors for launch in lost][:5]}")
    if missing_audit:
        raise Failed(f"{len(missing_audit)} successful launches without their audit record")
    if len(rows) < len(launches):
        raise Failed(f"{len(rows)} audit records for {len(launches)} launches")
    return summary


def main() -> int:
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="kheops-ohif-deploy-"))
    kheops = Kheops(workdir)
    stack: Stack | None = None
    burst: dict[str, object] = {}
    try:
        build_images()
        for base_path in ("/ohif", ""):
            label = f"stack at {base_path or '/'}"
            stack = Stack(base_path=base_path, workdir=workdir)
            with timed(f"{label}: up (secrets, PostgreSQL, migrate, 2 replicas, nginx)"):
                stack.start()
            with timed(f"{label}: KHEOPS stand-in on the stack's network gateway"):
                kheops_url = kheops.start(stack.gateway(), stack.cert)
                stack.manage("trust_kheops", kheops_url, "--name", "KHEOPS stand-in")
                assert kheops.stand_in is not None
                clinician = Clinician(
                    stack, kheops_url, kheops.control_url, kheops.stand_in.album_id
                )
            with timed(f"{label}: register, launch, token, DICOMweb read (through nginx)"):
                client_id = clinician.register()
                one_launch_end_to_end(stack, clinician, client_id)
                viewer_in_its_browser(stack, clinician, client_id)
            if not base_path:
                with timed(f"{label}: nginx's relay offload on, a relayed read carried by it"):
                    stack.offload_relay_to_nginx(kheops_url)
                    with relayed_read_carried_by_nginx(stack, clinician, client_id) as read:
                        with timed(f"{label}: the nginx image as the Kubernetes pod's sidecar"):
                            reads_through_the_kubernetes_sidecar(stack, clinician, read)
                with timed(f"{label}: reload the viewer on the other replica"):
                    reload_on_the_other_replica(stack, clinician, client_id)
                with timed(f"{label}: burst of {BURST} launches, one replica stopped"):
                    burst = burst_with_a_replica_stopped(stack, clinician)
            with timed(f"{label}: down"):
                kheops.stop_stand_in()
                stack.stop()
            stack = None
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if stack is not None:
            for service in ("app-1", "app-2", "nginx"):
                print(
                    f"--- {service} (end of its log)\n{stack.logs(service)[-2500:]}",
                    file=sys.stderr,
                )
        return 1
    finally:
        if stack is not None:
            stack.stop()
        kheops.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| step | seconds |\n|---|--:|")
    for what, seconds in TIMINGS:
        print(f"| {what} | {seconds:.1f} |")
    print(f"| total | {time.monotonic() - began:.1f} |")
    print(f"\nburst: {json.dumps(burst)}")
    print("test-deploy: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
