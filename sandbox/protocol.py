"""The KHEOPS side of the report-provider protocol: registration, launch, token, introspection,
userinfo. Views parse HTTP and call one function here; these functions raise `ApiError` (KHEOPS's
`{"message","detail"}` answers) or `TokenRequestError` (`{"error","error_description"}`, always
400) in the order KHEOPS checks things (docs/kheops-protocol.md; the KHEOPS classes are
named where a quirk comes from).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import jwt
import requests
from django.conf import settings
from django.db import transaction
from jwt.algorithms import RSAAlgorithm

from sandbox import clock, providers, tokens
from sandbox.models import Album, AlbumMembership, AlbumStudy, ReportProvider, User

logger = logging.getLogger(__name__)

JWT_BEARER_URN = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_LIFETIME_SECONDS = 600
KNOWN_GRANT_TYPES = {
    "refresh_token",
    "authorization_code",
    "password",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:saml2-bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange",
}
# org.ietf.jgss.Oid, as used by KHEOPS's Tools.checkValidUID: dotted decimal, first arc 0-2.
_UID = re.compile(r"^[0-2](\.[0-9]+)+$")


class ApiError(Exception):
    """A KHEOPS API error: HTTP status plus its ErrorResponse `{"message","detail"}`."""

    def __init__(self, status: int, message: str | None = None, detail: str | None = None) -> None:
        super().__init__(f"{status} {message}: {detail}")
        self.status = status
        self.message = message
        self.detail = detail

    def body(self) -> dict[str, str] | None:
        if self.message is None:
            return None  # e.g. KHEOPS's bare 403 on /report for non-members
        return {"message": self.message, "detail": self.detail or ""}


class TokenRequestError(Exception):
    """KHEOPS's TokenRequestException: every one is HTTP 400."""

    def __init__(self, error: str, description: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description is not None:
            body["error_description"] = self.description
        return body


# --- shared helpers ------------------------------------------------------------------------


def root_url() -> str:
    return settings.SANDBOX_ROOT_URL


def api_url() -> str:
    return f"{root_url()}/api"


def configuration_url() -> str:
    return f"{api_url()}/.well-known/report-provider-configuration"


def _session() -> requests.Session:
    return providers.provider_session(
        settings.SANDBOX_PROVIDER_TIMEOUT_SECONDS, settings.SANDBOX_CA_BUNDLE
    )


def _fetch_valid_document(config_url: str) -> providers.ProviderDocument:
    """Fetch and validate a provider document; ApiError-free, raises the providers errors."""
    with _session() as session:
        return providers.fetch_valid_provider_document(session, config_url)


def _document_problem(config_url: str) -> tuple[providers.ProviderDocument | None, str | None]:
    """(document, None) or (None, KHEOPS's detail), never raising."""
    try:
        return _fetch_valid_document(config_url), None
    except providers.ProviderFetchError as exc:
        logger.info("provider document at %s unusable: %s", config_url, exc)
        return None, "error during request"
    except providers.ProviderDocumentInvalid as exc:
        logger.info("provider document at %s invalid: %s", config_url, exc)
        return None, str(exc)


def live_provider(client_id: str | None) -> ReportProvider | None:
    if not client_id:
        return None
    return (
        ReportProvider.objects.filter(client_id=client_id, removed=False)
        .select_related("album")
        .first()
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of `Bearer <t>`, or the password of `Basic base64(x:<t>)` (SecuredFilter)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


@dataclass(frozen=True)
class TokenIdentity:
    kind: str  # "user" or "report_provider"
    claims: dict[str, Any]


def identify_token(token: str) -> TokenIdentity:
    """Which kind of stand-in token this is; raise tokens.InvalidToken if none verifies."""
    try:
        return TokenIdentity("user", tokens.verify_user_token(token))
    except tokens.InvalidToken:
        pass
    claims = tokens.verify_access_token(token)
    if live_provider(claims["azp"]) is None:
        raise tokens.InvalidToken("provider removed")
    return TokenIdentity("report_provider", claims)


def identity_from_header(authorization: str | None) -> TokenIdentity:
    """The verified token of an `Authorization: Bearer` header (401 when missing or bad)."""
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "Authorization error", "Missing or malformed Authorization header")
    try:
        return identify_token(token)
    except tokens.InvalidToken as exc:
        raise ApiError(401, "Authorization error", "Bad token") from exc


def authenticate_user(authorization: str | None) -> User:
    """@Secured + @UserAccessSecured: a valid user token (401 otherwise, 403 for RP tokens)."""
    identity = identity_from_header(authorization)
    if identity.kind != "user":
        raise ApiError(403, "Forbidden", "This token does not give user access")
    user = User.objects.filter(sub=identity.claims["sub"]).first()
    if user is None:
        raise ApiError(401, "Authorization error", "User not found")
    return user


def _album_with_permission(user: User, album_id: str, *, admin: bool) -> Album:
    album = Album.objects.filter(album_id=album_id).first()
    if album is None:
        raise ApiError(404, "Album not found", f"Album {album_id} not found")
    membership = AlbumMembership.objects.filter(album=album, user=user).first()
    if membership is None:
        raise ApiError(403, "Forbidden", "Not a member of this album")
    if admin and not membership.is_admin:
        # MANAGE_DICOM_SR has no per-album override: only album admins pass.
        raise ApiError(403, "Forbidden", "Only an album admin can manage report providers")
    return album


def provider_json(provider: ReportProvider) -> dict[str, Any]:
    created = provider.created_time.astimezone(UTC).replace(tzinfo=None)
    return {
        "name": provider.name,
        "url": provider.url,
        "client_id": provider.client_id,
        "created_time": created.isoformat(timespec="milliseconds"),
    }


# --- registration (ReportProviderResource) --------------------------------------------------


def _require_form_value(value: str | None, name: str) -> str:
    if not value:
        raise ApiError(400, "Bad Form Parameter", f"'{name}' formparam is missing")
    return value


def register_provider(
    *, user: User, album_id: str, url: str | None, name: str | None
) -> ReportProvider:
    album = _album_with_permission(user, album_id, admin=True)
    url = _require_form_value(url, "url")
    name = _require_form_value(name, "name")
    _, problem = _document_problem(url)
    if problem is not None:
        raise ApiError(400, "Bad Form Parameter", "'url' formparam is not valid")
    with transaction.atomic():
        provider = ReportProvider(url=url, name=name, album=album)
        while ReportProvider.objects.filter(client_id=provider.client_id).exists():
            provider.client_id = ReportProvider._meta.get_field("client_id").default()
        provider.save()
    logger.info("registered report provider %s in album %s", provider.client_id, album.album_id)
    return provider


def list_providers(
    *, user: User, album_id: str, limit: int | None, offset: int
) -> tuple[list[ReportProvider], int]:
    album = _album_with_permission(user, album_id, admin=False)
    live = album.report_providers.filter(removed=False)
    total = live.count()
    page = live[offset : offset + limit] if limit is not None else live[offset:]
    return list(page), total


def get_provider(*, user: User, album_id: str, client_id: str) -> ReportProvider:
    album = _album_with_permission(user, album_id, admin=False)
    provider = live_provider(client_id)
    if provider is None or provider.album_id != album.pk:
        raise ApiError(404, "Client ID not found", "Client ID not found")
    return provider


def edit_provider(
    *, user: User, album_id: str, client_id: str, url: str | None, name: str | None
) -> ReportProvider:
    album = _album_with_permission(user, album_id, admin=True)
    provider = live_provider(client_id)
    if provider is None or provider.album_id != album.pk:
        raise ApiError(404, "Client ID not found", "Client ID not found")
    if url:
        _, problem = _document_problem(url)
        if problem is not None:
            raise ApiError(400, "Bad Form Parameter", "'url' formparam is not valid")
        provider.url = url
    if name:
        provider.name = name
    provider.save(update_fields=["url", "name"])
    return provider


def remove_provider(*, user: User, album_id: str, client_id: str) -> None:
    album = _album_with_permission(user, album_id, admin=True)
    provider = live_provider(client_id)
    if provider is None or provider.album_id != album.pk:
        raise ApiError(404, "Client ID not found", "Client ID not found")
    provider.removed = True  # soft delete, as KHEOPS's setAsRemoved()
    provider.save(update_fields=["removed"])
    logger.info("removed report provider %s", client_id)


def provider_metadata(*, authorization: str | None, url: str | None) -> dict[str, Any]:
    """POST /reportproviders/metadata: any valid token; the parsed document plus `valid`."""
    token = bearer_token(authorization)
    try:
        if token is None:
            raise tokens.InvalidToken("no token")
        identify_token(token)
    except tokens.InvalidToken as exc:
        raise ApiError(401, "Authorization error", "Bad token") from exc
    url = _require_form_value(url, "url")
    document, problem = _document_problem(url)
    if document is None:
        return {"valid": False, "error_description": problem}
    return {**document.metadata(), "valid": True}


# --- discovery ------------------------------------------------------------------------------


def discovery_document() -> dict[str, Any]:
    """ConfigurationResponse: no jwks_uri (KHEOPS tokens are HMAC-signed)."""
    return {
        "issuer": root_url(),
        "dicomweb_endpoint": api_url(),
        "dicomweb_uri_endpoint": f"{api_url()}/wado",
        "token_endpoint": f"{api_url()}/token",
        "introspection_endpoint": f"{api_url()}/token/introspect",
        "userinfo_endpoint": f"{api_url()}/userinfo",
        "grant_types_supported": ["authorization_code", "implicit"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "introspection_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "token"],
        "response_modes_supported": ["query", "fragment"],
    }


# --- launch: POST /api/report ----------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    provider_name: str
    provider_url: str  # where the meta refresh sends the browser


def _append_query(url: str, pairs: Sequence[tuple[str, str]]) -> str:
    """UriBuilder.queryParam: append to any existing query, before any fragment."""
    parts = urlsplit(url)
    extra = "&".join(f"{name}={value}" for name, value in pairs)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _with_fragment(url: str, fragment: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, fragment))


def launch_report(
    *, access_token: str | None, client_id: str | None, study_uids: list[str]
) -> Launch:
    # @NotNull @NotEmpty on access_token and studyUID (bean validation: 400).
    if not access_token:
        raise ApiError(400, "Bad Form Parameter", "'access_token' formparam is missing")
    if not study_uids:
        raise ApiError(400, "Bad Form Parameter", "'studyUID' formparam is missing")
    for uid in study_uids:
        if not _UID.match(uid):
            raise ApiError(400, "Bad Form Parameter", "'studyUID' formparam is not valid")
    try:
        identity = identify_token(access_token)
    except tokens.InvalidToken as exc:
        logger.info("launch refused: invalid access_token (%s)", exc)
        raise ApiError(401, "Authorization error", "error with the access_token") from exc
    if identity.kind != "user":
        raise ApiError(
            403,
            "Authorization error",
            "The token is not a user capability token or a keycloak token",
        )
    user = User.objects.filter(sub=identity.claims["sub"]).first()
    if user is None:
        raise ApiError(404, "User not found", "User not found")
    provider = live_provider(client_id)
    if provider is None:
        raise ApiError(404, "Client ID not found", "Client ID not found")
    album = provider.album
    membership = AlbumMembership.objects.filter(album=album, user=user).first()
    if membership is None:
        raise ApiError(403)  # KHEOPS answers a bare 403 here
    in_album = set(AlbumStudy.objects.filter(album=album).values_list("study_uid", flat=True))
    for uid in study_uids:
        if uid not in in_album:
            raise ApiError(
                404, "Study Not Found", "The study does not exist or you don't have access"
            )
    document, problem = _document_problem(provider.url)
    if document is None:
        raise ApiError(400, "error", problem)

    conf_uri = quote(configuration_url(), safe="")
    return_uri = f"{root_url()}/albums/{album.album_id}"
    if document.response_type == "code":
        code = tokens.mint_code(
            subject=user.sub, client_id=provider.client_id, study_uids=study_uids
        )
        pairs = [
            ("code", code),
            ("conf_uri", conf_uri),
            ("client_id", provider.client_id),
            ("return_uri", return_uri),
        ] + [("studyUID", quote(uid, safe="")) for uid in study_uids]
        url = _append_query(document.redirect_uri or "", pairs)
    else:  # "token": the implicit flow puts the token in the fragment
        scope = "read write" if membership.is_admin or album.add_series else "read"
        token, lifetime = tokens.mint_access_token(
            subject=user.sub, client_id=provider.client_id, study_uids=study_uids, scope=scope
        )
        fragment = (
            f"access_token={token}&token_type=bearer&expires_in={lifetime}"
            f"&scope={quote(scope)}&client_id={provider.client_id}&conf_uri={conf_uri}"
            f"&return_uri={quote(return_uri, safe='')}"
            + "".join(f"&studyUID={uid}" for uid in study_uids)
        )
        url = _with_fragment(document.redirect_uri or "", fragment)
    logger.info(
        "launch of %s by %s for %d study(ies)", provider.client_id, user.username, len(study_uids)
    )
    return Launch(provider_name=provider.name, provider_url=url)


# --- client authentication (TokenClientAuthenticationType, PrivateKeyJWTAuthenticator) ------


@dataclass(frozen=True)
class ClientPrincipal:
    kind: str  # "report_provider" or "public"
    client_id: str | None = None
    provider: ReportProvider | None = field(default=None, compare=False)


def _single(form: Any, name: str, message: str) -> str:
    values = form.getlist(name)
    if len(values) != 1:
        raise TokenRequestError("invalid_request", message)
    return values[0]


def authenticate_client(form: Any, authorization: str | None, *, audience: str) -> ClientPrincipal:
    has_assertion = "client_assertion" in form or "client_assertion_type" in form
    if authorization is not None:
        if has_assertion:
            raise TokenRequestError(
                "invalid_request",
                "Client accesstoken and Authorization Header can not both be present",
            )
        if authorization[:6].lower() == "basic ":
            # Only KHEOPS's internal clients (DICOMweb proxy, zipper) have Basic credentials.
            raise TokenRequestError("invalid_client", "Unknown client")
        if authorization[:7].lower() == "bearer ":
            return ClientPrincipal("public")
        raise TokenRequestError("invalid_request", "Unknown authorization type")
    if not has_assertion:
        return ClientPrincipal("public")
    assertion_types = form.getlist("client_assertion_type")
    assertions = form.getlist("client_assertion")
    if len(assertion_types) != 1 or len(assertions) != 1:
        raise TokenRequestError("invalid_request", "Only one client_assertion can be present")
    if assertion_types[0] != JWT_BEARER_URN:
        raise TokenRequestError("invalid_request", "Unknown client_assertion_type")
    if not assertions[0].startswith("eyJ"):
        raise TokenRequestError("invalid_request", "Malformed client_assertion")
    client_id = _single(form, "client_id", "There isn't a single client_id header")
    provider = _verify_client_assertion(assertions[0], client_id=client_id, audience=audience)
    return ClientPrincipal("report_provider", client_id, provider)


def _unable(detail: str) -> TokenRequestError:
    return TokenRequestError("invalid_request", f"Unable to verify the JWT. {detail}")


def _verify_client_assertion(assertion: str, *, client_id: str, audience: str) -> ReportProvider:
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _unable("The string is not a valid JWT.") from exc

    # basicValidation(), before anything is fetched.
    algorithm = header.get("alg")
    if algorithm != "RS256":
        raise TokenRequestError("invalid_request", f"Unexpected JWT signing algorithm: {algorithm}")
    if not isinstance(claims.get("jti"), str):
        raise TokenRequestError("invalid_request", "Token id (jti) claim is required")
    key_id = header.get("kid")
    if not isinstance(key_id, str):
        raise TokenRequestError("invalid_request", "Token id (kid) header is required")
    expires = claims.get("exp")
    if expires is None:
        raise TokenRequestError("invalid_request", "Expiration date (exp) claim is required")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        raise _unable("The Claim 'exp' is not a number.")
    now = clock.assertion_now()
    # No leeway on this bound, unlike every other time check.
    if expires > now + ASSERTION_MAX_LIFETIME_SECONDS:
        raise TokenRequestError(
            "invalid_request", "Expiration date (exp) claim is too far in the future"
        )

    # getJWKSUri(): the client and its freshly fetched document.
    provider = live_provider(client_id)
    if provider is None:
        raise TokenRequestError("invalid_client", "Unknown client_id")
    document, problem = _document_problem(provider.url)
    if document is None:
        raise TokenRequestError("invalid_client", f"Error with the client config: {problem}")
    if not document.jwks_uri:
        raise TokenRequestError("invalid_request", "jwks_uri is not a valid URI")

    public_key = _public_key(document.jwks_uri, key_id)
    try:
        jwt.decode(
            assertion,
            public_key,
            algorithms=["RS256"],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise _unable(
            "The Token's Signature resulted invalid when verified using the Algorithm: "
            "SHA256withRSA"
        ) from exc
    except jwt.PyJWTError as exc:
        raise _unable(type(exc).__name__) from exc

    if claims.get("iss") != client_id:
        raise _unable("The Claim 'iss' value doesn't match the required issuer.")
    if claims.get("sub") != client_id:
        raise _unable("The Claim 'sub' value doesn't match the required one.")
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences
    if not isinstance(audiences, list) or audience not in audiences:
        raise _unable("The Claim 'aud' value doesn't contain the required audience.")
    leeway = tokens.LEEWAY_SECONDS
    if now > expires + leeway:
        raise _unable("The Token has expired.")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _unable(f"The Claim '{name}' is not a number.")
        if value > now + leeway:
            raise _unable("The Token can't be used before its nbf/iat.")
    return provider


def _public_key(jwks_uri: str, key_id: str) -> Any:
    try:
        with _session() as session:
            keys = providers.fetch_jwks(session, jwks_uri)
    except providers.ProviderFetchError as exc:
        logger.info("JWKS at %s unusable: %s", jwks_uri, exc)
        raise TokenRequestError("invalid_request", f"Unable to get public key.{exc}") from exc
    for key in keys:
        if key.get("kid") == key_id:
            try:
                return RSAAlgorithm.from_jwk(json.dumps(key))
            except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
                raise TokenRequestError(
                    "invalid_request", "Unable to get public key.Not an RSA key"
                ) from exc
    raise TokenRequestError(
        "invalid_request", f"Unable to get public key.No key found in {jwks_uri} with kid {key_id}"
    )


# --- token endpoint (TokenResource.token, TokenGrantType.AUTHORIZATION_CODE) ----------------


def grant_token(*, form: Any, authorization: str | None) -> dict[str, Any]:
    principal = authenticate_client(form, authorization, audience=f"{api_url()}/token")
    grant_type = _single(form, "grant_type", "Must have a single grant_type")
    if grant_type not in KNOWN_GRANT_TYPES:
        raise TokenRequestError("unsupported_grant_type", "Unknown grant type")
    if grant_type != "authorization_code":
        # token-exchange serves KHEOPS's UI and internal proxy, never a report provider.
        raise TokenRequestError("unsupported_grant_type")

    code = _single(form, "code", "Must have a single code")
    client_id = _single(form, "client_id", "Must have a single client_id")
    redirect_uri = _single(form, "redirect_uri", "Must have a single redirect_uri")
    if principal.kind != "report_provider":
        raise TokenRequestError("unauthorized_client")

    provider = live_provider(client_id)
    if provider is None:
        raise TokenRequestError("invalid_grant", "Client ID not found")
    document, problem = _document_problem(provider.url)
    if document is None:
        raise TokenRequestError("invalid_grant", problem)
    if document.redirect_uri != redirect_uri:
        raise TokenRequestError("invalid_grant", "redirect_uri does not match")

    try:
        claims = tokens.verify_code(code, client_id=client_id)
    except tokens.InvalidToken as exc:
        logger.info("token request for %s: bad code (%s)", client_id, exc)
        raise TokenRequestError(
            "invalid_request", "Unable to validate the authorization code"
        ) from exc
    access_token, lifetime = tokens.mint_access_token(
        subject=claims["sub"], client_id=client_id, study_uids=claims["study_uids"]
    )
    logger.info("issued an access token to %s", client_id)
    # token_type deliberately omitted: whether KHEOPS sends it is unconfirmed (stricter case).
    return {"access_token": access_token, "expires_in": lifetime}


# --- introspection and userinfo -------------------------------------------------------------


def introspect(*, form: Any, authorization: str | None) -> dict[str, Any]:
    """TokenResource.introspect: `{"active": false}` for anything not a live RP token."""
    authenticate_client(form, authorization, audience=f"{api_url()}/token/introspect")
    token = _single(form, "token", "Must have a single token")
    try:
        claims = tokens.verify_access_token(token)
    except tokens.InvalidToken:
        try:
            tokens.verify_user_token(token)
        except tokens.InvalidToken:
            return {"active": False}
        # A valid non-provider token may not be introspected by a public or provider caller.
        raise ApiError(
            401, "Authorization error", "Not authorized to introspect this token"
        ) from None
    provider = live_provider(claims["azp"])
    if provider is None:
        return {"active": False}
    document, _ = _document_problem(provider.url)
    if document is None:
        return {"active": False}
    study_uids = claims["studyUID"]
    return {
        "active": True,
        "iss": claims["iss"],
        "sub": claims["sub"],
        "scope": claims["scope"],
        "azp": claims["azp"],
        "client_id": claims["azp"],
        "exp": claims["exp"],
        "iat": claims["iat"],
        "nbf": claims["nbf"],
        "aud": claims["aud"],
        "studyUID": study_uids[0] if len(study_uids) == 1 else study_uids,
        "redirect_uri": document.redirect_uri,
        "album_id": provider.album.album_id,
    }


def userinfo(*, authorization: str | None) -> dict[str, str]:
    """UserResource.getOIDCUserInfo: only report-provider tokens (403 for any other token)."""
    identity = identity_from_header(authorization)
    if identity.kind != "report_provider":
        raise ApiError(403, "Forbidden", "Only report provider tokens can call userinfo")
    user = User.objects.filter(sub=identity.claims["sub"]).first()
    if user is None:
        raise ApiError(502, "Bad Gateway", "Unknown user")
    return {"sub": user.sub, "name": user.display_name, "email": user.email}


# --- the album page (IconListProviders.vue) --------------------------------------------------


@dataclass(frozen=True)
class ProviderButton:
    client_id: str
    label: str


@dataclass(frozen=True)
class StudyRow:
    study: AlbumStudy
    buttons: list[ProviderButton]


@dataclass(frozen=True)
class AlbumPage:
    album: Album
    user: User
    is_member: bool
    is_admin: bool
    rows: list[StudyRow]
    skipped_providers: list[tuple[str, str]]  # (name, reason) for providers KHEOPS would hide
    user_token: str
    users: list[User]


def album_page(*, album_id: str, username: str | None) -> AlbumPage | None:
    album = Album.objects.filter(album_id=album_id).first()
    if album is None:
        return None
    memberships = {m.user_id: m for m in album.memberships.select_related("user")}
    if username:
        user = User.objects.filter(username=username).first()
    else:
        admin = next((m for m in memberships.values() if m.is_admin), None)
        user = admin.user if admin else None
    if user is None:
        return None
    membership = memberships.get(user.pk)

    # Like the UI: one metadata fetch per provider, keep the valid ones.
    usable: list[tuple[ReportProvider, providers.ProviderDocument]] = []
    skipped: list[tuple[str, str]] = []
    for provider in album.report_providers.filter(removed=False):
        document, problem = _document_problem(provider.url)
        if document is None:
            skipped.append((provider.name, problem or "invalid"))
        else:
            usable.append((provider, document))

    rows = []
    for study in album.studies.all():
        modalities = set(study.modality_list)
        buttons = [
            ProviderButton(client_id=provider.client_id, label=provider.name)
            for provider, document in usable
            if document.supported_modalities is None
            or modalities.intersection(document.supported_modalities)
        ]
        rows.append(StudyRow(study=study, buttons=buttons))
    return AlbumPage(
        album=album,
        user=user,
        is_member=membership is not None,
        is_admin=bool(membership and membership.is_admin),
        rows=rows,
        skipped_providers=skipped,
        user_token=tokens.mint_user_token(user),
        users=list(User.objects.order_by("username")),
    )
