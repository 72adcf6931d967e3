"""Orthanc, the PACS behind the KHEOPS stand-in: its process and the one HTTP session to it.

KHEOPS keeps its images in a dcm4chee PACS behind its DICOMweb proxy; the sandbox uses Orthanc
with the DICOMweb plugin instead. We never touch the system service or its configuration: every
Orthanc started here gets its own JSON config, ports and storage directory, so tests can run
several side by side and a developer's machine is left alone.

Everything that talks HTTP to Orthanc goes through `orthanc_session()`, which sets a timeout on
every call (requests has no session-wide timeout of its own).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

logger = logging.getLogger(__name__)

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE_DIR = REPO_ROOT / "var" / "orthanc"
DEFAULT_HTTP_PORT = 8142
DEFAULT_DICOM_PORT = 4342
DICOMWEB_ROOT = "/dicom-web/"
WADO_URI_ROOT = "/wado"

# (connect, read) seconds. Read is per socket read, so a long streamed body is fine as long as
# Orthanc keeps sending.
DEFAULT_TIMEOUT: tuple[float, float] = (3.0, 30.0)


class OrthancError(RuntimeError):
    """Orthanc could not be started, or did not answer in time."""


class TimeoutSession(requests.Session):
    """A `requests.Session` that applies a default timeout to every request."""

    def __init__(self, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.default_timeout = timeout
        # Orthanc is on loopback: proxy variables of the environment must not reroute us.
        self.trust_env = False

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(method, url, *args, **kwargs)


def orthanc_session(timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> requests.Session:
    """Return a session for Orthanc; every call made with it has `timeout` unless overridden."""
    return TimeoutSession(timeout)


def orthanc_is_up(orthanc_url: str, *, timeout: float = 1.0) -> bool:
    """True when an Orthanc answers `GET /system` at `orthanc_url`."""
    try:
        with orthanc_session((timeout, timeout)) as session:
            response = session.get(f"{orthanc_url.rstrip('/')}/system")
            return response.status_code == 200 and "Version" in response.json()
    except (requests.RequestException, ValueError):
        return False


def orthanc_config(*, http_port: int, storage_dir: Path, dicom_port: int | None) -> dict[str, Any]:
    """The Orthanc configuration of the sandbox: loopback only, no auth, DICOMweb on."""
    return {
        "Name": "kheops-sandbox",
        "StorageDirectory": str(storage_dir / "storage"),
        "IndexDirectory": str(storage_dir / "storage"),
        "HttpPort": http_port,
        # No HTTP auth: only loopback clients are accepted (RemoteAccessAllowed false), and the
        # sandbox relay is the one that enforces KHEOPS tokens.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": dicom_port is not None,
        "DicomPort": dicom_port if dicom_port is not None else DEFAULT_DICOM_PORT,
        "DicomAet": "KHEOPSSANDBOX",
        # The relay streams bodies through; gzip would only cost CPU on loopback.
        "HttpCompressionEnabled": False,
        "HttpDescribeErrors": True,
        "SaveJobs": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "StableAge": 1,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": True,
            "WadoRoot": WADO_URI_ROOT,
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


class OrthancProcess:
    """An Orthanc child process with its own config, ports and storage.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        *,
        http_port: int = DEFAULT_HTTP_PORT,
        storage_dir: Path = DEFAULT_STORAGE_DIR,
        dicom_port: int | None = None,
        startup_timeout: float = 30.0,
        binary: Path = ORTHANC_BINARY,
    ) -> None:
        self.http_port = http_port
        self.storage_dir = Path(storage_dir)
        self.dicom_port = dicom_port
        self.startup_timeout = startup_timeout
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.storage_dir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.storage_dir / "orthanc.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> Self:
        if self._process is not None:
            raise OrthancError("this Orthanc is already started")
        if not self.binary.exists() or not DICOMWEB_PLUGIN.exists():
            raise OrthancError(
                f"Orthanc or its DICOMweb plugin is missing ({self.binary}, {DICOMWEB_PLUGIN}): "
                "run scripts/ensure-debian-packages.sh orthanc orthanc-dicomweb"
            )
        if orthanc_is_up(self.url):
            raise OrthancError(f"something already answers on {self.url}")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        config = orthanc_config(
            http_port=self.http_port, storage_dir=self.storage_dir, dicom_port=self.dicom_port
        )
        self.config_path.write_text(json.dumps(config, indent=2))
        # Output goes to a file, not a pipe: nobody reads a pipe, and a full one would block Orthanc.
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.storage_dir,
                # Own process group: a Ctrl-C in the terminal reaches us, and we stop Orthanc
                # ourselves in order, instead of both racing.
                start_new_session=True,
            )
        self._wait_until_up()
        logger.info(
            "Orthanc %s started at %s (pid %s)", self.storage_dir, self.url, self._process.pid
        )
        return self

    def _wait_until_up(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with {self._process.returncode}; see {self.log_path}"
                )
            if orthanc_is_up(self.url, timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise OrthancError(
            f"Orthanc did not answer within {self.startup_timeout} s; see {self.log_path}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM lets Orthanc close its SQLite index cleanly.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("Orthanc (pid %s) ignored SIGTERM; killing it", process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def wait(self) -> int:
        """Block until Orthanc exits; returns its exit code."""
        assert self._process is not None
        return self._process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
