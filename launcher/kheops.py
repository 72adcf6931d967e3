"""All HTTP to KHEOPS. Plain functions over a `requests.Session`; no settings, no request.

Every answer is validated here, at the boundary, and every failure is one of three
exceptions that views map to honest status codes:

- `KheopsUnavailable` (connection failure, 5xx; `KheopsTimeout` for a slow server),
- `KheopsRejected` (KHEOPS said no: a 400 with an OAuth error code, 401, 403),
- `KheopsMalformed` (an answer that is not what the protocol says).

Exception messages never contain a code, token or assertion.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import urllib3

USER_AGENT = "kheops-ohif (+https://github.com/kheops-ohif)"
# A discovery or token answer is a few hundred bytes; refuse to buffer anything huge.
MAX_BODY_BYTES = 256 * 1024
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class KheopsError(Exception):
    pass


class KheopsUnavailable(KheopsError):
    pass


class KheopsTimeout(KheopsUnavailable):
    pass


class KheopsRejected(KheopsError):
    def __init__(self, message: str, *, error: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class KheopsMalformed(KheopsError):
    pass


@dataclass(frozen=True)
class Discovery:
    issuer: str
    token_endpoint: str
    dicomweb_endpoint: str
    dicomweb_uri_endpoint: str | None
    userinfo_endpoint: str | None
    introspection_endpoint: str | None


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_in: int

    def __repr__(self) -> str:  # never print the token
        return f"TokenGrant(access_token=<{len(self.access_token)} chars>, expires_in={self.expires_in})"


@dataclass(frozen=True)
class UserInfo:
    sub: str
    name: str
    email: str


class TimeoutSession(requests.Session):
    """A session whose every request has a timeout and follows no redirect by default."""

    def __init__(self, *, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.headers["User-Agent"] = USER_AGENT
        # (call, seconds) of every KHEOPS call made through this session: the launch
        # reports them in its Server-Timing header, apart from its own processing time.
        self.timings: list[tuple[str, float]] = []

    def request(self, method: str | bytes, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        # A redirect could lead outside the trusted root.
        kwargs.setdefault("allow_redirects", False)
        return super().request(method, url, **kwargs)


_per_thread = threading.local()


def thread_session(*, timeout: float) -> TimeoutSession:
    """This thread's session, kept across launches so that connections to KHEOPS (and their
    TLS handshakes) are reused; its `timings` start empty for each caller."""
    session = getattr(_per_thread, "session", None)
    if session is None or session.timeout != timeout:
        if session is not None:
            session.close()
        session = _per_thread.session = TimeoutSession(timeout=timeout)
    session.timings = []
    return session


def is_under_root(url: str, root: str) -> bool:
    """Whether `url` is `root` or a path below it: same scheme and authority, no tricks."""
    target, base = urlsplit(url), urlsplit(root)
    if (target.scheme, target.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return False
    if "@" in target.netloc or target.fragment:
        return False
    segments = unquote(target.path).split("/")
    if any(segment in (".", "..") for segment in segments) or "\\" in unquote(target.path):
        return False
    base_path = base.path.rstrip("/")
    return target.path == base_path or target.path.startswith(base_path + "/")


def fetch_discovery(session: requests.Session, conf_uri: str, *, root: str) -> Discovery:
    """GET the KHEOPS discovery document and check that it describes `root` only."""
    body = _json(
        _send(session, "discovery", "GET", conf_uri, headers={"Accept": "application/json"})
    )
    if not isinstance(body, dict):
        raise KheopsMalformed("the discovery document is not a JSON object")

    def url_field(name: str, *, required: bool) -> str | None:
        value = body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise KheopsMalformed(f"the discovery document has no valid {name!r}")
        if not is_under_root(value, root):
            raise KheopsMalformed(f"the discovery document's {name!r} leaves the trusted root")
        return value

    issuer = url_field("issuer", required=True)
    if issuer.rstrip("/") != root.rstrip("/"):
        raise KheopsMalformed("the discovery document's issuer is not the trusted root")
    return Discovery(
        issuer=issuer,
        token_endpoint=url_field("token_endpoint", required=True),  # type: ignore[arg-type]
        dicomweb_endpoint=url_field("dicomweb_endpoint", required=True),  # type: ignore[arg-type]
        dicomweb_uri_endpoint=url_field("dicomweb_uri_endpoint", required=False),
        userinfo_endpoint=url_field("userinfo_endpoint", required=False),
        introspection_endpoint=url_field("introspection_endpoint", required=False),
    )


def exchange_code(
    session: requests.Session,
    token_endpoint: str,
    *,
    code: str,
    client_id: str,
    redirect_uri: str,
    client_assertion: str,
) -> TokenGrant:
    """The authorization_code grant with private_key_jwt client authentication.

    No Authorization header: KHEOPS rejects one sent together with an assertion.
    """
    form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", client_assertion),
    ]
    response = _send(
        session, "token", "POST", token_endpoint, data=form, headers={"Accept": "application/json"}
    )
    body = _json(response)
    if not isinstance(body, dict):
        raise KheopsMalformed("the token response is not a JSON object")
    access_token = body.get("access_token")
    expires_in = body.get("expires_in")
    if not isinstance(access_token, str) or not access_token or len(access_token) > 16384:
        raise KheopsMalformed("the token response has no valid access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise KheopsMalformed("the token response has no valid expires_in")
    # token_type may be absent (KHEOPS's entity declares it static): Bearer regardless.
    return TokenGrant(access_token=access_token, expires_in=min(expires_in, 24 * 3600))


def fetch_userinfo(session: requests.Session, userinfo_endpoint: str, *, access_token: str) -> UserInfo:
    response = _send(
        session,
        "userinfo",
        "GET",
        userinfo_endpoint,
        headers={"Accept": "application/json", "Authorization": f"Bearer {access_token}"},
    )
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("sub"), str):
        raise KheopsMalformed("the userinfo response has no 'sub'")

    def text(name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str):
            return ""
        # Control characters have no place in a name or an e-mail address; NUL cannot even
        # be stored by PostgreSQL (the audit record, and the launch, would fail).
        return "".join(char for char in value if char.isprintable())[:255]

    return UserInfo(sub=text("sub"), name=text("name"), email=text("email"))


def _send(
    session: requests.Session, call: str, method: str, url: str, **kwargs: Any
) -> requests.Response:
    started = time.perf_counter()
    try:
        return _send_timed(session, method, url, **kwargs)
    finally:
        timings = getattr(session, "timings", None)
        if isinstance(timings, list):
            timings.append((call, time.perf_counter() - started))


def _dropped_before_answering(exc: requests.ConnectionError) -> bool:
    """The server closed the connection before any answer (not: refused, unresolvable)."""
    reason = exc.args[0] if exc.args else None
    return isinstance(reason, urllib3.exceptions.ProtocolError)


def _send_timed(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    timeout = getattr(session, "timeout", None)
    deadline = time.monotonic() + timeout if isinstance(timeout, int | float) else None
    try:
        try:
            response = session.request(method, url, stream=True, **kwargs)
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.Timeout) or not _dropped_before_answering(exc):
                raise
            # A kept-alive connection the server closed just as we sent on it (measured by
            # bench/loadtest.py: about 1 request in 400 under a burst). Each of our calls
            # may be repeated: discovery and userinfo are GETs, and a KHEOPS code stays
            # valid for several exchanges within its 600 s. Once, on a fresh connection.
            response = session.request(method, url, stream=True, **kwargs)
    except requests.Timeout:
        raise KheopsTimeout(f"{urlsplit(url).netloc} did not answer in time") from None
    except requests.RequestException as exc:
        raise KheopsUnavailable(f"{urlsplit(url).netloc} unreachable: {type(exc).__name__}") from None
    try:
        body = _read_limited(response, deadline=deadline)
    except (requests.RequestException, OSError) as exc:
        if isinstance(exc, requests.Timeout) or (deadline is not None and time.monotonic() >= deadline):
            raise KheopsTimeout(f"{urlsplit(url).netloc} did not finish its answer in time") from None
        raise KheopsUnavailable(f"{urlsplit(url).netloc} broke off: {type(exc).__name__}") from None
    finally:
        response.close()
    response._content = body  # the body is read and bounded; .json()/.text use it
    if response.status_code >= 500:
        raise KheopsUnavailable(f"{urlsplit(url).netloc} answered HTTP {response.status_code}")
    if response.status_code in (400, 401, 403):
        error = _oauth_error(response)
        raise KheopsRejected(
            f"KHEOPS refused ({response.status_code} {error or 'no error code'})",
            error=error,
            status=response.status_code,
        )
    if response.status_code != 200:
        raise KheopsMalformed(f"{urlsplit(url).netloc} answered HTTP {response.status_code}")
    return response


def _read_limited(response: requests.Response, *, deadline: float | None = None) -> bytes:
    # requests' timeout bounds each socket read, not the whole answer: a server trickling
    # its body a few bytes at a time would hold the launch for ever. At the deadline the
    # watchdog shuts the connection down, which ends a blocked read at once.
    watchdog = None
    if deadline is not None and hasattr(response.raw, "shutdown"):
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shutdown, [response])
        watchdog.daemon = True
        watchdog.start()
    chunks = []
    size = 0
    try:
        for chunk in response.iter_content(16384):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise KheopsMalformed("the answer is larger than any protocol message")
            chunks.append(chunk)
    finally:
        if watchdog is not None:
            watchdog.cancel()
    if deadline is not None and time.monotonic() >= deadline:
        raise KheopsTimeout("the answer did not arrive in time")
    return b"".join(chunks)


def _shutdown(response: requests.Response) -> None:
    with contextlib.suppress(ValueError, OSError):  # already closed: nothing left to stop
        response.raw.shutdown()


def _json(response: requests.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise KheopsMalformed("the answer is not JSON") from None


def _oauth_error(response: requests.Response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    # Only the registered OAuth error code (a short token) is kept: descriptions could
    # echo request values.
    if isinstance(error, str) and error.replace("_", "").isalpha() and len(error) <= 40:
        return error
    return ""
