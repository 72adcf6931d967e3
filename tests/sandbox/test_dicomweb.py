"""The stand-in's DICOMweb relay, against a real Orthanc loaded with the sample studies.

The stand-in runs as a subprocess server (``sandbox_factory`` from conftest.py) pointed at a
session Orthanc. Access tokens are minted in the stand-in's own format (KHEOPS's report-provider
token: HS256 under the stand-in secret, for a registered provider), and one test goes through
the real code flow to show the relay takes what `/api/token` issues.
"""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import jwt
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from devstack import free_port
from sandbox.orthanc import OrthancProcess, orthanc_session
from sandbox.samples import load_into_orthanc, sample_studies

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_INSTANCE = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
NM_STUDY = "1.3.6.1.4.1.5962.1.2.8.20040826185059.5457"
NM_SERIES = "1.3.6.1.4.1.5962.1.3.8.1.20040826185059.5457"
NM_JPEG_INSTANCE = "1.3.6.1.4.1.5962.1.1.8.1.5.20040826185059.5457"
NM_J2K_INSTANCE = "1.3.6.1.4.1.5962.1.1.8.1.3.20040826185059.5457"
TOKEN_STUDIES = (CT_STUDY, NM_STUDY)
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
STOW_FAILED_SOP_SEQUENCE = "00081198"
STOW_REFERENCED_SOP_SEQUENCE = "00081199"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    with OrthancProcess(
        http_port=free_port(), storage_dir=tmp_path_factory.mktemp("relay-orthanc")
    ) as process:
        load_into_orthanc(process.url)
        yield process


@pytest.fixture(scope="session")
def relay(sandbox_factory: Callable[..., Any], orthanc: OrthancProcess) -> Any:
    """A stand-in whose DICOMweb relay talks to the session Orthanc."""
    return sandbox_factory({"SANDBOX_ORTHANC_URL": orthanc.url})


@pytest.fixture(scope="session")
def client_id(relay: Any, fake_provider_server: Any) -> str:
    response = relay.register_provider(fake_provider_server.config_url)
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


Mint = Callable[..., str]


@pytest.fixture(scope="session")
def mint(relay: Any, client_id: str) -> Mint:
    """Mint a report-provider access token as the stand-in's /api/token does (KHEOPS §6.1)."""

    def mint_token(
        studies: tuple[str, ...] = TOKEN_STUDIES,
        scope: str = "read write",
        lifetime: int = 3600,
        azp: str | None = None,
    ) -> str:
        now = int(time.time())
        return jwt.encode(
            {
                "iss": relay.root_url,
                "aud": relay.root_url,
                "sub": "sandbox-test-user",
                "azp": azp or client_id,
                "scope": scope,
                "type": "report_generator",
                "studyUID": list(studies),
                "iat": now,
                "nbf": now,
                "exp": now + lifetime,
            },
            relay.env["SANDBOX_SECRET"],
            algorithm="HS256",
        )

    return mint_token


@pytest.fixture(scope="session")
def token(mint: Mint) -> str:
    return mint()


@pytest.fixture(scope="session")
def http() -> Iterator[requests.Session]:
    with orthanc_session((3.0, 30.0)) as session:
        yield session


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def instance_path(study: str, series: str, instance: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{instance}"


def multipart_parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart answer, each as (headers, body)."""
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    assert message.is_multipart()
    return [(dict(part.items()), part.get_payload(decode=True)) for part in message.iter_parts()]


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-jwt", "Token abc", "Basic !!!"],
    ids=["missing", "empty-bearer", "garbage", "unknown-scheme", "bad-basic"],
)
def test_requests_without_a_valid_token_are_401(
    relay: Any, http: requests.Session, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = http.get(relay.api("/studies"), headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_an_expired_token_is_401(relay: Any, http: requests.Session, mint: Mint) -> None:
    # Past KHEOPS's 60 s leeway.
    expired = mint(lifetime=-120)

    response = http.get(relay.api(f"/studies/{CT_STUDY}/series"), headers=bearer(expired))

    assert response.status_code == 401


def test_a_token_of_an_unregistered_provider_is_401(
    relay: Any, http: requests.Session, mint: Mint
) -> None:
    response = http.get(relay.api("/studies"), headers=bearer(mint(azp="A" * 22)))

    assert response.status_code == 401


def test_a_token_signed_with_another_secret_is_401(
    relay: Any, http: requests.Session, client_id: str
) -> None:
    forged = jwt.encode(
        {
            "iss": relay.root_url,
            "aud": relay.root_url,
            "sub": "x",
            "azp": client_id,
            "scope": "read write",
            "type": "report_generator",
            "studyUID": [CT_STUDY],
            "exp": int(time.time()) + 600,
        },
        "not-the-secret-of-this-stand-in-at-all",
        algorithm="HS256",
    )

    assert http.get(relay.api("/studies"), headers=bearer(forged)).status_code == 401


def test_basic_auth_with_the_token_as_password_is_accepted(
    relay: Any, http: requests.Session, token: str
) -> None:
    credentials = base64.b64encode(f"anything:{token}".encode()).decode()

    response = http.get(relay.api("/studies"), headers={"Authorization": f"Basic {credentials}"})

    assert response.status_code == 200


def test_a_token_from_the_code_flow_reads_its_study(
    relay: Any, http: requests.Session, client_id: str, fake_provider_server: Any
) -> None:
    launch = relay.launch(client_id, [CT_STUDY])
    redirect = re.search(r"code=([^&']+)", launch.text)
    assert launch.status_code == 200 and redirect, launch.text
    exchanged = http.post(
        relay.api("/token"),
        data={
            "grant_type": "authorization_code",
            "code": redirect.group(1),
            "client_id": client_id,
            "redirect_uri": fake_provider_server.redirect_uri,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": fake_provider_server.assertion(client_id, relay.api("/token")),
        },
    )
    assert exchanged.status_code == 200, exchanged.text

    response = http.get(
        relay.api(f"/studies/{CT_STUDY}/series"), headers=bearer(exchanged.json()["access_token"])
    )

    assert response.status_code == 200
    assert response.json()[0]["0020000D"]["Value"] == [CT_STUDY]


# --- QIDO ----------------------------------------------------------------------------------


def test_qido_studies_lists_only_the_token_studies(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(
        relay.api("/studies"),
        params={"includefield": "00081030,00080060", "fuzzymatching": "false"},
        headers=bearer(token, Accept="application/dicom+json"),
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    found = sorted(study["0020000D"]["Value"][0] for study in response.json())
    assert found == sorted(TOKEN_STUDIES)
    assert response.headers["X-Total-Count"] == "2"
    for study in response.json():
        assert study["00081190"]["Value"][0] == relay.api(
            f"/studies/{study['0020000D']['Value'][0]}"
        )


def test_qido_studies_pages_with_limit_and_offset(
    relay: Any, http: requests.Session, token: str
) -> None:
    first = http.get(relay.api("/studies"), params={"limit": "1"}, headers=bearer(token))
    second = http.get(
        relay.api("/studies"), params={"limit": "1", "offset": "1"}, headers=bearer(token)
    )

    assert len(first.json()) == len(second.json()) == 1
    assert first.json()[0]["0020000D"] != second.json()[0]["0020000D"]
    assert first.headers["X-Total-Count"] == "2"


def test_qido_by_uid_of_a_token_study_finds_it(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(
        relay.api("/studies"), params={"StudyInstanceUID": CT_STUDY}, headers=bearer(token)
    )

    assert [study["0020000D"]["Value"][0] for study in response.json()] == [CT_STUDY]


@pytest.mark.parametrize("key", ["StudyInstanceUID", "0020000D"])
def test_qido_by_uid_of_a_foreign_study_is_204_with_zero_total(
    relay: Any, http: requests.Session, token: str, key: str
) -> None:
    response = http.get(relay.api("/studies"), params={key: MR_STUDY}, headers=bearer(token))

    assert response.status_code == 204
    assert response.headers["X-Total-Count"] == "0"
    assert response.content == b""


def test_qido_series_of_a_token_study_has_public_retrieve_urls(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(relay.api(f"/studies/{NM_STUDY}/series"), headers=bearer(token))

    assert response.status_code == 200
    [series] = response.json()
    assert series["0020000E"]["Value"] == [NM_SERIES]
    assert series["00081190"]["Value"] == [relay.api(f"/studies/{NM_STUDY}/series/{NM_SERIES}")]


def test_qido_instances_of_a_series(relay: Any, http: requests.Session, token: str) -> None:
    response = http.get(
        relay.api(f"/studies/{NM_STUDY}/series/{NM_SERIES}/instances"), headers=bearer(token)
    )

    assert response.status_code == 200
    assert {item["00080018"]["Value"][0] for item in response.json()} == {
        NM_JPEG_INSTANCE,
        NM_J2K_INSTANCE,
    }


# --- the study scope and KHEOPS's 401/404 quirk ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/studies/{MR_STUDY}/series", 404),
        (f"/studies/{MR_STUDY}/metadata", 404),
        (f"/studies/{MR_STUDY}", 401),
        (f"/studies/{MR_STUDY}/instances", 401),
        (f"/studies/{MR_STUDY}/series/1.2.3", 401),
        (f"/studies/{MR_STUDY}/series/1.2.3/metadata", 401),
        (f"/studies/{MR_STUDY}/series/1.2.3/instances", 401),
        (f"/studies/{MR_STUDY}/series/1.2.3/instances/4.5.6/frames/1", 401),
        (f"/studies/{MR_STUDY}/series/1.2.3/instances/4.5.6/bulk/7fe00010", 401),
        (f"/studies/{MR_STUDY}/series/1.2.3/rendered", 401),
        (f"/wado?requestType=WADO&studyUID={MR_STUDY}&seriesUID=1.2.3&objectUID=4.5.6", 401),
    ],
)
def test_outside_the_token_studies_kheops_answers_404_or_401(
    relay: Any, http: requests.Session, token: str, path: str, status: int
) -> None:
    response = http.get(relay.api(path), headers=bearer(token))

    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "path",
    [
        f"/studies/{CT_STUDY}/../../patients",
        f"/studies/{CT_STUDY}/series/{CT_SERIES}/anything",
        "/instances",
        "/tools/find",
    ],
)
def test_paths_kheops_does_not_route_never_reach_orthanc(
    relay: Any, http: requests.Session, token: str, path: str
) -> None:
    assert http.get(relay.api(path), headers=bearer(token)).status_code == 404


# --- WADO-RS -------------------------------------------------------------------------------


def test_series_metadata_bulk_data_uris_point_at_the_stand_in(
    relay: Any, http: requests.Session, token: str, orthanc: OrthancProcess
) -> None:
    response = http.get(
        relay.api(f"/studies/{CT_STUDY}/series/{CT_SERIES}/metadata"),
        headers=bearer(token, Accept="application/dicom+json"),
    )

    assert response.status_code == 200
    assert f":{orthanc.http_port}" not in response.text
    assert "/dicom-web/" not in response.text
    [instance] = response.json()
    pixel_data_uri = instance["7FE00010"]["BulkDataURI"]
    assert pixel_data_uri == relay.api(
        f"{instance_path(CT_STUDY, CT_SERIES, CT_INSTANCE)}/bulk/7fe00010"
    )

    # What OHIF does with it under staticWado: Accept */*.
    bulk = http.get(pixel_data_uri, headers=bearer(token, Accept="*/*"))
    assert bulk.status_code == 200
    [(_, pixels)] = multipart_parts(bulk)
    assert len(pixels) == 128 * 128 * 2


def test_study_metadata_of_a_token_study(relay: Any, http: requests.Session, token: str) -> None:
    response = http.get(relay.api(f"/studies/{NM_STUDY}/metadata"), headers=bearer(token))

    assert response.status_code == 200
    assert {item["00080018"]["Value"][0] for item in response.json()} == {
        NM_JPEG_INSTANCE,
        NM_J2K_INSTANCE,
    }
    assert "/dicom-web/" not in response.text
    for uri in re.findall(r'"BulkDataURI"\s*:\s*"([^"]+)"', response.text):
        assert uri.startswith(relay.api(f"/studies/{NM_STUDY}/"))


@pytest.mark.parametrize(
    ("series", "instance", "study", "part_type", "size"),
    [
        (CT_SERIES, CT_INSTANCE, CT_STUDY, "application/octet-stream", 128 * 128 * 2),
        (NM_SERIES, NM_JPEG_INSTANCE, NM_STUDY, "image/jpeg", None),
        (NM_SERIES, NM_J2K_INSTANCE, NM_STUDY, "image/jp2", None),
    ],
    ids=["ct-native", "nm-jpeg", "nm-jpeg2000"],
)
def test_frames_are_relayed_as_multipart_in_their_stored_syntax(
    relay: Any,
    http: requests.Session,
    token: str,
    series: str,
    instance: str,
    study: str,
    part_type: str,
    size: int | None,
) -> None:
    path = f"{instance_path(study, series, instance)}/frames/1"

    response = http.get(relay.api(path), headers=bearer(token, Accept=FRAME_ACCEPT))

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("multipart/related")
    [(headers, frame)] = multipart_parts(response)
    assert headers["Content-Type"].startswith(part_type)
    assert headers["Content-Location"] == relay.api(path)
    if size is not None:
        assert len(frame) == size
    elif part_type == "image/jpeg":
        assert frame.startswith(b"\xff\xd8")
    else:
        assert frame[:4] in (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0c")  # J2K codestream or JP2


def test_several_frames_of_a_multiframe_instance(
    relay: Any, http: requests.Session, mint: Mint
) -> None:
    us = next(study for study in sample_studies() if "US" in study.modalities)
    dataset = pydicom.dcmread(us.files[0], stop_before_pixels=True)
    path = instance_path(us.study_uid, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)

    response = http.get(
        relay.api(f"{path}/frames/1,15,30"),
        headers=bearer(mint(studies=(us.study_uid,)), Accept=FRAME_ACCEPT),
    )

    assert response.status_code == 200
    assert [frame[:2] for _, frame in multipart_parts(response)] == [b"\xff\xd8"] * 3


def test_instance_retrieve_streams_the_dicom_file(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(
        relay.api(instance_path(CT_STUDY, CT_SERIES, CT_INSTANCE)),
        headers=bearer(token, Accept='multipart/related; type="application/dicom"'),
    )

    assert response.status_code == 200
    [(_, part)] = multipart_parts(response)
    assert pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID == CT_INSTANCE


@pytest.mark.parametrize("suffix", ["rendered", "thumbnail"])
def test_rendered_and_thumbnail_are_images(
    relay: Any, http: requests.Session, token: str, suffix: str
) -> None:
    response = http.get(
        relay.api(f"{instance_path(CT_STUDY, CT_SERIES, CT_INSTANCE)}/{suffix}"),
        headers=bearer(token, Accept="image/jpeg"),
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.content.startswith(b"\xff\xd8")


def test_an_unknown_instance_of_a_token_study_is_404(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(
        relay.api(f"{instance_path(CT_STUDY, CT_SERIES, '1.2.3.4')}/metadata"),
        headers=bearer(token),
    )

    assert response.status_code == 404


# --- WADO-URI ------------------------------------------------------------------------------


def test_wado_uri_returns_the_instance_of_a_token_study(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(
        relay.api("/wado"),
        params={
            "requestType": "WADO",
            "studyUID": CT_STUDY,
            "seriesUID": CT_SERIES,
            "objectUID": CT_INSTANCE,
            "contentType": "application/dicom",
        },
        headers=bearer(token),
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID == CT_INSTANCE


@pytest.mark.parametrize("request_type", [None, "", "wado", "OTHER"])
def test_wado_uri_without_request_type_wado_is_400_even_without_token(
    relay: Any, http: requests.Session, request_type: str | None
) -> None:
    params = {"studyUID": CT_STUDY, "seriesUID": CT_SERIES, "objectUID": CT_INSTANCE}
    if request_type is not None:
        params["requestType"] = request_type

    assert http.get(relay.api("/wado"), params=params).status_code == 400


# --- STOW ----------------------------------------------------------------------------------


def new_instance(sample: str = "CT_small.dcm", **changes: Any) -> tuple[pydicom.Dataset, bytes]:
    """A new instance (new series and SOP UIDs) of a sample's study, with `changes` applied."""
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file(sample, download=False))
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return dataset, buffer.getvalue()


def stow_body(*parts: bytes) -> tuple[bytes, str]:
    """A body as OHIF's dicomweb-client builds it (quoted type and boundary)."""
    boundary = f"DICOMwebBoundary{uuid.uuid4().hex}"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{boundary}--".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'


def stow(
    relay: Any, http: requests.Session, token: str, *parts: bytes, path: str = "/studies"
) -> requests.Response:
    body, content_type = stow_body(*parts)
    return http.post(
        relay.api(path),
        data=body,
        headers=bearer(token, **{"Content-Type": content_type, "Accept": "application/dicom+json"}),
    )


def orthanc_series(orthanc: OrthancProcess, study: str) -> set[str]:
    with orthanc_session() as session:
        found = session.get(f"{orthanc.url}/dicom-web/studies/{study}/series")
    return (
        {item["0020000E"]["Value"][0] for item in found.json()} if found.content.strip() else set()
    )


def failures(response: requests.Response) -> list[dict[str, Any]]:
    return response.json().get(STOW_FAILED_SOP_SEQUENCE, {}).get("Value", [])


def test_stow_stores_a_new_series_into_a_token_study(
    relay: Any, http: requests.Session, token: str, orthanc: OrthancProcess
) -> None:
    dataset, part = new_instance(SeriesDescription="Sandbox report")

    response = stow(relay, http, token, part)

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    assert failures(response) == []
    [stored] = response.json()[STOW_REFERENCED_SOP_SEQUENCE]["Value"]
    assert stored["00081155"]["Value"] == [dataset.SOPInstanceUID]
    assert stored["00081190"]["Value"] == [
        relay.api(instance_path(CT_STUDY, dataset.SeriesInstanceUID, dataset.SOPInstanceUID))
    ]
    assert dataset.SeriesInstanceUID in orthanc_series(orthanc, CT_STUDY)
    # ... and the study the viewer sees is still one study with the same attributes.
    series = http.get(relay.api(f"/studies/{CT_STUDY}/series"), headers=bearer(token)).json()
    assert dataset.SeriesInstanceUID in {item["0020000E"]["Value"][0] for item in series}
    [study] = http.get(
        relay.api("/studies"), params={"StudyInstanceUID": CT_STUDY}, headers=bearer(token)
    ).json()
    assert study["00100020"]["Value"] == [dataset.PatientID]


def test_stow_to_the_study_url_stores_too(relay: Any, http: requests.Session, token: str) -> None:
    _, part = new_instance("JPEG2000.dcm")

    response = stow(relay, http, token, part, path=f"/studies/{NM_STUDY}")

    assert response.status_code == 200, response.text


def test_stow_tolerates_missing_study_attributes_but_study_id(
    relay: Any, http: requests.Session, token: str, orthanc: OrthancProcess
) -> None:
    tolerated, tolerated_part = new_instance(StudyDate=None, PatientName=None, AccessionNumber=None)
    refused, refused_part = new_instance(StudyID=None)

    response = stow(relay, http, token, tolerated_part, refused_part)

    assert response.status_code == 202, response.text
    [failure] = failures(response)
    assert failure["00081155"]["Value"] == [refused.SOPInstanceUID]
    assert failure["00001005"]["Value"] == ["00200010"]
    assert tolerated.SeriesInstanceUID in orthanc_series(orthanc, CT_STUDY)
    assert refused.SeriesInstanceUID not in orthanc_series(orthanc, CT_STUDY)


def test_stow_refuses_a_mismatched_patient_id_with_409(
    relay: Any, http: requests.Session, token: str, orthanc: OrthancProcess
) -> None:
    dataset, part = new_instance(PatientID="SOMEONE-ELSE")

    response = stow(relay, http, token, part)

    assert response.status_code == 409
    [failure] = failures(response)
    assert failure["00081155"]["Value"] == [dataset.SOPInstanceUID]
    assert failure["00081197"]["Value"] == [0x0106]
    assert failure["00001005"]["Value"] == ["00100020"]
    assert "PatientID" in failure["00000902"]["Value"][0]
    assert dataset.SeriesInstanceUID not in orthanc_series(orthanc, CT_STUDY)


def test_stow_refuses_an_instance_of_a_foreign_study(
    relay: Any, http: requests.Session, token: str, orthanc: OrthancProcess
) -> None:
    dataset, part = new_instance("MR_small.dcm")

    response = stow(relay, http, token, part)

    assert response.status_code == 409
    [failure] = failures(response)
    assert failure["00081197"]["Value"] == [0x0124]
    assert dataset.SeriesInstanceUID not in orthanc_series(orthanc, MR_STUDY)


def test_stow_to_a_foreign_study_url_refuses_its_instances(
    relay: Any, http: requests.Session, token: str
) -> None:
    # KHEOPS authorizes STOW instance by instance: a refused instance, not a 401.
    _, part = new_instance("MR_small.dcm")

    response = stow(relay, http, token, part, path=f"/studies/{MR_STUDY}")

    assert response.status_code == 409
    assert failures(response)[0]["00081197"]["Value"] == [0x0124]


def test_stow_refuses_an_instance_of_another_study_than_the_url(
    relay: Any, http: requests.Session, token: str
) -> None:
    _, part = new_instance("CT_small.dcm")

    response = stow(relay, http, token, part, path=f"/studies/{NM_STUDY}")

    assert response.status_code == 409
    assert failures(response)[0]["00081197"]["Value"] == [0xA900]


def test_stow_without_write_scope_is_403(
    relay: Any, http: requests.Session, mint: Mint, orthanc: OrthancProcess
) -> None:
    dataset, part = new_instance()

    response = stow(relay, http, mint(scope="read"), part)

    assert response.status_code == 403
    assert dataset.SeriesInstanceUID not in orthanc_series(orthanc, CT_STUDY)


def test_stow_without_token_is_401(relay: Any, http: requests.Session) -> None:
    body, content_type = stow_body(new_instance()[1])

    response = http.post(relay.api("/studies"), data=body, headers={"Content-Type": content_type})

    assert response.status_code == 401


def test_stow_reports_an_unreadable_part_and_stores_the_rest(
    relay: Any, http: requests.Session, token: str
) -> None:
    _, part = new_instance()

    response = stow(relay, http, token, part, b"this is not DICOM")

    assert response.status_code == 202
    assert response.json()["0008119A"]["Value"][0]["00081197"]["Value"] == [0x0110]


def test_stow_takes_a_single_application_dicom_body(
    relay: Any, http: requests.Session, token: str
) -> None:
    _, part = new_instance()

    response = http.post(
        relay.api("/studies"),
        data=part,
        headers=bearer(token, **{"Content-Type": "application/dicom"}),
    )

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", b"{}", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--", 415),
        ('multipart/related; type="application/dicom"; boundary=x', b"--x\r\nbroken", 400),
    ],
)
def test_stow_rejects_bodies_it_cannot_read(
    relay: Any, http: requests.Session, token: str, content_type: str, body: bytes, status: int
) -> None:
    response = http.post(
        relay.api("/studies"), data=body, headers=bearer(token, **{"Content-Type": content_type})
    )

    assert response.status_code == status


# --- CORS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/studies", "GET", "authorization,accept"),
        ("/studies", "POST", "authorization,content-type"),
        (
            f"{instance_path(CT_STUDY, CT_SERIES, CT_INSTANCE)}/frames/1",
            "GET",
            "authorization,accept",
        ),
        (f"/studies/{MR_STUDY}/series", "GET", "authorization"),
        ("/wado", "GET", "authorization"),
    ],
)
def test_preflights_are_answered_without_a_token(
    relay: Any, http: requests.Session, path: str, method: str, headers: str
) -> None:
    response = http.options(
        relay.api(path),
        headers={
            "Origin": "http://viewer.test",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )

    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    allowed_methods = {
        m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")
    }
    assert {"GET", "POST", "OPTIONS"} <= allowed_methods
    allowed_headers = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "accept", "content-type"} <= allowed_headers
    assert int(response.headers["Access-Control-Max-Age"]) > 0


def test_responses_expose_the_total_count_to_browsers(
    relay: Any, http: requests.Session, token: str
) -> None:
    response = http.get(relay.api("/studies"), headers=bearer(token, Origin="http://viewer.test"))

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert "x-total-count" in exposed


# --- failures of Orthanc, and secrets ------------------------------------------------------


def test_an_unreachable_orthanc_is_a_502_not_a_traceback(
    sandbox_factory: Callable[..., Any], http: requests.Session, fake_provider_server: Any
) -> None:
    broken = sandbox_factory({"SANDBOX_ORTHANC_URL": f"http://127.0.0.1:{free_port()}"})
    response = broken.register_provider(fake_provider_server.config_url)
    client = response.json()["client_id"]
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": broken.root_url,
            "aud": broken.root_url,
            "sub": "u",
            "azp": client,
            "scope": "read write",
            "type": "report_generator",
            "studyUID": [CT_STUDY],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        },
        broken.env["SANDBOX_SECRET"],
        algorithm="HS256",
    )

    for path in ("/studies", f"/studies/{CT_STUDY}/series/{CT_SERIES}/metadata"):
        response = http.get(broken.api(path), headers=bearer(token))
        assert response.status_code == 502
        assert "Traceback" not in response.text


def test_the_token_never_appears_in_the_stand_in_log(
    relay: Any, http: requests.Session, token: str
) -> None:
    http.get(relay.api(f"/studies/{CT_STUDY}/series"), headers=bearer(token))
    http.get(relay.api(f"/studies/{MR_STUDY}/metadata"), headers=bearer(token))

    log = relay.log_path.read_text()
    assert f"/api/studies/{MR_STUDY}/metadata" in log  # the log does record these requests
    assert token not in log
