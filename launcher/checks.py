"""System checks for configuration mistakes that would only show up when KHEOPS calls us."""

from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.http.request import validate_host
from django.utils.module_loading import import_string

from launcher import keys, ohif_bundle


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


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
    if not settings.PUBLIC_IS_HTTPS and not _is_loopback(host):
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
