"""Load test: bursts of simultaneous KHEOPS launches against our app on PostgreSQL.

    make loadtest           # or: .venv/bin/python bench/loadtest.py [--servers asgi,wsgi-2x16]

Each launch is what a clinician's click costs: the KHEOPS UI's form POST at the stand-in
(which fetches our configuration document), our launch URL (its 302 to the viewer), then the
viewer's token request (the code exchange, during which the stand-in fetches our
configuration document twice and our JWKS once, from the server that is waiting for it).

For each server configuration (ours: the README's production command, uvicorn with the ASGI
application; the baseline: the code before async serving, checked out from git, run as its
README's production command ran it: gunicorn gthread 2 x 16), against the same stand-in and
database, on loopback only:

1. bursts of 1, 8, 96 and 500 launches released at once;
2. a KHEOPS that takes 2 s to answer each token request: 200 launches spread over 10 s;
3. groups of 8 simultaneous uses of one launch URL: exactly one may succeed.

It prints a markdown table (failures, latencies, launches/s, peak threads and memory of our
server's workers) and checks, for our server: no failure anywhere, one audit record per
launch with the right outcome, one success per duplicated URL. Exit status 0 when they hold.
Under `make bench` (bench/run.py) the same figures join the benchmark table.

The app's database is a throwaway PostgreSQL database beside DATABASE_URL's (or on
postgres://postgres@127.0.0.1:5432/), dropped afterwards; the stand-in keeps SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as harness
import httpx
import psycopg
from _stack import PreviousRelease, ThrowawayDatabase, token_url, use_postgres_if_available

from devstack import (
    APP_ASGI,
    REPO,
    ServerProcess,
    StackError,
    StandIn,
    app_env,
    free_port,
    gunicorn_command,
    manage_app,
    meta_refresh_url,
    stand_in_env,
    trust_stand_in,
    uvicorn_command,
)

BENCH_DIR = Path(__file__).resolve().parent

BENCHMARK = "load"
RESULTS = BENCH_DIR / "results-load.json"
BURSTS = (1, 8, 96, 500)
SLOW_TOKEN_SECONDS = 2.0
SLOW_LAUNCHES = 200
SLOW_SPREAD_SECONDS = 10.0
DUPLICATE_GROUPS = 5
DUPLICATE_USES = 8
CLIENT_TIMEOUT_SECONDS = 180.0
# static/launcher/launch.js asks for the token again after these pauses (seconds) when the
# answer says it is worth it (KHEOPS slow or away, the server restarting).
VIEWER_RETRY_DELAYS = (1.0, 2.0, 4.0)
# Servers compared: ours (the README's production command); the code before async serving as
# it was run then (the README's production command, and `make run`'s); and today's code
# through its WSGI entry point.
BEFORE = PreviousRelease(
    commit="84513e1", workers=2, threads=16, label="before async serving (84513e1)"
)
SERVERS: dict[str, dict[str, Any]] = {
    "asgi": {"label": "uvicorn, ASGI, 2 workers (production command)", "workers": 2},
    "before-2x16": {
        "label": "before: gunicorn gthread 2 x 16 (its production command)",
        "workers": 2,
        "threads": 16,
        "previous": True,
    },
    "before-2x4": {
        "label": "before: gunicorn gthread 2 x 4 (its make run)",
        "workers": 2,
        "threads": 4,
        "previous": True,
    },
    "wsgi-2x16": {
        "label": "today's WSGI entry point, gunicorn gthread 2 x 16",
        "workers": 2,
        "threads": 16,
    },
}


@dataclass
class Launch:
    error: str = ""
    asked_again: int = 0  # retryable token answers before the last
    report_seconds: float = 0.0
    launch_seconds: float = 0.0
    token_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.report_seconds + self.launch_seconds + self.token_seconds


@dataclass
class Scenario:
    server: str
    name: str
    launches: list[Launch]
    wall_seconds: float
    peak_threads: int = 0
    peak_rss_mb: float = 0.0
    audit_ok: bool = True
    failure_details: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> list[Launch]:
        return [launch for launch in self.launches if launch.error]

    def row(self) -> dict[str, Any]:
        done = [launch for launch in self.launches if not launch.error]
        return {
            "server": self.server,
            "scenario": self.name,
            "launches": len(self.launches),
            "failed": len(self.failures),
            "errors": dict(Counter(launch.error for launch in self.failures)),
            "p50_s": _percentile([launch.total_seconds for launch in done], 50),
            "p99_s": _percentile([launch.total_seconds for launch in done], 99),
            "token_p50_s": _percentile([launch.token_seconds for launch in done], 50),
            "launches_per_s": len(self.launches) / self.wall_seconds if self.wall_seconds else 0.0,
            "asked_again": sum(launch.asked_again for launch in self.launches),
            "peak_threads": self.peak_threads,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "audit_ok": self.audit_ok,
            "failure_details": self.failure_details,
        }


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 3)


# --- the stack: the stand-in, the database, and our app under one server or another ----------


class LoadStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.app_port = free_port()
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        # Another host name than the app's: the launch is a cross-site navigation, as in life.
        self.kheops_url = f"http://localhost:{free_port()}"
        self.secret_key = secrets.token_urlsafe(50)
        # Launches never reach DICOMweb: no Orthanc.
        kheops_env = stand_in_env(
            self.kheops_url, orthanc_url="http://127.0.0.1:9", workdir=workdir
        )
        self.kheops = StandIn(root_url=self.kheops_url, env=kheops_env)
        # One database per version of the code: each migrated by its own migrations.
        self.databases: dict[Path, ThrowawayDatabase] = {}
        self.database = self._database_for(REPO)
        if self.database.vendor != "postgresql":
            self.database.drop()
            raise StackError("the load test needs PostgreSQL (DATABASE_URL or 127.0.0.1:5432)")
        self.album_id = self.kheops.prepare()
        # Like a real KHEOPS, the stand-in has threads to spare: it is not what is measured.
        self.kheops.serve(workdir / "kheops.log", workers=2, threads=128)
        self.kheops.wait_until_up(workers=2)
        self.app: ServerProcess | None = None
        self.http = httpx.Client(trust_env=False, timeout=60)
        self.client_ids: list[str] = []

    def serve(self, server: str, previous_code: Path | None = None) -> None:
        """(Re)start our app under `server` (a key of SERVERS); a previous release's from its
        checked-out code."""
        self.stop_app()
        config = SERVERS[server]
        code = previous_code if config.get("previous") else REPO
        assert code is not None, f"{server} needs the previous release checked out"
        if "threads" in config:
            command = gunicorn_command(
                "kheops_ohif.wsgi",
                port=self.app_port,
                workers=config["workers"],
                threads=config["threads"],
            )
        else:
            command = uvicorn_command(APP_ASGI, port=self.app_port, workers=config["workers"])
        self.database = self._database_for(code)
        self.app = ServerProcess.start(
            "kheops-ohif",
            command,
            url=self.app_url,
            env=self._env_for(code),
            log=self.workdir / f"app-{server}.log",
            cwd=code,
        )
        self.app.wait_until_up("/healthz", workers=config["workers"])
        if not self.client_ids:
            self.client_ids.append(self.register())

    def _env_for(self, code: Path) -> dict[str, str]:
        return app_env(
            self.app_url,
            code=code,
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SECRET_KEY=self.secret_key,
            LOG_LEVEL="WARNING",
            DATABASE_URL=self.databases[code].url,
        )

    def _database_for(self, code: Path) -> ThrowawayDatabase:
        if code not in self.databases:
            self.databases[code] = ThrowawayDatabase.create(
                self.workdir, f"load{len(self.databases)}"
            )
            env = self._env_for(code)
            manage_app("migrate", "--noinput", "--verbosity", "0", env=env, code=code)
            trust_stand_in(self.kheops_url, "KHEOPS stand-in", env=env, code=code)
        return self.databases[code]

    def register(self) -> str:
        response = self.http.post(
            f"{self.kheops_url}/api/albums/{self.album_id}/reportproviders",
            data={"url": f"{self.app_url}/providers/ohif/configuration", "name": "OHIF load"},
            headers={"Authorization": f"Bearer {self.user_token('alice')}"},
        )
        if response.status_code != 201:
            raise StackError(f"registration failed: {response.status_code} {response.text[:300]}")
        return response.json()["client_id"]

    def user_token(self, username: str) -> str:
        response = self.http.post(
            f"{self.kheops_url}/_sandbox/user-token", json={"username": username}
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def set_faults(self, **faults: Any) -> None:
        if faults:
            self.http.post(f"{self.kheops_url}/_sandbox/faults", json=faults).raise_for_status()
        else:
            self.http.delete(f"{self.kheops_url}/_sandbox/faults").raise_for_status()

    def study_uids(self) -> list[str]:
        state = self.http.get(f"{self.kheops_url}/_sandbox/state").json()
        [album] = [album for album in state["albums"] if album["album_id"] == self.album_id]
        return [study["study_uid"] for study in album["studies"]]

    def plan(self, count: int) -> list[tuple[str, str, list[str]]]:
        """(client_id, user token, studies) for `count` launches with distinct codes.

        KHEOPS's codes carry no nonce: the same user, studies and client_id within one second
        give the same code (rightly refused as a replay). Each registration is a new client_id.
        """
        tokens = [self.user_token(user) for user in ("alice", "bob")]
        studies = self.study_uids()[:3]
        orders = [
            list(order) for size in (1, 2, 3) for order in itertools.permutations(studies, size)
        ]
        while len(self.client_ids) * len(tokens) * len(orders) < count:
            self.client_ids.append(self.register())
        combos = itertools.product(self.client_ids, tokens, orders)
        return [
            (client_id, token, order) for client_id, token, order in itertools.islice(combos, count)
        ]

    def audit_outcomes(self) -> Counter[str]:
        with psycopg.connect(self.database.url) as conn:
            rows = conn.execute(
                "SELECT outcome, count(*) FROM launcher_launchrecord GROUP BY outcome"
            ).fetchall()
        return Counter({outcome: count for outcome, count in rows})

    def failure_details(self, since: float) -> dict[str, int]:
        """What the audit trail says of the launches that failed since `since` (time.time())."""
        with psycopg.connect(self.database.url) as conn:
            rows = conn.execute(
                "SELECT outcome || ': ' || failure_detail, count(*) FROM launcher_launchrecord "
                "WHERE created_at >= to_timestamp(%s) AND outcome NOT IN ('success', 'pending') "
                "GROUP BY 1",
                [since],
            ).fetchall()
        return {detail: count for detail, count in rows}

    def worker_pids(self) -> list[int]:
        return self.app.worker_pids() if self.app is not None else []

    def stop_app(self) -> None:
        if self.app is not None:
            self.app.stop()
            self.app = None

    def close(self) -> None:
        self.stop_app()
        self.kheops.stop()
        self.http.close()
        for database in self.databases.values():
            database.drop()


# --- the clicks ---------------------------------------------------------------------------------


async def one_launch(
    stack: LoadStack, client_id: str, user_token: str, studies: list[str]
) -> Launch:
    """One clinician's click, in a browser of its own (its connections, its cookies)."""
    result = Launch()
    phase = "KHEOPS report"
    http = _browser()
    try:
        started = time.monotonic()
        report = await http.post(
            f"{stack.kheops_url}/api/report",
            data={"access_token": user_token, "client_id": client_id, "studyUID": studies,
                  "return_uri": f"{stack.kheops_url}/albums/{stack.album_id}"},
        )  # fmt: skip
        result.report_seconds = time.monotonic() - started
        if report.status_code != 200:
            result.error = f"KHEOPS report {report.status_code}"
            return result
        launch_url = meta_refresh_url(report)
        started, phase = time.monotonic(), "launch"
        launch = await http.get(launch_url)
        result.launch_seconds = time.monotonic() - started
        if launch.status_code != 302 or "/viewer?" not in launch.headers.get("Location", ""):
            result.error = f"launch {launch.status_code}"
            return result
        started, phase = time.monotonic(), "token"
        # With the browser's grant cookie (the client's jar: it is scoped to this launch's path),
        # asked again after a retryable answer, as the viewer's launch.js does.
        for pause in (*VIEWER_RETRY_DELAYS, None):
            token = await http.get(token_url(launch_url, launch.headers["Location"]))
            if token.status_code == 200 or pause is None or not token.json().get("retryable"):
                break
            result.asked_again += 1
            await asyncio.sleep(pause)
        result.token_seconds = time.monotonic() - started
        if token.status_code != 200 or not token.json().get("authorization", "").startswith(
            "Bearer "
        ):
            result.error = f"token {token.status_code}"
    except Exception as exc:  # every failure is counted, none stops the run
        result.error = f"{phase} {type(exc).__name__}"
    finally:
        await http.aclose()
    return result


def _browser() -> httpx.AsyncClient:
    # One per simulated browser: a pool shared by hundreds of them would reuse connections
    # that sat idle past the server's keep-alive timeout (a race real browsers retry).
    # Plain http on loopback: no TLS settings to load for each of them.
    return httpx.AsyncClient(trust_env=False, timeout=CLIENT_TIMEOUT_SECONDS, verify=False)  # noqa: S501


async def burst(
    stack: LoadStack, plan: list[tuple[str, str, list[str]]]
) -> tuple[list[Launch], float]:
    started = time.monotonic()
    launches = await asyncio.gather(*(one_launch(stack, *item) for item in plan))
    return list(launches), time.monotonic() - started


async def spread(
    stack: LoadStack, plan: list[tuple[str, str, list[str]]], seconds: float
) -> tuple[list[Launch], float]:
    started = time.monotonic()
    gap = seconds / len(plan)

    async def later(index: int, item: tuple[str, str, list[str]]) -> Launch:
        await asyncio.sleep(index * gap)
        return await one_launch(stack, *item)

    launches = await asyncio.gather(*(later(n, item) for n, item in enumerate(plan)))
    return list(launches), time.monotonic() - started


async def duplicates(stack: LoadStack, groups: int, uses: int) -> list[list[int]]:
    """Groups of simultaneous uses of one launch URL each; the statuses of each group."""
    token = stack.user_token("alice")
    client_id = stack.register()  # its own client_id: codes unlike the bursts'
    studies = stack.study_uids()[:3]
    orders = [list(o) for n in (1, 2, 3) for o in itertools.permutations(studies, n)]
    statuses = []
    for order in orders[:groups]:
        async with _browser() as kheops_ui:
            report = await kheops_ui.post(
                f"{stack.kheops_url}/api/report",
                data={"access_token": token, "client_id": client_id, "studyUID": order,
                      "return_uri": f"{stack.kheops_url}/albums/{stack.album_id}"},
            )  # fmt: skip
        url = meta_refresh_url(report)

        async def use(url: str = url) -> int:
            async with _browser() as http:  # each use in a browser of its own
                launch = await http.get(url)
                if launch.status_code != 302:
                    return launch.status_code
                return (await http.get(token_url(url, launch.headers["Location"]))).status_code

        statuses.append(sorted(await asyncio.gather(*(use() for _ in range(uses)))))
    return statuses


@contextmanager
def watching(stack: LoadStack, scenario: Scenario) -> Iterator[None]:
    """Sample the peak thread count and memory of our server's workers meanwhile."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            threads, rss = 0, 0.0
            for pid in stack.worker_pids():
                status = _proc_status(pid)
                threads += int(status.get("Threads", "0"))
                rss = max(rss, int(status.get("VmRSS", "0 kB").split()[0]) / 1024)
            scenario.peak_threads = max(scenario.peak_threads, threads)
            scenario.peak_rss_mb = max(scenario.peak_rss_mb, rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()


def _proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def run_server(
    stack: LoadStack, server: str, bursts: tuple[int, ...], slow: int, previous_code: Path | None
) -> tuple[list[Scenario], list[list[int]]]:
    stack.serve(server, previous_code)
    scenarios = []
    for size in bursts:
        plan = stack.plan(size)
        before = stack.audit_outcomes()
        time.sleep(1.1)  # codes are second-precision: a new second, new codes
        scenario = Scenario(server, f"burst of {size}", [], 0.0)
        since = time.time()
        with watching(stack, scenario):
            scenario.launches, scenario.wall_seconds = asyncio.run(burst(stack, plan))
        scenario.audit_ok = _audit_grew(stack, before, scenario)
        scenario.failure_details = stack.failure_details(since)
        scenarios.append(scenario)
        print(
            f"  {server}: {scenario.name}: {len(scenario.failures)} failed of {size}",
            file=sys.stderr,
            flush=True,
        )
    if slow:
        stack.set_faults(token_delay_seconds=SLOW_TOKEN_SECONDS)
        try:
            plan = stack.plan(slow)
            before = stack.audit_outcomes()
            time.sleep(1.1)
            scenario = Scenario(
                server,
                f"KHEOPS {SLOW_TOKEN_SECONDS:g} s per token, {slow} over {SLOW_SPREAD_SECONDS:g} s",
                [],
                0.0,
            )
            since = time.time()
            with watching(stack, scenario):
                scenario.launches, scenario.wall_seconds = asyncio.run(
                    spread(stack, plan, SLOW_SPREAD_SECONDS)
                )
            scenario.audit_ok = _audit_grew(stack, before, scenario)
            scenario.failure_details = stack.failure_details(since)
            scenarios.append(scenario)
            print(
                f"  {server}: {scenario.name}: {len(scenario.failures)} failed",
                file=sys.stderr,
                flush=True,
            )
        finally:
            stack.set_faults()
    groups = asyncio.run(duplicates(stack, DUPLICATE_GROUPS, DUPLICATE_USES))
    return scenarios, groups


def _audit_grew(stack: LoadStack, before: Counter[str], scenario: Scenario) -> bool:
    """One audit record per launch: a success for each that got its token."""
    grown = stack.audit_outcomes() - before
    succeeded = len(scenario.launches) - len(scenario.failures)
    return grown["success"] == succeeded and sum(grown.values()) >= len(scenario.launches) - sum(
        1 for launch in scenario.failures if launch.error.startswith("KHEOPS report")
    )


def measure_all(servers: list[str], bursts: tuple[int, ...], slow: int) -> dict[str, Any]:
    use_postgres_if_available()
    workdir = Path(tempfile.mkdtemp(prefix="kheops-ohif-load-"))
    stack = LoadStack(workdir)
    scenarios: list[Scenario] = []
    groups: dict[str, list[list[int]]] = {}
    try:
        with contextlib.ExitStack() as cleanup:
            previous_code = None
            if any(SERVERS[server].get("previous") for server in servers):
                previous_code = cleanup.enter_context(BEFORE.checked_out())
            for server in servers:
                found, groups[server] = run_server(stack, server, bursts, slow, previous_code)
                scenarios += found
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"scenarios": scenarios, "duplicates": groups}


def table(scenarios: list[Scenario]) -> str:
    lines = [
        "| server | scenario | failed | click to token p50 / p99 | token request p50 | token asked again | launches/s | peak threads | peak RSS/worker |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario in scenarios:
        row = scenario.row()
        errors = ", ".join(f"{kind}: {n}" for kind, n in row["errors"].items())
        lines.append(
            f"| {SERVERS[row['server']]['label']} | {row['scenario']} | {row['failed']} of {row['launches']}"
            f"{f' ({errors})' if errors else ''} | {row['p50_s']:.2f} s / {row['p99_s']:.2f} s"
            f" | {row['token_p50_s']:.2f} s | {row['asked_again']} | {row['launches_per_s']:.1f} | {row['peak_threads']}"
            f" | {row['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def checks(measured: dict[str, Any]) -> dict[str, bool]:
    ours = [scenario for scenario in measured["scenarios"] if scenario.server == "asgi"]
    groups = measured["duplicates"].get("asgi", [])
    return {
        "our server: no failed launch in any scenario": bool(ours)
        and not any(s.failures for s in ours),
        "our server: one audit record per launch, right outcome": all(s.audit_ok for s in ours),
        "our server: exactly one success per duplicated launch URL": bool(groups)
        and all(statuses == [200] + [409] * (DUPLICATE_USES - 1) for statuses in groups),
    }


def measure() -> list[harness.Result]:
    """For bench/run.py: our server and the WSGI baseline the README showed before."""
    measured = measure_all(["asgi", "before-2x16"], BURSTS, SLOW_LAUNCHES)
    results = []
    for scenario in measured["scenarios"]:
        row = scenario.row()
        label = SERVERS[scenario.server]["label"]
        target = " (target 0)" if scenario.server == "asgi" else ""
        results.append(
            harness.Result(
                BENCHMARK,
                f"failed launches, {row['scenario']}, {label}",
                "launches",
                [row["failed"]],
                notes=f"of {row['launches']}{target}"
                + "".join(f", {kind}: {n}" for kind, n in row["errors"].items())
                + f"; token asked again {row['asked_again']} times"
                + f"; click to token p50 {row['p50_s']:.2f} s, "
                f"p99 {row['p99_s']:.2f} s; {row['launches_per_s']:.1f} launches/s; "
                f"peak threads {row['peak_threads']}, RSS {row['peak_rss_mb']:.0f} MB/worker",
            )
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        default="asgi,before-2x16",
        help=f"from {', '.join(SERVERS)} (asgi,before-2x16)",
    )
    parser.add_argument(
        "--bursts", default=",".join(map(str, BURSTS)), help="burst sizes (1,8,96,500)"
    )
    parser.add_argument(
        "--slow",
        type=int,
        default=SLOW_LAUNCHES,
        help="launches against a slow KHEOPS (200; 0: none)",
    )
    parser.add_argument("--json", type=Path, help="write harness results here (for bench/run.py)")
    options = parser.parse_args()
    if options.json:
        options.json.write_text(json.dumps([result.as_json() for result in measure()]))
        return 0
    servers = [name.strip() for name in options.servers.split(",") if name.strip()]
    bursts = tuple(int(size) for size in options.bursts.split(","))
    if (
        set(servers) - set(SERVERS)
        or not all(1 <= size <= 1000 for size in bursts)
        or not 0 <= options.slow <= 1000
    ):
        parser.error(
            "bounded on purpose: known servers, bursts of 1-1000, at most 1000 slow launches"
        )
    measured = measure_all(servers, bursts, options.slow)
    print(table(measured["scenarios"]))
    for scenario in measured["scenarios"]:
        if scenario.failure_details:
            print(
                f"  {scenario.server}, {scenario.name}: the audit trail says {scenario.failure_details}"
            )
    print(
        f"\n{os.cpu_count()} CPUs; PostgreSQL; the stand-in under gunicorn 2 x 128 threads; loopback"
    )
    verdicts = checks(measured)
    RESULTS.write_text(
        json.dumps(
            {
                "scenarios": [scenario.row() for scenario in measured["scenarios"]],
                "duplicates": measured["duplicates"],
                "checks": verdicts,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
        + "\n"
    )
    for name, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
