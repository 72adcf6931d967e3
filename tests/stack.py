"""The whole system over real HTTP: Orthanc, the KHEOPS stand-in, and our viewer app.

- Orthanc (a real DICOMweb server) with the sample studies, on a free port;
- the KHEOPS stand-in (`sandbox/`) as a subprocess on `http://localhost:<port>`: another *site*
  than the viewer's `http://127.0.0.1:<port>`, so the launch is a real cross-site navigation;
- our app in a live-server thread of this test process, on the test database (SQLite or
  PostgreSQL), with WhiteNoise serving the real OHIF bundle as in production.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connections
from django.test.testcases import LiveServerThread

sys.path.insert(0, str(Path(__file__).resolve().parent / "sandbox"))

from sandbox_harness import SandboxServer, _server_env, free_port, meta_refresh_url

from sandbox.orthanc import OrthancProcess
from sandbox.samples import load_into_orthanc, sample_studies

__all__ = ["OrthancProcess", "SandboxServer", "Stack", "meta_refresh_url"]


def start_orthanc(workdir: Path) -> OrthancProcess:
    orthanc = OrthancProcess(http_port=free_port(), storage_dir=workdir / "orthanc")
    orthanc.start()
    load_into_orthanc(orthanc.url)
    return orthanc


def start_stand_in(workdir: Path, orthanc_url: str) -> SandboxServer:
    port = free_port()
    root = f"http://localhost:{port}"
    env = _server_env(
        workdir,
        port,
        {"SANDBOX_ROOT_URL": root, "SANDBOX_ORTHANC_URL": orthanc_url, "SANDBOX_ALLOWED_HOSTS": "localhost,127.0.0.1"},
    )
    server = SandboxServer(root_url=root, env=env, workdir=workdir)
    server.start()
    return server


class ViewerServer:
    """Our app in a live-server thread, static files through WhiteNoise (not Django's
    development static handler, which knows nothing of the OHIF bundle)."""

    def __init__(self) -> None:
        overrides = {}
        for connection in connections.all():
            # An in-memory SQLite test database must be shared with the server thread.
            if connection.vendor == "sqlite" and connection.is_in_memory_db():
                overrides[connection.alias] = connection
                connection.inc_thread_sharing()
        self._shared = list(overrides.values())
        self.thread = LiveServerThread(
            "127.0.0.1", static_handler=lambda app: app, connections_override=overrides, port=0
        )
        self.thread.daemon = True
        self.thread.start()
        self.thread.is_ready.wait()
        if self.thread.error:
            raise self.thread.error
        self.url = f"http://127.0.0.1:{self.thread.port}"

    def stop(self) -> None:
        self.thread.terminate()
        for connection in self._shared:
            connection.dec_thread_sharing()


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
        orthanc = start_orthanc(workdir)
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

