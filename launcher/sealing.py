"""Encrypting secrets we must keep at rest (signing keys, launch codes, KHEOPS tokens).

A sealed value is a Fernet token (AES-CBC and HMAC-SHA256, authenticated) under a key derived
with HKDF-SHA256 from the key-encryption key, the purpose in HKDF's `info`: the key that
seals launch codes opens no signing key. The key-encryption key is SEALING_KEY, or
SECRET_KEY when SEALING_KEY is unset, so a database dump or a backup reveals nothing.

Values are always sealed under the current key-encryption key, and opened with any of:

1. the current one (SEALING_KEY, else SECRET_KEY);
2. SEALING_KEY_FALLBACKS, then SECRET_KEY and SECRET_KEY_FALLBACKS (values sealed before
   SEALING_KEY was set, or before a key change);
3. the derivation of earlier versions (a bare SHA-256 of the purpose and SECRET_KEY or one of
   its fallbacks), so that an upgrade opens what it finds.

`python manage.py reseal` re-seals every stored value under the current key (launcher.resealing);
after it, older keys can be dropped from the fallbacks.
"""

import base64
import hashlib
from dataclasses import dataclass
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

# Fixed, public and ours: HKDF's salt separates our keys from any other use of the same
# secret; the purpose (in `info`) separates our keys from one another.
_SALT = b"kheops-ohif sealing"
RESTORE_ADVICE = (
    "put the key it was sealed under back in SEALING_KEY_FALLBACKS (or SECRET_KEY_FALLBACKS) "
    "and run manage.py reseal, or restore the old key"
)


class SealError(Exception):
    """A sealed value could not be opened (tampered, or sealed under a key we no longer have)."""


@dataclass(frozen=True)
class _Keys:
    current: Fernet  # seals
    readable: MultiFernet  # opens: the current key first


@sensitive_variables()
def _keys(purpose: str) -> _Keys:
    current = settings.SEALING_KEY or settings.SECRET_KEY
    readable = (
        current,
        *settings.SEALING_KEY_FALLBACKS,
        settings.SECRET_KEY,
        *settings.SECRET_KEY_FALLBACKS,
    )
    legacy = (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS)
    return _keys_for(purpose, tuple(dict.fromkeys(k for k in readable if k)), legacy)


@lru_cache(maxsize=32)
@sensitive_variables()
def _keys_for(purpose: str, secrets: tuple[str, ...], legacy: tuple[str, ...]) -> _Keys:
    fernets = [Fernet(derived_key(secret, purpose)) for secret in secrets]
    fernets += [Fernet(legacy_key(secret, purpose)) for secret in legacy]
    return _Keys(current=fernets[0], readable=MultiFernet(fernets))


@sensitive_variables()
def derived_key(secret: str, purpose: str) -> bytes:
    """The Fernet key for `purpose` under the key-encryption key `secret`."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=_SALT,
        info=f"kheops-ohif/{purpose}/v2".encode(),
    )
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))


@sensitive_variables()
def legacy_key(secret: str, purpose: str) -> bytes:
    """The key earlier versions derived (read only: nothing is sealed under it any more)."""
    return base64.urlsafe_b64encode(
        hashlib.sha256(f"kheops-ohif:{purpose}:{secret}".encode()).digest()
    )


@sensitive_variables()
def seal(value: str, *, purpose: str) -> str:
    return _keys(purpose).current.encrypt(value.encode()).decode()


@sensitive_variables()
def unseal(sealed: str, *, purpose: str) -> str:
    try:
        return _keys(purpose).readable.decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError):
        raise SealError(
            f"a sealed {purpose} value cannot be opened with any configured key: {RESTORE_ADVICE}"
        ) from None


@sensitive_variables()
def is_current(sealed: str, *, purpose: str) -> bool:
    """Whether `sealed` is sealed under the current key (re-sealing it would change nothing)."""
    try:
        _keys(purpose).current.decrypt(sealed.encode())
    except (InvalidToken, ValueError):
        return False
    return True


@sensitive_variables()
def resealed(sealed: str, *, purpose: str) -> str | None:
    """`sealed` sealed anew under the current key; None when it already is.

    Raises SealError when no configured key opens it.
    """
    if is_current(sealed, purpose=purpose):
        return None
    return seal(unseal(sealed, purpose=purpose), purpose=purpose)
