"""The launch with Redis configured (REDIS_URL): used codes and sessions live in Redis."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import Client

from launcher.models import LaunchOutcome, LaunchRecord, UsedCode
from tests.fakes import FakeKheops

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def with_redis(settings: Any) -> Iterator[redis.Redis]:
    prefix = f"kheops-ohif-test-{secrets.token_hex(4)}"
    settings.REDIS_URL = REDIS_URL
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": prefix,
        }
    }
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    server = redis.Redis.from_url(REDIS_URL)
    yield server
    for key in server.scan_iter(f"{prefix}*"):
        server.delete(key)
    server.close()


def redis_values(server: redis.Redis) -> str:
    return " ".join(repr(server.get(key)) for key in server.scan_iter("kheops-ohif-test-*"))


def test_a_replay_is_refused_through_redis_without_touching_the_database(
    with_redis: redis.Redis, fake_kheops: FakeKheops
) -> None:
    client = Client()
    url = fake_kheops.launch_url()

    assert client.get(url).status_code == 302
    replay = client.get(url)

    assert replay.status_code == 409
    assert UsedCode.objects.count() == 0
    assert LaunchRecord.objects.filter(outcome=LaunchOutcome.REPLAY).count() == 1


def test_a_failed_exchange_releases_the_code_in_redis(
    with_redis: redis.Redis, fake_kheops: FakeKheops
) -> None:
    client = Client()
    url = fake_kheops.launch_url()
    fake_kheops.token_answer = (503, "busy")
    assert client.get(url).status_code == 502

    fake_kheops.token_answer = None
    assert client.get(url).status_code == 302


def test_redis_keeps_only_hashes_of_used_codes(with_redis: redis.Redis, fake_kheops: FakeKheops) -> None:
    client = Client()
    location = client.get(fake_kheops.launch_url())["Location"]

    assert client.get(location).status_code == 200
    assert Client().get(location).status_code == 403
    stored = " ".join(key.decode() for key in with_redis.scan_iter("kheops-ohif-test-*"))
    assert "used-code:" in stored
    for secret in fake_kheops.secrets_seen:
        assert secret not in stored
        assert secret not in redis_values(with_redis)
