"""The audit API over 10,000 launch records: filtered, paginated queries through the whole
Django stack (middleware, OAuth 2 bearer authentication, filters, cursor pagination, JSON).

The records live in a throwaway database: a temporary SQLite file, or with DATABASE_URL a
database of its own created next to that one and dropped at the end (never the named one).
The requests go through Django's test client, in process: what is measured is our server's
work for one API call, not a network.

    bench/audit_api.py                 # prints the figures
    BENCH_REPEAT=200 bench/audit_api.py
"""

from __future__ import annotations

import base64
import os
import random
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import _harness

RECORDS = 10_000
PAGE_SIZE = 100
REPEAT = int(os.environ.get("BENCH_REPEAT", "50"))
WARMUP = 5


def measure() -> list[_harness.Result]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kheops_ohif.settings")
    if not os.environ.get("SECRET_KEY") and not os.environ.get("SECRET_KEY_FILE"):
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client's host name is allowed
    with throwaway_database() as vendor:
        return _measure(vendor)


@contextmanager
def throwaway_database() -> Iterator[str]:
    from django.db import connection

    with tempfile.TemporaryDirectory(prefix="bench-audit-api-") as tmp:
        if connection.vendor == "sqlite":
            connection.settings_dict["TEST"]["NAME"] = str(Path(tmp) / "bench.sqlite3")
        else:
            connection.settings_dict["TEST"]["NAME"] = f"bench_audit_api_{os.getpid()}"
        original_name = connection.settings_dict["NAME"]
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
        try:
            yield connection.vendor
        finally:
            connection.creation.destroy_test_db(original_name, verbosity=0)


def _measure(vendor: str) -> list[_harness.Result]:
    from django.test import Client
    from django.utils import timezone

    from launcher import audit
    from launcher.models import LaunchRecord

    rng = random.Random(7)
    now = timezone.now()
    server, study, user = _seed(rng, now)
    client = Client()
    headers = {"Authorization": f"Bearer {_token(client)}"}

    def get(url: str, params: dict[str, object] | None = None) -> dict:
        response = client.get(url, params, headers=headers)
        assert response.status_code == 200, response.content[:300]
        return response.json()

    base = "/api/v1/launches/"
    filtered = {
        "kheops_server": server,
        "outcome": "success",
        "created_after": (now - timedelta(days=30)).isoformat(),
        "page_size": PAGE_SIZE,
    }
    matching = LaunchRecord.objects.filter(
        kheops_server_id=server, outcome="success", created_at__gte=now - timedelta(days=30)
    ).count()
    fifth_page = base
    params: dict[str, object] | None = filtered
    for _ in range(4):
        fifth_page, params = get(fifth_page, params)["next"], None
    assert len(get(fifth_page)["results"]) == PAGE_SIZE

    def result(
        name: str, url: str, params: dict[str, object] | None, notes: str
    ) -> _harness.Result:
        samples = _harness.time_ms(lambda: get(url, params), repeat=REPEAT, warmup=WARMUP)
        return _harness.Result("audit_api", name, "ms", samples, f"{notes}; {vendor}")

    in_study = audit.records_with_study(LaunchRecord.objects.all(), study).count()
    by_user = LaunchRecord.objects.filter(user_sub=user).count()
    return [
        result(
            "server+outcome+30 days, page 1",
            base,
            filtered,
            f"{RECORDS} records, {matching} match, {PAGE_SIZE} per page",
        ),
        result("same filter, page 5 (cursor)", fifth_page, None, "follows `next` 4 times"),
        result("study_uid filter", base, {"study_uid": study}, f"{in_study} match"),
        result("user_sub filter", base, {"user_sub": user}, f"{by_user} match"),
    ]


def _seed(rng: random.Random, now: object) -> tuple[int, str, str]:
    """10,000 launch records over 90 days; returns a server id, a study UID and a user."""
    from launcher.models import KheopsServer, LaunchOutcome, LaunchRecord, Provider

    servers = [
        KheopsServer.objects.create(name=f"KHEOPS {i}", root_url=f"https://kheops{i}.bench")
        for i in range(3)
    ]
    providers = [
        Provider.objects.get_or_create(slug="ohif", defaults={"client_name": "OHIF Viewer"})[0],
        Provider.objects.create(slug="seg", client_name="OHIF segmentation", mode="segmentation"),
    ]
    failures = [o for o in LaunchOutcome.values if o != LaunchOutcome.SUCCESS]
    studies = [f"1.2.826.0.1.3680043.8.498.{rng.randrange(10**12)}" for _ in range(2000)]
    users = [f"user-{i}" for i in range(300)]
    records = []
    for _ in range(RECORDS):
        user = rng.choice(users)
        success = rng.random() < 0.85
        records.append(
            LaunchRecord(
                kheops_server=rng.choice(servers),
                provider=rng.choice(providers),
                outcome=LaunchOutcome.SUCCESS if success else rng.choice(failures),
                launch_id=secrets.token_urlsafe(16) if success else None,
                client_id="Q9ZTMv3fW7ta0Npg1caGMF",
                album_id=f"Album{rng.randrange(40)}",
                study_uids=rng.sample(studies, rng.choice((1, 1, 1, 2, 3))),
                user_sub=user,
                user_name=f"Dr {user}",
                user_email=f"{user}@hospital.bench",
                remote_addr=f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            )
        )
    created = LaunchRecord.objects.bulk_create(records, batch_size=1000)
    # auto_now_add stamps every row "now" on insert; spread them over 90 days afterwards.
    for record in created:
        record.created_at = now - timedelta(seconds=rng.randrange(90 * 86400))  # type: ignore[operator]
    LaunchRecord.objects.bulk_update(created, ["created_at"], batch_size=1000)
    return servers[0].pk, created[0].study_uids[0], created[0].user_sub


def _token(client: object) -> str:
    """An access token from our own token endpoint, as a hospital's tool gets one."""
    from oauth2_provider.models import Application

    secret = secrets.token_urlsafe(32)
    app = Application.objects.create(
        name="bench",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,
    )
    basic = base64.b64encode(f"{app.client_id}:{secret}".encode()).decode()
    response = client.post(  # type: ignore[attr-defined]
        "/oauth/token/",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


if __name__ == "__main__":
    _harness.main("audit_api", measure)
