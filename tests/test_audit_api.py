"""The audit API (/api/v1/): OAuth 2 bearer tokens, scopes, filters, cursor pagination."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application

from launcher import keys
from launcher.models import KheopsServer, LaunchRecord, LaunchWrite, Provider
from tests.fakes import STUDY_1, STUDY_2

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENDPOINTS = ["/api/v1/", "/api/v1/launches/", "/api/v1/servers/", "/api/v1/providers/"]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Client secrets are hashed like passwords; production strength only slows tests down.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def other_server(db: None) -> KheopsServer:
    return KheopsServer.objects.create(name="Other KHEOPS", root_url="https://other.test")


@pytest.fixture
def record(kheops_server: KheopsServer, provider: Provider) -> Callable[..., LaunchRecord]:
    """Create a launch record; `created_at` can be set (auto_now_add would ignore it)."""

    def make(created_at: datetime = T0, **fields: Any) -> LaunchRecord:
        values: dict[str, Any] = {
            "kheops_server": kheops_server,
            "provider": provider,
            "outcome": "success",
            "client_id": "Q9ZTMv3fW7ta0Npg1caGMF",
            "study_uids": [STUDY_1],
            "user_sub": "user-1",
            "user_name": "Dr Ada",
            "user_email": "ada@hospital.test",
            "remote_addr": "192.0.2.10",
            **fields,
        }
        created = LaunchRecord.objects.create(**values)
        LaunchRecord.objects.filter(pk=created.pk).update(created_at=created_at)
        created.refresh_from_db()
        return created

    return make


@pytest.fixture
def application(db: None) -> Application:
    return Application.objects.create(
        name="Hospital SIEM",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )


@pytest.fixture
def bearer(application: Application) -> Callable[..., dict[str, str]]:
    """Headers carrying a fresh access token with `scope` (the audit scope by default)."""

    def make(
        scope: str = "audit:read", *, expires_in: int = 3600, user: User | None = None
    ) -> dict[str, str]:
        token = AccessToken.objects.create(
            token=secrets.token_urlsafe(30),
            application=application,
            user=user,
            scope=scope,
            expires=timezone.now() + timedelta(seconds=expires_in),
        )
        return {"Authorization": f"Bearer {token.token}"}

    return make


@pytest.fixture
def api(client: Client, bearer: Callable[..., dict[str, str]]) -> Callable[..., Any]:
    """GET with a valid audit token; returns the response (JSON in `.json()`)."""
    headers = bearer()

    def get(path: str, **params: Any) -> Any:
        return client.get(path, params, headers=headers)

    return get


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [item["id"] for item in response.json()["results"]]


# --- Authentication and scopes -------------------------------------------------------


@pytest.mark.parametrize("path", [*ENDPOINTS, "/api/v1/launches/1/", "/api/v1/providers/ohif/"])
def test_without_a_token_the_api_answers_401_with_a_bearer_challenge(
    client: Client, db: None, path: str
) -> None:
    response = client.get(path)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("expires_in", [-10, None])
def test_an_expired_or_unknown_token_is_401(
    client: Client, bearer: Callable[..., dict[str, str]], expires_in: int | None
) -> None:
    headers = (
        bearer(expires_in=expires_in) if expires_in else {"Authorization": "Bearer not-a-token"}
    )

    assert client.get("/api/v1/launches/", headers=headers).status_code == 401


def test_a_token_in_the_query_string_is_refused(
    client: Client, bearer: Callable[..., dict[str, str]]
) -> None:
    # URLs end up in logs and browser histories (RFC 9700 §4.3.2).
    token = bearer()["Authorization"].removeprefix("Bearer ")

    assert client.get("/api/v1/launches/", {"access_token": token}).status_code == 401


def test_tokens_from_the_token_endpoint_are_stored_only_as_a_hash(client: Client, db: None) -> None:
    secret = secrets.token_urlsafe(32)
    app = Application.objects.create(
        name="PACS audit",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
    )

    issued = client.post(
        "/oauth/token/",
        {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": secret},
    )

    assert issued.status_code == 200
    raw = issued.json()["access_token"]
    [stored] = AccessToken.objects.all()
    assert stored.token_checksum == hashlib.sha256(raw.encode()).hexdigest()
    assert raw != stored.token


def test_the_deploy_checks_raise_nothing_about_the_oauth_provider_or_the_schema(db: None) -> None:
    from django.core import checks

    messages = checks.run_checks(include_deployment_checks=True, tags=None)

    assert [
        m.id
        for m in messages
        if m.id and m.id.split(".")[0] in ("oauth2_provider", "drf_spectacular")
    ] == []


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_token_without_the_audit_scope_is_403_and_names_the_scope(
    client: Client, bearer: Callable[..., dict[str, str]], path: str
) -> None:
    response = client.get(path, headers=bearer(scope="read write"))

    assert response.status_code == 403
    assert response.json()["required_scopes"] == ["audit:read"]


def test_a_wrong_scope_is_403_even_for_a_token_owned_by_a_superuser(
    client: Client, bearer: Callable[..., dict[str, str]]
) -> None:
    admin = User.objects.create_superuser("root", "root@example.org", "pw-for-tests-only")

    response = client.get("/api/v1/launches/", headers=bearer(scope="other", user=admin))

    assert response.status_code == 403


def test_a_client_credentials_token_from_the_token_endpoint_reads_the_api(
    client: Client, db: None, record: Callable[..., LaunchRecord]
) -> None:
    record()
    secret = secrets.token_urlsafe(32)
    app = Application.objects.create(
        name="PACS audit",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
    )
    basic = base64.b64encode(f"{app.client_id}:{secret}".encode()).decode()

    token = client.post(
        "/oauth/token/",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )

    assert token.status_code == 200, token.content
    assert token.json()["scope"] == "audit:read"
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert len(client.get("/api/v1/launches/", headers=bearer).json()["results"]) == 1

    revoked = client.post(
        "/oauth/revoke_token/",
        {"token": token.json()["access_token"]},
        headers={"Authorization": f"Basic {basic}"},
    )

    assert revoked.status_code == 200
    assert client.get("/api/v1/launches/", headers=bearer).status_code == 401


def test_a_wrong_client_secret_gets_no_token(client: Client, application: Application) -> None:
    basic = base64.b64encode(f"{application.client_id}:wrong".encode()).decode()

    response = client.post(
        "/oauth/token/",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )

    assert response.status_code == 401
    assert "access_token" not in response.json()


@pytest.mark.parametrize(
    "path", ["/oauth/authorize/", "/oauth/applications/", "/oauth/introspect/", "/o/token/"]
)
def test_only_the_token_and_revocation_endpoints_of_the_oauth_provider_are_exposed(
    client: Client, db: None, path: str
) -> None:
    assert client.get(path).status_code == 404


def test_staff_logged_into_the_admin_browse_the_api_in_html(
    client: Client, record: Callable[..., LaunchRecord]
) -> None:
    record()
    client.force_login(
        User.objects.create_superuser("admin", "admin@example.org", "pw-for-tests-only")
    )

    response = client.get("/api/v1/launches/", headers={"Accept": "text/html"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "Dr Ada" in response.content.decode()


def test_a_logged_in_user_needs_staff_status_and_the_view_permission(
    client: Client, db: None
) -> None:
    user = User.objects.create_user("clerk", "clerk@example.org", "pw-for-tests-only")
    client.force_login(user)
    assert client.get("/api/v1/launches/").status_code == 403

    user.is_staff = True
    user.save()
    assert client.get("/api/v1/launches/").status_code == 403

    user.user_permissions.add(Permission.objects.get(codename="view_launchrecord"))
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    assert client.get("/api/v1/launches/").status_code == 200
    assert client.get("/api/v1/servers/").status_code == 403


def test_the_public_kheops_documents_stay_anonymous_and_json_only(client: Client, db: None) -> None:
    response = client.get(
        "/.well-known/kheops-report-configuration", headers={"Accept": "text/html,*/*;q=0.8"}
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"


# --- What the API shows --------------------------------------------------------------


def test_a_launch_record_tells_who_opened_which_studies_when_and_from_where(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    launched = record(
        launch_id="abc123", album_id="AbCdEf1234", study_uids=[STUDY_1, STUDY_2], verified=True
    )

    body = api(f"/api/v1/launches/{launched.pk}/").json()

    assert body == {
        "id": launched.pk,
        "created_at": "2025-03-01T12:00:00Z",
        "outcome": "success",
        "verified": True,
        "failure_detail": "",
        "kheops_server": {
            "id": launched.kheops_server.pk,
            "name": "KHEOPS test",
            "root_url": "https://kheops.test",
        },
        "provider": "ohif",
        "client_id": "Q9ZTMv3fW7ta0Npg1caGMF",
        "album_id": "AbCdEf1234",
        "study_uids": [STUDY_1, STUDY_2],
        "user": {"sub": "user-1", "name": "Dr Ada", "email": "ada@hospital.test"},
        "remote_addr": "192.0.2.10",
        "launch_id": "abc123",
        "expires_at": None,
        "writes": [],
    }


def test_a_failed_launch_without_server_or_user_is_listed_too(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    failed = record(
        kheops_server=None,
        provider=None,
        outcome="bad_request",
        user_sub="",
        user_name="",
        user_email="",
        remote_addr=None,
        study_uids=[],
    )

    item = api("/api/v1/launches/").json()["results"][0]

    assert (item["id"], item["kheops_server"], item["provider"], item["user"]["sub"]) == (
        failed.pk,
        None,
        None,
        "",
    )


def test_a_launch_record_lists_what_its_viewer_stored_through_the_relay(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    launched = record(launch_id="abc123")
    sr = {"sop_instance_uid": "2.25.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22"}
    refused = {"sop_instance_uid": "2.25.2", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}
    write = LaunchWrite.objects.create(
        launch=launched,
        study_uid=STUDY_1,
        status=202,
        stored=[sr],
        stored_count=1,
        failed=[{**refused, "reason": 292}],
        failed_count=1,
    )
    LaunchWrite.objects.filter(pk=write.pk).update(created_at=T0 + timedelta(minutes=5))
    record(launch_id="quiet")

    detail = api(f"/api/v1/launches/{launched.pk}/").json()
    listed = {
        item["launch_id"]: item["writes"] for item in api("/api/v1/launches/").json()["results"]
    }

    assert detail["writes"] == [
        {
            "id": write.pk,
            "created_at": "2025-03-01T12:05:00Z",
            "study_uid": STUDY_1,
            "status": 202,
            "stored": [sr],
            "failed": [{**refused, "reason": 292}],
            "note": "",
        }
    ]
    assert listed == {"abc123": detail["writes"], "quiet": []}


def test_an_unknown_launch_record_is_404(api: Callable[..., Any], db: None) -> None:
    assert api("/api/v1/launches/999999/").status_code == 404


def test_servers_and_providers_are_listed_read_only(
    api: Callable[..., Any],
    client: Client,
    bearer: Callable[..., dict[str, str]],
    kheops_server: KheopsServer,
) -> None:
    servers = api("/api/v1/servers/").json()
    providers = api("/api/v1/providers/").json()

    assert [s["root_url"] for s in servers] == ["https://kheops.test"]
    assert (
        servers[0]["discovery_url"]
        == "https://kheops.test/api/.well-known/report-provider-configuration"
    )
    assert [p["slug"] for p in providers] == ["ohif"]
    assert (
        api("/api/v1/providers/ohif/").json()["configuration_url"]
        == "http://127.0.0.1:8000/providers/ohif/configuration"
    )
    for method in (client.post, client.put, client.patch, client.delete):
        assert method("/api/v1/servers/", headers=bearer()).status_code == 405
        assert method(f"/api/v1/servers/{kheops_server.pk}/", headers=bearer()).status_code == 405


def _keys_of(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys_of(item)


def test_no_secret_appears_in_any_response(
    client: Client,
    application: Application,
    record: Callable[..., LaunchRecord],
    other_server: KheopsServer,
) -> None:
    signing_key = keys.active_signing_key()
    secret = "plain-client-secret-" + secrets.token_urlsafe(16)
    app = Application.objects.create(
        name="Other app",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
    )
    stored_secret = Application.objects.get(pk=app.pk).client_secret
    token = AccessToken.objects.create(
        token="tok-" + secrets.token_urlsafe(30),
        application=app,
        scope="audit:read",
        expires=timezone.now() + timedelta(hours=1),
    )
    launched = record(launch_id="launch1", kheops_server=other_server)
    paths = [
        *ENDPOINTS,
        f"/api/v1/launches/{launched.pk}/",
        "/api/v1/providers/ohif/",
        f"/api/v1/servers/{other_server.pk}/",
    ]
    forbidden_values = [
        secret,
        stored_secret,
        token.token,
        signing_key.sealed_private_key,
        settings.SECRET_KEY,
    ]
    forbidden_keys = {
        "client_secret",
        "secret",
        "token",
        "access_token",
        "sealed_private_key",
        "private_key",
        "password",
        "code",
    }

    for path in paths:
        response = client.get(path, headers={"Authorization": f"Bearer {token.token}"})
        assert response.status_code == 200, path
        text = response.content.decode()
        assert not [value for value in forbidden_values if value in text], path
        assert "PRIVATE KEY" not in text
        assert not forbidden_keys & set(_keys_of(response.json())), path


# --- Filters -------------------------------------------------------------------------


def test_launches_filter_by_date_range(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    old, inside, edge, late = (record(created_at=T0 + timedelta(days=d)) for d in (0, 1, 2, 3))

    response = api(
        "/api/v1/launches/",
        created_after="2025-03-02T00:00:00Z",
        created_before="2025-03-03T12:00:01Z",
    )

    assert ids(response) == [edge.pk, inside.pk]
    assert ids(api("/api/v1/launches/", created_before="2025-03-03T12:00:00Z")) == [
        inside.pk,
        old.pk,
    ]
    assert ids(api("/api/v1/launches/", created_after="2025-03-04T12:00:00+00:00")) == [late.pk]
    assert old.pk not in ids(api("/api/v1/launches/", created_after="2025-03-01T12:00:01Z"))


def test_launches_filter_by_study_uid_exactly(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    both = record(study_uids=[STUDY_2, "1.2.3"])
    prefix_only = record(study_uids=["1.2.34"])
    record(study_uids=[STUDY_1])

    assert ids(api("/api/v1/launches/", study_uid="1.2.3")) == [both.pk]
    assert ids(api("/api/v1/launches/", study_uid="1.2.34")) == [prefix_only.pk]
    assert ids(api("/api/v1/launches/", study_uid=STUDY_2)) == [both.pk]


@pytest.mark.parametrize(
    "params",
    [
        {"study_uid": "1.2.3%"},
        {"study_uid": '1.2"'},
        {"study_uid": "1." + "2" * 70},
        {"created_after": "yesterday"},
        {"kheops_server": "999999"},
        {"provider": "nope"},
        {"outcome": "teleported"},
    ],
)
def test_an_invalid_filter_value_is_400(
    api: Callable[..., Any], db: None, params: dict[str, str]
) -> None:
    response = api("/api/v1/launches/", **params)

    assert response.status_code == 400
    assert set(response.json()) == set(params)


def test_launches_filter_by_user(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    ada = record()
    bob = record(user_sub="user-2", user_name="Dr Bob", user_email="Bob@Hospital.test")

    assert ids(api("/api/v1/launches/", user_sub="user-1")) == [ada.pk]
    assert ids(api("/api/v1/launches/", user_email="bob@hospital.test")) == [bob.pk]


def test_launches_filter_by_server_provider_outcome_and_album(
    api: Callable[..., Any], record: Callable[..., LaunchRecord], other_server: KheopsServer
) -> None:
    segmentation = Provider.objects.create(
        slug="seg", client_name="OHIF segmentation", mode="segmentation"
    )
    here = record(album_id="Album1")
    there = record(kheops_server=other_server, outcome="code_rejected")
    seg = record(provider=segmentation, outcome="replay")

    assert ids(api("/api/v1/launches/", kheops_server=other_server.pk)) == [there.pk]
    assert ids(api("/api/v1/launches/", provider="seg")) == [seg.pk]
    assert sorted(ids(api("/api/v1/launches/", outcome=["replay", "code_rejected"]))) == sorted(
        [there.pk, seg.pk]
    )
    assert ids(api("/api/v1/launches/", album_id="Album1")) == [here.pk]
    assert ids(api("/api/v1/launches/", outcome="success", kheops_server=other_server.pk)) == []


def test_launches_filter_by_verified(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    genuine = record(verified=True)
    claimed = record(outcome="pending")

    assert ids(api("/api/v1/launches/", verified="true")) == [genuine.pk]
    assert ids(api("/api/v1/launches/", verified="false")) == [claimed.pk]


# --- Cursor pagination ---------------------------------------------------------------


def _walk(api: Callable[..., Any], response: Any) -> tuple[list[int], int]:
    """Follow `next` links from `response`; the ids seen and the number of pages."""
    seen: list[int] = []
    pages = 0
    while True:
        body = response.json()
        seen += [item["id"] for item in body["results"]]
        pages += 1
        if not body["next"]:
            return seen, pages
        assert "page_size" in body["next"]
        response = api(body["next"])


def test_pages_are_ordered_newest_first_with_ties_broken_by_id(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    # Twelve launches in the same microsecond, the rest spread out: pages cut through ties.
    made = [record(created_at=T0) for _ in range(12)] + [
        record(created_at=T0 + timedelta(minutes=i)) for i in range(1, 14)
    ]
    expected = [r.pk for r in sorted(made, key=lambda r: (r.created_at, r.pk), reverse=True)]

    seen, pages = _walk(api, api("/api/v1/launches/", page_size=5))

    assert seen == expected
    assert pages == 5


def test_paging_neither_repeats_nor_skips_while_new_launches_arrive(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    made = [record(created_at=T0 + timedelta(seconds=i % 4)) for i in range(20)]
    expected = [r.pk for r in sorted(made, key=lambda r: (r.created_at, r.pk), reverse=True)]
    first = api("/api/v1/launches/", page_size=7)
    for _ in range(5):
        record(created_at=T0 + timedelta(days=1))

    seen, pages = _walk(api, first)

    assert seen == expected
    assert pages == 3


def test_a_tampered_cursor_is_404_not_500(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    record()

    assert api("/api/v1/launches/", cursor="not-a-cursor").status_code == 404


def test_the_page_size_is_capped(
    api: Callable[..., Any], record: Callable[..., LaunchRecord]
) -> None:
    LaunchRecord.objects.bulk_create(LaunchRecord(outcome="success") for _ in range(1005))

    assert len(api("/api/v1/launches/", page_size=5000).json()["results"]) == 1000
    assert len(api("/api/v1/launches/").json()["results"]) == 100


# --- OpenAPI schema ------------------------------------------------------------------


def test_the_openapi_schema_describes_the_api_and_its_oauth2_flow(client: Client, db: None) -> None:
    response = client.get("/api/v1/schema/", {"format": "json"})

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert set(schema["paths"]) == {
        "/api/v1/launches/",
        "/api/v1/launches/{id}/",
        "/api/v1/servers/",
        "/api/v1/servers/{id}/",
        "/api/v1/providers/",
        "/api/v1/providers/{slug}/",
    }
    flow = schema["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert flow == {
        "tokenUrl": "http://127.0.0.1:8000/oauth/token/",
        "scopes": {"audit:read": settings.OAUTH2_PROVIDER["SCOPES"]["audit:read"]},
    }
    launches = schema["paths"]["/api/v1/launches/"]["get"]
    assert {"oauth2": ["audit:read"]} in launches["security"]
    assert {
        "study_uid",
        "created_after",
        "created_before",
        "cursor",
        "page_size",
        "kheops_server",
        "outcome",
    } <= {p["name"] for p in launches["parameters"]}


# --- API clients in the admin ------------------------------------------------------------


def test_the_admin_groups_the_toolkit_as_audit_api_clients_with_only_their_applications(
    admin_client: Client,
) -> None:
    page = admin_client.get("/admin/").content.decode()

    assert "Audit API clients" in page
    assert "Django OAuth Toolkit" not in page
    assert "/admin/oauth2_provider/application/" in page
    for bookkeeping in ("accesstoken", "refreshtoken", "grant", "idtoken"):
        assert f"/admin/oauth2_provider/{bookkeeping}/" not in page
        assert admin_client.get(f"/admin/oauth2_provider/{bookkeeping}/").status_code == 404


def test_an_api_client_added_in_the_admin_is_confidential_with_client_credentials_and_gets_a_token(
    admin_client: Client,
) -> None:
    form = admin_client.get("/admin/oauth2_provider/application/add/")
    page = form.content.decode()
    # The toolkit proposes a client id and secret; the admin copies them before saving.
    secret = form.context["adminform"].form["client_secret"].value()
    client_id = form.context["adminform"].form["client_id"].value()

    saved = admin_client.post(
        "/admin/oauth2_provider/application/add/",
        {"name": "Hospital SIEM", "client_id": client_id, "client_secret": secret},
    )

    assert "Copy and store this secret now" in page
    for not_needed in (
        "redirect_uris",
        "allowed_origins",
        "skip_authorization",
        "algorithm",
        "hash_client_secret",
    ):
        assert f'name="{not_needed}"' not in page
    assert "Confidential" in page and "Client credentials" in page
    assert saved.status_code == 302, saved.content.decode()[:2000]
    app = Application.objects.get(name="Hospital SIEM")
    assert (app.client_type, app.authorization_grant_type) == ("confidential", "client-credentials")
    assert app.client_secret != secret  # only its hash is kept
    token = Client().post(
        "/oauth/token/",
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert token.status_code == 200
    assert token.json()["scope"] == "audit:read"


def test_an_api_clients_page_has_no_view_on_site_link_to_pages_we_do_not_serve(
    admin_client: Client, application: Application
) -> None:
    response = admin_client.get(f"/admin/oauth2_provider/application/{application.pk}/change/")

    assert response.status_code == 200
    assert "viewsitelink" not in response.content.decode()


def test_a_provider_says_how_its_viewers_get_the_kheops_token(
    api: Callable[..., Any], provider: Provider, settings: Any
) -> None:
    # The effective choice: the provider's own, or the server's default (DICOMWEB_RELAY).
    settings.DICOMWEB_RELAY = True
    assert api("/api/v1/providers/ohif/").json()["token_delivery"] == "relay"

    provider.token_delivery = "direct"
    provider.save()
    assert api("/api/v1/providers/ohif/").json()["token_delivery"] == "direct"
