"""The launch with Redis configured (REDIS_URL): the cache (discovery) and sessions live in
Redis; used codes do not. They are always UsedCode rows, committed with the viewer grant and
the audit row, so a replay is refused and a failed exchange releases its code exactly as
without Redis, and Redis never holds a secret in clear."""

from __future__ import annotations

import redis
from django.test import Client

from launcher.models import LaunchOutcome, LaunchRecord, UsedCode
from tests.fakes import FakeKheops, launch_and_exchange, token_url_of


def redis_keys(server: redis.Redis) -> str:
    return " ".join(key.decode() for key in server.scan_iter("kheops-ohif-test-*"))


def redis_values(server: redis.Redis) -> str:
    return " ".join(repr(server.get(key)) for key in server.scan_iter("kheops-ohif-test-*"))


def test_a_replay_is_refused_with_redis_configured(
    with_redis: redis.Redis, fake_kheops: FakeKheops
) -> None:
    client = Client()
    url = fake_kheops.launch_url()
    launch, token = launch_and_exchange(client, url)
    assert (launch.status_code, token.status_code) == (302, 200)

    replay = Client().get(url)  # another browser

    assert replay.status_code == 409
    assert "already been used" in replay.content.decode()
    assert len(fake_kheops.token_requests) == 1
    # The claim is a database row, committed with the grant: not a Redis key.
    assert UsedCode.objects.count() == 1
    assert "used-code" not in redis_keys(with_redis)
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.REPLAY).count() == 1


def test_a_transient_failure_is_retried_by_the_same_browser_with_redis_configured(
    with_redis: redis.Redis, fake_kheops: FakeKheops
) -> None:
    client = Client()
    url = fake_kheops.launch_url()
    fake_kheops.token_answer = (503, "busy")
    launch, token = launch_and_exchange(client, url)
    assert (launch.status_code, token.status_code) == (302, 502)
    assert UsedCode.objects.count() == 1

    fake_kheops.token_answer = None
    again = client.get(token_url_of(launch["Location"]))
    assert again.status_code == 200
    assert Client().get(url).status_code == 409  # nobody else
    assert UsedCode.objects.count() == 1
    assert len(fake_kheops.token_requests) == 2


def test_redis_holds_no_secret_in_clear(with_redis: redis.Redis, fake_kheops: FakeKheops) -> None:
    client = Client()
    launch, token = launch_and_exchange(client, fake_kheops.launch_url())
    location = launch["Location"]
    assert token.status_code == 200

    assert client.get(location).status_code == 200
    assert Client().get(location).status_code == 403
    stored = redis_keys(with_redis)
    # Redis is the cache in use (the discovery document went there), so the scan sees it.
    assert "kheops-discovery:" in stored
    assert fake_kheops.issued_tokens and len(fake_kheops.secrets_seen) >= 3
    values = redis_values(with_redis)
    for secret in fake_kheops.secrets_seen:
        assert secret not in stored
        assert secret not in values
