"""Admin sign-ins are throttled per user name and client address (django-axes)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

PASSWORD = "right-horse-battery-9"
WRONG = "wrong-guess-Zq81"


@pytest.fixture
def boss(db: None, settings: Any) -> User:
    settings.AXES_FAILURE_LIMIT = 3
    return User.objects.create_superuser("boss", "boss@example.org", PASSWORD)


def sign_in(client: Client, password: str, *, username: str = "boss", **extra: str) -> Any:
    return client.post(
        "/admin/login/?next=/admin/", {"username": username, "password": password}, **extra
    )


def test_after_the_limit_the_user_is_locked_out_even_with_the_right_password(
    client: Client, boss: User, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(2):
        assert sign_in(client, WRONG).status_code == 200  # the form again, with its error

    locked = sign_in(client, WRONG)
    again = sign_in(client, PASSWORD)

    for response in (locked, again):
        assert response.status_code == 429
        page = response.content.decode()
        assert "Too many failed sign-ins as boss from your address (3 in a row)" in page
        assert "Try again in 15 minutes" in page
        assert response["Retry-After"] == "900"
    assert "_auth_user_id" not in client.session
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Locking out" in logged and "boss" in logged and "127.0.0.1" in logged
    assert WRONG not in logged and PASSWORD not in logged


def test_the_lock_is_per_user_name_and_address(client: Client, boss: User, settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    User.objects.create_superuser("other", "other@example.org", PASSWORD)
    for _ in range(3):
        sign_in(client, WRONG, HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert sign_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.1").status_code == 429

    other_user = sign_in(Client(), PASSWORD, username="other", HTTP_X_FORWARDED_FOR="198.51.100.1")
    other_address = sign_in(Client(), PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.2")

    assert other_user.status_code == 302
    assert other_address.status_code == 302


def test_a_success_before_the_limit_resets_the_count(client: Client, boss: User) -> None:
    for _ in range(2):
        sign_in(client, WRONG)
    assert sign_in(client, PASSWORD).status_code == 302
    client.logout()
    for _ in range(2):
        assert sign_in(client, WRONG).status_code == 200

    assert sign_in(client, PASSWORD).status_code == 302


def test_nothing_stored_about_an_attempt_holds_the_password(client: Client, boss: User) -> None:
    from axes.models import AccessAttempt

    for _ in range(3):
        sign_in(client, WRONG)

    [attempt] = AccessAttempt.objects.all()
    assert attempt.username == "boss" and attempt.ip_address == "127.0.0.1"
    assert WRONG not in repr(AccessAttempt.objects.values().get())
