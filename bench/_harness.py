"""What every benchmark module shares: timing, summary statistics, the hand-off to run.py.

A benchmark module measures when run as a script and ends with `harness.main(NAME, measure)`;
`measure()` returns `Result`s. run.py starts each module in its own process (its own Django
settings and throwaway database) with `--json PATH` and collects what it writes there.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def parse_server_timing(header: str) -> dict[str, float]:
    """Our Server-Timing header, `token;dur=12.5, app;dur=3.1` → {"token": 12.5, "app": 3.1}
    (milliseconds): `app` is our own processing, every other entry a KHEOPS round trip."""
    phases: dict[str, float] = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        duration = re.search(r"dur=([0-9.]+)", params)
        if name and duration:
            phases[name] = phases.get(name, 0.0) + float(duration.group(1))
    return phases


@dataclass(frozen=True)
class Result:
    benchmark: str
    name: str
    unit: str
    samples: list[float] = field(repr=False)
    notes: str = ""

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.samples)
        deciles = statistics.quantiles(ordered, n=10) if len(ordered) > 1 else ordered * 9
        return {
            "n": len(ordered),
            "median": statistics.median(ordered),
            "p10": deciles[0],
            "p90": deciles[-1],
            "min": ordered[0],
            "max": ordered[-1],
            "stdev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        }

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), **self.summary()}


def time_ms(action: Callable[[], object], *, repeat: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of `repeat` calls of `action`, after `warmup` untimed calls."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main(benchmark: str, measure: Callable[[], list[Result]]) -> None:
    parser = argparse.ArgumentParser(description=f"benchmark {benchmark}")
    parser.add_argument("--json", type=Path, help="write the results here (for bench/run.py)")
    args = parser.parse_args()
    results = measure()
    if args.json:
        args.json.write_text(json.dumps([result.as_json() for result in results]))
    else:
        for result in results:
            print(result.name, {k: round(v, 2) for k, v in result.summary().items()}, result.notes)
