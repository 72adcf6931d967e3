"""Faults a test can inject into the stand-in, kept in the database so every process agrees.

Each knob has a neutral default; `POST /_sandbox/faults` merges the knobs it names into the
current set, `DELETE /_sandbox/faults` puts them all back to neutral.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sandbox.models import SandboxState


@dataclass(frozen=True)
class Faults:
    token_delay_seconds: float = 0.0  # sleep before answering POST /api/token
    token_status: int = 0  # answer POST /api/token with this status instead (0: off)
    token_garbage: bool = False  # answer POST /api/token 200 with a body that is not JSON
    discovery_down: bool = False  # the discovery document answers 503
    discovery_garbage: bool = False  # the discovery document answers 200 with broken JSON
    userinfo_status: int = 0  # answer GET /api/userinfo with this status instead (0: off)
    token_lifetime_seconds: int = 3600  # lifetime (and expires_in) of new access tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultError(ValueError):
    """A fault setting that is unknown or of the wrong type."""


def _field_types() -> dict[str, str]:
    return {field.name: str(field.type) for field in fields(Faults)}


def _coerce(name: str, value: Any) -> Any:
    kind = _field_types()[name]
    if kind == "bool":
        if not isinstance(value, bool):
            raise FaultError(f"{name} must be a boolean")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaultError(f"{name} must be a number")
    if kind == "int":
        if int(value) != value:
            raise FaultError(f"{name} must be an integer")
        value = int(value)
    if value < 0:
        raise FaultError(f"{name} must not be negative")
    if name.endswith("_status") and value and not 100 <= value <= 599:
        raise FaultError(f"{name} must be an HTTP status (100-599) or 0")
    if name == "token_delay_seconds" and value > 120:
        raise FaultError("token_delay_seconds must be at most 120")
    return float(value) if kind == "float" else value


def current_faults() -> Faults:
    stored = SandboxState.load().faults or {}
    known = {name: value for name, value in stored.items() if name in _field_types()}
    return Faults(**known)


def update_faults(changes: dict[str, Any]) -> Faults:
    unknown = sorted(set(changes) - set(_field_types()))
    if unknown:
        raise FaultError(f"unknown fault(s): {', '.join(unknown)}")
    merged = current_faults().as_dict()
    merged.update({name: _coerce(name, value) for name, value in changes.items()})
    state = SandboxState.load()
    state.faults = merged
    state.save(update_fields=["faults"])
    return Faults(**merged)


def reset_faults() -> Faults:
    state = SandboxState.load()
    state.faults = {}
    state.save(update_fields=["faults"])
    return Faults()
