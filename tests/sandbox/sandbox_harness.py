"""Helpers behind tests/sandbox/conftest.py: the stand-in server process and a fake provider."""

from __future__ import annotations

import html
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

REPO_ROOT = Path(__file__).resolve().parents[2]
JWT_BEARER_URN = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_META_REFRESH = re.compile(r"""<meta http-equiv="refresh" content="0;URL='([^']*)'"\s*/>""")
_STARTUP_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TimeoutSession(requests.Session):
    """A session that never waits forever and never goes through an environment proxy."""

    def __init__(self, timeout: float = 15.0) -> None:
        super().__init__()
        self.trust_env = False
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        kwargs.setdefault("allow_redirects", False)
        return super().request(method, url, **kwargs)


def meta_refresh_url(response: requests.Response) -> str:
    """The provider URL KHEOPS's launch page refreshes to (as a browser would read it)."""
    match = _META_REFRESH.search(response.text)
    assert match, f"no meta refresh in {response.status_code} {response.text[:300]!r}"
    return html.unescape(match.group(1))


def query_params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


@dataclass
class SandboxServer:
    root_url: str
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    http: TimeoutSession = field(default_factory=TimeoutSession)
    seeded: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.root_url}{path}"

    def api(self, path: str) -> str:
        return f"{self.root_url}/api{path}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `python -m django <args>` against this server's settings and database."""
        completed = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"{args} failed:\n{completed.stdout}\n{completed.stderr}")
        return completed

    def state(self) -> dict[str, Any]:
        response = self.http.get(self.url("/_sandbox/state"))
        response.raise_for_status()
        return response.json()

    def user_token(self, username: str) -> str:
        response = self.http.post(self.url("/_sandbox/user-token"), json={"username": username})
        response.raise_for_status()
        return response.json()["access_token"]

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        response = self.http.post(self.url("/_sandbox/faults"), json=faults)
        assert response.status_code == 200, response.text
        return response.json()

    def set_clock(self, offset_seconds: float, mode: str = "elapsed") -> dict[str, Any]:
        response = self.http.post(
            self.url("/_sandbox/clock"), json={"offset_seconds": offset_seconds, "mode": mode}
        )
        assert response.status_code == 200, response.text
        return response.json()

    def reset(self) -> None:
        assert self.http.delete(self.url("/_sandbox/faults")).status_code == 200
        assert self.http.delete(self.url("/_sandbox/clock")).status_code == 200

    @property
    def demo_album_id(self) -> str:
        return self.seeded["demo"]["album_id"]

    @property
    def other_album_id(self) -> str:
        return self.seeded["other"]["album_id"]

    @property
    def demo_study_uids(self) -> list[str]:
        return [study["study_uid"] for study in self.seeded["demo"]["studies"]]

    @property
    def other_study_uid(self) -> str:
        return self.seeded["other"]["studies"][0]["study_uid"]

    def register_provider(
        self,
        config_url: str,
        name: str = "Fake provider",
        *,
        album_id: str | None = None,
        username: str = "alice",
    ) -> requests.Response:
        return self.http.post(
            self.api(f"/albums/{album_id or self.demo_album_id}/reportproviders"),
            data={"url": config_url, "name": name},
            headers={"Authorization": f"Bearer {self.user_token(username)}"},
        )

    def launch(
        self,
        client_id: str,
        study_uids: list[str] | None = None,
        *,
        username: str = "alice",
        access_token: str | None = None,
    ) -> requests.Response:
        """Submit the KHEOPS UI's launch form, `POST /api/report`."""
        return self.http.post(
            self.api("/report"),
            data={
                "access_token": access_token or self.user_token(username),
                "client_id": client_id,
                "studyUID": study_uids or self.demo_study_uids[:1],
                "return_uri": self.url("/albums/ignored"),
            },
        )

    def launch_params(
        self, client_id: str, study_uids: list[str] | None = None, *, username: str = "alice"
    ) -> dict[str, list[str]]:
        """Launch and return the query KHEOPS sends the browser to the provider with."""
        response = self.launch(client_id, study_uids, username=username)
        assert response.status_code == 200, response.text
        return query_params(meta_refresh_url(response))

    def token(
        self, form: list[tuple[str, str]], headers: dict[str, str] | None = None
    ) -> requests.Response:
        return self.http.post(
            self.api("/token"), data=form, headers={"Accept": "application/json", **(headers or {})}
        )

    def start(self) -> None:
        self.manage("migrate", "--noinput")
        self.manage("sandbox_seed")
        port = urlsplit(self.root_url).port
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.http.get(
                    self.api("/.well-known/report-provider-configuration"), timeout=1
                ).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"stand-in did not start:\n{self.log_path.read_text()}")
        if self.process.poll() is not None:
            raise RuntimeError(f"stand-in exited:\n{self.log_path.read_text()}")
        state = self.state()
        albums = {album["name"]: album for album in state["albums"]}
        self.seeded = {"demo": albums["Demo album"], "other": albums["Other album"]}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.http.close()


def _server_env(workdir: Path, port: int, extra_env: dict[str, str] | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SANDBOX_", "DJANGO_"))
        and key.lower()
        not in {
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        }
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "sandbox.settings",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "SANDBOX_ROOT_URL": f"http://127.0.0.1:{port}",
            "SANDBOX_DATABASE_URL": f"sqlite:///{workdir / 'sandbox.sqlite3'}",
            "SANDBOX_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
            # Short fetch timeout: a provider that hangs must not stall the suite.
            "SANDBOX_PROVIDER_TIMEOUT_SECONDS": "3",
        }
    )
    env.update(extra_env or {})
    return env


class FakeProvider:
    """A report provider served by `http.server`, correct by default, with knobs to break it.

    - ``documents``: path -> configuration document (dict) served as JSON; ``config_path`` is
      the default one. Change ``document`` (the default one) freely within a test.
    - ``config_status`` / ``config_content_type`` / ``config_raw``: break the default document.
    - ``jwks``: the JWKS served at ``/jwks.json`` (``None``: the provider's key, kid ``kid``).
    - ``launches``: query strings received at the redirect URI.
    """

    config_path = "/.well-known/kheops-report-configuration"

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.kid = "sandbox-test-key-1"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.reset()

    @property
    def config_url(self) -> str:
        return self.base_url + self.config_path

    @property
    def redirect_uri(self) -> str:
        return self.base_url + "/kheops/launch"

    @property
    def jwks_uri(self) -> str:
        return self.base_url + "/jwks.json"

    @property
    def document(self) -> dict[str, Any]:
        return self.documents[self.config_path]

    def default_document(self) -> dict[str, Any]:
        return {
            "redirect_uri": self.redirect_uri,
            "response_type": "code",
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "RS256",
            "jwks_uri": self.jwks_uri,
            "client_name": "Fake provider",
            "client_uri": self.base_url,
            "contacts": ["nobody@example.invalid"],
        }

    def reset(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {self.config_path: self.default_document()}
        self.config_status = 200
        self.config_content_type = "application/json"
        self.config_raw: bytes | None = None
        self.jwks: dict[str, Any] | None = None
        self.launches: list[str] = []
        self.requests: list[str] = []

    def public_jwks(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def add_document(self, path: str, **changes: Any) -> str:
        """Serve another document (the default one plus `changes`) at `path`; return its URL."""
        document = self.default_document()
        document.update(changes)
        self.documents[path] = {k: v for k, v in document.items() if v is not None}
        return self.base_url + path

    def assertion(
        self,
        client_id: str,
        audience: Any,
        *,
        lifetime: float = 120,
        now: float | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        key: Any = None,
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": uuid.uuid4().hex,
            "iat": int(issued),
            "exp": int(issued + lifetime),
        }
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        header = {"kid": self.kid, **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(
            payload, key if key is not None else self.key, algorithm=algorithm, headers=header
        )

    def token_form(
        self,
        sandbox: SandboxServer,
        code: str,
        client_id: str,
        *,
        assertion: str | None = None,
        redirect_uri: str | None = None,
        drop: tuple[str, ...] = (),
        extra: tuple[tuple[str, str], ...] = (),
    ) -> list[tuple[str, str]]:
        """The form a correct provider posts to the token endpoint, with changes."""
        form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri if redirect_uri is not None else self.redirect_uri),
            ("client_assertion_type", JWT_BEARER_URN),
            ("client_assertion", assertion or self.assertion(client_id, sandbox.api("/token"))),
        ]
        return [(name, value) for name, value in form if name not in drop] + list(extra)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                provider.requests.append(path)
                if path == provider.config_path:
                    body = provider.config_raw
                    if body is None:
                        body = json.dumps(provider.document).encode()
                    self._send(provider.config_status, body, provider.config_content_type)
                elif path in provider.documents:
                    self._send(
                        200, json.dumps(provider.documents[path]).encode(), "application/json"
                    )
                elif path == "/jwks.json":
                    jwks = provider.jwks if provider.jwks is not None else provider.public_jwks()
                    self._send(200, json.dumps(jwks).encode(), "application/json")
                elif path == "/kheops/launch":
                    provider.launches.append(query)
                    self._send(200, b"launched", "text/plain")
                else:
                    self._send(404, b"not found", "text/plain")

        return Handler
