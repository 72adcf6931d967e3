"""Where a request comes from (launcher.clientaddr): the one place that decides it.

X-Forwarded-For is trusted only from TRUSTED_PROXY_COUNT proxies; by default not at all.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from django.test import Client

from devstack import gunicorn_command, uvicorn_command
from launcher import clientaddr
from launcher.models import LaunchRecord
from tests.fakes import FakeKheops

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded_for", "expected"),
    [
        pytest.param(0, "10.0.0.5", None, "10.0.0.5", id="no-proxy-no-header"),
        pytest.param(0, "10.0.0.5", "6.6.6.6", "10.0.0.5", id="no-proxy-header-ignored"),
        pytest.param(0, "127.0.0.1", "6.6.6.6", "127.0.0.1", id="loopback-peer-not-trusted"),
        pytest.param(1, "10.0.0.5", "203.0.113.7", "203.0.113.7", id="one-proxy"),
        pytest.param(
            1, "10.0.0.5", "6.6.6.6, 203.0.113.7", "203.0.113.7", id="one-proxy-forged-left"
        ),
        pytest.param(1, "10.0.0.5", "6.6.6.6,7.7.7.7,203.0.113.7", "203.0.113.7", id="no-spaces"),
        pytest.param(
            2, "10.0.0.5", "6.6.6.6, 203.0.113.7, 10.0.0.9", "203.0.113.7", id="two-proxies"
        ),
        pytest.param(
            2, "10.0.0.5", "203.0.113.7", "203.0.113.7", id="fewer-hops-than-proxies-leftmost"
        ),
        pytest.param(1, "10.0.0.5", None, "10.0.0.5", id="proxy-but-no-header-peer"),
        pytest.param(1, "10.0.0.5", "", "10.0.0.5", id="empty-header-peer"),
        pytest.param(1, "10.0.0.5", " , ", "10.0.0.5", id="only-commas-peer"),
        pytest.param(1, "10.0.0.5", "unknown", "10.0.0.5", id="not-an-address-peer"),
        pytest.param(1, "10.0.0.5", "<script>", "10.0.0.5", id="markup-peer"),
        pytest.param(1, "10.0.0.5", "203.0.113.7:51234", "203.0.113.7", id="ipv4-with-port"),
        pytest.param(
            1, "10.0.0.5", "[2001:db8::1]:443", "2001:db8::1", id="bracketed-ipv6-with-port"
        ),
        pytest.param(1, "10.0.0.5", "2001:0db8:0:0::0001", "2001:db8::1", id="ipv6-normalised"),
        pytest.param(0, "::ffff:192.0.2.1", None, "192.0.2.1", id="ipv4-mapped-peer"),
        pytest.param(0, None, "6.6.6.6", None, id="no-peer"),
        pytest.param(0, "not-an-ip", None, None, id="garbage-peer"),
    ],
)
def test_the_client_address_trusts_only_the_configured_proxies(
    trusted: int, peer: str | None, forwarded_for: str | None, expected: str | None
) -> None:
    assert (
        clientaddr.decide(peer=peer, forwarded_for=forwarded_for, trusted_proxies=trusted)
        == expected
    )


def test_a_forged_x_forwarded_for_does_not_change_the_audits_from_where(
    client: Client, fake_kheops: FakeKheops
) -> None:
    response = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="6.6.6.6")

    assert response.status_code == 302
    assert LaunchRecord.objects.get().remote_addr == "127.0.0.1"


def test_behind_one_proxy_the_audit_has_the_browsers_address(
    client: Client, fake_kheops: FakeKheops, settings
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1

    response = client.get(
        fake_kheops.launch_url(),
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.23",
        REMOTE_ADDR="10.1.2.3",
    )

    assert response.status_code == 302
    assert LaunchRecord.objects.get().remote_addr == "198.51.100.23"


def test_nothing_in_launcher_reads_remote_addr_but_clientaddr() -> None:
    readers = [
        str(path.relative_to(REPO))
        for path in (REPO / "launcher").rglob("*.py")
        if "REMOTE_ADDR" in path.read_text() and path.name != "clientaddr.py"
    ]
    assert readers == []


# Where we start uvicorn (or tell how to): each must stop uvicorn from taking the client's
# address and scheme from X-Forwarded-* itself (its default for requests from 127.0.0.1).


def test_the_uvicorn_command_of_the_demo_tests_and_benchmarks_turns_proxy_headers_off() -> None:
    command = uvicorn_command("kheops_ohif.asgi:application", port=8000, workers=2)
    assert "--no-proxy-headers" in command


@pytest.mark.parametrize("path", ["scripts/demo.py", "bench/_stack.py"])
def test_the_demo_and_the_benchmarks_start_uvicorn_with_that_command(path: str) -> None:
    text = (REPO / path).read_text()
    assert "uvicorn_command(" in text
    assert "-m uvicorn" not in text and '"uvicorn"' not in text  # no command of their own


def test_the_wsgi_baseline_does_not_trust_forwarded_headers_either() -> None:
    # gunicorn's equivalent: it takes the scheme from X-Forwarded-Proto for 127.0.0.1.
    command = gunicorn_command("kheops_ohif.wsgi", port=8000, workers=2, threads=4)
    at = command.index("--forwarded-allow-ips")
    assert command[at + 1] == ""


def test_the_readme_production_command_turns_proxy_headers_off() -> None:
    readme = (REPO / "README.md").read_text()
    [command] = [
        line for line in readme.splitlines() if line.startswith("uvicorn kheops_ohif.asgi")
    ]
    assert "--no-proxy-headers" in shlex.split(command)
    # The same bounded HTTP parser as devstack's command (launcher.httpserver).
    at = shlex.split(command).index("--http")
    assert shlex.split(command)[at + 1] == "launcher.httpserver:HttpToolsProtocol"
    assert "launcher.httpserver:HttpToolsProtocol" in uvicorn_command(
        "kheops_ohif.asgi:application", port=8000, workers=2
    )


def test_the_container_image_serves_with_proxy_headers_off_and_the_bounded_parser() -> None:
    entrypoint = (REPO / "deploy" / "entrypoint.sh").read_text()
    [start, *_] = [line for line in entrypoint.splitlines() if "exec uvicorn" in line]
    at = entrypoint.index(start)
    command = shlex.split(entrypoint[at : entrypoint.index(";;", at)].replace("\\\n", " "))
    assert "--no-proxy-headers" in command
    assert command[command.index("--http") + 1] == "launcher.httpserver:HttpToolsProtocol"
