"""The stand-in's OpenID Connect provider (Keycloak's role for the viewer's admin sign-in),
over HTTP as a client sees it: discovery, the code flow with PKCE, RS256 ID tokens with a
groups claim, RP-initiated logout."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import requests

from tests.sandbox.sandbox_harness import SandboxServer

CLIENT_ID = "viewer-admin-test"
REDIRECT_URI = "http://127.0.0.1:1/admin/oidc/callback/"


def set_up(sandbox: SandboxServer) -> tuple[str, str]:
    secret, password = secrets.token_urlsafe(24), secrets.token_urlsafe(12)
    sandbox.set_up_oidc(
        "http://127.0.0.1:1",
        client_id=CLIENT_ID,
        client_secret=secret,
        users=[
            {
                "username": "ann",
                "password": password,
                "first_name": "Ann",
                "last_name": "Admin",
                "email": "ann@hospital.test",
                "groups": ["kheops-ohif-admins", "radiology"],
            }
        ],
    )
    return secret, password


def authorize_query(challenge: str | None, nonce: str) -> str:
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile",
        "state": "state-1",
        "nonce": nonce,
    }
    if challenge:
        query.update(code_challenge=challenge, code_challenge_method="S256")
    return urlencode(query)


def sign_in(sandbox: SandboxServer, password: str, query: str) -> requests.Response:
    """A browser at the provider: the authorization request, its sign-in form; the answer
    that sends the browser back to the client."""
    browser = requests.Session()
    page = browser.get(f"{sandbox.oidc_issuer}/authorize/?{query}", timeout=10)
    assert page.url.startswith(sandbox.url("/idp/login/")), page.url
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    following = re.search(r'name="next" value="([^"]*)"', page.text)
    assert csrf and following
    return _follow_to_client(browser, page.url, csrf.group(1), following.group(1), password)


def _follow_to_client(
    browser: requests.Session, url: str, csrf: str, following: str, password: str
) -> requests.Response:
    answer = browser.post(
        url,
        data={
            "csrfmiddlewaretoken": csrf,
            "username": "ann",
            "password": password,
            "next": following.replace("&amp;", "&"),
        },
        headers={"Referer": url},
        allow_redirects=False,
        timeout=10,
    )
    while answer.status_code == 302 and not answer.headers["Location"].startswith(REDIRECT_URI):
        answer = browser.get(
            requests.compat.urljoin(url, answer.headers["Location"]),
            allow_redirects=False,
            timeout=10,
        )
    return answer


def test_the_discovery_document_names_what_the_viewer_needs(sandbox: SandboxServer) -> None:
    document = requests.get(
        f"{sandbox.oidc_issuer}/.well-known/openid-configuration", timeout=10
    ).json()
    assert document["issuer"] == sandbox.oidc_issuer
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        assert document[name].startswith(sandbox.oidc_issuer + "/"), name
    assert "S256" in document["code_challenge_methods_supported"]
    assert "RS256" in document["id_token_signing_alg_values_supported"]


def test_a_code_flow_with_pkce_gives_an_rs256_id_token_with_the_groups(
    sandbox: SandboxServer,
) -> None:
    secret, password = set_up(sandbox)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    nonce = secrets.token_urlsafe(16)
    back = sign_in(sandbox, password, authorize_query(challenge.decode().rstrip("="), nonce))
    assert back.status_code == 302 and back.headers["Location"].startswith(REDIRECT_URI)
    code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
    token = requests.post(
        f"{sandbox.oidc_issuer}/token/",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": CLIENT_ID,
            "client_secret": secret,
            "code_verifier": verifier,
        },
        timeout=10,
    )
    assert token.status_code == 200, token.text
    id_token = token.json()["id_token"]
    jwks = jwt.PyJWKClient(f"{sandbox.oidc_issuer}/.well-known/jwks.json")
    claims = jwt.decode(
        id_token,
        jwks.get_signing_key_from_jwt(id_token).key,
        algorithms=["RS256"],
        audience=CLIENT_ID,
        issuer=sandbox.oidc_issuer,
    )
    assert claims["nonce"] == nonce
    assert claims["groups"] == ["kheops-ohif-admins", "radiology"]
    assert (claims["name"], claims["email"]) == ("Ann Admin", "ann@hospital.test")


def test_the_provider_requires_pkce(sandbox: SandboxServer) -> None:
    _, password = set_up(sandbox)
    back = sign_in(sandbox, password, authorize_query(None, "n-1"))
    assert back.status_code == 302
    assert parse_qs(urlsplit(back.headers["Location"]).query)["error"] == ["invalid_request"]
