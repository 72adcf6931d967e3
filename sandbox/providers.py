"""Everything the stand-in fetches from a report provider: its configuration document and JWKS.

This is the only module that makes outbound HTTP calls. Functions take a `requests.Session`
made by `provider_session()` (which puts a timeout on every call), read no settings and touch
no request. Validation reproduces `ReportProviderClientMetadata.validateForConfigUri` of
KHEOPS, error strings included (two of which are swapped in KHEOPS: kept swapped on purpose).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

USER_AGENT = "kheops-standin/1 (+sandbox; not KHEOPS)"

# ValidationResult descriptions, verbatim from KHEOPS. BAD_REDIRECT_URI_ROOT and
# BAD_JWKS_URI_ROOT carry each other's text in the KHEOPS source; reproduced as is.
CONFIG_URI_SYNTAX_INVALID = "config_uri syntax not valid"
REDIRECT_URI_IS_NULL = "redirect_uri is null"
REDIRECT_URI_SYNTAX_INVALID = "redirect_uri syntax not valid"
JWKS_URI_IS_NULL = "jwks_uri is null"
JWKS_URI_SYNTAX_INVALID = "jwks_uri syntax not valid"
BAD_REDIRECT_URI_ROOT = "jwks_uri root does not match the config uri"
BAD_JWKS_URI_ROOT = "redirect_uri root does not match the config uri"
RESPONSE_TYPE_MISSING = "missing response_type"
RESPONSE_TYPE_UNKNOWN = "unknown response_type"
TOKEN_ENDPOINT_AUTH_METHOD_MISSING = "missing token_endpoint_auth_method"
TOKEN_ENDPOINT_AUTH_METHOD_UNKNOWN = "unknown token_endpoint_auth_method"
TOKEN_ENDPOINT_AUTH_SIGNING_ALG_MISSING = "missing token_endpoint_auth_signing_alg"
TOKEN_ENDPOINT_AUTH_SIGNING_ALG_UNKNOWN = "unknown token_endpoint_auth_signing_alg"

# Members mapped by KHEOPS's ReportProviderClientMetadata, with the JSON type MOXy expects.
_STRING_MEMBERS = (
    "redirect_uri",
    "token_endpoint_auth_method",
    "introspection_endpoint_auth_method",
    "response_type",
    "client_name",
    "client_uri",
    "logo_uri",
    "scope",
    "tos_uri",
    "policy_uri",
    "jwks_uri",
    "software_id",
    "software_version",
    "token_endpoint_auth_signing_alg",
    "introspection_endpoint_auth_signing_alg",
)
_LIST_MEMBERS = ("grant_types", "contacts", "supported_modalities")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)")
# Characters java.net.URI refuses anywhere in a URI (it wants them percent-encoded).
_ILLEGAL_URI_CHARS = re.compile(r"[\s\"<>\\^`{|}]")


class ProviderFetchError(Exception):
    """The document or JWKS could not be fetched or parsed (unavailable or malformed)."""


class ProviderDocumentInvalid(Exception):
    """The document was fetched but fails KHEOPS's validation; str() is KHEOPS's description."""


@dataclass(frozen=True)
class ProviderDocument:
    """The members KHEOPS maps from a provider's configuration document."""

    redirect_uri: str | None
    response_type: str | None
    token_endpoint_auth_method: str | None
    token_endpoint_auth_signing_alg: str | None
    jwks_uri: str | None
    client_name: str | None
    supported_modalities: tuple[str, ...] | None
    members: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The document as KHEOPS's metadata endpoint echoes it (mapped members only)."""
        return {name: value for name, value in self.members.items() if value is not None}


def provider_session(timeout_seconds: float, ca_bundle: str = "") -> requests.Session:
    """A session whose every request carries `timeout_seconds` (connect and read); https
    checked against `ca_bundle` (a PEM file) when given, else the usual CA certificates."""
    session = requests.Session()
    if ca_bundle:
        session.verify = ca_bundle
    session.headers["User-Agent"] = USER_AGENT
    session.trust_env = False  # never route a loopback fetch through a proxy from the environment
    adapter = _TimeoutAdapter(timeout_seconds)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _TimeoutAdapter(HTTPAdapter):
    def __init__(self, timeout_seconds: float) -> None:
        super().__init__(max_retries=0)
        self._timeout_seconds = timeout_seconds

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["timeout"] = self._timeout_seconds
        return super().send(request, **kwargs)


def _get_json(session: requests.Session, url: str) -> Any:
    try:
        response = session.get(url, headers={"Accept": "application/json"}, allow_redirects=False)
    except (requests.RequestException, ValueError) as exc:
        raise ProviderFetchError(f"request failed: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise ProviderFetchError(f"HTTP {response.status_code}")
    # KHEOPS reads the body with MOXy's JSON provider, which only handles JSON media types.
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ProviderFetchError(f"unexpected content type {media_type or 'none'!r}")
    try:
        return response.json()
    except ValueError as exc:
        raise ProviderFetchError("body is not JSON") from exc


def parse_provider_document(body: Any) -> ProviderDocument:
    if not isinstance(body, dict):
        raise ProviderFetchError("document is not a JSON object")
    members: dict[str, Any] = {}
    for name in _STRING_MEMBERS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ProviderFetchError(f"{name} is not a string")
        members[name] = value
    for name in _LIST_MEMBERS:
        value = body.get(name)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(item, str) for item in value)
        ):
            raise ProviderFetchError(f"{name} is not an array of strings")
        members[name] = value
    modalities = members["supported_modalities"]
    return ProviderDocument(
        redirect_uri=members["redirect_uri"],
        response_type=members["response_type"],
        token_endpoint_auth_method=members["token_endpoint_auth_method"],
        token_endpoint_auth_signing_alg=members["token_endpoint_auth_signing_alg"],
        jwks_uri=members["jwks_uri"],
        client_name=members["client_name"],
        supported_modalities=tuple(modalities) if modalities is not None else None,
        members=members,
    )


def fetch_provider_document(session: requests.Session, config_url: str) -> ProviderDocument:
    """GET the provider's configuration document; raise ProviderFetchError if unusable."""
    return parse_provider_document(_get_json(session, config_url))


def _parses_as_uri(value: str) -> bool:
    return bool(value) and not _ILLEGAL_URI_CHARS.search(value)


def _scheme_and_authority(value: str) -> tuple[str | None, str | None]:
    """Scheme and raw authority, compared as strings like java.net.URI's getters."""
    scheme = _SCHEME.match(value)
    authority = _AUTHORITY.match(value)
    return (scheme.group(1) if scheme else None, authority.group(1) if authority else None)


def validation_error(document: ProviderDocument, config_url: str) -> str | None:
    """KHEOPS's `validateForConfigUri`: None when valid, else its ValidationResult text."""
    if not _parses_as_uri(config_url):
        return CONFIG_URI_SYNTAX_INVALID
    config_root = _scheme_and_authority(config_url)
    if None in config_root:
        # KHEOPS would hit a NullPointerException here; a root-less config URL is just invalid.
        return CONFIG_URI_SYNTAX_INVALID
    if document.redirect_uri is None:
        return REDIRECT_URI_IS_NULL
    if not _parses_as_uri(document.redirect_uri):
        return REDIRECT_URI_SYNTAX_INVALID
    if _scheme_and_authority(document.redirect_uri) != config_root:
        return BAD_REDIRECT_URI_ROOT
    if document.response_type is None:
        return RESPONSE_TYPE_MISSING
    if document.response_type == "code":
        if document.token_endpoint_auth_method is None:
            return TOKEN_ENDPOINT_AUTH_METHOD_MISSING
        if document.token_endpoint_auth_method != "private_key_jwt":
            return TOKEN_ENDPOINT_AUTH_METHOD_UNKNOWN
        if document.jwks_uri is None:
            return JWKS_URI_IS_NULL
        if not _parses_as_uri(document.jwks_uri):
            return JWKS_URI_SYNTAX_INVALID
        if _scheme_and_authority(document.jwks_uri) != config_root:
            return BAD_JWKS_URI_ROOT
        if document.token_endpoint_auth_signing_alg is None:
            return TOKEN_ENDPOINT_AUTH_SIGNING_ALG_MISSING
        if document.token_endpoint_auth_signing_alg != "RS256":
            return TOKEN_ENDPOINT_AUTH_SIGNING_ALG_UNKNOWN
    elif document.response_type != "token":
        return RESPONSE_TYPE_UNKNOWN
    return None


def fetch_valid_provider_document(session: requests.Session, config_url: str) -> ProviderDocument:
    """Fetch and validate, as KHEOPS does at each step; raise on either failure."""
    document = fetch_provider_document(session, config_url)
    error = validation_error(document, config_url)
    if error is not None:
        raise ProviderDocumentInvalid(error)
    return document


def fetch_jwks(session: requests.Session, jwks_uri: str) -> list[dict[str, Any]]:
    """GET the provider's JWKS and return its keys (objects only)."""
    body = _get_json(session, jwks_uri)
    keys = body.get("keys") if isinstance(body, dict) else None
    if not isinstance(keys, list):
        raise ProviderFetchError("JWKS has no keys array")
    return [key for key in keys if isinstance(key, dict)]


def register_through_api(
    session: requests.Session,
    *,
    root_url: str,
    album_id: str,
    config_url: str,
    name: str,
    user_token: str,
) -> requests.Response:
    """POST the registration form to a stand-in (or KHEOPS) as the album admin would."""
    return session.post(
        f"{root_url}/api/albums/{album_id}/reportproviders",
        data={"url": config_url, "name": name},
        headers={"Authorization": f"Bearer {user_token}", "Accept": "application/json"},
        allow_redirects=False,
    )
