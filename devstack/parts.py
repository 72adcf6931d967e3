"""The parts of the stack: Orthanc with the sample studies, the KHEOPS stand-in, our app.

Each runs in processes of its own; what this module imports needs no Django settings (the
stand-in's and our app's settings are set in their processes' environments).
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack.processes import (
    REPO,
    ServerProcess,
    StackError,
    clean_env,
    free_port,
    gunicorn_command,
    run_python,
)
from sandbox.orthanc import OrthancProcess
from sandbox.samples import load_into_orthanc

STAND_IN_SETTINGS = "sandbox.settings"
APP_SETTINGS = "kheops_ohif.settings"
APP_ASGI = "kheops_ohif.asgi:application"
# Answered once the stand-in serves (its discovery document).
STAND_IN_READY_PATH = "/api/.well-known/report-provider-configuration"
# KHEOPS's launch page: <meta http-equiv="refresh" content="0;URL='…'"/>
_META_REFRESH = re.compile(r"""<meta http-equiv="refresh" content="0;URL='([^']*)'"\s*/>""")


def meta_refresh_url(page: Any) -> str:
    """The provider URL that KHEOPS's launch page (a requests or httpx response) refreshes
    to, as a browser reads it; a StackError when the page has none."""
    match = _META_REFRESH.search(page.text)
    if match is None:
        raise StackError(f"no meta refresh in {page.status_code} {page.text[:300]!r}")
    return html.unescape(match.group(1))


# --- Orthanc -----------------------------------------------------------------------------------


def start_orthanc(storage_dir: Path, *, port: int | None = None) -> OrthancProcess:
    """Orthanc on `port` (a free one by default), storing in `storage_dir`, loaded with the
    sample studies."""
    orthanc = OrthancProcess(http_port=port or free_port(), storage_dir=storage_dir).start()
    try:
        load_into_orthanc(orthanc.url)
    except BaseException:
        orthanc.stop()
        raise
    return orthanc


# --- the KHEOPS stand-in (sandbox/) ------------------------------------------------------------


def stand_in_env(
    root_url: str,
    *,
    orthanc_url: str | None = None,
    workdir: Path | None = None,
    inherit: bool = False,
    **variables: str,
) -> dict[str, str]:
    """The stand-in's environment: served at `root_url`, relaying DICOMweb to `orthanc_url`.

    With `workdir`, a database of its own there and a fresh secret; without, the stand-in's
    defaults (var/sandbox.sqlite3, var/sandbox-secret: kept from one run to the next). With
    `inherit`, the caller's environment as it is (the demo: a developer's SANDBOX_* apply);
    without, cleaned of what would point it elsewhere. `variables` come last.
    """
    env = {**os.environ} if inherit else clean_env()
    env.update({"DJANGO_SETTINGS_MODULE": STAND_IN_SETTINGS, "SANDBOX_ROOT_URL": root_url})
    if orthanc_url:
        env["SANDBOX_ORTHANC_URL"] = orthanc_url
    if workdir is not None:
        env["SANDBOX_DATABASE_URL"] = f"sqlite:///{workdir / 'sandbox.sqlite3'}"
        env["SANDBOX_SECRET"] = secrets.token_urlsafe(48)
        env["SANDBOX_OIDC_KEY_FILE"] = str(workdir / "sandbox-oidc-key.pem")
    env.update(variables)
    return env


@dataclass(kw_only=True)
class StandIn:
    """The KHEOPS stand-in at `root_url` with the environment `env`: prepare() migrates and
    seeds its database, serve() starts its server, register() adds a report provider."""

    root_url: str
    env: dict[str, str]
    album_id: str = ""  # the seeded demo album's
    server: ServerProcess | None = None

    def manage(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`python -m django <args>` on the stand-in's settings and database."""
        return run_python(["-m", "django", *args], self.env, check=check, stdin=stdin)

    @property
    def oidc_issuer(self) -> str:
        """The issuer of its OpenID Connect provider (Keycloak's role, sandbox/oidc.py)."""
        return f"{self.root_url}/oidc"

    def set_up_oidc(
        self, viewer_url: str, *, client_id: str, client_secret: str, users: list[dict]
    ) -> None:
        """A client for our admin's sign-in at its OpenID Connect provider, as a hospital's
        Keycloak admin would make it (README: Admin sign-in), and `users` (username,
        password, first_name, last_name, email, groups). Idempotent."""
        config = {
            "client_id": client_id,
            "client_secret": client_secret,
            "client_name": "kheops-ohif admin",
            "redirect_uris": [f"{viewer_url}/admin/oidc/callback/"],
            "post_logout_redirect_uris": [f"{viewer_url}/admin/login/"],
            "users": users,
        }
        # On standard input: secrets and passwords never on a command line.
        self.manage("sandbox_oidc", stdin=json.dumps(config))

    def prepare(self) -> str:
        """Migrate and seed (idempotent: the same albums again); the demo album's id."""
        self.manage("migrate", "--noinput", "--verbosity", "0")
        seeded = self.manage("sandbox_seed").stdout
        self.album_id = next(
            line.split()[1] for line in seeded.splitlines() if line.startswith("demo_album ")
        )
        return self.album_id

    def serve(
        self,
        log: Path,
        *,
        workers: int = 1,
        threads: int = 8,
        command: list[str] | None = None,
    ) -> ServerProcess:
        """Start its server (gunicorn with threads unless `command`); see wait_until_up."""
        port = urlsplit(self.root_url).port
        assert port is not None, self.root_url
        command = command or gunicorn_command(
            "sandbox.wsgi", port=port, workers=workers, threads=threads
        )
        self.server = ServerProcess.start(
            "KHEOPS stand-in", command, url=self.root_url, env=self.env, log=log
        )
        return self.server

    def wait_until_up(self, *, workers: int = 1) -> None:
        assert self.server is not None, "serve() first"
        self.server.wait_until_up(STAND_IN_READY_PATH, workers=workers)

    def register(self, config_url: str, name: str = "OHIF Viewer") -> str:
        """Register the provider of `config_url` in the demo album through the stand-in's HTTP
        endpoint, as an album admin would (the stand-in fetches and checks its document);
        its client_id. Idempotent."""
        return self.manage(
            "sandbox_register_provider", self.album_id, config_url, "--name", name
        ).stdout.strip()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# --- our app -----------------------------------------------------------------------------------


# Tests and benchmarks launch hundreds of times from 127.0.0.1: the point, not a flood.
NO_RATE_LIMITS = {"LAUNCH_RATE_LIMIT": "off", "TOKEN_RATE_LIMIT": "off"}


def app_env(
    public_url: str, *, code: Path = REPO, inherit: bool = False, **variables: str
) -> dict[str, str]:
    """Our app's environment, served at `public_url` from the checkout `code`. With
    `inherit`, the caller's environment as it is (the demo: DATABASE_URL, SECRET_KEY_FILE…
    apply; its rate limits too); without, cleaned of them (give DATABASE_URL and SECRET_KEY
    in `variables`), and no rate limits (NO_RATE_LIMITS)."""
    env = {**os.environ} if inherit else {**clean_env(code), **NO_RATE_LIMITS}
    env.update({"DJANGO_SETTINGS_MODULE": APP_SETTINGS, "PUBLIC_BASE_URL": public_url})
    env.update(variables)
    return env


def manage_app(*args: str, env: dict[str, str], code: Path = REPO, stdin: str | None = None) -> str:
    """`python manage.py <args>` of our app in the checkout `code`; its output."""
    return run_python(["manage.py", *args], env, cwd=code, stdin=stdin).stdout


def trust_stand_in(stand_in_url: str, name: str, *, env: dict[str, str], code: Path = REPO) -> None:
    """Our app trusts the stand-in as a KHEOPS server (the admin's `trust_kheops`)."""
    manage_app("trust_kheops", stand_in_url, "--name", name, env=env, code=code)
