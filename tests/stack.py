"""The whole system over real HTTP: Orthanc, the KHEOPS stand-in, and our viewer app.

- Orthanc (a real DICOMweb server) with the sample studies, on a free port;
- the KHEOPS stand-in (`sandbox/`) as a subprocess on `http://localhost:<port>`: another *site*
  than the viewer's `http://127.0.0.1:<port>`, so the launch is a real cross-site navigation;
- our app under uvicorn, the production server, with its ASGI application
  (kheops_ohif.asgi), in a thread of this test process: on the test database (SQLite or
  PostgreSQL), with the real OHIF bundle served as in production.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from django.conf import settings as django_settings

from devstack import (
    APP_ASGI,
    ServerProcess,
    app_env,
    free_port,
    meta_refresh_url,
    start_orthanc,
    uvicorn_command,
)
from launcher.serving import Application, DjangoHandler
from sandbox.orthanc import OrthancProcess
from sandbox.samples import sample_studies
from tests.sandbox.sandbox_harness import SandboxServer, server_env

__all__ = ["OrthancProcess", "SandboxServer", "Stack", "meta_refresh_url"]


def start_stand_in(workdir: Path, orthanc_url: str) -> SandboxServer:
    root = f"http://localhost:{free_port()}"
    env = server_env(workdir, root, SANDBOX_ORTHANC_URL=orthanc_url)
    server = SandboxServer(root_url=root, env=env, workdir=workdir)
    server.start()
    return server


class ViewerServer:
    """Our app under uvicorn in a thread: same settings and database as the tests.

    The rate limits are off, as in every test that does not turn them on (tests/conftest.py):
    the tests launch many times from 127.0.0.1.

    Requests are served as in production: the documents from memory (launcher.serving),
    everything else by Django's ASGI handler, which does its database work in threads of its
    own: the SQLite test database is a file for this (tests/conftest.py).
    """

    def __init__(self) -> None:
        # kheops_ohif.asgi's application, less its django.setup(): Django is set up already,
        # and setting it up again would configure logging anew (without the leak check's
        # handlers).
        self.application = Application(DjangoHandler())
        self.loop: asyncio.AbstractEventLoop | None = None
        listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = uvicorn.Config(
            # Its access log goes through our logging settings, and the leak check sees it.
            self._app,
            interface="asgi3",
            lifespan="on",
            log_config=None,
            access_log=True,
            timeout_graceful_shutdown=5,
            # As every command we ship: the client's address is ours to decide
            # (launcher.clientaddr), not uvicorn's from X-Forwarded-For.
            proxy_headers=False,
            # As devstack's command: uvicorn's parser with a bound on a request's head.
            http="launcher.httpserver:HttpToolsProtocol",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [listener]},
            name="viewer-server",
            daemon=True,
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start (see the log above)")
            time.sleep(0.02)

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.application(scope, receive, send)

    def refresh_documents(self) -> None:
        """Prepare the documents again now, from the current settings and database."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.application.documents.refresh(), self.loop).result(
            timeout=30
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class Stack:
    orthanc: OrthancProcess
    kheops: SandboxServer
    viewer: ViewerServer
    workdir: Path
    client_id: str = ""

    @property
    def config_url(self) -> str:
        return f"{self.viewer.url}/providers/ohif/configuration"

    def studies(self) -> dict[str, Any]:
        return {study.study_uid: study for study in sample_studies()}

    def stop(self) -> None:
        for step in (self.viewer.stop, self.kheops.stop, self.orthanc.stop):
            try:
                step()
            except Exception:  # noqa: S112 - stop everything we can
                continue
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_stack() -> Stack:
    workdir = Path(tempfile.mkdtemp(prefix="kheops-ohif-stack-"))
    started: list[Any] = []
    try:
        orthanc = start_orthanc(workdir / "orthanc")
        started.append(orthanc)
        kheops = start_stand_in(workdir, orthanc.url)
        started.append(kheops)
        viewer = ViewerServer()
    except BaseException:
        for process in started:
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Stack(orthanc=orthanc, kheops=kheops, viewer=viewer, workdir=workdir)


def start_server_on_test_database(log: Path, **extra: str) -> ServerProcess:
    """Our production server (uvicorn, one worker, access log on) as its own process, on
    this test run's database, SQLite or PostgreSQL; `extra` adds to its environment. The
    caller stops it (`stop()`), after `wait_until_up`."""
    url = f"http://127.0.0.1:{free_port()}"
    return ServerProcess.start(
        "kheops-ohif",
        uvicorn_command(APP_ASGI, port=int(url.rsplit(":", 1)[1]), workers=1, access_log=True),
        url=url,
        env=_app_env_on_test_database(url, **extra),
        log=log,
    )


def _app_env_on_test_database(public_url: str, **extra: str) -> dict[str, str]:
    database = django_settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database_url = f"sqlite:///{database['NAME']}"
    else:
        database_url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    return app_env(
        public_url,
        DATABASE_URL=database_url,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECRET_KEY=django_settings.SECRET_KEY,
        **extra,
    )
