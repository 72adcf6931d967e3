"""No error report carries a secret: Django's technical 500 page (DEBUG) and the report an
error e-mail would send (ExceptionReporter) show no code, assertion, token, key or password.

The functions that hold one are marked with `sensitive_variables`; the views that receive
one in a form with `sensitive_post_parameters`; launcher.reporting hides what Django's own
filter shows of the request (its URL and query string, the grant cookie). Each test raises
an unexpected exception *inside* those functions, with real secrets in their locals.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.views.debug import get_exception_reporter_class, get_exception_reporter_filter

from launcher import keys, kheops, sealing
from launcher.models import SigningKey
from tests.fakes import DISCOVERY_URL, TOKEN_URL, FakeKheops, token_url_of
from tests.test_plain_http_kheops import run

HIDDEN = "********************"


@pytest.fixture
def debug_client(settings: Any) -> Client:
    """A browser on a DEBUG server: errors are answered with Django's technical 500 page."""
    settings.DEBUG = True
    return Client(raise_request_exception=False)


def reports(request: Any = None) -> str:
    """The text and HTML reports of the exception being handled."""
    reporter = get_exception_reporter_class(request)(request, *sys.exc_info())
    return reporter.get_traceback_text() + reporter.get_traceback_html()


# The secrets a test passes to the code under test. Kept here, not in the test's locals or a
# closure: the report shows every frame of the traceback (the test's `call` too), and
# marking those frames sensitive would hide the frames below them as well.
SECRETS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    SECRETS.clear()


def report_of(call: Callable[[], Any], expected: type[Exception]) -> str:
    """The reports of the exception `call` raises (it must raise `expected`)."""
    try:
        call()
    except expected:
        return reports()
    raise AssertionError(f"{expected.__name__} was not raised")


def test_the_debug_page_of_a_failed_exchange_shows_no_code_assertion_or_browser_key(
    debug_client: Client, fake_kheops: FakeKheops, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed: list[str] = []
    sign = keys.client_assertion

    def signing(**kwargs: Any) -> str:
        signed.append(sign(**kwargs))
        return signed[-1]

    monkeypatch.setattr(keys, "client_assertion", signing)
    launch = debug_client.get(fake_kheops.launch_url())
    assert launch.status_code == 302
    [browser_key] = [m.value for n, m in debug_client.cookies.items() if "grant" in n]
    # Raised by the HTTP layer (not by the fake, whose own frames hold what it received).
    fake_kheops.router.post(TOKEN_URL).mock(side_effect=RuntimeError("unforeseen"))

    page = debug_client.get(token_url_of(launch["Location"]))

    assert page.status_code == 500
    text = page.content.decode()
    assert "RuntimeError" in text and "exchange_code" in text  # the technical page, with frames
    assert HIDDEN in text
    [code] = fake_kheops.secrets_seen
    [assertion] = signed
    for secret in (code, assertion, browser_key):
        assert secret not in text


def test_the_debug_page_of_a_failed_launch_shows_no_code(
    debug_client: Client, fake_kheops: FakeKheops
) -> None:
    fake_kheops.router.get(DISCOVERY_URL).mock(side_effect=RuntimeError("unforeseen"))
    url = fake_kheops.launch_url()

    page = debug_client.get(url)

    assert page.status_code == 500
    text = page.content.decode()
    assert "RuntimeError" in text and "code=[redacted]" in text  # the URL, the query string
    [code] = fake_kheops.secrets_seen
    assert code not in text


def test_an_error_report_hides_the_code_and_assertion_in_the_exchange(
    kheops_http: respx.MockRouter,
) -> None:
    # DEBUG off, as in production: what an error e-mail would carry.
    kheops_http.post(TOKEN_URL).mock(side_effect=RuntimeError("unforeseen"))
    SECRETS["code"] = "eyJcode." + secrets.token_urlsafe(24)
    SECRETS["assertion"] = "eyJassertion." + secrets.token_urlsafe(48)

    report = report_of(
        lambda: run(
            kheops.exchange_code(
                kheops.Client(timeout=1),
                TOKEN_URL,
                code=SECRETS["code"],
                client_id="Q9ZTMv3fW7ta0Npg1caGMF",
                redirect_uri="https://viewer.example.org/providers/ohif/launch",
                client_assertion=SECRETS["assertion"],
            )
        ),
        RuntimeError,
    )

    assert "_send_once_more_if_dropped" in report and "exchange_code" in report
    assert SECRETS["code"] not in report and SECRETS["assertion"] not in report


def test_an_error_report_hides_the_access_token_sent_for_userinfo(
    kheops_http: respx.MockRouter,
) -> None:
    kheops_http.get("https://kheops.test/api/userinfo").mock(side_effect=RuntimeError("x"))
    SECRETS["token"] = "eyJtoken." + secrets.token_urlsafe(32)

    report = report_of(
        lambda: run(
            kheops.fetch_userinfo(
                kheops.Client(timeout=1),
                "https://kheops.test/api/userinfo",
                access_token=SECRETS["token"],
            )
        ),
        RuntimeError,
    )

    assert "fetch_userinfo" in report
    assert SECRETS["token"] not in report


def test_an_error_report_hides_the_private_key_being_loaded(db: None) -> None:
    # A private key that does not load: the exception is raised with it in a local.
    line = secrets.token_urlsafe(48)
    pem = f"-----BEGIN PRIVATE KEY-----\n{line}\n-----END PRIVATE KEY-----\n"
    SigningKey.objects.create(
        kid="broken-key",
        public_jwk={},
        sealed_private_key=sealing.seal(pem, purpose=keys.SEALING_PURPOSE),
    )

    # Called directly: the test set-up wraps client_assertion (tests/leakcheck.py).
    report = report_of(lambda: keys._loaded_signing_key(time.time()), ValueError)

    assert "_loaded_signing_key" in report and "<td>pem</td>" in report
    assert line not in report


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEALING_KEY", "a-sealing-key-" + "s" * 40),
        ("SEALING_KEY_FALLBACKS", ["an-old-sealing-key-" + "o" * 40]),
        ("REDIS_URL", "redis://:a-redis-password@cache.internal:6379/0"),
    ],
)
def test_error_reports_hide_secret_settings(settings: Any, name: str, value: Any) -> None:
    setattr(settings, name, value)

    shown = get_exception_reporter_filter(None).get_safe_settings()[name]

    assert shown == HIDDEN


def test_the_admin_login_hides_the_password(client: Client, db: None) -> None:
    # Django's own login view marks it; this checks it stays so.
    response = client.post("/admin/login/", {"username": "admin", "password": "Pw-4-a-report"})

    request = response.wsgi_request
    assert get_exception_reporter_filter(request).get_post_parameters(request)["password"] == (
        HIDDEN
    )


def test_the_api_client_form_hides_the_client_secret(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/oauth2_provider/application/add/",
        {"name": "PACS audit", "client_id": "abc123", "client_secret": "Client-secret-4-a-report"},
    )

    request = response.wsgi_request
    cleansed = get_exception_reporter_filter(request).get_post_parameters(request)
    assert cleansed["client_secret"] == HIDDEN
    assert cleansed["name"] == "PACS audit"


def report_while_handling(request: Any) -> str:
    """The reports of an exception raised while `request` (a local here) was handled."""
    try:
        raise RuntimeError("unforeseen")
    except RuntimeError:
        return reports(request)


def test_a_request_in_a_report_shows_neither_the_code_nor_the_grant_cookie() -> None:
    # Made up here, not written in this file: the report quotes the source around each frame.
    code, browser_key = "eyJcode." + secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    request = RequestFactory().get(
        "/providers/ohif/launch",
        {"code": code, "conf_uri": "https://kheops.test/x"},
        HTTP_COOKIE=f"kheops_ohif_grant_L1={browser_key}",
    )
    request.user = User()

    report = report_while_handling(request)

    assert code not in report and browser_key not in report
    assert "conf_uri" in report  # the rest of the request is still there to debug with


def test_kheops_client_errors_carry_no_secret_in_their_message() -> None:
    # What an error report always shows is the exception's text: ours name hosts only.
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": "x"}))
    client = kheops.Client(timeout=1, transport=transport)
    code = "eyJcode." + secrets.token_urlsafe(24)

    with pytest.raises(kheops.KheopsRejected) as refused:
        run(
            kheops.exchange_code(
                client,
                TOKEN_URL,
                code=code,
                client_id="Q9ZTMv3fW7ta0Npg1caGMF",
                redirect_uri="https://viewer.example.org/providers/ohif/launch",
                client_assertion="eyJassertion." + secrets.token_urlsafe(48),
            )
        )

    assert code not in str(refused.value)
