"""The same-origin DICOMweb relay: what a viewer may ask of KHEOPS through us, and how.

In relay mode (TokenDelivery.RELAY) the viewer's data source is `/launches/<id>/dicomweb`
on our own origin. The browser's grant cookie is the only credential; the server adds the
launch's KHEOPS token and forwards to the grant's DICOMweb endpoint (launcher.kheops does
the HTTP). This module decides, before anything is looked up or sent:

- which requests are DICOMweb requests of this launch (`check`): GET/HEAD of QIDO-RS and
  WADO-RS under the launch's own studies, POST (STOW-RS) of `studies` or an own study;
  anything else is refused (400 for a malformed address, 405 for another method, 403 for
  another study), without a call to KHEOPS;
- which headers go up (`upstream_headers`) and which come back (`downstream_headers`): a
  short list each way. The browser's Cookie and Authorization never go up; hop-by-hop
  headers, KHEOPS's cookies and redirects never come back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from django.conf import settings

from launcher.kheops import KheopsTimeout

# What may appear in one segment of a DICOMweb path: UIDs, resource names and frame lists
# ("frames/1,2,3"). No "%", ":", "\\", nor any character a URL would need to escape.
SEGMENT = re.compile(r"[A-Za-z0-9._,-]{1,128}\Z")
MAX_SEGMENTS = 12
MAX_QUERY_LENGTH = 4096
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+\Z")
READ_METHODS = ("GET", "HEAD")
ALLOWED_METHODS = "GET, HEAD, POST"
# Sent up as the browser sent them (conditional requests, ranges, content negotiation).
UPSTREAM_REQUEST_HEADERS = (
    "accept",
    "accept-encoding",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
)
# For an upload, besides the above.
UPSTREAM_UPLOAD_HEADERS = ("content-type", "content-length")
# Sent back as KHEOPS sent them.
DOWNSTREAM_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "vary",
    "warning",
)


class Refused(Exception):
    """A request the relay does not forward, and the status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Target:
    """A request that passed the allow-list: what to ask for, and which studies it names."""

    method: str
    path: str  # below the DICOMweb root, e.g. "studies/1.2.3/series"
    query: str  # as the browser sent it (already checked)
    study_uids: tuple[str, ...]  # the studies it concerns; () for a STOW of `studies`

    @property
    def is_upload(self) -> bool:
        return self.method == "POST"


def check(method: str, raw_path: str, resource: str, query: str) -> Target:
    """The allow-list, on the address alone (the grant's studies are checked by `owns`).

    `raw_path` is the request's path as sent (still percent-encoded, when known), `resource`
    the decoded part below `dicomweb/`, `query` the raw query string.
    """
    if _has_control_characters(raw_path) or _has_control_characters(query):
        raise Refused(400, "The address contains control characters.")
    if "%" in raw_path.split("/dicomweb/", 1)[-1]:
        # Encoded slashes, dots or anything else: a DICOMweb path needs no escaping at all.
        raise Refused(400, "The address contains encoded characters.")
    segments = resource.split("/")
    if len(segments) > MAX_SEGMENTS or not all(SEGMENT.match(s) for s in segments):
        raise Refused(400, "This is not a DICOMweb address.")
    if any(s in (".", "..") for s in segments) or len(query) > MAX_QUERY_LENGTH:
        raise Refused(400, "This is not a DICOMweb address.")
    if segments[0] != "studies":
        raise Refused(403, "Only the launch's studies can be reached through the viewer.")
    if method not in (*READ_METHODS, "POST"):
        raise Refused(405, "The viewer's DICOMweb relay answers GET, HEAD and POST only.")
    if len(segments) == 1:
        return _study_search(method, query)
    if method == "POST" and len(segments) > 2:
        raise Refused(405, "Uploads go to studies or to one study.")
    if not UID.match(segments[1]) or len(segments[1]) > 64:
        raise Refused(400, "This is not a study instance UID.")
    return Target(method, "/".join(segments), query, (segments[1],))


def _study_search(method: str, query: str) -> Target:
    if method == "POST":
        return Target(method, "studies", query, ())
    # QIDO-RS of `studies`: only when it names the launch's own studies.
    uids: list[str] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in ("StudyInstanceUID", "0020000D"):
            uids += [uid for uid in value.replace("\\", ",").split(",") if uid]
    if not uids or not all(UID.match(uid) and len(uid) <= 64 for uid in uids):
        raise Refused(403, "A search must name the launch's studies (StudyInstanceUID).")
    return Target(method, "studies", query, tuple(uids))


def owns(target: Target, study_uids: Iterable[str]) -> bool:
    """Whether every study the request names is one of the launch's."""
    own = set(study_uids)
    return all(uid in own for uid in target.study_uids)


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _has_control_characters(text: str) -> bool:
    return _CONTROL_CHARACTER.search(text) is not None


def same_origin(headers: Mapping[str, str], our_origin: str) -> bool:
    """Whether the browser says the request comes from our own pages (uploads only)."""
    origin = headers.get("origin")
    if origin is not None:
        return origin == our_origin
    return headers.get("sec-fetch-site") == "same-origin"


def our_origin(request_origin: str) -> str:
    """Our origin as browsers name it: PUBLIC_BASE_URL's, which the viewer's URLs use."""
    parts = urlsplit(settings.PUBLIC_BASE_URL)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else request_origin


def upstream_headers(
    browser: Mapping[str, str], access_token: str, *, upload: bool
) -> dict[str, str]:
    """What goes to KHEOPS: the token, and a few of the browser's headers, checked."""
    names = UPSTREAM_REQUEST_HEADERS + (UPSTREAM_UPLOAD_HEADERS if upload else ())
    headers = {}
    for name in names:
        value = browser.get(name)
        if value is None:
            continue
        if _has_control_characters(value) or len(value) > 1024:
            raise Refused(400, f"The {name} header is not acceptable.")
        headers[name] = value
    # The bytes are passed through undecoded: ask only for what the browser can decode.
    headers.setdefault("accept-encoding", "identity")
    headers["authorization"] = f"Bearer {access_token}"
    return headers


def downstream_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """What goes back to the browser of KHEOPS's answer's headers."""
    headers = {name: upstream[name] for name in DOWNSTREAM_HEADERS if name in upstream}
    # The answers are this browser's alone (its cookie): no shared cache may keep them.
    directives = [
        d.strip()
        for d in upstream.get("cache-control", "no-cache").split(",")
        if d.strip() and d.strip().lower().split("=")[0] not in ("public", "s-maxage", "private")
    ]
    headers["cache-control"] = ", ".join(["private", *directives])
    return headers


def unanswered(exc: Exception) -> tuple[int, str]:
    """The status and message for a request KHEOPS did not answer (launcher.kheops)."""
    if isinstance(exc, KheopsTimeout):
        return 504, "KHEOPS did not answer in time."
    return 502, "KHEOPS could not be reached."


def refusal_body(message: str, advice: str = "") -> bytes:
    """A refusal's JSON body, as the viewer's script reads it."""
    return json.dumps({"error": str(message), "advice": str(advice)}).encode()
