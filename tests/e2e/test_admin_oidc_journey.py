"""Admins sign in with the hospital's OpenID Connect provider, in headless Chromium.

The provider is a real one, the KHEOPS stand-in's (django-oauth-toolkit: discovery, JWKS,
RS256 ID tokens with a groups claim, PKCE, RP-initiated logout), at another site than the
viewer's, as a hospital's Keycloak would be. Each page visited leaves a screenshot in
artifacts/e2e/.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page

from launcher.models import KheopsServer, LaunchOutcome, LaunchRecord
from tests.e2e.journey import Journey
from tests.stack import Stack

CLIENT_ID = "kheops-ohif-admin-e2e"
SUPERUSERS = "kheops-ohif-admins"
STAFF = "kheops-ohif-staff"


@pytest.fixture
def idp_users(live_stack: Stack, settings: Any) -> dict[str, str]:
    """The stand-in's provider with our client and three people, and our app configured
    for it as README (Admin sign-in) says; their passwords."""
    passwords = {name: secrets.token_urlsafe(12) for name in ("ann", "sam", "nina")}
    client_secret = secrets.token_urlsafe(32)
    live_stack.kheops.set_up_oidc(
        live_stack.viewer.url,
        client_id=CLIENT_ID,
        client_secret=client_secret,
        users=[
            {
                "username": "ann",
                "password": passwords["ann"],
                "first_name": "Ann",
                "last_name": "Admin",
                "email": "ann@hospital.test",
                "groups": [SUPERUSERS],
            },
            {
                "username": "sam",
                "password": passwords["sam"],
                "first_name": "Sam",
                "last_name": "Staff",
                "email": "sam@hospital.test",
                "groups": [STAFF],
            },
            {
                "username": "nina",
                "password": passwords["nina"],
                "first_name": "Nina",
                "last_name": "Nogroup",
                "email": "nina@hospital.test",
                "groups": ["radiology"],
            },
        ],
    )
    issuer = live_stack.kheops.oidc_issuer
    settings.OIDC_ISSUER = issuer
    settings.OIDC_ENABLED = True
    settings.OIDC_PROVIDER_NAME = "Hospital Keycloak"
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = client_secret
    settings.OIDC_SUPERUSER_GROUPS = [SUPERUSERS]
    settings.OIDC_STAFF_GROUPS = [STAFF]
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        "launcher.oidc.AdminOidcBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]
    # As settings.py does from OIDC_ISSUER: the sign-out form's redirect goes there.
    policy = copy.deepcopy(settings.CONTENT_SECURITY_POLICY)
    policy["DIRECTIVES"]["form-action"] = [
        *policy["DIRECTIVES"]["form-action"],
        live_stack.kheops.root_url,
    ]
    settings.CONTENT_SECURITY_POLICY = policy
    return passwords


def sign_in_at_the_provider(journey: Journey, username: str, password: str) -> None:
    page = journey.page
    with page.expect_navigation():
        page.get_by_role("link", name="Sign in with Hospital Keycloak").click()
    assert page.url.startswith(journey.stack.kheops.root_url + "/idp/login/"), page.url
    journey.page_screenshot("idp-sign-in")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    with page.expect_navigation(url=lambda url: url.startswith(journey.stack.viewer.url)):
        page.locator("#idp-sign-in").click()
    page.wait_for_load_state()


def sign_out(journey: Journey) -> None:
    """The admin's Log out: the local session, then the provider's, which asks first (no
    ID token is kept here to hint with), then back to our sign-in page."""
    page = journey.page
    with page.expect_navigation(url=lambda url: url.startswith(journey.stack.kheops.root_url)):
        page.locator("#logout-form button").click()
    assert "/oidc/logout/" in page.url, page.url
    journey.page_screenshot("idp-sign-out-confirm")
    with page.expect_navigation(url=lambda url: url.startswith(journey.stack.viewer.url)):
        page.locator('input[name="allow"]').click()
    page.wait_for_load_state()
    assert page.url == journey.stack.viewer.url + "/admin/login/", page.url


def admin_user(page: Page) -> str:
    return page.locator("#user-tools strong").text_content() or ""


def test_a_staff_member_reads_the_launch_records_but_cannot_change_a_server_and_signs_out(
    journey: Journey, live_stack: Stack, idp_users: dict[str, str]
) -> None:
    page = journey.page
    viewer = live_stack.viewer.url
    server = KheopsServer.objects.get(root_url=live_stack.kheops.root_url)
    LaunchRecord.objects.create(
        outcome=LaunchOutcome.UNTRUSTED_SERVER,
        kheops_server=server,
        user_name="Dr Maria Vasquez",
        remote_addr="192.0.2.10",
    )

    with journey.step("the admin's sign-in page offers the hospital's provider"):
        page.goto(viewer + "/admin/")
        assert page.url.startswith(viewer + "/admin/login/")
        journey.page_screenshot("admin-sign-in-with-provider")

    with journey.step("sign in at the provider as a member of the staff group"):
        sign_in_at_the_provider(journey, "sam", idp_users["sam"])
        assert page.url == viewer + "/admin/", page.url
        assert admin_user(page) == "Sam"
        assert "KHEOPS stand-in" in page.locator("#kheops-health").inner_text()
        journey.page_screenshot("admin-index-read-only-staff")
        user = User.objects.get(email="sam@hospital.test")
        assert user.is_staff and not user.is_superuser

    with journey.step("the launch records list and a record open"):
        page.goto(viewer + "/admin/launcher/launchrecord/")
        assert "Dr Maria Vasquez" in page.locator("#result_list").inner_text()
        journey.page_screenshot("admin-launch-records-read-only-staff")

    with journey.step("a trusted server can be seen, not changed"):
        response = page.goto(f"{viewer}/admin/launcher/kheopsserver/{server.pk}/change/")
        assert response is not None and response.status == 200
        assert page.locator('input[name="_save"]').count() == 0
        assert page.locator("#id_name").count() == 0  # read-only: no field to type in
        journey.page_screenshot("admin-server-read-only-staff")
        response = page.goto(viewer + "/admin/launcher/kheopsserver/add/")
        assert response is not None and response.status == 403

    with journey.step("sign out: here and at the provider"):
        page.goto(viewer + "/admin/")
        sign_out(journey)
        journey.page_screenshot("admin-signed-out")
        page.goto(viewer + "/admin/")
        assert page.url.startswith(viewer + "/admin/login/"), page.url

    with journey.step("the provider's session ended too: it asks for a password again"):
        sign_in_at_the_provider(journey, "ann", idp_users["ann"])
        assert page.url == viewer + "/admin/", page.url
        assert admin_user(page) == "Ann"
        assert User.objects.get(email="ann@hospital.test").is_superuser

    with journey.step("the superuser can change the trusted server"):
        page.goto(f"{viewer}/admin/launcher/kheopsserver/{server.pk}/change/")
        page.locator("#id_name").fill("KHEOPS stand-in (renamed)")
        with page.expect_navigation():
            page.locator('input[name="_save"]').click()
        server.refresh_from_db()
        assert server.name == "KHEOPS stand-in (renamed)"
        sign_out(journey)

    with journey.step("no CSP violation, no form refused"):
        assert not [line for line in journey.console if "CSP violation" in line.text]
        ours = [r for r in journey.finished if r.url.startswith(viewer)]
        assert [r.url for r in ours if (res := r.response()) and res.status == 403] == [
            viewer + "/admin/launcher/kheopsserver/add/"
        ]


def test_somebody_in_no_admin_group_is_refused_with_a_clear_page(
    journey: Journey, live_stack: Stack, idp_users: dict[str, str]
) -> None:
    page = journey.page
    viewer = live_stack.viewer.url
    with journey.step("sign in at the provider as somebody in no admin group"):
        page.goto(viewer + "/admin/login/")
        sign_in_at_the_provider(journey, "nina", idp_users["nina"])
        assert page.url == viewer + "/admin/oidc/problem/", page.url
        problem = page.locator("#sign-in-problem").inner_text()
        assert "signed you in as Nina Nogroup (nina@hospital.test)" in problem, problem
        assert "none of the groups allowed here" in problem
        assert "ask the IT service" in page.locator("#content").inner_text()
        journey.page_screenshot("admin-sign-in-refused")
    with journey.step("nothing of the admin opens"):
        page.goto(viewer + "/admin/launcher/launchrecord/")
        assert page.url.startswith(viewer + "/admin/login/"), page.url
        assert not User.objects.filter(email="nina@hospital.test", is_staff=True).exists()
