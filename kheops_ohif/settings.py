"""kheops-ohif settings: one flat file driven by environment variables.

Every variable read here is documented in `.env.example`. Defaults are the safe ones for
production (DEBUG off, HTTPS-only cookies when the public URL is https); `make run` sets
what the local demo needs.
"""

import json
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {value!r}.")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}.") from None


def envlist(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


RATE_PERIODS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(name: str, value: str) -> tuple[int, int] | None:
    """A rate limit as (requests, seconds) from "120/m" (per s, m or h); None: off ("0", "off")."""
    text = value.strip().lower()
    if text in ("0", "off", "none", "false"):
        return None
    count, _, period = text.partition("/")
    if count.isdigit() and period in RATE_PERIODS:
        return (int(count), RATE_PERIODS[period]) if int(count) > 0 else None
    raise ImproperlyConfigured(
        f"{name} must be a number of requests per second, minute or hour such as 120/m, "
        f"or off (or 0), not {value!r}."
    )


def envrate(name: str, default: str) -> tuple[int, int] | None:
    return parse_rate(name, os.environ.get(name) or default)


def parse_public_base_url(value: str) -> tuple[str, str]:
    """Return (normalised base URL, script name) or raise ImproperlyConfigured.

    KHEOPS compares the scheme and authority of our redirect_uri and jwks_uri with the
    configuration URL *as strings*, so the base URL is used verbatim: no default port is
    added or removed, only a trailing slash is dropped.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(
            f"PUBLIC_BASE_URL must be an absolute http(s) URL such as "
            f"https://viewer.example.org or https://example.org/ohif, not {value!r}."
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ImproperlyConfigured(
            "PUBLIC_BASE_URL must not contain a query string, a fragment or user info."
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ImproperlyConfigured(f"PUBLIC_BASE_URL has an invalid port: {value!r}.") from None
    script_name = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{script_name}", script_name


DEBUG = envbool("DEBUG", False)

PUBLIC_BASE_URL, SCRIPT_NAME = parse_public_base_url(
    os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
)
PUBLIC_IS_HTTPS = PUBLIC_BASE_URL.startswith("https://")
PUBLIC_HOST = urlsplit(PUBLIC_BASE_URL).hostname or ""

# Behind a reverse proxy that serves the app under a sub-path, the proxy strips the
# prefix and Django adds it back to every URL it builds.
FORCE_SCRIPT_NAME = SCRIPT_NAME or None


def envsecret(name: str) -> str:
    """The secret in the variable `name`, or in the file `name`_FILE names ("" if neither)."""
    value = os.environ.get(name, "")
    path = os.environ.get(f"{name}_FILE", "")
    if not value and path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE {path!r} cannot be read: {exc}") from None
    return value


def _secret_key() -> str:
    key = envsecret("SECRET_KEY")
    if not key and DEBUG:
        # Development convenience only: a key generated once and kept in git-ignored var/.
        dev_key_file = BASE_DIR / "var" / "dev-secret-key"
        if dev_key_file.exists():
            key = dev_key_file.read_text().strip()
        else:
            from django.core.management.utils import get_random_secret_key

            key = get_random_secret_key()
            dev_key_file.parent.mkdir(parents=True, exist_ok=True)
            dev_key_file.write_text(key)
            dev_key_file.chmod(0o600)
    if not key:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off. "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    return key


SECRET_KEY = _secret_key()
SECRET_KEY_FALLBACKS = envlist("SECRET_KEY_FALLBACKS", [])
# The key-encryption key of what we keep sealed at rest (launcher.sealing): the signing keys,
# the launch codes and KHEOPS tokens of viewer grants. Unset: derived from SECRET_KEY. Its
# fallbacks stay readable during a change, until `manage.py reseal` has re-sealed everything.
SEALING_KEY = envsecret("SEALING_KEY")
SEALING_KEY_FALLBACKS = envlist("SEALING_KEY_FALLBACKS", [])

# Host names on which the admin (/admin/) and the audit API (/api/v1/, /oauth/) answer; any
# other host answers them 404, and these hosts answer nothing else (launcher.middleware.
# AdminHostsMiddleware). Empty: every allowed host answers everything. Recommended: a host
# name of its own (admin.viewer.example.org), so that the admin's session cookie never
# reaches the origin that runs OHIF.
ADMIN_HOSTS = [host.lower() for host in envlist("ADMIN_HOSTS", [])]
# GET /metrics (Prometheus, launcher.metrics) answers on ADMIN_HOSTS, and anywhere to
# `Authorization: Bearer <METRICS_TOKEN>` (or the token in METRICS_TOKEN_FILE). Neither: 404.
METRICS_TOKEN = envsecret("METRICS_TOKEN")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", [PUBLIC_HOST, *ADMIN_HOSTS])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    # django-oauth-toolkit, shown in the admin as "Audit API clients".
    "launcher.api.apps.AuditApiClientsConfig",
    "drf_spectacular",
    # Admin login throttle (django-axes): see AXES_* below.
    "axes",
    "launcher",
]

# Django's own middleware, subclassed to run on the event loop under ASGI (launcher.middleware).
MIDDLEWARE = [
    "launcher.middleware.SecurityMiddleware",
    "launcher.middleware.AdminHostsMiddleware",
    "launcher.middleware.ContentSecurityPolicyMiddleware",
    "launcher.middleware.OhifWhiteNoiseMiddleware",
    "launcher.middleware.SessionMiddleware",
    # The language of every page from the browser's Accept-Language (English otherwise):
    # after the session, before CommonMiddleware, as Django asks (launcher.middleware).
    "launcher.middleware.LocaleMiddleware",
    "launcher.middleware.CommonMiddleware",
    "launcher.middleware.CsrfViewMiddleware",
    "launcher.middleware.AuthenticationMiddleware",
    "launcher.middleware.MessageMiddleware",
    "launcher.middleware.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out admin login into its page (async-capable).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "kheops_ohif.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "kheops_ohif.asgi.application"
WSGI_APPLICATION = "kheops_ohif.wsgi.application"

# SQLite is the embedded default; PostgreSQL via DATABASE_URL=postgres://user@host:5432/db.
# Served under ASGI, Django gives each request a thread of its own for its database work,
# so connections are not kept between requests (CONN_MAX_AGE=0, Django's advice for ASGI):
# PostgreSQL's come from a pool instead, SQLite's are cheap to open.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}",
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0),
    )
}
# The database password apart from the URL, e.g. from a container secret (DATABASE_PASSWORD_FILE):
# it replaces the URL's own.
if _database_password := envsecret("DATABASE_PASSWORD"):
    DATABASES["default"]["PASSWORD"] = _database_password
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and envbool(
    "DATABASE_POOL", True
):
    # Each unit of database work hands its connection back at once (launcher.blocking): with
    # a pool that is cheap, and a burst of launches cannot use up PostgreSQL's connections.
    # Pooling replaces persistent connections.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": envint("DATABASE_POOL_MIN_SIZE", 2),
        "max_size": envint("DATABASE_POOL_MAX_SIZE", 20),
        "timeout": envint("DATABASE_POOL_TIMEOUT", 10),
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads write at once: readers never wait for the writer (WAL), a writer waits
    # its turn instead of failing (timeout), and takes the write lock when its transaction
    # begins, so that two writers cannot deadlock upgrading from read to write (IMMEDIATE).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "kheops-ohif",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Admin logins (django-axes): after ADMIN_LOGIN_FAILURE_LIMIT failures for one user name
# from one client address (launcher.clientaddr), that pair is locked out for
# ADMIN_LOGIN_LOCKOUT_MINUTES; each further failure starts the wait again, a success resets
# the count. Attempts are kept in the database (shared by all server processes) and shown in
# the admin (Axes); logged with the user name and address, never the password.
# Admin sign-in through the hospital's OpenID Connect provider (launcher.oidc, with
# mozilla-django-oidc): on when OIDC_ISSUER is set. The provider's endpoints come from its
# discovery document (OIDC_ISSUER + /.well-known/openid-configuration), https only (plain http
# only on this machine, as for KHEOPS). Group membership (OIDC_GROUPS_CLAIM of the ID token)
# is read again at every sign-in: OIDC_SUPERUSER_GROUPS make a superuser, OIDC_STAFF_GROUPS a
# read-only staff member (launch records and health), anyone else is refused.
OIDC_ISSUER = os.environ.get("OIDC_ISSUER", "").strip()
OIDC_ENABLED = bool(OIDC_ISSUER)
OIDC_PROVIDER_NAME = os.environ.get("OIDC_PROVIDER_NAME", "").strip() or "Keycloak"
OIDC_RP_CLIENT_ID = os.environ.get("OIDC_CLIENT_ID", "").strip()
OIDC_RP_CLIENT_SECRET = envsecret("OIDC_CLIENT_SECRET")
OIDC_RP_SCOPES = os.environ.get("OIDC_SCOPES", "").strip() or "openid email profile"
OIDC_GROUPS_CLAIM = os.environ.get("OIDC_GROUPS_CLAIM", "").strip() or "groups"
OIDC_STAFF_GROUPS = envlist("OIDC_STAFF_GROUPS", [])
OIDC_SUPERUSER_GROUPS = envlist("OIDC_SUPERUSER_GROUPS", [])
# Every call to the provider (discovery, token, JWKS) has this timeout; the library's own
# default is none at all. The discovery document is reused this long.
OIDC_TIMEOUT = float(os.environ.get("OIDC_HTTP_TIMEOUT", "5"))
OIDC_DISCOVERY_CACHE_SECONDS = envint("OIDC_DISCOVERY_CACHE_SECONDS", 300)
# mozilla-django-oidc: authorization code flow with PKCE (S256), state and nonce; RS256 ID
# tokens verified against the provider's JWKS (launcher.oidc adds iss, aud and exp); the
# tokens themselves are never kept (neither in the session nor anywhere else).
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_USE_PKCE = True
OIDC_PKCE_CODE_CHALLENGE_METHOD = "S256"
OIDC_USE_NONCE = True
OIDC_STORE_ACCESS_TOKEN = False
OIDC_STORE_ID_TOKEN = False
OIDC_OP_LOGOUT_URL_METHOD = "launcher.oidc.provider_logout_url"
OIDC_REDIRECT_REQUIRE_HTTPS = PUBLIC_IS_HTTPS
LOGIN_REDIRECT_URL = "admin:index"
# Local password sign-in (the first set-up, createsuperuser); false: only the provider.
ADMIN_PASSWORD_LOGIN = envbool("ADMIN_PASSWORD_LOGIN", True)

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    *(["launcher.oidc.AdminOidcBackend"] if OIDC_ENABLED else []),
    *(["django.contrib.auth.backends.ModelBackend"] if ADMIN_PASSWORD_LOGIN else []),
]
AXES_FAILURE_LIMIT = envint("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=envint("ADMIN_LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "launcher.clientaddr.client_address"
AXES_RESET_ON_SUCCESS = True
# Our page: what happened, for how long, what to do (429 with Retry-After).
AXES_LOCKOUT_CALLABLE = "launcher.admin.locked_out"
# User names and addresses are not secrets: the log says who was locked out, from where. The
# authorization code on the provider's callback URL (launcher.oidc) is: masked in its rows.
AXES_SENSITIVE_PARAMETERS = ["code"]
if AXES_FAILURE_LIMIT < 1 or AXES_COOLOFF_TIME.total_seconds() <= 0:
    raise ImproperlyConfigured(
        "ADMIN_LOGIN_FAILURE_LIMIT and ADMIN_LOGIN_LOCKOUT_MINUTES must be 1 or more."
    )

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Our pages, the admin and the viewer (OHIF too) speak the browser's language among these;
# English otherwise. Catalogues: locale/<language>/LC_MESSAGES/django.po, compiled by
# `make prepare` (README: "Languages").
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français"), ("de", "Deutsch")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Dates as 2026-11-29 15:51 UTC everywhere, in every language (kheops_ohif/formats/).
FORMAT_MODULE_PATH = ["kheops_ohif.formats"]

# Static files. The OHIF bundle is installed by `manage.py install_ohif` into OHIF_ROOT and
# served by WhiteNoise under OHIF_ASSET_URL; its build-time asset prefix is rewritten to
# that URL at install time (see launcher/ohif_bundle.py).
STATIC_URL = f"{SCRIPT_NAME}/static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "var" / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
OHIF_ROOT = Path(os.environ.get("OHIF_ROOT", BASE_DIR / "var" / "ohif"))
OHIF_BUNDLE_SPEC = BASE_DIR / "ohif-bundle.json"
_ohif = json.loads(OHIF_BUNDLE_SPEC.read_text())
# The version is part of the URL: every file under it can be cached forever, including the
# dozen OHIF files whose names carry no content hash (app.bundle.css, chunk stylesheets).
OHIF_ASSET_URL = f"{STATIC_URL}ohif/{_ohif['version']}-{_ohif.get('install_format', 1)}/"
NPM_REGISTRY_URL = os.environ.get("NPM_REGISTRY_URL", "https://registry.npmjs.org").rstrip("/")
WHITENOISE_MAX_AGE = envint("STATIC_MAX_AGE", 300)
# Cached forever: the OHIF bundle (its URLs name its version) and our own files hashed by
# ManifestStaticFilesStorage ("banner.3f2a1b9c0d4e.js"). WhiteNoise matches the URL path
# without the sub-path.
WHITENOISE_IMMUTABLE_FILE_TEST = (
    r"^/static/(ohif/[^/]+/.+|(?!ohif/).*\.[0-9a-f]{12}\.[A-Za-z0-9]+)$"
)
WHITENOISE_MIMETYPES = {".wasm": "application/wasm", ".mjs": "text/javascript"}
# WhiteNoise answers `Access-Control-Allow-Origin: *` by default; nothing of ours needs it.
WHITENOISE_ALLOW_ALL_ORIGINS = False

# Django sessions serve the admin (and the audit API's browsable pages). Viewer grants are
# not in them: each launch binds its LaunchGrant row to the browser with its own cookie
# (launcher.views.launch), SameSite=Lax like this one.
SESSION_COOKIE_NAME = "kheops_ohif_session"
# With Redis, sessions live there; otherwise in the database.
SESSION_ENGINE = (
    "django.contrib.sessions.backends.cache" if REDIS_URL else "django.contrib.sessions.backends.db"
)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", PUBLIC_IS_HTTPS)
SESSION_COOKIE_AGE = envint("SESSION_COOKIE_AGE", 8 * 3600)
SESSION_COOKIE_PATH = f"{SCRIPT_NAME}/"
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", PUBLIC_IS_HTTPS)
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_PATH = f"{SCRIPT_NAME}/"
CSRF_TRUSTED_ORIGINS = envlist(
    "CSRF_TRUSTED_ORIGINS",
    [f"{urlsplit(PUBLIC_BASE_URL).scheme}://{urlsplit(PUBLIC_BASE_URL).netloc}"],
)

# HTTPS. Behind a TLS-terminating proxy set TRUST_X_FORWARDED_PROTO=true: Django then reads
# the scheme from that header (the proxy must set it, replacing any the browser sent). The
# server itself must not (uvicorn --no-proxy-headers): launcher.clientaddr.
if envbool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# How many proxies of ours each request passes through, each appending to X-Forwarded-For:
# the client's address is the one that many entries from the right (launcher.clientaddr).
# 0: the peer's address, X-Forwarded-For ignored.
TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT must be 0 or more, not {TRUSTED_PROXY_COUNT}.")
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", PUBLIC_IS_HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# Django sends HSTS only on responses to HTTPS requests.
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000 if PUBLIC_IS_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
# Browsers send a real Origin with same-origin form POSTs (the admin's CSRF check needs it)
# and no Referer to other origins; the launch and viewer responses set `no-referrer`
# themselves (launcher.headers).
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# includeSubDomains and preload are commitments about *other* hosts of the hospital's
# domain; they stay opt-in, so their deploy-check reminders are silenced by default.
SILENCED_SYSTEM_CHECKS = [
    *envlist("SILENCED_SYSTEM_CHECKS", ["security.W005", "security.W021"]),
    # Django looks for its security, clickjacking and CSRF middleware by their exact names;
    # ours are subclasses (they run on the event loop). launcher.W006 checks for them instead.
    "security.W001",
    "security.W002",
    "security.W003",
]

# Content-Security-Policy (django-csp). Our own pages run no inline script at all; the OHIF
# viewer pages get the wider policy from launcher.middleware.OHIF_CSP_DIRECTIVES.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        # The admin's sign-out form is answered with a redirect to the provider's
        # end_session_endpoint (launcher.oidc): browsers check form-action on redirects.
        "form-action": [
            SELF,
            *(
                [f"{urlsplit(OIDC_ISSUER).scheme}://{urlsplit(OIDC_ISSUER).netloc}"]
                if OIDC_ENABLED and urlsplit(OIDC_ISSUER).netloc
                else []
            ),
        ],
        "frame-ancestors": [NONE],
    }
}

# Outbound HTTP to KHEOPS: every call has this timeout (seconds), counted from when it is
# sent; each server process sends at most KHEOPS_MAX_CALLS_IN_FLIGHT calls at a time to one
# KHEOPS server, and the others wait their turn (launcher.kheops.Client).
KHEOPS_HTTP_TIMEOUT = float(os.environ.get("KHEOPS_HTTP_TIMEOUT", "5"))
KHEOPS_MAX_CALLS_IN_FLIGHT = envint("KHEOPS_MAX_CALLS_IN_FLIGHT", 32)
# On SIGTERM the server first lets the code exchanges in flight finish, for at most this long
# (KHEOPS calls back for our documents meanwhile: launcher.serving).
SHUTDOWN_DRAIN_SECONDS = envint("SHUTDOWN_DRAIN_SECONDS", 30)
# Each server process forgets used codes and old grants this often (0: never, then run
# `manage.py clean_up` from cron; launcher.serving.Housekeeping).
CLEAN_UP_INTERVAL_SECONDS = envint("CLEAN_UP_INTERVAL_SECONDS", 300)
# Requests per client address (launcher.clientaddr) and period, counted in Redis with
# REDIS_URL, else in the database, so that all server processes share the count
# (launcher.ratelimit). "off" (or 0) turns a limit off.
LAUNCH_RATE_LIMIT = envrate("LAUNCH_RATE_LIMIT", "120/m")
TOKEN_RATE_LIMIT = envrate("TOKEN_RATE_LIMIT", "240/m")
KHEOPS_DISCOVERY_CACHE_SECONDS = envint("KHEOPS_DISCOVERY_CACHE_SECONDS", 60)
# Test labs only: let KHEOPS servers be trusted, and called, over plain http on other
# machines than this one. Codes, assertions and tokens then cross the network in clear.
# Off: plain http only to localhost, 127.0.0.1 and ::1 (launcher.kheops.is_confidential).
ALLOW_INSECURE_HTTP_KHEOPS = envbool("ALLOW_INSECURE_HTTP_KHEOPS", False)
# Ask KHEOPS who launched (for the audit trail); one more round trip per launch.
KHEOPS_FETCH_USERINFO = envbool("KHEOPS_FETCH_USERINFO", True)
# Token delivery for providers that leave it to the server: false, the viewer's script holds
# the KHEOPS token and calls KHEOPS (direct); true, it stays here and the viewer's DICOMweb
# requests go through this server (launcher.relay).
DICOMWEB_RELAY = envbool("DICOMWEB_RELAY", False)
# The largest upload (STOW-RS) the relay forwards, in bytes.
DICOMWEB_RELAY_MAX_UPLOAD_BYTES = envint("DICOMWEB_RELAY_MAX_UPLOAD_BYTES", 512 * 1024 * 1024)
# The relayed answers one server process streams at a time; further requests wait their turn
# (launcher.relay_reads): the memory of a process stays bounded whatever the crowd of viewers.
DICOMWEB_RELAY_STREAMS_PER_PROCESS = envint("DICOMWEB_RELAY_STREAMS_PER_PROCESS", 64)
# Behind the nginx of deploy/nginx with its relay offload on: the key nginx sends with every
# request (X-Relay-Offload-Key), which tells this server that nginx carries a relayed read to
# KHEOPS itself when asked (launcher.relay_reads: X-Accel-Redirect). Empty: never asked, this
# server carries every relayed read. At least 32 characters (launcher.E017).
DICOMWEB_RELAY_OFFLOAD_KEY = envsecret("DICOMWEB_RELAY_OFFLOAD_KEY")
# With it, how long nginx may carry a browser's next reads of the same launch's studies
# without asking again (X-Relay-Keep; docs/relay-offload.md): as long as each server process
# keeps a ready grant (services.READY_GRANT_SECONDS), never past the token's expiry. 0: nginx
# asks this server for every read. 0 to 60 (launcher.E018).
DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS = envint("DICOMWEB_RELAY_OFFLOAD_KEEP_SECONDS", 5)
# After `rotate_signing_key`, the previous public key stays in our JWKS this long.
SIGNING_KEY_GRACE_SECONDS = envint("SIGNING_KEY_GRACE_SECONDS", 3600)

# The defaults fit the public KHEOPS documents (anonymous, JSON only); the audit API
# (launcher/api/) sets its own authentication, permissions and renderers on its views.
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The audit API's bearer tokens (django-oauth-toolkit, client-credentials grant). Admins
# create API clients under "Audit API clients > Applications".
AUDIT_READ_SCOPE = "audit:read"
OAUTH2_PROVIDER = {
    "SCOPES": {AUDIT_READ_SCOPE: "Read the launch audit trail, trusted servers and providers"},
    "DEFAULT_SCOPES": [AUDIT_READ_SCOPE],
    "ACCESS_TOKEN_EXPIRE_SECONDS": envint("API_TOKEN_EXPIRE_SECONDS", 3600),
    # A 403 names the scope that was missing: integrators fix their request without guessing.
    "ERROR_RESPONSE_WITH_SCOPES": True,
    # RFC 9700 (OAuth 2.0 Security BCP) throughout: tokens kept only as hashes, no implicit
    # or password grant, no token in a query string. `check --deploy` flags each one left out.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
}

# Where the audit API answers: on the first admin host when ADMIN_HOSTS names one exactly.
_public = urlsplit(PUBLIC_BASE_URL)
AUDIT_API_BASE_URL = (
    f"{_public.scheme}://{ADMIN_HOSTS[0]}{':' + str(_public.port) if _public.port else ''}"
    f"{SCRIPT_NAME}"
    if ADMIN_HOSTS and not ADMIN_HOSTS[0].startswith(".") and ADMIN_HOSTS[0] != "*"
    else PUBLIC_BASE_URL
)

SPECTACULAR_SETTINGS = {
    "TITLE": "kheops-ohif audit API",
    "DESCRIPTION": "Who opened which study, when and from where; the trusted KHEOPS servers "
    "and the providers. Read-only; OAuth 2 bearer tokens (client-credentials grant).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["launcher.api.schema.api_endpoints_only"],
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SERVERS": [{"url": AUDIT_API_BASE_URL}],
    "OAUTH2_FLOWS": ["clientCredentials"],
    "OAUTH2_TOKEN_URL": f"{AUDIT_API_BASE_URL}/oauth/token/",
}

# Error reports (the DEBUG page, error e-mails) hide our secrets: launcher/reporting.py.
DEFAULT_EXCEPTION_REPORTER = "launcher.reporting.SecretsExceptionReporter"
DEFAULT_EXCEPTION_REPORTER_FILTER = "launcher.reporting.SecretsFilter"

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()


def logging_config(*, level: str, log_format: str) -> dict:
    """Our log lines: `plain` text, or `json` (one object a line, with the request's id)."""
    if log_format not in ("plain", "json"):
        raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {log_format!r}.")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "launcher.logfilters.JsonLines"},
        },
        # Launch URLs carry the authorization code: no line may quote one (the server's access
        # log gets the same filter from launcher.serving, leaving the server's own settings).
        "filters": {
            "secrets": {"()": "launcher.logfilters.RedactSecretParameters"},
            "request_id": {"()": "launcher.logfilters.WithRequestId"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["secrets", "request_id"],
            }
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {
            "launcher": {"level": level},
            "django.request": {"level": "ERROR"},
            # One line per call to KHEOPS is noise; failures are ours to log (launcher.services).
            "httpx": {"level": "WARNING"},
        },
    }


LOGGING = logging_config(level=LOG_LEVEL, log_format=os.environ.get("LOG_FORMAT", "plain"))
