"""The stand-in's adjustable clock.

Every time the stand-in mints or checks a code or token it asks `now()`, which is real time
plus an offset kept in the database, so tests can make codes and tokens expire without waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sandbox.models import SandboxState

CLOCK_MODES = ("elapsed", "skew")


@dataclass(frozen=True)
class ClockSetting:
    offset_seconds: float
    mode: str


def setting() -> ClockSetting:
    state = SandboxState.load()
    return ClockSetting(offset_seconds=state.clock_offset_seconds, mode=state.clock_mode)


def now() -> float:
    """The stand-in's notion of the current time, in Unix seconds."""
    return time.time() + setting().offset_seconds


def assertion_now() -> float:
    """The time against which a provider's client assertion is judged.

    In "elapsed" mode the offset models time passing for KHEOPS and the provider alike; since
    the provider signs with its own (real) clock, its assertions are judged against real time.
    In "skew" mode only the stand-in's clock is off, so the assertion sees the offset too.
    """
    current = setting()
    if current.mode == "skew":
        return time.time() + current.offset_seconds
    return time.time()


def set_clock(*, offset_seconds: float, mode: str = "elapsed") -> ClockSetting:
    if mode not in CLOCK_MODES:
        raise ValueError(f"mode must be one of {', '.join(CLOCK_MODES)}")
    state = SandboxState.load()
    state.clock_offset_seconds = float(offset_seconds)
    state.clock_mode = mode
    state.save(update_fields=["clock_offset_seconds", "clock_mode"])
    return setting()


def reset_clock() -> ClockSetting:
    return set_clock(offset_seconds=0.0, mode="elapsed")
