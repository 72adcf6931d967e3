"""Secrets at rest: how they are sealed, key changes, `reseal`, `purge_keys`, and the
placeholder check.

What is sealed: our signing keys' private halves, each pending launch's code and each viewer's
KHEOPS token (launcher.sealing). The key-encryption key is SEALING_KEY, else SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from launcher import checks, keys, sealing
from launcher.models import GrantState, LaunchGrant, SigningKey
from tests.fakes import ROOT, FakeKheops, token_url_of
from tests.test_settings_and_health import STRONG_KEY, run_django

KEY_A = "A" * 20 + "kT3#vQ9@zL1!xW7&pR5^mN" + "a" * 20
KEY_B = "B" * 20 + "hY6$cF2%jD8*sG4(uE0)bV" + "b" * 20
ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def hkdf_key(secret: str, purpose: str) -> bytes:
    """The key a value for `purpose` must be sealed under (computed here, not by the app)."""
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"kheops-ohif sealing",
        info=f"kheops-ohif/{purpose}/v2".encode(),
    ).derive(secret.encode())
    return base64.urlsafe_b64encode(derived)


def legacy_key(secret: str, purpose: str) -> bytes:
    """The derivation of earlier versions: a bare SHA-256."""
    digest = hashlib.sha256(f"kheops-ohif:{purpose}:{secret}".encode()).digest()
    return base64.urlsafe_b64encode(digest)


def opens(key: bytes, sealed: str) -> bool:
    try:
        Fernet(key).decrypt(sealed.encode())
    except InvalidToken:
        return False
    return True


# --- how values are sealed ----------------------------------------------------------------


def test_values_are_sealed_under_a_key_derived_by_hkdf_with_their_purpose(settings: Any) -> None:
    sealed = sealing.seal("eyJcode.a-launch-code-0123456789", purpose="launch-code")

    assert opens(hkdf_key(settings.SECRET_KEY, "launch-code"), sealed)
    assert not opens(legacy_key(settings.SECRET_KEY, "launch-code"), sealed)
    assert not opens(hkdf_key(settings.SECRET_KEY, "access-token"), sealed)


def test_a_value_sealed_for_one_purpose_does_not_open_as_another() -> None:
    sealed = sealing.seal("eyJtoken.some-access-token-abcdef", purpose="access-token")

    with pytest.raises(sealing.SealError):
        sealing.unseal(sealed, purpose="signing-key")


@pytest.mark.parametrize("where", ["SECRET_KEY", "SECRET_KEY_FALLBACKS"])
def test_values_sealed_by_earlier_versions_still_open(settings: Any, where: str) -> None:
    # Deployments being upgraded hold signing keys and pending grants sealed the old way.
    settings.SECRET_KEY = KEY_B if where == "SECRET_KEY_FALLBACKS" else KEY_A
    settings.SECRET_KEY_FALLBACKS = [KEY_A] if where == "SECRET_KEY_FALLBACKS" else []
    old = Fernet(legacy_key(KEY_A, "launch-code")).encrypt(b"eyJcode.sealed-before-upgrade")

    assert sealing.unseal(old.decode(), purpose="launch-code") == "eyJcode.sealed-before-upgrade"
    assert not sealing.is_current(old.decode(), purpose="launch-code")


def test_sealing_key_replaces_secret_key_and_what_secret_key_sealed_still_opens(
    settings: Any,
) -> None:
    before = sealing.seal("eyJcode.sealed-under-secret-key", purpose="launch-code")
    settings.SEALING_KEY = KEY_A

    sealed = sealing.seal("eyJcode.sealed-under-sealing-key", purpose="launch-code")

    assert opens(hkdf_key(KEY_A, "launch-code"), sealed)
    assert not opens(hkdf_key(settings.SECRET_KEY, "launch-code"), sealed)
    assert sealing.unseal(before, purpose="launch-code") == "eyJcode.sealed-under-secret-key"


def test_sealing_key_fallbacks_open_what_the_previous_sealing_key_sealed(settings: Any) -> None:
    settings.SEALING_KEY = KEY_A
    sealed = sealing.seal("eyJtoken.sealed-under-key-a-0123", purpose="access-token")
    settings.SEALING_KEY = KEY_B
    settings.SEALING_KEY_FALLBACKS = [KEY_A]

    assert sealing.unseal(sealed, purpose="access-token") == "eyJtoken.sealed-under-key-a-0123"

    settings.SEALING_KEY_FALLBACKS = []
    with pytest.raises(sealing.SealError, match=r"manage\.py reseal"):
        sealing.unseal(sealed, purpose="access-token")


# --- manage.py reseal ---------------------------------------------------------------------


def grant_row(launch_id: str, **sealed: str) -> LaunchGrant:
    return LaunchGrant.objects.create(
        launch_id=launch_id,
        browser_key_hash="0" * 64,
        state=GrantState.READY if "sealed_token" in sealed else GrantState.PENDING,
        expires_at=timezone.now() + timedelta(minutes=10),
        dicomweb_endpoint=f"{ROOT}/api",
        study_uids=["1.2.3"],
        mode="viewer",
        **sealed,
    )


def reseal() -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reseal", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_reseal_seals_every_stored_value_under_the_current_key_and_is_idempotent(
    settings: Any, db: None
) -> None:
    # As an upgraded deployment finds them: everything sealed the old way, one grant new.
    settings.SECRET_KEY = KEY_A
    generated = keys._generate()
    private_key = sealing.unseal(generated.sealed_private_key, purpose=keys.SEALING_PURPOSE)
    old_way: dict[str, str] = {
        "code": "eyJcode.pending-before-upgrade-01",
        "token": "eyJtoken.ready-before-upgrade-0002",
    }

    def legacy(value: str, purpose: str) -> str:
        return Fernet(legacy_key(KEY_A, purpose)).encrypt(value.encode()).decode()

    SigningKey.objects.create(
        kid=generated.kid,
        public_jwk=generated.public_jwk,
        sealed_private_key=legacy(private_key, keys.SEALING_PURPOSE),
    )
    grant_row("pending-old", sealed_code=legacy(old_way["code"], "launch-code"))
    grant_row("ready-old", sealed_token=legacy(old_way["token"], "access-token"))
    grant_row("pending-new", sealed_code=sealing.seal("eyJcode.new-0123456", purpose="launch-code"))

    out, err = reseal()

    assert "signing keys: 1 re-sealed, 0 already under the current key" in out
    assert "launch codes (grants not yet exchanged): 1 re-sealed, 1 already" in out
    assert "KHEOPS tokens (viewer grants): 1 re-sealed, 0 already" in out
    assert "Everything is sealed under the current key." in out
    assert err == ""
    for secret in (private_key, *old_way.values()):
        assert secret not in out
    key = SigningKey.objects.get()
    assert sealing.is_current(key.sealed_private_key, purpose=keys.SEALING_PURPOSE)
    assert sealing.unseal(key.sealed_private_key, purpose=keys.SEALING_PURPOSE) == private_key
    code = LaunchGrant.objects.get(launch_id="pending-old").sealed_code
    assert sealing.is_current(code, purpose="launch-code")
    assert sealing.unseal(code, purpose="launch-code") == old_way["code"]
    token = LaunchGrant.objects.get(launch_id="ready-old").sealed_token
    assert sealing.unseal(token, purpose="access-token") == old_way["token"]

    again, _ = reseal()

    assert "signing keys: 0 re-sealed, 1 already under the current key" in again
    assert "launch codes (grants not yet exchanged): 0 re-sealed, 2 already" in again
    assert LaunchGrant.objects.get(launch_id="pending-old").sealed_code == code


def test_after_reseal_the_old_key_can_leave_the_fallbacks(
    settings: Any, client: Client, fake_kheops: FakeKheops, launched: Callable[..., str]
) -> None:
    settings.SEALING_KEY = KEY_A
    ready = launched()  # a viewer with its token (and the signing key, sealed under A)
    pending = launched(exchange=False)  # a launch whose code waits, sealed under A
    settings.SEALING_KEY = KEY_B
    settings.SEALING_KEY_FALLBACKS = [KEY_A]

    out, _ = reseal()

    assert "signing keys: 1 re-sealed" in out
    settings.SEALING_KEY_FALLBACKS = []
    keys.forget_cached_key()
    assert client.get(ready).status_code == 200
    token = client.get(token_url_of(pending))
    assert token.status_code == 200, token.content
    assert token.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[-1]}"


def test_reseal_reports_values_no_key_opens_and_reseals_the_others(settings: Any, db: None) -> None:
    settings.SEALING_KEY = KEY_A
    grant_row(
        "lost-grant", sealed_code=sealing.seal("eyJcode.under-a-lost-key", purpose="launch-code")
    )
    keys.active_signing_key()
    settings.SEALING_KEY = KEY_B
    settings.SEALING_KEY_FALLBACKS = []
    grant_row(
        "fine-grant", sealed_code=sealing.seal("eyJcode.under-key-b-000", purpose="launch-code")
    )
    kid = SigningKey.objects.get().kid

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("reseal", stdout=out, stderr=err)

    assert "2 sealed value(s) cannot be opened with any configured key" in str(refused.value)
    assert "SEALING_KEY_FALLBACKS" in str(refused.value)
    assert (
        "launch codes (grants not yet exchanged): 0 re-sealed, 1 already under the current key, 1 cannot be opened"
        in out.getvalue()
    )
    assert f"cannot be opened (kid): {kid}" in err.getvalue()
    assert "rotate_signing_key" in err.getvalue()
    assert "cannot be opened (launch_id): lost-grant" in err.getvalue()
    assert "Traceback" not in out.getvalue() + err.getvalue()


# --- a value that no key opens, during a launch ---------------------------------------------


def test_a_token_request_whose_signing_key_cannot_be_opened_says_to_tell_the_administrator(
    settings: Any, client: Client, fake_kheops: FakeKheops, caplog: pytest.LogCaptureFixture
) -> None:
    # Before `reseal` existed, dropping the old key from the fallbacks made this a bare 500.
    settings.SEALING_KEY = KEY_A
    keys.active_signing_key()
    settings.SEALING_KEY = KEY_B
    keys.forget_cached_key()
    launch = client.get(fake_kheops.launch_url())
    assert launch.status_code == 302

    with caplog.at_level(logging.ERROR, logger="launcher"):
        token = client.get(token_url_of(launch["Location"]))

    assert token.status_code == 500
    assert (
        token.json()["error"] == "This viewer cannot open the credentials it keeps for this study."
    )
    assert token.json()["advice"].startswith("Tell this viewer's administrator")
    assert token.json()["returnUri"] == f"{ROOT}/albums/AbCdEf1234"
    assert token.json()["retryable"] is False
    assert fake_kheops.token_requests == []  # nothing was sent to KHEOPS
    [record] = [
        r for r in caplog.records if r.name.startswith("launcher.") and r.levelno == logging.ERROR
    ]
    assert "signing-key value cannot be opened" in record.getMessage()
    assert "manage.py reseal" in record.getMessage()


def test_a_viewer_whose_token_cannot_be_opened_gets_a_500_page_not_another_browsers(
    settings: Any, client: Client, launched: Callable[..., str]
) -> None:
    settings.SEALING_KEY = KEY_A
    viewer = launched()
    settings.SEALING_KEY = KEY_B

    page = client.get(viewer)

    assert page.status_code == 500
    text = page.content.decode()
    assert "cannot open the credentials it keeps" in text
    assert "Tell this viewer&#x27;s administrator" in text
    assert "Back to KHEOPS" in text
    assert "another browser" not in text
    assert "no-store" in page["Cache-Control"]
    token = client.get(token_url_of(viewer))
    assert token.status_code == 500
    assert "authorization" not in token.json()


# --- purge_keys ---------------------------------------------------------------------------


def test_purge_keys_destroys_retired_private_keys_once_their_grace_period_is_over(
    db: None,
) -> None:
    expired = keys.active_signing_key()
    keys.rotate(grace=timedelta(seconds=-1))
    in_grace = SigningKey.objects.get(active=True)
    keys.rotate(grace=timedelta(hours=1))
    active = SigningKey.objects.get(active=True)
    out = io.StringIO()

    call_command("purge_keys", stdout=out)

    assert f"Destroyed the private key of kid={expired.kid}" in out.getvalue()
    assert "1 retired private key(s) destroyed." in out.getvalue()
    stored = {key.kid: key.sealed_private_key for key in SigningKey.objects.all()}
    assert stored[expired.kid] == ""
    assert stored[in_grace.kid] != "" and stored[active.kid] != ""
    # Both the key in its grace period and the active one still work.
    assert {k["kid"] for k in keys.published_keys()} == {in_grace.kid, active.kid}
    out = io.StringIO()
    call_command("purge_keys", stdout=out)
    assert "0 retired private key(s) destroyed." in out.getvalue()


def test_rotate_signing_key_purges_the_keys_past_their_grace_period(db: None) -> None:
    expired = keys.active_signing_key()
    keys.rotate(grace=timedelta(seconds=-1))
    out = io.StringIO()

    call_command("rotate_signing_key", "--grace-seconds", "3600", stdout=out)

    assert f"Destroyed the private key of kid={expired.kid}" in out.getvalue()
    assert SigningKey.objects.get(kid=expired.kid).sealed_private_key == ""


def test_the_signing_key_admin_says_whether_the_private_key_is_kept(
    admin_client: Client,
) -> None:
    expired = keys.active_signing_key()
    keys.rotate(grace=timedelta(seconds=-1))
    keys.purge_retired()

    page = admin_client.get("/admin/launcher/signingkey/").content.decode()

    assert "Private key kept" in page
    row = re.search(rf"{expired.kid}.*?</tr>", page, re.S)
    assert row is not None and 'alt="False"' in row.group(0)


# --- the placeholder check ----------------------------------------------------------------


def env_example_secrets() -> list[tuple[str, str]]:
    """SECRET_KEY and SEALING_KEY example values in .env.example (commented or not)."""
    found = re.findall(
        r"^#?\s*(SECRET_KEY|SEALING_KEY)=(\S+)$", ENV_EXAMPLE.read_text(), flags=re.M
    )
    assert found, ".env.example shows no example secret"
    return found


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        *[
            (name, value, "is the example value from .env.example")
            for name, value in env_example_secrets()
        ],
        ("SECRET_KEY", "x9#Lq2" * 8, "is shorter than 50 characters"),
        ("SEALING_KEY", "short-sealing-key", "is shorter than 50 characters"),
    ],
)
def test_a_placeholder_or_short_secret_is_a_deploy_error(
    settings: Any, name: str, value: str, problem: str
) -> None:
    settings.DEBUG = False
    setattr(settings, name, value)

    [error] = checks.check_secrets_are_not_placeholders(None)

    assert error.id == "launcher.E013"
    assert error.msg == f"{name} {problem}."
    assert value not in error.msg + error.hint


def test_strong_secrets_an_unset_sealing_key_and_debug_pass_the_placeholder_check(
    settings: Any,
) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = STRONG_KEY
    settings.SEALING_KEY = ""
    assert checks.check_secrets_are_not_placeholders(None) == []
    settings.SEALING_KEY = KEY_A
    assert checks.check_secrets_are_not_placeholders(None) == []
    settings.DEBUG = True
    settings.SECRET_KEY = "change-me-to-50-random-characters"
    assert checks.check_secrets_are_not_placeholders(None) == []


def test_check_deploy_refuses_the_env_example_secret_key() -> None:
    [(_, placeholder)] = [(n, v) for n, v in env_example_secrets() if n == "SECRET_KEY"]
    result = run_django(
        ["check", "--deploy"],
        SECRET_KEY=placeholder,
        PUBLIC_BASE_URL="https://viewer.example.org",
        TRUST_X_FORWARDED_PROTO="true",
    )

    assert result.returncode != 0
    assert "launcher.E013" in result.stderr
    assert "SECRET_KEY is the example value from .env.example" in result.stderr
