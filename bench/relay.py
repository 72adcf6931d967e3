"""The DICOMweb relay against direct access, side by side in one run, on the same data.

One stack (bench/_stack.py: Orthanc, the KHEOPS stand-in, our app under uvicorn with 2
workers) with two registrations of our app in the stand-in's album: the `ohif` provider in
direct mode (the viewer calls the stand-in's DICOMweb with the token) and a copy of it,
`ohif-relay`, in relay mode (the viewer calls our same-origin relay; the server adds the
token). The data: a synthetic CT series of 300 slices of 512x512, 16 bits (bench/_synthetic_ct.py,
made once and kept in var/bench/), loaded into the stand-in's Orthanc and shared in the album.

Measured, relay and direct alternating, each pair back to back:

- **launch → first image** (headless Chromium, a fresh context each load: empty cache): from
  the navigation to our launch URL (KHEOPS's meta refresh target; what comes before it is the
  same in both modes) to the first drawn image of the 300-slice series (bench/browser.py's
  probe: cornerstone's render event with a non-black pixel). Ratio relay/direct per pair.
- **whole series loaded**: a viewer's fetch of the whole series as OHIF does it over HTTP/1.1
  (httpx, 6 connections as Chromium per host): the series' metadata, then every slice's frame
  (WADO-RS frames, multipart); from the first request to the last byte of the last frame.
  With nginx installed (`make bench` installs it), more sides in each round: the same
  launch's relay behind the deployment's nginx (deploy/nginx's files, devstack.nginx) with
  its relay offload on, our app checking each read and nginx carrying it ("relay, nginx
  offload"); and as a reference, the same loads relayed by nginx alone, a reverse proxy in C
  with no code of ours, adding the token (NginxRelay): what the extra hop costs any relay on
  this machine.
- **relay overhead per request, our processing only**: the relay's Server-Timing `app` (from
  the view's start to the response handed to the server, less the wait for KHEOPS's
  answer's headers), over sequential QIDO-RS requests; and the same requests' latency, relay
  minus direct, paired (this one includes the extra loopback hop and Django's middleware).
- **50 viewers at once**: 50 httpx clients, each asking at once for the series' metadata and
  20 frames (≥ 1,000 requests in flight), relay, direct, then relay behind nginx with the
  offload: errors, throughput, and the peak RSS of each of our workers (sampled every
  100 ms).

    bench/run.py relay          # or: make bench (every benchmark)
    bench/relay.py --quick      # fewer pairs and viewers, for development
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import _harness
import _synthetic_ct
import httpx
from _stack import OHIF_ROOT, BenchStack, use_postgres_if_available
from browser import (
    IMAGE_TIMEOUT_MS,
    VIEWER_PATH,
    BrowserSide,
    Result,
    _fresh_context,
    _launch_browser,
)
from playwright.sync_api import Browser, sync_playwright

from devstack import LoopbackSession, ServerProcess, app_env, free_port, manage_app
from devstack.nginx import NginxFront, nginx_installed

QUICK = "--quick" in sys.argv or os.environ.get("BENCH_RELAY_QUICK", "") not in ("", "0")
if "--quick" in sys.argv:
    sys.argv.remove("--quick")  # the harness knows only --json

BENCHMARK = "relay"
# For development: only these parts (comma-separated: first,series,overhead,crowd).
ONLY = set(filter(None, os.environ.get("BENCH_RELAY_ONLY", "").split(",")))
# Cold loads vary by ±10 % here: fewer pairs cannot tell 1.05 from 1.00.
BROWSER_PAIRS = 2 if QUICK else 15
SERIES_PAIRS = 2 if QUICK else 15
OVERHEAD_REQUESTS = 100 if QUICK else 400
VIEWERS = 10 if QUICK else 50
FRAMES_PER_VIEWER = 20
BROWSER_CONNECTIONS = 6  # Chromium's connections per host over HTTP/1.1
RSS_TARGET_MB = 150.0
FIRST_IMAGE_TARGET = 1.05
SERIES_TARGET = 1.10
OVERHEAD_TARGET_MS = 1.0
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
MB = 1_000_000


# --- the two modes -----------------------------------------------------------------------------


def add_relay_provider(stack: BenchStack) -> str:
    """A copy of the `ohif` provider in relay mode, registered in the album; its client_id."""
    env = app_env(
        stack.app_url,
        DATABASE_URL=stack.database.url,
        SECRET_KEY=secrets.token_urlsafe(50),
        OHIF_ROOT=str(OHIF_ROOT),
    )
    manage_app(
        "shell",
        "-c",
        "from launcher.models import Provider; p = Provider.objects.get(slug='ohif'); "
        "p.pk = None; p.is_default = False; p.slug = 'ohif-relay'; p.client_name = 'OHIF Viewer (relay)'; "
        "p.token_delivery = 'relay'; p.save()",
        env=env,
    )
    return stack.kheops.register(
        f"{stack.app_url}/providers/ohif-relay/configuration", name="OHIF Viewer (relay)"
    )


def share_in_album(stack: BenchStack, series: _synthetic_ct.SyntheticSeries) -> None:
    stack.kheops.manage(
        "shell",
        "-c",
        "from sandbox.models import Album, AlbumStudy; "
        f"album = Album.objects.get(album_id='{stack.album_id}'); "
        f"AlbumStudy.objects.get_or_create(album=album, study_uid='{series.study_uid}', "
        "defaults={'description': 'Synthetic CT', 'modalities': 'CT', "
        "'patient_name': 'Bench^Synthetic CT'})",
    )


@dataclass
class Mode:
    name: str  # "relay" or "direct"
    client_id: str


_last_launch = [0.0]


def launch_url(stack: BenchStack, mode: Mode, study_uid: str) -> str:
    # KHEOPS's codes carry no nonce: no two launches of one user and study in one second.
    time.sleep(max(0.0, 1.05 - (time.monotonic() - _last_launch[0])))
    stack.client_id = mode.client_id
    try:
        return stack.launch_url(study_uid)
    finally:
        _last_launch[0] = time.monotonic()


@dataclass
class Viewer:
    """What a viewer of one launch sends its DICOMweb requests to, and with what."""

    root: str
    headers: dict[str, str]


def open_viewer(stack: BenchStack, mode: Mode, study_uid: str) -> Viewer:
    """Launch as a browser does (the launch, the token request); the viewer's data source."""
    url = launch_url(stack, mode, study_uid)
    with LoopbackSession() as browser:
        page = browser.get(url, timeout=60)
        page.raise_for_status()
        launch_id = urlsplit(page.url).path.split("/")[2]
        token = browser.get(f"{stack.app_url}/launches/{launch_id}/token", timeout=60)
        token.raise_for_status()
        cookie = browser.cookies.get(f"kheops_ohif_grant_{launch_id}")
    answer = token.json()
    if mode.name == "direct":
        return Viewer(stack.dicomweb_url, {"Authorization": answer["authorization"]})
    assert "authorization" not in answer and cookie
    return Viewer(
        f"{stack.app_url}/launches/{launch_id}/dicomweb",
        {"Cookie": f"kheops_ohif_grant_{launch_id}={cookie}"},
    )


# --- launch → first image (Chromium) -----------------------------------------------------------


class Launched(BrowserSide):
    """A load from the album page by navigating to a fresh launch URL of `mode`."""

    def __init__(self, stack: BenchStack, mode: Mode, study_uid: str) -> None:
        super().__init__(mode.name, study_uid)
        self.stack = stack
        self.mode = mode

    def first_image_ms(self, browser: Browser) -> float:
        url = launch_url(self.stack, self.mode, self.study_uid)
        with _fresh_context(browser) as context:
            page = context.new_page()
            page.goto(self.stack.album_url, wait_until="load")
            page.evaluate("(url) => { location.assign(url); }", url)
            page.wait_for_url(VIEWER_PATH, timeout=IMAGE_TIMEOUT_MS)
            state = self.wait_for_first_image(page)
        return float(state["drawnAt"] - state["timeOrigin"])


def measure_first_images(
    stack: BenchStack, modes: list[Mode], study_uid: str
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {mode.name: [] for mode in modes}
    with sync_playwright() as playwright:
        browser = _launch_browser(playwright)
        sides = [Launched(stack, mode, study_uid) for mode in modes]
        sides[0].first_image_ms(browser)  # untimed: the servers' first load of the bundle
        for pair in range(BROWSER_PAIRS):
            for side in sides if pair % 2 == 0 else reversed(sides):
                samples[side.name].append(side.first_image_ms(browser))
        browser.close()
    return samples


# --- a viewer's requests (httpx) ---------------------------------------------------------------


def frame_paths(series: _synthetic_ct.SyntheticSeries) -> list[str]:
    base = f"studies/{series.study_uid}/series/{series.series_uid}"
    return [f"{base}/instances/{uid}/frames/1" for uid in series.sop_instance_uids]


def metadata_path(series: _synthetic_ct.SyntheticSeries) -> str:
    return f"studies/{series.study_uid}/series/{series.series_uid}/metadata"


async def fetch(client: httpx.AsyncClient, url: str, accept: str) -> int:
    """One GET read to its end: its size; an exception or a status ≠ 200 raises."""
    async with client.stream("GET", url, headers={"Accept": accept}) as response:
        size = 0
        async for piece in response.aiter_raw():
            size += len(piece)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} for {url}")
        return size


def client_for(viewer: Viewer, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers=viewer.headers,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(120.0),
        trust_env=False,
    )


async def whole_series(viewer: Viewer, series: _synthetic_ct.SyntheticSeries) -> float:
    """Milliseconds from the metadata request to the last byte of the last frame."""
    async with client_for(viewer, BROWSER_CONNECTIONS) as client:
        started = time.perf_counter()
        await fetch(client, f"{viewer.root}/{metadata_path(series)}", "application/dicom+json")
        sizes = await asyncio.gather(
            *(fetch(client, f"{viewer.root}/{path}", FRAME_ACCEPT) for path in frame_paths(series))
        )
        elapsed = (time.perf_counter() - started) * 1000
    assert all(size > 512 * 512 * 2 for size in sizes), "a frame came back short"
    return elapsed


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and of its children still running."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(cpu_seconds(int(child)) for child in children)


def cpu_of(stack: BenchStack, nginxes: dict[str, ServerProcess]) -> dict[str, float]:
    """CPU seconds so far of our app (its workers), the stand-in and Orthanc, and `nginxes`."""
    assert stack.kheops.server is not None and stack.orthanc.pid is not None
    spent = {
        "ours": sum(cpu_seconds(pid) for pid in stack.worker_pids()),
        "kheops": cpu_seconds(stack.kheops.server.process.pid),
        "orthanc": cpu_seconds(stack.orthanc.pid),
    }
    for name, server in nginxes.items():
        spent[name] = cpu_seconds(server.process.pid)
    return spent


class NginxRelay:
    """A reference for the relay: nginx (a reverse proxy written in C, no code of ours)
    relaying the stand-in's DICOMweb with the token added, as our relay does, over the same
    loopback. Two ways: `buffered` (nginx's default: it reads KHEOPS's answer ahead into its
    buffers while it writes to the client; nothing to disk here) and `streamed`
    (`proxy_buffering off`: each piece passed on as it comes, as our relay does), each
    reading up to 64 KiB at a time (`proxy_buffer_size`, and `buffered` eight such buffers;
    the defaults, 4 KiB, would make nginx pay for many small reads).

    Its configuration holds the direct viewer's token (the stand-in's, for this run): in a
    directory of this process's own, readable by it alone, removed on leaving."""

    WAYS = ("buffered", "streamed")

    def __init__(self, stack: BenchStack, direct: Viewer) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="kheops-ohif-bench-nginx-"))
        upstream = urlsplit(stack.dicomweb_url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream_path = upstream.path
        locations = "".join(
            f"""
    location /{way}/ {{
      proxy_pass http://kheops/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host "{upstream.netloc}";
      proxy_set_header Cookie "";
      proxy_set_header Authorization "{direct.headers["Authorization"]}";
      proxy_buffering {"on" if way == "buffered" else "off"};
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_max_temp_file_size 0;
    }}"""
            for way in self.WAYS
        )
        config = self.workdir / "nginx.conf"
        with open(os.open(config, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
            file.write(f"""worker_processes 2;
pid {self.workdir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.workdir}/body;
  proxy_temp_path {self.workdir}/proxy;
  fastcgi_temp_path {self.workdir}/fastcgi;
  uwsgi_temp_path {self.workdir}/uwsgi;
  scgi_temp_path {self.workdir}/scgi;
  upstream kheops {{ server {upstream.hostname}:{upstream.port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{self.port};
    location = /healthz {{ return 204; }}{locations}
  }}
}}
""")
        self.server = ServerProcess.start(
            "nginx",
            ["nginx", "-p", str(self.workdir), "-c", str(config), "-g", "daemon off;"],
            url=self.url,
            env=os.environ,
            log=self.workdir / "nginx.log",
        )

    def viewer(self, way: str) -> Viewer:
        return Viewer(f"{self.url}/{way}{self.upstream_path}", {})

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def nginx_relay(stack: BenchStack, direct: Viewer) -> Iterator[NginxRelay | None]:
    """The reference relay, or None (said on stderr) when nginx is not installed."""
    if shutil.which("nginx") is None:
        print(
            "relay: nginx is not installed: no reference relay (make bench installs it)",
            file=sys.stderr,
        )
        yield None
        return
    nginx = NginxRelay(stack, direct)
    try:
        nginx.server.wait_until_up("/healthz", workers=2)
        yield nginx
    finally:
        nginx.close()


def measure_whole_series(
    stack: BenchStack,
    viewers: dict[str, Viewer],
    series: _synthetic_ct.SyntheticSeries,
    nginx: NginxRelay | None = None,
    front: NginxFront | None = None,
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Each mode's times, and the CPU seconds each process spent per load, by mode; with
    `nginx`, its two ways of relaying as two more sides of each round."""
    nginxes = {}
    if nginx is not None:
        viewers = {**viewers, **{f"nginx {way}": nginx.viewer(way) for way in nginx.WAYS}}
        nginxes["nginx (reference)"] = nginx.server
    if front is not None:
        nginxes["nginx (deployment)"] = front.server
    samples: dict[str, list[float]] = {name: [] for name in viewers}
    cpu: dict[str, dict[str, float]] = {name: {} for name in viewers}
    names = list(viewers)
    for name in names:  # untimed: caches warm, connections open, on every side
        asyncio.run(whole_series(viewers[name], series))
    for pair in range(SERIES_PAIRS):
        for name in names if pair % 2 == 0 else reversed(names):
            before = cpu_of(stack, nginxes)
            samples[name].append(asyncio.run(whole_series(viewers[name], series)))
            for process, seconds in cpu_of(stack, nginxes).items():
                spent = (seconds - before[process]) / SERIES_PAIRS
                cpu[name][process] = cpu[name].get(process, 0.0) + spent
    return samples, cpu


def cpu_note(cpu: dict[str, float]) -> str:
    return "CPU s per load: " + ", ".join(f"{name} {s:.2f}" for name, s in cpu.items())


OFFLOADED = "relay, nginx offload"


@contextlib.contextmanager
def deployment_nginx(stack: BenchStack, offload_key: str) -> Iterator[NginxFront | None]:
    """The deployment's nginx (deploy/nginx, devstack.nginx) in front of our app, carrying
    the relayed reads the app hands over (the relay offload); None without nginx."""
    if not nginx_installed():
        print("relay: nginx is not installed: no offload (make bench installs it)", file=sys.stderr)
        yield None
        return
    front = NginxFront.start(
        stack.app_url,
        offload_kheops=[stack.kheops_url],
        offload_key=offload_key,
        workers=len(stack.worker_pids()),
    )
    try:
        front.wait_until_up()
        yield front
    finally:
        front.stop()


# --- relay overhead -------------------------------------------------------------------------------


def measure_overhead(
    viewers: dict[str, Viewer], series: _synthetic_ct.SyntheticSeries
) -> tuple[list[float], list[float]]:
    """(Server-Timing `app` of each relayed request, relay minus direct latency of each pair)."""
    path = f"studies/{series.study_uid}/series"
    app: list[float] = []
    differences: list[float] = []
    with (
        httpx.Client(trust_env=False, timeout=60) as relay,
        httpx.Client(trust_env=False, timeout=60) as direct,
    ):
        clients = {"relay": relay, "direct": direct}

        def timed(name: str) -> tuple[float, httpx.Response]:
            viewer = viewers[name]
            started = time.perf_counter()
            answer = clients[name].get(
                f"{viewer.root}/{path}",
                headers={**viewer.headers, "Accept": "application/dicom+json"},
            )
            elapsed = (time.perf_counter() - started) * 1000
            answer.raise_for_status()
            return elapsed, answer

        for _ in range(20):  # untimed: connections open, grants remembered in each worker
            timed("relay"), timed("direct")
        for n in range(OVERHEAD_REQUESTS):
            order = ("relay", "direct") if n % 2 == 0 else ("direct", "relay")
            times = {}
            for name in order:
                times[name], answer = timed(name)
                if name == "relay":
                    app.append(_harness.parse_server_timing(answer.headers["server-timing"])["app"])
            differences.append(times["relay"] - times["direct"])
    return app, differences


# --- 50 viewers at once ---------------------------------------------------------------------------


@dataclass
class Crowd:
    errors: int
    requests: int
    seconds: float
    bytes: int
    peak_rss_mb: dict[int, float]

    @property
    def throughput_mb_s(self) -> float:
        return self.bytes / MB / self.seconds


class RssSampler:
    """The peak RSS of each of our workers while it runs (every 100 ms, from /proc)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = {pid: 0.0 for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_mb(pid))
            if self._stop.wait(0.1):
                return


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 / MB if found else 0.0


async def crowd(viewer: Viewer, series: _synthetic_ct.SyntheticSeries, viewers: int) -> Crowd:
    frames = frame_paths(series)
    clients = [client_for(viewer, FRAMES_PER_VIEWER + 1) for _ in range(viewers)]
    errors = 0

    async def one(client: httpx.AsyncClient, url: str, accept: str) -> int:
        nonlocal errors
        try:
            return await fetch(client, url, accept)
        except Exception as exc:  # counted: the figure is how many failed
            errors += 1
            print(f"relay bench: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
            return 0

    calls = []
    for v, client in enumerate(clients):
        calls.append(
            one(client, f"{viewer.root}/{metadata_path(series)}", "application/dicom+json")
        )
        for k in range(FRAMES_PER_VIEWER):
            path = frames[(v * FRAMES_PER_VIEWER + k) % len(frames)]
            calls.append(one(client, f"{viewer.root}/{path}", FRAME_ACCEPT))
    started = time.perf_counter()
    sizes = await asyncio.gather(*calls)
    seconds = time.perf_counter() - started
    for client in clients:
        await client.aclose()
    return Crowd(errors, len(calls), seconds, sum(sizes), {})


def measure_crowds(
    stack: BenchStack, viewers: dict[str, Viewer], series: _synthetic_ct.SyntheticSeries
) -> dict[str, Crowd]:
    results = {}
    for name in [name for name in viewers if not name.startswith("nginx")]:
        with RssSampler(stack.worker_pids()) as rss:
            results[name] = asyncio.run(crowd(viewers[name], series, VIEWERS))
        results[name].peak_rss_mb = dict(rss.peak)
    return results


# --- the run ------------------------------------------------------------------------------------


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) > 1 else samples[0]


def say(name: str, started: float) -> None:
    print(f"relay: {name} after {time.monotonic() - started:.1f} s", file=sys.stderr)


def wanted(part: str) -> bool:
    return not ONLY or part in ONLY


def measure() -> list[_harness.Result]:
    use_postgres_if_available()
    started = time.monotonic()
    series = _synthetic_ct.ensure()
    say("synthetic CT ready", started)
    results: list[_harness.Result] = []
    offload_key = secrets.token_urlsafe(32)
    with (
        BenchStack.start(
            name=BENCHMARK,
            kheops_threads=32,
            app_extra_env={"DICOMWEB_RELAY_OFFLOAD_KEY": offload_key},
        ) as stack,
        deployment_nginx(stack, offload_key) as front,
    ):
        _synthetic_ct.load_into_orthanc(stack.orthanc.url, series)
        share_in_album(stack, series)
        modes = [Mode("relay", add_relay_provider(stack)), Mode("direct", stack.client_id)]
        setup = (
            f"uvicorn {len(stack.worker_pids())} workers, {stack.database.vendor}; "
            f"{len(series.files)} slices of 512x512{' (--quick)' if QUICK else ''}"
        )
        say("stack up, series loaded", started)
        if wanted("first"):
            results += first_image_results(
                measure_first_images(stack, modes, series.study_uid), setup
            )
            say("first images", started)
        viewers = {mode.name: open_viewer(stack, mode, series.study_uid) for mode in modes}
        if front is not None:
            # The same launch's relay, through the deployment's nginx: it carries the reads.
            viewers[OFFLOADED] = Viewer(
                viewers["relay"].root.replace(stack.app_url, front.url), viewers["relay"].headers
            )
        if wanted("series"):
            with nginx_relay(stack, viewers["direct"]) as nginx:
                results += series_results(
                    *measure_whole_series(stack, viewers, series, nginx, front)
                )
            say("whole series", started)
        if wanted("overhead"):
            results += overhead_results(*measure_overhead(viewers, series))
            say("overhead", started)
        if wanted("crowd"):
            results += crowd_results(measure_crowds(stack, viewers, series))
            say("crowds", started)
    return results


def first_image_results(first: dict[str, list[float]], setup: str) -> list[_harness.Result]:
    return [
        *(
            Result(BENCHMARK, f"launch → first image, {name}", "ms", first[name], "Chromium, cold")
            for name in ("relay", "direct")
        ),
        Result(
            BENCHMARK,
            "launch → first image, relay/direct per pair",
            "x",
            ratios(first["relay"], first["direct"]),
            f"{setup}; pairs back to back, order alternating",
            target=FIRST_IMAGE_TARGET,
        ),
    ]


def series_results(
    whole: dict[str, list[float]], cpu: dict[str, dict[str, float]]
) -> list[_harness.Result]:
    results = [
        *(
            Result(
                BENCHMARK,
                f"whole series loaded, {name}",
                "ms",
                whole[name],
                f"metadata + 300 frames, 6 connections; {cpu_note(cpu[name])}",
            )
            for name in whole
        ),
        Result(
            BENCHMARK,
            "whole series loaded, relay/direct per pair",
            "x",
            ratios(whole["relay"], whole["direct"]),
            "to the last byte of the last frame",
            target=SERIES_TARGET,
        ),
    ]
    if OFFLOADED in whole:
        results.append(
            Result(
                BENCHMARK,
                f"whole series loaded, {OFFLOADED}/direct per pair",
                "x",
                ratios(whole[OFFLOADED], whole["direct"]),
                "the deployment's nginx in front: it carries the reads our app hands over",
                target=SERIES_TARGET,
            )
        )
    for name in whole:
        if name.startswith("nginx"):
            results.append(
                Result(
                    BENCHMARK,
                    f"whole series loaded, {name}/direct per pair",
                    "x",
                    ratios(whole[name], whole["direct"]),
                    "reference: the same loads relayed by nginx (C) with the token added",
                )
            )
    return results


def overhead_results(app: list[float], differences: list[float]) -> list[_harness.Result]:
    return [
        Result(
            BENCHMARK,
            "relay overhead per request, our processing",
            "ms",
            app,
            f"Server-Timing app of QIDO-RS series; p99 {p99(app):.2f} ms",
            target=OVERHEAD_TARGET_MS,
        ),
        Result(
            BENCHMARK,
            "relay minus direct latency per request",
            "ms",
            differences,
            f"same QIDO-RS, paired; extra hop + Django included; p99 {p99(differences):.2f} ms",
        ),
    ]


def crowd_results(crowds: dict[str, Crowd]) -> list[_harness.Result]:
    results = [
        *(
            Result(
                BENCHMARK,
                f"{VIEWERS} viewers at once, {name}: errors",
                "requests",
                [float(crowds[name].errors)],
                f"of {crowds[name].requests} requests in flight together",
                target=0.0,
            )
            for name in crowds
        ),
        *(
            Result(
                BENCHMARK,
                f"{VIEWERS} viewers at once, {name}: throughput",
                "MB/s",
                [crowds[name].throughput_mb_s],
                f"{crowds[name].bytes / MB:.0f} MB in {crowds[name].seconds:.1f} s",
            )
            for name in crowds
        ),
    ]
    for name in [name for name in crowds if name != "direct"]:
        rss = list(crowds[name].peak_rss_mb.values())
        results.append(
            Result(
                BENCHMARK,
                f"{VIEWERS} viewers at once, {name}: peak RSS per worker",
                "MB",
                [max(rss)],
                "the largest of our workers' peaks (each: "
                + ", ".join(f"{mb:.0f}" for mb in rss)
                + " MB), sampled every 100 ms",
                target=RSS_TARGET_MB,
            )
        )
    return results


if __name__ == "__main__":
    _harness.main(BENCHMARK, measure)
