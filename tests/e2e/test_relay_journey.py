"""Relay mode in headless Chromium: the CT is drawn through our same-origin DICOMweb relay,
and the KHEOPS token never reaches the browser."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Error, Response

from launcher import services
from launcher.models import LaunchGrant, Provider, TokenDelivery
from tests.e2e.journey import Journey
from tests.e2e.test_clinician_journey import CT_STUDY, FRAMES
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
