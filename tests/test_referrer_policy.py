"""Referrer-Policy: `no-referrer` where a URL can carry a secret, `same-origin` elsewhere.

Under `no-referrer` a browser sends `Origin: null` with a same-origin form POST (Fetch
standard, "serializing a request origin"), and Django's CSRF check refuses it: every page
that carries a POST form must be served under a policy that lets the real origin through.
tests/e2e/test_admin_journey.py checks the same in Chromium.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin, urlsplit

import pytest
from asgiref.sync import iscoroutinefunction
from django.contrib.auth.models import Group, User
from django.http import HttpRequest, HttpResponse
from django.test import Client
from oauth2_provider.models import Application

from launcher import keys
from launcher.headers import no_referrer
from launcher.models import KheopsServer, LaunchRecord, Provider
from tests.fakes import FakeKheops, token_url_of

# The policies under which a browser sends the page's origin with a same-origin POST.
# (`no-referrer` sends "null"; the strict and downgrade ones do too from HTTPS to HTTP,
# which a same-origin POST never is.)
ORIGIN_SENDING_POLICIES = {
    "same-origin",
    "origin",
    "origin-when-cross-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "no-referrer-when-downgrade",
}
POST_FORM = re.compile(r"<form\b[^>]*\bmethod=[\"']?post\b", re.IGNORECASE)
LINK = re.compile(r"""href=["']([^"'#]+)""")


# --- Where a URL can carry a secret: no Referer at all ---------------------------------


def test_the_launch_redirect_and_the_viewer_responses_send_no_referrer(
    client: Client, fake_kheops: FakeKheops
) -> None:
    launch = client.get(fake_kheops.launch_url())
    viewer = client.get(launch["Location"])
    token = client.get(token_url_of(launch["Location"]))

    assert (launch.status_code, viewer.status_code, token.status_code) == (302, 200, 200)
    for response in (launch, viewer, token):
        assert response["Referrer-Policy"] == "no-referrer", response.request["PATH_INFO"]


def test_refusals_of_the_launch_and_viewer_send_no_referrer_either(
    client: Client, fake_kheops: FakeKheops
) -> None:
    # The refused launch's page is served at a URL that holds the code.
    refused_launch = client.get(fake_kheops.launch_url(client_id="bad id!"))
    launch = client.get(fake_kheops.launch_url())
    stranger = Client()
    other_browser = stranger.get(launch["Location"])
    no_token = stranger.get(token_url_of(launch["Location"]))

    assert (refused_launch.status_code, other_browser.status_code, no_token.status_code) == (
        400,
        403,
        403,
    )
    for response in (refused_launch, other_browser, no_token):
        assert response["Referrer-Policy"] == "no-referrer"


def test_the_decorator_serves_async_views_too() -> None:
    @no_referrer
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    assert iscoroutinefunction(view)
    # A thread of its own: after the browser tests, this one has Playwright's event loop.
    with ThreadPoolExecutor(max_workers=1) as thread:
        response = thread.submit(asyncio.run, view(HttpRequest())).result()
    assert response["Referrer-Policy"] == "no-referrer"


# --- Every page with a POST form: a policy under which browsers send the real Origin ---


@pytest.fixture
def everything_in_the_admin(db: None, kheops_server: KheopsServer) -> User:
    """One object of each kind the admin lists, so that every change page exists."""
    admin = User.objects.create_superuser("admin", "admin@example.org", "pw-for-tests-only")
    LaunchRecord.objects.create(
        outcome="success", kheops_server=kheops_server, study_uids=["1.2.3"]
    )
    keys.active_signing_key()
    Group.objects.create(name="Auditors")
    Application.objects.create(
        name="Hospital SIEM",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )
    return admin


def crawl(client: Client, start: str, *, within: str, limit: int = 300) -> dict[str, HttpResponse]:
    """GET every HTML page reachable from `start` by links under `within` (query strings
    dropped)."""
    seen: dict[str, HttpResponse] = {}
    queue = deque([start])
    while queue and len(seen) < limit:
        path = queue.popleft()
        if path in seen:
            continue
        response = client.get(path, headers={"Accept": "text/html"})
        seen[path] = response
        if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
            continue
        for href in LINK.findall(response.content.decode()):
            target = urlsplit(urljoin(path, href.replace("&amp;", "&")))
            if target.netloc not in ("", "testserver") or not target.path.startswith(within):
                continue
            queue.append(target.path)
    return seen


def pages_with_post_forms(pages: dict[str, HttpResponse]) -> dict[str, str]:
    """{path: Referrer-Policy} of the pages that carry a `<form method="post">`."""
    return {
        path: response.get("Referrer-Policy", "(none)")
        for path, response in pages.items()
        if response.status_code == 200 and POST_FORM.search(response.content.decode())
    }


def test_every_admin_page_with_a_form_lets_browsers_send_the_origin(
    everything_in_the_admin: User,
) -> None:
    anonymous = Client()
    staff = Client()
    staff.force_login(everything_in_the_admin)

    pages = {"/admin/login/": anonymous.get("/admin/login/")}
    pages.update(crawl(staff, "/admin/", within="/admin/"))
    with_forms = pages_with_post_forms(pages)

    server = KheopsServer.objects.get()
    provider = Provider.objects.get(slug="ohif")
    expected = {
        "/admin/login/",
        "/admin/",  # the sign-out button is a form on every page
        "/admin/password_change/",
        "/admin/launcher/kheopsserver/",
        "/admin/launcher/kheopsserver/add/",
        f"/admin/launcher/kheopsserver/{server.pk}/change/",
        f"/admin/launcher/kheopsserver/{server.pk}/delete/",
        "/admin/launcher/provider/add/",
        f"/admin/launcher/provider/{provider.pk}/change/",
        "/admin/launcher/launchrecord/",
        f"/admin/auth/user/{everything_in_the_admin.pk}/change/",
        "/admin/auth/group/add/",
        "/admin/oauth2_provider/application/add/",
    }
    assert expected <= with_forms.keys(), sorted(expected - with_forms.keys())
    refused = {
        path: policy for path, policy in with_forms.items() if policy not in ORIGIN_SENDING_POLICIES
    }
    assert refused == {}
    assert set(with_forms.values()) == {"same-origin"}


def test_the_audit_apis_browsable_pages_let_browsers_send_the_origin(
    everything_in_the_admin: User,
) -> None:
    staff = Client()
    staff.force_login(everything_in_the_admin)

    pages = crawl(staff, "/api/v1/", within="/api/v1/")

    assert {
        "/api/v1/",
        "/api/v1/launches/",
        "/api/v1/servers/",
        "/api/v1/providers/",
    } <= pages.keys()
    html = {
        path: r for path, r in pages.items() if r.status_code == 200 and "html" in r["Content-Type"]
    }
    assert len(html) >= 4
    # Read-only pages (their forms filter with GET): whatever form they grow must still work.
    assert {path: r["Referrer-Policy"] for path, r in html.items()} == dict.fromkeys(
        html, "same-origin"
    )


@pytest.mark.parametrize("page", ["/", "/admin/login/", "/healthz"])
def test_our_other_pages_use_same_origin(db: None, client: Client, page: str) -> None:
    assert client.get(page)["Referrer-Policy"] == "same-origin"
