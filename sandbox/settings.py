"""Settings of the KHEOPS stand-in. One flat file, driven by SANDBOX_* environment variables.

Run with `DJANGO_SETTINGS_MODULE=sandbox.settings python -m django runserver 127.0.0.1:8100`.

SANDBOX_ROOT_URL       public root of the stand-in, like KHEOPS_ROOT_URL (default http://127.0.0.1:8100)
SANDBOX_DATABASE_URL   dj-database-url string (default sqlite file var/sandbox.sqlite3 in the repo)
SANDBOX_SECRET         HMAC secret signing codes and tokens (default: generated once, kept in
                       var/sandbox-secret)
SANDBOX_ORTHANC_URL    the Orthanc behind the DICOMweb relay (default http://127.0.0.1:8142)
SANDBOX_DEBUG          "1" to turn Django's DEBUG on (default off)
SANDBOX_ALLOWED_HOSTS  comma-separated extra host names to serve
SANDBOX_PROVIDER_TIMEOUT_SECONDS  timeout of each fetch of a provider document or JWKS (default 5)
SANDBOX_OIDC_KEY_FILE  the OpenID Connect provider's RSA signing key, PEM (default: generated once,
                       kept in var/sandbox-oidc-key.pem)
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

REPO_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = REPO_ROOT / "var"


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def envfloat(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from exc


def _stored_secret() -> str:
    """The HMAC secret from SANDBOX_SECRET, else one generated once and kept in var/.

    Keeping it in a file (mode 0600) lets runserver, gunicorn workers and management commands
    agree on it, as the KHEOPS services share `kheops_auth_hmasecret`.
    """
    from_env = os.environ.get("SANDBOX_SECRET", "")
    if from_env:
        return from_env
    path = VAR_DIR / "sandbox-secret"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; read its secret below
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _oidc_signing_key() -> str:
    """The OpenID Connect provider's RSA key (PEM): the file SANDBOX_OIDC_KEY_FILE names, made
    once (mode 0600) when missing, so that every process signs ID tokens with the same key."""
    path = Path(os.environ.get("SANDBOX_OIDC_KEY_FILE") or VAR_DIR / "sandbox-oidc-key.pem")
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs below
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(pem)
    return path.read_text()


SANDBOX_ROOT_URL = os.environ.get("SANDBOX_ROOT_URL", "http://127.0.0.1:8100").rstrip("/")
_root = urlsplit(SANDBOX_ROOT_URL)
if _root.scheme not in {"http", "https"} or not _root.hostname or _root.path not in {"", "/"}:
    raise ImproperlyConfigured(
        "SANDBOX_ROOT_URL must be an http(s) origin without a path, e.g. http://127.0.0.1:8100"
    )
SANDBOX_SECRET = _stored_secret()
SANDBOX_ORTHANC_URL = os.environ.get("SANDBOX_ORTHANC_URL", "http://127.0.0.1:8142").rstrip("/")
SANDBOX_PROVIDER_TIMEOUT_SECONDS = envfloat("SANDBOX_PROVIDER_TIMEOUT_SECONDS", 5.0)
# A PEM file of the CA certificates that providers' https is checked against (a provider
# behind a self-signed certificate: make test-deploy); empty, the usual ones.
SANDBOX_CA_BUNDLE = os.environ.get("SANDBOX_CA_BUNDLE", "")

# Django's own signing key is derived so that it never equals the protocol's HMAC secret.
SECRET_KEY = hashlib.sha256(b"django-secret-key|" + SANDBOX_SECRET.encode()).hexdigest()
DEBUG = envbool("SANDBOX_DEBUG", False)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1", _root.hostname] + [
    host.strip() for host in os.environ.get("SANDBOX_ALLOWED_HOSTS", "").split(",") if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    # The OpenID Connect provider role (Keycloak's, beside KHEOPS): django-oauth-toolkit,
    # its users and groups in Django's auth, a session at the provider (sandbox/oidc.py).
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    "sandbox",
]

# No CSRF middleware: every KHEOPS call is authenticated by a bearer token or a client
# assertion, exactly like the KHEOPS API, and the album page holds no session. The session
# is the OpenID Connect provider's (its sign-in form is CSRF-protected by its own view).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "sandbox.middleware.KheopsCorsMiddleware",
    "sandbox.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "sandbox.urls"
WSGI_APPLICATION = "sandbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

_default_db = f"sqlite:///{VAR_DIR / 'sandbox.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(os.environ.get("SANDBOX_DATABASE_URL", _default_db))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads (runserver) or workers (gunicorn) share one file: wait for the lock.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False

STATIC_URL = "/static/"
# Serve app static files straight from the finders: no collectstatic step for a test server.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# STOW-RS bodies through the DICOMweb relay can be large.
DATA_UPLOAD_MAX_MEMORY_SIZE = 512 * 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "sandbox": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}

# --- The OpenID Connect provider (sandbox/oidc.py), issuer ROOT/oidc -------------------------
SESSION_COOKIE_NAME = "sandbox_idp_session"
LOGIN_URL = "/idp/login/"
OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_ISS_ENDPOINT": f"{SANDBOX_ROOT_URL}/oidc",
    "OIDC_RSA_PRIVATE_KEY": _oidc_signing_key(),
    "PKCE_REQUIRED": True,
    "OAUTH2_VALIDATOR_CLASS": "sandbox.oidc.GroupsClaimValidator",
    "SCOPES": {
        "openid": "OpenID Connect",
        "profile": "Name",
        "email": "E-mail address",
    },
    # RP-initiated logout, as Keycloak: without an id_token_hint the provider asks first.
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
    "ID_TOKEN_EXPIRE_SECONDS": 300,
}
