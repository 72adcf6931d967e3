"""Relay mode in headless Chromium: the CT is drawn through our same-origin DICOMweb relay,
and the KHEOPS token never reaches the browser."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.conf import settings as django_settings
from django.utils import timezone
from playwright.sync_api import Error, Response

from devstack.nginx import NginxFront
from launcher import services
from launcher.models import LaunchGrant, LaunchWrite, Provider, TokenDelivery
from tests.e2e.journey import Journey
from tests.e2e.test_clinician_journey import (  # noqa: F401  (orthanc: a fixture)
    CT_STUDY,
    FRAMES,
    assert_first_frame_prefetched,
    assert_first_requests_prefetched,
    orthanc,
    sr_series,
)
from tests.stack import Stack


def body_of(response: Response) -> bytes | None:
    try:
        return response.body()
    except Error:  # a redirect, or a body the browser did not keep
        return None


@pytest.fixture
def relay_mode(live_stack: Stack) -> None:
    Provider.objects.filter(slug="ohif").update(token_delivery=TokenDelivery.RELAY)


def test_in_relay_mode_the_ct_is_drawn_through_us_and_the_token_never_reaches_the_browser(
    journey: Journey, relay_mode: None
) -> None:
    responses: list[Response] = []
    journey.context.on("response", lambda response: responses.append(response))
    with journey.step("click Open in OHIF for the CT study on the album page"):
        journey.open_from_album(CT_STUDY)
    with journey.step("the CT image is drawn"):
        journey.wait_for_image()
        journey.page_screenshot("relay-viewer")
    launch_id = journey.launch_id()
    relay_root = f"{journey.stack.viewer.url}/launches/{launch_id}/dicomweb/"
    with journey.step("every DICOMweb request went to our relay, none to KHEOPS, no header"):
        assert LaunchGrant.objects.get(launch_id=launch_id).token_delivery == "relay"
        assert journey.dicomweb_requests() == []
        relayed = [r for r in journey.finished if r.url.startswith(relay_root)]
        assert any(FRAMES.search(r.url) for r in relayed), [r.url for r in relayed]
        assert all("authorization" not in r.all_headers() for r in relayed)
        # The study's first requests started with the page, through the relay too.
        assert_first_requests_prefetched(relayed, patient_studies=False)
        assert_first_frame_prefetched(journey, relayed)
        assert "connect-src 'self';" in journey.viewer_csp() + ";"
    with journey.step("no response the browser received, nor its storage, holds the token"):
        [cookie] = [
            c for c in journey.context.cookies() if c["name"] == f"kheops_ohif_grant_{launch_id}"
        ]
        assert cookie["httpOnly"]
        grant = services.grant_for(launch_id, cookie["value"])
        assert grant is not None and grant.access_token
        token = grant.access_token.encode()
        seen = 0
        for response in responses:
            assert token not in json.dumps(response.all_headers()).encode(), response.url
            body = body_of(response)
            if body is not None:
                seen += 1
                assert token not in body, response.url
        assert seen > 10
        storage = journey.page.evaluate(
            "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
        )
        assert grant.access_token not in storage
    with journey.step("another browser gets 401 from the relay, nothing from KHEOPS"):
        stranger = journey.new_context()
        answer = stranger.request.get(f"{relay_root}studies/{CT_STUDY}/series")
        assert answer.status == 401
        assert grant.access_token not in answer.text()


def recorded_writes(launch_id: str) -> list[LaunchWrite]:
    # The row is written as the answer's stream ends, which may be just after the browser
    # has the answer's last byte (its Content-Length): wait a little for it.
    for _ in range(100):
        if writes := list(LaunchWrite.objects.filter(launch__launch_id=launch_id)):
            return writes
        time.sleep(0.1)
    return []


def test_in_relay_mode_a_report_is_saved_through_the_relay_and_read_back(
    journey: Journey,
    relay_mode: None,
    live_stack: Stack,
    orthanc: requests.Session,  # noqa: F811  (the fixture imported above)
) -> None:
    report_name = f"e2e relay {uuid.uuid4().hex[:8]}"
    assert sr_series(orthanc, live_stack, CT_STUDY) == []
    page = journey.page
    with journey.step("open the CT study from the album page"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
    with journey.step("draw a Length measurement and track it"):
        journey.measure_length()
    with journey.step("create the report: STOW through our relay, no token in the browser"):
        page.get_by_role("button", name="Create SR").click()
        page.locator('[data-cy="dialog-input"]').fill(report_name)
        stow_url = f"{live_stack.viewer.url}/launches/{journey.launch_id()}/dicomweb/studies"
        with page.expect_response(
            lambda r: r.url == stow_url and r.request.method == "POST", timeout=30_000
        ) as stored:
            page.locator('[data-cy="input-dialog-save-button"]').click()
        assert stored.value.status == 200, stored.value.text()[:500]
        assert "authorization" not in stored.value.request.all_headers()
        page.get_by_text("Measurements saved successfully").wait_for()
        journey.screenshot("relay-saved")
    with journey.step("the stand-in's store has the SR in the CT study"):
        [series] = sr_series(orthanc, live_stack, CT_STUDY)
        assert series["MainDicomTags"].get("SeriesDescription") == report_name
    with journey.step("the write audit has the upload: the SR, in the CT study"):
        [write] = recorded_writes(journey.launch_id())
        assert (write.status, write.study_uid, write.failed) == (200, CT_STUDY, [])
        [stored] = write.stored
        assert stored["sop_class_uid"].startswith("1.2.840.10008.5.1.4.1.1.88.")  # an SR
    assert journey.dicomweb_requests() == []


def test_in_relay_mode_a_grant_that_ends_while_the_viewer_is_open_shows_the_expiry_message(
    journey: Journey, relay_mode: None, live_stack: Stack
) -> None:
    page = journey.page
    banner = page.locator("#kheops-ohif-banner")
    with journey.step("open the CT study from the album page and draw a measurement"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
        journey.measure_length()
        assert banner.is_hidden()  # an hour left: nothing to say yet
    with journey.step("the grant expires on the server while the viewer stays open"):
        launch_id = journey.launch_id()
        ended = LaunchGrant.objects.filter(launch_id=launch_id).update(
            expires_at=timezone.now() - timezone.timedelta(seconds=1)
        )
        assert ended == 1
        services.forget_lookups()  # this process's few seconds of memory of the grant
    with journey.step("the viewer's next request (saving the report) is refused: 401"):
        page.get_by_role("button", name="Create SR").click()
        page.locator('[data-cy="dialog-input"]').fill("e2e relay after expiry")
        stow_url = f"{live_stack.viewer.url}/launches/{launch_id}/dicomweb/studies"
        with page.expect_response(
            lambda r: r.url == stow_url and r.request.method == "POST", timeout=30_000
        ) as refused:
            page.locator('[data-cy="input-dialog-save-button"]').click()
        assert refused.value.status == 401
    with journey.step("the viewer shows the expiry message, with the way back to KHEOPS"):
        banner.and_(page.locator(".expired")).wait_for(timeout=10_000)
        assert banner.locator("span").inner_text() == "Your access has expired."
        assert banner.get_by_role("link", name="Open again from KHEOPS").is_visible()
        journey.screenshot("relay-expired")
    assert journey.dicomweb_requests() == []


# --- Behind the deployment's nginx, which carries the relayed reads ---------------------------

BEHIND_NGINX = "Viewer behind nginx"
_registered: dict[str, str] = {}


@pytest.fixture
def behind_nginx(live_stack: Stack, relay_mode: None, settings: Any) -> Iterator[NginxFront]:
    """The deployment's nginx (deploy/nginx's files) in front of our app, its relay offload on
    for the stand-in; the app's public URL nginx's, and our provider registered in the demo
    album at nginx's address too (another button: "Open in Viewer behind nginx")."""
    key = secrets.token_urlsafe(32)
    front = NginxFront.start(
        live_stack.viewer.url, offload_kheops=[live_stack.kheops.root_url], offload_key=key
    )
    try:
        front.wait_until_up()
        settings.PUBLIC_BASE_URL = front.url
        settings.DICOMWEB_RELAY_OFFLOAD_KEY = key
        live_stack.viewer.refresh_documents()
        config_url = f"{front.url}/providers/ohif/configuration"
        if config_url not in _registered:
            answer = live_stack.kheops.register_provider(config_url, BEHIND_NGINX)
            assert answer.status_code == 201, answer.text
            _registered[config_url] = answer.json()["client_id"]
        yield front
    finally:
        front.stop()
        settings.PUBLIC_BASE_URL = live_stack.viewer.url
        live_stack.viewer.refresh_documents()


def test_behind_nginx_it_carries_the_images_and_the_token_still_never_reaches_the_browser(
    journey: Journey,
    behind_nginx: NginxFront,
    orthanc: requests.Session,  # noqa: F811  (the fixture imported above)
    live_stack: Stack,
) -> None:
    responses: list[Response] = []
    journey.context.on("response", lambda response: responses.append(response))
    page = journey.page
    with journey.step("click Open in Viewer behind nginx for the CT study on the album page"):
        journey.open_from_album(CT_STUDY, BEHIND_NGINX)
        assert page.url.startswith(behind_nginx.url)
    with journey.step("the CT image is drawn"):
        journey.wait_for_image()
        journey.page_screenshot("relay-behind-nginx")
    launch_id = journey.launch_id()
    relay_root = f"{behind_nginx.url}/launches/{launch_id}/dicomweb/"
    with journey.step("nginx carried the images: handed over by the app, or from its memory"):
        relayed = [r for r in journey.finished if r.url.startswith(relay_root)]
        frames = [r for r in relayed if FRAMES.search(r.url)]
        assert frames, [r.url for r in relayed]
        timings = []
        for request in frames:
            answer = request.response()
            assert answer is not None and answer.status == 200
            # The app's Server-Timing names no KHEOPS round trip of its own: nginx's was it.
            # A read nginx carried from its memory of a hand-over has none (the app did no
            # work for it).
            timings.append(answer.all_headers().get("server-timing", ""))
        assert all(t == "" or (t.startswith("app;dur=") and "kheops" not in t) for t in timings)
        assert "" in timings, timings  # the frames came within seconds of the metadata
        assert journey.dicomweb_requests() == []
    with journey.step("a report is saved through the app (the write audit) and read back"):
        assert sr_series(orthanc, live_stack, CT_STUDY) == []
        report_name = f"e2e nginx {uuid.uuid4().hex[:8]}"
        journey.measure_length()
        page.get_by_role("button", name="Create SR").click()
        page.locator('[data-cy="dialog-input"]').fill(report_name)
        with page.expect_response(
            lambda r: r.url == f"{relay_root}studies" and r.request.method == "POST",
            timeout=30_000,
        ) as stored:
            page.locator('[data-cy="input-dialog-save-button"]').click()
        assert stored.value.status == 200, stored.value.text()[:500]
        page.get_by_text("Measurements saved successfully").wait_for()
        [series] = sr_series(orthanc, live_stack, CT_STUDY)
        assert series["MainDicomTags"].get("SeriesDescription") == report_name
        [write] = recorded_writes(launch_id)
        assert (write.status, write.study_uid) == (200, CT_STUDY)
    with journey.step("no response the browser received, nor its storage, holds the token"):
        [cookie] = [
            c for c in journey.context.cookies() if c["name"] == f"kheops_ohif_grant_{launch_id}"
        ]
        grant = services.grant_for(launch_id, cookie["value"])
        assert grant is not None and grant.access_token
        token = grant.access_token.encode()
        key = django_settings.DICOMWEB_RELAY_OFFLOAD_KEY.encode()
        seen = 0
        for response in responses:
            headers = json.dumps(response.all_headers()).encode()
            assert token not in headers and key not in headers, response.url
            assert not any(n.startswith(("x-relay", "x-accel")) for n in response.all_headers())
            body = body_of(response)
            if body is not None:
                seen += 1
                assert token not in body and key not in body, response.url
        assert seen > 10
        storage = journey.page.evaluate(
            "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
        )
        assert grant.access_token not in storage
