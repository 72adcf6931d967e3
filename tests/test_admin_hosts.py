"""ADMIN_HOSTS: the admin and the audit API on host names of their own, nothing else there.

An XSS in OHIF runs on the viewer's origin: the admin must not share it.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.test import Client

from launcher.models import LaunchRecord
from tests.fakes import FakeKheops, token_url_of
from tests.test_settings_and_health import STRONG_KEY, VERSION_DIR, run_django

VIEWER = "viewer.test"
ADMIN = "admin.viewer.test"


@pytest.fixture
def split_hosts(settings: Any) -> None:
    settings.PUBLIC_HOST = VIEWER
    settings.ALLOWED_HOSTS = [VIEWER, ADMIN]
    settings.ADMIN_HOSTS = [ADMIN]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("get", "/admin/", 200, id="admin-index"),
        pytest.param("get", "/admin", 301, id="admin-without-slash"),
        pytest.param("get", "/admin/launcher/launchrecord/", 200, id="audit-records"),
        pytest.param("get", "/api/v1/launches/", 200, id="audit-api-browsable"),
        pytest.param("get", "/api/v1/schema/", 200, id="audit-api-schema"),
        pytest.param("post", "/oauth/token/", 400, id="oauth-token"),
    ],
)
def test_the_admin_and_the_audit_api_answer_on_the_admin_host_only(
    admin_client: Client, split_hosts: None, method: str, path: str, status: int
) -> None:
    on_admin_host = getattr(admin_client, method)(path, HTTP_HOST=ADMIN)
    on_viewer_host = getattr(admin_client, method)(path, HTTP_HOST=VIEWER)

    assert on_admin_host.status_code == status
    assert on_viewer_host.status_code == 404


def test_the_admin_host_serves_no_launch_viewer_or_ohif_file(
    client: Client, fake_kheops: FakeKheops, split_hosts: None
) -> None:
    launch = client.get(fake_kheops.launch_url(), HTTP_HOST=ADMIN)
    viewer = client.get("/launches/NotOurs123/viewer", HTTP_HOST=ADMIN)
    token = client.get(token_url_of("/launches/NotOurs123/viewer"), HTTP_HOST=ADMIN)
    ohif = client.get(f"/static/ohif/{VERSION_DIR}/app-config.js", HTTP_HOST=ADMIN)

    assert [r.status_code for r in (launch, viewer, token, ohif)] == [404, 404, 404, 404]
    assert LaunchRecord.objects.count() == 0
    assert len(fake_kheops.router.calls) == 0
    # The same launch on the viewer's host works.
    assert client.get(fake_kheops.launch_url(), HTTP_HOST=VIEWER).status_code == 302


def test_the_admin_host_serves_the_admins_files_probes_and_a_way_in(
    client: Client, db: None, split_hosts: None
) -> None:
    assert client.get("/static/admin/css/base.css", HTTP_HOST=ADMIN).status_code == 200
    assert client.get("/healthz", HTTP_HOST=ADMIN).status_code == 200
    home = client.get("/", HTTP_HOST=ADMIN)
    assert home.status_code == 302 and home["Location"] == "/admin/"
    assert client.get("/", HTTP_HOST=VIEWER).status_code == 200


def test_without_admin_hosts_every_host_answers_everything(
    admin_client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = [VIEWER, ADMIN]
    settings.ADMIN_HOSTS = []

    for host in (VIEWER, ADMIN):
        assert admin_client.get("/admin/", HTTP_HOST=host).status_code == 200
        assert admin_client.get(fake_kheops.launch_url(), HTTP_HOST=host).status_code == 302


def test_the_admin_cookies_are_host_only(client: Client, db: None, split_hosts: None) -> None:
    from django.contrib.auth.models import User

    User.objects.create_superuser("boss", "boss@example.org", "pw-for-tests-only-9")
    page = client.get("/admin/login/", HTTP_HOST=ADMIN)
    login = client.post(
        "/admin/login/?next=/admin/",
        {"username": "boss", "password": "pw-for-tests-only-9"},
        HTTP_HOST=ADMIN,
    )

    assert login.status_code == 302
    for response, name in ((page, "csrftoken"), (login, "kheops_ohif_session")):
        assert response.cookies[name]["domain"] == ""  # no Domain: this host alone


def test_an_admin_host_outside_allowed_hosts_is_a_check_error(settings: Any) -> None:
    settings.PUBLIC_HOST = VIEWER
    settings.ALLOWED_HOSTS = [VIEWER]
    settings.ADMIN_HOSTS = [ADMIN]

    ids = [message.id for message in checks.run_checks(tags=[checks.Tags.security])]

    assert "launcher.E010" in ids


def test_an_admin_host_that_is_the_viewers_is_a_check_warning(settings: Any) -> None:
    settings.PUBLIC_HOST = VIEWER
    settings.ALLOWED_HOSTS = [VIEWER]
    settings.ADMIN_HOSTS = [VIEWER]

    ids = [message.id for message in checks.run_checks(tags=[checks.Tags.security])]

    assert "launcher.W011" in ids and "launcher.E010" not in ids


def test_the_recommended_set_up_passes_the_deploy_check() -> None:
    # ALLOWED_HOSTS left unset: it then holds both host names.
    result = run_django(
        ["check", "--deploy", "--fail-level", "WARNING"],
        SECRET_KEY=STRONG_KEY,
        PUBLIC_BASE_URL="https://viewer.example.org",
        TRUST_X_FORWARDED_PROTO="true",
        ADMIN_HOSTS="admin.viewer.example.org",
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_documents_answered_from_memory_are_not_answered_on_the_admin_host(
    split_hosts: None,
) -> None:
    from launcher.serving import _host_allowed

    assert not _host_allowed({"headers": [(b"host", ADMIN.encode())]})
    assert _host_allowed({"headers": [(b"host", VIEWER.encode())]})


def test_the_audit_api_schema_names_the_admin_host() -> None:
    result = run_django(
        ["spectacular", "--format", "openapi-json"],
        SECRET_KEY=STRONG_KEY,
        PUBLIC_BASE_URL="https://viewer.example.org",
        ADMIN_HOSTS="admin.viewer.example.org",
    )

    assert result.returncode == 0, result.stderr
    assert '"url": "https://admin.viewer.example.org"' in result.stdout
    assert "https://admin.viewer.example.org/oauth/token/" in result.stdout
