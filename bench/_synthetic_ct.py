"""A synthetic CT series for the benchmarks: SLICES slices of 512x512, 16-bit, made with pydicom.

A cylinder phantom (a disc whose radius changes along the series, so that every slice
differs) in a field of air, uncompressed (explicit VR little endian): each slice is 512 KiB
of pixels, as a real CT's. The files are written once under var/bench/ (git-ignored) and
reused by later runs; their UIDs are fixed, so a stand-in's Orthanc keeps one copy.

    series = synthetic_ct.ensure()            # the files (made if missing)
    synthetic_ct.load_into_orthanc(url, series)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from devstack import REPO

SLICES = 300
SIZE = 512
# pydicom's UID root, then numbers of our own: the same UIDs on every machine and run.
ROOT = "1.2.826.0.1.3680043.8.498.16300"
STUDY_UID = f"{ROOT}.1"
SERIES_UID = f"{ROOT}.1.1"
CACHE = REPO / "var" / "bench" / f"synthetic-ct-{SLICES}x{SIZE}"
AIR, TISSUE = 0, 1064  # stored values; rescale intercept -1024: -1024 HU and 40 HU


@dataclass(frozen=True)
class SyntheticSeries:
    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]


def instance_uid(number: int) -> str:
    return f"{SERIES_UID}.{number}"


def ensure(directory: Path = CACHE, slices: int = SLICES) -> SyntheticSeries:
    """The series' files, made now only when some are missing."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for number in range(1, slices + 1):
        path = directory / f"slice-{number:04d}.dcm"
        if not path.exists():
            partial = path.with_suffix(".part")
            _slice(number, slices).save_as(partial, enforce_file_format=True)
            partial.replace(path)  # a run stopped midway leaves no half file
        files.append(path)
    return SyntheticSeries(
        study_uid=STUDY_UID,
        series_uid=SERIES_UID,
        sop_instance_uids=tuple(instance_uid(n) for n in range(1, slices + 1)),
        files=tuple(files),
    )


def load_into_orthanc(orthanc_url: str, series: SyntheticSeries) -> None:
    """Upload every slice (`POST /instances`); Orthanc keeps one copy of each."""
    with requests.Session() as session:
        session.trust_env = False
        for path in series.files:
            response = session.post(
                f"{orthanc_url.rstrip('/')}/instances",
                data=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
                timeout=60,
            )
            response.raise_for_status()


def _pixels(number: int, slices: int) -> bytes:
    # A disc centred in the image, its radius swelling and shrinking along the series.
    radius = SIZE * (0.25 + 0.15 * math.sin(math.pi * number / slices))
    centre = SIZE / 2
    air, tissue = AIR.to_bytes(2, "little"), TISSUE.to_bytes(2, "little")
    rows = []
    for y in range(SIZE):
        half = radius**2 - (y + 0.5 - centre) ** 2
        if half <= 0:
            rows.append(air * SIZE)
            continue
        left = max(0, int(centre - math.sqrt(half)))
        right = min(SIZE, int(centre + math.sqrt(half)))
        rows.append(air * left + tissue * (right - left) + air * (SIZE - right))
    return b"".join(rows)


def _slice(number: int, slices: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid(number)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid(number)
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = f"{ROOT}.1.2"
    ds.Modality = "CT"
    ds.PatientName = "Bench^Synthetic CT"
    ds.PatientID = "BENCH-CT-300"
    ds.StudyDate = ds.SeriesDate = "20261129"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Synthetic CT, {slices} slices"
    ds.SeriesDescription = f"Synthetic cylinder, {slices} x {SIZE}²"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-128.0, -128.0, float(-number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = _pixels(number, slices)
    return ds
