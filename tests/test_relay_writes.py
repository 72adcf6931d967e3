"""The write audit of the relay: each upload (STOW-RS) leaves a LaunchWrite.

KHEOPS's DICOMweb is faked with respx (tests/fakes.py), as in tests/test_relay.py, whose
fixtures and helpers these tests share.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.test import Client

from launcher import stow
from launcher.models import LaunchRecord, LaunchWrite
from tests import test_relay
from tests.asgi_calls import answer_of, cookie_header, http_scope, transaction_kept
from tests.fakes import ROOT, STUDY_1, FakeKheops
from tests.test_relay import ORIGIN, ask, stow_body

# The relay tests' fixtures: a relay-mode provider, and a viewer launched in the browser.
relay_provider = test_relay.relay_provider
relayed = test_relay.relayed

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SR_UID = "2.25.118463274938745523659811873245867"
CT_UID = "2.25.226739487237459273459287345928734"


def referenced(sop_class: str, sop_instance: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop_instance]},
    }
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    else:
        item["00081190"] = {"vr": "UR", "Value": [f"{ROOT}/api/studies/{STUDY_1}"]}
    return item


def stow_answer(stored: list[Any], failed: list[Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "00081190": {"vr": "UR", "Value": [f"{ROOT}/api/studies/{STUDY_1}"]},
        "00081199": {"vr": "SQ", "Value": stored},
    }
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    return answer


def kheops_answers(fake: FakeKheops, status: int, body: bytes, **headers: str) -> None:
    async def answer(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(
            status, headers={"Content-Type": "application/dicom+json", **headers}, content=body
        )

    fake.dicomweb_answer = answer


def upload(client: Client, path: str) -> Any:
    body, content_type = stow_body(4096)
    return ask(client, path, method="POST", body=body, content_type=content_type, origin=ORIGIN)


def test_a_stored_upload_is_recorded_with_its_instances(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    answer = json.dumps(stow_answer([referenced(SR_CLASS, SR_UID)])).encode()
    kheops_answers(fake_kheops, 200, answer)

    response = upload(client, f"{root}/studies")

    assert response.status == 200
    assert response.body == answer  # passed on as KHEOPS sent it
    [write] = LaunchWrite.objects.all()
    launch = LaunchRecord.objects.get(launch_id=root.split("/")[2])
    assert write.launch == launch
    assert write.study_uid == STUDY_1  # from the answer's RetrieveURL: the path named none
    assert write.status == 200
    assert write.stored == [{"sop_instance_uid": SR_UID, "sop_class_uid": SR_CLASS}]
    assert (write.stored_count, write.failed, write.failed_count, write.note) == (1, [], 0, "")
    for token in fake_kheops.issued_tokens:
        assert token not in json.dumps([write.stored, write.failed, write.note])


def test_a_partly_refused_upload_records_both_lists(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    answer = stow_answer(
        [referenced(SR_CLASS, SR_UID)], failed=[referenced(CT_CLASS, CT_UID, reason=0x0124)]
    )
    kheops_answers(fake_kheops, 202, json.dumps(answer).encode())

    response = upload(client, f"{root}/studies/{STUDY_1}")

    assert response.status == 202
    [write] = LaunchWrite.objects.all()
    assert (write.status, write.study_uid, write.stored_count, write.failed_count) == (
        202,
        STUDY_1,
        1,
        1,
    )
    assert write.failed == [
        {"sop_instance_uid": CT_UID, "sop_class_uid": CT_CLASS, "reason": 0x0124}
    ]


def test_a_compressed_answer_is_read_and_passed_on_compressed(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    compressed = gzip.compress(json.dumps(stow_answer([referenced(SR_CLASS, SR_UID)])).encode())
    kheops_answers(fake_kheops, 200, compressed, **{"Content-Encoding": "gzip"})

    response = upload(client, f"{root}/studies")

    assert response.body == compressed
    [write] = LaunchWrite.objects.all()
    assert write.stored == [{"sop_instance_uid": SR_UID, "sop_class_uid": SR_CLASS}]


@pytest.mark.parametrize(
    ("status", "body", "note"),
    [
        (500, b"<html>Internal error</html>", "not DICOM JSON"),
        (409, b"[1, 2]", "not DICOM JSON"),
        (204, b"", "empty"),
    ],
)
def test_an_answer_that_is_not_dicom_json_is_recorded_with_its_status(
    client: Client,
    relayed: Callable[..., str],
    fake_kheops: FakeKheops,
    status: int,
    body: bytes,
    note: str,
) -> None:
    root = relayed()
    kheops_answers(fake_kheops, status, body)

    response = upload(client, f"{root}/studies")

    assert response.status == status
    [write] = LaunchWrite.objects.all()
    assert (write.status, write.stored, write.stored_count) == (status, [], 0)
    assert note in write.note


def test_an_upload_kheops_never_answered_is_recorded_without_status(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()

    async def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    fake_kheops.dicomweb_answer = down

    response = upload(client, f"{root}/studies/{STUDY_1}")

    assert response.status == 502
    [write] = LaunchWrite.objects.all()
    assert (write.status, write.study_uid, write.stored) == (None, STUDY_1, [])
    assert write.note == "KHEOPS could not be reached."


def test_reads_leave_no_write_record(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    kheops_answers(fake_kheops, 200, json.dumps(stow_answer([])).encode())

    assert ask(client, f"{root}/studies/{STUDY_1}/series").status == 200

    assert not LaunchWrite.objects.exists()


def test_a_refused_upload_reaches_nobody_and_leaves_no_record(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    body, content_type = stow_body(1024)

    answer = ask(
        client,
        f"{root}/studies",
        method="POST",
        body=body,
        content_type=content_type,
        origin="https://evil.example",
    )

    assert answer.status == 403
    assert not fake_kheops.dicomweb_requests
    assert not LaunchWrite.objects.exists()


class AnswerThenSilence(httpx.AsyncByteStream):
    """KHEOPS's answer begins, then waits until it is closed."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        while not self.closed:
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        self.closed = True


def test_a_browser_that_goes_away_mid_answer_still_leaves_a_record(
    client: Client, relayed: Callable[..., str], fake_kheops: FakeKheops
) -> None:
    root = relayed()
    stream = AnswerThenSilence(b'{"00081199": {"vr": "SQ", "Value": [')

    async def slow(request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(
            200, headers={"Content-Type": "application/dicom+json"}, stream=stream
        )

    fake_kheops.dicomweb_answer = slow
    body, content_type = stow_body(1024)

    async def browser() -> None:
        gone = asyncio.Event()
        scope = http_scope(
            "POST",
            f"{root}/studies",
            headers=[
                cookie_header(client),
                (b"origin", ORIGIN.encode()),
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        # The browser closes the connection after the first piece of the answer.
        await answer_of(ASGIHandler().handle, scope, body=body, gone=gone, on_body=gone.set)

    with transaction_kept():
        async_to_sync(browser)()

    assert stream.closed
    [write] = LaunchWrite.objects.all()
    assert (write.status, write.stored) == (200, [])
    assert "browser went away" in write.note


# --- Reading the answer (launcher.stow) ---------------------------------------------------------


def test_an_answer_beyond_the_copy_limit_is_not_read() -> None:
    copy = stow.AnswerCopy(limit=10)
    copy.add(b"0123456")
    copy.add(b"789abc")

    assert copy.overflowed and copy.body() == b""


def test_a_compressed_answer_is_read_within_bounds() -> None:
    huge = gzip.compress(b" " * (stow.MAX_ANSWER_BYTES + 10) + b"{}")

    assert "too large" in stow.read_answer(huge, "gzip").note
    assert "could not be decompressed" in stow.read_answer(b"not gzip", "gzip").note
    assert "not read" in stow.read_answer(b"...", "br").note


def test_values_that_are_not_uids_are_left_out() -> None:
    answer = stow_answer([referenced(SR_CLASS, "<script>")])

    outcome = stow.read_answer(json.dumps(answer).encode())

    assert outcome.stored == [{"sop_instance_uid": "", "sop_class_uid": SR_CLASS}]


def test_other_failures_count_as_refused() -> None:
    answer = stow_answer([])
    answer["0008119A"] = {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [0xA900]}}]}

    outcome = stow.read_answer(json.dumps(answer).encode())

    assert outcome.failed == [{"sop_instance_uid": "", "sop_class_uid": "", "reason": 0xA900}]
