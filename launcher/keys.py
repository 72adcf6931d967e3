"""Our RSA signing keys: created on first use, published in the JWKS, rotated on demand.

KHEOPS gives every album registration its own client_id, which we only learn at launch:
one key pair signs the assertions of all of them.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from jwt.algorithms import RSAAlgorithm

from launcher import sealing
from launcher.models import SigningKey

SEALING_PURPOSE = "signing-key"
# KHEOPS accepts assertions expiring at most 600 s ahead (no leeway on that bound); a short
# life limits what a leaked assertion is worth.
ASSERTION_LIFETIME_SECONDS = 60
# A new key signs only once it has been published this long: KHEOPS may read our JWKS from a
# proxy's cache (Cache-Control max-age 60 s) or from a server process whose prepared
# documents are a few seconds old (launcher.serving). Until then the previous key, still
# published, goes on signing.
PUBLISH_BEFORE_SIGNING_SECONDS = 90


@dataclass(frozen=True)
class ActiveKey:
    kid: str
    private_key: rsa.RSAPrivateKey


_cache_lock = threading.Lock()
_cached: tuple[float, ActiveKey] | None = None
# How long a process keeps using the key it loaded before it looks for a newer one.
_CACHE_SECONDS = 30.0


@sensitive_variables()
def _generate() -> SigningKey:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = secrets.token_urlsafe(12)
    numbers = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    # Exactly the members KHEOPS's JWKS client reads (docs/kheops-protocol.md, section 1).
    public_jwk = {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": numbers["n"],
        "e": numbers["e"],
    }
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return SigningKey(
        kid=kid,
        public_jwk=public_jwk,
        sealed_private_key=sealing.seal(pem, purpose=SEALING_PURPOSE),
    )


def active_signing_key() -> SigningKey:
    """The active key row, created on first use (race-safe across processes)."""
    key = SigningKey.objects.filter(active=True).first()
    if key is not None:
        return key
    candidate = _generate()
    try:
        with transaction.atomic():
            candidate.save()
        return candidate
    except IntegrityError:
        # Another process created it first: one active key is enforced by a constraint.
        return SigningKey.objects.get(active=True)


def rotate(*, grace: timedelta) -> tuple[SigningKey, SigningKey | None]:
    """Make a new active key; the previous one stays published for `grace`."""
    with transaction.atomic():
        previous = SigningKey.objects.select_for_update().filter(active=True).first()
        if previous is not None:
            previous.active = False
            previous.retired_at = timezone.now() + grace
            previous.save(update_fields=["active", "retired_at"])
        new = _generate()
        new.save()
    forget_cached_key()
    return new, previous


def purge_retired(*, now: datetime | None = None) -> list[SigningKey]:
    """Destroy the private half of the retired keys whose grace period is over.

    Nothing signs with them any more, nor verifies with them (they have left the JWKS). The
    row stays, without its private key: the admin keeps the record of which kid was ours
    and when it was retired.
    """
    with transaction.atomic():
        expired = list(
            SigningKey.objects.select_for_update()
            .filter(active=False, retired_at__lte=now or timezone.now())
            .exclude(sealed_private_key="")
        )
        SigningKey.objects.filter(pk__in=[key.pk for key in expired]).update(sealed_private_key="")
    return expired


def published_keys() -> list[dict]:
    """The JWKS `keys`: the active key and retired keys still within their grace period."""
    return [key.public_jwk for key in _published_rows()]


def _published_rows() -> list[SigningKey]:
    published = SigningKey.objects.filter(active=True) | SigningKey.objects.filter(
        active=False, retired_at__gt=timezone.now()
    )
    keys = list(published.order_by("-created_at"))
    if not any(key.active for key in keys):
        active_signing_key()
        keys = list(published.order_by("-created_at"))
    return keys


def forget_cached_key() -> None:
    global _cached
    with _cache_lock:
        _cached = None


def _signing_key_row(now: float) -> SigningKey:
    """The newest published key that has been published long enough; the oldest published
    one while none has (right after the very first key was made)."""
    published = sorted(_published_rows(), key=lambda key: key.created_at, reverse=True)
    for key in published:
        if key.created_at.timestamp() <= now - PUBLISH_BEFORE_SIGNING_SECONDS:
            return key
    return published[-1]


@sensitive_variables()
def _loaded_signing_key(now: float) -> ActiveKey:
    global _cached
    started = time.monotonic()
    with _cache_lock:
        if _cached is not None and started - _cached[0] < _CACHE_SECONDS:
            return _cached[1]
    row = _signing_key_row(now)
    pem = sealing.unseal(row.sealed_private_key, purpose=SEALING_PURPOSE)
    private_key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    loaded = ActiveKey(kid=row.kid, private_key=private_key)
    with _cache_lock:
        _cached = (started, loaded)
    return loaded


@sensitive_variables()
def client_assertion(*, client_id: str, audience: str, now: float | None = None) -> str:
    """An RS256 private_key_jwt assertion for KHEOPS's token endpoint."""
    issued = int(now if now is not None else time.time())
    key = _loaded_signing_key(issued)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": uuid.uuid4().hex,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
    }
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


# A retired key must outlive the time its successor waits before signing, a process's key
# cache, and the assertions it signed meanwhile.
MINIMUM_GRACE_SECONDS = (
    PUBLISH_BEFORE_SIGNING_SECONDS + int(_CACHE_SECONDS) + ASSERTION_LIFETIME_SECONDS
)


def grace_period() -> timedelta:
    return timedelta(seconds=settings.SIGNING_KEY_GRACE_SECONDS)
