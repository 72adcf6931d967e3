"""Admin sign-in through OpenID Connect (launcher.oidc), the provider faked at the HTTP
boundary: its discovery document (httpx, respx), its token endpoint and JWKS (requests,
responses). What a real provider does is tested end to end against the stand-in's
(tests/e2e/test_admin_oidc_journey.py).

Each refusal test was first run against code with its check broken on purpose, and failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import responses
import respx
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client
from jwt.algorithms import RSAAlgorithm

from launcher import oidc
from launcher.models import KheopsServer, LaunchRecord

ISSUER = "https://idp.hospital.test/realms/staff"
CLIENT_ID = "kheops-ohif-admin"
CLIENT_SECRET = "oidc-client-secret-Zq8Xr2Lm5Np7Tv"
KID = "idp-key-1"
BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "launcher.oidc.AdminOidcBackend",
    "django.contrib.auth.backends.ModelBackend",
]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeProvider:
    """The provider's HTTP side: discovery, token endpoint (answers the next ID token) and
    JWKS. `claims` are the next ID token's, over defaults that make a valid one."""

    rsps: responses.RequestsMock
    router: respx.MockRouter
    key: rsa.RSAPrivateKey = field(default_factory=_key)
    signing_key: rsa.RSAPrivateKey | None = None  # another key: a forged token
    claims: dict[str, Any] = field(default_factory=dict)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)

    def install(self) -> None:
        self.document = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}/protocol/openid-connect/auth",
            "token_endpoint": f"{ISSUER}/protocol/openid-connect/token",
            "userinfo_endpoint": f"{ISSUER}/protocol/openid-connect/userinfo",
            "jwks_uri": f"{ISSUER}/protocol/openid-connect/certs",
            "end_session_endpoint": f"{ISSUER}/protocol/openid-connect/logout",
        }
        self.router.get(oidc.discovery_url(ISSUER)).mock(
            side_effect=lambda request: respx.MockResponse(200, json=self.document)
        )
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.rsps.get(
            self.document["jwks_uri"], json={"keys": [{**jwk, "kid": KID, "alg": "RS256"}]}
        )
        self.rsps.add_callback(
            responses.POST, self.document["token_endpoint"], callback=self._token
        )

    def _token(self, request: Any) -> tuple[int, dict[str, str], str]:
        form = parse_qs(request.body)
        self.token_requests.append(form)
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "azp": CLIENT_ID,
            "sub": "f3b1c2d4-0000-4000-8000-000000000001",
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce,
            "name": "Ann Admin",
            "given_name": "Ann",
            "family_name": "Admin",
            "email": "ann.admin@hospital.test",
            "groups": ["/kheops-ohif-admins"],
        }
        claims.update(self.claims)
        claims = {name: value for name, value in claims.items() if value is not None}
        id_token = jwt.encode(
            claims, self.signing_key or self.key, algorithm="RS256", headers={"kid": KID}
        )
        body = {
            "access_token": "idp-access-token-" + hashlib.sha256(id_token.encode()).hexdigest(),
            "token_type": "Bearer",
            "id_token": id_token,
            "expires_in": 300,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    nonce: str | None = None


@pytest.fixture
def idp(settings: Any, rsps: responses.RequestsMock) -> Iterator[FakeProvider]:
    settings.OIDC_ISSUER = ISSUER
    settings.OIDC_ENABLED = True
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_PROVIDER_NAME = "Hospital Keycloak"
    settings.OIDC_SUPERUSER_GROUPS = ["kheops-ohif-admins"]
    settings.OIDC_STAFF_GROUPS = ["kheops-ohif-staff"]
    settings.AUTHENTICATION_BACKENDS = BACKENDS
    with respx.mock(assert_all_called=False) as router:
        fake = FakeProvider(rsps=rsps, router=router)
        fake.install()
        yield fake


@pytest.fixture
def sign_in(client: Client, idp: FakeProvider) -> Callable[..., Any]:
    """Start the sign-in in `client`'s browser, let the provider answer with an ID token
    for the claims given (over valid defaults), and return the callback's response."""

    def run(**claims: Any) -> Any:
        start = client.get("/admin/oidc/sign-in/?next=/admin/")
        assert start.status_code == 302, start.content[:300]
        query = parse_qs(urlsplit(start["Location"]).query)
        idp.nonce = query["nonce"][0]
        idp.claims = claims
        state = query["state"][0]
        return client.get(f"/admin/oidc/callback/?code=idp-code-{state[:20]}&state={state}")

    return run


def problem_page(client: Client, response: Any) -> Any:
    """The page a failed sign-in is sent to (away from the callback URL and its code)."""
    assert response.status_code == 302, response.content[:300]
    assert response["Location"] == "/admin/oidc/problem/", response["Location"]
    return client.get(response["Location"])


def signed_in_user(client: Client) -> User | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


@pytest.mark.django_db
def test_the_sign_in_page_offers_the_provider_and_keeps_the_password_form(
    client: Client, idp: FakeProvider
) -> None:
    page = client.get("/admin/login/?next=/admin/").content.decode()
    assert "Sign in with Hospital Keycloak" in page
    assert 'href="/admin/oidc/sign-in/?next=%2Fadmin%2F"' in page
    assert 'name="password"' in page


@pytest.mark.django_db
def test_the_authorization_request_uses_pkce_s256_a_state_and_a_nonce(
    client: Client, idp: FakeProvider
) -> None:
    start = client.get("/admin/oidc/sign-in/")
    assert start.status_code == 302
    location = urlsplit(start["Location"])
    assert (
        f"{location.scheme}://{location.netloc}{location.path}"
        == (idp.document["authorization_endpoint"])
    )
    query = {name: values[0] for name, values in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == "http://testserver/admin/oidc/callback/"
    assert query["code_challenge_method"] == "S256"
    assert set(query["scope"].split()) == {"openid", "email", "profile"}
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32
    kept = client.session["oidc_states"][query["state"]]
    assert kept["nonce"] == query["nonce"]
    verifier = kept["code_verifier"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert query["code_challenge"] == challenge.decode().rstrip("=")
    assert "client_secret" not in start["Location"]


@pytest.mark.django_db
def test_a_member_of_the_superuser_group_signs_in_as_superuser(
    client: Client, idp: FakeProvider, sign_in: Callable[..., Any]
) -> None:
    response = sign_in()
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    user = signed_in_user(client)
    assert user is not None and user.is_staff and user.is_superuser
    assert user.username == "oidc-f3b1c2d4-0000-4000-8000-000000000001"
    assert (user.first_name, user.email) == ("Ann", "ann.admin@hospital.test")
    assert not user.has_usable_password()
    assert client.session["_auth_user_backend"] == oidc.BACKEND_PATH
    # The code went to the token endpoint with the PKCE verifier and our client's secret.
    (form,) = idp.token_requests
    assert form["grant_type"] == ["authorization_code"]
    assert form["code"][0].startswith("idp-code-")
    assert len(form["code_verifier"][0]) >= 43
    assert form["client_secret"] == [CLIENT_SECRET]
    assert form["redirect_uri"] == ["http://testserver/admin/oidc/callback/"]
    # The library's default is no timeout at all: every call to the provider has ours.
    assert [call.request.req_kwargs["timeout"] for call in idp.rsps.calls] == [5.0, 5.0]
    assert client.get("/admin/").status_code == 200
    # No token is kept in the session.
    assert "oidc_id_token" not in client.session and "oidc_access_token" not in client.session


@pytest.mark.django_db
def test_a_staff_member_reads_launch_records_but_cannot_change_a_trusted_server(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    # Disabled: the health panel does not fetch its discovery document.
    server = KheopsServer.objects.create(
        name="KHEOPS", root_url="https://kheops.test", enabled=False
    )
    LaunchRecord.objects.create(outcome="success", kheops_server=server, user_name="Dr Who")
    assert sign_in(groups=["kheops-ohif-staff"]).status_code == 302
    user = signed_in_user(client)
    assert user is not None and user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == [oidc.READ_ONLY_GROUP]
    index = client.get("/admin/")
    assert index.status_code == 200
    assert b"kheops-health" in index.content  # the health panel
    records = client.get("/admin/launcher/launchrecord/")
    assert records.status_code == 200 and b"Dr Who" in records.content
    change_url = f"/admin/launcher/kheopsserver/{server.pk}/change/"
    page = client.get(change_url)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    refused = client.post(change_url, {"name": "Renamed", "root_url": server.root_url})
    assert refused.status_code == 403
    server.refresh_from_db()
    assert server.name == "KHEOPS"
    assert client.get("/admin/launcher/kheopsserver/add/").status_code == 403
    assert client.get("/admin/launcher/signingkey/").status_code == 403
    assert client.get("/admin/auth/user/").status_code == 403


@pytest.mark.django_db
def test_somebody_in_no_admin_group_is_refused_with_a_clear_page(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    response = problem_page(
        client, sign_in(groups=["radiology"], name="Nina Nogroup", email="nina@hospital.test")
    )
    assert response.status_code == 403
    page = response.content.decode()
    assert "No access to this administration" in page
    assert "signed you in as Nina Nogroup (nina@hospital.test)" in page
    assert "none of the groups allowed here" in page
    assert signed_in_user(client) is None
    assert client.get("/admin/").status_code == 302  # to the sign-in page


@pytest.mark.django_db
def test_removal_from_the_group_removes_access_at_the_next_sign_in(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    assert sign_in(groups=["kheops-ohif-admins"]).status_code == 302
    user = signed_in_user(client)
    assert user is not None and user.is_superuser
    client.post("/admin/logout/")
    assert problem_page(client, sign_in(groups=[])).status_code == 403
    user.refresh_from_db()
    assert not user.is_staff and not user.is_superuser
    assert signed_in_user(client) is None
    # Moved from the admins to the staff group: read-only from the next sign-in.
    assert sign_in(groups=["kheops-ohif-staff"]).status_code == 302
    user.refresh_from_db()
    assert user.is_staff and not user.is_superuser


def _refused(client: Client, response: Any) -> None:
    response = problem_page(client, response)
    assert response.status_code == 400, response.content[:300]
    assert "Sign-in not completed" in response.content.decode()
    assert signed_in_user(client) is None
    assert not User.objects.filter(username__startswith="oidc-").exists()


@pytest.mark.django_db
def test_an_id_token_signed_by_another_key_is_refused(
    client: Client, idp: FakeProvider, sign_in: Callable[..., Any]
) -> None:
    idp.signing_key = _key()  # same kid, another key: a forgery
    _refused(client, sign_in())


@pytest.mark.django_db
def test_an_id_token_for_another_client_is_refused(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    _refused(client, sign_in(aud="another-client", azp="another-client"))


@pytest.mark.django_db
def test_an_id_token_with_us_among_several_audiences_but_another_azp_is_refused(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    _refused(client, sign_in(aud=[CLIENT_ID, "another-client"], azp="another-client"))


@pytest.mark.django_db
def test_an_id_token_from_another_issuer_is_refused(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    _refused(client, sign_in(iss="https://idp.elsewhere.test/realms/staff"))


@pytest.mark.django_db
def test_an_expired_id_token_is_refused(client: Client, sign_in: Callable[..., Any]) -> None:
    now = int(time.time())
    _refused(client, sign_in(iat=now - 900, exp=now - 120))


@pytest.mark.django_db
def test_an_id_token_without_expiry_is_refused(client: Client, sign_in: Callable[..., Any]) -> None:
    _refused(client, sign_in(exp=None))


@pytest.mark.django_db
def test_an_id_token_without_the_nonce_is_refused(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    _refused(client, sign_in(nonce=None))


@pytest.mark.django_db
def test_an_id_token_with_another_nonce_is_refused(
    client: Client, sign_in: Callable[..., Any]
) -> None:
    _refused(client, sign_in(nonce="a-nonce-from-another-sign-in-0123456789"))


@pytest.mark.django_db
def test_a_replayed_callback_is_refused_without_asking_the_provider(
    client: Client, idp: FakeProvider, sign_in: Callable[..., Any]
) -> None:
    first = client.get("/admin/oidc/sign-in/")
    query = parse_qs(urlsplit(first["Location"]).query)
    idp.nonce = query["nonce"][0]
    callback = f"/admin/oidc/callback/?code=idp-code-first&state={query['state'][0]}"
    assert client.get(callback).status_code == 302
    assert signed_in_user(client) is not None
    # The same browser again (the Back button, a reload): the state was used.
    replay = problem_page(client, client.get(callback))
    assert replay.status_code == 400
    assert "Sign-in not completed" in replay.content.decode()
    # Another browser (the URL from a history or a proxy log): no state of its own.
    other = Client()
    assert problem_page(other, other.get(callback)).status_code == 400
    assert signed_in_user(other) is None
    assert len(idp.token_requests) == 1


@pytest.mark.django_db
def test_a_callback_for_a_state_this_browser_never_made_is_refused(
    client: Client, idp: FakeProvider
) -> None:
    client.get("/admin/oidc/sign-in/")
    response = client.get("/admin/oidc/callback/?code=idp-code-x&state=forged-state-0123456789")
    assert problem_page(client, response).status_code == 400
    assert signed_in_user(client) is None
    assert idp.token_requests == []


@pytest.mark.django_db
def test_the_provider_saying_no_gives_the_same_page(client: Client, idp: FakeProvider) -> None:
    client.get("/admin/oidc/sign-in/")
    response = problem_page(
        client, client.get("/admin/oidc/callback/?error=access_denied&state=whatever")
    )
    assert response.status_code == 400
    assert "could not be completed or was cancelled" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        {"issuer": "https://idp.elsewhere.test/realms/staff"},
        {"token_endpoint": "http://idp.hospital.test/token"},
        {"jwks_uri": None},
    ],
    ids=["another-issuer", "plain-http-endpoint", "no-jwks"],
)
def test_a_discovery_document_that_does_not_hold_gives_the_unavailable_page(
    client: Client, idp: FakeProvider, change: dict[str, Any]
) -> None:
    idp.document.update(change)
    idp.document = {k: v for k, v in idp.document.items() if v is not None}
    response = problem_page(client, client.get("/admin/oidc/sign-in/"))
    assert response.status_code == 502
    assert "Hospital Keycloak cannot be reached just now" in response.content.decode()


@pytest.mark.django_db
def test_a_plain_http_issuer_elsewhere_is_never_asked(
    client: Client, idp: FakeProvider, settings: Any
) -> None:
    settings.OIDC_ISSUER = "http://idp.hospital.test/realms/staff"
    response = problem_page(client, client.get("/admin/oidc/sign-in/"))
    assert response.status_code == 502
    assert not idp.router.calls.called


@pytest.mark.django_db
def test_a_silent_provider_gives_the_unavailable_page(
    client: Client, idp: FakeProvider, settings: Any
) -> None:
    import httpx

    idp.router.get(oidc.discovery_url(ISSUER)).mock(side_effect=httpx.ConnectTimeout)
    response = problem_page(client, client.get("/admin/oidc/sign-in/"))
    assert response.status_code == 502
    # Shown once: a reload of the page leads to the sign-in page.
    assert client.get("/admin/oidc/problem/")["Location"] == "/admin/login/"


@pytest.mark.django_db
def test_signing_out_ends_the_session_here_and_at_the_provider(
    client: Client, idp: FakeProvider, sign_in: Callable[..., Any]
) -> None:
    sign_in()
    response = client.post("/admin/logout/")
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert (
        f"{location.scheme}://{location.netloc}{location.path}"
        == (idp.document["end_session_endpoint"])
    )
    assert parse_qs(location.query) == {
        "client_id": [CLIENT_ID],
        "post_logout_redirect_uri": ["http://testserver/admin/login/"],
    }
    assert signed_in_user(client) is None


@pytest.mark.django_db
def test_without_end_session_endpoint_signing_out_ends_the_session_here(
    client: Client, idp: FakeProvider, sign_in: Callable[..., Any]
) -> None:
    del idp.document["end_session_endpoint"]
    sign_in()
    response = client.post("/admin/logout/")
    assert response.status_code == 302 and response["Location"] == "/admin/login/"
    assert signed_in_user(client) is None


@pytest.mark.django_db
def test_a_password_session_signs_out_as_before(admin_client: Client) -> None:
    response = admin_client.post("/admin/logout/")
    assert response.status_code == 200
    assert "Logged out" in response.content.decode()
    assert admin_client.get("/admin/").status_code == 302


@pytest.mark.django_db
def test_with_password_sign_in_off_only_the_provider_signs_in(
    client: Client, idp: FakeProvider, settings: Any
) -> None:
    settings.ADMIN_PASSWORD_LOGIN = False
    settings.AUTHENTICATION_BACKENDS = BACKENDS[:2]
    User.objects.create_superuser("local-admin", "a@b.test", "local-password-123")
    page = client.get("/admin/login/").content.decode()
    assert "Sign in with Hospital Keycloak" in page
    assert 'name="password"' not in page
    refused = client.post(
        "/admin/login/?next=/admin/",
        {"username": "local-admin", "password": "local-password-123"},
    )
    assert refused.status_code == 200  # the form again, with its error
    assert signed_in_user(client) is None


def test_the_system_checks_name_what_is_missing(settings: Any) -> None:
    settings.OIDC_ENABLED = True
    settings.OIDC_ISSUER = "http://idp.hospital.test/realms/staff"
    settings.OIDC_RP_CLIENT_ID = ""
    settings.OIDC_RP_CLIENT_SECRET = ""
    settings.OIDC_STAFF_GROUPS = []
    settings.OIDC_SUPERUSER_GROUPS = []
    ids = {message.id for message in run_checks()}
    assert {"launcher.E040", "launcher.E041", "launcher.W043"} <= ids
    settings.OIDC_ISSUER = ISSUER
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_STAFF_GROUPS = ["kheops-ohif-staff"]
    ids = {message.id for message in run_checks()}
    assert not ids & {"launcher.E040", "launcher.E041", "launcher.W043", "launcher.E042"}
    settings.OIDC_ENABLED = False
    settings.ADMIN_PASSWORD_LOGIN = False
    assert "launcher.E042" in {message.id for message in run_checks()}


def test_group_names_match_with_or_without_keycloaks_full_path(settings: Any) -> None:
    settings.OIDC_GROUPS_CLAIM = "roles"
    settings.OIDC_SUPERUSER_GROUPS = ["/admins"]
    settings.OIDC_STAFF_GROUPS = ["staff"]
    assert oidc.role_of({"roles": ["admins"]}) == "superuser"
    assert oidc.role_of({"roles": "/staff"}) == "staff"
    assert oidc.role_of({"roles": ["/staff", "/admins"]}) == "superuser"
    assert oidc.role_of({"groups": ["/admins"]}) is None
    assert oidc.role_of({"roles": [{"name": "admins"}]}) is None


def test_error_reports_hide_the_client_secret_and_the_callbacks_code(settings: Any) -> None:
    from django.test import RequestFactory

    from launcher.reporting import SecretsFilter, redact

    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    safe = SecretsFilter().get_safe_settings()
    assert safe["OIDC_RP_CLIENT_SECRET"] != CLIENT_SECRET
    request = RequestFactory().get("/admin/oidc/callback/?code=idp-code-Zx81Qw&state=s")
    assert "idp-code-Zx81Qw" not in redact(repr(request))
    cleansed = SecretsFilter().get_cleansed_multivaluedict(request, request.GET)
    assert cleansed["code"] != "idp-code-Zx81Qw" and cleansed["state"] == "s"


@pytest.mark.django_db
def test_the_sign_in_lives_on_the_admin_host_only(
    client: Client, idp: FakeProvider, settings: Any
) -> None:
    settings.PUBLIC_HOST = "viewer.test"
    settings.ALLOWED_HOSTS = ["viewer.test", "admin.viewer.test"]
    settings.ADMIN_HOSTS = ["admin.viewer.test"]
    for path in ("/admin/oidc/sign-in/", "/admin/oidc/callback/?code=c&state=s"):
        assert client.get(path, HTTP_HOST="viewer.test").status_code == 404, path
    start = client.get("/admin/oidc/sign-in/", HTTP_HOST="admin.viewer.test")
    assert start.status_code == 302
    redirect_uri = parse_qs(urlsplit(start["Location"]).query)["redirect_uri"]
    assert redirect_uri == ["http://admin.viewer.test/admin/oidc/callback/"]


@pytest.mark.django_db
def test_without_an_issuer_there_is_no_provider_to_sign_in_with(
    client: Client, settings: Any
) -> None:
    settings.OIDC_ENABLED = False
    settings.OIDC_ISSUER = ""
    page = client.get("/admin/login/").content.decode()
    assert "Sign in with" not in page and 'name="password"' in page
    assert client.get("/admin/oidc/sign-in/").status_code == 404
    assert client.get("/admin/oidc/callback/?code=c&state=s").status_code == 404


@pytest.mark.django_db
def test_the_page_to_return_to_must_be_ours(client: Client, idp: FakeProvider) -> None:
    start = client.get("/admin/oidc/sign-in/?next=https://evil.example/admin/")
    query = parse_qs(urlsplit(start["Location"]).query)
    idp.nonce = query["nonce"][0]
    back = client.get(f"/admin/oidc/callback/?code=idp-code-n&state={query['state'][0]}")
    assert back.status_code == 302 and back["Location"] == "/admin/"
