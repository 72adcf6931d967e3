"""Sample studies for the KHEOPS stand-in, taken from the test files inside pydicom's wheel.

Only files shipped in the wheel are used (`pydicom.data.get_testdata_file` would otherwise try to
download): CI machines have no network beyond the package registries. UIDs are never modified,
so a study here is exactly what pydicom ships.

Files that share a SOPInstanceUID (e.g. `MR_small.dcm` and its re-encodings) would overwrite each
other in a PACS, so only one of each is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pydicom
import requests
from pydicom.data import get_testdata_file

from sandbox.orthanc import orthanc_session

# StudyInstanceUID -> the bundled files of that study. Checked by tests against the files.
_STUDY_FILES: dict[str, tuple[str, ...]] = {
    # CT, explicit VR little endian, 128x128 16-bit.
    "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322": ("CT_small.dcm",),
    # MR, explicit VR little endian, 64x64 16-bit.
    "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457": ("MR_small.dcm",),
    # NM "Whole Body Bone": one series, two instances, JPEG extended (12-bit) and JPEG 2000.
    "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457": ("JPEG-lossy.dcm", "JPEG2000.dcm"),
    # Ultrasound multi-frame (30 frames), YBR_FULL_422 JPEG baseline. (SC_rgb_jpeg.dcm, the other
    # JPEG baseline candidate, is rejected by Orthanc: implicit VR data under an explicit VR header.)
    "1.2.840.114340.3.8251017118051.1.20160503.120850.2171": ("examples_ybr_color.dcm",),
}


@dataclass(frozen=True)
class SampleStudy:
    study_uid: str
    description: str
    modalities: tuple[str, ...]
    patient_name: str
    files: tuple[Path, ...]


def _bundled_file(name: str) -> Path:
    # download=False: a file missing from the wheel must fail here, never reach the network.
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not bundled with pydicom {pydicom.__version__}")
    return Path(path)


@cache
def sample_studies() -> list[SampleStudy]:
    """The sample studies, read from the bundled files (headers only)."""
    studies = []
    for study_uid, names in _STUDY_FILES.items():
        files = tuple(_bundled_file(name) for name in names)
        datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
        for path, dataset in zip(files, datasets, strict=True):
            if dataset.StudyInstanceUID != study_uid:
                raise ValueError(
                    f"{path.name} belongs to study {dataset.StudyInstanceUID}, not {study_uid}"
                )
        modalities = tuple(sorted({str(ds.get("Modality", "")) for ds in datasets} - {""}))
        first = datasets[0]
        # Several samples have no StudyDescription; we leave the files alone and derive one.
        description = (
            str(first.get("StudyDescription", "") or "")
            or f"{'/'.join(modalities) or 'DICOM'} sample"
        )
        studies.append(
            SampleStudy(
                study_uid=study_uid,
                description=description,
                modalities=modalities,
                patient_name=str(first.get("PatientName", "") or ""),
                files=files,
            )
        )
    return studies


def load_into_orthanc(orthanc_url: str, *, session: requests.Session | None = None) -> list[str]:
    """Upload every sample file to Orthanc (`POST /instances`); returns the study UIDs.

    Idempotent: Orthanc answers "AlreadyStored" for an instance it has, and keeps the original.
    """
    own_session = session is None
    session = session or orthanc_session()
    try:
        for study in sample_studies():
            for path in study.files:
                response = session.post(
                    f"{orthanc_url.rstrip('/')}/instances",
                    data=path.read_bytes(),
                    headers={"Content-Type": "application/dicom"},
                )
                response.raise_for_status()
        return [study.study_uid for study in sample_studies()]
    finally:
        if own_session:
            session.close()
