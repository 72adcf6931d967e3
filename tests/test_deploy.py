"""Production settings: the deploy check, and the cookies of a launch over HTTPS.

`test_settings_and_health.py::test_check_deploy_is_clean_with_production_settings` checks
the usual deployment (behind a TLS-terminating proxy); these extend it to the other ones,
and to what a browser receives.

The launch arrives as a *cross-site* top-level navigation from KHEOPS. The grant cookie
set on that response is `SameSite=Lax` on purpose (Strict would not be sent on the
redirect chain that began on KHEOPS's site in every browser); the redirect to the viewer is
a same-origin GET, which a Lax cookie rides on.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.test import Client

from launcher import checks
from tests.fakes import FakeKheops
from tests.test_settings_and_health import STRONG_KEY, run_django

VIEWER = "https://viewer.example.org"


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="tls-terminated-by-the-app-server"),
        pytest.param(
            {
                "TRUST_X_FORWARDED_PROTO": "true",
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                "DATABASE_URL": "postgres://kheops_ohif@db.internal:5432/kheops_ohif",
            },
            id="proxy-redis-postgresql",
        ),
    ],
)
def test_check_deploy_is_clean_in_other_production_set_ups(env: dict[str, str]) -> None:
    result = run_django(
        ["check", "--deploy", "--fail-level", "WARNING"],
        SECRET_KEY=STRONG_KEY,
        PUBLIC_BASE_URL=VIEWER,
        **env,
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_only_the_opt_in_hsts_reminders_and_the_checks_by_class_name_are_silenced() -> None:
    code = "from django.conf import settings as s;print(sorted(s.SILENCED_SYSTEM_CHECKS))"
    result = run_django(["shell", "-c", code], SECRET_KEY=STRONG_KEY, PUBLIC_BASE_URL=VIEWER)

    assert result.stdout.splitlines()[-1] == (
        "['security.W001', 'security.W002', 'security.W003', 'security.W005', 'security.W021']"
    )


@pytest.mark.parametrize(
    "missing",
    [
        "launcher.middleware.SecurityMiddleware",
        "launcher.middleware.XFrameOptionsMiddleware",
        "launcher.middleware.CsrfViewMiddleware",
    ],
)
def test_the_protective_middleware_is_checked_by_class(settings, missing: str) -> None:
    # Django's own checks (silenced) look for its class names; ours accept subclasses.
    assert checks.check_protective_middleware(None) == []
    settings.MIDDLEWARE = [path for path in settings.MIDDLEWARE if path != missing]

    [warning] = checks.check_protective_middleware(None)

    assert warning.id == "launcher.W006"
    assert missing.rsplit(".", 1)[1] in warning.msg


@pytest.fixture
def https_settings(settings) -> None:
    # What settings.py derives from an https PUBLIC_BASE_URL.
    settings.PUBLIC_BASE_URL = VIEWER
    settings.ALLOWED_HOSTS = ["viewer.example.org"]
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000


def cross_site_launch(client: Client, fake: FakeKheops):
    """The browser following KHEOPS's meta refresh: a top-level GET from another site."""
    return client.get(
        fake.launch_url(),
        secure=True,
        headers={
            "Host": "viewer.example.org",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document",
        },
    )


def test_the_launch_sets_a_secure_httponly_lax_grant_cookie(
    client: Client, fake_kheops: FakeKheops, https_settings: None
) -> None:
    response = cross_site_launch(client, fake_kheops)

    assert response.status_code == 302
    launch_id = response["Location"].split("/")[2]
    cookie = response.cookies[f"kheops_ohif_grant_{launch_id}"]
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == f"/launches/{launch_id}/"
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    assert response["Cache-Control"].startswith("max-age=0")
    assert "no-store" in response["Cache-Control"]


def test_the_redirect_to_the_viewer_is_a_same_site_get_the_cookie_rides_on(
    client: Client, fake_kheops: FakeKheops, https_settings: None
) -> None:
    location = cross_site_launch(client, fake_kheops)["Location"]

    # A relative URL: the browser resolves it on our own origin, a same-site navigation.
    assert urlsplit(location).scheme == "" and urlsplit(location).netloc == ""
    viewer = client.get(
        location,
        secure=True,
        headers={"Host": "viewer.example.org", "Sec-Fetch-Site": "cross-site"},
    )

    assert viewer.status_code == 200
    assert '<div id="root">' in viewer.content.decode()


def test_the_csrf_cookie_of_the_admin_is_secure_and_httponly(
    client: Client, db: None, https_settings: None
) -> None:
    response = client.get("/admin/login/", secure=True, headers={"Host": "viewer.example.org"})

    assert response.status_code == 200
    cookie = response.cookies["csrftoken"]
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def test_plain_http_is_redirected_to_https_before_any_launch(
    client: Client, fake_kheops: FakeKheops, https_settings: None
) -> None:
    response = client.get("/healthz", headers={"Host": "viewer.example.org"})
    assert response.status_code == 200  # the probes stay reachable over http

    response = client.get("/", headers={"Host": "viewer.example.org"})

    assert response.status_code == 301
    assert response["Location"] == f"{VIEWER}/"
