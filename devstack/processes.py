"""Server processes on loopback: free ports, clean environments, start, readiness, stop.

Nothing here knows our app or the stand-in (see devstack/parts.py); nothing imports Django.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
COMMAND_TIMEOUT_SECONDS = 180.0
HTTP_TIMEOUT_SECONDS = 15.0
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


class StackError(RuntimeError):
    """A part of the stack did not start or did not answer; the message says which and why."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackSession(requests.Session):
    """A session for loopback calls: never through a proxy of the environment, and never
    waiting for ever (`timeout` unless a call gives its own).

    With `follow_redirects=False`, a POST, PUT, PATCH or DELETE returns a redirect as it is
    unless the call says otherwise; get() always follows (requests' get() says so itself).
    """

    def __init__(
        self, timeout: float = HTTP_TIMEOUT_SECONDS, *, follow_redirects: bool = True
    ) -> None:
        super().__init__()
        self.trust_env = False
        self._timeout = timeout
        self._follow_redirects = follow_redirects

    def request(self, method: str | bytes, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        kwargs.setdefault("allow_redirects", self._follow_redirects)
        return super().request(method, url, **kwargs)


def clean_env(code: Path = REPO, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (the caller's environment) less what would point a server elsewhere (settings,
    databases, URLs, keys, proxies), importing from `code`, its output unbuffered."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.startswith(_FOREIGN_ENV_PREFIXES) and key.lower() not in _PROXY_ENV
    }
    env["PYTHONPATH"] = str(code)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(
    args: list[str],
    env: Mapping[str, str],
    *,
    cwd: Path = REPO,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python <args>` with this interpreter, bounded in time; with `check`, a failure is a
    StackError with its output."""
    try:
        completed = subprocess.run(  # noqa: S603 - our own commands, no outside input
            [sys.executable, *args],
            cwd=cwd,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(args)} took over {COMMAND_TIMEOUT_SECONDS:.0f} s") from exc
    if check and completed.returncode != 0:
        raise StackError(f"{' '.join(args)} failed:\n{completed.stdout}{completed.stderr}")
    return completed


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log, for an error message."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def uvicorn_command(app: str, *, port: int, workers: int, access_log: bool = False) -> list[str]:
    """Our production server, as the README's command runs it."""
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers),
        "--timeout-graceful-shutdown", "30",
        *([] if access_log else ["--no-access-log"]),
        # The client's address and scheme are ours to decide (launcher.clientaddr).
        "--no-proxy-headers",
        # uvicorn's httptools parser, refusing a request head over 64 KiB (431).
        "--http", "launcher.httpserver:HttpToolsProtocol",
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
        env: Mapping[str, str],
        log: Path,
        cwd: Path = REPO,
    ) -> ServerProcess:
        """Start `command` (output appended to `log`); not waiting for it: see wait_until_up."""
        with log.open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own commands, no outside input
                command,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own process group: stopping it stops its workers too, and a Ctrl-C in the
                # terminal reaches only us, so we stop things in order.
                start_new_session=True,
            )
        return cls(name=name, url=url, process=process, log=log)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until_up(
        self, health_path: str, *, workers: int = 1, timeout: float = STARTUP_TIMEOUT_SECONDS
    ) -> None:
        """Until `health_path` answers 2xx with `workers` workers booted (so that the first
        request meets no cold worker); a StackError with the log's end if it exits or not in
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with LoopbackSession(timeout=2) as session:
            while time.monotonic() < deadline:
                if not self.running:
                    raise StackError(
                        f"{self.name} exited ({self.process.returncode}):\n{tail(self.log)}"
                    )
                try:
                    if (
                        session.get(self.url + health_path).ok
                        and len(self.worker_pids()) >= workers
                    ):
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.1)
        raise StackError(
            f"{self.name} did not answer {health_path} in {timeout:.0f} s:\n{tail(self.log)}"
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
        """SIGTERM to its process group (a graceful stop: requests in flight finish first),
        SIGKILL if it is still there after STOP_TIMEOUT_SECONDS."""
        if not self.running:
            return
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
