"""The DICOMweb API of the KHEOPS stand-in: a relay to Orthanc that behaves like KHEOPS.

What KHEOPS does, and so what this relay does (docs/kheops-protocol.md, section 5):

- a report-provider access token is required, as `Bearer <token>` or as the password of a
  `Basic` header; a bad or expired one gets 401;
- QIDO `/studies` lists only the token's studies; an empty QIDO answer is 204 with
  `X-Total-Count: 0`;
- outside the token's studies: 404 on `/studies/{s}/series` and `/studies/{s}/metadata` (served
  by the authorization server), **401** on everything else under `/studies/{s}/...` and on
  WADO-URI (the DICOMweb proxy reports its failed internal token exchange that way);
- STOW needs the `write` scope (403 otherwise); each instance must belong to one of the
  token's studies and match the stored study's study-level attributes, else it is listed in
  FailedSOPSequence (409 when nothing was stored, 202 when some was).

The token is used here only; it is never sent to Orthanc nor logged. Orthanc builds absolute
URLs (RetrieveURL, BulkDataURI, Content-Location) from the `Forwarded` header we send it, under
its own `/dicom-web/` root; `_PublicUrls` turns those into URLs under this API's root.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from typing import Any
from urllib.parse import quote

import pydicom
import requests
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict, StreamingHttpResponse
from django.urls import reverse
from django.utils.datastructures import MultiValueDict
from django.utils.http import parse_header_parameters
from django.views.decorators.csrf import csrf_exempt

from sandbox.orthanc import DICOMWEB_ROOT, WADO_URI_ROOT, orthanc_session

logger = logging.getLogger(__name__)

DEFAULT_ORTHANC_URL = "http://127.0.0.1:8142"
DICOM_JSON = "application/dicom+json"
CHUNK_SIZE = 64 * 1024
# JSON answers are rewritten in memory; no sane QIDO or metadata answer comes near this.
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_STOW_BYTES = 512 * 1024 * 1024
THUMBNAIL_VIEWPORT = "128,128"

CORS_HEADERS = {
    # No cookies are involved (the token travels in Authorization), so "*" is safe and enough.
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": (
        "Content-Type, Content-Length, Content-Location, Location, X-Total-Count, Warning, WWW-Authenticate"
    ),
}
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Accept, Content-Type",
    # Every frame URL is distinct and costs its own preflight; let browsers cache each a day.
    "Access-Control-Max-Age": "86400",
}
# Headers of an Orthanc answer worth passing on to the client.
PASSED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "ETag",
    "Last-Modified",
    "Cache-Control",
)

# DICOM status codes used in STOW answers (PS3.4 / PS3.18), as KHEOPS's proxy uses them.
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_INVALID_ATTRIBUTE_VALUE = 0x0106  # KHEOPS: study attributes differ from the stored study
STATUS_NOT_AUTHORIZED = 0x0124  # KHEOPS: the token may not add series to this study
STATUS_DATASET_DOES_NOT_MATCH = 0xA900

TAG_RETRIEVE_URL = "00081190"
TAG_FAILED_SOP_SEQUENCE = "00081198"
TAG_REFERENCED_SOP_SEQUENCE = "00081199"
TAG_OTHER_FAILURES_SEQUENCE = "0008119A"

# Study-level attributes KHEOPS compares on STOW (VerifyInstanceResource.isSameStudy), by
# keyword with their tags.
STUDY_ATTRIBUTES: dict[str, str] = {
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "StudyDescription": "00081030",
    "TimezoneOffsetFromUTC": "00080201",
    "AccessionNumber": "00080050",
    "ReferringPhysicianName": "00080090",
    "PatientName": "00100010",
    "PatientID": "00100020",
    "PatientBirthDate": "00100030",
    "PatientSex": "00100040",
    "StudyID": "00200010",
}
PERSON_NAME_ATTRIBUTES = frozenset({"ReferringPhysicianName", "PatientName"})
# KHEOPS tolerates a missing value in the upload for every attribute but StudyID.
REQUIRED_WHEN_STORED = frozenset({"StudyID"})

_PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?")
# Characters left unescaped in query values sent to Orthanc (the ones requests leaves alone).
_QUERY_SAFE = "!$'()*,/:;@[]~"


# --- errors ------------------------------------------------------------------------------


class DicomWebError(Exception):
    """An answer to send instead of the normal one."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class UpstreamUnavailable(DicomWebError):
    def __init__(self, message: str = "the PACS is unavailable") -> None:
        super().__init__(502, message)


class UpstreamTimeout(DicomWebError):
    def __init__(self, message: str = "the PACS did not answer in time") -> None:
        super().__init__(504, message)


def unauthorized() -> DicomWebError:
    return DicomWebError(401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="kheops"'})


# --- the token ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessGrant:
    """What a valid access token allows."""

    study_uids: frozenset[str]
    scopes: frozenset[str]

    @property
    def can_write(self) -> bool:
        return "write" in self.scopes


def token_from_header(authorization: str) -> str | None:
    """The token of an Authorization header: Bearer, or Basic with the token as password."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


def grant_from_claims(claims: dict[str, Any]) -> AccessGrant:
    study_uids = claims.get("studyUID", [])
    # KHEOPS tokens carry an array; introspection shows a lone study as a string.
    if isinstance(study_uids, str):
        study_uids = [study_uids]
    scope = claims.get("scope", "")
    return AccessGrant(
        study_uids=frozenset(uid for uid in study_uids if isinstance(uid, str)),
        scopes=frozenset(scope.split() if isinstance(scope, str) else ()),
    )


def authenticate(request: HttpRequest) -> AccessGrant:
    token = token_from_header(request.headers.get("Authorization", ""))
    if not token:
        raise unauthorized()
    # Imported here: sandbox.tokens needs the app registry, and this module must import without it.
    from sandbox.tokens import decode_access_token

    claims = decode_access_token(token)
    if claims is None:
        raise unauthorized()
    return grant_from_claims(claims)


def require_study(grant: AccessGrant, study_uid: str, *, status: int) -> None:
    """Refuse a study outside the token with KHEOPS's status for that route (401 or 404)."""
    if study_uid not in grant.study_uids:
        raise unauthorized() if status == 401 else DicomWebError(status, "study not found")


# --- Orthanc -----------------------------------------------------------------------------

_session: requests.Session | None = None


def orthanc_url() -> str:
    return getattr(settings, "SANDBOX_ORTHANC_URL", DEFAULT_ORTHANC_URL).rstrip("/")


def session() -> requests.Session:
    global _session
    if _session is None:
        _session = orthanc_session()
    return _session


def call_orthanc(
    method: str, path: str, *, base_url: str | None = None, **kwargs: Any
) -> requests.Response:
    """One call to Orthanc; connection failures become 502, timeouts 504, Orthanc 5xx 502."""
    try:
        response = session().request(method, f"{base_url or orthanc_url()}{path}", **kwargs)
    except requests.Timeout as exc:
        logger.warning("Orthanc timed out on %s %s", method, path)
        raise UpstreamTimeout() from exc
    except requests.RequestException as exc:
        logger.warning("Orthanc unreachable on %s %s: %s", method, path, type(exc).__name__)
        raise UpstreamUnavailable() from exc
    if response.status_code >= 500:
        logger.warning("Orthanc answered %s on %s %s", response.status_code, method, path)
        response.close()
        raise UpstreamUnavailable(f"the PACS failed ({response.status_code})")
    return response


@dataclass(frozen=True)
class _PublicUrls:
    """How URLs built by Orthanc map to this API's public root.

    We tell Orthanc the client's host through `Forwarded` (Orthanc 1.10 / DICOMweb 1.7 honour
    `host=` and `proto=`, but mangle quoted values, so only plain host names are forwarded),
    and it answers `<proto>://<host>/dicom-web/...`; we replace that prefix by our `/api/` root.
    """

    upstream_headers: dict[str, str]
    orthanc_prefix: bytes
    public_prefix: bytes

    @classmethod
    def for_request(cls, request: HttpRequest) -> _PublicUrls:
        public_root = request.build_absolute_uri(reverse("dicomweb:studies")).removesuffix(
            "studies"
        )
        host = request.get_host()
        if _PLAIN_HOST.fullmatch(host):
            headers = {"Forwarded": f"host={host};proto={request.scheme}"}
            orthanc_prefix = f"{request.scheme}://{host}{DICOMWEB_ROOT}"
        else:
            # e.g. an IPv6 literal: Orthanc then uses the Host we send, its own address.
            headers = {}
            orthanc_prefix = f"{orthanc_url()}{DICOMWEB_ROOT}"
        return cls(headers, orthanc_prefix.encode(), public_root.encode())

    def rewrite(self, data: bytes) -> bytes:
        return data.replace(self.orthanc_prefix, self.public_prefix)

    def rewrite_text(self, text: str) -> str:
        return self.rewrite(text.encode("latin-1")).decode("latin-1")

    def rewrite_stream(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Rewrite across chunk boundaries: hold back what could start a split prefix."""
        keep = len(self.orthanc_prefix) - 1
        tail = b""
        for chunk in chunks:
            data = self.rewrite(tail + chunk)
            data, tail = data[:-keep], data[-keep:]
            if data:
                yield data
        if tail:
            yield tail


def _upstream_headers(request: HttpRequest, urls: _PublicUrls) -> dict[str, str]:
    # Only what Orthanc needs: never the client's Authorization header.
    headers = {"Accept-Encoding": "identity", **urls.upstream_headers}
    if accept := request.headers.get("Accept"):
        headers["Accept"] = accept
    return headers


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise UpstreamUnavailable("the PACS gave unreadable JSON") from exc


def _read_json(response: requests.Response) -> bytes:
    body = bytearray()
    try:
        for chunk in response.iter_content(CHUNK_SIZE):
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise UpstreamUnavailable("the PACS answer is too large")
    except requests.Timeout as exc:
        raise UpstreamTimeout() from exc
    except requests.RequestException as exc:
        raise UpstreamUnavailable() from exc
    finally:
        response.close()
    return bytes(body)


def _streamed(response: requests.Response, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the body, then release the connection, whatever happens to the client."""
    try:
        yield from chunks
    except requests.RequestException as exc:
        # Too late to change the status: end the body early so the client sees it truncated.
        logger.warning("Orthanc broke off a streamed answer: %s", type(exc).__name__)
    finally:
        response.close()


def orthanc_query(params: MultiValueDict[str, str]) -> str:
    """A query string for Orthanc from decoded parameters.

    Orthanc 1.10 with DICOMweb 1.7 does not percent-decode query values (`viewport=64%2C64` is
    refused, `PatientName=A%2A` matches nothing), so we re-encode only what must be: commas
    and wildcards travel as they are. (`^` and `\\` still end up escaped by requests, so
    person-name and UID-list matching does not work through Orthanc; KHEOPS clients send UIDs.)
    """
    return "&".join(
        f"{quote(name, safe=_QUERY_SAFE)}={quote(value, safe=_QUERY_SAFE)}"
        for name, values in params.lists()
        for value in values
    )


def relay(
    request: HttpRequest,
    orthanc_path: str,
    *,
    params: QueryDict | None = None,
    qido: bool = False,
) -> HttpResponse:
    """Relay a GET to Orthanc and its answer back, with Orthanc's URLs made public.

    JSON answers are small and rewritten in memory; multipart answers are streamed and rewritten
    on the fly (their parts carry Content-Location); anything else is streamed untouched.
    """
    urls = _PublicUrls.for_request(request)
    query = orthanc_query(request.GET if params is None else params)
    path = f"{orthanc_path}?{query}" if query else orthanc_path
    upstream = call_orthanc("GET", path, headers=_upstream_headers(request, urls), stream=True)
    content_type = upstream.headers.get("Content-Type", "")

    if "json" in content_type:
        body = urls.rewrite(_read_json(upstream))
        if qido and upstream.status_code == 200:
            return qido_response(_json(body))
        response: HttpResponse = HttpResponse(
            body, status=upstream.status_code, content_type=content_type
        )
    elif content_type.startswith("multipart/"):
        response = StreamingHttpResponse(
            _streamed(upstream, urls.rewrite_stream(upstream.iter_content(CHUNK_SIZE))),
            status=upstream.status_code,
            content_type=content_type,
        )
    else:
        response = StreamingHttpResponse(
            _streamed(upstream, upstream.iter_content(CHUNK_SIZE)), status=upstream.status_code
        )
        for name in PASSED_RESPONSE_HEADERS:
            if name in upstream.headers:
                response[name] = upstream.headers[name]
        return response
    for name in ("ETag", "Last-Modified", "Cache-Control"):
        if name in upstream.headers:
            response[name] = upstream.headers[name]
    if "Content-Location" in upstream.headers:
        response["Content-Location"] = urls.rewrite_text(upstream.headers["Content-Location"])
    return response


def qido_response(results: list[Any], *, total: int | None = None) -> HttpResponse:
    """A QIDO answer as KHEOPS gives it: 204 with `X-Total-Count: 0` when empty."""
    total = len(results) if total is None else total
    if not results:
        response = HttpResponse(status=204)
        del response["Content-Type"]
    else:
        response = HttpResponse(json.dumps(results), content_type=DICOM_JSON)
    response["X-Total-Count"] = str(total)
    return response


# --- views -------------------------------------------------------------------------------

View = Callable[..., HttpResponse]


def _with_cors(response: HttpResponse) -> HttpResponse:
    for name, value in CORS_HEADERS.items():
        response[name] = value
    return response


def _error_response(error: DicomWebError) -> HttpResponse:
    response = HttpResponse(
        error.message + "\n", status=error.status, content_type="text/plain; charset=utf-8"
    )
    for name, value in error.headers.items():
        response[name] = value
    return response


def dicomweb_endpoint(*methods: str) -> Callable[[View], View]:
    """Preflights, CORS headers, the token and error mapping for one DICOMweb view.

    The view is called as `view(request, grant, **url_kwargs)`. Bearer tokens, not cookies,
    authenticate here, so CSRF protection does not apply (and browsers POST STOW cross-origin).
    """
    allowed = ", ".join((*methods, "OPTIONS"))

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            if request.method == "OPTIONS":
                # Preflights carry no credentials: answer them before any token check.
                response = HttpResponse(status=204)
                for name, value in PREFLIGHT_HEADERS.items():
                    response[name] = value
                response["Allow"] = allowed
                return _with_cors(response)
            if request.method not in methods:
                response = HttpResponse(status=405)
                response["Allow"] = allowed
                return _with_cors(response)
            try:
                grant = authenticate(request)
                response = view(request, grant, **kwargs)
            except DicomWebError as error:
                response = _error_response(error)
            return _with_cors(response)

        return wrapper

    return decorate


def _parse_offset_limit(request: HttpRequest) -> tuple[int, int | None]:
    try:
        offset = int(request.GET.get("offset", "0") or 0)
        limit = int(request.GET["limit"]) if request.GET.get("limit") else None
    except ValueError as exc:
        raise DicomWebError(400, "offset and limit must be integers") from exc
    if offset < 0 or (limit is not None and limit < 0):
        raise DicomWebError(400, "offset and limit must not be negative")
    return offset, limit


def _requested_study_uids(request: HttpRequest) -> set[str] | None:
    values = request.GET.getlist("StudyInstanceUID") + request.GET.getlist("0020000D")
    if not values:
        return None
    return {uid.strip() for value in values for uid in re.split(r"[,\\]", value) if uid.strip()}


@dicomweb_endpoint("GET", "POST")
def studies(request: HttpRequest, grant: AccessGrant) -> HttpResponse:
    if request.method == "POST":
        return stow(request, grant, study_uid=None)
    return search_studies(request, grant)


def search_studies(request: HttpRequest, grant: AccessGrant) -> HttpResponse:
    """QIDO /studies, restricted to the token's studies as KHEOPS's StudyQIDOParams does.

    Orthanc's QIDO cannot match a list of UIDs, so we ask once per allowed study (a token names
    a handful) and page the union ourselves.
    """
    offset, limit = _parse_offset_limit(request)
    requested = _requested_study_uids(request)
    allowed = sorted(grant.study_uids if requested is None else grant.study_uids & requested)
    passed = request.GET.copy()
    for name in ("StudyInstanceUID", "0020000D", "offset", "limit"):
        passed.pop(name, None)
    urls = _PublicUrls.for_request(request)
    headers = {**_upstream_headers(request, urls), "Accept": DICOM_JSON}
    results: list[Any] = []
    for study_uid in allowed:
        passed["StudyInstanceUID"] = study_uid
        upstream = call_orthanc(
            "GET", f"{DICOMWEB_ROOT}studies?{orthanc_query(passed)}", headers=headers
        )
        if upstream.status_code == 200 and upstream.content.strip():
            results.extend(_json(urls.rewrite(upstream.content)))
        elif upstream.status_code not in (200, 204):
            raise DicomWebError(upstream.status_code, "the PACS refused the query")
    page = results[offset:] if limit is None else results[offset : offset + limit]
    return qido_response(page, total=len(results))


@dicomweb_endpoint("GET", "POST")
def study(request: HttpRequest, grant: AccessGrant, study_uid: str) -> HttpResponse:
    if request.method == "POST":
        return stow(request, grant, study_uid=study_uid)
    require_study(grant, study_uid, status=401)
    return relay(request, f"{DICOMWEB_ROOT}studies/{study_uid}")


@dicomweb_endpoint("GET")
def study_series(request: HttpRequest, grant: AccessGrant, study_uid: str) -> HttpResponse:
    # Served by KHEOPS's authorization server: an unknown study is 404 there.
    require_study(grant, study_uid, status=404)
    return relay(request, f"{DICOMWEB_ROOT}studies/{study_uid}/series", qido=True)


@dicomweb_endpoint("GET")
def study_metadata(request: HttpRequest, grant: AccessGrant, study_uid: str) -> HttpResponse:
    require_study(grant, study_uid, status=404)
    return relay(request, f"{DICOMWEB_ROOT}studies/{study_uid}/metadata")


@dicomweb_endpoint("GET")
def study_resource(
    request: HttpRequest, grant: AccessGrant, study_uid: str, rest: str
) -> HttpResponse:
    """Everything else under /studies/{s}/ (instances, series, frames, bulk data, rendered...).

    KHEOPS's DICOMweb proxy answers 401 outside the token's studies.
    """
    require_study(grant, study_uid, status=401)
    qido = rest == "instances" or rest.endswith("/instances")
    if rest.endswith("thumbnail"):
        return thumbnail(request, study_uid, rest)
    return relay(request, f"{DICOMWEB_ROOT}studies/{study_uid}/{rest}", qido=qido)


def thumbnail(request: HttpRequest, study_uid: str, rest: str) -> HttpResponse:
    """Orthanc's DICOMweb 1.7 has no /thumbnail: serve a small /rendered instead."""
    query = request.GET.copy()
    query.setdefault("viewport", THUMBNAIL_VIEWPORT)
    rendered = rest.removesuffix("thumbnail") + "rendered"
    return relay(request, f"{DICOMWEB_ROOT}studies/{study_uid}/{rendered}", params=query)


@dicomweb_endpoint("GET")
def wado_uri(request: HttpRequest, grant: AccessGrant) -> HttpResponse:
    """WADO-URI. The 400 for a missing requestType comes first (nginx, before any token)."""
    study_uid = request.GET.get("studyUID", "")
    require_study(grant, study_uid, status=401)
    return relay(request, WADO_URI_ROOT)


def wado_uri_entry(request: HttpRequest) -> HttpResponse:
    if request.method != "OPTIONS" and request.GET.get("requestType") != "WADO":
        return _with_cors(
            HttpResponse("requestType=WADO is required\n", status=400, content_type="text/plain")
        )
    return wado_uri(request)


# --- STOW ----------------------------------------------------------------------------------


class MalformedMultipart(ValueError):
    pass


@dataclass(frozen=True)
class BodyPart:
    headers: dict[str, str]
    content: bytes


def split_multipart(body: bytes, boundary: str) -> list[BodyPart]:
    """The parts of a multipart body (RFC 2046), in order."""
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delimiter)
    parts: list[BodyPart] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return parts
        _, newline, rest = piece.partition(b"\r\n")  # skip transport padding after the boundary
        if not newline:
            raise MalformedMultipart("a boundary is not followed by a line break")
        if rest.startswith(b"\r\n"):
            head, content = b"", rest[2:]
        else:
            head, separator, content = rest.partition(b"\r\n\r\n")
            if not separator:
                raise MalformedMultipart("a part has no end of headers")
        headers = {}
        for line in head.split(b"\r\n") if head else ():
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise MalformedMultipart("a part header has no colon")
            headers[name.strip().lower()] = value.strip()
        parts.append(BodyPart(headers, content))
    raise MalformedMultipart("the closing boundary is missing")


@dataclass
class StowOutcome:
    accepted: list[bytes] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    other_failures: list[dict[str, Any]] = field(default_factory=list)


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _failed_sop(
    dataset: pydicom.Dataset, reason: int, comment: str, tags: Iterable[str] = ()
) -> dict[str, Any]:
    item = {
        "00081150": _element("UI", str(dataset.get("SOPClassUID", ""))),
        "00081155": _element("UI", str(dataset.get("SOPInstanceUID", ""))),
        "00081197": _element("US", reason),
        # ErrorComment: the reason in words, for people reading the answer.
        "00000902": _element("LO", comment[:64]),
    }
    if tags := list(tags):
        item["00001005"] = _element("AT", *tags)  # AttributeIdentifierList
    return item


def _normalise(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = "\\".join(str(item) for item in value)
    text = str(value).strip()
    return text or None


def _person_name(value: str | None) -> str:
    # KHEOPS compares names without component (^) or group (=) separators.
    return (value or "").replace("^", "").replace("=", "")


def dataset_study_attributes(dataset: pydicom.Dataset) -> dict[str, str | None]:
    values = {}
    for keyword in STUDY_ATTRIBUTES:
        values[keyword] = _normalise(dataset.get(keyword))
    return values


def json_study_attributes(instance: dict[str, Any]) -> dict[str, str | None]:
    """The study-level attributes of one instance in DICOM JSON (a WADO-RS metadata item)."""
    values: dict[str, str | None] = {}
    for keyword, tag in STUDY_ATTRIBUTES.items():
        found = instance.get(tag, {}).get("Value") or []
        if keyword in PERSON_NAME_ATTRIBUTES:
            found = [
                "=".join(
                    name.get(group, "") for group in ("Alphabetic", "Ideographic", "Phonetic")
                ).rstrip("=")
                if isinstance(name, dict)
                else name
                for name in found
            ]
        values[keyword] = _normalise(found or None)
    return values


def unmatched_study_attributes(
    stored: dict[str, str | None], uploaded: dict[str, str | None]
) -> list[str]:
    """Keywords whose uploaded value contradicts the stored study, by KHEOPS's isSameStudy rules.

    A stored empty value needs an empty upload; a stored value accepts an equal or a missing
    upload, except StudyID which must be equal.
    """
    unmatched = []
    for keyword in STUDY_ATTRIBUTES:
        have, given = stored.get(keyword), uploaded.get(keyword)
        if keyword in PERSON_NAME_ATTRIBUTES:
            have, given = _person_name(have) or None, _person_name(given) or None
        if have is None:
            same = given is None
        elif given is None:
            same = keyword not in REQUIRED_WHEN_STORED
        else:
            same = have == given
        if not same:
            unmatched.append(keyword)
    return unmatched


def stored_study_attributes(study_uid: str) -> dict[str, str | None] | None:
    """The study-level attributes of a study in Orthanc (from its first instance), None if absent."""
    found = call_orthanc(
        "GET",
        f"{DICOMWEB_ROOT}studies/{study_uid}/instances?limit=1",
        headers={"Accept": DICOM_JSON},
    )
    if (
        found.status_code != 200
        or not found.content.strip()
        or not (instances := _json(found.content))
    ):
        return None
    series_uid = instances[0].get("0020000E", {}).get("Value", [None])[0]
    sop_uid = instances[0].get("00080018", {}).get("Value", [None])[0]
    metadata = call_orthanc(
        "GET",
        f"{DICOMWEB_ROOT}studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata",
        headers={"Accept": DICOM_JSON},
    )
    if metadata.status_code != 200:
        raise UpstreamUnavailable("the PACS did not give the stored study's attributes")
    return json_study_attributes(_json(metadata.content)[0])


def verify_stow_parts(
    parts: list[BodyPart], grant: AccessGrant, study_uid: str | None
) -> StowOutcome:
    """Sort the uploaded instances into accepted and failed, as KHEOPS's STOW proxy does."""
    outcome = StowOutcome()
    stored: dict[str, dict[str, str | None] | None] = {}
    for number, part in enumerate(parts, start=1):
        part_type = (
            part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        )
        try:
            if part_type != "application/dicom":
                raise ValueError(f"unsupported part type {part_type}")
            dataset = pydicom.dcmread(io.BytesIO(part.content), stop_before_pixels=True)
            if not all(
                dataset.get(name)
                for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            ):
                raise ValueError("an instance UID is missing")
            instance_study = str(dataset.StudyInstanceUID)
        # Whatever pydicom raises on a broken part, that part is a processing failure.
        except Exception as exc:
            logger.info(
                "STOW part %s is not a readable DICOM instance: %s", number, type(exc).__name__
            )
            outcome.other_failures.append(
                {
                    "00081197": _element("US", STATUS_PROCESSING_FAILURE),
                    "00000902": _element("LO", f"part {number} is not a readable DICOM instance"),
                }
            )
            continue
        if study_uid is not None and instance_study != study_uid:
            outcome.failed.append(
                _failed_sop(
                    dataset, STATUS_DATASET_DOES_NOT_MATCH, "StudyInstanceUID differs from the URL"
                )
            )
            continue
        if instance_study not in grant.study_uids:
            outcome.failed.append(
                _failed_sop(dataset, STATUS_NOT_AUTHORIZED, "study not in the token")
            )
            continue
        if instance_study not in stored:
            stored[instance_study] = stored_study_attributes(instance_study)
        if (stored_values := stored[instance_study]) is not None:
            unmatched = unmatched_study_attributes(stored_values, dataset_study_attributes(dataset))
            if unmatched:
                outcome.failed.append(
                    _failed_sop(
                        dataset,
                        STATUS_INVALID_ATTRIBUTE_VALUE,
                        "unmatching_tags: " + ", ".join(unmatched),
                        (STUDY_ATTRIBUTES[keyword] for keyword in unmatched),
                    )
                )
                continue
        outcome.accepted.append(part.content)
    return outcome


def _stow_parts(request: HttpRequest) -> list[BodyPart]:
    content_type, params = parse_header_parameters(request.headers.get("Content-Type", ""))
    length = int(request.headers.get("Content-Length") or 0)
    if length > MAX_STOW_BYTES:
        raise DicomWebError(413, "the upload is too large")
    body = request.read(MAX_STOW_BYTES + 1)
    if len(body) > MAX_STOW_BYTES:
        raise DicomWebError(413, "the upload is too large")
    if content_type == "application/dicom":
        return [BodyPart({"content-type": "application/dicom"}, body)]
    if content_type not in ("multipart/related", "multipart/form-data") or not params.get(
        "boundary"
    ):
        raise DicomWebError(
            415, 'STOW takes multipart/related; type="application/dicom" or application/dicom'
        )
    root_type = params.get("type", "application/dicom").lower()
    if content_type == "multipart/related" and root_type != "application/dicom":
        raise DicomWebError(
            415, f"the sandbox does not take {root_type} STOW (metadata and bulk data)"
        )
    try:
        parts = split_multipart(body, params["boundary"])
    except MalformedMultipart as exc:
        raise DicomWebError(400, f"malformed multipart body: {exc}") from exc
    if not parts:
        raise DicomWebError(400, "the upload has no instance")
    return parts


def _multipart_body(contents: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--"
        + boundary.encode()
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + content
        + b"\r\n"
        for content in contents
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _sequence(answer: dict[str, Any], tag: str, items: list[dict[str, Any]]) -> None:
    if items:
        existing = answer.get(tag, {}).get("Value") or []
        answer[tag] = {"vr": "SQ", "Value": [*existing, *items]}


def stow(request: HttpRequest, grant: AccessGrant, *, study_uid: str | None) -> HttpResponse:
    """STOW-RS. KHEOPS answers 401 for a dead token, 403 without the write scope.

    Refused instances go in FailedSOPSequence. When nothing is left to store we answer 409
    Conflict, as KHEOPS does (its proxy maps every non-200/202 PACS answer to 409, and PS3.18
    uses 409 for "none stored"); when some were stored, 202 Accepted.
    """
    if not grant.can_write:
        raise DicomWebError(403, "Authorization is not valid for posting")
    # No 401 for a foreign study in the URL: KHEOPS's STOW proxy authorizes instance by
    # instance, so a foreign study shows up as refused instances (409), not as a 401.
    outcome = verify_stow_parts(_stow_parts(request), grant, study_uid)

    answer: dict[str, Any]
    if outcome.accepted:
        urls = _PublicUrls.for_request(request)
        body, content_type = _multipart_body(outcome.accepted)
        target = f"{DICOMWEB_ROOT}studies" + (f"/{study_uid}" if study_uid else "")
        upstream = call_orthanc(
            "POST",
            target,
            data=body,
            headers={**urls.upstream_headers, "Content-Type": content_type, "Accept": DICOM_JSON},
        )
        try:
            answer = json.loads(urls.rewrite(upstream.content)) if upstream.content.strip() else {}
        except ValueError as exc:
            raise UpstreamUnavailable("the PACS gave an unreadable STOW answer") from exc
        status = upstream.status_code
        if status >= 400:
            return JsonResponse(answer, status=status, content_type=DICOM_JSON, safe=False)
    else:
        answer, status = {}, 409
    _sequence(answer, TAG_FAILED_SOP_SEQUENCE, outcome.failed)
    _sequence(answer, TAG_OTHER_FAILURES_SEQUENCE, outcome.other_failures)
    refused = bool(answer.get(TAG_FAILED_SOP_SEQUENCE, {}).get("Value") or outcome.other_failures)
    if status == 200 and refused:
        status = 202
    logger.info(
        "STOW: %s stored, %s refused",
        len(outcome.accepted),
        len(outcome.failed) + len(outcome.other_failures),
    )
    return JsonResponse(answer, status=status, content_type=DICOM_JSON)
