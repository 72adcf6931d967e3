"""The relay's pure parts, in-process: token parsing, multipart, the study check, URL rewriting,
and how Orthanc's failures map to statuses (faked with `responses` at the HTTP boundary)."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
import requests
import responses
from django.http.request import HttpHeaders
from django.utils.datastructures import MultiValueDict

from sandbox import dicomweb
from sandbox.dicomweb import (
    BodyPart,
    MalformedMultipart,
    UpstreamTimeout,
    UpstreamUnavailable,
    _PublicUrls,
    _upstream_headers,
    call_orthanc,
    grant_from_claims,
    json_study_attributes,
    orthanc_query,
    split_multipart,
    token_from_header,
    unmatched_study_attributes,
)
from sandbox.orthanc import DEFAULT_TIMEOUT, TimeoutSession

ORTHANC = "http://orthanc.test"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer   abc.def ", "abc.def"),
        (basic("anything", "abc.def"), "abc.def"),
        (basic("", "abc.def"), "abc.def"),
        (basic("user", ""), None),
        ("Basic not-base64!", None),
        ("Bearer", None),
        ("Digest abc", None),
        ("", None),
    ],
)
def test_token_from_header(header: str, token: str | None) -> None:
    assert token_from_header(header) == token


def test_grant_accepts_a_lone_study_as_a_string() -> None:
    grant = grant_from_claims({"studyUID": "1.2.3", "scope": "read"})

    assert grant.study_uids == frozenset({"1.2.3"})
    assert not grant.can_write


def test_grant_with_write_scope_can_write() -> None:
    assert grant_from_claims({"studyUID": ["1.2"], "scope": "read write"}).can_write


def test_split_multipart_reads_parts_with_and_without_headers() -> None:
    body = (
        b"preamble\r\n--b\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n\r\n"
        b"--b\r\n\r\nsecond\r\n--b--\r\nepilogue"
    )

    assert split_multipart(body, "b") == [
        BodyPart({"content-type": "application/dicom"}, b"first\r\n"),
        BodyPart({}, b"second"),
    ]


def test_split_multipart_keeps_binary_content_intact() -> None:
    content = bytes(range(256)) * 4 + b"\r\n--bo"
    body = b"--boundary\r\nContent-Type: application/dicom\r\n\r\n" + content + b"\r\n--boundary--"

    assert split_multipart(body, "boundary")[0].content == content


@pytest.mark.parametrize(
    "body",
    [b"--b\r\nContent-Type: x\r\n\r\ncontent", b"--b\r\nno end of headers", b"--bno-newline"],
    ids=["no-closing-boundary", "no-header-end", "no-newline"],
)
def test_split_multipart_refuses_broken_bodies(body: bytes) -> None:
    with pytest.raises(MalformedMultipart):
        split_multipart(body, "b")


STORED = {
    "StudyDate": "20040119",
    "StudyTime": "072730",
    "StudyDescription": "e+1",
    "TimezoneOffsetFromUTC": None,
    "AccessionNumber": None,
    "ReferringPhysicianName": None,
    "PatientName": "CompressedSamples^CT1",
    "PatientID": "1CT1",
    "PatientBirthDate": None,
    "PatientSex": "O",
    "StudyID": "1CT1",
}


def test_identical_study_attributes_match() -> None:
    assert unmatched_study_attributes(STORED, dict(STORED)) == []


def test_missing_uploaded_values_are_tolerated_except_study_id() -> None:
    uploaded = dict.fromkeys(STORED)

    assert unmatched_study_attributes(STORED, uploaded) == ["StudyID"]


def test_a_value_where_the_stored_study_has_none_is_a_mismatch() -> None:
    uploaded = {**STORED, "AccessionNumber": "A1", "PatientID": "other"}

    assert unmatched_study_attributes(STORED, uploaded) == ["AccessionNumber", "PatientID"]


def test_person_names_compare_without_separators() -> None:
    uploaded = {
        **STORED,
        "PatientName": "CompressedSamplesCT1^^^",
        "ReferringPhysicianName": "^^^^",
    }

    assert unmatched_study_attributes(STORED, uploaded) == []


def test_json_study_attributes_reads_person_names_and_empty_values() -> None:
    instance = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John", "Ideographic": "X"}]},
        "00080050": {"vr": "SH"},
        "00200010": {"vr": "SH", "Value": ["7"]},
    }

    values = json_study_attributes(instance)

    assert values["PatientName"] == "Doe^John=X"
    assert values["AccessionNumber"] is None
    assert values["StudyID"] == "7"


URLS = _PublicUrls(
    upstream_headers={"Forwarded": "host=viewer.test:8100;proto=http"},
    orthanc_prefix=b"http://viewer.test:8100/dicom-web/",
    public_prefix=b"http://viewer.test:8100/api/",
)


def test_urls_are_rewritten_across_chunk_boundaries() -> None:
    body = b'{"BulkDataURI": "http://viewer.test:8100/dicom-web/studies/1/bulk"}' * 3
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]

    rewritten = b"".join(URLS.rewrite_stream(chunks))

    assert rewritten == body.replace(b"/dicom-web/", b"/api/")


def test_the_authorization_header_is_never_sent_to_orthanc() -> None:
    # HttpRequest() would need configured settings; the function only reads `headers`.
    request = SimpleNamespace(
        headers=HttpHeaders(
            {
                "HTTP_AUTHORIZATION": "Bearer secret-token",
                "HTTP_ACCEPT": "application/dicom+json",
                "HTTP_COOKIE": "a=b",
            }
        )
    )

    headers = _upstream_headers(request, URLS)  # type: ignore[arg-type]

    assert headers["Accept"] == "application/dicom+json"
    assert not {"authorization", "cookie"} & {name.lower() for name in headers}
    assert "secret-token" not in str(headers)


def test_orthanc_query_keeps_commas_and_wildcards_literal() -> None:
    # As Django decodes them from the client's query string.
    params = MultiValueDict(
        {"includefield": ["00081030,00080060"], "PatientName": ["Doe*"], "viewport": ["64,64"]}
    )

    assert orthanc_query(params) == "includefield=00081030,00080060&PatientName=Doe*&viewport=64,64"


def test_orthanc_query_escapes_what_would_break_the_query() -> None:
    assert orthanc_query(MultiValueDict({"a": ["x&y=z#"]})) == "a=x%26y%3Dz%23"


@responses.activate
@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (requests.ConnectTimeout(), UpstreamTimeout),
        (requests.ReadTimeout(), UpstreamTimeout),
        (requests.ConnectionError(), UpstreamUnavailable),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
    ],
)
def test_orthanc_failures_become_502_or_504(outcome: object, error: type[Exception]) -> None:
    if isinstance(outcome, int):
        responses.get(f"{ORTHANC}/dicom-web/studies", status=outcome)
    else:
        responses.get(f"{ORTHANC}/dicom-web/studies", body=outcome)

    with pytest.raises(error) as raised:
        call_orthanc("GET", "/dicom-web/studies", base_url=ORTHANC)

    assert raised.value.status == (504 if error is UpstreamTimeout else 502)


@responses.activate
def test_orthanc_client_errors_are_passed_on() -> None:
    responses.get(f"{ORTHANC}/dicom-web/studies/1/metadata", status=404, json={"Message": "nope"})

    assert call_orthanc("GET", "/dicom-web/studies/1/metadata", base_url=ORTHANC).status_code == 404


def test_every_orthanc_call_has_a_timeout() -> None:
    session = dicomweb.session()

    # The session that puts its default timeout on every call (tests/sandbox/test_orthanc.py).
    assert isinstance(session, TimeoutSession)
    assert session.default_timeout == DEFAULT_TIMEOUT
    assert session.trust_env is False
