"""`make run`: the complete demo on one machine.

Starts (or reuses) Orthanc with the sample studies, the KHEOPS stand-in on
http://localhost:8100 and the viewer on http://127.0.0.1:8000 (two different sites, as a
real KHEOPS and viewer would be), trusts the stand-in, registers the viewer in the demo album
through its configuration URL as a KHEOPS album admin would, and prints the one URL to open.
Ctrl-C stops everything this script started. A second run reuses what exists.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sandbox.orthanc import OrthancProcess, orthanc_is_up  # noqa: E402
from sandbox.samples import load_into_orthanc  # noqa: E402

PYTHON = sys.executable
GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
UVICORN = str(Path(PYTHON).with_name("uvicorn"))
VAR = REPO / "var"
ORTHANC_PORT = int(os.environ.get("DEMO_ORTHANC_PORT", "8142"))
KHEOPS_PORT = int(os.environ.get("DEMO_KHEOPS_PORT", "8100"))
VIEWER_PORT = int(os.environ.get("DEMO_VIEWER_PORT", "8000"))
ORTHANC_URL = f"http://127.0.0.1:{ORTHANC_PORT}"
KHEOPS_URL = f"http://localhost:{KHEOPS_PORT}"
VIEWER_URL = os.environ.get("PUBLIC_BASE_URL", f"http://127.0.0.1:{VIEWER_PORT}")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def sandbox_env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sandbox.settings",
        "SANDBOX_ROOT_URL": KHEOPS_URL,
        "SANDBOX_ORTHANC_URL": ORTHANC_URL,
        "SANDBOX_ALLOWED_HOSTS": "localhost,127.0.0.1",
    }


def viewer_env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "kheops_ohif.settings",
        "PUBLIC_BASE_URL": VIEWER_URL,
    }


def run(args: list[str], env: dict[str, str]) -> str:
    completed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{completed.stdout}{completed.stderr}")
    return completed.stdout


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def wait_until_up(url: str, process: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if answers(url):
            return
        time.sleep(0.2)
    sys.exit(f"{name} did not start; see {log}")


def ensure_orthanc_installed() -> None:
    script = REPO / "scripts" / "ensure-debian-packages.sh"
    if subprocess.run([str(script), "orthanc", "orthanc-dicomweb"]).returncode != 0:
        sys.exit("Orthanc is needed for the demo's DICOM store: install it as shown above.")


def start_server(
    name: str,
    args: list[str],
    env: dict[str, str],
    health_url: str,
    children: list[subprocess.Popen],
) -> None:
    log = VAR / f"{name}.log"
    process = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    children.append(process)  # before waiting: Ctrl-C meanwhile must stop it too
    wait_until_up(health_url, process, name, log)


def demo_admin_password() -> str:
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
    subprocess.run(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=REPO,
        env=viewer_env(),
        input=password,
        text=True,
        check=True,
        capture_output=True,
    )
    path.write_text(password)
    path.chmod(0o600)
    return password


def main() -> None:
    VAR.mkdir(exist_ok=True)
    children: list[subprocess.Popen] = []
    orthanc: OrthancProcess | None = None

    def stop(*_: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        if orthanc is not None:
            orthanc.stop()
        print("\nStopped everything the demo started.", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    for port, name in ((KHEOPS_PORT, "KHEOPS stand-in"), (VIEWER_PORT, "viewer")):
        if answers(f"http://127.0.0.1:{port}/"):
            sys.exit(
                f"Port {port} (for the {name}) is already in use: stop what runs there, or set DEMO_*_PORT."
            )

    ensure_orthanc_installed()
    if orthanc_is_up(ORTHANC_URL):
        say(f"Reusing the Orthanc already running at {ORTHANC_URL}")
    else:
        say(f"Starting Orthanc at {ORTHANC_URL} (storage in var/orthanc)")
        orthanc = OrthancProcess(http_port=ORTHANC_PORT, storage_dir=VAR / "orthanc").start()
    say("Loading the sample studies (CT, MR, JPEG and JPEG 2000 NM, multi-frame US)")
    load_into_orthanc(ORTHANC_URL)

    say(f"Preparing the KHEOPS stand-in ({KHEOPS_URL})")
    run([PYTHON, "-m", "django", "migrate", "--noinput", "--verbosity", "0"], sandbox_env())
    seeded = run([PYTHON, "-m", "django", "sandbox_seed"], sandbox_env())
    album_id = next(
        line.split()[1] for line in seeded.splitlines() if line.startswith("demo_album ")
    )
    start_server(
        "kheops-stand-in",
        [
            GUNICORN,
            "sandbox.wsgi",
            "--bind",
            f"127.0.0.1:{KHEOPS_PORT}",
            "--workers",
            "1",
            "--threads",
            "8",
            "--no-control-socket",
        ],
        sandbox_env(),
        f"{KHEOPS_URL}/api/.well-known/report-provider-configuration",
        children,
    )

    say(f"Starting the viewer ({VIEWER_URL})")
    run(
        [PYTHON, "manage.py", "trust_kheops", KHEOPS_URL, "--name", "KHEOPS stand-in (demo)"],
        viewer_env(),
    )
    password = demo_admin_password()
    start_server(
        "viewer",
        # The README's production command.
        [
            UVICORN,
            "kheops_ohif.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(VIEWER_PORT),
            "--workers",
            "2",
            "--timeout-graceful-shutdown",
            "30",
            # The client's address and scheme are ours to decide (launcher.clientaddr).
            "--no-proxy-headers",
        ],
        viewer_env(),
        f"http://127.0.0.1:{VIEWER_PORT}/healthz",
        children,
    )

    say("Registering the viewer in the demo album by its configuration URL")
    client_id = run(
        [
            PYTHON,
            "-m",
            "django",
            "sandbox_register_provider",
            album_id,
            f"{VIEWER_URL}/providers/ohif/configuration",
            "--name",
            "OHIF Viewer",
        ],
        sandbox_env(),
    ).strip()

    print(
        f"""
  The demo is running. Open the KHEOPS stand-in's demo album:

      {KHEOPS_URL}/albums/{album_id}

  and click "Open in OHIF Viewer" on a study.

  Viewer admin: {VIEWER_URL}/admin/  (user admin, password {password}, kept in var/demo-admin-password)
  Provider client_id in the album: {client_id}.  Logs: var/viewer.log, var/kheops-stand-in.log
  Press Ctrl-C to stop.
""",
        flush=True,
    )
    while True:
        for child in children:
            if child.poll() is not None:
                print(
                    f"A demo server exited (code {child.returncode}); see the logs in var/.",
                    flush=True,
                )
                stop()
        time.sleep(1)


if __name__ == "__main__":
    main()
