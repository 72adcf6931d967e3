"""The audit trail read back: filtering by study and the CSV export.

Hospitals ask "who viewed this patient's study, when, from where". Every launch attempt
leaves one `LaunchRecord` (written by `services.launch`); the admin and the audit API
(`launcher/api/`) read them through the functions here.

What was *written* during a launch (DICOM SR measurements, segmentations) is known in
relay mode only: the uploads pass through `/launches/<launch_id>/dicomweb/studies`, and each
leaves one `LaunchWrite` keyed to the launch record (launcher.stow), with the instances
KHEOPS stored and refused. In direct mode OHIF stores them straight at KHEOPS: this server
never sees them. The API lists a launch record's `writes`; the CSV export counts them in
its last column.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime
from itertools import islice

from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models import Count, QuerySet

from launcher.models import LaunchRecord

CSV_COLUMNS = [
    "id",
    "created_at",
    "outcome",
    "verified",
    "failure_detail",
    "kheops_server",
    "kheops_root_url",
    "provider",
    "client_id",
    "album_id",
    "study_uids",
    "user_sub",
    "user_name",
    "user_email",
    "remote_addr",
    "launch_id",
    "expires_at",
    "writes",  # how many uploads went through the relay (launcher.stow)
]
# A cell starting with one of these is a formula to a spreadsheet; user names come from
# KHEOPS and failure details from upstream answers, so neither is trusted (CWE-1236).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_EXPORT_CHUNK = 1000


def records_with_study(queryset: QuerySet[LaunchRecord], study_uid: str) -> QuerySet[LaunchRecord]:
    """The records whose `study_uids` list holds exactly `study_uid`."""
    if connection.features.supports_json_field_contains:
        return queryset.filter(study_uids__contains=[study_uid])
    # SQLite has no JSON containment: match the quoted element in the JSON text. A DICOM
    # UID is digits and dots only (callers validate it), so it needs no escaping.
    return queryset.filter(study_uids__icontains=f'"{study_uid}"')


def csv_lines(records: Iterable[LaunchRecord]) -> Iterator[str]:
    """The CSV export, header first, one line at a time (for a streaming response)."""
    buffer = _LineBuffer()
    writer = csv.writer(buffer)
    yield writer.writerow(CSV_COLUMNS)
    for record in records:
        yield writer.writerow([_cell(value) for value in _csv_values(record)])


async def streamed(lines: Iterator[str], *, chunk: int = 500) -> AsyncIterator[str]:
    """`lines` for a streaming response under ASGI, read a chunk at a time in the request's
    thread (where the export's database cursor lives). Given a plain iterator, Django would
    read it whole into memory before sending anything."""
    read = sync_to_async(_next_lines, thread_sensitive=True)
    while lines_read := await read(lines, chunk):
        for line in lines_read:
            yield line


def _next_lines(lines: Iterator[str], count: int) -> list[str]:
    return list(islice(lines, count))


def export_queryset(queryset: QuerySet[LaunchRecord]) -> Iterator[LaunchRecord]:
    """`queryset` in the export's order, fetched in chunks so memory stays flat."""
    return (
        queryset.select_related("kheops_server", "provider")
        .annotate(writes_count=Count("writes"))
        .order_by("-created_at", "-id")
        .iterator(chunk_size=_EXPORT_CHUNK)
    )


def _csv_values(record: LaunchRecord) -> list[object]:
    server = record.kheops_server
    return [
        record.pk,
        _iso(record.created_at),
        record.outcome,
        "true" if record.verified else "false",
        record.failure_detail,
        server.name if server else "",
        server.root_url if server else "",
        record.provider.slug if record.provider else "",
        record.client_id,
        record.album_id,
        " ".join(record.study_uids or []),
        record.user_sub,
        record.user_name,
        record.user_email,
        record.remote_addr or "",
        record.launch_id or "",
        _iso(record.expires_at),
        getattr(record, "writes_count", 0),
    ]


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


class _LineBuffer:
    """A file-like object whose write() hands the line back, so csv.writer can stream."""

    def write(self, value: str) -> str:
        return value
