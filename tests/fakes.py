"""The KHEOPS side faked at the HTTP boundary with `respx`.

Our KHEOPS client speaks httpx for discovery, token and userinfo (respx answers in its
place) and aiohttp for DICOMweb (launcher.kheops.open_dicomweb): those requests go over
real HTTP to `DicomwebOverHttp`, a server in the test's own event loop, which hands each
one to the same respx router as an `httpx.Request` and streams its `httpx.Response` back.
Every route, knob and record (`router.calls`) then serves both kinds alike.

`FakeKheops` behaves like a KHEOPS server's discovery, token, userinfo and DICOMweb
endpoints and checks our token requests the way KHEOPS does, using the JWKS our app
publishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import httpx
import jwt
import respx
from aiohttp import web
from asgiref.sync import sync_to_async

from launcher import keys, kheops
from launcher.models import Provider

ROOT = "https://kheops.test"
DISCOVERY_URL = f"{ROOT}/api/.well-known/report-provider-configuration"
TOKEN_URL = f"{ROOT}/api/token"
USERINFO_URL = f"{ROOT}/api/userinfo"
CLIENT_ID = "Q9ZTMv3fW7ta0Npg1caGMF"
ALBUM_ID = "AbCdEf1234"
STUDY_1 = "1.2.840.113619.2.1.1.322987881.621.736170080.681"
STUDY_2 = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
# KHEOPS codes are compact JWS (HS256 JWTs); ours look the same: a real {"alg":"HS256"}
# header, a random payload and signature.
CODE_HEADER = "eyJhbGciOiJIUzI1NiJ9"


def fake_code(payload: str = "") -> str:
    """A fresh code in KHEOPS's shape; `payload` is appended to its (random) payload."""
    return f"{CODE_HEADER}.{secrets.token_urlsafe(18)}{payload}.{secrets.token_urlsafe(24)}"


def discovery_document(root: str = ROOT) -> dict[str, Any]:
    return {
        "issuer": root,
        "dicomweb_endpoint": f"{root}/api",
        "dicomweb_uri_endpoint": f"{root}/api/wado",
        "token_endpoint": f"{root}/api/token",
        "introspection_endpoint": f"{root}/api/token/introspect",
        "userinfo_endpoint": f"{root}/api/userinfo",
        "grant_types_supported": ["authorization_code", "implicit"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "token"],
    }


@dataclass
class TokenRequest:
    form: list[tuple[str, str]]
    headers: httpx.Headers
    assertion_header: dict[str, Any]
    assertion_claims: dict[str, Any]


@dataclass
class FakeKheops:
    """A KHEOPS server as our launch endpoint sees it."""

    router: respx.MockRouter
    provider: Provider
    secrets_seen: list[str] = field(default_factory=list)
    token_requests: list[TokenRequest] = field(default_factory=list)
    userinfo_calls: int = 0
    # Knobs: replace an endpoint's answer with (status, body) or an exception.
    discovery_answer: Any = None
    token_answer: Any = None
    userinfo_answer: Any = None
    expires_in: int = 3600
    # KHEOPS's DICOMweb (what the relay forwards to): every request, and a knob taking the
    # request and giving the answer.
    dicomweb_requests: list[httpx.Request] = field(default_factory=list)
    dicomweb_answer: Any = None

    def install(self) -> None:
        self.router.get(DISCOVERY_URL).mock(side_effect=self._discovery)
        self.router.post(TOKEN_URL).mock(side_effect=self._token)
        self.router.get(USERINFO_URL).mock(side_effect=self._userinfo)
        self.router.route(host=urlsplit(ROOT).hostname, path__startswith="/api/studies").mock(
            side_effect=self._dicomweb
        )
        # Anything else on KHEOPS's host (a wrong method, an unknown path) finds nobody
        # listening; a call to any other host fails the test (respx: "not mocked").
        self.router.route(host=urlsplit(ROOT).hostname).mock(
            side_effect=httpx.ConnectError("no route")
        )

    def new_code(self) -> str:
        code = fake_code()
        self.secrets_seen.append(code)
        return code

    def launch_url(
        self,
        *,
        code: str | None = None,
        studies: tuple[str, ...] = (STUDY_1,),
        conf_uri: str = DISCOVERY_URL,
        client_id: str = CLIENT_ID,
        return_uri: str | None = f"{ROOT}/albums/{ALBUM_ID}",
        slug: str | None = None,
    ) -> str:
        params: list[tuple[str, str]] = [
            ("code", code or self.new_code()),
            ("conf_uri", conf_uri),
            ("client_id", client_id),
        ]
        if return_uri is not None:
            params.append(("return_uri", return_uri))
        params += [("studyUID", uid) for uid in studies]
        return f"/providers/{slug or self.provider.slug}/launch?{urlencode(params)}"

    def _answer(self, knob: Any) -> httpx.Response | None:
        if knob is None:
            return None
        if isinstance(knob, BaseException):
            raise knob
        status, body = knob
        return _json_response(status, body)

    def _discovery(self, request: httpx.Request) -> httpx.Response:
        return self._answer(self.discovery_answer) or _json_response(200, discovery_document())

    async def _token(self, request: httpx.Request) -> httpx.Response:
        form = parse_qsl(request.content.decode(), keep_blank_values=True)
        assertion = dict(form).get("client_assertion", "")
        self.secrets_seen.append(assertion)
        header = jwt.get_unverified_header(assertion) if assertion else {}
        # What our /jwks.json publishes (the view returns exactly this list).
        published = await sync_to_async(keys.published_keys)()
        key = next((k for k in published if k["kid"] == header.get("kid")), None)
        claims: dict[str, Any] = {}
        if key is not None:
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(key).key,
                algorithms=["RS256"],
                audience=TOKEN_URL,
                options={"require": ["exp", "jti", "iss", "sub", "aud"]},
            )
        self.token_requests.append(
            TokenRequest(
                form=form, headers=request.headers, assertion_header=header, assertion_claims=claims
            )
        )
        answer = self._answer(self.token_answer)
        if answer is not None:
            return answer
        if key is None or dict(form).get("redirect_uri") != self.provider.redirect_uri:
            return _json_response(400, {"error": "invalid_grant"})
        token = "eyJtoken." + secrets.token_urlsafe(32)
        self.secrets_seen.append(token)
        return _json_response(200, {"access_token": token, "expires_in": self.expires_in})

    def _userinfo(self, request: httpx.Request) -> httpx.Response:
        self.userinfo_calls += 1
        answer = self._answer(self.userinfo_answer)
        if answer is not None:
            return answer
        return _json_response(
            200, {"sub": "user-123", "name": "Dr Alice Martin", "email": "alice@example.org"}
        )

    async def _dicomweb(self, request: httpx.Request) -> httpx.Response:
        self.dicomweb_requests.append(request)
        if self.dicomweb_answer is not None:
            return await self.dicomweb_answer(request)
        return httpx.Response(200, headers={"Content-Type": "application/dicom+json"}, json=[])

    @property
    def issued_tokens(self) -> list[str]:
        return [s for s in self.secrets_seen if s.startswith("eyJtoken.")]


class DicomwebOverHttp:
    """The far end of our DICOMweb client's connections in the tests: a server listening on
    a Unix socket of its own in each event loop our client is used in, which answers each
    request with the respx `router` (`connector` replaces kheops.dicomweb_connector).

    What our code sent arrives as an `httpx.Request`: the method, the https URL it asked
    for, the headers as they came over the wire, the body (read whole before the router
    sees it, as respx does). The `httpx.Response` goes back as it comes: the status, the
    headers, the body piece by piece. An exception raised for a request (a route's side
    effect, such as `httpx.ConnectError`) drops the connection without an answer; one that
    is not an `httpx.TransportError` (a request nobody mocked, a failed assertion) is kept
    in `failures`, and fails the test.

    When our side hangs up mid-answer, the answer's stream is closed (`aclose`), as httpx
    closed it before; when the loop merely ends, it is not. Our side may hang up as the
    loop ends (a generator finalized then): the answers cut off by the loop's end are
    settled last, with the loop's asynchronous generators, each closed if our side hung
    up. Then our clients of that loop are closed, and the server with them.
    """

    # How long an answer cut off by the loop's end waits for our side's hang-up.
    HANG_UP_SECONDS = 1.0

    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self.failures: list[BaseException] = []
        self._loops: dict[asyncio.AbstractEventLoop, _Loop] = {}

    def connector(self, client: kheops.Client) -> aiohttp.BaseConnector:
        loop = asyncio.get_running_loop()
        if loop not in self._loops:
            self._loops[loop] = self._listen(loop)
        self._loops[loop].clients.append(client)
        return aiohttp.UnixConnector(path=self._loops[loop].address)

    def _listen(self, loop: asyncio.AbstractEventLoop) -> _Loop:
        address = f"\0kheops-ohif-tests-{secrets.token_hex(8)}"  # abstract: no file
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listening.bind(address)
        listening.listen(64)  # connections wait here until the server below starts
        listening.setblocking(False)
        state = _Loop(address)
        state.lifetime = self._lifetime(loop, state, listening)
        # Started on the loop (an asynchronous generator: closed last when the loop ends).
        loop.create_task(_first_step(state.lifetime))
        return state

    async def _lifetime(
        self, loop: asyncio.AbstractEventLoop, state: _Loop, listening: socket.socket
    ) -> AsyncIterator[None]:
        server = web.Server(self._answer, handler_cancellation=True)
        serving = await loop.create_unix_server(server, sock=listening)
        try:
            yield
        finally:
            for _ in range(int(self.HANG_UP_SECONDS / 0.01)):
                if not state.cut_off:
                    break
                for cut in list(state.cut_off):
                    if _peer_closed(cut[0]):
                        state.cut_off.remove(cut)
                        cut[0].close()
                        await cut[1].aclose()
                await asyncio.sleep(0.01)
            for peer, _ in state.cut_off:
                peer.close()
            for client in state.clients:
                await client.aclose()
            serving.close()
            await server.shutdown(0.1)
            self._loops.pop(loop, None)

    async def _answer(self, asked: web.BaseRequest) -> web.StreamResponse:
        request = httpx.Request(
            asked.method,
            f"https://{asked.host}{asked.raw_path}",
            headers=[
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in asked.raw_headers
            ],
            stream=_Body(asked),
            # Which connection it came on (our client keeps them for reuse).
            extensions={"connection": id(asked.protocol)},
        )
        try:
            await request.aread()
            response = await self.router.async_handler(request)
        except httpx.TransportError:
            return _drop(asked)
        except Exception as exc:
            self.failures.append(exc)
            return _drop(asked)
        answer = web.StreamResponse(status=response.status_code)
        for name, value in response.headers.multi_items():
            answer.headers.add(name, value)
        transport = asked.transport
        assert transport is not None
        # The connection's own socket, to see our side hang up after aiohttp let go of it.
        peer = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        try:
            await answer.prepare(asked)
            # The stream itself: its bytes as they were given (respx read the fixed ones).
            async for chunk in response.stream:  # type: ignore[union-attr]
                await answer.write(chunk)
            await answer.write_eof()
        except ConnectionError:  # our side hung up (aiohttp's ClientConnectionResetError)
            await response.aclose()
            raise
        except asyncio.CancelledError:
            if _peer_closed(peer):
                await response.aclose()
            else:  # our side hung up, or the loop ends: settled at the loop's end
                self._loops[asyncio.get_running_loop()].cut_off.append((peer, response))
                peer = None
            raise
        finally:
            if peer is not None:
                peer.close()
        await response.aclose()
        return answer


@dataclass
class _Loop:
    address: str
    clients: list[kheops.Client] = field(default_factory=list)
    cut_off: list[tuple[socket.socket, httpx.Response]] = field(default_factory=list)
    lifetime: Any = None  # kept here: a loop holds its asynchronous generators weakly


async def _first_step(lifetime: AsyncIterator[None]) -> None:
    await anext(lifetime)


def _drop(asked: web.BaseRequest) -> web.StreamResponse:
    assert asked.transport is not None
    asked.transport.abort()
    raise ConnectionResetError("dropped without an answer")


def _peer_closed(peer: socket.socket) -> bool:
    try:
        return peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _Body(httpx.AsyncByteStream):
    def __init__(self, asked: web.BaseRequest) -> None:
        self.asked = asked

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.asked.content.iter_any():
            yield chunk


def _json_response(status: int, body: Any) -> httpx.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return httpx.Response(status, headers={"Content-Type": "application/json"}, text=text)


def csp_directives(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: its sources}, in any order."""
    directives: dict[str, list[str]] = {}
    for directive in filter(None, (part.strip() for part in header.split(";"))):
        name, *sources = directive.split()
        assert name not in directives, f"{name} twice in {header!r}"
        directives[name] = sources
    return directives


def token_url_of(viewer_url: str) -> str:
    """The token URL of the viewer we redirected to (/launches/<id>/...)."""
    launch_id = urlsplit(viewer_url).path.split("/")[2]
    return f"/launches/{launch_id}/token"


def launch_and_exchange(client: Any, launch_url: str) -> tuple[Any, Any]:
    """Launch as a browser does: the launch URL (our 302 to the viewer), then the viewer's
    token request, which exchanges the code. Returns both responses; the token request is
    made only after a redirect."""
    launch = client.get(launch_url)
    if launch.status_code != 302:
        return launch, None
    return launch, client.get(token_url_of(launch["Location"]))
