"""Hostile input at the launch endpoint and the viewer routes: one named case per attack.

Every launch case asserts the status, the human page and where our server sent requests:
the `respx` mock fails any unregistered URL, and `router.calls` must hold only calls to
the trusted KHEOPS (none at all when the launch is refused before discovery). An accepted
launch redirects to the viewer before the exchange: its viewer's token request then
exchanges the code, again with the trusted KHEOPS only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils.html import escape

from launcher import services
from launcher.models import (
    DISCOVERY_PATH,
    GrantState,
    KheopsServer,
    LaunchGrant,
    LaunchOutcome,
    LaunchRecord,
)
from tests import leakcheck
from tests.fakes import (
    ALBUM_ID,
    CLIENT_ID,
    CODE_HEADER,
    DISCOVERY_URL,
    ROOT,
    STUDY_1,
    FakeKheops,
    discovery_document,
    token_url_of,
)

RETURN_URI = f"{ROOT}/albums/{ALBUM_ID}"
SCRIPT = "<script>alert('x')</script>"
IMG = '"><img src=x onerror=alert(1)>'
CANNOT_OPEN = "Cannot open the viewer"
NOT_TRUSTED = "not trusted by this viewer"
NOT_UNDERSTOOD = "does not understand"
PLAIN_HTTP = "over plain http"
Params = list[tuple[str, str]]


def base_params(code: str) -> Params:
    return [
        ("code", code),
        ("conf_uri", DISCOVERY_URL),
        ("client_id", CLIENT_ID),
        ("return_uri", RETURN_URI),
        ("studyUID", STUDY_1),
    ]


def replace(name: str, *values: str) -> Callable[[Params], Params]:
    """Give parameter `name` these values (none: drop it), in its original place."""

    def change(params: Params) -> Params:
        out: Params = []
        for key, value in params:
            if key == name:
                out += [(name, v) for v in values]
                values_done.append(True)
            else:
                out.append((key, value))
        return out

    values_done: list[bool] = []
    return change


def add(*pairs: tuple[str, str]) -> Callable[[Params], Params]:
    return lambda params: params + list(pairs)


@dataclass(frozen=True)
class LaunchCase:
    change: Callable[[Params], Params]
    status: int
    message: str  # on the page; "" for a successful launch (a redirect)
    outbound: bool = False  # whether the trusted KHEOPS may be called at all
    discovery: Any = None  # the discovery document KHEOPS serves, if not the right one
    provider_enabled: bool = True
    way_back: bool | None = None  # "Back to KHEOPS" expected (True) or forbidden (False)
    headers: dict[str, str] = field(default_factory=dict)  # request headers (META names)
    settings: dict[str, Any] = field(default_factory=dict)  # settings for this case
    remote_addr: str | None = None  # the audit's "from where", when the case is about it
    audited: bool = True  # refused before the launch is even looked at: no audit record
    # The trusted server's root URL as an earlier version let it be saved, if not ROOT.
    server_root: str | None = None
    outcome: LaunchOutcome | None = None  # the audit record's, when the case says


def refused(change: Callable[[Params], Params], message: str) -> LaunchCase:
    return LaunchCase(change, 400, message)


def untrusted(conf_uri: str) -> LaunchCase:
    return LaunchCase(replace("conf_uri", conf_uri), 403, NOT_TRUSTED, way_back=False)


def bad_discovery(**changes: Any) -> LaunchCase:
    document = {**discovery_document(), **changes}
    document = {k: v for k, v in document.items() if v is not None}
    return LaunchCase(lambda p: p, 502, NOT_UNDERSTOOD, outbound=True, discovery=(200, document))


def forwarded_for(value: str, *, proxies: int = 0, expected: str = "127.0.0.1") -> LaunchCase:
    # The test client's peer is 127.0.0.1; `proxies` is TRUSTED_PROXY_COUNT.
    return LaunchCase(
        lambda p: p,
        302,
        "",
        outbound=True,
        headers={"HTTP_X_FORWARDED_FOR": value},
        settings={"TRUSTED_PROXY_COUNT": proxies},
        remote_addr=expected,
    )


def plain_http(root: str) -> LaunchCase:
    # A server trusted by a plain-http root (saved before that was refused): never called.
    return LaunchCase(
        replace("conf_uri", root + DISCOVERY_PATH),
        403,
        PLAIN_HTTP,
        way_back=False,
        server_root=root,
        outcome=LaunchOutcome.INSECURE_SERVER,
    )


def open_redirect(return_uri: str) -> LaunchCase:
    # A disabled provider shows the error page with the way back, if any is safe.
    return LaunchCase(
        replace("return_uri", return_uri), 403, "disabled", provider_enabled=False, way_back=False
    )


LAUNCH_CASES = {
    # --- missing, duplicated, oversized parameters ---------------------------------
    "missing-code": refused(replace("code"), "“code” is missing"),
    "missing-conf_uri": refused(replace("conf_uri"), "“conf_uri” is missing"),
    "missing-client_id": refused(replace("client_id"), "“client_id” is missing"),
    "missing-studyUID": refused(replace("studyUID"), "“studyUID” is missing"),
    "empty-code": refused(replace("code", ""), "“code” is missing"),
    "no-parameters-at-all": refused(lambda p: [], "“code” is missing"),
    "duplicated-code": refused(
        add(("code", "eyJsecond-code-value")), "“code” appears more than once"
    ),
    "duplicated-conf_uri": refused(
        add(("conf_uri", DISCOVERY_URL)), "“conf_uri” appears more than once"
    ),
    "duplicated-client_id": refused(
        add(("client_id", CLIENT_ID)), "“client_id” appears more than once"
    ),
    "duplicated-return_uri": refused(
        add(("return_uri", RETURN_URI)), "“return_uri” appears more than once"
    ),
    "oversized-code": refused(replace("code", "c" * 9000), "code is not valid"),
    "oversized-conf_uri": refused(
        replace("conf_uri", DISCOVERY_URL + "a" * 3000), "configuration URL is not valid"
    ),
    "oversized-client_id": refused(replace("client_id", "A" * 65), "client_id is not valid"),
    "too-many-studies": refused(
        replace("studyUID", *[f"1.2.{n}" for n in range(51)]), "At most 50 studies"
    ),
    "too-many-parameters": refused(
        add(*[("x", str(n)) for n in range(1100)]), "too many parameters"
    ),
    "oversized-return_uri-is-dropped": LaunchCase(
        replace("return_uri", RETURN_URI + "/" + "r" * 5000), 302, "", outbound=True
    ),
    "code-with-nul": refused(replace("code", "eyJcode\x00injected"), "code is not valid"),
    "code-with-newline": refused(replace("code", "eyJcode\ninjected"), "code is not valid"),
    "code-not-ascii": refused(replace("code", "eyJcodé-value"), "code is not valid"),
    "code-script": refused(replace("code", SCRIPT), "code is not valid"),
    # --- codes not in KHEOPS's shape (a compact JWS): refused before anything is written --
    "code-opaque-random": refused(replace("code", "Zm9vYmFyYmF6cXV4MTIzNDU2"), "code is not valid"),
    "code-two-parts": refused(replace("code", CODE_HEADER + ".e30"), "code is not valid"),
    "code-four-parts": refused(replace("code", CODE_HEADER + ".e30.c2ln.eHg"), "code is not valid"),
    "code-empty-signature": refused(replace("code", CODE_HEADER + ".e30."), "code is not valid"),
    "code-header-not-base64url": refused(replace("code", "e.e30.c2ln"), "code is not valid"),
    "code-header-not-json": refused(replace("code", "bm90IGpzb24.e30.c2ln"), "code is not valid"),
    "code-header-a-list": refused(replace("code", "WyJhbGciXQ.e30.c2ln"), "code is not valid"),
    "code-header-without-alg": refused(
        replace("code", "eyJ0eXAiOiJKV1QifQ.e30.c2ln"), "code is not valid"
    ),
    "code-padded-base64": refused(replace("code", CODE_HEADER + "=.e30.c2ln"), "code is not valid"),
    # --- study values that are not DICOM UIDs ---------------------------------------
    "uid-letters": refused(replace("studyUID", "1.2.abc"), "not a valid DICOM UID"),
    "uid-leading-zero": refused(replace("studyUID", "1.02.3"), "not a valid DICOM UID"),
    "uid-trailing-dot": refused(replace("studyUID", "1.2."), "not a valid DICOM UID"),
    "uid-single-number": refused(replace("studyUID", "12345"), "not a valid DICOM UID"),
    "uid-65-characters": refused(replace("studyUID", "1." + "2" * 63), "not a valid DICOM UID"),
    "uid-trailing-newline": refused(replace("studyUID", STUDY_1 + "\n"), "not a valid DICOM UID"),
    "uid-fullwidth-digits": refused(
        replace("studyUID", "\uff11.\uff12.\uff13"), "not a valid DICOM UID"
    ),
    "uid-script": refused(replace("studyUID", SCRIPT), "not a valid DICOM UID"),
    "uid-sql": refused(replace("studyUID", "1.2' OR '1'='1"), "not a valid DICOM UID"),
    "uid-negative": refused(replace("studyUID", "-1.2"), "not a valid DICOM UID"),
    "uid-empty": refused(replace("studyUID", ""), "not a valid DICOM UID"),
    "uid-with-space": refused(replace("studyUID", " " + STUDY_1), "not a valid DICOM UID"),
    "uid-one-bad-among-good": refused(replace("studyUID", STUDY_1, IMG), "not a valid DICOM UID"),
    "client_id-trailing-newline": refused(
        replace("client_id", CLIENT_ID + "\n"), "client_id is not valid"
    ),
    "client_id-not-ascii": refused(
        replace("client_id", CLIENT_ID[:-1] + "é"), "client_id is not valid"
    ),
    "client_id-script": refused(replace("client_id", SCRIPT), "client_id is not valid"),
    # --- conf_uri: only the exact discovery URL of a trusted server ------------------
    "conf_uri-untrusted-host": untrusted(
        "https://evil.example/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-trusted-host-token-path": untrusted(f"{ROOT}/api/token"),
    "conf_uri-trusted-root-only": untrusted(ROOT),
    "conf_uri-trailing-slash": untrusted(DISCOVERY_URL + "/"),
    "conf_uri-with-query": untrusted(DISCOVERY_URL + "?x=1"),
    "conf_uri-with-fragment": untrusted(DISCOVERY_URL + "#x"),
    "conf_uri-http-downgrade": untrusted(DISCOVERY_URL.replace("https://", "http://")),
    "conf_uri-uppercase-host": untrusted(DISCOVERY_URL.replace("kheops.test", "KHEOPS.TEST")),
    "conf_uri-explicit-443": untrusted(DISCOVERY_URL.replace("kheops.test", "kheops.test:443")),
    "conf_uri-odd-port": untrusted(DISCOVERY_URL.replace("kheops.test", "kheops.test:8443")),
    "conf_uri-userinfo-before-trusted": untrusted(
        DISCOVERY_URL.replace("https://", "https://user:pw@")
    ),
    "conf_uri-trusted-as-userinfo": untrusted(
        "https://kheops.test@evil.example/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-trusted-as-subdomain": untrusted(
        DISCOVERY_URL.replace("kheops.test", "kheops.test.evil.example")
    ),
    "conf_uri-loopback": untrusted(
        "http://127.0.0.1/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-localhost": untrusted(
        "http://localhost:8000/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-ipv6-loopback": untrusted(
        "http://[::1]/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-cloud-metadata": untrusted(
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    ),
    "conf_uri-gcp-metadata": untrusted("http://metadata.google.internal/computeMetadata/v1/"),
    "conf_uri-ipv6-link-local": untrusted(
        "http://[fe80::1%25eth0]/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-decimal-ip": untrusted(
        "http://2130706433/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-idn-homograph": untrusted(DISCOVERY_URL.replace("kheops.test", "kheops.t\u0435st")),
    "conf_uri-punycode": untrusted(DISCOVERY_URL.replace("kheops.test", "xn--kheops-9ua.test")),
    "conf_uri-percent-encoded-host": untrusted(
        DISCOVERY_URL.replace("kheops.test", "kheops%2etest")
    ),
    "conf_uri-percent-encoded-path": untrusted(
        DISCOVERY_URL.replace("/.well-known", "/%2ewell-known")
    ),
    "conf_uri-dot-dot-path": untrusted(
        f"{ROOT}/api/x/../.well-known/report-provider-configuration"
    ),
    "conf_uri-backslash": untrusted(
        "https://kheops.test\\@evil.example/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-scheme-relative": untrusted(
        "//kheops.test/api/.well-known/report-provider-configuration"
    ),
    "conf_uri-file": untrusted("file:///etc/passwd"),
    "conf_uri-javascript": untrusted("javascript:alert(1)"),
    "conf_uri-data": untrusted("data:application/json,{}"),
    "conf_uri-leading-space": untrusted(" " + DISCOVERY_URL),
    "conf_uri-trailing-newline": untrusted(DISCOVERY_URL + "\n"),
    "conf_uri-nul-inside": untrusted(DISCOVERY_URL.replace(".test", ".test\x00.evil.example")),
    "conf_uri-script": untrusted(SCRIPT),
    # --- discovery documents that leave the trusted root ------------------------------
    "discovery-issuer-elsewhere": bad_discovery(issuer="https://evil.example"),
    "discovery-issuer-sub-path": bad_discovery(issuer=f"{ROOT}/evil"),
    "discovery-issuer-missing": bad_discovery(issuer=None),
    "discovery-token-loopback": bad_discovery(token_endpoint="http://127.0.0.1/api/token"),
    "discovery-token-metadata": bad_discovery(
        token_endpoint="http://169.254.169.254/latest/meta-data/"
    ),
    "discovery-token-odd-port": bad_discovery(token_endpoint="https://kheops.test:8443/api/token"),
    "discovery-token-userinfo": bad_discovery(
        token_endpoint="https://user:pw@kheops.test/api/token"
    ),
    "discovery-token-fragment": bad_discovery(token_endpoint=f"{ROOT}/api/token#x"),
    "discovery-token-backslash": bad_discovery(token_endpoint=f"{ROOT}/api\\..\\..\\evil"),
    "discovery-token-encoded-dots": bad_discovery(token_endpoint=f"{ROOT}/api/%2E%2E/%2e%2e/evil"),
    "discovery-token-idn": bad_discovery(token_endpoint="https://kheops.t\u0435st/api/token"),
    "discovery-dicomweb-elsewhere": bad_discovery(dicomweb_endpoint="https://evil.example/api"),
    "discovery-wado-uri-elsewhere": bad_discovery(
        dicomweb_uri_endpoint="https://evil.example/wado"
    ),
    "discovery-userinfo-elsewhere": bad_discovery(
        userinfo_endpoint="https://evil.example/userinfo"
    ),
    "discovery-userinfo-http": bad_discovery(userinfo_endpoint="http://kheops.test/api/userinfo"),
    "discovery-introspection-elsewhere": bad_discovery(
        introspection_endpoint="https://evil.example/i"
    ),
    "discovery-token-http-downgrade": bad_discovery(token_endpoint="http://kheops.test/api/token"),
    # --- a KHEOPS trusted by a plain-http address: codes and tokens would travel in clear --
    "kheops-http": plain_http("http://kheops.test"),
    "kheops-http-odd-port": plain_http("http://kheops.test:8080"),
    "kheops-http-upper-case-scheme": plain_http("HTTP://kheops.test"),
    "kheops-http-private-address": plain_http("http://10.1.2.3"),
    "kheops-http-ipv6-global": plain_http("http://[2001:db8::1]"),
    "kheops-http-unspecified-address": plain_http("http://0.0.0.0:8100"),
    "kheops-http-decimal-loopback": plain_http("http://2130706433"),
    "kheops-http-localhost-as-subdomain": plain_http("http://localhost.evil.example"),
    "kheops-http-loopback-as-subdomain": plain_http("http://127.0.0.1.nip.io"),
    "kheops-http-localhost-with-dot": plain_http("http://localhost."),
    # --- return_uri: the way back must lead into the trusted KHEOPS -------------------
    "return_uri-other-host": open_redirect("https://evil.example/albums/x"),
    "return_uri-javascript": open_redirect("javascript:alert(document.cookie)"),
    "return_uri-data": open_redirect("data:text/html,<script>alert(1)</script>"),
    "return_uri-scheme-relative": open_redirect("//evil.example/albums/x"),
    "return_uri-subdomain-prefix": open_redirect(f"{ROOT}.evil.example/albums/x"),
    "return_uri-trusted-as-userinfo": open_redirect("https://kheops.test@evil.example/albums/x"),
    "return_uri-backslash": open_redirect("https://kheops.test\\evil.example/albums/x"),
    "return_uri-dot-dot": open_redirect(f"{ROOT}/albums/../../%2e%2e/evil"),
    "return_uri-odd-port": open_redirect("https://kheops.test:8443/albums/x"),
    "return_uri-http-downgrade": open_redirect("http://kheops.test/albums/x"),
    "return_uri-newline": open_redirect(RETURN_URI + "\nLocation: https://evil.example"),
    "return_uri-script-in-trusted-path": LaunchCase(
        replace("return_uri", f"{ROOT}/albums/{IMG}{SCRIPT}"),
        403,
        "disabled",
        provider_enabled=False,
        way_back=True,
    ),
    # --- other parameters -----------------------------------------------------------
    "token-parameter-is-ignored": LaunchCase(
        add(("token", "eyJattacker-token-value")), 302, "", outbound=True
    ),
    "unknown-parameters-are-ignored": LaunchCase(
        add(("foo", SCRIPT), (SCRIPT, IMG)), 302, "", outbound=True
    ),
    # --- where the launch comes from: X-Forwarded-For only from our own proxies ----------
    "x-forwarded-for-forged-without-proxy": forwarded_for("6.6.6.6"),
    "x-forwarded-for-forged-left-of-our-proxy": forwarded_for(
        "6.6.6.6, 198.51.100.23", proxies=1, expected="198.51.100.23"
    ),
    "x-forwarded-for-script": forwarded_for(SCRIPT, proxies=1),
    "x-forwarded-for-thousand-hops": forwarded_for(
        ", ".join(["6.6.6.6"] * 1000 + ["198.51.100.23"]), proxies=1, expected="198.51.100.23"
    ),
    "x-forwarded-for-port-and-garbage": forwarded_for(
        "[2001:db8::7]:443, not-an-address", proxies=1
    ),
    # --- floods: over the per-address limit (here 0 a minute: this very launch is over) ---
    "launch-over-the-rate-limit": LaunchCase(
        lambda p: p,
        429,
        "Too many viewers were opened from your network address",
        settings={"LAUNCH_RATE_LIMIT": (0, 60)},
        way_back=True,
    ),
    "launch-over-the-rate-limit-forged-address": LaunchCase(
        lambda p: p,
        429,
        "Too many viewers were opened",
        headers={"HTTP_X_FORWARDED_FOR": "198.51.100.99"},
        settings={"LAUNCH_RATE_LIMIT": (0, 60)},
        remote_addr="127.0.0.1",
    ),
    # --- the admin's own host name (ADMIN_HOSTS) runs no viewer: a link to a launch there
    # would have OHIF run beside the admin's session ----------------------------------------
    "launch-on-the-admin-host": LaunchCase(
        lambda p: p,
        404,
        "",
        headers={"HTTP_HOST": "admin.viewer.test"},
        settings={
            "PUBLIC_HOST": "testserver",
            "ALLOWED_HOSTS": ["testserver", "admin.viewer.test"],
            "ADMIN_HOSTS": ["admin.viewer.test"],
        },
        audited=False,
    ),
}


@pytest.mark.parametrize(("case"), [pytest.param(c, id=name) for name, c in LAUNCH_CASES.items()])
def test_hostile_launch(
    client: Client, fake_kheops: FakeKheops, provider, settings, case: LaunchCase
) -> None:
    for name, value in case.settings.items():
        setattr(settings, name, value)
    if not case.provider_enabled:
        provider.enabled = False
        provider.save()
    if case.server_root is not None:
        KheopsServer.objects.update(root_url=case.server_root)  # no validation: saved earlier
        services.forget_lookups()
    fake_kheops.discovery_answer = case.discovery
    params = case.change(base_params(fake_kheops.new_code()))

    response = client.get(f"/providers/ohif/launch?{urlencode(params)}", **case.headers)

    assert response.status_code == case.status, response.content[:300]
    page = response.content.decode()
    if case.status == 302:
        assert urlsplit(response["Location"]).path.endswith("/viewer")
        assert "token" not in response["Location"] and "code" not in response["Location"]
        assert fake_kheops.token_requests == []  # the exchange waits for the viewer
        # The viewer's token request exchanges this launch's code, and only it.
        token = client.get(token_url_of(response["Location"]))
        assert token.status_code == 200, token.content[:300]
        assert token.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[-1]}"
        [exchange] = fake_kheops.token_requests
        assert dict(exchange.form)["code"] == dict(params)["code"]
        assert LaunchRecord.objects.get().outcome == LaunchOutcome.SUCCESS
    elif case.audited:
        assert CANNOT_OPEN in page
        assert escape(case.message) in page
        assert "no-store" in response["Cache-Control"]
    if case.way_back is not None:
        assert ("Back to KHEOPS" in page) is case.way_back
    assert_nothing_raw_echoed(page, params)
    calls = [str(call.request.url) for call in fake_kheops.router.calls]
    if case.outbound:
        assert calls and all(url.startswith(ROOT + "/api/") for url in calls), calls
    else:
        assert calls == []
    # Every attempt leaves exactly one audit record (none if refused before it is looked at).
    assert LaunchRecord.objects.count() == (1 if case.audited else 0)
    if case.remote_addr is not None:
        assert LaunchRecord.objects.get().remote_addr == case.remote_addr
    if case.outcome is not None:
        assert LaunchRecord.objects.get().outcome == case.outcome


def assert_nothing_raw_echoed(page: str, params: Params) -> None:
    for name, value in params:
        for text in (name, value):
            if "<" in text or '"' in text:
                assert text not in page, f"{text!r} echoed unescaped"


def test_the_matrix_has_at_least_sixty_launch_cases() -> None:
    assert len(LAUNCH_CASES) >= 60


# --- methods, providers, cookies ------------------------------------------------------


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch", "head", "options"])
def test_a_launch_accepts_only_get(client: Client, fake_kheops: FakeKheops, method: str) -> None:
    response = getattr(client, method)(fake_kheops.launch_url())

    assert response.status_code == 405
    assert len(fake_kheops.router.calls) == 0


@pytest.mark.parametrize("slug", ["nope", "OHIF", "ohif-", "a" * 200])
def test_a_launch_for_a_provider_that_is_not_ours_is_a_404_page(
    client: Client, fake_kheops: FakeKheops, slug: str
) -> None:
    response = client.get(fake_kheops.launch_url(slug=slug))

    assert response.status_code == 404
    assert "not one of ours" in response.content.decode()
    assert len(fake_kheops.router.calls) == 0
    assert LaunchRecord.objects.get().outcome == LaunchOutcome.UNKNOWN_PROVIDER


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param("junk=" + "x" * 100_000, id="huge-unrelated-cookie"),
        pytest.param("kheops_ohif_session=" + "s" * 60_000, id="huge-session-cookie"),
        pytest.param("kheops_ohif_session=../../etc/passwd", id="path-as-session-key"),
        pytest.param("kheops_ohif_session=" + SCRIPT, id="script-as-session-key"),
        pytest.param("; ".join(f"c{n}=v" for n in range(3000)), id="thousands-of-cookies"),
    ],
)
def test_hostile_cookies_do_not_break_a_launch(
    client: Client, fake_kheops: FakeKheops, cookie: str
) -> None:
    response = client.get(fake_kheops.launch_url(), HTTP_COOKIE=cookie)

    assert response.status_code == 302
    viewer = client.get(response["Location"])
    assert viewer.status_code == 200
    # The token request, with the hostile cookies sent along with this launch's own.
    ours = "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())
    token = client.get(token_url_of(response["Location"]), HTTP_COOKIE=f"{cookie}; {ours}")
    assert token.status_code == 200, token.content[:300]
    assert token.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[0]}"
    assert LaunchGrant.objects.count() == 1


# --- viewer routes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        pytest.param(
            "/launches/NotOurs123/viewer",
            403,
            "belongs to another browser session",
            id="unknown-launch-id",
        ),
        pytest.param(
            "/launches/NotOurs123/",
            403,
            "belongs to another browser session",
            id="unknown-launch-root",
        ),
        pytest.param(
            "/launches/%3Cscript%3Ealert(1)%3C%2Fscript%3E/viewer",
            403,
            "belongs to another",
            id="script-launch-id",
        ),
        pytest.param(
            "/launches/" + "L" * 5000 + "/viewer", 403, "belongs to another", id="huge-launch-id"
        ),
        pytest.param("/launches/x/viewer/app.bundle.js", 404, "", id="asset-path-under-launch"),
        pytest.param(
            "/launches/x/..%2F..%2Fadmin%2F", 403, "belongs to another", id="encoded-traversal"
        ),
    ],
)
def test_viewer_routes_without_a_grant(
    client: Client, db: None, path: str, status: int, message: str
) -> None:
    response = client.get(path)

    assert response.status_code == status
    page = response.content.decode()
    if status == 403:
        assert CANNOT_OPEN in page and message in page
    assert "<script>alert" not in page


@pytest.mark.parametrize(
    "launch_id",
    [
        pytest.param("NotOurs123", id="unknown-launch-id"),
        pytest.param("%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E", id="markup-launch-id"),
        pytest.param("L" * 5000, id="huge-launch-id"),
    ],
)
def test_the_token_of_a_launch_that_is_not_ours_is_a_403(
    client: Client, fake_kheops: FakeKheops, launch_id: str
) -> None:
    response = client.get(f"/launches/{launch_id}/token")

    assert response.status_code == 403
    assert response["Content-Type"].startswith("application/json")
    assert "belongs to another browser session" in response.json()["error"]
    assert "<img" not in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert len(fake_kheops.router.calls) == 0


def test_the_viewer_of_a_launch_that_is_not_ours_is_a_403_page_without_launch_data(
    client: Client, db: None
) -> None:
    response = client.get("/launches/NotOurs123/viewer")

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert "kheops-ohif-launch" not in response.content.decode()
    assert "Bearer" not in response.content.decode()


@pytest.mark.parametrize("exchanged", [False, True], ids=["pending", "ready"])
@pytest.mark.parametrize("stranger_cookie", ["none", "forged", "another-launchs-key"])
def test_another_sessions_launch_id_gets_nothing(
    client: Client,
    launched: Callable[..., str],
    fake_kheops: FakeKheops,
    exchanged: bool,
    stranger_cookie: str,
) -> None:
    location = launched(exchange=exchanged)
    launch_id = urlsplit(location).path.split("/")[2]
    token_url = token_url_of(location)
    stranger = Client()
    if stranger_cookie != "none":
        key = "k" * 43  # the shape of a browser key, but not this launch's
        if stranger_cookie == "another-launchs-key":
            # A browser with a launch of its own presents that launch's key for this one.
            own = stranger.get(fake_kheops.launch_url())
            assert own.status_code == 302
            own_id = urlsplit(own["Location"]).path.split("/")[2]
            key = stranger.cookies[f"kheops_ohif_grant_{own_id}"].value
        stranger.cookies[f"kheops_ohif_grant_{launch_id}"] = key
    exchanges = len(fake_kheops.token_requests)

    page = stranger.get(location)
    assert page.status_code == 403
    assert "kheops-ohif-launch" not in page.content.decode()
    token = stranger.get(token_url)
    assert token.status_code == 403
    assert "belongs to another browser session" in token.json()["error"]
    assert "authorization" not in token.json()
    assert "no-store" in token["Cache-Control"]
    # No exchange for the stranger, and nothing of the owner's grant changed.
    assert len(fake_kheops.token_requests) == exchanges
    grant = LaunchGrant.objects.get(launch_id=launch_id)
    assert grant.state == (GrantState.READY if exchanged else GrantState.PENDING)
    for body in (page.content.decode(), token.content.decode()):
        assert "Bearer" not in body
        for secret in fake_kheops.issued_tokens:
            assert secret not in body
    # The owner's viewer still gets its token: the stranger neither used nor spoiled the code.
    mine = client.get(token_url)
    assert mine.status_code == 200
    assert mine.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[0]}"
    assert len(fake_kheops.token_requests) == exchanges + (0 if exchanged else 1)


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        pytest.param("token=eyJattacker", "", id="token"),
        pytest.param("TOKEN=eyJattacker", "", id="upper-case"),
        pytest.param(
            "tOkEn=eyJattacker&StudyInstanceUIDs=1.2.3",
            "?StudyInstanceUIDs=1.2.3",
            id="mixed-case-with-study",
        ),
        pytest.param("token=a&token=b&Token=c", "", id="repeated"),
        pytest.param("%74oken=eyJattacker", "", id="percent-encoded-name"),
    ],
)
def test_a_token_parameter_never_reaches_ohif(
    client: Client, launched: Callable[..., str], query: str, kept: str
) -> None:
    path = urlsplit(launched()).path

    response = client.get(f"{path}?{query}")

    # The same viewer URL less every token parameter, the rest kept as it was.
    assert response.status_code == 302
    assert response["Location"] == path + kept
    viewer = client.get(response["Location"])
    assert viewer.status_code == 200
    assert '<div id="root">' in viewer.content.decode()


def test_a_token_parameter_on_the_launch_does_not_replace_ours(
    client: Client, fake_kheops: FakeKheops
) -> None:
    response = client.get(fake_kheops.launch_url() + "&token=eyJattacker-token-value")
    assert response.status_code == 302
    assert "eyJattacker" not in response["Location"]
    page = client.get(response["Location"]).content.decode()
    assert "eyJattacker" not in page
    # The token the viewer gets: from the URL its launch data names.
    [data] = re.findall(
        r'<script id="kheops-ohif-launch" type="application/json">(.*?)</script>', page, re.S
    )
    token_url = json.loads(data)["tokenUrl"]
    assert token_url == token_url_of(response["Location"])

    token = client.get(token_url)

    assert token.status_code == 200
    assert token.json()["authorization"] == f"Bearer {fake_kheops.issued_tokens[0]}"
    assert "eyJattacker" not in token.content.decode()
    [exchange] = fake_kheops.token_requests
    assert "eyJattacker" not in repr(exchange.form)


# --- the leak check itself -------------------------------------------------------------


def test_the_leak_check_finds_a_secret_in_a_log_a_header_a_page_or_a_row(db: None) -> None:
    check = leakcheck.LeakCheck()
    token = "eyJtoken.Zx81kQ0pLm3vNb7yT2wR"
    check.register(token, "KHEOPS access token")
    check.register("aaaaaaaaaaaaaaaaaaaa", "not random enough to be a secret")
    check.see("log record", f"exchange done with {token}")
    check.see("header Location", "/launches/x/viewer")
    check.see("page", "aaaaaaaaaaaaaaaaaaaaaaaa")
    Session.objects.create(
        session_key="k" * 32,
        session_data=Session.objects.encode({"t": token}),
        expire_date="2999-01-01T00:00Z",
    )

    leaks = check.scan(leakcheck.stored_rows())

    assert sorted(leak.where for leak in leaks) == ["decoded django_session row", "log record"]
    assert all(leak.secret_kind == "KHEOPS access token" for leak in leaks)
