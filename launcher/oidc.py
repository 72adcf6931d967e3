"""Admin sign-in through the hospital's OpenID Connect provider (Keycloak beside KHEOPS).

The protocol is mozilla-django-oidc's: the authorization code flow with PKCE (S256), a
state (kept in the session, used once: a replayed callback is refused) and a nonce (the
ID token must carry the one we sent). This module adds what it leaves out:

- the provider's endpoints come from its discovery document (`OIDC_ISSUER` +
  /.well-known/openid-configuration), fetched with a timeout, https only (plain http only to
  this machine, as for KHEOPS), its `issuer` equal to `OIDC_ISSUER`, reused for a while;
- the ID token is verified with PyJWT: RS256 signature by a key of the provider's JWKS,
  `iss`, `aud` (our client id; `azp` too when there are several audiences), `exp` and `iat`
  required; its claims (not the userinfo endpoint: one call fewer) decide who signs in;
- the role is read again from the groups claim at every sign-in: `OIDC_SUPERUSER_GROUPS`
  make a superuser, `OIDC_STAFF_GROUPS` a read-only staff member (the READ_ONLY_GROUP's view
  permissions: launch records, trusted servers, providers, health), anyone else is refused
  with a page saying so, and an account of theirs from an earlier sign-in loses its rights;
- sign-out ends the Django session and, when the discovery document names an
  `end_session_endpoint`, the provider's (RP-initiated logout).

No token is kept: neither the ID token nor the access token is stored in the session or
anywhere else, and none is logged. Accounts made here have no usable password: they sign
in through the provider only.

The library is synchronous (requests): its views run in a thread of their own under ASGI.
A sign-in is rare; the thread waits at most OIDC_HTTP_TIMEOUT per call to the provider.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import requests
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth.models import AbstractBaseUser, Group, Permission
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_variables
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import (
    OIDCAuthenticationCallbackView,
    OIDCAuthenticationRequestView,
    OIDCLogoutView,
)

from launcher.kheops import is_confidential

logger = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
BACKEND_PATH = "launcher.oidc.AdminOidcBackend"
# mozilla-django-oidc's settings for the provider's endpoints, and where discovery says them.
DISCOVERED_SETTINGS = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
# The Django group of read-only staff, and what it may see (view permissions only).
READ_ONLY_GROUP = "Read-only staff (OpenID Connect)"
READ_ONLY_PERMISSIONS = (
    ("launcher", "view_launchrecord"),
    ("launcher", "view_launchwrite"),
    ("launcher", "view_kheopsserver"),
    ("launcher", "view_provider"),
)
# Clock difference tolerated between the provider and us when checking exp and iat.
CLOCK_SKEW_SECONDS = 30
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub"]


class ProviderUnavailable(Exception):
    """The provider's discovery document could not be had, or is not acceptable."""


class AccessRefused(Exception):
    """A genuine sign-in by somebody who is in none of the groups that give access."""

    def __init__(self, who: str) -> None:
        super().__init__(who)
        self.who = who


# --- discovery -----------------------------------------------------------------------------


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


def _cache_key(issuer: str) -> str:
    return "oidc-discovery:" + hashlib.sha256(issuer.encode()).hexdigest()


def provider_metadata() -> dict[str, Any]:
    """The provider's discovery document, checked; reused OIDC_DISCOVERY_CACHE_SECONDS."""
    issuer = settings.OIDC_ISSUER
    if not settings.OIDC_ENABLED:
        raise ProviderUnavailable("OIDC_ISSUER is not set.")
    cached = cache.get(_cache_key(issuer))
    if isinstance(cached, dict):
        return cached
    url = discovery_url(issuer)
    if not is_confidential(url):
        raise ProviderUnavailable(
            f"The provider's address must be https (plain http only on this machine): {issuer}"
        )
    try:
        response = httpx.get(url, timeout=settings.OIDC_TIMEOUT, follow_redirects=False)
    except httpx.TimeoutException:
        raise ProviderUnavailable(f"{url} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"{url} could not be reached ({type(exc).__name__}).") from None
    if response.status_code != 200:
        raise ProviderUnavailable(f"{url} answered HTTP {response.status_code}.")
    try:
        document = response.json()
    except ValueError:
        raise ProviderUnavailable(f"{url} did not answer JSON.") from None
    metadata = checked_metadata(document, issuer)
    cache.set(_cache_key(issuer), metadata, settings.OIDC_DISCOVERY_CACHE_SECONDS)
    return metadata


def checked_metadata(document: Any, issuer: str) -> dict[str, Any]:
    """The discovery document's endpoints, after the checks OpenID Connect Discovery asks
    for: `issuer` exactly ours, every endpoint an absolute https (or loopback) URL."""
    if not isinstance(document, dict):
        raise ProviderUnavailable("The discovery document is not a JSON object.")
    if document.get("issuer") != issuer:
        raise ProviderUnavailable(
            f"The discovery document names issuer {document.get('issuer')!r}, not {issuer!r} "
            "(OIDC_ISSUER must be exactly the provider's issuer)."
        )
    metadata: dict[str, Any] = {"issuer": issuer}
    for name in (*REQUIRED_ENDPOINTS, "userinfo_endpoint", "end_session_endpoint"):
        value = document.get(name)
        if value is None and name not in REQUIRED_ENDPOINTS:
            continue
        if not isinstance(value, str) or not is_confidential(value):
            raise ProviderUnavailable(
                f"The discovery document's {name} is missing or not an https URL: {value!r}."
            )
        metadata[name] = value
    return metadata


def oidc_setting(attr: str, *default: Any) -> Any:
    """mozilla-django-oidc's settings, the provider's endpoints from its discovery document."""
    if attr in DISCOVERED_SETTINGS:
        return provider_metadata().get(DISCOVERED_SETTINGS[attr])
    return import_from_settings(attr, *default)


# --- roles ---------------------------------------------------------------------------------


def _group_names(values: Any) -> set[str]:
    """Group names as Keycloak writes them with or without the full path ("/admins")."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        return set()
    return {value.strip().lstrip("/") for value in values if isinstance(value, str)}


def role_of(claims: dict[str, Any]) -> str | None:
    """ "superuser", "staff" or None (no access), from the ID token's groups claim."""
    groups = _group_names(claims.get(settings.OIDC_GROUPS_CLAIM))
    if groups & _group_names(settings.OIDC_SUPERUSER_GROUPS):
        return "superuser"
    if groups & _group_names(settings.OIDC_STAFF_GROUPS):
        return "staff"
    return None


def read_only_group() -> Group:
    """The read-only staff's group, with exactly its view permissions (made if missing)."""
    group, _ = Group.objects.get_or_create(name=READ_ONLY_GROUP)
    wanted = set()
    for app_label, codename in READ_ONLY_PERMISSIONS:
        wanted |= set(
            Permission.objects.filter(content_type__app_label=app_label, codename=codename)
        )
    if set(group.permissions.all()) != wanted:
        group.permissions.set(wanted)
    return group


def username_for(claims: dict[str, Any]) -> str:
    """The local account of a provider's subject: never one of the local password accounts."""
    subject = str(claims.get("sub", ""))
    name = f"oidc-{subject}"
    if len(name) > 150 or not subject:
        name = "oidc-" + hashlib.sha256(subject.encode()).hexdigest()
    return name


def describe(claims: dict[str, Any]) -> str:
    """Who signed in, as people read it (never a token)."""
    name = claims.get("name") or claims.get("preferred_username") or claims.get("sub", "")
    email = claims.get("email")
    return f"{name} ({email})" if email and email != name else str(name)


# --- the backend ---------------------------------------------------------------------------


class AdminOidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend: endpoints from discovery, the ID token fully
    verified, the user and role from its claims."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django makes a backend for every request of a signed-in admin (get_user) and every
        # password sign-in: nothing here may call the provider. The endpoints are read when
        # the provider's callback is authenticated.
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        from django.contrib.auth import get_user_model

        self.UserModel = get_user_model()

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        # Only our callback view authenticates with a nonce; a password sign-in never
        # reaches the provider, whatever its query string.
        if request is None or "nonce" not in kwargs or not kwargs["nonce"]:
            return None
        metadata = provider_metadata()
        self.OIDC_OP_TOKEN_ENDPOINT = metadata["token_endpoint"]
        self.OIDC_OP_JWKS_ENDPOINT = metadata["jwks_uri"]
        self.OIDC_OP_USER_ENDPOINT = metadata.get("userinfo_endpoint")
        return super().authenticate(request, **kwargs)

    @sensitive_variables()
    def get_token(self, payload: dict[str, Any]) -> dict[str, Any]:
        return super().get_token(payload)

    def retrieve_matching_jwk(self, token: Any) -> Any:
        try:
            return super().retrieve_matching_jwk(token)
        except (KeyError, TypeError, ValueError, jwt.PyJWTError) as exc:
            raise SuspiciousOperation(f"No usable key for the ID token: {exc!r}") from None

    @sensitive_variables("token")
    def get_payload_data(self, token: Any, key: Any) -> dict[str, Any]:
        """The ID token's claims once its signature, issuer, audience and lifetime hold."""
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.OIDC_RP_SIGN_ALGO],
                audience=self.OIDC_RP_CLIENT_ID,
                issuer=settings.OIDC_ISSUER,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise SuspiciousOperation(f"ID token refused: {exc}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.OIDC_RP_CLIENT_ID:
            raise SuspiciousOperation("ID token refused: several audiences and azp is not ours.")
        return claims

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        # The verified ID token carries who it is and the groups (a mapper in the provider).
        return payload

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        if role_of(claims) is not None:
            return True
        # Refused: an account from an earlier sign-in keeps no right (and no session can be
        # made for it: it has no password).
        for user in self.filter_users_by_claims(claims):
            self._apply_role(user, claims, None)
        raise AccessRefused(describe(claims))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return self.UserModel.objects.filter(username=username_for(claims))

    def create_user(self, claims: dict[str, Any]) -> AbstractBaseUser:
        user = self.UserModel.objects.create_user(username_for(claims))  # unusable password
        return self.update_user(user, claims)

    def update_user(self, user: Any, claims: dict[str, Any]) -> AbstractBaseUser:
        self._apply_role(user, claims, role_of(claims))
        return user

    @staticmethod
    @transaction.atomic
    def _apply_role(user: Any, claims: dict[str, Any], role: str | None) -> None:
        user.email = str(claims.get("email") or "")[:254]
        user.first_name = str(claims.get("given_name") or claims.get("name") or "")[:150]
        user.last_name = str(claims.get("family_name") or "")[:150]
        user.is_staff = role is not None
        user.is_superuser = role == "superuser"
        user.save()
        group = read_only_group()
        if role == "staff":
            user.groups.add(group)
        else:
            user.groups.remove(group)


# --- the views -----------------------------------------------------------------------------


# What the sign-in problem page says, by kind, and its status.
PROBLEM_KEY = "oidc_sign_in_problem"


def _problem_text(kind: str, who: str) -> tuple[str, str, str, int]:
    provider = settings.OIDC_PROVIDER_NAME
    if kind == "refused":
        return (
            _("No access to this administration"),
            _(
                "%(provider)s signed you in as %(who)s, but your account is in none of the "
                "groups allowed here."
            )
            % {"provider": provider, "who": who},
            _(
                "If you should have access, ask the IT service to add you to the right group, "
                "then sign in again."
            ),
            403,
        )
    if kind == "unavailable":
        return (
            _("Sign-in unavailable"),
            _("%(provider)s cannot be reached just now.") % {"provider": provider},
            _("Try again in a few minutes; if it goes on, tell the IT service."),
            502,
        )
    return (
        _("Sign-in not completed"),
        _("The sign-in with %(provider)s could not be completed or was cancelled.")
        % {"provider": provider},
        _("Start again from the sign-in page."),
        400,
    )


def problem_redirect(request: HttpRequest, kind: str, who: str = "") -> HttpResponse:
    """To the page that says what went wrong: the callback's URL, which carries the code,
    is then neither the page's address nor in anything it renders or logs."""
    request.session[PROBLEM_KEY] = {"kind": kind, "who": who[:300]}
    return HttpResponseRedirect(reverse("oidc_sign_in_problem"))


def sign_in_problem(request: HttpRequest) -> HttpResponse:
    problem = request.session.pop(PROBLEM_KEY, None)
    # Shown once; saved here: Django does not save a session with a 5xx answer.
    request.session.save()
    if not isinstance(problem, dict):
        return HttpResponseRedirect(reverse("admin:login"))
    title, what, advice, status = _problem_text(
        str(problem.get("kind")), str(problem.get("who", ""))
    )
    response = render(
        request,
        "admin/oidc_sign_in_failed.html",
        {
            **admin.site.each_context(request),
            "title": title,
            "what": what,
            "advice": advice,
            "status": status,
        },
        status=status,
    )
    response["Cache-Control"] = "no-store"
    return response


class AdminOidcSignIn(OIDCAuthenticationRequestView):
    """GET: off to the provider (state, nonce and PKCE verifier kept in the session)."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the endpoint is read in get(): it may be unavailable
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("No such page.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider_metadata()["authorization_endpoint"]
        except ProviderUnavailable as exc:
            logger.warning("Admin sign-in through OpenID Connect unavailable: %s", exc)
            return problem_redirect(request, "unavailable")
        return super().get(request)


class AdminOidcCallback(OIDCAuthenticationCallbackView):
    """The provider sends the browser back here with the code and the state."""

    get_settings = staticmethod(oidc_setting)

    @sensitive_variables()
    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("No such page.")
        try:
            return super().get(request)
        except AccessRefused as refused:
            logger.info("Admin sign-in refused: %s is in none of the admin groups", refused.who)
            return problem_redirect(request, "refused", refused.who)
        except ProviderUnavailable as exc:
            logger.warning("Admin sign-in through OpenID Connect unavailable: %s", exc)
            return problem_redirect(request, "unavailable")
        except (SuspiciousOperation, requests.RequestException) as exc:
            # Names the check that failed (state, nonce, signature, iss, aud, exp…): never
            # a token, which no message here quotes.
            logger.warning("Admin sign-in through OpenID Connect failed: %s", exc)
            return self.login_failure()

    def login_failure(self) -> HttpResponse:
        return problem_redirect(self.request, "failed")


class AdminSignOut(OIDCLogoutView):
    """The admin's "Log out" (POST): the local session always; a session made through the
    provider also at the provider, when it offers RP-initiated logout."""

    http_method_names = ["post"]
    get_settings = staticmethod(oidc_setting)

    @property
    def redirect_url(self) -> str:
        return reverse("admin:login")

    def post(self, request: HttpRequest) -> HttpResponse:
        if request.session.get(BACKEND_SESSION_KEY) != BACKEND_PATH:
            return admin.site.logout(request)
        return super().post(request)


def provider_logout_url(request: HttpRequest) -> str:
    """Where the browser goes to end its session at the provider, then comes back to the
    sign-in page (the post-logout redirect URI to register there); the sign-in page at once
    when the provider offers no end_session_endpoint."""
    back = request.build_absolute_uri(reverse("admin:login"))
    try:
        endpoint = provider_metadata().get("end_session_endpoint")
    except ProviderUnavailable as exc:
        logger.warning("Signed out here only: %s", exc)
        return reverse("admin:login")
    if not endpoint:
        return reverse("admin:login")
    query = urlencode({"client_id": settings.OIDC_RP_CLIENT_ID, "post_logout_redirect_uri": back})
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
