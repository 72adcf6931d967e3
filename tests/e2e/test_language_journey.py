"""The clinician's language in the browser: our banner and OHIF's menus speak it.

OHIF remembers the language of an earlier session (its `i18next` cookie and `i18nextLng` in
localStorage, both before the browser's language in its detection); the viewer URL's `lng`
comes first, so OHIF follows the browser's language of today, as our pages do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser

from tests.e2e.journey import Journey
from tests.stack import Stack

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # in the stand-in's demo album


@pytest.fixture
def french_journey(browser: Browser, live_stack: Stack) -> Iterator[Journey]:
    with Journey.open(browser, live_stack, "french-browser", locale="fr-FR") as opened:
        yield opened


def test_a_french_browser_sees_french_in_our_banner_and_in_ohif(
    french_journey: Journey,
) -> None:
    journey = french_journey
    viewer = journey.stack.viewer.url
    with journey.step("an earlier session left OHIF remembering German"):
        journey.context.add_cookies([{"name": "i18next", "value": "de", "url": viewer}])
        journey.context.add_init_script(
            "try { localStorage.setItem('i18nextLng', 'de'); } catch (e) {}"
        )
    with journey.step("click Open in OHIF for the CT study on the album page"):
        journey.open_from_album(CT_STUDY)
        assert parse_qs(urlsplit(journey.page.url).query)["lng"] == ["fr"]
    with journey.step("the image is drawn in a page that says it is French"):
        journey.wait_for_image()
        assert journey.page.locator("html").get_attribute("lang") == "fr"
    with journey.step("our corner says whom the viewer was opened as, in French"):
        identity = journey.page.locator("#kheops-ohif-identity")
        identity.wait_for(state="visible", timeout=5_000)
        lines = identity.locator("span").all_inner_texts()
        assert lines[0] == "Ouvert en tant que Alice Admin (alice@sandbox.invalid)", lines
        assert re.match(r"depuis l'album \S+ sur ", lines[1]), lines
    with journey.step("OHIF's menus are French too"):
        studies = journey.page.locator('[data-cy="studyBrowser-panel"]')
        journey.page.get_by_text("Études", exact=True).first.wait_for(timeout=10_000)
        assert journey.page.get_by_text("Studies", exact=True).count() == 0
        assert studies.count() == 1
        journey.page.locator('[data-cy="trackedMeasurements-btn"]').click()
        # "Mesures (0)" over "Aucune mesure suivie".
        journey.page.get_by_text(re.compile(r"^Mesures\b")).first.wait_for(timeout=10_000)
        assert journey.page.get_by_text(re.compile(r"^(Measurements|Messungen)\b")).count() == 0
        journey.page_screenshot("viewer-french")
    with journey.step("OHIF took French from lng and now remembers it"):
        remembered = {c["name"]: c["value"] for c in journey.context.cookies(viewer)}
        assert remembered["i18next"] == "fr"
    with journey.step("without lng, OHIF would have followed its memory of German instead"):
        journey.context.add_cookies([{"name": "i18next", "value": "de", "url": viewer}])
        without_lng = journey.page.url.replace("&lng=fr", "")
        assert "lng=" not in without_lng
        journey.page.goto(without_lng)
        journey.wait_for_image()
        # OHIF's German has no word for its study panel: English, not French.
        journey.page.get_by_text("Studies", exact=True).first.wait_for(timeout=10_000)
        assert journey.page.get_by_text("Études", exact=True).count() == 0
        # Our own page still follows the browser: French.
        assert journey.page.locator("html").get_attribute("lang") == "fr"
    with journey.step("no console errors"):
        assert journey.viewer_console_errors() == []
