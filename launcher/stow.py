"""The write audit of the relay: what each upload (STOW-RS) stored, as KHEOPS answered it.

An upload's answer passes to the browser as KHEOPS sends it (launcher.views streams it);
on the way, `AnswerCopy` keeps the first MAX_ANSWER_BYTES of it. Once the stream ends (or
breaks off, or the browser goes away) `record` reads that copy and writes one LaunchWrite
for the launch: the study, KHEOPS's HTTP status, and the instances stored and refused.

KHEOPS's STOW-RS answer is a DICOM JSON dataset (PS3.18 §10.5.3): ReferencedSOPSequence
(0008,1199) lists the instances stored, each with ReferencedSOPClassUID (0008,1150) and
ReferencedSOPInstanceUID (0008,1155); FailedSOPSequence (0008,1198) the instances refused,
each with a FailureReason (0008,1197), and OtherFailuresSequence (0008,119A) the parts
refused for other reasons; RetrieveURL (0008,1190) the study's address. An
answer that is compressed is decompressed here (gzip or deflate, bounded too); one that is
not DICOM JSON is recorded with its status alone. Nothing of the request is kept: not the
token, not the uploaded data.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.models import LaunchRecord, LaunchWrite

logger = logging.getLogger(__name__)

# A STOW answer lists about 200 bytes per instance: a megabyte is thousands of instances.
MAX_ANSWER_BYTES = 1024 * 1024
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
OTHER_FAILURES_SEQUENCE = "0008119A"  # instances refused that are not SOP instances proper
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"
UID = re.compile(r"[0-9.]{1,64}\Z")
STUDY_IN_URL = re.compile(r"/studies/([0-9.]{1,64})(?:[/?]|\Z)")
# zlib's window bits: 32 + 15 detects a gzip or a zlib header by itself.
AUTO_HEADER = 47


@dataclass
class AnswerCopy:
    """The first MAX_ANSWER_BYTES of an answer's bytes, as they pass."""

    limit: int = MAX_ANSWER_BYTES
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflowed: bool = False

    def add(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        if self.size + len(chunk) > self.limit:
            self.overflowed = True
            self.chunks.clear()  # only a whole answer can be read
            return
        self.chunks.append(chunk)
        self.size += len(chunk)

    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class Outcome:
    """What an answer says was stored and refused (or why it could not be read)."""

    study_uid: str = ""
    stored: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def read_answer(body: bytes, content_encoding: str = "") -> Outcome:
    """The instances a STOW-RS answer lists; `note` says why when it cannot be read."""
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(AUTO_HEADER if encoding != "deflate" else zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, MAX_ANSWER_BYTES)
        except zlib.error:
            return Outcome(note="KHEOPS's compressed answer could not be decompressed.")
        if inflater.unconsumed_tail:
            return Outcome(note="KHEOPS's answer is too large to be read.")
    elif encoding not in ("", "identity"):
        return Outcome(note=f"KHEOPS's answer is encoded ({encoding[:40]}): not read.")
    if not body.strip():
        return Outcome(note="KHEOPS's answer is empty.")
    try:
        dataset = json.loads(body)
    except ValueError:
        return Outcome(note="KHEOPS's answer is not DICOM JSON.")
    if not isinstance(dataset, dict):
        return Outcome(note="KHEOPS's answer is not DICOM JSON.")
    return Outcome(
        study_uid=_study_of(dataset),
        stored=[_instance(item) for item in _items(dataset, REFERENCED_SOP_SEQUENCE)],
        failed=[
            {**_instance(item), "reason": _first(item, FAILURE_REASON)}
            for tag in (FAILED_SOP_SEQUENCE, OTHER_FAILURES_SEQUENCE)
            for item in _items(dataset, tag)
        ],
    )


def _items(dataset: Mapping[str, Any], tag: str) -> list[Mapping[str, Any]]:
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def _first(dataset: Mapping[str, Any], tag: str) -> Any:
    values = _items_or_values(dataset.get(tag))
    value = values[0] if values else None
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _items_or_values(element: Any) -> list[Any]:
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _uid(dataset: Mapping[str, Any], tag: str) -> str:
    value = _first(dataset, tag)
    return value if isinstance(value, str) and UID.match(value) else ""


def _instance(item: Mapping[str, Any]) -> dict[str, str]:
    return {
        "sop_instance_uid": _uid(item, REFERENCED_SOP_INSTANCE_UID),
        "sop_class_uid": _uid(item, REFERENCED_SOP_CLASS_UID),
    }


def _study_of(dataset: Mapping[str, Any]) -> str:
    for element in (dataset, *_items(dataset, REFERENCED_SOP_SEQUENCE)):
        url = _first(element, RETRIEVE_URL)
        match = STUDY_IN_URL.search(url) if isinstance(url, str) else None
        if match:
            return match.group(1)
    return ""


def record(
    launch_id: str,
    study_uids: tuple[str, ...],
    status: int | None,
    answer: AnswerCopy | None,
    *,
    content_encoding: str = "",
    note: str = "",
) -> LaunchWrite | None:
    """Write the audit row of one upload (blocking: call through launcher.blocking.run)."""
    launch = LaunchRecord.objects.filter(launch_id=launch_id).first()
    if launch is None:  # a relayed grant always has its record; never fail the upload
        logger.warning("An upload through the relay has no launch record to be recorded in")
        return None
    outcome = Outcome()
    if answer is not None and answer.overflowed:
        outcome.note = "KHEOPS's answer is too large to be read."
    elif answer is not None and (answer.size or not note):
        outcome = read_answer(answer.body(), content_encoding)
    return LaunchWrite.objects.create(
        launch=launch,
        study_uid=study_uids[0] if study_uids else outcome.study_uid,
        status=status,
        stored=outcome.stored,
        stored_count=len(outcome.stored),
        failed=outcome.failed,
        failed_count=len(outcome.failed),
        note=" ".join(part for part in (note, outcome.note) if part)[:255],
    )
