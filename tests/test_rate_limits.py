"""Per-client-address rate limits on the launch and the token request (launcher.ratelimit).

The rest of the suite runs with both limits off (tests/conftest.py): here they are on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from kheops_ohif.settings import parse_rate
from launcher import ratelimit
from launcher.models import LaunchGrant, LaunchOutcome, LaunchRecord, RateCounter, UsedCode
from tests.fakes import STUDY_1, FakeKheops, token_url_of


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120/m", (120, 60)),
        ("5/s", (5, 1)),
        ("1000/h", (1000, 3600)),
        (" 240/M ", (240, 60)),
        ("off", None),
        ("OFF", None),
        ("0", None),
        ("0/m", None),
    ],
)
def test_a_rate_is_requests_per_second_minute_or_hour_or_off(
    value: str, expected: tuple[int, int] | None
) -> None:
    assert parse_rate("LAUNCH_RATE_LIMIT", value) == expected


@pytest.mark.parametrize("value", ["120", "120/d", "-1/m", "many/m", "12.5/m", "120 per minute"])
def test_a_rate_that_is_not_one_says_so(value: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"LAUNCH_RATE_LIMIT must be .* such as 120/m"):
        parse_rate("LAUNCH_RATE_LIMIT", value)


def test_the_defaults_are_generous(monkeypatch: pytest.MonkeyPatch) -> None:
    from kheops_ohif import settings as module  # as loaded: the test fixtures do not reach it

    for name in ("LAUNCH_RATE_LIMIT", "TOKEN_RATE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    assert module.envrate("LAUNCH_RATE_LIMIT", "120/m") == (120, 60)
    assert (module.LAUNCH_RATE_LIMIT, module.TOKEN_RATE_LIMIT) == ((120, 60), (240, 60))


def test_the_launch_limit_bites_with_a_429_page_an_audit_row_and_nothing_else(
    client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.LAUNCH_RATE_LIMIT = (3, 3600)
    for _ in range(3):
        assert client.get(fake_kheops.launch_url()).status_code == 302
    calls = len(fake_kheops.router.calls)
    code = fake_kheops.new_code()

    response = client.get(fake_kheops.launch_url(code=code))

    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert "Too many viewers were opened from your network address" in page
    assert f"Wait {response['Retry-After']} second" in page
    assert "Back to KHEOPS" in page and STUDY_1 in page and "HTTP 429" in page
    record = LaunchRecord.objects.order_by("-pk").first()
    assert record.outcome == LaunchOutcome.RATE_LIMITED
    assert record.remote_addr == "127.0.0.1"
    assert record.study_uids == [STUDY_1]
    assert "over 3 launches in 3600 s" in record.failure_detail
    # Nothing written for the code, nothing asked of KHEOPS.
    assert LaunchGrant.objects.count() == 3 and UsedCode.objects.count() == 3
    assert len(fake_kheops.router.calls) == calls
    assert LaunchRecord.objects.count() == 4


def test_the_launch_limit_is_per_client_address(
    client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.LAUNCH_RATE_LIMIT = (1, 3600)
    settings.TRUSTED_PROXY_COUNT = 1
    first = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="198.51.100.1")
    same = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="198.51.100.1")
    other = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="198.51.100.2")
    # IPv6: one client is one /64.
    v6 = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="2001:db8:1:2::a")
    v6_same_64 = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="2001:db8:1:2::b")
    v6_other_64 = client.get(fake_kheops.launch_url(), HTTP_X_FORWARDED_FOR="2001:db8:1:3::a")

    assert [r.status_code for r in (first, same, other)] == [302, 429, 302]
    assert [r.status_code for r in (v6, v6_same_64, v6_other_64)] == [302, 429, 302]


def test_an_invalid_launch_counts_too_and_its_refusal_says_what_it_can(
    client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.LAUNCH_RATE_LIMIT = (1, 3600)
    assert client.get("/providers/ohif/launch?code=x").status_code == 400

    response = client.get("/providers/ohif/launch?code=x")

    assert response.status_code == 429
    assert "Back to KHEOPS" not in response.content.decode()
    assert LaunchRecord.objects.order_by("-pk").first().outcome == LaunchOutcome.RATE_LIMITED


def test_the_token_limit_bites_with_json_and_leaves_the_grant_pending(
    client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.TOKEN_RATE_LIMIT = (1, 3600)
    first = client.get(fake_kheops.launch_url())
    second = client.get(fake_kheops.launch_url())
    assert client.get(token_url_of(first["Location"])).status_code == 200

    response = client.get(token_url_of(second["Location"]))

    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 3600
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert set(body) == {"error", "advice", "returnUri", "retryable"}
    assert "Too many viewers asked for access" in body["error"]
    assert body["advice"].startswith("Wait ") and body["advice"].endswith("reload this page.")
    assert body["retryable"] is False
    # No exchange: one token request reached KHEOPS (the first launch's).
    assert len(fake_kheops.token_requests) == 1
    assert LaunchGrant.objects.filter(state="pending").count() == 1
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.PENDING).count() == 1


def test_limits_off_let_a_burst_through(
    client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.LAUNCH_RATE_LIMIT = None
    settings.TOKEN_RATE_LIMIT = None
    statuses = {client.get(fake_kheops.launch_url()).status_code for _ in range(30)}
    assert statuses == {302}


# --- storage ---------------------------------------------------------------------------------


def test_the_database_counts_per_key_and_period_and_forgets_past_periods(db: None) -> None:
    # Periods in the future: an occasional clean-up (of periods ended by now) leaves them.
    end = int(time.time()) + 3600
    counts = [ratelimit._count_in_database("launch:192.0.2.1", end) for _ in range(4)]
    other = ratelimit._count_in_database("launch:192.0.2.2", end)
    next_period = ratelimit._count_in_database("launch:192.0.2.1", end + 60)

    assert counts == [1, 2, 3, 4]
    assert other == 1
    assert next_period == 1
    assert ratelimit.forget_past_periods(now=end + 30) == 1  # 192.0.2.2's, ended at `end`
    assert RateCounter.objects.get(key="launch:192.0.2.1").hits == 1


def test_with_redis_the_count_lives_there_and_expires(
    with_redis: redis.Redis, client: Client, fake_kheops: FakeKheops, settings: Any
) -> None:
    settings.LAUNCH_RATE_LIMIT = (2, 3600)

    statuses = [client.get(fake_kheops.launch_url()).status_code for _ in range(3)]

    assert statuses == [302, 302, 429]
    assert RateCounter.objects.count() == 0
    [key] = [
        k.decode()
        for k in with_redis.scan_iter(f"{settings.CACHES['default']['KEY_PREFIX']}:rate:*")
    ]
    assert key.split(":")[2:4] == ["launch", "127.0.0.1"]
    assert int(with_redis.get(key)) == 3
    assert 0 < with_redis.ttl(key) <= 3605


def test_with_redis_counts_from_threads_at_once_are_all_kept(
    with_redis: redis.Redis, settings: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    period_end = int(time.time()) + 60
    with ThreadPoolExecutor(8) as pool:
        counts = list(
            pool.map(
                lambda _: ratelimit._count_in_redis("launch:192.0.2.9", period_end, 60), range(200)
            )
        )

    assert sorted(counts) == list(range(1, 201))
