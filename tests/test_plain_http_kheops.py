"""No launch code, client assertion or KHEOPS token crosses the network in clear.

A KHEOPS server is trusted by an https root URL, or plain http on this machine only
(localhost, 127.0.0.1, ::1: the stand-in, the demo). Refused where a server is saved (the
model, the admin, trust_kheops), before every call (a server saved earlier over plain http
is never contacted) and in the discovery document's endpoints; listed by a system check.
ALLOW_INSECURE_HTTP_KHEOPS lifts the refusal, for test labs. The named launch attacks with a
plain-http KHEOPS are in test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
import respx
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from launcher import checks, kheops, services
from launcher.models import (
    GrantState,
    KheopsServer,
    LaunchGrant,
    LaunchOutcome,
    LaunchRecord,
    validate_root_url,
)
from tests.fakes import FakeKheops, token_url_of

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    # A thread of its own: after the browser tests, this one has Playwright's event loop.
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


LOOPBACK_ROOTS = [
    "http://localhost:8100",
    "http://127.0.0.1:8100",
    "http://127.8.9.10",
    "http://[::1]:8100",
    "https://kheops.example.org",
]
PLAIN_HTTP_ROOTS = [
    "http://kheops.example.org",
    "http://10.0.0.5:8080",
    "http://0.0.0.0:8100",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io",
    "http://[2001:db8::1]",
]


@pytest.mark.parametrize("root", LOOPBACK_ROOTS)
def test_https_and_plain_http_on_this_machine_are_valid_roots(root: str) -> None:
    validate_root_url(root)


@pytest.mark.parametrize("root", PLAIN_HTTP_ROOTS)
def test_plain_http_to_another_machine_is_not_a_valid_root(root: str) -> None:
    with pytest.raises(ValidationError, match="Use the https address"):
        validate_root_url(root)


@pytest.mark.parametrize("root", PLAIN_HTTP_ROOTS)
def test_allow_insecure_http_kheops_lets_a_test_lab_use_plain_http(
    settings: Any, root: str
) -> None:
    settings.ALLOW_INSECURE_HTTP_KHEOPS = True

    validate_root_url(root)


def test_trust_kheops_refuses_plain_http_to_another_machine(db: None) -> None:
    with pytest.raises(CommandError, match="Use the https address of this KHEOPS server"):
        call_command("trust_kheops", "http://kheops.example.org", "--name", "Clear")

    assert KheopsServer.objects.count() == 0
    call_command("trust_kheops", "http://localhost:8100", "--name", "Stand-in")
    assert KheopsServer.objects.get().root_url == "http://localhost:8100"


def test_the_admin_refuses_plain_http_with_a_clear_message(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/launcher/kheopsserver/add/",
        {"name": "Clear", "root_url": "http://kheops.example.org", "enabled": "on"},
    )

    assert response.status_code == 200  # the form again, with the error
    page = response.content.decode()
    assert "Use the https address of this KHEOPS server" in page
    assert "cross the network in clear" in page
    assert KheopsServer.objects.count() == 0


def test_a_pending_launch_is_not_exchanged_once_its_server_is_plain_http(
    client: Client,
    fake_kheops: FakeKheops,
    launched: Callable[..., str],
    kheops_server: KheopsServer,
) -> None:
    viewer = launched(exchange=False)
    # Changed behind the admin's back (a script, an old version): refused before any call.
    KheopsServer.objects.filter(pk=kheops_server.pk).update(root_url="http://kheops.test")
    services.forget_lookups()
    calls = len(fake_kheops.router.calls)

    token = client.get(token_url_of(viewer))

    assert token.status_code == 403
    assert token.json()["error"] == (
        "This viewer does not talk to this KHEOPS server over plain http."
    )
    assert "https address" in token.json()["advice"]
    assert len(fake_kheops.router.calls) == calls  # neither discovery nor the code exchange
    assert fake_kheops.token_requests == []
    record = LaunchRecord.objects.get()
    assert record.outcome == LaunchOutcome.INSECURE_SERVER
    assert "plain http" in record.failure_detail
    assert LaunchGrant.objects.get().state == GrantState.FAILED
    page = client.get(viewer)
    assert page.status_code == 403
    assert "over plain http" in page.content.decode()


# --- the one module that talks to KHEOPS refuses before sending ---------------------------


def exchange(client: kheops.Client, token_endpoint: str) -> kheops.TokenGrant:
    return run(
        kheops.exchange_code(
            client,
            token_endpoint,
            code="eyJcode.must-not-travel-in-clear",
            client_id="Q9ZTMv3fW7ta0Npg1caGMF",
            redirect_uri="https://viewer.example.org/providers/ohif/launch",
            client_assertion="eyJassertion.must-not-travel-in-clear",
        )
    )


def test_no_code_or_assertion_is_sent_over_plain_http_to_another_machine(
    kheops_http: respx.MockRouter,
) -> None:
    route = kheops_http.post("http://kheops.example.org/api/token").respond(
        json={"access_token": "eyJtoken.x", "expires_in": 3600}
    )

    with pytest.raises(kheops.KheopsInsecure, match="plain http"):
        exchange(kheops.Client(timeout=1), "http://kheops.example.org/api/token")

    assert not route.called


def test_no_token_is_sent_over_plain_http_to_another_machine(
    kheops_http: respx.MockRouter,
) -> None:
    route = kheops_http.get("http://kheops.example.org/api/userinfo").respond(json={"sub": "u"})

    with pytest.raises(kheops.KheopsInsecure):
        run(
            kheops.fetch_userinfo(
                kheops.Client(timeout=1),
                "http://kheops.example.org/api/userinfo",
                access_token="eyJtoken.must-not-travel-in-clear",
            )
        )

    assert not route.called


def test_plain_http_on_this_machine_and_with_the_escape_hatch_is_sent(
    kheops_http: respx.MockRouter,
) -> None:
    kheops_http.post(url__regex=r"^http://[^/]+/api/token$").mock(
        return_value=httpx.Response(200, json={"access_token": "eyJtoken.ok", "expires_in": 60})
    )

    assert exchange(kheops.Client(timeout=1), "http://127.0.0.1:8100/api/token").expires_in == 60
    lab = kheops.Client(timeout=1, allow_plain_http=True)
    assert exchange(lab, "http://kheops.lab/api/token").expires_in == 60


def test_the_servers_client_follows_the_escape_hatch(settings: Any) -> None:
    async def allows() -> bool:
        allowed = services.kheops_client().allow_plain_http
        await services.close_kheops_client()
        return allowed

    assert run(allows()) is False
    settings.ALLOW_INSECURE_HTTP_KHEOPS = True
    assert run(allows()) is True


@pytest.mark.parametrize("name", ["token_endpoint", "userinfo_endpoint", "dicomweb_endpoint"])
def test_a_discovery_document_naming_a_plain_http_endpoint_is_refused(
    kheops_http: respx.MockRouter, name: str
) -> None:
    root = "https://kheops.example.org"
    document = {
        "issuer": root,
        "token_endpoint": f"{root}/api/token",
        "dicomweb_endpoint": f"{root}/api",
        name: f"http://kheops.example.org/api/{name}",
    }
    kheops_http.get(f"{root}/api/.well-known/report-provider-configuration").respond(json=document)

    with pytest.raises(kheops.KheopsError, match=name):
        run(
            kheops.fetch_discovery(
                kheops.Client(timeout=1),
                f"{root}/api/.well-known/report-provider-configuration",
                root=root,
            )
        )


def test_the_discovery_document_of_a_kheops_on_this_machine_may_use_plain_http(
    kheops_http: respx.MockRouter,
) -> None:
    root = "http://localhost:8100"
    kheops_http.get(f"{root}/api/.well-known/report-provider-configuration").respond(
        json={
            "issuer": root,
            "token_endpoint": f"{root}/api/token",
            "dicomweb_endpoint": f"{root}/api",
            "userinfo_endpoint": f"{root}/api/userinfo",
        }
    )

    discovery = run(
        kheops.fetch_discovery(
            kheops.Client(timeout=1),
            f"{root}/api/.well-known/report-provider-configuration",
            root=root,
        )
    )

    assert discovery.userinfo_endpoint == f"{root}/api/userinfo"


# --- the system checks --------------------------------------------------------------------


def test_a_system_check_lists_servers_trusted_over_plain_http(db: None, settings: Any) -> None:
    KheopsServer.objects.create(name="Stand-in", root_url="http://localhost:8100")
    KheopsServer.objects.create(name="Secure", root_url="https://kheops.example.org")
    clear = KheopsServer.objects.create(name="Old lab", root_url="https://lab.example.org")
    KheopsServer.objects.filter(pk=clear.pk).update(root_url="http://lab.example.org")

    assert checks.check_kheops_servers_use_https(None) == []  # no database named: not asked
    [warning] = checks.check_kheops_servers_use_https(None, databases=["default"])

    assert warning.id == "launcher.W014"
    assert warning.msg == (
        "Trusted KHEOPS servers over plain http to another machine: their launches are "
        "refused: Old lab (http://lab.example.org)."
    )
    assert "https address" in warning.hint


def test_a_system_check_warns_while_the_escape_hatch_is_on(db: None, settings: Any) -> None:
    settings.ALLOW_INSECURE_HTTP_KHEOPS = True
    KheopsServer.objects.create(name="Lab", root_url="http://lab.example.org")

    hatch, servers = checks.check_kheops_servers_use_https(None, databases=["default"])

    assert hatch.id == "launcher.W015"
    assert "test lab only" in hatch.hint
    assert servers.id == "launcher.W014"
    assert "refused" not in servers.msg
    assert "Lab (http://lab.example.org)" in servers.msg
