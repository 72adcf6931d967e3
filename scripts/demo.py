"""`make run`: the complete demo on one machine.

Starts (or reuses) Orthanc with the sample studies, the KHEOPS stand-in on
http://localhost:8100 and the viewer on http://127.0.0.1:8000 (two different sites, as a
real KHEOPS and viewer would be), trusts the stand-in, registers the viewer in the demo album
through its configuration URL as a KHEOPS album admin would, and prints the one URL to open.
The viewer's admins sign in through the stand-in's OpenID Connect provider (as through a
hospital's Keycloak); the local password account stays for the first set-up.
Ctrl-C stops everything this script started. A second run reuses what exists.

The parts and their processes are devstack's, as for the tests and the benchmarks; the demo
keeps its state in var/ and runs on the caller's environment (DATABASE_URL, SANDBOX_*, …).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from devstack import (
    APP_ASGI,
    REPO,
    ServerProcess,
    StackError,
    StandIn,
    app_env,
    manage_app,
    stand_in_env,
    trust_stand_in,
    uvicorn_command,
)
from sandbox.orthanc import OrthancError, OrthancProcess, orthanc_is_up
from sandbox.samples import load_into_orthanc

VAR = REPO / "var"
ORTHANC_PORT = int(os.environ.get("DEMO_ORTHANC_PORT", "8142"))
KHEOPS_PORT = int(os.environ.get("DEMO_KHEOPS_PORT", "8100"))
VIEWER_PORT = int(os.environ.get("DEMO_VIEWER_PORT", "8000"))
ORTHANC_URL = f"http://127.0.0.1:{ORTHANC_PORT}"
KHEOPS_URL = f"http://localhost:{KHEOPS_PORT}"
VIEWER_URL = os.environ.get("PUBLIC_BASE_URL", f"http://127.0.0.1:{VIEWER_PORT}")
DEMO_OIDC_CLIENT_ID = "kheops-ohif-admin"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


class Demo:
    """What the demo started (stopped in reverse order), and how it starts each part."""

    def __init__(self) -> None:
        self.servers: list[ServerProcess] = []
        self.orthanc: OrthancProcess | None = None
        self.viewer_env = app_env(VIEWER_URL, inherit=True)

    def stop(self, *_: object, status: int = 0) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for server in reversed(self.servers):
            server.stop()
        if self.orthanc is not None:
            self.orthanc.stop()
        print("\nStopped everything the demo started.", flush=True)
        sys.exit(status)

    def start_orthanc(self) -> None:
        script = REPO / "scripts" / "ensure-debian-packages.sh"
        if subprocess.run([str(script), "orthanc", "orthanc-dicomweb"]).returncode != 0:
            sys.exit("Orthanc is needed for the demo's DICOM store: install it as shown above.")
        if orthanc_is_up(ORTHANC_URL):
            say(f"Reusing the Orthanc already running at {ORTHANC_URL}")
        else:
            say(f"Starting Orthanc at {ORTHANC_URL} (storage in var/orthanc)")
            self.orthanc = OrthancProcess(
                http_port=ORTHANC_PORT, storage_dir=VAR / "orthanc"
            ).start()
        say("Loading the sample studies (CT, MR, JPEG and JPEG 2000 NM, multi-frame US)")
        load_into_orthanc(ORTHANC_URL)

    def start_stand_in(self) -> StandIn:
        say(f"Preparing the KHEOPS stand-in ({KHEOPS_URL})")
        # Its database and secret: the stand-in's defaults in var/, kept from run to run.
        env = stand_in_env(KHEOPS_URL, orthanc_url=ORTHANC_URL, inherit=True)
        stand_in = StandIn(root_url=KHEOPS_URL, env=env)
        stand_in.prepare()
        # Listed before the wait: a Ctrl-C meanwhile must stop it too.
        self.servers.append(stand_in.serve(VAR / "kheops-stand-in.log", threads=8))
        stand_in.wait_until_up()
        return stand_in

    def sign_in_through_the_stand_in(self, stand_in: StandIn) -> str | None:
        """The viewer's admins sign in with the stand-in's OpenID Connect provider, as with a
        hospital's Keycloak: a client there, two people (a superuser and a read-only staff
        member), our settings pointing at it. The people's password; None when the caller's
        environment names a provider of its own (OIDC_ISSUER)."""
        if os.environ.get("OIDC_ISSUER"):
            return None
        say(f"Setting up the stand-in's OpenID Connect provider ({stand_in.oidc_issuer})")
        client_secret = kept_secret(VAR / "demo-oidc-client-secret")
        password = kept_secret(VAR / "demo-idp-password", length=12)
        stand_in.set_up_oidc(
            VIEWER_URL,
            client_id=DEMO_OIDC_CLIENT_ID,
            client_secret=client_secret,
            users=[
                {
                    "username": "demo-admin",
                    "password": password,
                    "first_name": "Ada",
                    "last_name": "Admin",
                    "email": "demo-admin@hospital.invalid",
                    "groups": ["kheops-ohif-admins"],
                },
                {
                    "username": "demo-staff",
                    "password": password,
                    "first_name": "Sam",
                    "last_name": "Staff",
                    "email": "demo-staff@hospital.invalid",
                    "groups": ["kheops-ohif-staff"],
                },
            ],
        )
        self.viewer_env.update(
            {
                "OIDC_ISSUER": stand_in.oidc_issuer,
                "OIDC_PROVIDER_NAME": "KHEOPS stand-in",
                "OIDC_CLIENT_ID": DEMO_OIDC_CLIENT_ID,
                "OIDC_CLIENT_SECRET_FILE": str(VAR / "demo-oidc-client-secret"),
                "OIDC_SUPERUSER_GROUPS": "kheops-ohif-admins",
                "OIDC_STAFF_GROUPS": "kheops-ohif-staff",
            }
        )
        return password

    def start_viewer(self) -> str:
        """Start the viewer, trusting the stand-in; the admin's password."""
        say(f"Starting the viewer ({VIEWER_URL})")
        trust_stand_in(KHEOPS_URL, "KHEOPS stand-in (demo)", env=self.viewer_env)
        password = self.admin_password()
        viewer = ServerProcess.start(
            "viewer",
            # The README's production command.
            uvicorn_command(APP_ASGI, port=VIEWER_PORT, workers=2, access_log=True),
            url=f"http://127.0.0.1:{VIEWER_PORT}",
            env=self.viewer_env,
            log=VAR / "viewer.log",
        )
        self.servers.append(viewer)
        viewer.wait_until_up("/healthz", workers=2)
        return password

    def admin_password(self) -> str:
        path = VAR / "demo-admin-password"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(12)
        script = (
            "from django.contrib.auth.models import User\n"
            "import sys\n"
            "user, _ = User.objects.get_or_create(username='admin', defaults={'is_staff': True, 'is_superuser': True})\n"
            "user.set_password(sys.stdin.read().strip()); user.is_staff = user.is_superuser = True; user.save()\n"
        )
        # On standard input: a password is never in a command line.
        manage_app("shell", "--no-imports", "-c", script, env=self.viewer_env, stdin=password)
        path.write_text(password)
        path.chmod(0o600)
        return password

    def watch(self) -> None:
        while True:
            for server in self.servers:
                if not server.running:
                    print(
                        f"A demo server exited (code {server.process.returncode}); "
                        "see the logs in var/.",
                        flush=True,
                    )
                    self.stop(status=1)
            time.sleep(1)


def kept_secret(path: Path, *, length: int = 32) -> str:
    """A random secret made once and kept in git-ignored var/ (mode 0600)."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(length)
    path.write_text(value)
    path.chmod(0o600)
    return value


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def sign_in_help(idp_password: str | None) -> str:
    if idp_password is None:
        return "    Sign in with your OIDC_ISSUER's provider,"
    return (
        '    "Sign in with KHEOPS stand-in", then at the stand-in\'s provider as demo-admin\n'
        "    (superuser) or demo-staff (read-only: launch records and health), password\n"
        f"    {idp_password} (kept in var/demo-idp-password); sign-out ends both sessions,"
    )


def main() -> None:
    VAR.mkdir(exist_ok=True)
    for port, name in ((KHEOPS_PORT, "KHEOPS stand-in"), (VIEWER_PORT, "viewer")):
        if listening(port):
            sys.exit(
                f"Port {port} (for the {name}) is already in use: stop what runs there, or set DEMO_*_PORT."
            )
    demo = Demo()
    signal.signal(signal.SIGINT, demo.stop)
    signal.signal(signal.SIGTERM, demo.stop)
    try:
        demo.start_orthanc()
        stand_in = demo.start_stand_in()
        idp_password = demo.sign_in_through_the_stand_in(stand_in)
        password = demo.start_viewer()
        say("Registering the viewer in the demo album by its configuration URL")
        client_id = stand_in.register(f"{VIEWER_URL}/providers/ohif/configuration")
    except (StackError, OrthancError) as exc:
        print(f"The demo could not start: {exc}", file=sys.stderr, flush=True)
        demo.stop(status=1)
    print(
        f"""
  The demo is running. Open the KHEOPS stand-in's demo album:

      {KHEOPS_URL}/albums/{stand_in.album_id}

  and click "Open in OHIF Viewer" on a study.

  Viewer admin: {VIEWER_URL}/admin/
{sign_in_help(idp_password)}
    or the local account: user admin, password {password} (kept in var/demo-admin-password)
  Provider client_id in the album: {client_id}.  Logs: var/viewer.log, var/kheops-stand-in.log
  Press Ctrl-C to stop.
""",
        flush=True,
    )
    demo.watch()


if __name__ == "__main__":
    main()
