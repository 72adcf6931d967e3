"""The token endpoint answers each kind of provider mistake exactly as KHEOPS does.

Every error is HTTP 400 `{"error", "error_description"}`; the error codes are KHEOPS's, odd
ones included (a bad code is `invalid_request`, not `invalid_grant`).
"""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.sandbox.sandbox_harness import FakeProvider, SandboxServer


def _code(sandbox: SandboxServer, client_id: str) -> str:
    return sandbox.launch_params(client_id)["code"][0]


def _error(response, error: str) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error, body
    return body.get("error_description", "")


def test_correct_exchange_returns_access_token_and_expires_in_without_token_type(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    response = sandbox.token(fake_provider.token_form(sandbox, code, registered_provider))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"access_token", "expires_in"}
    assert body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["type"] == "report_generator"
    assert claims["scope"] == "read write"
    assert claims["azp"] == registered_provider
    assert claims["studyUID"] == sandbox.demo_study_uids[:1]
    assert claims["iss"] == claims["aud"] == sandbox.root_url
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


def test_code_can_be_exchanged_again_while_valid(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    for _ in range(2):
        response = sandbox.token(fake_provider.token_form(sandbox, code, registered_provider))
        assert response.status_code == 200, response.text


def test_audience_may_be_an_array_containing_the_token_endpoint(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    assertion = fake_provider.assertion(
        registered_provider, ["https://elsewhere.example", sandbox.api("/token")]
    )
    form = fake_provider.token_form(sandbox, code, registered_provider, assertion=assertion)
    assert sandbox.token(form).status_code == 200


@pytest.mark.parametrize(
    ("changes", "description"),
    [
        ({"audience": "http://127.0.0.1:1/api/token"}, "'aud'"),
        ({"audience": "ROOT"}, "'aud'"),
        ({"headers": {"kid": None}}, "Token id (kid) header is required"),
        ({"headers": {"kid": "not-in-the-jwks"}}, "Unable to get public key"),
        ({"drop": ("jti",)}, "Token id (jti) claim is required"),
        ({"drop": ("exp",)}, "Expiration date (exp) claim is required"),
        ({"lifetime": 700}, "too far in the future"),
        ({"lifetime": -120}, "expired"),
        ({"iss": "someone-else"}, "'iss'"),
        ({"sub": "someone-else"}, "'sub'"),
    ],
    ids=[
        "wrong-aud",
        "aud-is-root",
        "missing-kid",
        "unknown-kid",
        "missing-jti",
        "missing-exp",
        "exp-too-far",
        "expired-assertion",
        "wrong-iss",
        "wrong-sub",
    ],
)
def test_bad_assertion_is_invalid_request(
    sandbox: SandboxServer,
    fake_provider: FakeProvider,
    registered_provider: str,
    changes: dict,
    description: str,
) -> None:
    code = _code(sandbox, registered_provider)
    audience = changes.pop("audience", sandbox.api("/token"))
    if audience == "ROOT":
        audience = sandbox.root_url
    assertion = fake_provider.assertion(registered_provider, audience, **changes)
    form = fake_provider.token_form(sandbox, code, registered_provider, assertion=assertion)
    assert description in _error(sandbox.token(form), "invalid_request")


def test_exp_bound_has_no_leeway_but_expiry_has_sixty_seconds(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    token_url = sandbox.api("/token")
    within_bound = fake_provider.assertion(registered_provider, token_url, lifetime=590)
    just_expired = fake_provider.assertion(registered_provider, token_url, lifetime=-30)
    just_over = fake_provider.assertion(registered_provider, token_url, lifetime=610)
    for assertion, expected in ((within_bound, 200), (just_expired, 200), (just_over, 400)):
        form = fake_provider.token_form(sandbox, code, registered_provider, assertion=assertion)
        assert sandbox.token(form).status_code == expected


def test_hs256_assertion_is_rejected_before_any_key_lookup(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    assertion = fake_provider.assertion(
        registered_provider,
        sandbox.api("/token"),
        key="a-shared-secret-of-32-bytes-or-more!",
        algorithm="HS256",
    )
    form = fake_provider.token_form(sandbox, code, registered_provider, assertion=assertion)
    assert "Unexpected JWT signing algorithm: HS256" in _error(
        sandbox.token(form), "invalid_request"
    )
    assert "/jwks.json" not in fake_provider.requests


def test_assertion_signed_by_another_key_with_the_same_kid_is_invalid_request(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assertion = fake_provider.assertion(registered_provider, sandbox.api("/token"), key=other_key)
    form = fake_provider.token_form(sandbox, code, registered_provider, assertion=assertion)
    assert "Signature" in _error(sandbox.token(form), "invalid_request")


def test_redirect_uri_must_equal_the_freshly_fetched_document(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    form = fake_provider.token_form(
        sandbox, code, registered_provider, redirect_uri=fake_provider.redirect_uri + "/"
    )
    assert _error(sandbox.token(form), "invalid_grant") == "redirect_uri does not match"
    # The provider changes its document after the launch: the old redirect_uri no longer matches.
    fake_provider.document["redirect_uri"] = fake_provider.base_url + "/kheops/launch2"
    form = fake_provider.token_form(sandbox, code, registered_provider)
    assert _error(sandbox.token(form), "invalid_grant") == "redirect_uri does not match"


def test_unknown_client_id_is_invalid_client(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    unknown = "A" * 22
    form = fake_provider.token_form(
        sandbox, code, unknown, assertion=fake_provider.assertion(unknown, sandbox.api("/token"))
    )
    assert _error(sandbox.token(form), "invalid_client") == "Unknown client_id"


def test_removed_client_id_is_invalid_client(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    deleted = sandbox.http.delete(
        sandbox.api(f"/albums/{sandbox.demo_album_id}/reportproviders/{registered_provider}"),
        headers={"Authorization": f"Bearer {sandbox.user_token('alice')}"},
    )
    assert deleted.status_code == 204
    form = fake_provider.token_form(sandbox, code, registered_provider)
    _error(sandbox.token(form), "invalid_client")


def test_provider_document_down_at_token_time_is_invalid_client(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    fake_provider.config_status = 500
    form = fake_provider.token_form(sandbox, code, registered_provider)
    assert "Error with the client config" in _error(sandbox.token(form), "invalid_client")


def test_code_expires_after_ten_minutes_plus_leeway(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    sandbox.set_clock(650)  # inside 600 s + 60 s leeway
    assert sandbox.token(fake_provider.token_form(sandbox, code, registered_provider)).ok
    sandbox.set_clock(700)
    form = fake_provider.token_form(sandbox, code, registered_provider)
    assert (
        _error(sandbox.token(form), "invalid_request")
        == "Unable to validate the authorization code"
    )


def test_garbage_or_foreign_code_is_invalid_request(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    other = sandbox.register_provider(fake_provider.config_url, "Second registration")
    other_client_id = other.json()["client_id"]
    code_for_other = _code(sandbox, other_client_id)
    for code in ("not-a-code", code_for_other, sandbox.user_token("alice")):
        form = fake_provider.token_form(sandbox, code, registered_provider)
        assert _error(sandbox.token(form), "invalid_request") == (
            "Unable to validate the authorization code"
        )


def test_no_assertion_is_unauthorized_client(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    form = fake_provider.token_form(
        sandbox, code, registered_provider, drop=("client_assertion", "client_assertion_type")
    )
    _error(sandbox.token(form), "unauthorized_client")
    # A Bearer header makes the caller public too.
    _error(sandbox.token(form, headers={"Authorization": "Bearer whatever"}), "unauthorized_client")


def test_authorization_header_with_an_assertion_is_invalid_request(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    form = fake_provider.token_form(sandbox, code, registered_provider)
    for header in ("Basic Zm9vOmJhcg==", "Bearer abc"):
        description = _error(
            sandbox.token(form, headers={"Authorization": header}), "invalid_request"
        )
        assert "can not both be present" in description


@pytest.mark.parametrize("field", ["code", "redirect_uri", "grant_type"])
def test_missing_or_duplicated_field_is_invalid_request(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str, field: str
) -> None:
    code = _code(sandbox, registered_provider)
    missing = fake_provider.token_form(sandbox, code, registered_provider, drop=(field,))
    assert _error(sandbox.token(missing), "invalid_request") == f"Must have a single {field}"
    complete = fake_provider.token_form(sandbox, code, registered_provider)
    duplicate = [*complete, (field, dict(complete)[field])]
    assert _error(sandbox.token(duplicate), "invalid_request") == f"Must have a single {field}"


def test_missing_or_duplicated_client_fields_are_invalid_request(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    form = fake_provider.token_form(sandbox, code, registered_provider)
    no_client_id = [(k, v) for k, v in form if k != "client_id"]
    assert "client_id" in _error(sandbox.token(no_client_id), "invalid_request")
    two_assertions = [*form, ("client_assertion", dict(form)["client_assertion"])]
    assert "Only one client_assertion" in _error(sandbox.token(two_assertions), "invalid_request")
    wrong_type = [(k, "urn:x" if k == "client_assertion_type" else v) for k, v in form]
    assert "client_assertion_type" in _error(sandbox.token(wrong_type), "invalid_request")
    not_a_jwt = [(k, "abc" if k == "client_assertion" else v) for k, v in form]
    assert "Malformed" in _error(sandbox.token(not_a_jwt), "invalid_request")


def test_unknown_and_unsupported_grant_types(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    for grant_type in ("refresh_token", "made_up"):
        form = [
            (k, grant_type if k == "grant_type" else v)
            for k, v in fake_provider.token_form(sandbox, code, registered_provider)
        ]
        _error(sandbox.token(form), "unsupported_grant_type")


def test_errors_carry_cors_headers_and_json(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    response = sandbox.token([("grant_type", "authorization_code")])
    assert response.status_code == 400
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Content-Type"].startswith("application/json")


def test_clock_skew_mode_ages_the_assertion_too(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = _code(sandbox, registered_provider)
    sandbox.set_clock(300, mode="skew")  # the stand-in runs 5 minutes fast
    form = fake_provider.token_form(sandbox, code, registered_provider)
    assert "expired" in _error(sandbox.token(form), "invalid_request")
    fresh = fake_provider.assertion(
        registered_provider, sandbox.api("/token"), now=time.time() + 300
    )
    form = fake_provider.token_form(sandbox, code, registered_provider, assertion=fresh)
    assert sandbox.token(form).status_code == 200
