"""Discovery document, CORS, fault injection and the adjustable clock."""

from __future__ import annotations

import time

import pytest

from tests.sandbox.sandbox_harness import FakeProvider, SandboxServer


def test_discovery_document_is_kheops_configuration_response(sandbox: SandboxServer) -> None:
    response = sandbox.http.get(sandbox.api("/.well-known/report-provider-configuration"))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    api = sandbox.api("")
    assert response.json() == {
        "issuer": sandbox.root_url,
        "dicomweb_endpoint": api,
        "dicomweb_uri_endpoint": f"{api}/wado",
        "token_endpoint": f"{api}/token",
        "introspection_endpoint": f"{api}/token/introspect",
        "userinfo_endpoint": f"{api}/userinfo",
        "grant_types_supported": ["authorization_code", "implicit"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "introspection_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "token"],
        "response_modes_supported": ["query", "fragment"],
    }


@pytest.mark.parametrize("path", ["/token", "/userinfo", "/token/introspect"])
def test_cors_preflight_is_answered(sandbox: SandboxServer, path: str) -> None:
    response = sandbox.http.options(
        sandbox.api(path),
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "authorization" in response.headers["Access-Control-Allow-Headers"]


def test_discovery_faults(sandbox: SandboxServer) -> None:
    url = sandbox.api("/.well-known/report-provider-configuration")
    sandbox.set_faults(discovery_down=True)
    assert sandbox.http.get(url).status_code == 503
    sandbox.set_faults(discovery_down=False, discovery_garbage=True)
    garbage = sandbox.http.get(url)
    assert garbage.status_code == 200
    with pytest.raises(ValueError, match=r"Expecting"):
        garbage.json()
    sandbox.http.delete(sandbox.url("/_sandbox/faults"))
    assert sandbox.http.get(url).json()["issuer"] == sandbox.root_url


def test_token_faults(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    code = sandbox.launch_params(registered_provider)["code"][0]

    def exchange():
        return sandbox.token(fake_provider.token_form(sandbox, code, registered_provider))

    sandbox.set_faults(token_status=503)
    assert exchange().status_code == 503
    sandbox.set_faults(token_status=0, token_garbage=True)
    garbage = exchange()
    assert garbage.status_code == 200
    assert not garbage.headers["Content-Type"].startswith("application/json")
    sandbox.set_faults(token_garbage=False, token_delay_seconds=0.6)
    started = time.monotonic()
    assert exchange().status_code == 200
    assert time.monotonic() - started >= 0.6
    sandbox.set_faults(token_delay_seconds=0, token_lifetime_seconds=90)
    body = exchange().json()
    assert body["expires_in"] == 90
    sandbox.set_clock(90 + 61)
    response = sandbox.http.get(
        sandbox.api("/userinfo"), headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert response.status_code == 401


def test_userinfo_fault(sandbox: SandboxServer) -> None:
    sandbox.set_faults(userinfo_status=502)
    assert sandbox.http.get(sandbox.api("/userinfo")).status_code == 502


def test_faults_are_validated_and_reset(sandbox: SandboxServer) -> None:
    url = sandbox.url("/_sandbox/faults")
    assert sandbox.http.post(url, json={"no_such_fault": True}).status_code == 400
    assert sandbox.http.post(url, json={"token_status": "500"}).status_code == 400
    assert sandbox.http.post(url, json={"token_status": 42}).status_code == 400
    assert sandbox.http.post(url, data="not json").status_code == 400
    assert sandbox.set_faults(token_status=500)["token_status"] == 500
    assert sandbox.state()["faults"]["token_status"] == 500
    reset = sandbox.http.delete(url).json()
    assert reset["token_status"] == 0
    assert reset["token_lifetime_seconds"] == 3600


def test_clock_endpoint_shifts_and_resets(sandbox: SandboxServer) -> None:
    shifted = sandbox.set_clock(1000)
    assert shifted["offset_seconds"] == 1000
    assert shifted["mode"] == "elapsed"
    assert abs(shifted["now"] - (time.time() + 1000)) < 5
    assert sandbox.state()["clock"]["offset_seconds"] == 1000
    bad = sandbox.http.post(sandbox.url("/_sandbox/clock"), json={"offset_seconds": 5, "mode": "x"})
    assert bad.status_code == 400
    assert sandbox.http.post(sandbox.url("/_sandbox/clock"), json={}).status_code == 400
    assert sandbox.http.delete(sandbox.url("/_sandbox/clock")).json()["offset_seconds"] == 0


def test_codes_minted_on_a_shifted_clock_carry_shifted_times(
    sandbox: SandboxServer, registered_provider: str
) -> None:
    import jwt

    sandbox.set_clock(-5000)
    code = sandbox.launch_params(registered_provider)["code"][0]
    claims = jwt.decode(code, options={"verify_signature": False})
    assert claims["nbf"] < time.time() - 4000


def test_state_lists_users_albums_and_providers_without_secrets(
    sandbox: SandboxServer, registered_provider: str
) -> None:
    state = sandbox.state()
    assert {u["username"] for u in state["users"]} >= {"alice", "bob", "carol"}
    assert any(p["client_id"] == registered_provider for p in state["report_providers"])
    assert "eyJ" not in str(state)


def test_control_api_refuses_non_loopback_addresses() -> None:
    from sandbox.loopback import is_loopback_address

    assert is_loopback_address("127.0.0.1")
    assert is_loopback_address("127.5.6.7")
    assert is_loopback_address("::1")
    assert not is_loopback_address("192.168.1.10")
    assert not is_loopback_address("::ffff:10.0.0.1")
    assert not is_loopback_address("")
    assert not is_loopback_address(None)
    assert not is_loopback_address("localhost")
