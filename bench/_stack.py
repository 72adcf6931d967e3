"""The whole system as in production, in a throwaway work dir, for benchmarks.

    with BenchStack.start(workers=2) as stack:
        url = stack.launch_url(stack.study_uids[0])   # KHEOPS's meta-refresh target
        ...

Starts, each on a free loopback port (the parts and their processes: devstack):

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

import logging
import os
import re
import secrets
import shutil
import subprocess
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

from devstack import (
    APP_ASGI,
    COMMAND_TIMEOUT_SECONDS,
    REPO,
    LoopbackSession,
    ServerProcess,
    StackError,
    StandIn,
    app_env,
    free_port,
    gunicorn_command,
    manage_app,
    meta_refresh_url,
    stand_in_env,
    start_orthanc,
    tail,
    trust_stand_in,
    uvicorn_command,
)
from sandbox.orthanc import OrthancProcess
from sandbox.samples import sample_studies

logger = logging.getLogger(__name__)

OHIF_ROOT = REPO / "var" / "ohif"
# How long a server worker keeps a provider it looked up (launcher.services).
LOOKUP_CACHE_SECONDS = 5.0


def token_url(launch_url: str, location: str) -> str:
    """The viewer's token URL (what its launch.js asks for), given our launch's 302
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


def _start_app(
    workdir: Path,
    database: ThrowawayDatabase,
    stand_in: StandIn,
    *,
    workers: int,
    previous: tuple[PreviousRelease, Path] | None,
    extra_env: dict[str, str] | None = None,
) -> tuple[ServerProcess, dict[str, str]]:
    """Our app (or a previous release of it) migrated, trusting the stand-in, started; and
    its environment (for manage.py commands against it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    code = previous[1] if previous else REPO
    env = app_env(
        url,
        code=code,
        DATABASE_URL=database.url,
        SECRET_KEY=secrets.token_urlsafe(50),
        OHIF_ROOT=str(OHIF_ROOT),
        LOG_LEVEL="WARNING",
        **(extra_env or {}),
    )
    manage_app("migrate", "--noinput", "--verbosity", "0", env=env, code=code)
    trust_stand_in(stand_in.root_url, "KHEOPS stand-in (bench)", env=env, code=code)
    if previous:
        release = previous[0]
        command = gunicorn_command(
            "kheops_ohif.wsgi", port=port, workers=release.workers, threads=release.threads
        )
    else:
        command = uvicorn_command(APP_ASGI, port=port, workers=workers)
    process = ServerProcess.start(
        "kheops-ohif", command, url=url, env=env, log=workdir / "app.log", cwd=code
    )
    return process, env


@dataclass
class BenchStack:
    workdir: Path
    orthanc: OrthancProcess
    kheops: StandIn
    app: ServerProcess
    database: ThrowawayDatabase
    client_id: str = ""
    http: requests.Session = field(default_factory=LoopbackSession)
    app_environment: dict[str, str] = field(default_factory=dict)

    # --- start and stop ------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        workers: int = 2,
        kheops_threads: int = 8,
        name: str = "bench",
        previous: tuple[PreviousRelease, Path] | None = None,
        app_extra_env: dict[str, str] | None = None,
    ) -> BenchStack:
        """Start everything (see the module docstring); `workers` are our app's, `app_extra_env`
        adds to its environment. With `previous` (a release and its checked-out code), that
        release is our app instead."""
        workdir = Path(tempfile.mkdtemp(prefix=f"kheops-ohif-{name}-"))
        cleanup: list[Callable[[], None]] = [lambda: shutil.rmtree(workdir, ignore_errors=True)]
        try:
            orthanc = start_orthanc(workdir / "orthanc")
            cleanup.append(orthanc.stop)
            kheops_url = f"http://localhost:{free_port()}"
            kheops = StandIn(
                root_url=kheops_url,
                env=stand_in_env(kheops_url, orthanc_url=orthanc.url, workdir=workdir),
            )
            kheops.prepare()
            kheops.serve(workdir / "kheops.log", threads=kheops_threads)
            cleanup.append(kheops.stop)
            database = ThrowawayDatabase.create(workdir, name)
            cleanup.append(database.drop)
            app, env = _start_app(
                workdir,
                database,
                kheops,
                workers=workers,
                previous=previous,
                extra_env=app_extra_env,
            )
            cleanup.append(app.stop)
            kheops.wait_until_up()
            # readyz, not healthz: it also says the OHIF bundle is installed (not in a
            # previous release's checkout, which launches alone measure).
            workers = previous[0].workers if previous else workers
            app.wait_until_up("/healthz" if previous else "/readyz", workers=workers)
            stack = cls(
                workdir=workdir,
                orthanc=orthanc,
                kheops=kheops,
                app=app,
                database=database,
                app_environment=env,
            )
            stack.client_id = kheops.register(stack.config_url)
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
        return self.kheops.root_url

    @property
    def album_id(self) -> str:
        return self.kheops.album_id

    @property
    def dicomweb_url(self) -> str:
        """The stand-in's DICOMweb root (its relay to Orthanc), as in our data source."""
        return f"{self.kheops_url}/api"

    @property
    def config_url(self) -> str:
        return f"{self.app.url}/providers/ohif/configuration"

    @property
    def album_url(self) -> str:
        return f"{self.kheops_url}/albums/{self.album_id}"

    @property
    def study_uids(self) -> list[str]:
        """The demo album's studies, in the stand-in's order (the first is the CT study)."""
        state = self.http.get(f"{self.kheops_url}/_sandbox/state").json()
        [album] = [album for album in state["albums"] if album["album_id"] == self.album_id]
        return [study["study_uid"] for study in album["studies"]]

    @staticmethod
    def sample_study_uid(modality: str) -> str:
        """The sample study of that modality ("CT", "MR", …)."""
        return next(s.study_uid for s in sample_studies() if modality in s.modalities)

    def set_token_delivery(self, mode: str) -> None:
        """Our default provider's token delivery ("direct" or "relay"; README, "Token
        delivery"), for the launches from now on: set in the database, then waited for
        until every worker has forgotten the provider it had looked up."""
        manage_app(
            "shell",
            "-c",
            "from launcher.models import Provider; "
            f"Provider.objects.filter(slug='ohif').update(token_delivery={mode!r})",
            env=self.app_environment,
        )
        time.sleep(LOOKUP_CACHE_SECONDS + 0.5)

    def worker_pids(self) -> list[int]:
        """Our app's worker PIDs."""
        return self.app.worker_pids()

    def user_token(self, username: str = "alice") -> str:
        response = self.http.post(
            f"{self.kheops_url}/_sandbox/user-token", json={"username": username}
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
            f"{self.kheops_url}/api/report",
            data={
                "access_token": access_token or self.user_token(username),
                "client_id": self.client_id,
                "studyUID": list(study_uids) or self.study_uids[:1],
                "return_uri": self.album_url,
            },
            allow_redirects=False,
        )
        if response.status_code != 200:
            raise StackError(
                f"KHEOPS launch failed: {response.status_code} {response.text[:300]!r}"
            )
        return meta_refresh_url(response)

    def logs(self) -> dict[str, str]:
        """The tail of each server's log, for a failure report."""
        assert self.kheops.server is not None
        return {
            "app": tail(self.app.log),
            "kheops": tail(self.kheops.server.log),
            "orthanc": tail(self.orthanc.log_path),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "app": self.app.url,
            "kheops": self.kheops_url,
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
        with LoopbackSession() as browser:
            landed = browser.get(url)
        print(landed.status_code, landed.url)
