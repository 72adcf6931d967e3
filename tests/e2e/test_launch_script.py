"""launch.js's prefetched answers when OHIF gives up on a request, in Chromium, on its own.

No stack here: the browser's requests to a made-up origin are answered by the test
(Playwright's routing), the page is the viewer page's launch data block and launch.js,
without OHIF, and the launch is in relay mode (the prefetch starts at DOMContentLoaded with
no token to wait for). The requests are then made as OHIF's DICOMweb client and image loader
make them, and given up on (`abort()`, an AbortSignal) while their answer is still on its way
from launch.js's prefetch: they must end as the browser ends an aborted request, and never
receive that answer afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils.html import json_script
from playwright.sync_api import Browser, Page, Route

from launcher import viewer

ORIGIN = "http://viewer.test"
LAUNCH = "L1"
ROOT = f"{ORIGIN}/launches/{LAUNCH}/dicomweb"
STUDY = "1.2.3"
SERIES = "1.2.3.4"
INSTANCE = "1.2.3.4.5"
LAUNCH_JS = Path(__file__).resolve().parents[2] / "static" / "launcher" / "launch.js"

SERIES_LIST = [{"0020000E": {"vr": "UI", "Value": [SERIES]}}]
METADATA = [
    {
        "00080018": {"vr": "UI", "Value": [INSTANCE]},
        "00200013": {"vr": "IS", "Value": [1]},
    }
]
FRAME = b"--frame\r\nContent-Type: application/octet-stream\r\n\r\n" + bytes(64) + b"\r\n--frame--"
STUDY_QIDO = f"{ROOT}/studies?{viewer.PREFETCH_STUDY_QUERY}&StudyInstanceUID={STUDY}"
FRAME_URL = f"{ROOT}/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/frames/1"


def launch_data() -> dict[str, object]:
    return {
        "launchId": LAUNCH,
        "publicUrl": "/static/ohif/",
        "tokenUrl": f"/launches/{LAUNCH}/token",
        "returnUri": "http://kheops.test/albums/1",
        "openedFrom": {"album": "1", "server": "KHEOPS"},
        "brand": {"title": "OHIF", "logo": "/logo.svg"},
        "config": {"dataSources": [{"configuration": {"wadoRoot": ROOT, "qidoRoot": ROOT}}]},
        "prefetch": viewer.prefetch(SimpleNamespace(study_uids=[STUDY], relayed=True)),  # type: ignore[arg-type]
        "text": {"cannotOpen": "The viewer could not open this study."},
    }


PAGE = (
    "<!doctype html><html><head>"
    f"{json_script(launch_data(), 'kheops-ohif-launch')}"
    '<script src="/launch.js"></script></head><body></body></html>'
)


def answered_as_our_server(route: Route, page_html: str) -> bool:
    """The viewer page, launch.js and the token answer, as our server gives them; False for
    any other request (the test's own to answer)."""
    url = route.request.url
    if url == f"{ORIGIN}/viewer":
        route.fulfill(body=page_html, content_type="text/html")
    elif url == f"{ORIGIN}/launch.js":
        route.fulfill(body=LAUNCH_JS.read_text(), content_type="text/javascript")
    elif url.endswith("/token"):
        route.fulfill(json={"expiresIn": 3600, "userName": "Dr X"})
    else:
        return False
    return True


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """The page, once launch.js's prefetch is on its way; and the DICOMweb URLs asked for."""
    asked: list[str] = []

    def answer(route: Route) -> None:
        url = route.request.url
        if answered_as_our_server(route, PAGE):
            return
        if url.startswith(ROOT):
            asked.append(url)
            if url == FRAME_URL:
                route.fulfill(
                    body=FRAME, content_type='multipart/related; type="application/octet-stream"'
                )
            elif url.endswith("/metadata"):
                route.fulfill(json=METADATA, content_type="application/dicom+json")
            elif "/series?" in url:
                route.fulfill(json=SERIES_LIST, content_type="application/dicom+json")
            else:
                route.fulfill(json=[], content_type="application/dicom+json")
        else:
            route.fulfill(status=404)

    context = browser.new_context()
    try:
        context.route(f"{ORIGIN}/**", answer)
        opened = context.new_page()
        opened.goto(f"{ORIGIN}/viewer")
        # Every prefetch asked for, the frame last (it follows the series' metadata).
        deadline = 100
        while FRAME_URL not in asked and deadline:
            opened.wait_for_timeout(50)
            deadline -= 1
        assert FRAME_URL in asked, f"launch.js did not prefetch the frame: {asked}"
        yield opened, asked
    finally:
        context.close()


# An XMLHttpRequest as OHIF's DICOMweb client makes it, aborted at once (its answer is then
# still on its way: a promise launch.js resolves later); what it saw, a second later.
XHR_ABORTED = """async (url) => {
  const seen = [];
  const request = new XMLHttpRequest();
  request.open("GET", url);
  request.setRequestHeader("Accept", "application/dicom+json");
  request.responseType = "json";
  for (const type of ["readystatechange", "load", "error", "abort", "loadend"]) {
    request.addEventListener(type, () => seen.push([type, request.readyState, request.status]));
  }
  request.send();
  request.abort();
  const after = [request.readyState, request.status, request.response];
  await new Promise((resolve) => setTimeout(resolve, 1000));
  return { seen, after, later: [request.readyState, request.status, request.response] };
}"""

# The same request object opened again for another URL while the first answer waits: it
# must get the second URL's answer (from the network), never the first one's.
XHR_REOPENED = """async ([first, second]) => {
  const request = new XMLHttpRequest();
  request.open("GET", first);
  request.setRequestHeader("Accept", "application/dicom+json");
  request.send();
  request.open("GET", second);
  request.setRequestHeader("Accept", "application/dicom+json");
  const loads = [];
  const done = new Promise((resolve) => request.addEventListener("loadend", resolve));
  request.addEventListener("load", () => loads.push([request.responseURL, request.responseText]));
  request.send();
  await done;
  await new Promise((resolve) => setTimeout(resolve, 500));
  return loads;
}"""

FETCH_ABORTED = """async ([url, accept, early]) => {
  const controller = new AbortController();
  if (early) { controller.abort(); }
  const answer = fetch(url, { headers: { Accept: accept }, signal: controller.signal });
  controller.abort();
  try {
    const response = await answer;
    return ["answered", response.status];
  } catch (error) {
    return ["rejected", error.name];
  }
}"""


def test_an_xhr_aborted_while_its_prefetched_answer_comes_ends_as_an_aborted_request(
    page: tuple[Page, list[str]],
) -> None:
    opened, _ = page
    result = opened.evaluate(XHR_ABORTED, STUDY_QIDO)
    # As Chromium ends a request in flight on abort(): done with status 0, then unsent.
    assert result["seen"] == [["readystatechange", 4, 0], ["abort", 4, 0], ["loadend", 4, 0]]
    assert result["after"] == [0, 0, None]
    # And nothing arrives later: no load, the state left as abort() left it.
    assert result["later"] == [0, 0, None]
    assert STUDY_QIDO not in opened.evaluate("() => window.kheopsLaunch.answeredFromPrefetch")


def test_an_xhr_opened_again_while_its_prefetched_answer_comes_gets_only_its_new_answer(
    page: tuple[Page, list[str]],
) -> None:
    opened, asked = page
    other = f"{ROOT}/studies/{STUDY}/series/{SERIES}/instances"
    loads = opened.evaluate(XHR_REOPENED, [STUDY_QIDO, other])
    assert loads == [[other, "[]"]]
    assert asked.count(other) == 1
    assert STUDY_QIDO not in opened.evaluate("() => window.kheopsLaunch.answeredFromPrefetch")


@pytest.mark.parametrize("early", [False, True], ids=["aborted-while-waiting", "aborted-before"])
def test_a_frame_fetch_whose_signal_aborts_is_rejected_as_the_browser_rejects_it(
    page: tuple[Page, list[str]], early: bool
) -> None:
    opened, asked = page
    result = opened.evaluate(FETCH_ABORTED, [FRAME_URL, viewer.PREFETCH_FRAME_ACCEPT, early])
    assert result == ["rejected", "AbortError"]
    answered = opened.evaluate("() => window.kheopsLaunch.answeredFromPrefetch")
    assert FRAME_URL not in answered
    assert asked.count(FRAME_URL) == 1  # the prefetch only: an aborted fetch asks nobody


def test_the_same_requests_not_aborted_are_answered_from_the_prefetch(
    page: tuple[Page, list[str]],
) -> None:
    # The control: without abort(), the very same calls get the prefetched answers.
    opened, asked = page
    loaded = opened.evaluate(
        """async ([url, frame, accept]) => {
          const request = new XMLHttpRequest();
          request.open("GET", url);
          request.setRequestHeader("Accept", "application/dicom+json");
          request.responseType = "json";
          const done = new Promise((resolve) => request.addEventListener("loadend", resolve));
          request.send();
          await done;
          const response = await fetch(frame, { headers: { Accept: accept },
            signal: new AbortController().signal });
          return [request.status, request.response, response.status,
            (await response.arrayBuffer()).byteLength];
        }""",
        [STUDY_QIDO, FRAME_URL, viewer.PREFETCH_FRAME_ACCEPT],
    )
    assert loaded == [200, [], 200, len(FRAME)]
    assert opened.evaluate("() => window.kheopsLaunch.answeredFromPrefetch") == [
        STUDY_QIDO,
        FRAME_URL,
    ]
    assert asked.count(STUDY_QIDO) == 1 and asked.count(FRAME_URL) == 1


# What OHIF 3.13.2's bundle runs at start-up (its generated pluginImports), after launch.js:
# the arrays it fills are the very ones its appInit imports every name of.
PLUGIN_IMPORTS = """
const pluginImports_extensions = [];
const pluginImports_modes = [];
window.extensions = pluginImports_extensions;
window.modes = pluginImports_modes;
pluginImports_extensions.push("@ohif/extension-default");
pluginImports_extensions.push("@ohif/extension-cornerstone");
pluginImports_extensions.push("@ohif/extension-ultrasound-pleura-bline");
pluginImports_modes.push("@ohif/mode-longitudinal");
pluginImports_modes.push("@ohif/mode-basic");
pluginImports_modes.push("@ohif/mode-segmentation");
pluginImports_modes.push("@ohif/mode-tmtv");
pluginImports_modes.push("@ohif/mode-microscopy");
pluginImports_modes.push("@ohif/mode-preclinical-4d");
pluginImports_modes.push("@ohif/mode-ultrasound-pleura-bline");
pluginImports_modes.push("@ohif/mode-of-a-later-bundle");
window.importedAtStart = [pluginImports_extensions.slice(), pluginImports_modes.slice()];
"""


@pytest.mark.parametrize("skip", [True, False], ids=["our-launch", "without-skipModules"])
def test_ohif_imports_at_start_only_the_modes_and_extensions_our_viewer_uses(
    browser: Browser, skip: bool
) -> None:
    data = {**launch_data(), "skipModules": viewer.SKIP_MODULES} if skip else launch_data()
    page_html = (
        "<!doctype html><html><head>"
        f"{json_script(data, 'kheops-ohif-launch')}"
        '<script src="/launch.js"></script>'
        f"<script>{PLUGIN_IMPORTS}</script></head><body></body></html>"
    )

    def answer(route: Route) -> None:
        if not answered_as_our_server(route, page_html):
            route.fulfill(json=[], content_type="application/dicom+json")

    context = browser.new_context()
    try:
        context.route(f"{ORIGIN}/**", answer)
        opened = context.new_page()
        opened.goto(f"{ORIGIN}/viewer")
        extensions, modes = opened.evaluate("() => window.importedAtStart")
        same_arrays = opened.evaluate(
            "() => window.modes === window.modes && Array.isArray(window.modes)"
            " && window.modes.length === window.importedAtStart[1].length"
        )
    finally:
        context.close()
    assert same_arrays
    if skip:
        assert extensions == ["@ohif/extension-default", "@ohif/extension-cornerstone"]
        # The longitudinal mode (our /viewer route) and anything we do not know of.
        assert modes == ["@ohif/mode-longitudinal", "@ohif/mode-of-a-later-bundle"]
    else:
        assert len(extensions) == 3 and len(modes) == 8
