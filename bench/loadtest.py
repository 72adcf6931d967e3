"""Load test: concurrent KHEOPS launches against our app under gunicorn on PostgreSQL.

    make loadtest                       # or: .venv/bin/python bench/loadtest.py [--launches N]

What it does, on loopback only, bounded in counts and time, and cleaning up after itself:

1. creates a fresh PostgreSQL database `kheops_ohif_load` on postgres://postgres@127.0.0.1:5432/
   for our app and migrates it (the stand-in keeps SQLite in a temporary directory: it only
   reads during launches, and PostgreSQL's 100 connections are for the app under test);
2. starts the KHEOPS stand-in (sandbox/) and our app under gunicorn with threads (our app
   twice: one gunicorn for the documents KHEOPS fetches, one for the launches; see start());
3. trusts the stand-in and registers our provider in its demo album (several times: each
   registration is a new client_id, so that every launch gets a distinct code — KHEOPS's
   codes carry no nonce: the same user, studies and client in the same second give the same
   code);
4. fires N concurrent launches (threads released together): each POSTs /api/report at the
   stand-in with a user token, reads the meta refresh, GETs our launch URL, expecting our 302
   to the viewer, then GETs the viewer's token URL as its page does (the code exchange),
   expecting the token;
5. fires groups of concurrent uses of one same launch URL: exactly one may succeed (and get
   its token);
6. checks 0 errors, one audit record per launch with the right outcome, and prints
   launches, errors, p50/p95/p99 latency and launches/s (also written to
   bench/results-load.json, git-ignored).

Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "sandbox"))

from _stack import token_url  # noqa: E402
from sandbox_harness import SandboxServer, TimeoutSession, _server_env, free_port, meta_refresh_url  # noqa: E402

POSTGRES = "postgres://postgres@127.0.0.1:5432"
APP_DB = "kheops_ohif_load"
RESULTS = REPO / "bench" / "results-load.json"
# Long enough never to be what fails under load on a small machine: this measures capacity.
UPSTREAM_TIMEOUT_SECONDS = "30"
RUN_DEADLINE_SECONDS = 600


def recreate_database(name: str) -> None:
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(args: list[str], env: dict[str, str]) -> None:
    completed = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{completed.stdout}\n{completed.stderr}")


def gunicorn(app: str, port: int, *, env: dict[str, str], workers: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", app,
            "--bind", f"127.0.0.1:{port}",
            "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads),
            "--backlog", "2048", "--timeout", "120", "--graceful-timeout", "5",
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Launch:
    status: int | None = None
    error: str = ""
    report_seconds: float = 0.0
    launch_seconds: float = 0.0
    token_seconds: float = 0.0


@dataclass
class Run:
    launches: list[Launch] = field(default_factory=list)
    wall_seconds: float = 0.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class LoadTest:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.workdir = Path(tempfile.mkdtemp(prefix="kheops-ohif-load-"))
        self.app_port, self.launch_port, self.sandbox_port = free_port(), free_port(), free_port()
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        # The same app, a second gunicorn for the launches themselves (see run_launches_apart).
        self.launch_url_base = f"http://127.0.0.1:{self.launch_port}"
        # Another host name than the app's: the launch is a cross-site navigation, as in life.
        self.sandbox_url = f"http://localhost:{self.sandbox_port}"
        self.app: subprocess.Popen[bytes] | None = None
        self.launcher: subprocess.Popen[bytes] | None = None
        self.sandbox_process: subprocess.Popen[bytes] | None = None
        base = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "SANDBOX_", "DATABASE_", "PUBLIC_", "ALLOWED_"))
            and k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        }
        base.setdefault("SECRET_KEY_FILE", str(REPO / "var" / "secret_key"))
        self.app_env = {
            **base,
            "DJANGO_SETTINGS_MODULE": "kheops_ohif.settings",
            "DATABASE_URL": f"{POSTGRES}/{APP_DB}",
            # Connections are opened per request: many threads, few database connections.
            "DATABASE_CONN_MAX_AGE": "0",
            "PUBLIC_BASE_URL": self.app_url,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "KHEOPS_HTTP_TIMEOUT": UPSTREAM_TIMEOUT_SECONDS,
            "LOG_LEVEL": "WARNING",
        }
        self.sandbox_env = _server_env(
            self.workdir,
            self.sandbox_port,
            {
                "SANDBOX_ROOT_URL": self.sandbox_url,
                "SANDBOX_ALLOWED_HOSTS": "localhost,127.0.0.1",
                "SANDBOX_PROVIDER_TIMEOUT_SECONDS": UPSTREAM_TIMEOUT_SECONDS,
                "SANDBOX_ORTHANC_URL": "http://127.0.0.1:9",  # launches never reach DICOMweb
            },
        )
        self.sandbox = SandboxServer(root_url=self.sandbox_url, env=self.sandbox_env, workdir=self.workdir)

    # --- set-up -------------------------------------------------------------------------

    def start(self) -> None:
        recreate_database(APP_DB)
        run(["manage.py", "migrate", "--noinput", "--verbosity", "0"], self.app_env)
        run(["-m", "django", "migrate", "--noinput", "--verbosity", "0"], self.sandbox_env)
        run(["-m", "django", "sandbox_seed"], self.sandbox_env)
        threads = self.options.server_threads
        self.sandbox_process = gunicorn(
            "sandbox.wsgi", self.sandbox_port, env=self.sandbox_env, workers=2, threads=128,
            log=self.workdir / "sandbox.log",
        )
        # KHEOPS fetches our configuration document and JWKS *during* each token exchange:
        # with one pool of threads, a burst of launches larger than the pool holds every
        # thread while the fetches they wait for queue behind them, until KHEOPS gives up.
        # So the documents get their own small gunicorn (in production: a proxy that caches
        # them, they are `Cache-Control: public, max-age=60`), the launches the other one.
        # Threads stay under PostgreSQL's 100 connections (CONN_MAX_AGE=0: one per thread).
        self.app = gunicorn(
            "kheops_ohif.wsgi", self.app_port, env=self.app_env, workers=1, threads=16,
            log=self.workdir / "documents.log",
        )
        self.launcher = gunicorn(
            "kheops_ohif.wsgi", self.launch_port, env=self.app_env, workers=2, threads=threads,
            log=self.workdir / "app.log",
        )
        wait_until_up(self.sandbox.api("/.well-known/report-provider-configuration"), self.sandbox_process, self.workdir / "sandbox.log")
        wait_until_up(f"{self.app_url}/healthz", self.app, self.workdir / "documents.log")
        wait_until_up(f"{self.launch_url_base}/healthz", self.launcher, self.workdir / "app.log")
        run(["manage.py", "trust_kheops", self.sandbox_url, "--name", "KHEOPS stand-in"], self.app_env)
        state = self.sandbox.state()
        albums = {album["name"]: album for album in state["albums"]}
        self.sandbox.seeded = {"demo": albums["Demo album"], "other": albums["Other album"]}

    def launch_plan(self, count: int) -> list[tuple[str, str, list[str]]]:
        """(client_id, user, studies) for each launch, all distinct: distinct codes."""
        studies = self.sandbox.demo_study_uids
        combos = [
            (user, list(order))
            for user in ("alice", "bob")
            for size in range(1, len(studies) + 1)
            for order in itertools.permutations(studies, size)
        ]
        plan: list[tuple[str, str, list[str]]] = []
        while len(plan) < count:
            response = self.sandbox.register_provider(f"{self.app_url}/providers/ohif/configuration", "OHIF load")
            if response.status_code != 201:
                raise RuntimeError(f"registration failed: {response.status_code} {response.text}")
            client_id = response.json()["client_id"]
            plan += [(client_id, user, order) for user, order in combos]
        return plan[:count]

    # --- load ---------------------------------------------------------------------------

    def to_launcher(self, url: str) -> str:
        assert url.startswith(self.app_url + "/providers/"), url
        return self.launch_url_base + url.removeprefix(self.app_url)

    def one_launch(self, client_id: str, user_token: str, studies: list[str], barrier: threading.Barrier) -> Launch:
        result = Launch()
        http = TimeoutSession(timeout=120)
        try:
            barrier.wait(timeout=60)
            started = time.monotonic()
            report = self.sandbox.http.post(
                self.sandbox.api("/report"),
                data={"access_token": user_token, "client_id": client_id, "studyUID": studies,
                      "return_uri": self.sandbox.url("/albums/load")},
            )
            if report.status_code != 200:
                result.error = f"report {report.status_code}"
                return result
            launch_url = self.to_launcher(meta_refresh_url(report))
            result.report_seconds = time.monotonic() - started
            launched = time.monotonic()
            response = http.get(launch_url, allow_redirects=False)
            result.launch_seconds = time.monotonic() - launched
            result.status = response.status_code
            if response.status_code != 302 or "/viewer?" not in response.headers.get("Location", ""):
                result.error = f"launch {response.status_code}"
                return result
            exchanged = time.monotonic()
            token = http.get(token_url(launch_url, response.headers["Location"]))
            result.token_seconds = time.monotonic() - exchanged
            if token.status_code != 200 or not token.json().get("authorization", "").startswith("Bearer "):
                result.error = f"token {token.status_code}"
        except Exception as exc:  # every failure is counted, none stops the run
            result.error = type(exc).__name__
        finally:
            http.close()
        return result

    def fire(self, plan: list[tuple[str, str, list[str]]]) -> Run:
        tokens = {user: self.sandbox.user_token(user) for user in ("alice", "bob")}
        barrier = threading.Barrier(len(plan))
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(plan)) as pool:
            futures = [
                pool.submit(self.one_launch, client_id, tokens[user], studies, barrier)
                for client_id, user, studies in plan
            ]
            launches = [future.result(timeout=RUN_DEADLINE_SECONDS) for future in futures]
        return Run(launches=launches, wall_seconds=time.monotonic() - started)

    def fire_duplicates(self, groups: int, uses: int) -> list[list[int]]:
        """Groups of concurrent uses of one launch URL each; the statuses of each group."""
        response = self.sandbox.register_provider(f"{self.app_url}/providers/ohif/configuration", "OHIF dup")
        client_id = response.json()["client_id"]  # its own client_id: codes unlike the run's
        token = self.sandbox.user_token("alice")
        orders = [list(o) for n in (1, 2, 3) for o in itertools.permutations(self.sandbox.demo_study_uids, n)]
        results = []
        for studies in orders[:groups]:  # a distinct code per group
            report = self.sandbox.http.post(
                self.sandbox.api("/report"),
                data={"access_token": token, "client_id": client_id, "studyUID": studies,
                      "return_uri": self.sandbox.url("/albums/load")},
            )
            url = self.to_launcher(meta_refresh_url(report))
            barrier = threading.Barrier(uses)

            def use(_: int, url: str = url, barrier: threading.Barrier = barrier) -> int:
                with TimeoutSession(timeout=120) as http:
                    barrier.wait(timeout=60)
                    response = http.get(url, allow_redirects=False)
                    if response.status_code != 302:
                        return response.status_code
                    # The winner's viewer exchanges the code: 200 with its token.
                    return http.get(token_url(url, response.headers["Location"])).status_code

            with ThreadPoolExecutor(max_workers=uses) as pool:
                results.append(sorted(pool.map(use, range(uses))))
        return results

    # --- checks -------------------------------------------------------------------------

    def audit_outcomes(self) -> Counter[str]:
        with psycopg.connect(f"{POSTGRES}/{APP_DB}") as conn:
            rows = conn.execute("SELECT outcome, count(*) FROM launcher_launchrecord GROUP BY outcome").fetchall()
        return Counter({outcome: count for outcome, count in rows})

    def stop(self) -> None:
        stop(self.launcher)
        stop(self.app)
        stop(self.sandbox_process)
        self.sandbox.http.close()
        try:
            drop_database(APP_DB)
        except psycopg.Error as exc:
            print(f"could not drop {APP_DB}: {exc}", file=sys.stderr)
        if self.options.keep_logs:
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=200, help="concurrent launches (200)")
    parser.add_argument("--duplicate-groups", type=int, default=5, help="groups of concurrent uses of one URL (5)")
    parser.add_argument("--duplicate-uses", type=int, default=8, help="concurrent uses per group (8)")
    parser.add_argument("--server-threads", type=int, default=32, help="launch gunicorn: threads per worker, 2 workers (32)")
    parser.add_argument("--keep-logs", action="store_true")
    options = parser.parse_args()
    if not 1 <= options.launches <= 1000 or not 2 <= options.duplicate_uses <= 50 or not 1 <= options.duplicate_groups <= 15:
        parser.error("bounded on purpose: 1-1000 launches, 1-15 groups of 2-50 uses")

    test = LoadTest(options)
    try:
        test.start()
        plan = test.launch_plan(options.launches)
        client_ids = sorted({client_id for client_id, _, _ in plan})
        print(f"firing {len(plan)} concurrent launches ({len(client_ids)} client_ids) at {test.launch_url_base} …", flush=True)
        result = test.fire(plan)
        duplicates = test.fire_duplicates(options.duplicate_groups, options.duplicate_uses)
        outcomes = test.audit_outcomes()
    finally:
        test.stop()

    errors = [launch for launch in result.launches if launch.error]
    launch_latency = [launch.launch_seconds for launch in result.launches if not launch.error]
    token_latency = [launch.token_seconds for launch in result.launches if not launch.error]
    end_to_end = [
        launch.report_seconds + launch.launch_seconds + launch.token_seconds
        for launch in result.launches
        if not launch.error
    ]
    groups_ok = all(statuses == [200] + [409] * (options.duplicate_uses - 1) for statuses in duplicates)
    expected = Counter(
        {
            "success": options.launches + options.duplicate_groups,
            "replay": options.duplicate_groups * (options.duplicate_uses - 1),
        }
    )
    figures: dict[str, Any] = {
        "launches": len(result.launches),
        "errors": len(errors),
        "error_kinds": dict(Counter(launch.error for launch in errors)),
        "launch_latency_seconds": {
            "p50": round(percentile(launch_latency, 50), 3),
            "p95": round(percentile(launch_latency, 95), 3),
            "p99": round(percentile(launch_latency, 99), 3),
            "max": round(max(launch_latency, default=0), 3),
            "mean": round(statistics.fmean(launch_latency), 3) if launch_latency else 0,
        },
        "token_latency_seconds": {
            "p50": round(percentile(token_latency, 50), 3),
            "p95": round(percentile(token_latency, 95), 3),
            "p99": round(percentile(token_latency, 99), 3),
        },
        "end_to_end_latency_seconds": {
            "p50": round(percentile(end_to_end, 50), 3),
            "p95": round(percentile(end_to_end, 95), 3),
            "p99": round(percentile(end_to_end, 99), 3),
        },
        "wall_seconds": round(result.wall_seconds, 2),
        "launches_per_second": round(len(result.launches) / result.wall_seconds, 1),
        "duplicate_groups": duplicates,
        "audit_records": dict(outcomes),
        "audit_records_expected": dict(expected),
        "cpus": os.cpu_count(),
        "server": f"launches: gunicorn gthread 2 workers x {options.server_threads} threads; documents: 1 x 16; PostgreSQL",
    }
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    checks = {
        "no errors": not errors,
        "one audit record per launch, right outcome": outcomes == expected,
        "exactly one success per duplicated launch URL": groups_ok,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
