"""A clinician's journey in one browser context, told step by step.

`journey.step("…")` names what the scenario is doing; when a step fails, the AssertionError
says which scenario stopped where, on which page, with the path of a screenshot taken at that
moment and the browser's console errors. Every request and navigation of the context is kept
so that scenarios can check what the browser sent (tokens, Referer headers).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, Request

from tests.e2e.chromium import CANVAS_SHOWS_IMAGE_JS
from tests.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"
# The screen size the pages are judged at (screenshots of every page, artifacts/e2e/page-*).
VIEWPORT = {"width": 1440, "height": 900}

# Chromium reports CSP violations in the console too, but only the event says which directive.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation: " + event.violatedDirective + " blocked " + (event.blockedURI || "inline"));
}, true);
"""

# "The image is drawn": some cornerstone canvas has a pixel that is not black. OHIF answers an
# unreadable study (401 included) by navigating to /notfoundstudy: report it instead of waiting.
IMAGE_STATE = (
    "(minimum) => {\n"
    + CANVAS_SHOWS_IMAGE_JS
    + """
  if (location.pathname.endsWith("/notfoundstudy")) { return "notfoundstudy"; }
  const canvases = [...document.querySelectorAll("canvas.cornerstone-canvas")];
  return canvases.filter(canvasShowsImage).length >= minimum ? "drawn" : false;
}"""
)

# A cheap checksum of the first viewport's pixels, to tell one drawn image from another.
FINGERPRINT = """() => {
  const canvas = document.querySelector("canvas.cornerstone-canvas");
  const context = canvas && canvas.getContext("2d", { willReadFrequently: true });
  if (!context || !canvas.width) { return 0; }
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < pixels.length; i += 4) { sum = (sum * 31 + pixels[i] + pixels[i + 1] + pixels[i + 2]) % 1000000007; }
  return sum;
}"""

VIEWER_PATH = re.compile(r"/launches/[^/]+/viewer")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


# The query parameters whose values are secrets: a launch URL's authorization code, a token.
SECRET_QUERY_VALUE = re.compile(r"\b(code|access_token|token)=[^&\s)\"']+")


@dataclass(frozen=True)
class ConsoleLine:
    kind: str  # console message type ("error", "warning", …) or "pageerror"
    text: str
    url: str  # where it came from, when the browser says

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}" + (f" ({self.url})" if self.url else "")


class Journey:
    def __init__(
        self, browser: Browser, stack: Stack, scenario: str, *, locale: str | None = None
    ) -> None:
        self.browser = browser
        self.stack = stack
        self.scenario = scenario
        # The browser's language (navigator.language and Accept-Language), e.g. "fr-FR".
        self.locale = locale
        self.console: list[ConsoleLine] = []
        self.requests: list[Request] = []
        self.finished: list[Request] = []
        self.navigations: list[str] = []
        self.timings: list[tuple[str, float]] = []
        self.last_screenshot: Path | None = None
        self._contexts: list[BrowserContext] = []
        self.context = self.new_context()
        self.page = self.context.new_page()

    @classmethod
    @contextmanager
    def open(
        cls, browser: Browser, stack: Stack, scenario: str, *, locale: str | None = None
    ) -> Iterator[Journey]:
        journey = cls(browser, stack, scenario, locale=locale)
        started = time.monotonic()
        try:
            yield journey
        finally:
            for context in journey._contexts:
                context.close()
            steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in journey.timings)
            line = f"{scenario}: {time.monotonic() - started:.1f}s ({steps})"
            with (ARTIFACTS / "timings.txt").open("a", encoding="utf-8") as timings:
                timings.write(line + "\n")

    def new_context(self) -> BrowserContext:
        """A context of its own (cookies, cache): another browser, as far as servers can tell."""
        context = self.browser.new_context(viewport=VIEWPORT, locale=self.locale)
        context.set_default_timeout(20_000)
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        context.on("console", self._on_console)
        context.on(
            "weberror",
            lambda error: self.console.append(ConsoleLine("pageerror", str(error.error), "")),
        )
        context.on("request", lambda request: self.requests.append(request))
        context.on("requestfinished", lambda request: self.finished.append(request))
        context.on("page", self._watch_navigations)
        self._contexts.append(context)
        return context

    def _watch_navigations(self, page: Page) -> None:
        page.on(
            "framenavigated",
            lambda frame: self.navigations.append(frame.url) if frame == page.main_frame else None,
        )

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(
            ConsoleLine(message.type, message.text, message.location.get("url", ""))
        )

    # --- reporting -------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except Exception as failure:
            shot = self.screenshot(f"failed-{_slug(name)}", quiet=True)
            raise AssertionError(self._failure_report(name, failure, shot)) from failure
        self.timings.append((name, time.monotonic() - started))

    def screenshot(
        self, name: str, *, page: Page | None = None, quiet: bool = False
    ) -> Path | None:
        path = ARTIFACTS / f"{self.scenario}-{_slug(name)}.png"
        try:
            (page or self.page).screenshot(path=str(path))
        except Exception:
            if not quiet:
                raise
            return self.last_screenshot
        self.last_screenshot = path
        return path

    def page_screenshot(
        self, page_name: str, *, page: Page | None = None, mask: list[Locator] | None = None
    ) -> Path:
        """The page as a person sees it at 1440x900, as artifacts/e2e/page-<page_name>.png,
        so that the next person can look at every page without running anything. `mask`
        covers what no picture may keep (a secret on the page)."""
        path = ARTIFACTS / f"page-{_slug(page_name)}.png"
        (page or self.page).screenshot(path=str(path), mask=mask or [])
        self.last_screenshot = path
        return path

    def console_errors(self) -> list[ConsoleLine]:
        return [line for line in self.console if line.kind in ("error", "pageerror")]

    def viewer_console_errors(self) -> list[ConsoleLine]:
        """Errors but those of the stand-in's own pages (its album page has no favicon)."""
        pages = self.stack.kheops.root_url + "/"
        api = self.stack.kheops.api("/")
        return [
            line
            for line in self.console_errors()
            if not (line.url.startswith(pages) and not line.url.startswith(api))
        ]

    def _failure_report(self, step: str, failure: BaseException, shot: Path | None) -> str:
        errors = self.console_errors()[-15:] or ["(none)"]
        try:
            url = self.page.url
        except Exception:
            url = "(page closed)"
        report = "\n".join(
            [
                f"e2e scenario {self.scenario!r} stopped at step {step!r}:",
                f"  {type(failure).__name__}: {failure}",
                f"  page: {url}",
                f"  last screenshot: {shot or '(none)'}",
                "  console errors:",
                *(f"    {str(line)[:400]}" for line in errors),
            ]
        )
        # A launch URL's code (a console error names the URL that failed): never in a report.
        return SECRET_QUERY_VALUE.sub(r"\1=[…]", report)

    # --- the KHEOPS side -------------------------------------------------------------------

    def album_url(self) -> str:
        return self.stack.kheops.url(f"/albums/{self.stack.kheops.demo_album_id}")

    def open_from_album(self, study_uid: str, provider: str = "OHIF") -> None:
        """Click "Open in <provider>…" (by default "Open in OHIF Viewer") in the study's row of
        the album page, as a clinician."""
        self.page.goto(self.album_url())
        row = self.page.locator("tbody tr").filter(
            has=self.page.locator("code", has_text=study_uid)
        )
        row.get_by_role("button", name=re.compile(rf"^Open in {re.escape(provider)}")).click()
        self.wait_for_viewer()

    def launch_with_form(self, study_uids: list[str]) -> None:
        """Submit KHEOPS's launch form from a page of its origin, with the given studies
        (the API takes `studyUID` repeated; the KHEOPS UI itself sends one)."""
        self.page.goto(self.album_url())
        fields = [
            ("access_token", self.stack.kheops.user_token("alice")),
            ("client_id", self.stack.client_id),
            ("return_uri", self.album_url()),
            *(("studyUID", uid) for uid in study_uids),
        ]
        self.page.evaluate(
            """([action, fields]) => {
              const form = document.createElement("form");
              form.method = "post";
              form.action = action;
              for (const [name, value] of fields) {
                const input = document.createElement("input");
                input.type = "hidden";
                input.name = name;
                input.value = value;
                form.appendChild(input);
              }
              document.body.appendChild(form);
              form.submit();
            }""",
            [self.stack.kheops.api("/report"), fields],
        )
        self.wait_for_viewer()

    def wait_for_viewer(self) -> None:
        self.page.wait_for_url(VIEWER_PATH, timeout=30_000)

    # --- what the browser did --------------------------------------------------------------

    def launch_url(self) -> str:
        [url] = [r.url for r in self.requests if "/providers/ohif/launch?" in r.url]
        return url

    def launch_code(self) -> str:
        [code] = parse_qs(urlsplit(self.launch_url()).query)["code"]
        return code

    def launch_id(self, page: Page | None = None) -> str:
        return urlsplit((page or self.page).url).path.split("/")[2]

    def token(self) -> str:
        """The KHEOPS access token our server gave this session's viewer."""
        response = self.context.request.get(
            f"{self.stack.viewer.url}/launches/{self.launch_id()}/token"
        )
        assert response.status == 200, response.status
        authorization = response.json()["authorization"]
        assert authorization.startswith("Bearer "), "no Bearer token in the token answer"
        return authorization.removeprefix("Bearer ")

    def dicomweb_requests(self) -> list[Request]:
        """Finished requests to the stand-in's DICOMweb API (not the launch form)."""
        api = self.stack.kheops.api("/")
        return [
            r
            for r in self.finished
            if r.url.startswith(api) and not r.url.startswith(api + "report")
        ]

    def urls_after_launch(self) -> list[str]:
        launch = self.launch_url()
        first = next(i for i, r in enumerate(self.requests) if r.url == launch)
        return [r.url for r in self.requests[first + 1 :]] + [
            u for u in self.navigations if u != launch
        ]

    def referers(self) -> list[str]:
        return [h for r in self.finished if (h := r.all_headers().get("referer"))]

    # --- the viewer ------------------------------------------------------------------------

    def wait_for_image(
        self, *, minimum: int = 1, page: Page | None = None, timeout: float = 45_000
    ) -> None:
        """Wait until `minimum` viewports have drawn pixels; fail at once on OHIF's not-found page."""
        handle = (page or self.page).wait_for_function(
            IMAGE_STATE, arg=minimum, timeout=timeout, polling=250
        )
        state: Any = handle.json_value()
        assert state == "drawn", f"OHIF gave up on the study: {state} ({(page or self.page).url})"

    def viewer_csp(self) -> str:
        """The Content-Security-Policy the viewer page was served with."""
        [response] = [
            r.response()
            for r in self.finished
            if r.resource_type == "document" and VIEWER_PATH.search(r.url)
        ][-1:]
        assert response is not None
        return response.headers.get("content-security-policy", "")

    def viewport_fingerprint(self) -> int:
        return self.page.evaluate(FINGERPRINT)

    def wait_for_fingerprint_change(self, previous: int) -> None:
        self.page.wait_for_function(
            f"(previous) => {{ const now = ({FINGERPRINT})(); return now !== 0 && now !== previous; }}",
            arg=previous,
            polling=250,
        )

    def _viewport_centre(self) -> tuple[float, float]:
        box = self.page.locator('[data-cy="viewport-pane"]').first.bounding_box()
        assert box is not None, "no viewport on the page"
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def scroll_viewport(self) -> None:
        """One notch of the mouse wheel over the viewport: the next image of the stack."""
        x, y = self._viewport_centre()
        self.page.mouse.move(x, y)
        self.page.mouse.wheel(0, 120)

    def drag_across_viewport(self) -> None:
        x, y = self._viewport_centre()
        self.page.mouse.move(x - 100, y)
        self.page.mouse.down()
        self.page.mouse.move(x, y + 25, steps=5)
        self.page.mouse.move(x + 100, y + 50, steps=5)
        self.page.mouse.up()

    def measure_length(self) -> None:
        """Draw a Length measurement across the viewport and track it (OHIF's prompt)."""
        page = self.page
        page.locator('[data-cy="Length-btn"]').click()
        self.drag_across_viewport()
        page.locator('[data-cy="prompt-begin-tracking-yes-btn"]').click()
        page.locator('[data-cy="trackedMeasurements-btn"]').click()
        page.locator('[data-cy="measurement-table-row-0"]').get_by_text(" mm").first.wait_for()
