"""Re-sealing every stored secret under the current key (`python manage.py reseal`).

After a key change (SEALING_KEY or SECRET_KEY, the old one listed in the fallbacks), or after
an upgrade from the bare SHA-256 derivation, stored values still open with the old key. This
seals them anew under the current one, so that the old key can then leave the fallbacks.
Idempotent; safe while the server runs: a row is replaced only if it still holds what was
read (a launch that moved on meanwhile sealed its new value under the current key anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import models
from django.views.decorators.debug import sensitive_variables

from launcher import keys, sealing, services
from launcher.models import LaunchGrant, SigningKey


@dataclass(frozen=True)
class SealedField:
    label: str  # what the report calls these values
    model: type[models.Model]
    field: str
    purpose: str
    names: str  # the field that names a row in the report (never a secret)


SEALED_FIELDS = [
    SealedField("signing keys", SigningKey, "sealed_private_key", keys.SEALING_PURPOSE, "kid"),
    SealedField(
        "launch codes (grants not yet exchanged)",
        LaunchGrant,
        "sealed_code",
        services._CODE_PURPOSE,
        "launch_id",
    ),
    SealedField(
        "KHEOPS tokens (viewer grants)",
        LaunchGrant,
        "sealed_token",
        services._GRANT_PURPOSE,
        "launch_id",
    ),
]


@dataclass
class Tally:
    sealed: SealedField
    resealed: int = 0
    already_current: int = 0
    # Changed by the running server between our read and our write: sealed anew by it.
    changed_meanwhile: int = 0
    # Names (kid, launch id) of the values no configured key opens.
    unopenable: list[str] = field(default_factory=list)


@sensitive_variables()
def reseal(sealed: SealedField) -> Tally:
    tally = Tally(sealed)
    manager = sealed.model._default_manager
    rows = list(manager.exclude(**{sealed.field: ""}).values_list("pk", sealed.names, sealed.field))
    for pk, name, value in rows:
        try:
            new = sealing.resealed(value, purpose=sealed.purpose)
        except sealing.SealError:
            tally.unopenable.append(name)
            continue
        if new is None:
            tally.already_current += 1
        elif manager.filter(pk=pk, **{sealed.field: value}).update(**{sealed.field: new}):
            tally.resealed += 1
        else:
            tally.changed_meanwhile += 1
    return tally


def reseal_everything() -> list[Tally]:
    tallies = [reseal(sealed) for sealed in SEALED_FIELDS]
    keys.forget_cached_key()
    return tallies
