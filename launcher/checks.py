"""System checks for configuration mistakes that would only show up when KHEOPS calls us."""

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError
from django.http.request import validate_host
from django.utils.module_loading import import_string

from launcher import keys, kheops, ohif_bundle
from launcher.models import KheopsServer


@register(Tags.security)
def check_public_base_url(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    errors = []
    host = settings.PUBLIC_HOST
    if not validate_host(host, settings.ALLOWED_HOSTS):
        errors.append(
            Error(
                f"The host of PUBLIC_BASE_URL ({host}) is not in ALLOWED_HOSTS.",
                hint="KHEOPS fetches our configuration and JWKS at that host: add it to "
                "ALLOWED_HOSTS (or leave ALLOWED_HOSTS unset to derive it).",
                id="launcher.E001",
            )
        )
    if not settings.PUBLIC_IS_HTTPS and not kheops.is_loopback_host(host):
        errors.append(
            Warning(
                "PUBLIC_BASE_URL is plain http on a non-loopback host.",
                hint="Authorization codes and the viewer session travel over this URL: "
                "serve it over https (TLS at the proxy, TRUST_X_FORWARDED_PROTO=true).",
                id="launcher.W002",
            )
        )
    return errors


@register()
def check_ohif_bundle(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
    if bundle is None:
        return [
            Warning(
                f"The OHIF bundle is not installed in {settings.OHIF_ROOT}.",
                hint="Run: python manage.py install_ohif",
                id="launcher.W003",
            )
        ]
    if bundle.asset_prefix != settings.OHIF_ASSET_URL:
        return [
            Error(
                f"The installed OHIF bundle serves its assets from {bundle.asset_prefix}, "
                f"but this configuration serves them at {settings.OHIF_ASSET_URL}.",
                hint="The prefix is baked into the bundle at install time (PUBLIC_BASE_URL's "
                "path changed?): run python manage.py install_ohif again.",
                id="launcher.E004",
            )
        ]
    return []


@register()
def check_signing_key_grace(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    if settings.SIGNING_KEY_GRACE_SECONDS >= keys.MINIMUM_GRACE_SECONDS:
        return []
    return [
        Error(
            f"SIGNING_KEY_GRACE_SECONDS is {settings.SIGNING_KEY_GRACE_SECONDS}, below "
            f"{keys.MINIMUM_GRACE_SECONDS}.",
            hint="After a rotation the new key signs only once it has been published "
            f"{keys.PUBLISH_BEFORE_SIGNING_SECONDS} s; the previous key must stay published "
            "until then and a little longer.",
            id="launcher.E005",
        )
    ]


@register(Tags.security)
def check_admin_hosts(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    problems: list = [
        Error(
            f"ADMIN_HOSTS names {host}, which is not in ALLOWED_HOSTS.",
            hint="Django refuses requests for hosts outside ALLOWED_HOSTS: add it there too "
            "(or leave ALLOWED_HOSTS unset: it then holds PUBLIC_BASE_URL's host and "
            "ADMIN_HOSTS).",
            id="launcher.E010",
        )
        for host in settings.ADMIN_HOSTS
        if not validate_host(host.lstrip("."), settings.ALLOWED_HOSTS)
    ]
    if settings.ADMIN_HOSTS and validate_host(settings.PUBLIC_HOST, settings.ADMIN_HOSTS):
        problems.append(
            Warning(
                f"ADMIN_HOSTS includes the viewer's host ({settings.PUBLIC_HOST}): the admin "
                "still shares the origin that runs OHIF.",
                hint="Give the admin a host name of its own, e.g. admin.viewer.example.org.",
                id="launcher.W011",
            )
        )
    for name in ("SESSION_COOKIE_DOMAIN", "CSRF_COOKIE_DOMAIN"):
        if settings.ADMIN_HOSTS and getattr(settings, name):
            problems.append(
                Warning(
                    f"{name} is set: the admin's cookie also reaches the viewer's host.",
                    hint=f"Leave {name} unset (host-only cookies) with ADMIN_HOSTS.",
                    id="launcher.W012",
                )
            )
    return problems


# What Django's security.W001-W003 look for by name (settings silence those): the middleware
# classes, or subclasses of them such as launcher.middleware's.
_PROTECTIVE_MIDDLEWARE = {
    "django.middleware.security.SecurityMiddleware": "HSTS, nosniff, the referrer policy and the https redirect",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": "X-Frame-Options",
    "django.middleware.csrf.CsrfViewMiddleware": "CSRF protection of every form",
}


@register(Tags.security, deploy=True)
def check_protective_middleware(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    installed = [import_string(path) for path in settings.MIDDLEWARE]
    return [
        Warning(
            f"No {path} (or subclass) in MIDDLEWARE: no {what}.",
            hint="Keep launcher.middleware's classes in MIDDLEWARE, as settings.py has them.",
            id="launcher.W006",
        )
        for path, what in _PROTECTIVE_MIDDLEWARE.items()
        if not any(
            isinstance(cls, type) and issubclass(cls, import_string(path)) for cls in installed
        )
    ]


# The example values of .env.example: a copied file must not reach production as it is.
PLACEHOLDER_SECRETS = frozenset({"change-me-to-50-random-characters"})
MINIMUM_SECRET_LENGTH = 50


@register(Tags.security, deploy=True)
def check_secrets_are_not_placeholders(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list:
    if settings.DEBUG:
        return []
    errors = []
    for name in ("SECRET_KEY", "SEALING_KEY"):
        value = getattr(settings, name)
        if name == "SEALING_KEY" and not value:
            continue  # unset: the sealing key is derived from SECRET_KEY
        if value in PLACEHOLDER_SECRETS:
            problem = "is the example value from .env.example"
        elif len(value) < MINIMUM_SECRET_LENGTH:
            problem = f"is shorter than {MINIMUM_SECRET_LENGTH} characters"
        else:
            continue
        errors.append(
            Error(
                f"{name} {problem}.",
                hint=f"{_GUARDS[name]} Generate one: python -c 'import secrets; "
                "print(secrets.token_urlsafe(50))'; to replace one in use, see README "
                "(Security: changing a key).",
                id="launcher.E013",
            )
        )
    return errors


_GUARDS = {
    "SECRET_KEY": "It signs the admin's sessions and, without SEALING_KEY, seals the stored "
    "signing keys, launch codes and tokens.",
    "SEALING_KEY": "It seals the stored signing keys, launch codes and tokens.",
}


@register(Tags.security, Tags.database)
def check_kheops_servers_use_https(
    app_configs: Sequence[AppConfig] | None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list:
    """Servers trusted by a plain-http address to another machine (saved before it was refused,
    or while ALLOW_INSECURE_HTTP_KHEOPS was on). Run with `check --database default`; `migrate`
    runs it too."""
    warnings = []
    if settings.ALLOW_INSECURE_HTTP_KHEOPS:
        warnings.append(
            Warning(
                "ALLOW_INSECURE_HTTP_KHEOPS is on: KHEOPS servers on other machines may be "
                "called over plain http, launch codes and tokens crossing the network in clear.",
                hint="For a test lab only. Never in production: unset it and trust KHEOPS by "
                "its https address.",
                id="launcher.W015",
            )
        )
    if not databases:
        return warnings
    try:
        servers = [s for s in KheopsServer.objects.order_by("name") if s.plain_http]
    except DatabaseError:
        return warnings  # not migrated yet: nothing trusted yet
    if servers:
        listed = ", ".join(f"{server.name} ({server.root_url})" for server in servers)
        refused = "" if settings.ALLOW_INSECURE_HTTP_KHEOPS else ": their launches are refused"
        warnings.append(
            Warning(
                f"Trusted KHEOPS servers over plain http to another machine{refused}: {listed}.",
                hint="Change each one's root URL to its https address (Django admin, Trusted "
                "KHEOPS servers, or manage.py trust_kheops https://…).",
                id="launcher.W014",
            )
        )
    return warnings


# A bearer token anybody on the viewer's origin may try against /metrics: long and random.
MINIMUM_METRICS_TOKEN_LENGTH = 32


@register(Tags.security)
def check_metrics_token(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    token = settings.METRICS_TOKEN
    if not token or len(token) >= MINIMUM_METRICS_TOKEN_LENGTH:
        return []
    return [
        Error(
            f"METRICS_TOKEN is shorter than {MINIMUM_METRICS_TOKEN_LENGTH} characters.",
            hint="It opens /metrics on every host. Generate one: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'.",
            id="launcher.E016",
        )
    ]


# The key nginx proves itself with before this server hands it a KHEOPS token to carry a read.
MINIMUM_RELAY_OFFLOAD_KEY_LENGTH = 32


@register(Tags.security)
def check_relay_offload_key(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    key = settings.DICOMWEB_RELAY_OFFLOAD_KEY
    if not key or len(key) >= MINIMUM_RELAY_OFFLOAD_KEY_LENGTH:
        return []
    return [
        Error(
            f"DICOMWEB_RELAY_OFFLOAD_KEY is shorter than {MINIMUM_RELAY_OFFLOAD_KEY_LENGTH} "
            "characters.",
            hint="Whoever sends it may ask this server for KHEOPS tokens (it tells the server "
            "that nginx carries relayed reads). Use the one deploy/nginx is given; generate "
            "one: python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
            id="launcher.E017",
        )
    ]


# How long nginx may carry reads without asking this server (X-Relay-Keep).
MAXIMUM_RELAY_OFFLOAD_KEEP_SECONDS = 60


@register(Tags.security)
def check_relay_offload_keep(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    seconds = settings.DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS
    if 0 <= seconds <= MAXIMUM_RELAY_OFFLOAD_KEEP_SECONDS:
        return []
    return [
        Error(
            f"DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS is {seconds}: it must be between 0 and "
            f"{MAXIMUM_RELAY_OFFLOAD_KEEP_SECONDS}.",
            hint="It is how long nginx carries a browser's reads without asking this server "
            "again (a grant that ends is seen that much later by nginx). 0: every read is "
            "asked; the default, 5, is as long as each server process keeps a ready grant.",
            id="launcher.E018",
        )
    ]


@register(Tags.security)
def check_oidc(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list:
    """Admin sign-in through OpenID Connect (launcher.oidc): what would only fail at sign-in."""
    problems: list = []
    if not settings.OIDC_ENABLED:
        if not settings.ADMIN_PASSWORD_LOGIN:
            problems.append(
                Error(
                    "ADMIN_PASSWORD_LOGIN is off and OIDC_ISSUER is unset: nobody can sign in "
                    "to the admin.",
                    hint="Set OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET (README, Admin "
                    "sign-in), or leave ADMIN_PASSWORD_LOGIN on.",
                    id="launcher.E042",
                )
            )
        return problems
    missing = [
        name
        for name, value in (
            ("OIDC_CLIENT_ID", settings.OIDC_RP_CLIENT_ID),
            ("OIDC_CLIENT_SECRET", settings.OIDC_RP_CLIENT_SECRET),
        )
        if not value
    ]
    if missing:
        problems.append(
            Error(
                f"OIDC_ISSUER is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not.",
                hint="Copy them from the client created for this app in the provider "
                "(OIDC_CLIENT_SECRET_FILE for a file holding the secret).",
                id="launcher.E040",
            )
        )
    from launcher import oidc

    if not kheops.is_confidential(oidc.discovery_url(settings.OIDC_ISSUER)):
        problems.append(
            Error(
                f"OIDC_ISSUER is not an https URL: {settings.OIDC_ISSUER}.",
                hint="The client secret and the codes travel to the provider: use its https "
                "address (plain http only on this machine).",
                id="launcher.E041",
            )
        )
    if not settings.OIDC_STAFF_GROUPS and not settings.OIDC_SUPERUSER_GROUPS:
        problems.append(
            Warning(
                "Neither OIDC_SUPERUSER_GROUPS nor OIDC_STAFF_GROUPS is set: every sign-in "
                "through the provider is refused.",
                hint="Name the provider's groups whose members administer this app "
                "(superusers) or read its launch records (staff).",
                id="launcher.W043",
            )
        )
    if settings.OIDC_TIMEOUT <= 0:
        problems.append(
            Error(
                "OIDC_HTTP_TIMEOUT must be more than 0 seconds.",
                hint="A sign-in would wait for the provider for ever; 5 is the default.",
                id="launcher.E044",
            )
        )
    return problems
