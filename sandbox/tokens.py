"""The JWTs the stand-in mints and checks, all HS256 like KHEOPS's own.

- user tokens stand in for Keycloak access tokens (KHEOPS's `KEYCLOAK_TOKEN`); they are signed
  with a key derived from the secret, so a user token can never pass for a code or access token;
- authorization codes (`type` report_provider_code, 600 s) and report-provider access tokens
  (`type` report_generator, 3600 s) are signed with the KHEOPS HMAC secret itself, as in
  `ReportProviderAuthCodeGenerator` and `ReportProviderAccessTokenGenerator`.

Time checks use the stand-in's adjustable clock with KHEOPS's 60 s leeway.

Public interface for the DICOMweb relay: `decode_access_token` and `album_for_client`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import jwt
from django.conf import settings

from sandbox import clock
from sandbox.faults import current_faults
from sandbox.models import ReportProvider, User

LEEWAY_SECONDS = 60
CODE_LIFETIME_SECONDS = 600
ACCESS_TOKEN_LIFETIME_SECONDS = 3600
USER_TOKEN_LIFETIME_SECONDS = 3600
CODE_TYPE = "report_provider_code"
ACCESS_TOKEN_TYPE = "report_generator"
USER_TOKEN_TYPE = "user"
REPORT_PROVIDER_SCOPE = "read write"


class InvalidToken(Exception):
    """A token that does not verify: bad signature, wrong claims, expired, or not a JWT."""


def root_url() -> str:
    return settings.SANDBOX_ROOT_URL


def user_token_issuer() -> str:
    return f"{root_url()}/sandbox-idp"


def _kheops_key() -> bytes:
    return settings.SANDBOX_SECRET.encode()


def _user_token_key() -> bytes:
    return hmac.new(_kheops_key(), b"sandbox user tokens", hashlib.sha256).digest()


def _check_times(claims: dict[str, Any], now: float, *, require_exp: bool = True) -> None:
    exp = claims.get("exp")
    if exp is None:
        if require_exp:
            raise InvalidToken("missing exp")
    elif not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise InvalidToken("exp is not a number")
    elif now > exp + LEEWAY_SECONDS:
        raise InvalidToken("expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidToken(f"{name} is not a number")
        if value > now + LEEWAY_SECONDS:
            raise InvalidToken(f"{name} is in the future")


def _decode(token: str, key: bytes, *, audience: str, issuer: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            audience=audience,
            issuer=issuer,
            # Times are checked against the adjustable clock below, not the machine's.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(type(exc).__name__) from exc
    _check_times(claims, clock.now())
    return claims


def _encode(claims: dict[str, Any], key: bytes) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


# --- user tokens (the stand-in's Keycloak) -------------------------------------------------


def mint_user_token(user: User, *, lifetime_seconds: int = USER_TOKEN_LIFETIME_SECONDS) -> str:
    now = int(clock.now())
    return _encode(
        {
            "iss": user_token_issuer(),
            "aud": root_url(),
            "sub": user.sub,
            "azp": "kheops",
            "type": USER_TOKEN_TYPE,
            "preferred_username": user.username,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
        },
        _user_token_key(),
    )


def verify_user_token(token: str) -> dict[str, Any]:
    claims = _decode(token, _user_token_key(), audience=root_url(), issuer=user_token_issuer())
    if claims.get("type") != USER_TOKEN_TYPE or not isinstance(claims.get("sub"), str):
        raise InvalidToken("not a user token")
    return claims


# --- authorization codes -------------------------------------------------------------------


def mint_code(*, subject: str, client_id: str, study_uids: Iterable[str]) -> str:
    now = int(clock.now())
    return _encode(
        {
            "iss": root_url(),
            "aud": root_url(),
            "sub": subject,
            "azp": client_id,
            "type": CODE_TYPE,
            "study_uids": list(study_uids),
            "nbf": now,
            "exp": now + CODE_LIFETIME_SECONDS,
        },
        _kheops_key(),
    )


def verify_code(code: str, *, client_id: str) -> dict[str, Any]:
    """AuthorizationCodeValidator: signature, iss/aud=ROOT, azp=client_id, type. Not single-use."""
    claims = _decode(code, _kheops_key(), audience=root_url(), issuer=root_url())
    if claims.get("azp") != client_id:
        raise InvalidToken("azp does not match client_id")
    if claims.get("type") != CODE_TYPE:
        raise InvalidToken("not an authorization code")
    study_uids = claims.get("study_uids")
    if not isinstance(claims.get("sub"), str) or not isinstance(study_uids, list):
        raise InvalidToken("missing sub or study_uids")
    return claims


# --- report-provider access tokens ---------------------------------------------------------


def mint_access_token(
    *, subject: str, client_id: str, study_uids: Iterable[str], scope: str = REPORT_PROVIDER_SCOPE
) -> tuple[str, int]:
    """Mint an access token; return it with its lifetime (the `expires_in` to announce)."""
    lifetime = current_faults().token_lifetime_seconds
    now = int(clock.now())
    token = _encode(
        {
            "iss": root_url(),
            "sub": subject,
            "aud": root_url(),
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "azp": client_id,
            "scope": scope,
            "type": ACCESS_TOKEN_TYPE,
            "studyUID": list(study_uids),
        },
        _kheops_key(),
    )
    return token, lifetime


def verify_access_token(token: str) -> dict[str, Any]:
    """ReportProviderAccessToken: signature, iss, aud, type, sub, azp and scope, 60 s leeway."""
    claims = _decode(token, _kheops_key(), audience=root_url(), issuer=root_url())
    if claims.get("type") != ACCESS_TOKEN_TYPE:
        raise InvalidToken("not a report-provider access token")
    for name in ("sub", "azp", "scope"):
        if not isinstance(claims.get(name), str):
            raise InvalidToken(f"missing {name}")
    if not isinstance(claims.get("studyUID"), list):
        raise InvalidToken("missing studyUID")
    return claims


def decode_access_token(token: str) -> dict[str, Any] | None:
    """Claims of a valid, unexpired access token minted here for a live provider, else None.

    For the DICOMweb relay. "Live" means its `azp` is a registered, non-removed provider: a
    removed client_id no longer resolves anywhere in KHEOPS.
    """
    try:
        claims = verify_access_token(token)
    except InvalidToken:
        return None
    if album_for_client(claims["azp"]) is None:
        return None
    return claims


def album_for_client(client_id: str) -> str | None:
    """The album id of a registered, non-removed provider, else None."""
    provider = (
        ReportProvider.objects.filter(client_id=client_id, removed=False)
        .select_related("album")
        .first()
    )
    return provider.album.album_id if provider else None
