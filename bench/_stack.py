"""The whole system as in production, in a throwaway work dir, for benchmarks.

    with BenchStack.start(workers=2) as stack:
        url = stack.launch_url(stack.study_uids[0])   # KHEOPS's meta-refresh target
        ...

Starts, each on a free loopback port:

- Orthanc (a real DICOMweb server) loaded with the sample studies;
- the KHEOPS stand-in (`sandbox.wsgi`, under gunicorn with threads) on `http://localhost:<port>`, its own SQLite database,
  migrated and seeded;
- our app (`kheops_ohif.asgi`, under uvicorn as the README's production command runs it) on `http://127.0.0.1:<port>` (another *site* than the stand-in:
  the launch is a real cross-site navigation), its own database (a SQLite file in the work dir,
  or, when DATABASE_URL names PostgreSQL, a fresh database created beside the named one and
  dropped afterwards: the named one is never touched), a generated SECRET_KEY and the OHIF
  bundle already installed in the repository's var/ohif by `make prepare`; migrated, trusting
  the stand-in, and registered in the stand-in's demo album by its configuration URL.

Unlike tests/stack.py (our app in a thread of the test process), everything here is a separate
process as in production, so benchmarks measure the production server and can read the memory
of the app's workers. Every wait is bounded; leaving the `with` block (or an error while
starting) stops everything that was started and removes the work dir.
"""

from __future__ import annotations

import html
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sandbox.orthanc import OrthancProcess  # noqa: E402
from sandbox.samples import load_into_orthanc, sample_studies  # noqa: E402

logger = logging.getLogger(__name__)

OHIF_ROOT = REPO / "var" / "ohif"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
COMMAND_TIMEOUT_SECONDS = 180.0
HTTP_TIMEOUT_SECONDS = 15.0
# KHEOPS's launch page: <meta http-equiv="refresh" content="0;URL='…'"/>
_META_REFRESH = re.compile(r"""<meta http-equiv="refresh" content="0;URL='([^']*)'""")
# Variables of the caller's environment that would point our servers elsewhere.
_FOREIGN_ENV_PREFIXES = (
    "DJANGO_",
    "SANDBOX_",
    "DATABASE_",
    "PUBLIC_",
    "ALLOWED_",
    "SECRET_KEY",
    "OHIF_",
)
_PROXY_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def token_url(launch_url: str, location: str) -> str:
    """The viewer's token URL (what its app-config.js asks for), given our launch's 302
    `Location`, on the server that answered the launch."""
    launch_id = urlsplit(location).path.split("/")[2]
    return urljoin(launch_url, f"/launches/{launch_id}/token")


def use_postgres_if_available() -> None:
    """Run our app on PostgreSQL (as in production) when it answers on 127.0.0.1:5432 and
    DATABASE_URL does not say otherwise; BenchStack then makes a throwaway database."""
    if os.environ.get("DATABASE_URL"):
        return
    try:
        import psycopg

        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2).close()
    except Exception:  # any failure means: no PostgreSQL here, use SQLite
        return
    os.environ["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/postgres"


class StackError(RuntimeError):
    """A part of the stack did not start or did not answer; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_session() -> requests.Session:
    """A session for loopback calls: never through a proxy of the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def _base_env(code: Path = REPO) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_FOREIGN_ENV_PREFIXES) and key.lower() not in _PROXY_ENV
    }
    env["PYTHONPATH"] = str(code)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- the throwaway database of our app ---------------------------------------------------------


@dataclass
class ThrowawayDatabase:
    """Our app's database for one stack: its URL, and how to get rid of it."""

    url: str
    vendor: str
    _drop: Callable[[], None] | None = None

    @classmethod
    def create(cls, workdir: Path, name_hint: str) -> ThrowawayDatabase:
        named = os.environ.get("DATABASE_URL", "")
        if not named.startswith(("postgres://", "postgresql://")):
            return cls(url=f"sqlite:///{workdir / 'app.sqlite3'}", vendor="sqlite")
        import psycopg

        parts = urlsplit(named)
        name = f"bench_{re.sub(r'[^a-z0-9_]', '_', name_hint.lower())}_{os.getpid()}"
        # The maintenance database of the same server: CREATE/DROP DATABASE cannot run inside
        # the database they act on, and the named one is never modified.
        admin_url = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return cls(url=urlunsplit(parts._replace(path=f"/{name}")), vendor="postgresql", _drop=drop)

    def drop(self) -> None:
        if self._drop is not None:
            self._drop()
            self._drop = None


# --- server processes --------------------------------------------------------------------------


def uvicorn_command(app: str, *, port: int, workers: int) -> list[str]:
    """Our production server, as the README's command runs it."""
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers),
        "--timeout-graceful-shutdown", "30",
        "--no-access-log",
        # The client's address and scheme are ours to decide (launcher.clientaddr).
        "--no-proxy-headers",
    ]  # fmt: skip


def gunicorn_command(app: str, *, port: int, workers: int, threads: int) -> list[str]:
    """A threaded WSGI server: the KHEOPS stand-in (a synchronous Django app), and the
    WSGI baseline the load test compares ours with."""
    return [
        sys.executable, "-m", "gunicorn", app,
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads),
        "--backlog", "2048", "--timeout", "120", "--graceful-timeout", "5",
        "--no-control-socket",
        # No scheme from X-Forwarded-Proto for 127.0.0.1 either (launcher.clientaddr).
        "--forwarded-allow-ips", "",
    ]  # fmt: skip


@dataclass
class ServerProcess:
    """One server's master process (own process group) and the URL it serves."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        *,
        url: str,
        env: dict[str, str],
        log: Path,
        cwd: Path = REPO,
    ) -> ServerProcess:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own process group: stopping it stops its workers too, and a Ctrl-C in the
                # terminal reaches only us, so we stop things in order.
                start_new_session=True,
            )
        return cls(name=name, url=url, process=process, log=log)

    def wait_until_up(self, health_path: str, *, workers: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        with http_session() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise StackError(
                        f"{self.name} exited ({self.process.returncode}):\n{_tail(self.log)}"
                    )
                try:
                    # All workers booted, so that the first measured request meets no cold worker.
                    if (
                        session.get(self.url + health_path, timeout=2).ok
                        and len(self.worker_pids()) >= workers
                    ):
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.2)
        raise StackError(
            f"{self.name} did not answer {health_path} in {STARTUP_TIMEOUT_SECONDS:.0f} s:\n{_tail(self.log)}"
        )

    def worker_pids(self) -> list[int]:
        """The worker processes' PIDs (the master's children, read from /proc); the server's
        own when it runs without workers."""
        try:
            children = Path(
                f"/proc/{self.process.pid}/task/{self.process.pid}/children"
            ).read_text()
        except OSError:
            return []
        workers = [int(pid) for pid in children.split() if not _is_helper_process(int(pid))]
        return workers or [self.process.pid]

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        # SIGTERM: a graceful shutdown (requests in flight finish first).
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM; killing it", self.name)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _is_helper_process(pid: int) -> bool:
    """multiprocessing's resource tracker, which uvicorn's process manager starts beside its
    workers: not a worker."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _run(args: list[str], env: dict[str, str], cwd: Path = REPO) -> str:
    try:
        completed = subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(args)} took over {COMMAND_TIMEOUT_SECONDS:.0f} s") from exc
    if completed.returncode != 0:
        raise StackError(f"{' '.join(args)} failed:\n{completed.stdout}{completed.stderr}")
    return completed.stdout


@dataclass(frozen=True)
class PreviousRelease:
    """Our app as it was at an earlier commit, served as it was then: the baseline of a
    side-by-side comparison. A temporary git worktree of this repository; the stand-in,
    the database server and the harness stay the current ones."""

    commit: str
    workers: int
    threads: int
    label: str

    @contextmanager
    def checked_out(self) -> Iterator[Path]:
        where = Path(tempfile.mkdtemp(prefix="kheops-ohif-previous-")) / "code"
        try:
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(where), self.commit],
                cwd=REPO,
                check=True,
                capture_output=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StackError(f"cannot check out {self.commit} (a shallow clone?): {exc}") from exc
        try:
            yield where
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(where)], cwd=REPO, capture_output=True
            )
            shutil.rmtree(where.parent, ignore_errors=True)


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class BenchStack:
    workdir: Path
    orthanc: OrthancProcess
    kheops: ServerProcess
    app: ServerProcess
    database: ThrowawayDatabase
    app_env: dict[str, str]
    kheops_env: dict[str, str]
    album_id: str = ""
    client_id: str = ""
    http: requests.Session = field(default_factory=http_session)

    # --- start and stop ------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        workers: int = 2,
        kheops_threads: int = 8,
        name: str = "bench",
        previous: tuple[PreviousRelease, Path] | None = None,
    ) -> BenchStack:
        """Start everything (see the module docstring); `workers` are our app's. With
        `previous` (a release and its checked-out code), that release is our app instead."""
        workdir = Path(tempfile.mkdtemp(prefix=f"kheops-ohif-{name}-"))
        cleanup: list[Callable[[], None]] = [lambda: shutil.rmtree(workdir, ignore_errors=True)]
        try:
            orthanc = OrthancProcess(http_port=free_port(), storage_dir=workdir / "orthanc")
            orthanc.start()
            cleanup.append(orthanc.stop)
            load_into_orthanc(orthanc.url)

            kheops_port = free_port()
            kheops_url = f"http://localhost:{kheops_port}"
            kheops_env = {
                **_base_env(),
                "DJANGO_SETTINGS_MODULE": "sandbox.settings",
                "SANDBOX_ROOT_URL": kheops_url,
                "SANDBOX_ORTHANC_URL": orthanc.url,
                "SANDBOX_ALLOWED_HOSTS": "localhost,127.0.0.1",
                "SANDBOX_DATABASE_URL": f"sqlite:///{workdir / 'sandbox.sqlite3'}",
                "SANDBOX_SECRET": secrets.token_urlsafe(48),
            }
            _run(["-m", "django", "migrate", "--noinput", "--verbosity", "0"], kheops_env)
            seeded = _run(["-m", "django", "sandbox_seed"], kheops_env)
            album_id = next(
                line.split()[1] for line in seeded.splitlines() if line.startswith("demo_album ")
            )
            kheops = ServerProcess.start(
                "KHEOPS stand-in",
                gunicorn_command(
                    "sandbox.wsgi", port=kheops_port, workers=1, threads=kheops_threads
                ),
                url=kheops_url,
                env=kheops_env,
                log=workdir / "kheops.log",
            )
            cleanup.append(kheops.stop)

            database = ThrowawayDatabase.create(workdir, name)
            cleanup.append(database.drop)
            app_port = free_port()
            app_url = f"http://127.0.0.1:{app_port}"
            code = previous[1] if previous else REPO
            app_env = {
                **_base_env(code),
                "DJANGO_SETTINGS_MODULE": "kheops_ohif.settings",
                "PUBLIC_BASE_URL": app_url,
                "DATABASE_URL": database.url,
                "SECRET_KEY": secrets.token_urlsafe(50),
                "OHIF_ROOT": str(OHIF_ROOT),
                "LOG_LEVEL": "WARNING",
                # Bursts of hundreds of launches from 127.0.0.1 are the point here.
                "LAUNCH_RATE_LIMIT": "off",
                "TOKEN_RATE_LIMIT": "off",
            }
            _run(["manage.py", "migrate", "--noinput", "--verbosity", "0"], app_env, cwd=code)
            _run(
                ["manage.py", "trust_kheops", kheops_url, "--name", "KHEOPS stand-in (bench)"],
                app_env,
                cwd=code,
            )
            if previous:
                release = previous[0]
                command = gunicorn_command(
                    "kheops_ohif.wsgi",
                    port=app_port,
                    workers=release.workers,
                    threads=release.threads,
                )
                workers = release.workers
            else:
                command = uvicorn_command(
                    "kheops_ohif.asgi:application", port=app_port, workers=workers
                )
            app = ServerProcess.start(
                "kheops-ohif", command, url=app_url, env=app_env, log=workdir / "app.log", cwd=code
            )
            cleanup.append(app.stop)
            kheops.wait_until_up("/api/.well-known/report-provider-configuration", workers=1)
            # readyz, not healthz: it also says the OHIF bundle is installed (not in a
            # previous release's checkout, which launches alone measure).
            app.wait_until_up("/healthz" if previous else "/readyz", workers=workers)

            stack = cls(
                workdir=workdir,
                orthanc=orthanc,
                kheops=kheops,
                app=app,
                database=database,
                app_env=app_env,
                kheops_env=kheops_env,
                album_id=album_id,
            )
            # Through the stand-in's HTTP endpoint, as an album admin would: it fetches and
            # validates our configuration document.
            stack.client_id = _run(
                [
                    "-m",
                    "django",
                    "sandbox_register_provider",
                    album_id,
                    stack.config_url,
                    "--name",
                    "OHIF Viewer",
                ],
                kheops_env,
            ).strip()
            return stack
        except BaseException:
            for step in reversed(cleanup):
                try:
                    step()
                except Exception:  # stop all we can, then re-raise the cause
                    logger.exception("while cleaning up a stack that failed to start")
            raise

    def stop(self) -> None:
        self.http.close()
        for step in (self.app.stop, self.kheops.stop, self.orthanc.stop, self.database.drop):
            try:
                step()
            except Exception:  # stop everything we can
                logger.exception("while stopping the stack")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what benchmarks need ------------------------------------------------------------------

    @property
    def app_url(self) -> str:
        return self.app.url

    @property
    def kheops_url(self) -> str:
        return self.kheops.url

    @property
    def dicomweb_url(self) -> str:
        """The stand-in's DICOMweb root (its relay to Orthanc), as in our data source."""
        return f"{self.kheops.url}/api"

    @property
    def config_url(self) -> str:
        return f"{self.app.url}/providers/ohif/configuration"

    @property
    def album_url(self) -> str:
        return f"{self.kheops.url}/albums/{self.album_id}"

    @property
    def study_uids(self) -> list[str]:
        """The demo album's studies, in the stand-in's order (the first is the CT study)."""
        state = self.http.get(
            f"{self.kheops.url}/_sandbox/state", timeout=HTTP_TIMEOUT_SECONDS
        ).json()
        [album] = [album for album in state["albums"] if album["album_id"] == self.album_id]
        return [study["study_uid"] for study in album["studies"]]

    @staticmethod
    def sample_study_uid(modality: str) -> str:
        """The sample study of that modality ("CT", "MR", …)."""
        return next(s.study_uid for s in sample_studies() if modality in s.modalities)

    def worker_pids(self) -> list[int]:
        """Our app's worker PIDs."""
        return self.app.worker_pids()

    def user_token(self, username: str = "alice") -> str:
        response = self.http.post(
            f"{self.kheops.url}/_sandbox/user-token",
            json={"username": username},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def launch_url(
        self, *study_uids: str, username: str = "alice", access_token: str | None = None
    ) -> str:
        """KHEOPS's launch: POST /api/report as the KHEOPS UI does; returns the URL of our
        launch endpoint (with a single-use code) that KHEOPS's meta refresh points to.

        KHEOPS's codes carry no nonce: the same user launching the same studies within one
        second gets the same code, which our app then refuses as a replay (409).
        """
        response = self.http.post(
            f"{self.kheops.url}/api/report",
            data={
                "access_token": access_token or self.user_token(username),
                "client_id": self.client_id,
                "studyUID": list(study_uids) or self.study_uids[:1],
                "return_uri": self.album_url,
            },
            allow_redirects=False,
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        match = _META_REFRESH.search(response.text)
        if response.status_code != 200 or match is None:
            raise StackError(
                f"KHEOPS launch failed: {response.status_code} {response.text[:300]!r}"
            )
        return html.unescape(match.group(1))

    def logs(self) -> dict[str, str]:
        """The tail of each server's log, for a failure report."""
        return {
            "app": _tail(self.app.log),
            "kheops": _tail(self.kheops.log),
            "orthanc": _tail(self.orthanc.log_path),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "app": self.app.url,
            "kheops": self.kheops.url,
            "orthanc": self.orthanc.url,
            "database": self.database.vendor,
            "album_id": self.album_id,
            "client_id": self.client_id,
            "workers": self.worker_pids(),
        }


if __name__ == "__main__":
    # A smoke test: start, launch once through our app, print what is running, stop.
    logging.basicConfig(level=logging.INFO)
    started = time.monotonic()
    with BenchStack.start() as stack:
        print(stack.describe(), f"started in {time.monotonic() - started:.1f} s")
        url = stack.launch_url(stack.sample_study_uid("CT"))
        with http_session() as browser:
            landed = browser.get(url, timeout=HTTP_TIMEOUT_SECONDS)
        print(landed.status_code, landed.url)
