"""The sandbox's own Orthanc: its runner, its configuration, the samples and the commands.

A real Orthanc (Debian packages, installed by scripts/ensure-debian-packages.sh) runs on free loopback ports
with temporary storage. No Django settings are involved in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from devstack import free_port
from sandbox.orthanc import (
    DEFAULT_STORAGE_DIR,
    DICOMWEB_PLUGIN,
    REPO_ROOT,
    OrthancError,
    OrthancProcess,
    orthanc_config,
    orthanc_is_up,
    orthanc_session,
)
from sandbox.samples import load_into_orthanc, sample_studies

COMPRESSED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    with OrthancProcess(
        http_port=free_port(), storage_dir=tmp_path_factory.mktemp("orthanc")
    ) as process:
        yield process


def test_config_is_loopback_only_without_auth_with_dicomweb(tmp_path: Path) -> None:
    config = orthanc_config(http_port=18142, storage_dir=tmp_path, dicom_port=None)

    assert config["HttpPort"] == 18142
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is False
    assert config["DicomServerEnabled"] is False
    assert config["StorageDirectory"].startswith(str(tmp_path))
    assert config["Plugins"] == [str(DICOMWEB_PLUGIN)]
    assert config["DicomWeb"]["Enable"] is True
    assert config["DicomWeb"]["Root"] == "/dicom-web/"


def test_config_enables_the_dicom_server_only_on_request(tmp_path: Path) -> None:
    config = orthanc_config(http_port=18142, storage_dir=tmp_path, dicom_port=14342)

    assert config["DicomServerEnabled"] is True
    assert config["DicomPort"] == 14342


def test_default_storage_is_under_the_repository_var_folder() -> None:
    assert DEFAULT_STORAGE_DIR == REPO_ROOT / "var" / "orthanc"
    assert (REPO_ROOT / "sandbox" / "orthanc.py").exists()


def test_orthanc_starts_with_its_own_config_and_answers(orthanc: OrthancProcess) -> None:
    with orthanc_session() as session:
        system = session.get(f"{orthanc.url}/system").json()
        plugins = session.get(f"{orthanc.url}/plugins").json()

    assert system["HttpPort"] == orthanc.http_port
    assert system["Name"] == "kheops-sandbox"
    assert "dicom-web" in plugins
    assert orthanc.config_path.parent == orthanc.storage_dir


def test_a_second_orthanc_on_a_busy_port_is_refused(orthanc: OrthancProcess) -> None:
    with pytest.raises(OrthancError, match="already answers"):
        OrthancProcess(http_port=orthanc.http_port, storage_dir=orthanc.storage_dir).start()


def test_orthanc_stops_cleanly(tmp_path: Path) -> None:
    process = OrthancProcess(http_port=free_port(), storage_dir=tmp_path)
    with process:
        assert orthanc_is_up(process.url)
        pid = process.pid

    assert not orthanc_is_up(process.url)
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    process.stop()  # stopping twice is harmless


def test_orthanc_is_up_is_false_when_nothing_listens() -> None:
    assert orthanc_is_up(f"http://127.0.0.1:{free_port()}", timeout=0.5) is False


def test_session_has_a_timeout_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, Any]] = []

    def send(adapter: Any, request: requests.PreparedRequest, **kwargs: Any) -> None:
        sent.append((request.method or "", kwargs["timeout"]))
        raise requests.ConnectionError("not sent")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    url = f"http://127.0.0.1:{free_port()}/system"
    with orthanc_session((0.5, 2.0)) as session:
        for method in ("GET", "POST", "PUT", "DELETE"):
            with pytest.raises(requests.ConnectionError):
                session.request(method, url)
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=7)  # a call's own timeout wins

    assert sent == [
        ("GET", (0.5, 2.0)),
        ("POST", (0.5, 2.0)),
        ("PUT", (0.5, 2.0)),
        ("DELETE", (0.5, 2.0)),
        ("GET", 7),
    ]


def test_samples_cover_ct_mr_and_compressed_studies() -> None:
    studies = sample_studies()
    modalities = {modality for study in studies for modality in study.modalities}
    transfer_syntaxes = {
        str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for study in studies
        for path in study.files
    }

    assert len({study.study_uid for study in studies}) == len(studies) >= 3
    assert {"CT", "MR"} <= modalities
    assert transfer_syntaxes & COMPRESSED_TRANSFER_SYNTAXES
    for study in studies:
        assert study.description
        for path in study.files:
            # Bundled in the wheel: never downloaded.
            assert Path(pydicom.__file__).parent in path.parents
            assert (
                pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study.study_uid
            )


def test_loading_samples_is_idempotent(orthanc: OrthancProcess) -> None:
    first = load_into_orthanc(orthanc.url)
    second = load_into_orthanc(orthanc.url)

    with orthanc_session() as session:
        stored = session.get(f"{orthanc.url}/statistics").json()
    assert first == second == [study.study_uid for study in sample_studies()]
    assert stored["CountStudies"] == len(first)
    assert stored["CountInstances"] == sum(len(study.files) for study in sample_studies())


def _manage(*args: str, orthanc_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SANDBOX_", "DJANGO_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "sandbox.settings",
            "PYTHONPATH": str(REPO_ROOT),
            "SANDBOX_ORTHANC_URL": orthanc_url,
            "SANDBOX_SECRET": "test-only-secret",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_orthanc_command_reuses_an_orthanc_already_running(orthanc: OrthancProcess) -> None:
    completed = _manage(
        "sandbox_orthanc", "--port", str(orthanc.http_port), orthanc_url=orthanc.url
    )

    assert completed.returncode == 0, completed.stderr
    assert "reusing" in completed.stdout
    assert orthanc_is_up(orthanc.url)


def test_load_samples_command_lists_the_studies(orthanc: OrthancProcess) -> None:
    completed = _manage("sandbox_load_samples", orthanc_url=orthanc.url)

    assert completed.returncode == 0, completed.stderr
    for study in sample_studies():
        assert study.study_uid in completed.stdout


def test_load_samples_command_fails_clearly_without_orthanc() -> None:
    completed = _manage("sandbox_load_samples", orthanc_url=f"http://127.0.0.1:{free_port()}")

    assert completed.returncode != 0
    assert "could not load the samples" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_ensure_packages_script_does_nothing_when_orthanc_is_installed(tmp_path: Path) -> None:
    # apt-get stand-ins that leave a trace: the script must not call them.
    for tool in ("apt-get", "sudo"):
        fake = tmp_path / tool
        fake.write_text(f'#!/bin/sh\necho "$0 $*" >> {tmp_path / "called"}\n')
        fake.chmod(0o755)
    completed = subprocess.run(
        [
            "bash",
            str(REPO_ROOT / "scripts" / "ensure-debian-packages.sh"),
            "orthanc",
            "orthanc-dicomweb",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )

    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "", "")
    assert not (tmp_path / "called").exists()
