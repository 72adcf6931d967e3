"""Run the benchmarks and report them: a markdown table on stdout, JSON in bench/results.json.

    bench/run.py              # every benchmark module in bench/
    bench/run.py audit_api    # only these

A benchmark is a `bench/<name>.py` that imports `_harness` and ends with `_harness.main(...)`
(see `_harness.py`); other scripts in bench/ are left alone. Each benchmark runs in its own
process, so each gets its own settings and throwaway database.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_FILE = BENCH_DIR / "results.json"


def available() -> list[str]:
    return sorted(
        path.stem
        for path in BENCH_DIR.glob("*.py")
        if not path.stem.startswith("_") and path.stem != "run" and _uses_harness(path)
    )


def _uses_harness(path: Path) -> bool:
    # Other tools live in bench/ too (loadtest.py has its own make target and options).
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name == "_harness" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "_harness":
            return True
    return False


def run_one(name: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        out = Path(tmp) / "results.json"
        started = time.monotonic()
        subprocess.run(
            [sys.executable, str(BENCH_DIR / f"{name}.py"), "--json", str(out)],
            check=True,
            cwd=BENCH_DIR.parent,
        )
        print(f"{name}: done in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return json.loads(out.read_text())


def _number(value: float) -> str:
    # Two decimals below 10: a ratio of 1.12 against a target of 1.10 must not read "1.1".
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _target(result: dict[str, Any]) -> str:
    """`≤ X ✅` or `≤ X ❌` for a result with a `target`, which its median must not exceed."""
    if result.get("target") is None:
        return ""
    met = result.get("target_met", result["median"] <= result["target"])
    return f"≤ {_number(result['target'])} {'✅' if met else '❌'}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | measurement | n | median | p10 | p90 | min | max | unit | target | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|---|---|",
    ]
    for r in results:
        numbers = " | ".join(_number(r[key]) for key in ("median", "p10", "p90", "min", "max"))
        lines.append(
            f"| {r['benchmark']} | {r['name']} | {r['n']} | {numbers} | {r['unit']} | {_target(r)} | {r['notes']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {available()})"
    )
    args = parser.parse_args()
    unknown = set(args.names) - set(available())
    if unknown:
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    results: list[dict[str, Any]] = []
    for name in args.names or available():
        results += run_one(name)
    print(markdown(results))
    RESULTS_FILE.write_text(
        json.dumps(
            {
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "database": "postgresql"
                if os.environ.get("DATABASE_URL", "").startswith("postgres")
                else "sqlite",
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\n(written to {RESULTS_FILE.relative_to(BENCH_DIR.parent)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
