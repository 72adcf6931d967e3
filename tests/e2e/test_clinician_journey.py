"""The clinician's journey in headless Chromium: KHEOPS album page → OHIF → KHEOPS again.

Each scenario runs in a fresh browser context against the real stack (tests/stack.py) and
leaves screenshots in artifacts/e2e/. Scenarios are ordered cheapest-first; the one that
writes into Orthanc (saving a report) comes last and cleans up after itself.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Request

from tests.e2e.journey import VIEWER_PATH, Journey
from tests.stack import Stack

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # CT_small, explicit VR little endian
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"  # MR_small, explicit VR little endian
# NM "Whole Body Bone": one series, a JPEG extended (12-bit) and a JPEG 2000 instance.
NM_STUDY = "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457"
COMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
FRAMES = re.compile(r"/instances/(?P<sop>[0-9.]+)/frames/")


@pytest.fixture(autouse=True)
def _samples_in_the_demo_album(live_stack: Stack) -> None:
    # The scenarios open these from the demo album; fail clearly if the seed ever changes.
    missing = {CT_STUDY, MR_STUDY, NM_STUDY} - set(live_stack.kheops.demo_study_uids)
    assert not missing, f"not in the stand-in's demo album: {missing}"


def authorization_of(requests_made: list[Request]) -> set[str]:
    # CORS preflights never carry credentials; Chromium does not report them anyway.
    return {
        r.all_headers().get("authorization", "(none)")
        for r in requests_made
        if r.method != "OPTIONS"
    }


def test_open_in_ohif_from_the_album_draws_the_study_with_the_token_kept_out_of_urls(
    journey: Journey,
) -> None:
    with journey.step("click Open in OHIF for the CT study on the album page"):
        journey.open_from_album(CT_STUDY)
    with journey.step("the CT image is drawn"):
        journey.wait_for_image()
        journey.page_screenshot("viewer")
        assert "CT" in journey.page.locator('[data-cy="studyBrowser-panel"]').inner_text()
    with journey.step("the header shows the provider's name and our neutral mark, not OHIF's"):
        brand = journey.page.locator('[data-cy="kheops-ohif-brand"]')
        assert brand.inner_text() == "OHIF Viewer"
        mark = brand.locator("img")
        assert re.search(
            r"/static/launcher/viewer-mark(\.[0-9a-f]{12})?\.svg$", mark.get_attribute("src")
        )
        assert mark.evaluate("(img) => img.complete && img.naturalWidth > 0")
    with journey.step("a corner says whose KHEOPS account and album the viewer works in"):
        identity = journey.page.locator("#kheops-ohif-identity")
        identity.wait_for(state="visible", timeout=5_000)
        album = journey.album_url().rstrip("/").rsplit("/", 1)[1]
        lines = identity.locator("span").all_inner_texts()
        assert lines[0] == "Opened as Alice Admin (alice@sandbox.invalid)", lines
        assert lines[1].startswith(f"from album {album} on "), lines
        # Two short lines over the study panel, clear of the image.
        box = identity.bounding_box()
        panel = journey.page.locator('[data-cy="studyBrowser-panel"]').bounding_box()
        assert box is not None and panel is not None and box["height"] < 40, box
        assert box["x"] + box["width"] <= panel["x"] + panel["width"], (box, panel)
        journey.page_screenshot("viewer-identity")
    with journey.step("OHIF imported only the modes and extensions the viewer uses"):
        # The very arrays OHIF's appInit imports every name of (launcher.viewer.SKIP_MODULES).
        assert journey.page.evaluate("() => [window.modes, window.extensions]") == [
            ["@ohif/mode-longitudinal"],
            ["@ohif/extension-default", "@ohif/extension-cornerstone"],
        ]
    with journey.step("OHIF's loader took the default extension's stylesheet from our page"):
        # Stylesheet links in the order of the head: ours, from the page, come before our
        # banner's; OHIF's loader appends its own at the end, and adds none for a chunk
        # whose link (same href) the page already has (launcher.viewer).
        hrefs = journey.page.evaluate(
            """() => [...document.querySelectorAll('link[rel="stylesheet"]')]
                .map((link) => link.getAttribute("href"))"""
        )
        banner = next(i for i, href in enumerate(hrefs) if "/launcher/banner." in href)
        from_page = [href for href in hrefs[:banner] if re.search(r"/\d+\.css$", href)]
        assert from_page, hrefs
        assert [href for href in hrefs if hrefs.count(href) > 1] == [], hrefs
    with journey.step("every DICOMweb request carried the launch's token"):
        token = journey.token()
        dicomweb = journey.dicomweb_requests()
        assert any(FRAMES.search(r.url) for r in dicomweb), [r.url for r in dicomweb]
        assert authorization_of(dicomweb) == {f"Bearer {token}"}
    with journey.step("no code or token in any URL after the launch, nor in a Referer"):
        code = journey.launch_code()
        later_urls = journey.urls_after_launch()
        assert later_urls
        assert [url for url in later_urls if code in url or token in url] == []
        referers = journey.referers()
        assert [ref for ref in referers if code in ref or token in ref] == []


SERIES_QIDO = re.compile(r"/studies/[0-9.]+/series\?includefield=")
SERIES_METADATA = re.compile(r"/studies/[0-9.]+/series/[0-9.]+/metadata$")
STUDY_QIDO = re.compile(r"/studies\?limit=101&.*&StudyInstanceUID=[0-9.]+$")
PATIENT_QIDO = re.compile(r"/studies\?00100020=[^&]+&limit=101&")
# A request of OHIF's own, made in the page as its DICOMweb client makes them.
XHR_GET_JSON = """(url) => new Promise((resolve) => {
  const request = new XMLHttpRequest();
  request.open("GET", url, true);
  request.responseType = "json";
  request.setRequestHeader("Accept", "application/dicom+json");
  const auth = window.kheopsOhifTestAuthorization;
  if (auth) { request.setRequestHeader("Authorization", auth); }
  request.onreadystatechange = () => {
    if (request.readyState === 4) { resolve([request.status, Array.isArray(request.response)]); }
  };
  request.send();
})"""


def assert_first_requests_prefetched(
    requests_made: list[Request], *, patient_studies: bool = True
) -> list[str]:
    """The study's QIDO, series list and series metadata, and the patient's studies, were
    each fetched once, by our launch.js (`fetch`), and never by OHIF's own XMLHttpRequests
    (answered from them). Relay mode (`patient_studies` False): the patient's studies are
    not prefetched (the relay refuses that query): OHIF's own request alone asks for them."""
    urls = []
    for pattern in (STUDY_QIDO, SERIES_QIDO, SERIES_METADATA, PATIENT_QIDO):
        if pattern is PATIENT_QIDO and not patient_studies:
            matching = [r for r in requests_made if pattern.search(r.url)]
            assert [r.resource_type for r in matching] == ["xhr"], [r.url for r in matching]
            continue
        matching = [r for r in requests_made if pattern.search(r.url) and r.method == "GET"]
        assert [r.resource_type for r in matching] == ["fetch"], [
            (r.resource_type, r.url) for r in matching
        ]
        urls.append(matching[0].url)
    return urls


def assert_first_frame_prefetched(journey: Journey, requests_made: list[Request]) -> str:
    """A study of one series: the frame OHIF draws first was fetched once, by launch.js, and
    OHIF's image loader got it from there (launch.js lists what it answered so)."""
    answered = journey.page.evaluate("() => window.kheopsLaunch.answeredFromPrefetch")
    frames = [url for url in answered if FRAMES.search(url)]
    assert len(frames) == 1, answered
    fetched = [r for r in requests_made if r.url == frames[0] and r.method == "GET"]
    assert [r.resource_type for r in fetched] == ["fetch"], [r.url for r in requests_made]
    return frames[0]


def test_the_studys_first_dicomweb_requests_start_with_the_page_and_answer_ohifs_own(
    journey: Journey,
) -> None:
    with journey.step("open the CT study from the album page; the image is drawn"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
    with journey.step("OHIF's first requests were answered from what launch.js fetched"):
        _, series_qido, metadata, patient = assert_first_requests_prefetched(
            journey.dicomweb_requests()
        )
        # OHIF did ask for the patient's studies (its study panel), and got launch.js's.
        assert patient in journey.page.evaluate("() => window.kheopsLaunch.answeredFromPrefetch")
        # One series: its first image's frame too, with the token as always.
        assert_first_frame_prefetched(journey, journey.dicomweb_requests())
        assert authorization_of(journey.dicomweb_requests()) == {f"Bearer {journey.token()}"}
    with journey.step("an answer serves as many requests as OHIF makes at start, then none"):
        journey.page.evaluate(
            "(auth) => { window.kheopsOhifTestAuthorization = auth; }", f"Bearer {journey.token()}"
        )
        for url in (series_qido, metadata):
            # Asked again, it goes to the network (the browser reports the request).
            with journey.page.expect_request(url) as asked:
                assert journey.page.evaluate(XHR_GET_JSON, url) == [200, True]
            assert asked.value.resource_type == "xhr"


def test_the_viewer_survives_a_reload_refuses_other_browsers_and_ignores_a_token_parameter(
    journey: Journey,
) -> None:
    with journey.step("open the CT study from the album page"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
        token = journey.token()
        viewer_url = journey.page.url
    with journey.step("a reload draws the image again"):
        journey.page.reload()
        journey.wait_for_image()
        journey.screenshot("reloaded")
    with journey.step("the same viewer URL in a fresh browser context gets the 403 page"):
        stranger = journey.new_context().new_page()
        response = stranger.goto(viewer_url)
        assert response is not None and response.status == 403
        assert "belongs to another browser session" in stranger.content()
        assert not stranger.locator("canvas.cornerstone-canvas").count()
        # The way back to the album, and the study it was about.
        back = stranger.get_by_role("link", name="Back to KHEOPS")
        assert back.get_attribute("href") == journey.album_url()
        assert CT_STUDY in stranger.locator(".studies").inner_text()
        journey.page_screenshot("error-other-browser-403", page=stranger)
    with journey.step("&token=other is stripped by a redirect and the real token stays in use"):
        before = len(journey.finished)
        response = journey.page.goto(viewer_url + "&token=other")
        assert response is not None
        stripped = response.request.redirected_from
        assert stripped is not None and "token=other" in stripped.url
        assert "token=" not in journey.page.url
        journey.wait_for_image()
        journey.screenshot("token-parameter-ignored")
        dicomweb = [r for r in journey.dicomweb_requests() if r in journey.finished[before:]]
        assert dicomweb
        assert authorization_of(dicomweb) == {f"Bearer {token}"}


def test_the_launch_url_again_opens_this_browsers_viewer_and_no_other_browsers(
    journey: Journey,
) -> None:
    with journey.step("open the CT study from the album page"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
        launch_url = journey.launch_url()
        launch_id = journey.launch_id()
    with journey.step("the same launch URL in this browser (a double click) goes to its viewer"):
        response = journey.page.goto(launch_url)
        assert response is not None and response.status == 200
        assert journey.launch_id() == launch_id
        journey.wait_for_image()
    with journey.step("the launch URL in another browser is refused as already used"):
        stranger = journey.new_context().new_page()
        response = stranger.goto(launch_url)
        assert response is not None and response.status == 409
        assert "already been used" in stranger.content()
        assert "/launches/" not in stranger.url
        journey.page_screenshot("error-replay-409", page=stranger)


def test_a_launch_with_two_studies_shows_both_in_the_study_panel(journey: Journey) -> None:
    with journey.step("submit KHEOPS's launch form with two studyUID fields"):
        journey.launch_with_form([CT_STUDY, MR_STUDY])
        assert f"StudyInstanceUIDs={CT_STUDY}%2C{MR_STUDY}" in journey.page.url
    with journey.step("both studies are in OHIF's study panel"):
        journey.wait_for_image()
        panel = journey.page.locator('[data-cy="studyBrowser-panel"]')
        panel.get_by_text("MR", exact=True).first.wait_for()
        panel.get_by_text("CT", exact=True).first.wait_for()
        journey.screenshot("two-studies")
        queried = {
            uid for uid in (CT_STUDY, MR_STUDY) for r in journey.dicomweb_requests() if uid in r.url
        }
        assert queried == {CT_STUDY, MR_STUDY}


def test_jpeg_and_jpeg_2000_frames_decode_under_the_production_csp(journey: Journey) -> None:
    with journey.step("open the NM study (JPEG extended + JPEG 2000) from the album page"):
        journey.open_from_album(NM_STUDY)
        policy = journey.viewer_csp()
        assert "script-src 'self' 'unsafe-eval'" in policy
        journey.wait_for_image()
        first = journey.viewport_fingerprint()
    with journey.step("one series of two images: the first one OHIF draws came from launch.js"):
        assert_first_frame_prefetched(journey, journey.dicomweb_requests())
    with journey.step("scroll to the second instance, which is drawn too"):
        journey.scroll_viewport()
        journey.page.locator('[data-cy="viewport-overlay-bottom-right"]').get_by_text(
            "2/2"
        ).wait_for()
        journey.wait_for_fingerprint_change(first)
        journey.screenshot("second-instance")
    with journey.step("both frames came compressed and were decoded without CSP violations"):
        syntaxes = {
            match.group(1)
            for r in journey.dicomweb_requests()
            if FRAMES.search(r.url) and (response := r.response()) is not None
            for match in [
                re.search(r"transfer-syntax=\"?([0-9.]+)", response.headers.get("content-type", ""))
            ]
            if match
        }
        assert len(syntaxes & COMPRESSED_SYNTAXES.keys()) == 2, syntaxes
        violations = [
            str(line)
            for line in journey.console
            if "Content Security Policy" in line.text or "CSP violation" in line.text
        ]
        assert violations == []
        assert [str(line) for line in journey.viewer_console_errors()] == []


def test_the_banner_counts_down_then_offers_to_open_the_study_again_from_kheops(
    journey: Journey, live_stack: Stack
) -> None:
    # Long enough to launch and load the viewer on a slow machine (an expired grant gets 410).
    lifetime = 12
    live_stack.kheops.set_faults(token_lifetime_seconds=lifetime)
    with journey.step(f"open the CT study with a {lifetime}-second token"):
        journey.open_from_album(CT_STUDY)
    with journey.step("the banner shows the time left over the drawn image"):
        journey.wait_for_image()
        banner = journey.page.locator("#kheops-ohif-banner")
        banner.wait_for(state="visible", timeout=1_000)
        assert re.search(r"ends in 0:[01]\d\.", banner.inner_text()), banner.inner_text()
        journey.page_screenshot("viewer-banner-counting-down")
    with journey.step("the banner leaves OHIF's toolbar usable"):
        for tool in ("Length-btn", "Zoom-btn", "Pan-btn"):
            box = journey.page.locator(f'[data-cy="{tool}"]').bounding_box()
            assert box is not None, tool
            under = journey.page.evaluate(
                "([x, y]) => !!document.elementFromPoint(x, y).closest('#kheops-ohif-banner')",
                [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
            )
            assert not under, f"the banner covers {tool}"
        assert_banner_on_one_line_clear_of_the_overlays(journey)
    with journey.step("then the expired state, with a link back to the album"):
        journey.page.locator("#kheops-ohif-banner.expired").wait_for(timeout=(lifetime + 5) * 1000)
        assert "expired" in banner.inner_text()
        link = banner.get_by_role("link", name="Open again from KHEOPS")
        assert link.get_attribute("href").startswith(journey.album_url())
        journey.page_screenshot("viewer-banner-expired")
    with journey.step("expired, it is one line and hides none of the viewport's bottom overlays"):
        assert_banner_on_one_line_clear_of_the_overlays(journey)
    with journey.step("the viewer URL, opened again now, is the expired page with the way back"):
        again = journey.context.new_page()
        response = again.goto(journey.page.url)
        assert response is not None and response.status == 410
        assert (
            again.get_by_role("link", name="Back to KHEOPS").get_attribute("href")
            == journey.album_url()
        )
        journey.page_screenshot("error-expired-410", page=again)
        again.close()
    with journey.step("follow the link: the album page loads"):
        with journey.page.expect_navigation() as navigation:
            link.click()
        response = navigation.value
        assert response is not None and response.status == 200
        assert journey.page.url.startswith(journey.album_url())
        journey.page.get_by_role("heading", name=re.compile("Demo album")).wait_for()
        journey.screenshot("album-again")


def assert_banner_on_one_line_clear_of_the_overlays(journey: Journey) -> None:
    banner = journey.page.locator("#kheops-ohif-banner").bounding_box()
    assert banner is not None and banner["height"] < 40, banner  # one line
    overlays = journey.page.locator('[data-cy^="viewport-overlay-bottom"]')
    # The window/level readout is one of them: "W: 2064 L: 136".
    assert any(re.search(r"W:\s*\d+\s*L:\s*\d+", text) for text in overlays.all_inner_texts())
    for index in range(overlays.count()):
        box = overlays.nth(index).bounding_box()
        if not box or not box["width"]:
            continue
        apart = (
            box["x"] + box["width"] <= banner["x"]
            or banner["x"] + banner["width"] <= box["x"]
            or box["y"] + box["height"] <= banner["y"]
            or banner["y"] + banner["height"] <= box["y"]
        )
        assert apart, (overlays.nth(index).inner_text(), box, banner)


@pytest.fixture
def orthanc(live_stack: Stack) -> Iterator[requests.Session]:
    """Orthanc's REST API; removes the SR series a scenario stored in the CT study."""
    session = requests.Session()
    session.trust_env = False
    yield session
    for series in sr_series(session, live_stack, CT_STUDY):
        session.delete(f"{live_stack.orthanc.url}/series/{series['ID']}", timeout=10)
    session.close()


def sr_series(session: requests.Session, stack: Stack, study_uid: str) -> list[dict]:
    response = session.post(
        f"{stack.orthanc.url}/tools/find",
        json={
            "Level": "Series",
            "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"},
            "Expand": True,
        },
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def study_tags(session: requests.Session, stack: Stack, series_id: str) -> dict[str, str]:
    [instance] = session.get(
        f"{stack.orthanc.url}/series/{series_id}/instances", timeout=10
    ).json()[:1]
    tags = session.get(
        f"{stack.orthanc.url}/instances/{instance['ID']}/simplified-tags", timeout=10
    ).json()
    names = (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyID",
        "AccessionNumber",
    )
    return {name: tags.get(name) for name in names}


def test_a_length_measurement_saved_as_a_report_is_stored_in_the_same_study(
    journey: Journey, live_stack: Stack, orthanc: requests.Session
) -> None:
    report_name = f"e2e {uuid.uuid4().hex[:8]}"
    assert sr_series(orthanc, live_stack, CT_STUDY) == []
    page = journey.page
    with journey.step("open the CT study from the album page"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
    with journey.step("draw a Length measurement and track it"):
        journey.measure_length()
        journey.screenshot("measured")
    with journey.step("create the report: STOW into the study through KHEOPS"):
        page.get_by_role("button", name="Create SR").click()
        page.locator('[data-cy="dialog-input"]').fill(report_name)
        stow_url = live_stack.kheops.api("/studies")
        with page.expect_response(
            lambda r: r.url == stow_url and r.request.method == "POST", timeout=30_000
        ) as stored:
            page.locator('[data-cy="input-dialog-save-button"]').click()
        assert stored.value.status == 200, stored.value.text()[:500]
        assert authorization_of([stored.value.request]) == {f"Bearer {journey.token()}"}
        page.get_by_text("Measurements saved successfully").wait_for()
        journey.screenshot("saved")
    with journey.step("Orthanc has a new SR series in the CT study, with its attributes"):
        [series] = sr_series(orthanc, live_stack, CT_STUDY)
        assert series["MainDicomTags"].get("SeriesDescription") == report_name
        [ct_series] = orthanc.post(
            f"{live_stack.orthanc.url}/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": CT_STUDY, "Modality": "CT"}},
            timeout=10,
        ).json()
        assert (
            series["ParentStudy"]
            == orthanc.get(f"{live_stack.orthanc.url}/series/{ct_series}", timeout=10).json()[
                "ParentStudy"
            ]
        )
        assert study_tags(orthanc, live_stack, series["ID"]) == study_tags(
            orthanc, live_stack, ct_series
        )


def test_a_code_kheops_refuses_while_ohif_loads_ends_on_our_error_page_with_the_way_back(
    journey: Journey,
) -> None:
    with journey.step("KHEOPS will refuse the code at the token endpoint"):
        journey.stack.kheops.set_faults(token_status=400)
    with journey.step("click Open in OHIF: the viewer starts loading at once"):
        journey.open_from_album(CT_STUDY)
    with journey.step("the exchange fails while OHIF loads: our error page, at the viewer URL"):
        journey.page.wait_for_selector("text=the link may have expired", timeout=30_000)
        assert VIEWER_PATH.search(journey.page.url)
        back = journey.page.locator(f'a[href="{journey.album_url()}"]')
        assert back.count() == 1
        token_answers = [r for r in journey.finished if r.url.endswith("/token")]
        assert [r.response().status for r in token_answers if r.response()] == [403]
        journey.page_screenshot("error-exchange-refused-403")
    with journey.step("no DICOMweb request was made without a token"):
        assert journey.dicomweb_requests() == []


def test_a_kheops_unavailable_for_a_moment_while_ohif_loads_is_asked_again_and_the_study_opens(
    journey: Journey,
) -> None:
    with journey.step("KHEOPS answers the token request with 503 for a moment"):
        journey.stack.kheops.set_faults(token_status=503)
    with journey.step("click Open in OHIF: the viewer starts loading at once"):
        journey.open_from_album(CT_STUDY)
    with journey.step("KHEOPS is back: launch.js asks again by itself and the image is drawn"):
        journey.page.wait_for_timeout(1500)
        journey.stack.kheops.reset()
        journey.wait_for_image()
        assert VIEWER_PATH.search(journey.page.url)
        token_answers = [
            r.response().status
            for r in journey.finished
            if r.url.endswith("/token") and r.response()
        ]
        assert token_answers[0] == 502 and token_answers[-1] == 200
        assert set(token_answers[:-1]) == {502}
        journey.screenshot("token-asked-again")
