"""Encrypting secrets we must keep at rest (signing keys, the per-launch KHEOPS token).

Sealed values are Fernet tokens under a key derived from SECRET_KEY, so a database dump or
a session row does not reveal them. SECRET_KEY_FALLBACKS keep older values readable
during a SECRET_KEY rotation.
"""

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SealError(Exception):
    """A sealed value could not be opened (tampered, or sealed under an unknown key)."""


def _fernet(purpose: str) -> MultiFernet:
    return _fernet_for(purpose, (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS))


@lru_cache(maxsize=32)
def _fernet_for(purpose: str, secrets: tuple[str, ...]) -> MultiFernet:
    keys = [
        base64.urlsafe_b64encode(
            hashlib.sha256(f"kheops-ohif:{purpose}:{secret}".encode()).digest()
        )
        for secret in secrets
    ]
    return MultiFernet([Fernet(key) for key in keys])


def seal(value: str, *, purpose: str) -> str:
    return _fernet(purpose).encrypt(value.encode()).decode()


def unseal(sealed: str, *, purpose: str) -> str:
    try:
        return _fernet(purpose).decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError):
        raise SealError(f"cannot open a sealed {purpose} value") from None
