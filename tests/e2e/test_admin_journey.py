"""The admin in headless Chromium, as an IT administrator uses it: sign in, trust a KHEOPS
server, test it, set up a provider, export the audit trail, sign out.

A real browser sends an `Origin` header with every form POST (the test client sends none):
under a referrer policy that makes it `null`, Django's CSRF check refused every one of
these forms. Each admin page visited leaves a 1440x900 screenshot in artifacts/e2e/.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from pathlib import Path

import pytest
import requests
from django.contrib.auth.models import User
from playwright.sync_api import Page

from launcher import audit
from launcher.models import KheopsServer, LaunchOutcome, LaunchRecord, Provider
from tests.e2e.journey import Journey
from tests.images import png
from tests.stack import Stack

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


@pytest.fixture
def admin_password(live_stack: Stack) -> str:
    password = secrets.token_urlsafe(16)
    User.objects.create_superuser("it-admin", "it@hospital.test", password)
    return password


def submit(page: Page, button: str = 'input[name="_save"]') -> None:
    with page.expect_navigation():
        page.locator(button).click()


def admin_message(page: Page) -> str:
    return page.locator("ul.messagelist").inner_text()


def test_an_it_admin_sets_up_the_viewer_in_the_admin_and_exports_the_audit_trail(
    journey: Journey, live_stack: Stack, admin_password: str
) -> None:
    page = journey.page
    viewer = live_stack.viewer.url
    # The stand-in is trusted by the admin in this scenario, not by the fixture.
    KheopsServer.objects.filter(root_url=live_stack.kheops.root_url).delete()

    with journey.step("the home page: the default configuration URL to copy, the way to the admin"):
        journey.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=viewer)
        page.goto(viewer + "/")
        page.get_by_role("button", name="Copy").click()
        page.locator(".copy-status", has_text="Copied").wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == live_stack.config_url
        journey.page_screenshot("home")
        with page.expect_navigation():
            page.get_by_role("link", name="Administration").click()
        assert page.url.startswith(viewer + "/admin/login/")

    with journey.step("sign in with the real login form"):
        journey.page_screenshot("admin-login")
        page.locator("#id_username").fill("it-admin")
        page.locator("#id_password").fill(admin_password)
        submit(page, 'input[type="submit"]')
        assert page.url == viewer + "/admin/", page.url
        journey.page_screenshot("admin-index-before-any-launch")

    with journey.step("add the stand-in as a trusted KHEOPS server"):
        page.goto(viewer + "/admin/launcher/kheopsserver/add/")
        journey.page_screenshot("admin-server-add")
        page.locator("#id_name").fill("KHEOPS (e2e)")
        page.locator("#id_root_url").fill(live_stack.kheops.root_url)
        submit(page)
        assert "was added successfully" in admin_message(page)
        server = KheopsServer.objects.get(root_url=live_stack.kheops.root_url)

    with journey.step("rename it"):
        page.goto(f"{viewer}/admin/launcher/kheopsserver/{server.pk}/change/")
        journey.page_screenshot("admin-server-change")
        page.locator("#id_name").fill("KHEOPS stand-in")
        submit(page)
        assert "was changed successfully" in admin_message(page)
        server.refresh_from_db()
        assert server.name == "KHEOPS stand-in"

    with journey.step("Test connection fetches and validates its discovery document"):
        page.locator(f'input[name="_selected_action"][value="{server.pk}"]').check()
        page.locator('select[name="action"]').select_option("test_connection")
        submit(page, 'button[name="index"]')
        message = admin_message(page)
        assert "KHEOPS stand-in: discovery document OK" in message, message
        journey.page_screenshot("admin-server-list-after-test-connection")

    with journey.step("add a provider for CT and MR"):
        page.goto(viewer + "/admin/launcher/provider/add/")
        journey.page_screenshot("admin-provider-add")
        page.locator("#id_client_name").press_sequentially("OHIF for CT and MR")
        assert page.locator("#id_slug").input_value() == "ohif-for-ct-and-mr"
        choose_modalities(page, ["CT", "MR"])
        submit(page, 'input[name="_continue"]')
        assert "was added successfully" in admin_message(page)
        provider = Provider.objects.get(slug="ohif-for-ct-and-mr")
        assert provider.supported_modalities == ["CT", "MR"]

    with journey.step("edit it: ultrasound too; its configuration document lists the three"):
        journey.page_screenshot("admin-provider-change")
        choose_modalities(page, ["US"])
        submit(page, 'input[name="_continue"]')
        assert "was changed successfully" in admin_message(page)
        document = requests.get(f"{viewer}/providers/ohif-for-ct-and-mr/configuration", timeout=10)
        assert document.status_code == 200
        assert sorted(document.json()["supported_modalities"]) == ["CT", "MR", "US"]

    with journey.step("copy its configuration URL with the Copy button"):
        page.get_by_role("button", name="Copy").click()
        page.locator(".copy-status", has_text="Copied").wait_for()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == f"{viewer}/providers/ohif-for-ct-and-mr/configuration"
        journey.page_screenshot("admin-provider-change-copied")

    with journey.step("white label the album's provider: the hospital's name and logo"):
        ohif = Provider.objects.get(slug="ohif")
        page.goto(f"{viewer}/admin/launcher/provider/{ohif.pk}/change/")
        page.locator("#id_viewer_title").fill("Hôpital du Lac")
        page.locator("#id_logo_upload").set_input_files(
            files=[{"name": "logo.png", "mimeType": "image/png", "buffer": png(96, 32)}]
        )
        submit(page, 'input[name="_continue"]')
        assert "was changed successfully" in admin_message(page)
        ohif.refresh_from_db()
        assert ohif.logo_url
        logo = page.locator("img.provider-logo")
        assert logo.get_attribute("src") == ohif.logo_url
        assert logo.evaluate("(img) => img.complete && img.naturalWidth") == 96
        logo.scroll_into_view_if_needed()
        journey.page_screenshot("admin-provider-white-label")

    with journey.step("open the CT study from the album: the header shows the hospital"):
        journey.open_from_album(CT_STUDY)
        journey.wait_for_image()
        brand = page.locator('[data-cy="kheops-ohif-brand"]')
        assert brand.inner_text() == "Hôpital du Lac"
        header_logo = brand.locator("img")
        assert header_logo.get_attribute("src") == ohif.logo_url
        assert header_logo.evaluate("(img) => img.complete && img.naturalWidth") == 96
        assert page.get_by_label("OHIF logo").count() == 0
        journey.page_screenshot("viewer-white-label")

    with journey.step("the lists fit a 1440 px screen, long values included"):
        long_named = KheopsServer.objects.create(
            name="Hôpitaux universitaires, KHEOPS de recherche clinique",
            root_url="https://kheops-recherche-clinique.hopitaux-universitaires.example.org",
            enabled=False,
        )
        LaunchRecord.objects.create(
            outcome=LaunchOutcome.UNTRUSTED_SERVER,
            kheops_server=long_named,
            provider=provider,
            user_name="Dr Maria-Magdalena Vasquez-Oberhauser",
            user_email="maria-magdalena.vasquez-oberhauser@hopitaux-universitaires.example.org",
            album_id="Zx81AbCdEfGhIjKlMnOpQr",
            remote_addr="2001:db8:85a3::8a2e:370:7334",
            study_uids=[CT_STUDY],
        )
        for path in ("/admin/launcher/launchrecord/", "/admin/launcher/kheopsserver/"):
            page.goto(viewer + path)
            # The admin scrolls a table wider than its column sideways, out of sight.
            overflow = page.evaluate(
                "[document.documentElement, document.querySelector('#changelist .results')]"
                ".map((e) => e.scrollWidth - e.clientWidth)"
            )
            assert overflow == [0, 0], (path, overflow)

    with journey.step("the launch records list it, and the health panel counts it"):
        page.goto(viewer + "/admin/launcher/launchrecord/")
        journey.page_screenshot("admin-launch-records")
        page.locator("#result_list tbody tr", has_text="Viewer opened").first.locator(
            "th a"
        ).click()
        page.wait_for_url(re.compile(r"/admin/launcher/launchrecord/\d+/change/"))
        journey.page_screenshot("admin-launch-record")
        page.goto(viewer + "/admin/")
        journey.page_screenshot("admin-index")
        assert "KHEOPS stand-in" in page.locator("#kheops-health").inner_text()
        for title in ("Failed launches", "Refused as replays"):
            # Once drawn one letter per line: now two lines at most.
            box = page.locator("#kheops-health thead th", has_text=title).bounding_box()
            assert box is not None and box["width"] > 60 and box["height"] < 40, (title, box)

    with journey.step("export the launch records as CSV"):
        page.goto(viewer + "/admin/launcher/launchrecord/")
        page.locator("#action-toggle").check()
        page.locator('select[name="action"]').select_option("export_csv")
        with page.expect_download() as download:
            page.locator('button[name="index"]').click()
        text = Path(download.value.path()).read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == audit.CSV_COLUMNS
        records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
        assert any(
            r["outcome"] == "success"
            and r["study_uids"] == CT_STUDY
            and r["kheops_server"] == "KHEOPS stand-in"
            for r in records
        ), records

    with journey.step("the other admin pages an admin opens"):
        for name, path in [
            ("admin-server-list", "/admin/launcher/kheopsserver/"),
            ("admin-provider-list", "/admin/launcher/provider/"),
            ("admin-signing-keys", "/admin/launcher/signingkey/"),
            ("admin-api-client-add", "/admin/oauth2_provider/application/add/"),
        ]:
            response = page.goto(viewer + path)
            assert response is not None and response.status == 200, path
            # The API client form proposes a client secret: never in a picture.
            journey.page_screenshot(name, mask=[page.locator("#id_client_secret")])

    with journey.step("sign out"):
        submit(page, "#logout-form button")
        assert "Logged out" in page.content()
        journey.page_screenshot("admin-logged-out")

    with journey.step("no form was refused, and every POST carried the real Origin"):
        ours = [r for r in journey.finished if r.url.startswith(viewer)]
        refused = [(r.method, r.url) for r in ours if (res := r.response()) and res.status == 403]
        assert refused == []
        # (a download never "finishes" as a page request: look at every request sent)
        posts = [r for r in journey.requests if r.url.startswith(viewer) and r.method == "POST"]
        # sign-in, add + change server, Test connection, add + change provider, export, sign out
        assert len(posts) >= 8, [r.url for r in posts]
        assert {r.all_headers().get("origin") for r in posts} == {viewer}


def choose_modalities(page: Page, codes: list[str]) -> None:
    for code in codes:
        page.get_by_role("checkbox", name=re.compile(rf"^{code} \(")).check()
