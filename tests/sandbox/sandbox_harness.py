"""Helpers behind tests/sandbox/conftest.py: the stand-in server process and a fake provider.

The process itself (environment, start, readiness, stop) is devstack's, as for the benchmarks
and the demo; this adds what tests ask the running stand-in.
"""

from __future__ import annotations

import json
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

from devstack import LoopbackSession, StandIn, meta_refresh_url, stand_in_env

JWT_BEARER_URN = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
__all__ = ["FakeProvider", "SandboxServer", "meta_refresh_url", "query_params", "server_env"]


def query_params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def server_env(workdir: Path, root_url: str, **variables: str) -> dict[str, str]:
    """A stand-in's environment for the tests: its own database and secret in `workdir`."""
    # Short fetch timeout: a provider that hangs must not stall the suite.
    return stand_in_env(
        root_url, workdir=workdir, SANDBOX_PROVIDER_TIMEOUT_SECONDS="3", **variables
    )


@dataclass(kw_only=True)
class SandboxServer(StandIn):
    """A stand-in served by Django's runserver, with what the tests ask of it."""

    workdir: Path
    http: requests.Session = field(default_factory=lambda: LoopbackSession(follow_redirects=False))
    seeded: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.root_url}{path}"

    def api(self, path: str) -> str:
        return f"{self.root_url}/api{path}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

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
        self.prepare()
        port = urlsplit(self.root_url).port
        runserver = ["-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"]
        self.serve(self.log_path, command=[sys.executable, *runserver])
        try:
            self.wait_until_up()
        except BaseException:
            self.stop()
            raise
        state = self.state()
        albums = {album["name"]: album for album in state["albums"]}
        self.seeded = {"demo": albums["Demo album"], "other": albums["Other album"]}

    def stop(self) -> None:
        super().stop()
        self.http.close()


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
