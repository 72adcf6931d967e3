"""All HTTP to KHEOPS: plain async functions over one `Client`; no settings, no request.

Every answer is validated here, at the boundary, and every failure is one of three
exceptions that views map to honest status codes:

- `KheopsUnavailable` (connection failure, 5xx; `KheopsTimeout` for a slow server),
- `KheopsRejected` (KHEOPS said no: a 400 with an OAuth error code, 401, 403),
- `KheopsMalformed` (an answer that is not what the protocol says),
- `KheopsInsecure` (plain http to a host other than this machine: refused before sending).

Exception messages never contain a code, token or assertion.

Waiting for KHEOPS is an `await`: it holds no thread and no worker. This matters because
KHEOPS fetches our configuration document and JWKS *during* each token exchange, from the
very server that is waiting for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import re
import ssl
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlencode, urlsplit

import aiohttp
import certifi
import httpx
import yarl
from django.views.decorators.debug import sensitive_variables

from launcher import metrics

USER_AGENT = "kheops-ohif (+https://github.com/kheops-ohif)"
# A discovery or token answer is a few hundred bytes; refuse to buffer anything huge.
MAX_BODY_BYTES = 256 * 1024
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Errors raised while sending, before any answer: a kept-alive connection the server closed
# just as we sent on it (about 1 request in 400 under a burst, measured by the load test).
_DROPPED_BEFORE_ANSWERING = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# The same, as aiohttp says it (a failure to connect is neither: ClientConnectorError).
_DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)

# What an Authorization: Bearer header can carry (RFC 6750 §2.1, b64token); a KHEOPS token
# (a JWT) is one. Anything else would break every call that sends it (userinfo, the viewer's
# DICOMweb requests, the relay's).
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

Timings = list[tuple[str, float]]
P = ParamSpec("P")
T = TypeVar("T")


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


class KheopsInsecure(KheopsError):
    """Plain http to a host that is not this machine: codes, assertions and tokens would
    cross the network in clear. Nothing was sent."""


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


class Client:
    """The connections a process keeps to KHEOPS servers, and the rules of every call.

    - `timeout` bounds each call as a whole (connecting, sending, and the complete answer,
      however slowly it trickles in);
    - at most `max_in_flight` calls go to one KHEOPS server at a time; the others wait for
      their turn, and their timeout starts only then. A burst of launches then queues here,
      costing nothing, instead of overloading KHEOPS until every call times out;
    - no redirect is followed (it could lead outside the trusted root), no cookie is kept
      between calls (they are made for different users), and the environment's proxy and
      .netrc settings are ignored;
    - nothing goes over plain http to a host other than this machine (`is_confidential`),
      unless `allow_plain_http`.

    Its DICOMweb calls (the relay's byte pump: `open_dicomweb`, `raw_body`) go through an
    aiohttp session of their own (its C parser costs a fraction of httpx's CPU per byte),
    made on first use, under the same rules but two: `timeout` bounds only connecting
    (an answer streams for as long as it takes, RELAY_READ_SECONDS between its pieces),
    and `max_in_flight` does not apply. The others (discovery, token, userinfo) go through
    httpx.

    One per event loop: its connections belong to the loop that opened them.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_in_flight: int = 32,
        allow_plain_http: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        # Plain http to other hosts than this machine (test labs only): see `is_confidential`.
        self.allow_plain_http = allow_plain_http
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=max_in_flight,
                keepalive_expiry=30,
            ),
            follow_redirects=False,
            trust_env=False,
            # What httpx verifies with anyway (certifi's bundle), loaded once per process.
            verify=_verifying_context(),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._dicomweb: aiohttp.ClientSession | None = None

    def dicomweb(self) -> aiohttp.ClientSession:
        """The session of the DICOMweb calls (made on the running loop, on first use)."""
        if self._dicomweb is None:
            self._dicomweb = aiohttp.ClientSession(
                connector=dicomweb_connector(self),
                # No cookie is kept, the environment's proxy and .netrc settings are ignored.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
                # Content-Type is KHEOPS's business: none is made up for an upload.
                skip_auto_headers=("Content-Type",),
                # The bytes are passed on as KHEOPS sent them, still compressed.
                auto_decompress=False,
                # No bound on a whole answer (a series streams for as long as it takes).
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_read=RELAY_READ_SECONDS
                ),
            )
        return self._dicomweb

    def turn(self, url: str) -> asyncio.Semaphore:
        """The semaphore that bounds the calls in flight to `url`'s server."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.lower()}"
        if origin not in self._turns:
            self._turns[origin] = asyncio.Semaphore(self.max_in_flight)
        return self._turns[origin]

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._dicomweb is not None:
            await self._dicomweb.close()


def dicomweb_connector(client: Client) -> aiohttp.BaseConnector:
    """The connections of `client`'s DICOMweb session: kept alive for reuse, verified as
    httpx verifies (certifi's CA bundle, the host name checked). The tests replace it with
    a connector to their fake KHEOPS (tests/fakes.py)."""
    return aiohttp.TCPConnector(
        # No bound of its own, as with httpx. Each connection is kept for reuse 30 s after
        # its answer, however many: a viewer loading a series keeps several busy, and one
        # closed after each image would be opened again at once (with 50 viewers loading at
        # once, bench/relay.py, fewer kept meant a new connection for most images).
        limit=0,
        limit_per_host=0,
        keepalive_timeout=30,
        ssl=_verifying_context(),
    )


@functools.cache
def _verifying_context() -> ssl.SSLContext:
    """certifi's CA bundle, the host name checked: httpx's default when the environment is
    ignored. One per process (loading the bundle is most of a client's making)."""
    return ssl.create_default_context(cafile=certifi.where())


def _counted(call: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Count the failures of one kind of call by kind (launcher.metrics), whether the answer
    never came or did not hold up to the checks."""

    def decorate(function: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(function)
        @sensitive_variables()
        async def counted(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await function(*args, **kwargs)
            except KheopsError as exc:
                metrics.KHEOPS_ERRORS.labels(call, metrics.kheops_error_kind(exc)).inc()
                raise

        return counted

    return decorate


def is_loopback_host(host: str | None) -> bool:
    """`localhost` or a loopback address literal (127.0.0.0/8, ::1): this machine, whatever
    the DNS says. A name that merely resolves to loopback is not."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_confidential(url: str) -> bool:
    """Whether what is sent to `url` stays between the two ends: https, or plain http that
    never leaves this machine (the stand-in, a KHEOPS on the same host)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


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


@_counted("discovery")
async def fetch_discovery(
    client: Client, conf_uri: str, *, root: str, timings: Timings | None = None
) -> Discovery:
    """GET the KHEOPS discovery document and check that it describes `root` only."""
    body = _json(
        await _send(
            client,
            "discovery",
            "GET",
            conf_uri,
            headers={"Accept": "application/json"},
            timings=timings,
        )
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
        if not client.allow_plain_http and not is_confidential(value):
            raise KheopsInsecure(
                f"the discovery document's {name!r} is plain http to another machine"
            )
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


@_counted("token")
@sensitive_variables()
async def exchange_code(
    client: Client,
    token_endpoint: str,
    *,
    code: str,
    client_id: str,
    redirect_uri: str,
    client_assertion: str,
    timings: Timings | None = None,
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
    body = _json(
        await _send(
            client,
            "token",
            "POST",
            token_endpoint,
            # Each field exactly once, in this order (a list, not a dict).
            content=urlencode(form).encode(),
            headers={
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            timings=timings,
        )
    )
    if not isinstance(body, dict):
        raise KheopsMalformed("the token response is not a JSON object")
    access_token = body.get("access_token")
    expires_in = body.get("expires_in")
    if (
        not isinstance(access_token, str)
        or len(access_token) > 16384
        or not BEARER_TOKEN.fullmatch(access_token)
    ):
        raise KheopsMalformed("the token response has no valid access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise KheopsMalformed("the token response has no valid expires_in")
    # token_type may be absent (KHEOPS's entity declares it static): Bearer regardless.
    return TokenGrant(access_token=access_token, expires_in=min(expires_in, 24 * 3600))


@_counted("userinfo")
@sensitive_variables()
async def fetch_userinfo(
    client: Client, userinfo_endpoint: str, *, access_token: str, timings: Timings | None = None
) -> UserInfo:
    body = _json(
        await _send(
            client,
            "userinfo",
            "GET",
            userinfo_endpoint,
            headers={"Accept": "application/json", "Authorization": f"Bearer {access_token}"},
            timings=timings,
        )
    )
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


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes


@sensitive_variables()
async def _send(
    client: Client,
    call: str,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None = None,
    timings: Timings | None = None,
) -> bytes:
    """One call, its whole answer read (bounded), its status judged; the body of a 200."""
    host = urlsplit(url).netloc
    if not client.allow_plain_http and not is_confidential(url):
        raise KheopsInsecure(f"refused to send to {host} over plain http (not this machine)")
    queued = time.perf_counter()
    async with client.turn(url):
        started = time.perf_counter()
        if timings is not None and started - queued > 0.001:
            timings.append((f"{call}-queue", started - queued))
        try:
            async with asyncio.timeout(client.timeout):
                answer = await _send_once_more_if_dropped(client, method, url, headers, content)
        except (TimeoutError, httpx.TimeoutException):
            raise KheopsTimeout(f"{host} did not answer in time") from None
        except _DROPPED_BEFORE_ANSWERING as exc:
            raise KheopsUnavailable(f"{host} broke off: {type(exc).__name__}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise KheopsUnavailable(f"{host} unreachable: {type(exc).__name__}") from None
        finally:
            took = time.perf_counter() - started
            metrics.KHEOPS_SECONDS.labels(call).observe(took)
            if timings is not None:
                timings.append((call, took))
    if answer.status >= 500:
        raise KheopsUnavailable(f"{host} answered HTTP {answer.status}")
    if answer.status in (400, 401, 403):
        error = _oauth_error(answer.body)
        raise KheopsRejected(
            f"KHEOPS refused ({answer.status} {error or 'no error code'})",
            error=error,
            status=answer.status,
        )
    if answer.status != 200:
        raise KheopsMalformed(f"{host} answered HTTP {answer.status}")
    return answer.body


@sensitive_variables()
async def _send_once_more_if_dropped(
    client: Client, method: str, url: str, headers: Mapping[str, str], content: bytes | None
) -> _Answer:
    for attempt in (1, 2):
        request = client.http.build_request(method, url, headers=headers, content=content)
        try:
            response = await client.http.send(request, stream=True)
        except _DROPPED_BEFORE_ANSWERING:
            # Each of our calls may be repeated: discovery and userinfo are GETs, and a
            # KHEOPS code stays valid for several exchanges within its 600 s. Once.
            if attempt == 2:
                raise
            continue
        try:
            return _Answer(response.status_code, await _read_limited(response))
        finally:
            await response.aclose()
    raise AssertionError("unreachable: the second attempt returns or raises")


@sensitive_variables()
async def _read_limited(response: httpx.Response) -> bytes:
    chunks = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise KheopsMalformed("the answer is larger than any protocol message")
            chunks.append(chunk)
    except httpx.DecodingError:
        raise KheopsMalformed("the answer's content encoding is broken") from None
    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
        # The answer had begun: not a connection dropped before answering.
        raise KheopsUnavailable(
            f"{response.url.netloc.decode()} broke off: {type(exc).__name__}"
        ) from None
    return b"".join(chunks)


# --- The DICOMweb relay (launcher.relay): one request, its answer streamed -----------------

# A relayed answer may take this long to begin, and each of its reads (or each write of an
# upload) this long again: a large study's rendering or a slow client, not a stuck server.
RELAY_READ_SECONDS = 60.0


class Upstream:
    """KHEOPS's answer to a DICOMweb request, its body still unread (`raw_body` reads it)."""

    __slots__ = ("headers", "host", "response", "status_code")

    def __init__(self, response: aiohttp.ClientResponse, host: str) -> None:
        self.response = response
        self.host = host
        self.status_code = response.status
        self.headers = JoinedHeaders(response.headers)


class JoinedHeaders(Mapping[str, str]):
    """An answer's headers by name, in any case; a repeated header's values joined with
    ", " (as httpx and Django do), in the order they came."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers: Any = headers  # aiohttp's CIMultiDictProxy

    def __getitem__(self, name: str) -> str:
        values = self._headers.getall(name)
        return values[0] if len(values) == 1 else ", ".join(values)

    def __contains__(self, name: object) -> bool:
        return name in self._headers

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name.lower() for name in self._headers))

    def __len__(self) -> int:
        return len(set(name.lower() for name in self._headers))


@sensitive_variables()
async def open_dicomweb(
    client: Client,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: AsyncIterable[bytes] | None = None,
) -> Upstream:
    """Send one DICOMweb request; its answer comes back with the body still unread.

    The caller streams it (`raw_body`, which closes it). Not bounded by `turn`: a viewer's
    many image requests must not hold up launches. A GET or HEAD dropped on a kept-alive
    connection before any answer is sent once more (aiohttp does it, for idempotent methods
    only); an upload is not (its body is gone).
    """
    host = urlsplit(url).netloc
    # As written: our checked path and the browser's checked query, not re-encoded.
    target = yarl.URL(url, encoded=True)
    upload = None if content is None else _Upload(content)
    try:
        if upload is None:
            response = await client.dicomweb().request(
                method, target, headers=headers, allow_redirects=False
            )
        else:
            async with upload.paced():
                response = await client.dicomweb().request(
                    method, target, headers=headers, data=upload.pieces(), allow_redirects=False
                )
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        if upload is not None and upload.failed:
            # The upload's own source failed (the browser broke it off): that is what
            # happened, not a failure of KHEOPS (aiohttp reports it as one of its own).
            raise upload.failed[0] from None
        raise _dicomweb_failure(exc, host) from None
    return Upstream(response, host)


def _dicomweb_failure(exc: Exception, host: str) -> KheopsUnavailable:
    if isinstance(exc, TimeoutError):  # aiohttp's ConnectionTimeoutError, ServerTimeoutError
        return KheopsTimeout(f"{host} did not answer in time")
    if isinstance(exc, _DROPPED) and not isinstance(exc, aiohttp.ClientConnectorError):
        return KheopsUnavailable(f"{host} broke off: {type(exc).__name__}")
    return KheopsUnavailable(f"{host} unreachable: {type(exc).__name__}")


class _Upload:
    """An upload's body as aiohttp sends it: each piece must be written (taken by the
    connection) within RELAY_READ_SECONDS, as httpx bounded each write; the wait for the
    browser's next piece is not bounded here. A failure of the source itself (the browser
    broke the upload off) is noted: aiohttp reports it as one of its own."""

    def __init__(self, content: AsyncIterable[bytes]) -> None:
        self.content = content
        self.failed: list[Exception] = []
        self._deadline: asyncio.Timeout | None = None

    @contextlib.asynccontextmanager
    async def paced(self) -> AsyncIterator[None]:
        async with asyncio.timeout(None) as deadline:
            self._deadline = deadline
            try:
                yield
            finally:
                self._deadline = None  # the answer came: its reads have their own bound

    def _bound(self, seconds: float | None) -> None:
        if self._deadline is not None:
            when = None if seconds is None else asyncio.get_running_loop().time() + seconds
            self._deadline.reschedule(when)

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.content:
                self._bound(RELAY_READ_SECONDS)
                yield chunk  # back here once it is written
                self._bound(None)
        except Exception as exc:
            self.failed.append(exc)
            raise


async def raw_body(upstream: Upstream) -> AsyncIterator[bytes]:
    """The answer's bytes as KHEOPS sent them (still compressed, multipart boundaries and
    all), each piece as soon as it arrives; the answer is released at the end (its
    connection kept for reuse), closed on error and when the consumer stops early (the
    browser went away)."""
    response = upstream.response
    ended = False
    try:
        async for chunk in response.content.iter_any():
            yield chunk
        ended = True
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The answer had begun: the browser sees a cut-off body, never a made-up end.
        raise KheopsUnavailable(
            f"{upstream.host} broke off mid-answer: {type(exc).__name__}"
        ) from None
    finally:
        if ended:
            response.release()
        else:
            response.close()


@sensitive_variables()
def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise KheopsMalformed("the answer is not JSON") from None


@sensitive_variables()
def _oauth_error(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    # Only the registered OAuth error code (a short token) is kept: descriptions could
    # echo request values.
    if isinstance(error, str) and error.replace("_", "").isalpha() and len(error) <= 40:
        return error
    return ""
