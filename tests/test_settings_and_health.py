"""Start-up configuration errors, system checks, health probes and security headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

REPO = Path(__file__).resolve().parent.parent
SPEC = json.loads((REPO / "ohif-bundle.json").read_text())
VERSION_DIR = f"{SPEC['version']}-{SPEC['install_format']}"
STRONG_KEY = "k" * 20 + "Q7v#pL2x!Zr9@Wm4^Ts8&Yb1" + "e" * 20


def run_django(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECRET_KEY", "DJANGO_", "PUBLIC_", "ALLOWED_", "DEBUG"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_to_start_without_a_secret_key_in_production() -> None:
    result = run_django(["check"])

    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off" in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("viewer.example.org", "PUBLIC_BASE_URL must be an absolute http(s) URL"),
        ("https://viewer.example.org/?x=1", "must not contain a query string"),
        (
            "https://user@viewer.example.org",
            "must not contain a query string, a fragment or user info",
        ),
        ("https://viewer.example.org:99999", "invalid port"),
    ],
)
def test_it_refuses_a_malformed_public_base_url(value: str, message: str) -> None:
    result = run_django(["check"], SECRET_KEY=STRONG_KEY, PUBLIC_BASE_URL=value)

    assert result.returncode != 0
    assert message in result.stderr


def test_it_refuses_a_boolean_it_cannot_read() -> None:
    result = run_django(["check"], SECRET_KEY=STRONG_KEY, DEBUG="maybe")

    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_a_public_host_outside_allowed_hosts_is_a_system_check_error() -> None:
    result = run_django(
        ["check"],
        SECRET_KEY=STRONG_KEY,
        PUBLIC_BASE_URL="https://viewer.example.org",
        ALLOWED_HOSTS="other.example.org",
    )

    assert result.returncode != 0
    assert "launcher.E001" in result.stderr
    assert "add it to ALLOWED_HOSTS" in result.stderr


def test_plain_http_on_a_public_host_is_a_warning() -> None:
    result = run_django(
        ["check"], SECRET_KEY=STRONG_KEY, PUBLIC_BASE_URL="http://viewer.example.org"
    )

    assert result.returncode == 0
    assert "launcher.W002" in result.stderr


def test_a_bundle_installed_for_another_prefix_is_a_system_check_error() -> None:
    result = run_django(
        ["check"], SECRET_KEY=STRONG_KEY, PUBLIC_BASE_URL="https://viewer.example.org/ohif"
    )

    assert result.returncode != 0
    assert "launcher.E004" in result.stderr
    assert "install_ohif" in result.stderr


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = run_django(
        ["check", "--deploy", "--fail-level", "WARNING"],
        SECRET_KEY=STRONG_KEY,
        PUBLIC_BASE_URL="https://viewer.example.org",
        TRUST_X_FORWARDED_PROTO="true",
    )

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_a_sub_path_moves_every_url_under_it() -> None:
    code = (
        "from django.conf import settings as s;"
        "print(s.FORCE_SCRIPT_NAME, s.STATIC_URL, s.OHIF_ASSET_URL, s.SESSION_COOKIE_PATH, s.PUBLIC_BASE_URL)"
    )
    result = run_django(
        ["shell", "-c", code],
        SECRET_KEY=STRONG_KEY,
        PUBLIC_BASE_URL="https://h.example/kheops/ohif/",
    )

    assert result.stdout.splitlines()[-1].split() == [
        "/kheops/ohif",
        "/kheops/ohif/static/",
        f"/kheops/ohif/static/ohif/{VERSION_DIR}/",
        "/kheops/ohif/",
        "https://h.example/kheops/ohif",
    ]


def test_https_turns_on_secure_cookies_and_hsts() -> None:
    code = "from django.conf import settings as s;print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT)"
    result = run_django(
        ["shell", "-c", code], SECRET_KEY=STRONG_KEY, PUBLIC_BASE_URL="https://h.example"
    )

    assert result.stdout.splitlines()[-1].split() == ["True", "True", "31536000", "True"]


@pytest.mark.django_db
def test_healthz_answers_while_the_process_is_up(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_the_database_and_the_bundle(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "ohif": "ok"}
    assert response.json()["ohif_version"] == "3.13.2"


@pytest.mark.django_db
def test_readyz_is_unavailable_without_the_bundle(client: Client, settings, tmp_path: Path) -> None:
    settings.OHIF_ROOT = tmp_path

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["ohif"].startswith("not installed")


@pytest.mark.django_db
def test_pages_carry_the_security_headers(client: Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    # Our own pages: same-origin (browsers then send a real Origin with form POSTs);
    # the launch and viewer responses narrow it to no-referrer (tests/test_referrer_policy.py).
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    # django-csp orders the directives differently from one process to the next.
    directives = dict(
        part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";")
    )
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "Strict-Transport-Security" not in response


@pytest.mark.django_db
def test_hsts_is_sent_over_https(client: Client, settings) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000

    response = client.get("/", secure=True)

    assert response["Strict-Transport-Security"] == "max-age=31536000"
