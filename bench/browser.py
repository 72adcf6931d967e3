"""What a clinician waits for and downloads, in headless Chromium, against a baseline.

Click to first image: from the click on "Open in OHIF Viewer" (the CT study) on the KHEOPS
stand-in's album page, through KHEOPS's form POST and meta refresh, our launch endpoint and
its redirect, the viewer page (whose launch.js has the code exchanged meanwhile), to the
first drawn image in OHIF: a `canvas.cornerstone-canvas` with a pixel
that is not black. Both ends are timestamped in the page (`performance.timeOrigin +
performance.now()`, one clock for every document of the browser), the end by a check run on
cornerstone's own `CORNERSTONE_IMAGE_RENDERED` event: no polling error.

Baseline, measured in the same run, interleaved with ours: the same installed OHIF bundle
from a plain static file server in this process (no Django), with the same launch data and
launch.js (OHIF's configuration; less the launch data's `prefetch` and `skipModules`, which
only our launch adds: bare OHIF makes the study's first DICOMweb requests itself, when it
gets to them, and loads every mode and extension its bundle was built with)
and the token given directly (taken from one real launch
through our app: the static
server answers the token URL with that launch's token, at once, with no KHEOPS behind it)
and the same DICOMweb (the stand-in's relay to Orthanc), timed from navigation start to the
first drawn image. The
server does what a well-configured static host does (nginx `brotli_static`/`gzip_static`,
conditional requests, WhiteNoise's cache lifetimes), so the ratio is the cost of what we add:
the KHEOPS launch round trips, Django/uvicorn serving and the banner.

Cold: a fresh browser context each time (empty cache). Warm: one persistent profile per
side, loaded twice beforehand (V8 keeps compiled code only from the second load of a script
on), then measured.

Pairs: ours and the baseline are loaded back to back (who goes first alternates), PAIRS
times cold and PAIRS times warm; the result is the median of the per-pair ratios, with their
interquartile range and extremes, and the ratio of the medians beside it. When the
interquartile range of the pair ratios includes 1.00 the result says "within noise": on this
machine neither side is then shown faster.

Both token deliveries (README, "Token delivery"), one after the other, against the same
baseline: `direct` (the viewer's script holds the token and calls KHEOPS, with CORS
preflights) and `relay` (its data source is `/launches/<id>/dicomweb` on our origin, which
adds the token on the server: same origin, no preflight, one more hop for every request).

Where the time goes, per load of ours: the click → our launch URL (KHEOPS's form POST and its
meta-refresh page), our launch endpoint as the browser saw it (to the redirect), and the
viewer page → first image (which the baseline's whole load compares with); and whether the
viewer's token was ready before the page's first DICOMweb request (launch.js's prefetch of
the study's first answers: in direct mode it waits for the token; in relay mode it goes out
with the page, and the relay waits for the exchange).

Bytes on the wire: Chromium's `encodedDataLength` (headers + body as received) of every
request of each cold load after the click, split by origin (our app; DICOMweb; the
KHEOPS pages are not counted), against the decoded size of the same responses; then a
`page.reload()` in the same context (the browser's normal reload: the page itself is
revalidated, fresh subresources come from the cache).

    bench/browser.py                         # prints the figures (21 pairs, both modes)
    bench/browser.py --pairs 5 --modes relay # fewer pairs, one mode: for development
    BENCH_BROWSER_PAIRS=5 make bench         # the same through bench/run.py
    BENCH_BROWSER_TRACE=1 bench/browser.py   # also leaves artifacts/bench/ diagnostics

With BENCH_BROWSER_TRACE, besides a cold load's Chrome trace and transfers, every warm pair's
waterfall (each side's Resource Timing entries, from the cache or not, and its first image)
goes to artifacts/bench/warm-waterfalls-<mode>.json.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import _harness
from _stack import OHIF_ROOT, REPO, BenchStack, use_postgres_if_available
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    Page,
    Playwright,
    Request,
    Response,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from devstack import LoopbackSession, free_port
from tests.e2e.chromium import CANVAS_SHOWS_IMAGE_JS, CHROMIUM, CHROMIUM_ARGS

BENCH_DIR = Path(__file__).resolve().parent

BENCHMARK = "browser"
VIEWPORT = {"width": 1280, "height": 800}
# Back-to-back pairs (ours, baseline), cold and warm each, per token delivery: 21 by
# default (a median of pair ratios with a meaningful interquartile range on a noisy machine).
PAIRS = int(os.environ.get("BENCH_BROWSER_PAIRS", "21"))
RUNS = PAIRS  # cold pairs
WARM_RUNS = PAIRS
MODES: tuple[str, ...] = tuple(
    mode for mode in os.environ.get("BENCH_BROWSER_MODES", "direct,relay").split(",") if mode
)
WARMUP_LOADS = 2
# The bytes of a reload do not vary from run to run; three show that they do not.
RELOAD_RUNS = min(RUNS, 3)
# A load drawing nothing within this time is left out with its pair (Samples.drop).
IMAGE_TIMEOUT_MS = 120_000
ARTIFACTS = BENCH_DIR.parent / "artifacts" / "bench"
TRACE = os.environ.get("BENCH_BROWSER_TRACE", "") not in ("", "0")

# At or below bare OHIF (issue 20), though our path includes KHEOPS's launch round trips.
RATIO_TARGET = 1.00
# The cold load's bytes on our origin before the work on issue 20 (4.25 MB): at most 5 % more.
COLD_WIRE_BEFORE_MB = 4.25
COLD_WIRE_TARGET_MB = round(COLD_WIRE_BEFORE_MB * 1.05, 2)
WARM_RELOAD_TARGET_KB = 50.0
MB, KB = 1_000_000, 1_000
# Where the installed index.html loads its configuration script (launcher/viewer.py puts the
# launch data and launch.js there), and those two tags in our viewer page.
CONFIG_SCRIPT = re.compile(r'<script[^>]*src="__KHEOPS_OHIF_APP_CONFIG_URL__"[^>]*></script>')
LAUNCH_TAGS = re.compile(
    r'<script id="kheops-ohif-launch" type="application/json">.*?</script>'
    r'<script src="[^"]*/launcher/launch\.[0-9a-f]+\.js"></script>',
    re.S,
)

# Runs in every document before its own scripts. Records when the first non-black pixel
# reaches a cornerstone canvas; OHIF's answer to an unreadable study (/notfoundstudy) ends
# the wait too, so a broken launch fails fast instead of timing out.
FIRST_IMAGE_PROBE = (
    """
(() => {
  if (window.top !== window) { return; }
  const probe = { drawnAt: null, events: 0 };
  // The default 250 entries can fill before the first image; the early ones are kept.
  performance.setResourceTimingBufferSize(2000);
  window.__benchFirstImage = probe;
"""
    + CANVAS_SHOWS_IMAGE_JS
    + """
  const drawn = () => [...document.querySelectorAll("canvas.cornerstone-canvas")].some(canvasShowsImage);
  // The event does not bubble: listen in the capture phase. It fires after cornerstone has
  // copied the rendered image to the canvas, so the check sees exactly that frame.
  document.addEventListener("CORNERSTONE_IMAGE_RENDERED", () => {
    probe.events += 1;
    if (probe.drawnAt === null && drawn()) { probe.drawnAt = performance.timeOrigin + performance.now(); }
  }, true);
})();
"""
)
PROBE_DONE = """() => location.pathname.endsWith("/notfoundstudy")
  || (window.__benchFirstImage !== undefined && window.__benchFirstImage.drawnAt !== null)"""
PROBE_STATE = """() => {
  const [navigation] = performance.getEntriesByType("navigation");
  const resources = performance.getEntriesByType("resource");
  const path = (entry) => new URL(entry.name).pathname;
  const token = resources.find((entry) => /^\\/launches\\/[^/]+\\/token$/.test(path(entry)));
  const dicomweb = resources.filter((entry) => /\\/studies(\\/|$)/.test(path(entry))
    && !path(entry).startsWith("/static/"));
  return {
    tokenReady: token ? token.responseEnd : null,
    firstDicomweb: dicomweb.length ? Math.min(...dicomweb.map((entry) => entry.startTime)) : null,
    notFound: location.pathname.endsWith("/notfoundstudy"),
    drawnAt: window.__benchFirstImage.drawnAt,
    timeOrigin: performance.timeOrigin,
    redirectStart: navigation.redirectStart,
    redirectEnd: navigation.redirectEnd,
    responseEnd: navigation.responseEnd,
    domContentLoaded: navigation.domContentLoadedEventEnd,
  };
}"""
# With TRACE: the load's waterfall from the page's own Resource Timing (every request, from
# the cache or not, with its start and end in ms from the document's time origin), for the
# warm loads, where there is no Chrome trace.
WATERFALL = """() => {
  const [navigation] = performance.getEntriesByType("navigation");
  const entry = (e) => ({
    name: e.name, initiator: e.initiatorType, start: e.startTime,
    requestStart: e.requestStart, responseStart: e.responseStart, end: e.responseEnd,
    transferSize: e.transferSize, decodedBodySize: e.decodedBodySize,
    deliveryType: e.deliveryType === undefined ? null : e.deliveryType,
  });
  return {
    url: location.href,
    timeOrigin: performance.timeOrigin,
    redirectEnd: navigation.redirectEnd,
    navigation: { ...entry(navigation), domInteractive: navigation.domInteractive,
      domContentLoaded: navigation.domContentLoadedEventEnd, load: navigation.loadEventEnd },
    drawnAt: window.__benchFirstImage.drawnAt - performance.timeOrigin,
    resources: performance.getEntriesByType("resource").map(entry),
  };
}"""
# The clinician's click, done in the page so that its timestamp is taken right before it.
CLICK_OPEN_IN_OHIF = """(studyUid) => {
  const row = [...document.querySelectorAll("tbody tr")].find((tr) => tr.textContent.includes(studyUid));
  const button = row && [...row.querySelectorAll("button")].find((b) => /^Open in OHIF/.test(b.textContent.trim()));
  if (!button) { throw new Error("no 'Open in OHIF' button for " + studyUid); }
  const clickedAt = performance.timeOrigin + performance.now();
  button.click();
  return clickedAt;
}"""
VIEWER_PATH = re.compile(r"/launches/[^/]+/viewer")


# --- the baseline: OHIF from a plain static file server ----------------------------------------


class StaticOhif(ThreadingHTTPServer):
    """OHIF's installed bundle, its index.html with one launch's data and our launch.js in
    place of its configuration script (no banner); nothing else.

    URL layout as ours (assets under the installed bundle's versioned prefix, launch.js under
    our static URL, the viewer under /launches/<id>/), so the very same bundle and script
    work unchanged; cache lifetimes as ours (versioned or hashed names are immutable).

    Served from a process of its own, as a static host is: in a thread of this process it
    would share the interpreter with Playwright's client, which handles every network event
    of the browser, and be slowed by it.
    """

    daemon_threads = True

    def __init__(self, bundle_dir: Path, *, launch_id: str, launch: str, token: str) -> None:
        super().__init__(("127.0.0.1", free_port()), _StaticOhifHandler)
        self.static_dir = (bundle_dir / "static").resolve()
        self.asset_prefix = json.loads((bundle_dir / "bundle.json").read_text())["asset_prefix"]
        self.ours_dir = (REPO / "var" / "staticfiles" / "launcher").resolve()
        self.ours_prefix = "/static/launcher/"
        self.viewer_prefix = f"/launches/{launch_id}/"
        index = (bundle_dir / "index.html").read_text(encoding="utf-8")
        self.index_html = CONFIG_SCRIPT.sub(lambda _: launch, index, count=1).encode()
        self.token_path = f"/launches/{launch_id}/token"
        self.token = token.encode()
        self.process: multiprocessing.process.BaseProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> StaticOhif:
        # Forked before Playwright starts its threads (see measure()); the socket is bound.
        self.process = multiprocessing.get_context("fork").Process(
            target=self.serve_forever, name="static-ohif", daemon=True
        )
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(timeout=10)
        self.server_close()


class _StaticOhifHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as our server offers
    server: StaticOhif

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith(self.server.asset_prefix):
            self._file(self.server.static_dir, path.removeprefix(self.server.asset_prefix))
        elif path.startswith(self.server.ours_prefix):
            self._file(self.server.ours_dir, path.removeprefix(self.server.ours_prefix))
        elif path == self.server.token_path:
            self._send(
                HTTPStatus.OK, self.server.token, "application/json", {"Cache-Control": "no-store"}
            )
        elif path.startswith(self.server.viewer_prefix):
            self._send(
                HTTPStatus.OK,
                self.server.index_html,
                "text/html; charset=utf-8",
                {"Cache-Control": "no-store"},
            )
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain", {})

    def _file(self, root: Path, relative: str) -> None:
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain", {})
            return
        stat = path.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        headers = {
            "ETag": etag,
            "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
            "Vary": "Accept-Encoding",
            # WhiteNoise's lifetimes in our settings: forever for hashed names, else 300 s.
            "Cache-Control": "public, max-age=315360000, immutable",
        }
        if self.headers.get("If-None-Match") == etag:
            self._send(HTTPStatus.NOT_MODIFIED, b"", None, headers)
            return
        accepted = self.headers.get("Accept-Encoding", "")
        for encoding, suffix in (("br", ".br"), ("gzip", ".gz")):
            if encoding in accepted and path.with_name(path.name + suffix).is_file():
                headers["Content-Encoding"] = encoding
                body = path.with_name(path.name + suffix).read_bytes()
                break
        else:
            body = path.read_bytes()
        content_type = (
            "application/wasm" if path.suffix == ".wasm" else mimetypes.guess_type(path.name)[0]
        )
        self._send(HTTPStatus.OK, body, content_type or "application/octet-stream", headers)

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str | None, headers: dict[str, str]
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- bytes on the wire -------------------------------------------------------------------------


@dataclass
class Transfer:
    url: str
    method: str = "GET"
    wire: int = 0  # encodedDataLength: headers + body as received (0: from the cache)
    decoded: int = 0
    status: int = 0
    encoding: str = ""
    from_cache: bool = False
    worker: bool = False
    finished: bool = False
    preflight: bool = False  # a CORS preflight (Chromium reports no bytes for those)


@dataclass
class WireLog:
    """Every request of one page, from Chromium's own accounting.

    The page's CDP session sees the page's requests; the requests of OHIF's web workers (the
    worker scripts and the chunks they import: ~130 KB) finish in the workers' own sessions,
    which Playwright holds. Those are the requests Playwright saw finish that the page's
    session did not; their bytes come from Playwright's `Request.sizes()`, which is the same
    `encodedDataLength` split into headers and body.
    """

    cdp: CDPSession
    transfers: dict[str, Transfer] = field(default_factory=dict)
    finished_requests: list[Request] = field(default_factory=list)
    recording: bool = False

    @classmethod
    def attach(cls, context: BrowserContext, page: Page) -> WireLog:
        log = cls(context.new_cdp_session(page))
        log.cdp.send("Network.enable")
        log.cdp.on("Network.requestWillBeSent", log._sent)
        log.cdp.on("Network.responseReceived", log._response)
        log.cdp.on("Network.dataReceived", log._data)
        log.cdp.on("Network.loadingFinished", log._finished)
        context.on("requestfinished", log._playwright_finished)
        return log

    def start(self) -> None:
        self.transfers.clear()
        self.finished_requests.clear()
        self.recording = True

    def _sent(self, event: dict[str, Any]) -> None:
        if not self.recording or event["request"]["url"].startswith("data:"):
            return
        # A redirect reuses the request id; the redirect response's bytes come with the
        # next request of the chain, in `redirectResponse`.
        if (previous := self.transfers.get(event["requestId"])) and event.get("redirectResponse"):
            previous.wire = int(event["redirectResponse"].get("encodedDataLength", 0))
            previous.status = event["redirectResponse"]["status"]
            previous.finished = True
            self.transfers[event["requestId"] + ":redirect"] = previous
        self.transfers[event["requestId"]] = Transfer(
            event["request"]["url"],
            method=event["request"]["method"],
            preflight=event["request"]["method"] == "OPTIONS",
        )

    def _response(self, event: dict[str, Any]) -> None:
        if transfer := self.transfers.get(event["requestId"]):
            response = event["response"]
            headers = {name.lower(): value for name, value in response["headers"].items()}
            transfer.status = response["status"]
            transfer.encoding = headers.get("content-encoding", "")
            transfer.from_cache = bool(
                response.get("fromDiskCache") or response.get("fromPrefetchCache")
            )

    def _data(self, event: dict[str, Any]) -> None:
        if transfer := self.transfers.get(event["requestId"]):
            transfer.decoded += event["dataLength"]

    def _finished(self, event: dict[str, Any]) -> None:
        if transfer := self.transfers.get(event["requestId"]):
            transfer.wire = int(event["encodedDataLength"])
            transfer.finished = True

    def _playwright_finished(self, request: Request) -> None:
        if self.recording:
            self.finished_requests.append(request)

    def collect(self) -> list[Transfer]:
        """Stop recording; the page's finished transfers plus the workers'."""
        self.recording = False
        transfers = [t for t in self.transfers.values() if t.finished]
        seen = Counter(t.url for t in transfers)
        for request in self.finished_requests:
            if seen[request.url] > 0:
                seen[request.url] -= 1
                continue
            sizes = request.sizes()
            response = request.response()
            body = sizes["responseBodySize"]  # negative for a cache hit: nothing on the wire
            if body == 0 and response is not None:
                # A worker's own script reports no body bytes in the worker's session (its
                # bytes arrive before the worker exists); the server's Content-Length is what
                # crossed the wire.
                body = int(response.headers.get("content-length", "0") or 0)
            transfers.append(
                Transfer(
                    request.url,
                    wire=max(0, sizes["responseHeadersSize"] + body),
                    decoded=len(response.body()) if response is not None else 0,
                    status=response.status if response is not None else 0,
                    encoding=response.headers.get("content-encoding", "")
                    if response is not None
                    else "",
                    worker=True,
                    finished=True,
                )
            )
        return transfers


def _under(url: str, prefix: str) -> bool:
    return url.startswith(prefix)


# Relay mode: the viewer's DICOMweb on our origin (launcher.relay), counted as DICOMweb.
RELAY_PATH = re.compile(r"/launches/[^/]+/dicomweb/")


def _relayed(url: str, app: str) -> bool:
    return _under(url, app + "/") and RELAY_PATH.match(urlsplit(url).path) is not None


@dataclass(frozen=True)
class WireTotals:
    app_wire: int
    app_decoded: int
    app_requests: int
    dicomweb_wire: int
    dicomweb_decoded: int
    dicomweb_requests: int
    dicomweb_preflights: int
    over_network: list[Transfer]

    @classmethod
    def of(cls, transfers: list[Transfer], *, app: str, dicomweb: str) -> WireTotals:
        ours = [t for t in transfers if _under(t.url, app + "/") and not _relayed(t.url, app)]
        dicom = [
            t
            for t in transfers
            if (_under(t.url, dicomweb + "/") and not _under(t.url, dicomweb + "/report"))
            or _relayed(t.url, app)
        ]
        return cls(
            app_wire=sum(t.wire for t in ours),
            app_decoded=sum(t.decoded for t in ours),
            app_requests=len(ours),
            dicomweb_wire=sum(t.wire for t in dicom),
            dicomweb_decoded=sum(t.decoded for t in dicom),
            dicomweb_requests=sum(not t.preflight for t in dicom),
            dicomweb_preflights=sum(t.preflight for t in dicom),
            over_network=[t for t in ours if t.wire > 0],
        )


# --- one load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    total_ms: float  # ours: click → first image; baseline: navigation start → first image
    before_viewer_ms: float  # ours: click → start of the navigation to our launch URL
    launch_ms: float  # ours: our launch endpoint (claim the code → 302)
    viewer_ms: float  # the viewer page itself: its request → first image
    # The viewer's token answer, and the page's first DICOMweb request (launch.js's prefetch;
    # ms from the viewer document's time origin): the slack is how early the token was ready.
    token_ready_ms: float | None = None
    first_dicomweb_ms: float | None = None
    server_timing: dict[str, float] = field(default_factory=dict)  # our launch's Server-Timing
    token_timing: dict[str, float] = field(default_factory=dict)  # the token request's


class BrowserSide:
    """Where the viewer comes from (ours or the baseline), and how a load is timed."""

    def __init__(self, name: str, study_uid: str) -> None:
        self.name = name
        self.study_uid = study_uid

    def load(self, page: Page) -> Load:
        raise NotImplementedError

    @staticmethod
    def wait_for_first_image(page: Page) -> dict[str, Any]:
        page.wait_for_function(PROBE_DONE, timeout=IMAGE_TIMEOUT_MS, polling=100)
        state: dict[str, Any] = page.evaluate(PROBE_STATE)
        if state["notFound"]:
            raise RuntimeError(f"OHIF gave up on the study ({page.url})")
        return state


class Ours(BrowserSide):
    def __init__(self, stack: BenchStack, study_uid: str) -> None:
        super().__init__("ours", study_uid)
        self.stack = stack

    def load(self, page: Page) -> Load:
        page.goto(self.stack.album_url, wait_until="load")
        # Our launch endpoint says where its time went (KHEOPS round trips, our own work).
        launch_timing: list[str] = []
        token_timing: list[str] = []

        def on_response(response: Response) -> None:
            if "/providers/ohif/launch?" in response.url:
                launch_timing.append(response.headers.get("server-timing", ""))
            elif re.search(r"/launches/[^/]+/token$", urlsplit(response.url).path):
                token_timing.append(response.headers.get("server-timing", ""))

        page.on("response", on_response)
        try:
            clicked_at: float = page.evaluate(CLICK_OPEN_IN_OHIF, self.study_uid)
            page.wait_for_url(VIEWER_PATH, timeout=IMAGE_TIMEOUT_MS)
            state = self.wait_for_first_image(page)
        finally:
            page.remove_listener("response", on_response)
        # The viewer document's navigation started at the meta refresh to our launch URL;
        # its same-origin redirect (launch → viewer) is timed within it.
        launch_end = state["redirectEnd"] or 0.0
        return Load(
            total_ms=state["drawnAt"] - clicked_at,
            before_viewer_ms=state["timeOrigin"] - clicked_at,
            launch_ms=launch_end,
            viewer_ms=state["drawnAt"] - state["timeOrigin"] - launch_end,
            token_ready_ms=state["tokenReady"],
            first_dicomweb_ms=state["firstDicomweb"],
            server_timing=_harness.parse_server_timing(launch_timing[0]) if launch_timing else {},
            token_timing=_harness.parse_server_timing(token_timing[0]) if token_timing else {},
        )


class Baseline(BrowserSide):
    def __init__(self, viewer_url: str, study_uid: str, *, from_url: str) -> None:
        super().__init__("baseline", study_uid)
        self.viewer_url = viewer_url
        self.from_url = from_url

    def load(self, page: Page) -> Load:
        # Leave from the KHEOPS album page, as ours does: another site, so Chromium gives the
        # viewer a new renderer process, without the previous load's in-memory cache. (From
        # about:blank or the viewer itself the process, and its memory cache, would be reused:
        # a warm baseline twice as fast as any real navigation from KHEOPS.)
        page.goto(self.from_url, wait_until="load")
        page.evaluate("(url) => { location.assign(url); }", self.viewer_url)
        page.wait_for_url(VIEWER_PATH, timeout=IMAGE_TIMEOUT_MS)
        state = self.wait_for_first_image(page)
        total = state["drawnAt"] - state["timeOrigin"]
        return Load(
            total_ms=total,
            before_viewer_ms=0.0,
            launch_ms=0.0,
            viewer_ms=total,
            token_ready_ms=state["tokenReady"],
            first_dicomweb_ms=state["firstDicomweb"],
        )


# --- the measurement ---------------------------------------------------------------------------


def _launch_browser(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@contextmanager
def _fresh_context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(FIRST_IMAGE_PROBE)
    try:
        yield context
    finally:
        context.close()


@contextmanager
def _persistent_context(playwright: Playwright, profile: Path) -> Iterator[BrowserContext]:
    # Incognito-like contexts keep no cache worth the name for a 17 MB bundle: a warm
    # browser needs a profile on disk, as a clinician's browser has.
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT
    )
    context.add_init_script(FIRST_IMAGE_PROBE)
    try:
        yield context
    finally:
        context.close()


def baseline_config(stack: BenchStack, study_uid: str) -> tuple[str, str, str]:
    """(launch id, its launch data and launch.js tags, token answer) of one real launch
    through our app, as a browser gets them."""
    with LoopbackSession() as browser:
        viewer = browser.get(stack.launch_url(study_uid), timeout=30)
        viewer.raise_for_status()
        launch_id = urlsplit(viewer.url).path.split("/")[2]
        token = browser.get(f"{stack.app_url}/launches/{launch_id}/token", timeout=30)
        token.raise_for_status()
    launch = LAUNCH_TAGS.search(viewer.text)
    if launch is None or f"/launches/{launch_id}/token" not in launch.group(0):
        raise RuntimeError("our viewer page has no launch data naming the token URL")
    if not token.json()["authorization"].startswith("Bearer "):
        raise RuntimeError("our token answer carries no token")
    return launch_id, without_prefetch(launch.group(0)), token.text


def without_prefetch(tags: str) -> str:
    """The launch data less what only our launch adds (`prefetch`: the study's first
    DICOMweb requests, started by launch.js at once; bare OHIF makes them itself, when it
    gets to them; `skipModules`: the modes and extension OHIF's bundle would load at
    start-up and our viewer never uses; bare OHIF loads all it was built with)."""
    data = LAUNCH_DATA.search(tags)
    if data is None:
        raise RuntimeError("our viewer page has no launch data")
    launch = json.loads(data.group(1))
    launch.pop("prefetch", None)
    launch.pop("skipModules", None)
    # Escaped as Django's json_script escapes it (no "</script>" can end the block early).
    text = json.dumps(launch, separators=(",", ":"))
    for char, escaped in (("<", "\\u003C"), (">", "\\u003E"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return tags[: data.start(1)] + text + tags[data.end(1) :]


def warm_up_servers(stack: BenchStack) -> None:
    """A few launches without a browser, so that each server worker has most likely
    served one (its first launch pays for lazy imports and connections)."""
    # KHEOPS's codes carry no nonce: the same user launching the same study within a second
    # gets the same code, which our app refuses as a replay. So no two launches here are
    # alike, and the measured ones (alice, CT) come more than a second later.
    launches = [(user, study) for user in ("bob", "alice") for study in reversed(stack.study_uids)]
    for user, study in launches[: 2 * len(stack.worker_pids())]:
        with LoopbackSession() as client:
            client.get(stack.launch_url(study, username=user), timeout=30).raise_for_status()
    time.sleep(1.1)


@dataclass
class Samples:
    ours: list[Load] = field(default_factory=list)
    baseline: list[Load] = field(default_factory=list)
    dropped: int = 0  # pairs with a load that drew nothing within IMAGE_TIMEOUT_MS

    def drop(self, run: int, error: PlaywrightTimeoutError) -> None:
        """Leave out the pair `run` (a load over IMAGE_TIMEOUT_MS: an overloaded machine);
        more than one pair in five: the run is not worth finishing."""
        self.dropped += 1
        first_line = str(error).splitlines()[0]
        print(f"browser: pair {run} left out ({first_line})", file=sys.stderr)
        if self.dropped > max(1, (len(self.ours) + self.dropped) // 5):
            raise error


def measure() -> list[_harness.Result]:
    use_postgres_if_available()
    started = time.monotonic()
    results: list[_harness.Result] = []
    with BenchStack.start(name=BENCHMARK) as stack:
        print(f"browser: stack up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        study = stack.sample_study_uid("CT")
        # The baseline is bare OHIF with the token, calling KHEOPS: a direct launch's data.
        stack.set_token_delivery("direct")
        launch_id, launch, token = baseline_config(stack, study)
        bundle_dir = (OHIF_ROOT / "current").resolve()
        server = f"uvicorn {len(stack.worker_pids())} workers; {stack.database.vendor}"
        with (
            StaticOhif(bundle_dir, launch_id=launch_id, launch=launch, token=token) as static,
            sync_playwright() as playwright,
        ):
            ours = Ours(stack, study)
            baseline = Baseline(
                f"{static.url}/launches/{launch_id}/viewer?StudyInstanceUIDs={study}",
                study,
                from_url=stack.album_url,
            )
            for mode in MODES:
                stack.set_token_delivery(mode)
                check_token_delivery(stack, study, mode)
                print(f"browser: {mode}: {PAIRS} pairs cold, then warm", file=sys.stderr)
                cold, wire, reload = measure_cold(playwright, stack, ours, baseline, mode=mode)
                warm = measure_warm(playwright, ours, baseline, mode=mode)
                mode_results = [
                    *timing_results("cold", cold, server, mode=mode),
                    *timing_results("warm", warm, server, mode=mode),
                    *wire_results(wire, reload, mode=mode),
                ]
                for result in mode_results:
                    if result.unit == "ratio":
                        print(f"browser: {result.name}: {result.notes}", file=sys.stderr)
                results += mode_results
    print(f"browser: measured in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return results


LAUNCH_DATA = re.compile(r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>')


def check_token_delivery(stack: BenchStack, study_uid: str, mode: str) -> None:
    """One launch (not alice's: hers are the measured ones): its viewer's data source is
    KHEOPS (direct) or our relay (relay), as `mode` says."""
    with LoopbackSession() as browser:
        viewer = browser.get(stack.launch_url(study_uid, username="bob"), timeout=30)
        viewer.raise_for_status()
    data = LAUNCH_DATA.search(viewer.text)
    if data is None:
        raise RuntimeError("our viewer page has no launch data")
    [source] = json.loads(data.group(1))["config"]["dataSources"]
    relayed = RELAY_PATH.search(urlsplit(source["configuration"]["wadoRoot"]).path + "/")
    if bool(relayed) != (mode == "relay"):
        raise RuntimeError(f"asked for {mode} mode, the viewer's data source is {source}")
    time.sleep(1.1)  # no two launches of the same user and study within a second


def measure_cold(
    playwright: Playwright, stack: BenchStack, ours: Ours, baseline: Baseline, *, mode: str = ""
) -> tuple[Samples, list[WireTotals], list[WireTotals]]:
    samples, wire, reload = Samples(), [], []
    browser = _launch_browser(playwright)
    try:
        # Unmeasured: the servers' first requests (imports, page cache; every server
        # worker's first launch) and Chromium's own start-up are not what a click costs.
        warm_up_servers(stack)
        with _fresh_context(browser) as context:
            ours.load(context.new_page())
        for run in range(RUNS):
            pair: dict[BrowserSide, Load] = {}
            # Alternate who goes first: neither side always follows the other's load.
            try:
                for side in (ours, baseline) if run % 2 == 0 else (baseline, ours):
                    pair[side] = cold_load(browser, stack, ours, side, run, wire, reload, mode)
            except PlaywrightTimeoutError as error:
                samples.drop(run, error)
                continue
            samples.ours.append(pair[ours])
            samples.baseline.append(pair[baseline])
    finally:
        browser.close()
    return samples, wire, reload


def cold_load(
    browser: Browser,
    stack: BenchStack,
    ours: Ours,
    side: BrowserSide,
    run: int,
    wire: list[WireTotals],
    reload: list[WireTotals],
    mode: str,
) -> Load:
    """One cold load of `side`; of ours, its bytes (and, in the first runs, a reload's)."""
    with _fresh_context(browser) as context:
        page = context.new_page()
        log = WireLog.attach(context, page)
        log.start()
        load = side.load(page)
        if side is not ours:
            log.collect()
            return load
        wire.append(WireTotals.of(log.collect(), app=stack.app_url, dicomweb=stack.dicomweb_url))
        if run < RELOAD_RUNS:
            log.start()
            page.reload()
            BrowserSide.wait_for_first_image(page)
            reload.append(
                WireTotals.of(log.collect(), app=stack.app_url, dicomweb=stack.dicomweb_url)
            )
            if TRACE and run == 0:
                write_trace(browser, ours, mode=mode)
    return load


def measure_warm(
    playwright: Playwright, ours: Ours, baseline: Baseline, *, mode: str = ""
) -> Samples:
    samples = Samples()
    waterfalls: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-browser-profiles-") as profiles:
        with (
            _persistent_context(playwright, Path(profiles) / "ours") as ours_context,
            _persistent_context(playwright, Path(profiles) / "baseline") as baseline_context,
        ):
            pages = {ours: ours_context.pages[0], baseline: baseline_context.pages[0]}
            for _ in range(WARMUP_LOADS):
                for side, page in pages.items():
                    side.load(page)
            for run in range(WARM_RUNS):
                pair: dict[BrowserSide, Load] = {}
                try:
                    for side in (ours, baseline) if run % 2 == 0 else (baseline, ours):
                        pair[side] = side.load(pages[side])
                except PlaywrightTimeoutError as error:
                    samples.drop(run, error)
                    continue
                samples.ours.append(pair[ours])
                samples.baseline.append(pair[baseline])
                if TRACE:
                    waterfalls.append({side.name: pages[side].evaluate(WATERFALL) for side in pair})
    if TRACE:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"warm-waterfalls{'-' + mode if mode else ''}.json"
        path.write_text(json.dumps(waterfalls, indent=1) + "\n", encoding="utf-8")
        print(f"browser: warm waterfalls in {path}", file=sys.stderr)
    return samples


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result(_harness.Result):
    """A result with an optional target: the median must be at most `target`."""

    target: float | None = None

    def as_json(self) -> dict[str, Any]:
        data = super().as_json()
        if self.target is not None:
            data["target_met"] = data["median"] <= self.target
        return data


@dataclass(frozen=True)
class PairRatios:
    """Ours / baseline per back-to-back pair (pairs cancel the machine's drift over a run)."""

    ratios: list[float]
    median: float
    q1: float  # interquartile range of the pair ratios
    q3: float
    ratio_of_medians: float

    @classmethod
    def of(cls, ours: list[float], baseline: list[float]) -> PairRatios:
        ratios = [a / b for a, b in zip(ours, baseline, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        return cls(
            ratios=ratios,
            median=statistics.median(ratios),
            q1=q1,
            q3=q3,
            ratio_of_medians=statistics.median(ours) / statistics.median(baseline),
        )

    @property
    def within_noise(self) -> bool:
        return self.q1 <= 1.0 <= self.q3

    def verdict(self) -> str:
        spread = (
            f"IQR {self.q1:.2f} to {self.q3:.2f}, "
            f"extremes {min(self.ratios):.2f} and {max(self.ratios):.2f}"
        )
        if self.within_noise:
            said = f"within noise: the pair ratios' {spread} includes 1.00"
        elif self.q3 < 1.0:
            said = f"faster than bare OHIF beyond the noise ({spread})"
        else:
            said = f"slower than bare OHIF beyond the noise ({spread})"
        return (
            f"median of {len(self.ratios)} pair ratios {self.median:.2f}; {said}; "
            f"ratio of medians {self.ratio_of_medians:.2f}"
        )


def token_slack(loads: list[Load]) -> list[float]:
    """Per load, ms from the token's answer to the page's first DICOMweb request: positive,
    the token was ready first."""
    return [
        load.first_dicomweb_ms - load.token_ready_ms
        for load in loads
        if load.first_dicomweb_ms is not None and load.token_ready_ms is not None
    ]


def timing_results(
    kind: str, samples: Samples, server: str, *, mode: str = "direct"
) -> list[Result]:
    ours = [load.total_ms for load in samples.ours]
    baseline = [load.total_ms for load in samples.baseline]
    pairs = PairRatios.of(ours, baseline)
    dropped = f"; {samples.dropped} pair(s) left out (a load over {IMAGE_TIMEOUT_MS // 1000} s)"
    cache = (
        "fresh context, empty cache"
        if kind == "cold"
        else f"persistent profile, loaded {WARMUP_LOADS}x before"
    )
    slack = token_slack(samples.ours)
    baseline_median = statistics.median(baseline)
    viewer_median = statistics.median(load.viewer_ms for load in samples.ours)
    name = f"{mode}, {kind}"
    return [
        Result(
            BENCHMARK,
            f"{name}: ours, click → first image",
            "ms",
            ours,
            f"{cache}; KHEOPS form POST → launch → OHIF; token delivery {mode}; {server}",
        ),
        Result(
            BENCHMARK,
            f"{name}: baseline, navigation → first image",
            "ms",
            baseline,
            "same bundle, launch data, launch.js and token from a static file server (no Django, "
            "no KHEOPS), DICOMweb straight from KHEOPS",
        ),
        Result(
            BENCHMARK,
            f"{name}: ratio ours / baseline",
            "ratio",
            pairs.ratios,
            pairs.verdict() + (dropped if samples.dropped else ""),
            target=RATIO_TARGET,
        ),
        Result(
            BENCHMARK,
            f"{name}: ours, click → our launch URL requested",
            "ms",
            [load.before_viewer_ms for load in samples.ours],
            "KHEOPS: form POST /api/report, meta-refresh page",
        ),
        Result(
            BENCHMARK,
            f"{name}: ours, launch endpoint (claim the code → 302)",
            "ms",
            [load.launch_ms for load in samples.ours],
            "our /providers/ohif/launch as the browser saw it (navigation start included); its "
            "Server-Timing, medians: "
            + (server_timing_medians(samples.ours) or "(none sent)")
            + "; the exchange, while OHIF loads (token request's Server-Timing): "
            + (server_timing_medians(samples.ours, token=True) or "(none seen)"),
        ),
        Result(
            BENCHMARK,
            f"{name}: ours, viewer page → first image",
            "ms",
            [load.viewer_ms for load in samples.ours],
            f"the baseline's navigation → first image: median {baseline_median:.0f} ms "
            f"({viewer_median - baseline_median:+.0f} ms)",
        ),
        Result(
            BENCHMARK,
            f"{name}: ours, token ready → the page's first DICOMweb request",
            "ms",
            slack or [0.0],
            f"ready first in {sum(s > 0 for s in slack)} of {len(slack)} loads (the first "
            "request is launch.js's prefetch: direct mode waits for the token, relay mode "
            "does not, and the relay waits for the exchange)",
        ),
    ]


def server_timing_medians(loads: list[Load], *, token: bool = False) -> str:
    timings = [load.token_timing if token else load.server_timing for load in loads]
    phases = sorted({phase for timing in timings for phase in timing})
    return ", ".join(
        f"{phase} {statistics.median(timing.get(phase, 0.0) for timing in timings):.0f} ms"
        for phase in phases
    )


def wire_results(
    cold: list[WireTotals], reload: list[WireTotals], *, mode: str = "direct"
) -> list[Result]:
    first = cold[0]
    uncompressed = [t for t in first.over_network if not t.encoding and t.decoded > 1024]
    again = reload[0].over_network
    dicomweb = "our relay → KHEOPS" if mode == "relay" else "KHEOPS"
    return [
        Result(
            BENCHMARK,
            f"{mode}, cold load: our app's origin, on the wire",
            "MB",
            [w.app_wire / MB for w in cold],
            f"{first.app_requests} requests (launch redirect, page, launch.js, banner, OHIF bundle; "
            f"not the relayed DICOMweb), headers included; at most {COLD_WIRE_TARGET_MB} MB "
            f"(+5 % on {COLD_WIRE_BEFORE_MB} MB); sent uncompressed (> 1 KB): "
            + (
                ", ".join(f"{_short(t.url)} {t.decoded / KB:.0f} KB" for t in uncompressed)
                or "none"
            ),
            target=COLD_WIRE_TARGET_MB,
        ),
        Result(
            BENCHMARK,
            f"{mode}, cold load: our app's origin, decoded",
            "MB",
            [w.app_decoded / MB for w in cold],
            "the same responses' bodies after decompression",
        ),
        Result(
            BENCHMARK,
            f"{mode}, cold load: DICOMweb ({dicomweb}), on the wire",
            "KB",
            [w.dicomweb_wire / KB for w in cold],
            f"{first.dicomweb_requests} requests (QIDO, metadata, frame of the CT study) "
            f"and {first.dicomweb_preflights} CORS preflights (no bytes reported for those)",
        ),
        Result(
            BENCHMARK,
            f"{mode}, warm reload: our app's origin, on the wire",
            "KB",
            [w.app_wire / KB for w in reload],
            f"page.reload() in the cold load's context; {len(again)} from the network: "
            + ", ".join(sorted({_short(t.url) for t in again})),
            target=WARM_RELOAD_TARGET_KB,
        ),
        Result(
            BENCHMARK,
            f"{mode}, warm reload: DICOMweb ({dicomweb}), on the wire",
            "KB",
            [w.dicomweb_wire / KB for w in reload],
            f"{reload[0].dicomweb_requests} requests, {reload[0].dicomweb_preflights} preflights: "
            "the browser reuses none of them: every load of the viewer fetches them again",
        ),
    ]


def _short(url: str) -> str:
    path = urlsplit(url).path
    return re.sub(r"/launches/[^/]+/", "/launches/…/", path)


def write_trace(browser: Browser, ours: Ours, *, mode: str = "") -> None:
    """Diagnostics for a missed target: every transfer of a cold load and of its reload,
    and a Chrome performance trace of a cold load (open it in chrome://tracing or Perfetto)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _fresh_context(browser) as fresh:
        fresh_page = fresh.new_page()
        log = WireLog.attach(fresh, fresh_page)
        suffix = f"-{mode}" if mode else ""
        browser.start_tracing(
            page=fresh_page,
            path=str(ARTIFACTS / f"cold-load-trace{suffix}.json"),
            screenshots=False,
        )
        log.start()
        ours.load(fresh_page)
        transfers = log.collect()
        browser.stop_tracing()
        log.start()
        fresh_page.reload()
        BrowserSide.wait_for_first_image(fresh_page)
        reloaded = log.collect()
    for name, items in (
        (f"cold-load-transfers{suffix}.json", transfers),
        (f"reload-transfers{suffix}.json", reloaded),
    ):
        (ARTIFACTS / name).write_text(
            json.dumps([t.__dict__ for t in items], indent=1) + "\n", encoding="utf-8"
        )
    print(f"browser: diagnostics in {ARTIFACTS}", file=sys.stderr)


def _options() -> None:
    """`--pairs N` and `--modes direct,relay` (what the environment variables set), taken
    off the command line before the harness reads the rest."""
    global PAIRS, RUNS, WARM_RUNS, RELOAD_RUNS, MODES
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--modes", default=",".join(MODES))
    known, rest = parser.parse_known_args()
    if known.pairs < 1:
        parser.error("--pairs must be at least 1")
    PAIRS = RUNS = WARM_RUNS = known.pairs
    RELOAD_RUNS = min(RUNS, 3)
    MODES = tuple(mode for mode in known.modes.split(",") if mode)
    if not MODES or set(MODES) - {"direct", "relay"}:
        parser.error("--modes: direct, relay or both")
    sys.argv[1:] = rest


if __name__ == "__main__":
    _options()
    _harness.main(BENCHMARK, measure)
